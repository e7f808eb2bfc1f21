//! Where a remote's LFS API is, as git-lfs finds it: `remote.<name>.lfsurl`, then `lfs.url` (git config
//! first, then the repository's `.lfsconfig`: the work tree's file, else the index's, else HEAD's),
//! else derived from the remote's URL (`<url>.git/info/lfs`; an ssh remote maps to https on the same host
//! and authenticates with `git-lfs-authenticate`).

use std::process::Command;

use super::LfsError;

/// The LFS API of a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The API base (`.../info/lfs`), https or http.
    pub url: String,
    /// For ssh remotes: whom to ask for the API's credentials.
    pub ssh: Option<SshTarget>,
}

/// An ssh remote, for `ssh [-p port] user@host git-lfs-authenticate <path> <operation>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    /// `user@host` or `host`.
    pub login: String,
    pub port: Option<u16>,
    pub path: String,
}

/// Reads one key with `git config`; `file` reads a file, `blob` a blob (`:.lfsconfig`).
fn config_get(key: &str, source: Option<(&str, &str)>) -> Option<String> {
    let mut c = Command::new("git");
    c.arg("config");
    if let Some((how, what)) = source {
        c.arg(how).arg(what);
    }
    let out = c.args(["--get", key]).stderr(std::process::Stdio::null()).output().ok()?;
    let v = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// A key from git config, else from the repository's `.lfsconfig` (where git-lfs reads it too).
pub fn lfs_config(key: &str) -> Option<String> {
    if let Some(v) = config_get(key, None) {
        return Some(v);
    }
    let top = Command::new("git").args(["rev-parse", "--show-toplevel"]).output().ok()?;
    let top = String::from_utf8(top.stdout).ok()?.trim().to_owned();
    let file = std::path::Path::new(&top).join(".lfsconfig");
    if !top.is_empty() && file.is_file() {
        return config_get(key, Some(("--file", &file.to_string_lossy())));
    }
    // A clone's first checkout runs the agent before the work tree has the file.
    config_get(key, Some(("--blob", ":.lfsconfig"))).or_else(|| config_get(key, Some(("--blob", "HEAD:.lfsconfig"))))
}

/// The endpoint for `remote` (a remote's name, or a URL as `git lfs` accepts).
pub fn resolve(remote: &str) -> Result<Endpoint, LfsError> {
    let name = if remote.is_empty() { "origin" } else { remote };
    let explicit = lfs_config(&format!("remote.{name}.lfsurl")).or_else(|| lfs_config("lfs.url"));
    if let Some(url) = explicit {
        return from_url(&url, false);
    }
    let url = if name.contains("://") || name.contains('@') {
        name.to_owned()
    } else {
        config_get(&format!("remote.{name}.url"), None).ok_or_else(|| LfsError::NoEndpoint(name.to_owned()))?
    };
    from_url(&url, true)
}

/// An endpoint from a URL: an API URL as given (`lfs.url`), or a remote's URL (`derive`).
pub fn from_url(url: &str, derive: bool) -> Result<Endpoint, LfsError> {
    let bad = || LfsError::NoEndpoint(url.to_owned());
    if let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad());
        }
        let url = url.trim_end_matches('/');
        let url = if !derive {
            url.to_owned()
        } else if url.ends_with(".git") {
            format!("{url}/info/lfs")
        } else {
            format!("{url}.git/info/lfs")
        };
        return Ok(Endpoint { url, ssh: None });
    }
    let ssh = ssh_target(url).ok_or_else(bad)?;
    let host = ssh.login.rsplit('@').next().unwrap_or(&ssh.login);
    let path = ssh.path.trim_start_matches('/').trim_end_matches('/');
    let path = if path.ends_with(".git") { path.to_owned() } else { format!("{path}.git") };
    Ok(Endpoint { url: format!("https://{host}/{path}/info/lfs"), ssh: Some(ssh) })
}

/// `ssh://[user@]host[:port]/path` or scp-like `[user@]host:path`.
fn ssh_target(url: &str) -> Option<SshTarget> {
    if let Some(rest) = url.strip_prefix("ssh://").or_else(|| url.strip_prefix("git+ssh://")) {
        let (authority, path) = rest.split_once('/')?;
        let (login, port) = match authority.rsplit_once(':') {
            Some((l, p)) => (l, Some(p.parse().ok()?)),
            None => (authority, None),
        };
        return valid(login, &format!("/{path}")).then(|| SshTarget {
            login: login.into(),
            port,
            path: format!("/{path}"),
        });
    }
    if url.contains("://") {
        return None;
    }
    let (login, path) = url.split_once(':')?;
    valid(login, path).then(|| SshTarget { login: login.into(), port: None, path: path.into() })
}

/// A login and path safe to hand to ssh as arguments (never an option, never empty).
fn valid(login: &str, path: &str) -> bool {
    let ok = |s: &str| !s.is_empty() && !s.starts_with('-') && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    ok(login) && ok(path) && !login.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_api_from_a_remote_url_as_git_lfs_does() {
        let e = |u: &str| from_url(u, true).unwrap();
        assert_eq!(e("https://git.example/org/repo").url, "https://git.example/org/repo.git/info/lfs");
        assert_eq!(e("https://git.example/org/repo.git/").url, "https://git.example/org/repo.git/info/lfs");
        let s = e("git@git.example:org/repo.git");
        assert_eq!(s.url, "https://git.example/org/repo.git/info/lfs");
        assert_eq!(s.ssh, Some(SshTarget { login: "git@git.example".into(), port: None, path: "org/repo.git".into() }));
        let s = e("ssh://git@git.example:2222/org/repo");
        assert_eq!(s.url, "https://git.example/org/repo.git/info/lfs");
        assert_eq!(s.ssh.unwrap().port, Some(2222));
        assert_eq!(from_url("https://lfs.example/api/", false).unwrap().url, "https://lfs.example/api");
    }

    #[test]
    fn refuses_what_is_not_an_lfs_remote() {
        for u in ["", "file:///srv/repo.git", "/srv/repo.git", "https://", "-oProxyCommand=x:repo", "h:", "a b:c"] {
            assert!(from_url(u, true).is_err(), "{u}");
        }
    }
}
