//! `shoal lfs install` and `uninstall`: the git config that makes git-lfs use the agent for every remote,
//! written to one config file, and removed again key by key, exactly what was written: a
//! `lfs.concurrenttransfers` the user had set is left alone, and so is another standalone agent.

use std::path::Path;
use std::process::Command;

use super::LfsError;

/// The agent's name in git config (`lfs.customtransfer.shoal.*`).
const NAME: &str = "shoal";

/// Which git config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Local,
    Global,
    System,
}

impl Scope {
    fn flag(self) -> &'static str {
        match self {
            Scope::Local => "--local",
            Scope::Global => "--global",
            Scope::System => "--system",
        }
    }
}

fn git_config(scope: Scope, args: &[&str]) -> Result<Option<String>, LfsError> {
    let out = Command::new("git")
        .arg("config")
        .arg(scope.flag())
        .args(args)
        .output()
        .map_err(|e| LfsError::GitConfig(format!("running git: {e}")))?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())),
        // 1: the key or section is not there; 5: nothing to unset.
        Some(1) | Some(5) => Ok(None),
        _ => Err(LfsError::GitConfig(String::from_utf8_lossy(&out.stderr).trim().to_owned())),
    }
}

fn set(scope: Scope, key: &str, value: &str) -> Result<(), LfsError> {
    git_config(scope, &[key, value]).map(|_| ())
}

/// Writes the agent's config; returns the keys written, for the user.
pub fn install(scope: Scope, exe: &Path, concurrency: u32, daemon: Option<&str>) -> Result<Vec<String>, LfsError> {
    let agent_key = "lfs.standalonetransferagent";
    match git_config(scope, &["--get", agent_key])? {
        Some(v) if v != NAME => return Err(LfsError::OtherAgent(v)),
        _ => {}
    }
    let mut args = "lfs agent".to_owned();
    if let Some(d) = daemon {
        args.push_str(&format!(" --daemon {d}"));
    }
    let exe = exe.to_string_lossy();
    let mut written = Vec::new();
    for (k, v) in [
        (format!("lfs.customtransfer.{NAME}.path"), exe.as_ref()),
        (format!("lfs.customtransfer.{NAME}.args"), args.as_str()),
        (format!("lfs.customtransfer.{NAME}.concurrent"), "true"),
        (agent_key.to_owned(), NAME),
    ] {
        set(scope, &k, v)?;
        written.push(format!("{k}={v}"));
    }
    // One agent process per concurrent transfer; the user's own setting wins, and is remembered as theirs.
    let conc = "lfs.concurrenttransfers";
    let marker = format!("lfs.customtransfer.{NAME}.setconcurrenttransfers");
    if git_config(scope, &["--get", conc])?.is_none() || git_config(scope, &["--get", &marker])?.is_some() {
        let n = concurrency.max(1).to_string();
        set(scope, conc, &n)?;
        set(scope, &marker, &n)?;
        written.push(format!("{conc}={n}"));
    }
    Ok(written)
}

/// Removes what `install` wrote to `scope`; returns the keys removed.
pub fn uninstall(scope: Scope) -> Result<Vec<String>, LfsError> {
    let mut removed = Vec::new();
    let agent_key = "lfs.standalonetransferagent";
    if git_config(scope, &["--get", agent_key])?.as_deref() == Some(NAME) {
        git_config(scope, &["--unset", agent_key])?;
        removed.push(agent_key.to_owned());
    }
    let conc = "lfs.concurrenttransfers";
    let ours = git_config(scope, &["--get", &format!("lfs.customtransfer.{NAME}.setconcurrenttransfers")])?;
    if ours.is_some() && git_config(scope, &["--get", conc])? == ours {
        git_config(scope, &["--unset", conc])?;
        removed.push(conc.to_owned());
    }
    let section = format!("lfs.customtransfer.{NAME}");
    if git_config(scope, &["--get-regexp", &format!("^{}\\.", section.replace('.', "\\."))])?.is_some() {
        git_config(scope, &["--remove-section", &section])?;
        removed.push(section);
    }
    Ok(removed)
}
