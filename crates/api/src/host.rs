//! Istio's hostname rules (`pkg/config/host`, `pkg/config/model.ResolveShortnameToFQDN`): wildcard
//! matching, short-name resolution in a resource's namespace, and `namespace/host` scoping. Both
//! validation and translation use them, so they live here once.

/// The cluster DNS suffix short names are expanded with.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// A wildcard host (`*`, `*.example.com`).
pub fn is_wildcard(h: &str) -> bool {
    h.starts_with('*')
}

/// Istio's `host.Name.Matches`: true when either host covers the other (wildcards on either side).
pub fn matches(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => {
            if a.len() < b.len() {
                b[1..].ends_with(&a[1..])
            } else {
                a[1..].ends_with(&b[1..])
            }
        }
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every name `a` covers is also covered by `b`.
pub fn subset_of(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `Names.Intersection`: the more specific host of every overlapping pair, first seen first.
pub fn intersection(hosts: &[String], other: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hosts {
        for o in other {
            let pick = if subset_of(h, o) {
                h
            } else if subset_of(o, h) {
                o
            } else {
                continue;
            };
            if !out.contains(pick) {
                out.push(pick.clone());
            }
        }
    }
    out
}

/// Istio's `ResolveShortnameToFQDN`: a name without a dot is a Service in the resource's
/// namespace (`canary` in `canary` → `canary.canary.svc.cluster.local`); anything with a dot, an IP
/// or `*` is taken as written (so `httpserver.securesvc.svc` stays as it is, as in Istio).
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') || host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_owned();
    }
    format!("{host}.{namespace}.svc.{DOMAIN_SUFFIX}")
}

/// Istio's `resolveGatewayName`: `name` → `ns/name`, `./name` → `ns/name`, legacy
/// `name.ns.svc.cluster.local` → `ns/name`; `mesh` stays `mesh`.
pub fn resolve_gateway_name(gateway: &str, namespace: &str) -> String {
    if gateway == crate::MESH_GATEWAY {
        return gateway.to_owned();
    }
    match gateway.split_once('/') {
        Some((".", name)) => format!("{namespace}/{name}"),
        Some(_) => gateway.to_owned(),
        None => match gateway.split_once('.') {
            None => format!("{namespace}/{gateway}"),
            Some((name, rest)) => {
                let ns = rest.split('.').next().unwrap_or(rest);
                format!("{ns}/{name}")
            }
        },
    }
}

/// Istio's `NamesForNamespace`: a gateway server's `ns/host` entries seen from a resource in
/// `namespace` (`*/host` and plain hosts apply everywhere).
pub fn names_for_namespace(hosts: &[String], namespace: &str) -> Vec<String> {
    hosts
        .iter()
        .filter_map(|h| match h.split_once('/') {
            Some((ns, host)) if ns == namespace || ns == "*" => Some(host.to_owned()),
            Some(_) => None,
            None => Some(h.clone()),
        })
        .collect()
}

/// A DNS-1123 label as Istio checks it (case-insensitive, 1–63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn is_wildcard_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    is_dns1123_label(rest)
}

/// Istio's `ValidateWildcardDomain`: DNS-1123 labels, a wildcard only in the first label.
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_label(first) {
        return Err(format!("{first:?} is not a valid wildcard DNS-1123 label"));
    }
    if let Some(rest) = rest {
        validate_dns1123_labels(rest)?;
    }
    Ok(())
}

/// Every dot-separated label is DNS-1123 (a trailing dot is allowed).
pub fn validate_dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() && i > 0 {
            continue;
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// Istio's `ValidateFQDN`: no wildcard, labels valid, at least something before a dot.
pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    if fqdn.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if fqdn.len() > 255 {
        return Err(format!("domain name {fqdn:?} too long (max 255)"));
    }
    validate_dns1123_labels(fqdn)
}

/// A partial wildcard (`*foo.example.com`) is not allowed in Gateway and Sidecar hosts.
pub fn validate_partial_wildcard(h: &str) -> Result<(), String> {
    if h.starts_with('*') && h.len() > 1 && !h.starts_with("*.") {
        return Err(format!("partial wildcard {h:?} not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matching_follows_istio() {
        assert!(matches("*.foo.com", "a.foo.com"));
        assert!(matches("a.foo.com", "*.foo.com"));
        assert!(matches("*.com", "*.foo.com"));
        assert!(matches("*", "anything.io"));
        assert!(!matches("a.foo.com", "b.foo.com"));
        assert!(subset_of("a.foo.com", "*.foo.com"));
        assert!(!subset_of("*.foo.com", "a.foo.com"));
        assert!(subset_of("*.foo.com", "*.com"));
        assert_eq!(
            intersection(&["*.zhongmingmao.io".into()], &["simple.zhongmingmao.io".into()]),
            ["simple.zhongmingmao.io"]
        );
    }

    #[test]
    fn short_names_resolve_in_the_namespace() {
        assert_eq!(
            resolve_short_name("canary", "canary"),
            "canary.canary.svc.cluster.local"
        );
        assert_eq!(
            resolve_short_name("httpserver.securesvc.svc", "securesvc"),
            "httpserver.securesvc.svc"
        );
        assert_eq!(resolve_short_name("10.0.0.1", "a"), "10.0.0.1");
        assert_eq!(resolve_gateway_name("simple", "simple"), "simple/simple");
        assert_eq!(resolve_gateway_name("./gw", "a"), "a/gw");
        assert_eq!(resolve_gateway_name("istio-system/gw", "a"), "istio-system/gw");
        assert_eq!(
            resolve_gateway_name("gw.istio-system.svc.cluster.local", "a"),
            "istio-system/gw"
        );
        assert_eq!(resolve_gateway_name("mesh", "a"), "mesh");
        assert_eq!(
            names_for_namespace(
                &["a/x.io".into(), "b/y.io".into(), "*/z.io".into(), "w.io".into()],
                "a"
            ),
            ["x.io", "z.io", "w.io"]
        );
    }

    #[test]
    fn domain_validation() {
        assert!(validate_wildcard_domain("*.example.com").is_ok());
        assert!(validate_wildcard_domain("canary").is_ok());
        assert!(validate_wildcard_domain("foo.*.com").is_err());
        assert!(validate_wildcard_domain("bad_host").is_err());
        assert!(validate_partial_wildcard("*foo.com").is_err());
        assert!(validate_fqdn("example.com").is_ok());
    }
}
