//! The configuration file's parsing and validation, key by key.

use super::*;

#[test]
fn the_commented_default_is_the_default() {
    assert_eq!(Config::parse(DEFAULT_YAML, "default").unwrap(), Config::default());
    assert_eq!(Config::parse("", "empty").unwrap(), Config::default());
}

#[test]
fn errors_name_the_key_and_the_reason() {
    let err = |y: &str| Config::parse(y, "f.yaml").unwrap_err().to_string();
    let e = err("storage:\n  quota: lots\n");
    assert!(e.starts_with("f.yaml: storage.quota:") && e.contains("invalid size"), "{e}");
    let e = err("storage:\n  quotas: 5GiB\n");
    assert!(e.contains("storage") && e.contains("unknown field `quotas`"), "{e}");
    let e = err("proxy:\n  addr: 42\n");
    assert!(e.contains("proxy.addr"), "{e}");
    let e = err("workers: many\n");
    assert!(e.contains("workers") && e.contains("invalid type"), "{e}");
    let e = err("storage:\n  low_watermark: 0.9\n  high_watermark: 0.5\n");
    assert!(e.contains("storage.low_watermark"), "{e}");
    let e = err("storage:\n  io_engine: turbo\n");
    assert!(e.contains("storage.io_engine") && e.contains("unknown io engine"), "{e}");
    let ok = Config::parse("storage:\n  quota: 50GiB\n  ttl: 12h\nupload:\n  rate: 100MB\n", "x").unwrap();
    assert_eq!(ok.storage.quota, Some(50 << 30));
    assert_eq!(ok.storage.ttl, Duration::from_secs(12 * 3600));
    assert_eq!(ok.upload.rate, Some(100_000_000));
}

#[test]
fn proxy_rules_from_the_file_route_as_written() {
    use crate::proxy::rules::Route;
    let yaml = "proxy:\n  rules:\n    - regex: '^http://cdn\\.test/'\n      use_tls: true\n      content_digest: off\n      filtered_query_params: [sig]\n  default_rules: false\n";
    let rules = Config::parse(yaml, "x").unwrap().proxy_rules().unwrap();
    assert_eq!(rules.rules().len(), 1);
    let oid = "a".repeat(64);
    let get = |u: &str| rules.route(&http::Method::GET, &u.parse().unwrap(), None);
    match get(&format!("http://cdn.test/o/{oid}?sig=1&v=2")) {
        Route::P2p { identity, url, expected_sha256, .. } => {
            assert_eq!(url.scheme_str(), Some("https"), "use_tls upgrades the origin fetch");
            assert_eq!(identity.display_url, format!("https://cdn.test/o/{oid}?v=2"), "only `sig` is filtered");
            assert_eq!(expected_sha256, None, "content_digest off: the path is not a digest");
        }
        other => panic!("{other:?}"),
    }
    // default_rules false: an LFS-looking URL elsewhere passes through.
    assert!(matches!(get(&format!("http://other.test/{oid}")), Route::Pass { .. }));
    // With the defaults on, they follow the file's rules and use the file's filtered list.
    let yaml = "proxy:\n  filtered_query_params: [t]\n";
    let rules = Config::parse(yaml, "x").unwrap().proxy_rules().unwrap();
    match rules.route(&http::Method::GET, &"http://o.test/x?t=1&X-Amz-Date=2".parse().unwrap(), None) {
        Route::Pass { .. } => {}
        other => panic!("no digest, no rule: {other:?}"),
    }
    let r = rules.route(&http::Method::GET, &format!("http://o.test/{oid}?t=1&X-Amz-Date=2").parse().unwrap(), None);
    match r {
        Route::P2p { identity, .. } => {
            assert_eq!(identity.display_url, format!("http://o.test/{oid}?X-Amz-Date=2"));
        }
        other => panic!("{other:?}"),
    }
}
