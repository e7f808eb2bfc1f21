//! Whether a requester may read a copy this node already has (or takes from a peer): the origin's word,
//! asked with the requester's own credentials — the authorization probe — and remembered briefly.
//!
//! Owns: what counts as a request's credentials (credential headers, and credential query parameters
//! that the task ID leaves out) and their keyed fingerprint; when a copy needs the origin's consent
//! ([`needs_probe`]); the probe itself (HEAD, or a one-byte ranged GET for signed URLs, which are signed
//! for one method); and the grants it earned, per (task, fingerprint), for `ttl`. Never: serves bytes or
//! decides where they come from (the conductor), or prints a credential (a fingerprint is keyed with a
//! per-process secret, so even it means nothing outside this process).
//!
//! Why: task IDs drop signatures and tokens so that one object behind many signed URLs is one task.
//! Without a probe, whoever names the object would be served the copy fetched with someone else's
//! credentials.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use super::error::EngineError;
use super::source::OriginClient;
use crate::storage::TaskId;

/// Per rule: when a copy is served only after the origin agrees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Authorize {
    /// When credentials are involved: the request carries some, or the task was created for one that did.
    #[default]
    Auto,
    /// Every copy, credentials or not (origins that authorize by network address or by nothing visible).
    Always,
    /// Never: whoever names the object gets the copy (public content only).
    Never,
}

/// Header names that carry a requester's credentials.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie"];

/// Query parameter names that carry a URL signature (matched ignoring ASCII case). A signature covers the
/// method, so a signed GET URL cannot be asked with HEAD (S3, GCS, CloudFront, Azure SAS, COS, OSS): its
/// probe is a one-byte GET.
pub const SIGNATURE_PARAMS: &[&str] = &[
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "Signature",
    "Key-Pair-Id",
    "Policy",
    "sig",
    "q-signature",
    "q-ak",
    "OSSAccessKeyId",
    "AccessKeyId",
];

/// Query parameter names that carry a bearer token (matched ignoring ASCII case): good for any method,
/// so the probe is a HEAD.
pub const TOKEN_PARAMS: &[&str] = &["jwt", "token", "access_token", "auth"];

/// A request carries credentials in its URL when one of [`SIGNATURE_PARAMS`] or [`TOKEN_PARAMS`] is present
/// *and* left out of the task ID (a parameter kept in the ID makes each value its own task, so nothing is
/// shared across them).
fn credential_param(name: &str) -> Option<bool> {
    let is = |list: &[&str]| list.iter().any(|c| name.eq_ignore_ascii_case(c));
    match (is(SIGNATURE_PARAMS), is(TOKEN_PARAMS)) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    }
}

/// A request's credentials, as far as authorization cares.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Keyed hash of the credential headers and of every query component left out of the task ID (so an
    /// expired signed URL differs from a fresh one); equal requests have equal fingerprints.
    pub fingerprint: [u8; 32],
    pub in_headers: bool,
    pub in_query: bool,
    /// The URL is signed (one of [`SIGNATURE_PARAMS`]): valid for its method only.
    pub signed: bool,
}

impl Credentials {
    pub fn any(&self) -> bool {
        self.in_headers || self.in_query
    }
}

impl std::fmt::Debug for Credentials {
    // The fingerprint stays out of logs: it is a stand-in for a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("in_headers", &self.in_headers)
            .field("in_query", &self.in_query)
            .field("signed", &self.signed)
            .finish()
    }
}

fn process_key() -> &'static ring::hmac::Key {
    static KEY: OnceLock<ring::hmac::Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        // A key that could not be drawn still keeps fingerprints apart; only their secrecy would suffer,
        // and SystemRandom fails only without a kernel RNG.
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &std::process::id().to_le_bytes()))
    })
}

/// The credentials of a request for `uri` with `headers`; `filtered` says which query parameter names the
/// task ID leaves out.
pub fn credentials(uri: &http::Uri, headers: &[(String, String)], filtered: impl Fn(&str) -> bool) -> Credentials {
    let mut ctx = ring::hmac::Context::with_key(process_key());
    let mut creds: Vec<(String, &str)> = headers
        .iter()
        .filter(|(n, _)| CREDENTIAL_HEADERS.iter().any(|c| n.eq_ignore_ascii_case(c)))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str()))
        .collect();
    creds.sort();
    for (n, v) in &creds {
        for part in [b"h:", n.as_bytes(), b"\0", v.as_bytes(), b"\0"] {
            ctx.update(part);
        }
    }
    let (mut in_query, mut signed) = (false, false);
    for kv in uri.query().unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let name = kv.split('=').next().unwrap_or("");
        if !filtered(name) {
            continue;
        }
        if let Some(sig) = credential_param(name) {
            in_query = true;
            signed |= sig;
        }
        for part in [b"q:", kv.as_bytes(), b"\0"] {
            ctx.update(part);
        }
    }
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(ctx.sign().as_ref());
    Credentials { fingerprint, in_headers: !creds.is_empty(), in_query, signed }
}

/// Whether serving a copy to a request with `asking` credentials needs the origin's consent first.
/// `fetched_with`: the fingerprint of the request whose origin GET this node is streaming (the origin
/// already said yes to exactly those credentials).
pub fn needs_probe(
    mode: Authorize,
    asking: &Credentials,
    task_credentialed: bool,
    fetched_with: Option<&[u8; 32]>,
) -> bool {
    if fetched_with == Some(&asking.fingerprint) {
        return false;
    }
    match mode {
        Authorize::Never => false,
        Authorize::Always => true,
        Authorize::Auto => asking.any() || task_credentialed,
    }
}

/// Most grants remembered at once; beyond it expired ones are dropped, then all (a probe is cheap).
const MAX_GRANTS: usize = 65_536;

/// The origin's recent yeses, per (task, credential fingerprint). Refusals are not remembered: a user
/// just granted access gets in at once.
pub(super) struct Grants {
    ttl: Duration,
    map: Mutex<HashMap<(TaskId, [u8; 32]), Instant>>,
}

impl Grants {
    pub(super) fn new(ttl: Duration) -> Grants {
        Grants { ttl, map: Mutex::new(HashMap::new()) }
    }

    pub(super) fn granted(&self, id: TaskId, fp: &[u8; 32]) -> bool {
        let map = super::lock(&self.map);
        map.get(&(id, *fp)).is_some_and(|until| Instant::now() < *until)
    }

    pub(super) fn grant(&self, id: TaskId, fp: &[u8; 32]) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = super::lock(&self.map);
        if map.len() >= MAX_GRANTS {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_GRANTS {
                map.clear();
            }
        }
        map.insert((id, *fp), now + self.ttl);
    }
}

/// How a probe asks.
fn probe_method(creds: &Credentials) -> Method {
    // A signed URL is signed for GET (S3, GCS, CloudFront): HEAD would be refused whatever the right.
    if creds.signed {
        Method::GET
    } else {
        Method::HEAD
    }
}

/// Asks the origin whether the request (`url`, `headers`) may read the object: Ok on a 2xx, the origin's
/// status as [`EngineError::OriginStatus`] otherwise. A HEAD answered 405 or 501 is asked again as a
/// one-byte GET. No body is read: the connection closes after the head.
pub(super) async fn probe(
    origin: &OriginClient,
    url: &str,
    headers: &[(String, String)],
    creds: &Credentials,
) -> Result<StatusCode, EngineError> {
    let method = probe_method(creds);
    let r = origin.probe(method.clone(), url, headers).await;
    match r {
        Err(EngineError::OriginStatus { status, .. })
            if method == Method::HEAD
                && matches!(status, StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED) =>
        {
            origin.probe(Method::GET, url, headers).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(n: &str) -> bool {
        ["token", "Expires", "sig", "X-Amz-Signature", "X-Amz-Date"].iter().any(|f| n.eq_ignore_ascii_case(f))
    }

    fn creds(url: &str, headers: &[(&str, &str)]) -> Credentials {
        let h: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        credentials(&url.parse().unwrap(), &h, filtered)
    }

    #[test]
    fn credentials_are_found_in_headers_and_filtered_credential_params_only() {
        assert!(!creds("http://o.test/f", &[]).any());
        assert!(!creds("http://o.test/f?Expires=5&v=1", &[("accept", "*/*")]).any());
        // Kept in the task ID: each token is its own task, nothing is shared across tokens.
        assert!(!creds("http://o.test/f?access_token=a", &[]).any());
        let q = creds("http://o.test/f?token=a", &[]);
        assert!(q.in_query && !q.in_headers);
        let s3 = creds("http://o.test/f?X-Amz-Date=1&X-Amz-Signature=ab", &[]);
        assert!(s3.in_query);
        let h = creds("http://o.test/f", &[("Authorization", "Bearer a")]);
        assert!(h.in_headers && !h.in_query);
        assert!(creds("http://o.test/f", &[("cookie", "s=1")]).in_headers);
    }

    #[test]
    fn fingerprints_tell_credentials_apart_and_ignore_the_rest() {
        let a = creds("http://o.test/f?token=a&v=1", &[("accept", "x")]);
        assert_eq!(a, creds("http://o.test/f?token=a&v=1", &[("accept", "y")]));
        assert_ne!(a.fingerprint, creds("http://o.test/f?token=b&v=1", &[]).fingerprint);
        // An expired signed URL is another set of credentials than the fresh one.
        let fresh = creds("http://o.test/f?sig=x&Expires=20", &[]);
        assert_ne!(fresh.fingerprint, creds("http://o.test/f?sig=x&Expires=10", &[]).fingerprint);
        let ha = creds("http://o.test/f", &[("Authorization", "Bearer a")]);
        assert_eq!(ha, creds("http://o.test/f", &[("authorization", "Bearer a")]));
        assert_ne!(ha.fingerprint, creds("http://o.test/f", &[("authorization", "Bearer b")]).fingerprint);
        assert!(!format!("{ha:?}").contains("fingerprint"));
    }

    #[test]
    fn probes_are_needed_when_credentials_are_involved_unless_the_origin_just_said_yes() {
        let none = creds("http://o.test/f", &[]);
        let a = creds("http://o.test/f?token=a", &[]);
        let b = creds("http://o.test/f?token=b", &[]);
        use Authorize::*;
        assert!(!needs_probe(Auto, &none, false, None), "public content costs nothing");
        assert!(needs_probe(Auto, &none, true, None), "content fetched with credentials");
        assert!(needs_probe(Auto, &a, false, None), "a request with credentials");
        assert!(!needs_probe(Auto, &a, true, Some(&a.fingerprint)), "its own origin fetch");
        assert!(needs_probe(Auto, &b, true, Some(&a.fingerprint)), "someone else's origin fetch");
        assert!(needs_probe(Always, &none, false, None));
        assert!(!needs_probe(Always, &none, false, Some(&none.fingerprint)));
        assert!(!needs_probe(Never, &b, true, Some(&a.fingerprint)));
        assert_eq!(probe_method(&a), Method::HEAD, "a token is good for any method");
        assert_eq!(probe_method(&creds("http://o.test/f?X-Amz-Date=1&X-Amz-Signature=ab", &[])), Method::GET);
        assert_eq!(probe_method(&creds("http://o.test/f?sig=x", &[])), Method::GET);
        assert_eq!(probe_method(&creds("http://o.test/f", &[("cookie", "s")])), Method::HEAD);
    }

    #[test]
    fn grants_expire_and_stay_bounded() {
        let g = Grants::new(Duration::from_millis(50));
        let (id, fp) = (TaskId([1; 32]), [2u8; 32]);
        assert!(!g.granted(id, &fp));
        g.grant(id, &fp);
        assert!(g.granted(id, &fp));
        assert!(!g.granted(TaskId([3; 32]), &fp));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!g.granted(id, &fp));
        for i in 0..MAX_GRANTS + 10 {
            let mut f = [0u8; 32];
            f[..8].copy_from_slice(&(i as u64).to_le_bytes());
            g.grant(id, &f);
        }
        assert!(super::super::lock(&g.map).len() <= MAX_GRANTS);
        let off = Grants::new(Duration::ZERO);
        off.grant(id, &fp);
        assert!(!off.granted(id, &fp));
    }
}
