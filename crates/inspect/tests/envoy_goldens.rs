//! Every view against dumps from real Envoy 1.40 fed by skiffd with seed 004's cluster
//! (`testdata/envoy/README.md`): the output is compared byte for byte with goldens that were
//! checked row by row against seed 004's real `istioctl proxy-config` output.
//!
//! `SKIFF_BLESS=1` rewrites the goldens from the current output (after regenerating the dumps);
//! review the diff against the seed before committing it.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::SystemTime;

use inspect::cluster::ClusterFilter;
use inspect::endpoint::{Clusters, EndpointFilter};
use inspect::listener::ListenerFilter;
use inspect::route::RouteFilter;
use inspect::{ConfigDump, FullFilter, Output};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/envoy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap()
}

fn dump(who: &str) -> ConfigDump {
    ConfigDump::parse(&read(&format!("{who}_config_dump.json"))).unwrap()
}

fn check(golden: &str, got: &str) {
    if std::env::var_os("SKIFF_BLESS").is_some() {
        std::fs::write(dir().join(golden), got).unwrap();
        return;
    }
    let want = read(golden);
    assert!(
        got == want,
        "{golden} differs:\n--- got ---\n{got}\n--- want ---\n{want}"
    );
}

#[test]
fn clusters() {
    let d = dump("toolbox");
    check(
        "toolbox_cluster.txt",
        &inspect::cluster::print(&d, &ClusterFilter::default(), Output::Short).unwrap(),
    );
    // Filters are substrings of the cluster name.
    let f = ClusterFilter {
        fqdn: "nginx".into(),
        port: 80,
        direction: "outbound".into(),
        ..Default::default()
    };
    let got = inspect::cluster::print(&d, &f, Output::Short).unwrap();
    assert_eq!(
        got,
        "SERVICE FQDN                        PORT     SUBSET     DIRECTION     TYPE     DESTINATION RULE\n\
         nginx.sidecar.svc.cluster.local     80       -          outbound      EDS      \n"
    );
}

#[test]
fn listeners() {
    check(
        "toolbox_listener.txt",
        &inspect::listener::print(&dump("toolbox"), &ListenerFilter::default(), Output::Short).unwrap(),
    );
    let f = ListenerFilter {
        port: 15006,
        ..Default::default()
    };
    check(
        "nginx_listener_15006.txt",
        &inspect::listener::print(&dump("nginx"), &f, Output::Short).unwrap(),
    );
    // --type and --address, and the per-listener TYPE view.
    let f = ListenerFilter {
        kind: "tcp".into(),
        address: "10.108.4.104".into(),
        verbose: false,
        ..Default::default()
    };
    assert_eq!(
        inspect::listener::print(&dump("toolbox"), &f, Output::Short).unwrap(),
        "ADDRESSES    PORT  TYPE\n10.108.4.104 443   TCP\n10.108.4.104 15443 TCP\n10.108.4.104 31400 TCP\n"
    );
}

#[test]
fn routes() {
    check(
        "toolbox_route.txt",
        &inspect::route::print(&dump("toolbox"), &RouteFilter::default(), Output::Short).unwrap(),
    );
    let f = RouteFilter {
        name: "80".into(),
        verbose: false,
    };
    assert_eq!(
        inspect::route::print(&dump("toolbox"), &f, Output::Short).unwrap(),
        "NAME     VIRTUAL HOSTS\n80       4\n"
    );
    let f = RouteFilter {
        name: "80".into(),
        verbose: true,
    };
    check(
        "nginx_route_80.json",
        &inspect::route::print(&dump("nginx"), &f, Output::Json).unwrap(),
    );
}

#[test]
fn endpoints() {
    let c = Clusters::parse(&read("toolbox_clusters.json")).unwrap();
    check(
        "toolbox_endpoint.txt",
        &inspect::endpoint::print(&c, &EndpointFilter::default(), Output::Short),
    );
    let c = Clusters::parse(&read("nginx_clusters.json")).unwrap();
    let f = EndpointFilter {
        cluster: "outbound|80||nginx.sidecar.svc.cluster.local".into(),
        ..Default::default()
    };
    // Seed 004's `istioctl proxy-config endpoint … --cluster=…`, byte for byte.
    assert_eq!(
        inspect::endpoint::print(&c, &f, Output::Short),
        "ENDPOINT          STATUS      OUTLIER CHECK     CLUSTER\n\
         10.244.0.6:80     HEALTHY     OK                outbound|80||nginx.sidecar.svc.cluster.local\n"
    );
    check(
        "nginx_endpoint_nginx.json",
        &inspect::endpoint::print(&c, &f, Output::Json),
    );
}

#[test]
fn all_and_status() {
    let d = dump("nginx");
    check(
        "nginx_all.txt",
        &inspect::full_summary(&d, &FullFilter::default(), SystemTime::now()).unwrap(),
    );
    let status = inspect::status::parse_syncz(&read("syncz.json"), "skiffd").unwrap();
    check("proxy_status.txt", &inspect::status::summary(status, None, None));
}

#[test]
fn json_is_valid_and_yaml_round_trips() {
    let d = dump("nginx");
    for out in [Output::Json, Output::Yaml] {
        let text = inspect::listener::print(&d, &ListenerFilter::default(), out).unwrap();
        let v: serde_json::Value = match out {
            Output::Json => serde_json::from_str(&text).unwrap(),
            _ => serde_yaml_ng::from_str(&text).unwrap(),
        };
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["name"].as_str())
            .collect();
        assert!(
            names.contains(&"virtualInbound") && names.contains(&"0.0.0.0_80"),
            "{names:?}"
        );
        assert!(v[0].get("filterChains").is_some() || v[0].get("address").is_some());
    }
}
