//! One line per request in nginx's default format (the Docker image's `log_format main`, which is
//! `combined` plus `"$http_x_forwarded_for"`), so walkthroughs read the app's log exactly as they
//! read nginx's: `127.0.0.6 - - [03/Jan/2022:14:59:56 +0000] "HEAD / HTTP/1.1" 200 0 "-"
//! "curl/7.29.0" "-"`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What one access-log line is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub remote_addr: IpAddr,
    /// The request line: `GET /path?q HTTP/1.1`.
    pub request: &'a str,
    pub status: u16,
    /// Body bytes sent (0 for HEAD), nginx's `$body_bytes_sent`.
    pub body_bytes_sent: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub x_forwarded_for: Option<&'a str>,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// Formats `entry` as nginx does, escaping `"`, `\` and non-printable bytes as `\xHH` (nginx's
/// `escape=default`) so a hostile header cannot forge a second line.
pub fn format(entry: &Entry<'_>) -> String {
    let mut line = String::with_capacity(160);
    let _ = write!(
        line,
        "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" \"{}\"",
        entry.remote_addr,
        time_local(entry.time),
        escape(entry.request),
        entry.status,
        entry.body_bytes_sent,
        escape(entry.referer.unwrap_or("-")),
        escape(entry.user_agent.unwrap_or("-")),
        escape(entry.x_forwarded_for.unwrap_or("-")),
    );
    line
}

/// Now, in seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

/// nginx's `$time_local` (`03/Jan/2022:14:59:56 +0000`), in UTC: containers run with TZ unset,
/// which is what the walkthroughs' logs show.
pub fn time_local(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_seed_line() {
        // 2022-01-03T14:59:56Z, the seed's `k logs` line.
        let line = format(&Entry {
            remote_addr: "127.0.0.6".parse().unwrap(),
            request: "HEAD / HTTP/1.1",
            status: 200,
            body_bytes_sent: 0,
            referer: None,
            user_agent: Some("curl/7.29.0"),
            x_forwarded_for: None,
            time: 1_641_221_996,
        });
        assert_eq!(
            line,
            r#"127.0.0.6 - - [03/Jan/2022:14:59:56 +0000] "HEAD / HTTP/1.1" 200 0 "-" "curl/7.29.0" "-""#
        );
    }

    #[test]
    fn dates() {
        assert_eq!(time_local(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(time_local(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(time_local(1_709_251_199), "29/Feb/2024:23:59:59 +0000");
        assert_eq!(time_local(4_102_444_800), "01/Jan/2100:00:00:00 +0000");
    }

    #[test]
    fn escapes_like_nginx() {
        assert_eq!(escape("a\"b\\c\nd\u{e9}"), "a\\x22b\\x5Cc\\x0Ad\\xC3\\xA9");
    }
}
