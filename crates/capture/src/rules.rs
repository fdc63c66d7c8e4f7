//! The rule model: an ordered list of iptables rules per address family, and the two textual
//! forms Istio produces from it (`iptables-restore` input and single `iptables` commands).

use std::collections::BTreeSet;
use std::fmt;

/// iptables tables Skiff writes to, in the order they appear in restore input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
    Mangle,
    Raw,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Filter, Table::Nat, Table::Mangle, Table::Raw];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Chains the kernel provides; every other chain a rule names is created by Skiff.
pub const BUILTIN_CHAINS: [&str; 5] = ["INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"];

pub fn is_builtin(chain: &str) -> bool {
    BUILTIN_CHAINS.contains(&chain)
}

/// Where a rule goes in its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Append,
    /// `-I CHAIN n` (1-based).
    Insert(u32),
}

/// One iptables rule: table, chain, position and the match/target arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub position: Position,
    /// Arguments after the chain, e.g. `["-p", "tcp", "-j", "ISTIO_OUTPUT"]`. A token may carry
    /// double quotes (`"InboundCapture"` for NFLOG prefixes) exactly as Istio writes it.
    pub args: Vec<String>,
}

impl Rule {
    /// The rule as one restore-input line: `-A CHAIN args…` or `-I CHAIN n args…`.
    pub fn restore_line(&self) -> String {
        let mut line = match self.position {
            Position::Append => format!("-A {}", self.chain),
            Position::Insert(n) => format!("-I {} {n}", self.chain),
        };
        for a in &self.args {
            line.push(' ');
            line.push_str(a);
        }
        line
    }

    /// The arguments as separate argv items (quotes removed), for `iptables -C/-D`.
    pub fn argv(&self) -> Vec<String> {
        self.args.iter().map(|a| unquote(a).to_owned()).collect()
    }

    /// The chain this rule jumps to, if any.
    pub fn target(&self) -> Option<&str> {
        let j = self.args.iter().position(|a| a == "-j")?;
        self.args.get(j + 1).map(String::as_str)
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

/// The rules for both families, in the order Istio appends them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub v4: Vec<Rule>,
    pub v6: Vec<Rule>,
}

impl RuleSet {
    pub fn family(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Chains the rules of `family` create (non built-in), in first-use order, with their table.
    pub fn chains(&self, family: Family) -> Vec<(Table, String)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for r in self.family(family) {
            if !is_builtin(&r.chain) && seen.insert((r.table, r.chain.clone())) {
                out.push((r.table, r.chain.clone()));
            }
        }
        out
    }

    /// The `iptables-restore --noflush` input for `family`: per table `* table`, the `-N` lines of
    /// new chains, the rules in order, then `COMMIT` (the form seed 002's init log shows).
    /// Empty when the family has no rules.
    pub fn restore_input(&self, family: Family) -> String {
        let chains = self.chains(family);
        let mut out = String::new();
        for table in Table::ALL {
            let rules: Vec<&Rule> = self.family(family).iter().filter(|r| r.table == table).collect();
            if rules.is_empty() {
                continue;
            }
            out.push_str(&format!("* {table}\n"));
            for (t, chain) in &chains {
                if *t == table {
                    out.push_str(&format!("-N {chain}\n"));
                }
            }
            for r in rules {
                out.push_str(&r.restore_line());
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// The same rules as individual commands (`iptables -t nat -N …`, `iptables -t nat -A …`),
    /// Istio's non-restore form (`--restore-format=false`).
    pub fn commands(&self, family: Family) -> Vec<String> {
        let bin = family.iptables();
        let mut out: Vec<String> = self
            .chains(family)
            .into_iter()
            .map(|(t, c)| format!("{bin} -t {t} -N {c}"))
            .collect();
        for r in self.family(family) {
            out.push(format!("{bin} -t {} {}", r.table, r.restore_line()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(table: Table, chain: &str, args: &[&str]) -> Rule {
        Rule {
            table,
            chain: chain.into(),
            position: Position::Append,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn restore_groups_tables_and_creates_chains_once() {
        let set = RuleSet {
            v4: vec![
                rule(Table::Nat, "ISTIO_A", &["-j", "RETURN"]),
                rule(Table::Mangle, "ISTIO_B", &["-j", "ACCEPT"]),
                rule(Table::Nat, "OUTPUT", &["-p", "tcp", "-j", "ISTIO_A"]),
                rule(Table::Nat, "ISTIO_A", &["-d", "1.2.3.4/32", "-j", "RETURN"]),
            ],
            v6: vec![],
        };
        assert_eq!(
            set.restore_input(Family::V4),
            "* nat\n-N ISTIO_A\n-A ISTIO_A -j RETURN\n-A OUTPUT -p tcp -j ISTIO_A\n\
             -A ISTIO_A -d 1.2.3.4/32 -j RETURN\nCOMMIT\n\
             * mangle\n-N ISTIO_B\n-A ISTIO_B -j ACCEPT\nCOMMIT\n"
        );
        assert_eq!(set.restore_input(Family::V6), "");
    }

    #[test]
    fn argv_strips_nflog_quotes_and_target_is_found() {
        let r = rule(
            Table::Nat,
            "OUTPUT",
            &["-j", "NFLOG", "--nflog-prefix", "\"JumpOutbound\""],
        );
        assert_eq!(r.argv()[3], "JumpOutbound");
        assert_eq!(r.target(), Some("NFLOG"));
        assert_eq!(
            Rule {
                position: Position::Insert(2),
                ..r.clone()
            }
            .restore_line(),
            "-I OUTPUT 2 -j NFLOG --nflog-prefix \"JumpOutbound\""
        );
    }
}
