//! `allowed_origins`: which sites' pages a browser may use the chat from.
//!
//! A browser names the page's site in `Origin` as `scheme://host[:port]`, the host in lower
//! case and the port only when it is not the scheme's default. Settings are read into that
//! same form, so the check is a comparison and `https://WWW.Example.com:443/` still matches.

/// One entry of `allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// `*`: every site.
    Any,
    /// `https://www.example.com`, as a browser writes it.
    Exact(String),
    /// `https://*.example.com`: a subdomain of `.example.com` (not example.com itself), with
    /// this scheme and, as written after the host, `:port` or nothing.
    Subdomains {
        scheme: String,
        suffix: String,
        port: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<Allowed>);

impl AllowedOrigins {
    /// Reads the setting; the error names the entry (its index) and says what an origin is.
    pub fn parse(entries: &[String]) -> Result<AllowedOrigins, (usize, String)> {
        if entries.is_empty() {
            return Err((
                0,
                "allowed_origins: list the sites whose pages embed the chat, such as \
                 https://www.example.com"
                    .to_owned(),
            ));
        }
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| parse_one(e.trim()).map_err(|m| (i, m)))
            .collect::<Result<_, _>>()
            .map(AllowedOrigins)
    }

    /// Whether a browser's `Origin` header is one of them.
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|a| match a {
            Allowed::Any => true,
            Allowed::Exact(o) => o == origin,
            Allowed::Subdomains {
                scheme,
                suffix,
                port,
            } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_prefix("://"))
                .and_then(|rest| rest.strip_suffix(port.as_str()))
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && sub
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                }),
        })
    }
}

fn parse_one(text: &str) -> Result<Allowed, String> {
    if text == "*" {
        return Ok(Allowed::Any);
    }
    let shape = || {
        format!(
            "`{text}` is not an origin: write a scheme and a host, with a port when it is not \
             the default, such as https://www.example.com or http://localhost:8000"
        )
    };
    // The url crate does not take `*` in a host; a placeholder label stands in for it.
    const STAND_IN: &str = "herald-any-subdomain";
    let (wildcard, parsable) = match text.split_once("://*.") {
        Some((scheme, rest)) => (true, format!("{scheme}://{STAND_IN}.{rest}")),
        None => (false, text.to_owned()),
    };
    let url = reqwest::Url::parse(&parsable).map_err(|_| shape())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(shape());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{text}` has a path: an origin is only the scheme, the host and the port, such as \
             https://www.example.com; every page of that site is allowed"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(shape());
    }
    let origin = url.origin().ascii_serialization();
    if !wildcard {
        return Ok(Allowed::Exact(origin));
    }
    let host = url.host_str().unwrap_or_default();
    let suffix = host
        .strip_prefix(STAND_IN)
        .filter(|s| s.len() > 1)
        .ok_or_else(shape)?;
    Ok(Allowed::Subdomains {
        scheme: url.scheme().to_owned(),
        suffix: suffix.to_owned(),
        port: url.port().map(|p| format!(":{p}")).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedOrigins {
        let entries: Vec<String> = entries.iter().map(|s| (*s).to_owned()).collect();
        AllowedOrigins::parse(&entries).unwrap()
    }

    #[test]
    fn origins_match_as_browsers_write_them() {
        let a = allowed(&[
            "https://WWW.Example-Cars.com:443/",
            "http://localhost:8000",
            "https://*.dealer.example",
        ]);
        assert!(a.allows("https://www.example-cars.com"));
        assert!(!a.allows("http://www.example-cars.com"));
        assert!(!a.allows("https://www.example-cars.com.evil.example"));
        assert!(a.allows("http://localhost:8000"));
        assert!(!a.allows("http://localhost:8001"));
        assert!(a.allows("https://north.dealer.example"));
        assert!(a.allows("https://a.b.dealer.example"));
        assert!(
            !a.allows("https://dealer.example"),
            "the apex is not a subdomain"
        );
        assert!(!a.allows("https://evildealer.example"));
        assert!(!a.allows("https://north.dealer.example:8443"));
        assert!(!a.allows("null"));
        assert!(allowed(&["*"]).allows("https://anything.example"));
    }

    #[test]
    fn a_setting_that_is_not_an_origin_says_what_one_is() {
        let err = |text: &str| AllowedOrigins::parse(&[text.to_owned()]).unwrap_err().1;
        assert!(err("https://example.com/chat").contains("has a path"));
        assert!(err("example.com").contains("such as https://www.example.com"));
        assert!(err("ftp://example.com").contains("not an origin"));
        assert!(err("https://*.").contains("not an origin"));
        assert!(
            AllowedOrigins::parse(&[])
                .unwrap_err()
                .1
                .contains("list the sites")
        );
        let (index, _) =
            AllowedOrigins::parse(&["https://ok.example".into(), "nope".into()]).unwrap_err();
        assert_eq!(index, 1);
    }
}
