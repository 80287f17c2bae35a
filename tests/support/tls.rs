//! A throwaway CA made at run time, an HTTPS server on loopback that
//! presents a certificate it issued, and an HTTPS client of Herald's own
//! listener that trusts only that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, ServerConfig, SupportedProtocolVersion};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A CA and one server certificate it signed, valid for `localhost` and
/// `127.0.0.1`, written as PEM files (for Herald's `ca_file`, and for
/// servers in other processes such as the SMTP fixture).
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate in `cert_file`.
    pub leaf: Leaf,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate for `localhost` and `127.0.0.1`, and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = issue(&issuer, None);

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Self {
            ca_file: write("ca.pem", &ca_cert.pem()),
            cert_file: write("server.pem", &leaf.cert_pem),
            key_file: write("server.key", &leaf.key_pem),
            leaf,
            issuer,
            _dir: dir,
        }
    }

    /// Another server certificate of this CA, with a key of its own (a
    /// renewal).
    pub fn issue(&self) -> Leaf {
        issue(&self.issuer, None)
    }

    /// The same, valid until `not_after`.
    pub fn issue_until(&self, not_after: time::OffsetDateTime) -> Leaf {
        issue(&self.issuer, Some(not_after))
    }

    pub fn dir(&self) -> &Path {
        self.ca_file.parent().unwrap()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf.key.clone()));
        let config = ServerConfig::builder_with_provider(herald::tls::crypto())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf.cert.clone()], key)
            .unwrap();
        Arc::new(config)
    }
}

fn issue(issuer: &Issuer<'static, KeyPair>, not_after: Option<time::OffsetDateTime>) -> Leaf {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    if let Some(not_after) = not_after {
        params.not_after = not_after;
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert: cert.der().clone(),
        key: key.serialize_der(),
    }
}

/// A client config that trusts only the CA in `ca_file`, offers ALPN
/// `http/1.1`, and speaks the given TLS versions.
pub fn client_config(
    ca_file: &Path,
    versions: &[&'static SupportedProtocolVersion],
) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(herald::tls::crypto())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(herald::tls::roots(Some(ca_file)).unwrap())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// One HTTPS connection to `localhost` at an address, kept alive across
/// requests.
pub struct HttpsConnection {
    /// The certificate the server presented.
    pub peer: CertificateDer<'static>,
    pub version: ProtocolVersion,
    pub alpn: Option<Vec<u8>>,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl HttpsConnection {
    /// Connects with TLS 1.2 or 1.3, trusting only `ca_file`.
    pub async fn open(addr: SocketAddr, ca_file: &Path) -> std::io::Result<Self> {
        Self::open_with(addr, client_config(ca_file, rustls::ALL_VERSIONS)).await
    }

    /// The handshake's error (the client refused the server, or the
    /// server hung up) within 10 s, or the connection.
    pub async fn open_with(addr: SocketAddr, config: ClientConfig) -> std::io::Result<Self> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
        };
        let tls = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
            .await
            .map_err(|_| std::io::Error::other("no TLS handshake within 10 s"))??;
        let session = tls.get_ref().1;
        let peer = session.peer_certificates().unwrap()[0].clone().into_owned();
        let version = session.protocol_version().unwrap();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            peer,
            version,
            alpn,
            sender,
            task,
        })
    }

    /// A request on this connection (a JSON body when given): its status
    /// and JSON answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (status, bytes) = self.exchange(method, path, body).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A GET whose answer is text (`/metrics`).
    pub async fn get_text(&mut self, path: &str) -> (u16, String) {
        let (status, bytes) = self.exchange("GET", path, None).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn exchange(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            // The answer before may be read while the connection is not yet
            // done with it.
            self.sender.ready().await.unwrap();
            let response = self.sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, bytes)
        });
        answer.await.expect("an answer within 10 s")
    }
}

impl Drop for HttpsConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTPS server that answers every request with `status` and a small
/// JSON body, and keeps the bodies it received.
pub struct HttpsFixture {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    task: JoinHandle<()>,
}

impl HttpsFixture {
    pub async fn start(ca: &TestCa, status: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&bodies);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    // A client that does not trust the certificate hangs up here.
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let kept = Arc::clone(&kept);
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            kept.lock().unwrap().push(body);
                            let answer = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                .unwrap();
                            Ok::<_, hyper::Error>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, bodies, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for HttpsFixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}
