//! Real `shoal` processes for multi-process tests: schedulers and daemons on 127.0.0.x addresses, and
//! `shoal get` runs. Every process is killed when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// A free TCP port on `ip` (bound and released; the process binds it right after).
pub fn free_addr(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

/// `N` distinct free TCP ports on `ip`: all are held until the last is found. One [`free_addr`] after
/// another can hand out the same port twice, and the daemon's listeners (SO_REUSEPORT) would then share
/// it, its proxy answering some connections meant for its upload server.
pub fn free_addrs<const N: usize>(ip: &str) -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> = (0..N).map(|_| std::net::TcpListener::bind((ip, 0)).unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// A running process whose stderr lines are kept for assertions and for failure reports.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped()).env("SHOAL_LOG", "info,shoal=debug");
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc { name: name.to_owned(), child, log }
    }

    /// Waits (bounded) until a log line contains `needle`.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.dump();
        panic!("{}: never logged {needle:?}", self.name);
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn dump(&self) {
        for l in self.log.lock().unwrap().iter() {
            eprintln!("[{}] {l}", self.name);
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of a child we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the process to exit by itself; `None` if it is still running at the bound.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        self.kill();
    }
}

pub struct Scheduler {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// The cluster secret the schedulers and daemons of one test binary share.
pub const SECRET: &str = "shoal-tests-cluster-secret-0123456789abcdef";

/// A file holding [`SECRET`], for `--cluster-secret-file`.
pub fn secret_file() -> &'static Path {
    static F: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let p = std::env::temp_dir().join(format!("shoal-test-secret-{}", std::process::id()));
        std::fs::write(&p, SECRET).unwrap();
        p
    })
}

pub fn scheduler(ip: &str) -> Scheduler {
    let addr = free_addr(ip);
    let mut cmd = shoal();
    cmd.args(["scheduler", "--listen", &addr.to_string(), "--metrics-addr", "127.0.0.1:0"])
        .arg("--cluster-secret-file")
        .arg(secret_file());
    let proc = Proc::spawn(&format!("scheduler@{addr}"), cmd);
    proc.wait_for("scheduler listening", Duration::from_secs(20));
    Scheduler { proc, addr }
}

pub struct Daemon {
    pub proc: Proc,
    pub proxy: SocketAddr,
    pub upload: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
}

pub fn daemon(ip: &str, schedulers: &[SocketAddr], seed: bool, data_dir: &Path) -> Daemon {
    daemon_with(ip, schedulers, seed, data_dir, "")
}

/// A daemon whose config file holds `yaml` (flags still set the addresses).
pub fn daemon_with(ip: &str, schedulers: &[SocketAddr], seed: bool, data_dir: &Path, yaml: &str) -> Daemon {
    daemon_env(ip, schedulers, seed, data_dir, yaml, &[])
}

/// [`daemon_with`] with extra environment (e.g. `SSL_CERT_FILE` naming a test origin's CA).
pub fn daemon_env(
    ip: &str,
    schedulers: &[SocketAddr],
    seed: bool,
    data_dir: &Path,
    yaml: &str,
    env: &[(&str, &Path)],
) -> Daemon {
    let [proxy, upload, metrics] = free_addrs::<3>(ip);
    let mut cmd = shoal();
    cmd.args(["daemon", "--workers", "1", "--proxy-addr", &proxy.to_string(), "--upload-addr", &upload.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .arg("--data-dir")
        .arg(data_dir);
    if !yaml.is_empty() {
        std::fs::create_dir_all(data_dir).unwrap();
        let file = data_dir.join("shoal.yaml");
        std::fs::write(&file, yaml).unwrap();
        cmd.arg("--config").arg(file);
    }
    if !schedulers.is_empty() {
        let list: Vec<String> = schedulers.iter().map(|a| a.to_string()).collect();
        cmd.args(["--scheduler", &list.join(",")]).arg("--cluster-secret-file").arg(secret_file());
    }
    if seed {
        cmd.arg("--seed");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let name = format!("{}@{ip}", if seed { "seed" } else { "peer" });
    let proc = Proc::spawn(&name, cmd);
    proc.wait_for("daemon started", Duration::from_secs(20));
    Daemon { proc, proxy, upload, metrics, data_dir: data_dir.to_owned() }
}

/// Runs `shoal get` through a daemon; returns (success, stderr).
pub fn get(d: &Daemon, url: &str, out: &Path, digest: Option<&str>) -> (bool, String) {
    get_via(d.proxy, url, out, digest)
}

/// [`get`] through the daemon whose proxy listens on `proxy`.
pub fn get_via(proxy: SocketAddr, url: &str, out: &Path, digest: Option<&str>) -> (bool, String) {
    let mut cmd = shoal();
    cmd.args(["get", url, "--daemon", &proxy.to_string(), "--timeout", "120s", "-O"]).arg(out);
    if let Some(dg) = digest {
        cmd.args(["--digest", dg]);
    }
    let o = cmd.output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Files under a daemon's task directory (what it has cached).
pub fn cached_files(data_dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(data_dir.join("tasks")) else { return 0 };
    shards.flatten().filter_map(|s| std::fs::read_dir(s.path()).ok()).map(|d| d.count()).sum()
}

/// A plain HTTP/1.0 GET (for the metrics endpoint): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
