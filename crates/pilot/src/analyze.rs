//! `istioctl analyze` for Skiff: schema validation of every resource (IST0106/IST0133/IST0130/
//! IST0131, from `api`) and the cross-resource analyzers of `pkg/config/analysis/analyzers` that
//! matter for traffic management, run over the registry as `skiffd` would build it:
//!
//! - IST0101 ReferencedResourceNotFound: a destination or mirror host no Service or ServiceEntry
//!   has, a `host:port` the Service does not expose, a subset no DestinationRule defines, a
//!   gateway that does not exist, a Gateway selector or Sidecar selector matching no pod, a
//!   `credentialName` with no Secret in the gateway's namespace, a DestinationRule host nothing has;
//! - IST0104 GatewayPortNotOnWorkload (a server port neither a Service port nor a target port of
//!   the gateway's Services — Istio 1.19 compares target ports only and flags every 80→8080 setup;
//!   Skiff takes both, as the translation resolves them);
//! - IST0109 two mesh VirtualServices for one host; IST0111 several Sidecars without selector in a
//!   namespace; IST0112 a multi-port destination without a port; IST0132 a VirtualService host its
//!   Gateway does not serve; IST0145 Gateways with the same selector, port and overlapping hosts;
//!   IST0161 a credential Secret without a certificate.
//!
//! Findings are reported, not enforced: as in Istio, a VirtualService naming a subset before its
//! DestinationRule exists is valid config (traffic gets 503 until the subset appears).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use api::{code, host, Level};

use crate::istio::{exported_to, Resource};
use crate::model::{parse_documents, Object};
use crate::snapshot::Snapshot;

/// One analysis message, printed as `istioctl analyze` prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    pub level: Level,
    pub code: &'static str,
    /// `Kind namespace/name`.
    pub resource: String,
    /// Where it was read from (a file), when known.
    pub origin: Option<String>,
    pub text: String,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ({}", self.level, self.code, self.resource)?;
        if let Some(o) = &self.origin {
            write!(f, " {o}")?;
        }
        write!(f, ") {}", self.text)
    }
}

fn msg(level: Level, code: &'static str, resource: String, text: String) -> Message {
    Message {
        level,
        code,
        resource,
        origin: None,
        text,
    }
}

fn not_found(resource: String, what: &str, name: &str) -> Message {
    msg(
        Level::Error,
        code::REFERENCED_RESOURCE_NOT_FOUND,
        resource,
        format!("Referenced {what} not found: {name:?}"),
    )
}

fn selector_string(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn id<T>(kind: &str, r: &Resource<T>) -> String {
    format!("{kind} {}/{}", r.namespace, r.name)
}

/// Whether `host` names a Service or ServiceEntry host of the registry.
fn service_ports(snap: &Snapshot, hostname: &str) -> Option<Vec<u16>> {
    snap.services
        .iter()
        .find(|s| {
            s.hostname == hostname || (host::is_wildcard(&s.hostname) && host::matches(&s.hostname, hostname))
        })
        .map(|s| s.ports.iter().map(|p| p.port).collect())
}

/// The cross-resource analyzers over a built registry snapshot.
pub fn analyze_snapshot(snap: &Snapshot) -> Vec<Message> {
    let mut out = Vec::new();
    let cfg = &snap.config;
    // Validation warnings the stored resources carry.
    for c in &snap.istio {
        let ns = c.metadata.namespace.clone().unwrap_or_default();
        for w in &c.warnings {
            out.push(msg(
                w.level,
                w.code,
                format!("{} {ns}/{}", c.kind, c.metadata.name),
                if w.code == code::SCHEMA_WARNING {
                    w.text()
                } else {
                    w.message.clone()
                },
            ));
        }
    }
    // === VirtualServices ===
    let gateways: HashMap<String, &Resource<api::networking::Gateway>> =
        cfg.gateways.iter().map(|g| (g.key(), &**g)).collect();
    let mut mesh_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for vs in &cfg.virtual_services {
        let rid = id("VirtualService", vs);
        let spec = &vs.spec;
        let mut dests: Vec<(&api::networking::Destination, &str)> = Vec::new();
        for r in &spec.http {
            dests.extend(
                r.route
                    .iter()
                    .filter_map(|d| d.destination.as_ref())
                    .map(|d| (d, "host")),
            );
            if let Some(m) = &r.mirror {
                dests.push((m, "mirror host"));
            }
        }
        for r in &spec.tcp {
            dests.extend(
                r.route
                    .iter()
                    .filter_map(|d| d.destination.as_ref())
                    .map(|d| (d, "host")),
            );
        }
        for r in &spec.tls {
            dests.extend(
                r.route
                    .iter()
                    .filter_map(|d| d.destination.as_ref())
                    .map(|d| (d, "host")),
            );
        }
        for (d, what) in dests {
            match service_ports(snap, &d.host) {
                None => out.push(not_found(rid.clone(), what, &d.host)),
                Some(ports) => match &d.port {
                    Some(p) if !ports.iter().any(|x| u32::from(*x) == p.number) => {
                        out.push(not_found(rid.clone(), "host:port", &format!("{}:{}", d.host, p.number)));
                    }
                    None if ports.len() > 1 => out.push(msg(
                        Level::Error,
                        code::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
                        rid.clone(),
                        format!(
                            "This VirtualService routes to a service {:?} that exposes multiple ports {ports:?}. \
                             Specifying a port in the destination is required to disambiguate.",
                            d.host
                        ),
                    )),
                    _ => {}
                },
            }
            if !d.subset.is_empty() {
                let defined = cfg.destination_rules.iter().any(|dr| {
                    exported_to(&dr.spec.export_to, &dr.namespace, &vs.namespace)
                        && host::subset_of(&d.host, &dr.spec.host)
                        && dr.spec.subsets.iter().any(|s| s.name == d.subset)
                });
                if !defined {
                    let what = if what == "mirror host" {
                        "mirror+subset in destinationrule"
                    } else {
                        "host+subset in destinationrule"
                    };
                    out.push(not_found(rid.clone(), what, &format!("{}+{}", d.host, d.subset)));
                }
            }
        }
        let mut named_gateways: Vec<&String> = spec.gateways.iter().collect();
        for r in &spec.http {
            named_gateways.extend(r.matches.iter().flat_map(|m| &m.gateways));
        }
        named_gateways.sort();
        named_gateways.dedup();
        for g in named_gateways {
            if g == api::MESH_GATEWAY {
                continue;
            }
            match gateways.get(g.as_str()) {
                None => out.push(not_found(rid.clone(), "gateway", g)),
                Some(gw) => {
                    let server_hosts: Vec<String> = gw
                        .spec
                        .servers
                        .iter()
                        .flat_map(|s| host::names_for_namespace(&s.hosts, &vs.namespace))
                        .collect();
                    if host::intersection(&server_hosts, &spec.hosts).is_empty() && !spec.hosts.is_empty() {
                        out.push(msg(
                            Level::Warning,
                            code::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                            rid.clone(),
                            format!(
                                "one or more host {:?} defined in VirtualService {} not found in Gateway {}.",
                                spec.hosts,
                                vs.key(),
                                gw.key()
                            ),
                        ));
                    }
                }
            }
        }
        if spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == api::MESH_GATEWAY) {
            for h in &spec.hosts {
                mesh_hosts.entry(h.clone()).or_default().push(vs.key());
            }
        }
    }
    for (h, vss) in mesh_hosts {
        if vss.len() > 1 {
            for v in &vss {
                out.push(msg(
                    Level::Error,
                    code::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                    format!("VirtualService {v}"),
                    format!(
                        "The VirtualServices {} associated with mesh gateway define the same host {h} which can lead to \
                         undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                        vss.join(",")
                    ),
                ));
            }
        }
    }
    // === DestinationRules ===
    for dr in &cfg.destination_rules {
        let matched = snap
            .services
            .iter()
            .any(|s| host::matches(&s.hostname, &dr.spec.host));
        if !matched {
            out.push(not_found(id("DestinationRule", dr), "host", &dr.spec.host));
        }
    }
    // === Gateways ===
    for gw in &cfg.gateways {
        let rid = id("Gateway", gw);
        let sel = selector_string(&gw.spec.selector);
        let pods: Vec<_> = snap
            .pods
            .values()
            .filter(|p| {
                !gw.spec.selector.is_empty()
                    && gw
                        .spec
                        .selector
                        .iter()
                        .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
            })
            .collect();
        if pods.is_empty() {
            out.push(not_found(rid.clone(), "selector", &sel));
            continue;
        }
        let mut ports = std::collections::BTreeSet::new();
        for p in &pods {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            for s in snap
                .services
                .iter()
                .filter(|s| s.namespace == ns && s.selects(&p.metadata.labels))
            {
                for sp in &s.ports {
                    ports.insert(u32::from(sp.port));
                    if let Some(crate::model::IntOrString::Int(t)) = &sp.target_port {
                        ports.insert(*t as u32);
                    }
                }
            }
        }
        for s in &gw.spec.servers {
            let Some(port) = &s.port else { continue };
            if !ports.contains(&port.number) {
                out.push(msg(
                    Level::Warning,
                    code::GATEWAY_PORT_NOT_ON_WORKLOAD,
                    rid.clone(),
                    format!(
                        "The gateway refers to a port that is not exposed on the workload (pod selector {sel}; port {})",
                        port.number
                    ),
                ));
            }
            let Some(tls) = &s.tls else { continue };
            if tls.credential_name.is_empty() {
                continue;
            }
            // The Secret must be where the gateway pods run.
            for ns in pods
                .iter()
                .filter_map(|p| p.metadata.namespace.clone())
                .collect::<std::collections::BTreeSet<_>>()
            {
                match snap.secrets.get(&(ns.clone(), tls.credential_name.clone())) {
                    None => out.push(not_found(rid.clone(), "credentialName", &tls.credential_name)),
                    Some(sec) if sec.certificate().is_none() => out.push(msg(
                        Level::Error,
                        code::INVALID_GATEWAY_CREDENTIAL,
                        rid.clone(),
                        format!(
                            "The credential referenced by the Gateway {} in namespace {ns} is invalid, which can cause the \
                             traffic not to work as expected.",
                            gw.name
                        ),
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    // IST0145: same selector and port, overlapping hosts.
    for (i, a) in cfg.gateways.iter().enumerate() {
        for b in cfg.gateways.iter().skip(i + 1) {
            if a.spec.selector != b.spec.selector {
                continue;
            }
            for sa in &a.spec.servers {
                for sb in &b.spec.servers {
                    let (Some(pa), Some(pb)) = (&sa.port, &sb.port) else {
                        continue;
                    };
                    let overlap = sa
                        .hosts
                        .iter()
                        .any(|x| sb.hosts.iter().any(|y| host::matches(x, y)));
                    if pa.number == pb.number && overlap {
                        for (me, other) in [(a, b), (b, a)] {
                            out.push(msg(
                                Level::Error,
                                code::CONFLICTING_GATEWAYS,
                                id("Gateway", me),
                                format!(
                                    "Conflict with gateways {} (workload selector {}, port {}, hosts {}).",
                                    other.key(),
                                    selector_string(&me.spec.selector),
                                    pa.number,
                                    sa.hosts.join(",")
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    // === Sidecars ===
    let mut unselected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sc in &cfg.sidecars {
        match sc
            .spec
            .workload_selector
            .as_ref()
            .filter(|w| !w.labels.is_empty())
        {
            None => unselected
                .entry(sc.namespace.clone())
                .or_default()
                .push(sc.name.clone()),
            Some(ws) => {
                let any = snap.pods.iter().any(|((ns, _), p)| {
                    *ns == sc.namespace && ws.labels.iter().all(|(k, v)| p.metadata.labels.get(k) == Some(v))
                });
                if !any {
                    out.push(not_found(
                        id("Sidecar", sc),
                        "selector",
                        &selector_string(&ws.labels),
                    ));
                }
            }
        }
    }
    for (ns, names) in unselected {
        if names.len() > 1 {
            for n in &names {
                out.push(msg(
                    Level::Error,
                    code::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
                    format!("Sidecar {ns}/{n}"),
                    format!(
                        "The Sidecars {names:?} in namespace {ns:?} have no workload selector, which can lead to undefined behavior."
                    ),
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Analyzes manifest files (`skiffctl analyze -f`): every document on its own (schema errors are
/// reported per field, one message each), then the registry the good ones make.
pub fn analyze_files(files: &[(String, String)]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut objects = Vec::new();
    let mut origin_of: HashMap<String, String> = HashMap::new();
    for (name, text) in files {
        let raw: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or(serde_json::Value::Null))
            .collect();
        for doc in parse_documents(Path::new(name), text) {
            match doc {
                Ok(o) => {
                    let k = o.key();
                    origin_of.insert(format!("{} {}/{}", k.kind, k.namespace, k.name), name.clone());
                    objects.push(o);
                }
                Err(e) => {
                    let resource = e
                        .key
                        .as_deref()
                        .map(|k| format!("{} {}/{}", k.kind, k.namespace, k.name))
                        .or_else(|| e.object.clone())
                        .unwrap_or_else(|| "file".into());
                    let istio_findings = e.key.as_deref().and_then(|k| {
                        if !api::KINDS.contains(&k.kind.as_str()) {
                            return None;
                        }
                        let spec = raw.get(e.document)?.get("spec").cloned().unwrap_or_default();
                        api::parse(&k.kind, &k.namespace, &k.name, spec).err()
                    });
                    match istio_findings {
                        Some(findings) => {
                            for f in findings {
                                out.push(Message {
                                    level: f.level,
                                    code: f.code,
                                    resource: resource.clone(),
                                    origin: Some(name.clone()),
                                    text: f.text(),
                                });
                            }
                        }
                        None => out.push(Message {
                            level: Level::Error,
                            code: code::SCHEMA_VALIDATION_ERROR,
                            resource,
                            origin: Some(name.clone()),
                            text: format!(
                                "Schema validation error: {}",
                                if e.field.is_empty() {
                                    e.reason.clone()
                                } else {
                                    format!("{}: {}", e.field, e.reason)
                                }
                            ),
                        }),
                    }
                }
            }
        }
    }
    let snap = Snapshot::build(objects.iter().filter(|o| !matches!(o, Object::Deployment(_))));
    for mut m in analyze_snapshot(&snap) {
        m.origin = origin_of.get(&m.resource).cloned();
        out.push(m);
    }
    out
}

/// The manifest files under `dir` (or `dir` itself when it is a file), as the config directory
/// reads them.
pub fn read_manifests(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    if path.is_file() {
        files.push(path.to_owned());
    } else {
        collect(path, &mut files)?;
    }
    files.sort();
    files
        .into_iter()
        .map(|f| Ok((f.display().to_string(), std::fs::read_to_string(&f)?)))
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(docs: &[&str]) -> Vec<String> {
        let files: Vec<(String, String)> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("f{i}.yaml"), d.to_string()))
            .collect();
        analyze_files(&files).iter().map(|m| m.to_string()).collect()
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: canary, namespace: canary}\n\
                       spec: {selector: {app: canary}, ports: [{name: http, port: 80}]}\n";

    fn has(out: &[String], text: &str) -> bool {
        out.iter().any(|l| l.contains(text))
    }

    #[test]
    fn references_that_resolve_to_nothing() {
        let vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: canary, namespace: canary}\n\
                  spec:\n  hosts: [canary]\n  gateways: [mesh, nogw]\n  http:\n  - route:\n    - {destination: {host: canary, subset: v3}, weight: 50}\n    - {destination: {host: nothere}, weight: 50}\n";
        let dr = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: canary, namespace: canary}\n\
                  spec: {host: canary, subsets: [{name: v1, labels: {version: v1}}]}\n";
        let out = run(&[SVC, vs, dr]);
        assert!(
            has(&out, "Error [IST0101] (VirtualService canary/canary f1.yaml) Referenced host+subset in destinationrule not found: \"canary.canary.svc.cluster.local+v3\""),
            "{out:#?}"
        );
        assert!(
            has(
                &out,
                "Referenced host not found: \"nothere.canary.svc.cluster.local\""
            ),
            "{out:#?}"
        );
        assert!(
            has(&out, "Referenced gateway not found: \"canary/nogw\""),
            "{out:#?}"
        );
    }

    #[test]
    fn schema_errors_are_named_per_field() {
        let vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: bad, namespace: canary}\n\
                  spec:\n  hosts: [canary]\n  http:\n  - match: [{uri: {regex: '(unclosed'}}]\n    route: [{destination: {host: canary}, weight: 60}, {destination: {host: canary}, weight: 30}]\n";
        let out = run(&[SVC, vs]);
        assert!(
            has(&out, "Error [IST0106] (VirtualService canary/bad f1.yaml) Schema validation error: spec.http[0].match[0].uri.regex:"),
            "{out:#?}"
        );
        assert!(
            has(&out, "Warning [IST0133] (VirtualService canary/bad f1.yaml) Schema validation warning: spec.http[0].route: total destination weight 90 != 100"),
            "{out:#?}"
        );
    }

    #[test]
    fn gateways() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nstatus: {podIP: 198.18.0.2}\n";
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\n\
                   spec: {selector: {istio: ingressgateway}, ports: [{name: http2, port: 80, targetPort: 8080}]}\n";
        let gw = |name: &str, port: u32, host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: {name}, namespace: web}}\n\
                 spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: p{port}, protocol: HTTPS}}\n    hosts: ['{host}']\n    tls: {{mode: SIMPLE, credentialName: missing}}\n"
            )
        };
        let out = run(&[
            pod,
            svc,
            &gw("a", 9443, "a.example.com"),
            &gw("b", 9443, "*.example.com"),
        ]);
        assert!(has(&out, "Warning [IST0104] (Gateway web/a f2.yaml) The gateway refers to a port that is not exposed on the workload (pod selector istio=ingressgateway; port 9443)"), "{out:#?}");
        assert!(
            has(
                &out,
                "Error [IST0145] (Gateway web/a f2.yaml) Conflict with gateways web/b"
            ),
            "{out:#?}"
        );
        assert!(
            has(&out, "Referenced credentialName not found: \"missing\""),
            "{out:#?}"
        );
        let out = run(&[
            pod,
            svc,
            &gw("a", 80, "a.example.com").replace("{istio: ingressgateway}", "{istio: nothing}"),
        ]);
        assert!(
            has(&out, "Referenced selector not found: \"istio=nothing\""),
            "{out:#?}"
        );
        assert!(!has(&out, "IST0104"), "{out:#?}");
    }
}
