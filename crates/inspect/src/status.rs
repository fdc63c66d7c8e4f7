//! `proxy-status`: each connected proxy's xDS sync state, from the control plane's
//! `/debug/syncz` (istiod's JSON shape, which `skiffd` serves on 15014: one object per proxy with
//! `proxy`, `cluster_id`, `istio_version` and `<type>_sent` / `<type>_acked` nonces).

use crate::gosort::sort_slice;
use crate::json::Json;
use crate::tabwriter::TabWriter;
use crate::Error;

/// One row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyStatus {
    /// `pod.namespace`.
    pub proxy: String,
    pub cluster: String,
    pub cds: String,
    pub lds: String,
    pub eds: String,
    pub rds: String,
    pub ecds: String,
    pub istiod: String,
    pub version: String,
}

/// istiod's status of one type from its nonces (1.19–1.22 words): nothing sent is `NOT SENT`,
/// the last sent nonce acknowledged is `SYNCED`, anything else `STALE`.
pub fn sync_status(sent: &str, acked: &str) -> &'static str {
    if sent.is_empty() {
        "NOT SENT"
    } else if sent == acked {
        "SYNCED"
    } else {
        "STALE"
    }
}

fn type_status(p: &Json, long: &str, short: &str) -> String {
    let sent = p.get(&format!("{long}_sent"));
    let acked = p.get(&format!("{long}_acked"));
    if sent.is_null() && acked.is_null() {
        // Only a precomputed status (Skiff also writes `"cds": "SYNCED"`), or nothing at all.
        return p.get(short).as_str().unwrap_or("NOT SENT").to_owned();
    }
    sync_status(sent.str(), acked.str()).to_owned()
}

/// Parses `/debug/syncz`. `istiod` names the control plane instance the answer came from (the
/// ISTIOD column; istioctl prints the istiod pod's name).
pub fn parse_syncz(text: &str, istiod: &str) -> Result<Vec<ProxyStatus>, Error> {
    let root = Json::parse(text).map_err(|e| Error::Parse {
        what: "/debug/syncz",
        reason: e.to_string(),
    })?;
    let Json::Array(items) = root else {
        return Err(Error::Shape {
            what: "/debug/syncz",
            expected: "a JSON array of proxies",
        });
    };
    Ok(items
        .iter()
        .map(|p| {
            let version = match p.get("istio_version").str() {
                "" => format!("{}*", p.get("proxy_version").str()),
                v => v.to_owned(),
            };
            ProxyStatus {
                proxy: p.get("proxy").str().to_owned(),
                cluster: p.get("cluster_id").str().to_owned(),
                cds: type_status(p, "cluster", "cds"),
                lds: type_status(p, "listener", "lds"),
                eds: type_status(p, "endpoint", "eds"),
                rds: type_status(p, "route", "rds"),
                ecds: type_status(p, "extensionconfig", "ecds"),
                istiod: istiod.to_owned(),
                version,
            }
        })
        .collect())
}

/// The table, sorted by proxy name. `namespace` keeps only proxies of that namespace; `pod`
/// (`name` or `name.namespace`) keeps only that proxy.
pub fn summary(mut proxies: Vec<ProxyStatus>, namespace: Option<&str>, pod: Option<&str>) -> String {
    proxies.retain(|p| {
        namespace.is_none_or(|ns| p.proxy.rsplit_once('.').is_some_and(|(_, n)| n == ns))
            && pod.is_none_or(|want| {
                p.proxy == want || p.proxy.split_once('.').is_some_and(|(name, _)| name == want)
            })
    });
    sort_slice(&mut proxies, |a, b| a.proxy < b.proxy);
    let mut w = TabWriter::new(0, 5);
    w.row(&[
        "NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION",
    ]);
    for p in proxies {
        w.row(&[
            &p.proxy, &p.cluster, &p.cds, &p.lds, &p.eds, &p.rds, &p.ecds, &p.istiod, &p.version,
        ]);
    }
    w.render()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Seed 004's `istioctl proxy-status`, from syncz entries shaped like istiod's.
    #[test]
    fn seed_004_table() {
        let entry = |proxy: &str, rds: &str| {
            format!(
                r#"{{"cluster_id": "Kubernetes", "proxy": "{proxy}", "proxy_type": "sidecar", "istio_version": "1.19.3",
                   "cluster_sent": "n1", "cluster_acked": "n1", "listener_sent": "n2", "listener_acked": "n2",
                   "endpoint_sent": "n3", "endpoint_acked": "n3" {rds}}}"#
            )
        };
        let routes = r#", "route_sent": "n4", "route_acked": "n4""#;
        let syncz = format!(
            "[{}, {}, {}, {}]",
            entry("toolbox-97948fc8-ptlct.sidecar", routes),
            entry("istio-ingressgateway-779c475c44-j4tds.istio-system", ""),
            entry("nginx-deployment-7fc7f5758-46mzh.sidecar", routes),
            entry("istio-egressgateway-84776fd7f6-dfn6m.istio-system", ""),
        );
        let table = summary(
            parse_syncz(&syncz, "istiod-566dc66cff-d9chq").unwrap(),
            None,
            None,
        );
        assert_eq!(
            table,
            "\
NAME                                                   CLUSTER        CDS        LDS        EDS        RDS          ECDS         ISTIOD                      VERSION
istio-egressgateway-84776fd7f6-dfn6m.istio-system      Kubernetes     SYNCED     SYNCED     SYNCED     NOT SENT     NOT SENT     istiod-566dc66cff-d9chq     1.19.3
istio-ingressgateway-779c475c44-j4tds.istio-system     Kubernetes     SYNCED     SYNCED     SYNCED     NOT SENT     NOT SENT     istiod-566dc66cff-d9chq     1.19.3
nginx-deployment-7fc7f5758-46mzh.sidecar               Kubernetes     SYNCED     SYNCED     SYNCED     SYNCED       NOT SENT     istiod-566dc66cff-d9chq     1.19.3
toolbox-97948fc8-ptlct.sidecar                         Kubernetes     SYNCED     SYNCED     SYNCED     SYNCED       NOT SENT     istiod-566dc66cff-d9chq     1.19.3
"
        );
        let one = summary(
            parse_syncz(&syncz, "x").unwrap(),
            Some("sidecar"),
            Some("toolbox-97948fc8-ptlct"),
        );
        assert_eq!(one.lines().count(), 2);
    }

    #[test]
    fn stale_and_bad_input() {
        assert_eq!(sync_status("a", "b"), "STALE");
        assert_eq!(sync_status("a", ""), "STALE");
        assert!(parse_syncz("{}", "x").is_err());
        assert!(parse_syncz("[", "x").is_err());
    }
}
