//! The `shoal` binary: parses the command line, sets up logging, runs one command. The only place that
//! turns typed errors into a one-line message and an exit code.

use std::process::ExitCode;

use clap::Parser;
use shoal::cli::{Cli, Command, ConfigCommand};
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
    let rules = a.rules.iter().map(|r| shoal::proxy::rules::Rule::new(r)).collect::<Result<Vec<_>, _>>()?;
    let rules = shoal::proxy::rules::Rules::with_defaults(rules);
    let mut store = StoreConfig::new(c.data_dir.clone().unwrap_or_else(daemon::default_data_dir));
    store.io_engine = c.storage.io_engine;
    store.quota_bytes = c.storage.quota;
    store.high_watermark = c.storage.high_watermark;
    store.low_watermark = c.storage.low_watermark;
    store.ttl = (!c.storage.ttl.is_zero()).then_some(c.storage.ttl);
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
        engine: c.engine_config(),
        proxy: shoal::proxy::server::ProxyConfig {
            rules,
            zero_copy: a.proxy_zero_copy,
            header_read_timeout: a.proxy_client_timeout,
            ..Default::default()
        },
    };
    daemon::run(cfg).map_err(Into::into)
}

fn scheduler_cmd(a: &shoal::cli::SchedulerArgs) -> anyhow::Result<()> {
    let c = load_config(a.config.as_deref())?;
    let listen = a.listen.unwrap_or(c.scheduler.listen);
    shoal::scheduler::run_standalone(listen, shoal::scheduler::ServerConfig::default()).map_err(Into::into)
}

fn get(a: shoal::cli::GetArgs) -> anyhow::Result<()> {
    let o = shoal::cli::get::GetOptions {
        url: a.url,
        output: a.output,
        daemon: a.daemon,
        data_dir: a.data_dir.unwrap_or_else(daemon::default_data_dir),
        digest: a.digest,
        headers: a.headers,
        timeout: a.timeout,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let r = rt.block_on(shoal::cli::get::run(&o))?;
    tracing::info!(bytes = r.bytes, source = %r.source, task = %r.task_id, "downloaded {}", o.output.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
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
        Command::Get(a) => get(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e:#}");
            ExitCode::FAILURE
        }
    }
}
