//! Command line of `skiff-agent`.

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "skiff-agent",
    version,
    about = "Skiff's pod-side agent: traffic capture and the sidecar proxy"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Install the istio-iptables capture rules (flag-compatible with `istio-iptables`).
    #[command(
        name = "iptables",
        visible_alias = "istio-iptables",
        args_override_self = true
    )]
    Iptables(Box<capture::IptablesFlags>),
    /// Run the proxy: from an Envoy bootstrap file (`-c FILE`), or programmed over xDS as a
    /// mesh `sidecar` or gateway (`router`), as `pilot-agent proxy` is.
    Proxy(Box<ProxyCommand>),
    /// Wait until the local proxy reports ready (`pilot-agent wait`): the injected postStart
    /// hook that holds the app until the sidecar can carry its traffic.
    Wait(WaitArgs),
    /// A small HTTP/1.1 + h2c demo app (nginx-style access log, httpbin-style paths), run by the
    /// local mesh where a pod's image would be nginx or a demo server.
    #[command(name = "demo-app")]
    DemoApp(demo_app::DemoAppArgs),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProxyCommand {
    #[command(subcommand)]
    pub mode: Option<ProxyMode>,
    #[command(flatten)]
    pub file: proxy::cli::ProxyArgs,
}

#[derive(Subcommand, Debug)]
pub enum ProxyMode {
    /// A mesh sidecar: identity from the pod, configuration from the xDS server.
    Sidecar(proxy::sidecar::SidecarArgs),
    /// A gateway (Istio's `router` proxy type).
    Router(proxy::sidecar::SidecarArgs),
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Readiness URL to poll.
    #[arg(long, default_value = "http://localhost:15020/healthz/ready")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long = "timeoutSeconds", default_value_t = 60)]
    pub timeout_seconds: u64,
    /// Time between polls, in milliseconds.
    #[arg(long = "periodMillis", default_value_t = 500)]
    pub period_millis: u64,
    /// Per-request timeout, in milliseconds.
    #[arg(long = "requestTimeoutMillis", default_value_t = 500)]
    pub request_timeout_millis: u64,
}

/// Istio's logging flags, accepted by every subcommand (the injector passes them).
#[derive(Args, Debug)]
pub struct LogFlags {
    /// Istio scope levels, e.g. `default:info,ads:debug`.
    #[arg(long = "log_output_level", global = true, default_value = "default:info")]
    pub output_level: String,
    /// Log as JSON lines.
    #[arg(long = "log_as_json", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = capture::flags::parse_go_bool, default_value = "false")]
    pub as_json: bool,
    /// Accepted for compatibility with Istio's flags; Skiff logs to stderr.
    #[arg(long = "log_target", global = true, hide = true)]
    pub target: Option<String>,
    #[arg(long = "log_caller", global = true, hide = true)]
    pub caller: Option<String>,
    #[arg(long = "log_stacktrace_level", global = true, hide = true)]
    pub stacktrace_level: Option<String>,
}
