#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

The seeds are committed; run this again only after changing it (or an input
layout of a target). Layouts (see each target's doc comment):
  respond: 64 octets of context, then the request;
  recvmsg: io_uring_recvmsg_out (4 x u32), 28 octets of name, 256 of
           control, then the payload;
  cmsg:    control data (struct cmsghdr + data, 8-aligned, x86_64/aarch64);
  config:  arguments separated by newlines;
  policy:  lines: "allow CIDR" / "deny CIDR" rules, rate-limit values.
Native byte order is little-endian (x86_64, aarch64), as the fixtures of
src/net/cmsg.rs assume.
"""
import os
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# Linux UAPI values (the same as src/net/cmsg.rs)
SOL_SOCKET, SOL_IP, SOL_IPV6 = 1, 0, 41
IP_PKTINFO, IP_RECVERR = 8, 11
IPV6_PKTINFO, IPV6_RECVERR = 50, 25
SO_TIMESTAMPING_OLD, SO_TIMESTAMPING_NEW = 37, 65
SO_TIMESTAMPNS_OLD = 35
SCM_TIMESTAMPING_PKTINFO = 58
SCM_TS_OPT_ID = 81
ENOMSG, ECONNREFUSED = 42, 111
SO_EE_ORIGIN_TIMESTAMPING = 4


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------
# NTP packets

def ntp(version, mode, *, leap=0, stratum=0, poll=6, precision=-20, refid=b"\0\0\0\0",
        reference=0, origin=0, receive=0, transmit=0x0123456789ABCDEF):
    return struct.pack(">BBbbII4sQQQQ", (leap << 6) | (version << 3) | mode, stratum, poll,
                       precision, 0, 0, refid, reference, origin, receive, transmit)


def ext(ftype, value):
    """An RFC 7822 extension field, padded to a multiple of 4 (minimum 16)."""
    body = value + b"\0" * ((-len(value)) % 4)
    length = max(16, 4 + len(body))
    body += b"\0" * (length - 4 - len(body))
    return struct.pack(">HH", ftype, length) + body


def ctx(*, kind=0, admission=0, interleave=True, lookup=False, serve_unsync=True, leap=0,
        stratum=1, min_poll=4, max_poll=17, precision=-23, out_len=64, port=40000,
        addr=bytes([192, 0, 2, 1]) + bytes(12), receive=0xE1000000_10000000,
        transmit=0xE1000000_20000001, value=0xE0FF0000_00010000, root_delay=0,
        root_disp=0x10, refid=b"LOCL"):
    flags = int(interleave) | (int(lookup) << 1) | (int(serve_unsync) << 2)
    c = struct.pack("<BBBBBbbbH", kind, admission, flags, leap, stratum, min_poll, max_poll,
                    precision, out_len)
    c += struct.pack(">H", port) + addr
    c += struct.pack("<QQQII", receive, transmit, value, root_delay, root_disp) + refid
    assert len(c) == 64, len(c)
    return c


def respond_seeds():
    v6 = bytes.fromhex("20010db8000000000000000000000123")
    seeds = {
        "v4-client": ctx() + ntp(4, 3),
        "v3-client": ctx() + ntp(3, 3),
        "v2-client": ctx() + ntp(2, 3),
        "v1-mode0": ctx() + ntp(1, 0),
        "v4-client-ipv6": ctx(kind=1, addr=v6) + ntp(4, 3),
        "v4-client-mapped": ctx(kind=2) + ntp(4, 3),
        "v4-origin-zero-rfc9109": ctx() + ntp(4, 3, transmit=0x1122334455667788),
        # Interleaved follow-up: origin = the odd receive timestamp served before.
        "v4-interleaved": ctx(lookup=True) + ntp(4, 3, origin=0xE0FF0000_00000011,
                                                  receive=0x7777, transmit=0x8888),
        "v4-interleaved-inexact": ctx(lookup=True, value=0xE0FF0000_00010001)
        + ntp(4, 3, origin=0xE0FF0000_00000011, receive=0x7777, transmit=0x8888),
        "v4-ext-field": ctx() + ntp(4, 3) + ext(0x0104, b"\x42" * 32),
        "v4-nts-like": ctx() + ntp(4, 3) + ext(0x0104, b"\x01" * 32) + ext(0x0204, b"\x02" * 100)
        + ext(0x0404, b"\x03" * 36),
        "v4-ext-then-mac": ctx() + ntp(4, 3) + ext(0x0104, b"\x42" * 16)
        + struct.pack(">I", 7) + b"\xaa" * 16,
        "v4-md5-mac": ctx() + ntp(4, 3) + struct.pack(">I", 1) + b"\x55" * 16,
        "v3-sha1-mac": ctx() + ntp(3, 3) + struct.pack(">I", 2) + b"\x66" * 20,
        "v4-crypto-nak": ctx() + ntp(4, 3) + b"\0\0\0\0",
        "v4-bad-ext-len": ctx() + ntp(4, 3) + struct.pack(">HH", 0x0104, 13) + b"\0" * 12,
        "v3-trailing-garbage": ctx() + ntp(3, 3) + b"\x01\x02\x03",
        "kod-rate-admission": ctx(admission=1) + ntp(4, 3, poll=3),
        "kod-deny-admission": ctx(admission=2) + ntp(4, 3),
        "rate-limited": ctx(admission=4) + ntp(4, 3),
        "unsync-drop": ctx(leap=3, stratum=16, serve_unsync=False) + ntp(4, 3),
        "unsync-serve": ctx(leap=3, stratum=16) + ntp(4, 3),
        "small-out-buffer": ctx(out_len=47) + ntp(4, 3),
        # What the server must not answer.
        "received-kod-rate": ctx() + ntp(4, 4, leap=3, stratum=0, refid=b"RATE"),
        "mode1-symmetric": ctx() + ntp(4, 1),
        "mode5-broadcast": ctx() + ntp(4, 5),
        "mode6-readvar": ctx() + struct.pack(">BBHHHHH", (2 << 3) | 6, 2, 1, 0, 0, 0, 0),
        "mode7-monlist": ctx() + bytes([0x17, 0x00, 0x03, 0x2A]) + bytes(4),
        "version5": ctx() + ntp(5, 3),
        "bad-source-port0": ctx(port=0) + ntp(4, 3),
        "bad-source-broadcast": ctx(addr=bytes([255] * 4) + bytes(12)) + ntp(4, 3),
        "short-47": ctx() + ntp(4, 3)[:47],
    }
    for name, data in seeds.items():
        write("respond", name, data)


# --------------------------------------------------------------------------
# Control messages (native layout of x86_64 / aarch64: 8-octet size_t)

def cmsg(level, kind, data):
    c = struct.pack("<Qii", 16 + len(data), level, kind) + data
    return c + b"\0" * ((-len(c)) % 8)


def timespecs(ts, size=8):
    fmt = "<qq" if size == 8 else "<ii"
    return b"".join(struct.pack(fmt, s, n) for s, n in ts)


def ee(errno, origin, info, data):
    return struct.pack("<IBBBBII", errno, origin, 0, 0, 0, info, data) + bytes(16)


def cmsg_fixtures():
    v6 = bytes.fromhex("20010db8000000000000000000000123")
    return {
        "sw-stamp": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                         timespecs([(1_700_000_000, 5), (0, 0), (0, 0)])),
        "hw-stamp": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                         timespecs([(0, 0), (0, 0), (1_700_000_037, 999_999_999)])),
        "both-new-type": cmsg(SOL_SOCKET, SO_TIMESTAMPING_NEW,
                              timespecs([(10, 20), (77, 77), (30, 40)])),
        "timestampns": cmsg(SOL_SOCKET, SO_TIMESTAMPNS_OLD, timespecs([(1_700_000_000, 7)])),
        "bad-nanos": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                          timespecs([(10, 1_000_000_000), (0, 0), (30, -1)])),
        "pktinfo-v4": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                           timespecs([(1_700_000_000, 123_456_789), (0, 0), (0, 0)]))
        + cmsg(SOL_IP, IP_PKTINFO, bytes([3, 0, 0, 0, 192, 0, 2, 1, 192, 0, 2, 7])),
        "pktinfo-v6-hw-tspktinfo": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                                        timespecs([(1, 2), (0, 0), (3, 4)]))
        + cmsg(SOL_SOCKET, SCM_TIMESTAMPING_PKTINFO, struct.pack("<IIII", 5, 90, 0, 0))
        + cmsg(SOL_IPV6, IPV6_PKTINFO, v6 + struct.pack("<I", 7)),
        "pktinfo-v6-link-local": cmsg(SOL_IPV6, IPV6_PKTINFO,
                                      bytes.fromhex("fe800000000000000000000000000001")
                                      + struct.pack("<I", 9)),
        "errqueue-sw": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                            timespecs([(1_700_000_001, 42), (0, 0), (0, 0)]))
        + cmsg(SOL_IP, IP_RECVERR, ee(ENOMSG, SO_EE_ORIGIN_TIMESTAMPING, 0, 0xDEADBEEF)),
        "errqueue-hw-v6": cmsg(SOL_IPV6, IPV6_RECVERR,
                               ee(ENOMSG, SO_EE_ORIGIN_TIMESTAMPING, 0, 7))
        + cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD, timespecs([(100, 1), (0, 0), (137, 2)])),
        "errqueue-icmp": cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD,
                              timespecs([(100, 1), (0, 0), (0, 0)]))
        + cmsg(SOL_IP, IP_RECVERR, ee(ECONNREFUSED, 2, 0, 0)),
        "reply-control": cmsg(SOL_IPV6, IPV6_PKTINFO, bytes(15) + b"\x01" + struct.pack("<I", 1))
        + cmsg(SOL_SOCKET, SO_TIMESTAMPING_OLD, struct.pack("<I", 3))
        + cmsg(SOL_SOCKET, SCM_TS_OPT_ID, struct.pack("<I", 0x01020304)),
        "short-len": struct.pack("<Qii", 3, 0, 0) + bytes(48),
        "huge-len": struct.pack("<Qii", 2**64 - 1, SOL_SOCKET, SO_TIMESTAMPING_OLD) + bytes(48),
    }


def cmsg_seeds():
    for name, data in cmsg_fixtures().items():
        write("cmsg", name, data)
    # io_uring TX timestamp completion: result (key), flags (hardware bit 16,
    # type from bit 17), then the io_timespec, as the first 24 octets.
    write("cmsg", "uring-txts-hw",
          struct.pack("<iIQQ", 77, (1 << 16) | (0 << 17), 1_700_000_000, 999_999_999))
    write("cmsg", "uring-txts-error", struct.pack("<iIQQ", -11, 0, 0, 0))


def recvmsg_out(name, control, payload, *, flags=0, payload_len=None):
    hdr = struct.pack("<IIII", len(name), len(control),
                      len(payload) if payload_len is None else payload_len, flags)
    return (hdr + name + bytes(28 - len(name)) + control + bytes(256 - len(control))
            + payload)


def sockaddr_in(ip, port):
    return struct.pack("<H", 2) + struct.pack(">H", port) + bytes(ip) + bytes(8)


def sockaddr_in6(ip, port, flow=0, scope=0):
    return struct.pack("<H", 10) + struct.pack(">HI", port, flow) + ip + struct.pack("<I", scope)


def recvmsg_seeds():
    fx = cmsg_fixtures()
    v4 = sockaddr_in([192, 0, 2, 7], 40000)
    v6 = sockaddr_in6(bytes.fromhex("20010db8000000000000000000000007"), 40001, 0xABCDE, 0)
    ll = sockaddr_in6(bytes.fromhex("fe800000000000000000000000000007"), 123, 0, 3)
    req = ntp(4, 3)
    seeds = {
        "v4-sw-pktinfo": recvmsg_out(v4, fx["pktinfo-v4"], req),
        "v6-hw-tspktinfo": recvmsg_out(v6, fx["pktinfo-v6-hw-tspktinfo"], req),
        "v6-link-local": recvmsg_out(ll, fx["pktinfo-v6-link-local"], ntp(3, 3)),
        "v4-no-control": recvmsg_out(v4, b"", ntp(1, 0)),
        "v4-ext-fields": recvmsg_out(v4, fx["sw-stamp"], req + ext(0x0104, b"\x11" * 28)),
        "v4-interleaved": recvmsg_out(v4, fx["hw-stamp"],
                                      ntp(4, 3, origin=0xE0FF0000_00000011, receive=0x7777,
                                          transmit=0x8888)),
        "truncated-payload": recvmsg_out(v4, fx["sw-stamp"], req, flags=0x20,
                                         payload_len=5000),
        "ctrunc": recvmsg_out(v4, fx["sw-stamp"], req, flags=0x08),
        "mode7-monlist": recvmsg_out(v4, b"", bytes([0x17, 0x00, 0x03, 0x2A]) + bytes(4)),
        "unix-family": recvmsg_out(struct.pack("<H", 1) + b"/tmp/x\0", b"", req),
    }
    for name, data in seeds.items():
        write("recvmsg", name, data)


def config_seeds():
    seeds = {
        "defaults": "",
        "listen-two": "--listen\n127.0.0.1:1123\n--listen\n[::1]:1123",
        "cpus": "--workers\n4\n--cpus\n0,2,4-6",
        "reference-ntp": "--reference\nntp:127.0.0.1:11123\n--utc-offset\n-1",
        "reference-ntp-v6": "--reference=ntp:::1\n--stratum\n2\n--refid\n192.0.2.1",
        "reference-phc": "--reference\nphc\n--phc\n/dev/ptp0\n--interface\neth0\n"
                         "--timestamping\nhardware\n--rx-comp\n-20\n--tx-comp\n35",
        "refid-ascii": "--reference\nlocal\n--refid\nGPS\n--on-unsync\ndrop",
        "tuning": "--interleave-entries\n0\n--send-latency-comp\noff\n--recv-buffer\n0\n"
                  "--batch-wait-us\n50\n--stats-interval\n10\n--log-level\ndebug",
        "bad-stratum": "--stratum\n16",
        "cpu-list-only": "0-3,8,10-11",
    }
    for name, text in seeds.items():
        write("config", name, text.encode())
    write("config", "refid-stratum2-v6", bytes([2]) + b"[2001:db8::1]")
    write("config", "refid-stratum1", bytes([1]) + b"PPS")


def policy_seeds():
    seeds = {
        "allow-deny-v4": "allow 10.0.0.0/8\ndeny 10.1.0.0/16\nallow 10.1.2.3\n",
        "deny-only": "deny 192.0.2.0/24\ndeny 198.51.100.7/32\n",
        "v6-and-mapped": "allow 2001:db8::/32\ndeny 2001:db8:1::/48\n"
                         "deny ::ffff:192.0.2.0/120\nallow ::ffff:0:0/96\n",
        "same-prefix-tie": "allow 203.0.113.0/24\ndeny 203.0.113.0/24\n",
        "everything": "allow 0.0.0.0/0\ndeny ::/0\nallow fe80::/10\n",
        "host-bits": "allow 10.9.8.7/8\nallow 2001:db8::1/64\n",
        "bad-lines": "allow 10.0.0.0/33\ndeny ::/129\npermit 1.2.3.4\nallow\nallow x\n",
        "rate-values": "3\n-4\n12\n-5\n13\n8\n1\n255\n0\n2\n4\n5\n",
    }
    for name, text in seeds.items():
        write("policy", name, text.encode())


def main():
    targets = sys.argv[1:] or ["respond", "recvmsg", "cmsg", "config", "policy"]
    for t in targets:
        globals()[t + "_seeds"]()


if __name__ == "__main__":
    main()
