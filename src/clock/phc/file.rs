//! The real device: `/dev/ptpN` and its ioctls (`include/uapi/linux/ptp_clock.h`).
//!
//! The file is opened read-only: the kernel demands write access only for the
//! ioctls that change the clock's outputs (`PTP_EXTTS_REQUEST`,
//! `PTP_PEROUT_REQUEST`, `PTP_ENABLE_PPS`, `PTP_PIN_SETFUNC`) and for
//! `clock_settime`/`clock_adjtime` on the dynamic clock id; capabilities,
//! offset readings and `clock_gettime` work on a read-only descriptor.
//!
//! The ioctl request numbers and argument structs come from the `libc` crate;
//! the tests check them against the values the kernel header defines.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use super::{PhcCaps, PhcDevice, PreciseSample, PtpTime, Reading, PTP_MAX_SAMPLES};

/// `CLOCKFD` from the kernel's `posix-timers.h`: the low bits marking a
/// dynamic (file-descriptor) POSIX clock id.
const CLOCKFD: libc::clockid_t = 3;

/// The dynamic POSIX clock id of an open PHC descriptor: `(~fd << 3) | 3`
/// (the kernel's `FD_TO_CLOCKID`).
pub fn fd_to_clockid(fd: RawFd) -> libc::clockid_t {
    // Shifting a negative i32 left is two's-complement, like the C macro's
    // unsigned arithmetic followed by the conversion back to clockid_t.
    ((!fd) << 3) | CLOCKFD
}

/// The device path of PHC number `index` (as `ETHTOOL_GET_TS_INFO` reports it).
pub fn phc_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ptp{index}"))
}

/// An open PTP hardware clock device.
#[derive(Debug)]
pub struct PhcFile {
    file: File,
    name: String,
}

impl PhcFile {
    /// Opens a PHC by path (`--phc /dev/ptp0`), read-only. Whether it really is
    /// a PHC shows at the first ioctl ([`PhcDevice::caps`] fails with `ENOTTY`).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new().read(true).open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open PHC {}: {e}", path.display()))
        })?;
        Ok(PhcFile {
            file,
            name: path.display().to_string(),
        })
    }

    /// Opens PHC number `phc_index`, as an interface's `ETHTOOL_GET_TS_INFO`
    /// reports it; a negative index (the interface has no PHC) is an error.
    pub fn open_index(phc_index: i32) -> io::Result<Self> {
        let index = u32::try_from(phc_index).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the interface has no PTP hardware clock (phc_index {phc_index})"),
            )
        })?;
        Self::open(phc_path(index))
    }

    /// The dynamic POSIX clock id of this PHC, valid while `self` is open.
    pub fn clock_id(&self) -> libc::clockid_t {
        fd_to_clockid(self.file.as_raw_fd())
    }

    /// Reads the PHC with `clock_gettime` on its dynamic clock id.
    pub fn read_time(&self) -> io::Result<PtpTime> {
        let ts = nix::time::clock_gettime(nix::time::ClockId::from_raw(self.clock_id()))?;
        Ok(PtpTime {
            sec: ts.tv_sec(),
            nsec: u32::try_from(ts.tv_nsec())
                .map_err(|_| io::Error::other("clock_gettime: bad tv_nsec"))?,
        })
    }

    /// Issues PTP ioctl `request` with `arg` as its argument.
    ///
    /// Every PTP ioctl used here is `_IOR`/`_IOW`/`_IOWR` on a struct, and the
    /// kernel copies exactly the size encoded in the request number from/to
    /// the argument. That size is checked against `size_of::<T>()` first, so
    /// the kernel cannot touch memory outside `*arg` even if a caller pairs a
    /// request with the wrong type.
    fn ioctl<T>(&self, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
        // _IOC layout: nr bits 0..8, type 8..16, size 16..30, dir 30..32.
        let encoded_size = ((request as u32) >> 16) & 0x3fff;
        if encoded_size as usize != size_of::<T>() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: the descriptor is open for as long as `self` lives; `arg` is
        // an exclusively borrowed, initialised `T` whose size equals the size
        // encoded in `request` (checked above), which is all the kernel reads
        // or writes for these requests; `T` is plain integer data (libc's
        // `ptp_*` structs), so any bytes the kernel writes form a valid `T`.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for PhcFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

const ZERO_TIME: libc::ptp_clock_time = libc::ptp_clock_time {
    sec: 0,
    nsec: 0,
    reserved: 0,
};

fn ptp_time(t: &libc::ptp_clock_time) -> PtpTime {
    PtpTime {
        sec: t.sec,
        nsec: t.nsec,
    }
}

impl PhcDevice for PhcFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> io::Result<PhcCaps> {
        let mut c = libc::ptp_clock_caps {
            max_adj: 0,
            n_alarm: 0,
            n_ext_ts: 0,
            n_per_out: 0,
            pps: 0,
            n_pins: 0,
            cross_timestamping: 0,
            adjust_phase: 0,
            max_phase_adj: 0,
            rsv: [0; 11],
        };
        self.ioctl(libc::PTP_CLOCK_GETCAPS, &mut c)?;
        Ok(PhcCaps {
            max_adj_ppb: c.max_adj,
            n_alarm: c.n_alarm,
            n_ext_ts: c.n_ext_ts,
            n_per_out: c.n_per_out,
            pps: c.pps != 0,
            n_pins: c.n_pins,
            cross_timestamping: c.cross_timestamping != 0,
            adjust_phase: c.adjust_phase != 0,
            max_phase_adj_ns: c.max_phase_adj,
        })
    }

    fn offset_precise(&self) -> io::Result<PreciseSample> {
        let mut p = libc::ptp_sys_offset_precise {
            device: ZERO_TIME,
            sys_realtime: ZERO_TIME,
            sys_monoraw: ZERO_TIME,
            rsv: [0; 4],
        };
        self.ioctl(libc::PTP_SYS_OFFSET_PRECISE, &mut p)?;
        Ok(PreciseSample {
            device: ptp_time(&p.device),
            sys_realtime: ptp_time(&p.sys_realtime),
            sys_monoraw: ptp_time(&p.sys_monoraw),
        })
    }

    fn offset_extended(&self, out: &mut [Reading]) -> io::Result<usize> {
        let n = out.len().min(PTP_MAX_SAMPLES);
        // clockid 0 = CLOCK_REALTIME; kernels before the clockid field had
        // rsv[3] there, which must be zero: the same bytes.
        let mut x = libc::ptp_sys_offset_extended {
            n_samples: n as libc::c_uint,
            clockid: libc::CLOCK_REALTIME,
            rsv: [0; 2],
            ts: [[ZERO_TIME; 3]; PTP_MAX_SAMPLES],
        };
        self.ioctl(libc::PTP_SYS_OFFSET_EXTENDED, &mut x)?;
        for (r, t) in out.iter_mut().zip(&x.ts[..n]) {
            *r = Reading {
                sys_before: ptp_time(&t[0]),
                phc: ptp_time(&t[1]),
                sys_after: ptp_time(&t[2]),
            };
        }
        Ok(n)
    }

    fn offset_basic(&self, out: &mut [Reading]) -> io::Result<usize> {
        let n = out.len().min(PTP_MAX_SAMPLES);
        let mut s = libc::ptp_sys_offset {
            n_samples: n as libc::c_uint,
            rsv: [0; 3],
            ts: [ZERO_TIME; 2 * PTP_MAX_SAMPLES + 1],
        };
        self.ioctl(libc::PTP_SYS_OFFSET, &mut s)?;
        // ts = sys0, phc0, sys1, phc1, ..., sys_n
        for (i, r) in out.iter_mut().take(n).enumerate() {
            *r = Reading {
                sys_before: ptp_time(&s.ts[2 * i]),
                phc: ptp_time(&s.ts[2 * i + 1]),
                sys_after: ptp_time(&s.ts[2 * i + 2]),
            };
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// `_IOC(dir, type, nr, size)` as `include/uapi/asm-generic/ioctl.h` builds it.
    const fn ioc(dir: u32, ty: u8, nr: u32, size: u32) -> u32 {
        (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr
    }
    const IOC_WRITE: u32 = 1;
    const IOC_READ: u32 = 2;
    const PTP_CLK_MAGIC: u8 = b'=';

    #[test]
    fn struct_layouts_match_the_kernel() {
        // Sizes from include/uapi/linux/ptp_clock.h (x86_64 and every other
        // Linux ABI: all fields are fixed-width, no implicit padding).
        assert_eq!(size_of::<libc::ptp_clock_time>(), 16);
        assert_eq!(size_of::<libc::ptp_clock_caps>(), 80);
        assert_eq!(offset_of!(libc::ptp_clock_caps, cross_timestamping), 24);
        assert_eq!(offset_of!(libc::ptp_clock_caps, max_phase_adj), 32);
        assert_eq!(size_of::<libc::ptp_sys_offset_precise>(), 64);
        assert_eq!(offset_of!(libc::ptp_sys_offset_precise, sys_realtime), 16);
        assert_eq!(offset_of!(libc::ptp_sys_offset_precise, sys_monoraw), 32);
        assert_eq!(size_of::<libc::ptp_sys_offset_extended>(), 16 + 25 * 3 * 16);
        assert_eq!(offset_of!(libc::ptp_sys_offset_extended, clockid), 4);
        assert_eq!(offset_of!(libc::ptp_sys_offset_extended, ts), 16);
        assert_eq!(size_of::<libc::ptp_sys_offset>(), 16 + 51 * 16);
        assert_eq!(offset_of!(libc::ptp_sys_offset, ts), 16);
        assert_eq!(libc::PTP_MAX_SAMPLES as usize, PTP_MAX_SAMPLES);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // PTP_CLOCK_GETCAPS      _IOR(PTP_CLK_MAGIC, 1, struct ptp_clock_caps)
        // PTP_SYS_OFFSET         _IOW(PTP_CLK_MAGIC, 5, struct ptp_sys_offset)
        // PTP_SYS_OFFSET_PRECISE _IOWR(PTP_CLK_MAGIC, 8, struct ptp_sys_offset_precise)
        // PTP_SYS_OFFSET_EXTENDED _IOWR(PTP_CLK_MAGIC, 9, struct ptp_sys_offset_extended)
        let getcaps = ioc(IOC_READ, PTP_CLK_MAGIC, 1, 80);
        let basic = ioc(IOC_WRITE, PTP_CLK_MAGIC, 5, 832);
        let precise = ioc(IOC_READ | IOC_WRITE, PTP_CLK_MAGIC, 8, 64);
        let extended = ioc(IOC_READ | IOC_WRITE, PTP_CLK_MAGIC, 9, 1216);
        assert_eq!(getcaps, 0x8050_3d01);
        assert_eq!(basic, 0x4340_3d05);
        assert_eq!(precise, 0xc040_3d08);
        assert_eq!(extended, 0xc4c0_3d09);
        assert_eq!(libc::PTP_CLOCK_GETCAPS as u32, getcaps);
        assert_eq!(libc::PTP_SYS_OFFSET as u32, basic);
        assert_eq!(libc::PTP_SYS_OFFSET_PRECISE as u32, precise);
        assert_eq!(libc::PTP_SYS_OFFSET_EXTENDED as u32, extended);
    }

    #[test]
    fn dynamic_clock_ids() {
        // FD_TO_CLOCKID(fd) = ((unsigned)~fd << 3) | 3
        assert_eq!(fd_to_clockid(3), -29);
        assert_eq!(fd_to_clockid(0), -5);
        assert_eq!(fd_to_clockid(1000), ((!1000u32 << 3) | 3) as i32);
        // CLOCKID_TO_FD(clk) = ~(clk >> 3) recovers the descriptor.
        for fd in [0, 3, 17, 65535] {
            assert_eq!(!(fd_to_clockid(fd) >> 3), fd);
            assert_eq!(
                fd_to_clockid(fd) & 7,
                3,
                "CPUCLOCK_PERTHREAD bit clear, CLOCKFD set"
            );
        }
    }

    #[test]
    fn paths() {
        assert_eq!(phc_path(0), PathBuf::from("/dev/ptp0"));
        assert_eq!(phc_path(12), PathBuf::from("/dev/ptp12"));
        let err = PhcFile::open_index(-1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no PTP hardware clock"), "{err}");
        let err = PhcFile::open("/nonexistent/ptp9").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ptp9"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_phc_refuses_the_ioctls() {
        let f = PhcFile::open("/dev/null").unwrap();
        assert_eq!(f.name(), "/dev/null");
        assert_eq!(f.caps().unwrap_err().raw_os_error(), Some(libc::ENOTTY));
        let mut out = [Reading::default(); 3];
        assert_eq!(
            f.offset_extended(&mut out).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            f.offset_basic(&mut out).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            f.offset_precise().unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        // Not a dynamic POSIX clock either.
        assert_eq!(
            f.read_time().unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        let err = super::super::PhcReader::new(f).unwrap_err();
        assert!(err.to_string().contains("/dev/null"), "{err}");
    }

    #[test]
    fn mismatched_argument_size_is_refused_before_the_kernel() {
        let f = PhcFile::open("/dev/null").unwrap();
        let mut small = 0u32;
        let err = f.ioctl(libc::PTP_CLOCK_GETCAPS, &mut small).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL)); // /dev/null itself would say ENOTTY
    }

    #[test]
    fn real_phc_if_present() {
        let Some(path) = (0..4).map(phc_path).find(|p| p.exists()) else {
            eprintln!("SKIP real_phc_if_present: no /dev/ptp0..3 on this machine");
            return;
        };
        let f = PhcFile::open(&path).unwrap();
        let caps = f.caps().unwrap();
        eprintln!("{}: {caps:?}", path.display());
        let t = f.read_time().unwrap();
        assert!(t.nsec < 1_000_000_000);
        let mut reader = super::super::PhcReader::new(f).unwrap();
        let m = reader.poll().unwrap();
        eprintln!("{}: method {}, {m:?}", path.display(), reader.method());
        assert!(m.uncertainty_ns < 10_000_000, "window under 20 ms");
    }
}
