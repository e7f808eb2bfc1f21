//! Private content stays private: a copy fetched with one requester's credentials is served to another
//! only once the origin says that requester may read it (the authorization probe). Real curl through
//! real daemons against a per-token test origin; every address is on 127.0.0.0/8.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use common::cluster::{self, Daemon};
use common::curl::{curl, Got};
use common::origin::{Flavour, Origin};
use common::{content, sha256};

const LEN: usize = 3 << 20;

fn origin(ip: &str) -> (Origin, Bytes, String) {
    let o = Origin::start(ip, Flavour { ranges: true, content_length: true });
    let body = Bytes::from(content(41, LEN));
    let path = format!("/private/{}", hex::encode(sha256(&body)));
    o.put(&path, body.clone());
    o.require_tokens(&path, &["A", "A2"]);
    (o, body, path)
}

fn probes(d: &Daemon, result: &str) -> u64 {
    let (_, text) = cluster::http_get(d.metrics, "/metrics");
    let name = format!("shoal_authorization_probes_total{{result=\"{result}\"}}");
    cluster::metric(&text, &name).unwrap_or(0)
}

fn get(proxy: SocketAddr, dir: &Path, url: &str, headers: &[&str]) -> Got {
    let mut args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h]).collect();
    args.push(url);
    curl(proxy, dir, &args)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_cached_private_object_is_served_only_to_requesters_the_origin_lets_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, body, path) = origin("127.0.0.2");
    let d = cluster::daemon("127.0.0.60", &[], false, &tmp.path().join("d"));
    let url = |q: &str| format!("{}?{q}", o.url(&path));
    let (dir, p) = (tmp.path(), d.proxy);

    // A fetches with its token: one origin GET, and it is the authorization.
    let a = get(p, dir, &url("token=A"), &[]);
    assert_eq!((a.status, a.body.len()), (200, LEN), "{}", a.stderr);
    assert!(a.body == body);
    assert_eq!(o.bytes_sent(), LEN as u64);

    // A again: a hit, on the origin's yes to A's own GET; the origin hears nothing.
    let before = o.requests();
    let hit = get(p, dir, &url("token=A"), &[]);
    assert_eq!((hit.status, hit.header("x-shoal-source")), (200, Some("local")));
    assert!(hit.body == body);
    assert_eq!((o.requests(), o.bytes_sent()), (before, LEN as u64), "no probe, no origin body bytes");

    // B names the same object (the same task: the token is not part of its ID): the origin's 403.
    let b = get(p, dir, &url("token=B"), &[]);
    assert_eq!(b.status, 403, "{}", String::from_utf8_lossy(&b.body));
    assert_eq!(b.body, b"origin answered 403 Forbidden\n", "none of A's bytes");
    // No credentials at all: the origin's 401 and its challenge reach the client.
    let anon = get(p, dir, &o.url(&path), &[]);
    assert_eq!(anon.status, 401);
    assert_eq!(anon.header("www-authenticate"), Some("Bearer realm=\"origin.test\""));

    // Another of the origin's users, in a header: asked with HEAD, then served from the cache.
    let heads = o.heads();
    let a2 = get(p, dir, &o.url(&path), &["Authorization: Bearer A2"]);
    assert_eq!((a2.status, a2.header("x-shoal-source")), (200, Some("local")));
    assert!(a2.body == body);
    assert_eq!(o.heads(), heads + 1);
    let b2 = get(p, dir, &o.url(&path), &["Authorization: Bearer B"]);
    assert_eq!(b2.status, 403);

    // An expired signed URL gets the origin's 403 although the object is cached; a fresh one is asked
    // with a one-byte GET (a signed URL is signed for GET) and served from the cache.
    let expired = get(p, dir, &url("token=A&Expires=1000"), &[]);
    assert_eq!(expired.status, 403);
    let signed = format!("{}?X-Amz-Signature=A&Expires={}", o.url(&path), unix_now() + 600);
    let fresh = get(p, dir, &signed, &[]);
    assert_eq!((fresh.status, fresh.header("x-shoal-source")), (200, Some("local")));
    assert!(fresh.body == body);
    assert_eq!(o.one_byte_gets(), 1);
    assert_eq!(o.bytes_sent(), LEN as u64 + 1, "the probes' whole cost in body bytes");

    // The same requester again within authorize_ttl: the remembered yes, no new probe.
    let requests = o.requests();
    assert_eq!(get(p, dir, &signed, &[]).status, 200);
    assert_eq!(o.requests(), requests);
    assert!(probes(&d, "denied") >= 4, "B, anonymous, B in a header, expired");
    assert!(probes(&d, "allowed") >= 2 && probes(&d, "cached") >= 1);
    // Nothing Shoal printed carries a token.
    let log = d.proc.log.lock().unwrap().join("\n");
    for secret in ["token=A", "token=B", "Bearer", "X-Amz-Signature=A"] {
        assert!(!log.contains(secret), "the log shows {secret}");
    }
}

#[test]
fn a_peer_copy_of_private_content_needs_the_origins_yes_on_the_node_that_serves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, body, path) = origin("127.0.0.3");
    let s = cluster::scheduler("127.0.0.61");
    let d1 = cluster::daemon("127.0.0.62", &[s.addr], false, &tmp.path().join("d1"));
    let d2 = cluster::daemon("127.0.0.63", &[s.addr], false, &tmp.path().join("d2"));
    let (dir, url) = (tmp.path(), o.url(&path));

    // A on the first node: a private request (header credentials), fetched from the origin by that node.
    let a = get(d1.proxy, dir, &url, &["Authorization: Bearer A"]);
    assert_eq!((a.status, a.body.len()), (200, LEN));
    // B on the second node: the scheduler marks the task as fetched with credentials, so the copy the
    // second node takes from its peer is not B's without the origin's word.
    let b = get(d2.proxy, dir, &url, &["Authorization: Bearer B"]);
    assert_eq!(b.status, 403);
    // A public request for it gets the origin's 401 too: the copy was fetched with credentials.
    assert_eq!(get(d2.proxy, dir, &url, &[]).status, 401);
    // A2 on the second node: one HEAD, then bytes from the peer, never a second origin GET of the body.
    let a2 = get(d2.proxy, dir, &url, &["Authorization: Bearer A2"]);
    assert_eq!(a2.status, 200, "{}", String::from_utf8_lossy(&a2.body));
    assert!(a2.body == body);
    assert_eq!(o.bytes_sent(), LEN as u64, "the origin sent the object once");
    assert!(o.heads() >= 1);
}

#[test]
fn rules_choose_when_the_origin_is_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Origin::start("127.0.0.4", Flavour { ranges: true, content_length: true });
    let (always, never) = ("/always/obj.bin", "/never/obj.bin");
    o.put(always, Bytes::from_static(b"asked every time"));
    o.put(never, Bytes::from_static(b"public for anyone who names it"));
    o.require_tokens(never, &["A"]);
    let yaml = "proxy:\n  rules:\n    - regex: '/always/'\n      authorize: always\n      content_digest: 'off'\n    \
                - regex: '/never/'\n      authorize: never\n      content_digest: 'off'\nengine:\n  authorize_ttl: 0s\n";
    let d = cluster::daemon_with("127.0.0.64", &[], false, &tmp.path().join("d"), yaml);
    let dir = tmp.path();

    // always: public content, no credentials, yet every hit asks (authorize_ttl 0s remembers nothing),
    // and once the origin drops the object its 404 reaches the client although the copy is cached.
    assert_eq!(get(d.proxy, dir, &o.url(always), &[]).status, 200);
    let heads = o.heads();
    assert_eq!(get(d.proxy, dir, &o.url(always), &[]).body, b"asked every time");
    assert_eq!(get(d.proxy, dir, &o.url(always), &[]).status, 200);
    assert_eq!(o.heads(), heads + 2);
    o.remove(always);
    assert_eq!(get(d.proxy, dir, &o.url(always), &[]).status, 404);

    // never: the operator declared it public, so B is served A's copy without asking.
    assert_eq!(get(d.proxy, dir, &format!("{}?token=A", o.url(never)), &[]).status, 200);
    let requests = o.requests();
    let b = get(d.proxy, dir, &format!("{}?token=B", o.url(never)), &[]);
    assert_eq!((b.status, b.body.as_slice()), (200, &b"public for anyone who names it"[..]));
    assert_eq!(o.requests(), requests);
}
