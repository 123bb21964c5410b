#!/usr/bin/env bash
# Accuracy comparison: hwntpd and chronyd as servers, measured by a chronyd
# client, with and without interleaved mode (xleave).
#
# A server network namespace and a client network namespace are joined by a
# veth pair (198.18.1.0/30, the RFC 2544 benchmarking range, existing only in
# the namespaces this script creates). The server (hwntpd, then chronyd) runs
# pinned to SERVER_CPU, the client chronyd (-x: it never touches the clock)
# pinned to CLIENT_CPU, polling every 1/64 s (minpoll -6 maxpoll -6). Both
# namespaces read the same CLOCK_REALTIME, so the true offset is 0 and every
# measured offset is an error.
#
# Four runs of ACC_SECONDS each, by default in this order: hwntpd basic,
# chronyd basic, hwntpd xleave, chronyd xleave (the two runs compared with each
# other are next to each other in time, so a change in the load of a shared
# machine biases them less). The client polls with `noselect`: with -x chronyd
# still steers a virtual clock toward a selected source, which would hide part
# of the server's error; a never-selected source leaves the client's clock the
# raw CLOCK_REALTIME. From chrony's measurement log
# (after dropping the first ACC_WARMUP samples) it prints offset mean, median
# and standard deviation, median |offset|, RMS error, median delay and the
# fraction of interleaved replies, next to `chronyc ntpdata` / `sourcestats`,
# then one verdict line per goal:
#   1. hwntpd's interleaved offset error is no worse than chronyd's
#      (median |offset| within ACC_TOLERANCE of chronyd's);
#   2. hwntpd's basic-mode offset error is smaller than chronyd's.
# The verdicts are reported, not enforced: the exit status is non-zero only
# when something could not be set up or a run produced no samples.
#
# Needs root (namespaces). Bounded in time: about 4 x (ACC_SECONDS + 3) s after
# the build. Environment knobs:
#   ACC_SECONDS      seconds of polling per run                 default 30
#   ACC_WARMUP       samples dropped at the start of each run   default 10
#   ACC_RUNS         runs, in order, as SERVER:MODE             default
#                    "hwntpd:basic chronyd:basic hwntpd:xleave chronyd:xleave"
#   ACC_ROUNDS       repeat the whole list of runs this many times and pool
#                    the samples (e.g. ACC_ROUNDS=3 ACC_SECONDS=10: the same
#                    time, less exposed to load changes)        default 1
#   ACC_TOLERANCE    relative slack for goal 1                  default 0.10
#   ACC_SERVER_CPU, ACC_CLIENT_CPU  cores                       default 1, 0
#   ACC_RT=1         run server and client as SCHED_FIFO (chrt -f 10)
#   ACC_BUILD=0      skip `cargo build --release`
#   ACC_OUT          result directory          default target/accuracy/<time>
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
SECS=${ACC_SECONDS:-30}
WARMUP=${ACC_WARMUP:-10}
RUNS=${ACC_RUNS:-"hwntpd:basic chronyd:basic hwntpd:xleave chronyd:xleave"}
TOL=${ACC_TOLERANCE:-0.10}
ROUNDS=${ACC_ROUNDS:-1}
SERVER_CPU=${ACC_SERVER_CPU:-1}
CLIENT_CPU=${ACC_CLIENT_CPU:-0}
RT=${ACC_RT:-0}
BUILD=${ACC_BUILD:-1}
OUT=${ACC_OUT:-$ROOT/target/accuracy/$(date +%Y%m%d-%H%M%S)}

HWNTPD=$ROOT/target/release/hwntpd
netns_names hwacc hwa 198.18.1
SRV_PID=
CLI_PID=
SLEEP_PID=
SOCKDIR=



# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    [ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
    stop_pid "$CLI_PID"
    stop_pid "$SRV_PID"
    remove_veth_pair "$NS_SRV" "$NS_CLI"
    [ -n "$SOCKDIR" ] && rm -rf "$SOCKDIR"
    return 0
}
trap_cleanup cleanup

# --- checks and tools -------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
case $SECS in ''|*[!0-9]*) die "ACC_SECONDS must be a whole number of seconds" ;; esac
case $WARMUP in ''|*[!0-9]*) die "ACC_WARMUP must be a whole number of samples" ;; esac
case $ROUNDS in ''|0|*[!0-9]*) die "ACC_ROUNDS must be a positive whole number" ;; esac
[ "$ROUNDS" -le 20 ] || die "ACC_ROUNDS must be at most 20"
if [ "$SECS" -lt 5 ] || [ "$SECS" -gt 600 ]; then die "ACC_SECONDS must be 5..600"; fi
for run in $RUNS; do
    case $run in hwntpd:basic|hwntpd:xleave|chronyd:basic|chronyd:xleave) ;;
    *) die "unknown run '$run' in ACC_RUNS (SERVER:MODE, hwntpd|chronyd : basic|xleave)" ;;
    esac
done
require_tools ip taskset python3 timeout
[ "$(nproc)" -ge 2 ] || log "only $(nproc) core(s): server and client will share one"

have_or_install chrony chronyd chronyc || die "cannot install chrony"
CHRONYD=$(command -v chronyd)
CHRONYC=$(command -v chronyc)
log "$("$CHRONYD" --version | head -n1)"

if [ "$BUILD" = 1 ]; then
    log "building hwntpd (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin hwntpd) || die "cannot build hwntpd"
fi
case " $RUNS " in *" hwntpd:"*) [ -x "$HWNTPD" ] || die "$HWNTPD missing (run with ACC_BUILD=1)" ;; esac
mkdir -p "$OUT"
# chronyd wants its command socket directory private (0700/0750); a short
# path under /tmp also keeps the socket name below the 108-byte limit.
SOCKDIR=$(mktemp -d /tmp/hwacc.XXXXXX)
chmod 0700 "$SOCKDIR"
log "results in $OUT"

# --- namespaces -------------------------------------------------------------
make_veth_pair "$NS_SRV" "$NS_CLI" "$VETH_SRV" "$VETH_CLI" "$SRV_IP" "$CLI_IP"

# Both run in the background (`in_srv ... &`): exec, so that $! is the
# daemon's own pid (ip netns exec, taskset and chrt exec in turn).
PRIO=()
[ "$RT" = 1 ] && PRIO=(chrt -f 10)
in_srv() { exec ip netns exec "$NS_SRV" taskset -c "$SERVER_CPU" "${PRIO[@]}" "$@"; }
in_cli() { exec ip netns exec "$NS_CLI" taskset -c "$CLIENT_CPU" "${PRIO[@]}" "$@"; }

# start_server NAME DIR: sets SRV_PID.
start_server() {
    local name=$1 dir=$2
    case $name in
    hwntpd)
        in_srv "$HWNTPD" --listen "$SRV_IP:$PORT" --reference local --workers 1 \
            --stats-file "$dir/hwntpd.prom" --stats-interval 1 >"$dir/server.log" 2>&1 &
        SRV_PID=$!
        ;;
    chronyd)
        # A stratum-1 server on its own clock. No clock control (-x); no rate
        # limit (ratelimit is off unless configured); the client log stays on
        # (the default), which chronyd needs to answer in interleaved mode.
        chrony_server_conf "$SRV_IP" "$PORT" "$SOCKDIR/server.pid" >"$dir/server.conf"
        in_srv "$CHRONYD" -x -d -u root -f "$dir/server.conf" >"$dir/server.log" 2>&1 &
        SRV_PID=$!
        ;;
    esac
    sleep 1
    kill -0 "$SRV_PID" 2>/dev/null || { wait "$SRV_PID" 2>/dev/null || true; SRV_PID=
        cat "$dir/server.log" >&2; die "$name did not start (see $dir/server.log)"; }
}

# start_client MODE DIR: sets CLI_PID.
start_client() {
    local mode=$1 dir=$2 xleave=
    [ "$mode" = xleave ] && xleave=xleave
    rm -f "$SOCKDIR/client.sock" "$SOCKDIR/client.pid"
    cat >"$dir/client.conf" <<EOF
server $SRV_IP port $PORT minpoll -6 maxpoll -6 noselect $xleave
port 0
cmdport 0
bindcmdaddress $SOCKDIR/client.sock
pidfile $SOCKDIR/client.pid
logdir $dir
log measurements
EOF
    in_cli "$CHRONYD" -x -d -u root -f "$dir/client.conf" >"$dir/client.log" 2>&1 &
    CLI_PID=$!
}

chronyc_cli() { # a chronyc command to the client, bounded in time
    timeout 10 ip netns exec "$NS_CLI" "$CHRONYC" -n -h "$SOCKDIR/client.sock" "$@"
}

failed=0
for round in $(seq 1 "$ROUNDS"); do
for run in $RUNS; do
    name=${run%%:*} mode=${run#*:}
    dir=$OUT/$name-$mode-r$round
    mkdir -p "$dir"
    log "round $round/$ROUNDS: $name $mode, ${SECS}s"
    start_server "$name" "$dir"
    start_client "$mode" "$dir"
    # `wait` returns at once on a signal (a foreground sleep would delay the trap).
    sleep "$SECS" & SLEEP_PID=$!
    wait "$SLEEP_PID"; SLEEP_PID=
    if ! kill -0 "$CLI_PID" 2>/dev/null; then
        cat "$dir/client.log" >&2
        die "client chronyd exited early (see $dir/client.log)"
    fi
    chronyc_cli ntpdata >"$dir/ntpdata.txt" 2>&1 || log "chronyc ntpdata failed (see $dir/ntpdata.txt)"
    chronyc_cli sourcestats >"$dir/sourcestats.txt" 2>&1 || log "chronyc sourcestats failed"
    chronyc_cli -c sourcestats >"$dir/sourcestats.csv" 2>&1 || true
    stop_pid "$CLI_PID"; CLI_PID=
    stop_pid "$SRV_PID"; SRV_PID=
    if ! grep -q '^[0-9]' "$dir/measurements.log" 2>/dev/null; then
        log "$name $mode: no measurements (see $dir/client.log, $dir/server.log)"
        failed=1
    fi
done
done

# --- report -----------------------------------------------------------------
python3 - "$OUT" "$RUNS" "$WARMUP" "$TOL" "$SECS" "$ROUNDS" <<'PY' || failed=1
import math, os, re, statistics, sys

out, runs, warmup, tol, secs, rounds = (sys.argv[1], sys.argv[2].split(), int(sys.argv[3]),
                                        float(sys.argv[4]), sys.argv[5], int(sys.argv[6]))

def measurements(path):
    """Samples from chrony's measurements.log: columns are date, time, IP, leap,
    stratum, tests 1-3, tests 5-7, tests A-D, local poll, remote poll, score,
    offset, peak delay, peak dispersion, root delay, root dispersion, refid,
    mode (4B basic / 4I interleaved), TX and RX timestamp source."""
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        f = line.split()
        if len(f) < 18 or not re.match(r"\d{4}-\d\d-\d\d$", f[0]):
            continue
        try:
            rows.append({"offset": float(f[11]), "delay": float(f[12]), "mode": f[17],
                         "good": f[7] == "1111",
                         "ts": " ".join(f[18:20])})
        except ValueError:
            continue
    return rows

def ntpdata(path):
    d = {}
    if os.path.exists(path):
        for line in open(path):
            if ":" in line:
                k, v = line.split(":", 1)
                d[k.strip()] = v.strip()
    return d

def sourcestats(path):
    """Offset and Std Dev (seconds) from `chronyc -c sourcestats`: name, NP,
    NR, span, frequency, skew, offset, std dev."""
    if os.path.exists(path):
        for line in open(path):
            f = line.strip().split(",")
            if len(f) >= 8:
                try:
                    return float(f[6]), float(f[7]), int(f[1])
                except ValueError:
                    pass
    return None

def hwntpd_stats(path):
    """hwntpd's Prometheus stats file, names without the hwntpd_ prefix."""
    d = {}
    if os.path.exists(path):
        for line in open(path):
            f = line.split()
            if len(f) == 2 and f[0].startswith("hwntpd_"):
                try:
                    d[f[0][len("hwntpd_"):]] = float(f[1])
                except ValueError:
                    pass
    return d

def secs_field(v):
    m = re.match(r"([-+0-9.eE]+) seconds", v or "")
    return float(m.group(1)) if m else None

US = 1e6
res = {}
for run in runs:
    name, mode = run.split(":")
    dirs = [os.path.join(out, f"{name}-{mode}-r{i}") for i in range(1, rounds + 1)]
    total, rows = 0, []
    for d in dirs:  # pool the rounds, each without its warm-up
        m = measurements(os.path.join(d, "measurements.log"))
        total += len(m)
        rows += m[warmup:]
    d = dirs[-1]  # chronyc and hwntpd stats: the last round
    r = {"label": f"{name} {mode}", "total": total, "n": len(rows)}
    if rows:
        off = [x["offset"] for x in rows]
        r["mean"] = statistics.fmean(off) * US
        r["median"] = statistics.median(off) * US
        r["sd"] = (statistics.stdev(off) if len(off) > 1 else 0.0) * US
        r["medabs"] = statistics.median(abs(o) for o in off) * US
        r["rms"] = math.sqrt(statistics.fmean(o * o for o in off)) * US
        r["maxabs"] = max(abs(o) for o in off) * US
        r["delay"] = statistics.median(x["delay"] for x in rows) * US
        r["xleave"] = 100.0 * sum(x["mode"].endswith("I") for x in rows) / len(rows)
        good = [abs(x["offset"]) for x in rows if x["good"]]
        r["good"] = 100.0 * len(good) / len(rows)
        r["goodabs"] = statistics.median(good) * US if good else None
        ts = sorted({x["ts"] for x in rows})
        r["ts"] = ",".join(t.replace(" ", "/") for t in ts)
    nd = ntpdata(os.path.join(d, "ntpdata.txt"))
    r["nd_xleave"] = nd.get("Interleaved", "-")
    r["nd_offset"] = secs_field(nd.get("Offset"))
    r["nd_delay"] = secs_field(nd.get("Peer delay"))
    r["nd_resp"] = secs_field(nd.get("Response time"))
    r["nd_rx"] = f'{nd.get("Total valid RX", "-")}/{nd.get("Total TX", "-")}'
    prom = hwntpd_stats(os.path.join(d, "hwntpd.prom"))
    if prom:
        g = lambda k: int(prom.get(k, 0))
        basic, inter = g('replies_total{mode="basic"}'), g('replies_total{mode="interleaved"}')
        txts = g('tx_timestamps_total{source="kernel"}') + g('tx_timestamps_total{source="hardware"}')
        miss = g("tx_timestamp_misses_total") + g("tx_timestamp_late_total")
        r["srv"] = f"{basic}/{inter}/{txts}/{miss}"
    ss = sourcestats(os.path.join(d, "sourcestats.csv"))
    r["ss_offset"], r["ss_sd"] = (ss[0] * US, ss[1] * US) if ss else (None, None)
    res[run] = r

# Columns: each mode's pair side by side.
order = [r for m in ("basic", "xleave") for s in ("hwntpd", "chronyd")
         if (r := f"{s}:{m}") in res] + [r for r in runs if r.split(":")[1] not in ("basic", "xleave")]
cols = [res[r] for r in order]

def cell(r, key, spec=".3f", scale=1.0):
    v = r.get(key)
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v * scale, spec)

lines = [
    ("samples used (of logged)", lambda r: f'{r["n"]} ({r["total"]})'),
    ("interleaved replies %", lambda r: cell(r, "xleave", ".1f")),
    ("TX/RX timestamps (client)", lambda r: cell(r, "ts")),
    ("offset mean us", lambda r: cell(r, "mean")),
    ("offset median us", lambda r: cell(r, "median")),
    ("offset std dev us", lambda r: cell(r, "sd")),
    ("median |offset| us", lambda r: cell(r, "medabs")),
    ("RMS offset us", lambda r: cell(r, "rms")),
    ("max |offset| us", lambda r: cell(r, "maxabs")),
    ("median delay us", lambda r: cell(r, "delay")),
    ("passed chrony delay tests %", lambda r: cell(r, "good", ".1f")),
    ("  their median |offset| us", lambda r: cell(r, "goodabs")),
    ("ntpdata Interleaved", lambda r: r["nd_xleave"]),
    ("ntpdata Offset us", lambda r: cell(r, "nd_offset", ".3f", US)),
    ("ntpdata Peer delay us", lambda r: cell(r, "nd_delay", ".3f", US)),
    ("ntpdata Response time us", lambda r: cell(r, "nd_resp", ".3f", US)),
    ("ntpdata valid RX/TX", lambda r: r["nd_rx"]),
    ("sourcestats Offset us", lambda r: cell(r, "ss_offset")),
    ("sourcestats Std Dev us", lambda r: cell(r, "ss_sd")),
    ("hwntpd basic/xleave/TX ts/miss", lambda r: r.get("srv", "-")),
]
w0 = max(len(l[0]) for l in lines)
w = max([15] + [len(c["label"]) + 1 for c in cols] + [len(f(c)) + 1 for l, f in lines for c in cols])
print()
print(f"== accuracy: {rounds} round(s) of {secs} s per run, first {warmup} samples of each run dropped;"
      " true offset is 0, so offsets are errors")
print(f"{'':<{w0}} " + "".join(f"{c['label']:>{w}}" for c in cols))
for label, f in lines:
    print(f"{label:<{w0}} " + "".join(f"{f(c):>{w}}" for c in cols))
notes = [
    "rows down to 'their median |offset|': every logged sample after the warm-up; 'passed chrony",
    "delay tests': samples whose tests A-D were all 1 (the ones chronyd itself would use)",
    "ntpdata, sourcestats, hwntpd rows: end of the " + ("last round" if rounds > 1 else "run"),
    "signs: measurement log and ntpdata + = client behind the server; sourcestats Offset",
    "(chrony's regression estimate) + = client ahead",
    "hwntpd row: replies basic/interleaved, kernel or NIC TX timestamps collected, missed or late",
]
for n in notes:
    print("  " + n)
print()

def verdict(goal, a, b, ok_fn, what):
    ra, rb = res.get(a), res.get(b)
    if not ra or not rb or "medabs" not in ra or "medabs" not in rb:
        print(f"{goal}: NOT MEASURED (needs runs {a} and {b})")
        return
    ok = ok_fn(ra["medabs"], rb["medabs"])
    print(f"{goal}: {'PASS' if ok else 'FAIL'} - median |offset| hwntpd {ra['medabs']:.3f} us vs "
          f"chronyd {rb['medabs']:.3f} us ({what}); RMS {ra['rms']:.3f} vs {rb['rms']:.3f} us, "
          f"std dev {ra['sd']:.3f} vs {rb['sd']:.3f} us")

verdict("goal 1 (interleaved error no worse than chronyd's)", "hwntpd:xleave", "chronyd:xleave",
        lambda a, b: a <= b * (1 + tol), f"pass if <= chronyd x {1 + tol:.2f}")
verdict("goal 2 (basic-mode error smaller than chronyd's)", "hwntpd:basic", "chronyd:basic",
        lambda a, b: a < b, "pass if smaller")
for run in order:
    r = res[run]
    if run.endswith(":xleave") and r.get("xleave", 0) < 50:
        print(f"note: {r['label']}: only {r.get('xleave', 0):.1f}% of replies were interleaved")
    if run.endswith(":basic") and r.get("xleave", 0) > 0:
        print(f"note: {r['label']}: {r['xleave']:.1f}% of replies were interleaved in basic mode")
print(f"\nraw results: {out}")
if any(r["n"] == 0 for r in res.values()):
    sys.exit(1)
PY

exit "$failed"
