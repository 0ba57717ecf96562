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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use axum::body::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::PrivateKeyDer;

    use super::*;
    use crate::push::client::{Client, Reason};
    use crate::push::PushSettings;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/push/fixtures").join(name)
    }

    /// An HTTPS server on 127.0.0.1:0 with the fixture certificate
    /// (`localhost`, issued by the fixture CA), answering 200.
    async fn https_server() -> u16 {
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("server.pem"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        port
    }

    fn client(settings: &PushSettings) -> Client {
        Client::new(settings, settings.validate().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn pushes_over_https_to_a_server_of_a_trusted_ca_and_not_otherwise() {
        let port = https_server().await;
        let url = format!("https://localhost:{port}");
        let trusted = PushSettings::new(&url).ca_file(fixture("ca.pem"));
        client(&trusted)
            .push(Bytes::from_static(b"x"))
            .await
            .expect("a certificate of the given CA is trusted");
        // The built-in web roots alone do not know the test CA.
        let failure = client(&PushSettings::new(&url))
            .push(Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(failure.reason, Reason::Tls, "{failure:?}");
        // Nor does a CA file hold a private key or nothing at all.
        assert!(Connector::new(Some(&fixture("server.key"))).is_err());
        assert!(Connector::new(Some(&fixture("no-such-file.pem"))).is_err());
    }
}
