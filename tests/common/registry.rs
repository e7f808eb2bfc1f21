//! A real registry (Debian's docker-registry, distribution 2.8) over TLS with htpasswd auth, images
//! pushed to it with skopeo from an OCI layout written here (no docker engine), and skopeo pulls
//! through a `registries.conf` mirror (the Shoal daemon's proxy port).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::cluster::{free_addr, Proc};
use super::lfs::test_ca;

pub const USER: &str = "shoal";
pub const PASSWORD: &str = "registry-password";

pub struct Registry {
    pub proc: Proc,
    /// `127.0.0.x:port`.
    pub addr: String,
    /// A directory holding the registry's CA as `ca.crt` (skopeo's --*-cert-dir).
    pub cert_dir: PathBuf,
    /// The CA as a PEM file (the daemon's upstream.ca_file).
    pub ca: PathBuf,
}

/// One pushed image: the manifest's digest and each blob (config first, then layers) as (digest, size).
pub struct Image {
    pub manifest: String,
    pub blobs: Vec<(String, usize)>,
}

impl Registry {
    /// docker-registry on `ip`, TLS with a fresh test CA, htpasswd auth for [`USER`]/[`PASSWORD`].
    pub fn start(dir: &Path, ip: &str) -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(bin.exists(), "docker-registry missing: run scripts/install-test-deps.sh");
        let port = free_addr(ip).port();
        let tls = dir.join("registry-tls");
        let ca = test_ca(&tls, &[ip]);
        let cert_dir = dir.join("registry-certs");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::copy(&ca, cert_dir.join("ca.crt")).unwrap();
        let hash = bcrypt::hash(PASSWORD, 4).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("{USER}:{hash}\n")).unwrap();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n  tls:\n    certificate: {}\n    key: {}\n\
                 auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                dir.join("registry-data").display(),
                tls.join("cert.pem").display(),
                tls.join("key.pem").display(),
                dir.join("htpasswd").display()
            ),
        )
        .unwrap();
        // The access log goes to stdout, which Proc drops: onto stderr, where Proc keeps lines.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("exec \"$0\" serve \"$1\" 1>&2").arg(bin).arg(&config);
        let proc = Proc::spawn("docker-registry", cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { proc, addr: format!("{ip}:{port}"), cert_dir, ca }
    }

    /// Blob GETs the registry answered with content (200, or a 206 of more than the one byte an
    /// authorization probe asks for) or with a redirect: each one a blob leaving it.
    pub fn blob_gets(&self) -> usize {
        let log = self.proc.log.lock().unwrap();
        let leaves = |l: &&String| {
            let Some((_, after)) = l.split_once("\" ") else { return false };
            let mut f = after.split_whitespace();
            match (f.next(), f.next().and_then(|n| n.parse::<u64>().ok())) {
                (Some("200") | Some("206"), Some(n)) => n > 1,
                (Some("307"), _) => true,
                _ => false,
            }
        };
        log.iter().filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:")).filter(leaves).count()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(super::sha256(b))
}

fn run(mut c: Command, what: &str) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Writes an OCI image layout under `dir` with one gzip'd tar layer per entry of `layers` and pushes it
/// to `reg` as `repo_tag` with skopeo.
pub fn push_image(reg: &Registry, dir: &Path, repo_tag: &str, layers: &[Vec<u8>]) -> Image {
    let layout = dir.join(format!("oci-{}", repo_tag.replace([':', '/'], "-")));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = sha256_hex(b);
        std::fs::write(blobs.join(&d), b).unwrap();
        (format!("sha256:{d}"), b.len())
    };
    let (mut diff_ids, mut descs) = (Vec::new(), Vec::new());
    for (i, content) in layers.iter().enumerate() {
        let src = dir.join(format!("layer-src-{i}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(format!("file{i}.bin")), content).unwrap();
        let tar = dir.join(format!("layer-{i}.tar"));
        let mut c = Command::new("tar");
        c.args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-cf"]).arg(&tar).arg("-C").arg(&src).arg(".");
        run(c, "tar");
        let raw = std::fs::read(&tar).unwrap();
        diff_ids.push(format!("\"sha256:{}\"", sha256_hex(&raw)));
        let mut c = Command::new("gzip");
        c.args(["-n", "-1", "-f"]).arg(&tar);
        run(c, "gzip");
        descs.push(put(&std::fs::read(dir.join(format!("layer-{i}.tar.gz"))).unwrap()));
    }
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        diff_ids.join(",")
    );
    let cfg = put(config.as_bytes());
    let layer_json: Vec<String> = descs
        .iter()
        .map(|(d, n)| {
            format!("{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"{d}\",\"size\":{n}}}")
        })
        .collect();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\
         \"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":{}}},\"layers\":[{}]}}",
        cfg.0,
        cfg.1,
        layer_json.join(",")
    );
    let man = put(manifest.as_bytes());
    std::fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
    std::fs::write(
        layout.join("index.json"),
        format!(
            "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"digest\":\"{}\",\"size\":{},\"annotations\":{{\"org.opencontainers.image.ref.name\":\"latest\"}}}}]}}",
            man.0, man.1
        ),
    )
    .unwrap();
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "copy", "-q", "--dest-cert-dir"])
        .arg(&reg.cert_dir)
        .args(["--dest-creds", &format!("{USER}:{PASSWORD}")])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}/{repo_tag}", reg.addr));
    run(c, "skopeo copy (push)");
    let mut blobs = vec![cfg];
    blobs.extend(descs);
    Image { manifest: man.0, blobs }
}

/// `skopeo copy docker://<reg>/<repo_tag> dir:<dest>`, through the mirror at `mirror` (host:port) when
/// given (a registries.conf naming it for the registry), with `creds` (user, password).
pub fn skopeo_pull(
    reg: &Registry,
    repo_tag: &str,
    dest: &Path,
    mirror: Option<&str>,
    creds: Option<(&str, &str)>,
) -> Output {
    let conf = dest.with_extension("registries.conf");
    let mut text = format!("unqualified-search-registries = []\n[[registry]]\nlocation = \"{}\"\n", reg.addr);
    if let Some(m) = mirror {
        text.push_str(&format!("[[registry.mirror]]\nlocation = \"{m}\"\ninsecure = true\n"));
    }
    std::fs::write(&conf, text).unwrap();
    let mut c = Command::new("skopeo");
    c.args(["--insecure-policy", "--registries-conf"])
        .arg(&conf)
        .args(["copy", "-q", "--src-cert-dir"])
        .arg(&reg.cert_dir);
    // skopeo sends a mirror only the credentials stored for the mirror's own address (never the
    // registry's): a user logs in to both, as `skopeo login` would store them.
    let auth = dest.with_extension("auth.json");
    let entry = |u: &str, p: &str| {
        use base64::Engine;
        format!("{{\"auth\":\"{}\"}}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
    };
    let entries = match creds {
        Some((u, p)) => {
            let mut e = vec![format!("\"{}\":{}", reg.addr, entry(u, p))];
            if let Some(m) = mirror {
                e.push(format!("\"{m}\":{}", entry(u, p)));
            }
            e.join(",")
        }
        None => String::new(),
    };
    std::fs::write(&auth, format!("{{\"auths\":{{{entries}}}}}")).unwrap();
    c.env("REGISTRY_AUTH_FILE", &auth);
    c.arg(format!("docker://{}/{repo_tag}", reg.addr)).arg(format!("dir:{}", dest.display()));
    c.env("HOME", dest.with_extension("home"));
    c.output().unwrap()
}

/// Checks that `dest` (a skopeo `dir:` copy) holds every blob of `img` with the right digest.
pub fn check_pulled(dest: &Path, img: &Image) {
    for (d, n) in &img.blobs {
        let hexd = d.trim_start_matches("sha256:");
        let b = std::fs::read(dest.join(hexd)).unwrap_or_else(|e| panic!("{d} missing in {}: {e}", dest.display()));
        assert_eq!((b.len(), sha256_hex(&b).as_str()), (*n, hexd), "{d}");
    }
}

/// A containerd of its own (root, state and socket under a test directory), for `ctr` pulls.
pub struct Containerd {
    pub proc: Proc,
    pub socket: PathBuf,
    pub root: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        assert!(Path::new("/usr/bin/containerd").exists(), "containerd missing: run scripts/install-test-deps.sh");
        std::fs::create_dir_all(dir).unwrap();
        let (root, socket) = (dir.join("root"), dir.join("containerd.sock"));
        let config = dir.join("config.toml");
        // Content only: no CRI, no snapshotters that need kernel features.
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \
                 \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
                 \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n[grpc]\n  \
                 address = \"{}\"\n",
                root.display(),
                dir.join("state").display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/bin/containerd");
        cmd.arg("--config").arg(&config);
        let proc = Proc::spawn("containerd", cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { proc, socket, root }
    }

    /// `ctr content fetch` of `repo_tag` from `reg` with a hosts.toml that sends pulls to the mirror at
    /// `mirror` (host:port, plain HTTP; containerd adds `?ns=<registry>` to mirror requests).
    pub fn fetch_via_mirror(
        &self,
        reg: &Registry,
        repo_tag: &str,
        mirror: &str,
        creds: Option<(&str, &str)>,
    ) -> Output {
        let hosts = self.root.with_extension("hosts.d").join(&reg.addr);
        std::fs::create_dir_all(&hosts).unwrap();
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"https://{}\"\nca = \"{}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                reg.addr,
                reg.ca.display()
            ),
        )
        .unwrap();
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address").arg(&self.socket).args(["content", "fetch", "--hosts-dir"]).arg(hosts.parent().unwrap());
        if let Some((u, p)) = creds {
            c.args(["--user", &format!("{u}:{p}")]);
        }
        c.arg(format!("{}/{repo_tag}", reg.addr)).output().unwrap()
    }

    /// Checks that the content store holds every blob of `img` with the right digest.
    pub fn check_content(&self, img: &Image) {
        let store = self.root.join("io.containerd.content.v1.content/blobs/sha256");
        for (d, n) in &img.blobs {
            let hexd = d.trim_start_matches("sha256:");
            let b = std::fs::read(store.join(hexd)).unwrap_or_else(|e| panic!("{d} not in containerd's store: {e}"));
            assert_eq!((b.len(), sha256_hex(&b).as_str()), (*n, hexd), "{d}");
        }
    }
}
