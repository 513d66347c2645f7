//! A broadcast survives `kill -9`: `herald serve` as a child process enrolls a few thousand
//! contacts and mails each of them through a real SMTP server on loopback, while it is killed
//! with SIGKILL at random moments and restarted. Afterwards every recipient was enrolled once,
//! has one completed run and one message in the outbox, and the SMTP server received exactly
//! one distinct message (by Message-ID, which is derived from the outbox key, so a mail handed
//! over again after a kill is the same message) for every recipient, and none for anyone else.
//! On SQLite always; on PostgreSQL too when `HERALD_TEST_POSTGRES_URL` is set.

#[path = "support/db.rs"]
mod db;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::store::campaigns::{Membership, MembershipKind};
use herald::store::{ContactUpsert, RunFilter, RunStatus};
use rand::Rng;
use support::SmtpSink;

const RECIPIENTS: usize = 2000;
const KILLS: usize = 3;

struct Server(Option<Child>);

impl Server {
    fn start(dir: &std::path::Path, url: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--no-watch", "--dir"])
            .arg(dir)
            .args([
                "--database-url",
                url,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("herald serve said it is listening");
        Server(Some(child))
    }

    /// SIGKILL: no shutdown hooks, no flushing, no released leases.
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn address(n: usize) -> String {
    format!("person-{n:05}@example.com")
}

async fn broadcast_survives_kills(db: db::TestDb) {
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.yaml"),
        format!(
            "channels:\n  email: {{ provider: smtp, host: 127.0.0.1, port: {}, tls: none, from: \"Herald <h@example.com>\", timeout: 5s }}\nengine: {{ lease: 3s }}\n",
            sink.port()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/broadcast.yaml"),
        r#"
kind: campaign
id: broadcast
audience: { lists: [customers] }
schedule:
  send_at: "2020-01-01T00:00:00Z"
steps:
  - id: news
    send:
      channel: email
      to: "{{ contact.email }}"
      subject: "News for {{ contact.email }}"
      body: "Rates are down this month."
"#,
    )
    .unwrap();
    let contacts: Vec<ContactUpsert> = (0..RECIPIENTS + 10)
        .map(|n| ContactUpsert {
            new_id: herald::engine::new_id(),
            email: Some(address(n)),
            now: 0,
            // Ten contacts are on no list: nobody may write to them.
            memberships: if n < RECIPIENTS {
                vec![Membership {
                    kind: MembershipKind::List,
                    name: "customers".into(),
                    member: true,
                }]
            } else {
                Vec::new()
            },
            ..ContactUpsert::default()
        })
        .collect();
    for chunk in contacts.chunks(500) {
        db.store.insert_events(&[], &[], chunk, &[]).await.unwrap();
    }

    let mut server = Server::start(dir.path(), &db.url);
    for _ in 0..KILLS {
        let wait = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        server = Server::start(dir.path(), &db.url);
    }

    let distinct = |sink: &SmtpSink| {
        let mut by_recipient: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in sink.messages() {
            for r in &m.recipients {
                by_recipient
                    .entry(r.clone())
                    .or_default()
                    .insert(m.message_id.clone().unwrap_or_default());
            }
        }
        by_recipient
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while distinct(&sink).len() < RECIPIENTS {
        assert!(
            Instant::now() < deadline,
            "after 120s only {} of {RECIPIENTS} recipients had their message",
            distinct(&sink).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A mail handed over just before a kill has no `sent` mark yet: its lease (3s) runs out
    // after the restart and it goes again, with the same Message-ID. Wait for the store to say
    // every row is sent rather than guessing how long that takes.
    loop {
        let counts = db.store.campaign_counts("broadcast").await.unwrap();
        let sent = counts.steps.first().map_or(0, |s| s.sent);
        if sent >= RECIPIENTS as i64 && counts.active == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 120s the store says {sent} of {RECIPIENTS} sent and {} runs active",
            counts.active
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);

    let received = distinct(&sink);
    let expected: BTreeSet<String> = (0..RECIPIENTS).map(address).collect();
    assert_eq!(
        received.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every recipient, and nobody off the list"
    );
    let repeated: Vec<_> = received.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(
        repeated.is_empty(),
        "recipients with more than one message: {repeated:?}"
    );

    let counts = db.store.campaign_counts("broadcast").await.unwrap();
    assert_eq!(counts.enrolled, RECIPIENTS as i64);
    assert_eq!(counts.steps.len(), 1);
    assert_eq!(
        counts.steps[0].sent, RECIPIENTS as i64,
        "one outbox row each"
    );
    let runs = db
        .store
        .list_runs(&RunFilter {
            workflow_id: Some("broadcast".into()),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), RECIPIENTS);
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_broadcast_survives_kill_9() {
    let db = db::sqlite("campaign-crash")
        .await
        .expect("sqlite always runs");
    broadcast_survives_kills(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_broadcast_survives_kill_9() {
    let Some(db) = db::postgres("campaign_crash::postgres").await else {
        return;
    };
    broadcast_survives_kills(db).await;
}
