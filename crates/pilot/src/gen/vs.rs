//! VirtualService HTTP rules → Envoy routes, rule for rule from Istio 1.19's
//! `networking/core/v1alpha3/route/route.go` (`BuildHTTPRoutesForVirtualService`,
//! `translateRoute`, `TranslateRouteMatch`, `applyHTTPRouteDestination`) and
//! `route/retry/retry.go`. Sidecars and gateways share it; they differ in the listener port and the
//! gateway names a rule's `match.gateways` is checked against (`mesh`, or `ns/name`).

use std::collections::HashMap;

use api::networking::{
    ConsistentHashLb, CorsPolicy, Destination, Headers, HttpFaultInjection, HttpMatchRequest, HttpRedirect,
    HttpRetry, HttpRoute, HttpRouteDestination, StringMatch, VirtualService,
};
use base64::Engine as _;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::route::v3 as route;
use xds::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use xds::pb::envoy::extensions::filters::http::fault::v3 as fault;
use xds::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use xds::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use xds::pb::envoy::r#type::matcher::v3 as matcher;
use xds::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use xds::pb::google::protobuf::Duration;

use super::{any, bool_value, duration, secs, string_value, u32_value, Context};
use crate::istio::Resource;
use crate::snapshot::ServiceInfo;

/// The HTTP filter names per-route configuration is keyed by (`wellknown.Fault`).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// Istio's default retry policy (`retry.DefaultPolicy`, 1.19–1.23).
pub fn default_retry_policy() -> route::RetryPolicy {
    route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
        num_retries: u32_value(2),
        retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                    &PreviousHostsPredicate {},
                )),
            ),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

/// Istio's `retry.ConvertPolicy`: unset ⇒ the default; `attempts <= 0` ⇒ none; otherwise the
/// default with `num_retries`, `retryOn` (integers that are HTTP statuses become
/// `retriable_status_codes`, and `retriable-status-codes` is appended when missing),
/// `perTryTimeout` and `retryRemoteLocalities`.
pub fn retry_policy(policy: Option<&HttpRetry>) -> Option<route::RetryPolicy> {
    let Some(p) = policy else {
        return Some(default_retry_policy());
    };
    if p.attempts <= 0 {
        return None;
    }
    let mut out = default_retry_policy();
    out.num_retries = u32_value(p.attempts as u32);
    if !p.retry_on.is_empty() {
        let mut on = Vec::new();
        let mut codes = Vec::new();
        for part in p.retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part.parse::<i64>() {
                Ok(code) if api::validate::is_known_http_status(code) => codes.push(code as u32),
                _ => on.push(part),
            }
        }
        out.retry_on = on.join(",");
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            out.retry_on.push_str(",retriable-status-codes");
        }
        out.retriable_status_codes = codes;
    }
    if let Some(t) = p.per_try_timeout {
        out.per_try_timeout = Some(duration(t.0));
    }
    if p.retry_remote_localities == Some(true) {
        out.retry_priority = Some(route::retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(route::retry_policy::retry_priority::ConfigType::TypedConfig(any(
                &PreviousPrioritiesConfig { update_frequency: 2 },
            ))),
        });
    }
    Some(out)
}

/// What a rule is translated for.
pub struct Target<'a> {
    /// The listener (sidecar: service) port, or the gateway server's port number.
    pub port: u16,
    /// The gateway names a rule's `match.gateways` may name: `mesh` for sidecars, `ns/name` for a
    /// gateway's server.
    pub gateways: &'a [&'a str],
    /// A TLS-terminating server (redirects default to https).
    pub is_tls: bool,
}

fn string_matcher(m: &StringMatch) -> Option<matcher::StringMatcher> {
    let pattern = if let Some(e) = &m.exact {
        matcher::string_matcher::MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        matcher::string_matcher::MatchPattern::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        matcher::string_matcher::MatchPattern::SafeRegex(matcher::RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        })
    } else {
        return None;
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

/// `isCatchAllStringMatch`: unset or regex `*`.
fn catch_all_string(m: Option<&StringMatch>) -> bool {
    m.is_none_or(|m| m.regex.as_deref() == Some("*"))
}

#[allow(deprecated)]
fn header_matcher(name: &str, m: Option<&StringMatch>) -> route::HeaderMatcher {
    let mut out = route::HeaderMatcher {
        name: name.to_owned(),
        ..Default::default()
    };
    if catch_all_string(m) {
        out.header_match_specifier = Some(route::header_matcher::HeaderMatchSpecifier::PresentMatch(true));
    } else if let Some(sm) = m.and_then(string_matcher) {
        out.header_match_specifier = Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(sm));
    }
    out
}

/// Istio's `TranslateRouteMatch`.
pub fn route_match(m: Option<&HttpMatchRequest>) -> route::RouteMatch {
    let mut out = route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let Some(m) = m else { return out };
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, Some(sm)));
    }
    for (name, sm) in &m.without_headers {
        let mut h = header_matcher(name, Some(sm));
        h.invert_match = true;
        out.headers.push(h);
    }
    out.headers.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(uri) = &m.uri {
        if let Some(e) = &uri.exact {
            out.path_specifier = Some(route::route_match::PathSpecifier::Path(e.clone()));
        } else if let Some(p) = &uri.prefix {
            out.path_specifier = Some(route::route_match::PathSpecifier::Prefix(p.clone()));
        } else if let Some(r) = &uri.regex {
            out.path_specifier = Some(route::route_match::PathSpecifier::SafeRegex(
                matcher::RegexMatcher {
                    regex: r.clone(),
                    ..Default::default()
                },
            ));
        }
    }
    out.case_sensitive = bool_value(!m.ignore_uri_case);
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            out.headers.push(header_matcher(name, Some(sm)));
        }
    }
    for (name, sm) in &m.query_params {
        let spec = if catch_all_string(Some(sm)) {
            Some(route::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true))
        } else {
            string_matcher(sm).map(route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch)
        };
        out.query_parameters.push(route::QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: spec,
        });
    }
    out
}

/// `isCatchAllRoute`: matches every request (prefix `/` or regex `*`, no header or query match).
pub fn is_catch_all(r: &route::Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path = match &m.path_specifier {
        Some(route::route_match::PathSpecifier::Prefix(p)) => p == "/",
        Some(route::route_match::PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(route::route_match::PathSpecifier::SafeRegex(r)) => r.regex == "*",
        _ => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

/// `filter_metadata.istio.config` naming the VirtualService (what `proxy-config route` prints).
pub fn config_metadata(path: &str) -> Option<core::Metadata> {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("config".to_owned(), string_value(path));
    Some(core::Metadata {
        filter_metadata: [(
            "istio".to_owned(),
            xds::pb::google::protobuf::Struct {
                fields: fields.into_iter().collect(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    })
}

fn header_options(
    map: &std::collections::BTreeMap<String, String>,
    append: bool,
) -> (Vec<core::HeaderValueOption>, String) {
    let mut authority = String::new();
    let mut out = Vec::new();
    for (k, v) in map {
        if k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host") {
            authority = v.clone();
        }
        if k.starts_with(':') || k.eq_ignore_ascii_case("host") {
            continue;
        }
        out.push(core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: if append {
                core::header_value_option::HeaderAppendAction::AppendIfExistsOrAdd as i32
            } else {
                core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            },
            ..Default::default()
        });
    }
    (out, authority)
}

/// Istio's `TranslateHeadersOperations`: `set` (overwrite) then `add` (append), each sorted by
/// name; `:`-prefixed names and `host` dropped, their value becoming the authority rewrite.
#[derive(Default)]
pub struct HeaderOps {
    pub request_add: Vec<core::HeaderValueOption>,
    pub response_add: Vec<core::HeaderValueOption>,
    pub request_remove: Vec<String>,
    pub response_remove: Vec<String>,
    pub authority: String,
}

pub fn header_ops(h: &Headers) -> HeaderOps {
    let empty = Default::default();
    let req = h.request.as_ref().unwrap_or(&empty);
    let resp = h.response.as_ref().unwrap_or(&empty);
    let (mut request_add, set_auth) = header_options(&req.set, false);
    let (add, add_auth) = header_options(&req.add, true);
    request_add.extend(add);
    let (mut response_add, _) = header_options(&resp.set, false);
    response_add.extend(header_options(&resp.add, true).0);
    let keep = |l: &Vec<String>| -> Vec<String> {
        l.iter()
            .filter(|k| !k.starts_with(':') && !k.eq_ignore_ascii_case("host"))
            .cloned()
            .collect()
    };
    HeaderOps {
        request_add,
        response_add,
        request_remove: keep(&req.remove),
        response_remove: keep(&resp.remove),
        authority: if set_auth.is_empty() { add_auth } else { set_auth },
    }
}

fn percent_million(v: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (v * 10_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

fn percent_hundred(v: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: v,
        denominator: DenominatorType::Hundred as i32,
    }
}

/// Istio's `TranslateFault` (exponential delays and HTTP/2 errors are refused by validation).
pub fn fault_config(f: &HttpFaultInjection) -> Option<fault::HttpFault> {
    let mut out = fault::HttpFault::default();
    if let Some(d) = &f.delay {
        if let Some(fixed) = d.fixed_delay {
            out.delay = Some(common_fault::FaultDelay {
                percentage: Some(match &d.percentage {
                    Some(p) => percent_million(p.value),
                    None => percent_hundred(d.percent.unwrap_or(0).max(0) as u32),
                }),
                fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                    duration(fixed.0),
                )),
            });
        }
    }
    if let Some(a) = &f.abort {
        let error_type = if let Some(s) = a.http_status {
            Some(fault::fault_abort::ErrorType::HttpStatus(s as u32))
        } else {
            a.grpc_status
                .as_deref()
                .and_then(api::validate::grpc_status)
                .map(fault::fault_abort::ErrorType::GrpcStatus)
        };
        if error_type.is_some() {
            out.abort = Some(fault::FaultAbort {
                percentage: a.percentage.map(|p| percent_million(p.value)),
                error_type,
                ..Default::default()
            });
        }
    }
    (out.delay.is_some() || out.abort.is_some()).then_some(out)
}

/// Istio 1.19's `TranslateCORSPolicy`: the route's `cors` (Envoy's CORS filter reads it).
#[allow(deprecated)]
pub fn cors_policy(c: &CorsPolicy) -> route::CorsPolicy {
    let mut origins: Vec<matcher::StringMatcher> =
        c.allow_origins.iter().filter_map(string_matcher).collect();
    if c.allow_origins.is_empty() {
        origins = c
            .allow_origin
            .iter()
            .map(|o| matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(o.clone())),
                ..Default::default()
            })
            .collect();
    }
    route::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c.max_age.map(|a| a.0.as_secs().to_string()).unwrap_or_default(),
        allow_credentials: c
            .allow_credentials
            .map(|v| xds::pb::google::protobuf::BoolValue { value: v }),
        enabled_specifier: Some(route::cors_policy::EnabledSpecifier::FilterEnabled(
            core::RuntimeFractionalPercent {
                default_value: Some(percent_hundred(100)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// Istio's `consistentHashToHashPolicy`.
pub fn hash_policy(ch: &ConsistentHashLb) -> Option<route::route_action::HashPolicy> {
    use route::route_action::hash_policy::{self as hp, PolicySpecifier};
    let spec = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(hp::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(hp::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| duration(t.0)),
            path: c.path.clone(),
            ..Default::default()
        })
    } else if let Some(ip) = ch.use_source_ip {
        PolicySpecifier::ConnectionProperties(hp::ConnectionProperties { source_ip: ip })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hp::QueryParameter { name: q.clone() })
    } else {
        return None;
    };
    Some(route::route_action::HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    })
}

/// Istio's `hashForHTTPDestination`: the consistent hash of the DestinationRule for the
/// destination (subset's port-level, subset's, top-level port-level, then top-level).
pub fn destination_hash(ctx: &Context<'_>, d: &Destination) -> Option<ConsistentHashLb> {
    let dr = ctx.destination_rule(&d.host)?;
    let tp = dr.spec.traffic_policy.as_ref();
    let pls_hash = |pls: &[api::networking::PortTrafficPolicy]| {
        let port = d.port.as_ref()?.number;
        pls.iter()
            .find(|p| p.port.as_ref().map(|p| p.number) == Some(port))
            .and_then(|p| p.load_balancer.as_ref()?.consistent_hash.clone())
    };
    let top = tp.and_then(|t| t.load_balancer.as_ref()?.consistent_hash.clone());
    let top_pls = tp.and_then(|t| pls_hash(&t.port_level_settings));
    let subset = dr.spec.subsets.iter().find(|s| s.name == d.subset);
    let sub_tp = subset.and_then(|s| s.traffic_policy.as_ref());
    let sub = sub_tp.and_then(|t| t.load_balancer.as_ref()?.consistent_hash.clone());
    let sub_pls = sub_tp.and_then(|t| pls_hash(&t.port_level_settings));
    sub_pls.or(sub).or(top_pls).or(top)
}

/// Istio's `GetDestinationCluster`: `outbound|PORT|SUBSET|HOST` with the destination's port, else
/// the Service's only port, else the listener port.
pub fn destination_cluster(d: &Destination, svc: Option<&ServiceInfo>, listener_port: u16) -> String {
    if d.host.is_empty() {
        return "UnknownService".into();
    }
    let port = match (&d.port, svc) {
        (Some(p), _) => p.number,
        (None, Some(s)) if s.ports.len() == 1 => u32::from(s.ports[0].port),
        _ => u32::from(listener_port),
    };
    format!("outbound|{port}|{}|{}", d.subset, d.host)
}

fn match_applies(ctx: &Context<'_>, m: Option<&HttpMatchRequest>, t: &Target<'_>) -> bool {
    let Some(m) = m else { return true };
    if m.port != 0 && m.port != u32::from(t.port) {
        return false;
    }
    // Istio's `sourceMatchHTTP`.
    if !m.gateways.is_empty() {
        return m.gateways.iter().any(|g| t.gateways.contains(&g.as_str()));
    }
    let labels = ctx.labels();
    m.source_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && (m.source_namespace.is_empty() || m.source_namespace == ctx.proxy.namespace)
}

/// Istio's `GetRouteOperation` (the tracing decorator).
fn operation(r: &route::Route, vs_name: &str, port: u16) -> String {
    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(route::route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(route::route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(route::route_match::PathSpecifier::SafeRegex(re)) => re.regex.clone(),
        _ => "/*".into(),
    };
    if let Some(route::route::Action::Route(a)) = &r.action {
        if let Some(route::route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier {
            let parts: Vec<&str> = c.split('|').collect();
            if let [_, p, _, h] = parts.as_slice() {
                if p.parse::<u16>().is_ok() {
                    return format!("{h}:{p}{path}");
                }
            }
        }
    }
    format!("{vs_name}:{port}{path}")
}

fn no_timeout() -> Option<Duration> {
    Some(secs(0))
}

/// Istio's `ApplyRedirect`.
fn redirect(r: &HttpRedirect, port: u16, is_tls: bool) -> Option<route::route::Action> {
    use route::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let mut action = route::RedirectAction {
        host_redirect: r.authority.clone(),
        path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect(r.uri.clone())),
        ..Default::default()
    };
    if !r.scheme.is_empty() {
        action.scheme_rewrite_specifier = Some(SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone()));
    }
    if r.port.is_some() || r.derive_port.is_some() {
        action.port_redirect = match (r.port, r.derive_port) {
            (Some(p), _) => p,
            (None, Some(api::networking::DerivePort::FromRequestPort)) => u32::from(port),
            _ => 0,
        };
        let scheme = if !r.scheme.is_empty() {
            r.scheme.as_str()
        } else if is_tls {
            "https"
        } else {
            "http"
        };
        if (action.port_redirect == 80 && scheme == "http")
            || (action.port_redirect == 443 && scheme == "https")
        {
            action.port_redirect = 0;
        }
    }
    action.response_code = match r.redirect_code {
        0 | 301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        _ => return None,
    } as i32;
    Some(route::route::Action::Redirect(action))
}

fn direct_response(status: u32, body: Option<&api::networking::HttpBody>) -> route::route::Action {
    let body = body.and_then(|b| {
        let specifier = if let Some(s) = &b.string {
            core::data_source::Specifier::InlineString(s.clone())
        } else {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.bytes.as_deref()?)
                .ok()?;
            core::data_source::Specifier::InlineBytes(bytes)
        };
        Some(core::DataSource {
            specifier: Some(specifier),
            ..Default::default()
        })
    });
    route::route::Action::DirectResponse(route::DirectResponseAction {
        status,
        body,
        ..Default::default()
    })
}

/// Istio's `applyHTTPRouteDestination`.
#[allow(deprecated)]
fn route_action(ctx: &Context<'_>, out: &mut route::Route, http: &HttpRoute, authority: String, port: u16) {
    let mesh_default = ctx.mesh.default_http_retry_policy.as_ref();
    let mut action = route::RouteAction {
        cors: http.cors_policy.as_ref().map(cors_policy),
        retry_policy: retry_policy(http.retries.as_ref().or(mesh_default)),
        timeout: http.timeout.map(|t| duration(t.0)).or_else(no_timeout),
        ..Default::default()
    };
    action.max_grpc_timeout = match &action.timeout {
        Some(t) if t.seconds == 0 && t.nanos == 0 => no_timeout(),
        other => *other,
    };
    let mut authority = authority;
    if let Some(rw) = &http.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                pattern: Some(matcher::RegexMatcher {
                    regex: rr.pattern.clone(),
                    ..Default::default()
                }),
                substitution: rr.rewrite.clone(),
            });
        } else if !rw.uri.is_empty() {
            action.prefix_rewrite = rw.uri.clone();
        }
        if !rw.authority.is_empty() {
            authority = rw.authority.clone();
        }
    }
    if !authority.is_empty() {
        action.host_rewrite_specifier = Some(route::route_action::HostRewriteSpecifier::HostRewriteLiteral(
            authority,
        ));
    }
    if let Some(m) = &http.mirror {
        let fraction = match (&http.mirror_percentage, http.mirror_percent) {
            (Some(p), _) if p.value > 0.0 => Some(percent_million(p.value)),
            (Some(_), _) => None,
            (None, Some(p)) if p > 0 => Some(percent_hundred(p)),
            (None, Some(_)) => None,
            (None, None) => Some(percent_hundred(100)),
        };
        if let Some(f) = fraction {
            action.request_mirror_policies = vec![route::route_action::RequestMirrorPolicy {
                cluster: destination_cluster(m, ctx.service(&m.host).map(|s| &**s), port),
                runtime_fraction: Some(core::RuntimeFractionalPercent {
                    default_value: Some(f),
                    ..Default::default()
                }),
                trace_sampled: bool_value(false),
                ..Default::default()
            }];
        }
    }
    let hash = |d: &HttpRouteDestination| {
        d.destination
            .as_ref()
            .and_then(|dst| destination_hash(ctx, dst))
            .and_then(|h| hash_policy(&h))
    };
    let cluster_of = |d: &HttpRouteDestination| {
        let dst = d.destination.clone().unwrap_or_default();
        destination_cluster(&dst, ctx.service(&dst.host).map(|s| &**s), port)
    };
    if http.route.len() == 1 {
        let d = &http.route[0];
        action.cluster_specifier = Some(route::route_action::ClusterSpecifier::Cluster(cluster_of(d)));
        if let Some(h) = &d.headers {
            let ops = header_ops(h);
            out.request_headers_to_add.extend(ops.request_add);
            out.request_headers_to_remove.extend(ops.request_remove);
            out.response_headers_to_add.extend(ops.response_add);
            out.response_headers_to_remove.extend(ops.response_remove);
            if !ops.authority.is_empty() && action.host_rewrite_specifier.is_none() {
                action.host_rewrite_specifier = Some(
                    route::route_action::HostRewriteSpecifier::HostRewriteLiteral(ops.authority),
                );
            }
        }
        action.hash_policy.extend(hash(d));
    } else {
        let mut clusters = Vec::new();
        for d in http.route.iter().filter(|d| d.weight != 0) {
            let mut cw = route::weighted_cluster::ClusterWeight {
                name: cluster_of(d),
                weight: u32_value(d.weight as u32),
                ..Default::default()
            };
            if let Some(h) = &d.headers {
                let ops = header_ops(h);
                cw.request_headers_to_add = ops.request_add;
                cw.request_headers_to_remove = ops.request_remove;
                cw.response_headers_to_add = ops.response_add;
                cw.response_headers_to_remove = ops.response_remove;
                if !ops.authority.is_empty() {
                    cw.host_rewrite_specifier = Some(
                        route::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                            ops.authority,
                        ),
                    );
                }
            }
            action.hash_policy.extend(hash(d));
            clusters.push(cw);
        }
        action.cluster_specifier = Some(route::route_action::ClusterSpecifier::WeightedClusters(
            route::WeightedCluster {
                clusters,
                ..Default::default()
            },
        ));
    }
    out.action = Some(route::route::Action::Route(action));
}

/// Istio's `translateRoute`: one Envoy route for one rule and one of its matches (or none).
fn translate(
    ctx: &Context<'_>,
    vs: &Resource<VirtualService>,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    t: &Target<'_>,
) -> Option<route::Route> {
    if !match_applies(ctx, m, t) {
        return None;
    }
    let mut name = http.name.clone();
    if let Some(mn) = m.map(|m| &m.name).filter(|n| !n.is_empty()) {
        name = format!("{name}.{mn}");
    }
    let mut out = route::Route {
        name,
        r#match: Some(route_match(m)),
        metadata: config_metadata(&vs.config_path("virtual-service")),
        stat_prefix: m.map(|m| m.stat_prefix.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut authority = String::new();
    if let Some(h) = &http.headers {
        let ops = header_ops(h);
        out.request_headers_to_add = ops.request_add;
        out.response_headers_to_add = ops.response_add;
        out.request_headers_to_remove = ops.request_remove;
        out.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }
    if let Some(r) = &http.redirect {
        out.action = redirect(r, t.port, t.is_tls);
    } else if let Some(d) = &http.direct_response {
        out.action = Some(direct_response(d.status, d.body.as_ref()));
    } else {
        route_action(ctx, &mut out, http, authority, t.port);
    }
    out.decorator = Some(route::Decorator {
        operation: operation(&out, &vs.name, t.port),
        ..Default::default()
    });
    if let Some(f) = http.fault.as_ref().and_then(fault_config) {
        let mut per_filter = HashMap::new();
        per_filter.insert(FAULT_FILTER.to_owned(), any(&f));
        out.typed_per_filter_config = per_filter;
    }
    Some(out)
}

/// Istio's `BuildHTTPRoutesForVirtualService`: the routes of every rule in order, stopping after
/// the first rule without matches or the first catch-all match. `None` when no rule applies here.
pub fn http_routes(
    ctx: &Context<'_>,
    vs: &Resource<VirtualService>,
    t: &Target<'_>,
) -> Option<Vec<route::Route>> {
    let mut out = Vec::new();
    for http in &vs.spec.http {
        if http.delegate.is_some() {
            continue;
        }
        let mut catch_all = false;
        if http.matches.is_empty() {
            out.extend(translate(ctx, vs, http, None, t));
            catch_all = true;
        } else {
            for m in &http.matches {
                if let Some(r) = translate(ctx, vs, http, Some(m), t) {
                    let all = is_catch_all(&r);
                    out.push(r);
                    if all {
                        catch_all = true;
                        break;
                    }
                }
            }
        }
        if catch_all {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Istio's `BuildDefaultHTTPOutboundRoute` (a Service without a VirtualService), with the hash
/// policy of its DestinationRule's consistent hash.
#[allow(deprecated)]
pub fn default_route(
    ctx: &Context<'_>,
    cluster: String,
    operation: String,
    hash: Option<&ConsistentHashLb>,
) -> route::Route {
    route::Route {
        name: "default".into(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: no_timeout(),
            retry_policy: retry_policy(ctx.mesh.default_http_retry_policy.as_ref()),
            max_grpc_timeout: no_timeout(),
            hash_policy: hash.and_then(hash_policy).into_iter().collect(),
            ..Default::default()
        })),
        decorator: Some(route::Decorator {
            operation,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The consistent hash a Service's port gets from its DestinationRule (`hashForService`).
pub fn service_hash(ctx: &Context<'_>, svc: &ServiceInfo, port: u16) -> Option<ConsistentHashLb> {
    let dr = ctx.destination_rule(&svc.hostname)?;
    let tp = dr.spec.traffic_policy.as_ref()?;
    let mut hash = tp.load_balancer.as_ref().and_then(|l| l.consistent_hash.clone());
    if let Some(p) = tp
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().map(|p| p.number) == Some(u32::from(port)))
    {
        if let Some(h) = p.load_balancer.as_ref().and_then(|l| l.consistent_hash.clone()) {
            hash = Some(h);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conversion_follows_istio() {
        let p = retry_policy(Some(&HttpRetry {
            attempts: 3,
            per_try_timeout: Some(api::duration::GoDuration(std::time::Duration::from_secs(2))),
            ..Default::default()
        }))
        .unwrap_or_default();
        assert_eq!(p.num_retries.map(|v| v.value), Some(3));
        assert_eq!(p.retry_on, default_retry_policy().retry_on);
        assert_eq!(p.retriable_status_codes, [503]);
        assert_eq!(p.per_try_timeout.map(|d| d.seconds), Some(2));
        let p = retry_policy(Some(&HttpRetry {
            attempts: 1,
            retry_on: "gateway-error,500,502".into(),
            ..Default::default()
        }))
        .unwrap_or_default();
        assert_eq!(p.retry_on, "gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, [500, 502]);
        assert!(
            retry_policy(Some(&HttpRetry::default())).is_none(),
            "attempts 0 disables retries"
        );
    }

    #[test]
    fn fault_percentages() {
        let f = fault_config(&HttpFaultInjection {
            abort: Some(api::networking::FaultAbort {
                http_status: Some(500),
                percentage: Some(api::networking::Percent { value: 80.0 }),
                ..Default::default()
            }),
            delay: Some(api::networking::FaultDelay {
                fixed_delay: Some(api::duration::GoDuration(std::time::Duration::from_secs(6))),
                percent: Some(100),
                ..Default::default()
            }),
        })
        .unwrap_or_default();
        let abort = f.abort.unwrap_or_default();
        assert_eq!(
            abort.percentage.map(|p| (p.numerator, p.denominator)),
            Some((800_000, 2))
        );
        assert_eq!(
            abort.error_type,
            Some(fault::fault_abort::ErrorType::HttpStatus(500))
        );
        let delay = f.delay.unwrap_or_default();
        assert_eq!(
            delay.percentage.map(|p| (p.numerator, p.denominator)),
            Some((100, 0))
        );
    }

    #[test]
    fn matches_translate_as_istio() {
        let m: HttpMatchRequest = serde_json::from_value(serde_json::json!({
            "uri": {"prefix": "/api"}, "ignoreUriCase": true, "method": {"exact": "GET"},
            "headers": {"x-b": {"regex": "*"}, "x-a": {"exact": "1"}},
            "withoutHeaders": {"x-c": {"prefix": "no"}},
            "queryParams": {"q": {"exact": "v"}}
        }))
        .unwrap_or_default();
        let rm = route_match(Some(&m));
        assert_eq!(
            rm.path_specifier,
            Some(route::route_match::PathSpecifier::Prefix("/api".into()))
        );
        assert_eq!(rm.case_sensitive.map(|b| b.value), Some(false));
        let names: Vec<&str> = rm.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-a", "x-b", "x-c", ":method"]);
        assert_eq!(
            rm.headers[1].header_match_specifier,
            Some(route::header_matcher::HeaderMatchSpecifier::PresentMatch(true))
        );
        assert!(rm.headers[2].invert_match);
        assert_eq!(rm.query_parameters[0].name, "q");
        assert!(route_match(None).case_sensitive.is_none());
    }

    #[test]
    fn destination_clusters() {
        let d = |host: &str, subset: &str, port: Option<u32>| Destination {
            host: host.into(),
            subset: subset.into(),
            port: port.map(|number| api::networking::PortSelector { number }),
        };
        assert_eq!(
            destination_cluster(&d("a.b.svc.cluster.local", "v1", None), None, 80),
            "outbound|80|v1|a.b.svc.cluster.local"
        );
        assert_eq!(
            destination_cluster(&d("x", "", Some(8080)), None, 80),
            "outbound|8080||x"
        );
        assert_eq!(destination_cluster(&d("", "", None), None, 80), "UnknownService");
    }
}
