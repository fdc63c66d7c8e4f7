//! `proxy-config route`: one row per route of each virtual host (routes to
//! `PassthroughCluster` hidden, a host without routes shown as `/*` → `404`), in istioctl's
//! route-config order; the last column names the VirtualService from route metadata.

use crate::json::Json;
use crate::tabwriter::TabWriter;
use crate::{render_objects, ConfigDump, Error, Output};

/// `--name`, `--verbose`.
#[derive(Clone, Debug)]
pub struct RouteFilter {
    /// Exact route configuration name; empty = all.
    pub name: String,
    /// istioctl's default (true): one row per route; false: NAME and the number of vhosts.
    pub verbose: bool,
}

impl Default for RouteFilter {
    fn default() -> Self {
        RouteFilter {
            name: String::new(),
            verbose: true,
        }
    }
}

impl RouteFilter {
    pub fn verify(&self, rc: &Json) -> bool {
        self.name.is_empty() || self.name == rc.get("name").str()
    }
}

/// The MATCH cell of a route (also used for inline routes in the listener table): `prefix*`,
/// `PathPrefix:p`, the exact path, `regex r`; headers are not shown.
pub fn describe_match(m: &Json) -> String {
    let mut conds = Vec::new();
    let prefix = m.get("prefix").str();
    if !prefix.is_empty() {
        conds.push(format!("{prefix}*"));
    }
    let psp = m.get("path_separated_prefix").str();
    if !psp.is_empty() {
        conds.push(format!("PathPrefix:{psp}"));
    }
    let path = m.get("path").str();
    if !path.is_empty() {
        conds.push(path.to_owned());
    }
    let regex = m.get("safe_regex");
    if regex.is_object() {
        conds.push(format!("regex {}", regex.get("regex").str()));
    }
    conds.join(" ")
}

/// The DOMAINS cell: one domain as is; otherwise the domains without a port, minus the short
/// forms' expansions (`x.svc.cluster.local` when `x` is there too), the first two and a count.
pub fn describe_domains(domains: &[&str]) -> String {
    match domains {
        [] => return String::new(),
        [one] => return (*one).to_owned(),
        _ => {}
    }
    let without_port: Vec<&str> = domains
        .iter()
        .copied()
        .filter(|d| !d.contains(':') || (d.matches(':').count() > 2 && d.ends_with(']')))
        .collect();
    let kept = unexpand(&without_port);
    if kept.len() > 2 {
        return format!("{} + {} more...", kept[..2].join(", "), kept.len() - 2);
    }
    kept.join(", ")
}

fn unexpand<'a>(domains: &[&'a str]) -> Vec<&'a str> {
    let present = |d: &str| domains.contains(&d);
    let redundant = |h: &str| {
        let full = h.strip_suffix(".svc.cluster.local").unwrap_or(h);
        let partial = h.strip_suffix(".svc").unwrap_or(h);
        (full != h && present(full)) || (partial != h && present(partial))
    };
    domains.iter().copied().filter(|h| !redundant(h)).collect()
}

/// The VIRTUAL SERVICE (and, for clusters, DESTINATION RULE) cell: Istio's
/// `metadata.filter_metadata.istio.config` path rendered `name.namespace`.
pub fn describe_management(metadata: &Json) -> String {
    let config = metadata.get("filter_metadata").get("istio");
    if !config.is_object() {
        return String::new();
    }
    let Json::Object(members) = config else {
        return String::new();
    };
    let Some((_, path)) = members.iter().find(|(k, _)| k == "config") else {
        return String::new();
    };
    render_config(path.str())
}

fn render_config(path: &str) -> String {
    if path.starts_with("/apis/networking.istio.io/v1alpha3/namespaces/") {
        let pieces: Vec<&str> = path.split('/').collect();
        if pieces.len() != 8 {
            return String::new();
        }
        return format!("{}.{}", pieces[7], pieces[5]);
    }
    "<unknown>".into()
}

fn is_passthrough(route: &Json) -> bool {
    route.get("route").get("cluster").as_str() == Some("PassthroughCluster")
}

/// The route table; `name_column` prefixes names with `route/` as `all` does.
pub fn summary(dump: &ConfigDump, filter: &RouteFilter, name_column: bool) -> Result<String, Error> {
    let routes = dump.routes()?;
    let mut w = TabWriter::new(0, 5);
    if filter.verbose {
        w.row(&["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]);
    } else {
        w.row(&["NAME", "VIRTUAL HOSTS"]);
    }
    for rc in routes.into_iter().filter(|r| filter.verify(r)) {
        let name = if name_column {
            format!("route/{}", rc.get("name").str())
        } else {
            rc.get("name").str().to_owned()
        };
        let vhosts = rc.get("virtual_hosts").items();
        if !filter.verbose {
            w.row(&[name, vhosts.len().to_string()]);
            continue;
        }
        for vh in vhosts {
            let domains: Vec<&str> = vh.get("domains").items().iter().map(Json::str).collect();
            let domains = describe_domains(&domains);
            let vh_name = vh.get("name").str();
            let routes = vh.get("routes").items();
            for r in routes.iter().filter(|r| !is_passthrough(r)) {
                w.row(&[
                    name.as_str(),
                    vh_name,
                    &domains,
                    &describe_match(r.get("match")),
                    &describe_management(r.get("metadata")),
                ]);
            }
            if routes.is_empty() {
                w.row(&[name.as_str(), vh_name, &domains, "/*", "404"]);
            }
        }
    }
    Ok(w.render())
}

/// `-o json|yaml`: the route configurations that pass the filter, in istioctl's order.
pub fn dump(d: &ConfigDump, filter: &RouteFilter, output: Output) -> Result<String, Error> {
    let routes: Vec<&Json> = d.routes()?.into_iter().filter(|r| filter.verify(r)).collect();
    Ok(render_objects(
        &routes,
        "envoy.config.route.v3.RouteConfiguration",
        output,
    ))
}

/// `proxy-config route` in the requested format.
pub fn print(d: &ConfigDump, filter: &RouteFilter, output: Output) -> Result<String, Error> {
    match output {
        Output::Short => summary(d, filter, false),
        _ => dump(d, filter, output),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn domains_as_istioctl_shortens_them() {
        // istioctl's own cases (route_test.go TestDescribeRouteDomains).
        assert_eq!(describe_domains(&[]), "");
        assert_eq!(describe_domains(&["example.com"]), "example.com");
        assert_eq!(
            describe_domains(&["example.com", "example.com:8080"]),
            "example.com"
        );
        assert_eq!(
            describe_domains(&["example.com", "example.com:8080", "1.2.3.4", "1.2.3.4:8080"]),
            "example.com, 1.2.3.4"
        );
        assert_eq!(
            describe_domains(&[
                "example.com",
                "example.com:8080",
                "[fd00:10:96::7fc7]",
                "[fd00:10:96::7fc7]:8080"
            ]),
            "example.com, [fd00:10:96::7fc7]"
        );
        assert_eq!(
            describe_domains(&[
                "example.com",
                "example.com:8080",
                "www.example.com",
                "www.example.com:8080",
                "[fd00:10:96::7fc7]",
                "[fd00:10:96::7fc7]:8080"
            ]),
            "example.com, www.example.com + 1 more..."
        );
        // Seed 004: a same-namespace service.
        assert_eq!(
            describe_domains(&[
                "nginx.sidecar.svc.cluster.local",
                "nginx",
                "nginx.sidecar.svc",
                "nginx.sidecar",
                "10.100.93.113"
            ]),
            "nginx, nginx.sidecar + 1 more..."
        );
    }

    #[test]
    fn virtual_service_from_metadata() {
        let m = |p: &str| {
            Json::parse(&format!(
                r#"{{"filter_metadata": {{"istio": {{"config": "{p}"}}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(
            describe_management(&m(
                "/apis/networking.istio.io/v1alpha3/namespaces/default/virtual-service/httpbin"
            )),
            "httpbin.default"
        );
        assert_eq!(
            describe_management(&m("/apis/networking.istio.io/v1alpha3/namespaces/default")),
            ""
        );
        assert_eq!(
            describe_management(&m("/apis/networking.istio.io/v1/namespaces/a/virtual-service/b")),
            "<unknown>"
        );
        assert_eq!(describe_management(&Json::Null), "");
    }
}
