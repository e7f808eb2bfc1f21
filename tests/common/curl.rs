//! `curl` through a Shoal proxy, with the status, headers and body it got.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

/// What curl got: status, headers (lowercased names) and body.
pub struct Got {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `curl` through `proxy` with `args`; the body goes to a file in `dir`, headers are parsed from `-D`.
pub fn curl(proxy: SocketAddr, dir: &Path, args: &[&str]) -> Got {
    let body = dir.join(format!("body-{}", rand::random::<u64>()));
    let head = dir.join(format!("head-{}", rand::random::<u64>()));
    let o: Output = Command::new("curl")
        .args(["-sS", "--max-time", "120", "--noproxy", "", "-x", &format!("http://{proxy}")])
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("curl runs");
    let raw = std::fs::read_to_string(&head).unwrap_or_default();
    // With a CONNECT tunnel, -D holds the proxy's 200 first: the last response block is the one that counts.
    let last = raw.trim_end().rsplit("\r\n\r\n").next().unwrap_or("").to_owned();
    let mut lines = last.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Got {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}
