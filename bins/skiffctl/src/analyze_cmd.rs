//! `skiffctl analyze`: `istioctl analyze` over manifest files or directories (Skiff's
//! `pilot::analyze`), printed and exited as istioctl does (79 when issues reach the failure
//! threshold).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct Analyze {
    /// Manifest files or directories (searched recursively for .yaml, .yml, .json).
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<PathBuf>,
    /// More manifest files or directories.
    pub files: Vec<PathBuf>,
    /// The lowest level of message that fails the command (exit code 79).
    #[arg(long = "failure-threshold", value_enum, default_value = "error")]
    pub failure_threshold: Threshold,
    /// The lowest level of message printed.
    #[arg(long = "output-threshold", value_enum, default_value = "info")]
    pub output_threshold: Threshold,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, PartialOrd, Ord)]
pub enum Threshold {
    Error,
    Warning,
    Info,
}

fn level_rank(l: api::Level) -> Threshold {
    match l {
        api::Level::Error => Threshold::Error,
        api::Level::Warning => Threshold::Warning,
        api::Level::Info => Threshold::Info,
    }
}

/// istioctl's exit code for "analyzers found issues".
pub const FOUND_ISSUES: u8 = 79;

/// Runs the analysis; returns the report, the summary line for stderr and the exit code.
pub fn analyze(a: &Analyze) -> anyhow::Result<(String, String, u8)> {
    let paths: Vec<&PathBuf> = a.filename.iter().chain(&a.files).collect();
    if paths.is_empty() {
        anyhow::bail!(
            "nothing to analyze: pass -f FILE_OR_DIR (Skiff analyzes manifests, not a live cluster)"
        );
    }
    let mut files = Vec::new();
    for p in paths {
        let found = pilot::analyze::read_manifests(p)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
        files.extend(found);
    }
    let messages = pilot::analyze::analyze_files(&files);
    let mut out = String::new();
    for m in messages
        .iter()
        .filter(|m| level_rank(m.level) <= a.output_threshold)
    {
        out.push_str(&format!("{m}\n"));
    }
    let failing = messages
        .iter()
        .any(|m| level_rank(m.level) <= a.failure_threshold);
    let (summary, code) = if messages.is_empty() {
        (
            "\u{2714} No validation issues found when analyzing the given files.".to_owned(),
            0,
        )
    } else if failing {
        (
            "Error: Analyzers found issues when analyzing the given files.\nSee https://istio.io/v1.19/docs/reference/config/analysis for more information about causes and resolutions.".to_owned(),
            FOUND_ISSUES,
        )
    } else {
        (
            "Info: Analyzers found issues below the failure threshold.".to_owned(),
            0,
        )
    };
    Ok((out, summary, code))
}
