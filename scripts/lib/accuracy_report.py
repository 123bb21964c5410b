#!/usr/bin/env python3
"""The report of scripts/accuracy.sh (see its header): per cell, per server and
mode, the client's offsets and delays with every sample counted and with
chrony's own filtering; hwntpd's server-side transmit-estimate error; one line
per goal; then a summary of every cell.

Usage: accuracy_report.py OUT SRV_IP SRV_IP2 TOLERANCE WARM_FAST WARM_SLOW SERVERS MODES
(SRV_IP is the basic-mode source, SRV_IP2 the interleaved one)."""
import datetime
import os
import re
import statistics
import sys

US = 1e6
LAG = "hwntpd_transmit_estimate_lag_seconds"


def measurements(path, warm_secs):
    """Samples per server address from chrony's measurements.log (columns:
    date, time, IP, leap, stratum, tests 1-3, tests 5-7, tests A-D, local
    poll, remote poll, score, offset, peak delay, ..., mode, TX/RX source),
    without those of the first warm_secs seconds."""
    rows = {}
    if not os.path.exists(path):
        return rows
    first = None
    for line in open(path):
        f = line.split()
        if len(f) < 18 or not re.match(r"\d{4}-\d\d-\d\d$", f[0]):
            continue
        try:
            t = datetime.datetime.strptime(f[0] + " " + f[1], "%Y-%m-%d %H:%M:%S")
            row = {"offset": float(f[11]), "delay": float(f[12]), "mode": f[17],
                   "good": f[7] == "1111"}
        except ValueError:
            continue
        first = first or t
        if (t - first).total_seconds() < warm_secs:
            continue
        rows.setdefault(f[2], []).append(row)
    return rows


def sourcestats(path):
    """Offset (s) per address from `chronyc -c sourcestats`."""
    d = {}
    if os.path.exists(path):
        for line in open(path):
            f = line.strip().split(",")
            if len(f) >= 8:
                try:
                    d[f[0]] = float(f[6])
                except ValueError:
                    pass
    return d


def lag_histogram(path):
    """(upper bound in s, cumulative count) of hwntpd's signed estimate error."""
    buckets = []
    if os.path.exists(path):
        for line in open(path):
            m = re.match(LAG + r'_bucket\{le="([^"]+)"\} (\d+)', line)
            if m:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                buckets.append((le, int(m.group(2))))
    return buckets


def counter(path, series):
    """The value of one series (name with labels) in a statistics file, or None."""
    if not os.path.exists(path):
        return None
    for line in open(path):
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def quantile(buckets, q):
    """Linear interpolation inside the histogram's buckets (in us); the
    open-ended first and last buckets give their bound, marked < or >."""
    total = buckets[-1][1]
    want = q * total
    prev_le, prev_c = None, 0
    for le, c in buckets:
        if c >= want and c > prev_c:
            if prev_le is None:
                return f"<={le * US:.1f}"
            if le == float("inf"):
                return f">{prev_le * US:.0f}"
            x = prev_le + (le - prev_le) * (want - prev_c) / (c - prev_c)
            return f"{x * US:.2f}"
        prev_le, prev_c = le, c
    return "-"


def stats(rows):
    if not rows:
        return None
    off = [r["offset"] * US for r in rows]
    dl = [r["delay"] * US for r in rows]
    good = [r["offset"] * US for r in rows if r["good"]]
    s = {"n": len(off), "median": statistics.median(off), "mean": statistics.fmean(off),
         "sd": statistics.stdev(off) if len(off) > 1 else 0.0,
         "medabs": statistics.median(abs(o) for o in off),
         "delay": statistics.median(dl), "mindelay": min(dl),
         "xleave": 100.0 * sum(r["mode"].endswith("I") for r in rows) / len(rows),
         "gn": len(good)}
    if good:
        s["gmedian"] = statistics.median(good)
        s["gmean"] = statistics.fmean(good)
        s["gsd"] = statistics.stdev(good) if len(good) > 1 else 0.0
    return s


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def main():
    out, ip1, ip2, tol, warm_fast, warm_slow, servers, modes = sys.argv[1:9]
    tol, servers, modes = float(tol), servers.split(), modes.split()
    warm = {"-6": int(warm_fast), "0": int(warm_slow)}
    cells = [c.split() for c in open(os.path.join(out, "cells.txt")) if c.strip()]
    summary = []
    failed = False

    def verdict(v):
        return "-" if v is None else ("PASS" if v else "FAIL")

    for i, (pin, rt, workers, poll, load) in enumerate(cells, 1):
        desc = (f"{'pinned' if pin == '1' else 'unpinned'}, "
                f"{'SCHED_FIFO' if rt == '1' else 'normal priority'}, "
                f"hwntpd --workers {workers}, poll 2^{poll} s, "
                f"{'idle' if load == '0' else f'{load} req/s background load'}")
        res, loads, lag, egress = {}, [], None, None
        for name in servers:
            d = os.path.join(out, f"cell{i}-{name}")
            m = measurements(os.path.join(d, "measurements.log"), warm[poll])
            ss = sourcestats(os.path.join(d, "sourcestats.csv"))
            for mode, ip in (("basic", ip1), ("xleave", ip2)):
                if mode not in modes:
                    continue
                s = stats(m.get(ip, []))
                if s is None:
                    failed = True
                else:
                    s["ss"] = ss.get(ip)
                res[(name, mode)] = s
            for w in ("start", "end"):
                p = os.path.join(d, f"loadavg.{w}")
                if os.path.exists(p):
                    loads.append(open(p).read().split()[0])
            if name == "hwntpd":
                lag = lag_histogram(os.path.join(d, "hwntpd.prom"))
                prom = os.path.join(d, "hwntpd.prom")
                written = counter(prom, 'hwntpd_egress_stamps_total{result="written"}')
                basic = counter(prom, 'hwntpd_replies_total{mode="basic"}')
                if written is not None and basic:
                    egress = 100.0 * written / basic
        print(f"\n== cell {i}/{len(cells)}: {desc}; load average {'/'.join(loads)}")
        print(f"{'':16}{'n':>6}{'median':>9}{'mean':>9}{'sd':>8}{'|med|':>8}{'delay':>8}"
              f"{'min dl':>8} | {'passed A-D: n':>13}{'median':>9}{'mean':>9}{'sd':>8}"
              f" | {'srcstats':>9}")
        for (name, mode), s in res.items():
            label = f"{name} {mode}"
            if s is None:
                print(f"{label:16} no samples")
                continue
            print(f"{label:16}{s['n']:>6}{s['median']:>9.2f}{s['mean']:>9.2f}{s['sd']:>8.2f}"
                  f"{s['medabs']:>8.2f}{s['delay']:>8.2f}{s['mindelay']:>8.2f} | "
                  f"{s['gn']:>13}{fmt(s.get('gmedian')):>9}{fmt(s.get('gmean')):>9}"
                  f"{fmt(s.get('gsd')):>8} | {fmt(s['ss'] * US if s['ss'] is not None else None):>9}")
            if mode == "xleave" and s["xleave"] < 50:
                print(f"  note: only {s['xleave']:.0f}% of these replies were interleaved")
        after = None
        if lag and lag[-1][1] > 0:
            total = lag[-1][1]
            neg = max((c for le, c in lag if le < 0), default=0)
            after = 100.0 * neg / total
            qs = " ".join(f"p{int(q * 100)} {quantile(lag, q)}"
                          for q in (0.01, 0.05, 0.10, 0.50, 0.90, 0.99))
            print(f"hwntpd transmit estimate, exact - estimate over {total} measured replies (us): "
                  f"{qs}; after the real transmit time: {after:.1f}%")
        if egress is not None:
            print(f"hwntpd basic replies whose transmit timestamp the egress program wrote: "
                  f"{egress:.1f}% (for those, the estimate above is only the fallback it checks)")
        hb, cb = res.get(("hwntpd", "basic")), res.get(("chronyd", "basic"))
        hx, cx = res.get(("hwntpd", "xleave")), res.get(("chronyd", "xleave"))
        row = {"cell": i, "desc": f"pin={pin} rt={rt} w={workers} poll={poll} load={load}",
               "after": after, "egress": egress, "basic": None, "xleave": None}
        if hb and cb:
            ok_med = abs(hb["median"]) < abs(cb["median"])
            ok_sd = hb["sd"] < cb["sd"]
            row["basic"] = ok_med and ok_sd
            row["b"] = (hb["median"], cb["median"], hb["sd"], cb["sd"])
            filt = ""
            if "gmedian" in hb and "gmedian" in cb:
                filt = (f"; chrony-filtered |median| {abs(hb['gmedian']):.2f} vs "
                        f"{abs(cb['gmedian']):.2f}, sd {hb['gsd']:.2f} vs {cb['gsd']:.2f}")
            print(f"goal basic (|median| and sd below chronyd's): "
                  f"{'PASS' if row['basic'] else 'FAIL'} - |median| {abs(hb['median']):.2f} vs "
                  f"{abs(cb['median']):.2f} us {'ok' if ok_med else 'FAIL'}, sd {hb['sd']:.2f} vs "
                  f"{cb['sd']:.2f} us {'ok' if ok_sd else 'FAIL'}; min delay {hb['mindelay']:.2f} vs "
                  f"{cb['mindelay']:.2f} us{filt}")
        else:
            print("goal basic: NOT MEASURED")
        if hx and cx:
            row["xleave"] = hx["medabs"] <= cx["medabs"] * (1 + tol)
            row["x"] = (hx["medabs"], cx["medabs"], hx["sd"], cx["sd"])
            print(f"goal xleave (median |offset| <= chronyd's x {1 + tol:.2f}): "
                  f"{'PASS' if row['xleave'] else 'FAIL'} - {hx['medabs']:.2f} vs "
                  f"{cx['medabs']:.2f} us; sd {hx['sd']:.2f} vs {cx['sd']:.2f} us")
        else:
            print("goal xleave: NOT MEASURED")
        summary.append(row)

    print("\n== summary (offsets in us; basic: hwntpd/chronyd median and sd, all samples;"
          " xleave: median |offset|; after: hwntpd's pre-send estimates after the real transmit"
          " time; egress: basic replies stamped at egress instead, which carry no estimate)")
    print(f"{'cell':>4} {'setup':38} {'basic median':>15} {'basic sd':>13} {'goal':>5}"
          f" {'xleave |med|':>13} {'goal':>5} {'after':>6} {'egress':>7}")
    for r in summary:
        b = r.get("b")
        x = r.get("x")
        after_s = "-" if r["after"] is None else f"{r['after']:.1f}%"
        egress_s = "-" if r["egress"] is None else f"{r['egress']:.0f}%"
        print(f"{r['cell']:>4} {r['desc']:38} "
              f"{(f'{b[0]:.2f}/{b[1]:.2f}' if b else '-'):>15} "
              f"{(f'{b[2]:.2f}/{b[3]:.2f}' if b else '-'):>13} {verdict(r['basic']):>5} "
              f"{(f'{x[0]:.2f}/{x[1]:.2f}' if x else '-'):>13} {verdict(r['xleave']):>5} "
              f"{after_s:>6} {egress_s:>7}")
    nb = sum(1 for r in summary if r["basic"])
    nx = sum(1 for r in summary if r["xleave"])
    print(f"basic goal held in {nb}/{len(summary)} cells, xleave goal in {nx}/{len(summary)}")
    print(f"raw results: {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
