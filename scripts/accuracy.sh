#!/usr/bin/env bash
# Accuracy matrix: hwntpd and chronyd as servers, measured by a chronyd client
# in basic and in interleaved mode (xleave), in every setup of issue 11.
#
# A server network namespace and a client network namespace are joined by a
# veth pair (198.18.1.0/30, the RFC 2544 benchmarking range, existing only in
# the namespaces this script creates); the server has a second address
# (198.18.1.5) on the same link. The client is chronyd -x (it never touches
# the clock) with two sources, both `noselect` (with -x chronyd still steers a
# virtual clock toward a selected source, which would hide part of the
# server's error; a never-selected source leaves the client's clock the raw
# CLOCK_REALTIME): the server's first address in basic mode, its second in
# interleaved mode. Both namespaces read the same CLOCK_REALTIME, so the true
# offset is 0 and every measured offset is an error.
#
# The matrix (issue 11, point 2), one cell per combination of:
#   pin      1: server on ACC_SERVER_CPU, client and load on ACC_CLIENT_CPU
#            (taskset); 0: no pinning
#   rt       1: server and client SCHED_FIFO (chrt -f 10); 0: normal priority
#   workers  hwntpd --workers 1 or 2 (chronyd has one thread either way: its
#            run is simply repeated)
#   poll     client poll interval 2^-6 s or 2^0 s (minpoll = maxpoll)
#   load     0: idle server; 20000: hwntpd-bench load offers 20k requests/s
#            of basic-mode background load to the server's first address
# In each cell hwntpd and chronyd run one after the other (which one first
# alternates from cell to cell), each for ACC_SECS_FAST (poll 2^-6 s) or
# ACC_SECS_SLOW (poll 1 s) seconds; the samples of the first ACC_WARMUP_FAST /
# ACC_WARMUP_SLOW seconds are dropped (the client's start, and hwntpd's
# send-latency estimator collecting its first samples).
#
# Per cell and per server and mode it prints, from the client's measurement
# log: with every sample counted, the median and mean offset, the standard
# deviation, the median and the minimum delay; with chrony's own filtering
# (the samples whose tests A-D passed: the ones chronyd itself would use)
# their count, median, mean and standard deviation, and chronyc sourcestats'
# regression offset at the end of the run. For hwntpd it prints the
# server-side distribution of the basic transmit estimate's error
# (hwntpd_transmit_estimate_lag_seconds: exact transmit time - estimate, for
# every reply whose transmit time was measured), its percentiles and the
# fraction of estimates after the real transmit time. Then one line per goal:
#   basic:  hwntpd's |median offset| and standard deviation below chronyd's
#           (all samples; the chrony-filtered comparison is printed with it)
#   xleave: hwntpd's median |offset| no worse than chronyd's x (1 + ACC_TOLERANCE)
# and at the end a summary of every cell. The verdicts are reported, not
# enforced: the exit status is non-zero only when something could not be set
# up or a run produced no samples. The load average is logged per cell (on a
# shared machine, other people's jobs are part of the result).
#
# Needs root (namespaces). Bounded in time: each cell takes about
# 2 x (seconds + 3) s; ACC_CELLS=quick (4 cells) about 3 minutes, full
# (32 cells) about 28 minutes with the defaults. Environment knobs:
#   ACC_CELLS        quick | full | a filter: space-separated KEY=V1,V2 over
#                    pin, rt, workers, poll (-6 or 0), load (0 or 20000), e.g.
#                    "pin=1 poll=0" (8 cells)                default quick
#                    quick = pin=1 rt=0 workers=2 poll=-6 load=0,
#                            pin=1 rt=0 workers=2 poll=0 load=0,
#                            pin=0 rt=0 workers=2 poll=-6 load=20000,
#                            pin=1 rt=1 workers=1 poll=-6 load=0
#   ACC_SECS_FAST, ACC_SECS_SLOW      seconds per run      default 12, 40
#   ACC_WARMUP_FAST, ACC_WARMUP_SLOW  seconds dropped      default 2, 8
#   ACC_SERVERS      servers per cell                      default "hwntpd chronyd"
#   ACC_MODES        the client's sources: basic, xleave or both (one
#                    client, two sources, polled side by side)  default "basic xleave"
#   ACC_LOAD_RATE    the background load's rate (cells with load != 0 use it)
#   ACC_TOLERANCE    relative slack for the xleave goal    default 0.10
#   ACC_SERVER_CPU, ACC_CLIENT_CPU  cores when pinned      default 1, 0
#   ACC_HWNTPD_ARGS  extra hwntpd arguments (e.g. "--send-latency-comp off")
#   ACC_HWNTPD       the hwntpd binary (A/B runs)    default target/release/hwntpd
#   ACC_BUILD=0      skip `cargo build --release`
#   ACC_OUT          result directory          default target/accuracy/<time>
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
CELLS=${ACC_CELLS:-quick}
SECS_FAST=${ACC_SECS_FAST:-12}
SECS_SLOW=${ACC_SECS_SLOW:-40}
WARM_FAST=${ACC_WARMUP_FAST:-2}
WARM_SLOW=${ACC_WARMUP_SLOW:-8}
SERVERS=${ACC_SERVERS:-"hwntpd chronyd"}
MODES=${ACC_MODES:-"basic xleave"}
LOAD_RATE=${ACC_LOAD_RATE:-20000}
TOL=${ACC_TOLERANCE:-0.10}
SERVER_CPU=${ACC_SERVER_CPU:-1}
CLIENT_CPU=${ACC_CLIENT_CPU:-0}
HWNTPD_ARGS=${ACC_HWNTPD_ARGS:-}
BUILD=${ACC_BUILD:-1}
OUT=${ACC_OUT:-$ROOT/target/accuracy/$(date +%Y%m%d-%H%M%S)}

HWNTPD=${ACC_HWNTPD:-$ROOT/target/release/hwntpd}
BENCH=$ROOT/target/release/hwntpd-bench
netns_names hwacc hwa 198.18.1
SRV_IP2=198.18.1.5
SRV_PID=
CLI_PID=
LOAD_PID=
SLEEP_PID=
SOCKDIR=

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    [ -n "$SLEEP_PID" ] && kill "$SLEEP_PID" 2>/dev/null
    stop_pid "$LOAD_PID"
    stop_pid "$CLI_PID"
    stop_pid "$SRV_PID"
    remove_veth_pair "$NS_SRV" "$NS_CLI"
    [ -n "$SOCKDIR" ] && rm -rf "$SOCKDIR"
    return 0
}
trap_cleanup cleanup

whole() { case $2 in ''|*[!0-9]*) die "$1 must be a whole number" ;; esac; }

# --- checks and tools -------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
whole ACC_SECS_FAST "$SECS_FAST"; whole ACC_SECS_SLOW "$SECS_SLOW"
whole ACC_WARMUP_FAST "$WARM_FAST"; whole ACC_WARMUP_SLOW "$WARM_SLOW"
whole ACC_LOAD_RATE "$LOAD_RATE"
for s in "$SECS_FAST" "$SECS_SLOW"; do
    if [ "$s" -lt 5 ] || [ "$s" -gt 600 ]; then die "ACC_SECS_* must be 5..600"; fi
done
[ "$WARM_FAST" -lt "$SECS_FAST" ] && [ "$WARM_SLOW" -lt "$SECS_SLOW" ] ||
    die "the warm-up must be shorter than the run"
[ "$LOAD_RATE" -le 200000 ] || die "ACC_LOAD_RATE must be at most 200000"
for s in $SERVERS; do
    case $s in hwntpd|chronyd) ;; *) die "unknown server '$s' in ACC_SERVERS" ;; esac
done
for m in $MODES; do
    case $m in basic|xleave) ;; *) die "unknown mode '$m' in ACC_MODES" ;; esac
done

# The cells: "pin rt workers poll load" per line.
all_cells() {
    local pin rt w poll load
    for pin in 1 0; do for rt in 0 1; do for w in 1 2; do for poll in -6 0; do for load in 0 20000; do
        echo "$pin $rt $w $poll $load"
    done; done; done; done; done
}
case $CELLS in
quick) CELL_LIST=$'1 0 2 -6 0\n1 0 2 0 0\n0 0 2 -6 20000\n1 1 1 -6 0' ;;
full) CELL_LIST=$(all_cells) ;;
*)
    # A filter: KEY=V1,V2 ...
    declare -A want=()
    for tok in $CELLS; do
        key=${tok%%=*} vals=${tok#*=}
        case $key in pin|rt|workers|poll|load) ;;
        *) die "ACC_CELLS: unknown key '$key' (quick, full, or KEY=V1,V2 over pin rt workers poll load)" ;;
        esac
        [ "$tok" != "$key" ] || die "ACC_CELLS: '$tok' is not KEY=VALUES"
        want[$key]=",$vals,"
    done
    CELL_LIST=$(all_cells | while read -r pin rt w poll load; do
        ok=1
        for kv in "pin:$pin" "rt:$rt" "workers:$w" "poll:$poll" "load:$load"; do
            k=${kv%%:*} v=${kv#*:}
            if [ -n "${want[$k]:-}" ] && [[ ${want[$k]} != *",$v,"* ]]; then ok=0; fi
        done
        if [ "$ok" = 1 ]; then echo "$pin $rt $w $poll $load"; fi
    done)
    ;;
esac
[ -n "$CELL_LIST" ] || die "ACC_CELLS '$CELLS' selects no cell"
NCELLS=$(printf '%s\n' "$CELL_LIST" | wc -l)

require_tools ip taskset chrt python3 timeout
[ "$(nproc)" -ge 2 ] || log "only $(nproc) core(s): server and client will share one"
have_or_install chrony chronyd chronyc || die "cannot install chrony"
CHRONYD=$(command -v chronyd)
CHRONYC=$(command -v chronyc)
log "$("$CHRONYD" --version | head -n1)"

if [ "$BUILD" = 1 ]; then
    log "building hwntpd (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin hwntpd --bin hwntpd-bench) || die "cannot build hwntpd"
fi
case " $SERVERS " in *" hwntpd "*) [ -x "$HWNTPD" ] || die "$HWNTPD missing (run with ACC_BUILD=1)" ;; esac
if printf '%s\n' "$CELL_LIST" | awk '$5 != 0 {f=1} END {exit !f}'; then
    [ -x "$BENCH" ] || die "$BENCH missing (run with ACC_BUILD=1)"
fi
mkdir -p "$OUT"
# chronyd wants its command socket directory private (0700/0750); a short
# path under /tmp also keeps the socket name below the 108-byte limit.
SOCKDIR=$(mktemp -d /tmp/hwacc.XXXXXX)
chmod 0700 "$SOCKDIR"
log "$NCELLS cell(s); results in $OUT"

# --- namespaces -------------------------------------------------------------
make_veth_pair "$NS_SRV" "$NS_CLI" "$VETH_SRV" "$VETH_CLI" "$SRV_IP" "$CLI_IP"
ip -n "$NS_SRV" addr add "$SRV_IP2/32" dev "$VETH_SRV"
ip -n "$NS_CLI" route add "$SRV_IP2/32" dev "$VETH_CLI"

# Set per cell: PIN_SRV / PIN_CLI (taskset prefixes), PRIO (chrt prefix).
PIN_SRV=() PIN_CLI=() PRIO=()
# Run in the background (`in_srv ... &`): exec, so that $! is the daemon's own
# pid (ip netns exec, taskset and chrt exec in turn).
in_srv() { exec ip netns exec "$NS_SRV" "${PIN_SRV[@]}" "${PRIO[@]}" "$@"; }
in_cli() { exec ip netns exec "$NS_CLI" "${PIN_CLI[@]}" "${PRIO[@]}" "$@"; }
in_load() { exec ip netns exec "$NS_CLI" "${PIN_CLI[@]}" "$@"; }

# start_server NAME DIR WORKERS: sets SRV_PID.
start_server() {
    local name=$1 dir=$2 workers=$3
    case $name in
    hwntpd)
        # shellcheck disable=SC2086  # extra arguments, split on purpose
        in_srv "$HWNTPD" --listen "$SRV_IP:$PORT" --listen "$SRV_IP2:$PORT" --reference local \
            --workers "$workers" --stats-file "$dir/hwntpd.prom" --stats-interval 1 \
            $HWNTPD_ARGS >"$dir/server.log" 2>&1 &
        SRV_PID=$!
        ;;
    chronyd)
        # A stratum-1 server on its own clock, on every address of its
        # namespace. No clock control (-x); no rate limit (ratelimit is off
        # unless configured); the client log stays on (the default), which
        # chronyd needs to answer in interleaved mode.
        chrony_server_conf 0.0.0.0 "$PORT" "$SOCKDIR/server.pid" >"$dir/server.conf"
        in_srv "$CHRONYD" -x -d -u root -f "$dir/server.conf" >"$dir/server.log" 2>&1 &
        SRV_PID=$!
        ;;
    esac
    sleep 1
    kill -0 "$SRV_PID" 2>/dev/null || { wait "$SRV_PID" 2>/dev/null || true; SRV_PID=
        cat "$dir/server.log" >&2; die "$name did not start (see $dir/server.log)"; }
}

# start_client POLL DIR: sets CLI_PID.
start_client() {
    local poll=$1 dir=$2
    rm -f "$SOCKDIR/client.sock" "$SOCKDIR/client.pid"
    {
        case " $MODES " in *" basic "*)
            echo "server $SRV_IP port $PORT minpoll $poll maxpoll $poll noselect" ;;
        esac
        case " $MODES " in *" xleave "*)
            echo "server $SRV_IP2 port $PORT minpoll $poll maxpoll $poll noselect xleave" ;;
        esac
    } >"$dir/client.conf"
    cat >>"$dir/client.conf" <<EOF
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
cell=0
printf '%s\n' "$CELL_LIST" >"$OUT/cells.txt"
while read -r pin rt workers poll load; do
    cell=$((cell + 1))
    PIN_SRV=() PIN_CLI=() PRIO=()
    if [ "$pin" = 1 ]; then PIN_SRV=(taskset -c "$SERVER_CPU"); PIN_CLI=(taskset -c "$CLIENT_CPU"); fi
    if [ "$rt" = 1 ]; then PRIO=(chrt -f 10); fi
    secs=$SECS_FAST
    if [ "$poll" = 0 ]; then secs=$SECS_SLOW; fi
    order=$SERVERS
    # shellcheck disable=SC2086  # a list of names
    if [ $((cell % 2)) = 0 ]; then order=$(printf '%s\n' $SERVERS | tac | xargs); fi
    for name in $order; do
        dir=$OUT/cell$cell-$name
        mkdir -p "$dir"
        echo "$pin $rt $workers $poll $load $secs" >"$dir/cell"
        cat /proc/loadavg >"$dir/loadavg.start"
        log "cell $cell/$NCELLS (pin=$pin rt=$rt workers=$workers poll=$poll load=$load): $name, ${secs}s"
        start_server "$name" "$dir" "$workers"
        if [ "$load" != 0 ]; then
            in_load "$BENCH" load --server "$SRV_IP:$PORT" --rate "$LOAD_RATE" \
                --duration "$((secs + 2))" --clients 64 --batch 16 --stop-after-fail 0 \
                --max-requests "$((LOAD_RATE * (secs + 3)))" >"$dir/load.txt" 2>&1 &
            LOAD_PID=$!
        fi
        start_client "$poll" "$dir"
        # `wait` returns at once on a signal (a foreground sleep would delay the trap).
        sleep "$secs" & SLEEP_PID=$!
        wait "$SLEEP_PID"; SLEEP_PID=
        if ! kill -0 "$CLI_PID" 2>/dev/null; then
            cat "$dir/client.log" >&2
            die "client chronyd exited early (see $dir/client.log)"
        fi
        chronyc_cli -c sourcestats >"$dir/sourcestats.csv" 2>&1 || true
        chronyc_cli ntpdata >"$dir/ntpdata.txt" 2>&1 || true
        cat /proc/loadavg >"$dir/loadavg.end"
        stop_pid "$CLI_PID"; CLI_PID=
        stop_pid "$LOAD_PID"; LOAD_PID=
        stop_pid "$SRV_PID"; SRV_PID=
        if ! grep -q '^[0-9]' "$dir/measurements.log" 2>/dev/null; then
            log "cell $cell $name: no measurements (see $dir/client.log, $dir/server.log)"
            failed=1
        fi
    done
done <<<"$CELL_LIST"

# --- report -----------------------------------------------------------------
python3 -B "$ROOT/scripts/lib/accuracy_report.py" "$OUT" "$SRV_IP" "$SRV_IP2" "$TOL" \
    "$WARM_FAST" "$WARM_SLOW" "$SERVERS" "$MODES" || failed=1
exit "$failed"
