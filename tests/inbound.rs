//! Providers' requests to `/inbound/{channel}`, end to end through the real router: signed as
//! each provider signs them, recorded through the inbound path (compliance keywords, replies,
//! `message` triggers), deduplicated by the provider's message id, and answered as each
//! provider expects. A request that fails verification stores nothing.

#[path = "support/db.rs"]
mod db;
mod support;

use std::sync::Arc;

use base64::Engine as _;
use herald::definitions::env::EnvSource;
use herald::engine::clock::VirtualClock;
use herald::store::{RunFilter, RunRecord};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::Sha256;
use support::app::App;
use support::{FakeTwilio, FakeWhatsapp};

const TWILIO_TOKEN: &str = support::twilio::AUTH_TOKEN;
const PUBLIC_URL: &str = "https://herald.example.com/inbound/sms";
const WA_SECRET: &str = "meta-app-secret";
const TG_SECRET: &str = "hook-secret_1";
const ADMIN_KEY: &str = "admin-key-for-tests";
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>";

const CONFIG: &str = r#"
admin:
  api_keys: ["${env:ADMIN_KEY}"]
compliance:
  inbound_limit: { messages: 3, per: 1m }
channels:
  sms:
    provider: twilio_sms
    account_sid: AC0123456789abcdef0123456789abcdef
    auth_token: ${env:TWILIO_AUTH_TOKEN}
    from: "+15017122661"
    public_url: https://herald.example.com/inbound/sms
    forward_calls_to: "+15558675310"
    ring_timeout: 15s
    api_base: "{TWILIO_API}"
  wa:
    provider: whatsapp
    access_token: ${env:WA_TOKEN}
    phone_number_id: "106540352242922"
    app_secret: ${env:WA_SECRET}
    verify_token: verify-me
    api_base: "{WA_API}"
  tg:
    provider: telegram
    bot_token: "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
    secret_token: hook-secret_1
  email: { provider: log }
"#;

const NOTIFY: &str = r#"
kind: workflow
id: notify
triggers:
  - webhook: { path: /hooks/notify }
steps:
  - id: text
    send: { channel: sms, to: "{{ body.to }}", body: "Your car is ready", category: transactional }
"#;

const PROMO: &str = r#"
kind: workflow
id: promo
triggers:
  - webhook: { path: /hooks/promo }
steps:
  - id: text
    send: { channel: sms, to: "{{ body.to }}", body: "20% off this weekend" }
"#;

const WATCH: &str = r#"
kind: workflow
id: watch
triggers:
  - event: { name: message.delivered }
steps:
  - id: note
    set: { delivered_to: "{{ event.key }}" }
"#;

const UNMATCHED: &str = r#"
kind: workflow
id: fallback-answer
triggers:
  - event: { name: message.unmatched }
steps:
  - id: note
    set: { from: "{{ event.key }}" }
"#;

const LINK: &str = r#"
kind: workflow
id: link-telegram
triggers:
  - message: { channel: tg, match: "^/start " }
steps:
  - id: link
    upsert_contact:
      phone: "{{ message.command.payload }}"
      addresses: { tg: "{{ message.from }}" }
"#;

const RESET: &str = r#"
kind: workflow
id: reset-telegram
triggers:
  - message: { channel: tg, match: "^/reset" }
steps:
  - id: unlink
    upsert_contact:
      addresses: { tg: "{{ message.from }}" }
      unlink: [tg]
"#;

const WA_REMINDER: &str = r#"
kind: workflow
id: wa-reminder
triggers:
  - webhook: { path: /hooks/wa-reminder }
steps:
  - id: remind
    send:
      channel: wa
      to: "{{ body.to }}"
      whatsapp_template:
        name: "{{ body.template }}"
        language: en_US
        body: ["{{ body.first_name }}", "{{ body.when }}"]
        buttons: [{ url: "{{ body.application }}" }]
"#;

const MISSED_CALL: &str = r#"
kind: workflow
id: missed-call
triggers:
  - event: { name: call.missed }
steps:
  - id: text_back
    send:
      channel: "sms"
      to: "{{ event.key }}"
      from: "{{ event.data.to }}"
      body: "Sorry we missed your call! Reply and we will call you back."
      category: transactional
"#;

const ASSISTANT: &str = r#"
kind: workflow
id: assistant
triggers:
  - message: { channel: sms }
  - message: { channel: wa }
  - message: { channel: tg }
steps:
  - id: note
    set: { heard: "{{ message.text }}", from: "{{ message.from }}" }
"#;

struct Inbound {
    app: App,
    twilio: FakeTwilio,
    meta: FakeWhatsapp,
    http: reqwest::Client,
    _db: db::TestDb,
    _dir: tempfile::TempDir,
}

impl Inbound {
    /// The test project: [`CONFIG`] and the workflows above.
    async fn start() -> Inbound {
        Self::start_project(CONFIG, |dir| {
            std::fs::write(dir.path().join("workflows/assistant.yaml"), ASSISTANT).unwrap();
            std::fs::write(dir.path().join("workflows/notify.yaml"), NOTIFY).unwrap();
            std::fs::write(dir.path().join("workflows/watch.yaml"), WATCH).unwrap();
            std::fs::write(dir.path().join("workflows/promo.yaml"), PROMO).unwrap();
            std::fs::write(dir.path().join("workflows/unmatched.yaml"), UNMATCHED).unwrap();
            std::fs::write(dir.path().join("workflows/link.yaml"), LINK).unwrap();
            std::fs::write(dir.path().join("workflows/reset.yaml"), RESET).unwrap();
            std::fs::write(dir.path().join("workflows/wa-reminder.yaml"), WA_REMINDER).unwrap();
            std::fs::write(dir.path().join("workflows/missed-call.yaml"), MISSED_CALL).unwrap();
        })
        .await
    }

    /// A project with `config` (`{TWILIO_API}` and `{WA_API}` point at the stand-ins) and the
    /// files `files` writes.
    async fn start_project(config: &str, files: impl FnOnce(&tempfile::TempDir)) -> Inbound {
        let db = db::sqlite("inbound")
            .await
            .expect("SQLite is always available");
        let dir = tempfile::tempdir().expect("temp dir");
        let twilio = FakeTwilio::start().await;
        let meta = FakeWhatsapp::start().await;
        std::fs::write(
            dir.path().join("herald.yaml"),
            config
                .replace("{TWILIO_API}", &twilio.api_base())
                .replace("{WA_API}", &meta.api_base()),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        files(&dir);
        let env = EnvSource::Map(Arc::new(
            [
                ("TWILIO_AUTH_TOKEN", TWILIO_TOKEN),
                ("WA_TOKEN", support::whatsapp::ACCESS_TOKEN),
                ("WA_SECRET", WA_SECRET),
                ("ADMIN_KEY", ADMIN_KEY),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        ));
        let clock = VirtualClock::at("2026-11-02T15:00:00Z");
        let app = App::start(dir.path(), &env, db.store.clone(), &clock).await;
        Inbound {
            app,
            twilio,
            meta,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            _db: db,
            _dir: dir,
        }
    }

    /// Starts a run of the webhook workflow at `path` for `to`, and gives its id.
    async fn start_for(&self, path: &str, to: &str) -> String {
        self.start_with(path, json!({ "to": to })).await
    }

    /// Starts a run of the webhook workflow at `path` with this body, and gives its id.
    async fn start_with(&self, path: &str, body: Value) -> String {
        let answer = self
            .http
            .post(self.app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 202);
        answer.json::<Value>().await.unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// POSTs what Twilio would send with these fields, signed as Twilio signs; the status.
    async fn post_as_twilio(&self, fields: &[(&str, &str)]) -> u16 {
        let (body, signature) = twilio_form(fields);
        let signed = [("x-twilio-signature", signature)];
        self.post("/inbound/sms", FORM, &signed, &body).await.0
    }

    /// What Twilio posts about call `sid` from `from` to the number, with `extra` fields
    /// (`CallStatus`, `DialCallStatus`), signed: the status, content type and body.
    async fn call(
        &self,
        from: &str,
        sid: &str,
        extra: &[(&str, &str)],
    ) -> (u16, Option<String>, String) {
        let mut fields = vec![
            ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", sid),
            ("From", from),
            ("Caller", from),
            ("To", "+15017122661"),
            ("Called", "+15017122661"),
            ("Direction", "inbound"),
        ];
        fields.extend_from_slice(extra);
        let (body, signature) = twilio_form(&fields);
        let signed = [("x-twilio-signature", signature)];
        self.post("/inbound/sms", FORM, &signed, &body).await
    }

    /// The `call.missed` event recorded for `caller`, if any.
    async fn missed_call_event(&self, caller: &str) -> Option<herald::store::EventRecord> {
        self.app
            .engine
            .store
            .find_event("call.missed", caller, 0, &[])
            .await
            .unwrap()
    }

    /// A text from `from`, as Twilio posts it, signed; the status.
    async fn text(&self, from: &str, sid: &str, text: &str) -> u16 {
        let (body, signature) = text_from(from, sid, text);
        let signed = [("x-twilio-signature", signature)];
        self.post("/inbound/sms", FORM, &signed, &body).await.0
    }

    /// The messages a run queued, as the outbox holds them.
    async fn messages_of(&self, run_id: &str) -> Vec<herald::store::OutboxRecord> {
        self.app.engine.store.outbox_for_run(run_id).await.unwrap()
    }

    /// The provider's id for the first message of a run, once it is delivered.
    async fn sent_sid(&self, run_id: &str) -> String {
        self.app.engine.store.outbox_for_run(run_id).await.unwrap()[0]
            .provider_id
            .clone()
            .expect("Twilio's sid")
    }

    async fn runs(&self) -> Vec<RunRecord> {
        self.runs_of("assistant").await
    }

    async fn runs_of(&self, workflow: &str) -> Vec<RunRecord> {
        self.app
            .engine
            .store
            .list_runs(&RunFilter {
                workflow_id: Some(workflow.into()),
                limit: 100,
                ..RunFilter::default()
            })
            .await
            .unwrap()
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: &str,
    ) -> (u16, Option<String>, String) {
        let mut request = self
            .http
            .post(self.app.url(path))
            .header("content-type", content_type)
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, kind, response.text().await.unwrap())
    }
}

/// What Twilio sends: the form, and its signature over the public URL and the sorted fields.
fn twilio_form(fields: &[(&str, &str)]) -> (String, String) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut sorted = fields.to_vec();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(TWILIO_TOKEN.as_bytes()).unwrap();
    mac.update(PUBLIC_URL.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (body, signature)
}

fn text_from(from: &str, sid: &str, text: &str) -> (String, String) {
    twilio_form(&[
        ("MessageSid", sid),
        ("From", from),
        ("To", "+15017122661"),
        ("Body", text),
        ("NumMedia", "0"),
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
    ])
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn a_signed_twilio_text_starts_its_trigger_once_and_is_answered_with_empty_twiml() {
    let s = Inbound::start().await;
    let (body, signature) = text_from("+14155550100", "SM0001", "Is the car still for sale?");
    let signed = [("x-twilio-signature", signature)];

    let (status, kind, answer) = s.post("/inbound/sms", FORM, &signed, &body).await;
    assert_eq!(
        (status, kind.as_deref(), answer.as_str()),
        (200, Some("text/xml"), EMPTY_TWIML)
    );
    let runs = s.runs().await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].trigger_kind, herald::store::TriggerKind::Message);

    // Twilio delivers again when it is unsure of the first delivery: one run still.
    let (status, _, _) = s.post("/inbound/sms", FORM, &signed, &body).await;
    assert_eq!(status, 200);
    assert_eq!(s.runs().await.len(), 1);

    // Forged or unsigned: refused before anything is stored.
    let (forged, _) = text_from("+14155550100", "SM0002", "Is the car still for sale?");
    let (status, _, _) = s.post("/inbound/sms", FORM, &signed, &forged).await;
    assert_eq!(status, 403);
    let (status, _, why) = s.post("/inbound/sms", FORM, &[], &forged).await;
    assert_eq!(status, 403);
    assert!(why.contains("X-Twilio-Signature"), "{why}");
    assert_eq!(s.runs().await.len(), 1);
}

#[tokio::test]
async fn a_stop_through_twilio_opts_the_sender_out() {
    let s = Inbound::start().await;
    let status = s.text("+14155550100", "SM0003", "STOP").await;
    assert_eq!(status, 200);
    let contact = s
        .app
        .engine
        .store
        .find_contact(None, Some("+14155550100"))
        .await
        .unwrap()
        .expect("the sender's contact");
    assert_eq!(contact.status.as_deref(), Some("opted_out"));
    assert!(
        s.runs().await.is_empty(),
        "a STOP starts no ordinary trigger"
    );
}

#[tokio::test]
async fn whatsapp_verification_and_a_signed_message() {
    let s = Inbound::start().await;
    let url = s
        .app
        .url("/inbound/wa?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444");
    let answer = s.http.get(url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().await.unwrap(), "1158201444");
    let wrong = s
        .app
        .url("/inbound/wa?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1");
    assert_eq!(
        s.http.get(wrong).send().await.unwrap().status().as_u16(),
        403
    );

    let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Ann"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.A1","timestamp":"1749416383","type":"text","text":{"body":"Yes please"}}]}}]}]}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(WA_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (status, _, _) = s
        .post(
            "/inbound/wa",
            "application/json",
            &[("x-hub-signature-256", signature)],
            body,
        )
        .await;
    assert_eq!(status, 200);
    let runs = s.runs().await;
    assert_eq!(runs.len(), 1);
    let (status, _, _) = s
        .post(
            "/inbound/wa",
            "application/json",
            &[("x-hub-signature-256", "sha256=00".into())],
            body,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_telegram_chat_id_is_never_taken_for_a_phone_number() {
    let s = Inbound::start().await;
    // A chat id that reads as a US number: its STOP must not opt that number out.
    let update = r#"{"update_id":5001,"message":{"message_id":7,"date":1764800000,"chat":{"id":2025550123,"type":"private"},"from":{"id":2025550123,"is_bot":false,"first_name":"Ann"},"text":"STOP"}}"#;
    let secret = [("x-telegram-bot-api-secret-token", TG_SECRET.to_owned())];
    let (status, _, _) = s
        .post("/inbound/tg", "application/json", &secret, update)
        .await;
    assert_eq!(status, 200);
    let contact = s
        .app
        .engine
        .store
        .find_contact(None, Some("+12025550123"))
        .await
        .unwrap();
    assert!(contact.is_none(), "{contact:?}");

    let (status, _, _) = s.post("/inbound/tg", "application/json", &[], update).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_channel_that_receives_nothing_or_none_at_all_is_404() {
    let s = Inbound::start().await;
    let (status, _, text) = s.post("/inbound/email", FORM, &[], "x=1").await;
    assert_eq!(status, 404);
    assert!(text.contains("receives nothing"), "{text}");
    let (status, _, text) = s.post("/inbound/nope", FORM, &[], "x=1").await;
    assert_eq!(status, 404);
    assert!(text.contains("no channel `nope`"), "{text}");
}

#[tokio::test]
async fn twilio_delivery_reports_update_the_message_and_emit_one_event() {
    let s = Inbound::start().await;
    // A run texts through the stand-in of Twilio's API, which gives the message its sid.
    let run_id = s.start_for("/hooks/notify", "+14155550100").await;
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);
    assert_eq!(s.twilio.posted().len(), 1);
    let outbox = || async { s.messages_of(&run_id).await };
    let sid = s.sent_sid(&run_id).await;

    for status in ["delivered", "delivered", "sent"] {
        let code = s
            .post_as_twilio(&[
                ("MessageSid", sid.as_str()),
                ("MessageStatus", status),
                ("To", "+14155550100"),
                ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
            ])
            .await;
        assert_eq!(code, 200, "{status}");
    }
    // `sent` arrived late: it does not undo `delivered`.
    let message = &outbox().await[0];
    assert_eq!(message.delivery.as_deref(), Some("delivered"));
    assert!(message.delivery_at.is_some());
    // Reported twice, one event: one run of the workflow that listens for it.
    let watchers = s.runs_of("watch").await;
    assert_eq!(watchers.len(), 1, "{watchers:?}");

    // A report on a message Herald never sent changes nothing, and is still answered 200.
    let code = s
        .post_as_twilio(&[("MessageSid", "SMunknown"), ("MessageStatus", "failed")])
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.runs_of("watch").await.len(), 1);
}

#[tokio::test]
async fn a_number_twilio_reports_unsubscribed_gets_no_more_marketing_on_that_channel() {
    let s = Inbound::start().await;
    let first = s.start_for("/hooks/promo", "+14155550100").await;
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);
    let sid = s.sent_sid(&first).await;

    // The person had replied STOP to the number itself: Twilio fails the message with 21610.
    let code = s
        .post_as_twilio(&[
            ("MessageSid", sid.as_str()),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "21610"),
        ])
        .await;
    assert_eq!(code, 200);

    let second = s.start_for("/hooks/promo", "+14155550100").await;
    assert!(
        s.messages_of(&second).await.is_empty(),
        "a marketing text was queued for a number Twilio reported unsubscribed"
    );
    let steps = s.app.engine.store.step_log(&second).await.unwrap();
    let output = steps[0].output.clone().unwrap_or_default();
    assert_eq!(output["status"], "suppressed", "{output}");
    let reason = output["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("suppressed on channel `sms`"), "{reason}");
    assert_eq!(s.twilio.posted().len(), 1);
}

#[tokio::test]
async fn a_message_nothing_takes_is_one_message_unmatched_event() {
    let s = Inbound::start().await;
    let engine = &s.app.engine;
    // No trigger listens on `email`, and no run waits for Ann.
    let routed = engine
        .inbound_message("email", "ann@example.org", "hello?", Some("m-1"))
        .await
        .unwrap();
    assert!(routed.started_runs.is_empty());
    assert_eq!(s.runs_of("fallback-answer").await.len(), 1);
    engine
        .inbound_message("email", "ann@example.org", "hello?", Some("m-1"))
        .await
        .unwrap();
    assert_eq!(
        s.runs_of("fallback-answer").await.len(),
        1,
        "a message delivered again is one event"
    );

    // A text a trigger takes is not unmatched.
    let code = s.text("+14155550100", "SM0009", "Hi there").await;
    assert_eq!(code, 200);
    assert_eq!(s.runs().await.len(), 1);
    assert_eq!(s.runs_of("fallback-answer").await.len(), 1);
}

#[tokio::test]
async fn start_with_a_phone_number_links_a_telegram_chat_to_the_contact_in_yaml() {
    let s = Inbound::start().await;
    let secret = [("x-telegram-bot-api-secret-token", TG_SECRET.to_owned())];
    let send = |id: u32, chat: u64, text: &str| {
        let update = json!({"update_id": 6000 + id, "message": {"message_id": id, "date": 1764800000,
            "chat": {"id": chat, "type": "private"}, "from": {"id": chat, "is_bot": false, "first_name": "Ann"},
            "text": text}})
        .to_string();
        let (s, secret) = (&s, &secret);
        async move {
            let (status, _, _) = s
                .post("/inbound/tg", "application/json", secret, &update)
                .await;
            assert_eq!(status, 200);
            // The message started its runs (and the assistant's); a worker takes them.
            s.app.engine.run_due().await.unwrap();
        }
    };
    let store = &s.app.engine.store;
    let holder = |chat: &'static str| async move {
        store
            .contact_by_address("tg", chat)
            .await
            .unwrap()
            .and_then(|c| c.phone)
    };
    send(9, 1111111, "/start +14155550100").await;
    assert_eq!(s.runs_of("link-telegram").await.len(), 1);
    let contact = store
        .find_contact(None, Some("+14155550100"))
        .await
        .unwrap()
        .expect("the contact the payload names");
    assert_eq!(contact.addresses["tg"], "1111111");
    assert_eq!(holder("1111111").await.as_deref(), Some("+14155550100"));

    // The same person links from another chat: the link moves, one chat per channel.
    send(10, 2222222, "/start +14155550100").await;
    assert_eq!(holder("2222222").await.as_deref(), Some("+14155550100"));
    assert_eq!(holder("1111111").await, None);

    // A second person cannot take the first one's chat by accident: linking it moves it.
    send(11, 2222222, "/start +14155550199").await;
    assert_eq!(holder("2222222").await.as_deref(), Some("+14155550199"));
    let first = store
        .find_contact(None, Some("+14155550100"))
        .await
        .unwrap()
        .unwrap();
    assert!(first.addresses.is_empty(), "{:?}", first.addresses);

    // /reset clears the link; the contact stays.
    send(12, 2222222, "/reset").await;
    assert_eq!(holder("2222222").await, None);
    let second = store
        .find_contact(None, Some("+14155550199"))
        .await
        .unwrap()
        .expect("still there");
    assert!(second.addresses.is_empty(), "{:?}", second.addresses);
}

#[tokio::test]
async fn a_text_twilio_refuses_with_21610_suppresses_the_number_on_that_channel() {
    let s = Inbound::start().await;
    s.twilio.stop_recipient("+14155550100");
    let first = s.start_for("/hooks/promo", "+14155550100").await;
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);
    let message = &s.messages_of(&first).await[0];
    assert_eq!(message.status, herald::store::OutboxStatus::Failed);
    assert_eq!(
        s.app
            .engine
            .store
            .address_suppression("sms", "+14155550100")
            .await
            .unwrap()
            .as_deref(),
        Some("unsubscribed")
    );
    // The next marketing text is not even queued.
    let second = s.start_for("/hooks/promo", "+14155550100").await;
    assert!(s.messages_of(&second).await.is_empty());
    assert_eq!(s.twilio.posted().len(), 1);
}

#[tokio::test]
async fn one_sender_cannot_flood_the_workflows() {
    let s = Inbound::start().await;
    for n in 0..5 {
        let (body, signature) =
            text_from("+14155550111", &format!("SM10{n}"), &format!("message {n}"));
        let (code, _, answer) = s
            .post(
                "/inbound/sms",
                FORM,
                &[("x-twilio-signature", signature)],
                &body,
            )
            .await;
        // Twilio gets its usual answer either way, so it does not send the flood again.
        assert_eq!((code, answer.as_str()), (200, EMPTY_TWIML), "message {n}");
    }
    assert_eq!(
        s.runs().await.len(),
        3,
        "compliance.inbound_limit is 3 a minute"
    );
    // Another sender is not held back by the first.
    let (body, signature) = text_from("+14155550122", "SM200", "hello");
    s.post(
        "/inbound/sms",
        FORM,
        &[("x-twilio-signature", signature)],
        &body,
    )
    .await;
    assert_eq!(s.runs().await.len(), 4);
}

#[tokio::test]
async fn an_operator_lists_and_lifts_a_suppression() {
    let s = Inbound::start().await;
    s.twilio.stop_recipient("+14155550100");
    s.start_for("/hooks/promo", "+14155550100").await;
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);

    let api = |method: reqwest::Method, path: &str| {
        s.http
            .request(method, s.app.url(path))
            .header("x-api-key", ADMIN_KEY)
    };
    let list: Value = api(reqwest::Method::GET, "/api/suppressions?channel=sms")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &list["suppressions"][0];
    assert_eq!(
        (&first["address"], &first["reason"]),
        (&json!("+14155550100"), &json!("unsubscribed")),
        "{list}"
    );

    let lifted = api(
        reqwest::Method::DELETE,
        "/api/suppressions/sms/%2B14155550100",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(lifted.status().as_u16(), 200);
    let again = api(
        reqwest::Method::DELETE,
        "/api/suppressions/sms/%2B14155550100",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(again.status().as_u16(), 404);
    let unkeyed = s
        .http
        .get(s.app.url("/api/suppressions"))
        .send()
        .await
        .unwrap();
    assert_eq!(unkeyed.status().as_u16(), 401);

    // Lifted: the next text is queued again.
    let next = s.start_for("/hooks/promo", "+14155550100").await;
    assert_eq!(s.messages_of(&next).await.len(), 1);
}

#[tokio::test]
async fn a_whatsapp_template_goes_through_the_outbox_to_meta_with_its_values_rendered() {
    let s = Inbound::start().await;
    s.meta
        .approve_template("application_reminder", "en_US", 0, 2);
    let request = |template: &str, first_name: &str| {
        json!({"to": "+16505551234", "template": template, "first_name": first_name,
               "when": "Tuesday, 3 pm", "application": "app-4711"})
    };
    let run_id = s
        .start_with("/hooks/wa-reminder", request("application_reminder", "Ann"))
        .await;
    let queued = &s.messages_of(&run_id).await[0];
    assert_eq!(queued.status, herald::store::OutboxStatus::Pending);
    assert!(
        s.meta.sent().is_empty(),
        "nothing is sent before the dispatcher runs"
    );
    assert_eq!(
        queued.body,
        "[template application_reminder (en_US)] Ann | Tuesday, 3 pm | app-4711"
    );

    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);
    assert_eq!(
        s.meta.sent(),
        [json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "16505551234",
            "type": "template",
            "template": {
                "name": "application_reminder",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "body", "parameters": [
                        {"type": "text", "text": "Ann"},
                        {"type": "text", "text": "Tuesday, 3 pm"}
                    ]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": "app-4711"}]}
                ]
            }
        })]
    );
    let sent = &s.messages_of(&run_id).await[0];
    assert_eq!(sent.status, herald::store::OutboxStatus::Sent);
    assert_eq!(sent.provider_id.as_deref(), Some("wamid.1"));

    // A template Meta does not know fails for good, saying which, and is not retried.
    let run_id = s
        .start_with("/hooks/wa-reminder", request("application_remindr", "Ann"))
        .await;
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);
    let failed = &s.messages_of(&run_id).await[0];
    assert_eq!(failed.status, herald::store::OutboxStatus::Failed);
    let error = failed.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("132001") && error.contains("`application_remindr`"),
        "{error}"
    );
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 0);

    // An empty value would be refused by Meta without saying which; the step says.
    let run_id = s
        .start_with("/hooks/wa-reminder", request("application_reminder", " "))
        .await;
    let run = s.app.engine.store.run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, herald::store::RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("body value 1 of template `application_reminder` is empty"),
        "{error}"
    );
    assert!(s.messages_of(&run_id).await.is_empty());
    assert_eq!(s.meta.sent().len(), 2);
}

#[tokio::test]
async fn a_signed_missed_call_starts_its_workflow_once_however_often_twilio_reports_it() {
    let s = Inbound::start().await;
    // The number's "A call comes in" webhook: the call is forwarded, with this URL as the
    // <Dial>'s action; nothing is recorded yet.
    let (status, kind, answer) = s
        .call("+14155550100", "CA0001", &[("CallStatus", "ringing")])
        .await;
    assert_eq!((status, kind.as_deref()), (200, Some("text/xml")));
    assert_eq!(
        answer,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial \
         action=\"https://herald.example.com/inbound/sms\" method=\"POST\" timeout=\"15\">\
         +15558675310</Dial></Response>"
    );
    assert!(s.runs_of("missed-call").await.is_empty());

    // The <Dial> rang out: a missed call, answered with TwiML that ends the call.
    let dial_ended = [
        ("CallStatus", "in-progress"),
        ("DialCallStatus", "no-answer"),
    ];
    let (status, kind, answer) = s.call("+14155550100", "CA0001", &dial_ended).await;
    assert_eq!(
        (status, kind.as_deref(), answer.as_str()),
        (200, Some("text/xml"), EMPTY_TWIML)
    );
    let runs = s.runs_of("missed-call").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let event = &runs[0].context["event"];
    assert_eq!(event["key"], "+14155550100");
    assert_eq!(
        event["data"],
        json!({"channel": "sms", "from": "+14155550100", "to": "+15017122661",
               "status": "no-answer", "call_sid": "CA0001"})
    );

    // Twilio retries the action, and the number's status callback reports the call too:
    // one call, one run.
    assert_eq!(s.call("+14155550100", "CA0001", &dial_ended).await.0, 200);
    let status_callback = [("CallStatus", "busy"), ("CallDuration", "0")];
    assert_eq!(
        s.call("+14155550100", "CA0001", &status_callback).await.0,
        200
    );
    assert_eq!(s.runs_of("missed-call").await.len(), 1);

    // The run texts the caller back from the number they called, through Twilio.
    assert_eq!(s.app.engine.run_due().await.unwrap(), 1);
    assert_eq!(s.app.engine.deliver_due().await.unwrap(), 1);
    let posted = s.twilio.posted();
    assert_eq!(posted.len(), 1);
    assert_eq!(
        (posted[0].field("To"), posted[0].field("From")),
        (Some("+14155550100"), Some("+15017122661"))
    );
}

#[tokio::test]
async fn a_call_with_a_bad_signature_is_refused_and_stores_nothing() {
    let s = Inbound::start().await;
    let (body, _) = twilio_form(&[
        ("CallSid", "CA0002"),
        ("From", "+14155550100"),
        ("To", "+15017122661"),
        ("Direction", "inbound"),
        ("CallStatus", "no-answer"),
    ]);
    // Signed for other fields: forged.
    let (_, other) = twilio_form(&[("CallSid", "CA0002"), ("CallStatus", "completed")]);
    let (status, _, why) = s
        .post(
            "/inbound/sms",
            FORM,
            &[("x-twilio-signature", other)],
            &body,
        )
        .await;
    assert_eq!(status, 403, "{why}");
    let (status, _, why) = s.post("/inbound/sms", FORM, &[], &body).await;
    assert_eq!(status, 403);
    assert!(why.contains("X-Twilio-Signature"), "{why}");
    assert!(s.missed_call_event("+14155550100").await.is_none());
    assert!(s.runs_of("missed-call").await.is_empty());
}

#[tokio::test]
async fn a_completed_call_is_not_a_missed_call() {
    let s = Inbound::start().await;
    // Forwarded and answered: the <Dial> completed, then the call itself did.
    let dial_ended = [
        ("CallStatus", "in-progress"),
        ("DialCallStatus", "completed"),
    ];
    let (status, kind, answer) = s.call("+14155550100", "CA0003", &dial_ended).await;
    assert_eq!(
        (status, kind.as_deref(), answer.as_str()),
        (200, Some("text/xml"), EMPTY_TWIML)
    );
    let done = [("CallStatus", "completed"), ("CallDuration", "95")];
    assert_eq!(s.call("+14155550100", "CA0003", &done).await.0, 200);
    assert!(s.missed_call_event("+14155550100").await.is_none());
    assert!(s.runs_of("missed-call").await.is_empty());
    // Nor is a call the account made that nobody picked up.
    let (body, signature) = twilio_form(&[
        ("CallSid", "CA0004"),
        ("From", "+15017122661"),
        ("To", "+14155550100"),
        ("Direction", "outbound-api"),
        ("CallStatus", "no-answer"),
    ]);
    let signed = [("x-twilio-signature", signature)];
    assert_eq!(s.post("/inbound/sms", FORM, &signed, &body).await.0, 200);
    assert!(s.missed_call_event("+15017122661").await.is_none());
    assert!(s.runs_of("missed-call").await.is_empty());
}

/// The shipped missed-call text-back and opt-out workflows, on Twilio: a missed call is texted
/// back, the reply is routed, STOP ends the texts (a second missed call gets none), and HELP
/// is still answered.
#[tokio::test]
async fn a_missed_call_is_texted_back_until_stop_and_help_is_answered() {
    let shipped = |path: &str| {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap()
    };
    let config = CONFIG.replace(
        "compliance:\n",
        "compliance:\n  help_reply: \"Acme Auto: missed-call texts. Reply STOP to stop.\"\n",
    ) + "  ops: { provider: log }\n";
    let s = Inbound::start_project(&config, |dir| {
        for file in [
            "workflows/missed-call-textback.yaml",
            "workflows/sms-opt-out.yaml",
            "templates/sms/missed-call.txt.j2",
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, shipped(file)).unwrap();
        }
    })
    .await;
    let caller = "+14155550100";
    let engine = &s.app.engine;
    let settle = || async {
        while engine.run_due().await.unwrap() + engine.deliver_due().await.unwrap() > 0 {}
    };
    let texts = || {
        s.twilio
            .posted()
            .iter()
            .map(|p| p.field("Body").unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };

    let missed = [("CallStatus", "no-answer"), ("CallDuration", "0")];
    assert_eq!(s.call(caller, "CA1", &missed).await.0, 200);
    settle().await;
    assert_eq!(texts().len(), 1, "the text-back: {:?}", texts());
    let run = s.runs_of("missed-call-textback").await.remove(0);
    assert_eq!(s.twilio.posted()[0].field("To"), Some(caller));

    assert_eq!(s.text(caller, "SM1", "Book me in please").await, 200);
    settle().await;
    assert_eq!(
        texts()[1],
        "Thanks! The office will call you within the hour to find a time."
    );
    let run = s.app.engine.store.run(&run.id).await.unwrap().unwrap();
    assert_eq!(run.status, herald::store::RunStatus::Completed);

    assert_eq!(s.text(caller, "SM2", "STOP").await, 200);
    settle().await;
    assert_eq!(
        texts()[2],
        "You are unsubscribed and will get no more texts. Reply START to resubscribe."
    );

    // Another missed call: the workflow runs, and its text-back is suppressed.
    assert_eq!(s.call(caller, "CA2", &missed).await.0, 200);
    settle().await;
    assert_eq!(texts().len(), 3, "nothing more after STOP: {:?}", texts());
    let second = s
        .runs_of("missed-call-textback")
        .await
        .into_iter()
        .find(|r| r.id != run.id)
        .unwrap();
    let second = s.app.engine.store.run(&second.id).await.unwrap().unwrap();
    assert_eq!(
        second.context["steps"]["text_back"]["output"]["status"], "suppressed",
        "{}",
        second.context["steps"]["text_back"]["output"]
    );

    // HELP is answered all the same.
    assert_eq!(s.text(caller, "SM3", "help").await, 200);
    settle().await;
    assert_eq!(texts().len(), 4);
    assert_eq!(
        texts()[3],
        "Acme Auto: missed-call texts. Reply STOP to stop."
    );
}

const TAKEOVER: &str = r#"
kind: conversation
id: takeover
channels: [email]
start:
  - keyword: [agent]
steps:
  - id: human
    handoff: { say: "A colleague will answer you here.", timeout: 1h }
  - end: "The bot again: bye."
"#;

/// The agent inbox over HTTP: the transcript, an agent's reply and the release, each refused
/// with a reason when it cannot be done.
#[tokio::test]
async fn an_agent_answers_and_releases_a_conversation_through_the_api() {
    let s = Inbound::start_project(CONFIG, |dir| {
        std::fs::write(dir.path().join("workflows/takeover.yaml"), TAKEOVER).unwrap();
    })
    .await;
    let api = |method: reqwest::Method, path: &str| {
        s.http
            .request(method, s.app.url(path))
            .header("x-api-key", ADMIN_KEY)
    };
    let started: Value = api(reqwest::Method::POST, "/api/messages/email")
        .json(&json!({"from": "ana@example.com", "text": "agent"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["started_runs"][0].as_str().unwrap().to_owned();
    s.app.engine.run_due().await.unwrap();
    let path = format!("/api/conversations/{id}/messages");
    let reply = api(reqwest::Method::POST, &path)
        .json(&json!({"text": "Hi Ana, Sam here.", "by": "sam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    let empty = api(reqwest::Method::POST, &path)
        .json(&json!({"text": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status().as_u16(), 422);
    let t: Value = api(reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["handed_off"], true, "{t}");
    let texts: Vec<&str> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "agent",
            "A colleague will answer you here.",
            "Hi Ana, Sam here."
        ]
    );
    let released = api(
        reqwest::Method::POST,
        &format!("/api/conversations/{id}/release"),
    )
    .json(&json!({"by": "sam"}))
    .send()
    .await
    .unwrap();
    assert_eq!(released.status().as_u16(), 200);
    s.app.engine.run_due().await.unwrap();
    let again = api(
        reqwest::Method::POST,
        &format!("/api/conversations/{id}/release"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(again.status().as_u16(), 409);
    let t: Value = api(reqwest::Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(
        t["messages"].as_array().unwrap().last().unwrap()["text"],
        "The bot again: bye."
    );
    let missing = api(reqwest::Method::GET, "/api/conversations/nope/messages")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}
