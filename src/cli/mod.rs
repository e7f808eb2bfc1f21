//! Command-line interface: argument parsing.
//!
//! Owns the names of commands and flags (the contract scripts and the Helm chart rely on). Never does work
//! itself: each command hands its options to the subsystem that runs it. Called by main.rs only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::storage::IoEngineChoice;
use crate::units::{parse_duration, parse_size};

pub mod tasks;

impl GitScope {
    pub fn scope(&self) -> crate::lfs::Scope {
        match (self.local, self.system) {
            (true, _) => crate::lfs::Scope::Local,
            (_, true) => crate::lfs::Scope::System,
            _ => crate::lfs::Scope::Global,
        }
    }
}

impl DaemonArgs {
    /// The configuration file (or the defaults) with every flag given on the command line on top.
    pub fn merge(&self, mut c: crate::config::Config) -> crate::config::Config {
        if let Some(d) = &self.data_dir {
            c.data_dir = Some(d.clone());
        }
        c.proxy.addr = self.proxy_addr.unwrap_or(c.proxy.addr);
        // Flag rules go first: the command line is the most specific say.
        let flagged = self.rules.iter().map(|r| crate::config::RuleConfig {
            regex: r.clone(),
            filtered_query_params: None,
            use_tls: false,
            content_digest: crate::config::DigestChoice::Auto,
            authorize: crate::engine::Authorize::Auto,
        });
        c.proxy.rules = flagged.chain(c.proxy.rules).collect();
        c.proxy.client_timeout = self.proxy_client_timeout.unwrap_or(c.proxy.client_timeout);
        c.proxy.drain_timeout = self.drain_timeout.unwrap_or(c.proxy.drain_timeout);
        c.upload.addr = self.upload_addr.unwrap_or(c.upload.addr);
        c.metrics.addr = self.metrics_addr.unwrap_or(c.metrics.addr);
        if !self.scheduler.is_empty() {
            c.scheduler.addrs = self.scheduler.clone();
        }
        if let Some(f) = &self.cluster_secret_file {
            c.cluster.secret_file = Some(f.clone());
        }
        c.seed |= self.seed;
        c.advertise_ip = self.advertise_ip.or(c.advertise_ip);
        c.upload.rate = self.upload_rate.or(c.upload.rate);
        c.workers = self.workers.unwrap_or(c.workers);
        let s = &self.storage;
        c.storage.io_engine = s.io_engine.unwrap_or(c.storage.io_engine);
        c.storage.quota = s.quota.or(c.storage.quota);
        c.storage.ttl = s.ttl.unwrap_or(c.storage.ttl);
        c.storage.gc_interval = s.gc_interval.unwrap_or(c.storage.gc_interval);
        c
    }
}

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
    /// Download one URL through the P2P network (example: `shoal get https://host/obj -O obj`; also
    /// `hf://org/model/file` and `oci://registry/repo@sha256:...`).
    Get(GetArgs),
    /// Fetch URLs into the daemon's cache ahead of demand, reporting each (example:
    /// `shoal preheat hf://org/model/model.safetensors oci://ghcr.io/org/app@sha256:...`).
    Preheat(PreheatArgs),
    /// Add a local file to the daemon's cache as a verified task named by its sha256, so peers can take it
    /// without the origin (example: `shoal import model.bin --digest sha256:...`).
    Import(ImportArgs),
    /// List the tasks a running daemon has cached (example: `shoal ls`).
    Ls(LsArgs),
    /// Show one cached task by ID or unique prefix (example: `shoal stat 3f2a9c0d`).
    Stat(StatArgs),
    /// Check or print the configuration file (example: `shoal config check /etc/shoal/shoal.yaml`).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Cluster secrets (example: `shoal secret generate > /etc/shoal/cluster.secret`).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Git LFS: Shoal as git-lfs's transfer agent, no per-host set-up (example: `shoal lfs install --global`).
    #[command(subcommand)]
    Lfs(LfsCommand),
    /// The certificate authority for TLS interception (`proxy.intercept`) (example: `shoal ca init`).
    #[command(subcommand)]
    Ca(CaCommand),
}

/// Which git configuration file `shoal lfs install` and `uninstall` edit.
#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct GitScope {
    /// The current repository's .git/config.
    #[arg(long)]
    pub local: bool,
    /// The user's ~/.gitconfig (the default).
    #[arg(long)]
    pub global: bool,
    /// The system's /etc/gitconfig.
    #[arg(long)]
    pub system: bool,
}

#[derive(Subcommand, Debug)]
pub enum LfsCommand {
    /// Make git-lfs download and upload every object through `shoal lfs agent` (writes git config).
    Install {
        #[command(flatten)]
        scope: GitScope,
        /// Objects git-lfs hands the agent at once (lfs.concurrenttransfers, unless already set).
        #[arg(long, default_value_t = 8)]
        concurrency: u32,
        /// The daemon's proxy address, when not the default (written into the agent's arguments).
        #[arg(long)]
        daemon: Option<String>,
    },
    /// Remove exactly the git config `shoal lfs install` wrote.
    Uninstall {
        #[command(flatten)]
        scope: GitScope,
    },
    /// The transfer agent itself; git-lfs runs it (JSON lines on stdin and stdout).
    Agent(LfsAgentArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LfsAgentArgs {
    /// The daemon's proxy address; when nothing listens there, downloads run in this process.
    #[arg(long, default_value = "127.0.0.1:65001", env = "SHOAL_DAEMON")]
    pub daemon: String,
    /// Cache directory of the in-process engine used when no daemon runs (default: the daemon's data dir).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Give up on one object after this long.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create the interception CA (key 0600) and print how to make clients trust it.
    Init {
        /// Where to write ca.crt and ca.key [default: <data dir>/ca].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing CA (clients that trusted the old one stop trusting the daemon).
        #[arg(long)]
        force: bool,
    },
}

/// Where `ls` and `stat` find the daemon.
#[derive(Args, Debug, Clone)]
pub struct DaemonEndpoint {
    /// The daemon's metrics address [default: the config file's metrics.addr, else 127.0.0.1:65003].
    #[arg(long, env = "SHOAL_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The daemon's configuration file (to find its metrics address).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON (the daemon's /tasks answer) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct LsArgs {
    #[command(flatten)]
    pub daemon: DaemonEndpoint,
}

#[derive(Args, Debug, Clone)]
pub struct StatArgs {
    /// Task ID (64 hex digits) or a unique prefix of at least 4, as `shoal ls` shows.
    pub task: String,
    #[command(flatten)]
    pub daemon: DaemonEndpoint,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file; prints the first error with its key path (example: `shoal config check shoal.yaml`).
    Check { file: PathBuf },
    /// Print the full commented default configuration (example: `shoal config default > shoal.yaml`).
    Default,
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// YAML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where task files live (default: $XDG_DATA_HOME/shoal, or /var/lib/shoal as root).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP forward-proxy address for git and other clients [default: 127.0.0.1:65001].
    #[arg(long)]
    pub proxy_addr: Option<SocketAddr>,
    /// Address the upload server (pieces to peers) listens on [default: 0.0.0.0:65002].
    #[arg(long)]
    pub upload_addr: Option<SocketAddr>,
    /// Prometheus metrics and health endpoints [default: 127.0.0.1:65003].
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// A URL regex (matched without the query) whose GETs go P2P, tried before the config file's rules and
    /// the built-in digest rules; repeatable (example: `--rule '^https?://cdn\.example\.com/'`).
    #[arg(long = "rule")]
    pub rules: Vec<String>,
    /// Proxy clients: a request head must arrive within this, idle keep-alive connections close after it,
    /// and a client that accepts no response bytes for this long is disconnected [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub proxy_client_timeout: Option<Duration>,
    /// On SIGTERM, how long responses in flight may finish before they are closed [default: 20s].
    #[arg(long, value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Scheduler addresses, comma separated; none means an embedded scheduler (single-node mode).
    #[arg(long, value_delimiter = ',')]
    pub scheduler: Vec<String>,
    /// File holding the cluster secret (`cluster.secret_file`); required with --scheduler.
    #[arg(long, env = "SHOAL_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
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
    /// Worker threads, one runtime each (0 = one per CPU) [default: 0].
    #[arg(long)]
    pub workers: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct StorageArgs {
    /// Piece I/O engine: auto (probe io_uring, fall back to pread/pwrite), uring, or sync [default: auto].
    #[arg(long, env = "SHOAL_IO_ENGINE")]
    pub io_engine: Option<IoEngineChoice>,
    /// Disk quota for task files, e.g. 50GiB (default: the file system, GC above 80% used).
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Evict tasks not read for this long, e.g. 30d, 12h (0s disables) [default: 30d].
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// How often GC runs [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub gc_interval: Option<Duration>,
}

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Address to listen on [default: 0.0.0.0:8002].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where /metrics and /healthz answer [default: 127.0.0.1:8004].
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// YAML configuration file (its `scheduler.listen`, `scheduler.metrics`, `scheduler.fan_out`,
    /// `scheduler.tree_parents` and `cluster.secret_file`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// File holding the cluster secret every member must prove (required; `shoal secret generate`).
    #[arg(long, env = "SHOAL_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Print a new random cluster secret (64 hex digits), e.g. `shoal secret generate > cluster.secret`.
    Generate,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The file.
    pub file: PathBuf,
    /// Its expected digest, sha256:<64 hex>; the import fails on a mismatch.
    #[arg(long)]
    pub digest: Option<String>,
    /// The daemon's proxy address.
    #[arg(long, default_value = "127.0.0.1:65001", env = "SHOAL_DAEMON")]
    pub daemon: String,
    /// Give up after this long.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct PreheatArgs {
    /// The URLs (http, https, hf://, oci://).
    #[arg(required = true)]
    pub urls: Vec<String>,
    /// The daemon's proxy address; when nothing listens there, the objects go into this machine's cache
    /// in-process.
    #[arg(long, default_value = "127.0.0.1:65001", env = "SHOAL_DAEMON")]
    pub daemon: String,
    /// Extra request header for the origins, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Give up on one URL after this long.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// The URL to download.
    pub url: String,
    /// Where to write the content (it appears only once complete and verified).
    #[arg(short = 'O', long = "output")]
    pub output: PathBuf,
    /// The daemon's proxy address; when nothing listens there, the download runs in this process.
    #[arg(long, default_value = "127.0.0.1:65001", env = "SHOAL_DAEMON")]
    pub daemon: String,
    /// Cache directory of the in-process engine used when no daemon runs (default: the daemon's data dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Expected content digest, sha256:<64 hex>; the download fails on a mismatch.
    #[arg(long)]
    pub digest: Option<String>,
    /// Extra request header for the origin, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// A query parameter that does not name the content (a signature, a token): left out of the task ID,
    /// so other URLs for the same object share the download (repeatable; the built-in list always applies).
    #[arg(long = "filtered-query-param")]
    pub filtered_query_params: Vec<String>,
    /// Give up after this long.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub timeout: Duration,
}
