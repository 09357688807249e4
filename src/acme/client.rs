//! The HTTPS client the ACME library talks to the CA with: rustls with the
//! webpki roots (or only `[acme] ca`), one connection per request driven
//! inside the request's future, every request bounded in time and every
//! response body in size.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest an ACME request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body read from the CA (a certificate chain, a
/// directory, an order with up to 100 authorizations all fit).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("[acme] ca {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("{0}: only https:// URLs")]
    Scheme(String),
    #[error("{0}: not a host name")]
    Host(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("response body: {0}")]
    Body(String),
    #[error("no answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl Client {
    /// Trusts the webpki roots, or only the roots of `ca` when given.
    pub fn new(ca: Option<&Path>) -> Result<Client, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let err = |reason: String| HttpError::Ca {
                    path: path.display().to_string(),
                    reason,
                };
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect())
                    .map_err(|e| err(e.to_string()))?;
                if certs.is_empty() {
                    return Err(err("no certificate in it".into()));
                }
                for c in certs {
                    roots.add(c).map_err(|e| err(e.to_string()))?;
                }
            }
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: TlsConnector::from(Arc::new(cfg)),
        })
    }

    async fn send(&self, mut req: Request<BodyWrapper<Bytes>>) -> Result<BytesResponse, HttpError> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(HttpError::Scheme(uri.to_string()));
        }
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Host(uri.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name =
            ServerName::try_from(host.clone()).map_err(|_| HttpError::Host(uri.to_string()))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(name, tcp).await.map_err(HttpError::Tls)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        // HTTP/1.1 wants the path in the request line and the host in a
        // header.
        if let Some(authority) = uri.authority()
            && let Ok(v) = hyper::header::HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
        *req.uri_mut() = uri
            .path_and_query()
            .map_or_else(|| "/".parse(), |p| p.as_str().parse())
            .map_err(|_| HttpError::Host(uri.to_string()))?;
        let fetch = async {
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok(BytesResponse::from(http::Response::from_parts(
                parts,
                Full::new(body),
            )))
        };
        tokio::pin!(fetch);
        // The connection ends early only with an error; the fetch decides.
        tokio::select! {
            r = &mut fetch => r,
            r = conn => {
                r?;
                fetch.await
            }
        }
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.clone();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, client.send(req)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(Box::new(HttpError::Timeout))),
            }
        })
    }
}
