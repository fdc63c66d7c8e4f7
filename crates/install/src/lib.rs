//! The Kubernetes install, as data: what `skiffctl manifest generate` prints and `deploy/` holds.
//! Names and shapes follow Istio's charts (istio-discovery 1.19) so that the namespace labels,
//! webhook selectors and Service ports users know keep working; the control plane is `skiffd`.

use base64::Engine;
use inject::Settings;
use serde_json::{json, Value};

/// The Istio kinds Skiff serves, as `(kind, plural, short names)` in `networking.istio.io`.
pub const NETWORKING_KINDS: [(&str, &str, &[&str]); 5] = [
    ("VirtualService", "virtualservices", &["vs"]),
    ("DestinationRule", "destinationrules", &["dr"]),
    ("Gateway", "gateways", &["gw"]),
    ("ServiceEntry", "serviceentries", &["se"]),
    ("Sidecar", "sidecars", &[]),
];

/// Secret holding the webhook's serving certificate (`tls.crt`, `tls.key`).
pub const WEBHOOK_SECRET: &str = "skiffd-webhook-tls";

/// What the install needs beyond the injection settings.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// PEM bundle of the CA that signed the webhook certificate (`caBundle`); without it the
    /// API server cannot call the webhook until one is patched in.
    pub ca_bundle_pem: Option<Vec<u8>>,
}

fn labels(s: &Settings) -> Value {
    json!({"app": "skiffd", "istio": "pilot", "istio.io/rev": s.revision_or_default()})
}

pub fn namespace(s: &Settings) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": s.istio_namespace}})
}

/// A CRD that stores the Istio kind as Istio 1.19 does (v1alpha3 storage, v1beta1 and v1 served).
/// The schema accepts any spec: validation is Skiff's own (`skiffctl analyze`, skiffd's NACKs).
pub fn crd(kind: &str, plural: &str, short_names: &[&str]) -> Value {
    let schema = json!({"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    }});
    let versions: Vec<Value> = ["v1alpha3", "v1beta1", "v1"]
        .iter()
        .map(|v| {
            json!({"name": v, "served": true, "storage": *v == "v1alpha3",
                   "schema": schema, "subresources": {"status": {}}})
        })
        .collect();
    let mut names = json!({
        "kind": kind,
        "listKind": format!("{kind}List"),
        "plural": plural,
        "singular": kind.to_lowercase(),
        "categories": ["istio-io", "networking-istio-io"],
    });
    if !short_names.is_empty() {
        names["shortNames"] = json!(short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.networking.istio.io"), "labels": {"app": "skiffd"}},
        "spec": {"group": "networking.istio.io", "names": names, "scope": "Namespaced", "versions": versions},
    })
}

pub fn rbac(s: &Settings) -> Vec<Value> {
    let ns = &s.istio_namespace;
    let read = json!(["get", "list", "watch"]);
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "skiffd", "namespace": ns, "labels": {"app": "skiffd"}}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "skiffd", "labels": {"app": "skiffd"}},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "services", "endpoints", "namespaces", "nodes"], "verbs": read},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            {"apiGroups": ["networking.istio.io"], "resources": ["*"], "verbs": read},
            {"apiGroups": ["networking.istio.io"], "resources": ["*/status"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "verbs": ["get", "list", "watch", "update", "patch"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "skiffd", "labels": {"app": "skiffd"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "skiffd"},
               "subjects": [{"kind": "ServiceAccount", "name": "skiffd", "namespace": ns}]}),
    ]
}

/// skiffd's Deployment: the webhook on 15017 with the certificate from [`WEBHOOK_SECRET`], and
/// the ports Istio's istiod exposes (xDS 15010/15012, metrics 15014).
pub fn deployment(s: &Settings) -> Value {
    let mut args = vec![
        "--webhook-addr=0.0.0.0:15017".to_string(),
        "--webhook-cert=/var/run/secrets/skiffd/tls.crt".to_string(),
        "--webhook-key=/var/run/secrets/skiffd/tls.key".to_string(),
        format!("--hub={}", s.hub),
        format!("--tag={}", s.tag),
        format!("--istio-namespace={}", s.istio_namespace),
    ];
    if !s.revision.is_empty() {
        args.push(format!("--revision={}", s.revision));
    }
    let mut pod_labels = labels(s);
    pod_labels["sidecar.istio.io/inject"] = json!("false");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": s.discovery_service_name(), "namespace": s.istio_namespace, "labels": labels(s)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "skiffd", "istio.io/rev": s.revision_or_default()}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": "skiffd",
                    "containers": [{
                        "name": "discovery",
                        "image": s.proxy_image(),
                        "command": ["/usr/local/bin/skiffd"],
                        "args": args,
                        "ports": [
                            {"name": "grpc-xds", "containerPort": 15010, "protocol": "TCP"},
                            {"name": "https-dns", "containerPort": 15012, "protocol": "TCP"},
                            {"name": "http-monitoring", "containerPort": 15014, "protocol": "TCP"},
                            {"name": "https-webhook", "containerPort": 15017, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"tcpSocket": {"port": 15017}, "periodSeconds": 3, "timeoutSeconds": 5},
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "runAsUser": 1337,
                            "runAsGroup": 1337,
                        },
                        "volumeMounts": [{"name": "webhook-tls", "mountPath": "/var/run/secrets/skiffd", "readOnly": true}],
                    }],
                    "volumes": [{"name": "webhook-tls", "secret": {"secretName": WEBHOOK_SECRET}}],
                },
            },
        },
    })
}

pub fn service(s: &Settings) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": s.discovery_service_name(), "namespace": s.istio_namespace, "labels": labels(s)},
        "spec": {
            "ports": [
                {"name": "grpc-xds", "port": 15010, "protocol": "TCP"},
                {"name": "https-dns", "port": 15012, "protocol": "TCP"},
                {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
                {"name": "http-monitoring", "port": 15014, "protocol": "TCP"},
            ],
            "selector": {"app": "skiffd", "istio.io/rev": s.revision_or_default()},
        },
    })
}

fn expr(key: &str, op: &str, values: &[&str]) -> Value {
    if values.is_empty() {
        json!({"key": key, "operator": op})
    } else {
        json!({"key": key, "operator": op, "values": values})
    }
}

/// Istio's `istio-sidecar-injector` with its four webhooks (seed 004) and the selectors of
/// the chart: by revision (namespace, then object), then, for the default revision, by the
/// `istio-injection=enabled` namespace label and by the pod label `sidecar.istio.io/inject=true`.
pub fn mutating_webhook(s: &Settings, opts: &Options) -> Value {
    let rev = s.revision_or_default();
    let mut client = json!({"service": {
        "name": s.discovery_service_name(), "namespace": s.istio_namespace, "path": "/inject", "port": 443,
    }});
    if let Some(pem) = &opts.ca_bundle_pem {
        client["caBundle"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let hook = |name: &str, ns: Vec<Value>, obj: Vec<Value>| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1beta1", "v1"],
            "clientConfig": client,
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "reinvocationPolicy": "Never",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "*"}],
            "namespaceSelector": {"matchExpressions": ns},
            "objectSelector": {"matchExpressions": obj},
        })
    };
    let not_disabled = expr("sidecar.istio.io/inject", "NotIn", &["false"]);
    let mut hooks = vec![
        hook(
            "rev.namespace.sidecar-injector.istio.io",
            vec![
                expr("istio.io/rev", "In", &[rev]),
                expr("istio-injection", "DoesNotExist", &[]),
            ],
            vec![not_disabled.clone()],
        ),
        hook(
            "rev.object.sidecar-injector.istio.io",
            vec![
                expr("istio.io/rev", "DoesNotExist", &[]),
                expr("istio-injection", "DoesNotExist", &[]),
            ],
            vec![not_disabled.clone(), expr("istio.io/rev", "In", &[rev])],
        ),
    ];
    if s.revision.is_empty() {
        hooks.push(hook(
            "namespace.sidecar-injector.istio.io",
            vec![expr("istio-injection", "In", &["enabled"])],
            vec![not_disabled],
        ));
        hooks.push(hook(
            "object.sidecar-injector.istio.io",
            vec![
                expr("istio-injection", "DoesNotExist", &[]),
                expr("istio.io/rev", "DoesNotExist", &[]),
            ],
            vec![
                expr("sidecar.istio.io/inject", "In", &["true"]),
                expr("istio.io/rev", "DoesNotExist", &[]),
            ],
        ));
    }
    let name = if s.revision.is_empty() {
        "istio-sidecar-injector".to_string()
    } else {
        format!("istio-sidecar-injector-{}", s.revision)
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app": "sidecar-injector", "istio.io/rev": rev}},
        "webhooks": hooks,
    })
}

/// The whole install, in apply order.
pub fn generate(s: &Settings, opts: &Options) -> Vec<Value> {
    let mut out = vec![namespace(s)];
    out.extend(NETWORKING_KINDS.iter().map(|(k, p, short)| crd(k, p, short)));
    out.extend(rbac(s));
    out.push(deployment(s));
    out.push(service(s));
    out.push(mutating_webhook(s, opts));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_webhooks_named_as_in_seed_004() {
        let mwc = mutating_webhook(&Settings::default(), &Options::default());
        let names: Vec<&str> = mwc["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "rev.namespace.sidecar-injector.istio.io",
                "rev.object.sidecar-injector.istio.io",
                "namespace.sidecar-injector.istio.io",
                "object.sidecar-injector.istio.io"
            ]
        );
        assert_eq!(mwc["webhooks"][2]["clientConfig"]["service"]["name"], "skiffd");
        assert!(mwc["webhooks"][0]["clientConfig"].get("caBundle").is_none());
        let with_ca = mutating_webhook(
            &Settings::default(),
            &Options {
                ca_bundle_pem: Some(b"pem".to_vec()),
            },
        );
        assert_eq!(with_ca["webhooks"][3]["clientConfig"]["caBundle"], "cGVt");
        let canary = Settings {
            revision: "canary".into(),
            ..Settings::default()
        };
        assert_eq!(
            mutating_webhook(&canary, &Options::default())["webhooks"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn service_ports_as_istiod() {
        let svc = service(&Settings::default());
        let ports: Vec<(u64, u64)> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    p.get("targetPort")
                        .and_then(Value::as_u64)
                        .unwrap_or(p["port"].as_u64().unwrap()),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [(15010, 15010), (15012, 15012), (443, 15017), (15014, 15014)]
        );
    }
}
