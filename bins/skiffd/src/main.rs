//! `skiffd`: the control plane. Today it serves the injection webhook; xDS joins it later.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let (Some(cert), Some(key)) = (&cli.webhook.cert, &cli.webhook.key) else {
        anyhow::bail!("nothing to serve: pass --webhook-cert and --webhook-key to run the injection webhook");
    };
    let server = inject::server::WebhookServer::bind(cli.webhook.addr, cert, key, cli.injection).await?;
    let addr = server.local_addr().context("cannot read the webhook's address")?;
    tracing::info!(%addr, "webhook listening");
    server.run(shutdown_signal()).await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    telemetry::init(&cli.log.output_level, cli.log.as_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
