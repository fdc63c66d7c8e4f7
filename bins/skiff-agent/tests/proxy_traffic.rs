//! Traffic management with real peers where timing or distributions matter: outlier detection
//! ejecting and restoring real endpoints (ejection time measured, growing with repeated
//! ejections), retry host predicates, weighted consistent hashing. Every scenario runs against
//! Skiff and against real Envoy 1.40 with the same bootstrap; both must stay inside the same
//! bounds. Loopback only; request counts and waits are bounded.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{raw_request, Recorder};
use testkit::http::free_port;
use testkit::proxy::{Kind, ProxyProc};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");
const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const STDOUT: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

fn endpoints(peers: &[&Recorder], weights: &[u32]) -> String {
    peers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let w = weights.get(i).copied().unwrap_or(1);
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}, load_balancing_weight: {w} }}",
                r.port()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One listener routing everything to `cluster` with `route_extra`; `clusters` is YAML.
fn bootstrap(port: u16, admin: u16, route_extra: &str, clusters: &str) -> String {
    format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": "{HCM}"
          stat_prefix: t
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": "{STDOUT}"
              log_format: {{ text_format_source: {{ inline_string: "%RESPONSE_FLAGS%|%RESPONSE_CODE%|%UPSTREAM_HOST%\n" }} }}
          route_config:
            name: r
            virtual_hosts:
            - name: all
              domains: ['*']
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: c, timeout: 5s {route_extra} }}
          http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": "{ROUTER}" }} }}]
  clusters:
{clusters}
"#
    )
}

struct Proxy {
    proc: ProxyProc,
    port: u16,
}

fn start(kind: Kind, cfg: impl Fn(u16, u16) -> String) -> Proxy {
    let (port, admin) = (free_port(), free_port());
    let text = cfg(port, admin);
    let mut proc = match kind {
        Kind::Skiff => ProxyProc::skiff(BIN, &text, admin),
        Kind::Envoy => ProxyProc::envoy(&text, admin),
    };
    proc.wait_ready();
    Proxy { proc, port }
}

fn get(p: &Proxy) -> (u16, String) {
    let r = raw_request(p.port, "GET", "/", &[("host", "t")], b"").unwrap();
    let who = r.header("x-rec-name").unwrap_or("-").to_string();
    (r.status, who)
}

/// `health_flags` of the host on `port` in `cluster`, from `/clusters`.
fn health(p: &Proxy, cluster: &str, port: u16) -> String {
    let (_, text) = p.proc.admin("/clusters").unwrap();
    let key = format!("{cluster}::127.0.0.1:{port}::health_flags::");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or("<missing>")
        .to_string()
}

fn stat(p: &Proxy, name: &str) -> u64 {
    let (_, text) = p
        .proc
        .admin(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Polls until `f` holds; returns when it first held (bounded by `within`).
fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn outlier_detection_ejects_and_restores_a_failing_endpoint() {
    let peers = [
        Recorder::start("h0"),
        Recorder::start("h1"),
        Recorder::start("h2"),
    ];
    let bad = &peers[1];
    for kind in [Kind::Envoy, Kind::Skiff] {
        for r in &peers {
            r.set_status(200);
            r.clear();
        }
        // What Istio emits for `outlierDetection: {consecutive5xxErrors: 3, interval: 0.5s,
        // baseEjectionTime: 1s, maxEjectionPercent: 100}` with minHealthPercent 0.
        let clusters = format!(
            "  - name: c\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN\n    common_lb_config: {{ healthy_panic_threshold: {{}} }}\n    outlier_detection: {{ consecutive_5xx: 3, enforcing_consecutive_5xx: 100, consecutive_gateway_failure: 0, enforcing_consecutive_gateway_failure: 0, enforcing_success_rate: 0, interval: 0.5s, base_ejection_time: 1s, max_ejection_percent: 100 }}\n    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
            endpoints(&peers.iter().collect::<Vec<_>>(), &[])
        );
        let p = start(kind, |port, admin| bootstrap(port, admin, "", &clusters));
        bad.set_status(503);
        // Round robin reaches h1 every third request: after 9 requests it answered 503 three
        // times in a row and is ejected.
        let mut codes = Vec::new();
        for _ in 0..9 {
            codes.push(get(&p));
        }
        assert_eq!(
            codes.iter().filter(|(c, _)| *c == 503).count(),
            3,
            "{kind:?}: {codes:?}"
        );
        let ejected_at = wait_until(Duration::from_secs(2), || {
            health(&p, "c", bad.port()) == "/failed_outlier_check"
        })
        .unwrap_or_else(|| panic!("{kind:?}: h1 not ejected: {}", health(&p, "c", bad.port())));
        assert_eq!(
            stat(&p, "cluster.c.outlier_detection.ejections_active"),
            1,
            "{kind:?}"
        );
        assert_eq!(
            stat(
                &p,
                "cluster.c.outlier_detection.ejections_enforced_consecutive_5xx"
            ),
            1,
            "{kind:?}"
        );
        // While ejected, h1 gets nothing.
        bad.clear();
        for _ in 0..20 {
            assert_eq!(get(&p).0, 200, "{kind:?}: an ejected host was used");
        }
        assert_eq!(bad.count(), 0, "{kind:?}");
        // Restored at an interval tick after base_ejection_time (1 s): between 1 s and
        // 1 s + interval (+ polling slack) after the ejection.
        let back = wait_until(Duration::from_secs(4), || {
            health(&p, "c", bad.port()) == "healthy"
        })
        .unwrap_or_else(|| panic!("{kind:?}: h1 never restored"));
        let first = back - ejected_at;
        assert!(
            first >= Duration::from_millis(900) && first <= Duration::from_millis(2000),
            "{kind:?}: first ejection lasted {first:?}"
        );
        // Still failing: ejected again, this time for 2 × base (backoff grows).
        for _ in 0..12 {
            get(&p);
            if health(&p, "c", bad.port()) != "healthy" {
                break;
            }
        }
        let again = wait_until(Duration::from_secs(2), || {
            health(&p, "c", bad.port()) != "healthy"
        })
        .unwrap_or_else(|| panic!("{kind:?}: not ejected a second time"));
        let back2 = wait_until(Duration::from_secs(6), || {
            health(&p, "c", bad.port()) == "healthy"
        })
        .unwrap_or_else(|| panic!("{kind:?}: not restored after the second ejection"));
        let second = back2 - again;
        assert!(
            second >= Duration::from_millis(1900) && second <= Duration::from_millis(3200),
            "{kind:?}: second ejection lasted {second:?} (first {first:?})"
        );
        assert_eq!(
            stat(&p, "cluster.c.outlier_detection.ejections_enforced_total"),
            2,
            "{kind:?}"
        );
        // Healthy again: traffic returns to it.
        bad.set_status(200);
        bad.clear();
        for _ in 0..12 {
            assert_eq!(get(&p).0, 200);
        }
        assert!(bad.count() >= 3, "{kind:?}: restored host got {}", bad.count());
        println!("{kind:?}: ejections lasted {first:?} then {second:?}");
    }
}

#[test]
fn outlier_detection_respects_max_ejection_percent_and_local_origin_split() {
    let peers = [
        Recorder::start("h0"),
        Recorder::start("h1"),
        Recorder::start("h2"),
    ];
    let dead = free_port();
    for kind in [Kind::Envoy, Kind::Skiff] {
        for r in &peers {
            r.set_status(200);
        }
        // Default max_ejection_percent (10%) with three hosts: nothing may be ejected.
        let capped = format!(
            "  - name: c\n    connect_timeout: 1s\n    outlier_detection: {{ consecutive_5xx: 2, interval: 0.3s, base_ejection_time: 5s }}\n    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
            endpoints(&peers.iter().collect::<Vec<_>>(), &[])
        );
        let p = start(kind, |port, admin| bootstrap(port, admin, "", &capped));
        peers[0].set_status(500);
        for _ in 0..12 {
            get(&p);
        }
        assert_eq!(health(&p, "c", peers[0].port()), "healthy", "{kind:?}");
        assert!(
            stat(&p, "cluster.c.outlier_detection.ejections_overflow") >= 1,
            "{kind:?}"
        );
        assert_eq!(stat(&p, "cluster.c.outlier_detection.ejections_active"), 0);
        drop(p);
        peers[0].set_status(200);

        // split_external_local_origin_errors: connection failures count on their own counter.
        let split = format!(
            "  - name: c\n    connect_timeout: 0.5s\n    outlier_detection: {{ split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, consecutive_5xx: 100, interval: 0.3s, base_ejection_time: 5s, max_ejection_percent: 100 }}\n    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{}, {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {dead} }} }} }} }}] }}] }}\n",
            endpoints(&[&peers[0]], &[])
        );
        let p = start(kind, |port, admin| bootstrap(port, admin, "", &split));
        for _ in 0..6 {
            get(&p);
        }
        assert_eq!(health(&p, "c", dead), "/failed_outlier_check", "{kind:?}");
        assert_eq!(
            stat(
                &p,
                "cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure"
            ),
            1,
            "{kind:?}"
        );
        for _ in 0..10 {
            assert_eq!(get(&p).0, 200, "{kind:?}: the dead endpoint is still chosen");
        }
    }
}

#[test]
fn retries_avoid_previous_hosts_only_with_the_predicate() {
    let good = Recorder::start("good");
    let bad = Recorder::start("bad");
    bad.set_status(503);
    // RANDOM over two hosts, one always failing, one retry. Without a host predicate the
    // retry lands on the bad host half the time (≈75% success); with previous_hosts and
    // host_selection_retry_max_attempts 5 it almost never does (≈99%).
    let cluster = format!(
        "  - name: c\n    connect_timeout: 1s\n    lb_policy: RANDOM\n    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
        endpoints(&[&good, &bad], &[])
    );
    let plain = ", retry_policy: { retry_on: \"5xx\", num_retries: 1 }".to_string();
    let predicate = format!(
        ", retry_policy: {{ retry_on: \"5xx\", num_retries: 1, host_selection_retry_max_attempts: 5, retry_host_predicate: [{{ name: envoy.retry_host_predicates.previous_hosts, typed_config: {{ \"@type\": \"{PREVIOUS_HOSTS}\" }} }}] }}"
    );
    const N: usize = 400;
    for kind in [Kind::Envoy, Kind::Skiff] {
        let mut rates = Vec::new();
        for extra in [&plain, &predicate] {
            let p = start(kind, |port, admin| bootstrap(port, admin, extra, &cluster));
            let ok = (0..N).filter(|_| get(&p).0 == 200).count();
            rates.push(ok as f64 / N as f64);
        }
        println!(
            "{kind:?}: success without predicate {:.3}, with {:.3}",
            rates[0], rates[1]
        );
        assert!(
            (0.65..=0.85).contains(&rates[0]),
            "{kind:?}: without the predicate {:.3}",
            rates[0]
        );
        assert!(rates[1] >= 0.96, "{kind:?}: with previous_hosts {:.3}", rates[1]);
    }
}

#[test]
fn weighted_consistent_hashing_spreads_keys_by_weight() {
    let peers = [
        Recorder::start("h0"),
        Recorder::start("h1"),
        Recorder::start("h2"),
    ];
    let refs: Vec<&Recorder> = peers.iter().collect();
    const KEYS: usize = 1500;
    for (lb, extra) in [
        (
            "RING_HASH",
            "    ring_hash_lb_config: { minimum_ring_size: 4096 }\n",
        ),
        ("MAGLEV", ""),
    ] {
        let cluster = format!(
            "  - name: c\n    connect_timeout: 1s\n    lb_policy: {lb}\n{extra}    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{}] }}] }}\n",
            endpoints(&refs, &[1, 2, 5])
        );
        let route = ", hash_policy: [{ header: { header_name: x-user } }]";
        let mut per_proxy = Vec::new();
        for kind in [Kind::Envoy, Kind::Skiff] {
            let p = start(kind, |port, admin| bootstrap(port, admin, route, &cluster));
            let picks: Vec<String> = (0..KEYS)
                .map(|k| {
                    let r = raw_request(
                        p.port,
                        "GET",
                        "/",
                        &[("host", "t"), ("x-user", &format!("user-{k}"))],
                        b"",
                    )
                    .unwrap();
                    r.header("x-rec-name").unwrap_or("-").to_string()
                })
                .collect();
            let counts: Vec<usize> = ["h0", "h1", "h2"]
                .iter()
                .map(|n| picks.iter().filter(|p| p == n).count())
                .collect();
            // Expected 1/8, 2/8, 5/8 of the keys; chi-square with 2 degrees of freedom below
            // 13.8 (p = 0.001) — rings are not perfectly even, so allow 3× that.
            let shares = [0.125, 0.25, 0.625];
            let chi2: f64 = counts
                .iter()
                .zip(shares)
                .map(|(o, s)| {
                    let e = s * KEYS as f64;
                    (*o as f64 - e).powi(2) / e
                })
                .sum();
            println!("{lb} {kind:?}: {counts:?} chi2 {chi2:.1}");
            assert!(chi2 < 41.4, "{lb} {kind:?}: {counts:?}");
            per_proxy.push(picks);
        }
        // The same ring/table: every key on the same endpoint in both proxies.
        let same = per_proxy[0]
            .iter()
            .zip(&per_proxy[1])
            .filter(|(a, b)| a == b)
            .count();
        assert_eq!(same, KEYS, "{lb}: {same} of {KEYS} keys agree with Envoy");
    }
}
