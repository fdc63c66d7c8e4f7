//! `skiffd`: the control plane. Serves xDS to the sidecars from a registry (`--config-dir`), and
//! the injection webhook when given a certificate.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

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

#[cfg(feature = "kubernetes")]
async fn kubernetes_source() -> anyhow::Result<Box<dyn pilot::registry::Source>> {
    let source = pilot::registry::kube::KubeSource::from_environment()
        .await
        .context("cannot reach the Kubernetes API server (in-cluster config or kubeconfig)")?;
    tracing::info!("registry: Kubernetes API server");
    Ok(Box::new(source))
}

#[cfg(not(feature = "kubernetes"))]
async fn kubernetes_source() -> anyhow::Result<Box<dyn pilot::registry::Source>> {
    anyhow::bail!("--kubernetes: this skiffd was built without it; rebuild with `--features kubernetes`")
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let webhook = match (&cli.webhook.cert, &cli.webhook.key) {
        (Some(cert), Some(key)) => {
            Some(inject::server::WebhookServer::bind(cli.webhook.addr, cert, key, cli.injection).await?)
        }
        _ => None,
    };
    let d = &cli.discovery;
    let source: Option<Box<dyn pilot::registry::Source>> = match (&d.config_dir, d.kubernetes) {
        (Some(dir), _) => {
            tracing::info!(dir = %dir.display(), "registry: config directory");
            Some(Box::new(pilot::registry::dir::ConfigDir::new(
                dir,
                Duration::from_millis(d.poll_ms.max(10)),
            )))
        }
        (None, true) => Some(kubernetes_source().await?),
        (None, false) => None,
    };
    let mut mesh = match &d.mesh_config {
        Some(path) => {
            let loaded = pilot::mesh::load(path).context("--mesh-config")?;
            if !loaded.ignored.is_empty() {
                tracing::info!(ignored = ?loaded.ignored, "mesh config fields Skiff does not apply");
            }
            tracing::info!(path = %path.display(), outbound = ?loaded.mesh.outbound_traffic_policy, "mesh config");
            loaded.mesh
        }
        None => pilot::gen::MeshConfig::default(),
    };
    if d.access_log_file.is_some() {
        mesh.access_log_file = d.access_log_file.clone();
    }
    let control_plane = match source {
        Some(source) => {
            let config = pilot::app::Config {
                xds_addr: d.xds_addr,
                monitoring_addr: d.monitoring_addr,
                mesh,
                debounce: xds::server::Debounce {
                    quiet: d.debounce_after,
                    max: d.debounce_max,
                    endpoints: d.eds_debounce,
                },
            };
            let cp = pilot::app::ControlPlane::start(config, source).await?;
            tracing::info!(xds = %cp.xds_addr, monitoring = %cp.monitoring_addr, "discovery serving");
            Some(cp)
        }
        None => None,
    };
    if webhook.is_none() && control_plane.is_none() {
        anyhow::bail!(
            "nothing to serve: pass --config-dir DIR (or --kubernetes) for xDS, and/or --webhook-cert and --webhook-key for the injection webhook"
        );
    }
    match webhook {
        Some(server) => {
            let addr = server.local_addr().context("cannot read the webhook's address")?;
            tracing::info!(%addr, "webhook listening");
            server.run(shutdown_signal()).await;
        }
        None => shutdown_signal().await,
    }
    drop(control_plane);
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
