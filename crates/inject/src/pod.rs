//! The pod mutation: Istio 1.19's injection template plus its post-processing (prometheus merge,
//! probe rewriting, status annotation, container order), written out as code.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::annotations::{self as ann, exclude_inbound_with_status_port, Interception, Overrides};
use crate::decide::{decide, Skip};
use crate::probe::{dump_app_probers, rewrite_probes, APP_PROBERS_ENV};
use crate::settings::{default_resources, Settings};
use crate::{Error, Problem, CORE_DUMP_CONTAINER, INIT_CONTAINER, PROXY_CONTAINER};

pub const PROMETHEUS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";

/// What is being injected and where it came from: the workload that owns the pod (for
/// `ISTIO_META_WORKLOAD_NAME`/`ISTIO_META_OWNER` and the canonical-name label), the namespace,
/// and how to name the object and its fields in errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub kind: String,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    /// Field path of the pod template inside the object (`spec.template.`), for error messages.
    pub field_prefix: String,
    /// Namespace labels, when known; then the webhook selectors are applied too.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// How errors name the object, when not `Kind namespace/name` (an admitted pod is named
    /// by itself, not by its workload).
    pub display: Option<String>,
}

impl Target {
    /// `Deployment default/web`, as errors and warnings name the object.
    pub fn object(&self) -> String {
        if let Some(d) = &self.display {
            return d.clone();
        }
        let kind = if self.kind.is_empty() { "Pod" } else { &self.kind };
        if self.namespace.is_empty() {
            format!("{kind} {}", self.name)
        } else {
            format!("{kind} {}/{}", self.namespace, self.name)
        }
    }

    /// Istio's `GetDeployMetaFromPod`: an admitted pod names its workload through its controller
    /// (a ReplicaSet whose name ends in the pod-template-hash is a Deployment's, a Job ending in a
    /// timestamp is a CronJob's).
    pub fn from_admitted_pod(pod: &Value, namespace: &str) -> Target {
        let meta = pod.get("metadata");
        let s = |v: Option<&Value>, k: &str| {
            v.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let pod_name = s(meta, "name").unwrap_or_default();
        let generate_name = s(meta, "generateName").unwrap_or_default();
        let namespace = s(meta, "namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| namespace.to_string());
        let mut target = Target {
            kind: "Pod".into(),
            api_version: "v1".into(),
            name: pod_name.clone(),
            namespace,
            ..Target::default()
        };
        let controller = meta
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.get("controller") == Some(&Value::Bool(true)))
            });
        if let (false, Some(c)) = (generate_name.is_empty(), controller) {
            target.api_version = s(Some(c), "apiVersion").unwrap_or_default();
            target.kind = s(Some(c), "kind").unwrap_or_default();
            target.name = s(Some(c), "name").unwrap_or_default();
            let hash = s(meta.and_then(|m| m.get("labels")), "pod-template-hash").unwrap_or_default();
            if target.kind == "ReplicaSet" && !hash.is_empty() && target.name.ends_with(&hash) {
                target.name = target
                    .name
                    .trim_end_matches(&hash)
                    .trim_end_matches('-')
                    .to_string();
                target.kind = "Deployment".into();
            } else if target.kind == "Job" {
                if let Some((base, stamp)) = target.name.rsplit_once('-') {
                    if (8..=10).contains(&stamp.len()) && stamp.chars().all(|c| c.is_ascii_digit()) {
                        target.name = base.to_string();
                        target.kind = "CronJob".into();
                        target.api_version = "batch/v1beta1".into();
                    }
                }
            }
        }
        let shown = if pod_name.is_empty() && !generate_name.is_empty() {
            format!("{generate_name}*")
        } else {
            pod_name.clone()
        };
        target.display = Some(format!("Pod {}/{shown}", target.namespace));
        if target.name.is_empty() {
            target.name = pod_name;
        }
        target
    }
}

/// The result of [`inject`].
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Injected(Value),
    Skipped(Skip),
}

/// Reads `metadata.labels` or `metadata.annotations`; Kubernetes only allows string values.
fn string_map(pod: &Value, key: &str, prefix: &str, problems: &mut Vec<Problem>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match pod.get("metadata").and_then(|m| m.get(key)) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    other => problems.push(Problem {
                        field: format!("{prefix}metadata.{key}[{k:?}]"),
                        message: format!("value {other} must be a string (quote it)"),
                    }),
                }
            }
        }
        Some(_) => problems.push(Problem {
            field: format!("{prefix}metadata.{key}"),
            message: "must be a map of strings".into(),
        }),
    }
    out
}

/// Checks a list of named objects (`containers`, `volumes`) and returns the names.
fn names(spec: &Value, key: &str, prefix: &str, required: bool, problems: &mut Vec<Problem>) -> Vec<String> {
    match spec.get(key) {
        None | Some(Value::Null) if !required => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.get("name").and_then(Value::as_str) {
                Some(n) => Some(n.to_string()),
                None => {
                    problems.push(Problem {
                        field: format!("{prefix}spec.{key}[{i}].name"),
                        message: "is required".into(),
                    });
                    None
                }
            })
            .collect(),
        Some(_) => {
            problems.push(Problem {
                field: format!("{prefix}spec.{key}"),
                message: "must be a list".into(),
            });
            Vec::new()
        }
        None => {
            problems.push(Problem {
                field: format!("{prefix}spec.{key}"),
                message: "is required: a pod needs at least one container".into(),
            });
            Vec::new()
        }
    }
}

/// Injects the sidecar into `pod` (a Pod, or a pod template: an object with `metadata` and
/// `spec`), or says why not. The input is not modified; unknown fields are carried over as-is.
pub fn inject(pod: &Value, target: &Target, settings: &Settings) -> Result<Outcome, Error> {
    let prefix = target.field_prefix.as_str();
    let object = target.object();
    let invalid = |problems: Vec<Problem>| Error::Invalid {
        object: object.clone(),
        problems,
    };
    let Some(spec) = pod.get("spec").filter(|s| s.is_object()) else {
        return Err(invalid(vec![Problem {
            field: format!("{prefix}spec"),
            message: "is required and must be an object".into(),
        }]));
    };
    let mut problems = Vec::new();
    let labels = string_map(pod, "labels", prefix, &mut problems);
    let annotations = string_map(pod, "annotations", prefix, &mut problems);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let host_network = spec.get("hostNetwork") == Some(&Value::Bool(true));
    if let Err(skip) = decide(
        &labels,
        &annotations,
        host_network,
        &target.namespace,
        target.namespace_labels.as_ref(),
        settings.revision_or_default(),
    ) {
        return Ok(Outcome::Skipped(skip));
    }

    let overrides = Overrides::from_annotations(&annotations, settings).map_err(|errs| {
        invalid(
            errs.into_iter()
                .map(|e| Problem {
                    field: format!("{prefix}metadata.annotations[{:?}]", e.annotation),
                    message: format!("invalid value {:?}: {}", e.value, e.reason),
                })
                .collect(),
        )
    })?;

    let containers = names(spec, "containers", prefix, true, &mut problems);
    let init_containers = names(spec, "initContainers", prefix, false, &mut problems);
    let volumes = names(spec, "volumes", prefix, false, &mut problems);
    for (key, list) in [("containers", &containers), ("initContainers", &init_containers)] {
        for (i, name) in list.iter().enumerate() {
            if [PROXY_CONTAINER, INIT_CONTAINER, CORE_DUMP_CONTAINER].contains(&name.as_str()) {
                problems.push(Problem {
                    field: format!("{prefix}spec.{key}[{i}].name"),
                    message: format!(
                        "{name:?} is reserved for the injected sidecar, and the pod has no {} annotation \
                         saying it was injected; rename the container",
                        ann::STATUS
                    ),
                });
            }
        }
    }
    let template = Template::new(&overrides, target, settings, spec, &containers);
    for (i, name) in volumes.iter().enumerate() {
        if template.volume_names().any(|v| v == name) {
            problems.push(Problem {
                field: format!("{prefix}spec.volumes[{i}].name"),
                message: format!("{name:?} is reserved for the injected sidecar; rename the volume"),
            });
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    let mut out = pod.clone();
    template.apply(&mut out, &labels, &annotations, &containers);
    Ok(Outcome::Injected(out))
}

/// The injected parts, rendered for one pod.
struct Template {
    init_containers: Vec<Value>,
    proxy: Value,
    volumes: Vec<Value>,
    hold_application: bool,
    rewrite_probes: bool,
    probe_port: u16,
    prometheus_merge: bool,
    mesh_status_port: u16,
    revision: String,
    canonical_default_name: String,
    network: Option<String>,
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn env_field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn env_resource(name: &str, resource: &str) -> Value {
    json!({"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource}}})
}

/// `ISTIO_META_POD_PORTS` exactly as Istio's template prints it: one JSON object per line in Go's
/// field order (name, hostPort, containerPort, protocol, hostIP).
fn pod_ports(spec: &Value) -> String {
    let mut entries = Vec::new();
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            let mut fields = Vec::new();
            for (key, omit_empty) in [
                ("name", true),
                ("hostPort", true),
                ("containerPort", false),
                ("protocol", true),
                ("hostIP", true),
            ] {
                match p.get(key) {
                    None | Some(Value::Null) if omit_empty => {}
                    Some(Value::String(s)) if omit_empty && s.is_empty() => {}
                    Some(Value::Number(n)) if omit_empty && n.as_i64() == Some(0) => {}
                    v => fields.push(format!("\"{key}\":{}", v.cloned().unwrap_or(json!(0)))),
                }
            }
            entries.push(format!("{{{}}}", fields.join(",")));
        }
    }
    let mut out = String::from("[");
    for (i, e) in entries.iter().enumerate() {
        out.push_str(if i == 0 { "\n    " } else { "\n    ," });
        out.push_str(e);
    }
    out.push_str("\n]");
    out
}

impl Template {
    fn new(o: &Overrides, target: &Target, s: &Settings, spec: &Value, containers: &[String]) -> Template {
        let image = o.image.clone();
        let resources = o.resources.clone().unwrap_or_else(default_resources);
        let pull = |c: &mut Value| {
            if let Some(p) = &s.image_pull_policy {
                c["imagePullPolicy"] = json!(p);
            }
        };
        let tproxy = o.interception == Interception::Capture(capture::InterceptionMode::Tproxy);

        let mut init_containers = Vec::new();
        if o.interception != Interception::None {
            let mut args: Vec<String> = [
                "iptables",
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "-m",
                o.interception.as_str(),
                "-i",
                &o.include_ip_ranges,
                "-x",
                &o.exclude_ip_ranges,
                "-b",
                &o.include_inbound_ports,
                "-d",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            let excluded = exclude_inbound_with_status_port(o.status_port, &o.exclude_inbound_ports);
            args.push(if excluded.is_empty() {
                "15090,15021".into()
            } else {
                format!("15090,15021,{excluded}")
            });
            for (flag, value) in [
                ("-q", &o.include_outbound_ports),
                ("-o", &o.exclude_outbound_ports),
                ("-k", &o.kubevirt_interfaces),
                ("-c", &o.exclude_interfaces),
            ] {
                if let Some(v) = value {
                    args.push(flag.into());
                    args.push(v.clone());
                }
            }
            args.push(format!("--log_output_level={}", o.agent_log_level));
            let mut init = json!({
                "name": INIT_CONTAINER,
                "image": image,
                "args": args,
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "privileged": false,
                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                    "readOnlyRootFilesystem": false,
                    "runAsGroup": 0,
                    "runAsNonRoot": false,
                    "runAsUser": 0,
                },
            });
            pull(&mut init);
            init_containers.push(init);
        }
        if o.core_dump {
            let mut c = json!({
                "name": CORE_DUMP_CONTAINER,
                "image": image,
                "command": ["/bin/sh"],
                "args": ["-c", "sysctl -w kernel.core_pattern=/var/lib/istio/data/core.proxy && ulimit -c unlimited"],
                "resources": resources,
                "securityContext": {
                    "allowPrivilegeEscalation": true,
                    "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]},
                    "privileged": true,
                    "readOnlyRootFilesystem": false,
                    "runAsGroup": 0,
                    "runAsNonRoot": false,
                    "runAsUser": 0,
                },
            });
            pull(&mut c);
            init_containers.push(c);
        }

        let app_containers: Vec<&str> = containers
            .iter()
            .map(String::as_str)
            .filter(|c| *c != PROXY_CONTAINER)
            .collect();
        let mut proxy_config = Value::Object(o.proxy_config.clone()).to_string();
        proxy_config.push('\n');
        let mut envs = vec![
            env("JWT_POLICY", "third-party-jwt"),
            env("PILOT_CERT_PROVIDER", "istiod"),
            env("CA_ADDR", s.ca_addr()),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("INSTANCE_IP", "status.podIP"),
            env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            env_field("HOST_IP", "status.hostIP"),
            env_resource("ISTIO_CPU_LIMIT", "limits.cpu"),
            env("PROXY_CONFIG", proxy_config),
            env("ISTIO_META_POD_PORTS", pod_ports(spec)),
            env("ISTIO_META_APP_CONTAINERS", app_containers.join(",")),
            env_resource("GOMEMLIMIT", "limits.memory"),
            env_resource("GOMAXPROCS", "limits.cpu"),
            env("ISTIO_META_CLUSTER_ID", s.cluster_id.clone()),
            env_field("ISTIO_META_NODE_NAME", "spec.nodeName"),
            env("ISTIO_META_INTERCEPTION_MODE", o.interception.as_str()),
        ];
        if let Some(n) = &s.network {
            envs.push(env("ISTIO_META_NETWORK", n.clone()));
        }
        if !target.name.is_empty() {
            envs.push(env("ISTIO_META_WORKLOAD_NAME", target.name.clone()));
            if !target.api_version.is_empty() {
                let ns = if target.namespace.is_empty() {
                    "default"
                } else {
                    &target.namespace
                };
                envs.push(env(
                    "ISTIO_META_OWNER",
                    format!(
                        "kubernetes://apis/{}/namespaces/{ns}/{}s/{}",
                        target.api_version,
                        target.kind.to_lowercase(),
                        target.name
                    ),
                ));
            }
        }
        if o.bootstrap_override.is_some() {
            envs.push(env(
                "ISTIO_BOOTSTRAP_OVERRIDE",
                "/etc/istio/custom-bootstrap/custom_bootstrap.json",
            ));
        }
        envs.push(env("ISTIO_META_MESH_ID", s.trust_domain.clone()));
        envs.push(env("TRUST_DOMAIN", s.trust_domain.clone()));

        // TPROXY needs NET_ADMIN in the proxy, and binding low ports needs NET_BIND_SERVICE;
        // both then run the proxy as root, as Istio does.
        let mut add = Vec::new();
        if tproxy {
            add.push("NET_ADMIN");
        }
        if o.net_bind_service {
            add.push("NET_BIND_SERVICE");
        }
        let mut capabilities = json!({"drop": ["ALL"]});
        if !add.is_empty() {
            capabilities["add"] = json!(add);
        }
        let as_root = !add.is_empty();
        let mut mounts = vec![
            json!({"name": "workload-socket", "mountPath": "/var/run/secrets/workload-spiffe-uds"}),
            json!({"name": "credential-socket", "mountPath": "/var/run/secrets/credential-uds"}),
            json!({"name": "workload-certs", "mountPath": "/var/run/secrets/workload-spiffe-credentials"}),
            json!({"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"}),
            json!({"name": "istio-data", "mountPath": "/var/lib/istio/data"}),
        ];
        if o.bootstrap_override.is_some() {
            mounts
                .push(json!({"name": "custom-bootstrap-volume", "mountPath": "/etc/istio/custom-bootstrap"}));
        }
        mounts.extend([
            json!({"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}),
            json!({"name": "istio-token", "mountPath": "/var/run/secrets/tokens"}),
            json!({"name": "istio-podinfo", "mountPath": "/etc/istio/pod"}),
        ]);
        for (name, m) in &o.user_volume_mounts {
            let mut m = m.clone();
            m["name"] = json!(name);
            mounts.push(m);
        }

        let mut proxy = json!({
            "name": PROXY_CONTAINER,
            "image": image,
            "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
            "args": [
                "proxy",
                "sidecar",
                "--domain",
                format!("$(POD_NAMESPACE).svc.{}", s.cluster_domain),
                format!("--proxyLogLevel={}", o.proxy_log_level),
                format!("--proxyComponentLogLevel={}", o.proxy_component_log_level),
                format!("--log_output_level={}", o.agent_log_level),
            ],
            "env": envs,
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": capabilities,
                "privileged": false,
                "readOnlyRootFilesystem": !o.core_dump,
                "runAsGroup": 1337,
                "runAsNonRoot": !as_root,
                "runAsUser": if as_root { 0 } else { 1337 },
            },
            "resources": resources,
            "volumeMounts": mounts,
        });
        pull(&mut proxy);
        if o.status_port != 0 {
            proxy["readinessProbe"] = json!({
                "httpGet": {"path": "/healthz/ready", "port": 15021},
                "initialDelaySeconds": o.readiness_initial_delay,
                "periodSeconds": o.readiness_period,
                "timeoutSeconds": 3,
                "failureThreshold": o.readiness_failure_threshold,
            });
        }
        let hold_application = o.hold_application(s);
        if hold_application {
            // The app starts only once the agent reports the proxy ready (Istio: `pilot-agent wait`).
            proxy["lifecycle"] = json!({"postStart": {"exec": {"command": ["skiff-agent", "wait"]}}});
        }

        let mut volumes = vec![
            json!({"name": "workload-socket", "emptyDir": {}}),
            json!({"name": "credential-socket", "emptyDir": {}}),
            json!({"name": "workload-certs", "emptyDir": {}}),
        ];
        if let Some(cm) = &o.bootstrap_override {
            volumes.push(json!({"name": "custom-bootstrap-volume", "configMap": {"name": cm}}));
        }
        volumes.extend([
            json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
            json!({"name": "istio-data", "emptyDir": {}}),
            json!({"name": "istio-podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            ]}}),
            json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "path": "istio-token", "expirationSeconds": 43200, "audience": "istio-ca",
            }}]}}),
            json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
        ]);
        for (name, v) in &o.user_volumes {
            let mut v = v.clone();
            v["name"] = json!(name);
            volumes.push(v);
        }

        Template {
            init_containers,
            proxy,
            volumes,
            hold_application,
            rewrite_probes: o.rewrite_probes,
            probe_port: o.status_port,
            prometheus_merge: o.prometheus_merge,
            mesh_status_port: s.status_port,
            revision: s.revision_or_default().to_string(),
            canonical_default_name: target.name.clone(),
            network: s.network.clone(),
        }
    }

    fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.volumes
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
    }

    /// The `sidecar.istio.io/status` annotation, byte for byte as Istio writes it.
    fn status(&self) -> String {
        let names = |items: &[Value]| -> Value {
            let n: Vec<Value> = items.iter().filter_map(|c| c.get("name").cloned()).collect();
            if n.is_empty() {
                Value::Null
            } else {
                Value::Array(n)
            }
        };
        format!(
            "{{\"initContainers\":{},\"containers\":{},\"volumes\":{},\"imagePullSecrets\":null,\"revision\":{}}}",
            names(&self.init_containers),
            names(std::slice::from_ref(&self.proxy)),
            names(&self.volumes),
            json!(self.revision),
        )
    }

    fn apply(
        self,
        pod: &mut Value,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        containers: &[String],
    ) {
        let status = self.status();
        let Some(pod_obj) = pod.as_object_mut() else {
            return;
        };
        let meta = object_entry(pod_obj, "metadata");

        // Labels: keep the user's, else derive as Istio's template does.
        let first = |keys: &[&str], fallback: &str| {
            keys.iter()
                .filter_map(|k| labels.get(*k))
                .find(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| fallback.to_string())
        };
        let tls_mode = first(&["security.istio.io/tlsMode"], "istio");
        let canonical_name = first(
            &["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"],
            &self.canonical_default_name,
        );
        let canonical_revision = first(
            &[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ],
            "latest",
        );
        let label_map = object_entry(meta, "labels");
        label_map.insert("security.istio.io/tlsMode".into(), json!(tls_mode));
        label_map.insert("service.istio.io/canonical-name".into(), json!(canonical_name));
        label_map.insert(
            "service.istio.io/canonical-revision".into(),
            json!(canonical_revision),
        );
        if let Some(n) = &self.network {
            label_map.insert("topology.istio.io/network".into(), json!(n));
        }

        let anno = object_entry(meta, "annotations");
        anno.insert(ann::REV.into(), json!(self.revision));
        if let Some(first_app) = containers.iter().find(|c| *c != PROXY_CONTAINER) {
            for key in [
                "kubectl.kubernetes.io/default-logs-container",
                "kubectl.kubernetes.io/default-container",
            ] {
                if !annotations.contains_key(key) {
                    anno.insert(key.into(), json!(first_app));
                }
            }
        }

        let mut proxy = self.proxy;
        if self.prometheus_merge {
            prometheus_merge(anno, &mut proxy, self.mesh_status_port);
        }
        anno.insert(ann::STATUS.into(), json!(status));

        let spec = object_entry(pod_obj, "spec");
        if self.rewrite_probes && self.probe_port != 0 {
            let spec_value = Value::Object(std::mem::take(spec));
            let mut spec_value = spec_value;
            if let Some(probers) = dump_app_probers(&spec_value, self.probe_port) {
                if let Some(env) = proxy.get_mut("env").and_then(Value::as_array_mut) {
                    env.push(env_value(APP_PROBERS_ENV, probers));
                }
            }
            rewrite_probes(&mut spec_value, self.probe_port);
            if let Value::Object(m) = spec_value {
                *spec = m;
            }
        }

        // Order as Istio's reorderPod leaves it: istio-init (then enable-core-dump) after the
        // user's init containers so they run uncaptured; the proxy after the app containers so
        // `kubectl exec` defaults to the app, unless the app must wait for the proxy.
        if !self.init_containers.is_empty() {
            array_entry(spec, "initContainers").extend(self.init_containers);
        }
        let list = array_entry(spec, "containers");
        if self.hold_application {
            list.insert(0, proxy);
        } else {
            list.push(proxy);
        }
        let user_volumes = std::mem::take(array_entry(spec, "volumes"));
        let volumes = array_entry(spec, "volumes");
        volumes.extend(self.volumes);
        volumes.extend(user_volumes);
    }
}

fn env_value(name: &str, value: String) -> Value {
    json!({"name": name, "value": value})
}

fn object_entry<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = m.entry(key.to_string()).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(o) => o,
        _ => unreachable!("just made an object"),
    }
}

fn array_entry<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let v = m.entry(key.to_string()).or_insert_with(|| json!([]));
    if !v.is_array() {
        *v = json!([]);
    }
    match v {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

/// Prometheus' own sanitising (`prometheus.io/port` and `prometheus_io_port` are the same key).
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Istio's metrics merge: the app's prometheus.io annotations move into the sidecar's
/// `ISTIO_PROMETHEUS_ANNOTATIONS`, and the pod is scraped at the agent, which merges the app's
/// metrics with the proxy's.
fn prometheus_merge(anno: &mut Map<String, Value>, proxy: &mut Value, status_port: u16) {
    let find = |anno: &Map<String, Value>, name: &str| {
        anno.iter()
            .find(|(k, _)| sanitize(k) == name)
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    };
    if let Some(scrape) = find(anno, "prometheus_io_scrape") {
        if ann::parse_go_bool(&scrape) == Ok(false) {
            return;
        }
    }
    let target = status_port.to_string();
    if find(anno, "prometheus_io_port").as_deref() == Some(target.as_str()) {
        return;
    }
    let scrape = find(anno, "prometheus_io_scrape").unwrap_or_default();
    let path = find(anno, "prometheus_io_path").unwrap_or_default();
    let port = find(anno, "prometheus_io_port").unwrap_or_default();
    if !(scrape.is_empty() && path.is_empty() && port.is_empty()) {
        let value = format!(
            "{{\"scrape\":{},\"path\":{},\"port\":{}}}",
            json!(scrape),
            json!(path),
            json!(port)
        );
        if let Some(env) = proxy.get_mut("env").and_then(Value::as_array_mut) {
            env.push(env_value(PROMETHEUS_ENV, value));
        }
    }
    anno.retain(|k, _| {
        !matches!(
            sanitize(k).as_str(),
            "prometheus_io_scrape" | "prometheus_io_path" | "prometheus_io_port"
        )
    });
    anno.insert("prometheus.io/port".into(), json!(target));
    anno.insert("prometheus.io/path".into(), json!("/stats/prometheus"));
    anno.insert("prometheus.io/scrape".into(), json!("true"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ports_are_printed_like_istio() {
        assert_eq!(pod_ports(&json!({"containers": [{"name": "a"}]})), "[\n]");
        let spec = json!({"containers": [
            {"name": "a", "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]},
            {"name": "b", "ports": [{"containerPort": 9090}]},
        ]});
        assert_eq!(
            pod_ports(&spec),
            "[\n    {\"name\":\"http\",\"containerPort\":80,\"protocol\":\"TCP\"}\n    ,{\"containerPort\":9090}\n]"
        );
    }

    #[test]
    fn workload_from_admitted_pods() {
        let pod = json!({"metadata": {
            "generateName": "nginx-deployment-7fc7f5758-",
            "labels": {"pod-template-hash": "7fc7f5758"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "nginx-deployment-7fc7f5758", "controller": true}],
        }});
        let t = Target::from_admitted_pod(&pod, "sidecar");
        assert_eq!(
            (
                t.kind.as_str(),
                t.api_version.as_str(),
                t.name.as_str(),
                t.namespace.as_str()
            ),
            ("Deployment", "apps/v1", "nginx-deployment", "sidecar")
        );
        let job = json!({"metadata": {"generateName": "backup-28000000-",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-28000000", "controller": true}]}});
        let t = Target::from_admitted_pod(&job, "ns");
        assert_eq!((t.kind.as_str(), t.name.as_str()), ("CronJob", "backup"));
        let bare = json!({"metadata": {"name": "p", "namespace": "x"}});
        let t = Target::from_admitted_pod(&bare, "ignored");
        assert_eq!(t.object(), "Pod x/p");
    }

    #[test]
    fn prometheus_annotations_move_into_the_sidecar() {
        let mut anno = Map::new();
        anno.insert("prometheus.io/port".into(), json!("9090"));
        anno.insert("prometheus.io/path".into(), json!("/metrics"));
        let mut proxy = json!({"env": []});
        prometheus_merge(&mut anno, &mut proxy, 15020);
        assert_eq!(anno["prometheus.io/port"], json!("15020"));
        assert_eq!(anno["prometheus.io/path"], json!("/stats/prometheus"));
        assert_eq!(
            proxy["env"][0]["value"],
            json!("{\"scrape\":\"\",\"path\":\"/metrics\",\"port\":\"9090\"}")
        );
        // scrape=false opts out entirely.
        let mut anno = Map::new();
        anno.insert("prometheus.io/scrape".into(), json!("false"));
        prometheus_merge(&mut anno, &mut proxy, 15020);
        assert_eq!(anno.len(), 1);
    }
}
