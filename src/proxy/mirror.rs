//! Origin-form requests (`GET /v2/...` with no scheme or host) are mirror requests: the proxy port doubles
//! as a registry mirror for containerd (`hosts.toml`) and skopeo/podman (`registries.conf`), and as a
//! Hugging Face endpoint (`HF_ENDPOINT=http://<proxy>/hf`).
//!
//! Owns: mapping such a request to the upstream URL it stands for, and naming the digest a registry blob
//! path carries. The plan (plan.rs) then routes that URL as it would an absolute-form request: blobs
//! become tasks keyed by their digest (one layer is one task across tags, repositories and registries),
//! everything else (pings, manifests, tag lists, token challenges) passes through.

use http::Uri;

use super::rules::digest_in_path;

/// Where mirror requests go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirrors {
    /// The registry for `/v2/` requests without containerd's `ns` parameter (`https://host[:port]`).
    pub registry: Option<Uri>,
    /// The hub behind `/hf/` (`https://huggingface.co`).
    pub huggingface: Option<Uri>,
}

/// What an origin-form request stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum MirrorTarget {
    /// A registry URL; `digest` when the path names a blob by its sha256.
    Registry { url: Uri, digest: Option<[u8; 32]> },
    /// A hub URL (`/hf/` removed).
    Hub { url: Uri },
}

/// Why an origin-form request has no upstream (the one-line bodies of the 4xx).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum MirrorError {
    NoRegistry,
    BadNamespace,
    NoHub,
    NotMirrored,
}

impl MirrorError {
    /// The one-line answer.
    pub fn reason(&self) -> &'static str {
        match self {
            MirrorError::NoRegistry => {
                "shoal: no registry for this mirror request: add ?ns=<registry> or set proxy.mirror.registry"
            }
            MirrorError::BadNamespace => "shoal: the ns parameter must name a registry host[:port]",
            MirrorError::NoHub => "shoal: no hub behind /hf/: set proxy.mirror.huggingface",
            MirrorError::NotMirrored => {
                "shoal: this is a forward proxy and mirror: the request URL must be absolute http(s), /v2/... or /hf/..."
            }
        }
    }

    /// Not found for what this daemon does not mirror; bad request for a malformed one.
    pub fn status(&self) -> http::StatusCode {
        match self {
            MirrorError::BadNamespace | MirrorError::NotMirrored => http::StatusCode::BAD_REQUEST,
            MirrorError::NoRegistry | MirrorError::NoHub => http::StatusCode::NOT_FOUND,
        }
    }
}

/// Docker Hub's name for its registry in image references, and where its API lives.
const DOCKER_HUB: (&str, &str) = ("docker.io", "registry-1.docker.io");

impl Mirrors {
    /// The upstream URL for an origin-form `uri`.
    pub fn target(&self, uri: &Uri) -> Result<MirrorTarget, MirrorError> {
        let path = uri.path();
        if path == "/v2" || path.starts_with("/v2/") {
            let (ns, rest) = split_ns(uri.query());
            let base = match ns {
                Some(ns) => registry_base(ns)?,
                None => self.registry.as_ref().map(base_of).ok_or(MirrorError::NoRegistry)?,
            };
            let url = join(&base, path, rest.as_deref()).ok_or(MirrorError::NotMirrored)?;
            let digest = path.contains("/blobs/sha256:").then(|| digest_in_path(path)).flatten();
            return Ok(MirrorTarget::Registry { url, digest });
        }
        if let Some(rest) = path.strip_prefix("/hf/") {
            let hub = self.huggingface.as_ref().map(base_of).ok_or(MirrorError::NoHub)?;
            let url = join(&hub, &format!("/{rest}"), uri.query()).ok_or(MirrorError::NotMirrored)?;
            return Ok(MirrorTarget::Hub { url });
        }
        Err(MirrorError::NotMirrored)
    }
}

/// `scheme://authority` of a configured upstream, without a trailing slash or path.
fn base_of(u: &Uri) -> String {
    format!("{}://{}", u.scheme_str().unwrap_or("https"), u.authority().map(|a| a.as_str()).unwrap_or(""))
}

/// containerd's `ns=<registry host>` and the query without it.
fn split_ns(query: Option<&str>) -> (Option<&str>, Option<String>) {
    let Some(q) = query else { return (None, None) };
    let mut ns = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|kv| match kv.strip_prefix("ns=") {
            Some(v) => {
                ns = Some(v);
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    (ns, (!rest.is_empty()).then(|| rest.join("&")))
}

/// `https://<ns>` for a registry host named by `ns` (percent-encoded as containerd sends it: `%3A` for
/// the port's colon): letters, digits, dots, dashes and a port only.
fn registry_base(ns: &str) -> Result<String, MirrorError> {
    let decoded = percent_decode(ns).ok_or(MirrorError::BadNamespace)?;
    let ns = decoded.as_str();
    let ok = !ns.is_empty()
        && ns.len() <= 255
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
        && !ns.starts_with(['.', '-', ':']);
    if !ok {
        return Err(MirrorError::BadNamespace);
    }
    let host = if ns == DOCKER_HUB.0 { DOCKER_HUB.1 } else { ns };
    Ok(format!("https://{host}"))
}

/// `%XX` escapes decoded; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // Bounded by the input's length.
    while i < b.len() {
        if b[i] == b'%' {
            let hexd = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hexd, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn join(base: &str, path: &str, query: Option<&str>) -> Option<Uri> {
    let s = match query {
        Some(q) => format!("{base}{path}?{q}"),
        None => format!("{base}{path}"),
    };
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn m() -> Mirrors {
        Mirrors {
            registry: Some("https://reg.example:5000".parse().unwrap()),
            huggingface: Some("https://hub.example".parse().unwrap()),
        }
    }

    #[test]
    fn registry_requests_map_to_the_default_or_the_named_registry() {
        let t = |p: &str| m().target(&p.parse().unwrap());
        let blob = format!("/v2/library/alpine/blobs/sha256:{D}");
        let Ok(MirrorTarget::Registry { url, digest }) = t(&blob) else { panic!() };
        assert_eq!(url.to_string(), format!("https://reg.example:5000{blob}"));
        assert_eq!(digest.map(hex::encode).as_deref(), Some(D));
        let Ok(MirrorTarget::Registry { url, digest }) = t(&format!("{blob}?ns=docker.io")) else { panic!() };
        assert_eq!(url.to_string(), format!("https://registry-1.docker.io{blob}"));
        assert!(digest.is_some());
        let Ok(MirrorTarget::Registry { url, digest }) = t("/v2/a/manifests/latest?ns=ghcr.io&x=1") else { panic!() };
        assert_eq!((url.to_string().as_str(), digest), ("https://ghcr.io/v2/a/manifests/latest?x=1", None));
        assert!(matches!(t("/v2/"), Ok(MirrorTarget::Registry { digest: None, .. })));
        let Ok(MirrorTarget::Registry { url, .. }) = t("/v2/?ns=reg.test%3A5000") else { panic!() };
        assert_eq!(url.to_string(), "https://reg.test:5000/v2/", "containerd encodes the port's colon");
        assert_eq!(t("/v2/a?ns=evil/path"), Err(MirrorError::BadNamespace));
        assert_eq!(t("/v2/a?ns=evil%2Fpath"), Err(MirrorError::BadNamespace));
        assert_eq!(t("/v2/a?ns=bad%zz"), Err(MirrorError::BadNamespace));
        assert_eq!(t("/v2/a?ns=user@host"), Err(MirrorError::BadNamespace));
        assert_eq!(Mirrors::default().target(&"/v2/".parse().unwrap()), Err(MirrorError::NoRegistry));
    }

    #[test]
    fn hub_requests_drop_the_prefix_and_others_are_not_mirrored() {
        let Ok(MirrorTarget::Hub { url }) = m().target(&"/hf/org/model/resolve/main/w.bin".parse().unwrap()) else {
            panic!()
        };
        assert_eq!(url.to_string(), "https://hub.example/org/model/resolve/main/w.bin");
        assert_eq!(Mirrors::default().target(&"/hf/x".parse().unwrap()), Err(MirrorError::NoHub));
        assert_eq!(m().target(&"/index.html".parse().unwrap()), Err(MirrorError::NotMirrored));
    }

    proptest! {
        #[test]
        fn never_panics(path in "/[ -~]{0,80}") {
            if let Ok(u) = path.parse::<Uri>() {
                let _ = m().target(&u);
            }
        }
    }
}
