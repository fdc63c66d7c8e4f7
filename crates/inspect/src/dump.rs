//! Envoy's `/config_dump`: `{"configs": [Any, …]}`, one `Any` per section (bootstrap, clusters,
//! endpoints with `?include_eds`, listeners, scoped routes, routes, secrets, ECDS).
//!
//! Sections are looked up by type URL and, as istioctl does, the last one of a type wins. The
//! resources inside are `Any`s too; their `@type` is not checked (istioctl rewrites it to the v3
//! type before decoding, so v2-era dumps read the same).

use crate::gosort::sort_slice;
use crate::json::Json;
use crate::Error;

/// A parsed `/config_dump`.
#[derive(Debug, Clone)]
pub struct ConfigDump {
    root: Json,
}

impl ConfigDump {
    /// Parses the text of a `/config_dump` (or a file saved from one).
    pub fn parse(text: &str) -> Result<ConfigDump, Error> {
        let root = Json::parse(text).map_err(|e| Error::Parse {
            what: "the config dump",
            reason: e.to_string(),
        })?;
        if !root.is_object() {
            return Err(Error::Shape {
                what: "the config dump",
                expected: "a JSON object (Envoy's /config_dump answers {\"configs\": [...]})",
            });
        }
        Ok(ConfigDump { root })
    }

    /// The whole document, for `proxy-config all -o json`.
    pub fn root(&self) -> &Json {
        &self.root
    }

    /// The last `configs[]` entry of type `envoy.admin.v3.<section>`.
    pub fn section(&self, section: &'static str) -> Result<&Json, Error> {
        self.sections(section)
            .last()
            .copied()
            .ok_or(Error::MissingSection { section })
    }

    /// Every `configs[]` entry of type `envoy.admin.v3.<section>` (ECDS may have several).
    pub fn sections(&self, section: &str) -> Vec<&Json> {
        let url = format!("type.googleapis.com/envoy.admin.v3.{section}");
        self.root
            .get("configs")
            .items()
            .iter()
            .filter(|c| c.get("@type").str() == url)
            .collect()
    }

    /// Listeners: the active state of each dynamic listener, then the static ones.
    pub fn listeners(&self) -> Result<Vec<&Json>, Error> {
        let dump = self.section("ListenersConfigDump")?;
        let mut out: Vec<&Json> = dump
            .get("dynamic_listeners")
            .items()
            .iter()
            .map(|l| l.get("active_state").get("listener"))
            .filter(|l| l.is_object())
            .collect();
        out.extend(
            dump.get("static_listeners")
                .items()
                .iter()
                .map(|l| l.get("listener"))
                .filter(|l| l.is_object()),
        );
        if out.is_empty() {
            return Err(Error::Empty("listeners"));
        }
        Ok(out)
    }

    /// Route configurations: dynamic (RDS), then static (including HCMs' inline ones), ordered
    /// by istioctl's comparator, which only orders two names that are both numbers.
    pub fn routes(&self) -> Result<Vec<&Json>, Error> {
        let dump = self.section("RoutesConfigDump")?;
        let mut out: Vec<&Json> = dump
            .get("dynamic_route_configs")
            .items()
            .iter()
            .chain(dump.get("static_route_configs").items())
            .map(|r| r.get("route_config"))
            .filter(|r| r.is_object())
            .collect();
        if out.is_empty() {
            return Err(Error::Empty("routes"));
        }
        sort_slice(&mut out, |a, b| {
            match (go_atoi(a.get("name").str()), go_atoi(b.get("name").str())) {
                (Some(x), Some(y)) => x < y,
                _ => false,
            }
        });
        Ok(out)
    }

    /// Clusters: dynamic active, then static, in dump order (callers sort).
    pub fn clusters(&self) -> Result<Vec<&Json>, Error> {
        let dump = self.section("ClustersConfigDump")?;
        let out: Vec<&Json> = dump
            .get("dynamic_active_clusters")
            .items()
            .iter()
            .chain(dump.get("static_clusters").items())
            .map(|c| c.get("cluster"))
            .filter(|c| c.is_object())
            .collect();
        if out.is_empty() {
            return Err(Error::Empty("clusters"));
        }
        Ok(out)
    }

    /// The `BootstrapConfigDump` section.
    pub fn bootstrap(&self) -> Result<&Json, Error> {
        self.section("BootstrapConfigDump")
    }

    /// Endpoint assignments (present only with `?include_eds`): dynamic, then static. `None`
    /// when the dump has no endpoints section, which istioctl treats as empty, not an error.
    pub fn endpoint_configs(&self) -> Option<Vec<&Json>> {
        let dump = self.section("EndpointsConfigDump").ok()?;
        Some(
            dump.get("dynamic_endpoint_configs")
                .items()
                .iter()
                .chain(dump.get("static_endpoint_configs").items())
                .map(|e| e.get("endpoint_config"))
                .filter(|e| e.is_object())
                .collect(),
        )
    }
}

/// Go's `strconv.Atoi`: optional sign, decimal digits, 64-bit.
pub(crate) fn go_atoi(s: &str) -> Option<i64> {
    s.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_the_missing_section() {
        let d = ConfigDump::parse(r#"{"configs": []}"#).unwrap();
        let e = d.listeners().unwrap_err().to_string();
        assert!(e.starts_with("config dump has no ListenersConfigDump"), "{e}");
        assert!(ConfigDump::parse("[]").is_err());
        assert!(ConfigDump::parse("{")
            .unwrap_err()
            .to_string()
            .contains("cannot parse the config dump"));
    }

    #[test]
    fn last_section_wins_and_empty_is_named() {
        let d = ConfigDump::parse(
            r#"{"configs": [
              {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "static_listeners": [{"listener": {"name": "old"}}]},
              {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"}]}"#,
        )
        .unwrap();
        assert_eq!(d.listeners().unwrap_err().to_string(), "no listeners found");
    }
}
