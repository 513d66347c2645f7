//! Process-wide TLS set-up.
//!
//! reqwest is built with `rustls-no-provider` so that only ring (never aws-lc) ends up in the
//! binary; the price is that rustls has no default `CryptoProvider` until one is installed,
//! and building an HTTPS client before that fails. Every client constructor calls [`init`].

use std::sync::Once;

static INIT: Once = Once::new();

/// Installs rustls' ring provider as the process default. Safe to call any number of times.
pub fn init() {
    INIT.call_once(|| {
        // An error only means some other code installed a provider first. Any provider serves
        // our clients equally well, so the first one in wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn installs_a_default_provider_once() {
        super::init();
        super::init();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
