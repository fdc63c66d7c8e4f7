//! Golden test against seed 004: the seed's nginx Deployment, injected, gives the pod Istio 1.19.3
//! gave (`testdata/seed004-injected-pod.yaml`), once the fields the API server fills in later are
//! set aside. Plus idempotency and the workload kinds kube-inject handles.

#![allow(clippy::unwrap_used)]

use inject::manifest::{kube_inject, parse_documents, template_path};
use inject::Settings;
use serde_json::{json, Value};

const NGINX: &str = include_str!("testdata/seed004-nginx.yaml");
const SEED_POD: &str = include_str!("testdata/seed004-injected-pod.yaml");

/// Fields the API server (defaulting, the ServiceAccount admission plugin) or the kubelet add
/// after the injector has run; Istio's template does not write them either.
const SERVER_DEFAULTS: [&str; 7] = [
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "defaultMode",
    "divisor",
    "successThreshold",
    "scheme",
];

fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in SERVER_DEFAULTS {
                m.remove(k);
            }
            // `fieldRef.apiVersion` is defaulted to v1; images differ by design (Skiff's own).
            if m.contains_key("fieldPath") {
                m.remove("apiVersion");
            }
            m.remove("image");
            if m.get("resources") == Some(&json!({})) {
                m.remove("resources");
            }
            for (k, child) in m.iter_mut() {
                if k == "volumes" || k == "volumeMounts" {
                    if let Value::Array(items) = child {
                        items.retain(|i| !i["name"].as_str().unwrap_or("").starts_with("kube-api-access-"));
                    }
                }
                normalize(child);
            }
            // The ServiceAccount mount was istio-init's only one.
            if m.get("volumeMounts") == Some(&json!([])) {
                m.remove("volumeMounts");
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// The pod template of the first document of `yaml` after kube-inject.
fn injected_template(yaml: &str, settings: &Settings) -> Value {
    let (out, _) = kube_inject(yaml, settings).unwrap();
    let doc = parse_documents(&out).unwrap().remove(0);
    let path = template_path(doc["kind"].as_str().unwrap()).unwrap();
    path.iter().fold(doc, |d, p| d[*p].clone())
}

/// Seed 004's Istio called its control plane `istiod`; Skiff's is `skiffd` by default.
fn seed_settings() -> Settings {
    Settings {
        discovery_service: "istiod".into(),
        ..Settings::default()
    }
}

#[test]
fn seed_004_nginx_deployment_matches_istio() {
    // The seed applied nginx.yaml with `-n sidecar`.
    let yaml = NGINX.replacen(
        "  name: nginx-deployment\n",
        "  name: nginx-deployment\n  namespace: sidecar\n",
        1,
    );
    let mut ours = injected_template(&yaml, &seed_settings());
    let mut seed: Value = serde_yaml_ng::from_str(SEED_POD).unwrap();
    normalize(&mut ours);
    normalize(&mut seed);

    // Skiff's init container runs `skiff-agent iptables`; `istio-iptables` is its alias.
    assert_eq!(seed["spec"]["initContainers"][0]["args"][0], "istio-iptables");
    seed["spec"]["initContainers"][0]["args"][0] = json!("iptables");

    for field in ["initContainers", "containers", "volumes"] {
        let (ours, seed) = (&ours["spec"][field], &seed["spec"][field]);
        assert_eq!(
            ours,
            seed,
            "spec.{field} differs:\nskiff: {}\nistio: {}",
            serde_json::to_string_pretty(ours).unwrap(),
            serde_json::to_string_pretty(seed).unwrap()
        );
    }
    assert_eq!(ours["metadata"]["annotations"], seed["metadata"]["annotations"]);
    let mut seed_labels = seed["metadata"]["labels"].clone();
    // Added by the ReplicaSet controller, not by injection.
    seed_labels.as_object_mut().unwrap().remove("pod-template-hash");
    assert_eq!(ours["metadata"]["labels"], seed_labels);
    // Nothing else was added to the template.
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&ours["spec"]), ["containers", "initContainers", "volumes"]);
    assert_eq!(keys(&ours["metadata"]), ["annotations", "labels"]);
}

#[test]
fn default_images_and_control_plane_are_skiffs() {
    let pod = injected_template(NGINX, &Settings::default());
    let image = format!("docker.io/skiff/skiff:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(pod["spec"]["initContainers"][0]["image"], json!(image));
    assert_eq!(pod["spec"]["containers"][1]["image"], json!(image));
    let env = &pod["spec"]["containers"][1]["env"];
    let ca = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CA_ADDR")
        .unwrap();
    assert_eq!(ca["value"], "skiffd.istio-system.svc:15012");
    let owner = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ISTIO_META_OWNER")
        .unwrap();
    assert_eq!(
        owner["value"],
        "kubernetes://apis/apps/v1/namespaces/default/deployments/nginx-deployment"
    );
    // The app container is untouched.
    assert_eq!(
        pod["spec"]["containers"][0],
        json!({"name": "nginx", "image": "nginx:1.25.3"})
    );

    let hub = Settings {
        hub: "registry.example/mesh".into(),
        tag: "dev".into(),
        ..Settings::default()
    };
    let pod = injected_template(NGINX, &hub);
    assert_eq!(
        pod["spec"]["containers"][1]["image"],
        "registry.example/mesh/skiff:dev"
    );
}

const RICH: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, version: v2}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "9090"
        traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.96.0.0/12
    spec:
      initContainers:
      - {name: migrate, image: busybox}
      containers:
      - name: web
        image: web:2
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /ready, port: http}}
        livenessProbe: {tcpSocket: {port: 8080}}
      volumes:
      - {name: data, emptyDir: {}}
"#;

#[test]
fn injecting_twice_equals_once() {
    for yaml in [NGINX, RICH] {
        let (once, _) = kube_inject(yaml, &Settings::default()).unwrap();
        let (twice, warnings) = kube_inject(&once, &Settings::default()).unwrap();
        assert_eq!(once, twice);
        assert!(warnings[0].contains("already injected"), "{warnings:?}");
    }
}

#[test]
fn rich_pod_follows_istio_post_processing() {
    let pod = injected_template(RICH, &Settings::default());
    let spec = &pod["spec"];
    let names = |k: &str| -> Vec<String> {
        spec[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("initContainers"), ["migrate", "istio-init"]);
    assert_eq!(names("containers"), ["web", "istio-proxy"]);
    assert_eq!(names("volumes").last().unwrap(), "data");
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-name"],
        "web"
    );
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "v2"
    );
    let anno = &pod["metadata"]["annotations"];
    assert_eq!(anno["prometheus.io/port"], "15020");
    assert_eq!(anno["prometheus.io/path"], "/stats/prometheus");
    let env: Vec<&Value> = spec["containers"][1]["env"].as_array().unwrap().iter().collect();
    let get = |n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["value"].clone());
    assert_eq!(
        get("ISTIO_PROMETHEUS_ANNOTATIONS").unwrap(),
        r#"{"scrape":"true","path":"","port":"9090"}"#
    );
    let probers: Value =
        serde_json::from_str(get("ISTIO_KUBE_APP_PROBERS").unwrap().as_str().unwrap()).unwrap();
    assert_eq!(
        probers,
        json!({"/app-health/web/readyz": {"httpGet": {"path": "/ready", "port": 8080}},
               "/app-health/web/livez": {"tcpSocket": {"port": 8080}}})
    );
    assert_eq!(
        spec["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020}})
    );
    assert_eq!(
        get("ISTIO_META_POD_PORTS").unwrap(),
        "[\n    {\"name\":\"http\",\"containerPort\":8080}\n]"
    );
    assert_eq!(get("ISTIO_META_APP_CONTAINERS").unwrap(), "web");
    let args = &spec["initContainers"][1]["args"];
    assert_eq!(args[12], "10.96.0.0/12");
}

#[test]
fn every_workload_kind_is_injected_and_others_pass_through() {
    let pod_spec = "{containers: [{name: app, image: app}]}";
    let docs = [
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {pod_spec}\n"),
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec: {{selector: {{matchLabels: {{a: b}}}}, template: {{metadata: {{labels: {{a: b}}}}, spec: {pod_spec}}}}}\n"),
        format!("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: s}}\nspec: {{serviceName: s, selector: {{matchLabels: {{a: b}}}}, template: {{metadata: {{labels: {{a: b}}}}, spec: {pod_spec}}}}}\n"),
        format!("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: ds}}\nspec: {{selector: {{matchLabels: {{a: b}}}}, template: {{metadata: {{labels: {{a: b}}}}, spec: {pod_spec}}}}}\n"),
        format!("apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: rs}}\nspec: {{selector: {{matchLabels: {{a: b}}}}, template: {{metadata: {{labels: {{a: b}}}}, spec: {pod_spec}}}}}\n"),
        format!("apiVersion: batch/v1\nkind: Job\nmetadata: {{name: j}}\nspec: {{template: {{spec: {pod_spec}}}}}\n"),
        format!("apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: cj}}\nspec: {{schedule: '* * * * *', jobTemplate: {{spec: {{template: {{spec: {pod_spec}}}}}}}}}\n"),
    ];
    for doc in &docs {
        let pod = injected_template(doc, &Settings::default());
        let names: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["app", "istio-proxy"], "{doc}");
        assert!(pod["metadata"]["annotations"]["sidecar.istio.io/status"].is_string());
    }
    let cj = injected_template(&docs[6], &Settings::default());
    let env = cj["spec"]["containers"][1]["env"].as_array().unwrap().clone();
    let owner = env.iter().find(|e| e["name"] == "ISTIO_META_OWNER").unwrap();
    assert_eq!(
        owner["value"],
        "kubernetes://apis/batch/v1/namespaces/default/cronjobs/cj"
    );

    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {containers: x}\n";
    let (out, _) = kube_inject(cm, &Settings::default()).unwrap();
    assert_eq!(parse_documents(&out).unwrap(), parse_documents(cm).unwrap());
}

#[test]
fn skipped_pods_are_left_alone_with_a_warning() {
    for (meta, why) in [
        (
            "{name: p, annotations: {sidecar.istio.io/inject: 'false'}}",
            "injection disabled",
        ),
        (
            "{name: p, labels: {sidecar.istio.io/inject: 'false'}}",
            "injection disabled",
        ),
        ("{name: p, namespace: kube-system}", "never injected"),
    ] {
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {meta}\nspec: {{containers: [{{name: a, image: a}}]}}\n"
        );
        let (out, warnings) = kube_inject(&yaml, &Settings::default()).unwrap();
        assert_eq!(parse_documents(&out).unwrap(), parse_documents(&yaml).unwrap());
        assert!(warnings[0].contains(why), "{warnings:?}");
    }
    let host = "apiVersion: v1\nkind: Pod\nmetadata: {name: h}\nspec: {hostNetwork: true, containers: [{name: a, image: a}]}\n";
    let (_, warnings) = kube_inject(host, &Settings::default()).unwrap();
    assert_eq!(
        warnings,
        ["===> Skipping injection because Pod h has host networking enabled"]
    );
}
