//! Socket addresses as the kernel lays them out (`sockaddr_in`, `sockaddr_in6`),
//! converted without `unsafe` from and to raw bytes. The one conversion of
//! the crate: the io_uring path and `socket::{send,recv}_with_control` both
//! use it.
//!
//! `sin6_flowinfo` is `__be32` in the kernel: [`SocketAddrV6::flowinfo`] here
//! is the field's value in network byte order (flow label in the low 20
//! bits, traffic class above), as the IPv6 header carries it. (std and nix
//! copy the field's raw memory instead, so on little-endian hosts their
//! `flowinfo` is byte-swapped relative to ours; the kernel reports 0 for UDP
//! sources, where the two agree.)

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Octets of a `sockaddr_in6`, the largest address this server handles.
pub const SOCKADDR_MAX: usize = 28;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// Decode a `sockaddr_in` or `sockaddr_in6` from the bytes the kernel wrote.
/// `None` for other families or truncated input.
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    match family {
        AF_INET if b.len() >= 16 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        AF_INET6 if b.len() >= 28 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Encode `addr` as a `sockaddr_in` / `sockaddr_in6` into `out`; returns its length.
pub fn write_sockaddr(addr: &SocketAddr, out: &mut [u8; SOCKADDR_MAX]) -> usize {
    *out = [0; SOCKADDR_MAX];
    match addr {
        SocketAddr::V4(a) => {
            out[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
            16
        }
        SocketAddr::V6(a) => {
            out[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            out[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            28
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_libc() {
        assert_eq!(std::mem::size_of::<libc::sockaddr_in>(), 16);
        assert_eq!(std::mem::size_of::<libc::sockaddr_in6>(), SOCKADDR_MAX);
        // The bytes of a libc sockaddr_in built field by field.
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 123u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([192, 0, 2, 7]),
            },
            sin_zero: [0; 8],
        };
        let mut raw = [0u8; 16];
        for (i, b) in raw.iter_mut().enumerate() {
            // SAFETY: sockaddr_in is 16 plain octets with no padding; reading them is defined.
            *b = unsafe { *(&sin as *const libc::sockaddr_in as *const u8).add(i) };
        }
        assert_eq!(parse_sockaddr(&raw), Some("192.0.2.7:123".parse().unwrap()));
        let mut out = [0u8; SOCKADDR_MAX];
        assert_eq!(
            write_sockaddr(&"192.0.2.7:123".parse().unwrap(), &mut out),
            16
        );
        assert_eq!(&out[..16], &raw);
    }

    /// A flow label, a traffic class and a scope id land where the kernel's
    /// `struct sockaddr_in6` has them: `sin6_flowinfo` big-endian,
    /// `sin6_scope_id` native.
    #[test]
    fn flowinfo_and_scope_id_layout() {
        let flowinfo = (0xb8 << 20) | 0x1_2345; // traffic class EF, flow label 0x12345
        let a = SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            123,
            flowinfo,
            7,
        ));
        let mut out = [0u8; SOCKADDR_MAX];
        assert_eq!(write_sockaddr(&a, &mut out), 28);
        assert_eq!(&out[4..8], &[0x0b, 0x81, 0x23, 0x45]);
        // SAFETY: sockaddr_in6 is 28 plain octets with no padding, and `out`
        // holds 28; read_unaligned has no alignment requirement.
        let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(out.as_ptr().cast()) };
        assert_eq!(u32::from_be(sin6.sin6_flowinfo), flowinfo);
        assert_eq!(sin6.sin6_scope_id, 7);
        assert_eq!(u16::from_be(sin6.sin6_port), 123);
        assert_eq!(parse_sockaddr(&out), Some(a));
    }

    #[test]
    fn round_trip_v6_and_garbage() {
        let a: SocketAddr = "[fe80::1%3]:40000".parse().unwrap();
        let mut out = [0u8; SOCKADDR_MAX];
        assert_eq!(write_sockaddr(&a, &mut out), 28);
        assert_eq!(parse_sockaddr(&out), Some(a));
        assert_eq!(parse_sockaddr(&out[..27]), None);
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[0xff; 28]), None);
    }
}
