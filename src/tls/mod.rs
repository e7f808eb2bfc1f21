//! Certificates for TLS interception: the daemon's own CA and the short-lived leaf certificates it issues
//! for intercepted hosts.
//!
//! Owns: creating the CA (`shoal ca init`: `ca.crt`, and `ca.key` created 0600) and loading it back
//! (ca.rs), issuing one leaf per host and keeping a bounded cache of the TLS server settings that present
//! it (leaf.rs). Never: writes the CA key anywhere but its file, logs key material, or decides which
//! hosts are intercepted (the proxy does). Called by: the proxy (intercept.rs) and main.rs (`shoal ca`).

pub mod ca;
mod error;
pub mod leaf;

use std::path::Path;

pub use ca::{Ca, Created, CERT_FILE, KEY_FILE};
pub use error::TlsError;
pub use leaf::Leaves;

/// What `shoal ca init` prints after creating the CA whose certificate is `cert`: how each kind of client
/// comes to trust it.
pub fn trust_instructions(cert: &Path) -> String {
    let c = cert.display();
    format!(
        "Created the interception CA: {c} (certificate) and its key beside it (mode 0600; keep it there).\n\
         \n\
         Clients of intercepted hosts must trust {c}:\n\
         \x20 system store (Debian, Ubuntu):  sudo cp {c} /usr/local/share/ca-certificates/shoal-ca.crt && \
         sudo update-ca-certificates\n\
         \x20 git and git-lfs:                GIT_SSL_CAINFO=<a bundle holding it> (git-lfs reads only this)\n\
         \x20 Python requests, huggingface:   REQUESTS_CA_BUNDLE=<a bundle holding it>\n\
         \x20 OpenSSL-based tools:            SSL_CERT_FILE=<a bundle holding it>\n\
         A bundle holding it, with the system's roots: cat /etc/ssl/certs/ca-certificates.crt {c} > bundle.pem\n\
         \n\
         Then list the hosts in the daemon's proxy.intercept (and proxy.intercept_ca if this directory is not\n\
         <data_dir>/ca), restart it, and point clients at it: https_proxy=http://127.0.0.1:65001\n"
    )
}
