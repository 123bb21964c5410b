//! Cookies: what a client hands back so the server, keeping no state per
//! client, can recover the client's AEAD and keys (RFC 8915 section 6).
//!
//! Format (all lengths in octets):
//!
//! | key id (4) | nonce (16) | AES-SIV tag (16) | encrypted: AEAD id (2), zero (2), C2S key, S2C key |
//!
//! encrypted with AEAD_AES_SIV_CMAC_256 under the master key named by the id,
//! with the key id as associated data (so a cookie cannot be moved to another
//! key's id). 104 octets for AES-SIV-CMAC-256 clients, 72 for AES-128-GCM-SIV.

use std::sync::Arc;

use rand::RngCore;

use super::aead::{Aead, SivKey, MAX_KEY_LEN, TAG_LEN};
use super::keys::KeySet;

/// Nonce length of cookies.
pub const COOKIE_NONCE_LEN: usize = 16;

const HEADER_LEN: usize = 4 + COOKIE_NONCE_LEN + TAG_LEN;

/// Longest cookie this server makes.
pub const MAX_COOKIE_LEN: usize = HEADER_LEN + 4 + 2 * MAX_KEY_LEN;

/// The length of a cookie for a client using `aead`.
pub fn cookie_len(aead: Aead) -> usize {
    HEADER_LEN + 4 + 2 * aead.key_len()
}

/// The keys of one client, as a cookie carries them.
#[derive(Clone, Copy)]
pub struct ClientKeys {
    /// The negotiated AEAD.
    pub aead: Aead,
    /// Client-to-server key (first `aead.key_len()` octets used).
    pub c2s: [u8; MAX_KEY_LEN],
    /// Server-to-client key (first `aead.key_len()` octets used).
    pub s2c: [u8; MAX_KEY_LEN],
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKeys({:?})", self.aead)
    }
}

impl PartialEq for ClientKeys {
    fn eq(&self, other: &Self) -> bool {
        self.aead == other.aead && self.c2s() == other.c2s() && self.s2c() == other.s2c()
    }
}

impl Eq for ClientKeys {}

impl ClientKeys {
    /// The client-to-server key.
    pub fn c2s(&self) -> &[u8] {
        &self.c2s[..self.aead.key_len()]
    }

    /// The server-to-client key.
    pub fn s2c(&self) -> &[u8] {
        &self.s2c[..self.aead.key_len()]
    }
}

/// Why a cookie was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// Too short, too long, or a length no AEAD's keys give.
    BadLength,
    /// No master key with this id (never ours, or rotated out).
    UnknownKey,
    /// The master key did not authenticate it (forged or damaged).
    Forged,
    /// It decrypted but names an AEAD this server does not know.
    BadContent,
}

/// The master keys of a [`KeySet`], each expanded once (key schedule and CMAC
/// subkeys), so that sealing and opening a cookie costs only the cipher work.
/// A worker keeps one and calls [`MasterCiphers::refresh`] with the key set it
/// loads for each request: the ciphers are rebuilt (which allocates) only when
/// the set has changed, i.e. at a rotation or a key-file reload.
pub struct MasterCiphers {
    /// (key id, cipher), oldest first, as in the set.
    ciphers: Vec<(u32, SivKey)>,
    /// Index of the current key (new cookies are sealed under it).
    current: usize,
    /// The set these were built from, when built by `refresh`.
    source: Option<Arc<KeySet>>,
}

impl MasterCiphers {
    /// Expand every key of `set`.
    pub fn new(set: &KeySet) -> MasterCiphers {
        let ciphers: Vec<(u32, SivKey)> = set
            .keys()
            .iter()
            .map(|k| {
                let c = SivKey::new(&k.key).expect("master keys are 32 octets");
                (k.id, c)
            })
            .collect();
        let current_id = set.current().id;
        let current = ciphers
            .iter()
            .position(|(id, _)| *id == current_id)
            .unwrap_or(0);
        MasterCiphers {
            ciphers,
            current,
            source: None,
        }
    }

    /// Expand every key of a shared set, remembering which set it was, so that
    /// [`MasterCiphers::refresh`] with the same set does nothing.
    pub fn shared(set: &Arc<KeySet>) -> MasterCiphers {
        MasterCiphers {
            source: Some(Arc::clone(set)),
            ..MasterCiphers::new(set)
        }
    }

    /// Make these the ciphers of `set`: nothing to do (and no allocation) if
    /// they already are.
    pub fn refresh(&mut self, set: &Arc<KeySet>) {
        if !self.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, set)) {
            *self = MasterCiphers::shared(set);
        }
    }

    fn find(&mut self, id: u32) -> Option<&mut SivKey> {
        self.ciphers
            .iter_mut()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c)
    }
}

/// Encrypt `keys` into a cookie under the current master key; writes into
/// `out` and returns the length, or `None` if `out` is too short.
pub fn encode(
    keys: &ClientKeys,
    masters: &mut MasterCiphers,
    rng: &mut impl RngCore,
    out: &mut [u8],
) -> Option<usize> {
    let (master_id, master) = &mut masters.ciphers[masters.current];
    let klen = keys.aead.key_len();
    let len = cookie_len(keys.aead);
    let out = out.get_mut(..len)?;
    out[..4].copy_from_slice(&master_id.to_be_bytes());
    rng.fill_bytes(&mut out[4..4 + COOKIE_NONCE_LEN]);
    let (head, body) = out.split_at_mut(HEADER_LEN);
    body[..2].copy_from_slice(&keys.aead.id().to_be_bytes());
    body[2..4].fill(0);
    body[4..4 + klen].copy_from_slice(keys.c2s());
    body[4 + klen..4 + 2 * klen].copy_from_slice(keys.s2c());
    let (id, rest) = head.split_at_mut(4);
    let (nonce, tag) = rest.split_at_mut(COOKIE_NONCE_LEN);
    let t = master.seal(nonce, id, body).ok()?;
    tag.copy_from_slice(&t);
    Some(len)
}

/// Decrypt a cookie with the master keys. Allocates nothing.
pub fn decode(cookie: &[u8], masters: &mut MasterCiphers) -> Result<ClientKeys, CookieError> {
    if cookie.len() < HEADER_LEN + 4 || cookie.len() > MAX_COOKIE_LEN {
        return Err(CookieError::BadLength);
    }
    let body_len = cookie.len() - HEADER_LEN;
    if body_len != 4 + 2 * 16 && body_len != 4 + 2 * 32 {
        return Err(CookieError::BadLength);
    }
    let id = u32::from_be_bytes([cookie[0], cookie[1], cookie[2], cookie[3]]);
    let master = masters.find(id).ok_or(CookieError::UnknownKey)?;
    let nonce = &cookie[4..4 + COOKIE_NONCE_LEN];
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&cookie[4 + COOKIE_NONCE_LEN..HEADER_LEN]);
    let mut body = [0u8; 4 + 2 * MAX_KEY_LEN];
    let body = &mut body[..body_len];
    body.copy_from_slice(&cookie[HEADER_LEN..]);
    master
        .open(nonce, &cookie[..4], body, &tag)
        .map_err(|_| CookieError::Forged)?;
    let aead =
        Aead::from_id(u16::from_be_bytes([body[0], body[1]])).ok_or(CookieError::BadContent)?;
    let klen = aead.key_len();
    if body_len != 4 + 2 * klen {
        return Err(CookieError::BadContent);
    }
    let mut k = ClientKeys {
        aead,
        c2s: [0; MAX_KEY_LEN],
        s2c: [0; MAX_KEY_LEN],
    };
    k.c2s[..klen].copy_from_slice(&body[4..4 + klen]);
    k.s2c[..klen].copy_from_slice(&body[4 + klen..]);
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn client(aead: Aead) -> ClientKeys {
        let mut k = ClientKeys {
            aead,
            c2s: [0; 32],
            s2c: [0; 32],
        };
        for i in 0..aead.key_len() {
            k.c2s[i] = i as u8;
            k.s2c[i] = 0x80 | i as u8;
        }
        k
    }

    #[test]
    fn round_trip_each_aead() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let keyset = KeySet::generate(&mut rng, 0);
        let mut set = MasterCiphers::new(&keyset);
        for aead in Aead::SUPPORTED {
            let mut buf = [0u8; MAX_COOKIE_LEN];
            let n = encode(&client(aead), &mut set, &mut rng, &mut buf).unwrap();
            assert_eq!(n, cookie_len(aead));
            assert_eq!(n % 4, 0, "cookies fill whole extension-field words");
            assert_eq!(decode(&buf[..n], &mut set).unwrap(), client(aead));
            let mut bad = buf;
            bad[n - 1] ^= 1;
            assert_eq!(decode(&bad[..n], &mut set), Err(CookieError::Forged));
            let mut moved = buf;
            moved[..4].copy_from_slice(&keyset.keys()[1].id.to_be_bytes());
            assert_eq!(decode(&moved[..n], &mut set), Err(CookieError::Forged));
            assert_eq!(decode(&buf[..n - 4], &mut set), Err(CookieError::BadLength));
        }
        assert_eq!(cookie_len(Aead::AesSivCmac256), 104);
        assert_eq!(cookie_len(Aead::AesGcmSiv128), 72);
    }

    /// A cookie issued before a rotation still decodes after two rotations, and
    /// no longer after the key is forgotten.
    #[test]
    fn cookies_survive_rotation() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let set = KeySet::generate(&mut rng, 0);
        let mut buf = [0u8; MAX_COOKIE_LEN];
        let n = encode(
            &client(Aead::AesSivCmac256),
            &mut MasterCiphers::new(&set),
            &mut rng,
            &mut buf,
        )
        .unwrap();
        let cookie = &buf[..n];
        let r1 = set.rotated(&mut rng, 1);
        let r2 = r1.rotated(&mut rng, 2);
        for s in [&set, &r1, &r2] {
            assert_eq!(
                decode(cookie, &mut MasterCiphers::new(s)).unwrap(),
                client(Aead::AesSivCmac256)
            );
        }
        assert_eq!(
            decode(cookie, &mut MasterCiphers::new(&r2.rotated(&mut rng, 3))),
            Err(CookieError::UnknownKey)
        );
    }

    /// A worker's ciphers follow the key set it loads: kept while the set is
    /// the same, rebuilt (new cookies under the new current key) when it changes.
    #[test]
    fn refresh_follows_the_key_set() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let first = Arc::new(KeySet::generate(&mut rng, 0));
        let mut m = MasterCiphers::new(&KeySet::generate(&mut rng, 0));
        m.refresh(&first);
        let id_of = |m: &mut MasterCiphers, rng: &mut rand::rngs::StdRng| {
            let mut buf = [0u8; MAX_COOKIE_LEN];
            encode(&client(Aead::AesGcmSiv128), m, rng, &mut buf).unwrap();
            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]])
        };
        assert_eq!(id_of(&mut m, &mut rng), first.current().id);
        let before = m.ciphers.as_ptr();
        m.refresh(&first);
        assert_eq!(m.ciphers.as_ptr(), before, "same set: nothing rebuilt");
        let second = Arc::new(first.rotated(&mut rng, 1));
        m.refresh(&second);
        assert_eq!(id_of(&mut m, &mut rng), second.current().id);
        assert_ne!(second.current().id, first.current().id);
        // A cookie under the old current key still opens.
        let mut old = MasterCiphers::new(&first);
        let mut buf = [0u8; MAX_COOKIE_LEN];
        let n = encode(&client(Aead::AesGcmSiv128), &mut old, &mut rng, &mut buf).unwrap();
        assert_eq!(
            decode(&buf[..n], &mut m).unwrap(),
            client(Aead::AesGcmSiv128)
        );
    }
}
