//! `skiffctl demo`: the seed's sidecar walkthrough, run and explained. It brings up the example
//! (toolbox → nginx, both with sidecars), sends the seed's request, and prints the request's path
//! hop by hop from what the machine itself recorded: the iptables rules whose packet counters
//! moved, the listener, route, virtual host, cluster and endpoint the client sidecar used, the
//! inbound rules and cluster on the server side, both access-log lines and nginx's own line.
//! Then it tears everything down, also when a step fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::ops;
use crate::state::{self, ProxyKind};

const NAMESPACE_YAML: &str = include_str!("../../../examples/sidecar/namespace.yaml");
const NGINX_YAML: &str = include_str!("../../../examples/sidecar/nginx.yaml");
const TOOLBOX_YAML: &str = include_str!("../../../examples/sidecar/toolbox.yaml");

/// The demo's mesh name (its namespaces are `skiff-demo-…`).
pub const MESH: &str = "skiff-demo";

/// Rule counters of the nat table: `-A CHAIN …` → packets.
fn nat_counters(name: &str, pod: &str) -> Result<BTreeMap<String, u64>> {
    let st = state::load(&state::mesh_dir(name))?;
    let p = st.find_pod("sidecar", pod)?;
    let exec = capture::Exec::in_netns(&Path::new("/run/netns").join(&p.netns))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let backend =
        capture::backend::detect(&exec, capture::rules::Family::V4).map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = exec
        .run_ok(&backend.save(), &["-c".into(), "-t".into(), "nat".into()], None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rules = BTreeMap::new();
    for line in out.lines() {
        // `[packets:bytes] -A CHAIN …`
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once("] ") else {
            continue;
        };
        let packets = counts.split(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
        rules.insert(rule.to_owned(), packets);
    }
    Ok(rules)
}

/// Rules whose counters moved between two snapshots, in table order, ISTIO chains and the
/// built-in chains that jump to them.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, chains: &[&str]) -> Vec<String> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (rule, n) in after {
        let delta = n.saturating_sub(before.get(rule).copied().unwrap_or(0));
        let chain = rule.split_whitespace().nth(1).unwrap_or_default();
        if delta > 0 {
            if let Some(order) = chains.iter().position(|c| *c == chain) {
                let why = if rule.contains("--uid-owner 1337 -j RETURN")
                    || rule.contains("--gid-owner 1337 -j RETURN")
                {
                    "  ← the sidecar's own connection to the endpoint leaves the pod"
                } else if rule.contains("--dport 15021 -j RETURN") || rule.contains("--dport 15020 -j RETURN")
                {
                    "  ← the node's readiness probes, not this request"
                } else if rule.contains("REDIRECT --to-ports 15001") {
                    "  ← the app's connection to the VIP goes to the sidecar"
                } else if rule.contains("REDIRECT --to-ports 15006") {
                    "  ← the incoming connection goes to the sidecar"
                } else {
                    ""
                };
                out.push((
                    order,
                    format!(
                        "{rule}   ({delta} packet{}){why}",
                        if delta == 1 { "" } else { "s" }
                    ),
                ));
            }
        }
    }
    out.sort_by_key(|(o, _)| *o);
    out.into_iter().map(|(_, r)| r).collect()
}

fn json_get(name: &str, pod: &str, port: u16, path: &str) -> Result<Value> {
    let out = ops::exec_output(
        name,
        "sidecar",
        pod,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}{path}"),
        ],
    )?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("{path} on {pod} is not JSON"))
}

fn dump_items<'a>(dump: &'a Value, section: &str, key: &str) -> Vec<&'a Value> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(section)))
        .flat_map(|c| c[key].as_array().into_iter().flatten())
        .collect()
}

fn last_line_with(text: &str, needle: &str) -> Option<String> {
    text.lines().rev().find(|l| l.contains(needle)).map(str::to_owned)
}

/// Runs the demo; `say` gets every line of output.
pub fn run(proxy: ProxyKind, say: &mut dyn FnMut(&str)) -> Result<()> {
    ops::preflight()?;
    let dir = std::env::temp_dir().join(format!("skiff-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (f, text) in [
        ("namespace.yaml", NAMESPACE_YAML),
        ("nginx.yaml", NGINX_YAML),
        ("toolbox.yaml", TOOLBOX_YAML),
    ] {
        std::fs::write(dir.join(f), text)?;
    }
    let result = walk(&dir, proxy, say);
    say("");
    say("[7/7] tearing the mesh down");
    let down = ops::down(MESH, &mut |l| say(&format!("      {l}")));
    let _ = std::fs::remove_dir_all(&dir);
    result.and(down)
}

fn walk(dir: &Path, proxy: ProxyKind, say: &mut dyn FnMut(&str)) -> Result<()> {
    say(&format!("[1/7] starting the seed's sidecar example ({}: namespace sidecar with istio-injection=enabled, nginx and toolbox)", dir.display()));
    let opts = ops::UpOptions {
        name: MESH.into(),
        dir: dir.to_owned(),
        namespace: "sidecar".into(),
        proxy,
        timeout: Duration::from_secs(120),
    };
    let st = ops::up(&opts, &mut |l| say(&format!("      {l}")))?;
    for n in &st.notes {
        say(&format!("      note: {n}"));
    }
    let toolbox = st.find_pod("sidecar", "deploy/toolbox")?.clone();
    let nginx = st.find_pod("sidecar", "deploy/nginx-deployment")?.clone();
    let vip = st
        .services
        .iter()
        .find(|s| s.name == "nginx")
        .and_then(|s| s.vip)
        .context("the nginx Service has no VIP")?;
    say(&format!(
        "      toolbox {} and nginx {} run with {:?} sidecars; Service nginx is {vip}",
        toolbox.ip, nginx.ip, proxy
    ));

    say("[2/7] reading the iptables counters in both pods");
    let client_before = nat_counters(MESH, "deploy/toolbox")?;
    let server_before = nat_counters(MESH, "deploy/nginx-deployment")?;

    say("[3/7] the seed's request, from the toolbox: curl -sI nginx");
    let out = ops::exec_output(
        MESH,
        "sidecar",
        "deploy/toolbox",
        &["curl", "-sI", "--max-time", "5", "nginx"],
    )?;
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "curl -sI nginx answered:\n{head}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for l in head.lines().filter(|l| !l.is_empty()) {
        say(&format!("      {l}"));
    }
    std::thread::sleep(Duration::from_millis(1200)); // access logs flush every second

    say("[4/7] client side: the toolbox pod");
    let client_after = nat_counters(MESH, "deploy/toolbox")?;
    say("      iptables (nat) rules that matched the connection, in order:");
    for r in moved(
        &client_before,
        &client_after,
        &["OUTPUT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"],
    ) {
        say(&format!("        {r}"));
    }
    let client_log = ops::logs_text(MESH, "sidecar", "deploy/toolbox", Some("istio-proxy"))?;
    let client_line = last_line_with(&client_log, "outbound|80||nginx")
        .context("no access-log line on the toolbox's sidecar")?;
    let dump = json_get(MESH, "deploy/toolbox", 15000, "/config_dump")?;
    let listener = format!("0.0.0.0_{}", 80);
    let route_name = dump_items(&dump, "ListenersConfigDump", "dynamic_listeners")
        .into_iter()
        .find(|l| l["name"] == listener.as_str())
        .and_then(|l| {
            l["active_state"]["listener"]["filter_chains"]
                .as_array()?
                .iter()
                .find_map(|c| {
                    c["filters"].as_array()?.iter().find_map(|f| {
                        f["typed_config"]["rds"]["route_config_name"]
                            .as_str()
                            .map(str::to_owned)
                    })
                })
        })
        .context("the toolbox's sidecar has no listener 0.0.0.0_80 with a route")?;
    let route = dump_items(&dump, "RoutesConfigDump", "dynamic_route_configs")
        .into_iter()
        .find(|r| r["route_config"]["name"] == route_name.as_str())
        .context("route config not found")?;
    let vhost = route["route_config"]["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| {
            v["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "nginx"))
        })
        .context("no virtual host for nginx")?;
    let cluster = vhost["routes"][0]["route"]["cluster"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let endpoint = client_line
        .split_whitespace()
        .find(|w| w.trim_matches('"').ends_with(":80") && w.contains(&nginx.ip.to_string()))
        .unwrap_or_default();
    say(&format!(
        "      15001 virtualOutbound: original destination {vip}:80 → listener {listener}"
    ));
    say(&format!(
        "      listener {listener} → route {route_name} → virtual host {} (domains {})",
        vhost["name"].as_str().unwrap_or_default(),
        vhost["domains"]
    ));
    say(&format!(
        "      → cluster {cluster} → endpoint {}",
        endpoint.trim_matches('"')
    ));
    say("      access log (istio-proxy):");
    say(&format!("        {client_line}"));

    say("[5/7] server side: the nginx pod");
    let server_after = nat_counters(MESH, "deploy/nginx-deployment")?;
    say("      iptables (nat) rules that matched the connection, in order:");
    for r in moved(
        &server_before,
        &server_after,
        &["PREROUTING", "ISTIO_INBOUND", "ISTIO_IN_REDIRECT"],
    ) {
        say(&format!("        {r}"));
    }
    let server_log = ops::logs_text(MESH, "sidecar", "deploy/nginx-deployment", Some("istio-proxy"))?;
    let server_line =
        last_line_with(&server_log, "inbound|80||").context("no access-log line on nginx's sidecar")?;
    say("      15006 virtualInbound: destination port 80 → filter chain 0.0.0.0_80 → route inbound|80|| → cluster inbound|80||, connected from 127.0.0.6");
    say("      access log (istio-proxy):");
    say(&format!("        {server_line}"));

    say("[6/7] the app: nginx's own log shows the inbound sidecar as its client");
    let app_log = ops::logs_text(MESH, "sidecar", "deploy/nginx-deployment", Some("nginx"))?;
    let app_line = last_line_with(&app_log, "\"HEAD / HTTP/1.1\"").context("no request in nginx's log")?;
    say(&format!("        {app_line}"));
    if !app_line.starts_with("127.0.0.6 ") {
        bail!("nginx saw {app_line:?}, not 127.0.0.6");
    }
    say("");
    say("try it yourself: sudo skiffctl local up -f examples/sidecar -n sidecar, then");
    say("  sudo skiffctl local exec -n sidecar deploy/toolbox -- curl -sI nginx");
    Ok(())
}
