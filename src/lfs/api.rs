//! The LFS server's HTTP API as the agent uses it: the batch call (one object at a time, as git-lfs hands
//! them over), upload PUTs and verify POSTs. TLS as git configures it: GIT_SSL_CAINFO (git-lfs reads it
//! alone), else http.sslCAInfo, else the system's roots; `http.sslVerify false` / GIT_SSL_NO_VERIFY turn
//! verification off, as in git, with a warning. Credentials: a URL's own, ssh's `git-lfs-authenticate`
//! headers, or git's credential helpers after a 401.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde::Deserialize;

use super::credential::{redacted, Credential};
use super::endpoint::{lfs_config, Endpoint};
use super::protocol::{Action, Operation};
use super::LfsError;

type Body = BoxBody<Bytes, std::io::Error>;
type Https = hyper_rustls::HttpsConnector<HttpConnector>;

const LFS_JSON: &str = "application/vnd.git-lfs+json";
/// A batch or verify answer larger than this is not an LFS server talking.
const MAX_ANSWER: usize = 4 << 20;
/// Until the response head of an API call arrives.
const HEAD_TIMEOUT: Duration = Duration::from_secs(60);

/// One object of a batch answer.
#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: BTreeMap<String, Action>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Debug, Deserialize)]
struct ObjectError {
    code: u16,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    objects: Vec<BatchObject>,
}

/// What the server wants done with one object: `None` for an upload it already has.
#[derive(Debug, Default)]
pub struct Actions {
    pub transfer: Option<Action>,
    pub verify: Option<Action>,
}

/// The API of one remote, with what this process learned about authenticating to it.
pub struct Api {
    client: Client<Https, Body>,
    endpoint: Endpoint,
    base: Uri,
    /// Headers for the API itself (from ssh's git-lfs-authenticate).
    api_headers: BTreeMap<String, String>,
    cred: tokio::sync::Mutex<Option<Credential>>,
}

impl Api {
    pub async fn new(endpoint: Endpoint, op: Operation) -> Result<Api, LfsError> {
        let mut endpoint = endpoint;
        let mut api_headers = BTreeMap::new();
        if let Some(ssh) = endpoint.ssh.clone() {
            let a = super::ssh::authenticate(&ssh, op).await?;
            endpoint.url = a.href;
            api_headers = a.header;
        }
        let base: Uri = endpoint.url.parse().map_err(|_| LfsError::NoEndpoint(endpoint.url.clone()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(Api { client, endpoint, base, api_headers, cred: tokio::sync::Mutex::new(None) })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint.url
    }

    /// The batch call for one object.
    pub async fn batch(&self, op: Operation, oid: &str, size: u64) -> Result<Actions, LfsError> {
        let body = serde_json::json!({
            "operation": op.as_str(),
            "transfers": ["basic"],
            "objects": [{"oid": oid, "size": size}],
            "hash_algo": "sha256",
        })
        .to_string();
        let url = format!("{}/objects/batch", self.endpoint.url);
        let (status, answer) = self.api_call(&url, Bytes::from(body)).await?;
        if !status.is_success() {
            return Err(LfsError::Server { status: status.as_u16(), message: server_message(&answer) });
        }
        let a: BatchAnswer =
            serde_json::from_slice(&answer).map_err(|e| LfsError::BadAnswer(format!("batch answer: {e}")))?;
        let o = a
            .objects
            .into_iter()
            .find(|o| o.oid == oid)
            .ok_or_else(|| LfsError::BadAnswer(format!("the batch answer does not list {oid}")))?;
        if let Some(e) = o.error {
            return Err(LfsError::Object { code: e.code, message: e.message });
        }
        let mut actions = o.actions;
        let transfer = actions.remove(op.as_str());
        if op == Operation::Download && transfer.is_none() {
            return Err(LfsError::Object { code: 404, message: "the server gave no download for it".into() });
        }
        Ok(Actions { transfer, verify: actions.remove("verify") })
    }

    /// The headers for a transfer action's href: the action's own, plus the API's credentials when the
    /// href is on the API's own origin and the action brings none (credentials go nowhere else).
    pub async fn transfer_headers(&self, a: &Action) -> Result<Vec<(String, String)>, LfsError> {
        let mut h: Vec<(String, String)> = a.header.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let href: Uri = a.href.parse().map_err(|_| LfsError::BadAnswer("an action href that is not a URL".into()))?;
        let same_origin = href.scheme() == self.base.scheme() && href.authority() == self.base.authority();
        let has_auth = h.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if same_origin && !has_auth {
            if let Some(c) = self.cred.lock().await.as_ref() {
                h.push(("Authorization".into(), c.basic()));
            }
        }
        Ok(h)
    }

    /// PUTs `file` to the upload action; `progress` gets the bytes sent so far.
    pub async fn upload(
        &self,
        a: &Action,
        file: tokio::fs::File,
        size: u64,
        progress: super::agent::Progress,
    ) -> Result<(), LfsError> {
        use futures_util::TryStreamExt;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect_ok(move |c| progress(c.len()));
        let body = http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data)).boxed();
        let mut req = Request::builder().method(Method::PUT).uri(&a.href);
        for (k, v) in self.transfer_headers(a).await? {
            req = req.header(k, v);
        }
        if !a.header.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/octet-stream");
        }
        let req = req.header("content-length", size).body(body).map_err(|e| LfsError::BadAnswer(e.to_string()))?;
        let (status, answer) = self.send(req).await?;
        if !status.is_success() {
            return Err(LfsError::Server { status: status.as_u16(), message: server_message(&answer) });
        }
        Ok(())
    }

    /// Tells the server an upload finished (the verify action).
    pub async fn verify(&self, a: &Action, oid: &str, size: u64) -> Result<(), LfsError> {
        let body = serde_json::json!({"oid": oid, "size": size}).to_string();
        let mut req = Request::builder().method(Method::POST).uri(&a.href);
        for (k, v) in self.transfer_headers(a).await? {
            req = req.header(k, v);
        }
        let req = req
            .header("content-type", LFS_JSON)
            .header("accept", LFS_JSON)
            .body(full(Bytes::from(body)))
            .map_err(|e| LfsError::BadAnswer(e.to_string()))?;
        let (status, answer) = self.send(req).await?;
        if !status.is_success() {
            return Err(LfsError::Server { status: status.as_u16(), message: server_message(&answer) });
        }
        Ok(())
    }

    /// A POST to the API, authenticating as git-lfs does: as is first; on a 401, with git's credentials;
    /// the helpers hear whether the server took them.
    async fn api_call(&self, url: &str, body: Bytes) -> Result<(StatusCode, Bytes), LfsError> {
        let uri: Uri = url.parse().map_err(|_| LfsError::NoEndpoint(url.to_owned()))?;
        let mut cred = self.cred.lock().await;
        let first = self.send(self.api_request(&uri, body.clone(), cred.as_ref())?).await?;
        if first.0 != StatusCode::UNAUTHORIZED || !self.api_headers.is_empty() {
            return Ok(first);
        }
        if let Some(c) = cred.take() {
            // Taken once and refused now (expired, revoked).
            c.reject().await;
            return Err(LfsError::AuthFailed(redacted(&uri)));
        }
        let c = Credential::fill(&uri).await?;
        let second = self.send(self.api_request(&uri, body, Some(&c))?).await?;
        if second.0 == StatusCode::UNAUTHORIZED || second.0 == StatusCode::FORBIDDEN {
            c.reject().await;
            return Err(LfsError::AuthFailed(redacted(&uri)));
        }
        c.approve().await;
        *cred = Some(c);
        Ok(second)
    }

    fn api_request(&self, uri: &Uri, body: Bytes, cred: Option<&Credential>) -> Result<Request<Body>, LfsError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header("accept", LFS_JSON)
            .header("content-type", LFS_JSON);
        for (k, v) in &self.api_headers {
            req = req.header(k, v);
        }
        if let Some(c) = cred {
            req = req.header("authorization", c.basic());
        }
        req.body(full(body)).map_err(|e| LfsError::BadAnswer(e.to_string()))
    }

    /// Sends `req`; the head within [`HEAD_TIMEOUT`], an answer body of at most [`MAX_ANSWER`].
    async fn send(&self, req: Request<Body>) -> Result<(StatusCode, Bytes), LfsError> {
        let what = redacted(req.uri());
        let unreachable = |why: String| LfsError::Unreachable { url: what.clone(), why };
        let resp = tokio::time::timeout(HEAD_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable("no answer in time".into()))?
            .map_err(|e| unreachable(crate::upstream::error_chain(&e)))?;
        let status = resp.status();
        let body = tokio::time::timeout(HEAD_TIMEOUT, Limited::new(resp.into_body(), MAX_ANSWER).collect())
            .await
            .map_err(|_| unreachable("the answer stalled".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// The `message` of an LFS error answer, else the start of the body.
fn server_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct M {
        message: String,
    }
    match serde_json::from_slice::<M>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned(),
    }
}

/// rustls settings as git's: which roots, and whether to verify at all.
fn tls_config() -> Result<rustls::ClientConfig, LfsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LfsError::Tls(e.to_string()))?;
    let no_verify = std::env::var_os("GIT_SSL_NO_VERIFY").is_some_and(|v| !v.is_empty())
        || lfs_config("http.sslVerify").is_some_and(|v| matches!(v.as_str(), "false" | "no" | "off" | "0"));
    if no_verify {
        eprintln!("shoal lfs: TLS certificates are NOT verified (http.sslVerify false or GIT_SSL_NO_VERIFY)");
        let v = Arc::new(NoVerify(provider));
        return Ok(builder.dangerous().with_custom_certificate_verifier(v).with_no_client_auth());
    }
    let file = std::env::var("GIT_SSL_CAINFO").ok().filter(|v| !v.is_empty()).or_else(|| lfs_config("http.sslCAInfo"));
    let Some(f) = file else {
        // No CA file of git's: the system's roots, as every outbound client of Shoal has them.
        let tls = crate::upstream::client_tls(None).map_err(|e| LfsError::Tls(e.to_string()))?;
        return Ok((*tls).clone());
    };
    // git-lfs trusts the CA file alone, not the system's roots beside it.
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::upstream::bundle(std::path::Path::new(&f)).map_err(|e| LfsError::Tls(e.to_string()))? {
        roots.add(c).map_err(|e| LfsError::Tls(format!("CA file {f}: {e}")))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// What `http.sslVerify false` asks for: any certificate is accepted, signatures are still checked so the
/// handshake is well-formed. Only ever built when the user configured it.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
