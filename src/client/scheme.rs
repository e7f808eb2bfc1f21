//! The URLs `shoal get` and `shoal preheat` take besides http(s), resolved to the URL, digest and headers
//! of a plain download:
//! - `hf://[datasets/|spaces/]<org>/<name>[@<revision>]/<path>`: a Hugging Face file. The hub
//!   (`HF_ENDPOINT`, else https://huggingface.co) is asked for its metadata with `HF_TOKEN`; an LFS file's
//!   sha256 (`X-Linked-Etag`) becomes the digest, so the task is keyed and verified by it and the CDN's
//!   signed URLs share it. Files stored in git download by URL.
//! - `oci://<registry>/<repository>@sha256:<hex>` (`oci+http://` for a plain-HTTP registry): a blob,
//!   keyed and verified by its digest. A registry that challenges for a Bearer token gets one from its
//!   token service (anonymous, or with `-H 'Authorization: Basic ...'`), as docker and containerd do.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;

use super::GetError;

/// A download the daemon (or the in-process engine) understands.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub url: String,
    pub digest: Option<String>,
    pub headers: Vec<String>,
}

/// How long the hub may take to answer the metadata request.
const HUB_TIMEOUT: Duration = Duration::from_secs(30);

/// `url` with `digest` and `headers` as given, or resolved from an `hf://` or `oci://` URL.
pub async fn resolve(url: &str, digest: Option<String>, headers: Vec<String>) -> Result<Resolved, GetError> {
    if let Some(rest) = url.strip_prefix("hf://") {
        return hf(rest, digest, headers).await;
    }
    for (prefix, scheme) in [("oci://", "https"), ("oci+http://", "http")] {
        if let Some(rest) = url.strip_prefix(prefix) {
            let (u, d) = oci(rest, scheme).ok_or_else(|| GetError::Url(url.to_owned()))?;
            if digest.as_ref().is_some_and(|g| *g != d) {
                return Err(GetError::Digest);
            }
            let headers = registry_token(&u, headers).await?;
            return Ok(Resolved { url: u, digest: Some(d), headers });
        }
    }
    Ok(Resolved { url: url.to_owned(), digest, headers })
}

/// A registry's Bearer token flow, as docker and containerd run it: the `/v2/` ping's challenge names a
/// realm; a token for `repository:<repo>:pull` is asked there (with the caller's Basic credentials when
/// `-H Authorization: Basic ...` gave them, anonymously otherwise) and replaces them. Registries that
/// answer the ping, or challenge for Basic, get the headers as given.
async fn registry_token(blob_url: &str, mut headers: Vec<String>) -> Result<Vec<String>, GetError> {
    let u: http::Uri = blob_url.parse().map_err(|_| GetError::Url(blob_url.to_owned()))?;
    let base = format!("{}://{}", u.scheme_str().unwrap_or("https"), u.authority().map(|a| a.as_str()).unwrap_or(""));
    let repo = u.path().strip_prefix("/v2/").and_then(|p| p.split("/blobs/").next()).unwrap_or("").to_owned();
    let is_auth = |h: &String| h.to_ascii_lowercase().starts_with("authorization:");
    let http = Http::new()?;
    let (status, h) = http.request(Method::GET, &format!("{base}/v2/"), &headers).await?;
    let challenge = h.get(http::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(params) = challenge.strip_prefix("Bearer ").filter(|_| status == StatusCode::UNAUTHORIZED) else {
        return Ok(headers);
    };
    let param = |k: &str| {
        params.split(',').find_map(|kv| {
            let (n, v) = kv.trim().split_once('=')?;
            (n == k).then(|| v.trim_matches('"').to_owned())
        })
    };
    let realm = param("realm").ok_or_else(|| GetError::Url(format!("{base}: a Bearer challenge without a realm")))?;
    let mut token_url = format!("{realm}?scope=repository:{repo}:pull");
    if let Some(service) = param("service") {
        token_url.push_str(&format!("&service={service}"));
    }
    let basic: Vec<String> = headers.iter().filter(|h| is_auth(h)).cloned().collect();
    let (status, body) = http.get_body(&token_url, &basic).await?;
    if !status.is_success() {
        return Err(GetError::Status { status, message: format!("the registry's token service ({realm}) refused") });
    }
    #[derive(serde::Deserialize)]
    struct Token {
        token: Option<String>,
        access_token: Option<String>,
    }
    let t: Token = serde_json::from_slice(&body).map_err(|_| GetError::Url(format!("{realm}: not a token answer")))?;
    let token = t.token.or(t.access_token).ok_or_else(|| GetError::Url(format!("{realm}: no token in the answer")))?;
    headers.retain(|h| !is_auth(h));
    headers.push(format!("Authorization: Bearer {token}"));
    Ok(headers)
}

/// `<registry>/<repo>@sha256:<hex>` → the blob URL and its digest.
fn oci(rest: &str, scheme: &str) -> Option<(String, String)> {
    let (name, digest) = rest.rsplit_once('@')?;
    let hexd = digest.strip_prefix("sha256:")?;
    if hexd.len() != 64 || !hexd.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (registry, repo) = name.split_once('/')?;
    let ok = |s: &str, extra: &[u8]| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b) || extra.contains(&b))
    };
    if !ok(registry, b":") || !ok(repo, b"/") || repo.starts_with('/') || repo.contains("//") {
        return None;
    }
    let registry = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
    let repo = if registry == "registry-1.docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_owned()
    };
    Some((
        format!("{scheme}://{registry}/v2/{repo}/blobs/sha256:{}", hexd.to_ascii_lowercase()),
        format!("sha256:{}", hexd.to_ascii_lowercase()),
    ))
}

/// The resolve URL of an `hf://` path (a revision with slashes is written %2F-encoded, as the hub's).
fn hf_url(rest: &str) -> Option<String> {
    let (kind, rest) = match rest.split_once('/') {
        Some(("datasets", r)) => ("datasets/", r),
        Some(("spaces", r)) => ("spaces/", r),
        _ => ("", rest),
    };
    let mut parts = rest.splitn(3, '/');
    let (org, name_rev, path) = (parts.next()?, parts.next()?, parts.next()?);
    let (name, rev) = name_rev.split_once('@').unwrap_or((name_rev, "main"));
    let ok = |s: &str| {
        !s.is_empty() && !s.contains("..") && !s.bytes().any(|b| b.is_ascii_whitespace() || b == b'?' || b == b'#')
    };
    if !(ok(org) && ok(name) && ok(rev) && ok(path)) {
        return None;
    }
    let endpoint = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty());
    let endpoint = endpoint.as_deref().unwrap_or("https://huggingface.co").trim_end_matches('/');
    let rev = rev.replace('/', "%2F");
    Some(format!("{endpoint}/{kind}{org}/{name}/resolve/{rev}/{path}"))
}

async fn hf(rest: &str, digest: Option<String>, mut headers: Vec<String>) -> Result<Resolved, GetError> {
    let url = hf_url(rest).ok_or_else(|| GetError::Url(format!("hf://{rest}")))?;
    let has_auth = headers.iter().any(|h| h.to_ascii_lowercase().starts_with("authorization:"));
    if let (false, Ok(t)) = (has_auth, std::env::var("HF_TOKEN")) {
        if !t.is_empty() {
            headers.push(format!("Authorization: Bearer {t}"));
        }
    }
    let (status, h) = Http::new()?.request(Method::HEAD, &url, &headers).await?;
    let linked = h.get("x-linked-etag").and_then(|v| v.to_str().ok()).and_then(crate::proxy::hub::sha256_in_etag);
    let digest = match (status.is_redirection(), linked) {
        (true, Some(sha)) => {
            let named = format!("sha256:{}", hex::encode(sha));
            if digest.as_ref().is_some_and(|d| *d != named) {
                return Err(GetError::Digest);
            }
            Some(named)
        }
        _ if status.is_success() || status.is_redirection() => digest,
        _ => {
            let message = h.get("x-error-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            return Err(GetError::Status { status, message });
        }
    };
    Ok(Resolved { url, digest, headers })
}

/// One HTTP(S) client for the requests of one resolution (the system's roots are loaded once).
struct Http(Client<crate::upstream::Https, Empty<Bytes>>);

impl Http {
    fn new() -> Result<Http, GetError> {
        let https = crate::upstream::https_connector(Duration::from_secs(10), crate::upstream::Destinations::open())
            .map_err(|e| GetError::Embedded(e.to_string()))?;
        Ok(Http(Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)))
    }

    /// GET `url` with `headers`: the status and a body of at most 1 MiB.
    async fn get_body(&self, url: &str, headers: &[String]) -> Result<(StatusCode, Bytes), GetError> {
        use http_body_util::BodyExt;
        let resp = self.send(Method::GET, url, headers).await?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), 1 << 20);
        let body = tokio::time::timeout(HUB_TIMEOUT, limited.collect())
            .await
            .map_err(|_| GetError::Timeout(HUB_TIMEOUT))?
            .map_err(|e| GetError::Body { got: 0, reason: e.to_string() })?
            .to_bytes();
        Ok((status, body))
    }

    /// `method url` with `headers`, no redirect followed: the status and headers.
    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[String],
    ) -> Result<(StatusCode, http::HeaderMap), GetError> {
        let resp = self.send(method, url, headers).await?;
        Ok((resp.status(), resp.headers().clone()))
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[String],
    ) -> Result<http::Response<hyper::body::Incoming>, GetError> {
        let mut req = Request::builder().method(method).uri(url);
        for h in headers {
            let (n, v) = h.split_once(':').ok_or_else(|| GetError::Header(h.clone()))?;
            req = req.header(n.trim(), v.trim());
        }
        let req = req.body(Empty::new()).map_err(|_| GetError::Url(url.to_owned()))?;
        let unreachable =
            |why: String| GetError::Daemon { addr: url.split('?').next().unwrap_or("").to_owned(), reason: why };
        tokio::time::timeout(HUB_TIMEOUT, self.0.request(req))
            .await
            .map_err(|_| GetError::Timeout(HUB_TIMEOUT))?
            .map_err(|e| unreachable(crate::upstream::error_chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn oci_urls_name_a_blob_and_its_digest() {
        let (u, d) = oci(&format!("ghcr.io/org/app@sha256:{D}"), "https").unwrap();
        assert_eq!(
            (u.as_str(), d.as_str()),
            (format!("https://ghcr.io/v2/org/app/blobs/sha256:{D}").as_str(), format!("sha256:{D}").as_str())
        );
        let (u, _) = oci(&format!("docker.io/alpine@sha256:{D}"), "https").unwrap();
        assert_eq!(u, format!("https://registry-1.docker.io/v2/library/alpine/blobs/sha256:{D}"));
        for bad in [
            format!("ghcr.io@sha256:{D}"),
            "ghcr.io/app@sha256:00".into(),
            "ghcr.io/app:tag".to_string(),
            format!("a b/app@sha256:{D}"),
        ] {
            assert_eq!(oci(&bad, "https"), None, "{bad}");
        }
    }

    #[test]
    fn hf_paths_become_resolve_urls() {
        std::env::remove_var("HF_ENDPOINT");
        assert_eq!(hf_url("org/model/w.bin").unwrap(), "https://huggingface.co/org/model/resolve/main/w.bin");
        assert_eq!(
            hf_url("datasets/org/set@refs%2Fpr%2F1/data/train.parquet").unwrap(),
            "https://huggingface.co/datasets/org/set/resolve/refs%2Fpr%2F1/data/train.parquet"
        );
        for bad in ["org/model", "org", "org/model/../x", "org/model/a b"] {
            assert_eq!(hf_url(bad), None, "{bad}");
        }
    }
}
