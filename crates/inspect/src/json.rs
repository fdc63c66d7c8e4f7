//! An order-keeping JSON value, read leniently the way protobuf's JSON reader reads an Envoy dump
//! (`port_value` or `portValue`, `"5"` or `5` for numbers), and written back as istioctl writes it:
//! Go's `json.MarshalIndent` layout with lowerCamelCase field names for `-o json`, and
//! `sigs.k8s.io/yaml` (sorted keys, yaml.v2 quoting) for `-o yaml`.
//!
//! Key order matters: istioctl prints fields in schema order, which is the order Envoy dumps them
//! in; a map-based value would sort them.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON number as it was read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    U(u64),
    I(i64),
    F(f64),
}

/// A JSON value whose objects keep their keys in document order.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Json {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

/// Why a document could not be read as JSON.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

// === impl Json ===

impl Json {
    /// Parses JSON text (serde_json's parser; nesting deeper than 128 is an error, not a crash).
    pub fn parse(text: &str) -> Result<Json, ParseError> {
        serde_json::from_str(text).map_err(|e| ParseError(e.to_string()))
    }

    /// The member `key` of an object (or `null`). A proto field is found under its proto name
    /// (`route_config_name`) or its JSON name (`routeConfigName`), as protobuf's reader accepts both.
    pub fn get(&self, key: &str) -> &Json {
        let Json::Object(members) = self else {
            return &NULL;
        };
        if let Some((_, v)) = members.iter().find(|(k, _)| k == key) {
            return v;
        }
        if key.contains('_') {
            let camel = lower_camel(key);
            if let Some((_, v)) = members.iter().find(|(k, _)| *k == camel) {
                return v;
            }
        }
        &NULL
    }

    /// The string, or `""` for anything else (a proto getter's default).
    pub fn str(&self) -> &str {
        match self {
            Json::String(s) => s,
            _ => "",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array, or none.
    pub fn items(&self) -> &[Json] {
        match self {
            Json::Array(a) => a,
            _ => &[],
        }
    }

    /// The members of an object, or none.
    pub fn members(&self) -> &[(String, Json)] {
        match self {
            Json::Object(m) => m,
            _ => &[],
        }
    }

    /// An unsigned integer field (proto3 JSON writes 64-bit ones as strings), `0` if absent or
    /// not a number, as a proto getter would return.
    pub fn uint(&self) -> u64 {
        match self {
            Json::Number(Number::U(n)) => *n,
            Json::Number(Number::I(n)) => u64::try_from(*n).unwrap_or(0),
            Json::Number(Number::F(f)) if f.is_finite() && *f >= 0.0 && f.fract() == 0.0 => *f as u64,
            Json::String(s) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }

    pub fn bool(&self) -> bool {
        matches!(self, Json::Bool(true))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    /// Compact JSON, for substring checks on a whole message (istioctl looks for
    /// `BlackHoleCluster` in a TCP proxy's serialized config).
    pub fn to_compact(&self) -> String {
        let mut out = String::new();
        write_json(&mut out, self, None, 0);
        out
    }

    /// Go's `json.MarshalIndent(v, "", "    ")` layout (HTML-safe escaping included).
    pub fn to_go_indented(&self) -> String {
        let mut out = String::new();
        write_json(&mut out, self, Some("    "), 0);
        out
    }
}

/// protoc's JSON name for a field: `route_config_name` → `routeConfigName`.
pub fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(Number::I(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(Number::U(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(Number::F(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members: Vec<(String, Json)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            // A repeated key replaces the earlier value (as Go's and serde_json's readers do).
            match members.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => members.push((k, v)),
            }
        }
        Ok(Json::Object(members))
    }
}

// === writing JSON ===

fn write_number(out: &mut String, n: Number) {
    let _ = match n {
        Number::U(v) => write!(out, "{v}"),
        Number::I(v) => write!(out, "{v}"),
        // Go prints whole doubles without a fraction (`100`, not `100.0`).
        Number::F(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e21 => write!(out, "{}", v as i128),
        Number::F(v) if v.is_finite() => write!(out, "{v}"),
        Number::F(_) => write!(out, "null"),
    };
}

/// A JSON string as Go's encoder writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(out: &mut String, indent: Option<&str>, depth: usize) {
    if let Some(unit) = indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

fn write_json(out: &mut String, v: &Json, indent: Option<&str>, depth: usize) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => write_number(out, *n),
        Json::String(s) => write_string(out, s),
        Json::Array(items) if items.is_empty() => out.push_str("[]"),
        Json::Object(members) if members.is_empty() => out.push_str("{}"),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, depth + 1);
                write_json(out, item, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push(']');
        }
        Json::Object(members) => {
            out.push('{');
            for (i, (k, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, depth + 1);
                write_string(out, k);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_json(out, item, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push('}');
        }
    }
}

// === proto field names: snake_case (Envoy) → lowerCamelCase (istioctl's jsonpb) ===

/// Fields that are `map<string, message>`: their keys are data, not field names.
const MAP_FIELDS: &[&str] = &[
    "typed_per_filter_config",
    "typed_extension_protocol_options",
    "extension_protocol_options",
    "typed_filter_metadata",
    "certificate_provider_instances",
    "dynamic_parameters",
];

/// Fields holding a `google.protobuf.Struct`.
const STRUCT_FIELDS: &[&str] = &["static_layer", "json_format", "filter_state_objects_to_log"];

const STRUCT_TYPES: &[&str] = &[
    "type.googleapis.com/google.protobuf.Struct",
    "type.googleapis.com/google.protobuf.Value",
    "type.googleapis.com/google.protobuf.ListValue",
];

fn is_field_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A `Metadata` message has only these two fields; anything else under `metadata` is a `Struct`
/// (a Node's metadata, a build version's metadata) and keeps its keys.
fn is_metadata_message(v: &Json) -> bool {
    v.members().iter().all(|(k, _)| {
        matches!(
            k.as_str(),
            "filter_metadata" | "typed_filter_metadata" | "filterMetadata" | "typedFilterMetadata"
        )
    })
}

/// An Envoy message seen through the schema istioctl decodes it with: which objects are
/// messages (fields renamed), maps (keys are data, sorted) and `Struct`s (data, keys sorted).
pub(crate) enum Pb {
    Scalar(Json),
    Msg(Vec<(String, Pb)>),
    List(Vec<Pb>),
    Map(Vec<(String, Pb)>),
    Struct(Json),
}

/// A `Struct`/`Value` as Go writes it: object keys sorted, recursively.
pub(crate) fn sorted_struct(v: &Json) -> Json {
    match v {
        Json::Object(m) => {
            let mut m: Vec<(String, Json)> = m.iter().map(|(k, v)| (k.clone(), sorted_struct(v))).collect();
            m.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(m)
        }
        Json::Array(a) => Json::Array(a.iter().map(sorted_struct).collect()),
        other => other.clone(),
    }
}

fn classify_message(v: &Json) -> Pb {
    let Json::Object(members) = v else {
        return classify_value(v);
    };
    let type_url = v.get("@type").str();
    let struct_any = STRUCT_TYPES.contains(&type_url);
    let typed_struct = type_url.ends_with("/udpa.type.v1.TypedStruct")
        || type_url.ends_with("/xds.type.v3.TypedStruct")
        || (v.get("type_url").as_str().is_some() && v.get("value").is_object() && members.len() == 2);
    Pb::Msg(
        members
            .iter()
            .map(|(k, item)| {
                let name = if is_field_name(k) {
                    lower_camel(k)
                } else {
                    k.clone()
                };
                let pb = if k == "@type" {
                    Pb::Scalar(item.clone())
                } else if ((struct_any || typed_struct) && k == "value")
                    || STRUCT_FIELDS.contains(&k.as_str())
                    || (k == "metadata" && item.is_object() && !is_metadata_message(item))
                {
                    Pb::Struct(sorted_struct(item))
                } else if k == "filter_metadata" || k == "filterMetadata" {
                    Pb::Map(map_entries(item, |e| Pb::Struct(sorted_struct(e))))
                } else if MAP_FIELDS.contains(&k.as_str()) {
                    Pb::Map(map_entries(item, classify_message))
                } else {
                    classify_value(item)
                };
                (name, pb)
            })
            .collect(),
    )
}

fn map_entries(v: &Json, f: impl Fn(&Json) -> Pb) -> Vec<(String, Pb)> {
    let mut entries: Vec<(String, Pb)> = v.members().iter().map(|(k, e)| (k.clone(), f(e))).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

pub(crate) fn classify_value(v: &Json) -> Pb {
    match v {
        Json::Object(_) => classify_message(v),
        Json::Array(items) => Pb::List(items.iter().map(classify_value).collect()),
        other => Pb::Scalar(other.clone()),
    }
}

pub(crate) fn pb_to_json(pb: Pb) -> Json {
    match pb {
        Pb::Scalar(v) | Pb::Struct(v) => v,
        Pb::Msg(m) | Pb::Map(m) => Json::Object(m.into_iter().map(|(k, v)| (k, pb_to_json(v))).collect()),
        Pb::List(items) => Json::Array(items.into_iter().map(pb_to_json).collect()),
    }
}

/// Renames every proto field of an Envoy message from its proto name to its JSON name and sorts
/// map and `Struct` keys, the way Go's `jsonpb` (without `OrigName`) prints what istioctl
/// unmarshalled. Map keys and `Struct` contents are data and keep their spelling.
pub fn to_json_names(v: &Json) -> Json {
    pb_to_json(classify_value(v))
}

/// `jsonpb.Marshaler{Indent: "    "}` output of a message (istioctl's `bootstrap -o json`),
/// including its layout quirks: an empty message prints as `{` blank line `}`, and the contents
/// of a `Struct` sit one level deeper than their braces.
pub fn to_jsonpb_indented(v: &Json) -> String {
    pb_to_jsonpb_indented(&classify_value(v))
}

pub(crate) fn pb_to_jsonpb_indented(pb: &Pb) -> String {
    let mut out = String::new();
    match pb {
        Pb::Msg(fields) => pb_message(&mut out, fields, 0),
        other => pb_singular(&mut out, other, 0),
    }
    out
}

const INDENT: &str = "    ";

fn pad_units(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push_str(INDENT);
    }
}

/// `marshalMessage(m, indent)`: fields at indent+1, closing brace at indent.
fn pb_message(out: &mut String, fields: &[(String, Pb)], indent: usize) {
    out.push_str("{\n");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        pad_units(out, indent + 1);
        write_string(out, k);
        out.push_str(": ");
        pb_field_value(out, v, indent);
    }
    out.push('\n');
    pad_units(out, indent);
    out.push('}');
}

/// `marshalValue(fd, v, indent)` with `indent` the containing message's.
fn pb_field_value(out: &mut String, v: &Pb, indent: usize) {
    match v {
        Pb::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                pad_units(out, indent + 2);
                pb_singular(out, item, indent + 1);
            }
            out.push('\n');
            pad_units(out, indent + 1);
            out.push(']');
        }
        Pb::Map(entries) => {
            out.push_str("{\n");
            for (i, (k, e)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                pad_units(out, indent + 2);
                write_string(out, k);
                out.push_str(": ");
                pb_singular(out, e, indent + 1);
            }
            out.push('\n');
            pad_units(out, indent + 1);
            out.push('}');
        }
        other => pb_singular(out, other, indent),
    }
}

/// `marshalSingularValue(fd, v, indent)`.
fn pb_singular(out: &mut String, v: &Pb, indent: usize) {
    match v {
        Pb::Scalar(s) => write_json(out, s, None, 0),
        Pb::Msg(fields) => pb_message(out, fields, indent + 1),
        // marshalMessage(Struct, indent+1) → marshalValue(fields, indent+1).
        Pb::Struct(s) => wkt_value_of_struct_field(out, s, indent + 1),
        Pb::List(_) | Pb::Map(_) => pb_field_value(out, v, indent),
    }
}

/// A `Struct` message written by `marshalMessage(Struct, s)`.
fn wkt_value_of_struct_field(out: &mut String, v: &Json, s: usize) {
    match v {
        Json::Object(m) => wkt_struct_map(out, m, s),
        Json::Array(a) => wkt_list(out, a, s),
        other => write_json(out, other, None, 0),
    }
}

/// `marshalValue(Struct.fields, s)`: entries at s+2, closing brace at s+1.
fn wkt_struct_map(out: &mut String, members: &[(String, Json)], s: usize) {
    out.push_str("{\n");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        pad_units(out, s + 2);
        write_string(out, k);
        out.push_str(": ");
        wkt_value(out, v, s + 2);
    }
    out.push('\n');
    pad_units(out, s + 1);
    out.push('}');
}

/// `marshalValue(ListValue.values, s)`: elements at s+2, closing bracket at s+1.
fn wkt_list(out: &mut String, items: &[Json], s: usize) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('\n');
        pad_units(out, s + 2);
        wkt_value(out, item, s + 2);
    }
    out.push('\n');
    pad_units(out, s + 1);
    out.push(']');
}

/// `marshalMessage(Value, m)`: a scalar, or the Struct/ListValue one level further in.
fn wkt_value(out: &mut String, v: &Json, m: usize) {
    match v {
        Json::Object(members) => wkt_struct_map(out, members, m + 1),
        Json::Array(items) => wkt_list(out, items, m + 1),
        other => write_json(out, other, None, 0),
    }
}

// === YAML, as sigs.k8s.io/yaml's JSONToYAML prints it (yaml.v2: sorted keys, block style) ===

/// Converts to YAML the way istioctl does (`yaml.JSONToYAML`): mappings with keys sorted in
/// yaml.v2's natural order, sequences unindented under their key, scalars quoted only when a
/// plain scalar would read back as something else.
pub fn to_yaml(v: &Json) -> String {
    let mut out = String::new();
    match v {
        Json::Object(m) if !m.is_empty() => yaml_mapping(&mut out, m, 0),
        Json::Array(a) if !a.is_empty() => yaml_sequence(&mut out, a, 0),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn yaml_mapping(out: &mut String, members: &[(String, Json)], indent: usize) {
    let mut sorted: Vec<&(String, Json)> = members.iter().collect();
    crate::gosort::sort_slice(&mut sorted, |a, b| yaml_key_less(&a.0, &b.0));
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str(&yaml_string(k));
        out.push(':');
        yaml_value(out, v, indent, true);
    }
}

fn yaml_sequence(out: &mut String, items: &[Json], indent: usize) {
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push('-');
        yaml_value(out, v, indent, false);
    }
}

/// Writes `v` after `key:` (`in_map`) or `-`, then the newline.
fn yaml_value(out: &mut String, v: &Json, indent: usize, in_map: bool) {
    match v {
        Json::Object(m) if !m.is_empty() => {
            if in_map {
                out.push('\n');
                pad(out, indent + 2);
            } else {
                out.push(' ');
            }
            yaml_mapping(out, m, indent + 2);
        }
        Json::Array(a) if !a.is_empty() => {
            if in_map {
                // yaml.v2 does not indent a sequence under its key.
                out.push('\n');
                pad(out, indent);
                yaml_sequence(out, a, indent);
            } else {
                out.push(' ');
                yaml_sequence(out, a, indent + 2);
            }
        }
        Json::String(s) if s.contains('\n') => {
            let chomp = if s.ends_with('\n') { "" } else { "-" };
            let _ = write!(out, " |{chomp}");
            if s.starts_with(' ') {
                out.push('2');
            }
            out.push('\n');
            let body = s.strip_suffix('\n').unwrap_or(s);
            for line in body.split('\n') {
                if !line.is_empty() {
                    pad(out, indent + 2);
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        scalar => {
            out.push(' ');
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn yaml_scalar(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(Number::F(f)) if f.is_finite() && f.fract() != 0.0 => go_float(*f),
        Json::Number(n) => {
            let mut s = String::new();
            write_number(&mut s, *n);
            s
        }
        Json::String(s) => yaml_string(s),
        Json::Array(_) => "[]".into(),
        Json::Object(_) => "{}".into(),
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` for the values Envoy dumps (e.g. `0.5`, `1e-06`).
fn go_float(f: f64) -> String {
    let exp = if f == 0.0 {
        0
    } else {
        f.abs().log10().floor() as i32
    };
    if !(-4..21).contains(&exp) {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mant, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{mant}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        format!("{f}")
    }
}

/// Whether yaml.v2 would read the plain scalar `s` as something other than a string.
fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "y", "Y", "yes",
        "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", ".inf", ".Inf",
        ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let plain = s.replace('_', "");
    let body = plain.strip_prefix(['+', '-']).unwrap_or(&plain);
    if body.is_empty() {
        return false;
    }
    if body.chars().all(|c| c.is_ascii_digit()) {
        return true;
    }
    if let Some(hex) = body.strip_prefix("0x") {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    if let Some(bin) = body.strip_prefix("0b") {
        return !bin.is_empty() && bin.chars().all(|c| c == '0' || c == '1');
    }
    // Floats: digits with one dot and an optional exponent; base-60 (`1:20`) too.
    let looks_float = body.chars().any(|c| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && body.matches('.').count() <= 1
        && body.parse::<f64>().is_ok();
    let base60 = body.contains(':')
        && body
            .split(':')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit() || c == '.'));
    looks_float || base60
}

/// A string scalar as yaml.v2 emits it: plain when it can be, else single-quoted, else double.
fn yaml_string(s: &str) -> String {
    if resolves_to_non_string(s) {
        return double_quoted(s);
    }
    let special = s.chars().any(|c| {
        (c as u32) < 0x20 && c != '\n'
            || c == '\u{7f}'
            || c == '\u{feff}'
            || c == '\u{2028}'
            || c == '\u{2029}'
    });
    if special {
        return double_quoted(s);
    }
    if plain_allowed(s) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "''"))
}

/// libyaml's analysis of a block-context plain scalar.
fn plain_allowed(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let (Some(&first), Some(&last)) = (chars.first(), chars.last()) else {
        return false;
    };
    if first == ' ' || last == ' ' || s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    for (i, &c) in chars.iter().enumerate() {
        let next_blank = chars.get(i + 1).is_none_or(|n| *n == ' ' || *n == '\t');
        if i == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(c) {
                return false;
            }
            if (c == '?' || c == ':' || c == '-') && next_blank {
                return false;
            }
        } else {
            if c == ':' && next_blank {
                return false;
            }
            if c == '#' && chars[i - 1] == ' ' {
                return false;
            }
        }
        if c == '\t' {
            return false;
        }
    }
    true
}

fn double_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            '\u{feff}' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// yaml.v2's key order (`sorter.go`): at the first difference two letters compare by code point,
/// a non-letter sorts before a letter, and runs of digits compare as numbers.
fn yaml_key_less(a: &str, b: &str) -> bool {
    let x: Vec<char> = a.chars().collect();
    let y: Vec<char> = b.chars().collect();
    for i in 0..x.len().min(y.len()) {
        if x[i] == y[i] {
            continue;
        }
        let xl = x[i].is_alphabetic();
        let yl = y[i].is_alphabetic();
        if xl && yl {
            return x[i] < y[i];
        }
        if xl || yl {
            return yl;
        }
        let (mut xn, mut yn) = (0i64, 0i64);
        if x[i] == '0' || y[i] == '0' {
            let mut j = i;
            while j > 0 && x[j - 1].is_ascii_digit() {
                j -= 1;
                if x[j] != '0' {
                    xn = 1;
                    yn = 1;
                    break;
                }
            }
        }
        let mut xi = i;
        while xi < x.len() && x[xi].is_ascii_digit() {
            xn = xn.wrapping_mul(10).wrapping_add(i64::from(x[xi] as u8 - b'0'));
            xi += 1;
        }
        let mut yi = i;
        while yi < y.len() && y[yi].is_ascii_digit() {
            yn = yn.wrapping_mul(10).wrapping_add(i64::from(y[yi] as u8 - b'0'));
            yi += 1;
        }
        if xn != yn {
            return xn < yn;
        }
        if xi != yi {
            return xi < yi;
        }
        return x[i] < y[i];
    }
    x.len() < y.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_key_order_and_reads_both_name_styles() {
        let v = Json::parse(r#"{"z": 1, "a": {"routeConfigName": "80"}, "port_value": "15001"}"#).unwrap();
        let keys: Vec<&str> = v.members().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "port_value"]);
        assert_eq!(v.get("a").get("route_config_name").str(), "80");
        assert_eq!(v.get("port_value").uint(), 15001);
        assert!(v.get("missing").get("deeper").is_null());
    }

    #[test]
    fn go_indent_layout_and_escapes() {
        let v = Json::parse(r#"[{"a": [], "b": {}, "c": "<&>", "d": 1.0, "e": [1, 2]}]"#).unwrap();
        assert_eq!(
            v.to_go_indented(),
            "[\n    {\n        \"a\": [],\n        \"b\": {},\n        \"c\": \"\\u003c\\u0026\\u003e\",\n        \"d\": 1,\n        \"e\": [\n            1,\n            2\n        ]\n    }\n]"
        );
    }

    #[test]
    fn json_names_leave_map_keys_and_structs_alone() {
        let v = Json::parse(
            r#"{"route_config": {"virtual_hosts": [{"typed_per_filter_config": {"envoy.filters.http.ext_authz": {"@type": "x", "check_settings": {}}}}]},
                "metadata": {"filter_metadata": {"istio": {"default_original_port": 1}}},
                "node": {"metadata": {"ISTIO_VERSION": "1.19.3", "some_key": 1}},
                "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": "t", "value": {"a_b": 1}}}"#,
        )
        .unwrap();
        let out = to_json_names(&v).to_compact();
        assert_eq!(
            out,
            r#"{"routeConfig":{"virtualHosts":[{"typedPerFilterConfig":{"envoy.filters.http.ext_authz":{"@type":"x","checkSettings":{}}}}]},"metadata":{"filterMetadata":{"istio":{"default_original_port":1}}},"node":{"metadata":{"ISTIO_VERSION":"1.19.3","some_key":1}},"typedConfig":{"@type":"type.googleapis.com/udpa.type.v1.TypedStruct","typeUrl":"t","value":{"a_b":1}}}"#
        );
    }

    #[test]
    fn yaml_like_sigs_k8s_yaml() {
        let v = Json::parse(
            r#"[{"name": "80", "virtualHosts": [{"domains": ["*", "nginx"], "name": "a:80"}], "validateClusters": false, "@type": "t", "empty": "", "n": 10}]"#,
        )
        .unwrap();
        assert_eq!(
            to_yaml(&v),
            "- '@type': t\n  empty: \"\"\n  \"n\": 10\n  name: \"80\"\n  validateClusters: false\n  virtualHosts:\n  - domains:\n    - '*'\n    - nginx\n    name: a:80\n"
        );
    }

    #[test]
    fn yaml_key_order_is_natural() {
        let mut keys = vec!["b10", "b9", "a", "B", "_x", "1", "@type"];
        crate::gosort::sort_slice(&mut keys, |a, b| yaml_key_less(a, b));
        assert_eq!(keys, ["@type", "_x", "1", "B", "a", "b9", "b10"]);
    }
}
