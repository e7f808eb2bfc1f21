//! Hugging Face through the mirror route (`HF_ENDPOINT=http://<proxy>/hf`): a file's resolve request is
//! answered from the hub's own metadata, so that the signed CDN URLs, which differ per request and per
//! node, never name anything.
//!
//! Owns: the decision for `/hf/<repo>/resolve/<rev>/<file>` once the hub answered a HEAD of it (with the
//! requester's headers, redirects not followed). An LFS file (the hub redirects to its CDN and names the
//! file's sha256 in `X-Linked-Etag`): a HEAD is answered here with that metadata and no `Location`, so
//! the client's GET comes back to the proxy; the GET becomes a task keyed and verified by the sha256,
//! fetched through the hub's redirect. The hub's answer is its yes for this requester (or its 401/404,
//! which the client gets even when the file is cached). Anything else (git-stored files, errors, the
//! API) passes through. The responder (server.rs) executes the decision.

use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, ETAG, LOCATION};
use http::{Method, StatusCode, Uri};

/// Metadata headers of a resolve answer that huggingface_hub reads.
const META: &[&str] =
    &["x-repo-commit", "x-linked-etag", "x-linked-size", "etag", "content-type", "x-error-code", "x-error-message"];

/// What to do with a resolve request, given the hub's answer to its HEAD.
#[derive(Debug)]
pub enum HubDecision {
    /// Answer with this status and these headers, no body (HEADs; same-host redirects rewritten to the
    /// mirror's path).
    Answer { status: StatusCode, headers: HeaderMap },
    /// A GET of an LFS file: a task keyed by this sha256, fetched from the resolve URL.
    Task { sha256: [u8; 32] },
    /// Forward the request to the hub as it is.
    Pass,
}

/// True for the hub requests this module decides: HEAD and GET of `.../resolve/...`.
pub fn is_resolve(method: &Method, url: &Uri) -> bool {
    (method == Method::GET || method == Method::HEAD) && url.path().contains("/resolve/")
}

/// Decides from the hub's answer (`status`, `h`) to a HEAD of the resolve URL `url`.
pub fn decide(method: &Method, url: &Uri, status: StatusCode, h: &HeaderMap) -> HubDecision {
    let location = h.get(LOCATION).and_then(|v| v.to_str().ok());
    let target = location.and_then(|l| crate::engine::source::resolve_location(url, l));
    let same_origin = target.as_ref().is_some_and(|t| t.scheme() == url.scheme() && t.authority() == url.authority());
    if status.is_redirection() && same_origin {
        // A renamed repository or the hub's resolve cache: the client follows it, through the mirror.
        let mut headers = meta(h);
        if let Some(t) = target {
            let path = t.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            if let Ok(v) = HeaderValue::from_str(&format!("/hf{path}")) {
                headers.insert(LOCATION, v);
            }
        }
        return HubDecision::Answer { status, headers };
    }
    let sha = status.is_redirection().then(|| linked_sha256(h)).flatten();
    match (sha, method == Method::HEAD) {
        (Some(sha256), false) => HubDecision::Task { sha256 },
        (Some(_), true) => {
            let mut headers = meta(h);
            if let Some(len) = h.get("x-linked-size").cloned() {
                headers.insert(CONTENT_LENGTH, len);
            }
            headers.insert("accept-ranges", HeaderValue::from_static("bytes"));
            HubDecision::Answer { status: StatusCode::OK, headers }
        }
        // Not an LFS file, or the hub said no: its own answer, Location included.
        (None, true) => HubDecision::Answer { status, headers: h.clone() },
        (None, false) => HubDecision::Pass,
    }
}

/// The sha256 an LFS file's `X-Linked-Etag` names (quotes and a weak marker stripped).
fn linked_sha256(h: &HeaderMap) -> Option<[u8; 32]> {
    sha256_in_etag(h.get("x-linked-etag").or_else(|| h.get(ETAG))?.to_str().ok()?)
}

/// The sha256 an entity tag names (`"<64 hex>"`, a weak marker and quotes stripped), as the hub writes an
/// LFS file's `X-Linked-Etag`.
pub fn sha256_in_etag(v: &str) -> Option<[u8; 32]> {
    let v = v.trim().trim_start_matches("W/").trim_matches('"');
    let mut out = [0u8; 32];
    (v.len() == 64).then_some(())?;
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

fn meta(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in META {
        for v in h.get_all(*name) {
            out.append(*name, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9b5e2c1d0a4f6e8b7c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

    fn hub(status: u16, pairs: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), h)
    }

    #[test]
    fn lfs_files_are_tasks_by_their_sha256_and_heads_answer_without_location() {
        let url: Uri = "https://hub.test/org/m/resolve/main/w.bin".parse().unwrap();
        let (s, h) = hub(
            302,
            &[
                ("location", "https://cdn.test/repos/aa/bb/x?Expires=1&Signature=z"),
                ("x-linked-etag", &format!("\"{SHA}\"")),
                ("x-linked-size", "1234"),
                ("x-repo-commit", "c0ffee"),
            ],
        );
        let HubDecision::Task { sha256 } = decide(&Method::GET, &url, s, &h) else { panic!() };
        assert_eq!(hex::encode(sha256), SHA);
        let HubDecision::Answer { status, headers } = decide(&Method::HEAD, &url, s, &h) else { panic!() };
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get(LOCATION).is_none(), "the client's GET must come back to the mirror");
        assert_eq!(headers.get(CONTENT_LENGTH).unwrap(), "1234");
        assert_eq!(headers.get("x-repo-commit").unwrap(), "c0ffee");
    }

    #[test]
    fn refusals_git_files_and_renames() {
        let url: Uri = "https://hub.test/org/m/resolve/main/config.json".parse().unwrap();
        let (s, h) = hub(401, &[("x-error-code", "RepoNotFound")]);
        assert!(matches!(decide(&Method::GET, &url, s, &h), HubDecision::Pass));
        let HubDecision::Answer { status, .. } = decide(&Method::HEAD, &url, s, &h) else { panic!() };
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (s, h) = hub(200, &[("etag", "\"abc\"")]);
        assert!(matches!(decide(&Method::GET, &url, s, &h), HubDecision::Pass));
        let (s, h) = hub(307, &[("location", "/api/resolve-cache/models/org/m/c0ffee/config.json")]);
        let HubDecision::Answer { status, headers } = decide(&Method::GET, &url, s, &h) else { panic!() };
        assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(headers.get(LOCATION).unwrap(), "/hf/api/resolve-cache/models/org/m/c0ffee/config.json");
        // A redirect elsewhere without a sha256 is not a task.
        let (s, h) = hub(302, &[("location", "https://cdn.test/x")]);
        assert!(matches!(decide(&Method::GET, &url, s, &h), HubDecision::Pass));
    }
}
