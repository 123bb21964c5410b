//! Access lists: `--allow CIDR` and `--deny CIDR`, longest matching prefix wins.
//!
//! Built once (at start or on a reload) into two multibit tries, one per address
//! family, with 8-bit strides: every node is a flat array of 256 entries, each
//! holding the verdict of the longest rule that covers it at that depth and the
//! index of a child node. Rules are expanded into the nodes in ascending order
//! of length, so a longer rule overwrites a shorter one where it is more
//! specific. A lookup walks at most 4 nodes for IPv4 and 16 for IPv6 (only as
//! deep as the rules go), reads one `u32` per node and allocates nothing.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as IPv4, and a
//! rule written as an IPv4-mapped IPv6 prefix of at least /96 is stored as the
//! IPv4 rule it means.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address prefix of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cidr {
    /// An IPv4 prefix: address (host bits cleared) and length 0..=32.
    V4(u32, u8),
    /// An IPv6 prefix: address (host bits cleared) and length 0..=128.
    V6(u128, u8),
}

impl Cidr {
    /// The prefix length.
    pub fn len(&self) -> u8 {
        match *self {
            Cidr::V4(_, l) | Cidr::V6(_, l) => l,
        }
    }

    /// Whether this is a zero-length prefix (matches the whole family).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `ip` lies in this prefix (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, canonical(ip)) {
            (Cidr::V4(p, l), Canonical::V4(a)) => mask32(a, l) == p,
            (Cidr::V6(p, l), Canonical::V6(a)) => mask128(a, l) == p,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4(a, l) => write!(f, "{}/{l}", Ipv4Addr::from(a)),
            Cidr::V6(a, l) => write!(f, "{}/{l}", Ipv6Addr::from(a)),
        }
    }
}

fn mask32(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len.min(32))))
    }
}

fn mask128(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len.min(128))))
    }
}

/// An address as looked up: IPv4-mapped IPv6 folded into IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canonical {
    /// IPv4 (or IPv4-mapped IPv6).
    V4(u32),
    /// Any other IPv6 address.
    V6(u128),
}

/// Fold IPv4-mapped IPv6 into IPv4.
#[inline]
pub fn canonical(ip: IpAddr) -> Canonical {
    match ip {
        IpAddr::V4(a) => Canonical::V4(u32::from(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => Canonical::V4(u32::from(v4)),
            None => Canonical::V6(u128::from(a)),
        },
    }
}

/// Parse `ADDR/LEN` or a bare `ADDR` (a host: /32 or /128). Host bits below
/// the prefix length are cleared. An IPv4-mapped IPv6 prefix of length >= 96
/// becomes the IPv4 prefix it names.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => {
            let len: u8 = l
                .parse()
                .map_err(|_| format!("{s:?}: prefix length {l:?} is not a number"))?;
            (a, Some(len))
        }
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 or IPv6 address"))?;
    match ip {
        IpAddr::V4(a) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return Err(format!("{s:?}: an IPv4 prefix is at most /32"));
            }
            Ok(Cidr::V4(mask32(u32::from(a), len), len))
        }
        IpAddr::V6(a) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return Err(format!("{s:?}: an IPv6 prefix is at most /128"));
            }
            match a.to_ipv4_mapped() {
                Some(v4) if len >= 96 => {
                    let l = len - 96;
                    Ok(Cidr::V4(mask32(u32::from(v4), l), l))
                }
                _ => Ok(Cidr::V6(mask128(u128::from(a), len), len)),
            }
        }
    }
}

/// What a rule says of the addresses it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Serve.
    Allow,
    /// Refuse (DENY KoD or silence, per the deny action).
    Deny,
}

/// One access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// The prefix it covers.
    pub cidr: Cidr,
}

/// Parse a rule `allow CIDR` or `deny CIDR` (as a configuration file line would
/// say it).
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let s = s.trim();
    let (word, rest) = s
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("{s:?}: expected \"allow CIDR\" or \"deny CIDR\""))?;
    let action = match word {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        _ => {
            return Err(format!(
                "{s:?}: expected \"allow\" or \"deny\", not {word:?}"
            ))
        }
    };
    Ok(Rule {
        action,
        cidr: parse_cidr(rest)?,
    })
}

/// Largest number of trie nodes an access list may build (each is 1 KiB):
/// 64 Mi of memory, far above what tens of thousands of rules need.
pub const MAX_NODES: usize = 65_536;

const NODE: usize = 256;
const V_NONE: u32 = 0;
const V_ALLOW: u32 = 1;
const V_DENY: u32 = 2;

/// One family's trie: `nodes[i * 256 + byte]` = `(child << 2) | verdict`.
#[derive(Clone, Debug, Default)]
struct Trie {
    /// Verdict of the zero-length rule, if any.
    root_verdict: u32,
    nodes: Vec<u32>,
}

impl Trie {
    fn insert(&mut self, bytes: &[u8], len: u8, verdict: u32) -> Result<(), String> {
        if len == 0 {
            self.root_verdict = verdict;
            return Ok(());
        }
        if self.nodes.is_empty() {
            self.nodes.resize(NODE, 0);
        }
        let last = usize::from((len - 1) / 8);
        let mut node = 0usize;
        for &byte in bytes.iter().take(last) {
            let at = node * NODE + usize::from(byte);
            let mut child = (self.nodes[at] >> 2) as usize;
            if child == 0 {
                child = self.nodes.len() / NODE;
                if child >= MAX_NODES {
                    return Err(format!(
                        "the access list needs more than {MAX_NODES} trie nodes"
                    ));
                }
                self.nodes.resize(self.nodes.len() + NODE, 0);
                self.nodes[at] = (self.nodes[at] & 3) | ((child as u32) << 2);
            }
            node = child;
        }
        let bits = u32::from(len) - 8 * last as u32; // 1..=8
        let span = 1usize << (8 - bits);
        let base = usize::from(bytes[last]) & !(span - 1);
        for e in &mut self.nodes[node * NODE + base..node * NODE + base + span] {
            *e = (*e & !3) | verdict;
        }
        Ok(())
    }

    #[inline]
    fn lookup(&self, bytes: &[u8]) -> u32 {
        let mut best = self.root_verdict;
        if self.nodes.is_empty() {
            return best;
        }
        let mut node = 0usize;
        for &b in bytes {
            let e = self.nodes[node * NODE + usize::from(b)];
            if e & 3 != V_NONE {
                best = e & 3;
            }
            node = (e >> 2) as usize;
            if node == 0 {
                break;
            }
        }
        best
    }

    fn memory_bytes(&self) -> usize {
        self.nodes.len() * 4
    }
}

/// A compiled access list. An empty one allows everyone.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    v4: Trie,
    v6: Trie,
    /// Verdict for addresses no rule covers: deny when any rule allows.
    default_deny: bool,
    rules: usize,
}

impl AccessList {
    /// Compile `rules`. The longest matching prefix decides; between an allow
    /// and a deny of the very same prefix, deny wins. With any allow rule,
    /// addresses that no rule covers are refused; otherwise they are allowed.
    pub fn from_rules(rules: &[Rule]) -> Result<AccessList, String> {
        let mut sorted: Vec<Rule> = rules.to_vec();
        // Ascending length, allow before deny: later (longer, or deny) overwrite.
        sorted.sort_by_key(|r| (r.cidr.len(), r.action == Action::Deny));
        let mut acl = AccessList {
            default_deny: rules.iter().any(|r| r.action == Action::Allow),
            rules: rules.len(),
            ..AccessList::default()
        };
        for r in &sorted {
            let v = match r.action {
                Action::Allow => V_ALLOW,
                Action::Deny => V_DENY,
            };
            match r.cidr {
                Cidr::V4(a, l) => acl.v4.insert(&a.to_be_bytes(), l, v)?,
                Cidr::V6(a, l) => acl.v6.insert(&a.to_be_bytes(), l, v)?,
            }
        }
        Ok(acl)
    }

    /// Parse and compile `--allow` and `--deny` values.
    pub fn from_strings<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<AccessList, String> {
        let mut rules = Vec::with_capacity(allow.len() + deny.len());
        for (list, action) in [(allow, Action::Allow), (deny, Action::Deny)] {
            for s in list {
                rules.push(Rule {
                    action,
                    cidr: parse_cidr(s.as_ref())?,
                });
            }
        }
        Self::from_rules(&rules)
    }

    /// Whether the list has no rules (everyone is allowed, lookups are free).
    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }

    /// Number of rules compiled in.
    pub fn len(&self) -> usize {
        self.rules
    }

    /// Memory of the compiled tries, in octets.
    pub fn memory_bytes(&self) -> usize {
        self.v4.memory_bytes() + self.v6.memory_bytes()
    }

    /// Whether `ip` may be served. No allocation.
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.rules == 0 {
            return true;
        }
        let v = match canonical(ip) {
            Canonical::V4(a) => self.v4.lookup(&a.to_be_bytes()),
            Canonical::V6(a) => self.v6.lookup(&a.to_be_bytes()),
        };
        match v {
            V_ALLOW => true,
            V_DENY => false,
            _ => !self.default_deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn acl(allow: &[&str], deny: &[&str]) -> AccessList {
        AccessList::from_strings(allow, deny).unwrap()
    }

    #[test]
    fn parses_prefixes() {
        assert_eq!(parse_cidr("10.1.2.3/8"), Ok(Cidr::V4(0x0a00_0000, 8)));
        assert_eq!(parse_cidr("10.1.2.3"), Ok(Cidr::V4(0x0a01_0203, 32)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(Cidr::V4(0, 0)));
        assert_eq!(
            parse_cidr("2001:db8::1/32"),
            Ok(Cidr::V6(0x2001_0db8 << 96, 32))
        );
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104"),
            Ok(Cidr::V4(0x0a00_0000, 8))
        );
        assert_eq!(parse_cidr("::/0"), Ok(Cidr::V6(0, 0)));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "1.2.3.4/8/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_cidr("10.1.0.0/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            parse_rule("deny 192.0.2.0/24"),
            Ok(Rule {
                action: Action::Deny,
                cidr: Cidr::V4(0xc000_0200, 24)
            })
        );
        assert!(parse_rule("permit 10.0.0.0/8").is_err());
        assert!(parse_rule("allow").is_err());
    }

    #[test]
    fn empty_allows_all() {
        let a = AccessList::default();
        assert!(a.allows(ip("192.0.2.1")) && a.allows(ip("2001:db8::1")));
        assert!(a.is_empty());
    }

    #[test]
    fn longest_prefix_wins() {
        let a = acl(
            &["10.0.0.0/8", "10.1.2.0/24", "2001:db8::/32"],
            &["10.1.0.0/16", "10.1.2.128/25", "2001:db8:1::/48"],
        );
        assert!(a.allows(ip("10.9.9.9")));
        assert!(!a.allows(ip("10.1.9.9")));
        assert!(a.allows(ip("10.1.2.3")));
        assert!(!a.allows(ip("10.1.2.200")));
        assert!(
            !a.allows(ip("11.0.0.1")),
            "unmatched refused: some allow given"
        );
        assert!(a.allows(ip("2001:db8:2::1")));
        assert!(!a.allows(ip("2001:db8:1::1")));
        assert!(!a.allows(ip("2001:db9::1")));
        // IPv4-mapped IPv6 is IPv4
        assert!(a.allows(ip("::ffff:10.9.9.9")));
        assert!(!a.allows(ip("::ffff:10.1.9.9")));
    }

    #[test]
    fn deny_only_allows_the_rest_and_families_are_apart() {
        let a = acl(&[], &["192.0.2.0/24", "::/0"]);
        assert!(!a.allows(ip("192.0.2.7")));
        assert!(a.allows(ip("192.0.3.7")));
        assert!(!a.allows(ip("2001:db8::1")));
        assert!(a.allows(ip("::ffff:1.2.3.4")), "::/0 is IPv6 only");
        let a = acl(&["0.0.0.0/0"], &["10.0.0.1"]);
        assert!(a.allows(ip("1.1.1.1")) && !a.allows(ip("10.0.0.1")));
        assert!(
            !a.allows(ip("2001:db8::1")),
            "any allow refuses the unmatched"
        );
        // same prefix both ways: deny wins
        let a = acl(&["10.0.0.0/8"], &["10.0.0.0/8"]);
        assert!(!a.allows(ip("10.0.0.1")));
    }

    #[test]
    fn odd_lengths_and_deep_v6() {
        let a = acl(
            &["10.0.0.0/9", "2001:db8::1/128", "2001:db8::/127"],
            &["10.64.0.0/10"],
        );
        assert!(a.allows(ip("10.0.0.1")) && a.allows(ip("10.63.255.1")));
        assert!(!a.allows(ip("10.64.0.1")) && !a.allows(ip("10.127.0.1")));
        assert!(!a.allows(ip("10.128.0.1")));
        assert!(a.allows(ip("2001:db8::1")) && a.allows(ip("2001:db8::")));
        assert!(!a.allows(ip("2001:db8::2")));
    }

    fn reference(rules: &[Rule], ip: IpAddr) -> bool {
        let best = rules
            .iter()
            .filter(|r| r.cidr.contains(ip))
            .max_by_key(|r| (r.cidr.len(), r.action == Action::Deny));
        match best {
            Some(r) => r.action == Action::Allow,
            None => !rules.iter().any(|r| r.action == Action::Allow),
        }
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
            any::<u128>(),
            0u8..=32,
            0u8..=128,
        )
            .prop_map(|(deny, v4, a, b, l4, l6)| Rule {
                action: if deny { Action::Deny } else { Action::Allow },
                // few distinct top bits, so prefixes overlap often
                cidr: if v4 {
                    Cidr::V4(mask32(a & 0xc3ff_ffff, l4), l4)
                } else {
                    Cidr::V6(mask128(b & !(0x3f << 120), l6), l6)
                },
            })
    }

    proptest! {
        #[test]
        fn matches_a_linear_scan(rules in proptest::collection::vec(arb_rule(), 0..40),
                                 probes in proptest::collection::vec((any::<u32>(), any::<u128>()), 50)) {
            let acl = AccessList::from_rules(&rules).unwrap();
            for (a, b) in probes {
                // probe near the rules' addresses as well as at random
                for ip in [IpAddr::from(Ipv4Addr::from(a & 0xc3ff_ffff)),
                           IpAddr::from(Ipv6Addr::from(b & !(0x3f << 120))),
                           IpAddr::from(Ipv6Addr::from(b)),
                           IpAddr::from(Ipv4Addr::from(a).to_ipv6_mapped())] {
                    prop_assert_eq!(acl.allows(ip), reference(&rules, ip), "{}", ip);
                }
            }
            for r in &rules {
                let ip = match r.cidr {
                    Cidr::V4(a, _) => IpAddr::from(Ipv4Addr::from(a)),
                    Cidr::V6(a, _) => IpAddr::from(Ipv6Addr::from(a)),
                };
                prop_assert_eq!(acl.allows(ip), reference(&rules, ip));
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,60}") {
            let _ = parse_cidr(&s);
            let _ = parse_rule(&s);
        }
    }
}
