//! `skiffctl` end to end: kube-inject over files and stdin, bad input, and every output checked
//! offline against the Kubernetes JSON schemas by the `kubernetes-validate` package (Python,
//! installed by `.ci/setup`; these tests fail rather than skip when it is missing).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Kubernetes 1.28: within Istio 1.19's supported range (1.25–1.28).
const KUBERNETES_VERSION: &str = "1.28.0";

fn skiffctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiffctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(name)
}

fn seed_nginx() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/inject/tests/testdata/seed004-nginx.yaml")
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiffctl-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "skiffctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn validate(files: &[PathBuf]) -> Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s_validate.py"))
        .arg(KUBERNETES_VERSION)
        .args(files)
        .output()
        .expect("python3 must be installed (.ci/setup installs the Python test peers)")
}

#[test]
fn kube_inject_reads_files_and_stdin_and_writes_files() {
    let nginx = std::fs::read_to_string(seed_nginx()).unwrap();
    let from_file = stdout(&skiffctl(
        &["kube-inject", "-f", seed_nginx().to_str().unwrap()],
        None,
    ));
    let from_stdin = stdout(&skiffctl(&["kube-inject", "-f", "-"], Some(&nginx)));
    assert_eq!(from_file, from_stdin);
    let (lib, _) = inject::manifest::kube_inject(&nginx, &inject::Settings::default()).unwrap();
    assert_eq!(from_file, lib);
    assert!(from_file.contains("name: istio-proxy") && from_file.contains("kind: Service"));

    let out = scratch("output").join("injected.yaml");
    let o = skiffctl(
        &[
            "kube-inject",
            "-f",
            "-",
            "-o",
            out.to_str().unwrap(),
            "--tag",
            "t1",
        ],
        Some(&nginx),
    );
    assert!(stdout(&o).is_empty());
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("image: docker.io/skiff/skiff:t1"));
}

#[test]
fn install_and_injected_manifests_validate_against_kubernetes_schemas() {
    let dir = scratch("validate");
    let mut files = Vec::new();
    let mut write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        files.push(p);
    };
    write("install.yaml", stdout(&skiffctl(&["manifest", "generate"], None)));
    let ca = dir.join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    write(
        "install-canary.yaml",
        stdout(&skiffctl(
            &[
                "manifest",
                "generate",
                "--revision",
                "canary",
                "--ca-bundle",
                ca.to_str().unwrap(),
            ],
            None,
        )),
    );
    write(
        "nginx.yaml",
        stdout(&skiffctl(
            &["kube-inject", "-f", seed_nginx().to_str().unwrap()],
            None,
        )),
    );
    let workloads = skiffctl(
        &["kube-inject", "-f", testdata("workloads.yaml").to_str().unwrap()],
        None,
    );
    let warnings = String::from_utf8_lossy(&workloads.stderr).to_string();
    assert_eq!(
        warnings,
        "===> Skipping injection because Pod host has host networking enabled\n"
    );
    write("workloads.yaml", stdout(&workloads));

    let o = validate(&files);
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "schema validation failed:\n{report}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Every document was checked: 12 install objects (twice, the canary with 2 webhooks), the
    // seed's Deployment and Service, 8 workload documents.
    assert_eq!(
        report.lines().filter(|l| l.ends_with(": valid")).count(),
        12 + 12 + 2 + 8,
        "{report}"
    );
    assert!(report.contains("CustomResourceDefinition virtualservices.networking.istio.io: valid"));
    assert!(report.contains("MutatingWebhookConfiguration istio-sidecar-injector-canary: valid"));
}

#[test]
fn the_schema_check_is_not_vacuous() {
    let dir = scratch("negative");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: a, bogus: 1}]}\n",
    )
    .unwrap();
    let o = validate(&[bad]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("INVALID"));
}

fn failure(stdin: &str) -> String {
    let o = skiffctl(&["kube-inject", "-f", "-"], Some(stdin));
    assert!(
        !o.status.success(),
        "expected failure, got:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(o.stdout.is_empty(), "nothing is written on error");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn bad_input_exits_non_zero_naming_object_and_field() {
    assert_eq!(
        failure("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\nkind: Pod\nmetadata: [\n"),
        "Error: cannot inject -: YAML document 2: did not find expected node content at line 7 column 1, \
         while parsing a flow node\n"
    );
    assert_eq!(
        failure(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    spec:\n      \
             containers: [{name: web, image: web}, {name: istio-proxy, image: mine}]\n"
        ),
        "Error: cannot inject -: Deployment shop/web: spec.template.spec.containers[1].name: \"istio-proxy\" is reserved \
         for the injected sidecar, and the pod has no sidecar.istio.io/status annotation saying it was injected; rename \
         the container\n"
    );
    assert_eq!(
        failure(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    \
             traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.0.0.0/8,300.1.1.1/32\nspec: {containers: [{name: a, image: a}]}\n"
        ),
        "Error: cannot inject -: Pod p: metadata.annotations[\"traffic.sidecar.istio.io/excludeOutboundIPRanges\"]: \
         invalid value \"10.0.0.0/8,300.1.1.1/32\": \"300.1.1.1/32\" is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)\n"
    );
    assert_eq!(
        failure("kind: Pod\nmetadata:\n  name: p\n  annotations: {sidecar.istio.io/inject: false}\nspec: {containers: []}\n"),
        "Error: cannot inject -: Pod p: metadata.annotations[\"sidecar.istio.io/inject\"]: value false must be a string \
         (quote it)\n"
    );
    let missing = skiffctl(&["kube-inject", "-f", "/nonexistent.yaml"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("Error: cannot read /nonexistent.yaml"));
}

#[test]
fn deploy_install_yaml_is_manifest_generate() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/install.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap();
    let generated = stdout(&skiffctl(&["manifest", "generate"], None));
    assert!(
        checked_in == generated,
        "deploy/install.yaml is stale: run `cargo run -q -p skiffctl -- manifest generate > deploy/install.yaml`"
    );
}
