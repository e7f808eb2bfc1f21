//! Which requests become P2P tasks, and what a task is called.
//!
//! Owns: the proxy's rules (regex → P2P with per-rule filtered query parameters, origin TLS and
//! content-digest handling) and task identity. Never: network I/O.
//!
//! Routing: only a GET in absolute form can go P2P. Its URL without the query (`scheme://authority/path`,
//! as the client sent it) is matched against the rules in order; the first match wins. No match, or any
//! other method, is passed through untouched. `Rules::default()` has two rules, both `content_digest: Auto`
//! with [`DEFAULT_FILTERED_PARAMS`]: a path whose last segment is 64 hex digits (Git LFS oids, the HF CDN)
//! and an OCI `/blobs/sha256:<64 hex>` path. A request carrying `X-Shoal-Digest: sha256:<hex>` (what
//! `shoal get --digest` sends) goes P2P even when no rule matches, with the default parameters; so does one
//! carrying `X-Shoal-Filtered-Query-Params: name,...` (what `shoal get` always sends, possibly empty), whose
//! names are filtered too, in addition to the rule's or the default list.
//!
//! Task identity (the ID, the display URL, digests in paths) is the engine's: see `engine::identity`.

use regex::Regex;

pub use crate::engine::identity::{digest_in_path, identify, identify_with, Identity, DEFAULT_FILTERED_PARAMS};
pub use crate::engine::Authorize;
use crate::storage::TaskId;

/// Whether a URL's own digest names the task and is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentDigest {
    /// A digest in the path (see the module doc) is the task ID and the expected sha256.
    Auto,
    /// The path is never read as a digest: the task is named by its URL.
    Off,
}

/// Largest compiled size of a rule's regex, in bytes.
const RULE_REGEX_LIMIT: usize = 1 << 20;

/// One proxy rule: requests whose URL (without query) matches `regex` go P2P.
#[derive(Clone, Debug)]
pub struct Rule {
    regex: Regex,
    /// Query parameters left out of the task ID (signatures, expiry, tokens); see the module doc.
    pub filtered_query_params: Vec<String>,
    /// Fetch the origin over https when the client spoke plain http (hrefs rewritten to reach the proxy).
    pub use_tls: bool,
    pub content_digest: ContentDigest,
    /// When a cached copy is served only after the origin agrees (see the engine's authorize.rs).
    pub authorize: Authorize,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule regex {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
}

impl RuleError {
    /// `pattern` refused for `e`, a regex parse or compile error.
    fn regex(pattern: &str, e: &dyn std::fmt::Display) -> RuleError {
        // The syntax error's text draws the pattern with a caret over several lines; its last line says
        // what is wrong, which is what a one-line log or CLI message needs.
        let text = e.to_string();
        let last = text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("invalid");
        RuleError::Regex { pattern: pattern.to_owned(), reason: last.trim_start_matches("error: ").to_owned() }
    }
}

impl Rule {
    /// A rule with the default filtered parameters, no TLS upgrade and `content_digest: Auto`.
    pub fn new(pattern: &str) -> Result<Rule, RuleError> {
        // A rule's regex runs against every request's URL: a pattern that compiles to more than 1 MiB (the
        // regex crate allows 10) is refused rather than slowing every request and every config load.
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(RULE_REGEX_LIMIT)
            .build()
            .map_err(|e| RuleError::regex(pattern, &e))?;
        Ok(Rule {
            regex,
            filtered_query_params: DEFAULT_FILTERED_PARAMS.iter().map(|s| (*s).to_owned()).collect(),
            use_tls: false,
            content_digest: ContentDigest::Auto,
            authorize: Authorize::Auto,
        })
    }

    /// Checks `pattern` as regex syntax without compiling it, with [`Rule::new`]'s error (what the config
    /// fuzz target validates; see `Config::parse_checking`).
    pub fn check_syntax(pattern: &str) -> Result<(), RuleError> {
        regex_syntax::Parser::new().parse(pattern).map(drop).map_err(|e| RuleError::regex(pattern, &e))
    }

    pub fn pattern(&self) -> &str {
        self.regex.as_str()
    }

    fn matches(&self, url_without_query: &str) -> bool {
        self.regex.is_match(url_without_query)
    }
}

/// A rule set: the first matching rule decides.
#[derive(Clone, Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Where origin-form (mirror) requests go; reloaded with the rules.
    mirrors: super::mirror::Mirrors,
}

/// Default rule patterns: a 64-hex last path segment, and an OCI blob path.
const DEFAULT_PATTERNS: &[&str] =
    &[r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]+(/[^?]*)?/[0-9A-Fa-f]{64}$", r"/blobs/sha256:[0-9A-Fa-f]{64}(/|$)"];

impl Default for Rules {
    fn default() -> Rules {
        // The default patterns are constants checked by a unit test; a failure here would be a build bug,
        // so it degrades to "no rule" rather than a panic.
        Rules {
            rules: DEFAULT_PATTERNS.iter().filter_map(|p| Rule::new(p).ok()).collect(),
            mirrors: Default::default(),
        }
    }
}

impl Rules {
    /// The built-in rules, leaving `filtered` out of task IDs instead of [`DEFAULT_FILTERED_PARAMS`].
    pub fn builtin(filtered: &[String]) -> Vec<Rule> {
        let mut v = Rules::default().rules;
        for r in &mut v {
            r.filtered_query_params = filtered.to_vec();
        }
        v
    }
}

/// What the proxy does with one request.
#[derive(Clone, Debug)]
pub enum Route {
    /// Through the engine: `url` is what the origin is asked for (scheme possibly upgraded); `filtered`
    /// the query parameter names the ID left out (the credentials among them are the requester's own).
    P2p {
        identity: Identity,
        url: http::Uri,
        expected_sha256: Option<[u8; 32]>,
        authorize: Authorize,
        filtered: Vec<String>,
    },
    /// Forwarded upstream as is, to `url` (scheme possibly upgraded by a matching rule).
    Pass { url: http::Uri },
}

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Rules {
        Rules { rules, mirrors: Default::default() }
    }

    /// `extra` first, then the defaults.
    /// These rules with `mirrors` for origin-form requests.
    pub fn with_mirrors(mut self, mirrors: super::mirror::Mirrors) -> Rules {
        self.mirrors = mirrors;
        self
    }

    pub fn mirrors(&self) -> &super::mirror::Mirrors {
        &self.mirrors
    }

    pub fn with_defaults(extra: Vec<Rule>) -> Rules {
        let mut rules = extra;
        rules.extend(Rules::default().rules);
        Rules { rules, mirrors: Default::default() }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule matching an absolute URL (query ignored).
    pub fn find(&self, uri: &http::Uri) -> Option<&Rule> {
        let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
        let key = format!("{scheme}://{authority}{}", uri.path());
        self.rules.iter().find(|r| r.matches(&key))
    }

    /// Routes a request. `header_digest` is a parsed `X-Shoal-Digest`. Only absolute http(s) URLs can go
    /// P2P; callers answer origin-form requests themselves.
    pub fn route(&self, method: &http::Method, uri: &http::Uri, header_digest: Option<[u8; 32]>) -> Route {
        self.route_with(method, uri, header_digest, None)
    }

    /// [`Rules::route`] for a request that asks to be a task (`shoal get` sends
    /// `X-Shoal-Filtered-Query-Params`, possibly empty): with `Some(extra)` a GET goes P2P even when no
    /// rule matches, and `extra` is left out of the task ID besides the rule's (or the built-in) list.
    pub fn route_with(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        header_digest: Option<[u8; 32]>,
        extra_filtered: Option<&[String]>,
    ) -> Route {
        let rule = self.find(uri);
        let url = match rule {
            Some(r) if r.use_tls => upgrade_tls(uri),
            _ => uri.clone(),
        };
        if method != http::Method::GET {
            return Route::Pass { url };
        }
        let extra = extra_filtered.unwrap_or(&[]);
        let found = match (rule, header_digest, extra_filtered) {
            (Some(r), _, _) => {
                identify_with(&url, &r.filtered_query_params, extra, r.content_digest == ContentDigest::Auto)
            }
            (None, Some(_), _) => identify_with(&url, DEFAULT_FILTERED_PARAMS, extra, false),
            (None, None, Some(_)) => identify_with(&url, DEFAULT_FILTERED_PARAMS, extra, true),
            (None, None, None) => None,
        };
        let Some(mut identity) = found else { return Route::Pass { url } };
        if let (Some(d), None) = (header_digest, identity.digest) {
            // The header's digest names the task only when the URL does not (precedence 2 above).
            identity.task_id = TaskId(d);
        }
        let expected_sha256 = header_digest.or(identity.digest);
        // The names the ID left out: the requester's credentials among them decide the authorization probe.
        let (mut filtered, authorize): (Vec<String>, _) = match rule {
            Some(r) => (r.filtered_query_params.clone(), r.authorize),
            None => (DEFAULT_FILTERED_PARAMS.iter().map(|s| (*s).to_owned()).collect(), Authorize::Auto),
        };
        filtered.extend_from_slice(extra);
        Route::P2p { identity, url, expected_sha256, authorize, filtered }
    }
}

/// Most names one request may add to its filtered parameters, and their longest length.
const MAX_EXTRA_FILTERED: usize = 64;
const MAX_PARAM_NAME: usize = 256;

/// The names in an `X-Shoal-Filtered-Query-Params` value (comma separated); `None` when it is not a
/// plain list of parameter names.
pub fn parse_extra_filtered(v: &str) -> Option<Vec<String>> {
    let names: Vec<String> = v.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
    let plain = |n: &String| n.len() <= MAX_PARAM_NAME && !n.contains(['=', '&', '?', '#', ' ']);
    (names.len() <= MAX_EXTRA_FILTERED && names.iter().all(plain)).then_some(names)
}

/// `http://` → `https://`, same authority, path and query; other URLs unchanged.
fn upgrade_tls(uri: &http::Uri) -> http::Uri {
    if uri.scheme_str() != Some("http") {
        return uri.clone();
    }
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::identity::hex32;
    use sha2::{Digest, Sha256};

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn route(rules: &Rules, m: http::Method, url: &str, hd: Option<[u8; 32]>) -> Route {
        rules.route(&m, &url.parse().unwrap(), hd)
    }

    #[test]
    fn a_rule_regex_that_compiles_huge_is_refused() {
        assert!(Rule::new("^https?://lfs[0-9]*\\.example\\.com/objects/").is_ok());
        // \w is Unicode-aware: 100 of them compile to between 1 MiB and the regex crate's own 10 MiB limit.
        assert!(matches!(Rule::new("\\w{100}"), Err(RuleError::Regex { .. })));
    }

    #[test]
    fn default_rules_send_digest_urls_p2p_and_pass_the_rest() {
        let r = Rules::default();
        assert_eq!(r.rules().len(), DEFAULT_PATTERNS.len());
        let p2p = |u: &str| matches!(route(&r, http::Method::GET, u, None), Route::P2p { .. });
        assert!(p2p(&format!("http://lfs.test/objects/{OID}?jwt=x")));
        assert!(p2p(&format!("https://reg.test/v2/lib/x/blobs/sha256:{OID}")));
        assert!(p2p(&format!("http://h.test/{}", OID.to_uppercase())));
        assert!(!p2p("http://h.test/file.bin"));
        assert!(!p2p(&format!("http://h.test/{OID}/info")));
        assert!(!p2p(&format!("http://h.test/x?oid={OID}")));
        assert!(!p2p(&format!("http://h.test/x{OID}")));
        let head = route(&r, http::Method::HEAD, &format!("http://lfs.test/o/{OID}"), None);
        assert!(matches!(head, Route::Pass { .. }));
    }

    #[test]
    fn header_digest_makes_any_get_p2p_named_by_the_digest() {
        let r = Rules::default();
        let d = hex32(OID).unwrap();
        match route(&r, http::Method::GET, "http://h.test/file.bin?token=1", Some(d)) {
            Route::P2p { identity, expected_sha256, .. } => {
                assert_eq!(identity.task_id, TaskId(d));
                assert_eq!(expected_sha256, Some(d));
                assert_eq!(identity.display_url, "http://h.test/file.bin");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_matching_rule_wins_and_can_upgrade_to_tls_and_turn_digests_off() {
        let mut a = Rule::new(r"^http://cdn\.test/").unwrap();
        a.use_tls = true;
        a.content_digest = ContentDigest::Off;
        a.filtered_query_params = vec!["sig".into()];
        let b = Rule::new(r"^http://").unwrap();
        let r = Rules::new(vec![a, b]);
        match route(&r, http::Method::GET, &format!("http://cdn.test/{OID}?sig=1&v=2"), None) {
            Route::P2p { identity, url, expected_sha256, .. } => {
                assert_eq!(url.scheme_str(), Some("https"));
                assert_eq!(identity.display_url, format!("https://cdn.test/{OID}?v=2"));
                assert_eq!(expected_sha256, None);
                let want: [u8; 32] = Sha256::digest(identity.display_url.as_bytes()).into();
                assert_eq!(identity.task_id, TaskId(want));
            }
            other => panic!("{other:?}"),
        }
        match route(&r, http::Method::GET, "http://other.test/x?token=1", None) {
            Route::P2p { identity, url, .. } => {
                assert_eq!(url.scheme_str(), Some("http"));
                assert_eq!(identity.display_url, "http://other.test/x");
            }
            other => panic!("{other:?}"),
        }
        assert!(Rule::new("(").is_err());
        assert_eq!(Rules::with_defaults(vec![Rule::new("x").unwrap()]).rules().len(), 1 + DEFAULT_PATTERNS.len());
    }

    #[test]
    fn shoal_get_requests_become_tasks_and_filter_their_extra_params() {
        let rules = Rules::default();
        let get = http::Method::GET;
        let u: http::Uri = "http://o.test/file.bin?sig=1&session=abc&v=2".parse().unwrap();
        assert!(matches!(rules.route(&get, &u, None), Route::Pass { .. }), "no rule, no header: pass");
        let extra = vec!["session".to_owned()];
        match rules.route_with(&get, &u, None, Some(&extra)) {
            Route::P2p { identity, .. } => assert_eq!(identity.display_url, "http://o.test/file.bin?v=2"),
            other => panic!("{other:?}"),
        }
        match rules.route_with(&get, &u, None, Some(&[])) {
            Route::P2p { identity, .. } => assert_eq!(identity.display_url, "http://o.test/file.bin?session=abc&v=2"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(rules.route_with(&http::Method::HEAD, &u, None, Some(&extra)), Route::Pass { .. }));
        assert_eq!(parse_extra_filtered(" a, b ,,"), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(parse_extra_filtered(""), Some(vec![]));
        assert_eq!(parse_extra_filtered("a=1"), None);
        assert_eq!(parse_extra_filtered(&"x,".repeat(65)), None);
    }
}
