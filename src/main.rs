//! The `shoal` binary: parses the command line, sets up logging, runs one command. The only place that
//! turns typed errors into a one-line message and an exit code.

use std::process::ExitCode;

use clap::Parser;
use shoal::cli::{Cli, Command};
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

fn get(a: shoal::cli::GetArgs) -> anyhow::Result<()> {
    let o = shoal::cli::get::GetOptions {
        url: a.url,
        output: a.output,
        daemon: a.daemon,
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
        Command::Daemon(a) => {
            let mut store = StoreConfig::new(a.data_dir.clone().unwrap_or_else(daemon::default_data_dir));
            store.io_engine = a.storage.io_engine;
            store.quota_bytes = a.storage.quota;
            store.ttl = (!a.storage.ttl.is_zero()).then_some(a.storage.ttl);
            if a.config.is_some() {
                tracing::warn!("--config is not read yet (the YAML config arrives with the operability issue)");
            }
            let rules = a
                .rules
                .iter()
                .map(|r| shoal::proxy::rules::Rule::new(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{e}"));
            let rules = match rules {
                Ok(r) => shoal::proxy::rules::Rules::with_defaults(r),
                Err(e) => {
                    eprintln!("shoal: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let cfg = DaemonConfig {
                store,
                workers: a.workers,
                gc_interval: a.storage.gc_interval,
                proxy_addr: a.proxy_addr,
                upload_addr: a.upload_addr,
                schedulers: a.scheduler.clone(),
                seed: a.seed,
                advertise_ip: a.advertise_ip,
                upload_rate: a.upload_rate,
                engine: Default::default(),
                proxy: shoal::proxy::server::ProxyConfig {
                    rules,
                    zero_copy: a.proxy_zero_copy,
                    header_read_timeout: a.proxy_client_timeout,
                    ..Default::default()
                },
            };
            daemon::run(cfg).map_err(Into::into)
        }
        Command::Scheduler(a) => {
            shoal::scheduler::run_standalone(a.listen, shoal::scheduler::ServerConfig::default()).map_err(Into::into)
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
