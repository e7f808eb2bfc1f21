//! Typed errors of the TLS subsystem.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: pass --force to replace the CA (clients that trust the old one stop trusting the daemon)")]
    Exists { path: PathBuf },
    #[error("{path}: not a usable private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: not a usable CA certificate: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("{path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("{dir}: a certificate signed with ca.key does not verify against ca.crt: {reason}")]
    Mismatch { dir: PathBuf, reason: String },
    #[error("generating the CA: {0}")]
    Generate(String),
    #[error("issuing a certificate for {host}: {reason}")]
    Issue { host: String, reason: String },
}
