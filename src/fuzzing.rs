//! Fuzz entry points: each feeds arbitrary bytes to one parser that sees bytes from outside the node, and
//! must return without panicking whatever they are. The libFuzzer targets in fuzz/ are one line each over
//! these, and tests/fuzz_corpus.rs replays the kept corpora and every crash ever found through the same
//! functions on the stable toolchain, so `cargo test` keeps them passing. Not an API.

use std::sync::OnceLock;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::engine::Source;
use crate::proxy::plan::{self, Plan, TaskFacts};
use crate::proxy::rules::Rules;
use crate::storage::TaskId;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz/ binary and corpus directory.
pub const TARGETS: [(&str, Target); 8] = [
    ("request_plan", request_plan),
    ("ranges", ranges),
    ("transfer_frames", transfer_frames),
    ("scheduler_frames", scheduler_frames),
    ("task_metadata", task_metadata),
    ("config_file", config_file),
    ("lfs_agent_protocol", lfs_agent_protocol),
    ("origin_answer", origin_answer),
];

/// A request head as a client sends it to the proxy (httparse, as hyper parses it), then the proxy's plan
/// for it and, for a P2P plan, the reply it would make from facts taken from the same bytes.
pub fn request_plan(data: &[u8]) {
    static RULES: OnceLock<Rules> = OnceLock::new();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let (Some(m), Some(path)) = (req.method, req.path) else { return };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(m.as_bytes()), path.parse::<Uri>()) else { return };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) {
            map.append(n, v);
        }
    }
    let p = plan::plan(RULES.get_or_init(Rules::default), &method, &uri, &map);
    if let Plan::P2p(p2p) = p {
        let len = data.iter().take(8).fold(0u64, |a, &b| a << 8 | u64::from(b));
        for source in [Source::Local, Source::Peer, Source::Origin] {
            let facts = TaskFacts { id: TaskId([7; 32]), len: Some(len), sha256: None, source, origin_headers: None };
            let _ = plan::reply(&p2p, &facts);
            let _ = plan::reply(&p2p, &TaskFacts { len: None, ..facts });
        }
    }
}

/// A client's `Range` against a length from the first 8 bytes, and an origin's `Content-Range`.
pub fn ranges(data: &[u8]) {
    let (len, rest) = data.split_at(data.len().min(8));
    let len = len.iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
    let text = String::from_utf8_lossy(rest);
    let _ = crate::proxy::respond::parse_range(&text, len);
    if let Ok(v) = HeaderValue::from_bytes(rest) {
        if let Some((s, e, total)) = crate::engine::source::parse_content_range(Some(&v)) {
            assert!(s <= e && total.is_none_or(|t| e < t), "an accepted Content-Range is consistent");
        }
    }
}

/// A stream of peer-transfer control frames, decoded until it ends or fails (a first byte picks the
/// frame size limit, as a small one is where length checks bite).
pub fn transfer_frames(data: &[u8]) {
    let Some((&lim, rest)) = data.split_first() else { return };
    let max = if lim & 1 == 0 { crate::transfer::frame::DEFAULT_MAX_FRAME } else { u32::from(lim) * 16 };
    let mut buf = BytesMut::from(rest);
    // Each decoded frame consumes its bytes, so the loop ends within data.len() rounds.
    for _ in 0..=rest.len() {
        match crate::transfer::frame::decode(&mut buf, max) {
            Ok(Some(frame)) => {
                let mut out = BytesMut::new();
                frame.encode(&mut out);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// An origin's answer to a back-to-source GET, read as the engine reads it (head, then the body by its
/// framing); the first two bytes pick how many bytes each socket read returns and each body read takes.
pub fn origin_answer(data: &[u8]) {
    thread_local! {
        static RT: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    }
    let [chunk, slice, wire @ ..] = data else { return };
    let (chunk, slice) = (usize::from(*chunk) + 1, (usize::from(*slice) + 1) * 13);
    RT.with(|rt| {
        let _ = rt.block_on(crate::engine::decode_origin_answer(wire, chunk, slice));
    });
}

/// One scheduler frame's payload (the length prefix is tokio-util's codec).
pub fn scheduler_frames(data: &[u8]) {
    let _ = crate::scheduler::decode_envelope(data);
}

/// A task's metadata file as the store loads it at start (storage-format.md).
pub fn task_metadata(data: &[u8]) {
    // One file per process and thread, removed after each run: nothing is left behind.
    let name = format!("shoal-fuzz-meta-{}-{:?}", std::process::id(), std::thread::current().id());
    let path = shm().join(name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', ""));
    let _ = crate::storage::fuzz_load_meta(data, &path);
    let _ = std::fs::remove_file(&path);
}

/// The config file (YAML, then every validation `shoal config check` runs), the rules' regexes parsed
/// but not compiled (see [`crate::config::Config::parse_checking`]).
pub fn config_file(data: &[u8]) {
    use crate::config::{Config, RuleCheck};
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse_checking(text, "fuzz.yaml", RuleCheck::Syntax);
    }
}

/// One line git-lfs sends the transfer agent.
pub fn lfs_agent_protocol(data: &[u8]) {
    let _ = crate::lfs::parse_protocol_line(&String::from_utf8_lossy(data));
}

/// Memory-backed when there is one: the metadata target writes a file per execution.
fn shm() -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/dev/shm");
    if p.is_dir() {
        p
    } else {
        std::env::temp_dir()
    }
}
