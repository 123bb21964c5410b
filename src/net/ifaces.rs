//! The host's own IPv4 subnet-broadcast addresses (`getifaddrs`), which no
//! client can send a request from.

use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// One IPv4 address of an interface, as far as broadcast goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4Subnet {
    /// The interface's address.
    pub addr: Ipv4Addr,
    /// Its netmask.
    pub netmask: Ipv4Addr,
    /// The broadcast address the kernel has for it, if any.
    pub broadcast: Option<Ipv4Addr>,
    /// `IFF_BROADCAST` is set on the interface.
    pub can_broadcast: bool,
}

/// Which of these subnets' broadcast addresses are certainly broadcast: the
/// kernel's broadcast address of a broadcast-capable interface, on a subnet
/// of at most /30 (a /31 or /32 has none: RFC 3021), that is not the
/// interface's own address. Sorted, without duplicates. Pure.
pub fn broadcasts_of(subnets: &[V4Subnet]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = subnets
        .iter()
        .filter(|s| s.can_broadcast && u32::from(s.netmask).count_ones() <= 30)
        .filter_map(|s| s.broadcast)
        .filter(|b| !b.is_unspecified() && !b.is_broadcast())
        .filter(|b| subnets.iter().all(|s| s.addr != *b))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The host's IPv4 subnet-broadcast addresses now ([`broadcasts_of`] the
/// addresses `getifaddrs` lists).
pub fn local_broadcasts() -> std::io::Result<Vec<Ipv4Addr>> {
    let v4 = |s: &Option<nix::sys::socket::SockaddrStorage>| {
        s.as_ref().and_then(|s| s.as_sockaddr_in()).map(|a| a.ip())
    };
    let subnets: Vec<V4Subnet> = getifaddrs()?
        .filter_map(|ifa| {
            Some(V4Subnet {
                addr: v4(&ifa.address)?,
                netmask: v4(&ifa.netmask)?,
                broadcast: v4(&ifa.broadcast),
                can_broadcast: ifa.flags.contains(InterfaceFlags::IFF_BROADCAST),
            })
        })
        .collect();
    Ok(broadcasts_of(&subnets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(addr: &str, prefix: u32, brd: Option<&str>) -> V4Subnet {
        V4Subnet {
            addr: addr.parse().unwrap(),
            netmask: Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0)),
            broadcast: brd.map(|b| b.parse().unwrap()),
            can_broadcast: true,
        }
    }

    #[test]
    fn only_certain_broadcasts() {
        let mut lo = net("127.0.0.1", 8, None);
        lo.can_broadcast = false;
        let got = broadcasts_of(&[
            lo,
            net("10.1.2.3", 24, Some("10.1.2.255")),
            net("10.1.2.4", 24, Some("10.1.2.255")), // a second address, same subnet
            net("192.168.4.9", 23, Some("192.168.5.255")),
            net("172.16.0.1", 31, Some("172.16.0.1")), // /31: no broadcast
            net("172.16.1.1", 32, None),
            net("198.51.100.1", 25, None), // no broadcast address set
        ]);
        let want: Vec<Ipv4Addr> = ["10.1.2.255", "192.168.5.255"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // An interface without IFF_BROADCAST (point-to-point) contributes none.
        let mut p2p = net("10.9.9.1", 24, Some("10.9.9.255"));
        p2p.can_broadcast = false;
        assert!(broadcasts_of(&[p2p]).is_empty());
        // A "broadcast" that is some interface's own address is never refused.
        let own = [
            net("10.0.0.1", 24, Some("10.0.0.255")),
            net("10.0.0.255", 32, None),
        ];
        assert!(broadcasts_of(&own).is_empty());
    }

    /// The kernel's own view: a veth in a fresh namespace with 10.77.1.2/24
    /// has broadcast 10.77.1.255 (`brd +`), and nothing else is listed.
    #[test]
    fn kernel_broadcasts_of_a_veth() {
        let r = super::super::ethtool::testns::with_veth(|a, _| {
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            ip(&["addr", "add", "10.77.1.2/24", "brd", "+", "dev", a]);
            ip(&["link", "set", a, "up"]);
            local_broadcasts().unwrap()
        });
        if let Some(got) = r {
            assert_eq!(got, vec![Ipv4Addr::new(10, 77, 1, 255)]);
        }
    }
}
