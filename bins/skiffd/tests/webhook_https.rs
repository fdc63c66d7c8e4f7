//! The real webhook over real TLS: the `skiffd` binary with a throwaway certificate made by
//! `openssl`, called by a Python client (http.client + ssl, as an API server would: verified TLS,
//! `POST /inject`, AdmissionReview v1 and v1beta1), its JSONPatch applied with Python's
//! `jsonpatch`, and the result compared with kube-inject's output for the same workload.
//! openssl and the Python packages are installed by `.ci/setup`; missing ones fail the test.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

const NGINX: &str = include_str!("../../../crates/inject/tests/testdata/seed004-nginx.yaml");

struct Skiffd {
    child: Child,
    url: String,
}

impl Drop for Skiffd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiffd-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for 127.0.0.1 (the Service DNS name too, as istiod's has).
fn make_cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let tmp_cert = dir.join("new.crt");
    let tmp_key = dir.join("new.key");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&tmp_key)
        .arg("-out")
        .arg(&tmp_cert)
        .args(["-subj", &format!("/CN={cn}")])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:skiffd.istio-system.svc",
        ])
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Replace both files by rename, as a Secret volume update does.
    std::fs::rename(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_cert, &cert).unwrap();
    (cert, key)
}

fn start_skiffd(cert: &Path, key: &Path) -> Skiffd {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiffd"))
        .args(["--webhook-addr", "127.0.0.1:0", "--webhook-cert"])
        .arg(cert)
        .arg("--webhook-key")
        .arg(key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("skiffd: {line}");
            if let Some((_, addr)) = line.split_once("webhook listening addr=") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("skiffd did not start listening");
    Skiffd {
        child,
        url: format!("https://{addr}/inject"),
    }
}

/// Posts `review` with the Python client; returns its JSON report.
fn post(url: &str, ca: &Path, review: &Value, content_type: &str, dir: &Path) -> Value {
    let file = dir.join("review.json");
    std::fs::write(&file, review.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/admission_client.py"))
        .args([url, ca.to_str().unwrap(), file.to_str().unwrap(), content_type])
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "admission client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn admission_review(version: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": version,
        "kind": "AdmissionReview",
        "request": {
            "uid": "0f5b1e0c-7d6a-4f52-9a48-1d0c7b7c1e21",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "sidecar",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        },
    })
}

/// The pod the ReplicaSet controller creates from a Deployment's template (seed 004's names).
fn admitted_pod(template: &Value) -> Value {
    let mut meta = template["metadata"].clone();
    meta["generateName"] = json!("nginx-deployment-7fc7f5758-");
    meta["namespace"] = json!("sidecar");
    meta["labels"]["pod-template-hash"] = json!("7fc7f5758");
    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "nginx-deployment-7fc7f5758", "uid": "9277a14d-cb83-4d2e-92d9-1f9694ec9a5d",
        "controller": true, "blockOwnerDeletion": true}]);
    meta["managedFields"] = json!([{"manager": "kube-controller-manager", "operation": "Update"}]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

/// kube-inject's pod template for `deployment_yaml`, in namespace `sidecar`.
fn kube_injected_template(deployment_yaml: &str) -> (Value, Value) {
    let mut doc: Value = first_document(deployment_yaml);
    doc["metadata"]["namespace"] = json!("sidecar");
    let original = doc["spec"]["template"].clone();
    let mut warnings = Vec::new();
    inject::manifest::inject_document(&mut doc, &inject::Settings::default(), &mut warnings).unwrap();
    assert!(warnings.is_empty());
    (original, doc["spec"]["template"].clone())
}

fn first_document(yaml: &str) -> Value {
    inject::manifest::parse_documents(yaml).unwrap().remove(0)
}

const RICH: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx-deployment}
spec:
  selector: {matchLabels: {app: nginx}}
  template:
    metadata:
      labels: {app: nginx, version: v2}
      annotations:
        prometheus.io/port: "9113"
        traffic.sidecar.istio.io/excludeOutboundIPRanges: 169.254.169.254/32
        sidecar.istio.io/proxyCPU: 50m
    spec:
      initContainers: [{name: setup, image: busybox}]
      containers:
      - name: nginx
        image: nginx:1.25.3
        ports: [{name: http, containerPort: 80, protocol: TCP}]
        readinessProbe: {httpGet: {path: /, port: http, scheme: HTTP}, timeoutSeconds: 1}
        livenessProbe: {tcpSocket: {port: 80}, timeoutSeconds: 1}
      volumes: [{name: cache, emptyDir: {}}]
"#;

#[test]
fn webhook_patch_applied_by_jsonpatch_equals_kube_inject() {
    let dir = scratch("patch");
    let (cert, key) = make_cert(&dir, "skiffd.istio-system.svc");
    let skiffd = start_skiffd(&cert, &key);
    let nginx_deployment = NGINX.split("---").next().unwrap();
    for yaml in [nginx_deployment, RICH] {
        let (template, injected) = kube_injected_template(yaml);
        let pod = admitted_pod(&template);
        for version in ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"] {
            let report = post(
                &skiffd.url,
                &cert,
                &admission_review(version, &pod),
                "application/json",
                &dir,
            );
            assert_eq!(report["status"], 200, "{report}");
            let review = &report["review"];
            assert_eq!(review["apiVersion"], version);
            assert_eq!(review["kind"], "AdmissionReview");
            assert_eq!(review["response"]["uid"], "0f5b1e0c-7d6a-4f52-9a48-1d0c7b7c1e21");
            assert_eq!(review["response"]["allowed"], true);

            let patched = &report["patched"];
            assert_eq!(
                patched["spec"], injected["spec"],
                "{version}: spec differs from kube-inject's"
            );
            assert_eq!(
                patched["metadata"]["annotations"],
                injected["metadata"]["annotations"]
            );
            let mut labels = patched["metadata"]["labels"].clone();
            assert_eq!(
                labels.as_object_mut().unwrap().remove("pod-template-hash"),
                Some(json!("7fc7f5758"))
            );
            assert_eq!(labels, injected["metadata"]["labels"]);
            // The patch touched nothing else: identity fields and managedFields stay as admitted.
            for key in ["generateName", "namespace", "ownerReferences", "managedFields"] {
                assert_eq!(patched["metadata"][key], pod["metadata"][key], "{key}");
            }
        }
    }
}

#[test]
fn bad_pods_are_denied_with_a_readable_message_and_skips_are_allowed() {
    let dir = scratch("deny");
    let (cert, key) = make_cert(&dir, "skiffd.istio-system.svc");
    let skiffd = start_skiffd(&cert, &key);
    let (template, _) = kube_injected_template(NGINX.split("---").next().unwrap());
    let base = admitted_pod(&template);

    let mut bad_cidr = base.clone();
    bad_cidr["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8,10.0.0.300/32"});
    let mut squatter = base.clone();
    squatter["spec"]["containers"] =
        json!([{"name": "nginx", "image": "nginx"}, {"name": "istio-proxy", "image": "mine"}]);
    for (pod, want) in [
        (
            bad_cidr,
            "sidecar injection failed: Pod sidecar/nginx-deployment-7fc7f5758-*: \
             metadata.annotations[\"traffic.sidecar.istio.io/includeOutboundIPRanges\"]: invalid value \
             \"10.0.0.0/8,10.0.0.300/32\": \"10.0.0.300/32\" is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)",
        ),
        (
            squatter,
            "sidecar injection failed: Pod sidecar/nginx-deployment-7fc7f5758-*: spec.containers[1].name: \
             \"istio-proxy\" is reserved for the injected sidecar, and the pod has no sidecar.istio.io/status \
             annotation saying it was injected; rename the container",
        ),
    ] {
        let report = post(&skiffd.url, &cert, &admission_review("admission.k8s.io/v1", &pod), "application/json", &dir);
        let response = &report["review"]["response"];
        assert_eq!(response["allowed"], false, "{report}");
        assert_eq!(response["status"]["code"], 400);
        assert_eq!(response["status"]["message"], want);
        assert!(response.get("patch").is_none());
    }

    let mut disabled = base.clone();
    disabled["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    let report = post(
        &skiffd.url,
        &cert,
        &admission_review("admission.k8s.io/v1", &disabled),
        "application/json",
        &dir,
    );
    assert_eq!(
        report["review"]["response"],
        json!({"allowed": true, "uid": "0f5b1e0c-7d6a-4f52-9a48-1d0c7b7c1e21"})
    );

    // Not an AdmissionReview at all: HTTP errors with the reason, as istiod answers.
    let report = post(
        &skiffd.url,
        &cert,
        &json!({"kind": "Pod"}),
        "application/json",
        &dir,
    );
    assert_eq!(report["status"], 400);
    assert!(
        report["body"]
            .as_str()
            .unwrap()
            .contains("is not an AdmissionReview version"),
        "{report}"
    );
    let report = post(
        &skiffd.url,
        &cert,
        &admission_review("admission.k8s.io/v1", &base),
        "text/plain",
        &dir,
    );
    assert_eq!(report["status"], 415);
}

#[test]
fn certificate_is_reloaded_when_the_files_change() {
    let dir = scratch("reload");
    let first = dir.join("first-ca.pem");
    let (cert, key) = make_cert(&dir, "first.skiffd.istio-system.svc");
    std::fs::copy(&cert, &first).unwrap();
    let skiffd = start_skiffd(&cert, &key);
    let (template, _) = kube_injected_template(NGINX.split("---").next().unwrap());
    let review = admission_review("admission.k8s.io/v1", &admitted_pod(&template));
    assert_eq!(
        post(&skiffd.url, &first, &review, "application/json", &dir)["status"],
        200
    );

    // A new key and certificate land in place; the next connection is served with them.
    let (cert, _) = make_cert(&dir, "second-rotated.skiffd.istio-system.svc");
    let report = post(&skiffd.url, &cert, &review, "application/json", &dir);
    assert_eq!(report["status"], 200);
    // The old CA no longer verifies the server.
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/admission_client.py"))
        .args([
            &skiffd.url,
            first.to_str().unwrap(),
            dir.join("review.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CERTIFICATE_VERIFY_FAILED"));

    // A broken replacement keeps the last good certificate in service.
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    assert_eq!(
        post(&skiffd.url, &cert, &review, "application/json", &dir)["status"],
        200
    );
}

#[test]
fn a_broken_certificate_fails_startup_naming_the_file() {
    let dir = scratch("broken");
    let (cert, _) = make_cert(&dir, "x");
    let bad_key = dir.join("bad.key");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skiffd"))
        .args(["--webhook-addr", "127.0.0.1:0", "--webhook-cert"])
        .arg(&cert)
        .arg("--webhook-key")
        .arg(&bad_key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Error: cannot load the webhook certificate {}",
            bad_key.display()
        )),
        "{stderr}"
    );
}
