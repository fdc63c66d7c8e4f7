//! Logging for Skiff's binaries, in Istio's line format (`TIME\tLEVEL\tmessage key=value`) so that
//! people and tools used to `istio-init` / `istio-proxy` logs read Skiff's the same way.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Istio's layout: RFC 3339 time with microseconds, a tab, the lowercase level, a tab, the message
/// and then the event's fields as `key=value`.
pub struct IstioFormat;

impl<S, N> FormatEvent<S, N> for IstioFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        SystemTime.format_time(&mut w)?;
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(w, "\t{level}\t")?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                if let Some(fields) = span
                    .extensions()
                    .get::<tracing_subscriber::fmt::FormattedFields<N>>()
                {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
                w.write_str(": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Turns Istio's `--log_output_level` (`default:info,ads:debug`) into a tracing filter: the
/// `default` scope sets the global level, other scopes become targets.
pub fn filter_from_istio_levels(spec: &str) -> String {
    let mut parts = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (scope, level) = item.split_once(':').unwrap_or(("default", item));
        let level = match level {
            "none" => "off",
            "fatal" => "error",
            l => l,
        };
        if scope == "default" {
            parts.insert(0, level.to_string());
        } else {
            parts.push(format!("{scope}={level}"));
        }
    }
    parts.join(",")
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static RELOAD: std::sync::OnceLock<(Reload, std::sync::Mutex<String>)> = std::sync::OnceLock::new();

/// Installs the global subscriber writing to stderr. `RUST_LOG` wins over `level_spec`.
pub fn init(level_spec: &str, json: bool) {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| filter_from_istio_levels(level_spec));
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for people: pod logs and test captures get plain `key=value`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let base = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // The reload handle's type depends on the formatter, hence two arms.
    let installed: Option<Reload> = if json {
        let builder = base.json().with_filter_reloading();
        let handle = builder.reload_handle();
        builder
            .try_init()
            .ok()
            .map(|()| Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as Reload)
    } else {
        let builder = base.event_format(IstioFormat).with_filter_reloading();
        let handle = builder.reload_handle();
        builder
            .try_init()
            .ok()
            .map(|()| Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())) as Reload)
    };
    // A second init (tests) keeps the first subscriber.
    if let Some(reload) = installed {
        let _ = RELOAD.set((reload, std::sync::Mutex::new(spec)));
    }
}

/// Changes levels at run time (admin `/logging`), e.g. `debug` or `info,proxy::http=debug`.
pub fn set_levels(spec: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(spec).map_err(|e| format!("invalid level {spec:?}: {e}"))?;
    let (reload, current) = RELOAD.get().ok_or("logging is not initialised")?;
    reload(filter)?;
    *current.lock().unwrap_or_else(|p| p.into_inner()) = spec.to_owned();
    Ok(())
}

/// The level filter in force.
pub fn current_levels() -> String {
    RELOAD
        .get()
        .map(|(_, c)| c.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .unwrap_or_else(|| "info".into())
}

#[cfg(test)]
mod tests {
    use super::filter_from_istio_levels;

    #[test]
    fn istio_levels_map_to_filters() {
        assert_eq!(filter_from_istio_levels("default:info"), "info");
        assert_eq!(
            filter_from_istio_levels("ads:debug,default:warn"),
            "warn,ads=debug"
        );
        assert_eq!(filter_from_istio_levels("default:none"), "off");
        assert_eq!(filter_from_istio_levels("debug"), "debug");
    }
}
