//! `skiffctl demo`, README's first command: the walkthrough runs, explains the request hop by
//! hop from what the machine recorded, and tears down; missing prerequisites fail clearly
//! before anything is created. Needs root (CI runs as root).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::process::Command;

const SKIFFCTL: &str = env!("CARGO_BIN_EXE_skiffctl");

#[test]
fn demo_explains_one_request_and_cleans_up() {
    let state = std::env::temp_dir().join(format!("skiff-demo-test-{}", std::process::id()));
    let out = Command::new(SKIFFCTL)
        .arg("demo")
        .env("SKIFF_LOCAL_DIR", &state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in 1..=7 {
        assert!(
            text.contains(&format!("[{step}/7]")),
            "step {step} missing:\n{text}"
        );
    }
    for expected in [
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "REDIRECT --to-ports 15001",
        "--uid-owner 1337 -j RETURN",
        "listener 0.0.0.0_80 → route 80 → virtual host nginx.sidecar.svc.cluster.local:80",
        "→ cluster outbound|80||nginx.sidecar.svc.cluster.local → endpoint 198.18.",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "REDIRECT --to-ports 15006",
        "inbound|80|| 127.0.0.6:",
        "x-envoy-upstream-service-time",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("127.0.0.6 - - [") && l.contains("\"HEAD / HTTP/1.1\" 200")),
        "{text}"
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("skiff-demo-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!state.join("skiff-demo").exists());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn demo_needs_root_and_iptables_and_says_so() {
    let out = Command::new("setpriv")
        .args(["--reuid=1337", "--regid=1337", "--clear-groups", SKIFFCTL, "demo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");

    // A PATH with `ip` and `setpriv` but no iptables.
    let bin = std::env::temp_dir().join(format!("skiff-demo-path-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["ip", "setpriv"] {
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap();
        symlink(real, bin.join(tool)).unwrap();
    }
    let out = Command::new(SKIFFCTL)
        .arg("demo")
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iptables-restore") && err.contains("apt-get install -y iptables"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&bin);
}
