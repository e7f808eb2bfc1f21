//! Which requests become P2P tasks, and what a task is called.
//!
//! Task ID: when the URL names a content digest (a Git LFS oid ending the path, or an OCI
//! `/blobs/sha256:<hex>`), the ID is that digest and the bytes are verified against it, so the same object
//! behind different signed URLs, users or hosts is one task. Otherwise the ID is
//! sha256(`scheme "://" host [":" port] path ["?" kept-query]`) where kept-query is the query with the
//! volatile parameters removed, in their original order.

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

fn filtered(name: &str, filters: &[&str]) -> bool {
    filters.iter().any(|f| match f.strip_suffix('*') {
        Some(prefix) => name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix),
        None => name.eq_ignore_ascii_case(f),
    })
}

fn hex32(s: &str) -> Option<[u8; 32]> {
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
    if let Some(i) = path.find("/blobs/sha256:") {
        let rest = &path[i + "/blobs/sha256:".len()..];
        return hex32(rest.split('/').next().unwrap_or(""));
    }
    hex32(path.rsplit('/').next().unwrap_or(""))
}

/// Identity of an absolute http(s) URL.
pub fn identify(uri: &http::Uri, filters: &[&str], use_digest: bool) -> Option<Identity> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?.as_str().to_ascii_lowercase();
    let path = uri.path();
    let kept: Vec<&str> = uri
        .query()
        .map(|q| {
            q.split('&').filter(|kv| !kv.is_empty() && !filtered(kv.split('=').next().unwrap_or(""), filters)).collect()
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
    fn oci_blob_digests() {
        let u: http::Uri = format!("https://reg.test/v2/lib/blobs/sha256:{OID}").parse().unwrap();
        assert_eq!(identify(&u, &[], true).unwrap().digest, hex32(OID));
        assert_eq!(digest_in_path("/a/b/notahash"), None);
        assert_eq!(digest_in_path(&format!("/x/{}", &OID[1..])), None);
    }
}
