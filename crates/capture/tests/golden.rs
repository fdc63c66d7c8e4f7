//! Golden tests: flags (as a user writes them) plus host facts → the exact restore input.
//! `UPDATE_GOLDEN=1 cargo nextest run -p capture --test golden` rewrites the files; review the diff.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use capture::flags::HostFacts;
use capture::{cmd, generate, IptablesFlags};
use clap::Parser;

#[derive(Parser)]
#[command(args_override_self = true)]
struct Cmd {
    #[command(flatten)]
    flags: IptablesFlags,
}

struct Host {
    ipv6: bool,
    dns: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const V4: Host = Host {
    ipv6: false,
    dns: &[],
    env: &[],
};
const V6: Host = Host {
    ipv6: true,
    dns: &[],
    env: &[],
};

fn facts(host: &Host) -> HostFacts {
    let addr: IpAddr = if host.ipv6 {
        "2001:2::10".parse().unwrap()
    } else {
        "198.18.0.10".parse().unwrap()
    };
    HostFacts {
        env: host
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        addresses: vec![addr],
        nameservers: Some(Ok(host.dns.iter().map(|s| s.parse().unwrap()).collect())),
        envoy_user_uid: None,
    }
}

fn render(args: &[&str], host: &Host, restore: bool) -> String {
    let cmd = Cmd::try_parse_from(std::iter::once("istio-iptables").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (cfg, _) = cmd
        .flags
        .resolve(&facts(host))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    cmd::dry_run_output(&generate(&cfg), restore)
}

/// (name, flags, host): the cases of Istio's own table tests plus Skiff's.
fn cases() -> Vec<(&'static str, Vec<&'static str>, Host)> {
    let dns = Host {
        ipv6: false,
        dns: &["127.0.0.53"],
        env: &[],
    };
    vec![
        (
            "seed-sidecar",
            vec![
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
            ],
            V4,
        ),
        ("empty", vec![], V4),
        ("ipv6-empty-inbound-ports", vec!["-b", ""], V6),
        (
            "ip-range",
            vec![
                "-x",
                "1.1.0.0/16",
                "-i",
                "9.9.0.0/16",
                "--redirect-dns",
                "-g",
                "1,2",
                "-u",
                "3,4",
            ],
            Host { ..dns },
        ),
        (
            "tproxy",
            vec![
                "-m",
                "TPROXY",
                "-b",
                "*",
                "-x",
                "1.1.0.0/16",
                "-i",
                "9.9.0.0/16",
                "--redirect-dns",
                "-c",
                "not-istio-nic",
            ],
            Host {
                ipv6: true,
                dns: &["127.0.0.53"],
                env: &[],
            },
        ),
        ("ipv6-inbound-ports", vec!["-b", "4000,5000"], V6),
        (
            "ipv6-virt-interfaces",
            vec!["-b", "4000,5000", "-k", "eth0,eth1"],
            V6,
        ),
        (
            "ipv6-ipnets",
            vec![
                "-b",
                "4000,5000",
                "-d",
                "6000,7000,",
                "-k",
                "eth0,eth1",
                "-x",
                "2001:db8::/32",
                "-i",
                "2001:db8::/32",
            ],
            V6,
        ),
        (
            "ipv6-uid-gid",
            vec![
                "-b",
                "4000,5000",
                "-d",
                "6000,7000",
                "-k",
                "eth0,eth1",
                "-g",
                "1,2",
                "-u",
                "3,4",
                "-x",
                "2001:db8::/32",
                "-i",
                "2001:db8::/32",
            ],
            V6,
        ),
        ("ipv6-outbound-ports", vec!["-b", "", "-q", "32000,31000"], V6),
        ("kube-virt-interfaces", vec!["-k", "eth1,eth2", "-i", "*"], V4),
        ("ipnets", vec!["-i", "10.0.0.0/8"], V4),
        (
            "ipnets-with-kube-virt-interfaces",
            vec!["-k", "eth1,eth2", "-i", "10.0.0.0/8"],
            V4,
        ),
        ("inbound-ports-include", vec!["-b", "32000,31000"], V4),
        ("inbound-ports-wildcard", vec!["-b", "*"], V4),
        (
            "inbound-ports-tproxy",
            vec!["-b", "32000,31000", "-m", "TPROXY"],
            V4,
        ),
        (
            "inbound-ports-wildcard-tproxy",
            vec!["-b", "*", "-m", "TPROXY"],
            V4,
        ),
        (
            "dns-uid-gid",
            vec!["--redirect-dns", "-g", "1,2", "-u", "3,4"],
            Host {
                ipv6: true,
                dns: &["127.0.0.53", "2001:2::53"],
                env: &[],
            },
        ),
        (
            "ipv6-dns-uid-gid",
            vec!["--redirect-dns", "-g", "1,2", "-u", "3,4"],
            V6,
        ),
        (
            "outbound-owner-groups",
            vec![],
            Host {
                ipv6: false,
                dns: &[],
                env: &[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")],
            },
        ),
        (
            "outbound-owner-groups-exclude",
            vec![],
            Host {
                ipv6: false,
                dns: &[],
                env: &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")],
            },
        ),
        (
            "ipv6-dns-outbound-owner-groups",
            vec!["--redirect-dns"],
            Host {
                ipv6: true,
                dns: &[],
                env: &[("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202")],
            },
        ),
        (
            "ipv6-dns-outbound-owner-groups-exclude",
            vec!["--redirect-dns"],
            Host {
                ipv6: true,
                dns: &[],
                env: &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp")],
            },
        ),
        ("outbound-ports-include", vec!["-q", "32000,31000"], V4),
        (
            "loopback-outbound-iprange",
            vec!["-i", "127.1.2.3/32", "--redirect-dns", "-g", "1,2", "-u", "3,4"],
            Host { ..dns },
        ),
        ("basic-exclude-nic", vec!["-c", "not-istio-nic"], V4),
        ("logging", vec!["--iptables-trace-logging"], V4),
        ("drop-invalid", vec!["--drop-invalid"], V4),
        // Skiff's own cases.
        (
            "seed-long-flags",
            vec![
                "--envoy-port=15001",
                "--inbound-capture-port=15006",
                "--proxy-uid=1337",
                "--istio-inbound-interception-mode=REDIRECT",
                "--istio-service-cidr=*",
                "--istio-service-exclude-cidr=",
                "--istio-inbound-ports=*",
                "--istio-local-exclude-ports=15090,15021,15020",
            ],
            V4,
        ),
        (
            "capture-all-dns",
            vec!["-i", "*", "-b", "*", "--redirect-dns", "--capture-all-dns"],
            V4,
        ),
        (
            "dns-from-agent-env",
            vec!["-i", "*"],
            Host {
                ipv6: false,
                dns: &["198.19.0.10"],
                env: &[("ISTIO_META_DNS_CAPTURE", "true")],
            },
        ),
        (
            "port-ranges-and-excludes",
            vec![
                "-i",
                "*",
                "-x",
                "198.19.0.0/24,10.96.0.1",
                "-b",
                "*",
                "-d",
                "15000:15100,22",
                "-o",
                "5432,6379",
                "-q",
                "8000:8080",
            ],
            V4,
        ),
        (
            "dual-stack-ranges",
            vec!["-i", "*", "-x", "10.0.0.0/8,fd00::/8", "-b", "*", "--dual-stack"],
            Host {
                ipv6: false,
                dns: &[],
                env: &[],
            },
        ),
        (
            "tproxy-custom-mark-table",
            vec![
                "-m", "TPROXY", "-b", "*", "-i", "*", "-t", "7331", "-r", "200", "-z", "16006", "-p", "16001",
            ],
            V4,
        ),
        (
            "restore-format-false",
            vec!["-i", "*", "-b", "*", "--restore-format=false"],
            V4,
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden_outputs() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (name, args, host) in cases() {
        let restore = !args.contains(&"--restore-format=false");
        let got = render(&args, &host, restore);
        let path = golden_dir().join(format!("{name}.golden"));
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if got != want {
            failures.push(format!("--- {name} (flags {args:?})\nwant:\n{want}\ngot:\n{got}"));
        }
        // Istio's command form of the same case, for comparison with Istio's goldens by hand.
        if let Some(dir) = std::env::var_os("DUMP_COMMANDS") {
            let cmds = render(&args, &host, false);
            std::fs::write(PathBuf::from(dir).join(format!("{name}.golden")), cmds).unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every flag changes the output: flipping one flag of the seed's command line must change it.
#[test]
fn every_flag_matters() {
    let base: Vec<&str> = vec!["-i", "*", "-b", "*", "-d", "15090,15021,15020"];
    let reference = render(&base, &V4, true);
    let variations: Vec<(&str, Vec<&str>)> = vec![
        ("-p", vec!["-p", "16001"]),
        ("-z", vec!["-z", "16006"]),
        ("-e", vec!["-e", "16008"]),
        ("-u", vec!["-u", "1000"]),
        ("-g", vec!["-g", "2000"]),
        ("-m", vec!["-m", "TPROXY"]),
        ("-t", vec!["-m", "TPROXY", "-t", "99"]),
        ("-b", vec!["-b", "80,443"]),
        ("-d", vec!["-d", "15090"]),
        ("-c", vec!["-c", "eth9"]),
        ("-i", vec!["-i", "10.0.0.0/8"]),
        ("-x", vec!["-x", "10.0.0.0/8"]),
        ("-q", vec!["-q", "8080"]),
        ("-o", vec!["-o", "8080"]),
        ("-k", vec!["-k", "eth1"]),
        ("--redirect-dns", vec!["--redirect-dns", "--capture-all-dns"]),
        ("--drop-invalid", vec!["--drop-invalid"]),
        ("--iptables-trace-logging", vec!["--iptables-trace-logging"]),
    ];
    for (flag, extra) in variations {
        let mut args = base.clone();
        args.extend(extra);
        let out = render(&args, &V4, true);
        assert_ne!(out, reference, "flag {flag} did not change the rules");
    }
    // The tproxy mark flag changes TPROXY output compared to TPROXY with the default mark.
    let tproxy = render(&[base.clone(), vec!["-m", "TPROXY"]].concat(), &V4, true);
    assert_ne!(
        tproxy,
        render(
            &[base.clone(), vec!["-m", "TPROXY", "-t", "99"]].concat(),
            &V4,
            true
        )
    );
}

/// Flags can also come from Istio's environment variables; a flag on the command line wins.
#[test]
fn environment_variables_bind_to_flags() {
    // Each child process gets its own environment, so use the binary-independent clap parser with
    // an explicit environment through a subprocess-free path: set, parse, unset in one thread.
    let from_flags = render(&["-p", "16001", "-b", "*", "-d", "15021", "-i", "*"], &V4, true);
    let cases = [
        ("ENVOY_PORT", "16001"),
        ("ISTIO_INBOUND_PORTS", "*"),
        ("ISTIO_LOCAL_EXCLUDE_PORTS", "15021"),
        ("ISTIO_SERVICE_CIDR", "*"),
    ];
    for (k, v) in cases {
        // SAFETY: this test binary runs each test in its own process under nextest; no other
        // thread reads the environment while we change it.
        unsafe { std::env::set_var(k, v) };
    }
    let from_env = render(&[], &V4, true);
    let overridden = render(&["-p", "17001"], &V4, true);
    for (k, _) in cases {
        unsafe { std::env::remove_var(k) };
    }
    assert_eq!(from_env, from_flags);
    assert!(overridden.contains("--to-ports 17001"), "{overridden}");
}

/// Seed 002 shows an older Istio: its restore input differs from today's in exactly two ways,
/// port 22 was always excluded from inbound capture and the owner rules had no `! --dport 15008`
/// guard. Skiff keeps the current (1.19+) behaviour; this test pins the difference.
#[test]
fn seed_002_is_an_older_istio() {
    let seed_002 = "\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";
    let ours = render(
        &[
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
        ],
        &V4,
        true,
    );
    let as_old_istio = ours
        .replace(
            "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n",
            "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN\n-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n",
        )
        .replace(" -p tcp ! --dport 15008 -m owner", " -m owner");
    assert_ne!(ours, seed_002, "today's rules must differ from seed 002's");
    assert_eq!(as_old_istio, seed_002);
}
