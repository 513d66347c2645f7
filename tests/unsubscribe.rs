//! One-click unsubscribe (RFC 8058), end to end: a marketing e-mail sent through the real
//! router and dispatcher to a real SMTP server carries `List-Unsubscribe` and
//! `List-Unsubscribe-Post`; its link shows a page on GET and unsubscribes on POST, once,
//! however often it is clicked; forged and altered links change nothing; and afterwards
//! marketing to that address is suppressed while transactional mail still goes.

#[path = "support/db.rs"]
mod db;
mod support;

use std::sync::Arc;
use std::time::Duration;

use herald::definitions::env::EnvSource;
use herald::engine::clock::VirtualClock;
use herald::store::{RunFilter, RunStatus};
use serde_json::json;
use support::SmtpSink;
use support::app::App;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
const WAIT: Duration = Duration::from_secs(5);

const CONFIG: &str = r#"
compliance:
  unsubscribe:
    secret: ${env:UNSUBSCRIBE_SECRET}
    url: https://mail.example.com/
    mailto: unsubscribe@example.com
channels:
  email:
    provider: smtp
    host: 127.0.0.1
    port: {PORT}
    tls: none
    from: "Acme <news@example.com>"
"#;

const NEWS: &str = r#"
kind: workflow
id: news
triggers:
  - webhook: { path: /hooks/news }
steps:
  - id: letter
    send:
      channel: email
      to: "{{ body.to }}"
      subject: Spring offers
      body: "20% off this weekend"
"#;

const RECEIPT: &str = r#"
kind: workflow
id: receipt
triggers:
  - webhook: { path: /hooks/receipt }
steps:
  - id: receipt
    send:
      channel: email
      to: "{{ body.to }}"
      subject: Your receipt
      body: "Thank you for your payment"
      category: transactional
"#;

const FAREWELL: &str = r#"
kind: workflow
id: farewell
triggers:
  - event: { name: message.unsubscribed }
steps:
  - id: note
    set: { gone: "{{ event.key }}" }
"#;

struct Project {
    app: App,
    sink: SmtpSink,
    http: reqwest::Client,
    _db: db::TestDb,
    _dir: tempfile::TempDir,
}

impl Project {
    async fn start(db: db::TestDb) -> Project {
        let sink = SmtpSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("herald.yaml"),
            CONFIG.replace("{PORT}", &sink.port().to_string()),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        for (name, text) in [("news", NEWS), ("receipt", RECEIPT), ("farewell", FAREWELL)] {
            std::fs::write(dir.path().join(format!("workflows/{name}.yaml")), text).unwrap();
        }
        let env = EnvSource::Map(Arc::new(
            [("UNSUBSCRIBE_SECRET".to_owned(), SECRET.to_owned())].into(),
        ));
        let clock = VirtualClock::at("2026-11-02T15:00:00Z");
        let app = App::start(dir.path(), &env, db.store.clone(), &clock).await;
        Project {
            app,
            sink,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            _db: db,
            _dir: dir,
        }
    }

    /// Starts the workflow at `path` for `to` and delivers what it queued.
    async fn send(&self, path: &str, to: &str) {
        let answer = self
            .http
            .post(self.app.url(path))
            .json(&json!({ "to": to }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 202, "{path}");
        self.app.engine.run_due().await.unwrap();
        self.app.engine.deliver_due().await.unwrap();
    }

    /// The unsubscribe link's path (`/unsubscribe/...`), from the last mail's header.
    fn link_path(&self) -> String {
        let mails = self.sink.messages();
        let header = mails
            .last()
            .and_then(|m| m.header("List-Unsubscribe"))
            .expect("List-Unsubscribe on the marketing mail");
        let start = header
            .find("<https://mail.example.com")
            .expect("an HTTPS link")
            + 1;
        let end = start + header[start..].find('>').unwrap();
        header[start..end]
            .strip_prefix("https://mail.example.com")
            .unwrap()
            .to_owned()
    }

    async fn suppression(&self, address: &str) -> Option<String> {
        self.app
            .engine
            .store
            .address_suppression("email", address)
            .await
            .unwrap()
    }

    async fn farewells(&self) -> usize {
        let filter = RunFilter {
            workflow_id: Some("farewell".into()),
            limit: 100,
            ..RunFilter::default()
        };
        self.app
            .engine
            .store
            .list_runs(&filter)
            .await
            .unwrap()
            .len()
    }
}

async fn a_marketing_mail_unsubscribes_in_one_click_once(db: db::TestDb) {
    let p = Project::start(db).await;
    p.send("/hooks/news", "ann@example.org").await;
    let mail = &p.sink.wait_for_messages(1, WAIT).await[0];
    let list = mail.header("List-Unsubscribe").expect("List-Unsubscribe");
    assert!(
        list.starts_with("<https://mail.example.com/unsubscribe/")
            && list.ends_with(">, <mailto:unsubscribe@example.com?subject=unsubscribe>"),
        "{list}"
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let link = p.link_path();

    // A link checker or a mail scanner fetching the link unsubscribes nobody.
    let page = p.http.get(p.app.url(&link)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("ann@example.org") && text.contains("<form method=\"post\""),
        "{text}"
    );
    assert_eq!(p.suppression("ann@example.org").await, None);

    // The mail client's one-click POST, as RFC 8058 describes it.
    let one_click = || {
        p.http
            .post(p.app.url(&link))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
    };
    let done = one_click().await.unwrap();
    assert_eq!(done.status().as_u16(), 200);
    assert!(done.text().await.unwrap().contains("no more marketing"));
    assert_eq!(
        p.suppression("ann@example.org").await.as_deref(),
        Some("unsubscribed")
    );
    p.app.engine.run_due().await.unwrap();
    assert_eq!(p.farewells().await, 1, "message.unsubscribed was emitted");

    // Again, and then from the page's own button: nothing more happens.
    assert_eq!(one_click().await.unwrap().status().as_u16(), 200);
    let button = p
        .http
        .post(p.app.url(&link))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(button.status().as_u16(), 200);
    p.app.engine.run_due().await.unwrap();
    assert_eq!(p.farewells().await, 1, "one event per link, however often");

    // Marketing to Ann stops; her receipt still goes, without unsubscribe headers.
    p.send("/hooks/news", "ann@example.org").await;
    p.send("/hooks/receipt", "ann@example.org").await;
    let mails = p.sink.wait_for_messages(2, WAIT).await;
    assert_eq!(mails.len(), 2, "the second offer was not sent");
    assert_eq!(mails[1].subject.as_deref(), Some("Your receipt"));
    assert_eq!(mails[1].header("List-Unsubscribe"), None);
    let news = p
        .app
        .engine
        .store
        .list_runs(&RunFilter {
            workflow_id: Some("news".into()),
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert!(news.iter().all(|r| r.status == RunStatus::Completed));
}

async fn forged_and_altered_links_change_nothing(db: db::TestDb) {
    let p = Project::start(db).await;
    p.send("/hooks/news", "ann@example.org").await;
    p.sink.wait_for_messages(1, WAIT).await;
    let link = p.link_path();
    let token = link.strip_prefix("/unsubscribe/").unwrap();
    let (payload, signature) = token.split_once('.').unwrap();

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decoded = String::from_utf8(b64.decode(payload).unwrap()).unwrap();
    let bob = b64.encode(decoded.replace("ann@example.org", "bob@example.org"));
    let mut flipped = signature.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for forged in [
        format!("/unsubscribe/{bob}.{signature}"),
        format!("/unsubscribe/{payload}.{flipped}"),
        format!("/unsubscribe/{payload}"),
        "/unsubscribe/bob@example.org".to_owned(),
    ] {
        let answer = p
            .http
            .post(p.app.url(&forged))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 404, "{forged}");
        assert!(answer.text().await.unwrap().contains("not valid"));
    }
    assert_eq!(p.suppression("ann@example.org").await, None);
    assert_eq!(p.suppression("bob@example.org").await, None);
    p.app.engine.run_due().await.unwrap();
    assert_eq!(p.farewells().await, 0);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = crate::db::sqlite(stringify!($name)).await.unwrap();
                    crate::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::db::postgres(stringify!($name)).await else { return };
                    crate::$name(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_marketing_mail_unsubscribes_in_one_click_once,
    forged_and_altered_links_change_nothing,
);
