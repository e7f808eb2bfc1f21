//! git-lfs's custom transfer protocol: one JSON object a line on the agent's stdin (init, download,
//! upload, terminate) and stdout (the init answer, progress, complete). Parsing never panics and bounds
//! what it accepts: an oid is 64 lowercase hex digits before it names any file, a line is at most
//! [`MAX_LINE`] bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The longest request line accepted (a request carries an oid, a size, a path and an action's headers).
pub const MAX_LINE: usize = 1 << 20;

/// Which way the agent moves objects, from the init message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Download,
    Upload,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Download => "download",
            Operation::Upload => "upload",
        }
    }
}

/// An action the batch API returned (git-lfs passes null to a standalone agent).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Action {
    pub href: String,
    #[serde(default)]
    pub header: BTreeMap<String, String>,
}

/// One message from git-lfs.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Request {
    Init {
        operation: Operation,
        /// The remote's name (or URL) git-lfs works against.
        #[serde(default)]
        remote: String,
        #[serde(default)]
        concurrent: bool,
        #[serde(default)]
        concurrenttransfers: u32,
    },
    Download {
        oid: String,
        size: u64,
        #[serde(default)]
        action: Option<Action>,
    },
    Upload {
        oid: String,
        size: u64,
        path: PathBuf,
        #[serde(default)]
        action: Option<Action>,
    },
    Terminate,
}

/// Why a line is not a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("a message line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("a message that is not a transfer request: {0}")]
    Malformed(String),
    #[error("an oid that is not 64 lowercase hex digits")]
    BadOid,
}

/// Parses one line from git-lfs.
pub fn parse(line: &str) -> Result<Request, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    let r: Request = serde_json::from_str(line.trim()).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    match &r {
        Request::Download { oid, .. } | Request::Upload { oid, .. } if !valid_oid(oid) => Err(ProtocolError::BadOid),
        _ => Ok(r),
    }
}

/// A sha256 oid as git-lfs writes them: it becomes part of file names, so nothing else passes.
pub fn valid_oid(oid: &str) -> bool {
    oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An error git-lfs shows for one object (`code` is an HTTP status where a server gave one).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WireError {
    pub code: u16,
    pub message: String,
}

/// One message to git-lfs.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply<'a> {
    /// The answer to init: `{}` or `{"error":...}`.
    Init {
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
    Progress {
        event: &'static str,
        oid: &'a str,
        #[serde(rename = "bytesSoFar")]
        so_far: u64,
        #[serde(rename = "bytesSinceLast")]
        since_last: u64,
    },
    Complete {
        event: &'static str,
        oid: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
}

impl<'a> Reply<'a> {
    pub fn progress(oid: &'a str, so_far: u64, since_last: u64) -> Self {
        Reply::Progress { event: "progress", oid, so_far, since_last }
    }

    pub fn done(oid: &'a str, path: Option<String>) -> Self {
        Reply::Complete { event: "complete", oid, path, error: None }
    }

    pub fn failed(oid: &'a str, error: WireError) -> Self {
        Reply::Complete { event: "complete", oid, path: None, error: Some(error) }
    }

    /// The line to write (JSON and a newline).
    pub fn line(&self) -> String {
        // Serialising these plain structs cannot fail; an empty object is still a valid answer.
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OID: &str = "22ab5f63670800cc7be06dbed816012b0dc411e774754c7579467d2536a9cf3e";

    #[test]
    fn parses_what_git_lfs_sends() {
        let init =
            r#"{"event":"init","operation":"download","remote":"origin","concurrent":true,"concurrenttransfers":8}"#;
        assert_eq!(
            parse(init).unwrap(),
            Request::Init {
                operation: Operation::Download,
                remote: "origin".into(),
                concurrent: true,
                concurrenttransfers: 8
            }
        );
        let dl = format!(r#"{{"event":"download","oid":"{OID}","size":21245,"action":null}}"#);
        assert_eq!(parse(&dl).unwrap(), Request::Download { oid: OID.into(), size: 21245, action: None });
        let up = format!(
            r#"{{"event":"upload","oid":"{OID}","size":3,"path":"/tmp/x","action":{{"href":"https://h/o","header":{{"A":"b"}}}}}}"#
        );
        let Request::Upload { action: Some(a), path, .. } = parse(&up).unwrap() else { panic!("not an upload") };
        assert_eq!((a.href.as_str(), a.header["A"].as_str(), path), ("https://h/o", "b", PathBuf::from("/tmp/x")));
        assert_eq!(parse(r#"{"event":"terminate"}"#).unwrap(), Request::Terminate);
    }

    #[test]
    fn refuses_oids_that_could_name_other_files() {
        for oid in ["../../etc/passwd", &OID.to_uppercase(), &OID[1..], "", &format!("{OID}0")] {
            let l = format!(r#"{{"event":"download","oid":"{oid}","size":1}}"#);
            assert_eq!(parse(&l), Err(ProtocolError::BadOid), "{oid}");
        }
    }

    #[test]
    fn replies_are_single_lines_git_lfs_reads() {
        assert_eq!(Reply::Init { error: None }.line(), "{}\n");
        assert_eq!(
            Reply::progress(OID, 10, 4).line(),
            format!("{{\"event\":\"progress\",\"oid\":\"{OID}\",\"bytesSoFar\":10,\"bytesSinceLast\":4}}\n")
        );
        let e = Reply::failed(OID, WireError { code: 404, message: "gone\nreally".into() }).line();
        assert_eq!(e.matches('\n').count(), 1, "{e}");
        assert!(e.contains("\"code\":404"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(line in ".{0,300}") {
            let _ = parse(&line);
        }

        #[test]
        fn never_panics_on_near_requests(ev in "(init|download|upload|terminate|x)", oid in "[0-9a-fA-F./]{0,70}",
                                         size in any::<i64>()) {
            let _ = parse(&format!(r#"{{"event":"{ev}","oid":"{oid}","size":{size},"operation":"upload","path":"p"}}"#));
        }
    }
}
