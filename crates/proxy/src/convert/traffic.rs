//! Traffic-management protos → model: fault injection, CORS, mirroring, hash policies,
//! per-filter overrides (`typed_per_filter_config`), outlier detection and DNS resolution
//! settings — the fields Istio emits for VirtualService / DestinationRule / ServiceEntry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use xds::pb::envoy::config::cluster::v3 as cluster;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::route::v3 as route;
use xds::pb::envoy::extensions::filters::http::cors::v3 as cors_filter;
use xds::pb::envoy::extensions::filters::http::fault::v3 as fault_filter;
use xds::pb::envoy::extensions::network::dns_resolver::cares::v3 as cares;
use xds::pb::envoy::r#type::v3::FractionalPercent;
use xds::pb::google::protobuf::Any;

use super::{
    decode, header_name, opt_duration, socket, string_matcher, u32_value, unanchored_regex, ConfigError, Ctx,
};
use crate::model::*;

pub const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const CORS_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const FILTER_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
const PREVIOUS_HOSTS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
const CARES_TYPE: &str =
    "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";
const GETADDRINFO_TYPE: &str =
    "type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig";

/// `FractionalPercent` as millionths. A numerator above its denominator means 100%, as in Envoy.
pub fn fractional(ctx: &Ctx<'_>, field: &str, p: &FractionalPercent) -> Result<Percent, ConfigError> {
    let per_million = match p.denominator {
        0 => u64::from(p.numerator) * 10_000,
        1 => u64::from(p.numerator) * 100,
        2 => u64::from(p.numerator),
        n => return Err(ctx.err(format!("{field}.denominator"), format!("unknown denominator {n}"))),
    };
    Ok(Percent(per_million.min(1_000_000) as u32))
}

/// `RuntimeFractionalPercent`: Skiff has no runtime, so the default value is the value.
fn runtime_fraction(
    ctx: &Ctx<'_>,
    field: &str,
    p: Option<&core::RuntimeFractionalPercent>,
    default: Percent,
) -> Result<Percent, ConfigError> {
    match p.and_then(|p| p.default_value.as_ref()) {
        Some(v) => fractional(ctx, &format!("{field}.default_value"), v),
        None => Ok(default),
    }
}

// === Fault injection ===

/// Converts `HTTPFault` (filter level or a per-route override).
pub fn fault(ctx: &mut Ctx<'_>, field: &str, f: &fault_filter::HttpFault) -> Result<Fault, ConfigError> {
    use fault_filter::fault_abort::ErrorType as E;
    use xds::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier as D;
    let zero = FractionalPercent::default();
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(D::FixedDelay(fixed)) => Some(FaultDelay {
                duration: super::duration(ctx, &format!("{field}.delay.fixed_delay"), fixed)?,
                // Envoy reads an unset percentage as 0%: no request is delayed.
                percent: fractional(
                    ctx,
                    &format!("{field}.delay.percentage"),
                    d.percentage.as_ref().unwrap_or(&zero),
                )?,
            }),
            Some(D::HeaderDelay(_)) => {
                ctx.unsupported(&format!("{field}.delay.header_delay"));
                None
            }
            None => {
                return Err(ctx.err(
                    format!("{field}.delay"),
                    "fixed_delay or header_delay is required",
                ))
            }
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let status = match a.error_type {
                Some(E::HttpStatus(s)) if (200..600).contains(&s) => AbortStatus::Http(s as u16),
                Some(E::HttpStatus(s)) => {
                    return Err(ctx.err(
                        format!("{field}.abort.http_status"),
                        format!("{s} is not in [200, 600)"),
                    ))
                }
                Some(E::GrpcStatus(s)) => AbortStatus::Grpc(s),
                Some(E::HeaderAbort(_)) => {
                    ctx.unsupported(&format!("{field}.abort.header_abort"));
                    return Ok(Fault {
                        delay,
                        ..Default::default()
                    });
                }
                None => {
                    return Err(ctx.err(
                        format!("{field}.abort"),
                        "http_status, grpc_status or header_abort is required",
                    ))
                }
            };
            if !a.response_body.is_empty() {
                ctx.unsupported(&format!("{field}.abort.response_body"));
            }
            Some(FaultAbort {
                status,
                percent: fractional(
                    ctx,
                    &format!("{field}.abort.percentage"),
                    a.percentage.as_ref().unwrap_or(&zero),
                )?,
            })
        }
    };
    let mut headers = Vec::with_capacity(f.headers.len());
    for (i, h) in f.headers.iter().enumerate() {
        headers.push(super::header_matcher(ctx, &format!("{field}.headers[{i}]"), h)?);
    }
    if f.response_rate_limit.is_some() {
        ctx.unsupported(&format!("{field}.response_rate_limit"));
    }
    if f.filter_metadata.is_some() {
        ctx.unsupported(&format!("{field}.filter_metadata"));
    }
    Ok(Fault {
        delay,
        abort,
        upstream_cluster: (!f.upstream_cluster.is_empty()).then(|| f.upstream_cluster.clone()),
        headers,
        downstream_nodes: f.downstream_nodes.clone(),
        max_active_faults: f.max_active_faults.as_ref().map(|v| u64::from(v.value)),
    })
}

// === CORS ===

/// The route-level and the filter-level CORS protos name the same fields alike; one reading.
macro_rules! cors_fields {
    ($c:expr) => {
        CorsFields {
            allow_methods: &$c.allow_methods,
            allow_headers: &$c.allow_headers,
            expose_headers: &$c.expose_headers,
            max_age: &$c.max_age,
            allow_credentials: $c.allow_credentials.map(|b| b.value),
            allow_private_network_access: $c.allow_private_network_access.map(|b| b.value),
            forward_not_matching_preflights: $c.forward_not_matching_preflights.map(|b| b.value),
        }
    };
}

/// The route-level `CorsPolicy` (deprecated `cors` fields of routes and virtual hosts; what
/// Istio 1.19 emits for `corsPolicy`).
pub fn route_cors(ctx: &Ctx<'_>, field: &str, c: &route::CorsPolicy) -> Result<CorsPolicy, ConfigError> {
    use route::cors_policy::EnabledSpecifier as E;
    let enabled = match &c.enabled_specifier {
        Some(E::FilterEnabled(f)) => {
            runtime_fraction(ctx, &format!("{field}.filter_enabled"), Some(f), Percent::ALL)?
        }
        None => Percent::ALL,
    };
    cors_common(
        ctx,
        field,
        &c.allow_origin_string_match,
        cors_fields!(c),
        enabled,
        c.shadow_enabled.as_ref(),
    )
}

/// The per-filter `envoy.extensions.filters.http.cors.v3.CorsPolicy`.
fn filter_cors(ctx: &Ctx<'_>, field: &str, c: &cors_filter::CorsPolicy) -> Result<CorsPolicy, ConfigError> {
    let enabled = runtime_fraction(
        ctx,
        &format!("{field}.filter_enabled"),
        c.filter_enabled.as_ref(),
        Percent::ALL,
    )?;
    cors_common(
        ctx,
        field,
        &c.allow_origin_string_match,
        cors_fields!(c),
        enabled,
        c.shadow_enabled.as_ref(),
    )
}

struct CorsFields<'a> {
    allow_methods: &'a str,
    allow_headers: &'a str,
    expose_headers: &'a str,
    max_age: &'a str,
    allow_credentials: Option<bool>,
    allow_private_network_access: Option<bool>,
    forward_not_matching_preflights: Option<bool>,
}

fn cors_common(
    ctx: &Ctx<'_>,
    field: &str,
    origins: &[xds::pb::envoy::r#type::matcher::v3::StringMatcher],
    f: CorsFields<'_>,
    enabled: Percent,
    shadow: Option<&core::RuntimeFractionalPercent>,
) -> Result<CorsPolicy, ConfigError> {
    let mut allow_origins = Vec::with_capacity(origins.len());
    for (i, o) in origins.iter().enumerate() {
        allow_origins.push(string_matcher(
            ctx,
            &format!("{field}.allow_origin_string_match[{i}]"),
            o,
        )?);
    }
    for (name, value) in [
        ("allow_methods", f.allow_methods),
        ("allow_headers", f.allow_headers),
        ("expose_headers", f.expose_headers),
        ("max_age", f.max_age),
    ] {
        if http::HeaderValue::from_str(value).is_err() {
            return Err(ctx.err(
                format!("{field}.{name}"),
                format!("{value:?} is not a valid header value"),
            ));
        }
    }
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: f.allow_methods.to_owned(),
        allow_headers: f.allow_headers.to_owned(),
        expose_headers: f.expose_headers.to_owned(),
        max_age: f.max_age.to_owned(),
        allow_credentials: f.allow_credentials,
        allow_private_network_access: f.allow_private_network_access,
        forward_not_matching_preflights: f.forward_not_matching_preflights,
        enabled,
        shadow: shadow
            .map(|s| runtime_fraction(ctx, &format!("{field}.shadow_enabled"), Some(s), Percent(0)))
            .transpose()?,
    })
}

// === Per-filter configuration ===

/// `typed_per_filter_config` of a route configuration, virtual host or route. Entries for
/// filters Skiff does not run are reported and ignored, as Envoy ignores overrides of absent
/// filters; a broken override of a filter Skiff runs rejects the resource.
pub fn per_filter(
    ctx: &mut Ctx<'_>,
    field: &str,
    map: &HashMap<String, Any>,
) -> Result<PerFilter, ConfigError> {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let f = format!("{field}[{name}]");
        if let Some(o) = filter_override(ctx, &f, &map[name])? {
            out.push((name.clone(), o));
        }
    }
    Ok(out)
}

fn filter_override(ctx: &mut Ctx<'_>, field: &str, any: &Any) -> Result<Option<FilterOverride>, ConfigError> {
    match any.type_url.as_str() {
        FAULT_TYPE => {
            let f: fault_filter::HttpFault = decode(ctx, field, any, FAULT_TYPE)?;
            Ok(Some(FilterOverride::Fault(Arc::new(fault(ctx, field, &f)?))))
        }
        CORS_POLICY_TYPE => {
            let c: cors_filter::CorsPolicy = decode(ctx, field, any, CORS_POLICY_TYPE)?;
            Ok(Some(FilterOverride::Cors(Arc::new(filter_cors(ctx, field, &c)?))))
        }
        FILTER_CONFIG_TYPE => {
            let fc: route::FilterConfig = decode(ctx, field, any, FILTER_CONFIG_TYPE)?;
            if fc.disabled {
                return Ok(Some(FilterOverride::Disabled));
            }
            match &fc.config {
                Some(inner) => filter_override(ctx, &format!("{field}.config"), inner),
                None => Ok(None),
            }
        }
        other => {
            ctx.warn(
                field,
                format!("per-filter config {other} is not supported by Skiff; ignored"),
            );
            Ok(None)
        }
    }
}

/// The most specific override for filter `name`: route, then virtual host, then route config.
pub fn most_specific<'a>(levels: [&'a PerFilter; 3], name: &str) -> Option<&'a FilterOverride> {
    levels
        .iter()
        .find_map(|level| level.iter().find(|(n, _)| n == name).map(|(_, o)| o))
}

// === Mirroring and hashing ===

pub fn mirrors(
    ctx: &mut Ctx<'_>,
    field: &str,
    policies: &[route::route_action::RequestMirrorPolicy],
) -> Result<Vec<MirrorPolicy>, ConfigError> {
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if p.cluster.is_empty() {
            if !p.cluster_header.is_empty() {
                ctx.unsupported(&format!("{f}.cluster_header"));
                continue;
            }
            return Err(ctx.err(format!("{f}.cluster"), "is required"));
        }
        out.push(MirrorPolicy {
            cluster: p.cluster.clone(),
            percent: runtime_fraction(
                ctx,
                &format!("{f}.runtime_fraction"),
                p.runtime_fraction.as_ref(),
                Percent::ALL,
            )?,
            keep_host: p.disable_shadow_host_suffix_append,
        });
    }
    Ok(out)
}

pub fn hash_policies(
    ctx: &mut Ctx<'_>,
    field: &str,
    policies: &[route::route_action::HashPolicy],
) -> Result<Vec<HashPolicy>, ConfigError> {
    use route::route_action::hash_policy::PolicySpecifier as P;
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let kind = match &p.policy_specifier {
            Some(P::Header(h)) => HashKind::Header {
                name: match h.header_name.to_ascii_lowercase() {
                    n if n.starts_with(':') => n,
                    _ => header_name(ctx, &format!("{f}.header.header_name"), &h.header_name)?
                        .as_str()
                        .to_owned(),
                },
                rewrite: h
                    .regex_rewrite
                    .as_ref()
                    .map(|r| {
                        let pattern = r.pattern.as_ref().ok_or_else(|| {
                            ctx.err(format!("{f}.header.regex_rewrite.pattern"), "is required")
                        })?;
                        Ok::<_, ConfigError>((
                            unanchored_regex(ctx, &format!("{f}.header.regex_rewrite"), pattern)?,
                            super::envoy_substitution(&r.substitution),
                        ))
                    })
                    .transpose()?,
            },
            Some(P::Cookie(c)) => {
                if c.name.is_empty() {
                    return Err(ctx.err(format!("{f}.cookie.name"), "is required"));
                }
                HashKind::Cookie {
                    name: c.name.clone(),
                    ttl: opt_duration(ctx, &format!("{f}.cookie.ttl"), c.ttl.as_ref())?,
                    path: c.path.clone(),
                    attributes: c
                        .attributes
                        .iter()
                        .map(|a| (a.name.clone(), a.value.clone()))
                        .collect(),
                }
            }
            Some(P::ConnectionProperties(cp)) => {
                if !cp.source_ip {
                    continue;
                }
                HashKind::SourceIp
            }
            Some(P::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(ctx.err(format!("{f}.query_parameter.name"), "is required"));
                }
                HashKind::QueryParameter(q.name.clone())
            }
            Some(P::FilterState(_)) => {
                ctx.unsupported(&format!("{f}.filter_state"));
                continue;
            }
            None => return Err(ctx.err(&f, "a policy (header, cookie, …) is required")),
        };
        out.push(HashPolicy {
            kind,
            terminal: p.terminal,
        });
    }
    Ok(out)
}

/// `retry_host_predicate`: Skiff implements `previous_hosts` (what Istio emits).
pub fn retry_host_predicates(
    ctx: &mut Ctx<'_>,
    field: &str,
    preds: &[route::retry_policy::RetryHostPredicate],
) -> bool {
    use route::retry_policy::retry_host_predicate::ConfigType;
    let mut previous_hosts = false;
    for (i, p) in preds.iter().enumerate() {
        let type_url = match &p.config_type {
            Some(ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            None => "",
        };
        if type_url == PREVIOUS_HOSTS_TYPE
            || (type_url.is_empty() && p.name == "envoy.retry_host_predicates.previous_hosts")
        {
            previous_hosts = true;
        } else {
            ctx.warn(
                format!("{field}[{i}]"),
                format!("retry host predicate {} is not supported; ignored", p.name),
            );
        }
    }
    previous_hosts
}

// === Clusters ===

/// RING_HASH / MAGLEV settings.
pub fn hashing_lb(ctx: &Ctx<'_>, c: &cluster::Cluster) -> Result<LbPolicy, ConfigError> {
    use cluster::cluster::LbConfig;
    if c.lb_policy == 2 {
        let cfg = match &c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => Some(r),
            _ => None,
        };
        if cfg.is_some_and(|r| r.hash_function != 0) {
            return Err(ctx.err("ring_hash_lb_config.hash_function", "only XX_HASH is supported"));
        }
        let min = cfg
            .and_then(|r| r.minimum_ring_size.as_ref())
            .map_or(1024, |v| v.value);
        let max = cfg
            .and_then(|r| r.maximum_ring_size.as_ref())
            .map_or(8 * 1024 * 1024, |v| v.value);
        if min == 0 || max > 8 * 1024 * 1024 {
            return Err(ctx.err("ring_hash_lb_config", "ring sizes must be in [1, 8388608]"));
        }
        if min > max {
            return Err(ctx.err(
                "ring_hash_lb_config.minimum_ring_size",
                format!("minimum_ring_size ({min}) > maximum_ring_size ({max})"),
            ));
        }
        Ok(LbPolicy::RingHash {
            min_ring_size: min,
            max_ring_size: max,
        })
    } else {
        let table_size = match &c.lb_config {
            Some(LbConfig::MaglevLbConfig(m)) => m.table_size.as_ref().map_or(65537, |v| v.value),
            _ => 65537,
        };
        if table_size > 5_000_011 || !is_prime(table_size) {
            return Err(ctx.err(
                "maglev_lb_config.table_size",
                format!("{table_size} must be a prime number no larger than 5000011"),
            ));
        }
        Ok(LbPolicy::Maglev { table_size })
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// `common_lb_config.healthy_panic_threshold` as whole percent (Envoy rounds).
pub fn panic_threshold(ctx: &Ctx<'_>, c: &cluster::Cluster) -> Result<u32, ConfigError> {
    match c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
    {
        None => Ok(50),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(p.value.round() as u32),
        Some(p) => Err(ctx.err(
            "common_lb_config.healthy_panic_threshold",
            format!("{} is not a percentage", p.value),
        )),
    }
}

/// `outlier_detection` with Envoy's defaults.
pub fn outlier_detection(
    ctx: &mut Ctx<'_>,
    o: &cluster::OutlierDetection,
) -> Result<OutlierDetection, ConfigError> {
    let f = "outlier_detection";
    let pct =
        |ctx: &Ctx<'_>, name: &str, v: Option<&xds::pb::google::protobuf::UInt32Value>, default: u32| {
            let v = u32_value(v).unwrap_or(default);
            if v > 100 {
                return Err(ctx.err(format!("{f}.{name}"), format!("{v} is more than 100")));
            }
            Ok(v)
        };
    let ms = |ctx: &Ctx<'_>, name: &str, d: Option<&xds::pb::google::protobuf::Duration>, default: u64| {
        let d = opt_duration(ctx, &format!("{f}.{name}"), d)?.unwrap_or(Duration::from_millis(default));
        if d.is_zero() {
            return Err(ctx.err(format!("{f}.{name}"), "must be greater than 0"));
        }
        Ok(d)
    };
    let base = ms(ctx, "base_ejection_time", o.base_ejection_time.as_ref(), 30_000)?;
    let max = match &o.max_ejection_time {
        Some(d) => ms(ctx, "max_ejection_time", Some(d), 300_000)?,
        None => base.max(Duration::from_secs(300)),
    };
    if max < base {
        return Err(ctx.err(
            format!("{f}.max_ejection_time"),
            "cannot be smaller than base_ejection_time",
        ));
    }
    let cfg = OutlierDetection {
        interval: ms(ctx, "interval", o.interval.as_ref(), 10_000)?,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct(ctx, "max_ejection_percent", o.max_ejection_percent.as_ref(), 10)?,
        always_eject_one_host: false,
        consecutive_5xx: u32_value(o.consecutive_5xx.as_ref()).unwrap_or(5),
        enforcing_consecutive_5xx: pct(
            ctx,
            "enforcing_consecutive_5xx",
            o.enforcing_consecutive_5xx.as_ref(),
            100,
        )?,
        consecutive_gateway_failure: u32_value(o.consecutive_gateway_failure.as_ref()).unwrap_or(5),
        enforcing_consecutive_gateway_failure: pct(
            ctx,
            "enforcing_consecutive_gateway_failure",
            o.enforcing_consecutive_gateway_failure.as_ref(),
            0,
        )?,
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failure: u32_value(o.consecutive_local_origin_failure.as_ref()).unwrap_or(5),
        enforcing_consecutive_local_origin_failure: pct(
            ctx,
            "enforcing_consecutive_local_origin_failure",
            o.enforcing_consecutive_local_origin_failure.as_ref(),
            100,
        )?,
        success_rate_minimum_hosts: u32_value(o.success_rate_minimum_hosts.as_ref()).unwrap_or(5),
        success_rate_request_volume: u32_value(o.success_rate_request_volume.as_ref()).unwrap_or(100),
        success_rate_stdev_factor: u32_value(o.success_rate_stdev_factor.as_ref()).unwrap_or(1900),
        enforcing_success_rate: pct(
            ctx,
            "enforcing_success_rate",
            o.enforcing_success_rate.as_ref(),
            100,
        )?,
        failure_percentage_threshold: pct(
            ctx,
            "failure_percentage_threshold",
            o.failure_percentage_threshold.as_ref(),
            85,
        )?,
        failure_percentage_minimum_hosts: u32_value(o.failure_percentage_minimum_hosts.as_ref()).unwrap_or(5),
        failure_percentage_request_volume: u32_value(o.failure_percentage_request_volume.as_ref())
            .unwrap_or(50),
        enforcing_failure_percentage: pct(
            ctx,
            "enforcing_failure_percentage",
            o.enforcing_failure_percentage.as_ref(),
            0,
        )?,
    };
    // Local-origin success-rate / failure-percentage detection is not implemented; Istio
    // disables its enforcement (`enforcing_local_origin_success_rate: 0`).
    if o.split_external_local_origin_errors
        && u32_value(o.enforcing_local_origin_success_rate.as_ref()).unwrap_or(100) > 0
    {
        ctx.warn(
            format!("{f}.enforcing_local_origin_success_rate"),
            "local-origin success-rate ejection is not supported by Skiff; not enforced",
        );
    }
    if u32_value(o.enforcing_failure_percentage_local_origin.as_ref()).unwrap_or(0) > 0 {
        ctx.unsupported(&format!("{f}.enforcing_failure_percentage_local_origin"));
    }
    if o.max_ejection_time_jitter.is_some() {
        ctx.unsupported(&format!("{f}.max_ejection_time_jitter"));
    }
    if !o.monitors.is_empty() {
        ctx.unsupported(&format!("{f}.monitors"));
    }
    Ok(cfg)
}

/// DNS settings of STRICT_DNS / LOGICAL_DNS clusters.
pub fn dns(ctx: &mut Ctx<'_>, c: &cluster::Cluster) -> Result<DnsConfig, ConfigError> {
    let refresh_rate =
        opt_duration(ctx, "dns_refresh_rate", c.dns_refresh_rate.as_ref())?.unwrap_or(Duration::from_secs(5));
    if refresh_rate < Duration::from_millis(1) {
        return Err(ctx.err("dns_refresh_rate", "must be at least 1ms"));
    }
    let failure_refresh_rate = match &c.dns_failure_refresh_rate {
        Some(r) => opt_duration(
            ctx,
            "dns_failure_refresh_rate.base_interval",
            r.base_interval.as_ref(),
        )?
        .unwrap_or(refresh_rate),
        None => refresh_rate,
    };
    let lookup_family = match c.dns_lookup_family {
        0 => DnsLookupFamily::Auto,
        1 => DnsLookupFamily::V4Only,
        2 => DnsLookupFamily::V6Only,
        3 => DnsLookupFamily::V4Preferred,
        4 => DnsLookupFamily::All,
        n => return Err(ctx.err("dns_lookup_family", format!("unknown family {n}"))),
    };
    let mut resolvers = Vec::new();
    let mut push_addr = |ctx: &Ctx<'_>, field: &str, a: &core::Address| -> Result<(), ConfigError> {
        match &a.address {
            Some(core::address::Address::SocketAddress(sa)) => {
                let mut addr: SocketAddr = socket(ctx, field, sa)?;
                if addr.port() == 0 {
                    addr.set_port(53);
                }
                resolvers.push(addr);
                Ok(())
            }
            _ => Err(ctx.err(field, "a socket_address is required")),
        }
    };
    if let Some(t) = &c.typed_dns_resolver_config {
        let any = t.typed_config.as_ref();
        match any.map(|a| a.type_url.as_str()) {
            Some(CARES_TYPE) => {
                let cfg = cares::CaresDnsResolverConfig::decode(any.map_or(&[][..], |a| a.value.as_slice()))
                    .map_err(|e| ctx.err("typed_dns_resolver_config", e.to_string()))?;
                for (i, a) in cfg.resolvers.iter().enumerate() {
                    push_addr(ctx, &format!("typed_dns_resolver_config.resolvers[{i}]"), a)?;
                }
                if cfg.use_resolvers_as_fallback {
                    ctx.unsupported("typed_dns_resolver_config.use_resolvers_as_fallback");
                }
            }
            Some(GETADDRINFO_TYPE) | None => {}
            Some(other) => ctx.warn(
                "typed_dns_resolver_config",
                format!("{other} is not supported; using the system resolver"),
            ),
        }
    } else if let Some(r) = &c.dns_resolution_config {
        for (i, a) in r.resolvers.iter().enumerate() {
            push_addr(ctx, &format!("dns_resolution_config.resolvers[{i}]"), a)?;
        }
    } else {
        for (i, a) in c.dns_resolvers.iter().enumerate() {
            push_addr(ctx, &format!("dns_resolvers[{i}]"), a)?;
        }
    }
    Ok(DnsConfig {
        refresh_rate,
        failure_refresh_rate,
        respect_ttl: c.respect_dns_ttl,
        lookup_family,
        resolvers,
    })
}
