//! `envoy.filters.http.cors` as a pure decision over the request head and the route's CORS
//! policies (most specific first): answer a preflight locally, or say which headers the
//! response gets. Mirrors Envoy's `CorsFilter`: the first policy decides whether CORS is
//! enabled; every other field comes from the first policy that sets it.

use http::header::{HeaderName, HeaderValue, ORIGIN};
use http::{HeaderMap, Method};

use crate::model::CorsPolicy;
use crate::route::string_matches;

static ACAO: HeaderName = HeaderName::from_static("access-control-allow-origin");
static ACAC: HeaderName = HeaderName::from_static("access-control-allow-credentials");
static ACAM: HeaderName = HeaderName::from_static("access-control-allow-methods");
static ACAH: HeaderName = HeaderName::from_static("access-control-allow-headers");
static ACEH: HeaderName = HeaderName::from_static("access-control-expose-headers");
static ACMA: HeaderName = HeaderName::from_static("access-control-max-age");
static ACAPN: HeaderName = HeaderName::from_static("access-control-allow-private-network");
static ACRM: HeaderName = HeaderName::from_static("access-control-request-method");
static ACRH: HeaderName = HeaderName::from_static("access-control-request-headers");
static ACRPN: HeaderName = HeaderName::from_static("access-control-request-private-network");

/// What the CORS filter does with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not a CORS request (or CORS disabled): nothing to do.
    Pass,
    /// Forward the request; set these headers on the response, whatever produces it.
    Annotate(HeaderMap),
    /// A preflight: answer 200 with these headers, do not forward.
    Preflight(HeaderMap),
}

fn first_str<'a>(policies: &[&'a CorsPolicy], f: impl Fn(&'a CorsPolicy) -> &'a str) -> &'a str {
    policies
        .iter()
        .map(|p| f(p))
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

fn first_bool(policies: &[&CorsPolicy], f: impl Fn(&CorsPolicy) -> Option<bool>) -> Option<bool> {
    policies.iter().find_map(|p| f(p))
}

fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// Decides for a request with `method` and `headers` under `policies` (route first, then
/// virtual host; empty when none applies).
pub fn decide(policies: &[&CorsPolicy], method: &Method, headers: &HeaderMap) -> Decision {
    let Some(first) = policies.first() else {
        return Decision::Pass;
    };
    let enabled = first.enabled.sample();
    let shadow = first.shadow.is_some_and(|p| p.sample());
    if !enabled && !shadow {
        return Decision::Pass;
    }
    let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else {
        return Decision::Pass;
    };
    let origin_str = origin.to_str().unwrap_or("");
    let allowed = policies
        .iter()
        .map(|p| &p.allow_origins)
        .find(|o| !o.is_empty())
        .is_some_and(|matchers| {
            matchers
                .iter()
                .any(|m| string_matches(m, "*") || string_matches(m, origin_str))
        });
    if !enabled {
        // Shadow mode: evaluated (Envoy counts it) but nothing changes.
        return Decision::Pass;
    }
    let credentials = first_bool(policies, |p| p.allow_credentials).unwrap_or(false);
    let annotate = || {
        let mut h = HeaderMap::new();
        if allowed {
            h.insert(ACAO.clone(), origin.clone());
            if credentials {
                h.insert(ACAC.clone(), HeaderValue::from_static("true"));
            }
            if let Some(v) = value(first_str(policies, |p| &p.expose_headers)).filter(|v| !v.is_empty()) {
                h.insert(ACEH.clone(), v);
            }
        }
        Decision::Annotate(h)
    };
    let request_method = headers.get(&ACRM).filter(|v| !v.is_empty());
    let (true, Some(request_method)) = (method == Method::OPTIONS, request_method) else {
        return annotate();
    };
    if !allowed && first_bool(policies, |p| p.forward_not_matching_preflights).unwrap_or(true) {
        return annotate();
    }
    let mut h = HeaderMap::new();
    if allowed {
        h.insert(ACAO.clone(), origin.clone());
    }
    if credentials {
        h.insert(ACAC.clone(), HeaderValue::from_static("true"));
    }
    let methods = first_str(policies, |p| &p.allow_methods);
    if methods == "*" {
        h.insert(ACAM.clone(), request_method.clone());
    } else if let Some(v) = value(methods).filter(|v| !v.is_empty()) {
        h.insert(ACAM.clone(), v);
    }
    let allow_headers = first_str(policies, |p| &p.allow_headers);
    if allow_headers == "*" {
        let requested = headers
            .get(&ACRH)
            .cloned()
            .unwrap_or(HeaderValue::from_static(""));
        h.insert(ACAH.clone(), requested);
    } else if let Some(v) = value(allow_headers).filter(|v| !v.is_empty()) {
        h.insert(ACAH.clone(), v);
    }
    if let Some(v) = value(first_str(policies, |p| &p.max_age)).filter(|v| !v.is_empty()) {
        h.insert(ACMA.clone(), v);
    }
    if first_bool(policies, |p| p.allow_private_network_access).unwrap_or(false)
        && headers.get(&ACRPN).is_some_and(|v| v == "true")
    {
        h.insert(ACAPN.clone(), HeaderValue::from_static("true"));
    }
    // The preflight answer goes through the filter's response path too, which adds the
    // exposed headers (Envoy does this; checked against it in proxy_diff.rs).
    if let Decision::Annotate(more) = annotate() {
        for (k, v) in more.into_iter() {
            if let Some(k) = k {
                h.insert(k, v);
            }
        }
    }
    Decision::Preflight(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Percent, StringMatch, StringMatcher};

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy {
            allow_origins: origins
                .iter()
                .map(|o| StringMatcher {
                    kind: StringMatch::Exact(o.to_string()),
                    ignore_case: false,
                })
                .collect(),
            allow_methods: "GET,POST".into(),
            allow_headers: "x-custom".into(),
            expose_headers: "x-exposed".into(),
            max_age: "86400".into(),
            allow_credentials: Some(true),
            allow_private_network_access: None,
            forward_not_matching_preflights: None,
            enabled: Percent::ALL,
            shadow: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn preflight_is_answered_for_allowed_origins_only() {
        let p = policy(&["https://a.example"]);
        let pre = headers(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ]);
        let Decision::Preflight(h) = decide(&[&p], &Method::OPTIONS, &pre) else {
            panic!("not a preflight answer");
        };
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-custom");
        assert_eq!(h["access-control-max-age"], "86400");
        assert_eq!(h["access-control-allow-credentials"], "true");
        // Another origin: the preflight goes upstream untouched (forward_not_matching_preflights).
        let other = headers(&[
            ("origin", "https://b.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert_eq!(
            decide(&[&p], &Method::OPTIONS, &other),
            Decision::Annotate(HeaderMap::new())
        );
    }

    #[test]
    fn actual_requests_get_origin_and_expose_headers() {
        let p = policy(&["https://a.example"]);
        let Decision::Annotate(h) = decide(&[&p], &Method::GET, &headers(&[("origin", "https://a.example")]))
        else {
            panic!()
        };
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-expose-headers"], "x-exposed");
        assert_eq!(decide(&[&p], &Method::GET, &HeaderMap::new()), Decision::Pass);
        let mut off = policy(&["https://a.example"]);
        off.enabled = Percent(0);
        assert_eq!(
            decide(
                &[&off],
                &Method::GET,
                &headers(&[("origin", "https://a.example")])
            ),
            Decision::Pass
        );
    }
}
