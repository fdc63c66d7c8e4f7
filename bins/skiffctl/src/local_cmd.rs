//! `skiffctl local …`: the local mesh (see the `local` crate).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum Local {
    /// Run the manifests in DIR as a sidecar mesh on this machine; returns once every pod is ready.
    /// Run it again with an edited DIR to apply the change.
    Up(Up),
    /// Stop the mesh and remove every namespace, veth, rule and process it made.
    Down(Name),
    /// Pods and services of the mesh.
    Status(Name),
    /// The ingress gateway's address on this host: `export INGRESS_HOST=$(skiffctl local ingress-host)`.
    IngressHost(Name),
    /// Run a command inside a pod (as `kubectl exec`).
    Exec(Exec),
    /// A container's output, the sidecar's access log included (`-c istio-proxy`).
    Logs(Logs),
    /// The mesh's daemon (started by `up`).
    #[command(hide = true)]
    Supervise(Name),
    /// The mesh's kube-dns (run by `up` in the kube-system/coredns pod).
    #[command(hide = true)]
    Dns(Dns),
}

#[derive(Args, Debug)]
pub struct Dns {
    /// The zone file the supervisor keeps up to date.
    #[arg(long)]
    pub zone: PathBuf,
    #[arg(long, default_value_t = 53)]
    pub port: u16,
}

/// `skiffctl demo`.
#[derive(Args, Debug)]
pub struct Demo {
    /// The sidecar proxy: `skiff`, or `envoy` to watch real Envoy carry the same request.
    #[arg(long, default_value = "skiff")]
    pub proxy: local::state::ProxyKind,
}

/// Runs the demo; a failure is reported after the mesh is torn down.
pub fn demo(d: Demo) -> Result<u8> {
    local::demo::run(d.proxy, &mut |line| println!("{line}"))?;
    Ok(0)
}

#[derive(Args, Debug)]
pub struct Name {
    /// The mesh's name: several meshes can run side by side.
    #[arg(long, default_value = "skiff")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct Up {
    /// Directory (or file) of Kubernetes manifests.
    #[arg(short = 'f', long = "filename")]
    pub filename: PathBuf,
    /// Namespace of objects that name none (as `kubectl apply -n`).
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// The sidecar proxy: `skiff`, or `envoy` to run real Envoy fed by the same skiffd
    /// (per pod: annotation `skiff.dev/proxy`).
    #[arg(long, default_value = "skiff")]
    pub proxy: local::state::ProxyKind,
    /// How long to wait for every pod to be ready, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub name: Name,
}

#[derive(Args, Debug)]
pub struct Exec {
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    /// Container whose user the command runs as (default: the app container).
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// `POD` or `deploy/NAME`.
    pub pod: String,
    /// The command, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub name: Name,
}

#[derive(Args, Debug)]
pub struct Logs {
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    pub namespace: String,
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// Keep printing new lines.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// `POD` or `deploy/NAME`.
    pub pod: String,
    #[command(flatten)]
    pub name: Name,
}

/// Runs the subcommand; returns the process exit code.
pub fn run(cmd: Local) -> Result<u8> {
    match cmd {
        Local::Up(u) => {
            let opts = local::ops::UpOptions {
                name: u.name.name.clone(),
                dir: u.filename,
                namespace: u.namespace,
                proxy: u.proxy,
                timeout: Duration::from_secs(u.timeout),
            };
            let st = local::ops::up(&opts, &mut |line| eprintln!("- {line}"))?;
            for n in &st.notes {
                eprintln!("note: {n}");
            }
            print!("{}", local::ops::status(&u.name.name)?);
            Ok(0)
        }
        Local::Down(n) => {
            local::ops::down(&n.name, &mut |line| eprintln!("- {line}"))?;
            Ok(0)
        }
        Local::Status(n) => {
            print!("{}", local::ops::status(&n.name)?);
            Ok(0)
        }
        Local::IngressHost(n) => {
            println!("{}", local::ops::ingress_host(&n.name)?);
            Ok(0)
        }
        Local::Exec(e) => {
            let code = local::ops::exec(
                &e.name.name,
                &e.namespace,
                &e.pod,
                e.container.as_deref(),
                &e.command,
            )?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Local::Logs(l) => {
            let mut out = std::io::stdout().lock();
            local::ops::logs(
                &l.name.name,
                &l.namespace,
                &l.pod,
                l.container.as_deref(),
                l.tail,
                l.follow,
                &mut out,
            )?;
            Ok(0)
        }
        Local::Dns(d) => {
            // hickory logs every query at info; the mesh wants warnings only.
            telemetry::init("default:warn", false);
            local::dns::serve(&d.zone, d.port)?;
            Ok(0)
        }
        Local::Supervise(n) => {
            telemetry::init("default:info", false);
            local::supervisor::Supervisor::new(&local::state::mesh_dir(&n.name))?.run()?;
            Ok(0)
        }
    }
}
