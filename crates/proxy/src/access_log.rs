//! Access logs with Envoy's command operators (`%START_TIME%`, `%REQ(X?Y):N%`, `%RESPONSE_FLAGS%`,
//! …): one line per HTTP request or TCP connection, in Istio's default format unless configured
//! otherwise. Parsing is done once per config; formatting is allocation-light.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

/// Istio 1.19–1.24's default access log format (`EnvoyTextLogFormat`).
pub const ISTIO_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Envoy's own default format (used when a file logger has no format).
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Envoy's response flags. Envoy prints them in the order they were set (a retry limit
/// reached before the connect failure that ends the request prints `URX,UF`), so the set
/// remembers its insertion order.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseFlags {
    bits: u32,
    /// Flag indices (5 bits each) in insertion order.
    order: u64,
    len: u8,
}

/// Equal when the same flags are set, whatever their order.
impl PartialEq for ResponseFlags {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl Eq for ResponseFlags {}

macro_rules! flags {
    ($($name:ident = $bit:expr),* $(,)?) => {
        impl ResponseFlags {
            $(pub const $name: Self = Self { bits: 1 << $bit, order: $bit, len: 1 };)*
        }
    };
}

flags! {
    LH = 0, UH = 1, UT = 2, LR = 3, UR = 4, UF = 5, UC = 6, UO = 7, NR = 8, DI = 9, FI = 10,
    RL = 11, UAEX = 12, RLSE = 13, DC = 14, URX = 15, SI = 16, IH = 17, DPE = 18, UMSDR = 19,
    RFCF = 20, NFCF = 21, DT = 22, UPE = 23, NC = 24, OM = 25, DF = 26,
}

impl ResponseFlags {
    const NAMES: [&'static str; 27] = [
        "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX",
        "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF",
    ];

    pub fn empty() -> Self {
        Self::default()
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// Adds the flags of `other` not set yet, after the ones already set.
    pub fn insert(&mut self, other: Self) {
        for i in other.indices() {
            if self.bits & (1 << i) == 0 {
                self.bits |= 1 << i;
                if self.len < 12 {
                    self.order |= u64::from(i) << (5 * self.len);
                    self.len += 1;
                }
            }
        }
    }

    /// Flag indices in insertion order.
    fn indices(self) -> impl Iterator<Item = u32> {
        let listed = (0..self.len).map(move |k| ((self.order >> (5 * k)) & 31) as u32);
        // Flags beyond the 12 remembered in order follow in table order.
        let rest = (0..27u32).filter(move |i| {
            self.bits & (1 << i) != 0 && !(0..self.len).any(|k| ((self.order >> (5 * k)) & 31) as u32 == *i)
        });
        listed.chain(rest)
    }

    pub fn contains(self, other: Self) -> bool {
        self.bits & other.bits == other.bits && other.bits != 0
    }

    pub fn intersects(self, other: Self) -> bool {
        self.bits & other.bits != 0
    }

    /// Parses one short name (`UF`), as used by `response_flag_filter`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES.iter().position(|n| *n == name).map(|i| {
            let mut f = Self::default();
            f.insert(Self {
                bits: 1 << i,
                order: i as u64,
                len: 1,
            });
            f
        })
    }

    /// `UF,URX`, or `-` when none.
    pub fn write_short(self, out: &mut String) {
        if self.bits == 0 {
            out.push('-');
            return;
        }
        for (n, i) in self.indices().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(Self::NAMES[i as usize]);
        }
    }

    /// Bits and insertion order: equal values print the same short string, so this can key
    /// caches of label values without formatting the flags.
    pub fn raw(self) -> (u32, u64, u8) {
        (self.bits, self.order, self.len)
    }

    pub fn to_short_string(self) -> String {
        let mut s = String::new();
        self.write_short(&mut s);
        s
    }
}

/// The request as the router saw it last (after rewrites), for `%REQ(...)%`.
#[derive(Clone, Debug)]
pub struct RequestView {
    pub method: String,
    pub path: String,
    /// (A header value: an HTTP/1 request's unchanged `host` is shared here, not copied.)
    pub authority: HeaderValue,
    pub scheme: String,
    pub headers: HeaderMap,
}

impl RequestView {
    pub fn authority(&self) -> &str {
        self.authority.to_str().unwrap_or("")
    }
}

/// Everything a log line may print about one request or TCP connection.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// Wall-clock start, `%START_TIME%`. An HTTP request reads the wall clock only when it is
    /// logged (at its end, less its duration): one clock read fewer per request otherwise.
    pub start_time: Option<SystemTime>,
    pub duration: Duration,
    pub request: Option<RequestView>,
    pub response_headers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    /// `HTTP/1.1`, `HTTP/2`; `None` for TCP.
    pub protocol: Option<&'static str>,
    /// 0 when no response was sent (and for TCP).
    pub response_code: u16,
    pub flags: ResponseFlags,
    /// Mostly a fixed string (`via_upstream`): no allocation per request then.
    pub response_code_details: Option<std::borrow::Cow<'static, str>>,
    pub connection_termination_details: Option<String>,
    pub upstream_transport_failure_reason: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_local_address: Option<SocketAddr>,
    pub downstream_local_address: SocketAddr,
    pub downstream_remote_address: SocketAddr,
    pub requested_server_name: Option<String>,
    /// `TLSv1.3` on a TLS-terminated connection.
    pub downstream_tls_version: Option<&'static str>,
    pub route_name: Option<Arc<str>>,
    pub connection_id: u64,
    pub attempt_count: u32,
    /// Time to the first upstream response byte (headers), for `%RESPONSE_DURATION%`.
    pub response_duration: Option<Duration>,
}

impl LogRecord {
    /// A record for a connection or request, before anything is known (`start_time` included).
    pub fn new(downstream_local: SocketAddr, downstream_remote: SocketAddr) -> Self {
        LogRecord {
            start_time: None,
            duration: Duration::ZERO,
            request: None,
            response_headers: None,
            response_trailers: None,
            protocol: None,
            response_code: 0,
            flags: ResponseFlags::empty(),
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: downstream_local,
            downstream_remote_address: downstream_remote,
            requested_server_name: None,
            downstream_tls_version: None,
            route_name: None,
            connection_id: 0,
            attempt_count: 0,
            response_duration: None,
        }
    }
}

/// A header selector `X?Y`: header X, else header Y (pseudo-headers allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
struct HeaderSel {
    main: String,
    alt: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    StartTime(Option<String>),
    Req(HeaderSel),
    Resp(HeaderSel),
    Trailer(HeaderSel),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamRequestAttemptCount,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamRemotePort,
    RequestedServerName,
    DownstreamTlsVersion,
    RouteName,
    ConnectionId,
    Hostname,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Op(Op, Option<usize>),
}

/// A parsed format string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pieces: Vec<Piece>,
}

/// A format string that does not parse; names the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("access log format: {0}")]
pub struct FormatError(pub String);

fn parse_sel(args: &str, op: &str) -> Result<HeaderSel, FormatError> {
    let (main, alt) = match args.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (args, None),
    };
    if main.is_empty() || alt.is_some_and(str::is_empty) {
        return Err(FormatError(format!("%{op}({args})% needs a header name")));
    }
    Ok(HeaderSel {
        main: main.to_ascii_lowercase(),
        alt: alt.map(str::to_ascii_lowercase),
    })
}

impl Format {
    /// Parses an Envoy format string.
    pub fn parse(s: &str) -> Result<Format, FormatError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            // `%%` is a literal percent sign.
            if let Some(r) = rest.strip_prefix('%') {
                text.push('%');
                rest = r;
                continue;
            }
            let end =
                find_op_end(rest).ok_or_else(|| FormatError(format!("unterminated operator in {s:?}")))?;
            let body = &rest[..end];
            rest = &rest[end + 1..];
            // An optional `:N` after the closing `%` truncates.
            let mut truncate = None;
            if let Some(r) = rest.strip_prefix(':') {
                let digits = r.bytes().take_while(u8::is_ascii_digit).count();
                if digits > 0 {
                    truncate = r[..digits].parse().ok();
                    rest = &r[digits..];
                }
            }
            // Also `%REQ(X):N%` — truncation inside the operator.
            let (body, inner_trunc) = match body.rsplit_once(':') {
                Some((b, n))
                    if b.ends_with(')') && !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) =>
                {
                    (b, n.parse().ok())
                }
                _ => (body, None),
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Op(parse_op(body)?, inner_trunc.or(truncate)));
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format { pieces })
    }

    /// Istio's default text format.
    pub fn istio_default() -> Format {
        // The constant is known to parse; fall back to a bare line if that ever changed.
        Format::parse(ISTIO_DEFAULT_FORMAT).unwrap_or(Format {
            pieces: vec![Piece::Text("\n".into())],
        })
    }

    /// Renders one line.
    pub fn render(&self, r: &LogRecord) -> String {
        let mut out = String::with_capacity(256);
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Op(op, trunc) => {
                    let start = out.len();
                    write_op(&mut out, op, r);
                    if out.len() == start {
                        out.push('-');
                    } else if let Some(n) = trunc {
                        truncate_at(&mut out, start, *n);
                    }
                }
            }
        }
        out
    }
}

/// Finds the `%` that closes an operator, skipping those inside `(...)` (strftime formats).
fn find_op_end(s: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '%' if depth <= 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn truncate_at(out: &mut String, start: usize, n: usize) {
    let value = &out[start..];
    if let Some((idx, _)) = value.char_indices().nth(n) {
        out.truncate(start + idx);
    }
}

fn parse_op(body: &str) -> Result<Op, FormatError> {
    let (name, args) = match body.find('(') {
        Some(i) if body.ends_with(')') => (&body[..i], Some(&body[i + 1..body.len() - 1])),
        _ => (body, None),
    };
    let need = || args.ok_or_else(|| FormatError(format!("%{name}% needs an argument")));
    Ok(match name {
        "START_TIME" => Op::StartTime(args.filter(|a| !a.is_empty()).map(str::to_owned)),
        "REQ" => Op::Req(parse_sel(need()?, name)?),
        "RESP" => Op::Resp(parse_sel(need()?, name)?),
        "TRAILER" => Op::Trailer(parse_sel(need()?, name)?),
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "RESPONSE_DURATION" => Op::ResponseDuration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::UpstreamRequestAttemptCount,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" | "DOWNSTREAM_PEER_ADDRESS" => {
            Op::DownstreamRemoteAddress
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Op::DownstreamRemoteAddressWithoutPort
        }
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => Op::DownstreamRemotePort,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "DOWNSTREAM_TLS_VERSION" => Op::DownstreamTlsVersion,
        "ROUTE_NAME" => Op::RouteName,
        "CONNECTION_ID" => Op::ConnectionId,
        "HOSTNAME" => Op::Hostname,
        other => return Err(FormatError(format!("unsupported command operator %{other}%"))),
    })
}

fn header<'a>(headers: &'a HeaderMap, req: Option<&'a RequestView>, name: &str) -> Option<&'a str> {
    if let (Some(r), Some(pseudo)) = (req, name.strip_prefix(':')) {
        let v = match pseudo {
            "method" => r.method.as_str(),
            "path" => r.path.as_str(),
            "authority" => r.authority(),
            "scheme" => r.scheme.as_str(),
            _ => "",
        };
        return (!v.is_empty()).then_some(v);
    }
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn select<'a>(
    headers: Option<&'a HeaderMap>,
    req: Option<&'a RequestView>,
    sel: &HeaderSel,
) -> Option<&'a str> {
    // `:authority` falls back to `host` for HTTP/1 requests.
    let h = headers?;
    header(h, req, &sel.main).or_else(|| sel.alt.as_deref().and_then(|alt| header(h, req, alt)))
}

fn write_op(out: &mut String, op: &Op, r: &LogRecord) {
    let req = r.request.as_ref();
    let req_headers = req.map(|q| &q.headers);
    match op {
        Op::StartTime(fmt) => match r.start_time {
            Some(t) => write_time(out, t, fmt.as_deref()),
            None => out.push('-'),
        },
        Op::Req(sel) => {
            if let Some(v) = select(req_headers, req, sel) {
                out.push_str(v);
            }
        }
        Op::Resp(sel) => {
            if let Some(v) = select(r.response_headers.as_ref(), None, sel) {
                out.push_str(v);
            }
        }
        Op::Trailer(sel) => {
            if let Some(v) = select(r.response_trailers.as_ref(), None, sel) {
                out.push_str(v);
            }
        }
        Op::Protocol => {
            if let Some(p) = r.protocol {
                out.push_str(p);
            }
        }
        Op::ResponseCode => {
            let _ = write!(out, "{}", r.response_code);
        }
        Op::ResponseFlags => r.flags.write_short(out),
        Op::ResponseCodeDetails => out.push_str(r.response_code_details.as_deref().unwrap_or("")),
        Op::ConnectionTerminationDetails => {
            out.push_str(r.connection_termination_details.as_deref().unwrap_or(""))
        }
        Op::UpstreamTransportFailureReason => {
            out.push_str(r.upstream_transport_failure_reason.as_deref().unwrap_or(""))
        }
        Op::BytesReceived => {
            let _ = write!(out, "{}", r.bytes_received);
        }
        Op::BytesSent => {
            let _ = write!(out, "{}", r.bytes_sent);
        }
        Op::Duration => {
            let _ = write!(out, "{}", r.duration.as_millis());
        }
        Op::ResponseDuration => {
            if let Some(d) = r.response_duration {
                let _ = write!(out, "{}", d.as_millis());
            }
        }
        Op::UpstreamHost => {
            if let Some(h) = r.upstream_host {
                let _ = write!(out, "{h}");
            }
        }
        Op::UpstreamCluster => out.push_str(r.upstream_cluster.as_deref().unwrap_or("")),
        Op::UpstreamLocalAddress => {
            if let Some(a) = r.upstream_local_address {
                let _ = write!(out, "{a}");
            }
        }
        Op::UpstreamRequestAttemptCount => {
            let _ = write!(out, "{}", r.attempt_count);
        }
        Op::DownstreamLocalAddress => {
            let _ = write!(out, "{}", r.downstream_local_address);
        }
        Op::DownstreamLocalAddressWithoutPort => {
            let _ = write!(out, "{}", r.downstream_local_address.ip());
        }
        Op::DownstreamLocalPort => {
            let _ = write!(out, "{}", r.downstream_local_address.port());
        }
        Op::DownstreamRemoteAddress => {
            let _ = write!(out, "{}", r.downstream_remote_address);
        }
        Op::DownstreamRemoteAddressWithoutPort => {
            let _ = write!(out, "{}", r.downstream_remote_address.ip());
        }
        Op::DownstreamRemotePort => {
            let _ = write!(out, "{}", r.downstream_remote_address.port());
        }
        Op::RequestedServerName => out.push_str(r.requested_server_name.as_deref().unwrap_or("")),
        Op::DownstreamTlsVersion => out.push_str(r.downstream_tls_version.unwrap_or("")),
        Op::RouteName => out.push_str(r.route_name.as_deref().unwrap_or("")),
        Op::ConnectionId => {
            let _ = write!(out, "{}", r.connection_id);
        }
        Op::Hostname => out.push_str(hostname()),
    }
}

fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| nix_hostname().unwrap_or_default())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A UTC calendar time from a Unix timestamp (Howard Hinnant's civil-from-days).
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    unix: i64,
}

fn civil(t: SystemTime) -> Civil {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(_) => (0, 0),
    };
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (tod / 3600) as u32,
        minute: (tod % 3600 / 60) as u32,
        second: (tod % 60) as u32,
        nanos,
        unix: secs,
    }
}

/// Envoy's `%START_TIME%`: `2018-04-03T23:06:09.123Z` by default, else a strftime-like format
/// with Envoy's extras (`%s`, `%f`, `%3f`, `%6f`, `%9f`, `%E3S`…).
pub fn write_time(out: &mut String, t: SystemTime, fmt: Option<&str>) {
    let c = civil(t);
    let Some(fmt) = fmt else {
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            c.nanos / 1_000_000
        );
        return;
    };
    let mut chars = fmt.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        let mut digits = String::new();
        let mut e = false;
        if chars.peek() == Some(&'E') {
            e = true;
            chars.next();
        }
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        let width: usize = digits.parse().unwrap_or(9);
        let frac = |w: usize| {
            let w = w.clamp(1, 9);
            format!("{:09}", c.nanos)[..w].to_string()
        };
        match chars.next() {
            Some('Y') => {
                let _ = write!(out, "{:04}", c.year);
            }
            Some('m') => {
                let _ = write!(out, "{:02}", c.month);
            }
            Some('d') => {
                let _ = write!(out, "{:02}", c.day);
            }
            Some('H') => {
                let _ = write!(out, "{:02}", c.hour);
            }
            Some('M') => {
                let _ = write!(out, "{:02}", c.minute);
            }
            Some('S') if e => {
                let _ = write!(
                    out,
                    "{:02}.{}",
                    c.second,
                    frac(if digits.is_empty() { 9 } else { width })
                );
            }
            Some('S') => {
                let _ = write!(out, "{:02}", c.second);
            }
            Some('s') => {
                let _ = write!(out, "{}", c.unix);
            }
            Some('f') => out.push_str(&frac(width)),
            Some('z') => out.push_str("+0000"),
            Some('Z') => out.push_str("UTC"),
            Some('F') => {
                let _ = write!(out, "{:04}-{:02}-{:02}", c.year, c.month, c.day);
            }
            Some('T') => {
                let _ = write!(out, "{:02}:{:02}:{:02}", c.hour, c.minute, c.second);
            }
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
}

/// Which records a sink writes (`response_flag_filter`, `status_code_filter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFilter {
    ResponseFlags(ResponseFlags),
    /// Status code compared with `op` to `value`.
    StatusCode(CmpOp, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ge,
    Le,
}

impl LogFilter {
    pub fn matches(&self, r: &LogRecord) -> bool {
        match self {
            LogFilter::ResponseFlags(f) if f.is_empty() => !r.flags.is_empty(),
            LogFilter::ResponseFlags(f) => r.flags.intersects(*f),
            LogFilter::StatusCode(CmpOp::Eq, v) => r.response_code == *v,
            LogFilter::StatusCode(CmpOp::Ge, v) => r.response_code >= *v,
            LogFilter::StatusCode(CmpOp::Le, v) => r.response_code <= *v,
        }
    }
}

/// A destination for log lines: stdout, stderr or a file, written in batches like Envoy's
/// file access log (flushed every `flush_interval`, or when 64 KiB are pending).
#[derive(Debug)]
pub struct LogWriter {
    path: String,
    pending: Mutex<Vec<u8>>,
}

const FLUSH_AT: usize = 64 * 1024;

static WRITERS: OnceLock<Mutex<Vec<Weak<LogWriter>>>> = OnceLock::new();
static FLUSH_INTERVAL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// Sets how often pending log lines are written (Envoy's `--file-flush-interval-msec`).
pub fn set_flush_interval(interval: Duration) {
    FLUSH_INTERVAL_MS.store(
        interval.as_millis().max(1) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

impl LogWriter {
    /// The writer for `path` (`/dev/stdout`, `/dev/stderr` or a file), shared by every sink
    /// that names the same path.
    pub fn open(path: &str) -> Arc<LogWriter> {
        let writers = WRITERS.get_or_init(|| {
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(flush_loop)
                .map(|_| ())
                .unwrap_or_else(|e| tracing::warn!(error = %e, "no access log flush thread"));
            Mutex::new(Vec::new())
        });
        let mut list = writers.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        if let Some(w) = list.iter().filter_map(Weak::upgrade).find(|w| w.path == path) {
            return w;
        }
        let w = Arc::new(LogWriter {
            path: path.to_owned(),
            pending: Mutex::new(Vec::new()),
        });
        list.push(Arc::downgrade(&w));
        w
    }

    pub fn write_line(&self, line: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend_from_slice(line.as_bytes());
        if pending.len() >= FLUSH_AT {
            let batch = std::mem::take(&mut *pending);
            drop(pending);
            self.write_out(&batch);
        }
    }

    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if !batch.is_empty() {
            self.write_out(&batch);
        }
    }

    fn write_out(&self, bytes: &[u8]) {
        let result = match self.path.as_str() {
            "/dev/stdout" => std::io::stdout()
                .lock()
                .write_all(bytes)
                .and_then(|()| std::io::stdout().flush()),
            "/dev/stderr" => std::io::stderr().lock().write_all(bytes),
            path => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(bytes)),
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path, error = %e, "cannot write access log");
        }
    }
}

fn flush_loop() {
    loop {
        std::thread::sleep(Duration::from_millis(
            FLUSH_INTERVAL_MS.load(std::sync::atomic::Ordering::Relaxed),
        ));
        flush_all();
    }
}

/// Writes every pending line now (on shutdown, and by the flush thread).
pub fn flush_all() {
    let Some(writers) = WRITERS.get() else { return };
    let list: Vec<Arc<LogWriter>> = writers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for w in list {
        w.flush();
    }
}

/// One configured access log: format, optional filter, destination.
#[derive(Clone, Debug)]
pub struct AccessLogSink {
    pub format: Arc<Format>,
    pub filter: Option<LogFilter>,
    pub writer: Arc<LogWriter>,
}

impl AccessLogSink {
    pub fn log(&self, r: &LogRecord) {
        if self.filter.as_ref().is_none_or(|f| f.matches(r)) {
            self.writer.write_line(&self.format.render(r));
        }
    }
}

/// Writes `r` to every sink.
pub fn emit(sinks: &[AccessLogSink], r: &LogRecord) {
    for s in sinks {
        s.log(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record() -> LogRecord {
        let mut r = LogRecord::new(
            "198.18.0.11:80".parse().unwrap(),
            "198.18.0.10:51234".parse().unwrap(),
        );
        r.start_time = Some(UNIX_EPOCH + Duration::from_millis(1_641_221_996_123));
        r.duration = Duration::from_millis(5);
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/7.29.0".parse().unwrap());
        headers.insert(
            "x-request-id",
            "c2d9d2b9-2d0b-4a67-b8a5-6b5d0e6c1c44".parse().unwrap(),
        );
        r.request = Some(RequestView {
            method: "HEAD".into(),
            path: "/".into(),
            authority: HeaderValue::from_static("canary"),
            scheme: "http".into(),
            headers,
        });
        let mut resp = HeaderMap::new();
        resp.insert("x-envoy-upstream-service-time", "4".parse().unwrap());
        r.response_headers = Some(resp);
        r.protocol = Some("HTTP/1.1");
        r.response_code = 200;
        r.response_code_details = Some("via_upstream".into());
        r.bytes_sent = 0;
        r.upstream_host = Some("198.18.0.12:80".parse().unwrap());
        r.upstream_cluster = Some("outbound|80|v1|canary.canary.svc.cluster.local".into());
        r.upstream_local_address = Some("198.18.0.10:40000".parse().unwrap());
        r.route_name = Some("default".into());
        r
    }

    #[test]
    fn istio_default_line() {
        assert_eq!(
            Format::istio_default().render(&record()),
            "[2022-01-03T14:59:56.123Z] \"HEAD / HTTP/1.1\" 200 - via_upstream - \"-\" 0 0 5 4 \"-\" \"curl/7.29.0\" \
             \"c2d9d2b9-2d0b-4a67-b8a5-6b5d0e6c1c44\" \"canary\" \"198.18.0.12:80\" \
             outbound|80|v1|canary.canary.svc.cluster.local 198.18.0.10:40000 198.18.0.11:80 198.18.0.10:51234 - default\n"
        );
    }

    #[test]
    fn fallback_truncation_and_literals() {
        let f = Format::parse(
            "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(USER-AGENT):4% %REQ(X-MISSING)% 100%% %PROTOCOL%",
        )
        .unwrap();
        let mut r = record();
        assert_eq!(f.render(&r), "/ curl - 100% HTTP/1.1");
        r.request
            .as_mut()
            .unwrap()
            .headers
            .insert("x-envoy-original-path", "/nginx".parse().unwrap());
        r.protocol = None;
        assert_eq!(f.render(&r), "/nginx curl - 100% -");
        assert_eq!(Format::parse("%REQ(USER-AGENT)%:2").unwrap().render(&r), "cu");
    }

    #[test]
    fn flags_print_in_envoy_order() {
        let mut f = ResponseFlags::empty();
        assert_eq!(f.to_short_string(), "-");
        // Envoy 1.40 prints flags in the order they were set (checked in proxy_diff.rs: a
        // connect failure after the last retry logs `URX,UF`).
        f.insert(ResponseFlags::URX);
        f.insert(ResponseFlags::UF);
        f.insert(ResponseFlags::URX);
        assert_eq!(f.to_short_string(), "URX,UF");
        let mut g = ResponseFlags::empty();
        g.insert(ResponseFlags::DI);
        g.insert(ResponseFlags::FI);
        assert_eq!(g.to_short_string(), "DI,FI");
        assert_eq!(f, {
            let mut h = ResponseFlags::UF;
            h.insert(ResponseFlags::URX);
            h
        });
        assert_eq!(ResponseFlags::from_name("NR"), Some(ResponseFlags::NR));
    }

    #[test]
    fn start_time_formats() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let mut s = String::new();
        write_time(&mut s, t, Some("%Y/%m/%dT%H:%M:%E3S %s %6f"));
        assert_eq!(s, "2023/11/14T22:13:20.123 1700000000 123456");
        let mut leap = String::new();
        write_time(&mut leap, UNIX_EPOCH + Duration::from_secs(951_782_400), None);
        assert_eq!(leap, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn bad_formats_name_the_operator() {
        assert_eq!(
            Format::parse("%NOPE%").unwrap_err(),
            FormatError("unsupported command operator %NOPE%".into())
        );
        assert!(Format::parse("%REQ()%").is_err());
        assert!(Format::parse("%START_TIME").is_err());
    }
}
