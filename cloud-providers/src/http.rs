//! The reqwest client every hand-written HTTP path uses (Alibaba Cloud API, both metadata
//! services): rustls with the ring provider, no system proxy.

use std::time::Duration;

use crate::error::ProviderError;

/// Build an HTTP client whose requests time out after `timeout`.
///
/// Installs rustls' ring provider as the process default when none is installed yet (reqwest
/// is built without a provider of its own, to keep aws-lc out of the build).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .no_proxy()
        .build()
        .map_err(|e| ProviderError::Config {
            message: format!("building the HTTP client: {e}"),
        })
}

/// A transport error's code for [`ProviderError::Transient`].
pub(crate) fn transport_code(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "Timeout"
    } else if e.is_connect() {
        "Connection"
    } else {
        "Transport"
    }
}
