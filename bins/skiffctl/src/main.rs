//! `skiffctl`: the operator's tool (istioctl's counterpart).

mod admin;
mod analyze_cmd;
mod cli;
mod local_cmd;
mod proxy_cmd;

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn write_output(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .context("cannot write standard output"),
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Demo(d) => {
            local_cmd::demo(d)?;
            Ok(())
        }
        cli::Command::Local(l) => {
            let code = local_cmd::run(l)?;
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        cli::Command::Analyze(a) => {
            let (report, summary, code) = analyze_cmd::analyze(&a)?;
            write_output(None, &report)?;
            eprintln!("{summary}");
            if code != 0 {
                std::process::exit(i32::from(code));
            }
            Ok(())
        }
        cli::Command::ProxyConfig(pc) => write_output(None, &proxy_cmd::proxy_config(pc)?),
        cli::Command::ProxyStatus(ps) => write_output(None, &proxy_cmd::proxy_status(ps)?),
        cli::Command::KubeInject(k) => {
            let input = read_input(&k.filename)?;
            let (out, warnings) = inject::manifest::kube_inject(&input, &k.settings)
                .with_context(|| format!("cannot inject {}", k.filename.display()))?;
            for w in warnings {
                eprintln!("{w}");
            }
            write_output(k.output.as_deref(), &out)
        }
        cli::Command::Manifest(cli::Manifest::Generate(g)) => {
            let ca_bundle_pem = match &g.ca_bundle {
                Some(p) => Some(
                    std::fs::read(p).with_context(|| format!("cannot read --ca-bundle {}", p.display()))?,
                ),
                None => None,
            };
            let docs = install::generate(&g.settings, &install::Options { ca_bundle_pem });
            write_output(None, &inject::manifest::write_documents(&docs)?)
        }
    }
}

fn main() -> ExitCode {
    match run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
