//! NTS for NTPv4 (RFC 8915 section 5): the Unique Identifier, NTS Cookie,
//! Cookie Placeholder and Authenticator extension fields of a request, and the
//! authenticated reply. Runs on the workers' packet path: nothing here
//! allocates (buffers are the caller's or on the stack).
//!
//! The reply's Authenticator is sealed in two steps: [`write_reply`] lays out
//! the reply (Unique Identifier, the Authenticator's nonce and the new cookies
//! in plain text) and returns a [`SealJob`]; [`seal`] encrypts it in place. The
//! caller may change the header in between (the worker patches the transmit
//! timestamp just before the send, then seals: the MAC covers the final time).

use rand::RngCore;

use super::aead::{Aead, MAX_KEY_LEN, TAG_LEN};
use super::cookie::{self, ClientKeys, CookieError, MasterCiphers, MAX_COOKIE_LEN};

/// Extension field types (RFC 8915 section 7.6).
pub mod ef {
    /// Unique Identifier.
    pub const UNIQUE_IDENTIFIER: u16 = 0x0104;
    /// NTS Cookie.
    pub const COOKIE: u16 = 0x0204;
    /// NTS Cookie Placeholder.
    pub const COOKIE_PLACEHOLDER: u16 = 0x0304;
    /// NTS Authenticator and Encrypted Extension Fields.
    pub const AUTHENTICATOR: u16 = 0x0404;
}

/// The NTP header length.
const HEADER: usize = crate::protocol::packet::HEADER_LEN;

/// Shortest Unique Identifier body (RFC 8915 section 5.3: at least 32 octets).
pub const MIN_UID_LEN: usize = 32;

/// Longest ciphertext of a request's Authenticator the server decrypts.
pub const MAX_REQUEST_CIPHERTEXT: usize = 1024;

/// Why an NTS request is not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtsDrop {
    /// NTS fields present but not as RFC 8915 requires (no or several Unique
    /// Identifiers or cookies, no Authenticator or not the last field, bad
    /// lengths).
    Malformed,
    /// The cookie decrypted but the Authenticator did not verify.
    AuthFailed,
}

/// An authenticated NTS request.
#[derive(Clone, Copy, Debug)]
pub struct NtsRequest {
    /// Offset of the Unique Identifier extension field (whole field).
    pub uid_at: u16,
    /// Its length (whole field).
    pub uid_len: u16,
    /// The keys from the cookie.
    pub keys: ClientKeys,
    /// New cookies asked for: one for the cookie, one per placeholder.
    pub cookies_wanted: u16,
}

/// The verdict on a request's NTS fields.
#[derive(Clone, Copy, Debug)]
pub enum NtsCheck {
    /// No NTS extension field: a plain NTP request.
    Plain,
    /// Authenticated: answer with [`write_reply`].
    Authenticated(NtsRequest),
    /// The cookie cannot be decrypted: answer with an NTS NAK (KoD `NTSN`)
    /// carrying the Unique Identifier field at this offset and length.
    Nak {
        /// Offset of the Unique Identifier extension field.
        uid_at: u16,
        /// Its length.
        uid_len: u16,
        /// Why the cookie was refused.
        why: CookieError,
    },
    /// Send nothing.
    Drop(NtsDrop),
}

/// One extension field: type, offset of the whole field, its length.
#[derive(Clone, Copy, Debug)]
struct Field {
    ftype: u16,
    at: usize,
    len: usize,
}

/// Walk the extension fields after the header; `None` if any is malformed.
fn next_field(packet: &[u8], at: usize) -> Option<Option<Field>> {
    if at == packet.len() {
        return Some(None);
    }
    let head = packet.get(at..at + 4)?;
    let ftype = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if len < 16 || len % 4 != 0 || at + len > packet.len() {
        return None;
    }
    Some(Some(Field { ftype, at, len }))
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Check a request's NTS fields and authenticate it. `packet` is the whole
/// request (header and extension fields); allocates nothing.
pub fn check_request(packet: &[u8], masters: &mut MasterCiphers) -> NtsCheck {
    if packet.len() <= HEADER {
        return NtsCheck::Plain;
    }
    let mut uid: Option<Field> = None;
    let mut cookie: Option<Field> = None;
    let mut auth: Option<Field> = None;
    let mut placeholders = 0u16;
    let mut any_nts = false;
    let mut malformed = false;
    let mut at = HEADER;
    loop {
        let f = match next_field(packet, at) {
            Some(Some(f)) => f,
            Some(None) => break,
            // Not extension fields (a legacy MAC, or garbage): not NTS unless
            // NTS fields came before.
            None => {
                malformed = true;
                break;
            }
        };
        at += f.len;
        if auth.is_some() {
            // Fields after the Authenticator are not authenticated: refuse.
            malformed = true;
        }
        match f.ftype {
            ef::UNIQUE_IDENTIFIER => {
                any_nts = true;
                malformed |= uid.is_some() || f.len - 4 < MIN_UID_LEN;
                uid = Some(f);
            }
            ef::COOKIE => {
                any_nts = true;
                malformed |= cookie.is_some();
                cookie = Some(f);
            }
            ef::COOKIE_PLACEHOLDER => {
                any_nts = true;
                placeholders = placeholders.saturating_add(1);
            }
            ef::AUTHENTICATOR => {
                any_nts = true;
                malformed |= auth.is_some();
                auth = Some(f);
            }
            _ => {}
        }
    }
    if !any_nts {
        return NtsCheck::Plain;
    }
    let (Some(uid), Some(cookie), Some(auth), false) = (uid, cookie, auth, malformed) else {
        return NtsCheck::Drop(NtsDrop::Malformed);
    };
    let client = match cookie::decode(&packet[cookie.at + 4..cookie.at + cookie.len], masters) {
        Ok(k) => k,
        Err(why) => {
            return NtsCheck::Nak {
                uid_at: uid.at as u16,
                uid_len: uid.len as u16,
                why,
            }
        }
    };
    // The Authenticator: nonce length, ciphertext length, nonce, ciphertext
    // (each padded to a word), padding.
    let body = &packet[auth.at + 4..auth.at + auth.len];
    let nonce_len = be16(body, 0);
    let ct_len = be16(body, 2);
    let aead = client.aead;
    if !aead.accepts_nonce(nonce_len)
        || !(TAG_LEN..=MAX_REQUEST_CIPHERTEXT).contains(&ct_len)
        || 4 + pad4(nonce_len) + pad4(ct_len) > body.len()
    {
        return NtsCheck::Drop(NtsDrop::Malformed);
    }
    let nonce = &body[4..4 + nonce_len];
    let ct = &body[4 + pad4(nonce_len)..4 + pad4(nonce_len) + ct_len];
    let (tag_part, data_part) = if aead.tag_first() {
        (&ct[..TAG_LEN], &ct[TAG_LEN..])
    } else {
        (&ct[ct_len - TAG_LEN..], &ct[..ct_len - TAG_LEN])
    };
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(tag_part);
    let mut plain = [0u8; MAX_REQUEST_CIPHERTEXT];
    let plain = &mut plain[..data_part.len()];
    plain.copy_from_slice(data_part);
    if aead
        .open(client.c2s(), nonce, &packet[..auth.at], plain, &tag)
        .is_err()
    {
        return NtsCheck::Drop(NtsDrop::AuthFailed);
    }
    // Encrypted extension fields may hold placeholders too.
    let mut at = 0;
    while at + 4 <= plain.len() {
        let len = be16(plain, at + 2);
        if len < 16 || len % 4 != 0 || at + len > plain.len() {
            return NtsCheck::Drop(NtsDrop::Malformed);
        }
        if be16(plain, at) == usize::from(ef::COOKIE_PLACEHOLDER) {
            placeholders = placeholders.saturating_add(1);
        }
        at += len;
    }
    NtsCheck::Authenticated(NtsRequest {
        uid_at: uid.at as u16,
        uid_len: uid.len as u16,
        keys: client,
        cookies_wanted: placeholders.saturating_add(1),
    })
}

/// What [`seal`] must do to finish a reply laid out by [`write_reply`].
#[derive(Clone, Copy, Debug)]
pub struct SealJob {
    /// The AEAD and the server-to-client key.
    pub aead: Aead,
    key: [u8; MAX_KEY_LEN],
    /// Octets of associated data: the packet up to the Authenticator.
    ad_len: u16,
    nonce_at: u16,
    data_at: u16,
    data_len: u16,
    tag_at: u16,
}

/// Copy the request's Unique Identifier field (or as much of the layout as
/// `out` takes) after the header. Returns the new length.
fn put_uid(out: &mut [u8], request: &[u8], uid_at: u16, uid_len: u16) -> Option<usize> {
    let (at, len) = (usize::from(uid_at), usize::from(uid_len));
    let src = request.get(at..at + len)?;
    out.get_mut(HEADER..HEADER + len)?.copy_from_slice(src);
    Some(HEADER + len)
}

/// Lay out an authenticated reply after the 48-octet header already in `out`:
/// the request's Unique Identifier, then the Authenticator whose encrypted
/// part holds fresh cookies: as many as asked for, but no more than keep the
/// reply within the request's length and `out`. Returns the reply's length
/// and the job that [`seal`] finishes.
pub fn write_reply(
    out: &mut [u8],
    request: &[u8],
    req: &NtsRequest,
    masters: &mut MasterCiphers,
    rng: &mut impl RngCore,
) -> Option<(usize, SealJob)> {
    let limit = request.len().min(out.len());
    let aead = req.keys.aead;
    let mut at = put_uid(out, request, req.uid_at, req.uid_len)?;
    let auth_at = at;
    let nonce_len = aead.nonce_len();
    let cookie_len = cookie::cookie_len(aead);
    let field_len = 4 + cookie_len;
    let fixed = 4 + 4 + pad4(nonce_len) + TAG_LEN;
    if auth_at + fixed > limit {
        return None;
    }
    let fit = (limit - auth_at - fixed) / field_len;
    let n = usize::from(req.cookies_wanted).min(fit);
    let data_len = n * field_len;
    let ct_len = data_len + TAG_LEN;
    let auth_len = fixed + data_len;
    let o = out.get_mut(auth_at..auth_at + auth_len)?;
    o[0..2].copy_from_slice(&ef::AUTHENTICATOR.to_be_bytes());
    o[2..4].copy_from_slice(&(auth_len as u16).to_be_bytes());
    o[4..6].copy_from_slice(&(nonce_len as u16).to_be_bytes());
    o[6..8].copy_from_slice(&(ct_len as u16).to_be_bytes());
    rng.fill_bytes(&mut o[8..8 + nonce_len]);
    o[8 + nonce_len..8 + pad4(nonce_len)].fill(0);
    let ct_at = 8 + pad4(nonce_len);
    let (data_at, tag_at) = if aead.tag_first() {
        (ct_at + TAG_LEN, ct_at)
    } else {
        (ct_at, ct_at + data_len)
    };
    let mut p = data_at;
    let mut buf = [0u8; MAX_COOKIE_LEN];
    for _ in 0..n {
        let len = cookie::encode(&req.keys, masters, rng, &mut buf)?;
        o[p..p + 2].copy_from_slice(&ef::COOKIE.to_be_bytes());
        o[p + 2..p + 4].copy_from_slice(&(field_len as u16).to_be_bytes());
        o[p + 4..p + 4 + len].copy_from_slice(&buf[..len]);
        p += field_len;
    }
    at += auth_len;
    let mut key = [0u8; MAX_KEY_LEN];
    key[..aead.key_len()].copy_from_slice(req.keys.s2c());
    Some((
        at,
        SealJob {
            aead,
            key,
            ad_len: auth_at as u16,
            nonce_at: (auth_at + 8) as u16,
            data_at: (auth_at + data_at) as u16,
            data_len: data_len as u16,
            tag_at: (auth_at + tag_at) as u16,
        },
    ))
}

/// Encrypt a reply laid out by [`write_reply`] (after any change to the
/// header). `false` if the job does not fit `packet` (then it must not be sent).
pub fn seal(packet: &mut [u8], job: &SealJob) -> bool {
    let (ad_len, nonce_at) = (usize::from(job.ad_len), usize::from(job.nonce_at));
    let (data_at, data_len) = (usize::from(job.data_at), usize::from(job.data_len));
    let tag_at = usize::from(job.tag_at);
    let nonce_len = job.aead.nonce_len();
    if packet.len() < data_at + data_len || packet.len() < tag_at + TAG_LEN {
        return false;
    }
    let (ad, rest) = packet.split_at_mut(ad_len);
    let (head, data) = rest.split_at_mut(data_at - ad_len);
    let nonce = &head[nonce_at - ad_len..nonce_at - ad_len + nonce_len];
    let key = &job.key[..job.aead.key_len()];
    let Ok(tag) = job.aead.seal(key, nonce, ad, &mut data[..data_len]) else {
        return false;
    };
    packet[tag_at..tag_at + TAG_LEN].copy_from_slice(&tag);
    true
}

/// After a 48-octet KoD header already in `out`, the request's Unique
/// Identifier field (an NTS NAK, RFC 8915 section 5.7). Returns the length.
pub fn write_nak(out: &mut [u8], request: &[u8], uid_at: u16, uid_len: u16) -> Option<usize> {
    put_uid(out, request, uid_at, uid_len)
}

/// The client side, for tests and the benchmark tool (allocates freely).
pub mod client {
    use super::*;

    /// A client's NTS state for one server.
    #[derive(Clone, Debug)]
    pub struct Session {
        /// The keys (from the NTS-KE exporter).
        pub keys: ClientKeys,
        /// Cookies in hand.
        pub cookies: Vec<Vec<u8>>,
    }

    /// Build an authenticated request: `header` (48 octets), a Unique
    /// Identifier, `cookie`, `placeholders` placeholders of the cookie's size,
    /// and the Authenticator (empty encrypted part).
    pub fn request(
        header: &[u8; 48],
        uid: &[u8],
        cookie: &[u8],
        placeholders: usize,
        keys: &ClientKeys,
        nonce: &[u8],
    ) -> Vec<u8> {
        let mut p = header.to_vec();
        let field = |p: &mut Vec<u8>, t: u16, body: &[u8]| {
            let len = 4 + pad4(body.len());
            p.extend_from_slice(&t.to_be_bytes());
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p.extend_from_slice(body);
            p.resize(p.len() + pad4(body.len()) - body.len(), 0);
        };
        field(&mut p, ef::UNIQUE_IDENTIFIER, uid);
        field(&mut p, ef::COOKIE, cookie);
        for _ in 0..placeholders {
            field(&mut p, ef::COOKIE_PLACEHOLDER, &vec![0u8; cookie.len()]);
        }
        let mut data = [0u8; 0];
        let tag = keys
            .aead
            .seal(keys.c2s(), nonce, &p, &mut data)
            .expect("nonce and key fit the AEAD");
        let mut body = Vec::new();
        body.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        body.extend_from_slice(&(TAG_LEN as u16).to_be_bytes());
        body.extend_from_slice(nonce);
        body.resize(4 + pad4(nonce.len()), 0);
        body.extend_from_slice(&tag);
        field(&mut p, ef::AUTHENTICATOR, &body);
        p
    }

    /// What a client makes of a reply.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum ReplyCheck {
        /// Authenticated, with these new cookies.
        Ok(Vec<Vec<u8>>),
        /// An NTS NAK echoing the Unique Identifier.
        Nak,
        /// Not acceptable (the reason).
        Bad(String),
    }

    /// Check a reply against the request's Unique Identifier and the keys.
    pub fn check_reply(reply: &[u8], uid: &[u8], keys: &ClientKeys) -> ReplyCheck {
        let bad = |s: &str| ReplyCheck::Bad(s.to_string());
        if reply.len() < HEADER {
            return bad("short");
        }
        let mut at = HEADER;
        let mut uid_ok = false;
        let mut auth = None;
        while let Some(Some(f)) = next_field(reply, at) {
            match f.ftype {
                ef::UNIQUE_IDENTIFIER => uid_ok = &reply[f.at + 4..f.at + 4 + uid.len()] == uid,
                ef::AUTHENTICATOR => auth = Some(f),
                _ => {}
            }
            at += f.len;
        }
        if !uid_ok {
            return bad("no matching unique identifier");
        }
        let is_kod = reply[1] == 0;
        let Some(auth) = auth else {
            return if is_kod && &reply[12..16] == b"NTSN" {
                ReplyCheck::Nak
            } else {
                bad("no authenticator")
            };
        };
        let body = &reply[auth.at + 4..auth.at + auth.len];
        let nonce_len = be16(body, 0);
        let ct_len = be16(body, 2);
        if ct_len < TAG_LEN || 4 + pad4(nonce_len) + pad4(ct_len) > body.len() {
            return bad("authenticator lengths");
        }
        let nonce = &body[4..4 + nonce_len];
        let ct = &body[4 + pad4(nonce_len)..4 + pad4(nonce_len) + ct_len];
        let (tag, data) = if keys.aead.tag_first() {
            (&ct[..TAG_LEN], &ct[TAG_LEN..])
        } else {
            (&ct[ct_len - TAG_LEN..], &ct[..ct_len - TAG_LEN])
        };
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let mut plain = data.to_vec();
        if keys
            .aead
            .open(keys.s2c(), nonce, &reply[..auth.at], &mut plain, &t)
            .is_err()
        {
            return bad("authenticator does not verify");
        }
        let mut cookies = Vec::new();
        let mut at = 0;
        while let Some(Some(f)) = next_field(&plain, at) {
            if f.ftype == ef::COOKIE {
                cookies.push(plain[f.at + 4..f.at + f.len].to_vec());
            }
            at += f.len;
        }
        ReplyCheck::Ok(cookies)
    }
}

#[cfg(test)]
mod tests {
    use super::client::*;
    use super::*;
    use crate::nts::keys::KeySet;
    use rand::SeedableRng;

    fn setup(aead: Aead) -> (KeySet, ClientKeys, Vec<u8>, rand::rngs::StdRng) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let set = KeySet::generate(&mut rng, 0);
        let mut keys = ClientKeys {
            aead,
            c2s: [0; 32],
            s2c: [0; 32],
        };
        rng.fill_bytes(&mut keys.c2s);
        rng.fill_bytes(&mut keys.s2c);
        let mut buf = [0u8; MAX_COOKIE_LEN];
        let n = cookie::encode(&keys, &mut MasterCiphers::new(&set), &mut rng, &mut buf).unwrap();
        (set, keys, buf[..n].to_vec(), rng)
    }

    fn header() -> [u8; 48] {
        let mut h = [0u8; 48];
        h[0] = 0x23;
        h[40..48].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        h
    }

    fn answer(req: &[u8], set: &mut MasterCiphers, rng: &mut rand::rngs::StdRng) -> Vec<u8> {
        let NtsCheck::Authenticated(r) = check_request(req, set) else {
            panic!("not authenticated");
        };
        let mut out = [0u8; 1024];
        out[..48].copy_from_slice(&req[..48]);
        out[1] = 1; // as if the server wrote its header
        let (len, job) = write_reply(&mut out, req, &r, set, rng).unwrap();
        out[40] ^= 0xff; // the transmit patch, before sealing
        assert!(seal(&mut out[..len], &job));
        out[..len].to_vec()
    }

    #[test]
    fn authenticated_round_trip_each_aead() {
        for aead in Aead::SUPPORTED {
            let (set, keys, cookie, mut rng) = setup(aead);
            // One set of expanded master keys for every request, as a worker
            // keeps it.
            let mut set = MasterCiphers::new(&set);
            let uid = [0x5a; 32];
            for placeholders in [0, 1, 3] {
                let req = request(
                    &header(),
                    &uid,
                    &cookie,
                    placeholders,
                    &keys,
                    &vec![1u8; aead.nonce_len()],
                );
                let reply = answer(&req, &mut set, &mut rng);
                assert!(reply.len() <= req.len(), "{} > {}", reply.len(), req.len());
                match check_reply(&reply, &uid, &keys) {
                    ReplyCheck::Ok(cookies) => {
                        assert_eq!(cookies.len(), 1 + placeholders, "{aead:?}");
                        for c in &cookies {
                            assert_eq!(cookie::decode(c, &mut set).unwrap(), keys);
                        }
                    }
                    other => panic!("{aead:?}: {other:?}"),
                }
                // A changed header after sealing breaks the MAC.
                let mut tampered = reply.clone();
                tampered[45] ^= 1;
                assert!(matches!(
                    check_reply(&tampered, &uid, &keys),
                    ReplyCheck::Bad(_)
                ));
            }
        }
    }

    #[test]
    fn tampering_and_unknown_cookies() {
        let (keyset, keys, cookie, mut rng) = setup(Aead::AesSivCmac256);
        let mut set = MasterCiphers::new(&keyset);
        let uid = [7u8; 32];
        let req = request(&header(), &uid, &cookie, 0, &keys, &[2u8; 16]);
        // Any flipped bit in the header, the UID or the cookie's fields fails.
        for i in [0usize, 40, 47, 52, 60, 48 + 36 + 20] {
            let mut t = req.clone();
            t[i] ^= 0x10;
            match check_request(&t, &mut set) {
                NtsCheck::Drop(NtsDrop::AuthFailed) | NtsCheck::Nak { .. } => {}
                other => panic!("byte {i}: {other:?}"),
            }
        }
        // The Authenticator's tag.
        let mut t = req.clone();
        let n = t.len();
        t[n - 1] ^= 1;
        assert!(matches!(
            check_request(&t, &mut set),
            NtsCheck::Drop(NtsDrop::AuthFailed)
        ));
        // A cookie from a key the server never had: a NAK echoing the UID.
        let other = KeySet::generate(&mut rng, 0);
        match check_request(&req, &mut MasterCiphers::new(&other)) {
            NtsCheck::Nak {
                uid_at,
                uid_len,
                why,
            } => {
                assert_eq!(why, CookieError::UnknownKey);
                let mut out = [0u8; 128];
                let len = write_nak(&mut out, &req, uid_at, uid_len).unwrap();
                assert_eq!(&out[48..len], &req[48..48 + 36]);
            }
            other => panic!("{other:?}"),
        }
        // A cookie from before two rotations still works.
        let later = keyset.rotated(&mut rng, 1).rotated(&mut rng, 2);
        let reply = answer(&req, &mut MasterCiphers::new(&later), &mut rng);
        assert!(matches!(
            check_reply(&reply, &uid, &keys),
            ReplyCheck::Ok(_)
        ));
    }

    #[test]
    fn malformed_and_plain() {
        let (set, keys, cookie, _) = setup(Aead::AesGcmSiv128);
        let mut set = MasterCiphers::new(&set);
        assert!(matches!(
            check_request(&header(), &mut set),
            NtsCheck::Plain
        ));
        let mut unknown_ef = header().to_vec();
        unknown_ef.extend_from_slice(&[0x20, 0x00, 0x00, 0x10]);
        unknown_ef.extend_from_slice(&[0; 12]);
        assert!(matches!(
            check_request(&unknown_ef, &mut set),
            NtsCheck::Plain
        ));
        let uid = [1u8; 32];
        let req = request(&header(), &uid, &cookie, 0, &keys, &[3u8; 12]);
        // Without the Authenticator.
        let auth_len = 4 + 4 + 12 + 16;
        assert!(matches!(
            check_request(&req[..req.len() - auth_len], &mut set),
            NtsCheck::Drop(NtsDrop::Malformed)
        ));
        // A field after the Authenticator.
        let mut after = req.clone();
        after.extend_from_slice(&unknown_ef[48..]);
        assert!(matches!(
            check_request(&after, &mut set),
            NtsCheck::Drop(NtsDrop::Malformed)
        ));
        // A short Unique Identifier.
        let short = request(&header(), &[1u8; 16], &cookie, 0, &keys, &[3u8; 12]);
        assert!(matches!(
            check_request(&short, &mut set),
            NtsCheck::Drop(NtsDrop::Malformed)
        ));
        // A nonce of the wrong length for AES-GCM-SIV.
        let mut k16 = keys;
        k16.aead = Aead::AesSivCmac256;
        let wrong = request(&header(), &uid, &cookie, 0, &k16, &[3u8; 16]);
        assert!(matches!(
            check_request(&wrong, &mut set),
            NtsCheck::Drop(NtsDrop::Malformed)
        ));
    }

    #[test]
    fn reply_never_longer_than_request() {
        let (set, keys, cookie, mut rng) = setup(Aead::AesSivCmac256);
        let mut set = MasterCiphers::new(&set);
        let uid = [9u8; 32];
        let req = request(&header(), &uid, &cookie, 2, &keys, &[4u8; 16]);
        // Cut the placeholders' room by claiming more placeholders than exist
        // is impossible; instead give the writer a smaller output buffer.
        let NtsCheck::Authenticated(r) = check_request(&req, &mut set) else {
            panic!()
        };
        let mut out = vec![0u8; 48 + 36 + 40 + 108];
        let (len, job) = write_reply(&mut out, &req, &r, &mut set, &mut rng).unwrap();
        assert!(len <= out.len());
        assert!(seal(&mut out[..len], &job));
        match check_reply(&out[..len], &uid, &keys) {
            ReplyCheck::Ok(c) => assert_eq!(c.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn check_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            let mut set = MasterCiphers::new(&KeySet::generate(&mut rng, 0));
            let _ = check_request(&bytes, &mut set);
        }
    }
}
