use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use proptest::prelude::*;

use super::*;
use crate::engine::Source;
use crate::proxy::rules::Rules;

const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

fn head(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
    }
    h
}

fn plan_of(method: Method, url: &str, pairs: &[(&str, &[u8])]) -> Plan {
    plan(&Rules::default(), &method, &url.parse().unwrap(), &head(pairs))
}

fn refused(p: &Plan) -> Option<StatusCode> {
    match p {
        Plan::Refuse { status, .. } => Some(*status),
        _ => None,
    }
}

#[test]
fn connect_targets_need_host_and_port() {
    let t = |s: &str| s.parse::<Uri>().ok().and_then(|u| connect_target(&u));
    assert_eq!(t("127.0.0.1:443"), Some(("127.0.0.1".to_owned(), 443)));
    assert_eq!(t("example.test:8443"), Some(("example.test".to_owned(), 8443)));
    assert_eq!(t("[::1]:443"), Some(("[::1]".to_owned(), 443)));
    assert_eq!(t("example.test"), None);
    assert_eq!(t("http://example.test:80/x"), None);
    assert_eq!(t("/path"), None);
    assert!(matches!(plan_of(Method::CONNECT, "example.test:443", &[]), Plan::Connect { .. }));
    assert_eq!(refused(&plan_of(Method::CONNECT, "example.test", &[])), Some(StatusCode::BAD_REQUEST));
}

#[test]
fn origin_form_and_bad_shoal_headers_are_400() {
    assert_eq!(refused(&plan_of(Method::GET, "/index.html", &[])), Some(StatusCode::BAD_REQUEST));
    // A registry path with no registry configured: nothing to mirror.
    assert_eq!(refused(&plan_of(Method::GET, "/v2/", &[])), Some(StatusCode::NOT_FOUND));
    assert_eq!(refused(&plan_of(Method::GET, "ftp://h.test/x", &[])), Some(StatusCode::BAD_REQUEST));
    let u = "http://h.test/file";
    for bad in [&b"md5:00"[..], b"sha256:zz", b"sha256:\xff"] {
        assert_eq!(refused(&plan_of(Method::GET, u, &[("x-shoal-digest", bad)])), Some(StatusCode::BAD_REQUEST));
    }
    let d = format!("sha256:{OID}");
    let twice = [("x-shoal-digest", d.as_bytes()), ("x-shoal-digest", d.as_bytes())];
    assert_eq!(refused(&plan_of(Method::GET, u, &twice)), Some(StatusCode::BAD_REQUEST), "repeated digest");
    let bad = [("x-shoal-filtered-query-params", &b"a=1"[..])];
    assert_eq!(refused(&plan_of(Method::GET, u, &bad)), Some(StatusCode::BAD_REQUEST));
}

#[test]
fn p2p_plans_carry_identity_headers_and_range() {
    let url = format!("http://lfs.test/o/{OID}?X-Amz-Signature=s");
    let p = plan_of(
        Method::GET,
        &url,
        &[
            ("authorization", b"Bearer t"),
            ("range", b"bytes=1-2"),
            ("x-shoal-digest", format!("sha256:{OID}").as_bytes()),
            ("proxy-authorization", b"Basic x"),
            ("x-private", b"\xfe"),
            ("connection", b"keep-alive, Close"),
        ],
    );
    let Plan::P2p(p) = p else { panic!("{p:?}") };
    assert_eq!(p.fetch.task_id.to_hex(), OID);
    assert_eq!(p.fetch.url, url, "the origin gets the URL as asked");
    assert_eq!(p.fetch.display_url, format!("http://lfs.test/o/{OID}"));
    assert_eq!(p.range.as_deref(), Some("bytes=1-2"));
    let names: Vec<&str> = p.fetch.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["authorization", "range", "connection"], "ours, proxy-* and non-text values dropped");
    let with_if_range = plan_of(Method::GET, &url, &[("range", b"bytes=1-2"), ("if-range", b"\"e\"")]);
    let Plan::P2p(p) = with_if_range else { panic!() };
    assert_eq!(p.range, None, "If-Range: the whole content is always right");
    assert!(matches!(plan_of(Method::GET, "http://h.test/file", &[]), Plan::Pass { .. }));
}

fn facts(len: Option<u64>, sha: Option<[u8; 32]>) -> TaskFacts<'static> {
    TaskFacts { id: TaskId([7; 32]), len, sha256: sha, source: Source::Local, origin_headers: None }
}

fn p2p(range: Option<&str>, digest: Option<[u8; 32]>) -> P2pPlan {
    let fetch = FetchRequest {
        task_id: TaskId([7; 32]),
        url: "http://h.test/x".into(),
        headers: vec![],
        display_url: "http://h.test/x".into(),
        expected_sha256: digest,
        credentials: Default::default(),
    };
    P2pPlan { fetch, range: range.map(str::to_owned), authorize: crate::engine::Authorize::Auto }
}

#[test]
fn replies_for_whole_part_unsatisfiable_and_conflicting_content() {
    let r = reply(&p2p(None, None), &facts(Some(1000), None));
    assert_eq!((r.status, r.body), (StatusCode::OK, ReplyBody::Whole));
    assert_eq!(r.headers["content-length"], "1000");
    assert_eq!(r.headers["accept-ranges"], "bytes");
    assert_eq!(r.headers["x-shoal-source"], "local");
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    let r = reply(&p2p(Some("bytes=10-19"), None), &facts(Some(1000), None));
    assert_eq!((r.status, r.body), (StatusCode::PARTIAL_CONTENT, ReplyBody::Part { start: 10, end: 20 }));
    assert_eq!(r.headers["content-range"], "bytes 10-19/1000");
    assert_eq!(r.headers["content-length"], "10");
    let r = reply(&p2p(Some("bytes=2000-"), None), &facts(Some(1000), None));
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers["content-range"], "bytes */1000");
    assert!(matches!(r.body, ReplyBody::Text(_)));
    let r = reply(&p2p(None, None), &facts(None, None));
    assert_eq!((r.status, r.body), (StatusCode::OK, ReplyBody::Whole));
    assert!(!r.headers.contains_key("content-length") && !r.headers.contains_key("accept-ranges"));
    let r = reply(&p2p(None, Some([1; 32])), &facts(Some(5), Some([2; 32])));
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let r = reply(&p2p(None, Some([1; 32])), &facts(Some(5), Some([1; 32])));
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn origin_entity_headers_reach_the_client() {
    let mut oh = HeaderMap::new();
    oh.insert("content-type", HeaderValue::from_static("text/csv"));
    oh.insert("etag", HeaderValue::from_static("\"abc\""));
    oh.insert("set-cookie", HeaderValue::from_static("s=1"));
    let t = TaskFacts { origin_headers: Some(&oh), ..facts(Some(3), None) };
    let r = reply(&p2p(None, None), &t);
    assert_eq!(r.headers["content-type"], "text/csv");
    assert_eq!(r.headers["etag"], "\"abc\"");
    assert!(!r.headers.contains_key("set-cookie"));
}

/// Targets with raw UTF-8, percent escapes, digests, signed parameters and long runs.
fn target() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9._~-]{0,12}",
        "%[0-9A-Fa-f]{2}",
        "%[g-z]?",
        "\\PC{0,6}",
        Just(OID.to_owned()),
        Just("sha256:".to_owned()),
        Just("/blobs/sha256:".to_owned()),
        "[?&=#/;:@!$'()*+,]",
        "X-Am\\PC{0,3}=[a-z]{0,3}",
        "[a-z]{200,300}",
    ];
    (prop::sample::select(vec!["http://", "https://", "HTTP://", "", "/", "ftp://"]), "[a-zA-Z0-9.:-]{0,20}")
        .prop_flat_map(move |(scheme, host)| {
            prop::collection::vec(piece.clone(), 0..24).prop_map(move |v| format!("{scheme}{host}/{}", v.concat()))
        })
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "\\PC{0,40}".prop_map(String::into_bytes),
        Just(format!("sha256:{OID}").into_bytes()),
        "bytes=[0-9-]{0,12}(,[0-9-]{0,6})?".prop_map(String::into_bytes),
        prop::collection::vec(Just(b'a'), 60_000..70_000),
    ]
}

fn header_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "x-shoal-digest",
        "x-shoal-filtered-query-params",
        "range",
        "if-range",
        "connection",
        "authorization",
        "host",
        "x-other",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the target and headers, the planner answers (never panics), and what it answers is sound:
    /// a task only for an absolute http(s) GET, refusals are 4xx, and a reply never promises bytes past the
    /// content.
    #[test]
    fn every_request_gets_a_plan(
        t in target(),
        method in prop::sample::select(vec![Method::GET, Method::HEAD, Method::PUT, Method::CONNECT]),
        hs in prop::collection::vec((header_name(), header_value()), 0..8),
        len in prop::option::of(0u64..10_000),
    ) {
        let Ok(uri) = t.parse::<Uri>() else { return Ok(()) };
        let mut headers = HeaderMap::new();
        for (n, v) in &hs {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                headers.append(*n, v);
            }
        }
        let mirrors = crate::proxy::mirror::Mirrors {
            registry: Some("https://reg.test".parse().unwrap()),
            huggingface: Some("https://hub.test".parse().unwrap()),
        };
        let all = [
            Rules::default(),
            Rules::new(vec![crate::proxy::rules::Rule::new(".").unwrap()]),
            Rules::default().with_mirrors(mirrors),
        ];
        for rules in all {
            match plan(&rules, &method, &uri, &headers) {
                Plan::Refuse { status, .. } => prop_assert!(status.is_client_error()),
                Plan::Connect { host, .. } => prop_assert_eq!(&method, Method::CONNECT, "{}", host),
                Plan::Pass { url } | Plan::Hub { url } => prop_assert!(url.scheme().is_some()),
                Plan::P2p(p) => {
                    prop_assert_eq!(&method, Method::GET);
                    let r = reply(&p, &facts(len, None));
                    if let ReplyBody::Part { start, end } = r.body {
                        prop_assert!(start < end && end <= len.unwrap_or(0));
                    }
                }
            }
        }
    }
}

#[test]
fn origin_form_requests_are_mirror_requests() {
    let mirrors =
        crate::proxy::mirror::Mirrors { registry: Some("https://reg.test:5000".parse().unwrap()), huggingface: None };
    let rules = Rules::default().with_mirrors(mirrors);
    let p = |m: Method, u: &str, h: &[(&str, &[u8])]| plan(&rules, &m, &u.parse().unwrap(), &head(h));
    let blob = format!("/v2/team/app/blobs/sha256:{OID}");
    let Plan::P2p(pl) = p(Method::GET, &blob, &[("authorization", b"Bearer t")]) else { panic!("a blob is a task") };
    assert_eq!(pl.fetch.task_id.to_hex(), OID);
    assert_eq!(pl.fetch.url, format!("https://reg.test:5000{blob}"));
    assert!(pl.fetch.headers.iter().any(|(n, v)| n == "authorization" && v == "Bearer t"), "forwarded upstream");
    let Plan::Pass { url } = p(Method::GET, "/v2/team/app/manifests/v1", &[]) else { panic!("manifests pass") };
    assert_eq!(url.to_string(), "https://reg.test:5000/v2/team/app/manifests/v1");
    assert!(matches!(p(Method::HEAD, &blob, &[]), Plan::Pass { .. }));
    assert!(matches!(p(Method::GET, "/v2/", &[]), Plan::Pass { .. }));
    let other = "0".repeat(64);
    assert_eq!(
        refused(&p(Method::GET, &blob, &[("x-shoal-digest", format!("sha256:{other}").as_bytes())])),
        Some(StatusCode::BAD_REQUEST)
    );
    assert_eq!(refused(&p(Method::GET, "/hf/x", &[])), Some(StatusCode::NOT_FOUND));
    assert_eq!(refused(&p(Method::GET, "/index.html", &[])), Some(StatusCode::BAD_REQUEST));
}
