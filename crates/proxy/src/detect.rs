//! Protocol sniffing on a connection's first bytes, as Envoy's `tls_inspector` and
//! `http_inspector` do: TLS (with SNI and ALPN from the ClientHello), HTTP/1.x (request line),
//! h2c prior knowledge (the HTTP/2 preface). Pure functions over peeked bytes; never panics on
//! any input (fuzzed).

/// What the first bytes say so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes to decide yet.
    NeedMore,
    Tls {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
    /// `http/1.0`, `http/1.1` or `h2c`.
    Http(&'static str),
    /// Neither TLS nor HTTP.
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the bytes start like a TLS handshake record.
fn looks_like_tls(buf: &[u8]) -> bool {
    buf.first() == Some(&0x16) && buf.get(1).is_none_or(|v| *v == 3)
}

/// Sniffs TLS ClientHello details.
pub fn sniff_tls(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    if !looks_like_tls(buf) {
        return Sniffed::Other;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut input = buf;
    // Acceptor::read_tls only reads what it is given; an incomplete hello asks for more.
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Sniffed::Other,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Sniffed::Tls {
                server_name: hello.server_name().map(|s| s.to_ascii_lowercase()),
                alpn: hello
                    .alpn()
                    .map(|protos| protos.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default(),
            }
        }
        Ok(None) => {
            // A record header says how long the hello is; past that size it is not TLS we know.
            if buf.len() >= 5 && buf.len() >= 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize + 4 {
                Sniffed::Tls {
                    server_name: None,
                    alpn: Vec::new(),
                }
            } else {
                Sniffed::NeedMore
            }
        }
        // A TLS record that rustls cannot read as a hello (e.g. SSLv3, broken extensions) is still
        // TLS for filter chain purposes, without SNI.
        Err(_) => Sniffed::Tls {
            server_name: None,
            alpn: Vec::new(),
        },
    }
}

/// Sniffs HTTP/1.x or the h2c preface.
pub fn sniff_http(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::Http("h2c")
        } else {
            Sniffed::NeedMore
        };
    }
    // Only the request line is needed: method SP target SP HTTP/1.x CRLF.
    let line_end = buf.windows(2).position(|w| w == b"\r\n");
    let line = match line_end {
        Some(end) => &buf[..end],
        None if buf.len() > 8192 => return Sniffed::Other,
        None => {
            // Reject early what cannot be a method.
            let method_ok = buf
                .iter()
                .take_while(|b| **b != b' ')
                .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_');
            return if method_ok {
                Sniffed::NeedMore
            } else {
                Sniffed::Other
            };
        }
    };
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Sniffed::Other;
    };
    if method.is_empty()
        || !method
            .iter()
            .all(|b| b.is_ascii_alphabetic() || *b == b'-' || *b == b'_')
        || target.is_empty()
    {
        return Sniffed::Other;
    }
    match version {
        b"HTTP/1.1" => Sniffed::Http("http/1.1"),
        b"HTTP/1.0" => Sniffed::Http("http/1.0"),
        _ => Sniffed::Other,
    }
}

/// Whether the bytes are the HTTP/2 connection preface (h2c prior knowledge): `None` while what
/// arrived so far is a prefix of it.
pub fn h2_preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Some(false)
    } else if n == H2_PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Sniffs with whichever inspectors a listener has: TLS first, then HTTP.
pub fn sniff(buf: &[u8], tls: bool, http: bool) -> Sniffed {
    if tls {
        match sniff_tls(buf) {
            Sniffed::Other => {}
            s => return s,
        }
    }
    if http {
        return sniff_http(buf);
    }
    if buf.is_empty() {
        Sniffed::NeedMore
    } else {
        Sniffed::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello from rustls itself, with SNI and ALPN.
    fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let mut roots = rustls::RootCertStore::empty();
        roots.roots.clear();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn tls_hello_gives_sni_and_alpn_even_in_pieces() {
        let hello = client_hello("Canary.Example.COM", &[b"h2", b"http/1.1"]);
        assert_eq!(sniff_tls(&hello[..3]), Sniffed::NeedMore);
        assert_eq!(sniff_tls(&hello[..hello.len() / 2]), Sniffed::NeedMore);
        assert_eq!(
            sniff_tls(&hello),
            Sniffed::Tls {
                server_name: Some("canary.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            }
        );
        assert_eq!(sniff(&hello, true, true), sniff_tls(&hello));
    }

    #[test]
    fn the_h2_preface_is_told_apart_byte_by_byte() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(h2_preface(b""), None);
        assert_eq!(h2_preface(&preface[..10]), None);
        assert_eq!(h2_preface(preface), Some(true));
        assert_eq!(
            h2_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"),
            Some(true)
        );
        assert_eq!(h2_preface(b"G"), Some(false));
        assert_eq!(h2_preface(b"PRI / HTTP/1.1\r\n"), Some(false));
    }

    #[test]
    fn http_requests_and_h2c() {
        assert_eq!(
            sniff_http(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Sniffed::Http("http/1.1")
        );
        assert_eq!(sniff_http(b"HEAD /x HTTP/1.0\r\n"), Sniffed::Http("http/1.0"));
        assert_eq!(sniff_http(b"GET / HT"), Sniffed::NeedMore);
        assert_eq!(
            sniff_http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Sniffed::Http("h2c")
        );
        assert_eq!(sniff_http(b"PRI * HTTP/2"), Sniffed::NeedMore);
        assert_eq!(sniff_http(b"SSH-2.0-OpenSSH_9.0\r\n"), Sniffed::Other);
        assert_eq!(sniff_http(b"\x00\x01binary"), Sniffed::Other);
        assert_eq!(sniff(b"hello world\r\n", true, true), Sniffed::Other);
        assert_eq!(sniff(b"", true, true), Sniffed::NeedMore);
    }
}
