//! Dropping root after start-up (`--user NAME`).
//!
//! What needs privilege happens before the drop: binding port 123, forcing
//! socket receive buffers past `net.core.rmem_max` (`SO_RCVBUFFORCE`,
//! `CAP_NET_ADMIN`), `SIOCSHWTSTAMP` (`CAP_NET_ADMIN`), opening `/dev/ptpN`
//! (root-owned, mode 0600 on most systems), loading and attaching the egress
//! program (`--egress-stamp`: `CAP_BPF`, `CAP_NET_ADMIN`; its map is
//! memory-mapped, so keeping its clock offset current needs nothing later)
//! and creating the workers' io_uring
//! instances (created by root, their locked memory is not charged against
//! `RLIMIT_MEMLOCK`, and `kernel.io_uring_disabled=1` does not refuse them).
//! What runs afterwards needs none: the sockets, rings and the PHC descriptor
//! are open, reading the PHC is an ioctl on that descriptor, `adjtimex` with
//! no modes is a read, the NTP mirror is a UDP socket to a local port.
//! hwntpd never re-applies `SIOCSHWTSTAMP` (after a link reset the NIC may
//! lose it; the receive-timestamp counters show that), so no capability is
//! kept.
//!
//! The switch: supplementary groups cleared, then the group, then the user
//! (`setgroups`, `setgid`, `setuid`, in that order: after `setuid` the others
//! are no longer allowed). These are glibc's wrappers, which apply the change
//! to every thread of the process (the raw system calls change only the
//! calling thread), so the workers already running switch too. The kernel
//! clears the permitted, effective and ambient capability sets of each thread
//! when its user IDs all leave 0 (no `PR_SET_KEEPCAPS`). Afterwards every
//! thread's `/proc/self/task/TID/status` is read back: any thread still with
//! the old IDs or with a capability (e.g. under `SECBIT_KEEP_CAPS`) is an
//! error, not a warning.

use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::unistd::{geteuid, setgid, setgroups, setuid, Gid, Uid, User};

/// The capabilities kept after the drop, for the log and the README.
pub const KEPT_CAPABILITIES: &str = "none";

/// Why none are kept, for the log.
pub const KEPT_CAPABILITIES_WHY: &str =
    "sockets, io_uring rings and the PHC are open; hwntpd never re-applies SIOCSHWTSTAMP";

/// The credentials of one thread, from its `/proc/.../status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Real, effective, saved and filesystem user IDs.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem group IDs.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Permitted capability set (bit mask).
    pub cap_prm: u64,
    /// Effective capability set.
    pub cap_eff: u64,
    /// Ambient capability set.
    pub cap_amb: u64,
}

impl ThreadCreds {
    /// Parse the text of a `/proc/PID/status` or `/proc/PID/task/TID/status`.
    pub fn parse(status: &str) -> Option<ThreadCreds> {
        let mut c = ThreadCreds::default();
        let (mut uid, mut gid, mut prm, mut eff) = (false, false, false, false);
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let ids = || -> Option<[u32; 4]> {
                let v: Vec<u32> = value
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                v.try_into().ok()
            };
            let mask = || u64::from_str_radix(value.trim(), 16).ok();
            match key {
                "Uid" => (c.uids, uid) = (ids()?, true),
                "Gid" => (c.gids, gid) = (ids()?, true),
                "Groups" => {
                    c.groups = value
                        .split_whitespace()
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .ok()?
                }
                "CapPrm" => (c.cap_prm, prm) = (mask()?, true),
                "CapEff" => (c.cap_eff, eff) = (mask()?, true),
                "CapAmb" => c.cap_amb = mask()?,
                _ => {}
            }
        }
        (uid && gid && prm && eff).then_some(c)
    }

    /// Whether this thread is exactly `uid`/`gid`, with no supplementary
    /// group and no capability.
    pub fn is_unprivileged(&self, uid: u32, gid: u32) -> bool {
        self.uids == [uid; 4]
            && self.gids == [gid; 4]
            && self.groups.is_empty()
            && self.cap_prm == 0
            && self.cap_eff == 0
            && self.cap_amb == 0
    }
}

/// The credentials of every thread of this process, by thread ID.
pub fn all_threads() -> Result<Vec<(u32, ThreadCreds)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let creds = ThreadCreds::parse(&text)
            .with_context(|| format!("cannot parse /proc/self/task/{tid}/status"))?;
        out.push((tid, creds));
    }
    Ok(out)
}

/// The effective capability set of the calling thread.
pub fn own_effective_capabilities() -> u64 {
    std::fs::read_to_string(Path::new("/proc/thread-self/status"))
        .ok()
        .and_then(|t| ThreadCreds::parse(&t))
        .map_or(0, |c| c.cap_eff)
}

/// Whether the process runs as root (effective user ID 0).
pub fn running_as_root() -> bool {
    geteuid().is_root()
}

/// Who the process became.
#[derive(Clone, Debug)]
pub struct Dropped {
    /// The user name.
    pub user: String,
    /// Its user ID.
    pub uid: u32,
    /// Its primary group ID.
    pub gid: u32,
    /// Threads checked after the switch.
    pub threads: usize,
}

/// Switch every thread of the process to `name` and its primary group, with
/// no supplementary groups and no capabilities, then check every thread.
pub fn drop_to_user(name: &str) -> Result<Dropped> {
    let user = User::from_name(name)
        .with_context(|| format!("--user {name:?}: looking up the user"))?
        .with_context(|| format!("--user {name:?}: no such user"))?;
    if !running_as_root() {
        bail!(
            "--user {name:?}: switching user needs root, but hwntpd runs as uid {} (start it as root, or leave out --user)",
            geteuid()
        );
    }
    if user.uid.is_root() {
        bail!("--user {name:?} is root (uid 0): name an unprivileged user");
    }
    let (uid, gid): (Uid, Gid) = (user.uid, user.gid);
    // glibc's wrappers: each applies to every thread of the process.
    setgroups(&[]).context("setgroups([])")?;
    setgid(gid).with_context(|| format!("setgid({gid})"))?;
    setuid(uid).with_context(|| format!("setuid({uid})"))?;
    let threads = all_threads()?;
    for (tid, creds) in &threads {
        if !creds.is_unprivileged(uid.as_raw(), gid.as_raw()) {
            bail!(
                "after switching to {name} ({uid}:{gid}) thread {tid} still has uids {:?} gids {:?} groups {:?} CapPrm {:x} CapEff {:x} CapAmb {:x}: refusing to serve",
                creds.uids, creds.gids, creds.groups, creds.cap_prm, creds.cap_eff, creds.cap_amb
            );
        }
    }
    Ok(Dropped {
        user: name.to_string(),
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        threads: threads.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\thwntpd-w0\nUmask:\t0022\nState:\tS (sleeping)\n\
        Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t0 \n\
        CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
        CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
    const NOBODY: &str = "Name:\thwntpd-w0\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapInh:\t0000000000000000\n\
        CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\n\
        CapAmb:\t0000000000000000\n";

    #[test]
    fn parses_proc_status() {
        let r = ThreadCreds::parse(ROOT).unwrap();
        assert_eq!(r.uids, [0; 4]);
        assert_eq!(r.groups, vec![0]);
        assert_eq!(r.cap_eff, 0x1ff_ffff_ffff);
        assert!(!r.is_unprivileged(0, 0));
        let n = ThreadCreds::parse(NOBODY).unwrap();
        assert!(n.is_unprivileged(65534, 65534));
        assert!(!n.is_unprivileged(65534, 0), "wrong group");
        let saved_root = NOBODY.replace("Uid:\t65534\t65534\t65534", "Uid:\t65534\t65534\t0");
        assert!(!ThreadCreds::parse(&saved_root)
            .unwrap()
            .is_unprivileged(65534, 65534));
        let with_cap = NOBODY.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000001000");
        assert!(!ThreadCreds::parse(&with_cap)
            .unwrap()
            .is_unprivileged(65534, 65534));
        assert_eq!(ThreadCreds::parse("Name:\tx\n"), None);
        assert_eq!(ThreadCreds::parse("Uid:\t1 2\nGid:\t0\t0\t0\t0\n"), None);
    }

    #[test]
    fn reads_own_threads() {
        let t = all_threads().unwrap();
        assert!(!t.is_empty());
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        let me = ThreadCreds::parse(&me).unwrap();
        assert!(t.iter().all(|(_, c)| c.uids == me.uids));
    }
}
