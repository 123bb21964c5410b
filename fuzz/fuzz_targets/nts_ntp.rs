//! NTS extension-field handling on the packet path (`hwntpd::nts::ntp`):
//! `check_request`, `write_reply`, `seal`, `write_nak`, against a fixed key set.
//!
//! Input layout: octet 0 chooses the mode.
//! * even: the rest is a request, checked as it is (must not panic; a reply
//!   laid out for anything authenticated is never longer than the request);
//! * odd: a valid NTS request is built (header = octets 1..49, placeholders =
//!   octet 49 % 4, AEAD = octet 50 & 1, then pairs (position, xor) from octet
//!   51 on flip octets of it). Unflipped, it must authenticate, and the
//!   sealed reply must verify with the client's keys, echo the Unique
//!   Identifier, carry one new cookie per cookie and placeholder and be no
//!   longer than the request. Flipped, it must never authenticate.
#![no_main]

use hwntpd::nts::aead::Aead;
use hwntpd::nts::cookie::{self, ClientKeys, MasterCiphers};
use hwntpd::nts::keys::{KeySet, MasterKey};
use hwntpd::nts::ntp::client::{check_reply, request, ReplyCheck};
use hwntpd::nts::ntp::{check_request, seal, write_nak, write_reply, NtsCheck};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;

fn keyset() -> KeySet {
    KeySet::from_keys(
        vec![
            MasterKey {
                id: 1,
                key: [0x11; 32],
            },
            MasterKey {
                id: 2,
                key: [0x22; 32],
            },
        ],
        0,
    )
    .unwrap()
}

fn answer(packet: &[u8], set: &mut MasterCiphers) -> Option<(Vec<u8>, NtsCheck)> {
    let check = check_request(packet, set);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut out = [0u8; 1024];
    let n = out.len().min(packet.len());
    out[..48.min(n)].copy_from_slice(&packet[..48.min(n)]);
    match check {
        NtsCheck::Authenticated(req) => {
            let (len, job) = write_reply(&mut out, packet, &req, set, &mut rng)?;
            assert!(
                len <= packet.len(),
                "reply {len} > request {}",
                packet.len()
            );
            assert!(seal(&mut out, &job));
            Some((out[..len].to_vec(), check))
        }
        NtsCheck::Nak {
            uid_at, uid_len, ..
        } => {
            let len = write_nak(&mut out, packet, uid_at, uid_len).expect("the UID fits");
            assert!(len <= packet.len());
            Some((out[..len].to_vec(), check))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    // Expanded once per input and used for every step, as a worker keeps them.
    let mut set = MasterCiphers::new(&keyset());
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = answer(rest, &mut set);
        return;
    }
    let mut header = [0u8; 48];
    for (h, d) in header.iter_mut().zip(rest.iter()) {
        *h = *d;
    }
    let placeholders = usize::from(rest.get(48).copied().unwrap_or(0) % 4);
    let aead = if rest.get(49).copied().unwrap_or(0) & 1 == 0 {
        Aead::AesSivCmac256
    } else {
        Aead::AesGcmSiv128
    };
    let keys = ClientKeys {
        aead,
        c2s: [0x33; 32],
        s2c: [0x44; 32],
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut buf = [0u8; cookie::MAX_COOKIE_LEN];
    let clen = cookie::encode(&keys, &mut set, &mut rng, &mut buf).unwrap();
    let uid = [0x5au8; 32];
    let nonce = vec![0x77u8; aead.nonce_len()];
    let mut req = request(&header, &uid, &buf[..clen], placeholders, &keys, &nonce);
    let original = req.clone();
    for pair in rest.get(50..).unwrap_or(&[]).chunks_exact(2).take(4) {
        let at = usize::from(pair[0]) * req.len() / 256;
        req[at] ^= pair[1];
    }
    // Flips of one octet can cancel out (an even number of equal ones), and
    // the Authenticator's nonce padding is not authenticated (RFC 8915 5.6):
    // the request is tampered only if an authenticated octet differs.
    let padding = nonce_padding(&original, aead.nonce_len());
    let flipped = req
        .iter()
        .zip(&original)
        .enumerate()
        .any(|(i, (a, b))| a != b && !padding.contains(&i));
    let out = answer(&req, &mut set);
    if flipped {
        if let Some((_, NtsCheck::Authenticated(_))) = out {
            panic!("a tampered request authenticated");
        }
        return;
    }
    let (reply, _) = out.expect("a valid request is answered");
    match check_reply(&reply, &uid, &keys) {
        ReplyCheck::Ok(cookies) => {
            assert_eq!(cookies.len(), placeholders + 1);
            for c in cookies {
                assert_eq!(cookie::decode(&c, &mut set).unwrap(), keys);
            }
        }
        other => panic!("reply does not verify: {other:?}"),
    }
});

/// Where the nonce padding of the Authenticator (the last extension field)
/// lies in `req` (empty if the fields cannot be walked).
fn nonce_padding(req: &[u8], nonce_len: usize) -> std::ops::Range<usize> {
    let mut at = 48;
    while at + 4 <= req.len() {
        let len = usize::from(u16::from_be_bytes([req[at + 2], req[at + 3]]));
        if len < 4 {
            break;
        }
        if at + len == req.len() {
            let start = at + 8 + nonce_len;
            return start..at + 8 + nonce_len.div_ceil(4) * 4;
        }
        at += len;
    }
    0..0
}
