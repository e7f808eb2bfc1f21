//! The `shoal` binary: parses the command line, sets up logging, runs one command. The only place that
//! turns typed errors into a one-line message and an exit code.

use std::process::ExitCode;

use clap::Parser;
use shoal::cli::{Cli, Command, ConfigCommand, SecretCommand};
use shoal::config::Config;
use shoal::daemon::{self, DaemonConfig};
use shoal::storage::StoreConfig;

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs piped to files or collectors stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn daemon_cmd(a: &shoal::cli::DaemonArgs) -> anyhow::Result<()> {
    let c = a.merge(load_config(a.config.as_deref())?);
    let rules = c.proxy_rules().map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?;
    let destinations = c.destinations().map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?;
    let data_dir = c.data_dir.clone().unwrap_or_else(daemon::default_data_dir);
    let upstream_tls = c.upstream_tls().map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?;
    let intercept = c.intercept(&data_dir).map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?;
    let mut engine = c.engine_config(destinations.clone());
    engine.origin_tls = Some(upstream_tls.clone());
    let mut store = StoreConfig::new(data_dir);
    store.io_engine = c.storage.io_engine;
    store.ingest = c.storage.ingest;
    store.gc = c.gc_limits();
    let cfg = DaemonConfig {
        store,
        workers: c.workers,
        gc_interval: c.storage.gc_interval,
        proxy_addr: c.proxy.addr,
        upload_addr: c.upload.addr,
        metrics_addr: c.metrics.addr,
        schedulers: c.scheduler.addrs.clone(),
        seed: c.seed,
        advertise_ip: c.advertise_ip,
        upload_rate: c.upload.rate,
        engine,
        proxy: shoal::proxy::server::ProxyConfig {
            rules,
            destinations,
            header_read_timeout: c.proxy.client_timeout,
            max_connections: c.proxy.max_connections,
            allow_clients: std::sync::Arc::new(
                c.allow_clients().map_err(|(key, why)| anyhow::anyhow!("{key}: {why}"))?,
            ),
            intercept,
            upstream_tls: Some(upstream_tls),
            ..Default::default()
        },
        drain_timeout: c.proxy.drain_timeout,
        cluster_secret_file: c.cluster.secret_file.clone(),
    };
    let reload = a.config.clone().map(|path| {
        let (args, running) = (a.clone(), c.clone());
        Box::new(move || reload(&args, &path, &running)) as daemon::Reloader
    });
    daemon::run(cfg, reload).map_err(Into::into)
}

/// SIGHUP: the file again, with the same flags on top. Only rules and limits change; other keys are
/// reported as needing a restart.
fn reload(a: &shoal::cli::DaemonArgs, path: &std::path::Path, running: &Config) -> Result<daemon::Reload, String> {
    let c = a.merge(Config::load(path).map_err(|e| e.to_string())?);
    let rules = c.proxy_rules().map_err(|(key, why)| format!("{key}: {why}"))?;
    let restart: Vec<&str> = [
        ("data_dir", c.data_dir != running.data_dir),
        ("workers", c.workers != running.workers),
        ("seed", c.seed != running.seed),
        ("advertise_ip", c.advertise_ip != running.advertise_ip),
        ("proxy.addr", c.proxy.addr != running.proxy.addr),
        ("proxy.client_timeout", c.proxy.client_timeout != running.proxy.client_timeout),
        ("proxy.max_connections", c.proxy.max_connections != running.proxy.max_connections),
        ("upload.addr", c.upload.addr != running.upload.addr),
        ("metrics", c.metrics != running.metrics),
        ("scheduler", c.scheduler != running.scheduler),
        ("cluster.secret_file", c.cluster != running.cluster),
        ("storage.io_engine", c.storage.io_engine != running.storage.io_engine),
        ("storage.gc_interval", c.storage.gc_interval != running.storage.gc_interval),
        ("engine", c.engine != running.engine),
        ("proxy.deny_destinations", c.proxy.deny_destinations != running.proxy.deny_destinations),
        ("proxy.allow_destinations", c.proxy.allow_destinations != running.proxy.allow_destinations),
        ("proxy.connect_ports", c.proxy.connect_ports != running.proxy.connect_ports),
        ("proxy.allow_clients", c.proxy.allow_clients != running.proxy.allow_clients),
        ("proxy.intercept", c.proxy.intercept != running.proxy.intercept),
        ("proxy.intercept_ca", c.proxy.intercept_ca != running.proxy.intercept_ca),
        ("upstream.ca_file", c.upstream != running.upstream),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect();
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these changes take effect at the next start");
    }
    Ok(daemon::Reload { rules, upload_rate: c.upload.rate, gc: c.gc_limits(), drain_timeout: c.proxy.drain_timeout })
}

fn scheduler_cmd(a: &shoal::cli::SchedulerArgs) -> anyhow::Result<()> {
    let c = load_config(a.config.as_deref())?;
    let listen = a.listen.unwrap_or(c.scheduler.listen);
    let Some(path) = a.cluster_secret_file.clone().or(c.cluster.secret_file) else {
        anyhow::bail!(
            "a scheduler needs the cluster secret: --cluster-secret-file (or cluster.secret_file) naming a file \
             every daemon shares (`shoal secret generate` makes one)"
        );
    };
    let key = shoal::membership::ClusterKey::load(&path)?;
    let metrics_addr = Some(a.metrics_addr.unwrap_or(c.scheduler.metrics));
    let mut cfg = shoal::scheduler::ServerConfig { membership: Some(key), metrics_addr, ..Default::default() };
    cfg.state.fan_out = c.scheduler.fan_out;
    cfg.state.tree_parents = c.scheduler.tree_parents;
    shoal::scheduler::run_standalone(listen, cfg).map_err(Into::into)
}

fn get(a: shoal::cli::GetArgs) -> anyhow::Result<()> {
    let o = shoal::client::GetOptions {
        url: a.url,
        output: Some(a.output),
        daemon: a.daemon,
        data_dir: a.data_dir.unwrap_or_else(daemon::default_data_dir),
        digest: a.digest,
        headers: a.headers,
        filtered_query_params: a.filtered_query_params,
        timeout: a.timeout,
        progress: None,
        hash_here: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let r = rt.block_on(shoal::client::run(&o))?;
    let out = o.output.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    tracing::info!(bytes = r.bytes, source = %r.source, task = %r.task_id, "downloaded {out}");
    Ok(())
}

/// `shoal preheat URL...`: each URL through the daemon (or into the local cache), the bytes discarded.
fn preheat(a: shoal::cli::PreheatArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut failed = 0;
    for url in &a.urls {
        let o = shoal::client::GetOptions {
            url: url.clone(),
            output: None,
            daemon: a.daemon.clone(),
            data_dir: daemon::default_data_dir(),
            digest: None,
            headers: a.headers.clone(),
            filtered_query_params: Vec::new(),
            timeout: a.timeout,
            progress: None,
            hash_here: false,
        };
        match rt.block_on(shoal::client::run(&o)) {
            Ok(r) => println!("{url}: {} bytes from {} (task {})", r.bytes, r.source, r.task_id),
            Err(e) => {
                failed += 1;
                eprintln!("{url}: {e}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} URLs were not preheated", a.urls.len());
    }
    Ok(())
}

/// `shoal import FILE`: the file into the daemon's cache, verified, named by its sha256.
fn import(a: shoal::cli::ImportArgs) -> anyhow::Result<()> {
    let o = shoal::client::GetOptions {
        url: String::new(),
        output: None,
        daemon: a.daemon,
        data_dir: daemon::default_data_dir(),
        digest: None,
        headers: Vec::new(),
        filtered_query_params: Vec::new(),
        timeout: a.timeout,
        progress: None,
        hash_here: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let r = rt.block_on(shoal::client::import::import(a.file.clone(), a.digest, &o))?;
    println!("{}: imported {} bytes as task {}", a.file.display(), r.bytes, r.task_id);
    Ok(())
}

/// `shoal ls` (no key) and `shoal stat KEY`.
fn tasks_cmd(d: &shoal::cli::DaemonEndpoint, key: Option<&str>) -> anyhow::Result<()> {
    use shoal::cli::tasks;
    let addr = match d.metrics_addr {
        Some(a) => a,
        None => load_config(d.config.as_deref())?.metrics.addr,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let now = std::time::SystemTime::now();
    let out = match key {
        None => {
            let v = rt.block_on(tasks::list(addr))?;
            if d.json {
                serde_json::to_string_pretty(&v)? + "\n"
            } else {
                tasks::render_list(&v, now)
            }
        }
        Some(k) => {
            let t = rt.block_on(tasks::stat(addr, k))?;
            if d.json {
                serde_json::to_string_pretty(&t)? + "\n"
            } else {
                tasks::render_stat(&t, now)
            }
        }
    };
    print!("{out}");
    Ok(())
}

/// `shoal lfs install|uninstall|agent`.
fn lfs_cmd(c: shoal::cli::LfsCommand) -> anyhow::Result<()> {
    use shoal::cli::LfsCommand;
    match c {
        LfsCommand::Install { scope, concurrency, daemon } => {
            let exe = std::env::current_exe()?;
            for k in shoal::lfs::install(scope.scope(), &exe, concurrency, daemon.as_deref())? {
                println!("set {k}");
            }
            println!("git-lfs now moves every object through `shoal lfs agent` (`shoal lfs uninstall` undoes this)");
        }
        LfsCommand::Uninstall { scope } => {
            let removed = shoal::lfs::uninstall(scope.scope())?;
            if removed.is_empty() {
                println!("nothing of shoal's in that git config");
            }
            for k in removed {
                println!("removed {k}");
            }
        }
        LfsCommand::Agent(a) => {
            let o = shoal::lfs::AgentOptions {
                daemon: a.daemon,
                data_dir: a.data_dir.unwrap_or_else(daemon::default_data_dir),
                timeout: a.timeout,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let input = tokio::io::BufReader::new(tokio::io::stdin());
            let out = shoal::lfs::Out::new(Box::new(std::io::stdout()));
            rt.block_on(shoal::lfs::run_agent(&o, input, out))?;
        }
    }
    Ok(())
}

/// `shoal ca init`.
fn ca_cmd(c: shoal::cli::CaCommand) -> anyhow::Result<()> {
    let shoal::cli::CaCommand::Init { dir, force } = c;
    let dir = dir.unwrap_or_else(|| daemon::default_data_dir().join("ca"));
    let made = shoal::tls::ca::init(&dir, force)?;
    print!("{}", shoal::tls::trust_instructions(&made.cert));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    shoal::runtime::start_allocator();
    let r: anyhow::Result<()> = match cli.command {
        Command::Daemon(a) => daemon_cmd(&a),
        Command::Scheduler(a) => scheduler_cmd(&a),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", shoal::config::DEFAULT_YAML);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            Config::load(&file).map(|_| println!("{}: ok", file.display())).map_err(Into::into)
        }
        Command::Secret(SecretCommand::Generate) => {
            shoal::membership::generate_secret().map(|s| println!("{s}")).map_err(Into::into)
        }
        Command::Get(a) => get(a),
        Command::Preheat(a) => preheat(a),
        Command::Import(a) => import(a),
        Command::Lfs(c) => lfs_cmd(c),
        Command::Ca(c) => ca_cmd(c),
        Command::Ls(a) => tasks_cmd(&a.daemon, None),
        Command::Stat(a) => tasks_cmd(&a.daemon, Some(&a.task)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
