//! Envoy's proto3 JSON mapping, both ways: YAML/JSON text → prost message (with `@type` in
//! `typed_config`, `10s` durations, snake_case or camelCase names, unknown fields rejected with
//! their path), and prost message → JSON as Envoy prints it in `/config_dump`.

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor_set.bin"));

/// Why a JSON/YAML document did not become an Envoy message.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    #[error("{0} is not a message type Skiff knows")]
    UnknownType(String),
    #[error("{0}")]
    Internal(String),
}

/// The schema of every Envoy message Skiff reads or prints. Decoding it takes a few megabytes, so
/// callers keep it only while converting (bootstrap load, a config dump) and then drop it.
pub fn descriptor_pool() -> Result<DescriptorPool, JsonError> {
    DescriptorPool::decode(DESCRIPTOR_SET).map_err(|e| JsonError::Internal(format!("descriptor set: {e}")))
}

/// Parses YAML (JSON is YAML too) into a JSON value.
pub fn parse_yaml(text: &str) -> Result<serde_json::Value, JsonError> {
    serde_yaml_ng::from_str::<serde_json::Value>(text).map_err(|e| JsonError::Yaml(e.to_string()))
}

/// Converts a JSON value into the prost message `M`, using Envoy's field names and rules.
pub fn from_json<M>(pool: &DescriptorPool, value: serde_json::Value) -> Result<M, JsonError>
where
    M: prost::Message + prost::Name + Default,
{
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| JsonError::UnknownType(M::full_name()))?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let msg =
        DynamicMessage::deserialize_with_options(desc, de, &DeserializeOptions::new()).map_err(|e| {
            let path = track.path().to_string();
            JsonError::Field {
                path: if path == "?" || path.is_empty() {
                    "(root)".into()
                } else {
                    path
                },
                reason: e.to_string(),
            }
        })?;
    msg.transcode_to::<M>()
        .map_err(|e| JsonError::Internal(format!("transcoding {}: {e}", M::full_name())))
}

/// Parses YAML or JSON text into `M`.
pub fn from_yaml<M>(pool: &DescriptorPool, text: &str) -> Result<M, JsonError>
where
    M: prost::Message + prost::Name + Default,
{
    from_json(pool, parse_yaml(text)?)
}

/// Prints `msg` the way Envoy's admin does: lowerCamelCase names, `@type` on `Any`, defaults
/// omitted.
pub fn to_json<M>(pool: &DescriptorPool, msg: &M) -> Result<serde_json::Value, JsonError>
where
    M: prost::Message + prost::Name,
{
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| JsonError::UnknownType(M::full_name()))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| JsonError::Internal(format!("re-decoding {}: {e}", M::full_name())))?;
    let opts = SerializeOptions::new().skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| JsonError::Internal(format!("serializing {}: {e}", M::full_name())))
}

/// Like [`to_json`] for an `Any` already packed (type URL + bytes).
pub fn any_to_json(
    pool: &DescriptorPool,
    any: &prost_types_any::Any,
) -> Result<serde_json::Value, JsonError> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let dynamic = DynamicMessage::decode(desc, any.value.as_slice())
        .map_err(|e| JsonError::Internal(format!("decoding {name}: {e}")))?;
    let opts = SerializeOptions::new().skip_default_fields(true);
    let mut v = dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| JsonError::Internal(format!("serializing {name}: {e}")))?;
    if let serde_json::Value::Object(map) = &mut v {
        let mut with_type = serde_json::Map::new();
        with_type.insert("@type".into(), serde_json::Value::String(any.type_url.clone()));
        with_type.extend(std::mem::take(map));
        *map = with_type;
    }
    Ok(v)
}

/// `google.protobuf.Any` as `envoy-types` exposes it.
pub mod prost_types_any {
    pub use envoy_types::pb::google::protobuf::Any;
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;

    const BOOTSTRAP: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 15000 } }
static_resources:
  listeners:
  - name: listener_0
    address: { socket_address: { address: 0.0.0.0, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: service, timeout: 2.5s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: service
    connectTimeout: 0.25s
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } }
"#;

    #[test]
    fn loads_an_envoy_bootstrap_with_typed_config_and_both_name_styles() {
        let pool = descriptor_pool().unwrap();
        let b: Bootstrap = from_yaml(&pool, BOOTSTRAP).unwrap();
        let sr = b.static_resources.clone().unwrap();
        assert_eq!(sr.listeners[0].name, "listener_0");
        let any = sr.listeners[0].filter_chains[0].filters[0].config_type.clone();
        assert!(format!("{any:?}").contains("HttpConnectionManager"));
        let c = &sr.clusters[0];
        assert_eq!(c.connect_timeout.unwrap().nanos, 250_000_000);
        // And back to JSON in Envoy's admin shape.
        let json = to_json(&pool, &b).unwrap();
        let hcm = &json["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"];
        assert_eq!(
            hcm["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        assert_eq!(
            hcm["routeConfig"]["virtualHosts"][0]["routes"][0]["route"]["timeout"],
            "2.500s"
        );
        assert_eq!(json["staticResources"]["clusters"][0]["connectTimeout"], "0.250s");
    }

    #[test]
    fn unknown_fields_and_types_are_named() {
        let pool = descriptor_pool().unwrap();
        let bad = BOOTSTRAP.replace("lb_policy: ROUND_ROBIN", "lb_polcy: ROUND_ROBIN");
        let err = from_yaml::<Bootstrap>(&pool, &bad).unwrap_err().to_string();
        assert!(
            err.contains("static_resources.clusters[0]") && err.contains("lb_polcy"),
            "{err}"
        );
        let bad = BOOTSTRAP.replace("router.v3.Router", "router.v3.Routr");
        let err = from_yaml::<Bootstrap>(&pool, &bad).unwrap_err().to_string();
        assert!(err.contains("Routr"), "{err}");
        assert!(err.contains("http_filters[0].typed_config"), "{err}");
    }
}
