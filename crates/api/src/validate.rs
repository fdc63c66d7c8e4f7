//! Per-resource validation, rule for rule from Istio 1.19's webhook (`pkg/config/validation`:
//! `ValidateVirtualService`, `ValidateDestinationRule`, `ValidateGateway`, `ValidateServiceEntry`,
//! `ValidateSidecar`). Errors reject the resource (IST0106); warnings (IST0133) and the unreachable
//! rule analysis (IST0130/IST0131) are reported and the resource applies.
//!
//! Skiff adds one warning Istio dropped in 1.11: HTTP route weights that do not add up to 100
//! (Envoy then splits in proportion to the sum, which is rarely what a `90/20` typo meant).

use std::collections::{BTreeMap, BTreeSet};

use crate::duration::GoDuration;
use crate::host;
use crate::networking::*;
use crate::{code, Finding, Level, Spec};

/// Collects findings under a field path.
struct V {
    out: Vec<Finding>,
}

impl V {
    fn err(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.out.push(Finding::error(field, msg));
    }

    fn warn(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.out.push(Finding::warning(field, msg));
    }

    fn check(&mut self, field: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.err(field, e);
        }
    }
}

/// Validates one spec. `namespace`/`name` are the resource's (some rules depend on them).
pub fn validate(spec: &Spec, namespace: &str, name: &str) -> Vec<Finding> {
    let mut v = V { out: Vec::new() };
    match spec {
        Spec::VirtualService(vs) => virtual_service(&mut v, vs, namespace),
        Spec::DestinationRule(dr) => destination_rule(&mut v, dr, namespace),
        Spec::Gateway(gw) => gateway(&mut v, gw, name),
        Spec::ServiceEntry(se) => service_entry(&mut v, se, namespace),
        Spec::Sidecar(sc) => sidecar(&mut v, sc, namespace),
    }
    v.out
}

// === Shared rules ===

/// Istio's protocol names (`protocol.Parse`, case-insensitive); `None` for unknown.
pub fn known_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http"
            | "https"
            | "http2"
            | "grpc"
            | "grpc-web"
            | "http_proxy"
            | "tcp"
            | "tls"
            | "mongo"
            | "redis"
            | "mysql"
            | "udp"
    )
}

fn validate_port(p: u32) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("port number {p} must be in the range 1..65535"))
    }
}

/// Istio's `ValidateDuration`: at least 1ms, millisecond precision.
fn validate_duration(d: GoDuration) -> Result<(), String> {
    let d = d.0;
    if d < std::time::Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

fn validate_percent(field: &str, v: &mut V, p: i32) {
    if !(0..=100).contains(&p) {
        v.err(field, format!("percentage {p} is not in range 0..100"));
    }
}

fn validate_percentage(field: &str, v: &mut V, p: Option<&Percent>) {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
            v.err(
                format!("{field}.value"),
                format!("percentage {} is not in range 0..100", p.value),
            );
        }
    }
}

/// A regex as Envoy's RE2 would take it (Rust's `regex` accepts the same syntax, bar backrefs and
/// lookaround which RE2 refuses too).
fn validate_regex(re: &str) -> Result<(), String> {
    if re.is_empty() {
        return Err("regex string match should not be empty".into());
    }
    if re.len() > 1024 {
        return Err("regex is too large, max length allowed is 1024".into());
    }
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| format!("{re:?} is not a valid RE2 regex: {}", first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    s.lines()
        .last()
        .unwrap_or(s)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

fn string_match(v: &mut V, field: &str, m: &StringMatch) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        v.err(field, "only one of exact, prefix or regex may be set");
    }
    if let Some(re) = &m.regex {
        v.check(&format!("{field}.regex"), validate_regex(re));
    }
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    name_ok && prefix.is_none_or(|p| host::validate_dns1123_labels(p).is_ok())
}

fn valid_label_value(val: &str) -> bool {
    val.is_empty()
        || (val.len() <= 63
            && val.as_bytes()[0].is_ascii_alphanumeric()
            && val.as_bytes()[val.len() - 1].is_ascii_alphanumeric()
            && val
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)))
}

fn labels(v: &mut V, field: &str, l: &BTreeMap<String, String>) {
    for (k, val) in l {
        if !valid_label_key(k) {
            v.err(format!("{field}.{k}"), format!("invalid label key {k:?}"));
        }
        if !valid_label_value(val) {
            v.err(format!("{field}.{k}"), format!("invalid label value {val:?}"));
        }
    }
}

fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(format!("header name {name:?} is not a valid header name"));
    }
    Ok(())
}

fn is_internal_header(k: &str) -> bool {
    k.starts_with(':') || k.eq_ignore_ascii_case("host")
}

fn is_authority_header(k: &str) -> bool {
    k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host")
}

fn header_value(val: &str) -> Result<(), String> {
    // Envoy's substitution format: `%` must introduce a command or be doubled.
    let mut rest = val;
    while let Some(i) = rest.find('%') {
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            rest = r;
            continue;
        }
        match rest.find('%') {
            Some(j) => rest = &rest[j + 1..],
            None => {
                return Err(format!(
                    "header value {val:?}: unterminated % command (write %% for a literal %)"
                ))
            }
        }
    }
    Ok(())
}

fn header_operations(v: &mut V, field: &str, h: &Headers) {
    let ops = [("request", &h.request), ("response", &h.response)];
    for (side, op) in ops {
        let Some(op) = op else { continue };
        for (what, map) in [("set", &op.set), ("add", &op.add)] {
            for (k, val) in map {
                let f = format!("{field}.{side}.{what}.{k}");
                if side == "request" && is_authority_header(k) {
                    // host / :authority may be set on requests (it rewrites the authority).
                } else if is_internal_header(k) {
                    v.err(&f, format!("invalid header {k:?}: header cannot have ':' prefix"));
                } else {
                    v.check(&f, header_name(k));
                }
                v.check(&f, header_value(val));
            }
        }
        for (i, k) in op.remove.iter().enumerate() {
            let f = format!("{field}.{side}.remove[{i}]");
            if is_internal_header(k) {
                v.err(&f, format!("invalid header {k:?}: header cannot have ':' prefix"));
            } else {
                v.check(&f, header_name(k));
            }
        }
    }
}

fn gateway_names(v: &mut V, field: &str, names: &[String]) {
    for (i, g) in names.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match g.split_once('/') {
            Some((ns, name)) => {
                if ns.is_empty() || name.is_empty() {
                    v.err(&f, "config namespace and gateway name cannot be empty");
                    continue;
                }
                if ns != "." && !host::is_dns1123_label(ns) {
                    v.err(&f, format!("invalid value for namespace: {ns:?}"));
                }
                if !host::is_dns1123_label(name) {
                    v.err(&f, format!("invalid value for gateway name: {name:?}"));
                }
            }
            None => {
                if g.contains('.') {
                    let parts: Vec<&str> = g.split('.').collect();
                    v.warn(
                        &f,
                        format!(
                            "using legacy gatewayName format {g:?}; prefer the <namespace>/<name> format: \"{}/{}\"",
                            parts.get(1).unwrap_or(&""),
                            parts[0]
                        ),
                    );
                }
                v.check(&f, host::validate_fqdn(g));
            }
        }
    }
}

fn destination(v: &mut V, field: &str, d: &Destination) {
    if d.host == "*" {
        v.err(format!("{field}.host"), "invalid destination host *");
    } else {
        v.check(&format!("{field}.host"), host::validate_wildcard_domain(&d.host));
    }
    if !d.subset.is_empty() && !host::is_dns1123_label(&d.subset) {
        v.err(
            format!("{field}.subset"),
            format!("subset name is invalid: {}", d.subset),
        );
    }
    if let Some(p) = &d.port {
        v.check(&format!("{field}.port.number"), validate_port(p.number));
    }
}

fn export_to(v: &mut V, field: &str, namespace: &str, export: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, e) in export.iter().enumerate() {
        let key = if e == "." { namespace.to_owned() } else { e.clone() };
        if !seen.insert(key) {
            v.err(
                format!("{field}[{i}]"),
                format!("duplicate entries in exportTo: {e}"),
            );
        }
        if e != "." && e != "*" && e != "~" && !host::is_dns1123_label(e) {
            v.err(
                format!("{field}[{i}]"),
                format!("invalid namespace {e:?} in exportTo"),
            );
        }
    }
    if export.iter().any(|e| e == "*") && export.len() > 1 {
        v.err(
            field,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
}

/// Status codes Go's `http.StatusText` knows (Istio's test for a status in `retryOn`).
pub fn is_known_http_status(code: i64) -> bool {
    matches!(code, 100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511)
}

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions Istio accepts.
pub const RETRY_ON: [&str; 14] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status names Istio accepts in `abort.grpcStatus`, with their codes.
pub fn grpc_status(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

// === VirtualService ===

fn virtual_service(v: &mut V, vs: &VirtualService, namespace: &str) {
    if vs.hosts.is_empty() {
        if !vs.gateways.is_empty() {
            v.err(
                "spec.gateways",
                "delegate virtual service must have no gateways specified",
            );
        }
        if !vs.tls.is_empty() {
            v.err(
                "spec.tls",
                "delegate virtual service must have no tls route specified",
            );
        }
        if !vs.tcp.is_empty() {
            v.err(
                "spec.tcp",
                "delegate virtual service must have no tcp route specified",
            );
        }
    }
    let mut applies_to_mesh = vs.gateways.is_empty();
    if !vs.gateways.is_empty() {
        gateway_names(v, "spec.gateways", &vs.gateways);
        applies_to_mesh = vs.gateways.iter().any(|g| g == crate::MESH_GATEWAY);
    }
    let mut all_hosts_valid = true;
    for (i, h) in vs.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        if let Err(e) = host::validate_wildcard_domain(h) {
            if h.parse::<std::net::IpAddr>().is_err() {
                v.err(&f, e);
                all_hosts_valid = false;
            }
        } else if applies_to_mesh && h == "*" {
            v.err(
                &f,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_hosts_valid = false;
        }
    }
    if all_hosts_valid {
        for i in 0..vs.hosts.len() {
            for j in i + 1..vs.hosts.len() {
                if host::matches(&vs.hosts[i], &vs.hosts[j]) {
                    v.err(
                        format!("spec.hosts[{j}]"),
                        format!(
                            "duplicate hosts in virtual service: {} & {}",
                            vs.hosts[i], vs.hosts[j]
                        ),
                    );
                }
            }
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        v.err("spec", "http, tcp or tls must be provided in virtual service");
    }
    for (i, r) in vs.http.iter().enumerate() {
        http_route(v, &format!("spec.http[{i}]"), r, vs.hosts.is_empty());
    }
    for (i, r) in vs.tls.iter().enumerate() {
        let f = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            v.err(&f, "TLS route must have at least one match condition");
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mf = format!("{f}.match[{j}]");
            if m.sni_hosts.is_empty() {
                v.err(&mf, "TLS match must have at least one SNI host");
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let sf = format!("{mf}.sniHosts[{k}]");
                if let Err(e) = host::validate_wildcard_domain(sni) {
                    if sni.parse::<std::net::IpAddr>().is_ok() {
                        v.warn(&sf, format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"));
                    } else {
                        v.err(&sf, e);
                    }
                    continue;
                }
                if !vs.hosts.iter().any(|h| host::subset_of(sni, h)) {
                    v.err(
                        &sf,
                        format!(
                            "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                            vs.hosts.join(", ")
                        ),
                    );
                }
            }
            l4_match_common(
                v,
                &mf,
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &m.gateways,
            );
        }
        if r.route.is_empty() {
            v.err(format!("{f}.route"), "TLS route is required");
        }
        route_destinations(v, &format!("{f}.route"), &r.route);
    }
    for (i, r) in vs.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            l4_match_common(
                v,
                &format!("{f}.match[{j}]"),
                &m.destination_subnets,
                m.port,
                &m.source_labels,
                &m.gateways,
            );
        }
        if r.route.is_empty() {
            v.err(format!("{f}.route"), "TCP route is required");
        }
        route_destinations(v, &format!("{f}.route"), &r.route);
    }
    export_to(v, "spec.exportTo", namespace, &vs.export_to);
    unreachable_http_rules(v, &vs.http);
}

fn l4_match_common(
    v: &mut V,
    field: &str,
    subnets: &[String],
    port: u32,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
) {
    for (i, s) in subnets.iter().enumerate() {
        v.check(&format!("{field}.destinationSubnets[{i}]"), validate_subnet(s));
    }
    if port != 0 {
        v.check(&format!("{field}.port"), validate_port(port));
    }
    labels(v, &format!("{field}.sourceLabels"), source_labels);
    gateway_names(v, &format!("{field}.gateways"), gateways);
}

/// An IP or CIDR.
pub fn validate_subnet(s: &str) -> Result<(), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("{s:?} is not a valid IP address or CIDR"))?;
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => return Err(format!("{s:?}: invalid prefix length")),
        }
    }
    Ok(())
}

fn http_route(v: &mut V, f: &str, r: &HttpRoute, delegate: bool) {
    // Conflicts (validateHTTPRouteConflict).
    if r.delegate.is_some() {
        if delegate {
            v.err(
                format!("{f}.delegate"),
                "delegate HTTP route cannot contain delegate",
            );
        } else {
            if r.redirect.is_some() {
                v.err(f, format!("root HTTP route {} must not specify redirect", r.name));
            }
            if !r.route.is_empty() {
                v.err(f, format!("root HTTP route {} must not specify route", r.name));
            }
            v.warn(
                format!("{f}.delegate"),
                "delegate VirtualServices are not supported by Skiff; this rule is ignored",
            );
        }
    } else if r.redirect.is_some() {
        if !r.route.is_empty() {
            v.err(f, "HTTP route cannot contain both route and redirect");
        }
        if r.fault.is_some() {
            v.err(f, "HTTP route cannot contain both fault and redirect");
        }
        if r.rewrite.is_some() {
            v.err(f, "HTTP route rule cannot contain both rewrite and redirect");
        }
        if r.direct_response.is_some() {
            v.err(
                f,
                "HTTP route rule cannot contain both direct_response and redirect",
            );
        }
    } else if r.direct_response.is_some() {
        if !r.route.is_empty() {
            v.err(f, "HTTP route cannot contain both route and direct_response");
        }
        if r.fault.is_some() {
            v.err(f, "HTTP route cannot contain both fault and direct_response");
        }
        if r.rewrite.is_some() {
            v.err(
                f,
                "HTTP route rule cannot contain both rewrite and direct_response",
            );
        }
    } else if r.route.is_empty() {
        v.err(f, "HTTP route, redirect or direct_response is required");
    }
    // Matches (validateHTTPRouteMatchRequest).
    for (i, m) in r.matches.iter().enumerate() {
        let mf = format!("{f}.match[{i}]");
        for (what, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
            for (name, sm) in map {
                let hf = format!("{mf}.{what}.{name}");
                if sm.prefix.as_deref() == Some("") {
                    v.err(&hf, format!("header prefix match {name} may not be empty"));
                }
                if !name.starts_with("@request.auth.claims") {
                    v.check(&hf, header_name(name));
                } else {
                    v.err(&hf, "JWT claim based routing is not supported by Skiff");
                }
                string_match(v, &hf, sm);
            }
        }
        for (what, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(v, &format!("{mf}.{what}"), sm);
            }
        }
        for (name, sm) in &m.query_params {
            string_match(v, &format!("{mf}.queryParams.{name}"), sm);
        }
        if m.port != 0 {
            v.check(&format!("{mf}.port"), validate_port(m.port));
        }
        labels(v, &format!("{mf}.sourceLabels"), &m.source_labels);
        gateway_names(v, &format!("{mf}.gateways"), &m.gateways);
        if !m.source_namespace.is_empty() && !host::is_dns1123_label(&m.source_namespace) {
            v.err(
                format!("{mf}.sourceNamespace"),
                format!("sourceNamespace match {} is invalid", m.source_namespace),
            );
        }
    }
    if let Some(h) = &r.headers {
        header_operations(v, &format!("{f}.headers"), h);
    }
    if let Some(c) = &r.cors_policy {
        cors(v, &format!("{f}.corsPolicy"), c);
    }
    if let Some(fault) = &r.fault {
        let ff = format!("{f}.fault");
        if fault.abort.is_none() && fault.delay.is_none() {
            v.err(&ff, "HTTP fault injection must have an abort and/or a delay");
        }
        if let Some(a) = &fault.abort {
            validate_percentage(&format!("{ff}.abort.percentage"), v, a.percentage.as_ref());
            let kinds = [
                a.http_status.is_some(),
                a.grpc_status.is_some(),
                a.http2_error.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                v.err(
                    format!("{ff}.abort"),
                    "exactly one of httpStatus, grpcStatus or http2Error is required",
                );
            }
            if let Some(s) = a.http_status {
                if !(200..=600).contains(&s) {
                    v.err(
                        format!("{ff}.abort.httpStatus"),
                        format!("HTTP status {s} is not in range 200-599"),
                    );
                }
            }
            if let Some(g) = &a.grpc_status {
                if grpc_status(g).is_none() {
                    v.err(
                        format!("{ff}.abort.grpcStatus"),
                        format!("gRPC status {g:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"),
                    );
                }
            }
            if a.http2_error.is_some() {
                v.err(
                    format!("{ff}.abort.http2Error"),
                    "HTTP/2 abort fault injection not supported yet",
                );
            }
        }
        if let Some(d) = &fault.delay {
            validate_percentage(&format!("{ff}.delay.percentage"), v, d.percentage.as_ref());
            if let Some(p) = d.percent {
                validate_percent(&format!("{ff}.delay.percent"), v, p);
            }
            match (d.fixed_delay, d.exponential_delay) {
                (Some(fd), None) => v.check(&format!("{ff}.delay.fixedDelay"), validate_duration(fd)),
                (None, Some(_)) => v.err(
                    format!("{ff}.delay.exponentialDelay"),
                    "exponentialDelay not supported yet",
                ),
                _ => v.err(
                    format!("{ff}.delay"),
                    "exactly one of fixedDelay or exponentialDelay is required",
                ),
            }
        }
    }
    if let Some(p) = r.mirror_percent {
        if p > 100 {
            v.err(
                format!("{f}.mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {p})"),
            );
        }
        v.warn(
            format!("{f}.mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = &r.mirror_percentage {
        if p.value > 100.0 {
            v.err(
                format!("{f}.mirrorPercentage"),
                format!(
                    "mirror_percentage must have a max value of 100 (it has {})",
                    p.value
                ),
            );
        }
        if p.value < 0.0 {
            v.err(
                format!("{f}.mirrorPercentage"),
                format!(
                    "mirror_percentage must have a min value of 0 (it has {})",
                    p.value
                ),
            );
        }
    }
    if let Some(m) = &r.mirror {
        destination(v, &format!("{f}.mirror"), m);
    }
    if let Some(rd) = &r.redirect {
        let rf = format!("{f}.redirect");
        if rd.uri.is_empty()
            && rd.authority.is_empty()
            && rd.port.is_none()
            && rd.derive_port.is_none()
            && rd.scheme.is_empty()
        {
            v.err(&rf, "redirect must specify URI, authority, scheme, or port");
        }
        if rd.redirect_code != 0 && !(300..=399).contains(&rd.redirect_code) {
            v.err(
                format!("{rf}.redirectCode"),
                format!("{} is not a valid redirect code, must be 3xx", rd.redirect_code),
            );
        }
        if !rd.scheme.is_empty() && rd.scheme != "http" && rd.scheme != "https" {
            v.err(
                format!("{rf}.scheme"),
                "invalid redirect scheme, must be \"http\" or \"https\"",
            );
        }
        if let Some(p) = rd.port {
            v.check(&format!("{rf}.port"), validate_port(p));
        }
        if rd.port.is_some() && rd.derive_port.is_some() {
            v.err(&rf, "only one of port or derivePort may be set");
        }
    }
    if let Some(d) = &r.direct_response {
        let df = format!("{f}.directResponse");
        if let Some(b) = &d.body {
            let size = match (&b.string, &b.bytes) {
                (Some(s), None) => s.len(),
                (None, Some(b)) => b.len() * 3 / 4,
                _ => {
                    v.err(format!("{df}.body"), "exactly one of string or bytes is required");
                    0
                }
            };
            if size > 1 << 20 {
                v.err(
                    format!("{df}.body"),
                    "large direct_responses may impact control plane performance, must be less than 1MB",
                );
            } else if size > 100 << 10 {
                v.warn(
                    format!("{df}.body"),
                    "large direct_responses may impact control plane performance",
                );
            }
        }
        if !(200..=600).contains(&d.status) {
            v.err(
                format!("{df}.status"),
                format!("HTTP status {} is not in range 200-599", d.status),
            );
        }
    }
    if let Some(rt) = &r.retries {
        let rf = format!("{f}.retries");
        if rt.attempts < 0 {
            v.err(format!("{rf}.attempts"), "attempts cannot be negative");
        }
        if rt.attempts == 0
            && (rt.per_try_timeout.is_some()
                || !rt.retry_on.is_empty()
                || rt.retry_remote_localities.is_some())
        {
            v.err(
                &rf,
                "http retry policy configured when attempts are set to 0 (disabled)",
            );
        }
        if let Some(d) = rt.per_try_timeout {
            v.check(&format!("{rf}.perTryTimeout"), validate_duration(d));
        }
        if !rt.retry_on.is_empty() {
            for p in rt.retry_on.split(',') {
                let known_status = p.parse::<i64>().is_ok_and(is_known_http_status);
                if !known_status && !RETRY_ON.contains(&p) {
                    v.err(
                        format!("{rf}.retryOn"),
                        format!("{p:?} is not a valid retryOn policy"),
                    );
                }
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        let rf = format!("{f}.rewrite");
        if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
            v.err(&rf, "rewrite may only contain one of URI or UriRegexRewrite");
        }
        if rw.uri.is_empty() && rw.uri_regex_rewrite.is_none() && rw.authority.is_empty() {
            v.err(&rf, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified");
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            if rr.pattern.is_empty() || rr.rewrite.is_empty() {
                v.err(
                    format!("{rf}.uriRegexRewrite"),
                    "UriRegexRewrite requires both Rewrite and Match fields to be specified",
                );
            } else {
                v.check(
                    &format!("{rf}.uriRegexRewrite.match"),
                    validate_regex(&rr.pattern),
                );
            }
        }
    }
    // Authority rewritten in one place only (validateAuthorityRewrite).
    let mut authority = r
        .rewrite
        .as_ref()
        .map(|r| r.authority.clone())
        .filter(|a| !a.is_empty());
    if let Some(req) = r.headers.as_ref().and_then(|h| h.request.as_ref()) {
        for (k, val) in req.set.iter().chain(req.add.iter()) {
            if !is_authority_header(k) {
                continue;
            }
            if let Some(cur) = &authority {
                v.err(
                    format!("{f}.headers.request"),
                    format!("authority header cannot be set multiple times: have {cur:?}, attempting to set {val:?}"),
                );
            }
            authority = Some(val.clone());
        }
    }
    // Destinations (validateHTTPRouteDestinations).
    let mut total: i64 = 0;
    for (i, d) in r.route.iter().enumerate() {
        let df = format!("{f}.route[{i}]");
        match &d.destination {
            Some(dest) => destination(v, &format!("{df}.destination"), dest),
            None => v.err(format!("{df}.destination"), "destination is required"),
        }
        if let Some(h) = &d.headers {
            header_operations(v, &format!("{df}.headers"), h);
        }
        if d.weight < 0 {
            v.err(format!("{df}.weight"), format!("weight {} < 0", d.weight));
        }
        total += i64::from(d.weight);
    }
    if r.route.len() > 1 && total == 0 {
        v.err(format!("{f}.route"), "total destination weight = 0");
    } else if r.route.len() > 1 && total != 100 {
        v.warn(
            format!("{f}.route"),
            format!("total destination weight {total} != 100; Envoy splits traffic in proportion to the sum"),
        );
    } else if r.route.len() == 1 && r.route[0].weight != 0 && r.route[0].weight != 100 {
        v.warn(
            format!("{f}.route[0].weight"),
            format!(
                "weight {} on the only destination is ignored (it gets all traffic)",
                r.route[0].weight
            ),
        );
    }
    if let Some(t) = r.timeout {
        v.check(&format!("{f}.timeout"), validate_duration(t));
    }
}

fn cors(v: &mut V, f: &str, c: &CorsPolicy) {
    for (i, o) in c.allow_origins.iter().enumerate() {
        let of = format!("{f}.allowOrigins[{i}]");
        let m = o
            .exact
            .as_deref()
            .or(o.prefix.as_deref())
            .or(o.regex.as_deref())
            .unwrap_or("");
        if m.is_empty() {
            v.err(
                &of,
                format!("'{m}' is not a valid match type for CORS allow origins"),
            );
        }
        string_match(v, &of, o);
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            v.err(
                format!("{f}.allowMethods[{i}]"),
                format!("{m:?} is not a supported HTTP method"),
            );
        }
    }
    for (what, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            v.check(&format!("{f}.{what}[{i}]"), header_name(h));
        }
    }
    if let Some(age) = c.max_age {
        v.check(&format!("{f}.maxAge"), validate_duration(age));
        if age.0.subsec_nanos() > 0 {
            v.err(
                format!("{f}.maxAge"),
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
}

fn route_destinations(v: &mut V, f: &str, routes: &[RouteDestination]) {
    let mut total: i64 = 0;
    for (i, d) in routes.iter().enumerate() {
        match &d.destination {
            Some(dest) => destination(v, &format!("{f}[{i}].destination"), dest),
            None => v.err(format!("{f}[{i}].destination"), "destination is required"),
        }
        if d.weight < 0 {
            v.err(format!("{f}[{i}].weight"), format!("weight {} < 0", d.weight));
        }
        total += i64::from(d.weight);
    }
    if routes.len() > 1 && total == 0 {
        v.err(f, "total destination weight = 0");
    }
}

/// Istio's `analyzeUnreachableHTTPRules`: a second rule without matches (IST0130) and matches that
/// repeat an earlier rule's (IST0131; all of a rule's matches repeated ⇒ IST0130).
fn unreachable_http_rules(v: &mut V, routes: &[HttpRoute]) {
    let name = |r: &HttpRoute, n: usize| {
        if r.name.is_empty() {
            format!("#{n}")
        } else {
            format!("{:?}", r.name)
        }
    };
    let mut seen: Vec<(&HttpMatchRequest, usize)> = Vec::new();
    let mut empty_seen = false;
    for (n, r) in routes.iter().enumerate() {
        if r.matches.is_empty() {
            if empty_seen {
                v.out.push(Finding {
                    level: Level::Warning,
                    code: code::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                    field: format!("spec.http[{n}]"),
                    message: format!(
                        "VirtualService rule {} not used (only the last rule can have no matches).",
                        name(r, n)
                    ),
                });
            }
            empty_seen = true;
            continue;
        }
        let mut duplicates = 0;
        for (mn, m) in r.matches.iter().enumerate() {
            if let Some((_, dup)) = seen.iter().find(|(x, _)| *x == m) {
                let mname = if m.name.is_empty() {
                    format!("#{mn}")
                } else {
                    format!("{:?}", m.name)
                };
                v.out.push(Finding {
                    level: Level::Info,
                    code: code::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                    field: format!("spec.http[{n}].match[{mn}]"),
                    message: format!(
                        "VirtualService rule {} match {mname} is not used (duplicate/overlapping match in rule {}).",
                        name(r, n),
                        name(&routes[*dup], *dup)
                    ),
                });
                duplicates += 1;
            } else {
                seen.push((m, n));
            }
        }
        if duplicates == r.matches.len() {
            v.out.push(Finding {
                level: Level::Warning,
                code: code::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                field: format!("spec.http[{n}]"),
                message: format!(
                    "VirtualService rule {} not used (all matches used by prior rules).",
                    name(r, n)
                ),
            });
        }
    }
}

// === DestinationRule ===

fn destination_rule(v: &mut V, dr: &DestinationRule, namespace: &str) {
    v.check("spec.host", host::validate_wildcard_domain(&dr.host));
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy(v, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let f = format!("spec.subsets[{i}]");
        if s.name.is_empty() {
            v.err(format!("{f}.name"), "subset name cannot be empty");
        } else if !host::is_dns1123_label(&s.name) {
            v.err(format!("{f}.name"), format!("subset name is invalid: {}", s.name));
        }
        if !names.insert(s.name.clone()) {
            v.err(format!("{f}.name"), format!("duplicate subset name {:?}", s.name));
        }
        labels(v, &format!("{f}.labels"), &s.labels);
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(v, &format!("{f}.trafficPolicy"), tp);
        }
    }
    export_to(v, "spec.exportTo", namespace, &dr.export_to);
    if let Some(ws) = &dr.workload_selector {
        labels(v, "spec.workloadSelector.matchLabels", &ws.match_labels);
    }
}

fn traffic_policy(v: &mut V, f: &str, tp: &TrafficPolicy) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
    {
        v.err(f, "traffic policy must have at least one field");
        return;
    }
    policy_parts(
        v,
        f,
        tp.outlier_detection.as_ref(),
        tp.connection_pool.as_ref(),
        tp.load_balancer.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        match &p.port {
            None => v.err(format!("{pf}.port"), "portTrafficPolicy must have valid port"),
            Some(port) => {
                v.check(&format!("{pf}.port.number"), validate_port(port.number));
                if !ports.insert(port.number) {
                    v.warn(
                        format!("{pf}.port"),
                        format!(
                            "port {} has more than one portLevelSettings; the first wins",
                            port.number
                        ),
                    );
                }
            }
        }
        if p.outlier_detection.is_none()
            && p.connection_pool.is_none()
            && p.load_balancer.is_none()
            && p.tls.is_none()
        {
            v.err(&pf, "port traffic policy must have at least one field");
        } else {
            policy_parts(
                v,
                &pf,
                p.outlier_detection.as_ref(),
                p.connection_pool.as_ref(),
                p.load_balancer.as_ref(),
                p.tls.as_ref(),
            );
        }
    }
    if let Some(t) = &tp.tunnel {
        if !t.protocol.is_empty() && t.protocol != "CONNECT" && t.protocol != "POST" {
            v.err(
                format!("{f}.tunnel.protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if host::validate_fqdn(&t.target_host).is_err() && t.target_host.parse::<std::net::IpAddr>().is_err()
        {
            v.err(
                format!("{f}.tunnel.targetHost"),
                "tunnel target host must be valid FQDN or IP address",
            );
        }
        v.check(&format!("{f}.tunnel.targetPort"), validate_port(t.target_port));
    }
}

fn policy_parts(
    v: &mut V,
    f: &str,
    outlier: Option<&OutlierDetection>,
    pool: Option<&ConnectionPoolSettings>,
    lb: Option<&LoadBalancerSettings>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(o) = outlier {
        let of = format!("{f}.outlierDetection");
        if let Some(d) = o.base_ejection_time {
            v.check(&format!("{of}.baseEjectionTime"), validate_duration(d));
        }
        if let Some(d) = o.interval {
            v.check(&format!("{of}.interval"), validate_duration(d));
        }
        if o.consecutive_errors.is_some_and(|c| c != 0) {
            v.warn(
                format!("{of}.consecutiveErrors"),
                "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
            );
        }
        if !o.split_external_local_origin_errors && o.consecutive_local_origin_failures.is_some_and(|c| c > 0)
        {
            v.err(
                format!("{of}.consecutiveLocalOriginFailures"),
                "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
            );
        }
        validate_percent(&format!("{of}.maxEjectionPercent"), v, o.max_ejection_percent);
        validate_percent(&format!("{of}.minHealthPercent"), v, o.min_health_percent);
    }
    if let Some(p) = pool {
        let pf = format!("{f}.connectionPool");
        if p.http.is_none() && p.tcp.is_none() {
            v.err(&pf, "connection pool must have at least one field");
        }
        if let Some(h) = &p.http {
            for (what, val) in [
                ("http1MaxPendingRequests", h.http1_max_pending_requests),
                ("http2MaxRequests", h.http2_max_requests),
                ("maxRequestsPerConnection", h.max_requests_per_connection),
                ("maxRetries", h.max_retries),
                ("maxConcurrentStreams", h.max_concurrent_streams),
            ] {
                if val < 0 {
                    v.err(
                        format!("{pf}.http.{what}"),
                        format!("{what} must be non-negative"),
                    );
                }
            }
            if let Some(d) = h.idle_timeout {
                v.check(&format!("{pf}.http.idleTimeout"), validate_duration(d));
            }
            if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol {
                v.err(
                    format!("{pf}.http"),
                    "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
                );
            }
        }
        if let Some(t) = &p.tcp {
            if t.max_connections < 0 {
                v.err(
                    format!("{pf}.tcp.maxConnections"),
                    "max connections must be non-negative",
                );
            }
            if let Some(d) = t.connect_timeout {
                v.check(&format!("{pf}.tcp.connectTimeout"), validate_duration(d));
            }
            if let Some(d) = t.max_connection_duration {
                v.check(&format!("{pf}.tcp.maxConnectionDuration"), validate_duration(d));
            }
        }
    }
    if let Some(lb) = lb {
        let lf = format!("{f}.loadBalancer");
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            v.err(&lf, "only one of simple or consistentHash may be set");
        }
        if let Some(ch) = &lb.consistent_hash {
            let cf = format!("{lf}.consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip.is_some(),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() > 1 {
                v.err(&cf, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set");
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    v.err(format!("{cf}.httpCookie.name"), "name required for HttpCookie");
                }
                if c.ttl.is_none() {
                    v.err(format!("{cf}.httpCookie.ttl"), "ttl required for HttpCookie");
                }
            }
            if ch.minimum_ring_size.is_some_and(|m| m != 0) {
                v.warn(
                    format!("{cf}.minimumRingSize"),
                    "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
                );
                if ch.ring_hash.is_some() || ch.maglev.is_some() {
                    v.err(
                        &cf,
                        "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                    );
                }
            }
            if ch.ring_hash.is_some() && ch.maglev.is_some() {
                v.err(&cf, "only one of ringHash or maglev may be set");
            }
        }
        if lb.locality_lb_setting.is_some() {
            v.warn(
                format!("{lf}.localityLbSetting"),
                "locality load balancing is not applied by Skiff",
            );
        }
    }
    if let Some(t) = tls {
        let tf = format!("{f}.tls");
        if t.insecure_skip_verify == Some(true) {
            if t.mode == Some(ClientTlsMode::Simple)
                && (!t.ca_certificates.is_empty()
                    || !t.credential_name.is_empty()
                    || !t.subject_alt_names.is_empty())
            {
                v.err(&tf, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true");
            }
            if t.mode == Some(ClientTlsMode::Mutual)
                && (!t.ca_certificates.is_empty() || !t.subject_alt_names.is_empty())
            {
                v.err(
                    &tf,
                    "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
                );
            }
        }
        let simple_or_mutual = matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual));
        if simple_or_mutual && !t.credential_name.is_empty() {
            if !t.client_certificate.is_empty() || !t.ca_certificates.is_empty() || !t.private_key.is_empty()
            {
                v.err(
                    &tf,
                    "cannot specify client certificates or CA certificate If credentialName is set",
                );
            }
        } else if t.mode == Some(ClientTlsMode::Mutual) {
            if t.client_certificate.is_empty() {
                v.err(
                    format!("{tf}.clientCertificate"),
                    "client certificate required for mutual tls",
                );
            }
            if t.private_key.is_empty() {
                v.err(format!("{tf}.privateKey"), "private key required for mutual tls");
            }
        }
    }
}

// === Gateway ===

fn gateway(v: &mut V, gw: &Gateway, name: &str) {
    if !host::is_dns1123_label(name) {
        v.err("metadata.name", format!("invalid gateway name: {name:?}"));
    }
    if gw.servers.is_empty() {
        v.err("spec.servers", "gateway must have at least one server");
    }
    let mut port_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        server(v, &f, s);
        if let Some(p) = &s.port {
            if let Some(j) = port_names.insert(p.name.as_str(), i) {
                v.err(
                    format!("{f}.port.name"),
                    format!(
                        "port names in servers must be unique: duplicate name {} (also spec.servers[{j}])",
                        p.name
                    ),
                );
            }
            let http = matches!(
                p.protocol.to_ascii_uppercase().as_str(),
                "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB"
            );
            if !http && s.tls.as_ref().is_some_and(|t| t.https_redirect) {
                v.warn(
                    format!("{f}.tls.httpsRedirect"),
                    "tls.httpsRedirect should only be used with http servers",
                );
            }
        }
    }
    // Overlapping servers: the same port and bind with overlapping hosts. Istio merges plaintext
    // HTTP servers, but drops a TLS server whose hosts repeat an earlier one's (no SNI could tell
    // them apart), so say so here instead of silently losing it.
    for (i, a) in gw.servers.iter().enumerate() {
        for (j, b) in gw.servers.iter().enumerate().skip(i + 1) {
            let (Some(pa), Some(pb)) = (&a.port, &b.port) else {
                continue;
            };
            if pa.number != pb.number || a.bind != b.bind {
                continue;
            }
            let overlap: Vec<&String> = b
                .hosts
                .iter()
                .filter(|h| a.hosts.iter().any(|g| host::matches(strip_ns(g), strip_ns(h))))
                .collect();
            if overlap.is_empty() {
                continue;
            }
            let tls = a.tls.is_some() || b.tls.is_some();
            let hosts = overlap.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            if tls && a.hosts.iter().any(|h| b.hosts.contains(h)) {
                v.err(
                    format!("spec.servers[{j}].hosts"),
                    format!(
                        "duplicate host names [{hosts}] on port {} (also spec.servers[{i}]): the second TLS server would be skipped",
                        pb.number
                    ),
                );
            } else if pa.protocol.eq_ignore_ascii_case(&pb.protocol) {
                v.warn(
                    format!("spec.servers[{j}].hosts"),
                    format!("hosts [{hosts}] overlap spec.servers[{i}] on port {}", pb.number),
                );
            } else {
                v.err(
                    format!("spec.servers[{j}].port"),
                    format!(
                        "port {} is already used by spec.servers[{i}] with protocol {}; a port has one protocol",
                        pb.number, pa.protocol
                    ),
                );
            }
        }
    }
}

fn strip_ns(h: &str) -> &str {
    h.split_once('/').map_or(h, |(_, h)| h)
}

fn is_tls_protocol(p: &str) -> bool {
    matches!(p.to_ascii_uppercase().as_str(), "HTTPS" | "TLS")
}

fn is_http_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_uppercase().as_str(),
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" | "HTTP_PROXY"
    )
}

fn server(v: &mut V, f: &str, s: &Server) {
    if s.hosts.is_empty() {
        v.err(
            format!("{f}.hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, h) in s.hosts.iter().enumerate() {
        namespace_slash_host(v, &format!("{f}.hosts[{i}]"), h, true);
    }
    let port_ok = match &s.port {
        None => {
            v.err(format!("{f}.port"), "port is required");
            false
        }
        Some(p) => {
            let mut ok = true;
            if !known_protocol(&p.protocol) {
                v.err(
                    format!("{f}.port.protocol"),
                    format!("invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP", p.protocol),
                );
                ok = false;
            }
            if p.number > 0 {
                if let Err(e) = validate_port(p.number) {
                    v.err(format!("{f}.port.number"), e);
                    ok = false;
                }
            }
            if p.name.is_empty() {
                v.err(
                    format!("{f}.port.name"),
                    format!(
                        "port name must be set: number:{} protocol:{:?}",
                        p.number, p.protocol
                    ),
                );
                ok = false;
            }
            ok
        }
    };
    if !s.bind.is_empty() {
        if let Some(path) = s.bind.strip_prefix("unix://") {
            if !path.starts_with('/') || path.ends_with('/') {
                v.err(
                    format!("{f}.bind"),
                    format!("{path} is not an absolute path to a file"),
                );
            }
        } else if s.bind.parse::<std::net::IpAddr>().is_err() {
            v.err(
                format!("{f}.bind"),
                format!("{:?} is not a valid IP address", s.bind),
            );
        }
    }
    if let Some(t) = &s.tls {
        server_tls(v, &format!("{f}.tls"), t);
    }
    if port_ok {
        let p = s.port.as_ref().map(|p| p.protocol.as_str()).unwrap_or_default();
        if is_tls_protocol(p) && s.tls.is_none() {
            v.err(
                format!("{f}.tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            );
        } else if !is_tls_protocol(p) {
            if let Some(t) = &s.tls {
                if is_http_protocol(p) {
                    let passthrough = t.mode.is_none() || t.mode == Some(ServerTlsMode::Passthrough);
                    if !passthrough
                        || !t.ca_certificates.is_empty()
                        || !t.private_key.is_empty()
                        || !t.server_certificate.is_empty()
                    {
                        v.err(
                            format!("{f}.tls"),
                            "server cannot have TLS settings for plain text HTTP ports",
                        );
                    }
                } else {
                    v.err(
                        format!("{f}.tls"),
                        "server cannot have TLS settings for non HTTPS/TLS ports",
                    );
                }
            }
        }
    }
}

fn server_tls(v: &mut V, f: &str, t: &ServerTlsSettings) {
    use ServerTlsMode::*;
    let mode = t.mode.unwrap_or(Passthrough);
    if matches!(
        t.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    ) && t.cipher_suites.is_empty()
    {
        v.warn(
            format!("{f}.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    if mode == IstioMutual {
        for (what, val) in [
            ("serverCertificate", &t.server_certificate),
            ("privateKey", &t.private_key),
            ("caCertificates", &t.ca_certificates),
            ("credentialName", &t.credential_name),
        ] {
            if !val.is_empty() {
                v.err(
                    format!("{f}.{what}"),
                    format!("ISTIO_MUTUAL TLS cannot have associated {what}"),
                );
            }
        }
        return;
    }
    if matches!(mode, Passthrough | AutoPassthrough)
        && (!t.server_certificate.is_empty()
            || !t.private_key.is_empty()
            || !t.ca_certificates.is_empty()
            || !t.credential_name.is_empty())
    {
        v.warn(
            f,
            format!("{mode:?} mode does not use certificates, they will be ignored"),
        );
    }
    if matches!(mode, Simple | Mutual | OptionalMutual) && !t.credential_name.is_empty() {
        return;
    }
    if mode == Simple {
        if t.server_certificate.is_empty() {
            v.err(f, "SIMPLE TLS requires a server certificate (or credentialName)");
        }
        if t.private_key.is_empty() {
            v.err(f, "SIMPLE TLS requires a private key (or credentialName)");
        }
    } else if matches!(mode, Mutual | OptionalMutual) {
        if t.server_certificate.is_empty() {
            v.err(f, "MUTUAL TLS requires a server certificate");
        }
        if t.private_key.is_empty() {
            v.err(f, "MUTUAL TLS requires a private key");
        }
        if t.ca_certificates.is_empty() {
            v.err(f, "MUTUAL TLS requires a client CA bundle");
        }
    }
}

/// Istio's `validateNamespaceSlashWildcardHostname`: `ns/host` (gateways also take a bare host).
fn namespace_slash_host(v: &mut V, f: &str, h: &str, is_gateway: bool) {
    let part = match h.split_once('/') {
        None if is_gateway => h,
        None => {
            v.err(f, "host must be of form namespace/dnsName");
            return;
        }
        Some((ns, rest)) => {
            if ns.is_empty() || rest.is_empty() {
                v.err(f, "config namespace and dnsName in host entry cannot be empty");
                return;
            }
            let special = ns == "*" || ns == "." || (!is_gateway && ns == "~");
            if !special && !host::is_dns1123_label(ns) {
                let what = if is_gateway { "gateway" } else { "sidecar" };
                v.err(f, format!("invalid namespace value {ns:?} in {what}"));
            }
            rest
        }
    };
    if part != "*" && !part.contains('.') {
        v.err(f, "short names (non FQDN) are not allowed");
    }
    if let Err(e) = host::validate_wildcard_domain(part) {
        if !(is_gateway && part.parse::<std::net::IpAddr>().is_ok()) {
            v.err(f, e);
        }
    }
    v.check(f, host::validate_partial_wildcard(part));
}

// === ServiceEntry ===

fn service_entry(v: &mut V, se: &ServiceEntry, namespace: &str) {
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        v.err(
            "spec",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        );
    }
    if se.hosts.is_empty() {
        v.err("spec.hosts", "service entry must have at least one host");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        let f = format!("spec.hosts[{i}]");
        if h == "*" {
            v.err(&f, format!("invalid host {h}"));
        } else {
            v.check(&f, host::validate_wildcard_domain(h));
            if let Err(e) = host::validate_partial_wildcard(h) {
                v.warn(&f, e);
            }
        }
    }
    let mut cidr = false;
    for (i, a) in se.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        v.check(&format!("spec.addresses[{i}]"), validate_subnet(a));
    }
    let resolution = se.resolution.unwrap_or(Resolution::None);
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        v.err(
            "spec.addresses",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if !names.insert(p.name.as_str()) {
            v.err(
                format!("{f}.name"),
                format!("service entry port name {:?} already defined", p.name),
            );
        }
        if !numbers.insert(p.number) {
            v.err(
                format!("{f}.number"),
                format!("service entry port {} already defined", p.number),
            );
        }
        if p.target_port != 0 {
            v.check(&format!("{f}.targetPort"), validate_port(p.target_port));
        }
        if se.addresses.is_empty() && (p.protocol.is_empty() || p.protocol == "TCP") {
            v.warn(
                &f,
                "addresses are required for ports serving TCP (or unset) protocol",
            );
        }
        if !host::is_dns1123_label(&p.name) {
            v.err(format!("{f}.name"), format!("invalid port name: {}", p.name));
        }
        if !p.protocol.is_empty() && !known_protocol(&p.protocol) {
            v.err(
                format!("{f}.protocol"),
                format!("unsupported protocol: {}", p.protocol),
            );
        }
        v.check(&format!("{f}.number"), validate_port(p.number));
    }
    match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                v.err(
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
        }
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => {
            if resolution != Resolution::Static && se.endpoints.is_empty() {
                for (i, h) in se.hosts.iter().enumerate() {
                    if host::validate_fqdn(h).is_err() {
                        v.err(
                            format!("spec.hosts[{i}]"),
                            format!("hosts must be FQDN if no endpoints are provided for resolution mode {resolution:?}"),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                v.err(
                    "spec.endpoints",
                    "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
                );
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                let f = format!("spec.endpoints[{i}]");
                let ip = e.address.parse::<std::net::IpAddr>().is_ok();
                if resolution == Resolution::Static && !ip && !e.address.starts_with("unix://") {
                    v.err(
                        format!("{f}.address"),
                        format!("{:?} is not a valid IP address", e.address),
                    );
                } else if resolution != Resolution::Static && !ip && host::validate_fqdn(&e.address).is_err()
                {
                    v.err(
                        format!("{f}.address"),
                        format!(
                            "endpoint address {:?} is not a valid FQDN or an IP address",
                            e.address
                        ),
                    );
                }
                labels(v, &format!("{f}.labels"), &e.labels);
                for (name, port) in &e.ports {
                    if !names.contains(name.as_str()) {
                        v.err(
                            format!("{f}.ports.{name}"),
                            format!("endpoint port {port} is not defined by the service entry"),
                        );
                    }
                    v.check(&format!("{f}.ports.{name}"), validate_port(*port));
                }
            }
        }
    }
    if resolution != Resolution::None && se.hosts.len() > 1 {
        if let Some(p) = se
            .ports
            .iter()
            .find(|p| !is_http_protocol(&p.protocol) && !is_tls_protocol(&p.protocol))
        {
            v.err(
                "spec.ports",
                format!(
                    "multiple hosts provided with non-HTTP, non-TLS ports (port {})",
                    p.number
                ),
            );
        }
    }
    export_to(v, "spec.exportTo", namespace, &se.export_to);
}

// === Sidecar ===

fn sidecar(v: &mut V, sc: &Sidecar, namespace: &str) {
    if let Some(ws) = &sc.workload_selector {
        if ws.labels.is_empty() {
            v.warn(
                "spec.workloadSelector",
                "sidecar: workload selector without labels, will be applied to all services in namespace",
            );
        }
        labels(v, "spec.workloadSelector.labels", &ws.labels);
    }
    if sc.egress.is_empty() && sc.ingress.is_empty() && sc.outbound_traffic_policy.is_none() {
        v.err("spec", "sidecar: empty configuration provided");
        return;
    }
    let mut ports = BTreeSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        let Some(p) = &ing.port else {
            v.err(
                format!("{f}.port"),
                "sidecar: port is required for ingress listeners",
            );
            continue;
        };
        sidecar_port(v, &format!("{f}.port"), p, true);
        if !ports.insert(p.number) {
            v.err(
                format!("{f}.port"),
                "sidecar: ports on IP bound listeners must be unique",
            );
        }
    }
    let mut ports = BTreeSet::new();
    let mut catch_all = false;
    for (i, e) in sc.egress.iter().enumerate() {
        let f = format!("spec.egress[{i}]");
        match &e.port {
            None => {
                if catch_all {
                    v.err(&f, "sidecar: egress can have only one listener with empty port");
                    continue;
                }
                if i == sc.egress.len() - 1 {
                    catch_all = true;
                } else {
                    v.err(&f, "sidecar: the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(p) => {
                sidecar_port(v, &format!("{f}.port"), p, p.number != 0);
                if p.number != 0 && !ports.insert(p.number) {
                    v.err(
                        format!("{f}.port"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        if e.hosts.is_empty() {
            v.err(
                format!("{f}.hosts"),
                "sidecar: egress listener must contain at least one host",
            );
        }
        let mut by_ns: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (j, h) in e.hosts.iter().enumerate() {
            let hf = format!("{f}.hosts[{j}]");
            if let Some((ns, svc)) = h.split_once('/') {
                let ns = if ns == "." {
                    namespace.to_owned()
                } else {
                    ns.to_owned()
                };
                let set = by_ns.entry(ns).or_default();
                if (svc != "*" && (set.contains(svc) || set.contains("*"))) || (svc == "*" && !set.is_empty())
                {
                    v.warn(&hf, format!("duplicated egress host: {h}"));
                }
                set.insert(svc);
            }
            namespace_slash_host(v, &hf, h, false);
        }
        if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
            v.warn(
                format!("{f}.hosts"),
                "`*/*` host select all resources, no other hosts can be added",
            );
        }
    }
    if let Some(tp) = &sc.outbound_traffic_policy {
        if let Some(ep) = &tp.egress_proxy {
            if tp.mode.unwrap_or_default() != OutboundMode::AllowAny {
                v.err(
                    "spec.outboundTrafficPolicy",
                    "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
                );
            } else {
                v.check(
                    "spec.outboundTrafficPolicy.egressProxy.host",
                    host::validate_fqdn(&ep.host),
                );
                if ep.port.is_none() {
                    v.err(
                        "spec.outboundTrafficPolicy.egressProxy.port",
                        "sidecar: egress_proxy port must be non-nil",
                    );
                }
                destination(v, "spec.outboundTrafficPolicy.egressProxy", ep);
            }
        }
    }
}

fn sidecar_port(v: &mut V, f: &str, p: &Port, numbered: bool) {
    if !p.name.is_empty() && !host::is_dns1123_label(&p.name) {
        v.err(format!("{f}.name"), format!("invalid port name: {}", p.name));
    }
    if !p.protocol.is_empty() && !known_protocol(&p.protocol) {
        v.err(
            format!("{f}.protocol"),
            format!("unsupported protocol: {}", p.protocol),
        );
    }
    if numbered {
        v.check(&format!("{f}.number"), validate_port(p.number));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: &str, yaml: &str) -> Vec<Finding> {
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        match crate::parse(kind, "ns", "name", value) {
            Ok(Some(p)) => p.warnings,
            Ok(None) => panic!("not parsed"),
            Err(e) => e,
        }
    }

    fn has(f: &[Finding], field: &str, text: &str) -> bool {
        f.iter().any(|x| x.field == field && x.message.contains(text))
    }

    #[test]
    fn virtual_service_rules() {
        let f = check(
            "VirtualService",
            "hosts: [a]\nhttp:\n- match: [{uri: {regex: 'a(b'}}]\n  route: [{destination: {host: a}}]\n",
        );
        assert!(
            has(&f, "spec.http[0].match[0].uri.regex", "not a valid RE2 regex"),
            "{f:?}"
        );
        let f = check(
            "VirtualService",
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a, subset: v1}, weight: 90}, {destination: {host: a, subset: v2}, weight: 20}]\n",
        );
        assert!(
            has(&f, "spec.http[0].route", "total destination weight 110 != 100"),
            "{f:?}"
        );
        assert_eq!(f[0].level, Level::Warning);
        let f = check("VirtualService", "hosts: [a]\nhttp:\n- route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]\n");
        assert!(
            has(&f, "spec.http[0].route", "total destination weight = 0"),
            "{f:?}"
        );
        let f = check(
            "VirtualService",
            "hosts: ['*']\nhttp: [{route: [{destination: {host: a}}]}]\n",
        );
        assert!(
            has(&f, "spec.hosts[0]", "wildcard host * is not allowed"),
            "{f:?}"
        );
        let f = check(
            "VirtualService",
            "hosts: [a, a]\nhttp: [{route: [{destination: {host: a}}]}]\n",
        );
        assert!(has(&f, "spec.hosts[1]", "duplicate hosts"), "{f:?}");
        let f = check("VirtualService", "hosts: [a]\n");
        assert!(has(&f, "spec", "http, tcp or tls must be provided"), "{f:?}");
        let f = check(
            "VirtualService",
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  redirect: {uri: /x}\n  retries: {attempts: 2, retryOn: 'bogus,503'}\n  fault: {abort: {httpStatus: 700}}\n",
        );
        assert!(has(&f, "spec.http[0]", "both route and redirect"), "{f:?}");
        assert!(
            has(
                &f,
                "spec.http[0].retries.retryOn",
                "\"bogus\" is not a valid retryOn policy"
            ),
            "{f:?}"
        );
        assert!(
            has(&f, "spec.http[0].fault.abort.httpStatus", "HTTP status 700"),
            "{f:?}"
        );
        let f = check(
            "VirtualService",
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n- route: [{destination: {host: b}}]\n",
        );
        assert!(
            f.iter().any(|x| x.code == code::VIRTUAL_SERVICE_UNREACHABLE_RULE),
            "{f:?}"
        );
        let f = check(
            "VirtualService",
            "hosts: [a]\nhttp:\n- timeout: 0.5ms\n  route: [{destination: {host: a}}]\n",
        );
        assert!(has(&f, "spec.http[0].timeout", "greater than 1ms"), "{f:?}");
        let f = check(
            "VirtualService",
            "hosts: [x.example.com]\ntls:\n- match: [{sniHosts: [y.example.com]}]\n  route: [{destination: {host: a}}]\n",
        );
        assert!(
            has(&f, "spec.tls[0].match[0].sniHosts[0]", "not a compatible subset"),
            "{f:?}"
        );
    }

    #[test]
    fn destination_rule_rules() {
        let f = check(
            "DestinationRule",
            "host: a\nsubsets: [{name: v1, labels: {version: v1}}, {name: V_1}]\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}\n",
        );
        assert!(has(&f, "spec.subsets[1].name", "subset name is invalid"), "{f:?}");
        assert!(
            has(
                &f,
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                "150"
            ),
            "{f:?}"
        );
        let f = check("DestinationRule", "host: a\ntrafficPolicy: {}\n");
        assert!(has(&f, "spec.trafficPolicy", "at least one field"), "{f:?}");
        let f = check(
            "DestinationRule",
            "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: c}}}}\n",
        );
        assert!(
            has(
                &f,
                "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
                "ttl required"
            ),
            "{f:?}"
        );
    }

    #[test]
    fn gateway_rules() {
        let f = check(
            "Gateway",
            "selector: {istio: ingressgateway}\nservers:\n- {hosts: [a.example.com], port: {name: https, number: 443, protocol: HTTPS}}\n\
             - {hosts: [a.example.com], port: {name: https, number: 443, protocol: HTTPS}, tls: {mode: SIMPLE, credentialName: c}}\n\
             - {hosts: [b], port: {name: http, number: 80, protocol: HTTP}}\n",
        );
        assert!(has(&f, "spec.servers[0].tls", "must have TLS settings"), "{f:?}");
        assert!(
            has(&f, "spec.servers[1].port.name", "duplicate name https"),
            "{f:?}"
        );
        assert!(has(&f, "spec.servers[2].hosts[0]", "short names"), "{f:?}");
        let f = check(
            "Gateway",
            "servers:\n- {hosts: [a.example.com], port: {name: a, number: 443, protocol: HTTPS}, tls: {mode: SIMPLE, credentialName: c}}\n\
             - {hosts: [a.example.com], port: {name: b, number: 443, protocol: HTTPS}, tls: {mode: SIMPLE, credentialName: d}}\n",
        );
        assert!(has(&f, "spec.servers[1].hosts", "duplicate host names"), "{f:?}");
    }

    #[test]
    fn service_entry_and_sidecar_rules() {
        let f = check("ServiceEntry", "hosts: [api.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}]\nresolution: NONE\nendpoints: [{address: 1.2.3.4}]\n");
        assert!(
            has(&f, "spec.endpoints", "no endpoints should be provided"),
            "{f:?}"
        );
        let f = check("ServiceEntry", "hosts: [api.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: example.com}]\n");
        assert!(
            has(&f, "spec.endpoints[0].address", "not a valid IP address"),
            "{f:?}"
        );
        let f = check("Sidecar", "egress: [{hosts: [foo]}]\n");
        assert!(has(&f, "spec.egress[0].hosts[0]", "namespace/dnsName"), "{f:?}");
        let f = check("Sidecar", "{}\n");
        assert!(has(&f, "spec", "empty configuration"), "{f:?}");
    }
}
