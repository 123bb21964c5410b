//! The access-list and rate-limit configuration parsers, and the compiled
//! access list checked against a plain reference.
//!
//! Input: text lines. Each line is given to `parse_rule` ("allow CIDR" /
//! "deny CIDR"), `parse_cidr`, `parse_interval`, `parse_burst` and
//! `parse_leak`; the accepted rules are compiled with
//! `AccessList::from_rules`, and every rule's address, its neighbours and
//! addresses made of the raw input octets are looked up.
//!
//! Invariants checked: no panic; a parsed prefix has its host bits clear, a
//! length within its family, and prints back to itself; an accepted interval,
//! burst or leak makes a `RateLimit` that validates; `AccessList::allows`
//! equals a linear longest-prefix match over the rules (deny wins a tie of the
//! same prefix; with any allow rule, unmatched addresses are refused),
//! IPv4-mapped IPv6 answered as IPv4.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hwntpd::policy::acl::{parse_cidr, parse_rule, AccessList, Action, Cidr, Rule};
use hwntpd::policy::ratelimit::{parse_burst, parse_interval, parse_leak, RateLimit};
use libfuzzer_sys::fuzz_target;

/// The verdict by definition: the longest prefix containing `ip` decides,
/// deny over allow for the same prefix; no match: refused iff any rule allows.
fn reference(rules: &[Rule], ip: IpAddr) -> bool {
    let mut best: Option<(u8, bool)> = None; // (length, deny)
    for r in rules {
        if r.cidr.contains(ip) {
            let cand = (r.cidr.len(), r.action == Action::Deny);
            best = Some(best.map_or(cand, |b| b.max(cand)));
        }
    }
    match best {
        Some((_, deny)) => !deny,
        None => !rules.iter().any(|r| r.action == Action::Allow),
    }
}

fn check_cidr(c: Cidr) {
    match c {
        Cidr::V4(a, l) => {
            assert!(l <= 32);
            assert_eq!(
                a & u32::MAX.checked_shr(u32::from(l)).unwrap_or(0),
                0,
                "{c}"
            );
        }
        Cidr::V6(a, l) => {
            assert!(l <= 128);
            assert_eq!(
                a & u128::MAX.checked_shr(u32::from(l)).unwrap_or(0),
                0,
                "{c}"
            );
        }
    }
    assert_eq!(parse_cidr(&c.to_string()), Ok(c), "{c} does not parse back");
}

/// Addresses to look up for a prefix: its first and last address, and the
/// ones just outside.
fn probes(c: Cidr, out: &mut Vec<IpAddr>) {
    match c {
        Cidr::V4(a, l) => {
            let last = a | u32::MAX.checked_shr(u32::from(l)).unwrap_or(0);
            for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1)] {
                let v4 = Ipv4Addr::from(x);
                out.push(IpAddr::V4(v4));
                out.push(IpAddr::V6(v4.to_ipv6_mapped()));
            }
        }
        Cidr::V6(a, l) => {
            let last = a | u128::MAX.checked_shr(u32::from(l)).unwrap_or(0);
            for x in [a, last, a.wrapping_sub(1), last.wrapping_add(1)] {
                out.push(IpAddr::V6(Ipv6Addr::from(x)));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut rules = Vec::new();
    for line in text.lines().take(256) {
        if let Ok(r) = parse_rule(line) {
            check_cidr(r.cidr);
            rules.push(r);
        }
        if let Ok(c) = parse_cidr(line) {
            check_cidr(c);
        }
        let d = RateLimit::default();
        if let Ok(interval) = parse_interval(line) {
            assert_eq!(RateLimit { interval, ..d }.validate(), Ok(()));
        }
        if let Ok(burst) = parse_burst(line) {
            assert_eq!(RateLimit { burst, ..d }.validate(), Ok(()));
        }
        if let Ok(leak) = parse_leak(line) {
            assert_eq!(RateLimit { leak, ..d }.validate(), Ok(()));
        }
    }

    let Ok(acl) = AccessList::from_rules(&rules) else {
        return;
    };
    assert_eq!(acl.len(), rules.len());
    let mut ips = Vec::new();
    for r in &rules {
        probes(r.cidr, &mut ips);
    }
    for chunk in data.chunks_exact(16).take(16) {
        let b: [u8; 16] = chunk.try_into().unwrap();
        ips.push(IpAddr::V6(Ipv6Addr::from(b)));
        ips.push(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])));
    }
    for ip in ips {
        assert_eq!(
            acl.allows(ip),
            reference(&rules, ip),
            "{ip} with rules {rules:?}"
        );
    }
});
