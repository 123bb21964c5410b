//! The server's master keys: the keys cookies are encrypted under
//! (AEAD_AES_SIV_CMAC_256), each with a 32-bit id carried in the clear in the
//! cookie, rotated on a schedule, optionally kept in a file that several hosts
//! share.
//!
//! A [`KeySet`] holds, oldest first, up to [`KEEP`] keys. The newest is the
//! *next* key: published (in the file) one rotation before it is used, so every
//! host that shares the file knows it before any host issues cookies under it.
//! The one before it is the *current* key, under which new cookies are issued.
//! Older keys still decrypt: a cookie stays valid for at least two rotation
//! intervals after it was issued (its key is current for one interval, then
//! kept for two more).
//!
//! # Key file format
//!
//! Text, mode 0600, written atomically (temporary file in the same directory,
//! then `rename`):
//!
//! ```text
//! # hwntpd NTS master keys: keep secret
//! version 1
//! rotated 1764700000
//! key 3f1c9a02 <64 hex digits>
//! key 8b41d7e5 <64 hex digits>
//! key 01c2f3a4 <64 hex digits>
//! ```
//!
//! `rotated` is the Unix time of the last rotation; `key` lines hold the key id
//! (8 hex digits) and the AES-SIV-CMAC-256 key (32 octets, 64 hex digits),
//! oldest first: the last line is the next key, the one before it the current
//! key. Lines starting with `#` and blank lines are ignored.

use std::path::Path;

use rand::RngCore;

/// Master-key length: AEAD_AES_SIV_CMAC_256 takes two AES-128 keys.
pub const MASTER_KEY_LEN: usize = 32;

/// Keys kept: two old, the current and the next.
pub const KEEP: usize = 4;

/// One master key.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// Its id, carried in the clear at the start of every cookie.
    pub id: u32,
    /// The AES-SIV-CMAC-256 key.
    pub key: [u8; MASTER_KEY_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({:08x})", self.id)
    }
}

impl MasterKey {
    /// A fresh random key with a random id.
    pub fn generate(rng: &mut impl RngCore) -> MasterKey {
        let mut key = [0u8; MASTER_KEY_LEN];
        rng.fill_bytes(&mut key);
        MasterKey {
            id: rng.next_u32(),
            key,
        }
    }
}

/// The master keys in force, oldest first (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<MasterKey>,
    /// Unix time (seconds) of the last rotation.
    pub rotated_at: u64,
}

/// Why a key file was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyFileError(pub String);

impl std::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyFileError {}

impl KeySet {
    /// A new set: a current and a next key, both random.
    pub fn generate(rng: &mut impl RngCore, now: u64) -> KeySet {
        let a = MasterKey::generate(rng);
        let mut b = MasterKey::generate(rng);
        while b.id == a.id {
            b = MasterKey::generate(rng);
        }
        KeySet {
            keys: vec![a, b],
            rotated_at: now,
        }
    }

    /// A set made of these keys (oldest first), for tests and tools. `None` if
    /// empty, longer than [`KEEP`], or two keys share an id.
    pub fn from_keys(keys: Vec<MasterKey>, rotated_at: u64) -> Option<KeySet> {
        let unique = keys
            .iter()
            .enumerate()
            .all(|(i, k)| keys[..i].iter().all(|o| o.id != k.id));
        (!keys.is_empty() && keys.len() <= KEEP && unique).then_some(KeySet { keys, rotated_at })
    }

    /// The key new cookies are issued under.
    pub fn current(&self) -> &MasterKey {
        let n = self.keys.len();
        &self.keys[n.saturating_sub(2)]
    }

    /// The key with this id, if still kept.
    #[inline]
    pub fn find(&self, id: u32) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// All keys, oldest first.
    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    /// The set after one rotation at `now`: the next key becomes current, a new
    /// next key is made, and the oldest beyond [`KEEP`] is forgotten.
    pub fn rotated(&self, rng: &mut impl RngCore, now: u64) -> KeySet {
        let mut keys = self.keys.clone();
        let mut fresh = MasterKey::generate(rng);
        while keys.iter().any(|k| k.id == fresh.id) {
            fresh = MasterKey::generate(rng);
        }
        keys.push(fresh);
        if keys.len() > KEEP {
            keys.drain(..keys.len() - KEEP);
        }
        KeySet {
            keys,
            rotated_at: now,
        }
    }

    /// The key file's text (see the module documentation).
    pub fn to_file_text(&self) -> String {
        let mut s = format!(
            "# hwntpd NTS master keys: keep secret\nversion 1\nrotated {}\n",
            self.rotated_at
        );
        for k in &self.keys {
            s.push_str(&format!("key {:08x} ", k.id));
            for b in k.key {
                s.push_str(&format!("{b:02x}"));
            }
            s.push('\n');
        }
        s
    }

    /// Parse a key file's text.
    pub fn from_file_text(text: &str) -> Result<KeySet, KeyFileError> {
        let err = |line: usize, what: &str| KeyFileError(format!("line {line}: {what}"));
        let mut version = None;
        let mut rotated = None;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["version", v] => version = Some(*v),
                ["rotated", t] => {
                    rotated = Some(t.parse::<u64>().map_err(|_| err(n, "bad rotation time"))?)
                }
                ["key", id, hex] => {
                    let id = u32::from_str_radix(id, 16)
                        .ok()
                        .filter(|_| id.len() == 8)
                        .ok_or_else(|| err(n, "key id is not 8 hex digits"))?;
                    let key = parse_hex32(hex).ok_or_else(|| err(n, "key is not 64 hex digits"))?;
                    keys.push(MasterKey { id, key });
                }
                _ => return Err(err(n, "not a version, rotated or key line")),
            }
        }
        if version != Some("1") {
            return Err(KeyFileError("no \"version 1\" line".into()));
        }
        let rotated_at = rotated.ok_or_else(|| KeyFileError("no \"rotated\" line".into()))?;
        let count = keys.len();
        KeySet::from_keys(keys, rotated_at).ok_or_else(|| {
            KeyFileError(format!(
                "{count} keys: need 1 to {KEEP} keys with distinct ids"
            ))
        })
    }

    /// Read a key file.
    pub fn load(path: &Path) -> anyhow::Result<KeySet> {
        let text = std::fs::read_to_string(path)?;
        Ok(KeySet::from_file_text(&text)?)
    }

    /// Write the key file atomically with mode 0600: a temporary file in the
    /// same directory, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.to_file_text().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let s = std::str::from_utf8(&b[2 * i..2 * i + 2]).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Parse a rotation interval: seconds, or a number with the suffix `s`, `m`,
/// `h` or `d` ("1d", "12h", "90m", "3600"). 0 turns rotation off (the keys then
/// come from `--nts-key-file`, kept by another host or by hand).
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 1d, 12h, 90m or 3600"))?;
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn rotation_keeps_old_keys_and_promotes_next() {
        let mut r = rng();
        let s0 = KeySet::generate(&mut r, 100);
        assert_eq!(s0.keys().len(), 2);
        let next = s0.keys()[1].clone();
        let first = s0.current().clone();
        let s1 = s0.rotated(&mut r, 200);
        assert_eq!(s1.current(), &next, "the published next key is used next");
        assert!(s1.find(first.id).is_some());
        let s2 = s1.rotated(&mut r, 300);
        assert_eq!(s2.keys().len(), KEEP);
        // `first` was current until the rotation at 200: still known at the
        // rotation at 300 (a cookie issued just before 200 lives two full
        // intervals), forgotten at 400.
        assert!(s2.find(first.id).is_some());
        let s3 = s2.rotated(&mut r, 400);
        assert!(s3.find(first.id).is_none());
        assert_eq!(s3.keys().len(), KEEP);
        assert_eq!(s3.rotated_at, 400);
    }

    #[test]
    fn file_round_trip_and_errors() {
        let mut r = rng();
        let s = KeySet::generate(&mut r, 1_764_700_000).rotated(&mut r, 1_764_800_000);
        let text = s.to_file_text();
        assert_eq!(KeySet::from_file_text(&text).unwrap(), s);
        assert!(KeySet::from_file_text("version 1\n").is_err());
        assert!(KeySet::from_file_text("version 2\nrotated 1\nkey 00000001 00\n").is_err());
        let one = format!("version 1\nrotated 5\nkey 0000000a {}\n", "ab".repeat(32));
        let parsed = KeySet::from_file_text(&one).unwrap();
        assert_eq!(parsed.current().id, 10);
        assert_eq!(parsed.current().key, [0xab; 32]);
        let dup = format!("{one}key 0000000a {}\n", "cd".repeat(32));
        assert!(KeySet::from_file_text(&dup).is_err());
        let short = "version 1\nrotated 5\nkey 0000000a abcd\n";
        assert!(KeySet::from_file_text(short).is_err());
    }

    #[test]
    fn saved_file_is_private_and_replaced_atomically() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("hwntpd-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nts-keys");
        let mut r = rng();
        let s = KeySet::generate(&mut r, 1);
        s.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s2 = s.rotated(&mut r, 2);
        s2.save(&path).unwrap();
        assert_eq!(KeySet::load(&path).unwrap(), s2);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1d").unwrap().as_secs(), 86400);
        assert_eq!(parse_interval("12h").unwrap().as_secs(), 43200);
        assert_eq!(parse_interval("90m").unwrap().as_secs(), 5400);
        assert_eq!(parse_interval("3600").unwrap().as_secs(), 3600);
        assert_eq!(parse_interval("0").unwrap().as_secs(), 0);
        assert!(parse_interval("1w").is_err());
        assert!(parse_interval("x").is_err());
        assert!(parse_interval("").is_err());
    }
}
