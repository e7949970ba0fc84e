//! xDS (feature `xds`): the `xds` scheme in every channel's default registries, its
//! ADS stream carried by an [`LbChannel`] of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // GRPC_XDS_BOOTSTRAP names the bootstrap file, as for grpc-go.
//! let channel = lb_tonic::LbChannel::builder("xds:///echo").build()?;
//! # Ok(()) }
//! ```

use lb_xds::client::BoxError;
use lb_xds::{AdsTransport, ChannelCreds, GrpcChannel, XdsResolverBuilder, XdsServer};
use tower::ServiceExt;

use crate::LbChannel;

/// Carries ADS streams over an [`LbChannel`] (pick_first over the server URI's
/// addresses, with the bootstrap's credentials).
#[derive(Debug, Clone, Copy, Default)]
pub struct LbChannelTransport;

impl AdsTransport for LbChannelTransport {
    fn connect(&self, server: &XdsServer) -> Result<GrpcChannel, BoxError> {
        let target = if server.uri.contains(":///") || server.uri.starts_with("unix:") {
            server.uri.clone()
        } else {
            format!("passthrough:///{}", server.uri)
        };
        let builder = LbChannel::builder(target).policy("pick_first");
        let builder = match &server.creds {
            ChannelCreds::Insecure => builder,
            #[cfg(feature = "tls")]
            ChannelCreds::Tls(tls) => builder.tls(tls_config(tls)?),
            #[cfg(not(feature = "tls"))]
            ChannelCreds::Tls(_) => {
                return Err(format!(
                    "xDS server {}: tls channel_creds need lb-tonic's `tls` feature",
                    server.uri
                )
                .into());
            }
            _ => {
                return Err(format!("xDS server {}: unsupported channel_creds", server.uri).into());
            }
        };
        let channel = builder.build()?;
        let service = channel.map_response(|r| r.map(tonic::body::Body::new));
        Ok(GrpcChannel::new(service))
    }
}

/// gRFC A65's `tls` credentials: the files read now.
#[cfg(feature = "tls")]
fn tls_config(tls: &lb_xds::TlsCreds) -> Result<crate::TlsConfig, BoxError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca_certificate_file {
        for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
            roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match (&tls.certificate_file, &tls.private_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(crate::TlsConfig::from_rustls(config))
}

/// The `xds` resolver builder with this transport.
pub fn resolver() -> XdsResolverBuilder {
    XdsResolverBuilder::new(std::sync::Arc::new(LbChannelTransport))
}
