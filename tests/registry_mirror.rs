//! The proxy port as a registry mirror, with real clients against Debian's docker-registry over TLS with
//! htpasswd auth: skopeo through a `registries.conf` mirror, and containerd (`ctr content fetch` with a
//! hosts.toml) through its `?ns=` mirror requests. Two daemons pull the same image: every blob leaves the registry once, every digest verifies, and the registry's own auth decides who
//! may pull (the challenge passes through, the credentials go upstream).

mod common;

use common::cluster::{self, Daemon};
use common::content;
use common::registry::{check_pulled, push_image, skopeo_pull, Containerd, Registry, PASSWORD, USER};

fn mirror_daemon(ip: &str, sched: std::net::SocketAddr, dir: &std::path::Path, reg: &Registry) -> Daemon {
    let yaml =
        format!("proxy:\n  mirror:\n    registry: https://{}\nupstream:\n  ca_file: {}\n", reg.addr, reg.ca.display());
    cluster::daemon_with(ip, &[sched], false, dir, &yaml)
}

#[test]
fn two_daemons_pull_an_image_and_every_blob_leaves_the_registry_once() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "127.0.0.7");
    let img = push_image(
        &reg,
        tmp.path(),
        "team/app:v1",
        &[content(180, 8 << 20), content(181, 1 << 20), content(182, 5000)],
    );
    let pushed_gets = reg.blob_gets();
    let sched = cluster::scheduler("127.0.0.3");
    let a = mirror_daemon("127.0.0.90", sched.addr, &tmp.path().join("a"), &reg);
    let b = mirror_daemon("127.0.0.91", sched.addr, &tmp.path().join("b"), &reg);
    let creds = Some((USER, PASSWORD));

    let dest = tmp.path().join("pull-a");
    let o = skopeo_pull(&reg, "team/app:v1", &dest, Some(&a.proxy.to_string()), creds);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_pulled(&dest, &img);
    assert_eq!(reg.blob_gets() - pushed_gets, img.blobs.len(), "each blob once from the registry");
    assert_eq!(cluster::cached_files(&a.data_dir), 2 * img.blobs.len(), "A holds every blob: skopeo used the mirror");

    let dest = tmp.path().join("pull-b");
    let o = skopeo_pull(&reg, "team/app:v1", &dest, Some(&b.proxy.to_string()), creds);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_pulled(&dest, &img);
    assert_eq!(reg.blob_gets() - pushed_gets, img.blobs.len(), "B's blobs came from A");
    assert_eq!(cluster::cached_files(&b.data_dir), 2 * img.blobs.len());

    // The registry decides: without credentials, or with wrong ones, nothing is pulled, cached or not.
    for (i, bad) in [None, Some((USER, "wrong"))].into_iter().enumerate() {
        let dest = tmp.path().join(format!("pull-refused-{i}"));
        let o = skopeo_pull(&reg, "team/app:v1", &dest, Some(&a.proxy.to_string()), bad);
        assert!(!o.status.success(), "a pull without valid credentials must fail");
    }
    assert_eq!(reg.blob_gets() - pushed_gets, img.blobs.len());
}

#[test]
fn containerd_pulls_through_the_mirror_with_its_ns_parameter() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path(), "127.0.0.8");
    let img = push_image(&reg, tmp.path(), "team/svc:v2", &[content(190, 6 << 20), content(191, 70_000)]);
    let pushed_gets = reg.blob_gets();
    let sched = cluster::scheduler("127.0.0.3");
    // No proxy.mirror.registry: containerd names the registry in ?ns=.
    let yaml = format!("upstream:\n  ca_file: {}\n", reg.ca.display());
    let a = cluster::daemon_with("127.0.0.92", &[sched.addr], false, &tmp.path().join("a"), &yaml);
    let b = cluster::daemon_with("127.0.0.93", &[sched.addr], false, &tmp.path().join("b"), &yaml);
    let creds = Some((USER, PASSWORD));
    for (i, d) in [&a, &b].into_iter().enumerate() {
        let ctd = Containerd::start(&tmp.path().join(format!("containerd-{i}")));
        let o = ctd.fetch_via_mirror(&reg, "team/svc:v2", &d.proxy.to_string(), creds);
        assert!(o.status.success(), "ctr content fetch: {}", String::from_utf8_lossy(&o.stderr));
        ctd.check_content(&img);
        assert_eq!(cluster::cached_files(&d.data_dir), 2 * img.blobs.len(), "every blob through the daemon");
    }
    assert_eq!(reg.blob_gets() - pushed_gets, img.blobs.len(), "each blob left the registry once");
}
