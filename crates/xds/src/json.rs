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

/// Prints `msg` the way Envoy's admin does: proto field names (snake_case), `@type` on `Any`,
/// defaults omitted. An `Any` of a type Skiff has no schema for (an extension it skipped) is
/// shown as a string naming the type instead of failing the whole dump.
pub fn to_json<M>(pool: &DescriptorPool, msg: &M) -> Result<serde_json::Value, JsonError>
where
    M: prost::Message + prost::Name,
{
    let desc = pool
        .get_message_by_name(&M::full_name())
        .ok_or_else(|| JsonError::UnknownType(M::full_name()))?;
    let mut dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| JsonError::Internal(format!("re-decoding {}: {e}", M::full_name())))?;
    replace_unknown_any(pool, &mut dynamic, 0);
    let opts = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
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
    let opts = SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
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

/// Walks `msg` and rewrites every `Any` whose type is not in `pool` into a
/// `google.protobuf.StringValue` that names it; known `Any`s are walked too (they may nest).
fn replace_unknown_any(pool: &DescriptorPool, msg: &mut DynamicMessage, depth: usize) {
    use prost::Message as _;
    use prost_reflect::{ReflectMessage, Value};
    if depth > 64 {
        return;
    }
    if msg.descriptor().full_name() == "google.protobuf.Any" {
        let type_url = match msg.get_field_by_name("type_url").as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => return,
        };
        let value = match msg.get_field_by_name("value").as_deref() {
            Some(Value::Bytes(b)) => b.clone(),
            _ => Default::default(),
        };
        let name = type_url.rsplit('/').next().unwrap_or_default();
        let replaced = match pool.get_message_by_name(name) {
            Some(desc) => match DynamicMessage::decode(desc, value.as_ref()) {
                Ok(mut inner) => {
                    replace_unknown_any(pool, &mut inner, depth + 1);
                    Some((type_url.clone(), inner.encode_to_vec()))
                }
                Err(_) => None,
            },
            None => None,
        };
        let (url, bytes) = replaced.unwrap_or_else(|| {
            let note = format!("[{type_url}: {} bytes; no schema in Skiff]", value.len());
            (
                "type.googleapis.com/google.protobuf.StringValue".to_owned(),
                envoy_types::pb::google::protobuf::StringValue { value: note }.encode_to_vec(),
            )
        });
        msg.set_field_by_name("type_url", Value::String(url));
        msg.set_field_by_name("value", Value::Bytes(bytes.into()));
        return;
    }
    for (_, v) in msg.fields_mut() {
        walk_value(pool, v, depth + 1);
    }
}

fn walk_value(pool: &DescriptorPool, v: &mut prost_reflect::Value, depth: usize) {
    use prost_reflect::Value;
    match v {
        Value::Message(m) => replace_unknown_any(pool, m, depth),
        Value::List(items) => items.iter_mut().for_each(|i| walk_value(pool, i, depth)),
        Value::Map(map) => map.values_mut().for_each(|i| walk_value(pool, i, depth)),
        _ => {}
    }
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
        let hcm = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"],
            "2.500s"
        );
        assert_eq!(
            json["static_resources"]["clusters"][0]["connect_timeout"],
            "0.250s"
        );
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

    #[test]
    fn unknown_any_is_named_not_fatal() {
        use envoy_types::pb::envoy::config::listener::v3::{
            filter::ConfigType, Filter, FilterChain, Listener,
        };
        let pool = descriptor_pool().unwrap();
        let l = Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "istio.stats".into(),
                    config_type: Some(ConfigType::TypedConfig(prost_types_any::Any {
                        type_url: "type.googleapis.com/stats.PluginConfig".into(),
                        value: vec![1, 2, 3],
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&pool, &l).unwrap();
        let tc = &json["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(tc["@type"], "type.googleapis.com/google.protobuf.StringValue");
        assert_eq!(
            tc["value"],
            "[type.googleapis.com/stats.PluginConfig: 3 bytes; no schema in Skiff]"
        );
    }
}
