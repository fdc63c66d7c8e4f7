//! Skiff's own, validated configuration: what the data path reads. Built once from Envoy's v3
//! protos by [`crate::convert`] (bootstrap file or xDS), so the hot path never looks at a proto,
//! a `typed_config` or an unchecked string.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use ipnet::IpNet;
use regex::Regex;

use crate::access_log::AccessLogSink;

/// Which way a listener's traffic flows (Envoy's `traffic_direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Unspecified,
    Inbound,
    Outbound,
}

/// A listener: a bound socket (or, with `bind_to_port: false`, only a target for connections
/// handed over by a `use_original_dst` listener) and the filter chains that serve it.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub bind_to_port: bool,
    /// Hand connections to the listener that matches their original destination (Envoy's
    /// `use_original_dst`; Istio sets it on virtualOutbound only).
    pub use_original_dst: bool,
    /// Read the original destination (the `original_dst` listener filter) without handing off:
    /// virtualInbound uses it to choose chains by the port the client dialled.
    pub restore_original_dst: bool,
    /// Sniff TLS (SNI, ALPN) before choosing a filter chain.
    pub tls_inspector: bool,
    /// Sniff HTTP/1.x and h2c before choosing a filter chain.
    pub http_inspector: bool,
    /// How long listener filters may wait for the first bytes.
    pub listener_filters_timeout: Duration,
    /// On that timeout, carry on with what is known (true) or close (false).
    pub continue_on_listener_filters_timeout: bool,
    /// `IP_TRANSPARENT` on the socket (TPROXY inbound).
    pub transparent: bool,
    pub direction: Direction,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
    /// Logs for connections that match no filter chain.
    pub access_logs: Vec<AccessLogSink>,
}

impl Listener {
    /// Whether choosing a chain needs anything sniffed from the first bytes.
    pub fn needs_sniffing(&self) -> bool {
        (self.tls_inspector || self.http_inspector)
            && self.filter_chains.iter().any(|c| {
                !c.matcher.server_names.is_empty()
                    || c.matcher.transport_protocol.is_some()
                    || !c.matcher.application_protocols.is_empty()
            })
    }
}

/// A filter chain: when it applies, and the network filter that serves the connection.
#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub filter: NetworkFilter,
    /// `transport_socket: envoy.transport_sockets.tls`: terminate TLS before the filter.
    pub tls: Option<Arc<DownstreamTls>>,
}

/// A `DownstreamTlsContext`, validated; certificates may still be SDS names to resolve.
#[derive(Debug)]
pub struct DownstreamTls {
    pub certificates: Vec<CertSource>,
    /// CA bundle to verify client certificates against (inline or SDS).
    pub validation: Option<CertSource>,
    pub require_client_certificate: bool,
    /// ALPN offered, in preference order (Istio gateways: `h2`, `http/1.1`).
    pub alpn: Vec<String>,
}

/// Where a certificate (or CA bundle) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// PEM material from the configuration itself.
    Inline(Arc<TlsMaterial>),
    /// An SDS secret name (`kubernetes://credentialName`), delivered over ADS.
    Sds(String),
}

/// PEM bytes of a certificate chain and key, or of a CA bundle (then `key` is empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub certificate_chain: Bytes,
    pub private_key: Bytes,
    pub trusted_ca: Bytes,
}

/// `filter_chain_match`, checked in Envoy's order by [`crate::filter_chain::select`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<IpNet>,
    /// Lowercase; `*.example.com` wildcards allowed.
    pub server_names: Vec<String>,
    /// `raw_buffer` or `tls`.
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<IpNet>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<IpNet>,
    pub source_ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceType {
    #[default]
    Any,
    /// The peer is this host (same IP or loopback).
    SameIpOrLoopback,
    External,
}

/// The terminal network filter of a chain.
#[derive(Clone, Debug)]
pub enum NetworkFilter {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxy>),
}

/// How a TCP proxy or a route names its upstream cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterTarget {
    Named(String),
    Weighted(Vec<WeightedCluster>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    /// Shared with the access log and metrics of every request (no copy per request).
    pub name: Arc<str>,
    pub weight: u32,
}

/// `envoy.filters.network.tcp_proxy`.
#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: ClusterTarget,
    /// Close both sides after this long without bytes either way (Envoy's default: 1 h).
    pub idle_timeout: Option<Duration>,
    pub access_logs: Vec<AccessLogSink>,
    /// `hash_policy: [{ source_ip: {} }]`: hash the client address (RING_HASH / MAGLEV).
    pub hash_source_ip: bool,
}

/// How the `server` response header is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServerHeader {
    #[default]
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// Downstream HTTP codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    #[default]
    Auto,
    Http1,
    Http2,
}

/// Where the HTTP connection manager's routes come from.
#[derive(Clone, Debug)]
pub enum RouteSource {
    Inline(Arc<RouteConfig>),
    /// Looked up by name in the current snapshot (RDS).
    Rds(String),
}

/// `envoy.filters.network.http_connection_manager`.
#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub routes: RouteSource,
    pub codec: Codec,
    /// The `server` header's value (a header value already: it goes on every response).
    pub server_name: http::HeaderValue,
    pub server_header: ServerHeader,
    /// Trust the connection's peer as the client (edge proxies); appends it to XFF.
    pub use_remote_address: bool,
    pub skip_xff_append: bool,
    pub xff_num_trusted_hops: u32,
    pub via: Option<String>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    /// Envoy's default is 5 minutes; `None` disables it.
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    /// How long a client may take to send the request headers (slowloris guard).
    pub request_headers_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    /// Clients whose `x-envoy-*` control headers (timeouts, retries) are trusted. Envoy's
    /// default trusts nobody; Istio-style configs list the pod networks.
    pub internal_addresses: Vec<IpNet>,
    pub access_logs: Vec<AccessLogSink>,
    /// HTTP filters before the router that Skiff executes (fault, CORS), in configured order.
    /// Empty for most sidecar listeners of a mesh without VirtualService faults/CORS: the
    /// request path then never looks at per-filter configuration.
    pub http_filters: Vec<HttpFilter>,
    /// `strip_matching_host_port` / `strip_any_host_port`: the `:port` taken off the Host /
    /// authority before routing and in what is forwarded.
    pub strip_port: StripPort,
}

impl HttpConnectionManager {
    /// How long a client may take to send request headers: Envoy leaves it unset, Skiff keeps a
    /// 60 s guard against slow clients when it is.
    pub fn header_timeout(&self) -> Duration {
        self.request_headers_timeout.unwrap_or(Duration::from_secs(60))
    }
}

/// Envoy's `StripPortType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StripPort {
    /// Neither option: the authority stays as sent.
    #[default]
    None,
    /// `strip_matching_host_port`: only a port equal to the connection's local port.
    Matching,
    /// `strip_any_host_port`: any numeric port.
    Any,
}

/// An HTTP filter Skiff runs before the router. `name` is the filter's configured name, the
/// key that `typed_per_filter_config` overrides use.
#[derive(Debug)]
pub enum HttpFilter {
    /// `envoy.filters.http.fault` with its filter-level settings.
    Fault {
        name: String,
        config: Arc<Fault>,
        stats: Arc<FaultStats>,
    },
    /// `envoy.filters.http.cors`: policies come from the route / virtual host.
    Cors { name: String },
}

/// A `typed_per_filter_config` entry Skiff understands.
#[derive(Debug, Clone)]
pub enum FilterOverride {
    Fault(Arc<Fault>),
    Cors(Arc<CorsPolicy>),
    /// `FilterConfig { disabled: true }`: the filter does not run for this route.
    Disabled,
}

/// Per-filter overrides at one level (route configuration, virtual host, route), by filter name.
pub type PerFilter = Vec<(String, FilterOverride)>;

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`.
#[derive(Debug, Default)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// Inject only for requests routed to this cluster.
    pub upstream_cluster: Option<String>,
    /// Inject only when these request headers match.
    pub headers: Vec<HeaderMatcher>,
    /// Inject only for these `x-envoy-downstream-service-node` values.
    pub downstream_nodes: Vec<String>,
    /// At most this many requests with an active fault at once (`max_active_faults`).
    pub max_active_faults: Option<u64>,
}

/// `http.<stat_prefix>.fault.*`: shared by every request through one fault filter.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub active_faults: std::sync::atomic::AtomicU64,
    pub delays_injected: std::sync::atomic::AtomicU64,
    pub aborts_injected: std::sync::atomic::AtomicU64,
    pub faults_overflow: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultDelay {
    pub duration: Duration,
    pub percent: Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub percent: Percent,
}

/// What an injected abort answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortStatus {
    Http(u16),
    /// A gRPC status: HTTP 200 with `grpc-status` (trailers-only) for gRPC requests.
    Grpc(u32),
}

/// A route's or virtual host's CORS policy (`config.route.v3.CorsPolicy`).
#[derive(Debug)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: Option<bool>,
    pub allow_private_network_access: Option<bool>,
    pub forward_not_matching_preflights: Option<bool>,
    /// `filter_enabled` (default 100%).
    pub enabled: Percent,
    /// `shadow_enabled` (default off): evaluate, count, but change nothing.
    pub shadow: Option<Percent>,
}

/// `require_tls` of a virtual host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequireTls {
    #[default]
    None,
    /// Redirect only requests from external clients.
    ExternalOnly,
    /// Redirect every plaintext request to https (Istio's `httpsRedirect`).
    All,
}

/// A fraction in millionths, Envoy's `FractionalPercent` normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent(pub u32);

impl Percent {
    pub const ALL: Percent = Percent(1_000_000);

    /// Draws whether this percentage applies to one request.
    pub fn sample(self) -> bool {
        self.0 >= 1_000_000 || (self.0 > 0 && fastrand::u32(0..1_000_000) < self.0)
    }
}

/// A header added by a route, virtual host or route configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderAdd {
    pub name: HeaderName,
    /// Raw value; may contain `%...%` command operators, expanded per request.
    pub value: String,
    pub action: AppendAction,
}

/// Envoy's `HeaderValueOption.append_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// Header changes at one level (route config, virtual host, route, weighted cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMutations {
    pub request_add: Vec<HeaderAdd>,
    pub request_remove: Vec<HeaderName>,
    pub response_add: Vec<HeaderAdd>,
    pub response_remove: Vec<HeaderName>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

/// A route configuration (RDS resource or inline).
#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// `virtual_hosts`' domains, for picking one per request (`DomainIndex::new`).
    pub domains: crate::route::DomainIndex,
    pub headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    pub ignore_port_in_host_matching: bool,
    pub max_direct_response_body_size: usize,
    /// Reject the configuration if a route names an unknown cluster (Envoy's default for
    /// inline route configs; RDS defaults to not checking).
    pub validate_clusters: bool,
    pub per_filter: PerFilter,
}

impl RouteConfig {
    /// Every cluster a route names explicitly.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter())
            .flat_map(|r| {
                let names: Vec<&str> = match &r.action {
                    Action::Forward(a) => match &a.cluster {
                        ClusterPick::Named(n) => vec![&**n],
                        ClusterPick::Weighted { clusters, .. } => {
                            clusters.iter().map(|(c, _)| &*c.name).collect()
                        }
                        ClusterPick::Header(_) => vec![],
                    },
                    _ => vec![],
                };
                names
            })
    }
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    /// Lowercase domains, as configured (`*`, `*.suffix`, `prefix*`, exact, optionally `:port`).
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderMutations,
    pub include_request_attempt_count: bool,
    pub retry_policy: Option<RetryPolicy>,
    pub require_tls: RequireTls,
    /// The deprecated `cors` field (used when no per-filter CORS policy is configured).
    pub cors: Option<Arc<CorsPolicy>>,
    pub per_filter: PerFilter,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderMutations,
    /// `decorator.operation` (Istio puts `FQDN:PORT/*` here).
    pub decorator: Option<String>,
    pub per_filter: PerFilter,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// Prefix that must end at a `/` boundary (`path_separated_prefix`).
    Separated(String),
    /// `connect_matcher`.
    Connect,
}

#[derive(Debug)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryMatcher>,
    /// Only gRPC requests (`content-type: application/grpc*`).
    pub grpc: bool,
}

/// Envoy's `StringMatcher`.
#[derive(Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug)]
pub struct StringMatcher {
    pub kind: StringMatch,
    pub ignore_case: bool,
}

#[derive(Debug)]
pub enum HeaderMatch {
    String(StringMatcher),
    Present(bool),
    /// `[start, end)` on the header parsed as an integer.
    Range(i64, i64),
}

#[derive(Debug)]
pub struct HeaderMatcher {
    /// A pseudo-header (`:authority`, `:path`, `:method`, `:scheme`) or a regular header name.
    pub name: String,
    pub kind: HeaderMatch,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

#[derive(Debug)]
pub struct QueryMatcher {
    pub name: String,
    /// `None`: present with any value.
    pub value: Option<StringMatcher>,
}

#[derive(Debug)]
pub enum Action {
    Forward(Box<RouteAction>),
    Redirect(Redirect),
    Direct { status: u16, body: Option<Bytes> },
}

#[derive(Debug)]
pub enum HostRewrite {
    Literal(String),
    /// Use the upstream host's address (`auto_host_rewrite`).
    Auto,
    Header(HeaderName),
    PathRegex(Regex, String),
}

#[derive(Debug)]
pub enum ClusterPick {
    /// Shared with the access log and metrics of every request (no copy per request).
    Named(Arc<str>),
    Header(HeaderName),
    Weighted {
        clusters: Vec<(WeightedCluster, HeaderMutations)>,
        total: u32,
    },
}

#[derive(Debug)]
pub struct RouteAction {
    pub cluster: ClusterPick,
    pub cluster_not_found_code: u16,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<HostRewrite>,
    /// `None`: no timeout (Envoy's `0s`); unset in the config means Envoy's 15 s.
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry_policy: Option<RetryPolicy>,
    /// `request_mirror_policies`: fire-and-forget copies to other clusters.
    pub mirrors: Vec<MirrorPolicy>,
    /// `hash_policy`: the request hash for RING_HASH / MAGLEV clusters.
    pub hash_policy: Vec<HashPolicy>,
    /// The deprecated `cors` field (used when no per-filter CORS policy is configured).
    pub cors: Option<Arc<CorsPolicy>>,
}

/// One `request_mirror_policies` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorPolicy {
    pub cluster: String,
    /// `runtime_fraction.default_value` (100% when unset).
    pub percent: Percent,
    /// Keep the Host as is instead of appending `-shadow`.
    pub keep_host: bool,
}

/// One `hash_policy` entry.
#[derive(Debug)]
pub struct HashPolicy {
    pub kind: HashKind,
    /// Stop at this policy if it produced a hash.
    pub terminal: bool,
}

#[derive(Debug)]
pub enum HashKind {
    /// A header (lowercase; `:authority`, `:path`, `:method` allowed).
    Header {
        name: String,
        rewrite: Option<(Regex, String)>,
    },
    /// Hash a cookie; with a `ttl`, generate the cookie when the request has none.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
        attributes: Vec<(String, String)>,
    },
    SourceIp,
    QueryParameter(String),
}

/// When and how often to retry (Envoy's `RetryPolicy`, the conditions Skiff implements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `retry_host_predicate: envoy.retry_host_predicates.previous_hosts`: retries avoid hosts
    /// already tried.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts` (Envoy's default: 1 extra selection).
    pub host_selection_max_attempts: u32,
}

/// `retry_on` conditions as flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub reset_before_request: bool,
    pub connect_failure: bool,
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    pub retriable_status_codes: bool,
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
    pub grpc_internal: bool,
}

#[derive(Debug)]
pub enum RedirectPath {
    Keep,
    Path(String),
    Prefix(String),
    Regex(Regex, String),
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: RedirectPath,
    pub code: u16,
    pub strip_query: bool,
}

/// How a cluster finds its hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    Static,
    /// Endpoints from xDS (or `load_assignment` until they arrive); the EDS service name.
    Eds(String),
    /// The connection's original destination is the host.
    OriginalDst,
    /// Hostnames resolved with DNS, every address a host.
    StrictDns,
    /// Hostname resolved with DNS, first address used.
    LogicalDns,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// Power of `choice_count` random choices, fewest active requests (weighted when weights differ).
    LeastRequest {
        choice_count: u32,
    },
    Random,
    /// The cluster picks (ORIGINAL_DST).
    ClusterProvided,
    /// Ketama ring of xxHash64(`address_i`) points (Envoy's RING_HASH).
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
    },
    /// Maglev lookup table of a prime size (Envoy's MAGLEV).
    Maglev {
        table_size: u64,
    },
}

impl LbPolicy {
    /// Whether the policy consumes the request hash (then `hash_policy` is evaluated).
    pub fn is_hashing(self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// `outlier_detection`, with Envoy's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub enforcing_success_rate: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub enforcing_failure_percentage: u32,
}

/// `dns_lookup_family`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsLookupFamily {
    /// IPv6 if the name has any, else IPv4.
    #[default]
    Auto,
    V4Only,
    V6Only,
    /// IPv4 if the name has any, else IPv6.
    V4Preferred,
    /// Both families.
    All,
}

/// How a STRICT_DNS / LOGICAL_DNS cluster resolves its hostnames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub refresh_rate: Duration,
    /// `dns_failure_refresh_rate.base_interval` (defaults to `refresh_rate`).
    pub failure_refresh_rate: Duration,
    pub respect_ttl: bool,
    pub lookup_family: DnsLookupFamily,
    /// Name servers from `typed_dns_resolver_config` / `dns_resolvers`; empty: the system's
    /// (`/etc/resolv.conf`, so the pod's DNS in a pod).
    pub resolvers: Vec<SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            refresh_rate: Duration::from_secs(5),
            failure_refresh_rate: Duration::from_secs(5),
            respect_ttl: false,
            lookup_family: DnsLookupFamily::Auto,
            resolvers: Vec::new(),
        }
    }
}

/// Upstream HTTP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// Same as downstream.
    UseDownstream,
}

/// Circuit-breaker limits for one priority (Envoy's defaults: 1024, 1024, 1024, 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// An endpoint as configured (address or hostname for DNS clusters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    pub address: EndpointAddress,
    pub weight: u32,
    pub healthy: bool,
    /// Locality/labels from metadata (Istio's `istio` filter metadata), for stats.
    pub labels: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Socket(SocketAddr),
    Dns(String, u16),
}

/// A cluster's configuration. Its hosts and counters live in [`crate::cluster::ClusterState`].
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    pub endpoints: Vec<EndpointConfig>,
    pub limits: Limits,
    pub protocol: UpstreamProtocol,
    /// Source address for upstream connections (Istio's inbound clusters use 127.0.0.6).
    pub bind_address: Option<IpAddr>,
    pub max_requests_per_connection: Option<u32>,
    /// Close idle upstream connections after this long (Envoy's default: 1 h).
    pub idle_timeout: Option<Duration>,
    pub dns: DnsConfig,
    /// `common_lb_config.healthy_panic_threshold` in percent (Envoy's default 50; 0 disables).
    pub healthy_panic_threshold: u32,
    pub outlier_detection: Option<OutlierDetection>,
    /// `istio` service metadata (`services[0].host`), for `destination_service` labels.
    pub service: Option<String>,
}

impl Cluster {
    /// `BlackHoleCluster`-style clusters: static with no endpoints.
    pub fn is_black_hole(&self) -> bool {
        self.discovery == Discovery::Static && self.endpoints.is_empty()
    }
}
