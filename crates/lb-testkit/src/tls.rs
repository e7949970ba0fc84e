//! A throwaway PKI for TLS tests: a CA and a server certificate for `localhost` and
//! `127.0.0.1`, made fresh for each test.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A CA, and a server certificate it signed.
pub struct TestPki {
    ca_pem: String,
    acceptor: TlsAcceptor,
}

impl TestPki {
    /// A new CA and a server certificate for `localhost` and `127.0.0.1` (ALPN
    /// `h2`).
    pub fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::for_names(&["localhost", "127.0.0.1"])
    }

    /// A new CA and a server certificate for exactly these names (ALPN `h2`).
    pub fn for_names(names: &[&str]) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "grpc-lb test CA");
        let ca_cert = ca.self_signed(&ca_key)?;

        let key = KeyPair::generate()?;
        let leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;

        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server side.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}
