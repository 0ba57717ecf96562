//! HTTPS for the pusher (feature `push-tls`): rustls with the `ring`
//! provider (no C toolchain beyond `cc`, no OpenSSL), Mozilla's roots
//! built in (`webpki-roots`, so a container without CA certificates
//! works), plus the certificates of an optional PEM file for a private CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::Error;

/// Makes TLS connections to the push server.
#[derive(Clone)]
pub(crate) struct Connector(tokio_rustls::TlsConnector);

impl Connector {
    /// A connector trusting the web's roots and the certificates in
    /// `ca_file`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when the CA file cannot be read or holds
    /// no certificate, or TLS cannot be set up.
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidSetting {
            setting: "push.ca_file",
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|_| invalid("cannot read the file as PEM"))?
                .collect::<Result<_, _>>()
                .map_err(|_| invalid("the file holds a malformed PEM section"))?;
            if certificates.is_empty() {
                return Err(invalid("the file holds no certificate"));
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|_| invalid("a certificate in the file is not valid"))?;
            }
        }
        // ring, not aws-lc-rs: no cmake or NASM to build, a fraction of the
        // compile time. rustls 0.23.48 deprecates it only for lacking
        // post-quantum key exchange, which a profile upload can do without.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| Error::InvalidSetting {
                setting: "push.url",
                reason: "TLS could not be set up",
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Connector(tokio_rustls::TlsConnector::from(Arc::new(config))))
    }

    /// The TLS handshake with `host` over `tcp`, checking its certificate.
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.0.connect(name, tcp).await
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector(rustls)")
    }
}
