//! Applying a rule set atomically per table with `iptables-restore --noflush`, refusing to write
//! over rules that differ, rolling back on failure, and removing exactly what Skiff installs.

use tracing::{info, warn};

use crate::backend::{self, Backend};
use crate::config::{CaptureConfig, InboundPorts, InterceptionMode};
use crate::exec::Exec;
use crate::generate::{self, OWN_CHAINS};
use crate::rules::{is_builtin, Family, Position, Rule, RuleSet, Table};
use crate::ApplyError;

/// How to apply.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// One `iptables-restore` per family (true, atomic per table) or one command per rule.
    pub restore_format: bool,
    /// Replace existing, different Skiff/Istio chains instead of failing.
    pub reconcile: bool,
    /// Apply even if the same rules are in place already.
    pub force_apply: bool,
}

/// What happened to one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyOutcome {
    Applied,
    /// The exact rules were already installed; nothing was written.
    AlreadyInPlace,
    /// IPv6 was not asked for.
    Skipped,
}

#[derive(Clone, Debug)]
pub struct ApplyReport {
    pub v4: FamilyOutcome,
    pub v6: FamilyOutcome,
    pub backends: Vec<Backend>,
}

const WAIT: &str = "--wait=30";
/// Tables that can hold Skiff's chains.
const TABLES: [Table; 3] = [Table::Nat, Table::Mangle, Table::Raw];

fn save_table(exec: &Exec, b: &Backend, table: Table) -> Result<String, ApplyError> {
    exec.run_ok(&b.save(), &["-t".into(), table.as_str().into()], None)
}

/// Skiff's chains that exist now, per table.
fn existing_chains(exec: &Exec, b: &Backend) -> Result<Vec<(Table, String)>, ApplyError> {
    let mut out = Vec::new();
    for table in TABLES {
        for line in save_table(exec, b, table)?.lines() {
            if let Some(name) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) {
                if OWN_CHAINS.contains(&name) {
                    out.push((table, name.to_owned()));
                }
            }
        }
    }
    Ok(out)
}

fn rule_argv(op: &str, rule: &Rule) -> Vec<String> {
    let mut argv = vec![
        WAIT.into(),
        "-t".into(),
        rule.table.as_str().into(),
        op.into(),
        rule.chain.clone(),
    ];
    argv.extend(rule.argv());
    argv
}

/// Whether exactly `rules` are installed: every rule present, and Skiff's chains hold no more.
fn in_place(
    exec: &Exec,
    b: &Backend,
    set: &RuleSet,
    existing: &[(Table, String)],
) -> Result<bool, ApplyError> {
    let family = b.family;
    let wanted = set.chains(family);
    if existing.iter().any(|c| !wanted.contains(c)) || wanted.iter().any(|c| !existing.contains(c)) {
        return Ok(false);
    }
    for table in TABLES {
        let dump = save_table(exec, b, table)?;
        for (t, chain) in wanted.iter().filter(|(t, _)| *t == table) {
            let have = dump
                .lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")))
                .count();
            let want = set
                .family(family)
                .iter()
                .filter(|r| r.table == *t && &r.chain == chain)
                .count();
            if have != want {
                return Ok(false);
            }
        }
    }
    for rule in set.family(family) {
        if !exec.run(&b.bin, &rule_argv("-C", rule), None)?.success {
            return Ok(false);
        }
    }
    Ok(true)
}

fn write_rules(exec: &Exec, b: &Backend, set: &RuleSet, restore_format: bool) -> Result<(), ApplyError> {
    let family = b.family;
    if restore_format {
        let input = set.restore_input(family);
        if input.is_empty() {
            return Ok(());
        }
        info!(
            "Running {} --noflush with the following input:\n{}",
            b.restore(),
            input.trim_end()
        );
        exec.run_ok(&b.restore(), &["--noflush".into(), WAIT.into()], Some(&input))?;
    } else {
        for (table, chain) in set.chains(family) {
            exec.run_ok(
                &b.bin,
                &[
                    WAIT.into(),
                    "-t".into(),
                    table.as_str().into(),
                    "-N".into(),
                    chain,
                ],
                None,
            )?;
        }
        for rule in set.family(family) {
            let mut argv = vec![WAIT.into(), "-t".into(), rule.table.as_str().into()];
            match rule.position {
                Position::Append => argv.extend(["-A".into(), rule.chain.clone()]),
                Position::Insert(n) => argv.extend(["-I".into(), rule.chain.clone(), n.to_string()]),
            }
            argv.extend(rule.argv());
            exec.run_ok(&b.bin, &argv, None)?;
        }
    }
    Ok(())
}

/// Applies `set` (built from `cfg`): IPv4, then IPv6 if enabled, then TPROXY policy routing.
/// A failure after some rules were written removes them again before returning the error.
pub fn apply(
    exec: &Exec,
    cfg: &CaptureConfig,
    set: &RuleSet,
    opts: ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    let mut families = vec![Family::V4];
    if cfg.enable_ipv6 {
        families.push(Family::V6);
    }
    // Decide for every family before writing anything, so drift fails without side effects.
    let mut plan = Vec::new();
    for family in families {
        let b = backend::detect(exec, family)?;
        info!(backend = %b.bin, version = %b.version, "using {} for {:?}", b.bin, family);
        let existing = existing_chains(exec, &b)?;
        let outcome = if existing.is_empty() {
            FamilyOutcome::Applied
        } else if !opts.force_apply && in_place(exec, &b, set, &existing)? {
            info!("{} rules are already in place; nothing to do", family.iptables());
            FamilyOutcome::AlreadyInPlace
        } else if opts.reconcile || opts.force_apply {
            info!(chains = ?existing, "replacing existing capture chains (--reconcile)");
            FamilyOutcome::Applied
        } else {
            return Err(ApplyError::Drift {
                family: family.iptables(),
                chains: existing.iter().map(|(t, c)| format!("{t}/{c}")).collect(),
            });
        };
        plan.push((b, outcome));
    }

    let mut written: Vec<&Backend> = Vec::new();
    for (b, outcome) in &plan {
        if *outcome != FamilyOutcome::Applied {
            continue;
        }
        let result = (|| {
            if !existing_chains(exec, b)?.is_empty() {
                cleanup_family(exec, b, set)?;
            }
            write_rules(exec, b, set, opts.restore_format)
        })();
        if let Err(e) = result {
            // Undo this family's partial writes and every family written before it.
            let mut rolled_back = Vec::new();
            for done in written.iter().copied().chain(std::iter::once(b)) {
                match cleanup_family(exec, done, set) {
                    Ok(()) => rolled_back.push(done.bin.clone()),
                    Err(re) => warn!(error = %re, "rollback of {} failed", done.bin),
                }
            }
            return Err(ApplyError::Apply {
                family: b.family.iptables(),
                source: Box::new(e),
                rolled_back,
            });
        }
        written.push(b);
    }
    if let Err(e) = configure_routes(exec, cfg) {
        for b in &written {
            let _ = cleanup_family(exec, b, set);
        }
        let _ = cleanup_routes(exec, cfg);
        return Err(e);
    }

    let outcome = |f: Family| {
        plan.iter()
            .find(|(b, _)| b.family == f)
            .map(|(_, o)| o.clone())
            .unwrap_or(FamilyOutcome::Skipped)
    };
    Ok(ApplyReport {
        v4: outcome(Family::V4),
        v6: outcome(Family::V6),
        backends: plan.into_iter().map(|(b, _)| b).collect(),
    })
}

fn tproxy_routing(cfg: &CaptureConfig) -> bool {
    cfg.interception_mode == InterceptionMode::Tproxy && cfg.inbound_ports != InboundPorts::None
}

fn ip_families(cfg: &CaptureConfig) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("-4", "0.0.0.0/0")];
    if cfg.enable_ipv6 {
        v.push(("-6", "::/0"));
    }
    v
}

/// TPROXY: packets marked by ISTIO_DIVERT are routed to lo through table `tproxy_route_table`;
/// IPv6 pods also get `::6` on lo, the inbound passthrough source address.
fn configure_routes(exec: &Exec, cfg: &CaptureConfig) -> Result<(), ApplyError> {
    if cfg.enable_ipv6 {
        let out = exec.run("ip", &s(&["-6", "addr", "add", "::6/128", "dev", "lo"]), None)?;
        if !out.success && !out.stderr.contains("exists") {
            return Err(ApplyError::Command {
                command: "ip -6 addr add ::6/128 dev lo".into(),
                stderr: out.stderr,
            });
        }
    }
    if !tproxy_routing(cfg) {
        return Ok(());
    }
    let (mark, table) = (cfg.tproxy_mark.to_string(), cfg.tproxy_route_table.to_string());
    for (fam, default) in ip_families(cfg) {
        let shown = exec.run_ok(
            "ip",
            &s(&[fam, "rule", "list", "fwmark", &mark, "lookup", &table]),
            None,
        )?;
        if shown.trim().is_empty() {
            exec.run_ok(
                "ip",
                &s(&[fam, "rule", "add", "fwmark", &mark, "lookup", &table]),
                None,
            )?;
        }
        let out = exec.run(
            "ip",
            &s(&[
                fam, "route", "add", "local", default, "dev", "lo", "table", &table,
            ]),
            None,
        )?;
        if !out.success && !out.stderr.contains("exists") {
            return Err(ApplyError::Command {
                command: format!("ip {fam} route add local {default} dev lo table {table}"),
                stderr: out.stderr.trim().to_owned(),
            });
        }
    }
    info!(mark = %mark, table = %table, "configured TPROXY policy routing");
    Ok(())
}

fn cleanup_routes(exec: &Exec, cfg: &CaptureConfig) -> Result<(), ApplyError> {
    let (mark, table) = (cfg.tproxy_mark.to_string(), cfg.tproxy_route_table.to_string());
    for fam in ["-4", "-6"] {
        // Remove every copy of our rule; stop at the first "not found".
        for _ in 0..16 {
            if !exec
                .run(
                    "ip",
                    &s(&[fam, "rule", "del", "fwmark", &mark, "lookup", &table]),
                    None,
                )?
                .success
            {
                break;
            }
        }
        let _ = exec.run("ip", &s(&[fam, "route", "flush", "table", &table]), None)?;
    }
    Ok(())
}

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|i| i.to_string()).collect()
}

/// Splits an iptables-save rule line into arguments, honouring double quotes.
pub(crate) fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut has_token = false;
    for c in line.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' && in_quotes {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
            has_token = true;
        } else if c.is_whitespace() && !in_quotes {
            if has_token {
                out.push(std::mem::take(&mut cur));
                has_token = false;
            }
        } else {
            cur.push(c);
            has_token = true;
        }
    }
    if has_token {
        out.push(cur);
    }
    out
}

/// Removes Skiff's rules from one family: its rules in built-in chains, any other jump from a
/// built-in chain into a Skiff chain, then the Skiff chains themselves. Foreign rules and chains
/// are left alone. Idempotent.
fn cleanup_family(exec: &Exec, b: &Backend, set: &RuleSet) -> Result<(), ApplyError> {
    for rule in set.family(b.family).iter().filter(|r| is_builtin(&r.chain)) {
        // Not present is fine: cleanup is idempotent.
        let _ = exec.run(&b.bin, &rule_argv("-D", rule), None)?;
    }
    for table in TABLES {
        for line in save_table(exec, b, table)?.lines() {
            let tokens = tokenize(line);
            let jumps_to_own = tokens
                .windows(2)
                .any(|w| w[0] == "-j" && OWN_CHAINS.contains(&w[1].as_str()));
            if tokens.len() > 2 && tokens[0] == "-A" && is_builtin(&tokens[1]) && jumps_to_own {
                let mut argv = vec![WAIT.to_string(), "-t".into(), table.as_str().into(), "-D".into()];
                argv.extend(tokens[1..].iter().cloned());
                exec.run_ok(&b.bin, &argv, None)?;
            }
        }
    }
    let chains = existing_chains(exec, b)?;
    for (table, chain) in &chains {
        exec.run_ok(&b.bin, &s(&[WAIT, "-t", table.as_str(), "-F", chain]), None)?;
    }
    for (table, chain) in &chains {
        let out = exec.run(&b.bin, &s(&[WAIT, "-t", table.as_str(), "-X", chain]), None)?;
        if !out.success {
            return Err(ApplyError::Cleanup {
                chain: format!("{table}/{chain}"),
                reason: format!(
                    "{} (is a rule outside Skiff's chains still jumping to it?)",
                    out.stderr.trim()
                ),
            });
        }
    }
    Ok(())
}

/// What `--cleanup` removed.
#[derive(Clone, Debug, Default)]
pub struct CleanupReport {
    pub families: Vec<String>,
}

/// Removes everything Skiff's capture installs for `cfg` (both families, and TPROXY routing).
/// Safe to run repeatedly and on a namespace Skiff never touched.
pub fn cleanup(exec: &Exec, cfg: &CaptureConfig) -> Result<CleanupReport, ApplyError> {
    let set = generate::rules(&CaptureConfig {
        enable_ipv6: true,
        ..cfg.clone()
    });
    let mut report = CleanupReport::default();
    for family in [Family::V4, Family::V6] {
        match backend::detect(exec, family) {
            Ok(b) => {
                cleanup_family(exec, &b, &set)?;
                report.families.push(b.bin);
            }
            Err(e) if family == Family::V6 => warn!(error = %e, "skipping IPv6 cleanup"),
            Err(e) => return Err(e),
        }
    }
    cleanup_routes(exec, cfg)?;
    Ok(report)
}

/// `iptables-save` of every table for the log (best effort, as Istio does after applying).
pub fn dump(exec: &Exec, family: Family) -> Option<String> {
    let b = backend::detect(exec, family).ok()?;
    exec.run_ok(&b.save(), &[], None).ok()
}

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn tokenize_keeps_quoted_comments_together() {
        assert_eq!(
            tokenize(r#"-A OUTPUT -m comment --comment "a \"b\" c" -j ISTIO_OUTPUT"#),
            vec![
                "-A",
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "ISTIO_OUTPUT"
            ]
        );
        assert_eq!(tokenize(r#"-A X --comment """#), vec!["-A", "X", "--comment", ""]);
    }
}
