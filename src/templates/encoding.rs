//! Encodings for HTTP steps and webhooks: `fromjson` (`tojson` is minijinja's own),
//! `b64encode`/`b64decode` and `hmac_sha256`.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use sha2::Sha256;

pub(crate) fn register(env: &mut Environment<'static>) {
    env.add_filter("fromjson", fromjson);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env.add_filter("hmac_sha256", hmac_sha256);
}

fn invalid(msg: impl Into<Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

/// The text a filter works on: a string, or a number or boolean as written. Structured values
/// and null are errors, since their text form is not what anyone means to encode or sign.
fn text<'a>(filter: &str, value: &'a Value) -> Result<Cow<'a, str>, Error> {
    match value.kind() {
        ValueKind::String => Ok(Cow::Borrowed(value.as_str().unwrap_or_default())),
        ValueKind::Number | ValueKind::Bool => Ok(Cow::Owned(value.to_string())),
        ValueKind::Undefined => Err(Error::from(ErrorKind::UndefinedError)),
        ValueKind::None => Err(invalid(format!(
            "{filter} takes text, but the value is null"
        ))),
        ValueKind::Map | ValueKind::Seq | ValueKind::Iterable => Err(invalid(format!(
            "{filter} takes text, but was given a {}; turn it into JSON text first: \
             `value | tojson | {filter}`",
            if value.kind() == ValueKind::Map {
                "map"
            } else {
                "list"
            }
        ))),
        kind => Err(invalid(format!(
            "{filter} takes text, but was given {kind}"
        ))),
    }
}

/// `{{ '{"a": 1}' | fromjson }}`: parses JSON text into a value.
pub(crate) fn fromjson(value: Value) -> Result<Value, Error> {
    let s = match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default(),
        ValueKind::Undefined => return Err(Error::from(ErrorKind::UndefinedError)),
        ValueKind::Map | ValueKind::Seq | ValueKind::Iterable => {
            return Err(invalid(
                "fromjson takes JSON text, but was given a value that is already structured; \
                 use it directly",
            ));
        }
        kind => {
            return Err(invalid(format!(
                "fromjson takes JSON text (a string), but was given {kind}"
            )));
        }
    };
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => Ok(Value::from(minijinja::value::Serde(&v))),
        Err(e) => Err(invalid(format!(
            "fromjson: the text is not valid JSON: {e}{}",
            near(s, e.line(), e.column())
        ))),
    }
}

/// A few characters of `s` around a 1-based line and column, for a parse error.
fn near(s: &str, line: usize, column: usize) -> String {
    let Some(text) = s.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    // serde_json counts the column in bytes.
    let at = column.saturating_sub(1).min(text.len());
    let at = (0..=at)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before: String = {
        let b: Vec<char> = text[..at].chars().collect();
        b[b.len().saturating_sub(15)..].iter().collect()
    };
    let after: String = text[at..].chars().take(15).collect();
    if before.is_empty() && after.is_empty() {
        return String::new();
    }
    format!(" (near `{before}{after}`)")
}

fn engine(urlsafe: bool, pad: bool) -> GeneralPurpose {
    let alphabet = if urlsafe {
        &base64::alphabet::URL_SAFE
    } else {
        &base64::alphabet::STANDARD
    };
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_encode_padding(pad)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// `{{ text | b64encode }}`, `{{ text | b64encode(urlsafe=true) }}` (`-` and `_` for `+` and
/// `/`), with `padding=false` to leave out the trailing `=`.
pub(crate) fn b64encode(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let urlsafe: Option<bool> = kwargs.get("urlsafe")?;
    let padding: Option<bool> = kwargs.get("padding")?;
    kwargs.assert_all_used()?;
    let text = text("b64encode", &value)?;
    Ok(engine(urlsafe.unwrap_or(false), padding.unwrap_or(true)).encode(text.as_bytes()))
}

/// `{{ encoded | b64decode }}` (or `urlsafe=true`): decodes base64 to text. Padding may be
/// present or not; the decoded bytes must be UTF-8 text.
pub(crate) fn b64decode(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let urlsafe: Option<bool> = kwargs.get("urlsafe")?;
    kwargs.assert_all_used()?;
    let urlsafe = urlsafe.unwrap_or(false);
    let text = text("b64decode", &value)?;
    let input = text.trim();
    let bytes = engine(urlsafe, true)
        .decode(input)
        .map_err(|e| invalid(decode_error(input, urlsafe, e)))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        invalid(format!(
            "b64decode: the decoded bytes are not UTF-8 text (byte 0x{:02x} at offset {at}); \
             b64decode yields text only",
            e.as_bytes()[at]
        ))
    })
}

fn decode_error(input: &str, urlsafe: bool, e: base64::DecodeError) -> String {
    use base64::DecodeError as D;
    let shown: String = input.chars().take(40).collect();
    let shown = if shown.len() < input.len() {
        format!("{shown}…")
    } else {
        shown
    };
    let what = match e {
        D::InvalidByte(at, b) => {
            let c = char::from(b);
            let hint = match (c, urlsafe) {
                ('-' | '_', false) => "; it looks URL-safe: use `b64decode(urlsafe=true)`",
                ('+' | '/', true) => "; it looks standard: leave out `urlsafe=true`",
                _ if urlsafe => "; URL-safe base64 uses A-Z, a-z, 0-9, `-`, `_` and `=`",
                _ => "; base64 uses A-Z, a-z, 0-9, `+`, `/` and `=`",
            };
            format!(
                "`{}` at offset {at} is not a base64 character{hint}",
                c.escape_default()
            )
        }
        D::InvalidLength(_) => {
            "its length is not a valid base64 length (is part of it missing?)".to_owned()
        }
        D::InvalidLastSymbol(at, _) => {
            format!("the last character (offset {at}) is not a valid ending; is it cut short?")
        }
        D::InvalidPadding => "its `=` padding is wrong".to_owned(),
    };
    format!("b64decode: `{shown}` is not valid base64: {what}")
}

/// `{{ body | hmac_sha256(secret) }}`: the HMAC-SHA256 of the text under `key`, as lowercase
/// hex, or base64 with `encoding="base64"`.
pub fn hmac_sha256(value: Value, key: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let encoding: Option<String> = kwargs.get("encoding")?;
    kwargs.assert_all_used()?;
    let Some(key) = key else {
        return Err(invalid(
            "hmac_sha256 needs a key: `{{ message | hmac_sha256(secret) }}`",
        ));
    };
    let key = text("hmac_sha256's key", &key)?;
    if key.is_empty() {
        return Err(invalid("hmac_sha256: the key is empty; is the secret set?"));
    }
    let message = text("hmac_sha256", &value)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .map_err(|_| invalid("hmac_sha256: the key cannot be used"))?;
    mac.update(message.as_bytes());
    let digest = mac.finalize().into_bytes();
    match encoding.as_deref().unwrap_or("hex") {
        "hex" => Ok(hex::encode(digest)),
        "base64" => Ok(base64::engine::general_purpose::STANDARD.encode(digest)),
        other => Err(invalid(format!(
            "hmac_sha256: unknown encoding `{other}`; use \"hex\" (the default) or \"base64\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn env() -> minijinja::Environment<'static> {
        crate::templates::environment(10_000)
    }

    fn render(src: &str, ctx: serde_json::Value) -> Result<String, String> {
        env()
            .render_str(src, minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| crate::templates::describe_error(&e))
    }

    #[test]
    fn json_round_trips() {
        let ctx = json!({"s": "{\"b\": [1, 2], \"a\": {\"x\": \"y\"}}", "m": {"k": 1}});
        assert_eq!(
            render("{{ (s | fromjson).a.x }}", ctx.clone()).unwrap(),
            "y"
        );
        assert_eq!(
            render("{{ (s | fromjson).b | sum }}", ctx.clone()).unwrap(),
            "3"
        );
        // Key order survives the round trip.
        assert_eq!(
            render("{{ s | fromjson | tojson }}", ctx.clone()).unwrap(),
            r#"{"b": [1, 2], "a": {"x": "y"}}"#
        );
        assert_eq!(render("{{ m | tojson }}", ctx).unwrap(), r#"{"k": 1}"#);
    }

    #[test]
    fn bad_json_says_where() {
        let ctx = json!({"bad": "{\"a\": 1,, \"b\": 2}", "m": {"k": 1}, "n": 5});
        let e = render("{{ bad | fromjson }}", ctx.clone()).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: fromjson: the text is not valid JSON: key must be a string at \
             line 1 column 9 (near `{\"a\": 1,, \"b\": 2}`)"
        );
        let long = json!({"s": format!("{{\"items\": [1, 2, 3, 4, 5, 6, 7, 8, 9, oops], \"more\": \"{}\"}}", "x".repeat(50))});
        let e = render("{{ s | fromjson }}", long).unwrap_err();
        assert!(
            e.ends_with(
                "expected value at line 1 column 39 (near `5, 6, 7, 8, 9, oops], \"more\": `)"
            ),
            "{e}"
        );
        let e = render("{{ m | fromjson }}", ctx.clone()).unwrap_err();
        assert!(e.contains("already structured; use it directly"), "{e}");
        let e = render("{{ n | fromjson }}", ctx.clone()).unwrap_err();
        assert!(
            e.contains("takes JSON text (a string), but was given number"),
            "{e}"
        );
        let e = render("{{ '' | fromjson }}", ctx).unwrap_err();
        assert!(e.contains("EOF while parsing"), "{e}");
    }

    #[test]
    fn base64_both_ways() {
        let ctx = json!({"s": "user:pa ss?>>", "n": 42});
        assert_eq!(
            render("{{ s | b64encode }}", ctx.clone()).unwrap(),
            "dXNlcjpwYSBzcz8+Pg=="
        );
        assert_eq!(
            render("{{ s | b64encode(urlsafe=true) }}", ctx.clone()).unwrap(),
            "dXNlcjpwYSBzcz8-Pg=="
        );
        assert_eq!(
            render(
                "{{ s | b64encode(urlsafe=true, padding=false) }}",
                ctx.clone()
            )
            .unwrap(),
            "dXNlcjpwYSBzcz8-Pg"
        );
        assert_eq!(render("{{ n | b64encode }}", ctx.clone()).unwrap(), "NDI=");
        assert_eq!(
            render("{{ 'dXNlcjpwYSBzcz8+Pg==' | b64decode }}", ctx.clone()).unwrap(),
            "user:pa ss?>>"
        );
        // Padding is optional when decoding.
        assert_eq!(
            render(
                "{{ 'dXNlcjpwYSBzcz8-Pg' | b64decode(urlsafe=true) }}",
                ctx.clone()
            )
            .unwrap(),
            "user:pa ss?>>"
        );
        assert_eq!(
            render("{{ s | b64encode | b64decode }}", ctx).unwrap(),
            "user:pa ss?>>"
        );
    }

    #[test]
    fn bad_base64_is_explained() {
        let ctx = json!({"m": {"a": 1}});
        let e = render("{{ 'dXNlcjpwYSBzcz8-Pg' | b64decode }}", ctx.clone()).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: b64decode: `dXNlcjpwYSBzcz8-Pg` is not valid base64: `-` at \
             offset 15 is not a base64 character; it looks URL-safe: use \
             `b64decode(urlsafe=true)`"
        );
        let e = render("{{ 'ab+c' | b64decode(urlsafe=true) }}", ctx.clone()).unwrap_err();
        assert!(
            e.contains("it looks standard: leave out `urlsafe=true`"),
            "{e}"
        );
        let e = render("{{ 'abcde' | b64decode }}", ctx.clone()).unwrap_err();
        assert!(e.contains("is not a valid base64 length"), "{e}");
        let e = render("{{ 'a b!' | b64decode }}", ctx.clone()).unwrap_err();
        assert!(
            e.contains("` ` at offset 1 is not a base64 character"),
            "{e}"
        );
        // 0xff 0xfe is not UTF-8.
        let e = render("{{ '//4=' | b64decode }}", ctx.clone()).unwrap_err();
        assert_eq!(
            e,
            "invalid operation: b64decode: the decoded bytes are not UTF-8 text (byte 0xff at \
             offset 0); b64decode yields text only"
        );
        let e = render("{{ m | b64encode }}", ctx.clone()).unwrap_err();
        assert!(
            e.contains("b64encode takes text, but was given a map; turn it into JSON text first: `value | tojson | b64encode`"),
            "{e}"
        );
        let e = render("{{ none | b64encode }}", ctx).unwrap_err();
        assert!(e.contains("the value is null"), "{e}");
    }

    #[test]
    fn hmac_signatures() {
        // RFC 4231 test case 2.
        let ctx = json!({"msg": "what do ya want for nothing?", "key": "Jefe"});
        assert_eq!(
            render("{{ msg | hmac_sha256(key) }}", ctx.clone()).unwrap(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            render(
                "{{ msg | hmac_sha256(key, encoding='base64') }}",
                ctx.clone()
            )
            .unwrap(),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
        let e = render("{{ msg | hmac_sha256 }}", ctx.clone()).unwrap_err();
        assert!(e.contains("hmac_sha256 needs a key"), "{e}");
        let e = render("{{ msg | hmac_sha256('') }}", ctx.clone()).unwrap_err();
        assert!(e.contains("the key is empty"), "{e}");
        let e = render("{{ msg | hmac_sha256(key, encoding='b64') }}", ctx.clone()).unwrap_err();
        assert!(
            e.contains("unknown encoding `b64`; use \"hex\" (the default) or \"base64\""),
            "{e}"
        );
        let e = render("{{ {'a': 1} | hmac_sha256(key) }}", ctx).unwrap_err();
        assert!(e.contains("`value | tojson | hmac_sha256`"), "{e}");
    }
}
