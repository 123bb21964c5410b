#!/usr/bin/env python3
"""ntp_poll.py: poll one NTP server over several client flows, one line per request.

Used by scripts/anycast-test.sh from a client namespace. Each flow is its own UDP
socket (its own source port, so an ECMP router with a layer-4 hash may send each
flow to a different node). Every flow sends a mode-3 request each INTERVAL seconds
and waits up to TIMEOUT for the reply that echoes its transmit timestamp.

Output (flushed per line), one per request, by send time (CLOCK_REALTIME seconds):
    SENT_AT FLOW reply STRATUM LI
    SENT_AT FLOW lost
Bounded: stops after DURATION seconds or when the file STOP exists.

Usage: ntp_poll.py SERVER_IP PORT FLOWS INTERVAL TIMEOUT DURATION STOPFILE
"""
import os
import select
import socket
import struct
import sys
import time


def main():
    server, port = sys.argv[1], int(sys.argv[2])
    flows, interval, timeout = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    duration, stopfile = float(sys.argv[6]), sys.argv[7]
    socks = []
    for _ in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.connect((server, port))
        s.setblocking(False)
        socks.append(s)
    out = sys.stdout
    end = time.monotonic() + duration
    # Spread the flows over the interval.
    next_send = [time.monotonic() + interval * i / flows for i in range(flows)]
    pending = [None] * flows  # (sent_at_wall, deadline_mono, xmt_bytes)
    while time.monotonic() < end and not os.path.exists(stopfile):
        now = time.monotonic()
        for i, s in enumerate(socks):
            p = pending[i]
            if p is not None and now >= p[1]:
                out.write("%.3f %d lost\n" % (p[0], i))
                pending[i] = None
            if pending[i] is None and now >= next_send[i]:
                next_send[i] += interval
                if next_send[i] < now:
                    next_send[i] = now + interval
                wall = time.time()
                xmt = struct.pack("!Q", int((wall + 2208988800) * (1 << 32)) & ((1 << 64) - 1))
                req = bytes([(4 << 3) | 3]) + bytes(39) + xmt
                try:
                    s.send(req)
                except OSError:
                    out.write("%.3f %d lost\n" % (wall, i))
                    continue
                pending[i] = (wall, now + timeout, xmt)
        out.flush()
        wait = min([p[1] for p in pending if p] + next_send) - time.monotonic()
        r, _, _ = select.select(socks, [], [], max(0.0, min(wait, 0.05)))
        for s in r:
            i = socks.index(s)
            while True:
                try:
                    data = s.recv(512)
                except (BlockingIOError, ConnectionRefusedError, OSError):
                    break
                p = pending[i]
                if p is None or len(data) < 48 or data[24:32] != p[2]:
                    continue  # stale or foreign
                li, stratum = data[0] >> 6, data[1]
                out.write("%.3f %d reply %d %d\n" % (p[0], i, stratum, li))
                pending[i] = None
    out.flush()


if __name__ == "__main__":
    main()
