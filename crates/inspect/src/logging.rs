//! `proxy-config log`: turns `--level`/`--reset` into the `POST /logging?…` requests istioctl
//! sends, checking logger names against what the proxy says it has.

use crate::Error;

/// Envoy's level names as istioctl accepts them (`warn` is `warning`).
fn level_name(s: &str) -> Option<&'static str> {
    Some(match s {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warning",
        "error" => "error",
        "critical" => "critical",
        "off" => "off",
        _ => return None,
    })
}

/// istioctl's name for "every logger".
const ALL: &str = "level";

/// The query strings to `POST /logging` with, in order; the last answer is what gets printed.
/// `loggers` is the proxy's answer to a bare `POST /logging` (its `active loggers:` list), which
/// named loggers must appear in. No `--level` and no `--reset` means one bare request.
pub fn requests(level: Option<&str>, reset: bool, loggers: &str) -> Result<Vec<String>, Error> {
    let level = level.filter(|l| !l.is_empty());
    if reset && level.is_some() {
        return Err(Error::Invalid("--level cannot be combined with --reset".into()));
    }
    let mut dest: Vec<(String, &'static str)> = Vec::new();
    if reset {
        // istioctl reads the default from the injector's ConfigMap; Istio's default is warning.
        dest.push((ALL.into(), "warning"));
    } else if let Some(spec) = level {
        for item in spec.split(',') {
            if !item.contains(':') && !item.contains('=') {
                let lvl = level_name(item)
                    .ok_or_else(|| Error::Invalid(format!("unrecognized logging level: {item}")))?;
                dest = vec![(ALL.into(), lvl)];
                continue;
            }
            // `ns::logger:level` → the part after the last `::`.
            let last = item.rsplit("::").next().unwrap_or(item);
            let (logger, lvl) = last
                .split_once([':', '='])
                .ok_or_else(|| Error::Invalid(format!("unrecognized logging level: {last}")))?;
            if logger != ALL && !loggers.contains(logger) {
                return Err(Error::Invalid(format!("unrecognized logger name: {logger}")));
            }
            let lvl = level_name(lvl)
                .ok_or_else(|| Error::Invalid(format!("unrecognized logging level: {lvl}")))?;
            match dest.iter_mut().find(|(l, _)| l == logger) {
                Some(slot) => slot.1 = lvl,
                None => dest.push((logger.to_owned(), lvl)),
            }
        }
    }
    if dest.is_empty() {
        return Ok(vec![String::new()]);
    }
    let mut out = Vec::new();
    if let Some((_, lvl)) = dest.iter().find(|(l, _)| l == ALL) {
        out.push(format!("{ALL}={lvl}"));
    }
    out.extend(
        dest.iter()
            .filter(|(l, _)| l != ALL)
            .map(|(l, lvl)| format!("{l}={lvl}")),
    );
    Ok(out)
}

/// What istioctl prints for one pod: `pod.namespace:` then the proxy's answer.
pub fn format_response(pod: &str, namespace: &str, body: &str) -> String {
    format!("{pod}.{namespace}:\n{body}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LOGGERS: &str = "active loggers:\n  admin: warning\n  http: warning\n  upstream: warning\n";

    #[test]
    fn levels_become_requests() {
        assert_eq!(requests(None, false, LOGGERS).unwrap(), [""]);
        assert_eq!(requests(Some("debug"), false, LOGGERS).unwrap(), ["level=debug"]);
        assert_eq!(requests(Some("warn"), false, LOGGERS).unwrap(), ["level=warning"]);
        assert_eq!(
            requests(Some("http:debug,upstream=trace"), false, LOGGERS).unwrap(),
            ["http=debug", "upstream=trace"]
        );
        assert_eq!(
            requests(Some("info,http:debug"), false, LOGGERS).unwrap(),
            ["level=info", "http=debug"]
        );
        assert_eq!(requests(None, true, LOGGERS).unwrap(), ["level=warning"]);
    }

    #[test]
    fn bad_levels_and_loggers_are_named() {
        let e = |s: &str| requests(Some(s), false, LOGGERS).unwrap_err().to_string();
        assert_eq!(e("xxx"), "unrecognized logging level: xxx");
        assert_eq!(e("xxx:debug"), "unrecognized logger name: xxx");
        assert_eq!(e("http:yyy"), "unrecognized logging level: yyy");
        assert_eq!(e("a::b"), "unrecognized logging level: b");
        assert!(requests(Some("debug"), true, LOGGERS).is_err());
    }
}
