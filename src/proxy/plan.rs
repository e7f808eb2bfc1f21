//! The request plan: what the proxy does with one request, decided once, from its head alone.
//!
//! Owns: turning a request head (method, target, headers) and the rule set into a [`Plan`] — refuse,
//! tunnel, pass through, or fetch a task — and turning a P2P plan plus what the task knows into the
//! response head ([`reply`]). Both are pure functions: no I/O, no clock, no panics on any input. The
//! responder (server.rs) executes plans and only moves bytes; a new kind of request (an authorization
//! probe, a registry mirror route) or a new responder is a new variant or caller here, not another copy of
//! the routing.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, RANGE,
};
use http::{Method, StatusCode, Uri};

use super::mirror::MirrorTarget;
use super::respond::{parse_range, RangeAsk};
use super::rules::{parse_extra_filtered, Route, Rules};
use crate::engine::identity::filtered as filtered_name;
use crate::engine::{credentials, Authorize, FetchRequest, Source};
use crate::storage::TaskId;

/// Entity headers of an origin answer that a client should see.
pub const PASS_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "last-modified",
    "cache-control",
    "content-disposition",
    "x-linked-etag",
    "x-linked-size",
];

/// What the proxy does with one request.
#[derive(Debug)]
pub enum Plan {
    /// Answered by the proxy itself: the request is malformed or not a proxy request.
    Refuse { status: StatusCode, reason: &'static str },
    /// CONNECT: a byte tunnel to `host:port`.
    Connect { host: String, port: u16 },
    /// Forwarded upstream unchanged, to `url` (scheme possibly upgraded by a rule).
    Pass { url: Uri },
    /// Through the engine as a task.
    P2p(Box<P2pPlan>),
    /// A Hugging Face resolve request (`/hf/.../resolve/...`): decided once the hub answered its HEAD
    /// (hub.rs).
    Hub { url: Uri },
}

/// A request that becomes (or joins) a task.
#[derive(Debug)]
pub struct P2pPlan {
    /// What the engine fetches: task ID, origin URL, the client's headers for the origin, expected digest.
    pub fetch: FetchRequest,
    /// The `Range` value to answer, when there is one to honour (`If-Range` makes it the whole content).
    pub range: Option<String>,
    /// The matching rule's say on asking the origin before a cached copy is served.
    pub authorize: Authorize,
}

/// Why an `X-Shoal-*` header is refused (the one-line bodies of the 400s).
const BAD_DIGEST: &str = "shoal: X-Shoal-Digest must be sha256:<64 hex>";
const BAD_FILTERED: &str = "shoal: X-Shoal-Filtered-Query-Params must be a comma-separated list of parameter names";
const NOT_A_PROXY_REQUEST: &str = "shoal: this is a forward proxy: the request URL must be absolute http(s)";
const BAD_CONNECT: &str = "shoal: CONNECT needs host:port";

/// Plans one request. Never panics, whatever the bytes of the target and headers.
pub fn plan(rules: &Rules, method: &Method, uri: &Uri, headers: &HeaderMap) -> Plan {
    if method == Method::CONNECT {
        return match connect_target(uri) {
            Some((host, port)) => Plan::Connect { host, port },
            None => Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: BAD_CONNECT },
        };
    }
    if uri.scheme().is_none() && uri.authority().is_none() {
        return match rules.mirrors().target(uri) {
            Ok(MirrorTarget::Registry { url, digest }) => plan_absolute(rules, method, &url, headers, digest),
            Ok(MirrorTarget::Hub { url }) if super::hub::is_resolve(method, &url) => Plan::Hub { url },
            Ok(MirrorTarget::Hub { url }) => plan_absolute(rules, method, &url, headers, None),
            Err(e) => Plan::Refuse { status: e.status(), reason: e.reason() },
        };
    }
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.authority().is_none_or(|a| a.host().is_empty())
    {
        return Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: NOT_A_PROXY_REQUEST };
    }
    plan_absolute(rules, method, uri, headers, None)
}

/// Plans a request for an absolute http(s) `uri`; `path_digest` is a digest a mirror path named (it
/// names the task and is what the bytes are verified against, whatever the rules say of the URL).
fn plan_absolute(
    rules: &Rules,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    path_digest: Option<[u8; 32]>,
) -> Plan {
    let header_digest = match single(headers, "x-shoal-digest") {
        Err(()) => return Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: BAD_DIGEST },
        Ok(None) => None,
        Ok(Some(v)) => match v.strip_prefix("sha256:").and_then(parse_hex32) {
            Some(d) => Some(d),
            None => return Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: BAD_DIGEST },
        },
    };
    let extra = match single(headers, "x-shoal-filtered-query-params") {
        Err(()) => return Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: BAD_FILTERED },
        Ok(None) => None,
        Ok(Some(v)) => match parse_extra_filtered(v) {
            Some(names) => Some(names),
            None => return Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: BAD_FILTERED },
        },
    };
    if path_digest.is_some() && header_digest.is_some_and(|h| Some(h) != path_digest) {
        return Plan::Refuse { status: StatusCode::BAD_REQUEST, reason: BAD_DIGEST };
    }
    match rules.route_with(method, uri, path_digest.or(header_digest), extra.as_deref()) {
        Route::Pass { url } => Plan::Pass { url },
        Route::P2p { identity, url, expected_sha256, authorize, filtered } => {
            let headers_out = origin_headers(headers);
            let credentials = credentials(&url, &headers_out, |n| filtered_name(n, &filtered));
            let fetch = FetchRequest {
                task_id: identity.task_id,
                url: url.to_string(),
                headers: headers_out,
                display_url: identity.display_url,
                expected_sha256,
                credentials,
            };
            // If-Range names a representation we cannot compare against: the whole content is always right.
            let range = match headers.contains_key(IF_RANGE) {
                true => None,
                false => headers.get(RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned),
            };
            Plan::P2p(Box::new(P2pPlan { fetch, range, authorize }))
        }
    }
}

/// A header that may appear at most once, as text: `Err` when repeated or not visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ()> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v.to_str().map(Some).map_err(|_| ()),
        (Some(_), Some(_)) => Err(()),
    }
}

/// The client's headers that go to the origin on a miss (ours, the proxy's own and values that are not
/// text are dropped; the origin client drops hop-by-hop ones).
pub(super) fn origin_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| !n.as_str().starts_with("x-shoal-") && !n.as_str().starts_with("proxy-"))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// Host and port of a CONNECT request (authority form), with a port and no path.
pub fn connect_target(uri: &Uri) -> Option<(String, u16)> {
    let a = uri.authority()?;
    if uri.scheme().is_some() || a.host().is_empty() || a.as_str().contains('@') {
        return None;
    }
    Some((a.host().to_owned(), a.port_u16()?))
}

/// 32 bytes from exactly 64 hex digits (either case).
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64).then_some(())?;
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// What a task tells a P2P response.
pub struct TaskFacts<'a> {
    pub id: TaskId,
    /// Content length, when known.
    pub len: Option<u64>,
    /// The content's sha256 once complete, else the one it is held to.
    pub sha256: Option<[u8; 32]>,
    pub source: Source,
    /// The origin's response headers, when this node fetched from the origin.
    pub origin_headers: Option<&'a HeaderMap>,
}

/// The body a [`Reply`] promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyBody {
    /// All of the task's bytes (its length may still be unknown).
    Whole,
    /// The task's bytes [start, end).
    Part { start: u64, end: u64 },
    /// A one-line text from the proxy.
    Text(&'static str),
}

/// The head of a P2P response and what its body is.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

/// The response to a P2P plan, given what the task knows. A range of content of unknown length cannot be
/// answered: callers wait for the length first when `plan.range` is set.
pub fn reply(plan: &P2pPlan, t: &TaskFacts<'_>) -> Reply {
    let mut h = HeaderMap::new();
    // The task may already exist under the URL's digest: content other than what the client asked for is
    // refused before any byte goes out.
    if plan.fetch.expected_sha256.is_some_and(|w| t.sha256.is_some_and(|have| have != w)) {
        let body = ReplyBody::Text("shoal: the content's sha256 differs from X-Shoal-Digest");
        return Reply { status: StatusCode::BAD_GATEWAY, headers: h, body };
    }
    let ask = match (&plan.range, t.len) {
        (Some(v), Some(l)) => parse_range(v, l),
        _ => RangeAsk::Whole,
    };
    let (status, body) = match ask {
        RangeAsk::Unsatisfiable => {
            insert(&mut h, CONTENT_RANGE, format!("bytes */{}", t.len.unwrap_or(0)));
            (StatusCode::RANGE_NOT_SATISFIABLE, ReplyBody::Text("shoal: range not satisfiable"))
        }
        RangeAsk::Part(s, e) => {
            h.insert(CONTENT_LENGTH, HeaderValue::from(e + 1 - s));
            insert(&mut h, CONTENT_RANGE, format!("bytes {s}-{e}/{}", t.len.unwrap_or(0)));
            (StatusCode::PARTIAL_CONTENT, ReplyBody::Part { start: s, end: e + 1 })
        }
        RangeAsk::Whole => {
            if let Some(len) = t.len {
                h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
            (StatusCode::OK, ReplyBody::Whole)
        }
    };
    if !matches!(body, ReplyBody::Text(_)) {
        for (name, v) in
            t.origin_headers.iter().flat_map(|oh| PASS_HEADERS.iter().filter_map(|n| Some((*n, oh.get(*n)?))))
        {
            h.insert(name, v.clone());
        }
        if !h.contains_key(CONTENT_TYPE) {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        }
    }
    if t.len.is_some() {
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    insert(&mut h, HeaderName::from_static("x-shoal-task-id"), t.id.to_hex());
    h.insert("x-shoal-source", HeaderValue::from_static(t.source.as_str()));
    Reply { status, headers: h, body }
}

fn insert(h: &mut HeaderMap, name: HeaderName, value: String) {
    // Every value built here is digits, hex and ASCII punctuation, so this never drops one.
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
