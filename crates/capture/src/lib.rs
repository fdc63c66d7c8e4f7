//! Traffic capture for Skiff's sidecars, compatible with Istio's `istio-iptables`: the rules that
//! send every TCP connection into and out of a pod through the proxy (outbound to 15001, inbound
//! to 15006), generated from a [`CaptureConfig`] as pure data, applied atomically per table,
//! validated, and removed again.
//!
//! Data flows `flags` → [`CaptureConfig`] → [`generate::rules`] → [`RuleSet`] → [`apply`].

pub mod apply;
pub mod backend;
pub mod cmd;
pub mod config;
pub mod exec;
pub mod flags;
pub mod generate;
pub mod original_dst;
pub mod rules;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use apply::{apply, cleanup, ApplyOptions, ApplyReport};
pub use config::{CaptureConfig, InboundPorts, InterceptionMode, OutboundRanges, OwnerGroups, PortSpec};
pub use exec::Exec;
pub use flags::IptablesFlags;
pub use generate::rules as generate;
pub use original_dst::original_dst;
pub use rules::{Family, Rule, RuleSet, Table};

/// Failure to apply or remove rules. Messages name the command and what iptables said.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot enter network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("cannot run {program}: {source} (is the iptables package installed?)")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("no usable {bin} found on PATH (install the iptables package)")]
    NoIptables { bin: String },
    #[error(
        "{family} already holds capture chains that differ from the requested rules ({}); \
         rerun with --reconcile to replace them, or --cleanup to remove them",
        chains.join(", ")
    )]
    Drift {
        family: &'static str,
        chains: Vec<String>,
    },
    #[error("applying {family} rules failed: {source}; rolled back: {}", if rolled_back.is_empty() { "nothing".to_string() } else { rolled_back.join(", ") })]
    Apply {
        family: &'static str,
        source: Box<ApplyError>,
        rolled_back: Vec<String>,
    },
    #[error("cannot remove chain {chain}: {reason}")]
    Cleanup { chain: String, reason: String },
    #[error("a worker thread panicked")]
    Panicked,
}

/// `--run-validation` failed: capture does not work in this namespace.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("no validation listener could be opened on ports {ports:?} (is a proxy already running?)")]
    NoListener { ports: Vec<u16> },
    #[error(
        "iptables validation failed; workload is not ready for Skiff: a connection to {target} as the \
         proxy user was not redirected to {listening:?} within {timeout:?} (are the capture rules applied \
         in this network namespace?)"
    )]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
        listening: Vec<SocketAddr>,
    },
    #[error("unknown proxy user or group {0:?}")]
    UnknownOwner(String),
}
