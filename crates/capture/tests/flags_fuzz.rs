//! Property test of flag resolution: arbitrary user input never panics, and whatever is accepted
//! renders to restore input in which every token is a single word (no rule injection).

#![allow(clippy::unwrap_used)]

use capture::flags::HostFacts;
use capture::{cmd, generate, IptablesFlags};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("*".to_string()),
        "[0-9]{1,6}",
        "[0-9,:]{0,20}",
        "[0-9a-f:./,*]{0,30}",
        "[ -~]{0,24}",
        "\\PC{0,12}",
        Just("eth0\n-A OUTPUT -j ACCEPT".to_string()),
        Just("1337 -j ACCEPT".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn resolve_never_panics_and_never_injects(
        values in prop::collection::vec(value(), 16),
        switches in prop::collection::vec(any::<bool>(), 3),
    ) {
        let mut it = values.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let (p, z, u, g, m, b, d, c) = (next(), next(), next(), next(), next(), next(), next(), next());
        let (i, x, q, o, k, t, r, timeout) = (next(), next(), next(), next(), next(), next(), next(), next());
        let (dns, tproxy_mode, v6) = (switches[0], switches[1], switches[2]);
        let flags = IptablesFlags {
            envoy_port: p, inbound_capture_port: z, inbound_tunnel_port: "15008".into(),
            proxy_uid: u, proxy_gid: g,
            interception_mode: if tproxy_mode { "TPROXY".into() } else { m },
            inbound_ports: b, local_exclude_ports: d, exclude_interfaces: c, service_cidr: i,
            service_exclude_cidr: x, outbound_ports: q, local_outbound_ports_exclude: o,
            kube_virt_interfaces: k, tproxy_mark: t, tproxy_route_table: r,
            probe_port: "15002".into(), probe_timeout: timeout, restore_format: true,
            redirect_dns: Some(dns), ..IptablesFlags::default()
        };
        let host = HostFacts {
            addresses: vec![if v6 { "2001:2::1".parse().unwrap() } else { "198.18.0.1".parse().unwrap() }],
            nameservers: Some(Ok(vec!["198.19.0.10".parse().unwrap()])),
            ..HostFacts::default()
        };
        if let Ok((cfg, _)) = flags.resolve(&host) {
            let out = cmd::dry_run_output(&generate(&cfg), true);
            for line in out.lines() {
                prop_assert!(
                    line.starts_with("* ") || line.starts_with("-N ISTIO_") || line.starts_with("-A ")
                        || line.starts_with("-I ") || line == "COMMIT" || line == "# ip6tables-restore input",
                    "unexpected line {:?}", line
                );
                prop_assert!(!line.contains('\r') && !line.contains('\0'));
            }
            let rules = generate(&cfg);
            for rule in rules.v4.iter().chain(rules.v6.iter()) {
                for arg in &rule.args {
                    prop_assert!(!arg.is_empty() && !arg.contains(char::is_whitespace), "bad token {:?}", arg);
                }
            }
        }
    }
}
