//! The AEAD algorithms NTS negotiates (RFC 8915 section 5.1): AEAD_AES_SIV_CMAC_256
//! (IANA id 15, RFC 5297) and AEAD_AES_128_GCM_SIV (id 30, RFC 8452), through
//! RustCrypto's `aes-siv` and `aes-gcm-siv` crates. Encryption is in place and
//! detached (no allocation); the caller places the 16-octet tag where the
//! algorithm's ciphertext format wants it ([`Aead::tag_first`]).

use aes_gcm_siv::aead::{AeadInPlace, KeyInit};
use aes_gcm_siv::{Aes128GcmSiv, Nonce as GcmNonce, Tag as GcmTag};
use aes_siv::siv::Siv;

/// AES-SIV-CMAC-256 on encrypt-only AES-128: S2V (CMAC) and CTR only ever
/// encrypt blocks, so the decryption key schedule `aes_siv::siv::Aes128Siv`
/// (built on `aes::Aes128`) derives and carries is never used. The same
/// algorithm (the RFC 5297 test vector below checks it), less key setup per
/// message.
type Aes128Siv = Siv<aes::Aes128Enc, cmac::Cmac<aes::Aes128Enc>>;

/// Length of the authentication tag of both algorithms.
pub const TAG_LEN: usize = 16;

/// Longest key of the supported algorithms (AES-SIV-CMAC-256: two AES-128 keys).
pub const MAX_KEY_LEN: usize = 32;

/// A supported AEAD algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aead {
    /// AEAD_AES_SIV_CMAC_256 (id 15): 32-octet key, any nonce length; the
    /// ciphertext is the synthetic IV (the tag) followed by the encrypted data.
    AesSivCmac256,
    /// AEAD_AES_128_GCM_SIV (id 30): 16-octet key, 12-octet nonce; the
    /// ciphertext is the encrypted data followed by the tag.
    AesGcmSiv128,
}

/// The AEAD operation failed: a wrong key, a forged or damaged ciphertext, or a
/// nonce or key of the wrong length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AeadError;

impl Aead {
    /// The algorithms this server offers, in its order of preference.
    pub const SUPPORTED: [Aead; 2] = [Aead::AesSivCmac256, Aead::AesGcmSiv128];

    /// From the IANA AEAD algorithm id.
    pub fn from_id(id: u16) -> Option<Aead> {
        match id {
            15 => Some(Aead::AesSivCmac256),
            30 => Some(Aead::AesGcmSiv128),
            _ => None,
        }
    }

    /// The IANA AEAD algorithm id.
    pub fn id(self) -> u16 {
        match self {
            Aead::AesSivCmac256 => 15,
            Aead::AesGcmSiv128 => 30,
        }
    }

    /// Key length in octets (each of C2S and S2C).
    pub fn key_len(self) -> usize {
        match self {
            Aead::AesSivCmac256 => 32,
            Aead::AesGcmSiv128 => 16,
        }
    }

    /// The nonce length this server uses when it encrypts.
    pub fn nonce_len(self) -> usize {
        match self {
            Aead::AesSivCmac256 => 16,
            Aead::AesGcmSiv128 => 12,
        }
    }

    /// Whether a peer's nonce of `len` octets is acceptable. AES-SIV takes any
    /// non-empty nonce; RFC 8915 section 5.6 asks for at least 16 octets, which
    /// we require. AES-GCM-SIV takes exactly 12.
    pub fn accepts_nonce(self, len: usize) -> bool {
        match self {
            Aead::AesSivCmac256 => (16..=256).contains(&len),
            Aead::AesGcmSiv128 => len == 12,
        }
    }

    /// Whether the tag precedes the encrypted data in the ciphertext (AES-SIV)
    /// or follows it (AES-GCM-SIV).
    pub fn tag_first(self) -> bool {
        self == Aead::AesSivCmac256
    }

    /// Encrypt `data` in place; returns the tag.
    pub fn seal(
        self,
        key: &[u8],
        nonce: &[u8],
        ad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        if key.len() != self.key_len() || !self.accepts_nonce(nonce.len()) {
            return Err(AeadError);
        }
        match self {
            Aead::AesSivCmac256 => SivKey::new(key)?.seal(nonce, ad, data),
            Aead::AesGcmSiv128 => {
                let c = Aes128GcmSiv::new_from_slice(key).map_err(|_| AeadError)?;
                let tag = c
                    .encrypt_in_place_detached(GcmNonce::from_slice(nonce), ad, data)
                    .map_err(|_| AeadError)?;
                Ok(tag.into())
            }
        }
    }

    /// Decrypt `data` in place and check it against `tag`. On failure `data`
    /// holds no plaintext the caller may use.
    pub fn open(
        self,
        key: &[u8],
        nonce: &[u8],
        ad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        if key.len() != self.key_len() || !self.accepts_nonce(nonce.len()) {
            return Err(AeadError);
        }
        match self {
            Aead::AesSivCmac256 => SivKey::new(key)?.open(nonce, ad, data, tag),
            Aead::AesGcmSiv128 => {
                let c = Aes128GcmSiv::new_from_slice(key).map_err(|_| AeadError)?;
                c.decrypt_in_place_detached(
                    GcmNonce::from_slice(nonce),
                    ad,
                    data,
                    GcmTag::from_slice(tag),
                )
                .map_err(|_| AeadError)
            }
        }
    }
}

/// An AEAD_AES_SIV_CMAC_256 key, expanded once: for a key used for many
/// messages (the master keys cookies are sealed under), so its key schedule and
/// CMAC subkeys are not derived again for every message. Associated data and
/// nonce are passed as RFC 8915 uses them: the associated data first, then the
/// nonce, as two S2V headers.
pub struct SivKey(Aes128Siv);

impl SivKey {
    /// Expand a 32-octet key; fails on any other length.
    pub fn new(key: &[u8]) -> Result<SivKey, AeadError> {
        Aes128Siv::new_from_slice(key)
            .map(SivKey)
            .map_err(|_| AeadError)
    }

    /// Encrypt `data` in place; returns the synthetic IV (the tag).
    pub fn seal(
        &mut self,
        nonce: &[u8],
        ad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        if !Aead::AesSivCmac256.accepts_nonce(nonce.len()) {
            return Err(AeadError);
        }
        self.0
            .encrypt_in_place_detached([ad, nonce], data)
            .map(Into::into)
            .map_err(|_| AeadError)
    }

    /// Decrypt `data` in place and check it against `tag`.
    pub fn open(
        &mut self,
        nonce: &[u8],
        ad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        if !Aead::AesSivCmac256.accepts_nonce(nonce.len()) {
            return Err(AeadError);
        }
        self.0
            .decrypt_in_place_detached([ad, nonce], data, tag.into())
            .map_err(|_| AeadError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for a in Aead::SUPPORTED {
            assert_eq!(Aead::from_id(a.id()), Some(a));
        }
        assert_eq!(Aead::from_id(16), None);
    }

    /// RFC 5297 appendix A.1 (deterministic AES-SIV, one header): checks that the
    /// crate is driven the way the RFC defines the algorithm.
    #[test]
    fn aes_siv_rfc5297_vector() {
        let key: Vec<u8> = (0..32u8)
            .map(|i| {
                [
                    0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8, 0xf7, 0xf6, 0xf5, 0xf4, 0xf3,
                    0xf2, 0xf1, 0xf0, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9,
                    0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
                ][usize::from(i)]
            })
            .collect();
        let ad: Vec<u8> = (0x10..=0x27u8).collect();
        let mut data = [
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        ];
        let mut siv = Aes128Siv::new_from_slice(&key).unwrap();
        let tag = siv.encrypt_in_place_detached([&ad[..]], &mut data).unwrap();
        assert_eq!(
            tag.as_slice(),
            &[
                0x85, 0x63, 0x2d, 0x07, 0xc6, 0xe8, 0xf3, 0x7f, 0x95, 0x0a, 0xcd, 0x32, 0x0a, 0x2e,
                0xcc, 0x93
            ]
        );
        assert_eq!(
            data,
            [0x40, 0xc0, 0x2b, 0x96, 0x90, 0xc4, 0xdc, 0x04, 0xda, 0xef, 0x7f, 0x6a, 0xfe, 0x5c]
        );
    }

    #[test]
    fn seal_open_and_tamper() {
        for a in Aead::SUPPORTED {
            let key = vec![7u8; a.key_len()];
            let nonce = vec![9u8; a.nonce_len()];
            let mut data = *b"cookie cookie cookie";
            let tag = a.seal(&key, &nonce, b"header", &mut data).unwrap();
            assert_ne!(&data, b"cookie cookie cookie");
            let mut copy = data;
            a.open(&key, &nonce, b"header", &mut copy, &tag).unwrap();
            assert_eq!(&copy, b"cookie cookie cookie");
            let mut copy = data;
            assert!(a.open(&key, &nonce, b"headeR", &mut copy, &tag).is_err());
            let mut copy = data;
            copy[0] ^= 1;
            assert!(a.open(&key, &nonce, b"header", &mut copy, &tag).is_err());
            let mut wrong_key = key.clone();
            wrong_key[0] ^= 1;
            let mut copy = data;
            assert!(a
                .open(&wrong_key, &nonce, b"header", &mut copy, &tag)
                .is_err());
            assert!(a.seal(&key[1..], &nonce, b"", &mut data).is_err());
        }
        assert!(Aead::AesGcmSiv128
            .seal(&[0; 16], &[0; 16], b"", &mut [0; 4])
            .is_err());
        assert!(Aead::AesSivCmac256
            .seal(&[0; 32], &[0; 8], b"", &mut [0; 4])
            .is_err());
    }
}
