//! Configuration the proxy refuses, with an error that names the field.

/// Loads a one-listener bootstrap into a store; the listener's rejections, if any.
fn load(server_name: &str) -> Result<(), String> {
    let pool = xds::json::descriptor_pool().map_err(|e| e.to_string())?;
    let bootstrap = serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "web",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 8080 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "web",
                        "server_name": server_name,
                        "route_config": { "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" }, "direct_response": { "status": 200 } }]
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                        }]
                    }
                }]}]
            }]
        }
    });
    let proto = xds::json::from_json(&pool, bootstrap).map_err(|e| e.to_string())?;
    let loaded = proxy::bootstrap::from_proto(proto).map_err(|e| e.to_string())?;
    let report = proxy::snapshot::Store::new().apply(loaded.static_update());
    match report.rejected.first() {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

#[test]
fn a_server_name_that_is_no_header_value_is_refused() {
    assert_eq!(load("skiff-edge"), Ok(()));
    let err = load("bad\nname").err().unwrap_or_default();
    assert!(err.contains("server_name"), "error names the field: {err}");
    assert!(err.contains("not a valid header value"), "and says why: {err}");
}
