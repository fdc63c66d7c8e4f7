//! Golden tests for traffic management on seed 004's walkthroughs: the canary (VirtualService by
//! header + DestinationRule subsets with per-subset load balancing, then fault injection and
//! retries), the `simple` ingress (host + `/nginx` prefix rewrite, 404 for anything else) and the
//! `securesvc` HTTPS gateway. The seed shows only curl results for these; the expected
//! `istioctl proxy-config` tables below are what Istio 1.19 prints for the same resources
//! (derived rule by rule from `route.go`, `cluster_builder.go`, `gateway.go` and istioctl's
//! writers), and the resources' shapes are checked field by field.

#![allow(clippy::unwrap_used, deprecated)]

mod support;

use std::collections::BTreeSet;

use pilot::gen::{self, Context, MeshConfig};
use prost::Message;
use support::*;
use xds::pb::envoy::config::cluster::v3::{cluster, Cluster};
use xds::pb::envoy::config::listener::v3::filter;
use xds::pb::envoy::config::route::v3::{route, route_action, Route, RouteAction, RouteConfiguration};
use xds::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, HttpFault};
use xds::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use xds::pb::envoy::extensions::transport_sockets::tls::v3::{secret, DownstreamTlsContext, Secret};

fn rc<'a>(g: &'a Generated, name: &str) -> &'a RouteConfiguration {
    g.routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("route {name}"))
}

fn cluster<'a>(g: &'a Generated, name: &str) -> &'a Cluster {
    g.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("cluster {name}"))
}

fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("{other:?}"),
    }
}

fn single_cluster(r: &Route) -> String {
    match &action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
        other => panic!("{other:?}"),
    }
}

fn endpoints_of(g: &Generated, cluster: &str) -> Vec<String> {
    let la = g
        .endpoints
        .iter()
        .find(|e| e.cluster_name == cluster)
        .unwrap_or_else(|| panic!("EDS {cluster}"));
    let mut out: Vec<String> = la
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let text = format!("{:?}", e.host_identifier);
            let ip = text
                .split("address: \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned();
            ip
        })
        .collect();
    out.sort();
    out
}

/// `istioctl proxy-config route -n canary toolbox` once the canary VirtualService applies (Istio 1.19).
const CANARY_ROUTES: &str = "\
NAME     VHOST NAME                               DOMAINS                               MATCH     VIRTUAL SERVICE
80       canary.canary.svc.cluster.local:80       canary, canary.canary + 1 more...     /*        canary.canary
";

/// `istioctl proxy-config cluster -n canary toolbox` with the canary DestinationRule (Istio 1.19).
const CANARY_CLUSTERS: &str = "\
SERVICE FQDN                        PORT     SUBSET     DIRECTION     TYPE             DESTINATION RULE
BlackHoleCluster                    -        -          -             STATIC
InboundPassthroughClusterIpv4       -        -          -             ORIGINAL_DST
PassthroughCluster                  -        -          -             ORIGINAL_DST
canary.canary.svc.cluster.local     80       -          outbound      EDS              canary.canary
canary.canary.svc.cluster.local     80       v1         outbound      EDS              canary.canary
canary.canary.svc.cluster.local     80       v2         outbound      EDS              canary.canary
";

#[test]
fn canary_routes_by_header_to_subsets() {
    let snap = snapshot("canary");
    let g = generate(&snap, &sidecar("10.244.0.7", "toolbox-97948fc8-ptlct", "canary"));
    assert_eq!(route_rows(&g.routes), table_rows(CANARY_ROUTES));
    let vh = &rc(&g, "80").virtual_hosts[0];
    assert_eq!(vh.name, "canary.canary.svc.cluster.local:80");
    assert_eq!(vh.routes.len(), 2);
    // Rule 1: header `user: zhongmingmao` → v2.
    let r = &vh.routes[0];
    let m = r.r#match.as_ref().unwrap();
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.headers[0].name, "user");
    assert!(format!("{:?}", m.headers[0].header_match_specifier).contains("Exact(\"zhongmingmao\")"));
    assert_eq!(m.case_sensitive.as_ref().map(|b| b.value), Some(true));
    assert_eq!(
        single_cluster(r),
        "outbound|80|v2|canary.canary.svc.cluster.local"
    );
    assert_eq!(
        r.decorator.as_ref().unwrap().operation,
        "canary.canary.svc.cluster.local:80/*"
    );
    assert_eq!(r.name, "");
    // Rule 2: everything else → v1 (no match: no case_sensitive, as Istio).
    let r = &vh.routes[1];
    assert!(r.r#match.as_ref().unwrap().case_sensitive.is_none());
    assert_eq!(
        single_cluster(r),
        "outbound|80|v1|canary.canary.svc.cluster.local"
    );
    let a = action(r);
    assert_eq!(a.timeout.unwrap().seconds, 0);
    assert_eq!(
        a.retry_policy.as_ref().unwrap().retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );

    assert_eq!(cluster_rows(&g.clusters), table_rows(CANARY_CLUSTERS));
    use cluster::LbPolicy;
    let lb = |name: &str| cluster(&g, name).lb_policy;
    assert_eq!(
        lb("outbound|80||canary.canary.svc.cluster.local"),
        LbPolicy::Random as i32
    );
    assert_eq!(
        lb("outbound|80|v1|canary.canary.svc.cluster.local"),
        LbPolicy::Random as i32,
        "inherits RANDOM"
    );
    assert_eq!(
        lb("outbound|80|v2|canary.canary.svc.cluster.local"),
        LbPolicy::RoundRobin as i32,
        "v2 overrides with ROUND_ROBIN"
    );
    let v2 = cluster(&g, "outbound|80|v2|canary.canary.svc.cluster.local");
    let md = format!("{:?}", v2.metadata);
    assert!(md.contains("\"subset\"") && md.contains("\"v2\""), "{md}");
    assert_eq!(v2.eds_cluster_config.as_ref().unwrap().service_name, v2.name);
    // Each subset's EDS carries only its pods.
    assert_eq!(
        endpoints_of(&g, "outbound|80||canary.canary.svc.cluster.local"),
        ["10.244.0.6", "10.244.0.8"]
    );
    assert_eq!(
        endpoints_of(&g, "outbound|80|v1|canary.canary.svc.cluster.local"),
        ["10.244.0.6"]
    );
    assert_eq!(
        endpoints_of(&g, "outbound|80|v2|canary.canary.svc.cluster.local"),
        ["10.244.0.8"]
    );
}

const CANARY_FAULT_VS: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: canary, namespace: canary}
spec:
  hosts: [canary]
  http:
    - match:
        - headers:
            user:
              exact: zhongmingmao
      route:
        - destination: {host: canary, subset: v2}
      retries:
        attempts: 3
        perTryTimeout: 2s
    - route:
      - destination: {host: canary, subset: v1}
      fault:
        abort:
          httpStatus: 500
          percentage:
            value: 80
";

#[test]
fn canary_fault_injection_and_retries() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/testdata/canary/canary.yaml"
    ))
    .unwrap();
    // The seed's second istio-specs.yaml replaces the VirtualService.
    let docs: Vec<&str> = base
        .split("\n---\n")
        .filter(|d| !d.contains("kind: VirtualService"))
        .collect();
    let without_vs = docs.join("\n---\n");
    let snap = snapshot_of(&[&without_vs, CANARY_FAULT_VS]);
    let g = generate(&snap, &sidecar("10.244.0.7", "toolbox-97948fc8-ptlct", "canary"));
    let vh = &rc(&g, "80").virtual_hosts[0];
    let retry = action(&vh.routes[0]).retry_policy.clone().unwrap();
    assert_eq!(retry.num_retries.unwrap().value, 3);
    assert_eq!(retry.per_try_timeout.unwrap().seconds, 2);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert!(vh.routes[0].typed_per_filter_config.is_empty());
    let fault = &vh.routes[1].typed_per_filter_config["envoy.filters.http.fault"];
    assert_eq!(
        fault.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
    );
    let f = HttpFault::decode(fault.value.as_slice()).unwrap();
    let abort = f.abort.unwrap();
    assert_eq!(abort.error_type, Some(fault_abort::ErrorType::HttpStatus(500)));
    let p = abort.percentage.unwrap();
    assert_eq!(
        (p.numerator, p.denominator),
        (800_000, 2),
        "80% as a MILLION fraction"
    );
    assert!(f.delay.is_none());
    assert_eq!(
        action(&vh.routes[1])
            .retry_policy
            .as_ref()
            .unwrap()
            .num_retries
            .unwrap()
            .value,
        2,
        "the default policy where none is set"
    );
}

/// The ingress gateway's `proxy-config listener` (Istio 1.19 for the simple + securesvc Gateways).
const GATEWAY_LISTENERS: &str = "\
ADDRESSES  PORT  MATCH                              DESTINATION
0.0.0.0    8080  ALL                                Route: http.8080
0.0.0.0    8443  SNI: httpsserver.zhongmingmao.io   Route: https.443.https-default.httpsserver.securesvc
";

/// Its `proxy-config route` (the `/nginx` prefix of the second simple VirtualService).
const GATEWAY_ROUTES: &str = "\
NAME                                                VHOST NAME                            DOMAINS                         MATCH       VIRTUAL SERVICE
http.8080                                           simple.zhongmingmao.io:80             simple.zhongmingmao.io          /nginx*     simple.simple
https.443.https-default.httpsserver.securesvc       httpsserver.zhongmingmao.io:443       httpsserver.zhongmingmao.io     /*          httpsserver.securesvc
";

fn ingress() -> pilot::proxy::Proxy {
    router(
        "10.244.0.4",
        "istio-ingressgateway-779c475c44-j4tds",
        "istio-system",
    )
}

#[test]
fn ingress_gateway_listeners_routes_and_secret() {
    // `istioctl analyze` explains the seed's 503.
    let snap = snapshot_expecting(
        "gateway",
        &["Error [IST0101] (VirtualService securesvc/httpsserver) Referenced host not found: \"httpserver.securesvc.svc\""],
    );
    let g = generate(&snap, &ingress());
    assert_eq!(listener_rows(&g.listeners), table_rows(GATEWAY_LISTENERS));
    assert_eq!(route_rows(&g.routes), table_rows(GATEWAY_ROUTES));
    let names: BTreeSet<&str> = g.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["0.0.0.0_8080", "0.0.0.0_8443"]),
        "Service port → container port"
    );

    // http.8080: host match, prefix rewritten to /, to simple:80; anything else 404s (no route).
    let r80 = rc(&g, "http.8080");
    assert_eq!(r80.virtual_hosts.len(), 1);
    assert_eq!(r80.virtual_hosts[0].domains, ["simple.zhongmingmao.io"]);
    let r = &r80.virtual_hosts[0].routes[0];
    assert_eq!(action(r).prefix_rewrite, "/");
    assert_eq!(single_cluster(r), "outbound|80||simple.simple.svc.cluster.local");
    assert!(r80.ignore_port_in_host_matching);

    // The HCM a gateway runs: remote address used, server istio-envoy.
    let l = g.listeners.iter().find(|l| l.name == "0.0.0.0_8080").unwrap();
    assert_eq!(l.bind_to_port, None, "gateways bind their port");
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
        panic!()
    };
    let h = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    assert_eq!(h.stat_prefix, "outbound_0.0.0.0_8080");
    assert_eq!(h.use_remote_address.map(|b| b.value), Some(true));
    assert_eq!(h.server_name, "istio-envoy");
    assert!(
        matches!(h.route_specifier, Some(RouteSpecifier::Rds(ref r)) if r.route_config_name == "http.8080")
    );

    // HTTPS: SNI chain, TLS context with the credential as SDS over ADS, ALPN h2 + http/1.1.
    let l = g.listeners.iter().find(|l| l.name == "0.0.0.0_8443").unwrap();
    assert_eq!(l.listener_filters[0].name, "envoy.filters.listener.tls_inspector");
    let chain = &l.filter_chains[0];
    let ts = chain.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(xds::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
        &ts.config_type
    else {
        panic!()
    };
    let tls = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    let common = tls.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert_eq!(
        common.tls_certificate_sds_secret_configs[0].name,
        "kubernetes://zhongmingmao-credential"
    );
    assert_eq!(tls.require_client_certificate.map(|b| b.value), Some(false));
    // The seed's destination host is not a Service FQDN: a cluster nobody has (the seed's 503).
    let https = rc(&g, "https.443.https-default.httpsserver.securesvc");
    assert_eq!(
        single_cluster(&https.virtual_hosts[0].routes[0]),
        "outbound|80||httpserver.securesvc.svc"
    );
    assert!(!g
        .clusters
        .iter()
        .any(|c| c.name == "outbound|80||httpserver.securesvc.svc"));

    // Clusters: every Service, BlackHoleCluster; no passthrough, no inbound.
    assert!(g
        .clusters
        .iter()
        .any(|c| c.name == "outbound|80||simple.simple.svc.cluster.local"));
    assert!(g.clusters.iter().any(|c| c.name == "BlackHoleCluster"));
    assert!(!g
        .clusters
        .iter()
        .any(|c| c.name == "PassthroughCluster" || c.name.starts_with("inbound|")));

    // SDS: the Secret of the gateway's namespace, inline.
    let mesh = MeshConfig::default();
    let proxy = ingress();
    let ctx = Context::new(&snap, &proxy, &mesh);
    let secrets: Vec<Secret> = gen::secret::secrets(&ctx, &[]);
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].name, "kubernetes://zhongmingmao-credential");
    let Some(secret::Type::TlsCertificate(cert)) = &secrets[0].r#type else {
        panic!()
    };
    assert!(format!("{:?}", cert.certificate_chain).contains("InlineBytes"));
    // Another namespace's Secret is not served, nor are secrets to sidecars.
    assert!(gen::secret::secrets(&ctx, &["kubernetes://simple/zhongmingmao-credential".into()]).is_empty());
    let side = sidecar("10.244.0.7", "toolbox-97948fc8-ptlct", "istio-system");
    let ctx = Context::new(&snap, &side, &mesh);
    assert!(gen::secret::secrets(&ctx, &["kubernetes://zhongmingmao-credential".into()]).is_empty());
}

#[test]
fn ingress_without_a_bound_virtual_service_answers_404() {
    // The Gateway alone (the seed before `istio-specs.yaml` binds a VirtualService).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/testdata/gateway/simple.yaml"
    ))
    .unwrap();
    let no_vs: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("kind: VirtualService"))
        .collect();
    let pod = include_str!("testdata/gateway/ingressgateway-pod.yaml");
    let svc = include_str!("testdata/gateway/istio-system.yaml");
    let snap = snapshot_of(&[svc, pod, &no_vs.join("\n---\n")]);
    let g = generate(&snap, &ingress());
    assert_eq!(
        route_rows(&g.routes),
        BTreeSet::from(["http.8080 | blackhole:80 | * | /* | 404".to_string()])
    );
    assert!(rc(&g, "http.8080").virtual_hosts[0].routes.is_empty());
}

#[test]
fn gateway_port_without_a_service_is_taken_as_written_and_https_redirect() {
    let svc = include_str!("testdata/gateway/istio-system.yaml");
    let pod = include_str!("testdata/gateway/ingressgateway-pod.yaml");
    let gw = "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {name: web, namespace: istio-system}\n\
              spec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 9090, name: http-web, protocol: HTTP}\n\
              \x20   hosts: ['*.example.com']\n    tls: {httpsRedirect: true}\n";
    let snap = snapshot_of(&[svc, pod, gw]);
    let g = generate(&snap, &ingress());
    assert_eq!(g.listeners[0].name, "0.0.0.0_9090");
    let r = rc(&g, "http.9090");
    assert_eq!(r.virtual_hosts[0].name, "*.example.com:9090");
    assert_eq!(r.virtual_hosts[0].require_tls, 2, "ALL");
}

#[test]
fn service_entries_and_registry_only() {
    let se = "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: sidecar}\n\
              spec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n\
              \x20 ports: [{number: 443, name: https, protocol: TLS}, {number: 80, name: http, protocol: HTTP}]\n---\n\
              apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: db, namespace: sidecar}\n\
              spec:\n  hosts: [db.internal]\n  addresses: [198.19.9.9]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
              \x20 ports: [{number: 5432, name: tcp, protocol: TCP}]\n  endpoints: [{address: 198.18.9.1}]\n";
    let nginx = include_str!("testdata/seed004/sidecar-nginx.yaml");
    let snap = snapshot_of(&[nginx, se]);
    let toolbox = sidecar("10.244.0.7", "toolbox", "sidecar");
    let g = generate(&snap, &toolbox);
    // DNS: STRICT_DNS to the host itself, external.
    let c = cluster(&g, "outbound|443||api.example.com");
    assert!(
        matches!(c.cluster_discovery_type, Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::StrictDns as i32)
    );
    assert!(format!("{:?}", c.load_assignment).contains("api.example.com"));
    assert!(format!("{:?}", c.metadata).contains("\"external\""));
    // STATIC: EDS with the entry's endpoint; a VIP_PORT TCP listener.
    assert_eq!(endpoints_of(&g, "outbound|5432||db.internal"), ["198.18.9.1"]);
    assert!(g.listeners.iter().any(|l| l.name == "198.19.9.9_5432"));
    // TLS without an address: the wildcard listener, chosen by SNI.
    let l443 = g.listeners.iter().find(|l| l.name == "0.0.0.0_443").unwrap();
    assert_eq!(
        l443.filter_chains[0]
            .filter_chain_match
            .as_ref()
            .unwrap()
            .server_names,
        ["api.example.com"]
    );
    assert_eq!(
        l443.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    // HTTP: a virtual host named by the host only.
    let vh = rc(&g, "80")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "api.example.com:80")
        .unwrap();
    assert_eq!(vh.domains, ["api.example.com"]);
    assert_eq!(rc(&g, "80").virtual_hosts.last().unwrap().name, "allow_any");

    // REGISTRY_ONLY: block_all (502) and BlackHoleCluster for everything unknown.
    let mesh = MeshConfig {
        outbound_traffic_policy: api::networking::OutboundMode::RegistryOnly,
        ..Default::default()
    };
    let g = generate_with(&snap, &toolbox, &mesh);
    let last = rc(&g, "80").virtual_hosts.last().unwrap().clone();
    assert_eq!(last.name, "block_all");
    assert!(matches!(&last.routes[0].action, Some(route::Action::DirectResponse(d)) if d.status == 502));
    let vo = g.listeners.iter().find(|l| l.name == "virtualOutbound").unwrap();
    // (istioctl prints a tcp_proxy to BlackHoleCluster as Non-HTTP/Non-TCP.)
    assert_eq!(destination(&vo.filter_chains[1]), "Non-HTTP/Non-TCP");
    let l80 = g.listeners.iter().find(|l| l.name == "0.0.0.0_80").unwrap();
    assert_eq!(
        destination(l80.default_filter_chain.as_ref().unwrap()),
        "Non-HTTP/Non-TCP"
    );
    // A Sidecar's outboundTrafficPolicy wins over the mesh's.
    let sc = "apiVersion: networking.istio.io/v1beta1\nkind: Sidecar\nmetadata: {name: default, namespace: sidecar}\n\
              spec: {outboundTrafficPolicy: {mode: ALLOW_ANY}}\n";
    let snap = snapshot_of(&[nginx, se, sc]);
    let g = generate_with(&snap, &toolbox, &mesh);
    assert_eq!(rc(&g, "80").virtual_hosts.last().unwrap().name, "allow_any");
}

#[test]
fn sidecar_egress_hosts_scope_what_a_proxy_sees() {
    let seed = [
        "namespaces.yaml",
        "kube-system.yaml",
        "istio-system.yaml",
        "default.yaml",
        "sidecar-nginx.yaml",
        "sidecar-pods.yaml",
    ]
    .map(|f| {
        std::fs::read_to_string(format!(
            "{}/tests/testdata/seed004/{f}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    });
    let sc = "apiVersion: networking.istio.io/v1beta1\nkind: Sidecar\nmetadata: {name: default, namespace: sidecar}\n\
              spec:\n  egress:\n  - hosts: ['./*', 'istio-system/istiod.istio-system.svc.cluster.local']\n";
    let mut texts: Vec<&str> = seed.iter().map(String::as_str).collect();
    texts.push(sc);
    let snap = snapshot_of(&texts);
    let g = generate(&snap, &sidecar("10.244.0.7", "toolbox-97948fc8-ptlct", "sidecar"));
    let outbound: BTreeSet<&str> = g
        .clusters
        .iter()
        .filter(|c| c.name.starts_with("outbound|"))
        .map(|c| c.name.rsplit('|').next().unwrap())
        .collect();
    assert_eq!(
        outbound,
        BTreeSet::from([
            "istiod.istio-system.svc.cluster.local",
            "nginx.sidecar.svc.cluster.local"
        ])
    );
    assert!(
        !g.listeners.iter().any(|l| l.name == "10.96.0.10_53"),
        "kube-dns is not imported"
    );
    // A proxy in another namespace is not scoped by it.
    let g = generate(&snap, &sidecar("10.244.0.9", "client", "default"));
    assert!(g.clusters.iter().any(|c| c.name.contains("kube-dns")));
}

#[test]
fn virtual_service_http_features_translate_as_istio() {
    let nginx = include_str!("testdata/seed004/sidecar-nginx.yaml");
    let vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: web, namespace: sidecar}\n\
              spec:\n  hosts: [nginx]\n  http:\n\
              \x20 - name: redirect\n    match: [{uri: {exact: /old}, name: m1}]\n    redirect: {uri: /new, authority: example.com, redirectCode: 302}\n\
              \x20 - match: [{uri: {regex: '/v[0-9]+/.*'}, method: {exact: POST}, queryParams: {debug: {exact: '1'}}, withoutHeaders: {x-skip: {}}}]\n\
              \x20   directResponse: {status: 418, body: {string: teapot}}\n\
              \x20 - match: [{uri: {prefix: /api}, ignoreUriCase: true}]\n\
              \x20   rewrite: {uri: /v2, authority: backend.local}\n    timeout: 3s\n\
              \x20   route: [{destination: {host: nginx, port: {number: 80}}, weight: 90}, {destination: {host: nginx.sidecar.svc.cluster.local, subset: canary}, weight: 10, headers: {request: {set: {x-canary: 'yes'}}}}]\n\
              \x20   mirror: {host: nginx}\n    mirrorPercentage: {value: 25}\n\
              \x20   headers: {request: {add: {x-b: b}, set: {x-a: a}, remove: [x-c]}, response: {set: {x-r: r}}}\n\
              \x20   corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET, POST], maxAge: 24h, allowCredentials: true}\n\
              \x20 - route: [{destination: {host: nginx}}]\n    retries: {attempts: 0}\n    fault: {delay: {fixedDelay: 6s, percentage: {value: 100}}}\n";
    let snap = snapshot_of(&[nginx, vs]);
    let g = generate(&snap, &sidecar("10.244.0.7", "toolbox", "sidecar"));
    let vh = rc(&g, "80")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "nginx.sidecar.svc.cluster.local:80")
        .unwrap();
    assert_eq!(vh.routes.len(), 4);
    // Redirect, named `redirect.m1`.
    let r = &vh.routes[0];
    assert_eq!(r.name, "redirect.m1");
    let Some(route::Action::Redirect(rd)) = &r.action else {
        panic!()
    };
    assert_eq!(rd.host_redirect, "example.com");
    assert_eq!(rd.response_code, 1, "FOUND");
    assert!(format!("{:?}", r.r#match).contains("Path(\"/old\")"));
    // Direct response with regex, method, query and absent-header matches.
    let r = &vh.routes[1];
    let m = r.r#match.as_ref().unwrap();
    assert!(format!("{:?}", m.path_specifier).contains("/v[0-9]+/.*"));
    let names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["x-skip", ":method"]);
    assert!(m.headers[0].invert_match);
    assert_eq!(m.query_parameters[0].name, "debug");
    let Some(route::Action::DirectResponse(d)) = &r.action else {
        panic!()
    };
    assert_eq!(d.status, 418);
    assert_eq!(r.decorator.as_ref().unwrap().operation, "web:80/v[0-9]+/.*");
    // Weighted, rewritten, mirrored, headers, CORS.
    let r = &vh.routes[2];
    assert_eq!(
        r.r#match
            .as_ref()
            .unwrap()
            .case_sensitive
            .as_ref()
            .map(|b| b.value),
        Some(false)
    );
    let a = action(r);
    assert_eq!(a.prefix_rewrite, "/v2");
    assert!(
        matches!(&a.host_rewrite_specifier, Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) if h == "backend.local")
    );
    assert_eq!(a.timeout.unwrap().seconds, 3);
    assert_eq!(a.max_grpc_timeout.unwrap().seconds, 3);
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!()
    };
    let ws: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        ws,
        [
            ("outbound|80||nginx.sidecar.svc.cluster.local".to_string(), 90),
            (
                "outbound|80|canary|nginx.sidecar.svc.cluster.local".to_string(),
                10
            )
        ]
    );
    assert_eq!(
        w.clusters[1].request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-canary"
    );
    let mirror = &a.request_mirror_policies[0];
    assert_eq!(mirror.cluster, "outbound|80||nginx.sidecar.svc.cluster.local");
    let f = mirror.runtime_fraction.as_ref().unwrap().default_value.unwrap();
    assert_eq!((f.numerator, f.denominator), (250_000, 2));
    let keys: Vec<&str> = r
        .request_headers_to_add
        .iter()
        .map(|h| h.header.as_ref().unwrap().key.as_str())
        .collect();
    assert_eq!(keys, ["x-a", "x-b"], "set before add");
    assert_eq!(r.request_headers_to_remove, ["x-c"]);
    #[allow(deprecated)]
    let cors = a.cors.as_ref().unwrap();
    assert_eq!(cors.allow_methods, "GET,POST");
    assert_eq!(cors.max_age, "86400");
    assert_eq!(r.decorator.as_ref().unwrap().operation, "web:80/api*");
    assert_eq!(config_column(r.metadata.as_ref()), "web.sidecar");
    // Retries off, delay fault.
    let r = &vh.routes[3];
    assert!(action(r).retry_policy.is_none());
    let f = HttpFault::decode(
        r.typed_per_filter_config["envoy.filters.http.fault"]
            .value
            .as_slice(),
    )
    .unwrap();
    assert_eq!(f.delay.unwrap().percentage.unwrap().numerator, 1_000_000);
}

#[test]
fn destination_rule_policies_become_cluster_settings() {
    let nginx = include_str!("testdata/seed004/sidecar-nginx.yaml");
    let dr = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: nginx, namespace: sidecar}\n\
              spec:\n  host: nginx\n  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n\
              \x20   connectionPool:\n      tcp: {maxConnections: 10, connectTimeout: 2s}\n      http: {http1MaxPendingRequests: 5, http2MaxRequests: 20, maxRetries: 4, idleTimeout: 30s, maxRequestsPerConnection: 1}\n\
              \x20   outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n\
              \x20   portLevelSettings:\n    - port: {number: 8080}\n      loadBalancer: {simple: LEAST_REQUEST}\n";
    let snap = snapshot_of(&[nginx, dr]);
    let g = generate(&snap, &sidecar("10.244.0.7", "toolbox", "sidecar"));
    let c = cluster(&g, "outbound|80||nginx.sidecar.svc.cluster.local");
    assert_eq!(c.lb_policy, cluster::LbPolicy::RingHash as i32);
    assert!(
        format!("{:?}", c.lb_config).contains("1024"),
        "Istio's default ring size"
    );
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 10);
    assert_eq!(t.max_pending_requests.unwrap().value, 5);
    assert_eq!(t.max_requests.unwrap().value, 20);
    assert_eq!(t.max_retries.unwrap().value, 4);
    assert_eq!(c.connect_timeout.unwrap().seconds, 2);
    let o = c.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx.unwrap().value, 2);
    assert_eq!(o.enforcing_consecutive_5xx.unwrap().value, 100);
    assert_eq!(o.enforcing_success_rate.unwrap().value, 0);
    assert_eq!(o.interval.unwrap().seconds, 1);
    assert_eq!(o.max_ejection_percent.unwrap().value, 100);
    assert_eq!(
        c.common_lb_config
            .as_ref()
            .unwrap()
            .healthy_panic_threshold
            .unwrap()
            .value,
        0.0
    );
    let opts = format!("{:?}", c.typed_extension_protocol_options);
    assert!(opts.contains("HttpProtocolOptions"), "{opts}");
    assert_eq!(config_column(c.metadata.as_ref()), "nginx.sidecar");
    // The consistent hash shows on the default route as a header hash policy.
    let vh = rc(&g, "80")
        .virtual_hosts
        .iter()
        .find(|v| v.name == "nginx.sidecar.svc.cluster.local:80")
        .unwrap();
    assert!(format!("{:?}", action(&vh.routes[0]).hash_policy).contains("x-user"));
}
