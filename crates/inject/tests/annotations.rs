//! Every per-pod annotation changes the injected pod the way Istio 1.19's template does, and
//! bad values are errors that name the object and the annotation.

#![allow(clippy::unwrap_used)]

use inject::{inject, Outcome, Settings, Target};
use serde_json::{json, Value};

fn base(annotations: Value) -> Value {
    json!({
        "metadata": {"name": "web", "annotations": annotations, "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "web",
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
        }]},
    })
}

fn target() -> Target {
    Target {
        kind: "Pod".into(),
        api_version: "v1".into(),
        name: "web".into(),
        namespace: "shop".into(),
        ..Target::default()
    }
}

fn injected(annotations: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    match inject(&base(Value::Object(map)), &target(), &Settings::default()).unwrap() {
        Outcome::Injected(p) => p,
        Outcome::Skipped(s) => panic!("skipped: {s}"),
    }
}

fn init(p: &Value) -> &Value {
    p["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-init")
        .unwrap()
}

fn proxy(p: &Value) -> &Value {
    p["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap()
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The value after `flag` in the init container's args.
fn flag(p: &Value, flag: &str) -> Option<String> {
    let a = args(init(p));
    a.iter().position(|x| x == flag).map(|i| a[i + 1].clone())
}

fn env(p: &Value, name: &str) -> Option<Value> {
    proxy(p)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].clone())
}

#[test]
fn capture_annotations_become_istio_iptables_flags() {
    let cases: [(&str, &str, &str, &str); 9] = [
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8,fd00::/8",
            "-i",
            "10.0.0.0/8,fd00::/8",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "169.254.169.254/32",
            "-x",
            "169.254.169.254/32",
        ),
        (
            "traffic.sidecar.istio.io/includeInboundPorts",
            "80,8080",
            "-b",
            "80,8080",
        ),
        (
            "traffic.sidecar.istio.io/excludeInboundPorts",
            "9000",
            "-d",
            "15090,15021,9000,15020",
        ),
        (
            "traffic.sidecar.istio.io/includeOutboundPorts",
            "443",
            "-q",
            "443",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "3306,5432",
            "-o",
            "3306,5432",
        ),
        (
            "traffic.sidecar.istio.io/kubevirtInterfaces",
            "net1",
            "-k",
            "net1",
        ),
        ("traffic.sidecar.istio.io/excludeInterfaces", "eth1", "-c", "eth1"),
        ("sidecar.istio.io/interceptionMode", "TPROXY", "-m", "TPROXY"),
    ];
    let plain = injected(&[]);
    for f in ["-q", "-o", "-k", "-c"] {
        assert_eq!(flag(&plain, f), None, "{f} is only passed when asked for");
    }
    for (key, value, f, want) in cases {
        let p = injected(&[(key, value)]);
        assert_eq!(flag(&p, f).as_deref(), Some(want), "{key}");
        assert_ne!(args(init(&p)), args(init(&plain)), "{key}");
        // The annotation stays on the pod for the agent and for `kubectl describe`.
        assert_eq!(p["metadata"]["annotations"][key], value);
    }
}

#[test]
fn tproxy_gives_the_proxy_net_admin_as_root() {
    let p = injected(&[("sidecar.istio.io/interceptionMode", "TPROXY")]);
    let sc = &proxy(&p)["securityContext"];
    assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN"]));
    assert_eq!(
        (sc["runAsUser"].clone(), sc["runAsNonRoot"].clone()),
        (json!(0), json!(false))
    );
    assert_eq!(env(&p, "ISTIO_META_INTERCEPTION_MODE").unwrap(), "TPROXY");
}

#[test]
fn interception_none_has_no_init_container() {
    let p = injected(&[("sidecar.istio.io/interceptionMode", "NONE")]);
    assert!(p["spec"].get("initContainers").is_none());
    let status: Value = serde_json::from_str(
        p["metadata"]["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["initContainers"], Value::Null);
    assert_eq!(env(&p, "ISTIO_META_INTERCEPTION_MODE").unwrap(), "NONE");
}

#[test]
fn status_port_and_readiness() {
    let off = injected(&[("status.sidecar.istio.io/port", "0")]);
    assert!(proxy(&off).get("readinessProbe").is_none());
    assert_eq!(flag(&off, "-d").unwrap(), "15090,15021");
    // No status port: nobody to hand probes to.
    assert_eq!(
        off["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        8080
    );

    let moved = injected(&[("status.sidecar.istio.io/port", "15030")]);
    assert_eq!(flag(&moved, "-d").unwrap(), "15090,15021,15030");
    assert_eq!(
        moved["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        15030
    );

    let r = injected(&[
        ("readiness.status.sidecar.istio.io/initialDelaySeconds", "5"),
        ("readiness.status.sidecar.istio.io/periodSeconds", "7"),
        ("readiness.status.sidecar.istio.io/failureThreshold", "9"),
    ]);
    let probe = &proxy(&r)["readinessProbe"];
    assert_eq!(
        (
            probe["initialDelaySeconds"].clone(),
            probe["periodSeconds"].clone(),
            probe["failureThreshold"].clone()
        ),
        (json!(5), json!(7), json!(9))
    );
}

#[test]
fn resources_image_and_log_levels() {
    let p = injected(&[
        ("sidecar.istio.io/proxyCPU", "100m"),
        ("sidecar.istio.io/proxyMemory", "128Mi"),
        ("sidecar.istio.io/proxyCPULimit", "1"),
        ("sidecar.istio.io/proxyMemoryLimit", "512Mi"),
    ]);
    let want =
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}});
    assert_eq!(proxy(&p)["resources"], want);
    assert_eq!(init(&p)["resources"], want);
    // Only requests asked for: no limits at all (Istio drops the defaults).
    let p = injected(&[("sidecar.istio.io/proxyCPU", "50m")]);
    assert_eq!(proxy(&p)["resources"], json!({"requests": {"cpu": "50m"}}));

    let p = injected(&[("sidecar.istio.io/proxyImage", "my.registry/skiff:patched")]);
    assert_eq!(proxy(&p)["image"], "my.registry/skiff:patched");
    assert_eq!(init(&p)["image"], "my.registry/skiff:patched");

    let p = injected(&[
        ("sidecar.istio.io/logLevel", "debug"),
        ("sidecar.istio.io/componentLogLevel", "upstream:debug"),
        ("sidecar.istio.io/agentLogLevel", "default:debug"),
    ]);
    let a = args(proxy(&p));
    assert!(a.contains(&"--proxyLogLevel=debug".to_string()), "{a:?}");
    assert!(
        a.contains(&"--proxyComponentLogLevel=upstream:debug".to_string()),
        "{a:?}"
    );
    assert!(
        a.contains(&"--log_output_level=default:debug".to_string()),
        "{a:?}"
    );
    assert_eq!(args(init(&p)).last().unwrap(), "--log_output_level=default:debug");
}

#[test]
fn probe_rewriting_can_be_turned_off() {
    let on = injected(&[]);
    assert_eq!(
        on["spec"]["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020}})
    );
    assert_eq!(
        env(&on, "ISTIO_KUBE_APP_PROBERS").unwrap(),
        r#"{"/app-health/web/readyz":{"httpGet":{"path":"/ready","port":8080}}}"#
    );
    let off = injected(&[("sidecar.istio.io/rewriteAppHTTPProbers", "false")]);
    assert_eq!(
        off["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
        8080
    );
    assert_eq!(env(&off, "ISTIO_KUBE_APP_PROBERS"), None);
}

#[test]
fn core_dump_and_net_bind_service() {
    let p = injected(&[("sidecar.istio.io/enableCoreDump", "true")]);
    let names: Vec<&str> = p["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["istio-init", "enable-core-dump"]);
    assert_eq!(proxy(&p)["securityContext"]["readOnlyRootFilesystem"], false);

    let p = injected(&[("sidecar.istio.io/capNetBindService", "true")]);
    let sc = &proxy(&p)["securityContext"];
    assert_eq!(sc["capabilities"]["add"], json!(["NET_BIND_SERVICE"]));
    assert_eq!(sc["runAsUser"], 0);
}

#[test]
fn volumes_bootstrap_and_proxy_config() {
    let p = injected(&[
        ("sidecar.istio.io/bootstrapOverride", "my-bootstrap"),
        (
            "sidecar.istio.io/userVolume",
            r#"{"certs":{"secret":{"secretName":"certs"}}}"#,
        ),
        (
            "sidecar.istio.io/userVolumeMount",
            r#"{"certs":{"mountPath":"/etc/certs","readonly":true}}"#,
        ),
    ]);
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    assert!(
        volumes.contains(&json!({"name": "custom-bootstrap-volume", "configMap": {"name": "my-bootstrap"}}))
    );
    assert!(volumes.contains(&json!({"name": "certs", "secret": {"secretName": "certs"}})));
    let mounts = proxy(&p)["volumeMounts"].as_array().unwrap();
    assert!(mounts.contains(&json!({"name": "certs", "mountPath": "/etc/certs", "readonly": true})));
    assert!(mounts
        .contains(&json!({"name": "custom-bootstrap-volume", "mountPath": "/etc/istio/custom-bootstrap"})));
    assert_eq!(
        env(&p, "ISTIO_BOOTSTRAP_OVERRIDE").unwrap(),
        "/etc/istio/custom-bootstrap/custom_bootstrap.json"
    );
    let status = p["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .unwrap();
    assert!(
        status.contains("\"custom-bootstrap-volume\"") && status.contains("\"certs\""),
        "{status}"
    );

    let p = injected(&[(
        "proxy.istio.io/config",
        "holdApplicationUntilProxyStarts: true\nconcurrency: 2\n",
    )]);
    assert_eq!(p["spec"]["containers"][0]["name"], "istio-proxy");
    assert_eq!(
        proxy(&p)["lifecycle"]["postStart"]["exec"]["command"],
        json!(["skiff-agent", "wait"])
    );
    assert_eq!(
        env(&p, "PROXY_CONFIG").unwrap(),
        "{\"concurrency\":2,\"holdApplicationUntilProxyStarts\":true}\n"
    );
}

#[test]
fn metrics_merge_and_default_container() {
    let merged = injected(&[("prometheus.io/port", "9090")]);
    assert_eq!(merged["metadata"]["annotations"]["prometheus.io/port"], "15020");
    let kept = injected(&[
        ("prometheus.istio.io/merge-metrics", "false"),
        ("prometheus.io/port", "9090"),
    ]);
    assert_eq!(kept["metadata"]["annotations"]["prometheus.io/port"], "9090");
    assert!(kept["metadata"]["annotations"]
        .get("prometheus.io/path")
        .is_none());

    let p = injected(&[("kubectl.kubernetes.io/default-container", "other")]);
    assert_eq!(
        p["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "other"
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubectl.kubernetes.io/default-logs-container"],
        "web"
    );
}

#[test]
fn revision_goes_into_rev_and_status() {
    let settings = Settings {
        revision: "canary".into(),
        ..Settings::default()
    };
    let Outcome::Injected(p) = inject(&base(json!({})), &target(), &settings).unwrap() else {
        panic!("skipped")
    };
    assert_eq!(p["metadata"]["annotations"]["istio.io/rev"], "canary");
    assert!(p["metadata"]["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .unwrap()
        .ends_with("\"revision\":\"canary\"}"));
    assert_eq!(
        env(&p, "CA_ADDR").unwrap(),
        "skiffd-canary.istio-system.svc:15012"
    );
}

fn error(annotations: Value, containers: Value) -> String {
    let mut pod = base(annotations);
    pod["spec"]["containers"] = containers;
    inject(&pod, &target(), &Settings::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_values_name_object_and_annotation() {
    let app = json!([{"name": "web", "image": "web"}]);
    assert_eq!(
        error(json!({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8,10.1.0.0/33"}), app.clone()),
        "Pod shop/web: metadata.annotations[\"traffic.sidecar.istio.io/excludeOutboundIPRanges\"]: \
         invalid value \"10.0.0.0/8,10.1.0.0/33\": \"10.1.0.0/33\" is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)"
    );
    let msg = error(
        json!({"sidecar.istio.io/interceptionMode": "redirect", "traffic.sidecar.istio.io/includeInboundPorts": "80,99999"}),
        app,
    );
    assert!(
        msg.contains("sidecar.istio.io/interceptionMode") && msg.contains("must be REDIRECT, TPROXY or NONE"),
        "{msg}"
    );
    assert!(
        msg.contains("includeInboundPorts") && msg.contains("out of range"),
        "{msg}"
    );
}

#[test]
fn a_user_container_named_istio_proxy_is_an_error() {
    let msg = error(
        json!({}),
        json!([{"name": "web", "image": "web"}, {"name": "istio-proxy", "image": "mine"}]),
    );
    assert!(
        msg.starts_with(
            "Pod shop/web: spec.containers[1].name: \"istio-proxy\" is reserved for the injected sidecar"
        ),
        "{msg}"
    );
    // With the status annotation the pod is an injected one and is left as it is.
    let mut pod = base(json!({"sidecar.istio.io/status": "{}"}));
    pod["spec"]["containers"] = json!([{"name": "web"}, {"name": "istio-proxy"}]);
    assert!(matches!(
        inject(&pod, &target(), &Settings::default()).unwrap(),
        Outcome::Skipped(inject::Skip::AlreadyInjected)
    ));
}
