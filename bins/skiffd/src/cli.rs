//! Command line of `skiffd`. Flags are grouped by server so xDS can add its own group.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser};

#[derive(Parser, Debug)]
#[command(
    name = "skiffd",
    version,
    about = "Skiff's control plane: service registry and xDS (ADS) for the sidecars, and the injection webhook"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogFlags,
    #[command(flatten)]
    pub discovery: DiscoveryFlags,
    #[command(flatten)]
    pub webhook: WebhookFlags,
    /// What injected pods get (image, revision, mesh defaults).
    #[command(flatten)]
    pub injection: inject::Settings,
}

#[derive(Args, Debug)]
pub struct DiscoveryFlags {
    /// A directory of Kubernetes manifests (Namespace, Service, Endpoints, EndpointSlice, Pod,
    /// Deployment, Istio kinds), watched for changes: the service registry.
    #[arg(long = "config-dir", conflicts_with = "kubernetes")]
    pub config_dir: Option<PathBuf>,
    /// Watch a Kubernetes API server instead (in-cluster config or kubeconfig, as kubectl finds
    /// it). Needs a build with `--features kubernetes`.
    #[arg(long = "kubernetes")]
    pub kubernetes: bool,
    /// How often the config directory is checked for changes, in milliseconds.
    #[arg(long = "config-poll-ms", default_value_t = 500)]
    pub poll_ms: u64,
    /// Address of the plaintext xDS (ADS gRPC) server.
    #[arg(long = "xds-addr", default_value = "0.0.0.0:15010")]
    pub xds_addr: SocketAddr,
    /// Address of `/metrics`, `/ready` and `/debug/syncz`.
    #[arg(long = "monitoring-addr", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    /// Mesh `accessLogFile` for the sidecars (e.g. /dev/stdout); none by default, as in Istio.
    /// Overrides the mesh config's.
    #[arg(long = "access-log-file")]
    pub access_log_file: Option<String>,
    /// Istio MeshConfig YAML (what istiod reads from the `istio` ConfigMap's `mesh` key):
    /// `outboundTrafficPolicy.mode` (ALLOW_ANY | REGISTRY_ONLY), `accessLogFile`,
    /// `connectTimeout`, `dnsRefreshRate`, `defaultHttpRetryPolicy`; other fields are accepted and
    /// listed as ignored.
    #[arg(long = "mesh-config", alias = "meshConfig")]
    pub mesh_config: Option<PathBuf>,
    /// Quiet period before a push: changes arriving within it are merged (istiod's
    /// `PILOT_DEBOUNCE_AFTER`, a Go duration).
    #[arg(long = "debounce-after", env = "PILOT_DEBOUNCE_AFTER", default_value = "100ms", value_parser = api::duration::parse)]
    pub debounce_after: std::time::Duration,
    /// Longest a push waits while changes keep arriving (`PILOT_DEBOUNCE_MAX`).
    #[arg(long = "debounce-max", env = "PILOT_DEBOUNCE_MAX", default_value = "1s", value_parser = api::duration::parse)]
    pub debounce_max: std::time::Duration,
    /// Whether endpoint-only pushes are debounced too (Istio's `PILOT_ENABLE_EDS_DEBOUNCE`).
    /// `false` sends them at once.
    #[arg(long = "eds-debounce", env = "PILOT_ENABLE_EDS_DEBOUNCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub eds_debounce: bool,
}

#[derive(Args, Debug)]
pub struct WebhookFlags {
    /// Address of the HTTPS injection webhook (`POST /inject`).
    #[arg(long = "webhook-addr", default_value = "0.0.0.0:15017")]
    pub addr: SocketAddr,
    /// PEM certificate chain the webhook serves; re-read when the file changes.
    #[arg(long = "webhook-cert", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--webhook-cert`.
    #[arg(long = "webhook-key", id = "key", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// Istio's logging flags.
#[derive(Args, Debug)]
pub struct LogFlags {
    /// Istio scope levels, e.g. `default:info,inject:debug`.
    #[arg(long = "log_output_level", default_value = "default:info")]
    pub output_level: String,
    /// Log as JSON lines.
    #[arg(long = "log_as_json")]
    pub as_json: bool,
}
