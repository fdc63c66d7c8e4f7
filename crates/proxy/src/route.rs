//! Virtual host and route selection, as Envoy does it: exact domain, then the longest `*suffix`
//! wildcard, then the longest `prefix*` wildcard, then `*`; within the virtual host, the first
//! route whose path, headers and query parameters match. Pure data code.

use std::borrow::Cow;
use std::collections::HashMap;

use http::HeaderMap;

use crate::model::*;

/// The parts of a request routing looks at.
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path` including the query string.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestHead<'_> {
    /// A header's value as Envoy's matchers see it: pseudo-headers, or all values joined by `,`.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match name {
            ":authority" | "host" => Some(Cow::Borrowed(self.authority)),
            ":path" => Some(Cow::Borrowed(self.path)),
            ":method" => Some(Cow::Borrowed(self.method)),
            ":scheme" => Some(Cow::Borrowed(self.scheme)),
            _ => {
                let mut values = self.headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
                let first = values.next()?;
                match values.next() {
                    None => Some(Cow::Borrowed(first)),
                    Some(second) => {
                        let mut joined = format!("{first},{second}");
                        for v in values {
                            joined.push(',');
                            joined.push_str(v);
                        }
                        Some(Cow::Owned(joined))
                    }
                }
            }
        }
    }
}

/// Lowercases (only if needed) and, if the route config says so, drops the port.
fn host_for_matching(authority: &str, ignore_port: bool) -> Cow<'_, str> {
    let mut host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(authority.to_ascii_lowercase())
    } else {
        Cow::Borrowed(authority)
    };
    if ignore_port {
        // Strip `:port` but not the colons of a bare IPv6 literal.
        let strip_at = if host.starts_with('[') {
            host.find("]:").map(|i| i + 1)
        } else {
            host.rfind(':').filter(|_| host.matches(':').count() == 1)
        };
        if let Some(i) = strip_at {
            if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
                match &mut host {
                    Cow::Borrowed(h) => *h = &h[..i],
                    Cow::Owned(h) => h.truncate(i),
                }
            }
        }
    }
    host
}

/// A route configuration's domains, indexed once per configuration so that picking the virtual
/// host costs one hash lookup rather than a scan of every domain (an Istio sidecar's outbound
/// route holds one virtual host per service). Domains are lowercased, as Envoy does.
#[derive(Debug, Default)]
pub struct DomainIndex {
    exact: HashMap<Box<str>, usize>,
    /// `*.suffix` wildcards (stored without the `*`), longest first, configuration order among
    /// equals.
    suffixes: Vec<(Box<str>, usize)>,
    /// `prefix*` wildcards (stored without the `*`), longest first.
    prefixes: Vec<(Box<str>, usize)>,
    /// The first `*`.
    default: Option<usize>,
}

impl DomainIndex {
    pub fn new(virtual_hosts: &[VirtualHost]) -> DomainIndex {
        let mut index = DomainIndex::default();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                if d == "*" {
                    index.default.get_or_insert(i);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    index.suffixes.push((suffix.into(), i));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    index.prefixes.push((prefix.into(), i));
                } else {
                    index.exact.entry(d.into()).or_insert(i);
                }
            }
        }
        // Stable sorts: among wildcards of one length, the first configured wins.
        index.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        index.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        index
    }

    /// Envoy's order: exact domain, then the longest `*suffix`, then the longest `prefix*`,
    /// then `*`. A wildcard matches at least one character.
    fn find(&self, host: &str) -> Option<usize> {
        if !self.exact.is_empty() {
            if let Some(&i) = self.exact.get(host) {
                return Some(i);
            }
        }
        let longer = |w: &str| host.len() > w.len();
        self.suffixes
            .iter()
            .find(|(s, _)| longer(s) && host.ends_with(&**s))
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| longer(p) && host.starts_with(&**p))
            })
            .map(|&(_, i)| i)
            .or(self.default)
    }
}

/// Picks the virtual host for `authority`.
pub fn find_virtual_host<'r>(rc: &'r RouteConfig, authority: &str) -> Option<&'r VirtualHost> {
    let host = host_for_matching(authority, rc.ignore_port_in_host_matching);
    rc.domains.find(&host).and_then(|i| rc.virtual_hosts.get(i))
}

/// Picks the first matching route of `vh`.
pub fn find_route<'v>(vh: &'v VirtualHost, req: &RequestHead<'_>) -> Option<&'v Route> {
    vh.routes.iter().find(|r| route_matches(&r.matcher, req))
}

pub(crate) fn string_matches(m: &StringMatcher, value: &str) -> bool {
    let owned;
    let v = if m.ignore_case {
        owned = value.to_lowercase();
        owned.as_str()
    } else {
        value
    };
    match &m.kind {
        StringMatch::Exact(s) => v == s,
        StringMatch::Prefix(s) => v.starts_with(s.as_str()),
        StringMatch::Suffix(s) => v.ends_with(s.as_str()),
        StringMatch::Contains(s) => v.contains(s.as_str()),
        StringMatch::Regex(r) => r.is_match(value),
    }
}

pub(crate) fn header_matches(h: &HeaderMatcher, req: &RequestHead<'_>) -> bool {
    let raw = req.header(&h.name);
    if let HeaderMatch::Present(want) = h.kind {
        return (raw.is_some() == want) != h.invert;
    }
    // A missing header never matches (inverted or not), unless it counts as empty.
    let value = match raw {
        Some(v) => v,
        None if h.treat_missing_as_empty => std::borrow::Cow::Borrowed(""),
        None => return false,
    };
    let matched = match &h.kind {
        HeaderMatch::String(m) => string_matches(m, &value),
        HeaderMatch::Range(lo, hi) => value.trim().parse::<i64>().is_ok_and(|n| n >= *lo && n < *hi),
        HeaderMatch::Present(_) => true,
    };
    matched != h.invert
}

fn query_matches(q: &QueryMatcher, query: &str) -> bool {
    query.split('&').filter(|p| !p.is_empty()).any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k == q.name && q.value.as_ref().is_none_or(|m| string_matches(m, v))
    })
}

/// The path and the query string. A byte scan: `split_once('?')` sets up a generic char
/// searcher, which costs more than the whole scan of a short path, and this runs per route.
fn split_query(path: &str) -> (&str, &str) {
    match path.bytes().position(|b| b == b'?') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, ""),
    }
}

/// Whether a route's match accepts the request.
pub fn route_matches(m: &RouteMatch, req: &RequestHead<'_>) -> bool {
    let (path_only, query) = split_query(req.path);
    let lowered;
    let (full, path_only) = if m.case_sensitive {
        (req.path, path_only)
    } else {
        lowered = req.path.to_lowercase();
        let p = lowered.split_once('?').map(|(p, _)| p).unwrap_or(&lowered);
        (lowered.as_str(), p)
    };
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => full.starts_with(p.as_str()),
        PathMatch::Exact(p) => path_only == p,
        PathMatch::Regex(r) => r.is_match(path_only),
        PathMatch::Separated(p) => {
            path_only == p
                || (path_only.starts_with(p.as_str()) && path_only.as_bytes().get(p.len()) == Some(&b'/'))
        }
        PathMatch::Connect => req.method == "CONNECT",
    };
    if !path_ok {
        return false;
    }
    if m.grpc
        && !req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc"))
    {
        return false;
    }
    m.headers.iter().all(|h| header_matches(h, req))
        && m.query_parameters.iter().all(|q| query_matches(q, query))
}

/// Picks one of weighted clusters (`total` is their sum).
pub fn pick_weighted(
    clusters: &[(WeightedCluster, HeaderMutations)],
    total: u32,
) -> Option<&(WeightedCluster, HeaderMutations)> {
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u32(0..total);
    for c in clusters {
        if r < c.0.weight {
            return Some(c);
        }
        r -= c.0.weight;
    }
    clusters.last()
}

/// The value of cookie `name` in the request's `cookie` headers (quotes removed), as Envoy's
/// `parseCookieValue` reads it.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim_start_matches(' ').split_once('=')?;
            (k == name).then(|| {
                if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                    &v[1..v.len() - 1]
                } else {
                    v
                }
            })
        })
}

/// The request hash for RING_HASH / MAGLEV, as Envoy's `HashPolicyImpl::generateHash`:
/// each policy that yields a value is folded in (`rotl(hash, 1) ^ new`), a terminal policy
/// that yielded stops the walk. `source_ip` is the downstream address Envoy hashes;
/// `add_cookie(name, path, ttl, attributes)` generates a cookie value when a cookie policy
/// with a `ttl` finds none (Envoy then hashes the generated value).
pub fn request_hash(
    policies: &[HashPolicy],
    req: &RequestHead<'_>,
    source_ip: std::net::IpAddr,
    mut add_cookie: impl FnMut(&str, &str, std::time::Duration, &[(String, String)]) -> String,
) -> Option<u64> {
    use crate::hash::{xxhash64, xxhash64_values};
    let mut hash: Option<u64> = None;
    for p in policies {
        let new = match &p.kind {
            HashKind::Header { name, rewrite } => {
                let values: Vec<String> = match name.as_str() {
                    ":authority" | "host" => vec![req.authority.to_owned()],
                    ":path" => vec![req.path.to_owned()],
                    ":method" => vec![req.method.to_owned()],
                    _ => req
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect(),
                };
                if values.is_empty() {
                    None
                } else {
                    let values: Vec<String> = match rewrite {
                        Some((re, sub)) => values
                            .iter()
                            .map(|v| re.replace_all(v, sub.as_str()).into_owned())
                            .collect(),
                        None => values,
                    };
                    let mut refs: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
                    Some(xxhash64_values(&mut refs))
                }
            }
            HashKind::Cookie {
                name,
                ttl,
                path,
                attributes,
            } => match (cookie_value(req.headers, name), ttl) {
                (Some(v), _) if !v.is_empty() => Some(xxhash64(v.as_bytes(), 0)),
                (_, Some(ttl)) => Some(xxhash64(add_cookie(name, path, *ttl, attributes).as_bytes(), 0)),
                _ => None,
            },
            HashKind::SourceIp => Some(xxhash64(source_ip.to_string().as_bytes(), 0)),
            HashKind::QueryParameter(name) => req
                .path
                .split_once('?')
                .and_then(|(_, q)| {
                    q.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == name).then_some(v)
                    })
                })
                .map(|v| xxhash64(v.as_bytes(), 0)),
        };
        if let Some(n) = new {
            hash = Some(hash.map_or(n, |h| h.rotate_left(1) ^ n));
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

/// `Set-Cookie` for a generated hash cookie, as Envoy's `makeSetCookieValue` writes it.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    ttl: std::time::Duration,
    attributes: &[(String, String)],
) -> String {
    let mut c = format!("{name}=\"{value}\"");
    if ttl.as_secs() > 0 {
        c.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        c.push_str("; Path=");
        c.push_str(path);
    }
    for (k, v) in attributes {
        if v.is_empty() {
            c.push_str(&format!("; {k}"));
        } else {
            c.push_str(&format!("; {k}={v}"));
        }
    }
    c.push_str("; HttpOnly");
    c
}

/// Applies `prefix_rewrite` / `regex_rewrite` to a path, keeping the query string.
pub fn rewrite_path(action: &RouteAction, matched: &PathMatch, path: &str) -> Option<String> {
    if action.prefix_rewrite.is_none() && action.regex_rewrite.is_none() {
        return None;
    }
    let (p, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let new = if let Some(prefix) = &action.prefix_rewrite {
        let keep = match matched {
            PathMatch::Prefix(m) | PathMatch::Separated(m) => p.get(m.len()..).unwrap_or(""),
            PathMatch::Exact(_) => "",
            _ => p,
        };
        let mut s = prefix.clone();
        s.push_str(keep);
        // Envoy rewriting `/nginx` to `/` for `/nginx/x` gives `//x`; that is its documented
        // behaviour, kept for fidelity.
        s
    } else if let Some((re, sub)) = &action.regex_rewrite {
        re.replace_all(p, sub.as_str()).into_owned()
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new}?{q}"),
        None => new,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vh(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            routes,
            headers: HeaderMutations::default(),
            include_request_attempt_count: false,
            retry_policy: None,
            require_tls: RequireTls::None,
            cors: None,
            per_filter: Vec::new(),
        }
    }

    fn rc(vhs: Vec<VirtualHost>, ignore_port: bool) -> RouteConfig {
        RouteConfig {
            name: "80".into(),
            domains: DomainIndex::new(&vhs),
            virtual_hosts: vhs,
            headers: HeaderMutations::default(),
            most_specific_header_mutations_wins: false,
            ignore_port_in_host_matching: ignore_port,
            max_direct_response_body_size: 4096,
            validate_clusters: false,
            per_filter: Vec::new(),
        }
    }

    fn direct(name: &str, path: PathMatch, headers: Vec<HeaderMatcher>) -> Route {
        Route {
            name: name.into(),
            matcher: RouteMatch {
                path,
                case_sensitive: true,
                headers,
                query_parameters: vec![],
                grpc: false,
            },
            action: Action::Direct {
                status: 200,
                body: None,
            },
            headers: HeaderMutations::default(),
            decorator: None,
            per_filter: Vec::new(),
        }
    }

    #[test]
    fn domain_precedence_is_envoys() {
        let config = rc(
            vec![
                vh("default", &["*"], vec![]),
                vh("suffix", &["*.sidecar.svc.cluster.local"], vec![]),
                vh("longer-suffix", &["*.nginx.sidecar.svc.cluster.local"], vec![]),
                vh("prefix", &["nginx.*"], vec![]),
                vh(
                    "exact",
                    &["nginx.sidecar.svc.cluster.local", "nginx", "198.19.0.10"],
                    vec![],
                ),
            ],
            true,
        );
        let pick = |h: &str| find_virtual_host(&config, h).map(|v| v.name.clone());
        assert_eq!(pick("nginx").as_deref(), Some("exact"));
        assert_eq!(
            pick("NGINX:80").as_deref(),
            Some("exact"),
            "port ignored, case folded"
        );
        assert_eq!(pick("198.19.0.10:80").as_deref(), Some("exact"));
        assert_eq!(
            pick("a.nginx.sidecar.svc.cluster.local").as_deref(),
            Some("longer-suffix")
        );
        assert_eq!(
            pick("toolbox.sidecar.svc.cluster.local").as_deref(),
            Some("suffix")
        );
        assert_eq!(pick("nginx.other").as_deref(), Some("prefix"));
        assert_eq!(pick("example.com").as_deref(), Some("default"));
        // Without ignore_port_in_host_matching, host:port only matches a domain with the port.
        let strict = rc(
            vec![
                vh("exact", &["nginx"], vec![]),
                vh("with-port", &["nginx:80"], vec![]),
            ],
            false,
        );
        assert_eq!(find_virtual_host(&strict, "nginx:80").unwrap().name, "with-port");
        assert!(find_virtual_host(&strict, "nginx:8080").is_none());
    }

    #[test]
    fn configured_domains_match_case_insensitively() {
        // Envoy lowercases the configured domains as well as the request's host.
        let config = rc(
            vec![
                vh("mixed", &["Reviews.Default.svc.cluster.local"], vec![]),
                vh("wild", &["*.Example.COM"], vec![]),
            ],
            true,
        );
        let pick = |h: &str| find_virtual_host(&config, h).map(|v| v.name.clone());
        assert_eq!(
            pick("reviews.default.svc.cluster.local").as_deref(),
            Some("mixed")
        );
        assert_eq!(
            pick("REVIEWS.default.svc.cluster.local:9080").as_deref(),
            Some("mixed")
        );
        assert_eq!(pick("www.example.com").as_deref(), Some("wild"));
        assert_eq!(
            pick("example.com"),
            None,
            "a wildcard matches at least one character"
        );
    }

    /// The index must pick exactly what Envoy's rules pick when applied by scanning every
    /// domain of every virtual host in order (what Skiff did before the index).
    fn scan<'r>(rc: &'r RouteConfig, host: &str) -> Option<&'r VirtualHost> {
        let host = host_for_matching(host, rc.ignore_port_in_host_matching);
        let (mut default, mut suffix, mut prefix) = (None, None::<(usize, _)>, None::<(usize, _)>);
        for vh in &rc.virtual_hosts {
            for d in vh.domains.iter().map(|d| d.to_ascii_lowercase()) {
                if d == "*" {
                    default.get_or_insert(vh);
                } else if let Some(s) = d.strip_prefix('*') {
                    if host.len() > s.len() && host.ends_with(s) && suffix.is_none_or(|(l, _)| s.len() > l) {
                        suffix = Some((s.len(), vh));
                    }
                } else if let Some(p) = d.strip_suffix('*') {
                    if host.len() > p.len() && host.starts_with(p) && prefix.is_none_or(|(l, _)| p.len() > l)
                    {
                        prefix = Some((p.len(), vh));
                    }
                } else if d == host {
                    return Some(vh);
                }
            }
        }
        suffix.map(|(_, v)| v).or(prefix.map(|(_, v)| v)).or(default)
    }

    proptest::proptest! {
        #[test]
        fn domain_index_agrees_with_a_scan(
            domains in proptest::collection::vec(
                proptest::collection::vec("\\*?[aAb.]{0,3}\\*?|\\*", 1..3), 1..6),
            hosts in proptest::collection::vec("[aAb.]{0,4}(:[0-9]{1,2})?", 1..8),
            ignore_port: bool,
        ) {
            let vhs: Vec<VirtualHost> = domains
                .iter()
                .enumerate()
                .map(|(i, ds)| {
                    let ds: Vec<&str> = ds.iter().map(String::as_str).collect();
                    vh(&format!("vh{i}"), &ds, vec![])
                })
                .collect();
            let config = rc(vhs, ignore_port);
            for h in &hosts {
                let want = scan(&config, h).map(|v| v.name.as_str());
                let got = find_virtual_host(&config, h).map(|v| v.name.as_str());
                proptest::prop_assert_eq!(got, want, "host {:?}", h);
            }
        }
    }

    #[test]
    fn routes_match_in_order_with_headers_and_queries() {
        let headers = HeaderMap::new();
        let mut with_user = HeaderMap::new();
        with_user.insert("user", "zhongmingmao".parse().unwrap());
        let canary = vh(
            "canary",
            &["canary"],
            vec![
                direct(
                    "v2",
                    PathMatch::Prefix("/".into()),
                    vec![HeaderMatcher {
                        name: "user".into(),
                        kind: HeaderMatch::String(StringMatcher {
                            kind: StringMatch::Exact("zhongmingmao".into()),
                            ignore_case: false,
                        }),
                        invert: false,
                        treat_missing_as_empty: false,
                    }],
                ),
                direct("v1", PathMatch::Prefix("/".into()), vec![]),
            ],
        );
        let req = |h: &'static HeaderMap| RequestHead {
            method: "GET",
            path: "/",
            authority: "canary",
            scheme: "http",
            headers: h,
        };
        let h1: &'static HeaderMap = Box::leak(Box::new(headers));
        let h2: &'static HeaderMap = Box::leak(Box::new(with_user));
        assert_eq!(find_route(&canary, &req(h2)).unwrap().name, "v2");
        assert_eq!(find_route(&canary, &req(h1)).unwrap().name, "v1");

        let r = RouteMatch {
            path: PathMatch::Exact("/api".into()),
            case_sensitive: false,
            headers: vec![],
            query_parameters: vec![QueryMatcher {
                name: "debug".into(),
                value: Some(StringMatcher {
                    kind: StringMatch::Exact("1".into()),
                    ignore_case: false,
                }),
            }],
            grpc: false,
        };
        let mk = |path: &'static str| RequestHead {
            method: "GET",
            path,
            authority: "x",
            scheme: "http",
            headers: h1,
        };
        assert!(route_matches(&r, &mk("/API?debug=1")));
        assert!(!route_matches(&r, &mk("/api?debug=2")));
        assert!(!route_matches(&r, &mk("/api/x?debug=1")));
    }

    #[test]
    fn prefix_rewrite_keeps_the_rest_and_the_query() {
        let action = RouteAction {
            cluster: ClusterPick::Named(std::sync::Arc::from("c")),
            cluster_not_found_code: 503,
            prefix_rewrite: Some("/".into()),
            regex_rewrite: None,
            host_rewrite: None,
            timeout: Some(Duration::from_secs(15)),
            idle_timeout: None,
            retry_policy: None,
            mirrors: Vec::new(),
            hash_policy: Vec::new(),
            cors: None,
        };
        let m = PathMatch::Prefix("/nginx".into());
        assert_eq!(rewrite_path(&action, &m, "/nginx").as_deref(), Some("/"));
        assert_eq!(rewrite_path(&action, &m, "/nginx?x=1").as_deref(), Some("/?x=1"));
        assert_eq!(rewrite_path(&action, &m, "/nginx/a").as_deref(), Some("//a"));
    }
}
