//! `skiffctl proxy-config …` and `skiffctl proxy-status`: istioctl's debugging views (rendered by
//! the `inspect` crate) over a saved dump, a pod of the local mesh, or — with the `kubernetes`
//! feature and `--kube` — a pod in a cluster. Flags, aliases and error words follow istioctl.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use inspect::cluster::ClusterFilter;
use inspect::endpoint::EndpointFilter;
use inspect::listener::ListenerFilter;
use inspect::route::RouteFilter;
use inspect::{ConfigDump, Output};

use crate::admin::{self, AdminSource, LocalFlags, LocalMesh, PodRef};

/// `proxy-config` with the flags istioctl accepts before or after the view name
/// (`istioctl proxy-config -n sidecar listener POD`).
#[derive(Args, Debug)]
pub struct ProxyConfigCmd {
    #[command(subcommand)]
    pub view: ProxyConfig,
    #[command(flatten)]
    pub common: Common,
}

/// Flags shared by every view.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The pod's namespace (default: the local mesh's `up -n`, or the kubeconfig's).
    #[arg(short = 'n', long = "namespace", global = true)]
    pub namespace: Option<String>,
    /// Output format: one of json|yaml|short (default short; json for bootstrap).
    #[arg(short = 'o', long = "output", global = true)]
    pub output: Option<String>,
    /// The proxy's admin port.
    #[arg(long = "proxy-admin-port", default_value_t = 15000, global = true)]
    pub proxy_admin_port: u16,
    /// Ask the proxy inside this network namespace (`/run/netns/NAME`) rather than looking the pod
    /// up in the local mesh's state.
    #[arg(long, global = true)]
    pub netns: Option<String>,
    /// The local mesh (`skiffctl local up --name`).
    #[arg(long, default_value = "skiff", global = true)]
    pub mesh: String,
    /// Reach the pod through the Kubernetes API server (current kubeconfig) with a port-forward.
    #[cfg(feature = "kubernetes")]
    #[arg(long, global = true)]
    pub kube: bool,
}

impl Common {
    fn kube(&self) -> bool {
        #[cfg(feature = "kubernetes")]
        return self.kube;
        #[cfg(not(feature = "kubernetes"))]
        false
    }

    fn output(&self, default: Output) -> Result<Output> {
        match &self.output {
            Some(o) => Ok(o.parse::<Output>()?),
            None => Ok(default),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ProxyConfig {
    /// Listeners of the pod's proxy: address, port, and per filter chain what it matches and where it sends.
    #[command(visible_aliases = ["listeners", "l"])]
    Listener(ListenerArgs),
    /// Route configurations: virtual hosts, domains, matches and the VirtualService behind each route.
    #[command(visible_aliases = ["routes", "r"])]
    Route(RouteArgs),
    /// Clusters: service FQDN, port, subset, direction, discovery type and DestinationRule.
    #[command(visible_aliases = ["clusters", "c"])]
    Cluster(ClusterArgs),
    /// Endpoints of every cluster with health and outlier state (from /clusters?format=json).
    #[command(visible_aliases = ["endpoints", "ep"])]
    Endpoint(EndpointArgs),
    /// Bootstrap, clusters, listeners, routes, secrets and endpoints together.
    #[command(visible_aliases = ["a"])]
    All(AllArgs),
    /// The proxy's bootstrap (JSON by default; `-o short` for versions).
    #[command(visible_aliases = ["b"])]
    Bootstrap(BootstrapArgs),
    /// SDS secrets: certificate type, state, validity and serial.
    #[command(visible_aliases = ["secrets", "s"])]
    Secret(SecretArgs),
    /// Logging levels of the proxy; `--level` changes them.
    #[command(visible_aliases = ["o"])]
    Log(LogArgs),
}

/// Where the proxy's admin answers come from: a pod, or a saved file.
#[derive(Args, Debug, Clone)]
pub struct Source {
    /// `POD[.NAMESPACE]` or `deploy/NAME[.NAMESPACE]` (its first pod); omit with --file.
    pub pod: Option<String>,
    /// Read a saved Envoy `/config_dump` (for `endpoint`: `/clusters?format=json`) instead of
    /// asking a pod; `-` for standard input.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListenerArgs {
    #[command(flatten)]
    pub source: Source,
    /// Filter listeners by address field.
    #[arg(long, default_value = "")]
    pub address: String,
    /// Filter listeners by type field (HTTP, TCP, HTTP+TCP, UNKNOWN).
    #[arg(long = "type", default_value = "")]
    pub kind: String,
    /// Filter listeners by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
    /// Output more information (MATCH and DESTINATION per filter chain).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(flatten)]
    pub source: Source,
    /// Filter routes by route name field.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Output more information (one row per route).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub source: Source,
    /// Filter clusters by substring of Service FQDN field.
    #[arg(long, default_value = "")]
    pub fqdn: String,
    /// Filter clusters by Direction field.
    #[arg(long, default_value = "")]
    pub direction: String,
    /// Filter clusters by substring of Subset field.
    #[arg(long, default_value = "")]
    pub subset: String,
    /// Filter clusters by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
}

#[derive(Args, Debug)]
pub struct EndpointArgs {
    #[command(flatten)]
    pub source: Source,
    /// Filter endpoints by address field.
    #[arg(long, default_value = "")]
    pub address: String,
    /// Filter endpoints by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
    /// Filter endpoints by cluster name field.
    #[arg(long, default_value = "")]
    pub cluster: String,
    /// Filter endpoints by status field.
    #[arg(long, default_value = "")]
    pub status: String,
}

#[derive(Args, Debug)]
pub struct AllArgs {
    #[command(flatten)]
    pub source: Source,
    /// Output more information.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub verbose: bool,
    /// Filter clusters by substring of Service FQDN field.
    #[arg(long, default_value = "")]
    pub fqdn: String,
    /// Filter clusters by Direction field.
    #[arg(long, default_value = "")]
    pub direction: String,
    /// Filter clusters by substring of Subset field.
    #[arg(long, default_value = "")]
    pub subset: String,
    /// Filter clusters and listeners by Port field.
    #[arg(long, default_value_t = 0)]
    pub port: u32,
    /// Filter listeners by address field.
    #[arg(long, default_value = "")]
    pub address: String,
    /// Filter listeners by type field.
    #[arg(long = "type", default_value = "")]
    pub kind: String,
    /// Filter listeners by route name field.
    #[arg(long, default_value = "")]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub source: Source,
}

#[derive(Args, Debug)]
pub struct SecretArgs {
    #[command(flatten)]
    pub source: Source,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// `POD[.NAMESPACE]` or `deploy/NAME[.NAMESPACE]`.
    pub pod: Option<String>,
    /// Comma-separated minimum per-logger levels, `[<logger>:]<level>,…`, or `<level>` for all
    /// loggers; levels: trace, debug, info, warning, error, critical, off.
    #[arg(long)]
    pub level: Option<String>,
    /// Reset levels to the default (warning).
    #[arg(short = 'r', long)]
    pub reset: bool,
}

#[derive(Args, Debug)]
pub struct ProxyStatus {
    /// Only this proxy (`POD[.NAMESPACE]`).
    pub pod: Option<String>,
    /// Only proxies in this namespace.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: Option<String>,
    /// skiffd's monitoring address (default: the local mesh's istiod pod, else 127.0.0.1:15014).
    #[arg(long)]
    pub skiffd: Option<SocketAddr>,
    /// Network namespace to reach --skiffd from.
    #[arg(long = "skiffd-netns")]
    pub skiffd_netns: Option<String>,
    /// Read a saved `/debug/syncz` instead of asking skiffd.
    #[arg(long = "syncz-file")]
    pub syncz_file: Option<PathBuf>,
    /// The local mesh (`skiffctl local up --name`).
    #[arg(long, default_value = "skiff")]
    pub mesh: String,
    /// Ask the skiffd pods (label app=skiffd) of a Kubernetes cluster.
    #[cfg(feature = "kubernetes")]
    #[arg(long)]
    pub kube: bool,
    /// The control plane's namespace in Kubernetes.
    #[cfg(feature = "kubernetes")]
    #[arg(short = 'i', long = "istioNamespace", default_value = "istio-system")]
    pub istio_namespace: String,
}

// === sources ===

fn admin_source(
    mesh: &str,
    netns: Option<&str>,
    admin_port: u16,
    _kube: bool,
) -> Result<Box<dyn AdminSource>> {
    #[cfg(feature = "kubernetes")]
    if _kube {
        return Ok(Box::new(admin::kube::Kubernetes::connect(admin_port)?));
    }
    Ok(Box::new(LocalMesh {
        flags: LocalFlags {
            mesh: mesh.to_owned(),
            netns: netns.map(str::to_owned),
        },
        admin_port,
    }))
}

impl Source {
    /// The text of `path` from the pod, or of `--file`; exactly one of the two (istioctl's rule).
    fn fetch(&self, common: &Common, command: &str, path: &str) -> Result<String> {
        match (&self.pod, &self.file) {
            (None, Some(f)) => read_file(f),
            (Some(pod), None) => {
                let pod = PodRef::parse(pod, common.namespace.as_deref());
                admin_source(
                    &common.mesh,
                    common.netns.as_deref(),
                    common.proxy_admin_port,
                    common.kube(),
                )?
                .get(&pod, path)
            }
            _ => bail!("{command} requires pod name or --file parameter"),
        }
    }

    fn config_dump(&self, common: &Common, command: &str, include_eds: bool) -> Result<(ConfigDump, String)> {
        let path = if include_eds {
            "/config_dump?include_eds=true"
        } else {
            "/config_dump"
        };
        let text = self.fetch(common, command, path)?;
        let dump = ConfigDump::parse(&text).context("error unmarshalling config dump response from Envoy")?;
        Ok((dump, text))
    }
}

fn read_file(path: &std::path::Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("cannot read standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

// === commands ===

/// Runs `proxy-config <view>` and returns what to print.
pub fn proxy_config(cmd: ProxyConfigCmd) -> Result<String> {
    let c = &cmd.common;
    match cmd.view {
        ProxyConfig::Listener(a) => {
            let out = c.output(Output::Short)?;
            let (d, _) = a.source.config_dump(c, "listener", false)?;
            let f = ListenerFilter {
                address: a.address,
                port: a.port,
                kind: a.kind,
                verbose: a.verbose,
            };
            Ok(inspect::listener::print(&d, &f, out)?)
        }
        ProxyConfig::Route(a) => {
            let out = c.output(Output::Short)?;
            let (d, _) = a.source.config_dump(c, "route", false)?;
            let f = RouteFilter {
                name: a.name,
                verbose: a.verbose,
            };
            Ok(inspect::route::print(&d, &f, out)?)
        }
        ProxyConfig::Cluster(a) => {
            let out = c.output(Output::Short)?;
            let (d, _) = a.source.config_dump(c, "cluster", false)?;
            let f = ClusterFilter {
                fqdn: a.fqdn,
                port: a.port,
                subset: a.subset,
                direction: a.direction,
            };
            Ok(inspect::cluster::print(&d, &f, out)?)
        }
        ProxyConfig::Endpoint(a) => {
            let out = c.output(Output::Short)?;
            let text = a.source.fetch(c, "endpoints", "/clusters?format=json")?;
            let c = inspect::endpoint::Clusters::parse(&text)?;
            let f = EndpointFilter {
                address: a.address,
                port: a.port,
                cluster: a.cluster,
                status: a.status,
            };
            Ok(inspect::endpoint::print(&c, &f, out))
        }
        ProxyConfig::All(a) => {
            let out = c.output(Output::Short)?;
            let (d, text) = a.source.config_dump(c, "all", true)?;
            if out != Output::Short {
                return Ok(inspect::raw_dump(&d, &text, out));
            }
            let f = inspect::FullFilter {
                cluster: ClusterFilter {
                    fqdn: a.fqdn,
                    port: a.port,
                    subset: a.subset,
                    direction: a.direction,
                },
                listener: ListenerFilter {
                    address: a.address.clone(),
                    port: a.port,
                    kind: a.kind,
                    verbose: a.verbose,
                },
                route: RouteFilter {
                    name: a.name,
                    verbose: a.verbose,
                },
                endpoint: EndpointFilter {
                    address: a.address,
                    port: a.port,
                    ..Default::default()
                },
            };
            Ok(inspect::full_summary(&d, &f, std::time::SystemTime::now())?)
        }
        ProxyConfig::Bootstrap(a) => {
            let out = c.output(Output::Json)?;
            let (d, _) = a.source.config_dump(c, "bootstrap", false)?;
            Ok(inspect::bootstrap::print(&d, out)?)
        }
        ProxyConfig::Secret(a) => {
            let out = c.output(Output::Short)?;
            let (d, _) = a.source.config_dump(c, "secret", false)?;
            Ok(inspect::secret::print(&d, out)?)
        }
        ProxyConfig::Log(a) => log(a, c),
    }
}

fn log(a: LogArgs, c: &Common) -> Result<String> {
    let Some(pod) = &a.pod else {
        bail!("log requires pod name or --selector");
    };
    if a.reset && a.level.is_some() {
        bail!("--level cannot be combined with --reset");
    }
    if c.output.as_deref().is_some_and(|o| o != "short") {
        bail!("--output is not applicable for this command");
    }
    let src = admin_source(&c.mesh, c.netns.as_deref(), c.proxy_admin_port, c.kube())?;
    let pod = PodRef::parse(pod, c.namespace.as_deref());
    let (name, namespace) = src.resolve(&pod)?;
    // The proxy's logger names, which `--level logger:level` must match.
    let loggers = src.post(&pod, "/logging")?;
    let mut last = loggers.clone();
    let requests = inspect::logging::requests(a.level.as_deref(), a.reset, &loggers)?;
    for q in requests {
        let path = if q.is_empty() {
            "/logging".to_owned()
        } else {
            format!("/logging?{q}")
        };
        last = src
            .post(&pod, &path)
            .with_context(|| format!("error configuring log level for {name}.{namespace}"))?;
    }
    Ok(inspect::logging::format_response(&name, &namespace, &last))
}

/// Runs `proxy-status` and returns the table.
pub fn proxy_status(a: ProxyStatus) -> Result<String> {
    let mut proxies = Vec::new();
    if let Some(f) = &a.syncz_file {
        proxies.extend(inspect::status::parse_syncz(&read_file(f)?, "skiffd")?);
    } else if kube_status(&a) {
        #[cfg(feature = "kubernetes")]
        {
            let k = admin::kube::Kubernetes::connect(15000)?;
            for (istiod, body) in k.syncz(&a.istio_namespace)? {
                proxies.extend(inspect::status::parse_syncz(&body, &istiod)?);
            }
        }
    } else {
        let cp = admin::lookup_control_plane(&a.mesh, a.skiffd, a.skiffd_netns.as_deref());
        let body = admin::http_in_netns(cp.netns.as_deref(), cp.addr, "GET", "/debug/syncz")
            .with_context(|| format!("cannot ask {} at {} for /debug/syncz", cp.name, cp.addr))?;
        proxies.extend(inspect::status::parse_syncz(&body, &cp.name)?);
    }
    let pod = a.pod.as_deref().map(|p| PodRef::parse(p, a.namespace.as_deref()));
    let wanted = pod.as_ref().map(|p| match &p.namespace {
        Some(ns) => format!("{}.{ns}", p.pod_name()),
        None => p.pod_name().to_owned(),
    });
    let namespace = if pod.is_some() {
        None
    } else {
        a.namespace.as_deref()
    };
    Ok(inspect::status::summary(proxies, namespace, wanted.as_deref()))
}

fn kube_status(_a: &ProxyStatus) -> bool {
    #[cfg(feature = "kubernetes")]
    return _a.kube;
    #[cfg(not(feature = "kubernetes"))]
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> ProxyConfigCmd {
        match Cli::try_parse_from(args).unwrap().command {
            Command::ProxyConfig(pc) => pc,
            other => panic!("not proxy-config: {other:?}"),
        }
    }

    #[test]
    fn istioctl_invocations_parse() {
        // Seed 004: `istioctl proxy-config -n sidecar listener toolbox-97948fc8-ptlct`.
        let pc = parse(&[
            "skiffctl",
            "proxy-config",
            "-n",
            "sidecar",
            "listener",
            "toolbox-97948fc8-ptlct",
        ]);
        assert_eq!(pc.common.namespace.as_deref(), Some("sidecar"));
        let ProxyConfig::Listener(l) = pc.view else {
            panic!()
        };
        assert_eq!(l.source.pod.as_deref(), Some("toolbox-97948fc8-ptlct"));
        assert!(l.verbose);
        // Flags after the view, aliases, `--port=`, `-ojson`, `--verbose=false`.
        let pc = parse(&[
            "skiffctl",
            "pc",
            "l",
            "p",
            "--port=15006",
            "-ojson",
            "--verbose=false",
        ]);
        assert_eq!(pc.common.output.as_deref(), Some("json"));
        let ProxyConfig::Listener(l) = pc.view else {
            panic!()
        };
        assert_eq!((l.port, l.verbose), (15006, false));
        let pc = parse(&[
            "skiffctl",
            "pc",
            "ep",
            "p",
            "--cluster=outbound|80||nginx.sidecar.svc.cluster.local",
        ]);
        let ProxyConfig::Endpoint(e) = pc.view else {
            panic!()
        };
        assert_eq!(e.cluster, "outbound|80||nginx.sidecar.svc.cluster.local");
        for alias in [
            "routes",
            "r",
            "clusters",
            "c",
            "endpoints",
            "a",
            "b",
            "secrets",
            "s",
            "o",
        ] {
            assert!(
                Cli::try_parse_from(["skiffctl", "pc", alias, "p"]).is_ok(),
                "{alias}"
            );
        }
        // bootstrap prints JSON unless told otherwise; the others print the table.
        assert_eq!(
            parse(&["skiffctl", "pc", "b", "p"])
                .common
                .output(Output::Json)
                .unwrap(),
            Output::Json
        );
        assert!(parse(&["skiffctl", "pc", "c", "p", "-o", "xml"])
            .common
            .output(Output::Short)
            .is_err());
    }

    #[test]
    fn proxy_status_flags() {
        let Command::ProxyStatus(ps) = Cli::try_parse_from([
            "skiffctl",
            "proxy-status",
            "--skiffd",
            "127.0.0.1:15014",
            "-n",
            "sidecar",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(ps.skiffd, Some(SocketAddr::from(([127, 0, 0, 1], 15014))));
        assert!(Cli::try_parse_from(["skiffctl", "proxy-status", "--skiffd", "not-an-address"]).is_err());
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn kube_flags() {
        let pc = parse(&["skiffctl", "pc", "--kube", "cluster", "deploy/nginx.sidecar"]);
        assert!(pc.common.kube());
        let Command::ProxyStatus(ps) =
            Cli::try_parse_from(["skiffctl", "ps", "--kube", "-i", "skiff-system"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert!(ps.kube && ps.istio_namespace == "skiff-system");
    }
}
