//! A fake PHC that replays recorded ioctl results, for tests here and in
//! other modules (no PHC exists on the development machines).

use std::cell::Cell;
use std::io;

use super::{OffsetMethod, PhcCaps, PhcDevice, PreciseSample, PtpTime, Reading};

/// One recorded answer: the readings (or sample) the ioctl returned, or its errno.
pub type Recorded<T> = Result<T, i32>;

/// A [`PhcDevice`] that replays scripted answers.
///
/// Each method has a list of answers, given back in order, one per call; once
/// the list is exhausted the last answer repeats. A method with no script
/// answers `ENOTTY` (a kernel that does not know the ioctl). Readings are
/// copied into the caller's buffer up to its length, so the request size is
/// honoured like the kernel does. Call counts are kept per method.
#[derive(Clone, Debug)]
pub struct RecordedPhc {
    name: String,
    caps: Recorded<PhcCaps>,
    precise: Vec<Recorded<PreciseSample>>,
    extended: Vec<Recorded<Vec<Reading>>>,
    basic: Vec<Recorded<Vec<Reading>>>,
    calls: [Cell<usize>; 3],
    last_request_len: Cell<usize>,
}

/// Capabilities of QEMU's emulated igb (82576) as seen in the VM
/// (`/work/shared/VM-HWTEST.md`): max_adj 999999881, no cross-timestamping.
pub const IGB_VM_CAPS: PhcCaps = PhcCaps {
    max_adj_ppb: 999_999_881,
    n_alarm: 0,
    n_ext_ts: 0,
    n_per_out: 0,
    pps: false,
    n_pins: 0,
    cross_timestamping: false,
    adjust_phase: false,
    max_phase_adj_ns: 0,
};

/// Builds `count` readings 40 us apart starting at system time `t0`, of a PHC
/// `offset_ns` ahead, with the given windows (ns) cycled; the PHC is read
/// `skew` ns after the window's midpoint (the asymmetry a real read has).
fn synth(t0: (i64, u32), offset_ns: i64, windows: &[i64], skew: i64, count: usize) -> Vec<Reading> {
    let base = i128::from(t0.0) * 1_000_000_000 + i128::from(t0.1);
    let at = |ns: i128| {
        let t = PtpTime {
            sec: ns.div_euclid(1_000_000_000) as i64,
            nsec: ns.rem_euclid(1_000_000_000) as u32,
        };
        (t.sec, t.nsec)
    };
    (0..count)
        .map(|i| {
            let w = i128::from(windows[i % windows.len()]);
            let before = base + 40_000 * i as i128;
            let after = before + w;
            let phc = before + w / 2 + i128::from(skew) + i128::from(offset_ns);
            Reading::new(at(before), at(phc), at(after))
        })
        .collect()
}

impl RecordedPhc {
    /// A device with these capabilities and no scripted offset methods.
    pub fn new(name: &str, caps: PhcCaps) -> Self {
        RecordedPhc {
            name: name.to_string(),
            caps: Ok(caps),
            precise: Vec::new(),
            extended: Vec::new(),
            basic: Vec::new(),
            calls: Default::default(),
            last_request_len: Cell::new(0),
        }
    }

    /// Shaped after the emulated igb in the VM (synthetic numbers in the ranges
    /// observed there, not a capture): precise answers `EOPNOTSUPP`; extended
    /// works with 9-40 us windows (TCG emulation) and the PHC 0.41 ms ahead,
    /// drifting 2 us a second; basic works with wider windows. Five polls, one
    /// second apart.
    pub fn igb_vm() -> Self {
        let polls = 5;
        let extended = (0..polls)
            .map(|p| {
                let t0 = (1_760_000_000 + p as i64, 250_000_000);
                Ok(synth(
                    t0,
                    412_000 + 2_000 * p as i64,
                    &[31_000, 9_000, 40_000, 17_000],
                    150,
                    25,
                ))
            })
            .collect();
        let basic = (0..polls)
            .map(|p| {
                let t0 = (1_760_000_000 + p as i64, 250_000_000);
                Ok(synth(
                    t0,
                    412_000 + 2_000 * p as i64,
                    &[61_000, 45_000, 80_000],
                    900,
                    25,
                ))
            })
            .collect();
        RecordedPhc::new("recorded-igb", IGB_VM_CAPS)
            .with_precise(vec![Err(libc::EOPNOTSUPP)])
            .with_extended(extended)
            .with_basic(basic)
    }

    /// A device (like an old kernel or driver) where precise answers
    /// `EOPNOTSUPP` and extended `ENOTTY`: only the basic method works
    /// (a PHC in TAI, 37 s ahead, 3-8 us windows).
    pub fn basic_only() -> Self {
        let basic = (0..3)
            .map(|p| {
                Ok(synth(
                    (1_760_000_000 + p, 0),
                    37_000_000_000,
                    &[8_000, 3_000, 5_000],
                    200,
                    25,
                ))
            })
            .collect();
        RecordedPhc::new("recorded-basic", IGB_VM_CAPS)
            .with_precise(vec![Err(libc::EOPNOTSUPP)])
            .with_extended(vec![Err(libc::ENOTTY)])
            .with_basic(basic)
    }

    /// A device with working cross-timestamps (PHC in TAI, 37 s + 250 ns ahead).
    pub fn precise_capable() -> Self {
        let caps = PhcCaps {
            max_adj_ppb: 100_000_000,
            cross_timestamping: true,
            ..IGB_VM_CAPS
        };
        let sample = |p: i64| PreciseSample {
            device: PtpTime::new(1_760_000_037 + p, 500_000_250),
            sys_realtime: PtpTime::new(1_760_000_000 + p, 500_000_000),
            sys_monoraw: PtpTime::new(12_345 + p, 0),
        };
        RecordedPhc::new("recorded-precise", caps)
            .with_precise((0..3).map(|p| Ok(sample(p))).collect())
            .with_extended(vec![Ok(synth(
                (1_760_000_000, 0),
                37_000_000_250,
                &[1_000],
                0,
                25,
            ))])
    }

    /// Makes `PTP_CLOCK_GETCAPS` fail with `errno`.
    pub fn with_caps_error(mut self, errno: i32) -> Self {
        self.caps = Err(errno);
        self
    }

    /// Scripts `PTP_SYS_OFFSET_PRECISE`.
    pub fn with_precise(mut self, answers: Vec<Recorded<PreciseSample>>) -> Self {
        self.precise = answers;
        self
    }

    /// Scripts `PTP_SYS_OFFSET_EXTENDED`.
    pub fn with_extended(mut self, answers: Vec<Recorded<Vec<Reading>>>) -> Self {
        self.extended = answers;
        self
    }

    /// Scripts `PTP_SYS_OFFSET`.
    pub fn with_basic(mut self, answers: Vec<Recorded<Vec<Reading>>>) -> Self {
        self.basic = answers;
        self
    }

    /// The scripted `PTP_SYS_OFFSET_EXTENDED` answers.
    pub fn extended_script(&self) -> &[Recorded<Vec<Reading>>] {
        &self.extended
    }

    /// How many times the method's ioctl was called.
    pub fn calls(&self, method: OffsetMethod) -> usize {
        self.calls[method as usize].get()
    }

    /// The number of readings the last extended or basic call asked for.
    pub fn last_request_len(&self) -> usize {
        self.last_request_len.get()
    }

    fn next<'a, T>(
        &self,
        method: OffsetMethod,
        script: &'a [Recorded<T>],
    ) -> Result<&'a T, io::Error> {
        let call = self.calls[method as usize].get();
        self.calls[method as usize].set(call + 1);
        match script.get(call).or(script.last()) {
            None => Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            Some(Err(errno)) => Err(io::Error::from_raw_os_error(*errno)),
            Some(Ok(v)) => Ok(v),
        }
    }

    fn replay(&self, method: OffsetMethod, out: &mut [Reading]) -> io::Result<usize> {
        self.last_request_len.set(out.len());
        let script = if method == OffsetMethod::Extended {
            &self.extended
        } else {
            &self.basic
        };
        let readings = self.next(method, script)?;
        let n = readings.len().min(out.len());
        out[..n].copy_from_slice(&readings[..n]);
        Ok(n)
    }
}

impl PhcDevice for RecordedPhc {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> io::Result<PhcCaps> {
        self.caps.map_err(io::Error::from_raw_os_error)
    }

    fn offset_precise(&self) -> io::Result<PreciseSample> {
        self.next(OffsetMethod::Precise, &self.precise).copied()
    }

    fn offset_extended(&self, out: &mut [Reading]) -> io::Result<usize> {
        self.replay(OffsetMethod::Extended, out)
    }

    fn offset_basic(&self, out: &mut [Reading]) -> io::Result<usize> {
        self.replay(OffsetMethod::Basic, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_in_order_then_repeats_the_last() {
        let r1 = vec![Reading::new((1, 0), (1, 10), (1, 20))];
        let r2 = vec![
            Reading::new((2, 0), (2, 10), (2, 20)),
            Reading::new((2, 100), (2, 110), (2, 120)),
        ];
        let dev = RecordedPhc::new("t", IGB_VM_CAPS).with_basic(vec![
            Ok(r1.clone()),
            Err(libc::EBUSY),
            Ok(r2.clone()),
        ]);
        let mut out = [Reading::default(); 4];
        assert_eq!(dev.offset_basic(&mut out).unwrap(), 1);
        assert_eq!(out[0], r1[0]);
        assert_eq!(
            dev.offset_basic(&mut out).unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
        assert_eq!(
            dev.offset_basic(&mut out[..1]).unwrap(),
            1,
            "request size honoured"
        );
        assert_eq!(dev.offset_basic(&mut out).unwrap(), 2);
        assert_eq!(&out[..2], &r2[..]);
        assert_eq!(dev.calls(OffsetMethod::Basic), 4);
        // Unscripted methods answer ENOTTY.
        assert_eq!(
            dev.offset_extended(&mut out).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            dev.offset_precise().unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }

    #[test]
    fn synthetic_readings_have_the_stated_windows_and_offset() {
        let rs = synth((5, 999_990_000), 412_000, &[31_000, 9_000], 150, 4);
        assert_eq!(rs[0].window_ns(), Some(31_000));
        assert_eq!(rs[1].window_ns(), Some(9_000));
        let m = rs[1].measurement().unwrap();
        assert_eq!(m.offset_ns, 412_150);
        assert_eq!(m.sys_ns, 6_000_034_500); // crossed into second 6
        assert_eq!(
            RecordedPhc::igb_vm().caps().unwrap().max_adj_ppb,
            999_999_881
        );
    }
}
