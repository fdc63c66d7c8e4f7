//! `skiff-agent iptables`: the init-container command. Logs its environment and variables the way
//! `istio-init` does, then prints (`--dry-run`), applies, removes (`--cleanup`) or validates.

use std::io::Write;
use std::path::Path;

use tracing::{error, info};

use crate::apply::{self, ApplyOptions};
use crate::exec::{self, Exec};
use crate::flags::{environment_report, variables_report, HostFacts, IptablesFlags};
use crate::generate;
use crate::rules::{Family, RuleSet};
use crate::validate;

/// Exit code Istio uses when validation fails (the pod must not start).
pub const VALIDATION_ERROR_CODE: u8 = 126;

/// What `--dry-run` prints: exactly the restore input (or commands with `--restore-format=false`).
/// IPv6 input, when there is any, follows a `# ip6tables-restore input` comment line.
pub fn dry_run_output(set: &RuleSet, restore_format: bool) -> String {
    let render = |family| {
        if restore_format {
            set.restore_input(family)
        } else {
            set.commands(family).into_iter().map(|c| c + "\n").collect()
        }
    };
    let mut out = render(Family::V4);
    let v6 = render(Family::V6);
    if !v6.is_empty() {
        out.push_str("# ip6tables-restore input\n");
        out.push_str(&v6);
    }
    out
}

/// Runs the command and returns the process exit code.
pub fn run(flags: &IptablesFlags) -> u8 {
    let env = HostFacts::gather(false).env;
    let host = HostFacts::gather(flags.needs_nameservers(&env));
    info!("Istio iptables environment:\n{}", environment_report(&host));
    let (cfg, opts) = match flags.resolve(&host) {
        Ok(v) => v,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };
    info!(
        "Istio iptables variables:\n{}",
        variables_report(&cfg, &opts, flags)
    );
    let set = generate::rules(&cfg);

    if opts.dry_run {
        info!("running in dry-run mode: printing the rules, changing nothing");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(dry_run_output(&set, opts.restore_format).as_bytes());
        return 0;
    }

    let exec = match &opts.network_namespace {
        Some(ns) => match Exec::in_netns(Path::new(ns)) {
            Ok(e) => e,
            Err(e) => {
                error!("{e}");
                return 1;
            }
        },
        None => Exec::here(),
    };

    if opts.cleanup {
        return match apply::cleanup(&exec, &cfg) {
            Ok(report) => {
                info!(families = ?report.families, "removed capture rules");
                0
            }
            Err(e) => {
                error!("{e}");
                1
            }
        };
    }

    if !opts.skip_rule_apply {
        let apply_opts = ApplyOptions {
            restore_format: opts.restore_format,
            reconcile: opts.reconcile,
            force_apply: opts.force_apply,
        };
        match apply::apply(&exec, &cfg, &set, apply_opts) {
            Ok(report) => info!(v4 = ?report.v4, v6 = ?report.v6, "capture rules ready"),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        }
        for family in [Family::V4, Family::V6] {
            if family == Family::V6 && !cfg.enable_ipv6 {
                continue;
            }
            if let Some(dump) = apply::dump(&exec, family) {
                info!("Running command: {}-save\n{}", family.iptables(), dump.trim_end());
            }
        }
    }

    if opts.run_validation {
        let (cfg, port, timeout) = (cfg.clone(), opts.probe_port, opts.probe_timeout);
        let result = match &opts.network_namespace {
            Some(ns) => exec::in_netns(Path::new(ns), move || validate::run(&cfg, port, timeout))
                .unwrap_or_else(|e| Err(crate::ValidationError::UnknownOwner(e.to_string()))),
            None => validate::run(&cfg, port, timeout),
        };
        if let Err(e) = result {
            error!("{e}");
            return VALIDATION_ERROR_CODE;
        }
    }
    0
}
