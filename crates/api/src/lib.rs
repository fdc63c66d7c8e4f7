//! Istio's `networking.istio.io` API for Skiff: the resource types (VirtualService,
//! DestinationRule, Gateway, ServiceEntry, Sidecar in v1alpha3, v1beta1 and v1 — one schema), their
//! parsing from the YAML/JSON a user applies (unknown fields refused, as Istio's structural CRDs
//! do), and their validation as Istio 1.19's webhook does it (`pkg/config/validation`), reported as
//! `istioctl analyze` prints it (IST codes). Pure data code: no I/O, no registry; cross-resource
//! checks (a subset nobody defines, a host that matches nothing) live with the registry in `pilot`.

pub mod duration;
pub mod host;
pub mod networking;
pub mod validate;

use std::fmt;

/// The gateway name that means "the sidecars" in a VirtualService's `gateways`.
pub const MESH_GATEWAY: &str = "mesh";

/// The API group of every kind here.
pub const GROUP: &str = "networking.istio.io";

/// The versions of the group Istio 1.19 serves (same schema in each).
pub const VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// How serious a finding is (`istioctl analyze` levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
            Level::Info => "Info",
        })
    }
}

/// One problem with one resource: its level, Istio's analysis code, the field (a path like
/// `spec.http[0].route[1].weight`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    pub level: Level,
    /// `IST0106` (SchemaValidationError), `IST0133` (SchemaWarning), `IST0130`/`IST0131`
    /// (unreachable rules), `IST0101` (ReferencedResourceNotFound)…
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

/// Istio's analysis message codes used by Skiff.
pub mod code {
    pub const REFERENCED_RESOURCE_NOT_FOUND: &str = "IST0101";
    pub const GATEWAY_PORT_NOT_ON_WORKLOAD: &str = "IST0104";
    pub const SCHEMA_VALIDATION_ERROR: &str = "IST0106";
    pub const CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS: &str = "IST0109";
    pub const MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS: &str = "IST0111";
    pub const VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED: &str = "IST0112";
    pub const VIRTUAL_SERVICE_UNREACHABLE_RULE: &str = "IST0130";
    pub const VIRTUAL_SERVICE_INEFFECTIVE_MATCH: &str = "IST0131";
    pub const VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY: &str = "IST0132";
    pub const SCHEMA_WARNING: &str = "IST0133";
    pub const CONFLICTING_GATEWAYS: &str = "IST0145";
    pub const INVALID_GATEWAY_CREDENTIAL: &str = "IST0161";
}

impl Finding {
    pub fn error(field: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Error,
            code: code::SCHEMA_VALIDATION_ERROR,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn warning(field: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warning,
            code: code::SCHEMA_WARNING,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The message as `istioctl analyze` words it, with the field named.
    pub fn text(&self) -> String {
        let what = match self.code {
            code::SCHEMA_VALIDATION_ERROR => "Schema validation error: ",
            code::SCHEMA_WARNING => "Schema validation warning: ",
            _ => "",
        };
        if self.field.is_empty() {
            format!("{what}{}", self.message)
        } else {
            format!("{what}{}: {}", self.field, self.message)
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.level, self.code, self.text())
    }
}

/// A parsed spec of one of the kinds Skiff applies. Parsed once per change and then shared
/// behind an `Arc`, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(networking::VirtualService),
    DestinationRule(networking::DestinationRule),
    Gateway(networking::Gateway),
    ServiceEntry(networking::ServiceEntry),
    Sidecar(networking::Sidecar),
}

/// The kinds [`parse`] knows.
pub const KINDS: [&str; 5] = [
    "VirtualService",
    "DestinationRule",
    "Gateway",
    "ServiceEntry",
    "Sidecar",
];

/// A spec that passed validation, with the warnings it raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub spec: Spec,
    pub warnings: Vec<Finding>,
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Finding> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        Finding::error(field, e.into_inner().to_string())
    })
}

/// Parses and validates `spec` of `kind` in `namespace`/`name` (Istio checks some names, e.g. a
/// Gateway's must be a DNS label). `Ok(None)` for kinds Skiff stores but does not apply.
/// Errors (IST0106) reject the resource; warnings come back with it.
pub fn parse(
    kind: &str,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<Option<Parsed>, Vec<Finding>> {
    let spec = if spec.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        spec
    };
    let parsed = match kind {
        "VirtualService" => Spec::VirtualService(typed(spec).map_err(|e| vec![e])?),
        "DestinationRule" => Spec::DestinationRule(typed(spec).map_err(|e| vec![e])?),
        "Gateway" => Spec::Gateway(typed(spec).map_err(|e| vec![e])?),
        "ServiceEntry" => Spec::ServiceEntry(typed(spec).map_err(|e| vec![e])?),
        "Sidecar" => Spec::Sidecar(typed(spec).map_err(|e| vec![e])?),
        _ => return Ok(None),
    };
    let findings = validate::validate(&parsed, namespace, name);
    let (errors, warnings): (Vec<Finding>, Vec<Finding>) =
        findings.into_iter().partition(|f| f.level == Level::Error);
    if errors.is_empty() {
        Ok(Some(Parsed {
            spec: parsed,
            warnings,
        }))
    } else {
        Err(errors.into_iter().chain(warnings).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> serde_json::Value {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn seed_canary_parses() {
        let vs = spec(
            "hosts: [canary]\nhttp:\n- match:\n  - headers: {user: {exact: zhongmingmao}}\n  route:\n  - destination: {host: canary, subset: v2}\n  retries: {attempts: 3, perTryTimeout: 2s}\n\
             - route:\n  - destination: {host: canary, subset: v1}\n  fault: {abort: {httpStatus: 500, percentage: {value: 80}}}\n",
        );
        let p = parse("VirtualService", "canary", "canary", vs).unwrap().unwrap();
        let Spec::VirtualService(vs) = p.spec else {
            panic!()
        };
        assert_eq!(
            vs.http[0]
                .retries
                .as_ref()
                .unwrap()
                .per_try_timeout
                .unwrap()
                .0
                .as_secs(),
            2
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn unknown_fields_name_the_path() {
        let e = parse(
            "VirtualService",
            "a",
            "v",
            spec("hosts: [a]\nhttp:\n- route:\n  - destination: {host: a, subsett: v1}\n"),
        )
        .unwrap_err();
        assert_eq!(e[0].field, "spec.http[0].route[0].destination.subsett");
        assert!(e[0].message.contains("unknown field `subsett`"), "{}", e[0]);
        assert_eq!(e[0].code, "IST0106");
        let e = parse(
            "DestinationRule",
            "a",
            "d",
            spec("host: a\ntrafficPolicy: {loadBalancer: {simple: FASTEST}}\n"),
        )
        .unwrap_err();
        assert_eq!(e[0].field, "spec.trafficPolicy.loadBalancer.simple", "{}", e[0]);
        assert!(parse("WorkloadEntry", "a", "w", spec("address: 1.2.3.4"))
            .unwrap()
            .is_none());
    }
}
