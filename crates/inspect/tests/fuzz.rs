//! Property tests: no input makes a view panic. Arbitrary bytes, arbitrary JSON shaped like a
//! dump, and real Envoy dumps with random parts replaced, removed or retyped all go through
//! every view and every output format; they may fail, never crash.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::SystemTime;

use inspect::cluster::ClusterFilter;
use inspect::endpoint::{Clusters, EndpointFilter};
use inspect::listener::ListenerFilter;
use inspect::route::RouteFilter;
use inspect::{ConfigDump, FullFilter, Output};
use proptest::prelude::*;
use serde_json::Value;

const OUTPUTS: [Output; 3] = [Output::Short, Output::Json, Output::Yaml];

/// Every view of a config dump, with and without filters.
fn all_views(text: &str) {
    let Ok(d) = ConfigDump::parse(text) else {
        return;
    };
    for out in OUTPUTS {
        let lf = ListenerFilter {
            port: 80,
            kind: "http".into(),
            ..Default::default()
        };
        let _ = inspect::listener::print(&d, &ListenerFilter::default(), out);
        let _ = inspect::listener::print(&d, &lf, out);
        let _ = inspect::route::print(&d, &RouteFilter::default(), out);
        let _ = inspect::cluster::print(&d, &ClusterFilter::default(), out);
        let _ = inspect::bootstrap::print(&d, out);
        let _ = inspect::secret::print(&d, out);
        let _ = inspect::raw_dump(&d, text, out);
    }
    let _ = inspect::full_summary(&d, &FullFilter::default(), SystemTime::now());
    let _ = inspect::route::print(
        &d,
        &RouteFilter {
            name: "80".into(),
            verbose: false,
        },
        Output::Short,
    );
}

fn endpoint_views(text: &str) {
    if let Ok(c) = Clusters::parse(text) {
        for out in OUTPUTS {
            let _ = inspect::endpoint::print(&c, &EndpointFilter::default(), out);
            let f = EndpointFilter {
                status: "healthy".into(),
                port: 80,
                ..Default::default()
            };
            let _ = inspect::endpoint::print(&c, &f, out);
        }
    }
    if let Ok(s) = inspect::status::parse_syncz(text, "x") {
        let _ = inspect::status::summary(s, Some("sidecar"), None);
    }
}

fn testdata(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// JSON values biased towards the keys and shapes of a config dump.
fn arb_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("@type".to_owned()),
        Just("configs".to_owned()),
        Just("name".to_owned()),
        Just("filter_chains".to_owned()),
        Just("filters".to_owned()),
        Just("typed_config".to_owned()),
        Just("route_config".to_owned()),
        Just("virtual_hosts".to_owned()),
        Just("domains".to_owned()),
        Just("routes".to_owned()),
        Just("match".to_owned()),
        Just("address".to_owned()),
        Just("socket_address".to_owned()),
        Just("port_value".to_owned()),
        Just("metadata".to_owned()),
        Just("filter_metadata".to_owned()),
        Just("cluster_statuses".to_owned()),
        Just("host_statuses".to_owned()),
        Just("dynamic_listeners".to_owned()),
        "[a-z_@.]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("type.googleapis.com/envoy.admin.v3.ListenersConfigDump".to_owned()),
            Just("type.googleapis.com/envoy.admin.v3.RoutesConfigDump".to_owned()),
            Just("type.googleapis.com/envoy.admin.v3.ClustersConfigDump".to_owned()),
            Just("type.googleapis.com/google.protobuf.Struct".to_owned()),
            Just("envoy.filters.network.http_connection_manager".to_owned()),
            Just("envoy.filters.network.tcp_proxy".to_owned()),
            Just("outbound|80|v1|a.b.svc.cluster.local".to_owned()),
            Just("/apis/networking.istio.io/v1alpha3/namespaces/a/virtual-service/b".to_owned()),
            "\\PC{0,16}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the node reached by following `path` (indices taken modulo each container's size)
/// with `replacement`, or removes it from its object when `remove`.
fn mutate(v: &mut Value, path: &[usize], replacement: Value, remove: bool) {
    let Some((&step, rest)) = path.split_first() else {
        *v = replacement;
        return;
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(step % m.len()).cloned().unwrap();
            if rest.is_empty() && remove {
                m.remove(&key);
            } else if let Some(child) = m.get_mut(&key) {
                mutate(child, rest, replacement, remove);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = step % a.len();
            if rest.is_empty() && remove {
                a.remove(i);
            } else {
                mutate(&mut a[i], rest, replacement, remove);
            }
        }
        other => *other = replacement,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        all_views(&text);
        endpoint_views(&text);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let text = v.to_string();
        all_views(&text);
        endpoint_views(&text);
        // Also wrapped as a dump section of each kind.
        for section in ["ListenersConfigDump", "RoutesConfigDump", "ClustersConfigDump", "BootstrapConfigDump", "SecretsConfigDump", "EndpointsConfigDump"] {
            let mut obj = serde_json::Map::new();
            obj.insert("@type".into(), Value::String(format!("type.googleapis.com/envoy.admin.v3.{section}")));
            for key in ["dynamic_listeners", "static_listeners", "dynamic_route_configs", "static_route_configs",
                        "dynamic_active_clusters", "static_clusters", "bootstrap", "dynamic_active_secrets",
                        "dynamic_endpoint_configs"] {
                obj.insert(key.into(), v.clone());
            }
            let dump = serde_json::json!({"configs": [Value::Object(obj)]});
            all_views(&dump.to_string());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mutated_envoy_dumps_never_panic(
        edits in prop::collection::vec((prop::collection::vec(any::<usize>(), 1..12), arb_json(), any::<bool>()), 1..6),
        which in 0..4usize,
    ) {
        let (name, clusters) = [
            ("envoy/toolbox_config_dump.json", false),
            ("envoy/nginx_config_dump.json", false),
            ("envoy/toolbox_clusters.json", true),
            ("istioctl/all_config_dump.json", false),
        ][which];
        let mut v = testdata(name);
        for (path, replacement, remove) in edits {
            mutate(&mut v, &path, replacement, remove);
        }
        let text = v.to_string();
        if clusters {
            endpoint_views(&text);
        } else {
            all_views(&text);
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(ConfigDump::parse(&deep).is_err());
    let deep_obj = format!("{{\"configs\": {}{}}}", "[".repeat(5_000), "]".repeat(5_000));
    assert!(ConfigDump::parse(&deep_obj).is_err());
}
