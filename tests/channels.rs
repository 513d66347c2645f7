//! The delivery channels against real servers on loopback: an SMTP server for `smtp`, an
//! HTTP server for `webhook`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald::channels::mailgun::config::MailgunConfig;
use herald::channels::resend::config::ResendConfig;
use herald::channels::telegram::config::TelegramConfig;
use herald::channels::twilio_sms::config::TwilioSmsConfig;
use herald::channels::whatsapp::config::WhatsappConfig;
use herald::channels::{
    self, ApprovedTemplate, ButtonKind, ButtonValue, Channel, Channels, DeliveryError,
    OutboundMessage, TemplateValue,
};
use herald::definitions::env::EnvSource;
use herald::definitions::model::ConfigDef;
use herald::definitions::model::config::{
    ChannelConfig, SmtpConfig, SmtpTls, WebhookChannelConfig,
};
use indexmap::IndexMap;
use serde_json::json;
use support::email_api::{MAILGUN_DOMAIN, MAILGUN_KEY, RESEND_KEY, RESEND_SENDING_KEY};
use support::telegram::BOT_TOKEN;
use support::twilio::{ACCOUNT_SID, API_KEY, API_SECRET, AUTH_TOKEN};
use support::whatsapp::{ACCESS_TOKEN, PHONE_NUMBER_ID};
use support::{
    FakeMailgun, FakeResend, FakeTelegram, FakeTwilio, FakeWhatsapp, HttpSink, Reply, SmtpSink,
};

const WAIT: Duration = Duration::from_secs(5);

fn env(vars: &[(&str, &str)]) -> EnvSource {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    EnvSource::Map(Arc::new(map))
}

fn message(key: &str, to: &str) -> OutboundMessage {
    OutboundMessage {
        id: format!("outbox-{key}"),
        idempotency_key: key.to_owned(),
        channel: "email".to_owned(),
        to: to.to_owned(),
        from: None,
        subject: Some("Welcome aboard".to_owned()),
        body: "Hello Ann,\nyour account is ready.".to_owned(),
        html: false,
        headers: IndexMap::new(),
        run_id: Some("run-1".to_owned()),
        workflow_id: Some("onboarding".to_owned()),
        step_id: Some("welcome".to_owned()),
        approved_template: None,
    }
}

fn smtp_config(port: u16) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".to_owned(),
        port: Some(port),
        username: None,
        password: None,
        tls: SmtpTls::None,
        from: "Herald <herald@example.com>".to_owned(),
        timeout: herald::definitions::model::Duration::from_secs(5),
    }
}

fn webhook_config(url: String) -> WebhookChannelConfig {
    WebhookChannelConfig {
        url,
        headers: IndexMap::new(),
        timeout: herald::definitions::model::Duration::from_secs(5),
    }
}

/// Builds the channels of a config holding just `channel`, named `name`.
fn build_one(name: &str, channel: ChannelConfig, env: &EnvSource) -> Arc<dyn Channel> {
    let mut config = ConfigDef::default();
    config.channels.insert(name.to_owned(), channel.into());
    let channels = channels::build(&config, env).expect("channels build");
    Arc::clone(&channels[name])
}

fn smtp_channel(config: SmtpConfig) -> Arc<dyn Channel> {
    build_one("email", ChannelConfig::Smtp(config), &env(&[]))
}

fn webhook_channel(config: WebhookChannelConfig) -> Arc<dyn Channel> {
    build_one("hook", ChannelConfig::Webhook(config), &env(&[]))
}

/// A port on which nothing listens: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

fn expect_transient(
    result: Result<channels::Delivered, DeliveryError>,
) -> (String, Option<Duration>) {
    match result {
        Err(DeliveryError::Transient {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

fn expect_permanent(result: Result<channels::Delivered, DeliveryError>) -> String {
    match result {
        Err(DeliveryError::Permanent { message }) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// A failure that also says the recipient cannot be reached on the channel any more.
fn expect_unreachable(result: Result<channels::Delivered, DeliveryError>) -> String {
    match result {
        Err(DeliveryError::Unreachable { message, reason }) => {
            assert_eq!(reason, "unsubscribed", "{message}");
            message
        }
        other => panic!("expected the recipient to be unreachable, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// SMTP

#[tokio::test]
async fn smtp_delivers_a_plain_text_message() {
    let sink = SmtpSink::start().await;
    let channel = smtp_channel(smtp_config(sink.port()));
    let mut msg = message("run-1/welcome/0", "Ann Example <ann@example.org>");
    msg.subject = Some("Bienvenue, Ann ✓".to_owned());
    msg.body = "Hello Ann,\nyour account is ready. Café?".to_owned();
    msg.headers
        .insert("X-Campaign".to_owned(), "spring-2025".to_owned());
    msg.headers.insert(
        "Subject".to_owned(),
        "must not replace the subject".to_owned(),
    );

    let delivered = channel.deliver(&msg).await.expect("delivered");

    let mails = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.envelope_from, "herald@example.com");
    assert_eq!(mail.recipients, ["ann@example.org"]);
    assert_eq!(mail.subject.as_deref(), Some("Bienvenue, Ann ✓"));
    assert_eq!(mail.body(), "Hello Ann,\nyour account is ready. Café?");
    let from = mail.header("From").expect("From header");
    assert!(from.contains("<herald@example.com>"), "From: {from}");
    let to = mail.header("To").expect("To header");
    assert!(to.contains("ann@example.org"), "To: {to}");
    assert_eq!(
        mail.header("Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(mail.header("X-Campaign").as_deref(), Some("spring-2025"));
    assert_eq!(
        mail.headers()
            .iter()
            .filter(|(n, _)| n == "Subject")
            .count(),
        1
    );
    assert_eq!(delivered.provider_id, mail.message_id);
    let id = mail.message_id.as_deref().expect("Message-ID");
    assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
}

#[tokio::test]
async fn smtp_sends_html_with_a_plain_text_alternative() {
    let sink = SmtpSink::start().await;
    let channel = smtp_channel(smtp_config(sink.port()));
    let mut msg = message("run-1/welcome/0", "ann@example.org");
    msg.html = true;
    msg.body = "<p>Hello <b>Ann</b></p>".to_owned();

    channel.deliver(&msg).await.expect("delivered");

    let mail = &sink.wait_for_messages(1, WAIT).await[0];
    let kind = mail.header("Content-Type").unwrap_or_default();
    assert!(kind.starts_with("multipart/alternative;"), "{kind}");
    let parts = mail.parts();
    assert_eq!(parts.len(), 2, "{}", mail.data);
    // The plain text first, the HTML last: a client shows the last part it can.
    assert_eq!(
        parts[0].header("Content-Type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(parts[0].body(), "Hello Ann");
    assert_eq!(
        parts[1].header("Content-Type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(parts[1].body(), "<p>Hello <b>Ann</b></p>");
}

#[tokio::test]
async fn smtp_message_id_follows_the_idempotency_key() {
    let sink = SmtpSink::start().await;
    let channel = smtp_channel(smtp_config(sink.port()));

    let first = channel
        .deliver(&message("run-1/welcome/0", "ann@example.org"))
        .await
        .expect("first");
    // The same message again, as after a crash between sending and recording it.
    let again = channel
        .deliver(&message("run-1/welcome/0", "ann@example.org"))
        .await
        .expect("again");
    let other = channel
        .deliver(&message("run-1/welcome/1", "ann@example.org"))
        .await
        .expect("other");
    let mut from_sales = message("run-1/welcome/0", "ann@example.org");
    from_sales.from = Some("Sales <sales@example.net>".to_owned());
    let overridden = channel.deliver(&from_sales).await.expect("overridden");

    let mails = sink.wait_for_messages(4, WAIT).await;
    let ids: Vec<_> = mails.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_eq!(
        [first.provider_id, again.provider_id, other.provider_id],
        [ids[0].clone(), ids[1].clone(), ids[2].clone()]
    );
    // The id names the sender's domain.
    let sales_id = ids[3].clone().expect("id");
    assert!(sales_id.ends_with("@example.net>"), "{sales_id}");
    assert_eq!(overridden.provider_id, Some(sales_id));
    assert_eq!(mails[3].envelope_from, "sales@example.net");
}

#[tokio::test]
async fn smtp_reuses_its_connection() {
    let sink = SmtpSink::start().await;
    let channel = smtp_channel(smtp_config(sink.port()));
    for n in 0..3 {
        channel
            .deliver(&message(&format!("run-1/welcome/{n}"), "ann@example.org"))
            .await
            .expect("delivered");
        // lettre returns a connection to its pool from a task of its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.wait_for_messages(3, WAIT).await;
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn smtp_550_on_rcpt_is_permanent() {
    let sink = SmtpSink::start().await;
    sink.reject_recipient("gone@example.org", 550);
    let channel = smtp_channel(smtp_config(sink.port()));

    let error = expect_permanent(
        channel
            .deliver(&message("run-1/welcome/0", "gone@example.org"))
            .await,
    );
    assert!(error.contains("550"), "{error}");
    assert!(sink.messages().is_empty());

    // The refused transaction does not spoil the channel for the next message.
    channel
        .deliver(&message("run-1/welcome/1", "ann@example.org"))
        .await
        .expect("next message delivered");
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn smtp_451_on_rcpt_is_transient_and_a_retry_succeeds() {
    let sink = SmtpSink::start().await;
    sink.reject_recipient_times("ann@example.org", 451, 1);
    let channel = smtp_channel(smtp_config(sink.port()));
    let msg = message("run-1/welcome/0", "ann@example.org");

    let (error, retry_after) = expect_transient(channel.deliver(&msg).await);
    assert!(error.contains("451"), "{error}");
    assert_eq!(retry_after, None);
    assert!(sink.messages().is_empty());

    channel.deliver(&msg).await.expect("the retry is delivered");
    let mails = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].recipients, ["ann@example.org"]);
}

#[tokio::test]
async fn smtp_with_nothing_listening_is_transient() {
    let channel = smtp_channel(smtp_config(closed_port()));
    let (error, _) = expect_transient(
        channel
            .deliver(&message("run-1/welcome/0", "ann@example.org"))
            .await,
    );
    assert!(error.contains("127.0.0.1"), "{error}");
}

#[tokio::test]
async fn smtp_bad_address_is_permanent_and_says_which() {
    let sink = SmtpSink::start().await;
    let channel = smtp_channel(smtp_config(sink.port()));

    let error = expect_permanent(
        channel
            .deliver(&message("run-1/welcome/0", "ann at example.org"))
            .await,
    );
    assert!(
        error.contains("recipient address `ann at example.org`"),
        "{error}"
    );

    let mut msg = message("run-1/welcome/0", "ann@example.org");
    msg.from = Some("sales@".to_owned());
    let error = expect_permanent(channel.deliver(&msg).await);
    assert!(error.contains("sender address `sales@`"), "{error}");

    assert!(sink.messages().is_empty());
    assert_eq!(sink.connections(), 0);
}

#[tokio::test]
async fn smtp_relay_that_hangs_times_out_as_transient() {
    let sink = SmtpSink::start().await;
    let mut config = smtp_config(sink.port());
    config.timeout = herald::definitions::model::Duration(Duration::from_millis(300));
    let channel = smtp_channel(config);

    sink.pause();
    let started = std::time::Instant::now();
    let (error, _) = expect_transient(
        channel
            .deliver(&message("run-1/welcome/0", "ann@example.org"))
            .await,
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("300ms"), "{error}");

    // The abandoned connection is not reused: the next delivery starts a clean one.
    sink.resume();
    channel
        .deliver(&message("run-1/welcome/1", "ann@example.org"))
        .await
        .expect("delivered after the relay recovers");
    let mails = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn smtp_logs_in_with_credentials_from_the_environment() {
    let sink = SmtpSink::start_with_login("mailer", "hunter2").await;
    let mut config = smtp_config(sink.port());
    config.username = Some("${env:SMTP_USER}".to_owned());
    config.password = Some("${env:SMTP_PASSWORD}".to_owned());
    let vars = env(&[("SMTP_USER", "mailer"), ("SMTP_PASSWORD", "hunter2")]);
    let channel = build_one("email", ChannelConfig::Smtp(config.clone()), &vars);

    channel
        .deliver(&message("run-1/welcome/0", "ann@example.org"))
        .await
        .expect("delivered");
    let mails = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].authenticated_as.as_deref(), Some("mailer"));

    let wrong = env(&[("SMTP_USER", "mailer"), ("SMTP_PASSWORD", "wrong")]);
    let channel = build_one("email", ChannelConfig::Smtp(config), &wrong);
    let error = expect_permanent(
        channel
            .deliver(&message("run-1/welcome/1", "ann@example.org"))
            .await,
    );
    assert!(error.contains("535"), "{error}");
    assert!(!error.contains("wrong"), "the password leaked: {error}");
}

// ---------------------------------------------------------------------------------------
// Webhook

#[tokio::test]
async fn webhook_posts_the_message_as_json() {
    let sink = HttpSink::start().await;
    let mut config = webhook_config(sink.url("/hooks/messages"));
    config.headers.insert(
        "Authorization".to_owned(),
        "Bearer ${env:HOOK_TOKEN}".to_owned(),
    );
    let vars = env(&[("HOOK_TOKEN", "t0ken")]);
    let channel = build_one("hook", ChannelConfig::Webhook(config), &vars);
    let mut msg = message("run-1/notify/0", "+15555550100");
    msg.channel = "hook".to_owned();
    msg.html = true;
    msg.from = Some("Herald".to_owned());
    msg.headers
        .insert("X-Priority".to_owned(), "high".to_owned());

    let delivered = channel.deliver(&msg).await.expect("delivered");

    let requests = sink.wait_for_requests(1, WAIT).await;
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/messages");
    assert_eq!(request.idempotency_key(), Some("run-1/notify/0"));
    assert_eq!(request.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json,
        serde_json::json!({
            "id": "outbox-run-1/notify/0",
            "idempotency_key": "run-1/notify/0",
            "channel": "hook",
            "to": "+15555550100",
            "from": "Herald",
            "subject": "Welcome aboard",
            "body": "Hello Ann,\nyour account is ready.",
            "html": true,
            "headers": {"X-Priority": "high"},
            "run_id": "run-1",
            "workflow_id": "onboarding",
            "step_id": "welcome",
        })
    );
    // The sink's default answer is {"id": "sink-1"}.
    assert_eq!(delivered.provider_id.as_deref(), Some("sink-1"));
    assert_eq!(sink.unique_keys(), ["run-1/notify/0"]);
}

#[tokio::test]
async fn webhook_provider_id_comes_from_the_response_when_there_is_one() {
    let sink = HttpSink::start().await;
    let channel = webhook_channel(webhook_config(sink.url("/hook")));
    sink.respond_next(
        1,
        Reply::ok().json(serde_json::json!({"id": "prov-42", "ok": true})),
    );
    sink.respond_next(1, Reply::status(202).body("accepted"));
    sink.respond_next(1, Reply::ok().json(serde_json::json!({"id": 42})));

    let ids = [
        channel.deliver(&message("k1", "ann")).await.expect("1"),
        channel.deliver(&message("k2", "ann")).await.expect("2"),
        channel.deliver(&message("k3", "ann")).await.expect("3"),
    ]
    .map(|d| d.provider_id);
    assert_eq!(ids, [Some("prov-42".to_owned()), None, None]);
}

#[tokio::test]
async fn webhook_500_is_transient_and_the_retry_carries_the_same_key() {
    let sink = HttpSink::start().await;
    sink.fail_next(1, 500);
    let channel = webhook_channel(webhook_config(sink.url("/hook")));
    let msg = message("run-1/notify/0", "ann");

    let (error, retry_after) = expect_transient(channel.deliver(&msg).await);
    assert!(error.contains("500"), "{error}");
    assert_eq!(retry_after, None);

    channel.deliver(&msg).await.expect("the retry is delivered");
    assert_eq!(sink.count_for_key("run-1/notify/0"), 2);
    assert_eq!(sink.duplicate_keys(), ["run-1/notify/0"]);
    let answered: Vec<u16> = sink.requests().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 200]);
}

#[tokio::test]
async fn webhook_429_is_transient_with_retry_after() {
    let sink = HttpSink::start().await;
    sink.respond_next(1, Reply::status(429).retry_after(7));
    let channel = webhook_channel(webhook_config(sink.url("/hook")));

    let (error, retry_after) = expect_transient(channel.deliver(&message("k", "ann")).await);
    assert!(error.contains("429"), "{error}");
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn webhook_400_is_permanent_with_the_status_and_body() {
    let sink = HttpSink::start().await;
    sink.respond_to_recipient(
        "nobody",
        Reply::status(400).json(serde_json::json!({"error": "unknown recipient"})),
    );
    let channel = webhook_channel(webhook_config(sink.url("/hook")));

    let error = expect_permanent(channel.deliver(&message("k1", "nobody")).await);
    assert!(error.contains("400"), "{error}");
    assert!(error.contains("unknown recipient"), "{error}");

    // Other recipients are unaffected.
    channel
        .deliver(&message("k2", "ann"))
        .await
        .expect("another recipient is delivered");

    // And a long body is cut to its first 200 characters.
    sink.reject_recipient("nobody", 422);
    sink.respond_to_recipient("long", Reply::status(404).body(&"x".repeat(1000)));
    let error = expect_permanent(channel.deliver(&message("k3", "long")).await);
    assert!(error.contains("404"), "{error}");
    assert!(error.contains(&"x".repeat(200)), "{error}");
    assert!(!error.contains(&"x".repeat(201)), "{error}");
}

#[tokio::test]
async fn webhook_with_nothing_listening_is_transient() {
    let url = format!("http://127.0.0.1:{}/hook?token=s3cret", closed_port());
    let channel = webhook_channel(webhook_config(url));
    let (error, retry_after) = expect_transient(channel.deliver(&message("k", "ann")).await);
    assert_eq!(retry_after, None);
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(
        !error.contains("s3cret"),
        "the URL's secret leaked: {error}"
    );
}

#[tokio::test]
async fn webhook_that_hangs_times_out_as_transient() {
    let sink = HttpSink::start().await;
    sink.respond_next(1, Reply::ok().after(Duration::from_secs(3)));
    let mut config = webhook_config(sink.url("/hook"));
    config.timeout = herald::definitions::model::Duration(Duration::from_millis(200));
    let channel = webhook_channel(config);

    let started = std::time::Instant::now();
    let (error, _) = expect_transient(channel.deliver(&message("k", "ann")).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("200ms"), "{error}");
    assert_eq!(sink.count_for_key("k"), 1);
}

// ---------------------------------------------------------------------------------------
// Health checks: the provider reached without sending anything

#[tokio::test]
async fn smtp_healthcheck_logs_in_and_sends_nothing() {
    let sink = SmtpSink::start_with_login("mailer", "hunter2").await;
    let mut config = smtp_config(sink.port());
    config.username = Some("mailer".to_owned());
    config.password = Some("hunter2".to_owned());
    smtp_channel(config.clone())
        .healthcheck()
        .await
        .expect("the relay accepts the login and NOOP");
    assert_eq!(sink.connections(), 1);
    assert!(sink.messages().is_empty());

    config.password = Some("wrong".to_owned());
    let error = smtp_channel(config).healthcheck().await.unwrap_err();
    assert!(error.contains("535"), "{error}");
    assert!(!error.contains("wrong"), "the password leaked: {error}");
}

#[tokio::test]
async fn smtp_healthcheck_names_a_relay_that_is_down_or_hangs() {
    let port = closed_port();
    let error = smtp_channel(smtp_config(port))
        .healthcheck()
        .await
        .unwrap_err();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");

    let sink = SmtpSink::start().await;
    let mut config = smtp_config(sink.port());
    config.timeout = herald::definitions::model::Duration(Duration::from_millis(300));
    let channel = smtp_channel(config);
    sink.pause();
    let error = channel.healthcheck().await.unwrap_err();
    assert!(error.contains("did not answer within 300ms"), "{error}");

    // The connection abandoned mid-check is not the one the next delivery gets.
    sink.resume();
    channel
        .deliver(&message("run-1/welcome/0", "ann@example.org"))
        .await
        .expect("delivered after the relay recovers");
    assert_eq!(sink.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn webhook_healthcheck_connects_without_sending_a_request() {
    let sink = HttpSink::start().await;
    webhook_channel(webhook_config(sink.url("/hook")))
        .healthcheck()
        .await
        .expect("the endpoint accepts a connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.requests().is_empty(), "{:?}", sink.requests());

    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/hook?token=s3cret");
    let error = webhook_channel(webhook_config(url))
        .healthcheck()
        .await
        .unwrap_err();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(
        !error.contains("s3cret"),
        "the URL's secret leaked: {error}"
    );
}

#[tokio::test]
async fn the_health_board_keeps_each_channels_last_check() {
    let sink = SmtpSink::start().await;
    let mut config = ConfigDef::default();
    config.channels.insert(
        "email".to_owned(),
        ChannelConfig::Smtp(smtp_config(sink.port())).into(),
    );
    let down = format!("http://127.0.0.1:{}/hook", closed_port());
    config.channels.insert(
        "crm".to_owned(),
        ChannelConfig::Webhook(webhook_config(down)).into(),
    );
    let built = channels::build(&config, &env(&[])).expect("channels build");

    let board = channels::health::Board::default();
    board.check(&built, 1_000).await;
    let checks = board.snapshot();
    let summary: Vec<(&str, &str, bool)> = checks
        .iter()
        .map(|(name, c)| (name.as_str(), c.provider, c.ok))
        .collect();
    assert_eq!(
        summary,
        [
            ("email", "smtp", true),
            ("crm", "webhook", false),
            ("log", "log", true)
        ]
    );
    let crm = &checks["crm"];
    assert!(
        crm.error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{crm:?}"
    );
    assert_eq!((crm.checked_at, crm.since), (1_000, 1_000));
}

// ---------------------------------------------------------------------------------------
// Twilio SMS, against a stand-in that answers as Twilio's API documentation says

fn twilio_config(api_base: String) -> TwilioSmsConfig {
    TwilioSmsConfig {
        account_sid: "${env:TWILIO_ACCOUNT_SID}".to_owned(),
        auth_token: "${env:TWILIO_AUTH_TOKEN}".to_owned(),
        api_key: None,
        api_secret: None,
        from: Some("+15017122661".to_owned()),
        messaging_service_sid: None,
        public_url: Some("https://herald.example.com/inbound/sms".to_owned()),
        forward_calls_to: None,
        ring_timeout: herald::definitions::model::Duration::from_secs(20),
        api_base,
        timeout: herald::definitions::model::Duration::from_secs(5),
    }
}

fn twilio_env(token: &str) -> EnvSource {
    env(&[
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
        ("TWILIO_AUTH_TOKEN", token),
    ])
}

fn twilio_channel(config: TwilioSmsConfig) -> Arc<dyn Channel> {
    build_one(
        "sms",
        ChannelConfig::TwilioSms(config),
        &twilio_env(AUTH_TOKEN),
    )
}

fn text(key: &str, to: &str) -> OutboundMessage {
    let mut m = message(key, to);
    m.channel = "sms".to_owned();
    m.subject = None;
    m.body = "Your car is ready. Reply STOP to opt out.".to_owned();
    m
}

#[tokio::test]
async fn twilio_sends_the_form_with_basic_auth_and_keeps_the_message_sid() {
    let twilio = FakeTwilio::start().await;
    let channel = twilio_channel(twilio_config(twilio.api_base()));

    let delivered = channel
        .deliver(&text("run-1/nudge/0", "+14155550100"))
        .await
        .expect("delivered");

    let posted = twilio.posted();
    assert_eq!(posted.len(), 1);
    let p = &posted[0];
    assert_eq!(p.user, ACCOUNT_SID);
    assert_eq!(p.field("To"), Some("+14155550100"));
    assert_eq!(p.field("From"), Some("+15017122661"));
    assert_eq!(
        p.field("Body"),
        Some("Your car is ready. Reply STOP to opt out.")
    );
    assert_eq!(
        p.field("StatusCallback"),
        Some("https://herald.example.com/inbound/sms")
    );
    assert_eq!(
        delivered.provider_id.as_deref(),
        Some("SM00000000000000000000000000000001")
    );
}

#[tokio::test]
async fn twilio_sends_with_an_api_key_through_a_messaging_service() {
    let twilio = FakeTwilio::start().await;
    let mut config = twilio_config(twilio.api_base());
    config.from = None;
    config.messaging_service_sid = Some("MG0123456789abcdef0123456789abcdef".to_owned());
    config.api_key = Some(API_KEY.to_owned());
    config.api_secret = Some("${env:TWILIO_API_SECRET}".to_owned());
    let vars = env(&[
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
        ("TWILIO_AUTH_TOKEN", "not-used-to-send"),
        ("TWILIO_API_SECRET", API_SECRET),
    ]);
    let channel = build_one("sms", ChannelConfig::TwilioSms(config), &vars);

    channel
        .deliver(&text("run-1/nudge/0", "+14155550100"))
        .await
        .expect("delivered");
    let p = &twilio.posted()[0];
    assert_eq!(p.user, API_KEY);
    assert_eq!(
        p.field("MessagingServiceSid"),
        Some("MG0123456789abcdef0123456789abcdef")
    );
    assert_eq!(p.field("From"), None);
}

#[tokio::test]
async fn twilio_refusals_are_permanent_and_say_what_the_code_means() {
    let twilio = FakeTwilio::start().await;
    let channel = twilio_channel(twilio_config(twilio.api_base()));

    let error = expect_permanent(channel.deliver(&text("k1", "555-0100")).await);
    assert!(error.contains("error 21211"), "{error}");
    assert!(error.contains("not a valid phone number"), "{error}");
    assert!(
        error.contains("https://www.twilio.com/docs/errors/21211"),
        "{error}"
    );

    twilio.stop_recipient("+14155550199");
    let error = expect_unreachable(channel.deliver(&text("k2", "+14155550199")).await);
    assert!(error.contains("error 21610"), "{error}");
    assert!(error.contains("replied STOP"), "{error}");

    let wrong = build_one(
        "sms",
        ChannelConfig::TwilioSms(twilio_config(twilio.api_base())),
        &twilio_env("wrong-token"),
    );
    let error = expect_permanent(wrong.deliver(&text("k3", "+14155550100")).await);
    assert!(error.contains("401") && error.contains("20003"), "{error}");
    assert!(!error.contains("wrong-token"), "the token leaked: {error}");
}

#[tokio::test]
async fn twilio_rate_limits_and_server_errors_are_retried() {
    let twilio = FakeTwilio::start().await;
    let channel = twilio_channel(twilio_config(twilio.api_base()));

    twilio.rate_limit_next(1);
    let (error, _) = expect_transient(channel.deliver(&text("k", "+14155550100")).await);
    assert!(error.contains("429") && error.contains("20429"), "{error}");

    twilio.fail_next(1);
    let (error, _) = expect_transient(channel.deliver(&text("k", "+14155550100")).await);
    assert!(error.contains("500"), "{error}");

    channel
        .deliver(&text("k", "+14155550100"))
        .await
        .expect("the third attempt goes through");
    assert_eq!(twilio.posted().len(), 3);

    let down = twilio_channel(twilio_config(format!("http://127.0.0.1:{}", closed_port())));
    let (error, _) = expect_transient(down.deliver(&text("k", "+14155550100")).await);
    assert!(error.contains("could not reach Twilio"), "{error}");
}

#[tokio::test]
async fn twilio_refuses_a_text_over_1600_characters_without_a_request() {
    let twilio = FakeTwilio::start().await;
    let channel = twilio_channel(twilio_config(twilio.api_base()));
    let mut long = text("k", "+14155550100");
    long.body = "é".repeat(1601);
    let error = expect_permanent(channel.deliver(&long).await);
    assert!(
        error.contains("1601 characters") && error.contains("at most 1600"),
        "{error}"
    );
    assert!(twilio.posted().is_empty());
    long.body = "é".repeat(1600);
    channel.deliver(&long).await.expect("1,600 characters go");
}

#[tokio::test]
async fn twilio_healthcheck_reads_the_account() {
    let twilio = FakeTwilio::start().await;
    let channel = twilio_channel(twilio_config(twilio.api_base()));
    channel.healthcheck().await.expect("credentials accepted");
    assert!(twilio.posted().is_empty(), "a check sent a message");

    let wrong = build_one(
        "sms",
        ChannelConfig::TwilioSms(twilio_config(twilio.api_base())),
        &twilio_env("wrong-token"),
    );
    let error = wrong.healthcheck().await.unwrap_err();
    assert!(
        error.contains("20003") && error.contains("wrong"),
        "{error}"
    );
    assert!(!error.contains("wrong-token"), "the token leaked: {error}");

    twilio.suspend();
    let error = channel.healthcheck().await.unwrap_err();
    assert_eq!(error, "the Twilio account is suspended");
}

// ---------------------------------------------------------------------------------------
// Telegram, against a stand-in that answers as the Bot API documentation says

fn telegram_channel(api_base: String, token: &str) -> Arc<dyn Channel> {
    let config = TelegramConfig {
        bot_token: "${env:TELEGRAM_BOT_TOKEN}".to_owned(),
        secret_token: Some("${env:TELEGRAM_SECRET}".to_owned()),
        parse_mode: None,
        api_base,
        timeout: herald::definitions::model::Duration::from_secs(5),
    };
    let vars = env(&[
        ("TELEGRAM_BOT_TOKEN", token),
        ("TELEGRAM_SECRET", "hook-secret_1"),
    ]);
    build_one("tg", ChannelConfig::Telegram(config), &vars)
}

fn chat_message(key: &str, chat: &str) -> OutboundMessage {
    let mut m = message(key, chat);
    m.channel = "tg".to_owned();
    m.subject = None;
    m.body = "Your booking is confirmed for Tuesday.".to_owned();
    m
}

#[tokio::test]
async fn telegram_sends_to_the_chat_and_keeps_the_message_id() {
    let bot = FakeTelegram::start().await;
    let channel = telegram_channel(bot.api_base(), BOT_TOKEN);
    let delivered = channel
        .deliver(&chat_message("k1", "1111111"))
        .await
        .expect("delivered");
    assert_eq!(delivered.provider_id.as_deref(), Some("1"));
    let sent = bot.sent();
    assert_eq!(sent[0]["chat_id"], "1111111");
    assert_eq!(sent[0]["text"], "Your booking is confirmed for Tuesday.");
    assert!(sent[0].get("parse_mode").is_none());
    channel.healthcheck().await.expect("getMe answers");
}

#[tokio::test]
async fn telegram_waits_as_told_on_429_and_explains_refusals() {
    let bot = FakeTelegram::start().await;
    let channel = telegram_channel(bot.api_base(), BOT_TOKEN);

    bot.rate_limit_next(1);
    let (error, wait) = expect_transient(channel.deliver(&chat_message("k", "1111111")).await);
    assert_eq!(wait, Some(Duration::from_secs(3)), "{error}");
    channel
        .deliver(&chat_message("k", "1111111"))
        .await
        .expect("delivered after the wait");

    bot.block("2222222");
    let error = expect_unreachable(channel.deliver(&chat_message("k2", "2222222")).await);
    assert!(
        error.contains("403") && error.contains("blocked the bot"),
        "{error}"
    );

    let error = expect_permanent(channel.deliver(&chat_message("k3", "not-a-chat")).await);
    assert!(
        error.contains("chat not found") && error.contains("started a chat"),
        "{error}"
    );

    let wrong = telegram_channel(bot.api_base(), "987654321:wrong-token");
    let error = expect_permanent(wrong.deliver(&chat_message("k4", "1111111")).await);
    assert!(
        error.contains("401") && error.contains("bot_token"),
        "{error}"
    );
    assert!(!error.contains("wrong-token"), "the token leaked: {error}");
    let error = wrong.healthcheck().await.unwrap_err();
    assert!(
        error.contains("401") && !error.contains("wrong-token"),
        "{error}"
    );

    let down = telegram_channel(format!("http://127.0.0.1:{}", closed_port()), BOT_TOKEN);
    let (error, _) = expect_transient(down.deliver(&chat_message("k5", "1111111")).await);
    assert!(error.contains("could not reach Telegram"), "{error}");
    assert!(!error.contains("AAHdq"), "the token leaked: {error}");
}

// ---------------------------------------------------------------------------------------
// WhatsApp Cloud API, against a stand-in that answers as the Graph API documentation says

fn whatsapp_channel(api_base: String, token: &str) -> Arc<dyn Channel> {
    let config = WhatsappConfig {
        access_token: "${env:WHATSAPP_ACCESS_TOKEN}".to_owned(),
        phone_number_id: PHONE_NUMBER_ID.to_owned(),
        app_secret: None,
        verify_token: None,
        api_base,
        api_version: "v21.0".to_owned(),
        timeout: herald::definitions::model::Duration::from_secs(5),
    };
    build_one(
        "wa",
        ChannelConfig::Whatsapp(config),
        &env(&[("WHATSAPP_ACCESS_TOKEN", token)]),
    )
}

fn wa_message(key: &str, to: &str) -> OutboundMessage {
    let mut m = message(key, to);
    m.channel = "wa".to_owned();
    m.subject = None;
    m.body = "Your application is almost done: one signature left.".to_owned();
    m
}

#[tokio::test]
async fn whatsapp_sends_text_and_keeps_the_wamid() {
    let meta = FakeWhatsapp::start().await;
    let channel = whatsapp_channel(meta.api_base(), ACCESS_TOKEN);
    let delivered = channel
        .deliver(&wa_message("k1", "+1 650 555 1234"))
        .await
        .expect("delivered");
    assert_eq!(delivered.provider_id.as_deref(), Some("wamid.1"));
    let sent = &meta.sent()[0];
    assert_eq!(sent["to"], "16505551234");
    assert_eq!(sent["type"], "text");
    assert_eq!(
        sent["text"]["body"],
        "Your application is almost done: one signature left."
    );
    channel.healthcheck().await.expect("the number is readable");
}

#[tokio::test]
async fn whatsapp_outside_the_24_hour_window_is_permanent_and_throttling_is_retried() {
    let meta = FakeWhatsapp::start().await;
    let channel = whatsapp_channel(meta.api_base(), ACCESS_TOKEN);

    meta.close_window("16505550000");
    let error = expect_permanent(channel.deliver(&wa_message("k1", "+16505550000")).await);
    assert!(
        error.contains("131047") && error.contains("approved template"),
        "{error}"
    );

    meta.throttle_next(1);
    let (error, _) = expect_transient(channel.deliver(&wa_message("k2", "+16505551234")).await);
    assert!(error.contains("130429"), "{error}");
    channel
        .deliver(&wa_message("k2", "+16505551234"))
        .await
        .expect("delivered after the throttle");

    let wrong = whatsapp_channel(meta.api_base(), "EAAJB-expired");
    let error = expect_permanent(wrong.deliver(&wa_message("k3", "+16505551234")).await);
    assert!(
        error.contains("190") && error.contains("access_token"),
        "{error}"
    );
    assert!(
        !error.contains("EAAJB-expired"),
        "the token leaked: {error}"
    );
    let error = wrong.healthcheck().await.unwrap_err();
    assert!(error.contains("190"), "{error}");
}

fn reminder_template() -> ApprovedTemplate {
    ApprovedTemplate {
        name: "application_reminder".to_owned(),
        language: "en_US".to_owned(),
        header: vec![TemplateValue {
            name: None,
            text: "Ann".to_owned(),
        }],
        body: vec![
            TemplateValue {
                name: None,
                text: "Ann".to_owned(),
            },
            TemplateValue {
                name: None,
                text: "Tuesday, 3 pm".to_owned(),
            },
        ],
        buttons: vec![
            ButtonValue {
                index: 0,
                kind: ButtonKind::Url,
                text: "app-4711".to_owned(),
            },
            ButtonValue {
                index: 2,
                kind: ButtonKind::QuickReply,
                text: "stop-reminders".to_owned(),
            },
        ],
    }
}

#[tokio::test]
async fn whatsapp_sends_an_approved_template_as_the_cloud_api_documents_it() {
    let meta = FakeWhatsapp::start().await;
    meta.approve_template("application_reminder", "en_US", 1, 2);
    // A template reaches a person outside the 24-hour window, where text does not.
    meta.close_window("16505551234");
    let channel = whatsapp_channel(meta.api_base(), ACCESS_TOKEN);
    assert!(channel.sends_approved_templates());
    let mut message = wa_message("k1", "+1 650 555 1234");
    message.approved_template = Some(reminder_template());
    message.body = reminder_template().describe();
    let delivered = channel.deliver(&message).await.expect("delivered");
    assert_eq!(delivered.provider_id.as_deref(), Some("wamid.1"));
    assert_eq!(
        meta.sent()[0],
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "16505551234",
            "type": "template",
            "template": {
                "name": "application_reminder",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "header", "parameters": [{"type": "text", "text": "Ann"}]},
                    {"type": "body", "parameters": [
                        {"type": "text", "text": "Ann"},
                        {"type": "text", "text": "Tuesday, 3 pm"}
                    ]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": "app-4711"}]},
                    {"type": "button", "sub_type": "quick_reply", "index": "2",
                     "parameters": [{"type": "payload", "payload": "stop-reminders"}]}
                ]
            }
        })
    );

    // Named variables carry their names; a template without values has no components.
    meta.approve_template("welcome", "es", 0, 1);
    message.approved_template = Some(ApprovedTemplate {
        name: "welcome".to_owned(),
        language: "es".to_owned(),
        header: Vec::new(),
        body: vec![TemplateValue {
            name: Some("first_name".to_owned()),
            text: "Ana".to_owned(),
        }],
        buttons: Vec::new(),
    });
    channel.deliver(&message).await.expect("delivered");
    assert_eq!(
        meta.sent()[1]["template"],
        json!({"name": "welcome", "language": {"code": "es"}, "components": [
            {"type": "body", "parameters": [
                {"type": "text", "parameter_name": "first_name", "text": "Ana"}
            ]}
        ]})
    );
    meta.approve_template("hello_world", "en_US", 0, 0);
    message.approved_template = Some(ApprovedTemplate {
        name: "hello_world".to_owned(),
        language: "en_US".to_owned(),
        header: Vec::new(),
        body: Vec::new(),
        buttons: Vec::new(),
    });
    channel.deliver(&message).await.expect("delivered");
    assert_eq!(
        meta.sent()[2]["template"],
        json!({"name": "hello_world", "language": {"code": "en_US"}})
    );
}

#[tokio::test]
async fn whatsapp_template_refusals_are_permanent_and_name_the_template() {
    let meta = FakeWhatsapp::start().await;
    meta.approve_template("application_reminder", "en_US", 1, 2);
    let channel = whatsapp_channel(meta.api_base(), ACCESS_TOKEN);
    let mut message = wa_message("k1", "+16505551234");

    // Approved in English only: Spanish is a template that does not exist.
    let mut spanish = reminder_template();
    spanish.language = "es".to_owned();
    message.approved_template = Some(spanish);
    let error = expect_permanent(channel.deliver(&message).await);
    assert!(
        error.contains("132001")
            && error.contains("no template `application_reminder` is approved in language `es`"),
        "{error}"
    );

    let mut short = reminder_template();
    short.body.pop();
    message.approved_template = Some(short);
    let error = expect_permanent(channel.deliver(&message).await);
    assert!(
        error.contains("132000")
            && error.contains("template `application_reminder` (en_US)")
            && error.contains("1 in the body"),
        "{error}"
    );
    assert_eq!(meta.sent().len(), 2, "each refusal was one request");
}

// ---------------------------------------------------------------------------------------
// Mailgun and Resend, against stand-ins that answer as their API documentation says

fn mailgun_channel(api_base: String, key: &str) -> Arc<dyn Channel> {
    let config = MailgunConfig {
        api_key: "${env:MAILGUN_API_KEY}".to_owned(),
        domain: MAILGUN_DOMAIN.to_owned(),
        from: "Complete Car Loans <hello@mg.example.com>".to_owned(),
        webhook_signing_key: None,
        api_base,
        timeout: herald::definitions::model::Duration::from_secs(5),
    };
    build_one(
        "email",
        ChannelConfig::Mailgun(config),
        &env(&[("MAILGUN_API_KEY", key)]),
    )
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn mailgun_sends_the_form_with_a_stable_message_id() {
    let mailgun = FakeMailgun::start().await;
    let channel = mailgun_channel(mailgun.api_base(), MAILGUN_KEY);
    let mut msg = message("run-1/welcome/0", "Ann Example <ann@example.org>");
    msg.headers
        .insert("X-Campaign".to_owned(), "spring".to_owned());
    let first = channel.deliver(&msg).await.expect("delivered");
    let again = channel.deliver(&msg).await.expect("delivered again");

    let posted = mailgun.posted();
    let fields = &posted[0];
    assert_eq!(
        field(fields, "from"),
        Some("Complete Car Loans <hello@mg.example.com>")
    );
    assert_eq!(field(fields, "to"), Some("Ann Example <ann@example.org>"));
    assert_eq!(field(fields, "subject"), Some("Welcome aboard"));
    assert_eq!(
        field(fields, "text"),
        Some("Hello Ann,\nyour account is ready.")
    );
    assert_eq!(field(fields, "h:X-Campaign"), Some("spring"));
    assert_eq!(
        field(fields, "v:herald-message-id"),
        Some("outbox-run-1/welcome/0")
    );
    // The same message has the same Message-Id on every attempt.
    assert_eq!(first.provider_id, again.provider_id);

    // HTML goes with its plain-text alternative.
    msg.html = true;
    msg.body = "<p>Hello <a href=\"https://example.com/a\">Ann</a></p>".to_owned();
    channel.deliver(&msg).await.expect("delivered");
    let posted = mailgun.posted();
    let fields = posted.last().unwrap();
    assert_eq!(field(fields, "html"), Some(msg.body.as_str()));
    assert_eq!(
        field(fields, "text"),
        Some("Hello Ann (https://example.com/a)")
    );
    let id = first.provider_id.expect("an id");
    assert!(
        id.ends_with("@mg.example.com") && !id.starts_with('<'),
        "{id}"
    );
    channel.healthcheck().await.expect("the domain is active");
}

#[tokio::test]
async fn mailgun_refusals_name_the_cause() {
    let mailgun = FakeMailgun::start().await;
    let channel = mailgun_channel(mailgun.api_base(), MAILGUN_KEY);
    let error = expect_permanent(channel.deliver(&message("k", "not-an-address")).await);
    assert!(
        error.contains("not an e-mail address") || error.contains("recipient"),
        "{error}"
    );

    let wrong = mailgun_channel(mailgun.api_base(), "key-wrong");
    let error = expect_permanent(wrong.deliver(&message("k", "ann@example.org")).await);
    assert!(
        error.contains("401") && error.contains("eu.mailgun.net"),
        "{error}"
    );
    assert!(!error.contains("key-wrong"), "the key leaked: {error}");

    mailgun.unverify_domain();
    let error = channel.healthcheck().await.unwrap_err();
    assert_eq!(
        error,
        "the Mailgun domain mg.example.com is unverified, not active"
    );
}

fn resend_channel(api_base: String, key: &str) -> Arc<dyn Channel> {
    let config = ResendConfig {
        api_key: "${env:RESEND_API_KEY}".to_owned(),
        from: "Talk-To-My-Lawyer <hello@example.com>".to_owned(),
        webhook_secret: None,
        api_base,
        timeout: herald::definitions::model::Duration::from_secs(5),
    };
    build_one(
        "email",
        ChannelConfig::Resend(config),
        &env(&[("RESEND_API_KEY", key)]),
    )
}

#[tokio::test]
async fn resend_sends_json_with_the_idempotency_key_so_a_replay_is_not_sent_twice() {
    let resend = FakeResend::start().await;
    let channel = resend_channel(resend.api_base(), RESEND_KEY);
    let mut msg = message("run-1/letter/0", "ann@example.org");
    msg.html = true;
    msg.body = "<p>Your letter is ready.</p>".to_owned();
    let first = channel.deliver(&msg).await.expect("delivered");
    let replay = channel.deliver(&msg).await.expect("the replay is answered");
    assert_eq!(first.provider_id, replay.provider_id);
    let sent = resend.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["to"][0], "ann@example.org");
    assert_eq!(sent[0]["html"], "<p>Your letter is ready.</p>");
    assert_eq!(sent[0]["text"], "Your letter is ready.");
    assert_eq!(sent[0]["from"], "Talk-To-My-Lawyer <hello@example.com>");

    // The same key with another message is refused, not silently answered.
    msg.body = "<p>Something else.</p>".to_owned();
    let error = expect_permanent(channel.deliver(&msg).await);
    assert!(error.contains("invalid_idempotent_request"), "{error}");
}

#[tokio::test]
async fn resend_rate_limits_are_retried_after_the_wait_and_keys_checked() {
    let resend = FakeResend::start().await;
    let channel = resend_channel(resend.api_base(), RESEND_KEY);
    resend.rate_limit_next(1);
    let (error, wait) = expect_transient(channel.deliver(&message("k", "ann@example.org")).await);
    assert_eq!(wait, Some(Duration::from_secs(1)), "{error}");
    assert!(error.contains("rate_limit_exceeded"), "{error}");
    channel
        .deliver(&message("k", "ann@example.org"))
        .await
        .expect("delivered after the wait");

    channel
        .healthcheck()
        .await
        .expect("a full key lists domains");
    resend_channel(resend.api_base(), RESEND_SENDING_KEY)
        .healthcheck()
        .await
        .expect("a sending-only key is a valid key");
    let wrong = resend_channel(resend.api_base(), "re_wrong");
    let error = wrong.healthcheck().await.unwrap_err();
    assert!(
        error.contains("invalid_api_key") && error.contains("revoked"),
        "{error}"
    );
    let error = expect_permanent(wrong.deliver(&message("k2", "ann@example.org")).await);
    assert!(error.contains("403"), "{error}");
    assert!(!error.contains("re_wrong"), "the key leaked: {error}");
}

// ---------------------------------------------------------------------------------------
// build() and log

#[tokio::test]
async fn build_adds_log_and_resolves_the_environment() {
    let sink = HttpSink::start().await;
    let mut config = ConfigDef::default();
    config.channels.insert(
        "email".to_owned(),
        ChannelConfig::Smtp(SmtpConfig {
            host: "${env:SMTP_HOST}".to_owned(),
            from: "${env:MAIL_FROM}".to_owned(),
            ..smtp_config(2525)
        })
        .into(),
    );
    config.channels.insert(
        "hook".to_owned(),
        ChannelConfig::Webhook(webhook_config("${env:HOOK_URL}".to_owned())).into(),
    );
    let vars = env(&[
        ("SMTP_HOST", "127.0.0.1"),
        ("MAIL_FROM", "Herald <herald@example.com>"),
        ("HOOK_URL", &sink.url("/from-env")),
    ]);

    let channels: Channels = channels::build(&config, &vars).expect("build");
    let names: Vec<&str> = channels.keys().map(String::as_str).collect();
    assert_eq!(names, ["email", "hook", "log"]);
    assert_eq!(channels["log"].provider(), "log");

    channels["hook"]
        .deliver(&message("k", "ann"))
        .await
        .expect("delivered to the URL from the environment");
    assert_eq!(sink.wait_for_requests(1, WAIT).await[0].path, "/from-env");
}

#[test]
fn build_names_an_unset_variable_and_its_channel() {
    let mut config = ConfigDef::default();
    config.channels.insert(
        "alerts".to_owned(),
        ChannelConfig::Webhook(WebhookChannelConfig {
            headers: [("X-Token".to_owned(), "${env:ALERTS_TOKEN}".to_owned())].into(),
            ..webhook_config("http://127.0.0.1:9/".to_owned())
        })
        .into(),
    );
    let error = channels::build(&config, &env(&[])).expect_err("unset variable");
    assert_eq!(error.setting.as_deref(), Some("headers/X-Token"));
    let error = error.to_string();
    assert!(error.contains("ALERTS_TOKEN"), "{error}");
    assert!(error.contains("`alerts`"), "{error}");
}

#[tokio::test]
async fn the_log_channel_delivers() {
    let channels = channels::build(&ConfigDef::default(), &env(&[])).expect("build");
    let log = &channels["log"];
    let delivered = log
        .deliver(&message("run-1/welcome/0", "ann@example.org"))
        .await
        .expect("the log channel never fails");
    assert_eq!(
        delivered.provider_id.as_deref(),
        Some("log-outbox-run-1/welcome/0")
    );
}

// ---------------------------------------------------------------------------------------
// The sinks themselves

/// The engine's crash test drives the sinks from another process while the test thread
/// blocks on it; this talks to both with blocking sockets on the test's only thread.
#[tokio::test]
async fn sinks_answer_while_the_test_thread_blocks() {
    use std::io::{BufRead, BufReader, Read, Write};

    let smtp = SmtpSink::start().await;
    smtp.reject_recipient("gone@example.org", 550);
    let stream = std::net::TcpStream::connect(smtp.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut say = |line: &str| -> String {
        if !line.is_empty() {
            writer.write_all(line.as_bytes()).expect("write");
        }
        let mut reply = String::new();
        loop {
            let mut part = String::new();
            reader.read_line(&mut part).expect("read");
            reply.push_str(&part);
            // The last line of a multi-line reply has a space after the code.
            if part.len() < 4 || part.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    };
    assert!(say("").starts_with("220 "));
    assert!(say("EHLO test\r\n").starts_with("250"));
    assert!(say("MAIL FROM:<a@example.com>\r\n").starts_with("250"));
    assert!(say("RCPT TO:<gone@example.org>\r\n").starts_with("550"));
    assert!(say("RCPT TO:<b@example.org>\r\n").starts_with("250"));
    assert!(say("DATA\r\n").starts_with("354"));
    assert!(say("Subject: raw\r\n\r\n..dot-stuffed\r\n.\r\n").starts_with("250"));
    assert!(say("QUIT\r\n").starts_with("221"));
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].recipients, ["b@example.org"]);
    assert_eq!(mails[0].subject.as_deref(), Some("raw"));
    assert_eq!(mails[0].body(), ".dot-stuffed");

    let http = HttpSink::start().await;
    http.fail_next(1, 503);
    let mut stream = std::net::TcpStream::connect(http.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let body = r#"{"to":"ann"}"#;
    write!(
        stream,
        "POST /raw HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: raw-1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    let requests = http.requests();
    assert_eq!(requests[0].field("to"), Some("ann"));
    assert_eq!(requests[0].answered, 503);
    assert_eq!(http.count_for_key("raw-1"), 1);
}
