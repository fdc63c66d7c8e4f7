//! `proxy-config bootstrap`: the `BootstrapConfigDump` as JSON/YAML (the default), or with
//! `-o short` the Istio, Istio proxy and Envoy versions read from the node.

use crate::json::to_yaml;
use crate::proto::{to_jsonpb_indented, to_jsonpb_value};
use crate::tabwriter::TabWriter;
use crate::{without_type, ConfigDump, Error, Output};

/// `Istio Version:`, `Istio Proxy Version:`, `Envoy Version:` (tabwriter, padding 1).
pub fn summary(d: &ConfigDump) -> Result<String, Error> {
    let node = d.bootstrap()?.get("bootstrap").get("node");
    let meta = node.get("metadata");
    let istio = meta.get("ISTIO_VERSION").str();
    let mut sha = meta.get("ISTIO_PROXY_SHA").str();
    if let Some(after) = sha.split(':').nth(1) {
        sha = after;
    }
    let build = node.get("user_agent_build_version");
    let v = build.get("version");
    let mut envoy = format!(
        "{}.{}.{}",
        v.get("major_number").uint(),
        v.get("minor_number").uint(),
        v.get("patch").uint()
    );
    let bm = build.get("metadata");
    let field = |k: &str| {
        bm.members()
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.str().to_owned())
    };
    if let Some(label) = field("build.label") {
        envoy.push('-');
        envoy.push_str(&label);
    }
    for key in ["revision.status", "build.type", "ssl.version"] {
        if let Some(s) = field(key) {
            envoy.push('/');
            envoy.push_str(&s);
        }
    }
    let mut w = TabWriter::new(0, 1);
    if !istio.is_empty() {
        w.row(&["Istio Version:", istio]);
    }
    if !sha.is_empty() {
        w.row(&["Istio Proxy Version:", sha]);
    }
    w.row(&["Envoy Version:", &envoy]);
    Ok(w.render())
}

/// The whole `BootstrapConfigDump` message as `jsonpb` with a 4-space indent prints it.
pub fn dump(d: &ConfigDump, output: Output) -> Result<String, Error> {
    let msg = without_type(d.bootstrap()?);
    const TYPE: &str = "envoy.admin.v3.BootstrapConfigDump";
    Ok(match output {
        Output::Yaml => format!("{}\n", to_yaml(&to_jsonpb_value(&msg, TYPE))),
        _ => format!("{}\n", to_jsonpb_indented(&msg, TYPE)),
    })
}

/// `proxy-config bootstrap`; istioctl's default output here is JSON.
pub fn print(d: &ConfigDump, output: Output) -> Result<String, Error> {
    match output {
        Output::Short => summary(d),
        _ => dump(d, output),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn versions() {
        let d = ConfigDump::parse(
            r#"{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": {
              "metadata": {"ISTIO_VERSION": "1.19.3", "ISTIO_PROXY_SHA": "istio-proxy:a1ff538a"},
              "user_agent_build_version": {"version": {"major_number": 1, "minor_number": 27, "patch": 2},
                "metadata": {"revision.status": "Clean", "build.type": "RELEASE", "ssl.version": "BoringSSL"}}}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            summary(&d).unwrap(),
            "Istio Version:       1.19.3\nIstio Proxy Version: a1ff538a\nEnvoy Version:       1.27.2/Clean/RELEASE/BoringSSL\n"
        );
        let json = dump(&d, Output::Json).unwrap();
        assert!(
            json.starts_with("{\n    \"bootstrap\": {\n        \"node\": {"),
            "{json}"
        );
        assert!(json.contains("\"userAgentBuildVersion\""), "{json}");
        assert!(json.contains("\"ISTIO_PROXY_SHA\""), "{json}");
    }
}
