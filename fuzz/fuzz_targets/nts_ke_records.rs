//! The NTS-KE request reader and response codec (`hwntpd::nts::ke_records`)
//! on arbitrary bytes.
//!
//! Invariants checked:
//! * no panic (reader, response parser);
//! * a request is decided only once complete: every shorter prefix of an
//!   incomplete request is incomplete too;
//! * the response written for a decision parses back to that decision:
//!   Accept -> Next Protocol [0], AEAD [the chosen id], 8 cookies, no error;
//!   NoAead -> Next Protocol [0], an empty AEAD record, Error [1], no cookies;
//!   NoProtocol -> an empty Next Protocol record, Error [1]; Error(c) -> Error [c];
//! * an accepted AEAD is one the request offered.
#![no_main]

use hwntpd::nts::ke_records::{
    parse_record, parse_response, read_request, rtype, write_response, KeDecision, NtpServerHint,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_response(data);
    let decision = read_request(data);
    let Some(decision) = decision else {
        for n in [0, data.len() / 2, data.len().saturating_sub(1)] {
            assert!(
                read_request(&data[..n]).is_none(),
                "prefix {n} of an incomplete request decided"
            );
        }
        return;
    };
    let cookies = [[0xa5u8; 104]; 8];
    let refs: Vec<&[u8]> = cookies.iter().map(|c| &c[..]).collect();
    let resp = write_response(decision, &NtpServerHint::default(), &refs);
    let r = parse_response(&resp)
        .expect("our response parses")
        .expect("our response is complete");
    match decision {
        KeDecision::Accept(aead) => {
            assert_eq!(r.next_protocol, Some(vec![0]));
            assert_eq!(r.aead, Some(vec![aead.id()]));
            assert_eq!(r.cookies.len(), 8);
            assert!(r.errors.is_empty());
            // The AEAD was offered in the request.
            let mut at = 0;
            let mut offered = false;
            while let Some((rec, used)) = parse_record(&data[at..]) {
                if rec.rtype == rtype::AEAD {
                    offered |= rec
                        .body
                        .chunks_exact(2)
                        .any(|p| u16::from_be_bytes([p[0], p[1]]) == aead.id());
                }
                if rec.rtype == rtype::END_OF_MESSAGE {
                    break;
                }
                at += used;
            }
            assert!(offered, "accepted an AEAD the client did not offer");
        }
        KeDecision::NoAead => {
            assert_eq!(r.next_protocol, Some(vec![0]));
            assert_eq!(r.aead, Some(vec![]));
            assert_eq!(r.errors, vec![1], "Bad Request");
            assert!(r.cookies.is_empty());
        }
        KeDecision::NoProtocol => {
            assert_eq!(r.next_protocol, Some(vec![]));
            assert_eq!(r.errors, vec![1], "Bad Request");
            assert!(r.cookies.is_empty());
        }
        KeDecision::Error(code) => {
            assert_eq!(r.errors, vec![code]);
            assert!(r.cookies.is_empty());
        }
    }
});
