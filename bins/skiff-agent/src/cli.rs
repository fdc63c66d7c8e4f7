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
    /// Run the proxy from an Envoy bootstrap file.
    Proxy(proxy::cli::ProxyArgs),
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
