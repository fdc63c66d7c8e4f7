//! `skiff-agent iptables` as the init container runs it: real binary, real namespaces.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use testkit::{Network, Pod};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");
const SEED_FLAGS: [&str; 17] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
    "--log_output_level=default:info",
];

fn run_in(pod: &Pod, args: &[&str]) -> Output {
    pod.command(BIN)
        .arg("iptables")
        .args(args)
        .output()
        .expect("run skiff-agent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn istio_chains(pod: &Pod) -> String {
    let mut all = String::new();
    for bin in ["iptables-save", "ip6tables-save"] {
        all.push_str(&pod.exec(bin, &[]).unwrap_or_default());
    }
    all.lines()
        .filter(|l| l.contains("ISTIO"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn dry_run_prints_only_the_restore_input_and_logs_like_istio_init() {
    let out = std::process::Command::new(BIN)
        .arg("iptables")
        .args(SEED_FLAGS)
        .arg("--dry-run")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let golden = include_str!("../../../crates/capture/tests/golden/seed-sidecar.golden");
    assert_eq!(text(&out.stdout), golden);
    let log = text(&out.stderr);
    for want in [
        "\tinfo\tIstio iptables environment:\nENVOY_PORT=\nINBOUND_CAPTURE_PORT=\n",
        "\tinfo\tIstio iptables variables:\nPROXY_PORT=15001\nPROXY_INBOUND_CAPTURE_PORT=15006\nPROXY_TUNNEL_PORT=15008\nPROXY_UID=1337\nPROXY_GID=1337\nINBOUND_INTERCEPTION_MODE=REDIRECT\n",
        "INBOUND_PORTS_INCLUDE=*\nINBOUND_PORTS_EXCLUDE=15090,15021,15020\n",
        "OUTBOUND_IP_RANGES_INCLUDE=*\nOUTBOUND_IP_RANGES_EXCLUDE=\n",
        "DNS_SERVERS=[],[]\n",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
}

#[test]
fn environment_variables_work_like_istio_init() {
    let out = std::process::Command::new(BIN)
        .args(["iptables", "--dry-run"])
        .env_clear()
        .env("ENVOY_PORT", "16001")
        .env("ISTIO_INBOUND_PORTS", "*")
        .env("ISTIO_SERVICE_CIDR", "*")
        .env("ISTIO_META_DNS_CAPTURE", "true")
        .env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "999")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rules = text(&out.stdout);
    assert!(
        rules.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"),
        "{rules}"
    );
    assert!(rules.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND"), "{rules}");
    assert!(
        rules.contains("-A ISTIO_OUTPUT -m owner --gid-owner 999 -j RETURN"),
        "{rules}"
    );
    assert!(
        rules.contains("* raw"),
        "DNS capture from $ISTIO_META_DNS_CAPTURE: {rules}"
    );
    assert!(text(&out.stderr).contains("ENVOY_PORT=16001\n"));
}

#[test]
fn apply_validate_and_cleanup_in_a_pod() {
    let net = Network::new("cliapply").unwrap();
    let pod = net.add_pod("nginx").unwrap();
    let out = run_in(&pod, &[&SEED_FLAGS[..], &["--run-validation"]].concat());
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("Running iptables-restore --noflush with the following input:"),
        "{log}"
    );
    assert!(
        log.contains("Validation passed, iptables rules established"),
        "{log}"
    );
    assert!(log.contains("Running command: iptables-save"), "{log}");
    assert!(istio_chains(&pod).contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));

    // Applying the same again is a no-op, not an error (init containers can restart).
    let again = run_in(&pod, &SEED_FLAGS);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already in place"));

    for round in 0..2 {
        let out = run_in(&pod, &[&SEED_FLAGS[..], &["--cleanup"]].concat());
        assert!(out.status.success(), "cleanup {round}: {}", text(&out.stderr));
        assert_eq!(istio_chains(&pod), "", "cleanup {round} left rules behind");
    }
}

#[test]
fn network_namespace_flag_applies_inside_that_namespace() {
    let net = Network::new("clinetns").unwrap();
    let pod = net.add_pod("target").unwrap();
    let ns = pod.netns_path();
    let out = std::process::Command::new(BIN)
        .arg("iptables")
        .args(SEED_FLAGS)
        .arg(format!("--network-namespace={}", ns.display()))
        .arg("--run-validation")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(istio_chains(&pod).contains("ISTIO_INBOUND"));
}

#[test]
fn restore_format_false_gives_the_same_tables() {
    let net = Network::new("clicmds").unwrap();
    let a = net.add_pod("a").unwrap();
    let b = net.add_pod("b").unwrap();
    assert!(run_in(&a, &SEED_FLAGS).status.success());
    let out = run_in(&b, &[&SEED_FLAGS[..], &["--restore-format=false"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let strip = |p: &Pod| istio_chains(p);
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn validation_fails_clearly_when_capture_is_missing() {
    let net = Network::new("clinovalid").unwrap();
    let pod = net.add_pod("pod").unwrap();
    let out = run_in(
        &pod,
        &["--skip-rule-apply", "--run-validation", "--probe-timeout=1s"],
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    let log = text(&out.stderr);
    assert!(
        log.contains("iptables validation failed") && log.contains("127.0.0.6:15002"),
        "{log}"
    );
}

#[test]
fn bad_input_names_the_flag_and_applies_nothing() {
    let net = Network::new("clibad").unwrap();
    let pod = net.add_pod("pod").unwrap();
    let cases: [(&[&str], &[&str]); 7] = [
        (
            &["-i", "10.0.0.0/33"],
            &["-i/--istio-service-cidr", "10.0.0.0/33"],
        ),
        (
            &["-i", "*", "-x", "not-a-cidr"],
            &["-x/--istio-service-exclude-cidr", "not-a-cidr"],
        ),
        (
            &["-b", "*", "-d", "15090,70000"],
            &["-d/--istio-local-exclude-ports", "70000", "out of range"],
        ),
        (
            &["-m", "FOO"],
            &[
                "-m/--istio-inbound-interception-mode",
                "FOO",
                "REDIRECT or TPROXY",
            ],
        ),
        (&["-p", "abc"], &["-p/--envoy-port", "abc"]),
        (&["-x", "*"], &["-x/--istio-service-exclude-cidr", "\"*\""]),
        (&["--bogus-flag"], &["--bogus-flag"]),
    ];
    for (args, wants) in cases {
        let out = run_in(&pod, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        for want in wants {
            assert!(err.contains(want), "{args:?}: error lacks {want:?}:\n{err}");
        }
        assert_eq!(istio_chains(&pod), "", "{args:?} applied rules");
    }
}

#[test]
fn ipv6_failure_after_ipv4_rolls_ipv4_back() {
    let net = Network::with_ipv6("clirollback").unwrap();
    let pod = net.add_pod("pod").unwrap();
    // Simulate ip6tables-restore failing (e.g. a kernel without ip6table_nat): a stand-in that
    // comes first on PATH and fails the way iptables-restore reports errors.
    let dir = std::env::temp_dir().join(format!("skiff-v6fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shim = dir.join("ip6tables-restore");
    std::fs::write(
        &shim,
        "#!/bin/sh\necho 'ip6tables-restore v1.8.9 (nf_tables): line 2 failed: simulated' >&2\nexit 1\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&shim).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = pod
        .command(BIN)
        .arg("iptables")
        .args(SEED_FLAGS)
        .arg("--dual-stack")
        .env("PATH", path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("applying ip6tables rules failed") && err.contains("simulated"),
        "{err}"
    );
    assert!(err.contains("rolled back: iptables"), "{err}");
    assert_eq!(istio_chains(&pod), "", "IPv4 rules were not rolled back");
}
