//! Command line of `skiffctl`. Subcommands mirror istioctl's names so muscle memory carries over.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "skiffctl",
    version,
    about = "Skiff's command line: inject sidecars, generate the install"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A proxy's configuration as istioctl shows it: listeners, routes, clusters, endpoints, ….
    #[command(name = "proxy-config", visible_alias = "pc")]
    ProxyConfig(crate::proxy_cmd::ProxyConfigCmd),
    /// Each proxy's xDS sync state with the control plane (CDS, LDS, EDS, RDS, ECDS).
    #[command(name = "proxy-status", visible_alias = "ps")]
    ProxyStatus(crate::proxy_cmd::ProxyStatus),
    /// Inject the sidecar into the workloads of Kubernetes manifests (as `istioctl kube-inject`).
    #[command(name = "kube-inject")]
    KubeInject(KubeInject),
    /// Kubernetes install manifests.
    #[command(subcommand)]
    Manifest(Manifest),
    /// The local mesh: run manifests as a sidecar mesh of network namespaces on this machine.
    #[command(subcommand)]
    Local(crate::local_cmd::Local),
    /// Run the seed's sidecar walkthrough on this machine and show one request's path hop by hop.
    Demo(crate::local_cmd::Demo),
    /// Analyze Istio configuration in manifests and print validation messages (as `istioctl analyze`).
    Analyze(crate::analyze_cmd::Analyze),
}

#[derive(Args, Debug)]
pub struct KubeInject {
    /// Manifest file to read, `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub filename: PathBuf,
    /// Write the injected manifests here instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: inject::Settings,
}

#[derive(Subcommand, Debug)]
pub enum Manifest {
    /// Print the install: Namespace, CRDs, RBAC, skiffd Deployment and Service, injection webhooks.
    Generate(Generate),
}

#[derive(Args, Debug)]
pub struct Generate {
    /// PEM file of the CA that signed skiffd's webhook certificate, embedded as the webhooks' caBundle.
    #[arg(long = "ca-bundle")]
    pub ca_bundle: Option<PathBuf>,
    #[command(flatten)]
    pub settings: inject::Settings,
}
