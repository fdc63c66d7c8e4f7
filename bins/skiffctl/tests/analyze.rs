//! `skiffctl analyze -f DIR`: istioctl's message format, one message per problem, exit code 79
//! on errors, 0 with a check mark when all is well.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const SKIFFCTL: &str = env!("CARGO_BIN_EXE_skiffctl");

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("skiffctl-analyze-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn reports_each_problem_as_istioctl_and_exits_79() {
    let d = scratch("bad");
    std::fs::write(
        d.join("app.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: canary, namespace: canary}\n\
         spec: {selector: {app: canary}, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: canary, namespace: canary}\n\
         spec:\n  hosts: [canary]\n  http:\n  - route: [{destination: {host: canary, subset: v3}}]\n---\n\
         apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: typo, namespace: canary}\n\
         spec:\n  hosts: [other]\n  http:\n  - route: [{destination: {host: canary}}]\n    retry: {attempts: 2}\n",
    )
    .unwrap();
    let out = Command::new(SKIFFCTL)
        .args(["analyze", "-f"])
        .arg(&d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(79), "{stdout}\n{stderr}");
    let file = d.join("app.yaml").display().to_string();
    assert!(
        stdout.contains(&format!(
            "Error [IST0101] (VirtualService canary/canary {file}) Referenced host+subset in destinationrule not found: \"canary.canary.svc.cluster.local+v3\""
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "Error [IST0106] (VirtualService canary/typo {file}) Schema validation error: spec.http[0].retry: unknown field `retry`"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("Error: Analyzers found issues"), "{stderr}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn clean_config_passes() {
    let d = scratch("good");
    std::fs::write(
        d.join("app.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
         spec: {selector: {app: web}, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: a}\n\
         spec:\n  hosts: [web]\n  http:\n  - timeout: 3s\n    route: [{destination: {host: web}}]\n",
    )
    .unwrap();
    let out = Command::new(SKIFFCTL)
        .args(["analyze", "-f"])
        .arg(&d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No validation issues found"));
    let out = Command::new(SKIFFCTL).args(["analyze"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0), "nothing to analyze is an error");
    let _ = std::fs::remove_dir_all(&d);
}
