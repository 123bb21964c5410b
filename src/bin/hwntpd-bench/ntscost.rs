//! `nts-cost`: the user-space cost of NTS per request, in-process and without
//! the network: a chrony-shaped NTS request (Unique Identifier, cookie,
//! Authenticator) is checked (cookie decrypted, Authenticator verified), the
//! reply laid out (a new cookie sealed under the master key) and sealed, as the
//! worker does it. Prints nanoseconds per request for each AEAD, and how the
//! time splits between the steps.

use hwntpd::nts::aead::Aead;
use hwntpd::nts::cookie::{self, ClientKeys, MasterCiphers};
use hwntpd::nts::keys::KeySet;
use hwntpd::nts::ntp::{check_request, client, seal, write_reply, NtsCheck};
use rand::SeedableRng as _;

/// Options of the `nts-cost` subcommand.
#[derive(clap::Args, Debug)]
pub struct NtsCostArgs {
    /// Requests per AEAD (bounded: at most 10 million).
    #[arg(long, default_value_t = 200_000)]
    pub count: u32,
}

/// Run the `nts-cost` subcommand.
pub fn run(args: &NtsCostArgs) -> anyhow::Result<()> {
    let count = args.count.clamp(1, 10_000_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    // Expanded once, as a worker keeps them.
    let mut set = MasterCiphers::new(&KeySet::generate(&mut rng, 0));
    for aead in Aead::SUPPORTED {
        let keys = ClientKeys {
            aead,
            c2s: [1; 32],
            s2c: [2; 32],
        };
        let mut buf = [0u8; cookie::MAX_COOKIE_LEN];
        let n = cookie::encode(&keys, &mut set, &mut rng, &mut buf).unwrap();
        let mut header = [0u8; 48];
        header[0] = 0x23;
        let req = client::request(
            &header,
            &[7; 32],
            &buf[..n],
            0,
            &keys,
            &vec![9; aead.nonce_len()],
        );
        let mut out = [0u8; 1024];
        // Three loops, each doing one more step; CPU time of this thread (not
        // wall time: other load on the machine does not count).
        let mut per_step = [0f64; 3];
        for (steps, slot) in per_step.iter_mut().enumerate() {
            let t0 = thread_cpu_ns();
            for _ in 0..count {
                let NtsCheck::Authenticated(r) = check_request(&req, &mut set) else {
                    anyhow::bail!("the request did not authenticate");
                };
                if steps >= 1 {
                    let (len, job) = write_reply(&mut out, &req, &r, &mut set, &mut rng).unwrap();
                    if steps >= 2 {
                        assert!(seal(&mut out[..len], &job));
                    }
                }
                std::hint::black_box(&out);
            }
            *slot = (thread_cpu_ns() - t0) as f64 / f64::from(count);
        }
        println!(
            "{aead:?} (id {}): {:.0} ns CPU per NTS request: check (cookie + authenticator) {:.0}, \
             reply layout (new cookie) {:.0}, seal {:.0}; request {} octets",
            aead.id(),
            per_step[2],
            per_step[0],
            per_step[1] - per_step[0],
            per_step[2] - per_step[1],
            req.len()
        );
    }
    Ok(())
}

/// CPU time of this thread, in ns.
fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}
