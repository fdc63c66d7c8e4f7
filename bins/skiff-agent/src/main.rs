//! `skiff-agent`: the binary that runs in every pod (init container and sidecar).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    telemetry::init(&cli.log.output_level, cli.log.as_json);
    match cli.command {
        cli::Command::Iptables(flags) => ExitCode::from(capture::cmd::run(&flags)),
        cli::Command::Proxy(cmd) => ExitCode::from(match cmd.mode {
            None => proxy::cli::run(&cmd.file),
            Some(cli::ProxyMode::Sidecar(a)) => proxy::sidecar::run(proxy::sidecar::NodeType::Sidecar, &a),
            Some(cli::ProxyMode::Router(a)) => proxy::sidecar::run(proxy::sidecar::NodeType::Router, &a),
        }),
        cli::Command::Wait(w) => ExitCode::from(proxy::sidecar::wait(
            &w.url,
            std::time::Duration::from_secs(w.timeout_seconds),
            std::time::Duration::from_millis(w.period_millis),
            std::time::Duration::from_millis(w.request_timeout_millis),
        )),
        cli::Command::DemoApp(args) => ExitCode::from(demo_app::run(&args)),
    }
}
