//! App probe rewriting. With mTLS and inbound capture the kubelet's probes cannot reach the app
//! directly, so Istio points them at the agent (`:15020/app-health/<container>/readyz|livez|startupz`)
//! and hands the original probes to it in `ISTIO_KUBE_APP_PROBERS`; the agent then probes the app
//! from inside the pod.

use serde_json::{json, Map, Value};

use crate::PROXY_CONTAINER;

pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// The agent paths for one container, as Istio's `FormatProberURL`.
pub fn prober_urls(container: &str) -> [(&'static str, String); 3] {
    [
        ("readinessProbe", format!("/app-health/{container}/readyz")),
        ("livenessProbe", format!("/app-health/{container}/livez")),
        ("startupProbe", format!("/app-health/{container}/startupz")),
    ]
}

fn named_port(container: &Value, name: &str) -> Option<Value> {
    container
        .get("ports")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").cloned())
}

/// The original probe as the agent needs it (Istio's `Prober`): the action with named ports
/// resolved, plus the timeout. `None` for exec probes, unresolvable names and probes that already
/// point at the status port.
fn internal_prober(container: &Value, probe: &Value, status_port: u16) -> Option<Value> {
    let mut out = Map::new();
    if let Some(grpc) = probe.get("grpc") {
        // gRPC probes only take numeric ports.
        out.insert("grpc".into(), grpc.clone());
    } else {
        let key = if probe.get("httpGet").is_some() {
            "httpGet"
        } else if probe.get("tcpSocket").is_some() {
            "tcpSocket"
        } else {
            return None;
        };
        let mut action = probe.get(key)?.clone();
        match action.get("port") {
            Some(Value::String(name)) => {
                let port = named_port(container, name)?;
                action["port"] = port;
            }
            Some(p) if p.as_u64() == Some(u64::from(status_port)) => return None,
            _ => {}
        }
        out.insert(key.into(), action);
    }
    if let Some(t) = probe.get("timeoutSeconds").filter(|t| t.as_i64() != Some(0)) {
        out.insert("timeoutSeconds".into(), t.clone());
    }
    Some(Value::Object(out))
}

fn app_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_array))
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER))
}

/// `ISTIO_KUBE_APP_PROBERS`: URL path → original probe, or `None` when there is nothing to hand over.
pub fn dump_app_probers(spec: &Value, status_port: u16) -> Option<String> {
    let mut out = Map::new();
    for c in app_containers(spec) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        for (field, url) in prober_urls(name) {
            if let Some(p) = c.get(field).and_then(|p| internal_prober(c, p, status_port)) {
                out.insert(url, p);
            }
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(Value::Object(out).to_string())
    }
}

/// Points every HTTP, TCP and gRPC probe of the app containers at the agent.
pub fn rewrite_probes(spec: &mut Value, status_port: u16) {
    for key in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(key).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name == PROXY_CONTAINER {
                continue;
            }
            for (field, url) in prober_urls(&name) {
                if let Some(probe) = c.get_mut(field).and_then(Value::as_object_mut) {
                    convert(probe, url, status_port);
                }
            }
        }
    }
}

fn convert(probe: &mut Map<String, Value>, url: String, status_port: u16) {
    if let Some(http) = probe.get_mut("httpGet").and_then(Value::as_object_mut) {
        http.insert("port".into(), json!(status_port));
        http.insert("path".into(), Value::String(url));
        // The kubelet speaks HTTP to the agent; the agent speaks HTTPS to the app.
        if http.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
            http.insert("scheme".into(), json!("HTTP"));
        }
    } else if probe.remove("tcpSocket").is_some() || probe.remove("grpc").is_some() {
        probe.insert("httpGet".into(), json!({"path": url, "port": status_port}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        json!({"containers": [{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS"}, "timeoutSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 5},
            "startupProbe": {"exec": {"command": ["true"]}},
        }, {
            "name": "grpc",
            "livenessProbe": {"grpc": {"port": 7000}},
            "readinessProbe": {"httpGet": {"path": "/x", "port": "missing"}},
        }]})
    }

    #[test]
    fn probers_hold_the_originals_with_named_ports_resolved() {
        let dumped: Value = serde_json::from_str(&dump_app_probers(&spec(), 15020).unwrap()).unwrap();
        assert_eq!(
            dumped,
            json!({
                "/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS"}, "timeoutSeconds": 2},
                "/app-health/app/livez": {"tcpSocket": {"port": 9000}},
                "/app-health/grpc/livez": {"grpc": {"port": 7000}},
            })
        );
    }

    #[test]
    fn probes_point_at_the_agent() {
        let mut s = spec();
        rewrite_probes(&mut s, 15020);
        let app = &s["containers"][0];
        assert_eq!(
            app["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"}, "timeoutSeconds": 2})
        );
        assert_eq!(
            app["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/app/livez", "port": 15020}, "periodSeconds": 5})
        );
        assert_eq!(app["startupProbe"], json!({"exec": {"command": ["true"]}}));
        assert_eq!(
            s["containers"][1]["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/grpc/livez", "port": 15020}})
        );
        // Already rewritten probes are not handed over again.
        assert_eq!(dump_app_probers(&s, 15020), None);
    }
}
