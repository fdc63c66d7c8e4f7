//! `skiff-agent`: the binary that runs in every pod (init container and sidecar).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    telemetry::init(&cli.log.output_level, cli.log.as_json);
    match cli.command {
        cli::Command::Iptables(flags) => ExitCode::from(capture::cmd::run(&flags)),
        cli::Command::Proxy(args) => ExitCode::from(proxy::cli::run(&args)),
    }
}
