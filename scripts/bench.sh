#!/usr/bin/env bash
# Throughput benchmark: the floor responder, hwntpd and chronyd, one after the
# other in the same run. Each server runs pinned to one core (SERVER_CPU) in its
# own network namespace; the generator runs pinned to the other core (GEN_CPU)
# in a second namespace, connected by a veth pair (198.18.0.0/30, the RFC 2544
# benchmarking range, existing only inside the namespaces this script creates).
#
# For each server it prints: the highest offered rate with >= THRESHOLD of the
# requests answered, server CPU microseconds per reply at each offered rate
# (from /proc/PID/task/*/schedstat), system calls per reply (the server's own
# stats where it has them, and `strace -c -f` on a short run), p50/p99 server
# turnaround, and each server's cost above the floor. On shared 2-core machines
# absolute numbers move a lot between runs: quote the ratios.
#
# Needs root (namespaces). Bounded in time: with the defaults, well under
# 3 minutes after the build. Environment knobs:
#   SWEEP=START:STOP:STEP  offered rates (req/s)          default 20000:200000:20000
#   STEP_SECS              seconds of sending per rate    default 2
#   STOP_AFTER_FAIL        stop a sweep after N failing steps (0: never)  default 2
#   THRESHOLD              answered fraction to pass      default 0.999
#   CLIENTS, BATCH         generator sockets, batch size  default 64, 64
#   STRACE_RATE, STRACE_SECS  the strace run              default 5000, 2
#   SERVERS                which servers, in order        default "floor hwntpd chronyd"
#   SERVER_CPU, GEN_CPU    cores                          default 1, 0
#   HWNTPD_WORKERS         hwntpd --workers               default 1
#   HWNTPD                 the hwntpd binary              default target/release/hwntpd
#   HWNTPD_ARGS            extra hwntpd arguments (e.g. "--batch-wait-us 30")  default none
#                          SERVERS may also name hwntpd-xl: hwntpd again, with the
#                          generator speaking interleaved mode (kernel TX timestamps),
#                          and hwntpd-policy: hwntpd with an access list of 1000 prefixes
#                          and rate limiting on (interval -10, burst 255: 1024 replies/s
#                          per source address, so give CLIENTS >= SOURCES >= the highest
#                          rate / 1000 to keep the generator within it), compared with hwntpd
#   SOURCES                the generator's client sockets are spread over this many
#                          source addresses (198.18.1.0/24, routed to the generator's
#                          namespace), for every server     default 256
#   HWNTPD_SYSCALL_METRIC, HWNTPD_REPLY_METRIC  counters in hwntpd's stats file
#   RT=1                   run server and generator as SCHED_FIFO (chrt -f 10): less noise
#                          from other load on a shared machine (the kernel still keeps 5%
#                          of each core for others)
#   BUILD=0                skip `cargo build --release`
#   OUT                    result directory               default target/bench/<time>
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
SWEEP=${SWEEP:-20000:200000:20000}
STEP_SECS=${STEP_SECS:-2}
STOP_AFTER_FAIL=${STOP_AFTER_FAIL:-2}
THRESHOLD=${THRESHOLD:-0.999}
CLIENTS=${CLIENTS:-64}
BATCH=${BATCH:-64}
STRACE_RATE=${STRACE_RATE:-5000}
STRACE_SECS=${STRACE_SECS:-2}
SERVERS=${SERVERS:-"floor hwntpd chronyd"}
SERVER_CPU=${SERVER_CPU:-1}
GEN_CPU=${GEN_CPU:-0}
HWNTPD_WORKERS=${HWNTPD_WORKERS:-1}
HWNTPD_ARGS=${HWNTPD_ARGS:-}
SOURCES=${SOURCES:-256}
HWNTPD_SYSCALL_METRIC=${HWNTPD_SYSCALL_METRIC:-hwntpd_syscalls_total}
HWNTPD_REPLY_METRIC=${HWNTPD_REPLY_METRIC:-hwntpd_replies_total}
BUILD=${BUILD:-1}
RT=${RT:-0}
OUT=${OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}

BENCH=$ROOT/target/release/hwntpd-bench
HWNTPD=${HWNTPD:-$ROOT/target/release/hwntpd}
netns_names hwb hwb 198.18.0
SRV_PID=
STRACE_PID=



cleanup() {
    stop_pid "$STRACE_PID"
    stop_pid "$SRV_PID"
    remove_veth_pair "$NS_SRV" "$NS_CLI"
}
trap_cleanup cleanup

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, taskset, strace)"
require_tools ip taskset python3
[ "$(nproc)" -ge 2 ] || log "only $(nproc) core(s): server and generator will share one"

case " $SERVERS " in *" chronyd "*)
    have_or_install chrony chronyd || die "cannot install chrony" ;;
esac
have_or_install strace strace || log "no strace: skipping the strace check"

if [ "$BUILD" = 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --bin hwntpd-bench) || die "cannot build hwntpd-bench"
    (cd "$ROOT" && cargo build --release --bin hwntpd) || log "hwntpd does not build; it will be skipped"
fi
[ -x "$BENCH" ] || die "$BENCH missing (run with BUILD=1)"
mkdir -p "$OUT"
log "results in $OUT"

# --- namespaces -------------------------------------------------------------
make_veth_pair "$NS_SRV" "$NS_CLI" "$VETH_SRV" "$VETH_CLI" "$SRV_IP" "$CLI_IP"
# The generator's extra source addresses: any of 198.18.1.0/24 is local in its
# namespace (a local route), and the server routes them back over the veth.
SOURCE_ARGS=()
if [ "$SOURCES" -gt 1 ]; then
    [ "$SOURCES" -le 256 ] || die "SOURCES must be at most 256"
    ip -n "$NS_CLI" route add local 198.18.1.0/24 dev lo
    ip -n "$NS_SRV" route add 198.18.1.0/24 via "$CLI_IP"
    SOURCE_ARGS=(--bind 198.18.1.0 --sources "$SOURCES")
fi
# The access list of hwntpd-policy: 1000 prefixes, the generator's allowed.
policy_args() {
    python3 - <<'PY'
import random
r = random.Random(9)
args = ["--allow", "198.18.0.0/15"]
while len(args) < 2000:
    if r.random() < 0.8:
        n = r.randint(8, 32)
        a = (10 << 24 | r.getrandbits(24)) & (0xffffffff << (32 - n)) & 0xffffffff
        p = f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/{n}"
    else:
        n = r.randint(32, 64)
        p = f"2001:db8:{r.getrandbits(16):x}:{r.getrandbits(16):x}::/{n}"
    args += ["--allow" if r.random() < 0.5 else "--deny", p]
print(" ".join(args) + " --rate-limit --rate-limit-interval -10 --rate-limit-burst 255")
PY
}

# in_srv runs in the background (`in_srv ... &`): exec, so that $! is the server's own pid
# (ip netns exec and taskset exec in turn).
PRIO=()
[ "$RT" = 1 ] && PRIO=(chrt -f 10)
in_srv() { exec ip netns exec "$NS_SRV" taskset -c "$SERVER_CPU" "${PRIO[@]}" "$@"; }
in_cli() { ip netns exec "$NS_CLI" taskset -c "$GEN_CPU" "${PRIO[@]}" "$@"; }

# --- servers ----------------------------------------------------------------
# start_server NAME: sets SRV_PID and STATS_ARGS, or returns 1 (skip).
start_server() {
    local name=$1
    STATS_ARGS=()
    LOAD_ARGS=()
    case $name in
    floor)
        in_srv "$BENCH" floor --listen "$SRV_IP:$PORT" --batch "$BATCH" \
            --stats-file "$OUT/floor.prom" >"$OUT/floor.log" 2>&1 &
        SRV_PID=$!
        STATS_ARGS=(--server-stats "$OUT/floor.prom" --syscall-metric floor_syscalls_total
            --reply-metric floor_replies_total)
        ;;
    hwntpd|hwntpd-xl|hwntpd-policy)
        if [ ! -x "$HWNTPD" ]; then log "hwntpd: $HWNTPD not built, skipped"; return 1; fi
        local extra=""
        if [ "$name" = hwntpd-policy ]; then extra=$(policy_args); fi
        # --stats-interval 1: the generator reads the counters at each step's ends.
        # shellcheck disable=SC2086 # HWNTPD_ARGS and extra are lists of words
        in_srv "$HWNTPD" --listen "$SRV_IP:$PORT" --reference local --workers "$HWNTPD_WORKERS" \
            --stats-interval 1 --stats-file "$OUT/$name.prom" $HWNTPD_ARGS $extra >"$OUT/$name.log" 2>&1 &
        SRV_PID=$!
        STATS_ARGS=(--server-stats "$OUT/$name.prom" --syscall-metric "$HWNTPD_SYSCALL_METRIC"
            --reply-metric "$HWNTPD_REPLY_METRIC")
        if [ "$name" = hwntpd-xl ]; then LOAD_ARGS=(--interleaved); fi
        ;;
    chronyd)
        {
            echo "# a stratum-1 server on its own clock; no clock control (-x), no rate limit"
            echo "# (ratelimit is off unless configured), no command port or socket"
            chrony_server_conf "$SRV_IP" "$PORT" "$OUT/chronyd.pid"
        } >"$OUT/chrony.conf"
        in_srv chronyd -x -d -u root -f "$OUT/chrony.conf" >"$OUT/chronyd.log" 2>&1 &
        SRV_PID=$!
        ;;
    *) log "unknown server $name"; return 1 ;;
    esac
    sleep 0.7
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
        log "$name: did not start (see $OUT/$name.log), skipped"
        wait "$SRV_PID" 2>/dev/null || true
        SRV_PID=
        return 1
    fi
    if ! in_cli "$BENCH" query --server "$SRV_IP:$PORT" --count 3 --interval-ms 100 \
        --timeout-ms 500 >"$OUT/$name.query.txt" 2>&1; then
        log "$name: running but not answering (see $OUT/$name.query.txt), skipped"
        stop_pid "$SRV_PID"; SRV_PID=
        return 1
    fi
}

# strace_check NAME: count the server's system calls during a short fixed-rate run.
strace_check() {
    local name=$1
    command -v strace >/dev/null || return 0
    strace -c -f -q -p "$SRV_PID" -o "$OUT/$name.strace" 2>/dev/null &
    STRACE_PID=$!
    sleep 0.5
    in_cli "$BENCH" load --server "$SRV_IP:$PORT" --rate "$STRACE_RATE" --duration "$STRACE_SECS" \
        --clients "$CLIENTS" --batch "$BATCH" --json --stop-after-fail 0 "${LOAD_ARGS[@]}" \
        "${SOURCE_ARGS[@]}" >"$OUT/$name.strace-load.txt" 2>&1 || true
    kill -INT "$STRACE_PID" 2>/dev/null || true
    wait "$STRACE_PID" 2>/dev/null || true
    STRACE_PID=
}

# rss NAME WHEN: the server's resident memory (VmRSS, kB, all its threads).
rss() {
    awk '/^VmRSS:/ {print $2}' "/proc/$SRV_PID/status" >"$OUT/$1.rss.$2" 2>/dev/null || true
}

# snapshot NAME WHEN: UDP counters of both namespaces and the softnet drops, to
# tell where lost requests went (server socket buffer, client socket, backlog).
snapshot() {
    ip netns exec "$NS_SRV" cat /proc/net/snmp >"$OUT/$1.snmp-srv.$2"
    ip netns exec "$NS_CLI" cat /proc/net/snmp >"$OUT/$1.snmp-cli.$2"
    cat /proc/net/softnet_stat >"$OUT/$1.softnet.$2"
}

for name in $SERVERS; do
    log "$name"
    start_server "$name" || continue
    snapshot "$name" 0
    rss "$name" 0
    in_cli "$BENCH" load --server "$SRV_IP:$PORT" --sweep "$SWEEP" --duration "$STEP_SECS" \
        --clients "$CLIENTS" --batch "$BATCH" --threshold "$THRESHOLD" "${LOAD_ARGS[@]}" "${SOURCE_ARGS[@]}" \
        --stop-after-fail "$STOP_AFTER_FAIL" --json --server-pid "$SRV_PID" "${STATS_ARGS[@]}" \
        >"$OUT/$name.load.txt" 2>&1 || log "$name: load generator failed (see $OUT/$name.load.txt)"
    snapshot "$name" 1
    rss "$name" 1
    grep -v '^{' "$OUT/$name.load.txt" >&2 || true
    strace_check "$name"
    stop_pid "$SRV_PID"; SRV_PID=
done

# --- report -----------------------------------------------------------------
python3 - "$OUT" "$SERVERS" "$THRESHOLD" <<'PY'
import json, os, sys

out, servers, threshold = sys.argv[1], sys.argv[2].split(), float(sys.argv[3])

def load(name, suffix):
    path = os.path.join(out, f"{name}.{suffix}")
    steps = []
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("{"):
                d = json.loads(line)
                if d.get("type") == "step":
                    steps.append(d)
    return steps

def strace_calls(name):
    """System calls by name from a `strace -c` summary (columns: % time,
    seconds, usecs/call, calls, [errors], syscall); None without one."""
    path = os.path.join(out, f"{name}.strace")
    if not os.path.exists(path):
        return None
    calls = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
            calls[f[-1]] = calls.get(f[-1], 0) + int(f[3])
    return calls or None

def udp(name, side, when):
    path = os.path.join(out, f"{name}.snmp-{side}.{when}")
    if not os.path.exists(path):
        return {}
    rows = [l.split() for l in open(path) if l.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:]))) if len(rows) >= 2 else {}

def softnet_drops(name, when):
    path = os.path.join(out, f"{name}.softnet.{when}")
    if not os.path.exists(path):
        return 0
    return sum(int(l.split()[1], 16) for l in open(path) if l.strip())

def drops(name):
    """Where datagrams were dropped during the sweep."""
    d = {}
    for side in ("srv", "cli"):
        a, b = udp(name, side, 0), udp(name, side, 1)
        for k in ("RcvbufErrors", "InErrors"):
            if k in a and k in b:
                d[f"{side} {k}"] = b[k] - a[k]
    d["softnet drops"] = softnet_drops(name, 1) - softnet_drops(name, 0)
    return d

def passed(s):
    return s["answered"] >= threshold and not s["generator_limited"]

def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)

runs = {n: load(n, "load.txt") for n in servers}
runs = {n: s for n, s in runs.items() if s}
if not runs:
    print("no server produced results"); sys.exit(1)

print()
print(f"== summary (pass: >= {100*threshold:.1f}% answered and the generator kept up)")
print(f"{'server':<9} {'max rate':>9} {'us CPU/reply':>13} {'syscalls/reply':>15} {'strace calls/reply':>19} {'turnaround p50/p99 us':>22}")
best = {}
strace_notes = []
for n, steps in runs.items():
    ok = [s for s in steps if passed(s)]
    top = max(ok, key=lambda s: s["rate"]) if ok else None
    best[n] = top
    sl = load(n, "strace-load.txt")
    calls = strace_calls(n)
    replies = sl[0]["valid"] if sl else 0
    spr = sum(calls.values()) / replies if calls and replies else None
    if calls and replies:
        top_calls = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
        strace_notes.append(f"{n}: " + ", ".join(f"{k} {v / replies:.3f}" for k, v in top_calls))
    if top:
        ta = f'{fmt(top["turnaround_us"]["p50"], ".1f")}/{fmt(top["turnaround_us"]["p99"], ".1f")}'
        print(f"{n:<9} {top['rate']:>9.0f} {fmt(top['cpu_us_per_reply']):>13} "
              f"{fmt(top['syscalls_per_reply'], '.3f'):>15} {fmt(spr, '.3f'):>19} {ta:>22}")
    else:
        print(f"{n:<9} {'none':>9} {'-':>13} {'-':>15} {fmt(spr, '.3f'):>19} {'-':>22}")

print("resident memory (VmRSS kB) after start -> after the sweep:")
for n in runs:
    def rd(w):
        p = os.path.join(out, f"{n}.rss.{w}")
        try:
            return int(open(p).read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    a, b = rd(0), rd(1)
    growth = f" ({100 * (b - a) / a:+.1f}%)" if a and b else ""
    print(f"  {n}: {fmt(a, 'd')} -> {fmt(b, 'd')}{growth}")
print("drops during the sweep (srv = server namespace, cli = generator namespace):")
for n in runs:
    print(f"  {n}: " + ", ".join(f"{k} {v}" for k, v in drops(n).items()))
if strace_notes:
    print("strace -c, calls per reply by system call (short run at a fixed rate):")
    for line in strace_notes:
        print("  " + line)

print()
print("== server CPU us per reply at each offered rate (* = step failed)")
rates = sorted({s["rate"] for st in runs.values() for s in st})
print(f"{'rate':>9} " + " ".join(f"{n:>10}" for n in runs))
for r in rates:
    cells = []
    for n, st in runs.items():
        s = next((x for x in st if x["rate"] == r), None)
        if s is None or s["cpu_us_per_reply"] is None:
            cells.append(f"{'-':>10}")
        else:
            cells.append(f"{s['cpu_us_per_reply']:>9.2f}{'' if passed(s) else '*'}")
    print(f"{r:>9.0f} " + " ".join(cells))

est = {n: st for n, st in runs.items() if any(s.get("tx_estimate_samples") for s in st)}
if est:
    print()
    print("== basic-mode transmit estimate error, |exact - estimate| p50/p99 us (samples)")
    print(f"{'rate':>9} " + " ".join(f"{n:>22}" for n in est))
    for r in rates:
        cells = []
        for n, st in est.items():
            s = next((x for x in st if x["rate"] == r), None)
            e = s.get("tx_estimate_error_us") if s else None
            if not e or e.get("p50") is None:
                cells.append(f"{'-':>22}")
            else:
                cells.append(f"{e['p50']:.1f}/{e['p99']:.1f} ({s['tx_estimate_samples']:.0f})".rjust(22))
        print(f"{r:>9.0f} " + " ".join(cells))

if "floor" in runs:
    print()
    print("== cost above the floor (median over rates where both passed)")
    floor = {s["rate"]: s for s in runs["floor"] if passed(s) and s["cpu_us_per_reply"]}
    above = {}
    for n, st in runs.items():
        if n == "floor":
            continue
        pairs = [(s["cpu_us_per_reply"], floor[s["rate"]]["cpu_us_per_reply"])
                 for s in st if passed(s) and s["cpu_us_per_reply"] and s["rate"] in floor]
        if not pairs:
            print(f"{n:<9} no common passing rate with the floor"); continue
        pairs.sort(key=lambda p: p[0] - p[1])
        srv, fl = pairs[len(pairs) // 2]
        above[n] = srv - fl
        print(f"{n:<9} {srv - fl:8.2f} us/reply above the floor ({srv / fl:.2f}x the floor's "
              f"{fl:.2f}) over {len(pairs)} rate(s)")
    for h in ("hwntpd", "hwntpd-xl"):
        if h in above and "chronyd" in above and above["chronyd"] > 0:
            print(f"{h}'s cost above the floor is {above[h] / above['chronyd']:.2f}x chronyd's")
    mx = {n: (best[n]["rate"] if best.get(n) else 0) for n in runs}
    if mx.get("floor"):
        print("max rate relative to the floor: " +
              ", ".join(f"{n} {mx[n] / mx['floor']:.2f}" for n in runs if n != "floor"))
if "chronyd" in runs:
    print()
    print("== against chronyd at every rate chronyd sustains")
    cr = [s for s in runs["chronyd"] if passed(s)]
    for h in ("hwntpd", "hwntpd-xl"):
        if h not in runs or not cr:
            continue
        mine = {s["rate"]: s for s in runs[h]}
        miss = [s["rate"] for s in cr if s["rate"] not in mine or not passed(mine[s["rate"]])]
        ratios = []
        for s in cr:
            m = mine.get(s["rate"])
            if m and m["turnaround_us"]["p99"] and s["turnaround_us"]["p99"]:
                ratios.append(m["turnaround_us"]["p99"] / s["turnaround_us"]["p99"])
        ratios.sort()
        med = ratios[len(ratios) // 2] if ratios else None
        print(f"{h:<9} answered >= {100*threshold:.1f}% at {len(cr) - len(miss)}/{len(cr)} of chronyd's "
              f"passing rates{' (missed: ' + ', '.join(f'{r:.0f}' for r in miss) + ')' if miss else ''}; "
              f"p99 turnaround / chronyd's: median {fmt(med)} (range {fmt(ratios[0] if ratios else None)}"
              f"..{fmt(ratios[-1] if ratios else None)})")
if "hwntpd" in runs and "hwntpd-policy" in runs:
    print()
    print("== access list (1000 prefixes) and rate limiting on vs off, CPU us per reply")
    # Steps answered >= THRESHOLD by both (a generator that fell behind the
    # offered rate still measures the server's cost per reply).
    ans = lambda s: s["answered"] >= threshold and s["cpu_us_per_reply"]
    base = {s["rate"]: s for s in runs["hwntpd"] if ans(s)}
    diffs = []
    for s in runs["hwntpd-policy"]:
        b = base.get(s["rate"])
        if b and ans(s):
            d = s["cpu_us_per_reply"] - b["cpu_us_per_reply"]
            diffs.append((d, s["rate"], b["cpu_us_per_reply"], s["cpu_us_per_reply"]))
            print(f"{s['rate']:>9.0f}   off {b['cpu_us_per_reply']:6.2f}   on {s['cpu_us_per_reply']:6.2f}"
                  f"   difference {d:+6.2f} ({100 * d / b['cpu_us_per_reply']:+.1f}%)")
    if diffs:
        diffs.sort()
        d, r, b, p = diffs[len(diffs) // 2]
        print(f"median difference {d:+.2f} us/reply ({100 * d / b:+.1f}%) over {len(diffs)} rate(s) both answered")
    else:
        print("no rate answered by both")
print(f"\nraw results: {out}")
PY
