//! Envoy v3 protos → Skiff's model. Every rejection names the resource and the field; fields that
//! Skiff does not implement are reported as warnings (never silently ignored).

// Users' configs still use deprecated Envoy fields (`format`, `exact_match`…): accept them.
#![allow(deprecated)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use ipnet::IpNet;
use prost::Message;
use regex::Regex;

use xds::pb::envoy::config::accesslog::v3 as accesslog;
use xds::pb::envoy::config::cluster::v3 as cluster;
use xds::pb::envoy::config::core::v3 as core;
use xds::pb::envoy::config::endpoint::v3 as endpoint;
use xds::pb::envoy::config::listener::v3 as listener;
use xds::pb::envoy::config::route::v3 as route;
use xds::pb::envoy::extensions::access_loggers::file::v3 as file_log;
use xds::pb::envoy::extensions::access_loggers::stream::v3 as stream_log;
use xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use xds::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use xds::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use xds::pb::envoy::r#type::matcher::v3 as matcher;
use xds::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};

use crate::access_log::{AccessLogSink, CmpOp, Format, LogFilter, LogWriter, ResponseFlags};
use crate::model::*;

pub mod tls;
pub mod traffic;

/// A resource that cannot be used. `Display`: `cluster "foo": connect_timeout: must not be negative`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {field}: {reason}")]
pub struct ConfigError {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub reason: String,
}

/// Collects warnings for one resource and builds errors that name it.
pub struct Ctx<'a> {
    kind: &'static str,
    name: String,
    warnings: &'a mut Vec<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(kind: &'static str, name: &str, warnings: &'a mut Vec<String>) -> Self {
        Ctx {
            kind,
            name: name.to_owned(),
            warnings,
        }
    }

    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            kind: self.kind,
            name: self.name.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn warn(&mut self, field: impl AsRef<str>, what: impl AsRef<str>) {
        self.warnings.push(format!(
            "{} {:?}: {}: {}",
            self.kind,
            self.name,
            field.as_ref(),
            what.as_ref()
        ));
    }

    fn unsupported(&mut self, field: &str) {
        self.warn(field, "not supported by Skiff; ignored");
    }
}

pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const TCP_PROXY_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FILE_LOG_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_LOG_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Filters Istio configures that only add telemetry or peer metadata. Skiff skips them with a
/// warning instead of refusing the whole listener.
const SKIPPABLE_FILTERS: &[&str] = &[
    "istio.stats",
    "istio.metadata_exchange",
    "istio.alpn",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.network.metadata_exchange",
    "envoy.filters.http.grpc_web",
];

fn decode<M: Message + Default>(
    ctx: &Ctx<'_>,
    field: &str,
    any: &Any,
    type_url: &str,
) -> Result<M, ConfigError> {
    if any.type_url != type_url {
        return Err(ctx.err(field, format!("expected @type {type_url}, got {}", any.type_url)));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ctx.err(field, format!("cannot decode {}: {e}", any.type_url)))
}

pub fn duration(ctx: &Ctx<'_>, field: &str, d: &PbDuration) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(ctx.err(field, "must be a non-negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn opt_duration(ctx: &Ctx<'_>, field: &str, d: Option<&PbDuration>) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(ctx, field, d)).transpose()
}

/// `0s` disables; unset gives `default`.
fn timeout(
    ctx: &Ctx<'_>,
    field: &str,
    d: Option<&PbDuration>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(ctx, field, d)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn bool_value(v: Option<&BoolValue>, default: bool) -> bool {
    v.map(|b| b.value).unwrap_or(default)
}

fn u32_value(v: Option<&UInt32Value>) -> Option<u32> {
    v.map(|v| v.value)
}

pub fn socket_address(
    ctx: &Ctx<'_>,
    field: &str,
    a: Option<&core::Address>,
) -> Result<SocketAddr, ConfigError> {
    let Some(core::address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(ctx.err(field, "a socket_address is required"));
    };
    socket(ctx, field, sa)
}

fn socket(ctx: &Ctx<'_>, field: &str, sa: &core::SocketAddress) -> Result<SocketAddr, ConfigError> {
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ctx.err(
            format!("{field}.address"),
            format!("{:?} is not an IP address", sa.address),
        )
    })?;
    let port = match &sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) if *p <= 65535 => *p as u16,
        Some(core::socket_address::PortSpecifier::PortValue(p)) => {
            return Err(ctx.err(format!("{field}.port_value"), format!("{p} is out of range")))
        }
        Some(core::socket_address::PortSpecifier::NamedPort(n)) => {
            return Err(ctx.err(
                format!("{field}.named_port"),
                format!("named port {n:?} is not supported"),
            ))
        }
        None => 0,
    };
    if sa.protocol != 0 {
        return Err(ctx.err(format!("{field}.protocol"), "only TCP is supported"));
    }
    Ok(SocketAddr::new(ip, port))
}

fn cidr(ctx: &Ctx<'_>, field: &str, c: &core::CidrRange) -> Result<IpNet, ConfigError> {
    let ip: IpAddr = c
        .address_prefix
        .parse()
        .map_err(|_| ctx.err(field, format!("{:?} is not an IP address", c.address_prefix)))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = u32_value(c.prefix_len.as_ref()).unwrap_or(max);
    if len > max {
        return Err(ctx.err(field, format!("prefix length {len} is too long")));
    }
    IpNet::new(ip, len as u8)
        .map(|n| n.trunc())
        .map_err(|e| ctx.err(field, e.to_string()))
}

pub fn regex(ctx: &Ctx<'_>, field: &str, r: &matcher::RegexMatcher) -> Result<Regex, ConfigError> {
    // Envoy matches the whole value: anchor the pattern.
    regex::RegexBuilder::new(&format!("^(?:{})$", r.regex))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ctx.err(field, format!("bad regex {:?}: {e}", r.regex)))
}

fn unanchored_regex(ctx: &Ctx<'_>, field: &str, r: &matcher::RegexMatcher) -> Result<Regex, ConfigError> {
    regex::RegexBuilder::new(&r.regex)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| ctx.err(field, format!("bad regex {:?}: {e}", r.regex)))
}

fn header_name(ctx: &Ctx<'_>, field: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ctx.err(field, format!("{name:?} is not a valid header name")))
}

fn string_matcher(
    ctx: &Ctx<'_>,
    field: &str,
    m: &matcher::StringMatcher,
) -> Result<StringMatcher, ConfigError> {
    use matcher::string_matcher::MatchPattern as P;
    let lower = |s: &str| {
        if m.ignore_case {
            s.to_lowercase()
        } else {
            s.to_owned()
        }
    };
    let kind = match &m.match_pattern {
        Some(P::Exact(s)) => StringMatch::Exact(lower(s)),
        Some(P::Prefix(s)) => StringMatch::Prefix(lower(s)),
        Some(P::Suffix(s)) => StringMatch::Suffix(lower(s)),
        Some(P::Contains(s)) => StringMatch::Contains(lower(s)),
        Some(P::SafeRegex(r)) => StringMatch::Regex(regex(ctx, &format!("{field}.safe_regex"), r)?),
        Some(P::Custom(_)) => {
            return Err(ctx.err(format!("{field}.custom"), "custom matchers are not supported"))
        }
        None => return Err(ctx.err(field, "a match pattern is required")),
    };
    Ok(StringMatcher {
        kind,
        ignore_case: m.ignore_case,
    })
}

fn header_adds(
    ctx: &Ctx<'_>,
    field: &str,
    opts: &[core::HeaderValueOption],
) -> Result<Vec<HeaderAdd>, ConfigError> {
    opts.iter()
        .enumerate()
        .map(|(i, o)| {
            let f = format!("{field}[{i}]");
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| ctx.err(&f, "header is required"))?;
            let value = if h.value.is_empty() {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            } else {
                h.value.clone()
            };
            let action = match o.append_action {
                0 => AppendAction::AppendIfExistsOrAdd,
                1 => AppendAction::AddIfAbsent,
                2 => AppendAction::OverwriteIfExistsOrAdd,
                3 => AppendAction::OverwriteIfExists,
                n => return Err(ctx.err(format!("{f}.append_action"), format!("unknown action {n}"))),
            };
            Ok(HeaderAdd {
                name: header_name(ctx, &format!("{f}.header.key"), &h.key)?,
                value,
                action,
            })
        })
        .collect()
}

fn header_removes(ctx: &Ctx<'_>, field: &str, names: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| header_name(ctx, &format!("{field}[{i}]"), n))
        .collect()
}

fn mutations(
    ctx: &Ctx<'_>,
    prefix: &str,
    req_add: &[core::HeaderValueOption],
    req_rm: &[String],
    resp_add: &[core::HeaderValueOption],
    resp_rm: &[String],
) -> Result<HeaderMutations, ConfigError> {
    Ok(HeaderMutations {
        request_add: header_adds(ctx, &format!("{prefix}request_headers_to_add"), req_add)?,
        request_remove: header_removes(ctx, &format!("{prefix}request_headers_to_remove"), req_rm)?,
        response_add: header_adds(ctx, &format!("{prefix}response_headers_to_add"), resp_add)?,
        response_remove: header_removes(ctx, &format!("{prefix}response_headers_to_remove"), resp_rm)?,
    })
}

// === Access logs ===

fn access_logs(
    ctx: &mut Ctx<'_>,
    field: &str,
    logs: &[accesslog::AccessLog],
) -> Result<Vec<AccessLogSink>, ConfigError> {
    let mut out = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(accesslog::access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            return Err(ctx.err(&f, "typed_config is required"));
        };
        let (path, format) = match any.type_url.as_str() {
            FILE_LOG_TYPE => {
                let c: file_log::FileAccessLog =
                    decode(ctx, &format!("{f}.typed_config"), any, FILE_LOG_TYPE)?;
                use file_log::file_access_log::AccessLogFormat as F;
                let format = match &c.access_log_format {
                    None => None,
                    Some(F::Format(s)) => Some(s.clone()),
                    Some(F::LogFormat(sfs)) => {
                        substitution_format(ctx, &format!("{f}.typed_config.log_format"), sfs)?
                    }
                    Some(F::JsonFormat(_)) | Some(F::TypedJsonFormat(_)) => {
                        return Err(ctx.err(
                            format!("{f}.typed_config.json_format"),
                            "JSON access logs are not supported yet",
                        ))
                    }
                };
                (c.path, format)
            }
            STDOUT_LOG_TYPE | STDERR_LOG_TYPE => {
                let c = stream_log::StdoutAccessLog::decode(any.value.as_slice())
                    .map_err(|e| ctx.err(format!("{f}.typed_config"), e.to_string()))?;
                let format = match &c.access_log_format {
                    Some(stream_log::stdout_access_log::AccessLogFormat::LogFormat(sfs)) => {
                        substitution_format(ctx, &format!("{f}.typed_config.log_format"), sfs)?
                    }
                    None => None,
                };
                let path = if any.type_url == STDOUT_LOG_TYPE {
                    "/dev/stdout"
                } else {
                    "/dev/stderr"
                };
                (path.to_owned(), format)
            }
            other => {
                return Err(ctx.err(
                    format!("{f}.typed_config"),
                    format!("unsupported access logger {other}"),
                ))
            }
        };
        let format = match format {
            Some(s) => Format::parse(&s).map_err(|e| ctx.err(format!("{f}.format"), e.0))?,
            None => Format::parse(crate::access_log::ENVOY_DEFAULT_FORMAT).map_err(|e| ctx.err(&f, e.0))?,
        };
        let filter = match &log.filter {
            None => None,
            Some(flt) => log_filter(ctx, &format!("{f}.filter"), flt)?,
        };
        out.push(AccessLogSink {
            format: Arc::new(format),
            filter,
            writer: LogWriter::open(&path),
        });
    }
    Ok(out)
}

fn substitution_format(
    ctx: &mut Ctx<'_>,
    field: &str,
    s: &core::SubstitutionFormatString,
) -> Result<Option<String>, ConfigError> {
    use core::substitution_format_string::Format as F;
    if s.omit_empty_values {
        ctx.unsupported(&format!("{field}.omit_empty_values"));
    }
    match &s.format {
        Some(F::TextFormat(t)) => Ok(Some(t.clone())),
        Some(F::TextFormatSource(ds)) => Ok(Some(
            String::from_utf8_lossy(&data_source(ctx, &format!("{field}.text_format_source"), ds)?)
                .into_owned(),
        )),
        Some(F::JsonFormat(_)) => Err(ctx.err(
            format!("{field}.json_format"),
            "JSON access logs are not supported yet",
        )),
        None => Ok(None),
    }
}

fn data_source(ctx: &Ctx<'_>, field: &str, ds: &core::DataSource) -> Result<Bytes, ConfigError> {
    use core::data_source::Specifier as S;
    match &ds.specifier {
        Some(S::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(S::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(S::Filename(f)) => std::fs::read(f)
            .map(Bytes::from)
            .map_err(|e| ctx.err(format!("{field}.filename"), format!("{f}: {e}"))),
        Some(S::EnvironmentVariable(v)) => std::env::var(v).map(Bytes::from).map_err(|_| {
            ctx.err(
                format!("{field}.environment_variable"),
                format!("${v} is not set"),
            )
        }),
        None => Ok(Bytes::new()),
    }
}

fn log_filter(
    ctx: &mut Ctx<'_>,
    field: &str,
    f: &accesslog::AccessLogFilter,
) -> Result<Option<LogFilter>, ConfigError> {
    use accesslog::access_log_filter::FilterSpecifier as S;
    match &f.filter_specifier {
        Some(S::ResponseFlagFilter(r)) => {
            let mut flags = ResponseFlags::empty();
            for (i, name) in r.flags.iter().enumerate() {
                flags.insert(ResponseFlags::from_name(name).ok_or_else(|| {
                    ctx.err(
                        format!("{field}.response_flag_filter.flags[{i}]"),
                        format!("unknown flag {name:?}"),
                    )
                })?);
            }
            Ok(Some(LogFilter::ResponseFlags(flags)))
        }
        Some(S::StatusCodeFilter(s)) => {
            let c = s
                .comparison
                .as_ref()
                .ok_or_else(|| ctx.err(format!("{field}.status_code_filter"), "comparison is required"))?;
            let op = match c.op {
                0 => CmpOp::Eq,
                1 => CmpOp::Ge,
                2 => CmpOp::Le,
                n => {
                    return Err(ctx.err(
                        format!("{field}.status_code_filter.comparison.op"),
                        format!("unknown op {n}"),
                    ))
                }
            };
            let v = c.value.as_ref().map(|v| v.default_value).unwrap_or(0);
            Ok(Some(LogFilter::StatusCode(op, v.min(u16::MAX as u32) as u16)))
        }
        Some(_) => {
            ctx.warn(
                field,
                "this access log filter is not supported by Skiff; every record is logged",
            );
            Ok(None)
        }
        None => Ok(None),
    }
}

// === Listeners ===

/// Converts a listener.
pub fn listener(l: &listener::Listener, warnings: &mut Vec<String>) -> Result<Listener, ConfigError> {
    let mut ctx = Ctx::new("listener", &l.name, warnings);
    if l.name.is_empty() {
        return Err(ctx.err("name", "a listener needs a name"));
    }
    let address = socket_address(&ctx, "address", l.address.as_ref())?;

    let (mut tls_inspector, mut http_inspector) = (false, false);
    let use_original_dst = bool_value(l.use_original_dst.as_ref(), false);
    let mut restore_original_dst = use_original_dst;
    for (i, lf) in l.listener_filters.iter().enumerate() {
        let type_url = match &lf.config_type {
            Some(listener::listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            Some(listener::listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ctx.err(format!("listener_filters[{i}].config_discovery"), "not supported"))
            }
            None => "",
        };
        let kind = type_url.rsplit('.').next().unwrap_or_default();
        match (lf.name.as_str(), kind) {
            (_, "TlsInspector") | ("envoy.filters.listener.tls_inspector", "") => tls_inspector = true,
            (_, "HttpInspector") | ("envoy.filters.listener.http_inspector", "") => http_inspector = true,
            (_, "OriginalDst") | ("envoy.filters.listener.original_dst", "") => restore_original_dst = true,
            (name, _) => {
                return Err(ctx.err(
                    format!("listener_filters[{i}]"),
                    format!("unsupported listener filter {name} ({type_url})"),
                ))
            }
        }
        if lf.filter_disabled.is_some() {
            ctx.unsupported(&format!("listener_filters[{i}].filter_disabled"));
        }
    }
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        filter_chains.push(filter_chain(&mut ctx, &format!("filter_chains[{i}]"), fc)?);
    }
    let default_filter_chain = l
        .default_filter_chain
        .as_ref()
        .map(|fc| filter_chain(&mut ctx, "default_filter_chain", fc))
        .transpose()?;
    let direction = match l.traffic_direction {
        1 => Direction::Inbound,
        2 => Direction::Outbound,
        _ => Direction::Unspecified,
    };
    for (set, field) in [
        (l.filter_chain_matcher.is_some(), "filter_chain_matcher"),
        (l.api_listener.is_some(), "api_listener"),
        (l.udp_listener_config.is_some(), "udp_listener_config"),
        (!l.additional_addresses.is_empty(), "additional_addresses"),
        (l.connection_balance_config.is_some(), "connection_balance_config"),
        (l.listener_specifier.is_some(), "internal_listener"),
    ] {
        if set {
            ctx.unsupported(field);
        }
    }
    Ok(Listener {
        name: l.name.clone(),
        address,
        bind_to_port: bool_value(l.bind_to_port.as_ref(), true),
        use_original_dst,
        restore_original_dst,
        tls_inspector,
        http_inspector,
        listener_filters_timeout: timeout(
            &ctx,
            "listener_filters_timeout",
            l.listener_filters_timeout.as_ref(),
            Some(Duration::from_secs(15)),
        )?
        .unwrap_or(Duration::MAX),
        continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
        transparent: bool_value(l.transparent.as_ref(), false),
        direction,
        filter_chains,
        default_filter_chain,
        access_logs: access_logs(&mut ctx, "access_log", &l.access_log)?,
    })
}

fn chain_match(
    ctx: &Ctx<'_>,
    field: &str,
    m: Option<&listener::FilterChainMatch>,
) -> Result<ChainMatch, ConfigError> {
    let Some(m) = m else {
        return Ok(ChainMatch::default());
    };
    let cidrs = |list: &[core::CidrRange], name: &str| -> Result<Vec<IpNet>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, c)| cidr(ctx, &format!("{field}.{name}[{i}]"), c))
            .collect()
    };
    let port = u32_value(m.destination_port.as_ref())
        .map(|p| {
            u16::try_from(p).map_err(|_| {
                ctx.err(
                    format!("{field}.destination_port"),
                    format!("{p} is out of range"),
                )
            })
        })
        .transpose()?;
    let source_ports = m
        .source_ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .map_err(|_| ctx.err(format!("{field}.source_ports"), format!("{p} is out of range")))
        })
        .collect::<Result<_, _>>()?;
    Ok(ChainMatch {
        destination_port: port,
        prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
        server_names: m.server_names.iter().map(|s| s.to_ascii_lowercase()).collect(),
        transport_protocol: (!m.transport_protocol.is_empty()).then(|| m.transport_protocol.clone()),
        application_protocols: m.application_protocols.clone(),
        direct_source_prefix_ranges: cidrs(&m.direct_source_prefix_ranges, "direct_source_prefix_ranges")?,
        source_type: match m.source_type {
            1 => SourceType::SameIpOrLoopback,
            2 => SourceType::External,
            _ => SourceType::Any,
        },
        source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports,
    })
}

fn filter_chain(
    ctx: &mut Ctx<'_>,
    field: &str,
    fc: &listener::FilterChain,
) -> Result<FilterChain, ConfigError> {
    let matcher = chain_match(
        ctx,
        &format!("{field}.filter_chain_match"),
        fc.filter_chain_match.as_ref(),
    )?;
    let tls = match &fc.transport_socket {
        Some(ts) => tls::transport_socket(ctx, &format!("{field}.transport_socket"), ts)?.map(Arc::new),
        None => None,
    };
    let mut terminal = None;
    for (i, f) in fc.filters.iter().enumerate() {
        let ff = format!("{field}.filters[{i}]");
        let any = match &f.config_type {
            Some(listener::filter::ConfigType::TypedConfig(any)) => any,
            Some(listener::filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ctx.err(&ff, "config_discovery is not supported"))
            }
            None => return Err(ctx.err(&ff, format!("filter {} has no typed_config", f.name))),
        };
        if terminal.is_some() {
            return Err(ctx.err(&ff, "a filter after the terminal filter"));
        }
        match any.type_url.as_str() {
            HCM_TYPE => {
                let c: hcm::HttpConnectionManager =
                    decode(ctx, &format!("{ff}.typed_config"), any, HCM_TYPE)?;
                terminal = Some(NetworkFilter::Http(Arc::new(http_connection_manager(
                    ctx,
                    &format!("{ff}.typed_config"),
                    &c,
                )?)));
            }
            TCP_PROXY_TYPE => {
                let c: tcp_proxy::TcpProxy = decode(ctx, &format!("{ff}.typed_config"), any, TCP_PROXY_TYPE)?;
                terminal = Some(NetworkFilter::Tcp(Arc::new(tcp_proxy(
                    ctx,
                    &format!("{ff}.typed_config"),
                    &c,
                )?)));
            }
            _ if SKIPPABLE_FILTERS.contains(&f.name.as_str()) => {
                ctx.warn(
                    &ff,
                    format!("filter {} is skipped (telemetry/metadata only)", f.name),
                );
            }
            other => return Err(ctx.err(&ff, format!("unsupported network filter {} ({other})", f.name))),
        }
    }
    let filter = terminal.ok_or_else(|| {
        ctx.err(
            format!("{field}.filters"),
            "needs an http_connection_manager or tcp_proxy filter",
        )
    })?;
    Ok(FilterChain {
        name: fc.name.clone(),
        matcher,
        filter,
        tls,
    })
}

fn tcp_proxy(ctx: &mut Ctx<'_>, field: &str, c: &tcp_proxy::TcpProxy) -> Result<TcpProxy, ConfigError> {
    let cluster = match &c.cluster_specifier {
        Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(name)) => ClusterTarget::Named(name.clone()),
        Some(tcp_proxy::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => ClusterTarget::Weighted(
            w.clusters
                .iter()
                .map(|c| WeightedCluster {
                    name: Arc::from(c.name.as_str()),
                    weight: c.weight,
                })
                .collect(),
        ),
        None => return Err(ctx.err(format!("{field}.cluster"), "a cluster is required")),
    };
    if c.tunneling_config.is_some() {
        ctx.unsupported(&format!("{field}.tunneling_config"));
    }
    let mut hash_source_ip = false;
    for (i, h) in c.hash_policy.iter().enumerate() {
        use xds::pb::envoy::r#type::v3::hash_policy::PolicySpecifier as H;
        match &h.policy_specifier {
            Some(H::SourceIp(_)) => hash_source_ip = true,
            _ => ctx.unsupported(&format!("{field}.hash_policy[{i}]")),
        }
    }
    Ok(TcpProxy {
        stat_prefix: c.stat_prefix.clone(),
        cluster,
        idle_timeout: timeout(
            ctx,
            &format!("{field}.idle_timeout"),
            c.idle_timeout.as_ref(),
            Some(Duration::from_secs(3600)),
        )?,
        access_logs: access_logs(ctx, &format!("{field}.access_log"), &c.access_log)?,
        hash_source_ip,
    })
}

fn http_connection_manager(
    ctx: &mut Ctx<'_>,
    field: &str,
    c: &hcm::HttpConnectionManager,
) -> Result<HttpConnectionManager, ConfigError> {
    use hcm::http_connection_manager::RouteSpecifier as R;
    let routes = match &c.route_specifier {
        Some(R::Rds(rds)) => RouteSource::Rds(rds.route_config_name.clone()),
        Some(R::RouteConfig(rc)) => {
            let mut inner = Ctx::new("route_config", &rc.name, ctx.warnings);
            let mut config = route_config_with(&mut inner, rc)?;
            config.validate_clusters = bool_value(rc.validate_clusters.as_ref(), true);
            RouteSource::Inline(Arc::new(config))
        }
        Some(R::ScopedRoutes(_)) => return Err(ctx.err(format!("{field}.scoped_routes"), "not supported")),
        None => return Err(ctx.err(field, "rds or route_config is required")),
    };
    let mut has_router = false;
    let mut http_filters = Vec::new();
    for (i, f) in c.http_filters.iter().enumerate() {
        let ff = format!("{field}.http_filters[{i}]");
        let any = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let type_url = any.map(|a| a.type_url.as_str()).unwrap_or("");
        if has_router {
            return Err(ctx.err(&ff, "a filter after the router filter"));
        }
        if type_url == ROUTER_TYPE || f.name == "envoy.filters.http.router" {
            has_router = true;
        } else if f.disabled {
            continue;
        } else if type_url == traffic::FAULT_TYPE
            || (type_url.is_empty() && f.name == "envoy.filters.http.fault")
        {
            let config = match any {
                Some(any) => {
                    let pb: xds::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                        decode(ctx, &format!("{ff}.typed_config"), any, traffic::FAULT_TYPE)?;
                    traffic::fault(ctx, &format!("{ff}.typed_config"), &pb)?
                }
                None => Fault::default(),
            };
            http_filters.push(HttpFilter::Fault {
                name: f.name.clone(),
                config: Arc::new(config),
                stats: Arc::default(),
            });
        } else if type_url == traffic::CORS_TYPE
            || (type_url.is_empty() && f.name == "envoy.filters.http.cors")
        {
            http_filters.push(HttpFilter::Cors { name: f.name.clone() });
        } else if SKIPPABLE_FILTERS.contains(&f.name.as_str()) || f.is_optional {
            ctx.warn(&ff, format!("HTTP filter {} is skipped", f.name));
        } else {
            return Err(ctx.err(&ff, format!("unsupported HTTP filter {} ({type_url})", f.name)));
        }
    }
    if !has_router {
        return Err(ctx.err(
            format!("{field}.http_filters"),
            "the router filter (envoy.filters.http.router) is required",
        ));
    }
    let codec = match c.codec_type {
        0 => Codec::Auto,
        1 => Codec::Http1,
        2 => Codec::Http2,
        n => {
            return Err(ctx.err(
                format!("{field}.codec_type"),
                format!("codec {n} is not supported"),
            ))
        }
    };
    let server_header = match c.server_header_transformation {
        0 => ServerHeader::Overwrite,
        1 => ServerHeader::AppendIfAbsent,
        2 => ServerHeader::PassThrough,
        n => {
            return Err(ctx.err(
                format!("{field}.server_header_transformation"),
                format!("unknown value {n}"),
            ))
        }
    };
    for (set, f) in [
        (c.tracing.is_some(), "tracing"),
        (!c.upgrade_configs.is_empty(), "upgrade_configs"),
        (c.local_reply_config.is_some(), "local_reply_config"),
        (c.request_id_extension.is_some(), "request_id_extension"),
        (c.forward_client_cert_details != 0, "forward_client_cert_details"),
    ] {
        if set {
            ctx.unsupported(&format!("{field}.{f}"));
        }
    }
    // Envoy refuses both set, even `strip_any_host_port: false` (it checks for presence).
    use hcm::http_connection_manager::StripPortMode;
    let strip_port = match (c.strip_matching_host_port, &c.strip_port_mode) {
        (true, Some(_)) => {
            return Err(ctx.err(
                field,
                "only one of strip_matching_host_port or strip_any_host_port can be set",
            ))
        }
        (true, None) => StripPort::Matching,
        (false, Some(StripPortMode::StripAnyHostPort(true))) => StripPort::Any,
        (false, _) => StripPort::None,
    };
    Ok(HttpConnectionManager {
        stat_prefix: c.stat_prefix.clone(),
        routes,
        codec,
        server_name: if c.server_name.is_empty() {
            http::HeaderValue::from_static("envoy")
        } else {
            http::HeaderValue::from_str(&c.server_name).map_err(|_| {
                ctx.err(
                    format!("{field}.server_name"),
                    format!("{:?} is not a valid header value", c.server_name),
                )
            })?
        },
        server_header,
        use_remote_address: bool_value(c.use_remote_address.as_ref(), false),
        skip_xff_append: c.skip_xff_append,
        xff_num_trusted_hops: c.xff_num_trusted_hops,
        via: (!c.via.is_empty()).then(|| c.via.clone()),
        generate_request_id: bool_value(c.generate_request_id.as_ref(), true),
        preserve_external_request_id: c.preserve_external_request_id,
        always_set_request_id_in_response: c.always_set_request_id_in_response,
        stream_idle_timeout: timeout(
            ctx,
            &format!("{field}.stream_idle_timeout"),
            c.stream_idle_timeout.as_ref(),
            Some(Duration::from_secs(300)),
        )?,
        request_timeout: timeout(
            ctx,
            &format!("{field}.request_timeout"),
            c.request_timeout.as_ref(),
            None,
        )?,
        request_headers_timeout: timeout(
            ctx,
            &format!("{field}.request_headers_timeout"),
            c.request_headers_timeout.as_ref(),
            None,
        )?,
        max_request_headers_kb: u32_value(c.max_request_headers_kb.as_ref()).unwrap_or(60),
        internal_addresses: match &c.internal_address_config {
            Some(i) => i
                .cidr_ranges
                .iter()
                .enumerate()
                .map(|(n, r)| {
                    cidr(
                        ctx,
                        &format!("{field}.internal_address_config.cidr_ranges[{n}]"),
                        r,
                    )
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        },
        access_logs: access_logs(ctx, &format!("{field}.access_log"), &c.access_log)?,
        http_filters,
        strip_port,
    })
}

// === Routes ===

/// Converts a route configuration (RDS resource).
pub fn route_config(
    rc: &route::RouteConfiguration,
    warnings: &mut Vec<String>,
) -> Result<RouteConfig, ConfigError> {
    let mut ctx = Ctx::new("route_config", &rc.name, warnings);
    route_config_with(&mut ctx, rc)
}

fn route_config_with(ctx: &mut Ctx<'_>, rc: &route::RouteConfiguration) -> Result<RouteConfig, ConfigError> {
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    let mut seen_domains = std::collections::HashSet::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let f = format!("virtual_hosts[{i}]");
        for (j, d) in vh.domains.iter().enumerate() {
            if !seen_domains.insert(d.to_ascii_lowercase()) {
                return Err(ctx.err(
                    format!("{f}.domains[{j}]"),
                    format!("domain {d:?} appears in more than one virtual host"),
                ));
            }
        }
        virtual_hosts.push(virtual_host(ctx, &f, vh)?);
    }
    if rc.vhds.is_some() {
        ctx.unsupported("vhds");
    }
    let per_filter = traffic::per_filter(ctx, "typed_per_filter_config", &rc.typed_per_filter_config)?;
    Ok(RouteConfig {
        per_filter,
        name: rc.name.clone(),
        domains: crate::route::DomainIndex::new(&virtual_hosts),
        virtual_hosts,
        headers: mutations(
            ctx,
            "",
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
        )?,
        most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
        max_direct_response_body_size: u32_value(rc.max_direct_response_body_size_bytes.as_ref())
            .unwrap_or(4096) as usize,
        validate_clusters: bool_value(rc.validate_clusters.as_ref(), false),
    })
}

fn virtual_host(ctx: &mut Ctx<'_>, field: &str, vh: &route::VirtualHost) -> Result<VirtualHost, ConfigError> {
    if vh.domains.is_empty() {
        return Err(ctx.err(format!("{field}.domains"), "at least one domain is required"));
    }
    for (j, d) in vh.domains.iter().enumerate() {
        if d.is_empty()
            || (d.matches('*').count() > 1)
            || (d.contains('*') && !d.starts_with('*') && !d.ends_with('*'))
        {
            return Err(ctx.err(
                format!("{field}.domains[{j}]"),
                format!("{d:?} is not a valid domain (one leading or trailing * allowed)"),
            ));
        }
    }
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        routes.push(route(ctx, &format!("{field}.routes[{i}]"), r)?);
    }
    let cors = vh
        .cors
        .as_ref()
        .map(|c| traffic::route_cors(ctx, &format!("{field}.cors"), c).map(Arc::new))
        .transpose()?;
    let require_tls = match vh.require_tls {
        0 => RequireTls::None,
        1 => RequireTls::ExternalOnly,
        2 => RequireTls::All,
        n => return Err(ctx.err(format!("{field}.require_tls"), format!("unknown value {n}"))),
    };
    let per_filter = traffic::per_filter(
        ctx,
        &format!("{field}.typed_per_filter_config"),
        &vh.typed_per_filter_config,
    )?;
    Ok(VirtualHost {
        require_tls,
        cors,
        per_filter,
        name: vh.name.clone(),
        domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        routes,
        headers: mutations(
            ctx,
            &format!("{field}."),
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
        )?,
        include_request_attempt_count: vh.include_request_attempt_count,
        retry_policy: vh
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(ctx, &format!("{field}.retry_policy"), p))
            .transpose()?,
    })
}

fn route(ctx: &mut Ctx<'_>, field: &str, r: &route::Route) -> Result<Route, ConfigError> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{field}.match"), "is required"))?;
    let matcher = route_match(ctx, &format!("{field}.match"), m)?;
    let action = match &r.action {
        Some(route::route::Action::Route(a)) => {
            Action::Forward(Box::new(route_action(ctx, &format!("{field}.route"), a)?))
        }
        Some(route::route::Action::Redirect(rd)) => {
            Action::Redirect(redirect(ctx, &format!("{field}.redirect"), rd)?)
        }
        Some(route::route::Action::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| {
                    ctx.err(
                        format!("{field}.direct_response.status"),
                        format!("{} is not an HTTP status", d.status),
                    )
                })?;
            let body = d
                .body
                .as_ref()
                .map(|b| data_source(ctx, &format!("{field}.direct_response.body"), b))
                .transpose()?;
            Action::Direct { status, body }
        }
        Some(_) => {
            return Err(ctx.err(
                field,
                "only route, redirect and direct_response actions are supported",
            ))
        }
        None => return Err(ctx.err(field, "an action is required")),
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        headers: mutations(
            ctx,
            &format!("{field}."),
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
        decorator: r.decorator.as_ref().map(|d| d.operation.clone()),
        per_filter: traffic::per_filter(
            ctx,
            &format!("{field}.typed_per_filter_config"),
            &r.typed_per_filter_config,
        )?,
    })
}

/// Converts one `HeaderMatcher` (routes, fault filter headers).
fn header_matcher(
    ctx: &Ctx<'_>,
    field: &str,
    h: &route::HeaderMatcher,
) -> Result<HeaderMatcher, ConfigError> {
    use route::header_matcher::HeaderMatchSpecifier as H;
    let f = field.to_owned();
    let s = |k: StringMatch| {
        HeaderMatch::String(StringMatcher {
            kind: k,
            ignore_case: false,
        })
    };
    let kind = match &h.header_match_specifier {
        Some(H::ExactMatch(v)) => s(StringMatch::Exact(v.clone())),
        Some(H::PrefixMatch(v)) => s(StringMatch::Prefix(v.clone())),
        Some(H::SuffixMatch(v)) => s(StringMatch::Suffix(v.clone())),
        Some(H::ContainsMatch(v)) => s(StringMatch::Contains(v.clone())),
        Some(H::SafeRegexMatch(r)) => s(StringMatch::Regex(regex(
            ctx,
            &format!("{f}.safe_regex_match"),
            r,
        )?)),
        Some(H::StringMatch(sm)) => {
            HeaderMatch::String(string_matcher(ctx, &format!("{f}.string_match"), sm)?)
        }
        Some(H::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(H::RangeMatch(r)) => HeaderMatch::Range(r.start, r.end),
        None => HeaderMatch::Present(true),
    };
    if h.name.is_empty() {
        return Err(ctx.err(format!("{f}.name"), "is required"));
    }
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn route_match(ctx: &mut Ctx<'_>, field: &str, m: &route::RouteMatch) -> Result<RouteMatch, ConfigError> {
    use route::route_match::PathSpecifier as P;
    let case_sensitive = bool_value(m.case_sensitive.as_ref(), true);
    let norm = |s: &str| {
        if case_sensitive {
            s.to_owned()
        } else {
            s.to_lowercase()
        }
    };
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(norm(p)),
        Some(P::Path(p)) => PathMatch::Exact(norm(p)),
        Some(P::SafeRegex(r)) => PathMatch::Regex(regex(ctx, &format!("{field}.safe_regex"), r)?),
        Some(P::PathSeparatedPrefix(p)) => PathMatch::Separated(norm(p)),
        Some(P::ConnectMatcher(_)) => PathMatch::Connect,
        Some(P::PathMatchPolicy(_)) => {
            return Err(ctx.err(format!("{field}.path_match_policy"), "not supported"))
        }
        None => return Err(ctx.err(field, "a path specifier (prefix, path, safe_regex…) is required")),
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_matcher(ctx, &format!("{field}.headers[{i}]"), h)?);
    }
    let mut query_parameters = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let f = format!("{field}.query_parameters[{i}]");
        let value = match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(sm)) => Some(string_matcher(ctx, &format!("{f}.string_match"), sm)?),
            Some(Q::PresentMatch(_)) | None => None,
        };
        query_parameters.push(QueryMatcher {
            name: q.name.clone(),
            value,
        });
    }
    if m.runtime_fraction.is_some() {
        ctx.unsupported(&format!("{field}.runtime_fraction"));
    }
    if !m.cookies.is_empty() || !m.dynamic_metadata.is_empty() || m.tls_context.is_some() {
        ctx.unsupported(&format!("{field}.cookies/dynamic_metadata/tls_context"));
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
        query_parameters,
        grpc: m.grpc.is_some(),
    })
}

fn route_action(ctx: &mut Ctx<'_>, field: &str, a: &route::RouteAction) -> Result<RouteAction, ConfigError> {
    use route::route_action::ClusterSpecifier as C;
    use route::route_action::HostRewriteSpecifier as H;
    let cluster = match &a.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => ClusterPick::Named(Arc::from(c.as_str())),
        Some(C::ClusterHeader(h)) => {
            ClusterPick::Header(header_name(ctx, &format!("{field}.cluster_header"), h)?)
        }
        Some(C::WeightedClusters(w)) => {
            let mut clusters = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                let f = format!("{field}.weighted_clusters.clusters[{i}]");
                let weight = u32_value(c.weight.as_ref()).unwrap_or(0);
                if c.name.is_empty() {
                    return Err(ctx.err(format!("{f}.name"), "is required"));
                }
                let m = mutations(
                    ctx,
                    &format!("{f}."),
                    &c.request_headers_to_add,
                    &c.request_headers_to_remove,
                    &c.response_headers_to_add,
                    &c.response_headers_to_remove,
                )?;
                clusters.push((
                    WeightedCluster {
                        name: Arc::from(c.name.as_str()),
                        weight,
                    },
                    m,
                ));
            }
            let sum: u32 = clusters.iter().map(|(c, _)| c.weight).sum();
            let total = u32_value(w.total_weight.as_ref()).unwrap_or(sum);
            if sum == 0 || total != sum {
                return Err(ctx.err(
                    format!("{field}.weighted_clusters"),
                    format!("weights add up to {sum}, total_weight is {total}"),
                ));
            }
            ClusterPick::Weighted { clusters, total }
        }
        _ => {
            return Err(ctx.err(
                format!("{field}.cluster"),
                "cluster, cluster_header or weighted_clusters is required",
            ))
        }
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(H::HostRewriteLiteral(h)) => Some(HostRewrite::Literal(h.clone())),
        Some(H::AutoHostRewrite(b)) => b.value.then_some(HostRewrite::Auto),
        Some(H::HostRewriteHeader(h)) => Some(HostRewrite::Header(header_name(
            ctx,
            &format!("{field}.host_rewrite_header"),
            h,
        )?)),
        Some(H::HostRewritePathRegex(r)) => {
            let p = r
                .pattern
                .as_ref()
                .ok_or_else(|| ctx.err(format!("{field}.host_rewrite_path_regex.pattern"), "is required"))?;
            Some(HostRewrite::PathRegex(
                unanchored_regex(ctx, &format!("{field}.host_rewrite_path_regex"), p)?,
                r.substitution.clone(),
            ))
        }
        Some(_) => {
            return Err(ctx.err(
                format!("{field}.host_rewrite"),
                "this host rewrite is not supported",
            ))
        }
    };
    let regex_rewrite = a
        .regex_rewrite
        .as_ref()
        .map(|r| {
            let p = r
                .pattern
                .as_ref()
                .ok_or_else(|| ctx.err(format!("{field}.regex_rewrite.pattern"), "is required"))?;
            Ok::<_, ConfigError>((
                unanchored_regex(ctx, &format!("{field}.regex_rewrite"), p)?,
                envoy_substitution(&r.substitution),
            ))
        })
        .transpose()?;
    if !a.prefix_rewrite.is_empty() && regex_rewrite.is_some() {
        return Err(ctx.err(
            format!("{field}.prefix_rewrite"),
            "cannot be combined with regex_rewrite",
        ));
    }
    let cluster_not_found_code = match a.cluster_not_found_response_code {
        0 => 503,
        1 => 404,
        2 => 500,
        n => {
            return Err(ctx.err(
                format!("{field}.cluster_not_found_response_code"),
                format!("unknown value {n}"),
            ))
        }
    };
    let mirrors = traffic::mirrors(
        ctx,
        &format!("{field}.request_mirror_policies"),
        &a.request_mirror_policies,
    )?;
    let hash_policy = traffic::hash_policies(ctx, &format!("{field}.hash_policy"), &a.hash_policy)?;
    let cors = a
        .cors
        .as_ref()
        .map(|c| traffic::route_cors(ctx, &format!("{field}.cors"), c).map(Arc::new))
        .transpose()?;
    for (set, f) in [
        (!a.upgrade_configs.is_empty(), "upgrade_configs"),
        (a.hedge_policy.is_some(), "hedge_policy"),
        (a.metadata_match.is_some(), "metadata_match"),
    ] {
        if set {
            ctx.unsupported(&format!("{field}.{f}"));
        }
    }
    Ok(RouteAction {
        cluster,
        cluster_not_found_code,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        timeout: timeout(
            ctx,
            &format!("{field}.timeout"),
            a.timeout.as_ref(),
            Some(Duration::from_secs(15)),
        )?,
        idle_timeout: timeout(
            ctx,
            &format!("{field}.idle_timeout"),
            a.idle_timeout.as_ref(),
            None,
        )?,
        retry_policy: a
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(ctx, &format!("{field}.retry_policy"), p))
            .transpose()?,
        mirrors,
        hash_policy,
        cors,
    })
}

/// Envoy substitutions use `\1`; the regex crate uses `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn retry_policy(ctx: &mut Ctx<'_>, field: &str, p: &route::RetryPolicy) -> Result<RetryPolicy, ConfigError> {
    let mut on = RetryOn::default();
    for cond in p.retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match cond {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "reset-before-request" => on.reset_before_request = true,
            "connect-failure" => on.connect_failure = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "cancelled" => on.grpc_cancelled = true,
            "deadline-exceeded" => on.grpc_deadline_exceeded = true,
            "resource-exhausted" => on.grpc_resource_exhausted = true,
            "unavailable" => on.grpc_unavailable = true,
            "internal" => on.grpc_internal = true,
            "envoy-ratelimited" | "retriable-headers" | "http3-post-connect-failure" => ctx.warn(
                format!("{field}.retry_on"),
                format!("condition {cond:?} is not supported; ignored"),
            ),
            other => {
                return Err(ctx.err(
                    format!("{field}.retry_on"),
                    format!("unknown retry condition {other:?}"),
                ))
            }
        }
    }
    let (base, max) = match &p.retry_back_off {
        Some(b) => {
            let base = opt_duration(
                ctx,
                &format!("{field}.retry_back_off.base_interval"),
                b.base_interval.as_ref(),
            )?
            .unwrap_or(Duration::from_millis(25));
            let max = opt_duration(
                ctx,
                &format!("{field}.retry_back_off.max_interval"),
                b.max_interval.as_ref(),
            )?
            .unwrap_or(base * 10);
            (base, max)
        }
        None => (Duration::from_millis(25), Duration::from_millis(250)),
    };
    Ok(RetryPolicy {
        retry_on: on,
        num_retries: u32_value(p.num_retries.as_ref()).unwrap_or(1),
        per_try_timeout: timeout(
            ctx,
            &format!("{field}.per_try_timeout"),
            p.per_try_timeout.as_ref(),
            None,
        )?,
        retriable_status_codes: p
            .retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        base_interval: base,
        max_interval: max,
        previous_hosts: traffic::retry_host_predicates(
            ctx,
            &format!("{field}.retry_host_predicate"),
            &p.retry_host_predicate,
        ),
        host_selection_max_attempts: match p.host_selection_retry_max_attempts {
            n if n < 0 => {
                return Err(ctx.err(
                    format!("{field}.host_selection_retry_max_attempts"),
                    format!("{n} is negative"),
                ))
            }
            // Envoy's default when unset: one extra selection.
            0 => 1,
            n => n.min(i64::from(u32::MAX)) as u32,
        },
    })
}

fn redirect(ctx: &Ctx<'_>, field: &str, r: &route::RedirectAction) -> Result<Redirect, ConfigError> {
    use route::redirect_action::PathRewriteSpecifier as P;
    use route::redirect_action::SchemeRewriteSpecifier as S;
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path = match &r.path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(P::PathRedirect(p)) => RedirectPath::Path(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::Prefix(p.clone()),
        Some(P::RegexRewrite(rr)) => {
            let p = rr
                .pattern
                .as_ref()
                .ok_or_else(|| ctx.err(format!("{field}.regex_rewrite.pattern"), "is required"))?;
            RedirectPath::Regex(
                unanchored_regex(ctx, &format!("{field}.regex_rewrite"), p)?,
                envoy_substitution(&rr.substitution),
            )
        }
        Some(_) => return Err(ctx.err(format!("{field}.path_rewrite"), "not supported")),
    };
    let code = match r.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        n => {
            return Err(ctx.err(
                format!("{field}.response_code"),
                format!("unknown redirect code {n}"),
            ))
        }
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| ctx.err(format!("{field}.port_redirect"), format!("{p} is out of range")))?,
        ),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path,
        code,
        strip_query: r.strip_query,
    })
}

// === Clusters ===

/// Converts a cluster (CDS resource or static).
pub fn cluster(c: &cluster::Cluster, warnings: &mut Vec<String>) -> Result<Cluster, ConfigError> {
    let mut ctx = Ctx::new("cluster", &c.name, warnings);
    if c.name.is_empty() {
        return Err(ctx.err("name", "a cluster needs a name"));
    }
    let discovery = match &c.cluster_discovery_type {
        None | Some(cluster::cluster::ClusterDiscoveryType::Type(0)) => Discovery::Static,
        Some(cluster::cluster::ClusterDiscoveryType::Type(1)) => Discovery::StrictDns,
        Some(cluster::cluster::ClusterDiscoveryType::Type(2)) => Discovery::LogicalDns,
        Some(cluster::cluster::ClusterDiscoveryType::Type(3)) => {
            let name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            Discovery::Eds(name)
        }
        Some(cluster::cluster::ClusterDiscoveryType::Type(4)) => Discovery::OriginalDst,
        Some(cluster::cluster::ClusterDiscoveryType::Type(n)) => {
            return Err(ctx.err("type", format!("unknown cluster type {n}")))
        }
        Some(cluster::cluster::ClusterDiscoveryType::ClusterType(t)) => {
            return Err(ctx.err(
                "cluster_type",
                format!("custom cluster type {} is not supported", t.name),
            ))
        }
    };
    let lb_policy = match c.lb_policy {
        0 => LbPolicy::RoundRobin,
        1 => {
            let choice_count = match &c.lb_config {
                Some(cluster::cluster::LbConfig::LeastRequestLbConfig(l)) => {
                    u32_value(l.choice_count.as_ref()).unwrap_or(2)
                }
                _ => 2,
            };
            if choice_count < 2 {
                return Err(ctx.err("least_request_lb_config.choice_count", "must be at least 2"));
            }
            LbPolicy::LeastRequest { choice_count }
        }
        3 => LbPolicy::Random,
        6 => LbPolicy::ClusterProvided,
        2 | 5 => traffic::hashing_lb(&ctx, c)?,
        n => return Err(ctx.err("lb_policy", format!("policy {n} is not supported"))),
    };
    let lb_policy = if discovery == Discovery::OriginalDst {
        LbPolicy::ClusterProvided
    } else {
        lb_policy
    };
    let endpoints = match &c.load_assignment {
        Some(la) => load_assignment(
            &ctx,
            "load_assignment",
            la,
            matches!(discovery, Discovery::StrictDns | Discovery::LogicalDns),
        )?,
        None => Vec::new(),
    };
    if discovery == Discovery::Static
        && endpoints
            .iter()
            .any(|e| matches!(e.address, EndpointAddress::Dns(..)))
    {
        return Err(ctx.err(
            "load_assignment",
            "STATIC clusters need IP addresses; use STRICT_DNS for hostnames",
        ));
    }
    let limits = match &c.circuit_breakers {
        Some(cb) => {
            // Only the DEFAULT priority is used by Skiff's router.
            let t = cb.thresholds.iter().find(|t| t.priority == 0);
            let d = Limits::default();
            match t {
                Some(t) => Limits {
                    max_connections: u32_value(t.max_connections.as_ref()).unwrap_or(d.max_connections),
                    max_pending_requests: u32_value(t.max_pending_requests.as_ref())
                        .unwrap_or(d.max_pending_requests),
                    max_requests: u32_value(t.max_requests.as_ref()).unwrap_or(d.max_requests),
                    max_retries: u32_value(t.max_retries.as_ref()).unwrap_or(d.max_retries),
                },
                None => d,
            }
        }
        None => Limits::default(),
    };
    let (protocol, common) = upstream_protocol(&mut ctx, c)?;
    let bind_address = c
        .upstream_bind_config
        .as_ref()
        .and_then(|b| b.source_address.as_ref())
        .map(|sa| socket(&ctx, "upstream_bind_config.source_address", sa).map(|a| a.ip()))
        .transpose()?;
    if let Some(ts) = &c.transport_socket {
        if !ts.name.ends_with("raw_buffer") {
            ctx.warn(
                "transport_socket",
                format!("{} is not supported yet; connecting in plaintext", ts.name),
            );
        }
    }
    if !c.transport_socket_matches.is_empty() {
        ctx.warn(
            "transport_socket_matches",
            "not supported yet; connecting in plaintext",
        );
    }
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(|o| traffic::outlier_detection(&mut ctx, o))
        .transpose()?;
    let healthy_panic_threshold = traffic::panic_threshold(&ctx, c)?;
    let dns = if matches!(discovery, Discovery::StrictDns | Discovery::LogicalDns) {
        traffic::dns(&mut ctx, c)?
    } else {
        DnsConfig::default()
    };
    for (set, f) in [
        (!c.health_checks.is_empty(), "health_checks"),
        (c.lb_subset_config.is_some(), "lb_subset_config"),
        (c.load_balancing_policy.is_some(), "load_balancing_policy"),
    ] {
        if set {
            ctx.unsupported(f);
        }
    }
    let service = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("services"))
        .and_then(|v| match &v.kind {
            Some(xds::pb::google::protobuf::value::Kind::ListValue(l)) => l.values.first(),
            _ => None,
        })
        .and_then(|v| match &v.kind {
            Some(xds::pb::google::protobuf::value::Kind::StructValue(s)) => s.fields.get("host"),
            _ => None,
        })
        .and_then(|v| match &v.kind {
            Some(xds::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
    Ok(Cluster {
        name: c.name.clone(),
        discovery,
        connect_timeout: opt_duration(&ctx, "connect_timeout", c.connect_timeout.as_ref())?
            .unwrap_or(Duration::from_secs(5)),
        lb_policy,
        endpoints,
        limits,
        protocol,
        bind_address,
        max_requests_per_connection: common
            .as_ref()
            .and_then(|o| u32_value(o.max_requests_per_connection.as_ref()))
            .or(u32_value(c.max_requests_per_connection.as_ref()))
            .filter(|n| *n > 0),
        idle_timeout: timeout(
            &ctx,
            "common_http_protocol_options.idle_timeout",
            common.as_ref().and_then(|o| o.idle_timeout.as_ref()),
            Some(Duration::from_secs(3600)),
        )?,
        dns,
        healthy_panic_threshold,
        outlier_detection,
        service,
    })
}

fn upstream_protocol(
    ctx: &mut Ctx<'_>,
    c: &cluster::Cluster,
) -> Result<(UpstreamProtocol, Option<core::HttpProtocolOptions>), ConfigError> {
    if let Some(any) = c.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS) {
        let field = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}]");
        let o: upstream_http::HttpProtocolOptions = decode(
            ctx,
            &field,
            any,
            &format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"),
        )?;
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig as P;
        use upstream_http::http_protocol_options::UpstreamProtocolOptions as U;
        let protocol = match &o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(P::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(ctx.err(field, "HTTP/3 upstreams are not supported"))
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::UseDownstream,
            Some(U::AutoConfig(_)) => {
                ctx.warn(&field, "auto_config (ALPN) needs TLS; using HTTP/1.1");
                UpstreamProtocol::Http1
            }
            None => UpstreamProtocol::Http1,
        };
        return Ok((protocol, o.common_http_protocol_options));
    }
    let protocol = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else if c.protocol_selection == 1 {
        UpstreamProtocol::UseDownstream
    } else {
        UpstreamProtocol::Http1
    };
    Ok((protocol, c.common_http_protocol_options))
}

/// Converts a ClusterLoadAssignment's endpoints (static `load_assignment` or EDS).
pub fn load_assignment(
    ctx: &Ctx<'_>,
    field: &str,
    la: &endpoint::ClusterLoadAssignment,
    allow_hostnames: bool,
) -> Result<Vec<EndpointConfig>, ConfigError> {
    let mut out = Vec::new();
    for (i, group) in la.endpoints.iter().enumerate() {
        if group.priority != 0 {
            // Failover priorities are not implemented: keep only priority 0.
            continue;
        }
        for (j, lb) in group.lb_endpoints.iter().enumerate() {
            let f = format!("{field}.endpoints[{i}].lb_endpoints[{j}]");
            let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(ctx.err(&f, "an endpoint is required (named endpoints are not supported)"));
            };
            let Some(core::address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(ctx.err(format!("{f}.endpoint.address"), "a socket_address is required"));
            };
            let address = match socket(ctx, &format!("{f}.endpoint.address"), sa) {
                Ok(a) => EndpointAddress::Socket(a),
                Err(_) if allow_hostnames => {
                    let port = match &sa.port_specifier {
                        Some(core::socket_address::PortSpecifier::PortValue(p)) if *p <= 65535 => *p as u16,
                        _ => {
                            return Err(
                                ctx.err(format!("{f}.endpoint.address.port_value"), "a port is required")
                            )
                        }
                    };
                    EndpointAddress::Dns(sa.address.clone(), port)
                }
                Err(e) => return Err(e),
            };
            let weight = u32_value(lb.load_balancing_weight.as_ref()).unwrap_or(1);
            if weight == 0 {
                return Err(ctx.err(format!("{f}.load_balancing_weight"), "must be at least 1"));
            }
            // HEALTHY(1), UNKNOWN(0) and DEGRADED(5) take traffic; UNHEALTHY(2), DRAINING(3), TIMEOUT(4) do not.
            let healthy = matches!(lb.health_status, 0 | 1 | 5);
            let labels = lb
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("istio"))
                .map(|s| {
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| match &v.kind {
                            Some(xds::pb::google::protobuf::value::Kind::StringValue(s)) => {
                                Some((k.clone(), s.clone()))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(EndpointConfig {
                address,
                weight,
                healthy,
                labels,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::envoy_substitution;

    #[test]
    fn substitutions_use_regex_crate_syntax() {
        assert_eq!(envoy_substitution(r"/v2/\1/x\12"), "/v2/${1}/x${12}");
        assert_eq!(envoy_substitution("$HOME"), "$$HOME");
    }
}
