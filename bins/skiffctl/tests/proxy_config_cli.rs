//! `skiffctl proxy-config` / `proxy-status` over saved dumps: what a user types, what istioctl
//! would print, and the errors for missing or wrong input. No root needed.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn skiffctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiffctl"))
        .args(args)
        .env(
            "SKIFF_LOCAL_DIR",
            std::env::temp_dir().join("skiffctl-no-mesh-here"),
        )
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

fn testdata(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/inspect/tests/testdata")
        .join(name)
        .display()
        .to_string()
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(testdata(name)).unwrap()
}

fn stdout(o: Output) -> String {
    assert!(
        o.status.success(),
        "skiffctl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn stderr(o: Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure, got:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn views_of_saved_envoy_dumps() {
    let toolbox = testdata("envoy/toolbox_config_dump.json");
    let nginx = testdata("envoy/nginx_config_dump.json");
    assert_eq!(
        stdout(skiffctl(&["proxy-config", "cluster", "-f", &toolbox], None)),
        golden("envoy/toolbox_cluster.txt")
    );
    assert_eq!(
        stdout(skiffctl(&["pc", "listeners", "--file", &toolbox], None)),
        golden("envoy/toolbox_listener.txt")
    );
    assert_eq!(
        stdout(skiffctl(&["pc", "r", "-f", &toolbox], None)),
        golden("envoy/toolbox_route.txt")
    );
    assert_eq!(
        stdout(skiffctl(
            &["pc", "ep", "-f", &testdata("envoy/toolbox_clusters.json")],
            None
        )),
        golden("envoy/toolbox_endpoint.txt")
    );
    assert_eq!(
        stdout(skiffctl(&["pc", "l", "-f", &nginx, "--port", "15006"], None)),
        golden("envoy/nginx_listener_15006.txt")
    );
    assert_eq!(
        stdout(skiffctl(
            &["pc", "r", "-f", &nginx, "--name", "80", "-o", "json"],
            None
        )),
        golden("envoy/nginx_route_80.json")
    );
    // istioctl's global flags go before the view too (`istioctl proxy-config -n sidecar listener …`).
    assert_eq!(
        stdout(skiffctl(
            &[
                "proxy-config",
                "-n",
                "sidecar",
                "-o",
                "short",
                "cluster",
                "-f",
                &toolbox
            ],
            None
        )),
        golden("envoy/toolbox_cluster.txt")
    );
    // Standard input, as `-f -`.
    let text = std::fs::read_to_string(&toolbox).unwrap();
    assert_eq!(
        stdout(skiffctl(&["pc", "c", "-f", "-"], Some(&text))),
        golden("envoy/toolbox_cluster.txt")
    );
    // `all -o json` is the dump itself.
    assert_eq!(
        stdout(skiffctl(&["pc", "all", "-f", &toolbox, "-o", "json"], None)),
        format!("{text}\n")
    );
    // bootstrap defaults to JSON (jsonpb's layout, camelCase).
    let b = stdout(skiffctl(&["pc", "bootstrap", "-f", &toolbox], None));
    assert!(
        b.starts_with(
            "{\n    \"bootstrap\": {\n        \"node\": {\n            \"id\": \"sidecar~10.244.0.7~"
        ),
        "{b}"
    );
    assert!(b.contains("\"userAgentBuildVersion\""));
    // A dump saved from a real Istio sidecar/waypoint (istioctl's own fixture).
    let all = stdout(skiffctl(
        &["pc", "all", "-f", &testdata("istioctl/all_config_dump.json")],
        None,
    ));
    assert!(
        all.contains("listener/main_internal           0     ALL   Cluster: encap\n"),
        "{all}"
    );
}

#[test]
fn proxy_status_from_saved_syncz() {
    let out = stdout(skiffctl(
        &["proxy-status", "--syncz-file", &testdata("envoy/syncz.json")],
        None,
    ));
    assert_eq!(out, golden("envoy/proxy_status.txt"));
    let one = stdout(skiffctl(
        &[
            "ps",
            "toolbox-97948fc8-ptlct.sidecar",
            "--syncz-file",
            &testdata("envoy/syncz.json"),
        ],
        None,
    ));
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(one
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("toolbox-97948fc8-ptlct.sidecar "));
}

#[test]
fn errors_name_what_is_wrong() {
    let toolbox = testdata("envoy/toolbox_config_dump.json");
    // istioctl's rule: a pod or --file, not both, not neither.
    assert!(stderr(skiffctl(&["pc", "listener"], None))
        .contains("listener requires pod name or --file parameter"));
    assert!(stderr(skiffctl(&["pc", "cluster", "pod", "-f", &toolbox], None))
        .contains("cluster requires pod name or --file parameter"));
    assert!(stderr(skiffctl(&["pc", "l", "-f", &toolbox, "-o", "xml"], None))
        .contains("output format \"xml\" not supported"));
    // A clusters listing is not a config dump, and the other way round.
    let e = stderr(skiffctl(
        &["pc", "l", "-f", &testdata("envoy/toolbox_clusters.json")],
        None,
    ));
    assert!(e.contains("config dump has no ListenersConfigDump"), "{e}");
    let e = stderr(skiffctl(&["pc", "ep", "-f", &testdata("envoy/syncz.json")], None));
    assert!(e.contains("is not a JSON object"), "{e}");
    let e = stderr(skiffctl(&["pc", "r", "-f", "-"], Some("{\"configs\": [")));
    assert!(e.contains("cannot parse the config dump as JSON"), "{e}");
    // No local mesh and no --netns: say what to do.
    let e = stderr(skiffctl(
        &["pc", "cluster", "deploy/nginx", "-n", "sidecar"],
        None,
    ));
    assert!(
        e.contains("cannot read local mesh \"skiff\"") && e.contains("--netns"),
        "{e}"
    );
    let e = stderr(skiffctl(
        &["pc", "log", "nginx", "--level", "debug", "--reset"],
        None,
    ));
    assert!(e.contains("--level cannot be combined with --reset"), "{e}");
    let e = stderr(skiffctl(&["pc", "log", "nginx", "-o", "json"], None));
    assert!(e.contains("--output is not applicable for this command"), "{e}");
    let e = stderr(skiffctl(
        &["pc", "l", "nginx", "--netns", "skiffctl-no-such-netns"],
        None,
    ));
    assert!(
        e.contains("cannot open network namespace /run/netns/skiffctl-no-such-netns"),
        "{e}"
    );
}
