//! A real SMTP server on 127.0.0.1 that records every message it accepts.
//!
//! The protocol is the `mailin` crate's state machine; this file only moves lines between
//! the socket and it. Plain SMTP only: no STARTTLS, so channels under test use `tls: none`.
//!
//! ```ignore
//! let sink = SmtpSink::start().await;
//! sink.reject_recipient("gone@example.com", 550);
//! // ... deliver to 127.0.0.1:sink.port() ...
//! let mail = &sink.messages()[0];
//! assert_eq!(mail.recipients, ["ann@example.com"]);
//! assert_eq!(mail.subject.as_deref(), Some("Welcome"));
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;

use super::{ServerThread, wait_for_count};

/// Far longer than the 1000 octets SMTP allows, so only a broken client reaches it.
const MAX_LINE: u64 = 64 * 1024;
/// Messages larger than this are refused with 552.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// MAIL FROM, without the angle brackets.
    pub envelope_from: String,
    /// Every accepted RCPT TO, without the angle brackets.
    pub recipients: Vec<String>,
    /// The message as sent after DATA: headers, blank line, encoded body.
    pub data: String,
    /// The Message-ID header, angle brackets included.
    pub message_id: Option<String>,
    /// The Subject header, RFC 2047 encoded words decoded.
    pub subject: Option<String>,
    /// The user name the client authenticated as, when the sink requires a login.
    pub authenticated_as: Option<String>,
}

impl ReceivedMail {
    fn parse(
        envelope_from: String,
        recipients: Vec<String>,
        data: &[u8],
        user: Option<String>,
    ) -> Self {
        let data = String::from_utf8_lossy(data).into_owned();
        let headers = parse_headers(&data);
        let first = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        ReceivedMail {
            envelope_from,
            recipients,
            message_id: first("Message-ID"),
            subject: first("Subject").map(|s| decode_encoded_words(&s)),
            authenticated_as: user,
            data,
        }
    }

    /// Every header in order, folded lines joined, values as sent (not decoded).
    pub fn headers(&self) -> Vec<(String, String)> {
        parse_headers(&self.data)
    }

    /// The first header called `name` (any case), as sent.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The parts of a multipart message, each with its own headers and body (read with
    /// [`ReceivedMail::header`] and [`ReceivedMail::body`]); empty for a single-part one.
    pub fn parts(&self) -> Vec<ReceivedMail> {
        let Some(boundary) = self.header("Content-Type").and_then(|t| {
            let at = t.find("boundary=")? + "boundary=".len();
            Some(t[at..].trim_matches('"').split('"').next()?.to_owned())
        }) else {
            return Vec::new();
        };
        let body_start = self.data.find("\r\n\r\n").map_or(0, |i| i + 4);
        self.data[body_start..]
            .split(&format!("--{boundary}"))
            .skip(1)
            .filter(|part| !part.starts_with("--"))
            .map(|part| ReceivedMail {
                envelope_from: self.envelope_from.clone(),
                recipients: self.recipients.clone(),
                data: part.trim_start_matches("\r\n").to_owned(),
                message_id: None,
                subject: None,
                authenticated_as: None,
            })
            .collect()
    }

    /// The body, decoded from its Content-Transfer-Encoding (7bit, 8bit, quoted-printable or
    /// base64), with `\n` line endings. Single-part messages only.
    ///
    /// Trailing line breaks are dropped: lettre ends the body with one and then writes
    /// `\r\n.\r\n`, so the data always ends in a blank line that was never in the text.
    pub fn body(&self) -> String {
        let raw = match self.data.find("\r\n\r\n") {
            Some(i) => &self.data[i + 4..],
            None => "",
        };
        let raw = raw.trim_end_matches("\r\n");
        let encoding = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match encoding.trim() {
            "quoted-printable" => decode_quoted_printable(raw),
            "base64" => {
                let compact: String = raw.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .unwrap_or_else(|_| raw.as_bytes().to_vec())
            }
            _ => raw.as_bytes().to_vec(),
        };
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }
}

/// A real SMTP server on 127.0.0.1, running until dropped.
pub struct SmtpSink {
    shared: Arc<Shared>,
    server: ServerThread,
}

impl SmtpSink {
    /// Starts a sink that accepts any sender and recipient without authentication.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_with(None).await
    }

    /// Starts a sink that requires AUTH PLAIN or LOGIN with these credentials before MAIL,
    /// and offers it over plain text (acceptable on loopback, nowhere else).
    pub async fn start_with_login(user: &str, password: &str) -> SmtpSink {
        SmtpSink::start_with(Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_with(login: Option<(String, String)>) -> SmtpSink {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            received: watch::Sender::new(0),
            paused: watch::Sender::new(false),
            login,
        });
        let serving = Arc::clone(&shared);
        let server = ServerThread::start("smtp-sink", move |listener| async move {
            let mut session = SessionBuilder::new("herald-smtp-sink");
            if serving.login.is_some() {
                session
                    .enable_auth(AuthMechanism::Plain)
                    .enable_auth(AuthMechanism::Login)
                    .insecure_enable_plaintext_auth();
            }
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        tokio::spawn(converse(
                            stream,
                            peer,
                            session.clone(),
                            Arc::clone(&serving),
                        ));
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        SmtpSink { shared, server }
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.state().messages.clone()
    }

    /// How many connections clients have opened.
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    /// Waits until at least `count` messages have been accepted, then returns them all.
    /// Panics after `timeout`.
    pub async fn wait_for_messages(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        wait_for_count(self.shared.received.subscribe(), count, timeout, "e-mails").await;
        self.messages()
    }

    /// Answers RCPT TO for `address` (any case) with `code` from now on: 4xx for a
    /// temporary refusal, 5xx for a permanent one.
    pub fn reject_recipient(&self, address: &str, code: u16) {
        self.set_rejection(address, code, None);
    }

    /// Like [`SmtpSink::reject_recipient`], for the next `times` attempts only.
    pub fn reject_recipient_times(&self, address: &str, code: u16, times: usize) {
        self.set_rejection(address, code, Some(times));
    }

    /// Accepts `address` again.
    pub fn accept_recipient(&self, address: &str) {
        self.shared
            .state()
            .rejections
            .remove(&address.to_ascii_lowercase());
    }

    fn set_rejection(&self, address: &str, code: u16, times: Option<usize>) {
        assert!(
            (400..600).contains(&code),
            "an SMTP rejection is a 4xx or 5xx code, not {code}"
        );
        self.shared.state().rejections.insert(
            address.to_ascii_lowercase(),
            Rejection {
                code,
                remaining: times,
            },
        );
    }

    /// Stops answering: new connections get no greeting and commands no reply, as from a
    /// relay that hangs. Connections stay open.
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Answers again, starting with whatever was left unanswered.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }
}

struct Shared {
    state: Mutex<State>,
    /// The number of accepted messages, for waiters.
    received: watch::Sender<usize>,
    paused: watch::Sender<bool>,
    login: Option<(String, String)>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take the sink down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reply to RCPT TO `address`, counting down a limited rejection.
    fn rejection_for(&self, address: &str) -> Option<u16> {
        let mut state = self.state();
        let key = address.to_ascii_lowercase();
        let rejection = state.rejections.get_mut(&key)?;
        let code = rejection.code;
        match &mut rejection.remaining {
            None => {}
            Some(0) => {
                state.rejections.remove(&key);
                return None;
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    state.rejections.remove(&key);
                }
            }
        }
        Some(code)
    }

    fn record(&self, mail: ReceivedMail) {
        let count = {
            let mut state = self.state();
            state.messages.push(mail);
            state.messages.len()
        };
        self.received.send_replace(count);
    }
}

#[derive(Default)]
struct State {
    messages: Vec<ReceivedMail>,
    rejections: HashMap<String, Rejection>,
    connections: usize,
}

struct Rejection {
    code: u16,
    /// `None`: every time.
    remaining: Option<usize>,
}

/// One client connection: lines in, mailin's replies out.
async fn converse(
    stream: TcpStream,
    peer: SocketAddr,
    builder: SessionBuilder,
    shared: Arc<Shared>,
) {
    shared.state().connections += 1;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut session = builder.build(peer.ip(), Conversation::new(Arc::clone(&shared)));
    if !reply(&shared, &mut writer, &session.greeting()).await {
        return;
    }
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            // Either longer than any SMTP line or cut off by the client hanging up.
            let _ = writer.write_all(b"500 Line too long\r\n").await;
            return;
        }
        let response = session.process(&line);
        match response.action {
            Action::NoReply => {}
            Action::Reply => {
                if !reply(&shared, &mut writer, &response).await {
                    return;
                }
            }
            Action::Close => {
                reply(&shared, &mut writer, &response).await;
                return;
            }
            // Only reachable after AUTH is offered; the sink has no certificate to offer.
            Action::UpgradeTls => {
                let _ = writer.write_all(b"454 TLS not available\r\n").await;
                return;
            }
        }
    }
}

/// Writes one reply, after waiting out a pause. False when the client has gone.
async fn reply(shared: &Shared, writer: &mut OwnedWriteHalf, response: &Response) -> bool {
    let mut paused = shared.paused.subscribe();
    let _ = paused.wait_for(|p| !*p).await;
    let Ok(bytes) = response.buffer() else {
        return false;
    };
    writer.write_all(&bytes).await.is_ok()
}

/// The decisions mailin asks for, and the message being received.
struct Conversation {
    shared: Arc<Shared>,
    user: Option<String>,
    envelope: Option<(String, Vec<String>)>,
    data: Vec<u8>,
    too_large: bool,
}

impl Conversation {
    fn new(shared: Arc<Shared>) -> Self {
        Conversation {
            shared,
            user: None,
            envelope: None,
            data: Vec::new(),
            too_large: false,
        }
    }

    fn login(&mut self, user: &str, password: &str) -> Response {
        match &self.shared.login {
            Some((u, p)) if u == user && p == password => {
                self.user = Some(user.to_owned());
                mailin::response::AUTH_OK
            }
            _ => mailin::response::INVALID_CREDENTIALS,
        }
    }
}

impl Handler for Conversation {
    fn rcpt(&mut self, to: &str) -> Response {
        match self.shared.rejection_for(to) {
            Some(code) if code < 500 => Response::custom(
                code,
                format!("4.2.0 <{to}>: mailbox temporarily unavailable, try again later"),
            ),
            Some(code) => Response::custom(code, format!("5.1.1 <{to}>: mailbox unavailable")),
            None => mailin::response::OK,
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.envelope = Some((from.to_owned(), to.to_vec()));
        self.data.clear();
        self.too_large = false;
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        // Refused at the end of data rather than here: an error mid-DATA makes mailin answer
        // each remaining line, which the client is not reading yet.
        if self.data.len() + buf.len() > MAX_MESSAGE {
            self.too_large = true;
        } else {
            self.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let (from, to) = self.envelope.take().unwrap_or_default();
        let data = std::mem::take(&mut self.data);
        if self.too_large {
            return mailin::response::NO_STORAGE;
        }
        let mail = ReceivedMail::parse(from, to, &data, self.user.clone());
        self.shared.record(mail);
        mailin::response::OK
    }

    fn auth_plain(&mut self, _authorization_id: &str, user: &str, password: &str) -> Response {
        self.login(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.login(user, password)
    }
}

/// The header block of a message, folded lines joined.
fn parse_headers(data: &str) -> Vec<(String, String)> {
    let head = match data.find("\r\n\r\n") {
        Some(i) => &data[..i],
        None => data,
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim_start().to_owned()));
        }
    }
    for (_, value) in &mut headers {
        *value = value.trim_end().to_owned();
    }
    headers
}

fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`). Adjacent words
/// are decoded together, since an encoder may split one character across two of them.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut rest = value;
    loop {
        let Some(start) = rest.find("=?") else {
            flush(&mut out, &mut pending);
            out.push_str(rest);
            return out;
        };
        let (before, candidate) = rest.split_at(start);
        match decode_word(candidate) {
            Some((bytes, used)) => {
                // Whitespace between two encoded words is not part of the text.
                if pending.is_empty() || !before.trim().is_empty() {
                    flush(&mut out, &mut pending);
                    out.push_str(before);
                }
                pending.extend(bytes);
                rest = &candidate[used..];
            }
            None => {
                flush(&mut out, &mut pending);
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
            }
        }
    }
}

fn flush(out: &mut String, pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        out.push_str(&String::from_utf8_lossy(pending));
        pending.clear();
    }
}

/// One encoded word at the start of `text`: its bytes, and how much of `text` it used.
fn decode_word(text: &str) -> Option<(Vec<u8>, usize)> {
    let inner = text.strip_prefix("=?")?;
    let (_charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let encoded = &inner[..end];
    let used = text.len() - inner.len() + end + 2;
    let bytes = match encoding {
        "b" | "B" => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?,
        "q" | "Q" => decode_quoted_printable(&encoded.replace('_', " ")),
        _ => return None,
    };
    Some((bytes, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_encoded_words() {
        assert_eq!(decode_encoded_words("plain"), "plain");
        assert_eq!(
            decode_encoded_words("=?utf-8?b?w6k=?= =?utf-8?b?w6k=?="),
            "éé"
        );
        assert_eq!(
            decode_encoded_words("a =?UTF-8?Q?caf=C3=A9_au?= lait"),
            "a café au lait"
        );
        assert_eq!(decode_encoded_words("=?broken"), "=?broken");
    }

    #[test]
    fn decodes_quoted_printable() {
        assert_eq!(
            decode_quoted_printable("caf=C3=A9=\r\n ok=3D"),
            "café ok=".as_bytes()
        );
    }
}
