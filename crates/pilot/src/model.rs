//! The Kubernetes and Istio objects the registry reads, parsed from ordinary manifests (the YAML
//! a user would `kubectl apply`) and validated. Unknown fields are allowed (real manifests carry
//! many); the fields Skiff uses are type-checked and validated, and every error names the file,
//! the document, the object and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

use serde::Deserialize;

/// The namespace of an object whose manifest names none (as `kubectl apply` without `-n`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// A manifest document that cannot be used, with everything needed to find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocError {
    pub file: String,
    /// 0-based index of the YAML document in the file.
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// The object's identity when known (namespace defaulted as the object's would be): its last
    /// good version can stay in force.
    pub key: Option<Box<Key>>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.field, self.reason)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

// === Service ===

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub external_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Service {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// What a Service's `clusterIP` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIp {
    /// Not written in the manifest: the registry allocates one (as the API server would).
    Unset,
    /// `None`: a headless Service.
    Headless,
    Ip(IpAddr),
}

impl Service {
    pub fn cluster_ip(&self) -> ClusterIp {
        match self.spec.cluster_ip.as_deref().map(str::trim) {
            None | Some("") => ClusterIp::Unset,
            Some("None") => ClusterIp::Headless,
            Some(ip) => ip.parse().map(ClusterIp::Ip).unwrap_or(ClusterIp::Unset),
        }
    }

    pub fn is_external_name(&self) -> bool {
        self.spec.type_.as_deref() == Some("ExternalName")
    }
}

// === Endpoints / EndpointSlice ===

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: String,
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default)]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default)]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Endpoints {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EndpointConditions {
    #[serde(default)]
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    #[serde(default)]
    pub target_ref: Option<ObjectReference>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<SlicePort>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

// === Pods and Deployments ===

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: Option<PodStatus>,
}

impl Pod {
    pub fn ip(&self) -> Option<IpAddr> {
        self.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
    }

    /// Ready as the endpoints controller sees it: an IP, not finished, and the `Ready` condition
    /// true when conditions are written (manifests the local mesh writes may carry none).
    pub fn is_ready(&self) -> bool {
        let Some(status) = &self.status else {
            return false;
        };
        if self.ip().is_none() || matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
            return false;
        }
        match status.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) => c.status == "True",
            None => true,
        }
    }

    /// The container port named `name` (for a Service's named `targetPort`).
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct LabelSelector {
    #[serde(default, rename = "matchLabels")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct DeploymentSpec {
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Deployment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DeploymentSpec,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Namespace {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// An Istio config object (`networking.istio.io` and friends). The kinds Skiff applies
/// (VirtualService, DestinationRule, Gateway, ServiceEntry, Sidecar) are parsed and validated as
/// Istio's webhook would (`api`); a resource that fails is refused at parse time, so its last good
/// version stays in force. Other kinds are kept as written.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: serde_json::Value,
    /// The validated spec, for the kinds Skiff applies.
    pub parsed: Option<Arc<api::Spec>>,
    /// Validation warnings (the resource applies anyway, as in Istio).
    pub warnings: Vec<api::Finding>,
}

/// A Kubernetes Secret holding a certificate (`kubernetes.io/tls`, or a generic Secret with
/// `cert`/`key`/`cacert`), for gateways' `credentialName`. Other Secrets are not read. The bytes
/// never reach logs or `/debug`: `Debug` prints key names and sizes only.
#[derive(Clone, PartialEq, Default)]
pub struct Secret {
    pub metadata: ObjectMeta,
    pub type_: String,
    /// Decoded `data` (and `stringData`).
    pub data: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .data
            .iter()
            .map(|(k, v)| format!("{k}: <{} bytes redacted>", v.len()))
            .collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("data", &keys)
            .finish()
    }
}

/// The Secret keys Istio reads a certificate from (`pilot/pkg/credentials/kube/secrets.go`):
/// the TLS Secret layout, then the generic one.
pub const TLS_CERT_KEYS: [(&str, &str, &str); 2] =
    [("tls.crt", "tls.key", "ca.crt"), ("cert", "key", "cacert")];

impl Secret {
    /// `(certificate chain, private key)` in PEM, if this Secret holds a server certificate.
    pub fn certificate(&self) -> Option<(&[u8], &[u8])> {
        TLS_CERT_KEYS
            .iter()
            .find_map(|(c, k, _)| Some((self.data.get(*c)?.as_slice(), self.data.get(*k)?.as_slice())))
    }

    /// The CA bundle for client-certificate validation (`-cacert` Secrets, or `ca.crt`/`cacert`).
    pub fn ca_certificate(&self) -> Option<&[u8]> {
        TLS_CERT_KEYS
            .iter()
            .find_map(|(_, _, ca)| self.data.get(*ca).map(Vec::as_slice))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecret {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

/// Istio kinds by API group.
const ISTIO_KINDS: &[(&str, &[&str])] = &[
    (
        "networking.istio.io",
        &[
            "VirtualService",
            "DestinationRule",
            "Gateway",
            "ServiceEntry",
            "Sidecar",
            "WorkloadEntry",
            "WorkloadGroup",
            "EnvoyFilter",
            "ProxyConfig",
        ],
    ),
    (
        "security.istio.io",
        &[
            "PeerAuthentication",
            "AuthorizationPolicy",
            "RequestAuthentication",
        ],
    ),
    ("telemetry.istio.io", &["Telemetry"]),
];

/// Kubernetes kinds that may sit in the same manifests and that the mesh does not need.
const IGNORED_KINDS: &[&str] = &[
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "Ingress",
    "IngressClass",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "LimitRange",
    "ResourceQuota",
    "PriorityClass",
    "StorageClass",
];

/// One object from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Service(Service),
    Endpoints(Endpoints),
    EndpointSlice(EndpointSlice),
    Pod(Arc<Pod>),
    Deployment(Deployment),
    Istio(Arc<IstioConfig>),
    Secret(Arc<Secret>),
}

/// Identity of an object: its kind, namespace (empty for Namespaces) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    pub fn kind(&self) -> &str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Service(_) => "Service",
            Object::Endpoints(_) => "Endpoints",
            Object::EndpointSlice(_) => "EndpointSlice",
            Object::Pod(_) => "Pod",
            Object::Deployment(_) => "Deployment",
            Object::Istio(c) => &c.kind,
            Object::Secret(_) => "Secret",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::Endpoints(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Istio(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Pod(o) => &mut Arc::make_mut(o).metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Istio(o) => &mut Arc::make_mut(o).metadata,
            Object::Secret(o) => &mut Arc::make_mut(o).metadata,
        }
    }

    pub fn key(&self) -> Key {
        let m = self.metadata();
        Key {
            kind: self.kind().to_owned(),
            namespace: match self {
                Object::Namespace(_) => String::new(),
                _ => m.namespace.clone().unwrap_or_default(),
            },
            name: m.name.clone(),
        }
    }
}

/// Where in a file a document sits, for error messages.
struct DocCtx<'a> {
    file: &'a str,
    document: usize,
    object: Option<String>,
    key: Option<Box<Key>>,
}

impl DocCtx<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> DocError {
        DocError {
            file: self.file.to_owned(),
            document: self.document,
            object: self.object.clone(),
            key: self.key.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses every document of a manifest file. Any bad document fails the whole file (the caller
/// keeps the file's last good objects). `kind: List` documents are expanded.
pub fn parse_manifests(file: &Path, text: &str) -> Result<Vec<Object>, DocError> {
    parse_documents(file, text).into_iter().collect()
}

/// Parses every document of a manifest file on its own: one result per object (a `List`'s items
/// each count), so one bad object does not hide the others. A YAML syntax error ends the file.
pub fn parse_documents(file: &Path, text: &str) -> Vec<Result<Object, DocError>> {
    let file_name = file.display().to_string();
    let mut out = Vec::new();
    for (document, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let ctx = DocCtx {
            file: &file_name,
            document,
            object: None,
            key: None,
        };
        let value = match serde_json::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(ctx.err("", format!("invalid YAML: {e}"))));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
            let Some(items) = value.get("items").and_then(|i| i.as_array()) else {
                out.push(Err(ctx.err("items", "a List needs an items array")));
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                match parse_object(&ctx, &format!("items[{i}]."), item.clone()) {
                    Ok(Some(o)) => out.push(Ok(o)),
                    Ok(None) => {}
                    Err(e) => out.push(Err(e)),
                }
            }
        } else {
            match parse_object(&ctx, "", value) {
                Ok(Some(o)) => out.push(Ok(o)),
                Ok(None) => {}
                Err(e) => out.push(Err(e)),
            }
        }
    }
    out
}

/// Parses one object as an API server returns it (`apiVersion` and `kind` set); `origin` names
/// where it came from in errors (a watch).
pub fn parse_value(origin: &str, value: serde_json::Value) -> Result<Option<Object>, DocError> {
    let ctx = DocCtx {
        file: origin,
        document: 0,
        object: None,
        key: None,
    };
    parse_object(&ctx, "", value)
}

fn typed<T: serde::de::DeserializeOwned>(
    ctx: &DocCtx<'_>,
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, DocError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            prefix.trim_end_matches('.').to_owned()
        } else {
            format!("{prefix}{path}")
        };
        ctx.err(field, e.into_inner().to_string())
    })
}

fn parse_object(
    outer: &DocCtx<'_>,
    prefix: &str,
    value: serde_json::Value,
) -> Result<Option<Object>, DocError> {
    let mut ctx = DocCtx {
        file: outer.file,
        document: outer.document,
        object: None,
        key: None,
    };
    if !value.is_object() {
        return Err(ctx.err(
            prefix.trim_end_matches('.'),
            "a manifest document must be a mapping",
        ));
    }
    let str_field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = str_field("kind").ok_or_else(|| ctx.err(format!("{prefix}kind"), "is required"))?;
    let api_version =
        str_field("apiVersion").ok_or_else(|| ctx.err(format!("{prefix}apiVersion"), "is required"))?;
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let namespace = value.pointer("/metadata/namespace").and_then(|v| v.as_str());
    ctx.object = Some(match (kind.as_str(), namespace) {
        ("Namespace", _) | (_, None) => format!("{kind} {name}"),
        (_, Some(ns)) => format!("{kind} {ns}/{name}"),
    });
    if !name.is_empty() {
        ctx.key = Some(Box::new(Key {
            kind: kind.clone(),
            namespace: match (kind.as_str(), namespace) {
                ("Namespace", _) => String::new(),
                (_, Some(ns)) if !ns.is_empty() => ns.to_owned(),
                _ => DEFAULT_NAMESPACE.to_owned(),
            },
            name: name.clone(),
        }));
    }
    if name.is_empty() {
        return Err(ctx.err(format!("{prefix}metadata.name"), "is required"));
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
    let mut obj = match (group, kind.as_str()) {
        ("", "Namespace") => Object::Namespace(typed(&ctx, prefix, value)?),
        ("", "Service") => {
            let s: Service = typed(&ctx, prefix, value)?;
            validate_service(&ctx, prefix, &s)?;
            Object::Service(s)
        }
        ("", "Endpoints") => {
            let e: Endpoints = typed(&ctx, prefix, value)?;
            validate_endpoints(&ctx, prefix, &e)?;
            Object::Endpoints(e)
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let e: EndpointSlice = typed(&ctx, prefix, value)?;
            validate_slice(&ctx, prefix, &e)?;
            Object::EndpointSlice(e)
        }
        ("", "Pod") => {
            let p: Pod = typed(&ctx, prefix, value)?;
            if let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                if ip.parse::<IpAddr>().is_err() {
                    return Err(ctx.err(
                        format!("{prefix}status.podIP"),
                        format!("{ip:?} is not an IP address"),
                    ));
                }
            }
            Object::Pod(Arc::new(p))
        }
        ("apps", "Deployment") => Object::Deployment(typed(&ctx, prefix, value)?),
        (g, k) if ISTIO_KINDS.iter().any(|(group, _)| *group == g) => {
            if !ISTIO_KINDS
                .iter()
                .any(|(group, kinds)| *group == g && kinds.contains(&k))
            {
                return Err(ctx.err(
                    format!("{prefix}kind"),
                    format!("unknown kind {k:?} in API group {g}"),
                ));
            }
            let metadata: ObjectMeta = typed(
                &ctx,
                &format!("{prefix}metadata."),
                value.get("metadata").cloned().unwrap_or_default(),
            )?;
            let spec = value.get("spec").cloned().unwrap_or(serde_json::Value::Null);
            let (parsed, warnings) = if g == api::GROUP {
                parse_networking(&ctx, prefix, version, &kind, &metadata, spec.clone())?
            } else {
                (None, Vec::new())
            };
            Object::Istio(Arc::new(IstioConfig {
                api_version: api_version.clone(),
                kind: kind.clone(),
                metadata,
                spec,
                parsed,
                warnings,
            }))
        }
        ("", "Secret") => match parse_secret(&ctx, prefix, value)? {
            Some(s) => Object::Secret(Arc::new(s)),
            None => return Ok(None),
        },
        (_, k) if IGNORED_KINDS.contains(&k) => {
            tracing::debug!(file = outer.file, kind = k, name = %name, "kind not used by the mesh; skipped");
            return Ok(None);
        }
        (g, k) => {
            let group = if g.is_empty() { "core" } else { g };
            return Err(ctx.err(
                format!("{prefix}kind"),
                format!(
                    "unknown kind {k:?} (apiVersion {api_version}, group {group}); Skiff reads Namespace, \
                     Service, Endpoints, EndpointSlice, Pod, Deployment and the Istio kinds"
                ),
            ));
        }
    };
    let meta = obj.metadata_mut();
    if !matches!(kind.as_str(), "Namespace") && meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    Ok(Some(obj))
}

/// Validates a `networking.istio.io` resource with Istio's rules; the first error names the field
/// and every error is in the reason (a resource is refused as a whole, as the webhook does).
fn parse_networking(
    ctx: &DocCtx<'_>,
    prefix: &str,
    version: &str,
    kind: &str,
    metadata: &ObjectMeta,
    spec: serde_json::Value,
) -> Result<(Option<Arc<api::Spec>>, Vec<api::Finding>), DocError> {
    if !api::VERSIONS.contains(&version) {
        return Err(ctx.err(
            format!("{prefix}apiVersion"),
            format!(
                "{} {version} is not served (networking.istio.io serves {})",
                api::GROUP,
                api::VERSIONS.join(", ")
            ),
        ));
    }
    let namespace = metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    match api::parse(kind, namespace, &metadata.name, spec) {
        Ok(Some(p)) => Ok((Some(Arc::new(p.spec)), p.warnings)),
        Ok(None) => Ok((None, Vec::new())),
        Err(findings) => {
            let errors: Vec<&api::Finding> =
                findings.iter().filter(|f| f.level == api::Level::Error).collect();
            let first = errors.first().map(|f| f.field.clone()).unwrap_or_default();
            let reason = errors
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    if i == 0 {
                        format!("{} [{}]", f.message, f.code)
                    } else {
                        format!("{}{}: {} [{}]", prefix, f.field, f.message, f.code)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            Err(ctx.err(format!("{prefix}{first}"), reason))
        }
    }
}

/// A Secret that holds a certificate, decoded; `None` for Secrets the mesh does not read
/// (service-account tokens, registry credentials, …).
fn parse_secret(
    ctx: &DocCtx<'_>,
    prefix: &str,
    value: serde_json::Value,
) -> Result<Option<Secret>, DocError> {
    let raw: RawSecret = typed(ctx, prefix, value)?;
    let type_ = raw.type_.unwrap_or_else(|| "Opaque".into());
    let mut data = BTreeMap::new();
    for (k, v) in &raw.data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|e| ctx.err(format!("{prefix}data.{k}"), format!("not base64: {e}")))?;
        data.insert(k.clone(), bytes);
    }
    for (k, v) in raw.string_data {
        data.insert(k, v.into_bytes());
    }
    let has_cert = TLS_CERT_KEYS
        .iter()
        .any(|(c, _, ca)| data.contains_key(*c) || data.contains_key(*ca));
    if type_ != "kubernetes.io/tls" && !has_cert {
        return Ok(None);
    }
    if type_ == "kubernetes.io/tls" {
        for key in ["tls.crt", "tls.key"] {
            if !data.contains_key(key) {
                return Err(ctx.err(
                    format!("{prefix}data"),
                    format!("a kubernetes.io/tls Secret needs {key}"),
                ));
            }
        }
    }
    Ok(Some(Secret {
        metadata: raw.metadata,
        type_,
        data,
    }))
}

fn valid_port(p: i64) -> bool {
    (1..=65535).contains(&p)
}

fn validate_service(ctx: &DocCtx<'_>, prefix: &str, s: &Service) -> Result<(), DocError> {
    let f = |rest: &str| format!("{prefix}{rest}");
    if let Some(ip) = s.spec.cluster_ip.as_deref() {
        if !ip.is_empty() && ip != "None" && ip.parse::<IpAddr>().is_err() {
            return Err(ctx.err(
                f("spec.clusterIP"),
                format!("{ip:?} is not an IP address or \"None\""),
            ));
        }
    }
    if s.is_external_name() && s.spec.external_name.as_deref().is_none_or(str::is_empty) {
        return Err(ctx.err(f("spec.externalName"), "is required for type ExternalName"));
    }
    let mut seen: Vec<(i64, String, usize)> = Vec::new();
    let mut names: Vec<(String, usize)> = Vec::new();
    for (i, p) in s.spec.ports.iter().enumerate() {
        if !valid_port(p.port) {
            return Err(ctx.err(
                f(&format!("spec.ports[{i}].port")),
                format!("{} is out of range 1-65535", p.port),
            ));
        }
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(ctx.err(
                f(&format!("spec.ports[{i}].protocol")),
                format!("{proto:?} is not TCP, UDP or SCTP"),
            ));
        }
        if let Some((_, _, j)) = seen.iter().find(|(port, pr, _)| *port == p.port && *pr == proto) {
            return Err(ctx.err(
                f(&format!("spec.ports[{i}].port")),
                format!("duplicate port {}/{proto} (also spec.ports[{j}])", p.port),
            ));
        }
        seen.push((p.port, proto, i));
        match &p.name {
            Some(n) if !n.is_empty() => {
                if let Some((_, j)) = names.iter().find(|(m, _)| m == n) {
                    return Err(ctx.err(
                        f(&format!("spec.ports[{i}].name")),
                        format!("duplicate port name {n:?} (also spec.ports[{j}])"),
                    ));
                }
                names.push((n.clone(), i));
            }
            _ if s.spec.ports.len() > 1 => {
                return Err(ctx.err(
                    f(&format!("spec.ports[{i}].name")),
                    "is required when a Service has more than one port",
                ));
            }
            _ => {}
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !valid_port(*t) => {
                return Err(ctx.err(
                    f(&format!("spec.ports[{i}].targetPort")),
                    format!("{t} is out of range 1-65535"),
                ));
            }
            Some(IntOrString::Str(t)) if t.is_empty() => {
                return Err(ctx.err(f(&format!("spec.ports[{i}].targetPort")), "must not be empty"));
            }
            _ => {}
        }
    }
    Ok(())
}

fn validate_endpoints(ctx: &DocCtx<'_>, prefix: &str, e: &Endpoints) -> Result<(), DocError> {
    for (i, subset) in e.subsets.iter().enumerate() {
        for (list, field) in [
            (&subset.addresses, "addresses"),
            (&subset.not_ready_addresses, "notReadyAddresses"),
        ] {
            for (j, a) in list.iter().enumerate() {
                if a.ip.parse::<IpAddr>().is_err() {
                    return Err(ctx.err(
                        format!("{prefix}subsets[{i}].{field}[{j}].ip"),
                        format!("{:?} is not an IP address", a.ip),
                    ));
                }
            }
        }
        for (j, p) in subset.ports.iter().enumerate() {
            if !valid_port(p.port) {
                return Err(ctx.err(
                    format!("{prefix}subsets[{i}].ports[{j}].port"),
                    format!("{} is out of range 1-65535", p.port),
                ));
            }
        }
    }
    Ok(())
}

fn validate_slice(ctx: &DocCtx<'_>, prefix: &str, e: &EndpointSlice) -> Result<(), DocError> {
    if !e.metadata.labels.contains_key(SERVICE_NAME_LABEL) {
        return Err(ctx.err(
            format!("{prefix}metadata.labels"),
            format!("label {SERVICE_NAME_LABEL} is required to tie the slice to its Service"),
        ));
    }
    let fqdn = e.address_type.as_deref() == Some("FQDN");
    for (i, ep) in e.endpoints.iter().enumerate() {
        for (j, a) in ep.addresses.iter().enumerate() {
            if !fqdn && a.parse::<IpAddr>().is_err() {
                return Err(ctx.err(
                    format!("{prefix}endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                ));
            }
        }
    }
    for (j, p) in e.ports.iter().enumerate() {
        if let Some(port) = p.port {
            if !valid_port(port) {
                return Err(ctx.err(
                    format!("{prefix}ports[{j}].port"),
                    format!("{port} is out of range 1-65535"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Object>, DocError> {
        parse_manifests(Path::new("app.yaml"), text)
    }

    #[test]
    fn seed_nginx_manifest_parses_with_default_namespace() {
        let objs = parse(include_str!("../tests/testdata/seed004/sidecar-nginx.yaml")).unwrap();
        let kinds: Vec<_> = objs.iter().map(|o| o.key().to_string()).collect();
        assert!(kinds.contains(&"Service sidecar/nginx".to_string()), "{kinds:?}");
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\n\
                    metadata: {name: web, namespace: a}\nspec:\n  ports:\n  - {name: http, port: 80}\n  - {name: http2, port: 80}\n";
        let e = parse(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "app.yaml: document 1 (Service a/web): spec.ports[1].port: duplicate port 80/TCP (also spec.ports[0])"
        );
        let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: x}]}\n")
            .unwrap_err();
        assert_eq!(e.field, "spec.ports[0].port", "{e}");
        let e = parse("apiVersion: v1\nkind: Servce\nmetadata: {name: web}\n").unwrap_err();
        assert!(e.to_string().contains("unknown kind \"Servce\""), "{e}");
        let e = parse("apiVersion: v1\nkind: Service\nmetadata: {name: web\n").unwrap_err();
        assert!(
            e.to_string().starts_with("app.yaml: document 0: invalid YAML"),
            "{e}"
        );
        let e = parse("apiVersion: networking.istio.io/v1beta1\nkind: VirtualSrvice\nmetadata: {name: v}\n")
            .unwrap_err();
        assert!(e.to_string().contains("networking.istio.io"), "{e}");
    }

    #[test]
    fn istio_kinds_are_kept_as_written_and_others_skipped() {
        let text = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: canary, namespace: canary}\n\
                    spec: {hosts: [canary], http: [{route: [{destination: {host: canary}}]}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n";
        let objs = parse(text).unwrap();
        assert_eq!(objs.len(), 1);
        let Object::Istio(vs) = &objs[0] else { panic!() };
        assert_eq!(vs.spec["hosts"][0], "canary");
    }
}
