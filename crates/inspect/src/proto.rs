//! Envoy messages printed the way istioctl's Go `jsonpb` prints them, using Envoy's own schema
//! (the descriptor set the `xds` crate compiles from Envoy's protos): fields in declaration
//! order (a oneof where its first member is declared) under their JSON names, map keys sorted,
//! `Struct`s as sorted plain JSON, `Any` contents by their `@type`. Envoy itself dumps fields in
//! field-number order, so without the schema a route would print `name` last instead of first.
//!
//! Messages or `Any` types the schema does not know (Istio's own filters, Wasm) fall back to the
//! name-based conversion in [`crate::json`], keeping Envoy's order.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

use crate::json::{classify_value, pb_to_json, pb_to_jsonpb_indented, sorted_struct, Json, Pb};

/// The schema, decoded once per process (a few megabytes) the first time JSON is rendered.
fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| xds::json::descriptor_pool().ok()).as_ref()
}

/// `v` (a message of type `type_name`, in Envoy's snake_case) as jsonpb's field names and order.
pub fn to_jsonpb_value(v: &Json, type_name: &str) -> Json {
    pb_to_json(classify(v, type_name))
}

/// `jsonpb.Marshaler{Indent: "    "}` output of `v` (istioctl's `bootstrap -o json`).
pub fn to_jsonpb_indented(v: &Json, type_name: &str) -> String {
    pb_to_jsonpb_indented(&classify(v, type_name))
}

fn classify(v: &Json, type_name: &str) -> Pb {
    match pool().and_then(|p| p.get_message_by_name(type_name)) {
        Some(desc) => message(v, &desc, 0),
        None => classify_value(v),
    }
}

const MAX_DEPTH: usize = 96;

fn message(v: &Json, desc: &MessageDescriptor, depth: usize) -> Pb {
    if depth > MAX_DEPTH {
        return classify_value(v);
    }
    match desc.full_name() {
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
            return Pb::Struct(sorted_struct(v))
        }
        "google.protobuf.Any" => return any(v, depth),
        _ => {}
    }
    let Json::Object(members) = v else {
        // Well-known types with a scalar JSON form (Duration, wrappers, Timestamp, FieldMask).
        return Pb::Scalar(v.clone());
    };
    let order = declaration_positions(desc);
    let mut known: Vec<(usize, String, Pb)> = Vec::new();
    let mut unknown: Vec<(String, Pb)> = Vec::new();
    for (k, item) in members {
        let field = desc
            .get_field_by_name(k)
            .or_else(|| desc.get_field_by_json_name(k));
        match field {
            Some(f) => {
                let pos = position(&order, &f);
                known.push((pos, f.json_name().to_owned(), field_value(item, &f, depth)));
            }
            None => {
                // Not in the schema (a newer Envoy's field): renamed by rule, kept after the rest.
                let name = if k.starts_with(|c: char| c.is_ascii_lowercase()) {
                    crate::json::lower_camel(k)
                } else {
                    k.clone()
                };
                unknown.push((name, classify_value(item)));
            }
        }
    }
    known.sort_by_key(|(pos, _, _)| *pos);
    let mut fields: Vec<(String, Pb)> = known.into_iter().map(|(_, n, p)| (n, p)).collect();
    fields.extend(unknown);
    Pb::Msg(fields)
}

/// Field number → where jsonpb prints it: its declaration index, or for a member of a oneof the
/// index of the oneof's first declared member.
fn declaration_positions(desc: &MessageDescriptor) -> Vec<(i32, usize)> {
    desc.descriptor_proto()
        .field
        .iter()
        .enumerate()
        .map(|(i, f)| (f.number(), i))
        .collect()
}

fn position(order: &[(i32, usize)], f: &FieldDescriptor) -> usize {
    let decl = |n: u32| {
        order
            .iter()
            .find(|(num, _)| *num as u32 == n)
            .map_or(usize::MAX, |(_, i)| *i)
    };
    match f.containing_oneof() {
        Some(o) => o.fields().map(|m| decl(m.number())).min().unwrap_or(usize::MAX),
        None => decl(f.number()),
    }
}

fn field_value(v: &Json, f: &FieldDescriptor, depth: usize) -> Pb {
    if f.is_map() {
        let value_field = match f.kind() {
            Kind::Message(entry) => entry.map_entry_value_field(),
            _ => return classify_value(v),
        };
        let mut entries: Vec<(String, Pb)> = v
            .members()
            .iter()
            .map(|(k, e)| (k.clone(), single(e, &value_field, depth)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        return Pb::Map(entries);
    }
    if f.is_list() {
        return match v {
            Json::Array(items) => Pb::List(items.iter().map(|i| single(i, f, depth)).collect()),
            other => single(other, f, depth),
        };
    }
    single(v, f, depth)
}

fn single(v: &Json, f: &FieldDescriptor, depth: usize) -> Pb {
    match f.kind() {
        Kind::Message(m) => message(v, &m, depth + 1),
        _ => Pb::Scalar(v.clone()),
    }
}

/// An `Any`: `@type` first, then the packed message's fields (or `value` for well-known types
/// with a scalar or Struct JSON form).
fn any(v: &Json, depth: usize) -> Pb {
    let type_url = v.get("@type").str();
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(desc) = pool().and_then(|p| p.get_message_by_name(name)) else {
        return classify_value(v);
    };
    let inner = crate::without_type(v);
    let mut fields = vec![("@type".to_owned(), Pb::Scalar(Json::String(type_url.to_owned())))];
    if name.starts_with("google.protobuf.") && !inner.get("value").is_null() && inner.members().len() == 1 {
        fields.push(("value".to_owned(), message(inner.get("value"), &desc, depth + 1)));
        return Pb::Msg(fields);
    }
    match message(&inner, &desc, depth + 1) {
        Pb::Msg(m) => fields.extend(m),
        other => fields.push(("value".to_owned(), other)),
    }
    Pb::Msg(fields)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn route_fields_in_declaration_order() {
        // Envoy dumps by field number (`name` = 14 last); istioctl prints `name` first.
        let v = Json::parse(
            r#"{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s", "max_grpc_timeout": "0s"},
                "decorator": {"operation": "x:80/*"}, "name": "default",
                "metadata": {"filter_metadata": {"istio": {"config": "/a", "b_c": 1}}},
                "typed_per_filter_config": {"envoy.filters.http.fault": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", "max_active_faults": 1}}}"#,
        )
        .unwrap();
        let out = to_jsonpb_value(&v, "envoy.config.route.v3.Route").to_compact();
        assert_eq!(
            out,
            r#"{"name":"default","match":{"prefix":"/"},"route":{"cluster":"c","timeout":"0s","maxGrpcTimeout":"0s"},"metadata":{"filterMetadata":{"istio":{"b_c":1,"config":"/a"}}},"decorator":{"operation":"x:80/*"},"typedPerFilterConfig":{"envoy.filters.http.fault":{"@type":"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault","maxActiveFaults":1}}}"#
        );
    }

    #[test]
    fn unknown_types_fall_back_to_names() {
        let v = Json::parse(r#"{"name": "istio.stats", "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig", "disable_host_header_fallback": true}}"#).unwrap();
        let out = to_jsonpb_value(&v, "envoy.config.listener.v3.Filter").to_compact();
        assert_eq!(
            out,
            r#"{"name":"istio.stats","typedConfig":{"@type":"type.googleapis.com/stats.PluginConfig","disableHostHeaderFallback":true}}"#
        );
    }
}
