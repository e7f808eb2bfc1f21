//! A real Git LFS server (giftless under gunicorn, installed by scripts/install-test-deps.sh) and a git
//! repository whose LFS objects live on it, for end-to-end tests with the real git + git-lfs clients.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{free_addr, Proc};

pub const TOOLS: &str = "/opt/shoal-test-tools";
/// git-lfs never proxies loopback literals or `localhost`: the origin needs a name (set-up adds it to
/// /etc/hosts, pointing at 127.0.0.2).
pub const LFS_HOST: &str = "lfs-origin.test";

pub struct Giftless {
    pub proc: Proc,
    pub port: u16,
    pub access_log: PathBuf,
    /// With HTTPS: the test CA that signed the server's certificate (PEM), for GIT_SSL_CAINFO and the
    /// daemon's upstream bundle.
    pub ca: Option<PathBuf>,
}

/// A throwaway CA and a server certificate for `hosts` signed by it, written as `ca.pem`, `cert.pem`
/// and `key.pem` under `dir`. Returns the CA's path.
pub fn test_ca(dir: &Path, hosts: &[&str]) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "shoal test origin CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

impl Giftless {
    /// Starts giftless on 127.0.0.2 with local storage under `dir`.
    pub fn start(dir: &Path) -> Giftless {
        Self::start_with(dir, None, false)
    }

    /// [`Giftless::start_https`] that serves only requests carrying a token ([`Giftless::token`]): as a
    /// Bearer header or as Basic `_jwt:<token>`, the way git's credential helpers hand it over.
    pub fn start_https_private(dir: &Path) -> Giftless {
        let tls = dir.join("origin-tls");
        test_ca(&tls, &[LFS_HOST]);
        Self::start_with(dir, Some(&tls), true)
    }

    /// A token giftless accepts for everything under shoal/test (HS256 with its key).
    pub fn token() -> String {
        let py = Path::new(TOOLS).join("giftless-venv/bin/python");
        let script = "import jwt; print(jwt.encode({'sub': 'tester', 'scopes': 'obj:shoal/test/*'}, \
                      'shoal-test-key', algorithm='HS256'))";
        let o = Command::new(py).args(["-c", script]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    }

    /// Starts giftless over HTTPS on 127.0.0.2 (`LFS_HOST`), its certificate signed by a fresh test CA
    /// (`ca`).
    pub fn start_https(dir: &Path) -> Giftless {
        let tls = dir.join("origin-tls");
        test_ca(&tls, &[LFS_HOST]);
        Self::start_with(dir, Some(&tls), false)
    }

    fn start_with(dir: &Path, tls: Option<&Path>, private: bool) -> Giftless {
        let gunicorn = Path::new(TOOLS).join("giftless-venv/bin/gunicorn");
        assert!(gunicorn.exists(), "{} missing: run scripts/install-test-deps.sh", gunicorn.display());
        let resolves = std::net::ToSocketAddrs::to_socket_addrs(&(LFS_HOST, 80)).map(|mut a| a.next().is_some());
        assert!(matches!(resolves, Ok(true)), "{LFS_HOST} does not resolve: run scripts/install-test-deps.sh");
        let port = free_addr("127.0.0.2").port();
        let storage = dir.join("lfs-storage");
        std::fs::create_dir_all(&storage).unwrap();
        let config = dir.join("giftless.yaml");
        let auth = if private {
            "factory: giftless.auth.jwt:factory\n    options:\n      algorithm: HS256\n      private_key: shoal-test-key"
        } else {
            "giftless.auth.allow_anon:read_write"
        };
        // Action JWTs must outlive the advertised expires_in (900 s), or downloads get 401s.
        std::fs::write(
            &config,
            format!(
                "AUTH_PROVIDERS:\n  - {}\n\
                 TRANSFER_ADAPTERS:\n  basic:\n    factory: giftless.transfer.basic_streaming:factory\n    options:\n      \
                 storage_class: giftless.storage.local_storage:LocalStorage\n      storage_options:\n        path: {}\n      \
                 action_lifetime: 900\n\
                 PRE_AUTHORIZED_ACTION_PROVIDER:\n  factory: giftless.auth.jwt:factory\n  options:\n    algorithm: HS256\n    \
                 private_key: shoal-test-key\n    default_lifetime: 900\n",
                auth,
                storage.display()
            ),
        )
        .unwrap();
        let access_log = dir.join("giftless-access.log");
        let mut cmd = Command::new(gunicorn);
        cmd.args(["--no-control-socket", "-w", "2", "-b", &format!("127.0.0.2:{port}")])
            .arg("--access-logfile")
            .arg(&access_log);
        if let Some(t) = tls {
            cmd.arg("--certfile").arg(t.join("cert.pem")).arg("--keyfile").arg(t.join("key.pem"));
        }
        cmd.arg("giftless.wsgi_entrypoint:app").env("GIFTLESS_CONFIG_FILE", &config).current_dir(dir);
        let proc = Proc::spawn("giftless", cmd);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
            assert!(Instant::now() < deadline, "giftless did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Giftless { proc, port, access_log, ca: tls.map(|t| t.join("ca.pem")) }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{LFS_HOST}:{}/shoal/test", self.port)
    }

    /// Object downloads the server has answered (GETs of object storage URLs).
    pub fn object_gets(&self) -> usize {
        self.object_requests("GET")
    }

    /// Object requests with `method` the server has answered.
    pub fn object_requests(&self, method: &str) -> usize {
        let log = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        let m = format!("\"{method} ");
        log.lines().filter(|l| l.contains(&m) && l.contains("/objects/storage/")).count()
    }
}

/// git with a private global config (git-lfs installed into it) and no system config.
pub fn git(home: &Path) -> Command {
    let mut c = Command::new("git");
    c.env("HOME", home)
        .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("GIT_SSL_CAINFO")
        .stdin(Stdio::null());
    c
}

/// `git(home)` trusting `server`'s test CA (git-lfs reads GIT_SSL_CAINFO and nothing else).
pub fn git_for(home: &Path, server: &Giftless) -> Command {
    let mut c = git(home);
    if let Some(ca) = &server.ca {
        c.env("GIT_SSL_CAINFO", ca);
    }
    c
}

pub fn run(mut c: Command, what: &str) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fresh HOME with git identity and `git lfs install` done.
pub fn git_home(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(".gitconfig"), "[user]\n\tname = Shoal Test\n\temail = test@shoal.invalid\n").unwrap();
    run(
        {
            let mut c = git(dir);
            c.args(["lfs", "install", "--skip-repo"]);
            c
        },
        "git lfs install",
    );
    dir.to_owned()
}

/// Creates a bare repository at `bare` whose LFS objects (`files`: name → bytes) live on `server`.
pub fn publish(home: &Path, work: &Path, bare: &Path, server: &Giftless, files: &[(&str, Vec<u8>)]) {
    run(
        {
            let mut c = git(home);
            c.arg("init").arg("-q").arg("-b").arg("main").arg(work);
            c
        },
        "git init",
    );
    let g = |args: &[&str]| {
        let mut c = git_for(home, server);
        c.current_dir(work).args(args);
        c
    };
    run(g(&["lfs", "track", "*.bin"]), "git lfs track");
    std::fs::write(work.join(".lfsconfig"), format!("[lfs]\n\turl = {}\n", server.url())).unwrap();
    for (name, bytes) in files {
        std::fs::write(work.join(name), bytes).unwrap();
    }
    run(g(&["add", "-A"]), "git add");
    run(g(&["commit", "-q", "-m", "LFS objects"]), "git commit");
    run(
        {
            let mut c = git(home);
            c.args(["init", "-q", "--bare", "-b", "main"]).arg(bare);
            c
        },
        "git init --bare",
    );
    run(g(&["remote", "add", "origin", &bare.to_string_lossy()]), "git remote add");
    // Straight to the LFS server: no proxy while publishing.
    run(g(&["push", "-q", "origin", "main"]), "git push");
}

/// Clones `bare` into `dest` with every LFS request going through the proxy at `proxy`, configured as
/// the seed article does.
pub fn clone_through(home: &Path, proxy: std::net::SocketAddr, bare: &Path, dest: &Path) -> String {
    let mut c = git(home);
    c.args(["-c", &format!("http.proxy=http://{proxy}"), "-c", "lfs.transfer.enablehrefrewrite=true", "clone", "-q"])
        .arg(format!("file://{}", bare.display()))
        .arg(dest);
    run(c, "git clone through the proxy")
}
