//! TLS for the channel's connections (feature `tls`), through rustls.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, TransportError};

/// TLS settings: which certificates to trust and, optionally, the name to verify.
///
/// ALPN is always `h2`; a server that does not agree to HTTP/2 is a failed connect.
///
/// ```no_run
/// # fn demo(ca_pem: &[u8]) -> Result<(), lb_tonic::Error> {
/// use lb_tonic::{LbChannel, TlsConfig};
///
/// let tls = TlsConfig::with_ca_pem(ca_pem)?.server_name("greeter.internal")?;
/// let channel = LbChannel::builder("static:///10.0.0.1:443,10.0.0.2:443").tls(tls).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Trusts the CA certificates in `pem` (one or more PEM blocks).
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
            found += 1;
        }
        if found == 0 {
            return Err(Error::Tls("no certificate in the PEM".to_owned()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self::from_rustls(config))
    }

    /// Uses a rustls client config as it is (client certificates, custom verifiers),
    /// with ALPN set to `h2`.
    pub fn from_rustls(mut config: rustls::ClientConfig) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: None,
        }
    }

    /// Verifies every backend's certificate against `name`, instead of the host of
    /// the connection's authority (see `Builder::authority`).
    pub fn server_name(mut self, name: &str) -> Result<Self, Error> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| Error::Tls(format!("invalid server name `{name}`")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Runs the TLS handshake over `stream` to `addr`, verifying the certificate
    /// against the configured server name, else `host` (the connection's authority's
    /// host).
    pub(crate) async fn connect<S>(
        &self,
        addr: &str,
        host: &str,
        stream: S,
    ) -> Result<TlsStream<S>, TransportError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let fail = |reason: String| TransportError::Tls {
            addr: addr.to_owned(),
            reason,
        };
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| fail(format!("`{host}` is not a valid TLS server name")))?,
        };
        let tls = self
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(fail(
                "the server did not agree to HTTP/2 (ALPN h2)".to_owned(),
            ));
        }
        Ok(tls)
    }
}

/// A TLS connection's cipher suite and certificates, for channelz.
pub(crate) fn describe<S>(stream: &TlsStream<S>) -> lb_core::channelz::TlsData {
    let session = stream.get_ref().1;
    let mut data = lb_core::channelz::TlsData::default();
    if let Some(suite) = session.negotiated_cipher_suite() {
        data.cipher_suite = standard_name(&format!("{:?}", suite.suite()));
    }
    if let Some(first) = session.peer_certificates().and_then(|c| c.first()) {
        data.remote_certificate = first.as_ref().to_vec();
    }
    data
}

/// The IANA name of a suite rustls names by its `Debug`: its TLS 1.3 suites are
/// `TLS13_*` there and `TLS_*` in the registry; TLS 1.2 suites already match; an
/// unknown one (`CipherSuite(0x1234)`) keeps rustls's text, which channelz then
/// sends as a non-standard name.
fn standard_name(debug: &str) -> String {
    match debug.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => debug.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cipher_suites_take_their_iana_names() {
        assert_eq!(
            super::standard_name("TLS13_AES_128_GCM_SHA256"),
            "TLS_AES_128_GCM_SHA256"
        );
        assert_eq!(
            super::standard_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        assert_eq!(
            super::standard_name("CipherSuite(0x1234)"),
            "CipherSuite(0x1234)"
        );
    }

    use super::*;

    #[test]
    fn bad_pem_is_an_error_that_says_so() {
        let err = TlsConfig::with_ca_pem(b"not a pem").unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
        let err = TlsConfig::with_ca_pem(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("CA certificate") || err.to_string().contains("PEM"),
            "{err}"
        );
    }
}
