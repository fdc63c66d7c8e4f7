//! `proxy-config secret` (and the secrets block of `all`): each SDS secret's certificate —
//! CA or chain, serial, validity — read from the PEM Envoy holds.
//!
//! Only the few certificate fields the table shows are decoded, with a small DER reader; a
//! certificate it cannot read is listed as invalid with empty details, as istioctl lists one
//! Go's x509 parser rejects.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::json::{to_yaml, Json};
use crate::proto::{to_jsonpb_indented, to_jsonpb_value};
use crate::tabwriter::TabWriter;
use crate::{without_type, ConfigDump, Error, Output};

/// What the table shows of one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub is_ca: bool,
    /// Lowercase hex without leading zeros (Go's `%x` of a big.Int).
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The secrets table as of `now` (the VALID CERT column depends on it).
pub fn summary_at(d: &ConfigDump, name_column: bool, now: SystemTime) -> Result<String, Error> {
    let dump = d.section("SecretsConfigDump")?;
    let warming = dump.get("dynamic_warming_secrets").items();
    let active = dump.get("dynamic_active_secrets").items();
    if warming.is_empty() && active.is_empty() {
        return Ok("No active or warming secrets found.\n".into());
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut rows = Vec::new();
    for (s, state) in warming
        .iter()
        .map(|s| (s, "WARMING"))
        .chain(active.iter().map(|s| (s, "ACTIVE")))
    {
        let state = if state == "ACTIVE" && s.get("version_info").str() == "uninitialized" {
            "UNINITIALIZED"
        } else {
            state
        };
        let mut name = s.get("name").str().to_owned();
        if name_column {
            name = format!("secret/{name}");
        }
        let secret = s.get("secret");
        let chain = inline_bytes(secret.get("tls_certificate").get("certificate_chain"));
        let ca = inline_bytes(secret.get("validation_context").get("trusted_ca"));
        let pem = if !chain.is_empty() { chain } else { ca };
        let info = if pem.is_empty() {
            None
        } else {
            parse_pem_cert(&pem)
        };
        let row = match info {
            Some(c) => vec![
                name,
                if c.is_ca { "CA" } else { "Cert Chain" }.to_owned(),
                state.to_owned(),
                (now > c.not_before && now < c.not_after).to_string(),
                c.serial,
                rfc3339(c.not_after),
                rfc3339(c.not_before),
            ],
            None => vec![
                name,
                String::new(),
                state.to_owned(),
                "false".into(),
                String::new(),
                String::new(),
                String::new(),
            ],
        };
        rows.push(row);
    }
    let mut w = TabWriter::new(0, 5);
    w.row(&[
        "RESOURCE NAME",
        "TYPE",
        "STATUS",
        "VALID CERT",
        "SERIAL NUMBER",
        "NOT AFTER",
        "NOT BEFORE",
    ]);
    for r in rows {
        w.row(&r);
    }
    Ok(w.render())
}

/// The secrets table now.
pub fn summary(d: &ConfigDump, name_column: bool) -> Result<String, Error> {
    summary_at(d, name_column, SystemTime::now())
}

/// `proxy-config secret`: the table, or the `SecretsConfigDump` message as jsonpb prints it.
pub fn print(d: &ConfigDump, output: Output) -> Result<String, Error> {
    if output == Output::Short {
        return summary(d, false);
    }
    let msg = without_type(d.section("SecretsConfigDump")?);
    const TYPE: &str = "envoy.admin.v3.SecretsConfigDump";
    Ok(match output {
        Output::Yaml => format!("{}\n", to_yaml(&to_jsonpb_value(&msg, TYPE))),
        _ => format!("{}\n", to_jsonpb_indented(&msg, TYPE)),
    })
}

fn inline_bytes(source: &Json) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(source.get("inline_bytes").str())
        .unwrap_or_default()
}

/// The first certificate of a PEM bundle.
pub fn parse_pem_cert(pem: &[u8]) -> Option<CertInfo> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")?;
    let body_start = start + text[start..].find('\n')? + 1;
    let end = body_start + text[body_start..].find("-----END ")?;
    let b64: String = text[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    parse_der_cert(&der)
}

/// One DER element: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn parse_der_cert(der: &[u8]) -> Option<CertInfo> {
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    let (mut tag, mut body, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, body, rest) = tlv(rest)?; // explicit version
    }
    if tag != 0x02 {
        return None;
    }
    let serial = hex_serial(body);
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (0x30, validity, rest) = tlv(rest)? else {
        return None;
    };
    let (t1, nb, after) = tlv(validity)?;
    let (t2, na, _) = tlv(after)?;
    let not_before = parse_time(t1, nb)?;
    let not_after = parse_time(t2, na)?;
    let (_, _, mut rest) = tlv(rest)?; // subject
    (_, _, rest) = tlv(rest)?; // subject public key info
    let mut is_ca = false;
    while !rest.is_empty() {
        let (tag, body, more) = tlv(rest)?;
        rest = more;
        if tag == 0xa3 {
            is_ca = basic_constraints_ca(body).unwrap_or(false);
        }
    }
    Some(CertInfo {
        is_ca,
        serial,
        not_before,
        not_after,
    })
}

fn basic_constraints_ca(extensions: &[u8]) -> Option<bool> {
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13]; // 2.5.29.19
    let (0x30, mut list, _) = tlv(extensions)? else {
        return None;
    };
    while !list.is_empty() {
        let (_, ext, more) = tlv(list)?;
        list = more;
        let (0x06, oid, fields) = tlv(ext)? else { continue };
        if oid != BASIC_CONSTRAINTS {
            continue;
        }
        let (mut tag, mut value, after) = tlv(fields)?;
        if tag == 0x01 {
            (tag, value, _) = tlv(after)?; // skip `critical`
        }
        if tag != 0x04 {
            return None;
        }
        let (0x30, seq, _) = tlv(value)? else { return None };
        if seq.is_empty() {
            return Some(false);
        }
        let (tag, b, _) = tlv(seq)?;
        return Some(tag == 0x01 && b.first().is_some_and(|x| *x != 0));
    }
    None
}

fn hex_serial(int: &[u8]) -> String {
    let digits: String = int.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.to_owned()
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) → Unix seconds.
fn parse_time(tag: u8, b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    if !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0..4)?, 4),
        _ => return None,
    };
    let month = num(rest..rest + 2)?;
    let day = num(rest + 2..rest + 4)?;
    let (h, m, sec) = (
        num(rest + 4..rest + 6)?,
        num(rest + 6..rest + 8)?,
        num(rest + 8..rest + 10)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Unix seconds → `2023-05-16T01:32:52Z` (Go's RFC3339 of a UTC time).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time(0x17, b"230516013252Z"), Some(1_684_200_772));
        assert_eq!(rfc3339(1_684_200_772), "2023-05-16T01:32:52Z");
        assert_eq!(
            parse_time(0x18, b"20330502034133Z").map(rfc3339).as_deref(),
            Some("2033-05-02T03:41:33Z")
        );
        assert_eq!(parse_time(0x17, b"bogus"), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(parse_pem_cert(b"not pem"), None);
        assert_eq!(parse_der_cert(&[0x30, 0x82, 0xff]), None);
        assert_eq!(hex_serial(&[0x00, 0x6f, 0xbe]), "6fbe");
    }
}
