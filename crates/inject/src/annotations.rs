//! Per-pod overrides read from annotations, validated up front.
//!
//! Istio checks a handful of these and passes the rest into its template unchecked; Skiff parses
//! every value it uses with the same parsers `skiff-agent iptables` uses, so a typo is reported
//! at admission (naming the pod and the annotation) instead of crash-looping `istio-init`.

use std::collections::BTreeMap;
use std::str::FromStr;

use capture::config::{parse_cidrs, parse_interfaces, parse_ports, InboundPorts, OutboundRanges};
use capture::InterceptionMode;
use serde_json::{Map, Value};

use crate::settings::Settings;

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";
pub const REV: &str = "istio.io/rev";
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
pub const COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
pub const AGENT_LOG_LEVEL: &str = "sidecar.istio.io/agentLogLevel";
pub const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
pub const ENABLE_CORE_DUMP: &str = "sidecar.istio.io/enableCoreDump";
pub const CAP_NET_BIND_SERVICE: &str = "sidecar.istio.io/capNetBindService";
pub const BOOTSTRAP_OVERRIDE: &str = "sidecar.istio.io/bootstrapOverride";
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
pub const MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";

/// Interception as the injector sees it: the capture modes plus `NONE` (no `istio-init`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interception {
    Capture(InterceptionMode),
    None,
}

impl Interception {
    pub fn as_str(self) -> &'static str {
        match self {
            Interception::Capture(m) => m.as_str(),
            Interception::None => "NONE",
        }
    }
}

/// A bad annotation value; [`crate::Error::Annotation`] adds the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

/// Everything the annotations (over the mesh settings) decide about the injected containers.
#[derive(Clone, Debug, PartialEq)]
pub struct Overrides {
    pub interception: Interception,
    /// `istio-iptables` flag values, as passed to `-i -x -b -d -q -o -k -c`.
    pub include_ip_ranges: String,
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: Option<String>,
    pub exclude_outbound_ports: Option<String>,
    pub kubevirt_interfaces: Option<String>,
    pub exclude_interfaces: Option<String>,
    /// 0 disables the sidecar's readiness probe.
    pub status_port: u16,
    pub readiness_initial_delay: u32,
    pub readiness_period: u32,
    pub readiness_failure_threshold: u32,
    /// `None`: the mesh default resources; `Some`: exactly what the annotations ask for.
    pub resources: Option<Value>,
    pub image: String,
    pub proxy_log_level: String,
    pub proxy_component_log_level: String,
    pub agent_log_level: String,
    pub rewrite_probes: bool,
    pub core_dump: bool,
    pub net_bind_service: bool,
    pub bootstrap_override: Option<String>,
    pub user_volumes: Vec<(String, Value)>,
    pub user_volume_mounts: Vec<(String, Value)>,
    /// `proxy.istio.io/config` as JSON (Istio's `PROXY_CONFIG`), `{}` when unset.
    pub proxy_config: Map<String, Value>,
    pub prometheus_merge: bool,
}

/// Go's `strconv.ParseBool`, which Istio uses for boolean annotations.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

/// A Kubernetes resource quantity (`100m`, `1.5Gi`, `2e3`); the API server would reject others.
pub fn check_quantity(s: &str) -> Result<(), String> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err("is not a Kubernetes quantity (e.g. 100m, 2, 128Mi, 1Gi)".into())
    }
}

/// Istio's `excludeInboundPort`: the status port joins the excluded inbound ports unless present.
pub fn exclude_inbound_with_status_port(status_port: u16, excluded: &str) -> String {
    if status_port == 0 {
        return excluded.to_string();
    }
    let port = status_port.to_string();
    let mut out = Vec::new();
    for p in excluded.split(',') {
        if p == port {
            return excluded.to_string();
        }
        let p = p.trim();
        if !p.is_empty() {
            out.push(p.to_string());
        }
    }
    out.push(port);
    out.join(",")
}

fn parse_u32(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| "must be a non-negative integer".to_string())
}

fn parse_json_map(s: &str, what: &str) -> Result<Vec<(String, Value)>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::Object(_) => Ok((k, v)),
                _ => Err(format!("entry {k:?} must be a JSON object ({what})")),
            })
            .collect(),
        Ok(_) => Err(format!("must be a JSON object of name to {what}")),
        Err(e) => Err(format!("is not JSON: {e}")),
    }
}

impl Overrides {
    /// Reads the pod's annotations over the mesh settings. Collects every bad value, so one
    /// admission error lists them all.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        s: &Settings,
    ) -> Result<Self, Vec<Invalid>> {
        let mut errors = Vec::new();
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let mut check = |annotation: &'static str, result: Result<(), String>| {
            if let Err(reason) = result {
                errors.push(Invalid {
                    annotation,
                    value: annotations.get(annotation).cloned().unwrap_or_default(),
                    reason,
                });
            }
        };

        let interception = match get(INTERCEPTION_MODE) {
            None => Interception::Capture(InterceptionMode::Redirect),
            Some("NONE") => Interception::None,
            Some("") => {
                check(INTERCEPTION_MODE, Err("must be REDIRECT, TPROXY or NONE".into()));
                Interception::Capture(InterceptionMode::Redirect)
            }
            Some(v) => match InterceptionMode::from_str(v) {
                Ok(m) => Interception::Capture(m),
                Err(_) => {
                    check(INTERCEPTION_MODE, Err("must be REDIRECT, TPROXY or NONE".into()));
                    Interception::Capture(InterceptionMode::Redirect)
                }
            },
        };

        let include_ip_ranges = get(INCLUDE_OUTBOUND_IP_RANGES)
            .unwrap_or(&s.include_ip_ranges)
            .to_string();
        check(
            INCLUDE_OUTBOUND_IP_RANGES,
            OutboundRanges::parse(&include_ip_ranges).map(drop),
        );
        let exclude_ip_ranges = get(EXCLUDE_OUTBOUND_IP_RANGES)
            .unwrap_or(&s.exclude_ip_ranges)
            .to_string();
        check(
            EXCLUDE_OUTBOUND_IP_RANGES,
            if exclude_ip_ranges.trim() == "*" {
                Err("cannot be * (exclude nothing with an empty value instead)".into())
            } else {
                parse_cidrs(&exclude_ip_ranges).map(drop)
            },
        );
        let include_inbound_ports = get(INCLUDE_INBOUND_PORTS)
            .unwrap_or(&s.include_inbound_ports)
            .to_string();
        check(
            INCLUDE_INBOUND_PORTS,
            InboundPorts::parse(&include_inbound_ports).map(drop),
        );
        let exclude_inbound_ports = get(EXCLUDE_INBOUND_PORTS)
            .unwrap_or(&s.exclude_inbound_ports)
            .to_string();
        check(
            EXCLUDE_INBOUND_PORTS,
            parse_ports(&exclude_inbound_ports).map(drop),
        );

        // `-q`/`-o` are only passed when the annotation is present or the mesh sets a default.
        let optional_ports = |key: &'static str, default: &str| match get(key) {
            Some(v) => Some(v.to_string()),
            None if !default.is_empty() => Some(default.to_string()),
            None => None,
        };
        let include_outbound_ports = optional_ports(INCLUDE_OUTBOUND_PORTS, &s.include_outbound_ports);
        if let Some(v) = &include_outbound_ports {
            check(INCLUDE_OUTBOUND_PORTS, parse_ports(v).map(drop));
        }
        let exclude_outbound_ports = optional_ports(EXCLUDE_OUTBOUND_PORTS, &s.exclude_outbound_ports);
        if let Some(v) = &exclude_outbound_ports {
            check(EXCLUDE_OUTBOUND_PORTS, parse_ports(v).map(drop));
        }
        let kubevirt_interfaces = get(KUBEVIRT_INTERFACES).map(str::to_string);
        if let Some(v) = &kubevirt_interfaces {
            check(KUBEVIRT_INTERFACES, parse_interfaces(v).map(drop));
        }
        let exclude_interfaces = get(EXCLUDE_INTERFACES).map(str::to_string);
        if let Some(v) = &exclude_interfaces {
            check(EXCLUDE_INTERFACES, parse_interfaces(v).map(drop));
        }

        let status_port = match get(STATUS_PORT) {
            None => s.status_port,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) => p,
                Err(_) => {
                    check(
                        STATUS_PORT,
                        Err("must be a port number 0-65535 (0 disables the readiness probe)".into()),
                    );
                    s.status_port
                }
            },
        };
        let mut number = |key: &'static str, default: u32| match get(key) {
            None => default,
            Some(v) => parse_u32(v).unwrap_or_else(|reason| {
                check(key, Err(reason));
                default
            }),
        };
        let readiness_initial_delay = number(READINESS_INITIAL_DELAY, s.readiness_initial_delay_seconds);
        let readiness_period = number(READINESS_PERIOD, s.readiness_period_seconds);
        let readiness_failure_threshold = number(READINESS_FAILURE_THRESHOLD, s.readiness_failure_threshold);

        let resource_keys = [PROXY_CPU, PROXY_MEMORY, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT];
        let resources = if resource_keys.iter().any(|k| annotations.contains_key(*k)) {
            let mut requests = Map::new();
            let mut limits = Map::new();
            for (key, is_limit, field) in [
                (PROXY_CPU, false, "cpu"),
                (PROXY_MEMORY, false, "memory"),
                (PROXY_CPU_LIMIT, true, "cpu"),
                (PROXY_MEMORY_LIMIT, true, "memory"),
            ] {
                if let Some(v) = get(key) {
                    check(key, check_quantity(v));
                    let map = if is_limit { &mut limits } else { &mut requests };
                    map.insert(field.into(), Value::String(v.into()));
                }
            }
            let mut r = Map::new();
            if !limits.is_empty() {
                r.insert("limits".into(), Value::Object(limits));
            }
            if !requests.is_empty() {
                r.insert("requests".into(), Value::Object(requests));
            }
            Some(Value::Object(r))
        } else {
            None
        };

        let image = match get(PROXY_IMAGE) {
            Some(v) if v.trim().is_empty() => {
                check(PROXY_IMAGE, Err("must name an image".into()));
                s.proxy_image()
            }
            // Istio uses the annotation only when it is a full reference (contains a '/').
            Some(v) if v.contains('/') => v.to_string(),
            _ => s.proxy_image(),
        };

        let mut boolean = |key: &'static str, default: bool| match get(key) {
            None => default,
            Some(v) => parse_go_bool(v).unwrap_or_else(|reason| {
                check(key, Err(reason));
                default
            }),
        };
        let rewrite_probes = boolean(REWRITE_PROBES, s.rewrite_app_probes);
        let core_dump = boolean(ENABLE_CORE_DUMP, false);
        let net_bind_service = boolean(CAP_NET_BIND_SERVICE, false);
        let prometheus_merge = boolean(MERGE_METRICS, s.prometheus_merge);

        let bootstrap_override = get(BOOTSTRAP_OVERRIDE).map(str::to_string);
        let user_volumes = match get(USER_VOLUME) {
            None => Vec::new(),
            Some(v) => parse_json_map(v, "a volume").unwrap_or_else(|reason| {
                check(USER_VOLUME, Err(reason));
                Vec::new()
            }),
        };
        let user_volume_mounts = match get(USER_VOLUME_MOUNT) {
            None => Vec::new(),
            Some(v) => parse_json_map(v, "a volumeMount").unwrap_or_else(|reason| {
                check(USER_VOLUME_MOUNT, Err(reason));
                Vec::new()
            }),
        };
        let proxy_config = match get(PROXY_CONFIG) {
            None => Map::new(),
            Some(v) => match serde_yaml_ng::from_str::<Value>(v) {
                Ok(Value::Object(m)) => m,
                Ok(Value::Null) => Map::new(),
                Ok(_) => {
                    check(
                        PROXY_CONFIG,
                        Err("must be a YAML mapping of ProxyConfig fields".into()),
                    );
                    Map::new()
                }
                Err(e) => {
                    check(PROXY_CONFIG, Err(format!("is not YAML: {e}")));
                    Map::new()
                }
            },
        };

        let overrides = Overrides {
            interception,
            include_ip_ranges,
            exclude_ip_ranges,
            include_inbound_ports,
            exclude_inbound_ports,
            include_outbound_ports,
            exclude_outbound_ports,
            kubevirt_interfaces,
            exclude_interfaces,
            status_port,
            readiness_initial_delay,
            readiness_period,
            readiness_failure_threshold,
            resources,
            image,
            proxy_log_level: get(LOG_LEVEL).unwrap_or(&s.proxy_log_level).to_string(),
            proxy_component_log_level: get(COMPONENT_LOG_LEVEL)
                .unwrap_or(&s.proxy_component_log_level)
                .to_string(),
            agent_log_level: get(AGENT_LOG_LEVEL).unwrap_or(&s.agent_log_level).to_string(),
            rewrite_probes,
            core_dump,
            net_bind_service,
            bootstrap_override,
            user_volumes,
            user_volume_mounts,
            proxy_config,
            prometheus_merge,
        };
        if errors.is_empty() {
            Ok(overrides)
        } else {
            Err(errors)
        }
    }

    /// Whether the sidecar starts before the app containers (mesh setting or the pod's
    /// `proxy.istio.io/config` `holdApplicationUntilProxyStarts`).
    pub fn hold_application(&self, s: &Settings) -> bool {
        match self.proxy_config.get("holdApplicationUntilProxyStarts") {
            Some(Value::Bool(b)) => *b,
            _ => s.hold_application,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Overrides, Vec<Invalid>> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Overrides::from_annotations(&map, &Settings::default())
    }

    #[test]
    fn defaults_are_the_seed_flags() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.interception.as_str(), "REDIRECT");
        assert_eq!(
            (o.include_ip_ranges.as_str(), o.exclude_ip_ranges.as_str()),
            ("*", "")
        );
        assert_eq!(o.include_inbound_ports, "*");
        assert_eq!(
            exclude_inbound_with_status_port(o.status_port, &o.exclude_inbound_ports),
            "15020"
        );
        assert_eq!(o.include_outbound_ports, None);
        assert_eq!(o.resources, None);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let errs = parse(&[
            (EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33"),
            (INCLUDE_INBOUND_PORTS, "80,http"),
            (INTERCEPTION_MODE, "redirect"),
            (PROXY_CPU, "lots"),
            (STATUS_PORT, "70000"),
            (REWRITE_PROBES, "maybe"),
            (USER_VOLUME, "[1]"),
            (PROXY_CONFIG, "- a"),
        ])
        .unwrap_err();
        let mut names: Vec<_> = errs.iter().map(|e| e.annotation).collect();
        names.sort();
        let mut want = vec![
            INTERCEPTION_MODE,
            INCLUDE_INBOUND_PORTS,
            EXCLUDE_OUTBOUND_IP_RANGES,
            STATUS_PORT,
            PROXY_CPU,
            REWRITE_PROBES,
            USER_VOLUME,
            PROXY_CONFIG,
        ];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(errs.len(), 8);
        let cidr = errs
            .iter()
            .find(|e| e.annotation == EXCLUDE_OUTBOUND_IP_RANGES)
            .unwrap();
        assert_eq!(cidr.value, "10.0.0.0/33");
        assert!(cidr.reason.contains("not a CIDR"), "{}", cidr.reason);
    }

    #[test]
    fn exclude_ranges_star_is_rejected() {
        assert!(parse(&[(EXCLUDE_OUTBOUND_IP_RANGES, "*")]).is_err());
    }

    #[test]
    fn status_port_joins_excluded_ports_once() {
        assert_eq!(exclude_inbound_with_status_port(15020, "8080"), "8080,15020");
        assert_eq!(
            exclude_inbound_with_status_port(15020, "8080,15020"),
            "8080,15020"
        );
        assert_eq!(exclude_inbound_with_status_port(0, "8080"), "8080");
        assert_eq!(exclude_inbound_with_status_port(15020, " 1, ,2"), "1,2,15020");
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "2", "1Gi", "0.5", "1e3", "128Mi", "+1k"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lots", "1GB", "1.2.3", "m", ".", "1e"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxy_image_needs_a_slash_as_in_istio() {
        assert_eq!(parse(&[(PROXY_IMAGE, "my/proxy:1")]).unwrap().image, "my/proxy:1");
        assert_eq!(
            parse(&[(PROXY_IMAGE, "proxy")]).unwrap().image,
            Settings::default().proxy_image()
        );
    }

    #[test]
    fn resources_from_annotations_replace_defaults() {
        let o = parse(&[(PROXY_CPU, "100m"), (PROXY_MEMORY_LIMIT, "1Gi")]).unwrap();
        assert_eq!(
            o.resources.unwrap(),
            serde_json::json!({"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}})
        );
    }
}
