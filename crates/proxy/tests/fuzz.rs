//! Property-based fuzzing of everything that parses untrusted input: bytes from the network
//! (protocol sniffing, TLS ClientHello/SNI), bootstrap files from users (YAML/JSON → protos →
//! model), access-log formats, and routing on arbitrary hosts and paths. None may panic.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use proxy::detect::{sniff, sniff_http, sniff_tls, Sniffed};

fn client_hello(sni: &str) -> Vec<u8> {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sniffing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), tls in any::<bool>(), http in any::<bool>()) {
        let _ = sniff(&bytes, tls, http);
        let _ = sniff_http(&bytes);
        let _ = sniff_tls(&bytes);
    }

    #[test]
    fn mutated_client_hellos_never_panic(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(), sni in "[a-z]{1,20}\\.(test|example)") {
        let mut hello = client_hello(&sni);
        let i = pos.index(hello.len());
        hello[i] = byte;
        let end = cut.index(hello.len() + 1);
        // Whatever the mutation, sniffing terminates with a verdict and no panic.
        let _ = sniff_tls(&hello[..end]);
        // And an intact hello always yields its name.
        let clean = client_hello(&sni);
        prop_assert_eq!(sniff_tls(&clean), Sniffed::Tls { server_name: Some(sni.clone()), alpn: vec![] });
    }

    #[test]
    fn http_like_text_never_panics(line in "[A-Z]{0,8} [ -~]{0,40} HTTP/[0-9.]{0,4}(\r\n)?[ -~]{0,20}") {
        let _ = sniff_http(line.as_bytes());
    }

    #[test]
    fn access_log_formats_never_panic(fmt in "([ -~]|%[A-Z_]{0,30}(\\([ -~]{0,10}\\))?%(:[0-9]{0,3})?){0,12}") {
        if let Ok(f) = proxy::access_log::Format::parse(&fmt) {
            let r = proxy::access_log::LogRecord::new("198.18.0.1:80".parse().unwrap(), "198.18.0.2:1234".parse().unwrap());
            let _ = f.render(&r);
        }
    }
}

/// A JSON value shaped like an Envoy bootstrap, with random holes and wrong types.
fn json_value(depth: u32) -> BoxedStrategy<serde_json::Value> {
    let keys = prop::sample::select(vec![
        "static_resources",
        "listeners",
        "clusters",
        "name",
        "address",
        "socket_address",
        "port_value",
        "filter_chains",
        "filters",
        "typed_config",
        "@type",
        "route_config",
        "virtual_hosts",
        "domains",
        "routes",
        "match",
        "prefix",
        "route",
        "cluster",
        "load_assignment",
        "endpoints",
        "lb_endpoints",
        "endpoint",
        "connect_timeout",
        "lb_policy",
        "type",
        "admin",
        "use_original_dst",
        "timeout",
        "http_filters",
        "stat_prefix",
        "cluster_name",
        "safe_regex",
        "regex",
        "headers",
        "weighted_clusters",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "0.0.0.0", "127.0.0.1", "1s", "-3s", "ROUND_ROBIN", "STATIC", "EDS", "/", "*", "((", "[a-",
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        ])
        .prop_map(serde_json::Value::from),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        leaf,
        prop::collection::vec(json_value(depth - 1), 0..3).prop_map(serde_json::Value::from),
        prop::collection::btree_map(keys, json_value(depth - 1), 0..4).prop_map(|m| {
            serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        }),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn bootstrap_loading_never_panics(value in json_value(6)) {
        static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
        let pool = POOL.get_or_init(|| xds::json::descriptor_pool().unwrap());
        if let Ok(b) = xds::json::from_json::<xds::pb::envoy::config::bootstrap::v3::Bootstrap>(pool, value) {
            if let Ok(loaded) = proxy::bootstrap::from_proto(b) {
                let store = proxy::snapshot::Store::new();
                let _ = store.apply(loaded.static_update());
            }
        }
    }

    #[test]
    fn routing_arbitrary_hosts_and_paths_never_panics(host in "[ -~]{0,40}", path in "[ -~]{0,60}") {
        use proxy::model::*;
        let virtual_hosts = vec![VirtualHost {
                name: "v".into(),
                domains: vec!["*.x".into(), "y*".into(), "z".into(), "*".into()],
                routes: vec![],
                headers: HeaderMutations::default(),
                include_request_attempt_count: false,
                retry_policy: None,
                require_tls: RequireTls::None,
                cors: None,
                per_filter: Vec::new(),
            }];
        let rc = RouteConfig {
            name: "r".into(),
            domains: proxy::route::DomainIndex::new(&virtual_hosts),
            virtual_hosts,
            headers: HeaderMutations::default(),
            most_specific_header_mutations_wins: false,
            ignore_port_in_host_matching: true,
            max_direct_response_body_size: 4096,
            validate_clusters: false,
            per_filter: Vec::new(),
        };
        prop_assert!(proxy::route::find_virtual_host(&rc, &host).is_some());
        let headers = http::HeaderMap::new();
        let m = RouteMatch {
            path: PathMatch::Separated("/api".into()),
            case_sensitive: false,
            headers: vec![],
            query_parameters: vec![QueryMatcher { name: "a".into(), value: None }],
            grpc: false,
        };
        let head = proxy::route::RequestHead { method: "GET", path: &path, authority: &host, scheme: "http", headers: &headers };
        let _ = proxy::route::route_matches(&m, &head);
    }

    /// Request hashing reads headers, cookies, query strings and addresses a client controls.
    #[test]
    fn request_hashing_never_panics_and_is_deterministic(
        cookie in "[ -~]{0,80}",
        user in "[ -~]{0,30}",
        path in "/[ -~]{0,60}",
        ip in any::<[u8; 4]>(),
    ) {
        use proxy::model::*;
        use std::time::Duration;
        let policies = vec![
            HashPolicy { kind: HashKind::Header { name: "x-user".into(), rewrite: None }, terminal: false },
            HashPolicy { kind: HashKind::Cookie { name: "s".into(), ttl: Some(Duration::from_secs(5)), path: "/".into(), attributes: vec![] }, terminal: false },
            HashPolicy { kind: HashKind::QueryParameter("u".into()), terminal: false },
            HashPolicy { kind: HashKind::SourceIp, terminal: true },
        ];
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&cookie) {
            headers.insert(http::header::COOKIE, v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&user) {
            headers.insert("x-user", v);
        }
        let head = proxy::route::RequestHead { method: "GET", path: &path, authority: "h", scheme: "http", headers: &headers };
        let source = std::net::IpAddr::from(ip);
        let a = proxy::route::request_hash(&policies, &head, source, |_, _, _, _| "generated".into());
        let b = proxy::route::request_hash(&policies, &head, source, |_, _, _, _| "generated".into());
        prop_assert!(a.is_some());
        prop_assert_eq!(a, b);
        let _ = proxy::route::cookie_value(&headers, "s");
    }

    /// CORS decisions over arbitrary origins and preflight headers.
    #[test]
    fn cors_decisions_never_panic(origin in "[ -~]{0,40}", method in "(GET|POST|OPTIONS|PATCH)", req_method in "[ -~]{0,10}", req_headers in "[ -~]{0,30}") {
        use proxy::model::*;
        let p = CorsPolicy {
            allow_origins: vec![StringMatcher { kind: StringMatch::Prefix("https://".into()), ignore_case: true }],
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            expose_headers: "x-e".into(),
            max_age: "60".into(),
            allow_credentials: Some(true),
            allow_private_network_access: Some(true),
            forward_not_matching_preflights: Some(false),
            enabled: Percent::ALL,
            shadow: None,
        };
        let mut headers = http::HeaderMap::new();
        for (k, v) in [("origin", &origin), ("access-control-request-method", &req_method), ("access-control-request-headers", &req_headers)] {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                headers.insert(k, v);
            }
        }
        let m: http::Method = method.parse().unwrap();
        let _ = proxy::cors::decide(&[&p], &m, &headers);
    }

    /// PEM material from configuration or SDS: any bytes are rejected or accepted, never a panic.
    #[test]
    fn tls_material_parsing_never_panics(chain in prop::collection::vec(any::<u8>(), 0..400), key in "(-----BEGIN [A-Z ]{0,20}-----\n)?[A-Za-z0-9+/=\n]{0,200}(-----END [A-Z ]{0,20}-----\n)?") {
        let m = proxy::model::TlsMaterial {
            certificate_chain: chain.clone().into(),
            private_key: key.clone().into_bytes().into(),
            trusted_ca: chain.into(),
        };
        let _ = proxy::convert::tls::certified_key(&m);
        let _ = proxy::convert::tls::roots(&m.trusted_ca);
    }
}

const VALID: &str = r#"
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    listener_filters: [{ name: envoy.filters.listener.tls_inspector, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector } }]
    filter_chains:
    - filter_chain_match: { destination_port: 80, prefix_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }], server_names: [a.test] }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config:
            name: r
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: { safe_regex: { regex: "/a/[0-9]+" }, headers: [{ name: x, string_match: { prefix: y } }] }
                route: { weighted_clusters: { clusters: [{ name: c, weight: 1 }] }, regex_rewrite: { pattern: { regex: "^/a" }, substitution: "/b" }, timeout: 1s, retry_policy: { retry_on: "5xx", num_retries: 2 } }
              - match: { prefix: "/r" }
                redirect: { https_redirect: true, prefix_rewrite: "/n" }
          http_filters: [{ name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c, idle_timeout: 2s }
  clusters:
  - name: c
    connect_timeout: 1s
    lb_policy: LEAST_REQUEST
    circuit_breakers: { thresholds: [{ max_requests: 3 }] }
    load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } }, load_balancing_weight: 2 }] }] }
"#;

/// Every path (object keys / array indices) of a JSON value.
fn paths(v: &serde_json::Value, prefix: Vec<serde_json::Value>, out: &mut Vec<Vec<serde_json::Value>>) {
    out.push(prefix.clone());
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m {
                let mut p = prefix.clone();
                p.push(serde_json::Value::from(k.as_str()));
                paths(c, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(serde_json::Value::from(i));
                paths(c, p, out);
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut serde_json::Value, path: &[serde_json::Value]) -> Option<&'a mut serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            serde_json::Value::String(k) => cur.get_mut(k.as_str())?,
            serde_json::Value::Number(n) => cur.get_mut(n.as_u64()? as usize)?,
            _ => return None,
        };
    }
    Some(cur)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 800, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_valid_bootstraps_never_panic(which in any::<prop::sample::Index>(), replacement in json_value(1), remove in any::<bool>()) {
        static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
        let pool = POOL.get_or_init(|| xds::json::descriptor_pool().unwrap());
        let mut v = xds::json::parse_yaml(VALID).unwrap();
        let mut all = Vec::new();
        paths(&v, Vec::new(), &mut all);
        let path = &all[which.index(all.len())];
        if remove && !path.is_empty() {
            let (last, parent) = path.split_last().unwrap();
            if let (Some(p), serde_json::Value::String(k)) = (at(&mut v, parent), last) {
                if let Some(m) = p.as_object_mut() {
                    m.remove(k.as_str());
                }
            }
        } else if let Some(slot) = at(&mut v, path) {
            *slot = replacement;
        }
        if let Ok(b) = xds::json::from_json::<xds::pb::envoy::config::bootstrap::v3::Bootstrap>(pool, v) {
            if let Ok(loaded) = proxy::bootstrap::from_proto(b) {
                let store = proxy::snapshot::Store::new();
                let report = store.apply(loaded.static_update());
                // Rejections are fine; a rejected resource must say which and why.
                for e in report.rejected {
                    prop_assert!(!e.reason.is_empty());
                }
            }
        }
    }
}

#[test]
fn the_valid_bootstrap_is_valid() {
    let pool = xds::json::descriptor_pool().unwrap();
    let b = xds::json::from_yaml::<xds::pb::envoy::config::bootstrap::v3::Bootstrap>(&pool, VALID).unwrap();
    let loaded = proxy::bootstrap::from_proto(b).unwrap();
    let report = proxy::snapshot::Store::new().apply(loaded.static_update());
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
}
