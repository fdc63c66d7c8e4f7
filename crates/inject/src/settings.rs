//! Mesh-wide injection settings: what Istio keeps in the injector's `values` and mesh config.
//! The defaults reproduce seed 004's injected pod (Istio 1.19's demo profile).

use clap::Args;
use serde_json::{json, Value};

/// The proxy resources of seed 004 (requests 10m/40Mi, limits 2 CPUs/1Gi), applied to both the
/// sidecar and the init container unless a `sidecar.istio.io/proxyCPU`-style annotation is set.
pub fn default_resources() -> Value {
    json!({
        "limits": {"cpu": "2", "memory": "1Gi"},
        "requests": {"cpu": "10m", "memory": "40Mi"},
    })
}

/// Settings shared by `skiffctl kube-inject`, `skiffctl manifest generate` and `skiffd`'s webhook,
/// so that manual and automatic injection give the same pod.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct Settings {
    /// Registry and repository prefix of the Skiff image (Istio's `--set values.global.hub`).
    #[arg(long, env = "SKIFF_HUB", default_value = "docker.io/skiff")]
    pub hub: String,
    /// Image tag (Istio's `values.global.tag`).
    #[arg(long, env = "SKIFF_TAG", default_value = env!("CARGO_PKG_VERSION"))]
    pub tag: String,
    /// Image name under the hub; one image carries skiff-agent, skiffd and skiffctl.
    #[arg(long = "image-name", default_value = "skiff")]
    pub image_name: String,
    /// Control plane revision (`istio.io/rev`); empty is the default revision.
    #[arg(long, default_value = "")]
    pub revision: String,
    /// Namespace the control plane runs in.
    #[arg(long = "istio-namespace", default_value = "istio-system")]
    pub istio_namespace: String,
    /// Name of the control plane's Service (CA and xDS on 15012).
    #[arg(long = "discovery-service", default_value = "skiffd")]
    pub discovery_service: String,
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    #[arg(long = "trust-domain", default_value = "cluster.local")]
    pub trust_domain: String,
    /// `ISTIO_META_CLUSTER_ID` (Istio's `values.global.multiCluster.clusterName`).
    #[arg(long = "cluster-id", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// `ISTIO_META_NETWORK`, when the mesh spans networks.
    #[arg(long)]
    pub network: Option<String>,
    /// `imagePullPolicy` of the injected containers; unset lets Kubernetes choose, as Istio does.
    #[arg(long = "image-pull-policy")]
    pub image_pull_policy: Option<String>,
    /// Rewrite HTTP/TCP/gRPC app probes to the agent on the status port (`rewriteAppHTTPProbe`).
    #[arg(long = "rewrite-app-probes", default_value_t = true, action = clap::ArgAction::Set)]
    pub rewrite_app_probes: bool,
    /// Point prometheus.io annotations at the agent's merged metrics (`enablePrometheusMerge`).
    #[arg(long = "prometheus-merge", default_value_t = true, action = clap::ArgAction::Set)]
    pub prometheus_merge: bool,
    /// Start the sidecar before the app containers (`holdApplicationUntilProxyStarts`).
    #[arg(long = "hold-application-until-proxy-starts", default_value_t = false, action = clap::ArgAction::Set)]
    pub hold_application: bool,
    /// Mesh-wide capture defaults (`values.global.proxy.includeIPRanges` and friends).
    #[arg(long = "include-ip-ranges", default_value = "*")]
    pub include_ip_ranges: String,
    #[arg(long = "exclude-ip-ranges", default_value = "")]
    pub exclude_ip_ranges: String,
    #[arg(long = "include-inbound-ports", default_value = "*")]
    pub include_inbound_ports: String,
    #[arg(long = "exclude-inbound-ports", default_value = "")]
    pub exclude_inbound_ports: String,
    #[arg(long = "include-outbound-ports", default_value = "")]
    pub include_outbound_ports: String,
    #[arg(long = "exclude-outbound-ports", default_value = "")]
    pub exclude_outbound_ports: String,
    #[arg(long = "proxy-log-level", default_value = "warning")]
    pub proxy_log_level: String,
    #[arg(long = "proxy-component-log-level", default_value = "misc:error")]
    pub proxy_component_log_level: String,
    /// `--log_output_level` of the injected agent and init container.
    #[arg(long = "agent-log-level", default_value = "default:info")]
    pub agent_log_level: String,
    /// Agent status port: app probes and merged metrics (15020).
    #[arg(long = "status-port", default_value_t = 15020)]
    pub status_port: u16,
    #[arg(long = "readiness-initial-delay-seconds", default_value_t = 1)]
    pub readiness_initial_delay_seconds: u32,
    #[arg(long = "readiness-period-seconds", default_value_t = 2)]
    pub readiness_period_seconds: u32,
    #[arg(long = "readiness-failure-threshold", default_value_t = 30)]
    pub readiness_failure_threshold: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hub: "docker.io/skiff".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            image_name: "skiff".into(),
            revision: String::new(),
            istio_namespace: "istio-system".into(),
            discovery_service: "skiffd".into(),
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            network: None,
            image_pull_policy: None,
            rewrite_app_probes: true,
            prometheus_merge: true,
            hold_application: false,
            include_ip_ranges: "*".into(),
            exclude_ip_ranges: String::new(),
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            proxy_log_level: "warning".into(),
            proxy_component_log_level: "misc:error".into(),
            agent_log_level: "default:info".into(),
            status_port: 15020,
            readiness_initial_delay_seconds: 1,
            readiness_period_seconds: 2,
            readiness_failure_threshold: 30,
        }
    }
}

impl Settings {
    /// The image injected containers run (`hub/name:tag`).
    pub fn proxy_image(&self) -> String {
        format!("{}/{}:{}", self.hub, self.image_name, self.tag)
    }

    /// The revision as written into `istio.io/rev` and the status annotation.
    pub fn revision_or_default(&self) -> &str {
        if self.revision.is_empty() {
            "default"
        } else {
            &self.revision
        }
    }

    /// The control plane Service name, suffixed with the revision as Istio names `istiod-<rev>`.
    pub fn discovery_service_name(&self) -> String {
        if self.revision.is_empty() {
            self.discovery_service.clone()
        } else {
            format!("{}-{}", self.discovery_service, self.revision)
        }
    }

    /// `CA_ADDR` of the injected sidecar: the control plane's TLS xDS/CA port.
    pub fn ca_addr(&self) -> String {
        format!(
            "{}.{}.svc:15012",
            self.discovery_service_name(),
            self.istio_namespace
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn flag_defaults_equal_default() {
        let cmd = Cmd::try_parse_from(["x"]).unwrap();
        assert_eq!(cmd.settings, Settings::default());
    }

    #[test]
    fn image_and_addresses() {
        let mut s = Settings::default();
        assert_eq!(
            s.proxy_image(),
            format!("docker.io/skiff/skiff:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(s.ca_addr(), "skiffd.istio-system.svc:15012");
        s.revision = "canary".into();
        assert_eq!(s.ca_addr(), "skiffd-canary.istio-system.svc:15012");
        assert_eq!(s.revision_or_default(), "canary");
    }
}
