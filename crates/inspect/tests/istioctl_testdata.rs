//! istioctl's own test fixtures (istio/istio 1.22.0, Apache-2.0; see testdata/istioctl/README.md):
//! real dumps from Istio's sidecars and gateways with the output istioctl's tests expect.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use inspect::route::RouteFilter;
use inspect::{ConfigDump, FullFilter, Output};

fn read(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/testdata/istioctl")
            .join(name),
    )
    .unwrap()
}

/// istioctl's golden files were saved by an editor that trims trailing blanks at the very end.
fn same(got: &str, want: &str) {
    assert_eq!(
        got.trim_end(),
        want.trim_end(),
        "\n--- got ---\n{got}\n--- want ---\n{want}"
    );
}

#[test]
fn proxy_config_all() {
    let d = ConfigDump::parse(&read("all_config_dump.json")).unwrap();
    // The fixture's VALID CERT column was recorded in 2023/2024 (default expired, ROOTCA valid).
    let when = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
    same(
        &inspect::full_summary(&d, &FullFilter::default(), when).unwrap(),
        &read("all_summary.txt"),
    );
}

#[test]
fn route_summaries() {
    for name in [
        "empty-gateway",
        "istio-gateway-http-route-prefix",
        "k8s-gateway-http-route-path-prefix",
    ] {
        let d = ConfigDump::parse(&read(&format!("route_{name}.json"))).unwrap();
        let got = inspect::route::print(&d, &RouteFilter::default(), Output::Short).unwrap();
        same(&got, &read(&format!("route_{name}.txt")));
    }
}

#[test]
fn secrets() {
    let d = ConfigDump::parse(&read("secret_config_dump.json")).unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_704_067_200);
    same(
        &inspect::secret::summary_at(&d, false, when).unwrap(),
        &read("secret_summary.txt"),
    );
}

#[test]
fn bootstrap() {
    let d = ConfigDump::parse(&read("bootstrap_config_dump.json")).unwrap();
    same(
        &inspect::bootstrap::print(&d, Output::Short).unwrap(),
        &read("bootstrap_summary.txt"),
    );
    same(
        &inspect::bootstrap::print(&d, Output::Json).unwrap(),
        &read("bootstrap_dump.json"),
    );
}
