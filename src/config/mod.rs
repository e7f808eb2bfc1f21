//! The one YAML configuration file of daemon and scheduler (shoal.yaml beside this file is the commented
//! default that `shoal config default` prints).
//!
//! Owns: the file's schema, defaults and validation (unknown keys and bad values are errors naming the key
//! path). Never: starts anything. Called by: main.rs, which merges flags over it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::storage::{Ingest, IoEngineChoice};
use crate::units::{parse_duration, parse_size};

/// The commented default configuration.
pub const DEFAULT_YAML: &str = include_str!("shoal.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {key}: {reason}")]
    Invalid { path: String, key: String, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    pub workers: usize,
    pub seed: bool,
    pub advertise_ip: Option<IpAddr>,
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
    pub upload: UploadConfig,
    pub metrics: MetricsConfig,
    pub scheduler: SchedulerConfig,
    pub cluster: ClusterConfig,
    pub storage: StorageConfig,
    pub engine: EngineTunables,
}

/// Membership of a cluster (src/membership).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The file holding the secret every scheduler and daemon of the cluster shares.
    pub secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub addr: SocketAddr,
    /// Tried in order before the built-in rules; the first match decides.
    pub rules: Vec<RuleConfig>,
    /// Whether the built-in content-digest rules (Git LFS oids, OCI blobs) follow `rules`.
    pub default_rules: bool,
    /// Query parameters left out of task IDs by the built-in rules and by rules without their own list;
    /// `None`: the built-in list.
    pub filtered_query_params: Option<Vec<String>>,
    #[serde(deserialize_with = "duration")]
    pub client_timeout: Duration,
    /// Client connections served at once; more are answered 503.
    pub max_connections: usize,
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// Networks (CIDR) the daemon never connects to for a request; `None`: the built-in list.
    pub deny_destinations: Option<Vec<String>>,
    /// Networks (CIDR) exempt from `deny_destinations`.
    pub allow_destinations: Vec<String>,
    /// Ports (`443`) or port ranges (`"8000-8999"`) CONNECT may tunnel to.
    pub connect_ports: Vec<PortSpec>,
    /// Networks (CIDR) whose clients may use the proxy; others get 403.
    pub allow_clients: Vec<String>,
    /// Hosts (`host`, `*.domain`) whose CONNECT tunnels are terminated with the interception CA.
    pub intercept: Vec<String>,
    /// Directory of the interception CA (`ca.crt`, `ca.key`); `None`: `<data_dir>/ca`.
    pub intercept_ca: Option<PathBuf>,
    /// Upstreams of origin-form (mirror) requests.
    pub mirror: MirrorConfig,
}

/// `proxy.mirror`: the registry behind `/v2/` and the hub behind `/hf/`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    pub registry: Option<String>,
    pub huggingface: Option<String>,
}

/// How the daemon talks to origins.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// A PEM bundle of CA certificates trusted for origins, besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// A port or a port range as the file writes it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    One(u16),
    Range(String),
}

/// One proxy rule as written in the file (see the module doc of `proxy::rules`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub regex: String,
    #[serde(default)]
    pub filtered_query_params: Option<Vec<String>>,
    #[serde(default)]
    pub use_tls: bool,
    #[serde(default)]
    pub content_digest: DigestChoice,
    /// When a cached or peer copy is served only after the origin agrees (see the engine's authorize.rs).
    #[serde(default)]
    pub authorize: crate::engine::Authorize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestChoice {
    #[default]
    Auto,
    Off,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    pub addr: SocketAddr,
    #[serde(deserialize_with = "opt_size")]
    pub rate: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub addrs: Vec<String>,
    pub listen: SocketAddr,
    /// Where `shoal scheduler` serves /metrics and /healthz.
    pub metrics: SocketAddr,
    /// Most children one parent of a task feeds at once (the distribution tree's width per node).
    pub fan_out: u32,
    /// Most parents still downloading that one child is given.
    pub tree_parents: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    #[serde(deserialize_with = "engine_choice")]
    pub io_engine: IoEngineChoice,
    #[serde(deserialize_with = "parsed")]
    pub ingest: Ingest,
    #[serde(deserialize_with = "opt_size")]
    pub quota: Option<u64>,
    pub high_watermark: f64,
    pub low_watermark: f64,
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    #[serde(deserialize_with = "duration")]
    pub gc_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineTunables {
    pub pieces_per_parent: usize,
    pub max_parents: usize,
    pub origin_in_flight: usize,
    pub origin_connections: usize,
    #[serde(deserialize_with = "size")]
    pub ingest_memory: u64,
    #[serde(deserialize_with = "duration")]
    pub parent_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub parent_stall: Duration,
    #[serde(deserialize_with = "duration")]
    pub scheduler_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub origin_head_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub origin_idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub authorize_ttl: Duration,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            addr: addr("127.0.0.1:65001"),
            rules: Vec::new(),
            default_rules: true,
            filtered_query_params: None,
            client_timeout: Duration::from_secs(30),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(20),
            deny_destinations: None,
            allow_destinations: Vec::new(),
            connect_ports: vec![PortSpec::One(443)],
            allow_clients: vec!["127.0.0.0/8".into(), "::1/128".into()],
            intercept: Vec::new(),
            intercept_ca: None,
            mirror: MirrorConfig::default(),
        }
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig { addr: addr("0.0.0.0:65002"), rate: None }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { addr: addr("127.0.0.1:65003") }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            addrs: Vec::new(),
            listen: addr("0.0.0.0:8002"),
            metrics: addr("127.0.0.1:8004"),
            fan_out: 4,
            tree_parents: 2,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            io_engine: IoEngineChoice::Auto,
            ingest: Ingest::default(),
            quota: None,
            high_watermark: 0.8,
            low_watermark: 0.6,
            ttl: Duration::from_secs(30 * 86400),
            gc_interval: Duration::from_secs(60),
        }
    }
}

impl Default for EngineTunables {
    fn default() -> Self {
        let e = crate::engine::EngineConfig::default();
        EngineTunables {
            pieces_per_parent: e.pieces_per_parent,
            max_parents: e.max_parents,
            origin_in_flight: e.origin_in_flight,
            origin_connections: e.origin_connections,
            ingest_memory: e.ingest_memory,
            parent_wait: e.parent_wait,
            parent_stall: e.parent_stall,
            scheduler_timeout: e.scheduler_timeout,
            origin_head_timeout: e.origin_head_timeout,
            origin_idle_timeout: e.origin_idle_timeout,
            authorize_ttl: e.authorize_ttl,
        }
    }
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::N(n)) => Ok(Some(n)),
        Some(Size::S(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    opt_size(d)?.ok_or_else(|| serde::de::Error::custom("a size is required (e.g. 32MiB)"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn parsed<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn engine_choice<'de, D: Deserializer<'de>>(d: D) -> Result<IoEngineChoice, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

/// How validation checks `proxy.rules`' regexes.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleCheck {
    /// Compiled, as the daemon will run them (what every load does).
    Compile,
    /// Parsed as regex syntax only (the config fuzz target).
    Syntax,
}

impl Config {
    /// Parses and validates YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_checking(text, origin, RuleCheck::Compile)
    }

    /// [`Config::parse`], with the rules' regexes checked as `rules` says. The config fuzz target parses
    /// them without compiling: compiling (the regex crate's compiler, fuzzed upstream) took ~90 % of each
    /// execution and drew libFuzzer into the compiler's own branches.
    #[doc(hidden)]
    pub fn parse_checking(text: &str, origin: &str, rules: RuleCheck) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                path: origin.to_owned(),
                key: if key == "." { "(top level)".into() } else { key },
                reason: e.into_inner().to_string(),
            }
        })?;
        cfg.validate(origin, rules)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    fn validate(&self, origin: &str, rules: RuleCheck) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let s = &self.storage;
        if !(0.0 < s.low_watermark && s.low_watermark <= s.high_watermark && s.high_watermark <= 1.0) {
            return Err(bad(
                "storage.low_watermark",
                "watermarks must satisfy 0 < low_watermark <= high_watermark <= 1",
            ));
        }
        if s.gc_interval.is_zero() {
            return Err(bad("storage.gc_interval", "must be positive"));
        }
        let e = &self.engine;
        for (k, v) in [
            ("engine.pieces_per_parent", e.pieces_per_parent),
            ("engine.max_parents", e.max_parents),
            ("engine.origin_in_flight", e.origin_in_flight),
            ("engine.origin_connections", e.origin_connections),
        ] {
            if v == 0 || v > 1024 {
                return Err(bad(k, "must be between 1 and 1024"));
            }
        }
        match rules {
            RuleCheck::Compile => self.proxy_rules().map(drop),
            RuleCheck::Syntax => self.rules_syntax(),
        }
        .map_err(|(k, why)| bad(&k, &why))?;
        if self.proxy.client_timeout < Duration::from_millis(100) {
            return Err(bad("proxy.client_timeout", "must be at least 100ms"));
        }
        if e.ingest_memory < 4 << 20 {
            return Err(bad("engine.ingest_memory", "must be at least 4MiB (one piece)"));
        }
        if e.parent_stall < Duration::from_millis(100) {
            return Err(bad("engine.parent_stall", "must be at least 100ms"));
        }
        let sc = &self.scheduler;
        if sc.fan_out == 0 || sc.fan_out > 1024 {
            return Err(bad("scheduler.fan_out", "must be between 1 and 1024"));
        }
        if sc.tree_parents == 0 || sc.tree_parents > 1024 {
            return Err(bad("scheduler.tree_parents", "must be between 1 and 1024"));
        }
        if self.proxy.max_connections == 0 {
            return Err(bad("proxy.max_connections", "must be at least 1"));
        }
        if self.upload.rate == Some(0) {
            return Err(bad("upload.rate", "must be positive (null for no limit)"));
        }
        let listeners =
            [("proxy.addr", self.proxy.addr), ("upload.addr", self.upload.addr), ("metrics.addr", self.metrics.addr)];
        if let Some((first, second, addr)) = crate::runtime::clashing(&listeners) {
            return Err(bad(second, &format!("{addr} is also {first}: each listener needs its own port")));
        }
        self.destinations().map_err(|(key, why)| bad(&key, &why))?;
        self.allow_clients().map_err(|(key, why)| bad(&key, &why))?;
        self.intercept_hosts().map_err(|(key, why)| bad(&key, &why))?;
        Ok(())
    }

    /// `proxy.intercept` as host patterns. An error names the key and the reason.
    pub fn intercept_hosts(&self) -> Result<Vec<crate::proxy::intercept::HostPattern>, (String, String)> {
        use crate::proxy::intercept::HostPattern;
        let parse = |(i, h): (usize, &String)| {
            HostPattern::parse(h).map_err(|e| (format!("proxy.intercept[{i}]"), e.to_string()))
        };
        self.proxy.intercept.iter().enumerate().map(parse).collect()
    }

    /// The interception set-up: `None` when `proxy.intercept` is empty, else its hosts with the CA of
    /// `proxy.intercept_ca` (default `<data_dir>/ca`), which must load and sign certificates that verify.
    /// An error names the key and the reason.
    pub fn intercept(
        &self,
        data_dir: &Path,
    ) -> Result<Option<std::sync::Arc<crate::proxy::intercept::Intercept>>, (String, String)> {
        use crate::tls::{leaf::DEFAULT_CAPACITY, Ca, Leaves};
        let hosts = self.intercept_hosts()?;
        if hosts.is_empty() {
            return Ok(None);
        }
        let dir = self.proxy.intercept_ca.clone().unwrap_or_else(|| data_dir.join("ca"));
        let why = |e: crate::tls::TlsError| {
            let hint = format!("(proxy.intercept is set; `shoal ca init --dir {}` creates a CA)", dir.display());
            ("proxy.intercept_ca".to_owned(), format!("interception CA in {}: {e} {hint}", dir.display()))
        };
        let ca = Ca::load(&dir).map_err(why)?;
        let leaves = Leaves::new(ca, DEFAULT_CAPACITY, &dir).map_err(why)?;
        Ok(Some(std::sync::Arc::new(crate::proxy::intercept::Intercept::new(hosts, leaves))))
    }

    /// The TLS settings that verify origins: the system's roots plus `upstream.ca_file`. An error names
    /// the key and the reason.
    pub fn upstream_tls(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, (String, String)> {
        crate::upstream::client_tls(self.upstream.ca_file.as_deref())
            .map_err(|e| ("upstream.ca_file".to_owned(), e.to_string()))
    }

    /// `proxy.allow_clients` as networks. An error names the key and the reason.
    pub fn allow_clients(&self) -> Result<Vec<ipnet::IpNet>, (String, String)> {
        let parse = |(i, n): (usize, &String)| {
            n.parse().map_err(|_| (format!("proxy.allow_clients[{i}]"), format!("not a CIDR network: {n:?}")))
        };
        self.proxy.allow_clients.iter().enumerate().map(parse).collect()
    }

    /// The destination policy: `proxy.deny_destinations` (or the built-in list) minus
    /// `proxy.allow_destinations`, and `proxy.connect_ports`. An error names the key and the reason.
    pub fn destinations(&self) -> Result<std::sync::Arc<crate::upstream::Destinations>, (String, String)> {
        use crate::upstream::policy::{parse_ports, DEFAULT_DENY};
        let p = &self.proxy;
        let nets = |key: &str, list: &[String]| {
            let parse = |(i, n): (usize, &String)| {
                n.parse().map_err(|_| (format!("{key}[{i}]"), format!("not a CIDR network: {n:?}")))
            };
            list.iter().enumerate().map(parse).collect::<Result<Vec<ipnet::IpNet>, _>>()
        };
        let default_deny: Vec<String> = DEFAULT_DENY.iter().map(|s| (*s).to_owned()).collect();
        let deny = nets("proxy.deny_destinations", p.deny_destinations.as_ref().unwrap_or(&default_deny))?;
        let allow = nets("proxy.allow_destinations", &p.allow_destinations)?;
        let mut ports = Vec::with_capacity(p.connect_ports.len());
        for (i, spec) in p.connect_ports.iter().enumerate() {
            let r = match spec {
                PortSpec::One(n) => Some(*n..=*n),
                PortSpec::Range(s) => parse_ports(s),
            };
            ports.push(
                r.ok_or_else(|| (format!("proxy.connect_ports[{i}]"), "want a port or \"LOW-HIGH\"".to_owned()))?,
            );
        }
        Ok(crate::upstream::Destinations::new(deny, allow, ports))
    }

    /// The proxy's rule set: `proxy.rules` in order, then the built-in ones unless turned off. An error
    /// names the key and the reason.
    pub fn proxy_rules(&self) -> Result<crate::proxy::rules::Rules, (String, String)> {
        use crate::proxy::rules::{ContentDigest, Rule, Rules, DEFAULT_FILTERED_PARAMS};
        let p = &self.proxy;
        let filtered: Vec<String> = match &p.filtered_query_params {
            Some(f) => f.clone(),
            None => DEFAULT_FILTERED_PARAMS.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut rules = Vec::with_capacity(p.rules.len() + 2);
        for (i, rc) in p.rules.iter().enumerate() {
            let mut r = Rule::new(&rc.regex).map_err(|e| (format!("proxy.rules[{i}].regex"), e.to_string()))?;
            r.filtered_query_params = rc.filtered_query_params.clone().unwrap_or_else(|| filtered.clone());
            r.use_tls = rc.use_tls;
            r.authorize = rc.authorize;
            r.content_digest = match rc.content_digest {
                DigestChoice::Auto => ContentDigest::Auto,
                DigestChoice::Off => ContentDigest::Off,
            };
            rules.push(r);
        }
        if p.default_rules {
            rules.extend(Rules::builtin(&filtered));
        }
        Ok(Rules::new(rules).with_mirrors(self.mirrors()?))
    }

    /// `proxy.rules`' regexes parsed (not compiled), and the mirrors. An error names the key and the reason.
    fn rules_syntax(&self) -> Result<(), (String, String)> {
        for (i, rc) in self.proxy.rules.iter().enumerate() {
            crate::proxy::rules::Rule::check_syntax(&rc.regex)
                .map_err(|e| (format!("proxy.rules[{i}].regex"), e.to_string()))?;
        }
        self.mirrors().map(drop)
    }

    /// `proxy.mirror`'s upstreams. An error names the key and the reason.
    fn mirrors(&self) -> Result<crate::proxy::mirror::Mirrors, (String, String)> {
        let p = &self.proxy;
        let upstream = |key: &str, v: &Option<String>| -> Result<Option<http::Uri>, (String, String)> {
            let Some(v) = v else { return Ok(None) };
            let u: http::Uri = v.parse().map_err(|_| (key.to_owned(), "want an http(s) URL".to_owned()))?;
            let ok = matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some_and(|h| !h.is_empty());
            ok.then_some(Some(u)).ok_or_else(|| (key.to_owned(), "want an http(s) URL".to_owned()))
        };
        Ok(crate::proxy::mirror::Mirrors {
            registry: upstream("proxy.mirror.registry", &p.mirror.registry)?,
            huggingface: upstream("proxy.mirror.huggingface", &p.mirror.huggingface)?,
        })
    }

    /// The storage GC limits (a `ttl` of 0 disables expiry), at start and on every reload.
    pub fn gc_limits(&self) -> crate::storage::GcLimits {
        let s = &self.storage;
        crate::storage::GcLimits {
            quota_bytes: s.quota,
            high_watermark: s.high_watermark,
            low_watermark: s.low_watermark,
            ttl: (!s.ttl.is_zero()).then_some(s.ttl),
        }
    }

    /// The engine's tunables with these values.
    pub fn engine_config(
        &self,
        destinations: std::sync::Arc<crate::upstream::Destinations>,
    ) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            pieces_per_parent: self.engine.pieces_per_parent,
            max_parents: self.engine.max_parents,
            origin_in_flight: self.engine.origin_in_flight,
            origin_connections: self.engine.origin_connections,
            ingest_memory: self.engine.ingest_memory,
            parent_wait: self.engine.parent_wait,
            parent_stall: self.engine.parent_stall,
            scheduler_timeout: self.engine.scheduler_timeout,
            origin_head_timeout: self.engine.origin_head_timeout,
            origin_idle_timeout: self.engine.origin_idle_timeout,
            authorize_ttl: self.engine.authorize_ttl,
            destinations,
            seed_filtered_params: self.seed_filtered_params(),
            ..Default::default()
        }
    }

    /// Every parameter this node's configuration leaves out of a task ID (the proxy-wide list, or the
    /// built-in one, and each rule's own): what a seed accepts as filtered in a trigger's URL.
    fn seed_filtered_params(&self) -> Vec<String> {
        use crate::proxy::rules::DEFAULT_FILTERED_PARAMS;
        let base = match &self.proxy.filtered_query_params {
            Some(f) => f.clone(),
            None => DEFAULT_FILTERED_PARAMS.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut all = base;
        for r in &self.proxy.rules {
            all.extend(r.filtered_query_params.iter().flatten().cloned());
        }
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests;
