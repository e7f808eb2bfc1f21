//! Command-line interface: argument parsing and the small parsers for sizes and durations.
//!
//! Owns the names of commands and flags (the contract scripts and the Helm chart rely on). Never does work
//! itself: each command hands its options to the subsystem that runs it. Called by main.rs only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::storage::IoEngineChoice;

pub mod get;

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "P2P distribution of large files behind an HTTP proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node daemon: storage, proxy, upload server (example: `shoal daemon --data-dir /var/lib/shoal`).
    Daemon(DaemonArgs),
    /// Run a standalone scheduler (example: `shoal scheduler --listen 0.0.0.0:8002`).
    Scheduler(SchedulerArgs),
    /// Download one URL through the P2P network (example: `shoal get https://host/obj -O obj`).
    Get(GetArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// YAML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where task files live (default: $XDG_DATA_HOME/shoal, or /var/lib/shoal as root).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP forward-proxy address for git and other clients.
    #[arg(long, default_value = "127.0.0.1:65001")]
    pub proxy_addr: SocketAddr,
    /// A URL regex (matched without the query) whose GETs go P2P, tried before the built-in digest rules;
    /// repeatable (example: `--rule '^https?://cdn\.example\.com/'`).
    #[arg(long = "rule")]
    pub rules: Vec<String>,
    /// Proxy clients: a request head must arrive within this, idle keep-alive connections close after it,
    /// and a client that accepts no response bytes for this long is disconnected.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub proxy_client_timeout: Duration,
    /// Send complete local hits with sendfile (false: stream them through hyper like misses).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy_zero_copy: bool,
    /// Address the upload server (pieces to peers) listens on.
    #[arg(long, default_value = "0.0.0.0:65002")]
    pub upload_addr: SocketAddr,
    /// Prometheus metrics and health endpoints.
    #[arg(long, default_value = "127.0.0.1:65003")]
    pub metrics_addr: SocketAddr,
    /// Scheduler addresses, comma separated; none means an embedded scheduler (single-node mode).
    #[arg(long, value_delimiter = ',')]
    pub scheduler: Vec<String>,
    /// Run as a seed peer (fetches from the origin when the scheduler asks).
    #[arg(long)]
    pub seed: bool,
    /// The IP peers use to reach this node's upload server (default: the upload address's IP, or
    /// 127.0.0.1 when it listens on all addresses).
    #[arg(long, env = "SHOAL_ADVERTISE_IP")]
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Upload rate limit to peers, e.g. 100MB (bytes per second; none by default).
    #[arg(long, value_parser = parse_size)]
    pub upload_rate: Option<u64>,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Worker threads, one runtime each (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Piece I/O engine: auto (probe io_uring, fall back to pread/pwrite), uring, or sync.
    #[arg(long, default_value = "auto", env = "SHOAL_IO_ENGINE")]
    pub io_engine: IoEngineChoice,
    /// Disk quota for task files, e.g. 50GiB (default: the file system, GC above 80% used).
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Evict tasks not read for this long, e.g. 30d, 12h (0 disables).
    #[arg(long, value_parser = parse_duration, default_value = "30d")]
    pub ttl: Duration,
    /// How often GC runs.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub gc_interval: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8002")]
    pub listen: SocketAddr,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// The URL to download.
    pub url: String,
    /// Where to write the content (it appears only once complete and verified).
    #[arg(short = 'O', long = "output")]
    pub output: PathBuf,
    /// The daemon's proxy address.
    #[arg(long, default_value = "127.0.0.1:65001", env = "SHOAL_DAEMON")]
    pub daemon: String,
    /// Expected content digest, sha256:<64 hex>; the download fails on a mismatch.
    #[arg(long)]
    pub digest: Option<String>,
    /// Extra request header for the origin, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Give up after this long.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub timeout: Duration,
}

/// Parses sizes such as `512`, `64KiB`, `10GB`, `1.5TiB` (SI and binary units; bare numbers are bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(v as u64)
}

/// Parses durations such as `90s`, `15m`, `12h`, `30d`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs).ok_or_else(|| format!("duration too large: {s:?}"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        u => Err(format!("unknown duration unit {u:?} in {s:?} (ms, s, m, h, d)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
    }
}
