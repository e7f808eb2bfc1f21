//! The configuration file as an operator uses it: `shoal config default|check`, and a daemon started from a
//! file with flags on top.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{free_addrs, shoal, Proc};

#[test]
fn config_default_passes_check_and_bad_files_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = shoal().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let default = dir.path().join("shoal.yaml");
    std::fs::write(&default, &out.stdout).unwrap();
    let ok = shoal().args(["config", "check"]).arg(&default).output().unwrap();
    assert!(ok.status.success(), "{ok:?}");
    for (yaml, key, why) in [
        ("storage:\n  quota: lots\n", "storage.quota", "invalid size"),
        ("storage:\n  ttl: 5w\n", "storage.ttl", "unknown duration unit"),
        ("upload:\n  adress: 1.2.3.4:5\n", "upload", "unknown field `adress`"),
        ("engine:\n  max_parents: 0\n", "engine.max_parents", "between 1 and 1024"),
        ("scheduler:\n  fan_out: 0\n", "scheduler.fan_out", "between 1 and 1024"),
        ("scheduler:\n  tree_parents: 5000\n", "scheduler.tree_parents", "between 1 and 1024"),
        ("proxy:\n  deny_destinations: [10.0.0.0/33]\n", "proxy.deny_destinations[0]", "not a CIDR network"),
        ("proxy:\n  allow_destinations: [nowhere]\n", "proxy.allow_destinations[0]", "not a CIDR network"),
        ("proxy:\n  connect_ports: [443, \"9-1\"]\n", "proxy.connect_ports[1]", "LOW-HIGH"),
        ("proxy: [1, 2]\n", "proxy", "invalid type"),
        ("proxy:\n  rules:\n    - regex: '[a-'\n", "proxy.rules[0].regex", "unclosed character class"),
        (
            "proxy:\n  rules:\n    - regex: a\n      content_digest: maybe\n",
            "proxy.rules[0].content_digest",
            "unknown variant",
        ),
        ("proxy:\n  rules:\n    - regx: a\n", "proxy.rules[0]", "unknown field `regx`"),
        ("proxy:\n  rules:\n    - use_tls: true\n", "proxy.rules[0]", "missing field `regex`"),
        ("proxy:\n  filtered_query_params: token\n", "proxy.filtered_query_params", "invalid type"),
        ("proxy:\n  drain_timeout: soon\n", "proxy.drain_timeout", "invalid duration"),
        ("engine:\n  parent_stall: 1ms\n", "engine.parent_stall", "at least 100ms"),
        (
            "proxy:\n  addr: 127.0.0.1:7000\nmetrics:\n  addr: 0.0.0.0:7000\n",
            "metrics.addr",
            "is also proxy.addr: each listener needs its own port",
        ),
    ] {
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = shoal().args(["config", "check"]).arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml:?} accepted");
        assert!(err.contains(key) && err.contains(why), "{yaml:?}: {err}");
        // The daemon refuses to start on it, with the same message.
        let out = shoal().args(["daemon", "--config"]).arg(&f).output().unwrap();
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(key));
    }
}

#[test]
fn daemon_takes_the_file_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let [proxy, upload, metrics, flag_proxy] = free_addrs::<4>("127.0.0.1");
    let f = dir.path().join("shoal.yaml");
    std::fs::write(
        &f,
        format!(
            "data_dir: {}\nworkers: 1\nproxy:\n  addr: {proxy}\nupload:\n  addr: {upload}\nmetrics:\n  addr: {metrics}\n\
             storage:\n  io_engine: sync\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = shoal();
    cmd.args(["daemon", "--config"])
        .arg(&f)
        .args(["--proxy-addr", &flag_proxy.to_string()])
        .env_remove("SHOAL_IO_ENGINE");
    let p = Proc::spawn("daemon", cmd);
    let line = p.wait_for("daemon started", Duration::from_secs(20));
    assert!(line.contains(&format!("proxy={flag_proxy}")), "the flag wins: {line}");
    assert!(line.contains(&format!("upload={upload}")) && line.contains(&format!("metrics={metrics}")), "{line}");
    assert!(line.contains("io_engine=\"sync\""), "{line}");
    assert!(dir.path().join("data/tasks").is_dir());
}

/// A daemon whose listeners would share a port refuses to start and names the settings, whether the clash
/// is in its own configuration or with another daemon already running (SO_REUSEPORT would otherwise let
/// both bind and split the connections between them). The daemon already running is left serving.
#[test]
fn a_daemon_refuses_a_port_that_is_taken_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let [proxy, upload, metrics, upload2, metrics2] = free_addrs::<5>("127.0.0.1");
    let daemon = |data: &str, proxy: SocketAddr, upload: SocketAddr, metrics: SocketAddr| {
        let mut cmd = shoal();
        cmd.args(["daemon", "--workers", "2", "--data-dir"]).arg(dir.path().join(data));
        cmd.args(["--proxy-addr", &proxy.to_string(), "--upload-addr", &upload.to_string()]);
        cmd.args(["--metrics-addr", &metrics.to_string()]);
        cmd
    };
    let out = daemon("same", proxy, proxy, metrics).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with one port for two listeners: {err}");
    let both = format!("proxy.addr (--proxy-addr) and upload.addr (--upload-addr) are both {proxy}");
    assert!(err.contains(&both), "{err}");

    let first = Proc::spawn("first", daemon("first", proxy, upload, metrics));
    first.wait_for("daemon started", Duration::from_secs(20));
    for (clash, setting) in [
        (daemon("second", proxy, upload2, metrics2), format!("proxy.addr (--proxy-addr) {proxy}")),
        (daemon("third", upload2, upload, metrics2), format!("upload.addr (--upload-addr) {upload}")),
    ] {
        let mut second = Proc::spawn("second", clash);
        let status = second.wait_exit(Duration::from_secs(20));
        assert!(status.is_some_and(|s| !s.success()), "a second daemon started on a port the first holds");
        second.wait_for(&setting, Duration::from_secs(1));
        assert!(second.count("in use") > 0, "the reason is given");
    }
    let (status, body) = common::cluster::http_get(metrics, "/healthz");
    assert_eq!(status, 200, "the first daemon still serves: {body}");
}
