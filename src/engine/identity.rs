//! What a task is called: its 32-byte ID and display URL, derived from the URL that asks for it.
//!
//! Owns: the one identity function every caller uses (the proxy's rules, a seed peer's triggers,
//! `shoal get`'s embedded engine), the digests a URL path names, and the default list of volatile query
//! parameters. Never: network I/O, or deciding whether a request becomes a task (the proxy's rules do).
//!
//! Task ID (32 bytes), in this order of precedence:
//! 1. `content_digest: Auto` and the path names a digest (the last path segment is exactly 64 hex digits, or
//!    the path holds `/blobs/sha256:` followed by 64 hex digits up to the next `/` or the end): the ID is
//!    those 32 bytes (hex decoded, either case), and the content is verified against them. So one object
//!    behind different signed URLs, users or hosts is one task.
//! 2. The request carries `X-Shoal-Digest: sha256:<64 hex>`: the ID is those 32 bytes.
//! 3. Otherwise the ID is sha256 of the UTF-8 bytes of the display URL:
//!    `scheme "://" authority path ["?" kept-query]`, where scheme and authority are lowercased (a default
//!    port is kept as written), path is byte-exact, and kept-query is the query's `&`-separated components,
//!    empty ones dropped, minus those whose name (the bytes before the first `=`, not percent-decoded)
//!    matches a filtered parameter (ASCII case-insensitive; an entry ending in `*` is a prefix), kept in
//!    their original order and joined with `&`; `?` is omitted when nothing is kept. With `use_tls` the
//!    scheme is `https` (the URL as fetched from the origin, so the href-rewrite case and a direct https
//!    fetch are one task).
//!
//! Request headers (Authorization included) are not part of the ID.

use sha2::{Digest, Sha256};

use crate::storage::TaskId;

/// Query parameters that change between requests for the same object (signatures, expiry, tokens).
/// Matched case-insensitively; an entry ending in `*` is a prefix.
pub const DEFAULT_FILTERED_PARAMS: &[&str] = &[
    "X-Amz-*",
    "X-Goog-*",
    "Expires",
    "Signature",
    "Policy",
    "Key-Pair-Id",
    "sig",
    "se",
    "st",
    "sp",
    "sv",
    "sr",
    "spr",
    "skoid",
    "sktid",
    "skt",
    "ske",
    "sks",
    "skv",
    "OSSAccessKeyId",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "AccessKeyId",
    "jwt",
    "token",
    "actor_id",
    "key_id",
    "repo_id",
];

/// A task's identity as derived from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub task_id: TaskId,
    /// The sha256 the content must have, when the URL names it.
    pub digest: Option<[u8; 32]>,
    /// The URL without volatile parameters (what the task ID hashes when there is no digest).
    pub display_url: String,
}

/// Whether `name` is on `filters` (ASCII case-insensitive; an entry ending in `*` is a prefix).
pub fn filtered<S: AsRef<str>>(name: &str, filters: &[S]) -> bool {
    filters.iter().map(AsRef::as_ref).any(|f| match f.strip_suffix('*') {
        // Compared as bytes: a name with multi-byte UTF-8 may have no char boundary at the prefix's length.
        Some(prefix) => name.as_bytes().get(..prefix.len()).is_some_and(|n| n.eq_ignore_ascii_case(prefix.as_bytes())),
        None => name.eq_ignore_ascii_case(f),
    })
}

pub(crate) fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.to_ascii_lowercase(), &mut out).ok()?;
    Some(out)
}

/// The content digest a URL path names: a 64-hex last segment (Git LFS, HF CDN) or `sha256:<hex>` in an
/// OCI blob path.
pub fn digest_in_path(path: &str) -> Option<[u8; 32]> {
    let oci = path.match_indices(OCI_BLOB).find_map(|(i, _)| hex32(path[i + OCI_BLOB.len()..].split('/').next()?));
    oci.or_else(|| hex32(path.rsplit('/').next()?))
}

const OCI_BLOB: &str = "/blobs/sha256:";

/// Identity of an absolute http(s) URL.
pub fn identify<S: AsRef<str>>(uri: &http::Uri, filters: &[S], use_digest: bool) -> Option<Identity> {
    identify_with(uri, filters, &[], use_digest)
}

/// [`identify`] with one request's `extra` filtered parameters on top of `filters`.
pub fn identify_with<S: AsRef<str>>(
    uri: &http::Uri,
    filters: &[S],
    extra: &[String],
    use_digest: bool,
) -> Option<Identity> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    let path = uri.path();
    let kept: Vec<&str> = uri
        .query()
        .map(|q| {
            let dropped = |name: &str| filtered(name, filters) || filtered(name, extra);
            q.split('&').filter(|kv| !kv.is_empty() && !dropped(kv.split('=').next().unwrap_or(""))).collect()
        })
        .unwrap_or_default();
    let mut display = format!("{scheme}://{authority}{path}");
    if !kept.is_empty() {
        display.push('?');
        display.push_str(&kept.join("&"));
    }
    let digest = if use_digest { digest_in_path(path) } else { None };
    let task_id = match digest {
        Some(d) => TaskId(d),
        None => TaskId(Sha256::digest(display.as_bytes()).into()),
    };
    Some(Identity { task_id, digest, display_url: display })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    #[test]
    fn signed_urls_of_one_object_are_one_task() {
        let a: http::Uri = format!("https://lfs.test/o/{OID}?X-Amz-Signature=aa&X-Amz-Date=1").parse().unwrap();
        let b: http::Uri = format!("http://other.test/x/{OID}?jwt=zz").parse().unwrap();
        let ia = identify(&a, DEFAULT_FILTERED_PARAMS, true).unwrap();
        let ib = identify(&b, DEFAULT_FILTERED_PARAMS, true).unwrap();
        assert_eq!(ia.task_id, ib.task_id);
        assert_eq!(ia.digest, hex32(OID));
        assert_eq!(ia.display_url, format!("https://lfs.test/o/{OID}"));
    }

    #[test]
    fn url_tasks_ignore_only_volatile_params() {
        let f = DEFAULT_FILTERED_PARAMS;
        let id = |s: &str| identify(&s.parse().unwrap(), f, true).unwrap();
        let a = id("http://h.test/file.bin?v=2&token=abc&Expires=1");
        let b = id("http://H.TEST/file.bin?v=2&token=xyz");
        let c = id("http://h.test/file.bin?v=3");
        assert_eq!(a.task_id, b.task_id);
        assert_ne!(a.task_id, c.task_id);
        assert_eq!(a.display_url, "http://h.test/file.bin?v=2");
        assert_eq!(a.digest, None);
    }

    #[test]
    fn parameter_names_with_multibyte_utf8_never_split_a_char() {
        // "X-Amé": the 4-byte prefix "X-Am" would end inside a char if compared as a str slice.
        for q in ["X-Am%C3%A9=1", "X-Am\u{e9}=1", "\u{e9}\u{e9}=2&X-Amz-Date=3", "X-A\u{1f600}=1"] {
            let Ok(u) = format!("http://h.test/f?{q}").parse::<http::Uri>() else { continue };
            assert!(identify(&u, DEFAULT_FILTERED_PARAMS, true).is_some());
        }
        assert!(filtered("X-Am\u{e9}", &["X-Am*"]));
        assert!(!filtered("X-A\u{e9}", &["X-Am*"]));
    }

    #[test]
    fn oci_blob_digests() {
        let u: http::Uri = format!("https://reg.test/v2/lib/blobs/sha256:{OID}").parse().unwrap();
        assert_eq!(identify::<&str>(&u, &[], true).unwrap().digest, hex32(OID));
        assert_eq!(digest_in_path("/a/b/notahash"), None);
        assert_eq!(digest_in_path(&format!("/x/{}", &OID[1..])), None);
    }
}
