//! Reading where a captured connection was going before iptables redirected it.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// The destination a REDIRECTed connection had before capture (`SO_ORIGINAL_DST` /
/// `IP6T_SO_ORIGINAL_DST`). For TPROXY connections the local address already is the original
/// destination and this returns an error.
pub fn original_dst(sock: &impl AsFd) -> std::io::Result<SocketAddr> {
    match getsockopt(sock, sockopt::OriginalDst) {
        Ok(sin) => {
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        Err(v4_err) => match getsockopt(sock, sockopt::Ip6tOriginalDst) {
            Ok(sin6) => {
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    0,
                    0,
                )))
            }
            Err(_) => Err(std::io::Error::from(v4_err)),
        },
    }
}
