//! The Grafana dashboard (helm/shoal/dashboards/shoal.json) against real daemons: a scheduler, a seed and a
//! peer fetch one object, so every counter the dashboard plots has moved, and every metric name in every
//! panel query and variable must be one the daemons export (a `# TYPE` line, and a sample line for the series
//! queried). Its shape is checked too: the datasource variable every query goes through, the namespace / pod
//! / instance filters, the panels an operator expects, and PromQL that is used the way each type allows
//! (rate only over counters and histogram series, histogram_quantile over buckets by le).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use common::cluster::{self, get};
use common::origin::{Origin, FLAVOURS};
use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;

/// Labels a query may group or filter by: the ones Prometheus adds on scrape (the chart's ServiceMonitor) and
/// the ones the daemon exports.
const LABELS: &[&str] = &["namespace", "pod", "instance", "engine", "status", "listener", "result", "le", "state"];

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/shoal/dashboards/shoal.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("the dashboard is not JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("dashboard without panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// (panel title, expr) of every target of every panel.
fn exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: target without expr: {t}"));
            out.push((title, expr.to_string()));
        }
    }
    out
}

/// The PromQL queries of the template variables (label_values(...)).
fn variable_queries(d: &Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("query variable without query");
            (format!("variable {}", v["name"]), q.to_string())
        })
        .collect()
}

/// Identifiers `shoal_[a-z0-9_]+` in a query, with the byte offset of each.
fn metric_names(expr: &str) -> Vec<(usize, String)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("shoal_").map(|k| k + i) {
        let word_start = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let mut end = at + "shoal_".len();
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_') {
            end += 1;
        }
        if word_start && end > at + "shoal_".len() {
            out.push((at, expr[at..end].to_string()));
        }
        i = end;
    }
    out
}

/// A Prometheus text exposition: family name -> type (from `# TYPE`), and the sample names with a value.
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

fn parse(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, ty) = (w.next().unwrap(), w.next().expect("# TYPE without a type"));
            assert!(types.insert(name.to_string(), ty.to_string()).is_none(), "{name} typed twice");
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "sample without a number: {line:?}");
            samples.insert(name.to_string());
        }
    }
    Exposition { types, samples }
}

impl Exposition {
    /// The family a queried series belongs to, and its type: the name itself, or a histogram's
    /// `_bucket` / `_sum` / `_count` series.
    fn family(&self, series: &str) -> Option<(String, String)> {
        if let Some(ty) = self.types.get(series) {
            return Some((series.to_string(), ty.clone()));
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = series.strip_suffix(suffix)?;
            let ty = self.types.get(base)?;
            (ty == "histogram").then(|| (base.to_string(), ty.clone()))
        })
    }

    fn value(&self, text: &str, name: &str) -> f64 {
        assert!(self.samples.contains(name), "{name} has no sample");
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }
}

/// The label names inside every `by (...)` / `without (...)` clause and every `{...}` selector.
fn labels_used(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by (", "by(", "without (", "without("] {
        for (i, _) in expr.match_indices(kw) {
            let rest = &expr[i + kw.len()..];
            let inner = &rest[..rest.find(')').expect("unclosed by (")];
            out.extend(inner.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
        }
    }
    for (i, _) in expr.match_indices('{') {
        let rest = &expr[i + 1..];
        let inner = &rest[..rest.find('}').expect("unclosed {")];
        for matcher in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let name: String = matcher.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push(name);
        }
    }
    out
}

fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            _ if in_string => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !in_string
}

#[test]
fn dashboard_has_the_datasource_variable_filters_and_panels() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion {}", d["schemaVersion"]);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    let vars = d["templating"]["list"].as_array().expect("no template variables");
    let var =
        |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no template variable {name}"));
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for name in ["namespace", "pod", "instance"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        let q = v["query"]["query"].as_str().unwrap();
        assert!(q.starts_with("label_values(shoal_") && q.ends_with(&format!(", {name})")), "{name}: {q}");
        // "All" must also match series without the label (a Prometheus that scrapes outside Kubernetes).
        assert_eq!(v["allValue"], ".*", "{name}");
    }

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().expect("panel without a title");
        assert!(ids.insert(p["id"].as_u64().expect("panel without an id")), "duplicate panel id in {title}");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: no gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: not through the datasource variable");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {t}");
            assert!(refs.insert(t["refId"].as_str().expect("target without refId")), "{title}: duplicate refId");
        }
    }
    let titles: BTreeSet<&str> = all.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Throughput by source",
        "P2P share",
        "Back-to-source rate",
        "Tasks active / completed / failed",
        "Piece download latency",
        "Proxy responses by status",
        "Storage used vs quota",
        "Storage evictions",
        "IO engine in use",
        "Upload load",
    ] {
        assert!(titles.contains(want), "no panel titled {want:?}; have {titles:?}");
    }
    let p2p = all.iter().find(|p| p["title"] == "P2P share").unwrap();
    assert!(p2p["type"] == "stat" || p2p["type"] == "gauge", "P2P share is a {}", p2p["type"]);
    let latency = all.iter().find(|p| p["title"] == "Piece download latency").unwrap();
    let qs: Vec<&str> = latency["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap()).collect();
    for q in ["0.5", "0.9", "0.99"] {
        assert!(
            qs.iter().any(|e| e.starts_with(&format!("histogram_quantile({q}, ")) && e.contains("_bucket")),
            "no p{q} quantile over the buckets: {qs:?}"
        );
    }

    // Every query filters by the three variables (so the filters at the top mean something).
    for (title, expr) in exprs(&d) {
        assert!(balanced(&expr), "{title}: unbalanced brackets in {expr}");
        for (at, name) in metric_names(&expr) {
            let after = &expr[at + name.len()..];
            assert!(
                after.starts_with("{namespace=~\"$namespace\", pod=~\"$pod\", instance=~\"$instance\"}"),
                "{title}: {name} is not filtered by the namespace, pod and instance variables: {expr}"
            );
        }
        for label in labels_used(&expr) {
            assert!(LABELS.contains(&label.as_str()), "{title}: label {label:?} is neither scraped nor exported");
        }
    }
    for p in &all {
        for t in p["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or("");
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in legend.match_indices("{{") {
                let label = &legend[i + 2..i + 2 + legend[i + 2..].find("}}").unwrap()];
                assert!(
                    labels_used(expr).iter().any(|l| l == label.trim()) && expr.contains(" by ("),
                    "{}: legend {legend:?} names a label the query does not keep: {expr}",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_real_daemons() {
    let d = dashboard();
    let mut queries = exprs(&d);
    queries.extend(variable_queries(&d));
    assert!(queries.len() >= 15, "only {} queries", queries.len());

    // A seed fetches the object from the origin; the peer takes it from the seed, through its proxy.
    let obj = Bytes::from(content(91, 12 * MIB + 5));
    let oid = hex::encode(sha256(&obj));
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj.clone());
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let seed = cluster::daemon("127.0.0.110", &[sched.addr], true, &tmp.path().join("seed"));
    let peer = cluster::daemon("127.0.0.111", &[sched.addr], false, &tmp.path().join("peer"));
    let out = tmp.path().join("out");
    let (ok, err) = get(&peer, &origin.url(&path), &out, Some(&format!("sha256:{oid}")));
    assert!(ok, "shoal get failed: {err}");
    assert_eq!(hex::encode(sha256(&std::fs::read(&out).unwrap())), oid);

    let scrape = |dm: &cluster::Daemon| {
        let (status, text) = cluster::http_get(dm.metrics, "/metrics");
        assert_eq!(status, 200, "{text}");
        text
    };
    let (peer_text, seed_text) = (scrape(&peer), scrape(&seed));
    let (p, s) = (parse(&peer_text), parse(&seed_text));
    assert_eq!(p.types, s.types, "seed and peer export different families");

    // The counters the panels plot moved, so the dashboard would show data, not empty panels.
    let size = obj.len() as f64;
    let from_peers = p.value(&peer_text, "shoal_bytes_from_peers_total");
    assert_eq!(from_peers, size, "the peer got every byte of the object from the seed:\n{peer_text}");
    assert!(p.value(&peer_text, "shoal_piece_download_seconds_count") > 0.0, "{peer_text}");
    assert_eq!(p.value(&peer_text, "shoal_bytes_served_total"), size, "{peer_text}");
    assert!(p.value(&peer_text, "shoal_proxy_responses_total") >= 1.0, "{peer_text}");
    assert_eq!(s.value(&seed_text, "shoal_bytes_from_origin_total"), size, "{seed_text}");
    assert!(s.value(&seed_text, "shoal_bytes_uploaded_total") >= size, "{seed_text}");
    assert!(s.value(&seed_text, "shoal_back_to_source_total") >= 1.0, "{seed_text}");
    assert!(p.value(&peer_text, "shoal_storage_bytes") >= size, "{peer_text}");

    let mut used_families = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty() || expr.starts_with("vector("), "{title}: a query with no shoal metric: {expr}");
        for (at, name) in names {
            let (family, ty) = p
                .family(&name)
                .unwrap_or_else(|| panic!("{title}: {name} is not exported (no # TYPE line):\n{peer_text}"));
            assert!(peer_text.contains(&format!("# TYPE {family} {ty}\n")), "{title}: no # TYPE line for {family}");
            // The series queried has samples (a histogram's buckets, sum and count are separate series).
            assert!(
                p.samples.contains(&name) || (ty == "histogram" && name != family && s.samples.contains(&name)),
                "{title}: {name} has no sample in the exposition:\n{peer_text}"
            );
            if ty == "histogram" {
                assert_ne!(name, family, "{title}: a histogram is queried by its _bucket/_sum/_count series");
            }
            let before = &expr[..at];
            let in_rate = before.ends_with("rate(") || before.ends_with("increase(");
            if in_rate {
                assert!(ty == "counter" || ty == "histogram", "{title}: rate() over the {ty} {name}: {expr}");
            } else if !title.starts_with("variable ") {
                assert_eq!(ty, "gauge", "{title}: the {ty} {name} is plotted raw instead of as a rate: {expr}");
            }
            if name.ends_with("_bucket") {
                assert!(
                    expr.contains("histogram_quantile(") && expr.contains("by (le)"),
                    "{title}: buckets outside histogram_quantile(.., sum by (le) ..): {expr}"
                );
            }
            used_families.insert(family);
        }
    }
    // And every family the daemon exports is on the dashboard (a new metric needs a panel).
    let exported: BTreeSet<String> = p.types.keys().filter(|n| n.starts_with("shoal_")).cloned().collect();
    let missing: Vec<&String> = exported.difference(&used_families).collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}
