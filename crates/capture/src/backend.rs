//! Choosing between the legacy and nf_tables iptables variants the way Istio does: prefer the
//! variant that already holds rules in this namespace (nft first), else the plain `iptables`.

use crate::exec::Exec;
use crate::rules::Family;
use crate::ApplyError;

/// The iptables variant used for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub family: Family,
    /// `iptables`, `iptables-nft`, `iptables-legacy` (or the ip6tables equivalents).
    pub bin: String,
    /// `true` for the legacy (x_tables) variant.
    pub legacy: bool,
    /// The version line the save tool printed, e.g. `iptables-save v1.8.9 (nf_tables)`.
    pub version: String,
}

impl Backend {
    pub fn save(&self) -> String {
        format!("{}-save", self.bin)
    }

    pub fn restore(&self) -> String {
        format!("{}-restore", self.bin)
    }
}

/// A variant found on PATH, and whether rules already exist in it here.
struct Probe {
    backend: Backend,
    has_rules: bool,
}

fn probe(exec: &Exec, family: Family, bin: &str) -> Option<Probe> {
    let save = format!("{bin}-save");
    let dump = exec.run(&save, &[], None).ok()?;
    if !dump.success {
        return None;
    }
    let version = exec
        .run(&save, &["--version".to_string()], None)
        .ok()
        .map(|o| o.stdout.trim().to_owned())
        .unwrap_or_default();
    // Very old legacy tools do not know --version; they are legacy all the same.
    let legacy = !version.contains("nf_tables");
    // A save with at least one table dump has three or more lines.
    let has_rules = dump.stdout.lines().count() >= 3;
    Some(Probe {
        backend: Backend {
            family,
            bin: bin.into(),
            legacy,
            version,
        },
        has_rules,
    })
}

/// Picks the variant for `family`: nft if it holds rules, else legacy if it holds rules, else the
/// plain binary.
pub fn detect(exec: &Exec, family: Family) -> Result<Backend, ApplyError> {
    let base = family.iptables();
    for variant in ["nft", "legacy"] {
        if let Some(p) = probe(exec, family, &format!("{base}-{variant}")) {
            if p.has_rules {
                return Ok(p.backend);
            }
        }
    }
    probe(exec, family, base)
        .map(|p| p.backend)
        .ok_or_else(|| ApplyError::NoIptables { bin: base.into() })
}
