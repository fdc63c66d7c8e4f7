//! Differential tests: the same Envoy bootstrap loaded by real Envoy and by Skiff, the same
//! requests sent to both, and the answers compared — status, local-reply body, the headers the
//! upstream saw, the headers the client got, and the access-log fields (times aside).
//! Envoy is the reference: a difference here is a Skiff bug unless listed as deliberate.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use testkit::http::{free_port, Client, Echo, Reply};
use testkit::proxy::{Kind, ProxyProc};

const BIN: &str = env!("CARGO_BIN_EXE_skiff-agent");

/// Access-log format with every field the comparison looks at (no times, no request ids).
const LOG: &str = "%RESPONSE_CODE%\\t%RESPONSE_FLAGS%\\t%RESPONSE_CODE_DETAILS%\\t%ROUTE_NAME%\\t%UPSTREAM_CLUSTER%\\t%UPSTREAM_HOST%\\t%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\\t%REQ(:AUTHORITY)%\\t%PROTOCOL%\\t%BYTES_RECEIVED%\\t%BYTES_SENT%\\t%REQ(X-FORWARDED-FOR)%\\t%UPSTREAM_TRANSPORT_FAILURE_REASON%\\n";

fn bootstrap(listen: u16, admin: u16, a: &Echo, b: &Echo, dead: u16) -> String {
    let ep = |port: u16| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}")
    };
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: diff
          internal_address_config: {{ cidr_ranges: [{{ address_prefix: 127.0.0.1, prefix_len: 32 }}] }}
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{LOG}" }} }}
          route_config:
            name: diff_routes
            validate_clusters: false
            request_headers_to_add:
            - header: {{ key: x-level, value: config }}
            response_headers_to_add:
            - header: {{ key: x-resp-level, value: config }}
            virtual_hosts:
            - name: prefix
              domains: ["prefix.test"]
              routes:
              - name: all
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: rewrite
              domains: ["rewrite.test"]
              routes:
              - name: nginx
                match: {{ prefix: "/nginx" }}
                route: {{ cluster: a, prefix_rewrite: "/" }}
            - name: regex
              domains: ["regex.test"]
              routes:
              - name: users
                match: {{ safe_regex: {{ regex: "/users/[0-9]+" }} }}
                route:
                  cluster: a
                  regex_rewrite: {{ pattern: {{ regex: "^/users/([0-9]+)$" }}, substitution: "/u/\\1" }}
            - name: exact
              domains: ["exact.test"]
              routes:
              - name: exact
                match: {{ path: "/exact" }}
                route: {{ cluster: a }}
            - name: headers
              domains: ["headers.test"]
              routes:
              - name: v2
                match: {{ prefix: "/", headers: [{{ name: user, string_match: {{ exact: zhongmingmao }} }}] }}
                route: {{ cluster: b }}
              - name: v1
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: query
              domains: ["query.test"]
              routes:
              - name: debug
                match: {{ prefix: "/", query_parameters: [{{ name: debug, string_match: {{ exact: "1" }} }}] }}
                route: {{ cluster: b }}
              - name: plain
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: redirect
              domains: ["redirect.test"]
              routes:
              - name: r
                match: {{ prefix: "/old" }}
                redirect: {{ https_redirect: true, prefix_rewrite: "/new", host_redirect: "example.com" }}
            - name: direct
              domains: ["direct.test"]
              routes:
              - name: d
                match: {{ prefix: "/" }}
                direct_response: {{ status: 418, body: {{ inline_string: "short and stout" }} }}
            - name: hostrewrite
              domains: ["host.test"]
              routes:
              - name: h
                match: {{ prefix: "/" }}
                route: {{ cluster: a, host_rewrite_literal: "rewritten.example" }}
            - name: mutations
              domains: ["mutate.test"]
              request_headers_to_add:
              - header: {{ key: x-level, value: vhost }}
              - header: {{ key: x-vhost, value: "1" }}
              response_headers_to_add:
              - header: {{ key: x-resp-level, value: vhost }}
              routes:
              - name: m
                match: {{ prefix: "/" }}
                request_headers_to_add:
                - header: {{ key: x-level, value: route }}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {{ key: x-added, value: "yes" }}
                request_headers_to_remove: ["x-remove-me"]
                response_headers_to_add:
                - header: {{ key: x-resp-route, value: "1" }}
                response_headers_to_remove: ["x-echo-name"]
                route: {{ cluster: a }}
            - name: timeout
              domains: ["timeout.test"]
              routes:
              - name: t
                match: {{ prefix: "/" }}
                route: {{ cluster: a, timeout: 0.3s }}
            - name: dead
              domains: ["dead.test"]
              routes:
              - name: d
                match: {{ prefix: "/" }}
                route: {{ cluster: dead }}
            - name: empty
              domains: ["empty.test"]
              routes:
              - name: e
                match: {{ prefix: "/" }}
                route: {{ cluster: empty }}
            - name: nocluster
              domains: ["nocluster.test"]
              routes:
              - name: nc
                match: {{ prefix: "/" }}
                route: {{ cluster: missing }}
            - name: retry
              domains: ["retry.test"]
              routes:
              - name: r
                match: {{ prefix: "/" }}
                route:
                  cluster: a
                  retry_policy: {{ retry_on: "5xx", num_retries: 2 }}
            - name: suffixwild
              domains: ["*.wild.test"]
              routes:
              - name: w
                match: {{ prefix: "/" }}
                route: {{ cluster: b }}
            - name: mixedcase
              domains: ["Mixed.Case.TEST"]
              routes:
              - name: m
                match: {{ prefix: "/" }}
                route: {{ cluster: b }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment: {{ cluster_name: a, endpoints: [{{ lb_endpoints: [{ea}] }}] }}
  - name: b
    connect_timeout: 1s
    load_assignment: {{ cluster_name: b, endpoints: [{{ lb_endpoints: [{eb}] }}] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ cluster_name: dead, endpoints: [{{ lb_endpoints: [{ed}] }}] }}
  - name: empty
    connect_timeout: 1s
    type: STATIC
"#,
        ea = ep(a.addr.port()),
        eb = ep(b.addr.port()),
        ed = ep(dead),
    )
}

/// One request of the comparison: host, path, extra headers.
struct Case {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "prefix route",
        host: "prefix.test",
        path: "/any/path?x=1",
        headers: &[],
    },
    Case {
        name: "prefix rewrite",
        host: "rewrite.test",
        path: "/nginx/index.html",
        headers: &[],
    },
    Case {
        name: "prefix rewrite exact",
        host: "rewrite.test",
        path: "/nginx",
        headers: &[],
    },
    Case {
        name: "regex route and rewrite",
        host: "regex.test",
        path: "/users/42",
        headers: &[],
    },
    Case {
        name: "regex no match",
        host: "regex.test",
        path: "/users/abc",
        headers: &[],
    },
    Case {
        name: "exact path",
        host: "exact.test",
        path: "/exact",
        headers: &[],
    },
    Case {
        name: "exact path with query",
        host: "exact.test",
        path: "/exact?q=1",
        headers: &[],
    },
    Case {
        name: "exact path mismatch",
        host: "exact.test",
        path: "/exact/",
        headers: &[],
    },
    Case {
        name: "header match",
        host: "headers.test",
        path: "/",
        headers: &[("user", "zhongmingmao")],
    },
    Case {
        name: "header mismatch",
        host: "headers.test",
        path: "/",
        headers: &[("user", "other")],
    },
    Case {
        name: "query match",
        host: "query.test",
        path: "/?debug=1",
        headers: &[],
    },
    Case {
        name: "query mismatch",
        host: "query.test",
        path: "/?debug=0",
        headers: &[],
    },
    Case {
        name: "redirect",
        host: "redirect.test",
        path: "/old/page?keep=1",
        headers: &[],
    },
    Case {
        name: "direct response",
        host: "direct.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "host rewrite",
        host: "host.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "header mutations",
        host: "mutate.test",
        path: "/",
        headers: &[("x-remove-me", "1"), ("x-level", "client")],
    },
    Case {
        name: "route timeout",
        host: "timeout.test",
        path: "/",
        headers: &[("x-echo-delay-ms", "1000")],
    },
    Case {
        name: "connect failure",
        host: "dead.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "no healthy upstream",
        host: "empty.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "cluster not found",
        host: "nocluster.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "no route (unknown host)",
        host: "unknown.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "upstream 503 passed through",
        host: "prefix.test",
        path: "/",
        headers: &[("x-echo-status", "503")],
    },
    Case {
        name: "retry recovers",
        host: "retry.test",
        path: "/",
        headers: &[("x-echo-fail-first", "1"), ("x-echo-key", "k")],
    },
    Case {
        name: "retries exhausted",
        host: "retry.test",
        path: "/",
        headers: &[("x-echo-status", "503")],
    },
    Case {
        name: "x-envoy-max-retries: 0",
        host: "retry.test",
        path: "/",
        headers: &[
            ("x-echo-fail-first", "1"),
            ("x-echo-key", "k0"),
            ("x-envoy-max-retries", "0"),
        ],
    },
    Case {
        name: "host with port",
        host: "prefix.test:80",
        path: "/",
        headers: &[],
    },
    Case {
        name: "suffix wildcard domain",
        host: "a.wild.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "mixed-case configured domain",
        host: "mixed.case.test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "the same host header twice",
        host: "prefix.test",
        path: "/",
        headers: &[("host", "prefix.test")],
    },
    Case {
        name: "mixed-case host",
        host: "MIXED.case.Test",
        path: "/",
        headers: &[],
    },
    Case {
        name: "client x-forwarded-for kept",
        host: "prefix.test",
        path: "/",
        headers: &[("x-forwarded-for", "203.0.113.7")],
    },
    Case {
        name: "client x-request-id kept",
        host: "prefix.test",
        path: "/",
        headers: &[("x-request-id", "client-chosen-id")],
    },
    Case {
        name: "upstream timeout override",
        host: "prefix.test",
        path: "/",
        headers: &[
            ("x-envoy-upstream-rq-timeout-ms", "200"),
            ("x-echo-delay-ms", "1000"),
        ],
    },
    Case {
        name: "timeout override from an internal client",
        host: "prefix.test",
        path: "/",
        headers: &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-envoy-upstream-rq-timeout-ms", "200"),
            ("x-echo-delay-ms", "1000"),
        ],
    },
    Case {
        name: "x-envoy-max-retries: 0 from an internal client",
        host: "retry.test",
        path: "/",
        headers: &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-echo-fail-first", "1"),
            ("x-echo-key", "k1"),
            ("x-envoy-max-retries", "0"),
        ],
    },
    Case {
        name: "two x-forwarded-for hops are not internal",
        host: "retry.test",
        path: "/",
        headers: &[
            ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
            ("x-echo-fail-first", "1"),
            ("x-echo-key", "k2"),
            ("x-envoy-max-retries", "0"),
        ],
    },
];

/// What is compared for one request.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    status: u16,
    /// Local replies' bodies (upstream bodies are the echo's JSON, compared via `upstream_saw`).
    local_body: Option<String>,
    response_headers: BTreeMap<String, String>,
    upstream_saw: Option<BTreeMap<String, String>>,
    upstream_path: Option<String>,
    upstream_name: Option<String>,
}

/// Headers whose values vary by run; only their presence is compared.
const VOLATILE: &[&str] = &[
    "x-request-id",
    "date",
    "x-envoy-upstream-service-time",
    "content-length",
];

fn observe(reply: &Reply) -> Observed {
    let echoed = reply.echoed();
    let mut response_headers = BTreeMap::new();
    for (k, v) in &reply.headers {
        let v = if VOLATILE.contains(&k.as_str()) {
            "<present>".to_string()
        } else {
            v.to_str().unwrap_or("").to_string()
        };
        response_headers.insert(k.to_string(), v);
    }
    let upstream_saw = echoed.as_ref().map(|e| {
        e.headers
            .iter()
            .map(|(k, v)| {
                // Each proxy has its own fail-first key.
                if k == "x-echo-key" {
                    return (
                        k.clone(),
                        v.trim_end_matches("-Envoy")
                            .trim_end_matches("-Skiff")
                            .to_string(),
                    );
                }
                // The remaining time on a retry depends on timing (a fast retry still has about
                // all of it): keep only "about the full 15 s" vs "less".
                if k == "x-envoy-expected-rq-timeout-ms" {
                    let full = v.parse::<u64>().is_ok_and(|ms| ms > 14_900);
                    return (k.clone(), if full { "~15000" } else { "<remaining>" }.to_string());
                }
                let v = if k == "x-request-id" {
                    // Envoy generates UUIDs; a client-chosen id must pass unchanged.
                    if v == "client-chosen-id" {
                        v.clone()
                    } else if uuid_like(v) {
                        "<uuid>".into()
                    } else {
                        v.clone()
                    }
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    });
    Observed {
        status: reply.status,
        local_body: echoed
            .is_none()
            .then(|| String::from_utf8_lossy(&reply.body).into_owned()),
        response_headers,
        upstream_saw,
        upstream_path: echoed.as_ref().map(|e| e.path.clone()),
        upstream_name: echoed.map(|e| e.name),
    }
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Access-log fields, with the per-run upstream/downstream ports blanked.
fn log_fields(line: &str) -> Vec<String> {
    line.split('\t').map(|f| f.to_string()).collect()
}

struct Side {
    proc: ProxyProc,
    port: u16,
}

fn start(kind: Kind, a: &Echo, b: &Echo, dead: u16) -> Side {
    let (port, admin) = (free_port(), free_port());
    let cfg = bootstrap(port, admin, a, b, dead);
    let mut proc = match kind {
        Kind::Skiff => ProxyProc::skiff(BIN, &cfg, admin),
        Kind::Envoy => ProxyProc::envoy(&cfg, admin),
    };
    proc.wait_ready();
    Side { proc, port }
}

#[test]
fn skiff_answers_like_envoy() {
    let a = Echo::local("a");
    let b = Echo::local("b");
    let dead = free_port();
    let envoy = start(Kind::Envoy, &a, &b, dead);
    let skiff = start(Kind::Skiff, &a, &b, dead);
    let client = Client::http1();
    let mut diffs = Vec::new();
    let mut table = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let mut results = Vec::new();
        for side in [&envoy, &skiff] {
            let url = format!("http://127.0.0.1:{}{}", side.port, case.path);
            // Fail-first counters are per key: give each proxy its own.
            let keyed: Vec<(String, String)> = case
                .headers
                .iter()
                .map(|(k, v)| {
                    if *k == "x-echo-key" {
                        (k.to_string(), format!("{v}-{:?}", side.proc.kind))
                    } else {
                        (k.to_string(), v.to_string())
                    }
                })
                .collect();
            let mut headers: Vec<(&str, &str)> = vec![("host", case.host)];
            headers.extend(keyed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let reply = client
                .get(&url, &headers)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let lines = side.proc.wait_log_lines(i + 1);
            let line = lines.get(i).cloned().unwrap_or_default();
            results.push((observe(&reply), log_fields(&line)));
        }
        let (e, s) = (&results[0], &results[1]);
        let same = e == s;
        table.push(format!(
            "| {} | {} | {} |",
            case.name,
            e.0.status,
            if same { "same" } else { "DIFFERENT" }
        ));
        if !same {
            diffs.push(format!(
                "== {}\n envoy: {:?}\n        log {:?}\n skiff: {:?}\n        log {:?}",
                case.name, e.0, e.1, s.0, s.1
            ));
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        diffs.is_empty(),
        "{} of {} cases differ from Envoy:\n{}",
        diffs.len(),
        CASES.len(),
        diffs.join("\n")
    );
}

// === strip_any_host_port / strip_matching_host_port ===

/// Three listeners on one route table: `strip_any_host_port`, `strip_matching_host_port`, and
/// neither. `strip.test` is the only virtual host.
fn strip_bootstrap(ports: [u16; 3], admin: u16, a: &Echo) -> String {
    let listener = |name: &str, port: u16, mode: &str| {
        format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          {mode}
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{LOG}" }} }}
          route_config:
            name: strip_routes
            virtual_hosts:
            - name: strip
              domains: ["strip.test"]
              routes:
              - name: all
                match: {{ prefix: "/" }}
                route: {{ cluster: a }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
        )
    };
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:{any}{matching}{none}
  clusters:
  - name: a
    connect_timeout: 1s
    load_assignment: {{ cluster_name: a, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {pa} }} }} }} }}] }}] }}
"#,
        any = listener("any", ports[0], "strip_any_host_port: true"),
        matching = listener("matching", ports[1], "strip_matching_host_port: true"),
        none = listener("none", ports[2], ""),
        pa = a.addr.port(),
    )
}

#[test]
fn strips_host_port_like_envoy() {
    let a = Echo::local("a");
    let sides: Vec<(ProxyProc, [u16; 3])> = [Kind::Envoy, Kind::Skiff]
        .into_iter()
        .map(|kind| {
            let ports = [free_port(), free_port(), free_port()];
            let admin = free_port();
            let cfg = strip_bootstrap(ports, admin, &a);
            let mut proc = match kind {
                Kind::Skiff => ProxyProc::skiff(BIN, &cfg, admin),
                Kind::Envoy => ProxyProc::envoy(&cfg, admin),
            };
            proc.wait_ready();
            (proc, ports)
        })
        .collect();
    // `{port}` is the listener's own port (what strip_matching_host_port compares with).
    let hosts = [
        "strip.test",
        "strip.test:{port}",
        "strip.test:80",
        "STRIP.test:80",
        "strip.test:",
        "strip.test:http",
        "strip.test:99999999999",
        "[::1]:{port}",
        "other.test:80",
    ];
    let client = Client::http1();
    let (mut diffs, mut table, mut lines) = (Vec::new(), Vec::new(), 0);
    for host in hosts {
        for (l, listener) in ["any", "matching", "none"].into_iter().enumerate() {
            lines += 1;
            let mut results = Vec::new();
            for (proc, ports) in &sides {
                let port = ports[l];
                let h = host.replace("{port}", &port.to_string());
                let reply = client
                    .get(&format!("http://127.0.0.1:{port}/p"), &[("host", &h)])
                    .unwrap_or_else(|e| panic!("{listener} {h}: {e}"));
                let log = proc
                    .wait_log_lines(lines)
                    .get(lines - 1)
                    .cloned()
                    .unwrap_or_default();
                // The listener ports differ between the two proxies.
                let seen = format!("{:?} {:?}", observe(&reply), log_fields(&log))
                    .replace(&port.to_string(), "{port}");
                results.push((
                    reply.status,
                    reply.echoed().and_then(|e| e.headers.get("host").cloned()),
                    seen,
                ));
            }
            let (e, s) = (&results[0], &results[1]);
            table.push(format!(
                "| {listener} | {host} | {} | {} | {} |",
                e.0,
                e.1.as_deref().unwrap_or("-"),
                if e == s { "same" } else { "DIFFERENT" }
            ));
            if e != s {
                diffs.push(format!("== {listener} {host}\n envoy: {}\n skiff: {}", e.2, s.2));
            }
        }
    }
    println!(
        "| listener | Host | status | upstream Host | |\n{}",
        table.join("\n")
    );
    assert!(diffs.is_empty(), "differ from Envoy:\n{}", diffs.join("\n"));
    // The semantics themselves, not only agreement.
    let row = |listener: &str, host: &str| {
        table
            .iter()
            .find(|r| r.starts_with(&format!("| {listener} | {host} |")))
            .cloned()
            .unwrap()
    };
    assert!(row("any", "strip.test:80").contains("| 200 | strip.test |"));
    assert!(row("matching", "strip.test:{port}").contains("| 200 | strip.test |"));
    assert!(row("matching", "strip.test:80").contains("| 404 |"));
    assert!(row("none", "strip.test:80").contains("| 404 |"));
    assert!(row("any", "strip.test:http").contains("| 404 |"));
}

// === Traffic management (VirtualService / DestinationRule shapes Istio emits) ===

mod support;

use support::{raw_request, RawReply, Recorder};

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
const PREVIOUS_HOSTS: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// The upstreams of the traffic bootstrap: `up` answers most routes; `m` receives mirrors;
/// `h0..h2` are the endpoints of the hashing clusters.
struct TrafficPeers {
    up: Recorder,
    mirror: Recorder,
    hashed: Vec<Recorder>,
    dead: u16,
}

fn fault_cfg(body: &str) -> String {
    format!("{{ \"@type\": \"{FAULT}\", {body} }}")
}

fn traffic_bootstrap(listen: u16, admin: u16, p: &TrafficPeers) -> String {
    let ep = |port: u16| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}")
    };
    let hashed: Vec<String> = p.hashed.iter().map(|r| ep(r.port())).collect();
    let hashed = hashed.join(", ");
    let istio_retry = format!(
        "{{ retry_on: \"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\", num_retries: 2, retriable_status_codes: [503], host_selection_retry_max_attempts: 5, retry_host_predicate: [{{ name: envoy.retry_host_predicates.previous_hosts, typed_config: {{ \"@type\": \"{PREVIOUS_HOSTS}\" }} }}] }}"
    );
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: traffic
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{LOG}" }} }}
          route_config:
            name: traffic_routes
            validate_clusters: false
            virtual_hosts:
            - name: fault
              domains: ["fault.test"]
              typed_per_filter_config:
                envoy.filters.http.fault: {vhost_fault}
              routes:
              - name: abort
                match: {{ prefix: "/abort" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {abort}
              - name: abort-million
                match: {{ prefix: "/million" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {abort_million}
              - name: abort-unset-percentage
                match: {{ prefix: "/nopercent" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {abort_nopct}
              - name: abort-zero
                match: {{ prefix: "/zero" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {abort_zero}
              - name: delay
                match: {{ prefix: "/delay" }}
                route: {{ cluster: up, timeout: 0.25s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {delay}
              - name: delay-abort
                match: {{ prefix: "/both" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {both}
              - name: grpc-abort
                match: {{ prefix: "/grpc" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {grpc}
              - name: disabled
                match: {{ prefix: "/disabled" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {{ "@type": "{FILTER_CONFIG}", disabled: true }}
              - name: other-cluster
                match: {{ prefix: "/other" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {other_cluster}
              - name: header-gated
                match: {{ prefix: "/gated" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {gated}
              - name: vhost-fault
                match: {{ prefix: "/" }}
                route: {{ cluster: up, timeout: 0s }}
            - name: cors
              domains: ["cors.test"]
              routes:
              - name: modern
                match: {{ prefix: "/modern" }}
                route: {{ cluster: up, timeout: 0s }}
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": "{CORS_POLICY}"
                    allow_origin_string_match: [{{ prefix: "https://m." }}]
                    allow_methods: "*"
                    allow_headers: "*"
                    allow_credentials: false
              - name: dead
                match: {{ prefix: "/dead" }}
                route:
                  cluster: dead
                  timeout: 0s
                  cors: {cors_route}
              - name: istio
                match: {{ prefix: "/" }}
                route:
                  cluster: up
                  timeout: 0s
                  cors: {cors_route}
            - name: retry
              domains: ["retry.test"]
              routes:
              - name: istio-default
                match: {{ prefix: "/istio" }}
                route: {{ cluster: up, timeout: 0s, retry_policy: {istio_retry} }}
              - name: per-try
                match: {{ prefix: "/pertry" }}
                route:
                  cluster: up
                  timeout: 2s
                  retry_policy: {{ retry_on: "5xx", num_retries: 1, per_try_timeout: 0.2s }}
              - name: grpc
                match: {{ prefix: "/grpc" }}
                route:
                  cluster: up
                  timeout: 0s
                  retry_policy: {{ retry_on: "unavailable,cancelled", num_retries: 2 }}
              - name: slow-retry
                match: {{ prefix: "/slow" }}
                route:
                  cluster: up
                  timeout: 2s
                  retry_policy: {{ retry_on: "5xx", num_retries: 1 }}
              - name: gateway
                match: {{ prefix: "/gateway" }}
                route:
                  cluster: up
                  timeout: 0s
                  retry_policy: {{ retry_on: "gateway-error", num_retries: 3 }}
              - name: connect
                match: {{ prefix: "/connect" }}
                route:
                  cluster: dead
                  timeout: 0s
                  retry_policy: {{ retry_on: "connect-failure", num_retries: 2 }}
              - name: none
                match: {{ prefix: "/" }}
                route: {{ cluster: up, timeout: 0s }}
            - name: mirror
              domains: ["mirror.test", "mirror.test:8080"]
              routes:
              - name: half
                match: {{ prefix: "/never" }}
                route:
                  cluster: up
                  timeout: 0s
                  request_mirror_policies: [{{ cluster: mirror, runtime_fraction: {{ default_value: {{ numerator: 0 }} }} }}]
              - name: keep-host
                match: {{ prefix: "/keep" }}
                route:
                  cluster: up
                  timeout: 0s
                  request_mirror_policies: [{{ cluster: mirror, disable_shadow_host_suffix_append: true }}]
              - name: all
                match: {{ prefix: "/" }}
                route:
                  cluster: up
                  timeout: 0s
                  request_mirror_policies: [{{ cluster: mirror, runtime_fraction: {{ default_value: {{ numerator: 100 }} }}, trace_sampled: false }}]
            - name: hash
              domains: ["hash.test"]
              routes:
              - name: ring-header
                match: {{ prefix: "/ring" }}
                route: {{ cluster: ring, timeout: 0s, hash_policy: [{{ header: {{ header_name: x-user }} }}] }}
              - name: maglev-header
                match: {{ prefix: "/maglev" }}
                route: {{ cluster: maglev, timeout: 0s, hash_policy: [{{ header: {{ header_name: x-user }} }}] }}
              - name: ring-cookie
                match: {{ prefix: "/cookie" }}
                route: {{ cluster: ring, timeout: 0s, hash_policy: [{{ cookie: {{ name: session, ttl: 3600s, path: /cookie }} }}] }}
              - name: ring-source
                match: {{ prefix: "/source" }}
                route: {{ cluster: ring, timeout: 0s, hash_policy: [{{ connection_properties: {{ source_ip: true }} }}] }}
              - name: ring-query
                match: {{ prefix: "/query" }}
                route: {{ cluster: maglev, timeout: 0s, hash_policy: [{{ query_parameter: {{ name: u }} }}] }}
              - name: rr-cookie
                match: {{ prefix: "/rr" }}
                route: {{ cluster: up, timeout: 0s, hash_policy: [{{ cookie: {{ name: session, ttl: 60s }} }}] }}
            - name: secure
              domains: ["secure.test"]
              require_tls: ALL
              routes:
              - name: s
                match: {{ prefix: "/" }}
                route: {{ cluster: up, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.fault
            typed_config: {{ "@type": "{FAULT}" }}
          - name: envoy.filters.http.cors
            typed_config: {{ "@type": "{CORS_FILTER}" }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment: {{ cluster_name: up, endpoints: [{{ lb_endpoints: [{eu}] }}] }}
  - name: mirror
    connect_timeout: 1s
    load_assignment: {{ cluster_name: mirror, endpoints: [{{ lb_endpoints: [{em}] }}] }}
  - name: dead
    connect_timeout: 1s
    load_assignment: {{ cluster_name: dead, endpoints: [{{ lb_endpoints: [{ed}] }}] }}
  - name: ring
    connect_timeout: 1s
    lb_policy: RING_HASH
    ring_hash_lb_config: {{ minimum_ring_size: 1024 }}
    load_assignment: {{ cluster_name: ring, endpoints: [{{ lb_endpoints: [{hashed}] }}] }}
  - name: maglev
    connect_timeout: 1s
    lb_policy: MAGLEV
    load_assignment: {{ cluster_name: maglev, endpoints: [{{ lb_endpoints: [{hashed}] }}] }}
"#,
        vhost_fault = fault_cfg("abort: { http_status: 500, percentage: { numerator: 100 } }"),
        abort = fault_cfg("abort: { http_status: 503, percentage: { numerator: 100, denominator: HUNDRED } }"),
        abort_million = fault_cfg("abort: { http_status: 429, percentage: { numerator: 1000000, denominator: MILLION } }"),
        abort_nopct = fault_cfg("abort: { http_status: 503 }"),
        abort_zero = fault_cfg("abort: { http_status: 503, percentage: { numerator: 0 } }"),
        delay = fault_cfg("delay: { fixed_delay: 0.4s, percentage: { numerator: 100 } }"),
        both = fault_cfg("delay: { fixed_delay: 0.1s, percentage: { numerator: 100 } }, abort: { http_status: 418, percentage: { numerator: 100 } }"),
        grpc = fault_cfg("abort: { grpc_status: 14, percentage: { numerator: 100 } }"),
        other_cluster = fault_cfg("abort: { http_status: 503, percentage: { numerator: 100 } }, upstream_cluster: elsewhere"),
        gated = fault_cfg("abort: { http_status: 503, percentage: { numerator: 100 } }, headers: [{ name: x-fault, string_match: { exact: \"yes\" } }]"),
        cors_route = "{ allow_origin_string_match: [{ exact: \"https://a.example\" }], allow_methods: \"GET,POST\", allow_headers: \"x-custom\", expose_headers: \"x-exposed\", max_age: \"86400\", allow_credentials: true, filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } } }",
        eu = ep(p.up.port()),
        em = ep(p.mirror.port()),
        ed = ep(p.dead),
    )
}

/// One request of the traffic comparison.
struct TCase {
    name: &'static str,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
}

const fn get(
    name: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> TCase {
    TCase {
        name,
        method: "GET",
        host,
        path,
        headers,
        body: b"",
    }
}

const TRAFFIC_CASES: &[TCase] = &[
    get("fault abort 100%", "fault.test", "/abort", &[]),
    get("fault abort MILLION denominator", "fault.test", "/million", &[]),
    get("fault abort without percentage", "fault.test", "/nopercent", &[]),
    get("fault abort 0%", "fault.test", "/zero", &[]),
    get(
        "fault delay then upstream (route timeout after the delay)",
        "fault.test",
        "/delay",
        &[],
    ),
    get("fault delay then abort", "fault.test", "/both", &[]),
    get(
        "grpc abort, gRPC request",
        "fault.test",
        "/grpc",
        &[("content-type", "application/grpc")],
    ),
    get("grpc abort, plain request", "fault.test", "/grpc", &[]),
    get("fault disabled per route", "fault.test", "/disabled", &[]),
    get("fault for another upstream_cluster", "fault.test", "/other", &[]),
    get("fault header-gated, no header", "fault.test", "/gated", &[]),
    get(
        "fault header-gated, header",
        "fault.test",
        "/gated",
        &[("x-fault", "yes")],
    ),
    get("fault from the virtual host", "fault.test", "/any", &[]),
    TCase {
        name: "CORS preflight, allowed origin",
        method: "OPTIONS",
        host: "cors.test",
        path: "/x",
        headers: &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-custom"),
        ],
        body: b"",
    },
    TCase {
        name: "CORS preflight, other origin (forwarded)",
        method: "OPTIONS",
        host: "cors.test",
        path: "/x",
        headers: &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        body: b"",
    },
    TCase {
        name: "OPTIONS without request method",
        method: "OPTIONS",
        host: "cors.test",
        path: "/x",
        headers: &[("origin", "https://a.example")],
        body: b"",
    },
    get(
        "CORS actual request, allowed origin",
        "cors.test",
        "/x",
        &[("origin", "https://a.example")],
    ),
    get(
        "CORS actual request, other origin",
        "cors.test",
        "/x",
        &[("origin", "https://evil.example")],
    ),
    get("CORS request without origin", "cors.test", "/x", &[]),
    get(
        "CORS on a router local reply (503 UF)",
        "cors.test",
        "/dead",
        &[("origin", "https://a.example")],
    ),
    TCase {
        name: "CORS per-filter policy, wildcard methods and headers",
        method: "OPTIONS",
        host: "cors.test",
        path: "/modern",
        headers: &[
            ("origin", "https://m.example"),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "x-a,x-b"),
        ],
        body: b"",
    },
    get(
        "Istio default retry: 503 retried",
        "retry.test",
        "/istio",
        &[("x-rec-fail-first", "1"), ("x-rec-key", "i1")],
    ),
    get(
        "Istio default retry: 500 not retried",
        "retry.test",
        "/istio",
        &[("x-rec-status", "500")],
    ),
    get(
        "Istio default retry: exhausted",
        "retry.test",
        "/istio",
        &[("x-rec-status", "503")],
    ),
    get(
        "per-try timeout retried",
        "retry.test",
        "/pertry",
        &[
            ("x-rec-delay-ms", "600"),
            ("x-rec-delay-first", "1"),
            ("x-rec-key", "p1"),
        ],
    ),
    get(
        "a retry after 300 ms advertises the remaining time",
        "retry.test",
        "/slow",
        &[
            ("x-rec-fail-first", "1"),
            ("x-rec-delay-first", "1"),
            ("x-rec-delay-ms", "300"),
            ("x-rec-key", "s1"),
        ],
    ),
    get(
        "per-try timeout header from an untrusted client is stripped",
        "retry.test",
        "/slow",
        &[("x-envoy-upstream-rq-per-try-timeout-ms", "100")],
    ),
    get(
        "gRPC unavailable retried",
        "retry.test",
        "/grpc",
        &[("x-rec-header", "grpc-status:14"), ("x-rec-key", "g1")],
    ),
    get(
        "gRPC ok not retried",
        "retry.test",
        "/grpc",
        &[("x-rec-header", "grpc-status:0")],
    ),
    get(
        "gateway-error: 502 retried to exhaustion",
        "retry.test",
        "/gateway",
        &[("x-rec-status", "502")],
    ),
    get(
        "gateway-error: 500 not retried",
        "retry.test",
        "/gateway",
        &[("x-rec-status", "500")],
    ),
    get("connect-failure retried", "retry.test", "/connect", &[]),
    get(
        "x-envoy-retry-on from an untrusted client is stripped",
        "retry.test",
        "/",
        &[("x-envoy-retry-on", "5xx"), ("x-rec-status", "503")],
    ),
    get(
        "x-envoy-max-retries with one XFF hop, default internal config",
        "retry.test",
        "/istio",
        &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-envoy-max-retries", "0"),
            ("x-rec-fail-first", "1"),
            ("x-rec-key", "x1"),
        ],
    ),
    get(
        "per-try timeout header from untrusted client",
        "retry.test",
        "/",
        &[
            ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
            ("x-rec-delay-ms", "300"),
        ],
    ),
    get("mirror 100%", "mirror.test", "/m?q=1", &[]),
    get("mirror host with port", "mirror.test:8080", "/m", &[]),
    get("mirror keeps host", "mirror.test", "/keep", &[]),
    get("mirror 0%", "mirror.test", "/never", &[]),
    TCase {
        name: "mirror with a body",
        method: "POST",
        host: "mirror.test",
        path: "/post",
        headers: &[("content-type", "text/plain")],
        body: b"mirror me, please",
    },
    TCase {
        name: "DELETE without a body",
        method: "DELETE",
        host: "retry.test",
        path: "/",
        headers: &[],
        body: b"",
    },
    TCase {
        name: "POST without a body",
        method: "POST",
        host: "retry.test",
        path: "/",
        headers: &[],
        body: b"",
    },
    TCase {
        name: "Istio default retry replays a POST body",
        method: "POST",
        host: "retry.test",
        path: "/istio",
        headers: &[("x-rec-fail-first", "1"), ("x-rec-key", "b1")],
        body: b"replay me",
    },
    get(
        "require_tls ALL redirects plaintext",
        "secure.test",
        "/page?x=1",
        &[],
    ),
    get(
        "require_tls ALL with x-forwarded-proto https (not edge)",
        "secure.test",
        "/page",
        &[("x-forwarded-proto", "https")],
    ),
    get(
        "cookie hash on a round-robin cluster sets no cookie",
        "hash.test",
        "/rr",
        &[],
    ),
    get("ring hash by source ip", "hash.test", "/source", &[]),
];

/// What is compared for one traffic request.
#[derive(Debug, PartialEq, Eq)]
struct TObserved {
    status: u16,
    local_body: Option<String>,
    response_headers: BTreeMap<String, String>,
    upstream_saw: Option<BTreeMap<String, String>>,
    upstream_name: Option<String>,
    upstream_path: Option<String>,
    /// Requests each upstream received for this case (retries), and what the mirror saw.
    attempts: usize,
    mirrored: Vec<(String, String, usize)>,
}

const TVOLATILE: &[&str] = &[
    "x-request-id",
    "date",
    "x-envoy-upstream-service-time",
    "content-length",
];

/// `x-envoy-expected-rq-timeout-ms` depends on timing by a few ms: compare to 100 ms.
fn expected_timeout_bucket(v: &str) -> String {
    v.parse::<u64>()
        .map(|ms| format!("~{}", (ms + 50) / 100 * 100))
        .unwrap_or_else(|_| v.to_string())
}

fn tobserve(r: &RawReply, attempts: usize, mirrored: Vec<(String, String, usize)>) -> TObserved {
    let seen = r.seen();
    let mut response_headers = BTreeMap::new();
    for (k, v) in &r.headers {
        let v = if TVOLATILE.contains(&k.as_str()) {
            "<present>".to_string()
        } else {
            v.clone()
        };
        response_headers.insert(k.clone(), v);
    }
    TObserved {
        status: r.status,
        local_body: seen
            .is_none()
            .then(|| String::from_utf8_lossy(&r.body).into_owned()),
        response_headers,
        upstream_saw: seen.as_ref().map(|s| {
            s.headers
                .iter()
                .map(|(k, v)| {
                    let v = if TVOLATILE.contains(&k.as_str()) {
                        "<present>".to_string()
                    } else if k == "x-envoy-expected-rq-timeout-ms" {
                        expected_timeout_bucket(v)
                    } else if k == "x-rec-key" {
                        v.trim_end_matches("-Envoy")
                            .trim_end_matches("-Skiff")
                            .to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect()
        }),
        upstream_name: seen.as_ref().map(|s| s.name.clone()),
        upstream_path: seen.map(|s| s.path),
        attempts,
        mirrored,
    }
}

#[test]
fn traffic_management_like_envoy() {
    let peers = TrafficPeers {
        up: Recorder::start("up"),
        mirror: Recorder::start("mirror"),
        hashed: vec![
            Recorder::start("h0"),
            Recorder::start("h1"),
            Recorder::start("h2"),
        ],
        dead: free_port(),
    };
    let start = |kind: Kind| {
        let (port, admin) = (free_port(), free_port());
        let cfg = traffic_bootstrap(port, admin, &peers);
        let mut proc = match kind {
            Kind::Skiff => ProxyProc::skiff(BIN, &cfg, admin),
            Kind::Envoy => ProxyProc::envoy(&cfg, admin),
        };
        proc.wait_ready();
        Side { proc, port }
    };
    let envoy = start(Kind::Envoy);
    let skiff = start(Kind::Skiff);
    let mut diffs = Vec::new();
    let mut table = Vec::new();
    let mut timings = Vec::new();
    for (i, case) in TRAFFIC_CASES.iter().enumerate() {
        let mut results = Vec::new();
        for side in [&envoy, &skiff] {
            peers.up.clear();
            peers.mirror.clear();
            let keyed: Vec<(String, String)> = case
                .headers
                .iter()
                .map(|(k, v)| {
                    if *k == "x-rec-key" {
                        (k.to_string(), format!("{v}-{:?}", side.proc.kind))
                    } else {
                        (k.to_string(), v.to_string())
                    }
                })
                .collect();
            let mut headers: Vec<(&str, &str)> = vec![("host", case.host)];
            headers.extend(keyed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let t0 = std::time::Instant::now();
            let reply = raw_request(side.port, case.method, case.path, &headers, case.body)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            timings.push((case.name, side.proc.kind, t0.elapsed()));
            let lines = side.proc.wait_log_lines(i + 1);
            let line = lines.get(i).cloned().unwrap_or_default();
            // Mirrors are fire and forget: give them a moment to land.
            let mirrored: Vec<(String, String, usize)> = peers
                .mirror
                .wait_for(
                    1,
                    std::time::Duration::from_millis(if case.host.starts_with("mirror") { 1000 } else { 50 }),
                )
                .into_iter()
                .map(|s| {
                    (
                        s.headers.get("host").cloned().unwrap_or_default(),
                        s.path,
                        s.body_len,
                    )
                })
                .collect();
            results.push((tobserve(&reply, peers.up.count(), mirrored), log_fields(&line)));
        }
        let (e, s) = (&results[0], &results[1]);
        let same = e == s;
        table.push(format!(
            "| {} | {} {} | {} |",
            case.name,
            e.0.status,
            e.1.get(1).cloned().unwrap_or_default(),
            if same { "same" } else { "DIFFERENT" }
        ));
        if !same {
            diffs.push(format!(
                "== {}\n envoy: {:?}\n        log {:?}\n skiff: {:?}\n        log {:?}",
                case.name, e.0, e.1, s.0, s.1
            ));
        }
    }
    println!("{}", table.join("\n"));
    // The injected delay is real in both (0.4 s fixed delay; the 0.25 s route timeout starts after it).
    for (name, kind, took) in &timings {
        if name.starts_with("fault delay then upstream") {
            assert!(
                // Envoy's timers have millisecond granularity and may fire a hair early.
                *took >= std::time::Duration::from_millis(390) && *took < std::time::Duration::from_secs(3),
                "{kind:?} took {took:?}"
            );
        }
    }

    // Consistent hashing: each key goes to the same endpoint in both proxies.
    for (path, what) in [("/ring", "ring hash"), ("/maglev", "maglev")] {
        let pick = |port: u16, user: &str| {
            let r = raw_request(port, "GET", path, &[("host", "hash.test"), ("x-user", user)], b"").unwrap();
            r.seen().map(|s| s.name).unwrap_or_default()
        };
        let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
        let e: Vec<String> = users.iter().map(|u| pick(envoy.port, u)).collect();
        let s: Vec<String> = users.iter().map(|u| pick(skiff.port, u)).collect();
        let spread: std::collections::BTreeSet<&String> = e.iter().collect();
        assert!(spread.len() > 1, "{what}: every key on one host: {e:?}");
        if e != s {
            diffs.push(format!("== {what} by header\n envoy: {e:?}\n skiff: {s:?}"));
        }
    }
    // Query-parameter hashing on the Maglev cluster.
    {
        let pick = |port: u16, u: usize| {
            let r = raw_request(
                port,
                "GET",
                &format!("/query?u=k{u}&x=1"),
                &[("host", "hash.test")],
                b"",
            )
            .unwrap();
            r.seen().map(|s| s.name).unwrap_or_default()
        };
        let e: Vec<String> = (0..20).map(|u| pick(envoy.port, u)).collect();
        let s: Vec<String> = (0..20).map(|u| pick(skiff.port, u)).collect();
        if e != s {
            diffs.push(format!(
                "== maglev by query parameter\n envoy: {e:?}\n skiff: {s:?}"
            ));
        }
    }
    // A generated cookie: Envoy's format, a value derived from the connection's addresses, and
    // the request lands where a later request carrying that cookie lands.
    for side in [&envoy, &skiff] {
        let r = raw_request(side.port, "GET", "/cookie", &[("host", "hash.test")], b"").unwrap();
        let cookie = r.header("set-cookie").unwrap_or_default().to_string();
        let value = cookie
            .strip_prefix("session=\"")
            .and_then(|c| c.split_once('"'))
            .map(|(v, _)| v.to_string())
            .unwrap_or_default();
        let expected = format!(
            "{:016x}",
            proxy::hash::xxhash64(format!("{}127.0.0.1:{}", r.local, side.port).as_bytes(), 0)
        );
        assert_eq!(
            cookie,
            format!("session=\"{expected}\"; Max-Age=3600; Path=/cookie; HttpOnly"),
            "{:?}",
            side.proc.kind
        );
        let first = r.seen().unwrap().name;
        for _ in 0..5 {
            let again = raw_request(
                side.port,
                "GET",
                "/cookie",
                &[("host", "hash.test"), ("cookie", &format!("session={value}"))],
                b"",
            )
            .unwrap();
            assert!(again.header("set-cookie").is_none());
            assert_eq!(
                again.seen().unwrap().name,
                first,
                "{:?}: cookie not sticky",
                side.proc.kind
            );
        }
    }
    assert!(
        diffs.is_empty(),
        "{} traffic cases differ from Envoy:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
