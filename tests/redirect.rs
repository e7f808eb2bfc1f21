//! Origin redirects (a registry's 307 to blob storage, a hub's 302 to its CDN) are followed by the
//! daemon within the same task: the digest names it, the signed storage URL does not. Credentials go only
//! to the origin they were sent to; pass-through hands redirects to the client with their Location.

mod common;

use common::cluster;
use common::curl::curl;
use common::origin::{Origin, FLAVOURS};
use common::*;

#[test]
fn a_redirect_to_storage_is_followed_in_one_task_and_credentials_stay_home() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Origin::start("127.0.0.2", FLAVOURS[0]);
    let storage = Origin::start("127.0.0.6", FLAVOURS[0]);
    let obj = bytes::Bytes::from(content(140, (5 << 20) + 3));
    let oid = hex::encode(sha256(&obj));
    let blob = format!("/v2/team/model/blobs/sha256:{oid}");
    let stored = format!("/store/{oid}");
    storage.put(&stored, obj.clone());
    let sched = cluster::scheduler("127.0.0.3");
    let a = cluster::daemon("127.0.0.77", &[sched.addr], false, &tmp.path().join("a"));
    let b = cluster::daemon("127.0.0.78", &[sched.addr], false, &tmp.path().join("b"));

    // Each answer of the registry is a new signed storage URL, as S3 presigning gives.
    let get = |d: &cluster::Daemon, sig: &str| {
        registry.redirect(&blob, 307, &storage.url(&format!("{stored}?X-Amz-Signature={sig}")));
        curl(d.proxy, tmp.path(), &["-H", "Authorization: Bearer registry-token", &registry.url(&blob)])
    };
    let g = get(&a, "one");
    assert_eq!(g.status, 200, "{}", g.stderr);
    assert!(g.body == obj, "the bytes behind the redirect");
    assert_eq!(g.header("x-shoal-task-id"), Some(oid.as_str()), "the digest names the task");
    assert_eq!(storage.body_requests(), 1);
    assert_eq!(registry.authorizations(&blob)[0].as_deref(), Some("Bearer registry-token"));
    assert!(storage.authorizations(&stored).iter().all(Option::is_none), "the registry's token never reached storage");

    let g = get(&b, "two");
    assert_eq!((g.status, g.header("x-shoal-source")), (200, Some("peer")), "{}", g.stderr);
    assert!(g.body == obj);
    assert_eq!(storage.body_requests(), 1, "a new signature, the same task: served by A");

    let g = get(&a, "three");
    assert_eq!((g.status, g.header("x-shoal-source")), (200, Some("local")));
}

#[test]
fn redirect_loops_fail_and_pass_through_keeps_location() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let oid = "5".repeat(64);
    let looping = format!("/lfs/objects/{oid}");
    origin.redirect(&looping, 302, &origin.url(&looping));
    let d = cluster::daemon("127.0.0.79", &[], false, &tmp.path().join("d"));
    let g = curl(d.proxy, tmp.path(), &[&origin.url(&looping)]);
    assert_eq!(g.status, 502, "{}", String::from_utf8_lossy(&g.body));
    assert!(String::from_utf8_lossy(&g.body).contains("redirected more than 5 times"));
    assert_eq!(cluster::cached_files(&d.data_dir), 0, "nothing cached");

    // Not a task (no rule claims it): the client sees the origin's redirect, Location included.
    origin.redirect("/page", 302, "/elsewhere");
    let g = curl(d.proxy, tmp.path(), &[&origin.url("/page")]);
    assert_eq!((g.status, g.header("location")), (302, Some("/elsewhere")));
}
