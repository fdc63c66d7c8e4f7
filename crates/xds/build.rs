//! Compiles a protobuf descriptor set for the Envoy messages Skiff reads and prints as JSON, from
//! the `.proto` files that ship inside the `envoy-types` package (the same files its Rust types
//! were generated from), so JSON/YAML bootstraps and `/config_dump` use Envoy's exact schema.

use std::path::{Path, PathBuf};

/// Roots: everything reachable from these is in the set. Any `typed_config` whose type is not
/// reachable is rejected with its `@type` named.
const ROOTS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/admin/v3/config_dump.proto",
    "envoy/admin/v3/clusters.proto",
    "envoy/admin/v3/server_info.proto",
    "envoy/service/discovery/v3/ads.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/clusters/aggregate/v3/cluster.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
];

fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(std::env::var("TARGET").expect("TARGET"))
        .arg("--manifest-path")
        .arg(Path::new(&manifest).join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "envoy-types"))
        .expect("envoy-types in the dependency graph");
    let manifest_path = pkg["manifest_path"].as_str().expect("manifest_path");
    Path::new(manifest_path).parent().expect("package dir").to_owned()
}

fn main() {
    let root = envoy_types_dir().join("proto");
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec",
        "opentelemetry-proto",
        "client_model",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    let fds = protox::compile(ROOTS, &includes).expect("compiling Envoy protos");
    let bytes = prost::Message::encode_to_vec(&fds);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptor_set.bin");
    std::fs::write(&out, bytes).expect("writing descriptor set");
    println!("cargo:rerun-if-changed=build.rs");
}
