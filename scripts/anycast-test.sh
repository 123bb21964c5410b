#!/usr/bin/env bash
# anycast-test.sh: a fleet of two hwntpd nodes behind one anycast address, announced
# by ExaBGP's health checker to a BIRD 2 router with ECMP, and what a client sees
# when a node fails. Uses dist/anycast/bird.conf and dist/anycast/exabgp.conf as they
# are (node B's router-id and local-address changed).
#
# Usage (root; CI runs it from .ci/run):  bash scripts/anycast-test.sh
#
# Network namespaces (all created here, removed on any exit; traffic stays inside):
#   router  BIRD 2; bridge br0 192.0.2.1/24 towards the nodes, 198.51.100.1/24 towards
#           the client; forwarding on; net.ipv4.fib_multipath_hash_policy=1 (L4 hash)
#   node A  192.0.2.11/24, anycast 203.0.113.123/32 on a dummy interface (or lo
#           where the kernel lacks the dummy module); chronyd -x
#           (never touches the clock) serving 127.0.0.1:11123 as "local stratum 2";
#           hwntpd --reference ntp:127.0.0.1:11123 --on-unsync drop on 203.0.113.123:123;
#           ExaBGP + its health checker (curl /healthz)
#   node B  the same with 192.0.2.12 and chronyd at "local stratum 3": the stratum of
#           a reply tells the client which node answered
#   client  198.51.100.2/24; ANYCAST_FLOWS flows (own source ports) each polling the
#           anycast address every 250 ms (scripts/lib/ntp_poll.py)
#
# Checks: both nodes announced (an ECMP route with two next hops) and both serve
# (replies of stratum 2 and 3, each flow always on one node); stopping A's chronyd
# withdraws A's route (time printed), after which the client gets only synchronised
# replies from B (replies lost and LI=3 replies printed; none lost, none LI=3 from
# one second after the withdrawal on); restarting A's chronyd announces A again (A
# serves again); SIGKILL of hwntpd on A withdraws it too. Ends with one RESULT line.
#
# Environment knobs:
#   HWNTPD=target/release/hwntpd   the binary (built with cargo build --release if missing)
#   ANYCAST_FLOWS=12               client flows
#   ANYCAST_ON_UNSYNC=drop         hwntpd's --on-unsync on the nodes (serve: LI=3 replies
#                                  reach the client until the withdrawal)
#   ANYCAST_MAX_WITHDRAW=10        seconds a withdrawal or re-announcement may take
#   ANYCAST_KEEP=1                 keep the work dir (logs) after the run
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

HWNTPD=${HWNTPD:-$ROOT/target/release/hwntpd}
FLOWS=${ANYCAST_FLOWS:-12}
ON_UNSYNC=${ANYCAST_ON_UNSYNC:-drop}
MAX_WD=${ANYCAST_MAX_WITHDRAW:-10}
KEEP=${ANYCAST_KEEP:-0}
INTERVAL=0.25
ANYCAST=203.0.113.123
RTR_IP=192.0.2.1
A_IP=192.0.2.11
B_IP=192.0.2.12
METRICS=127.0.0.1:9123
CHRONY_PORT=11123

if [ "$(id -u)" != 0 ]; then
    echo "SKIP anycast-test: needs root (network namespaces, BIRD, ExaBGP)"
    exit 0
fi

# --- tools --------------------------------------------------------------------------
have_or_install bird2 bird birdc || die "cannot install bird2"
have_or_install exabgp exabgp exabgp-healthcheck || die "cannot install exabgp"
have_or_install chrony chronyd || die "cannot install chrony"
have_or_install curl curl || die "cannot install curl"
have_or_install iproute2 ip || die "cannot install iproute2"
PY=/usr/bin/python3 # Debian's, the one exabgp's package is for
[ -x "$PY" ] || die "/usr/bin/python3 missing"
if [ ! -x "$HWNTPD" ]; then
    log "building hwntpd (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin hwntpd) || die "cannot build hwntpd"
fi
# The health checker asks hwntpd's /healthz (--metrics-listen). ANYCAST_HEALTH_CMD
# replaces that check (a command run on the node; exit 0 = healthy), for binaries
# without the endpoint.
HEALTH_CMD=${ANYCAST_HEALTH_CMD:-}
METRICS_ARGS=(--metrics-listen "$METRICS")
if [ -n "$HEALTH_CMD" ]; then
    METRICS_ARGS=()
elif ! "$HWNTPD" --help | grep -q -- '--metrics-listen'; then
    die "$HWNTPD has no --metrics-listen (the /healthz endpoint the health checker asks)"
fi

# --- names, cleanup -----------------------------------------------------------------
NS_R=ac-rtr-$$
NS_A=ac-a-$$
NS_B=ac-b-$$
NS_C=ac-cli-$$
WORK=$(mktemp -d /tmp/hwntpd-anycast.XXXXXX)
chmod 0755 "$WORK"
PIDS=()
T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
say() { printf '[anycast +%ss] %s\n' "$(since "$T0")" "$*"; }

cleanup() {
    local rc=$? pid ns
    touch "$WORK/stop" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    # Anything still running in our namespaces was started by this script (health
    # checkers, curl): stop it by id, then remove the namespaces.
    for ns in "$NS_R" "$NS_A" "$NS_B" "$NS_C"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    remove_veth_pair "$NS_R" "$NS_A" "$NS_B" "$NS_C"
    # A veth end left in this namespace by a set-up that failed half-way.
    for ns in a b c; do ip link del "acr$ns$$" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
        echo "anycast-test: logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap_cleanup cleanup

fail() { # print the logs that matter, then die
    say "FAIL: $*"
    local f
    for f in "$WORK"/*.log; do
        echo "---- $(basename "$f") (last 15 lines)"
        tail -15 "$f"
    done
    die "$*"
}

# --- namespaces ---------------------------------------------------------------------
say "namespaces $NS_R $NS_A $NS_B $NS_C"
for ns in "$NS_R" "$NS_A" "$NS_B" "$NS_C"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$NS_R" link add br0 type bridge
ip -n "$NS_R" addr add "$RTR_IP/24" dev br0
ip -n "$NS_R" link set br0 up
link_node() { # NS IP TAG: a veth from the router's bridge to the node
    local ns=$1 ip=$2 tag=$3
    ip link add "acr$tag$$" type veth peer name "acn$tag$$"
    ip link set "acr$tag$$" netns "$NS_R"
    ip link set "acn$tag$$" netns "$ns"
    ip -n "$NS_R" link set "acr$tag$$" master br0 up
    ip -n "$ns" link set "acn$tag$$" name eth0
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$RTR_IP"
    # On a dummy interface where the kernel has the module, else on lo (as ExaBGP's
    # health checker would put it).
    if ip -n "$ns" link add anycast0 type dummy 2>/dev/null; then
        ip -n "$ns" addr add "$ANYCAST/32" dev anycast0
        ip -n "$ns" link set anycast0 up
    else
        ip -n "$ns" addr add "$ANYCAST/32" dev lo
    fi
}
link_node "$NS_A" "$A_IP" a
link_node "$NS_B" "$B_IP" b
ip link add "acrc$$" type veth peer name "acnc$$"
ip link set "acrc$$" netns "$NS_R"
ip link set "acnc$$" netns "$NS_C"
ip -n "$NS_R" addr add 198.51.100.1/24 dev "acrc$$"
ip -n "$NS_R" link set "acrc$$" up
ip -n "$NS_C" addr add 198.51.100.2/24 dev "acnc$$"
ip -n "$NS_C" link set "acnc$$" up
ip -n "$NS_C" route add default via 198.51.100.1
ip netns exec "$NS_R" sysctl -qw net.ipv4.ip_forward=1
# The layer-4 hash: a client flow (addresses and ports) always takes one next hop.
ip netns exec "$NS_R" sysctl -qw net.ipv4.fib_multipath_hash_policy=1

# --- node daemons -------------------------------------------------------------------
# bg NAME NS CMD...: start CMD in NS in the background, log in $WORK/NAME.log; sets
# LAST_PID (ip netns exec and env exec in turn, so it is the daemon's own pid).
bg() {
    local name=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
start_chronyd() { # NODE NS STRATUM: sets CHRONY_PID_<NODE>
    local node=$1 ns=$2 stratum=$3
    cat >"$WORK/chrony-$node.conf" <<EOF
port $CHRONY_PORT
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum $stratum
cmdport 0
bindcmdaddress /
pidfile $WORK/chrony-$node.pid
EOF
    bg "chronyd-$node" "$ns" chronyd -x -d -u root -f "$WORK/chrony-$node.conf"
    printf -v "CHRONY_PID_$node" %s "$LAST_PID"
}
start_hwntpd() { # NODE NS: sets HWNTPD_PID_<NODE>
    local node=$1 ns=$2
    bg "hwntpd-$node" "$ns" "$HWNTPD" --listen "$ANYCAST:123" \
        --reference "ntp:127.0.0.1:$CHRONY_PORT" --on-unsync "$ON_UNSYNC" \
        "${METRICS_ARGS[@]}" --workers 1 --timestamping software \
        --stats-file "$WORK/hwntpd-$node.prom" --stats-interval 1
    printf -v "HWNTPD_PID_$node" %s "$LAST_PID"
}
start_exabgp() { # NODE NS IP
    local node=$1 ns=$2 ip=$3
    sed -e "s/^\(\s*router-id\) $A_IP;/\1 $ip;/" -e "s/^\(\s*local-address\) $A_IP;/\1 $ip;/" \
        "$ROOT/dist/anycast/exabgp.conf" >"$WORK/exabgp-$node.conf"
    grep -q "local-address $ip;" "$WORK/exabgp-$node.conf" || die "cannot adapt exabgp.conf for $node"
    if [ -n "$HEALTH_CMD" ]; then
        printf '#!/bin/sh\n%s\n' "$HEALTH_CMD" >"$WORK/health.sh"
        chmod 755 "$WORK/health.sh"
        sed -i "s|--cmd \"[^\"]*\"|--cmd \"$WORK/health.sh\"|" "$WORK/exabgp-$node.conf"
        grep -q "health.sh" "$WORK/exabgp-$node.conf" || die "cannot set the health command"
    fi
    bg "exabgp-$node" "$ns" env exabgp_daemon_user=root exabgp_daemon_daemonize=false \
        exabgp_daemon_pid="$WORK/exabgp-$node.pid" exabgp_log_destination=stdout \
        exabgp_api_cli=false exabgp_tcp_bind= exabgp "$WORK/exabgp-$node.conf"
}

start_chronyd A "$NS_A" 2
start_chronyd B "$NS_B" 3
start_hwntpd A "$NS_A"
start_hwntpd B "$NS_B"
start_exabgp A "$NS_A" "$A_IP"
start_exabgp B "$NS_B" "$B_IP"
{ echo "log stderr all;"; cat "$ROOT/dist/anycast/bird.conf"; } >"$WORK/bird.conf"
bg bird "$NS_R" bird -f -c "$WORK/bird.conf" -s "$WORK/bird.ctl" -P "$WORK/bird.pid"

# --- helpers --------------------------------------------------------------------------
nexthops() { # the router's next hops for the anycast address, sorted, space-separated
    ip -n "$NS_R" route show "$ANYCAST/32" 2>/dev/null | grep -o 'via [0-9.]*' | awk '{print $2}' |
        sort | tr '\n' ' ' | sed 's/ $//'
}
# wait_nexthops WANT SECS: until the next hops are WANT; prints the time taken.
wait_nexthops() {
    local want=$1 secs=$2 t
    t=$(now)
    while [ "$(nexthops)" != "$want" ]; do
        if awk -v a="$t" -v b="$(now)" -v s="$secs" 'BEGIN { exit !(b - a > s) }'; then
            return 1
        fi
        sleep 0.05
    done
    since "$t"
}
healthz() { # NS: the node's /healthz line (or the error)
    ip netns exec "$1" curl -sS --max-time 1 "http://$METRICS/healthz" 2>&1 | head -1
}

say "waiting for both nodes to be announced (ECMP route via $A_IP and $B_IP)"
if ! t_up=$(wait_nexthops "$A_IP $B_IP" 40); then
    say "router route: $(ip -n "$NS_R" route show "$ANYCAST/32" | tr '\n' ' ')"
    say "node A /healthz: $(healthz "$NS_A"); node B: $(healthz "$NS_B")"
    timeout 5 ip netns exec "$NS_R" birdc -s "$WORK/bird.ctl" show protocols >"$WORK/birdc.log" 2>&1 || true
    fail "both nodes never announced"
fi
say "announced: next hops $(nexthops) after ${t_up}s; route: $(ip -n "$NS_R" route show "$ANYCAST/32" | tr '\n' ' ' | tr -s ' \t' ' ')"
say "node A /healthz: $(healthz "$NS_A"); node B /healthz: $(healthz "$NS_B")"

# --- the client -----------------------------------------------------------------------
POLL=$WORK/poller.log
bg poller "$NS_C" "$PY" "$ROOT/scripts/lib/ntp_poll.py" "$ANYCAST" 123 "$FLOWS" "$INTERVAL" 0.2 \
    $((6 * MAX_WD + 60)) "$WORK/stop"
POLL_PID=$LAST_PID
sleep 4
t_fault=$(now)

# --- 1. node A loses its reference ----------------------------------------------------
say "stopping node A's reference (chronyd, pid $CHRONY_PID_A)"
stop_pid "$CHRONY_PID_A"
wait_nexthops "$B_IP" "$MAX_WD" >/dev/null ||
    fail "A's route not withdrawn within ${MAX_WD}s of losing its reference (next hops: $(nexthops))"
t_wd=$(now)
wd_ref=$(since "$t_fault")
say "A withdrawn ${wd_ref}s after its reference stopped; A /healthz: $(healthz "$NS_A")"
sleep 3
t_restore=$(now)

# --- 2. node A's reference returns -------------------------------------------------------
say "restarting node A's reference"
start_chronyd A "$NS_A" 2
wait_nexthops "$A_IP $B_IP" "$MAX_WD" >/dev/null ||
    fail "A not announced again within ${MAX_WD}s of its reference returning (next hops: $(nexthops))"
t_re=$(now)
re_ann=$(since "$t_restore")
say "A announced again ${re_ann}s after its reference returned"
sleep 3
t_kill=$(now)

# --- 3. hwntpd on node A is killed ------------------------------------------------------
say "SIGKILL hwntpd on node A (pid $HWNTPD_PID_A)"
{ kill -KILL "$HWNTPD_PID_A" && wait "$HWNTPD_PID_A"; } 2>/dev/null || true
wait_nexthops "$B_IP" "$MAX_WD" >/dev/null ||
    fail "A's route not withdrawn within ${MAX_WD}s of SIGKILL (next hops: $(nexthops))"
t_wd2=$(now)
wd_kill=$(since "$t_kill")
say "A withdrawn ${wd_kill}s after SIGKILL"
sleep 3
t_end=$(now)
touch "$WORK/stop"
stop_pid "$POLL_PID"

# --- judge --------------------------------------------------------------------------
# Every line: SENT_AT FLOW reply STRATUM LI | SENT_AT FLOW lost. Stratum 2 = A, 3 = B.
SA=2 SB=3
window() { # FROM TO: the poll lines sent in [FROM, TO)
    awk -v a="$1" -v b="$2" '$1 >= a && $1 < b' "$POLL"
}
count() { # FROM TO AWK-CONDITION
    window "$1" "$2" | awk "$3 { n++ } END { print n + 0 }"
}
plus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
ok=1
bad() { say "CHECK FAILED: $*"; ok=0; }

t0=$(head -1 "$POLL" | awk '{print $1}')
[ -n "$t0" ] || fail "the client sent nothing"
# Phase 0: both serve; every flow stays on one node.
p0_a=$(count "$t0" "$t_fault" "\$3 == \"reply\" && \$4 == $SA")
p0_b=$(count "$t0" "$t_fault" "\$3 == \"reply\" && \$4 == $SB")
p0_lost=$(count "$t0" "$t_fault" "\$3 == \"lost\"")
split=$(window "$t0" "$t_fault" | awk '$3 == "reply" { s[$2] = s[$2] " " $4 } END {
    for (f in s) { n = split(s[f], v, " "); for (i = 2; i <= n; i++) if (v[i] != v[1]) bad++ } print bad + 0 }')
flows_a=$(window "$t0" "$t_fault" | awk -v sa=$SA '$3 == "reply" && $4 == sa { f[$2] = 1 } END { print length(f) }')
say "both up: replies from A $p0_a, from B $p0_b, lost $p0_lost; flows on A $flows_a of $FLOWS; flows that changed node $split"
[ "$p0_a" -gt 0 ] && [ "$p0_b" -gt 0 ] || bad "both nodes must serve while both are announced"
[ "$split" = 0 ] || bad "a flow moved between nodes while nothing changed (is the L4 hash on?)"
[ "$p0_lost" -le 1 ] || bad "$p0_lost replies lost while both nodes were healthy"

# Phase 1: reference fault -> withdrawal -> only B.
settle=$(plus "$t_wd" 1)
f1_lost=$(count "$t_fault" "$t_restore" "\$3 == \"lost\"")
f1_li3=$(count "$t_fault" "$t_restore" "\$3 == \"reply\" && \$5 == 3")
after1=$(count "$settle" "$t_restore" "\$3 == \"reply\" && \$4 == $SB && \$5 != 3")
after1_bad=$(count "$settle" "$t_restore" "!(\$3 == \"reply\" && \$4 == $SB && \$5 != 3)")
say "reference fault: withdrawn in ${wd_ref}s; replies lost $f1_lost, LI=3 replies $f1_li3; from 1 s after the withdrawal: $after1 synchronised replies from B, $after1_bad others"
[ "$after1" -gt 0 ] && [ "$after1_bad" = 0 ] || bad "after the withdrawal every reply must be a synchronised one from B"
[ "$ON_UNSYNC" = serve ] || [ "$f1_li3" = 0 ] || bad "--on-unsync drop, yet $f1_li3 LI=3 replies"
# Bounded: no more than A's flows sent from the fault until 1 s after the withdrawal.
lost_bound() { # WITHDRAWAL-SECS: requests A's flows send in that time, and one each in flight
    awk -v f="$flows_a" -v i="$INTERVAL" -v w="$1" 'BEGIN { printf "%d", f * (w + 1) / i + f }'
}
b1=$(lost_bound "$wd_ref")
[ $((f1_lost + f1_li3)) -le "$b1" ] || bad "$f1_lost lost + $f1_li3 LI=3 after the reference fault, more than A's flows sent until 1 s after the withdrawal ($b1)"

# Phase 2: A back.
p2_a=$(count "$(plus "$t_re" 0.5)" "$t_kill" "\$3 == \"reply\" && \$4 == $SA && \$5 != 3")
p2_lost=$(count "$(plus "$t_re" 0.5)" "$t_kill" "\$3 == \"lost\"")
say "reference back: announced again in ${re_ann}s; then A served $p2_a synchronised replies, $p2_lost lost"
[ "$p2_a" -gt 0 ] || bad "A announced again but served nothing"

# Phase 3: SIGKILL.
settle2=$(plus "$t_wd2" 1)
f3_lost=$(count "$t_kill" "$t_end" "\$3 == \"lost\"")
f3_li3=$(count "$t_kill" "$t_end" "\$3 == \"reply\" && \$5 == 3")
after3=$(count "$settle2" "$t_end" "\$3 == \"reply\" && \$4 == $SB && \$5 != 3")
after3_bad=$(count "$settle2" "$t_end" "!(\$3 == \"reply\" && \$4 == $SB && \$5 != 3)")
say "SIGKILL: withdrawn in ${wd_kill}s; replies lost $f3_lost, LI=3 $f3_li3; from 1 s after: $after3 synchronised replies from B, $after3_bad others"
[ "$after3" -gt 0 ] && [ "$after3_bad" = 0 ] || bad "after the withdrawal every reply must be a synchronised one from B"
# After the re-announcement the flows are spread again; A's share is at most all of them.
b3=$(flows_a=$FLOWS lost_bound "$wd_kill")
[ "$f3_lost" -le "$b3" ] || bad "$f3_lost lost after SIGKILL, more than the flows sent until 1 s after the withdrawal ($b3)"

total=$(wc -l <"$POLL")
rate=$(awk -v n="$total" -v a="$t0" -v b="$t_end" 'BEGIN { printf "%.0f", n / (b - a) }')
verdict=PASS
[ "$ok" = 1 ] || verdict=FAIL
echo "RESULT anycast-test $verdict: announce ${t_up}s; reference fault -> withdrawal ${wd_ref}s (lost $f1_lost, LI=3 $f1_li3); reference back -> announce ${re_ann}s; SIGKILL -> withdrawal ${wd_kill}s (lost $f3_lost, LI=3 $f3_li3); client $FLOWS flows, $total requests at ${rate}/s, on-unsync $ON_UNSYNC"
[ "$ok" = 1 ]
