#!/bin/sh
# ======================================================================================
# guest-test.sh: THE TESTS THAT RUN INSIDE THE VM (busybox sh). Add real tests here.
# ======================================================================================
# Run by /init (scripts/vm/init.sh) once both NICs are up. Environment:
#   SRV_IF SRV_IP   server NIC and address, default namespace     (eth0, 10.99.0.1)
#   CLI_IF CLI_IP   client NIC and address, in a network namespace (eth1, 10.99.0.2)
#   CLI_NS_PID      a process in that namespace: `in_cli CMD ARGS` runs CMD there
# Programs in /bin: busybox applets plus the list GUEST_BINARIES in scripts/vm-hwtest.sh
# (vm-probe always; hwntpd and hwntpd-bench with VM_HWNTPD=1 or HWNTPD_BIN=...).
#
# Output contract: one line per check, exactly `CHECK name: PASS detail` or
# `CHECK name: FAIL detail` (the host prints these). Exit non-zero if anything failed.
# /init turns "exit 0 and no FAIL and at least one PASS" into VM-HWTEST RESULT: PASS.

in_cli() { nsenter -t "$CLI_NS_PID" -n -- "$@"; }
FAILED=0
check() { # check NAME PASS|FAIL DETAIL...
    name=$1 res=$2
    shift 2
    echo "CHECK $name: $res $*"
    [ "$res" = PASS ] || FAILED=1
}
run() { # run CMD...: run a program that prints its own CHECK lines; note its failure
    "$@" || FAILED=1
}

# --------------------------------------------------------------------------------------
# 1. Probe: what the emulated NIC and its PHC give (scripts/vm/probe/src/main.rs).
# --------------------------------------------------------------------------------------
if [ -x /bin/vm-probe ]; then
    run vm-probe nic "$SRV_IF"
    PORT=12399
    in_cli vm-probe recv "$CLI_IP" $PORT 3 20000 >/tmp/probe-recv.log 2>&1 &
    RECV_PID=$!
    sleep 1
    run vm-probe send "$SRV_IF" "$SRV_IP" "$CLI_IP" $PORT 3
    wait $RECV_PID || FAILED=1
    cat /tmp/probe-recv.log
fi

# --------------------------------------------------------------------------------------
# 2. hwntpd itself (only when the host put it in: VM_HWNTPD=1 or HWNTPD_BIN=...).
#    Server on SRV_IF with NIC TX timestamps, client in the namespace.
#    LEAD: adjust the flags and the greps below to the real CLI / log / stats format.
# --------------------------------------------------------------------------------------
if [ -x /bin/hwntpd ]; then
    STATS=/tmp/hwntpd-stats
    hwntpd --interface "$SRV_IF" --reference local --listen "$SRV_IP:123" \
        --stats-file "$STATS" >/tmp/hwntpd.log 2>&1 &
    SRV_PID=$!
    sleep 3
    if kill -0 $SRV_PID 2>/dev/null; then
        check hwntpd-start PASS "pid $SRV_PID listening on $SRV_IP:123 ($SRV_IF)"
    else
        check hwntpd-start FAIL "exited early: $(tail -5 /tmp/hwntpd.log | tr '\n' '|')"
    fi

    # Client: hwntpd-bench from this repo if present, else chronyd if the host added it
    # (VM_EXTRA_BINS="$(command -v chronyd)").
    if [ -x /bin/hwntpd-bench ]; then
        if in_cli timeout 60 hwntpd-bench query "$SRV_IP:123" >/tmp/client.log 2>&1; then
            check hwntpd-query PASS "$(tail -3 /tmp/client.log | tr '\n' '|')"
        else
            check hwntpd-query FAIL "$(tail -5 /tmp/client.log | tr '\n' '|')"
        fi
    elif [ -x /bin/chronyd ]; then
        mkdir -p /var/lib/chrony /run/chrony
        if in_cli timeout 60 chronyd -Q -t 50 "server $SRV_IP iburst xleave maxsamples 4" \
            >/tmp/client.log 2>&1; then
            check chronyd-query PASS "$(tail -3 /tmp/client.log | tr '\n' '|')"
        else
            check chronyd-query FAIL "$(tail -5 /tmp/client.log | tr '\n' '|')"
        fi
    else
        echo "INFO no client program in the guest (hwntpd-bench/chronyd): query skipped"
    fi

    kill -INT $SRV_PID 2>/dev/null
    i=0
    while kill -0 $SRV_PID 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL $SRV_PID 2>/dev/null
    echo "---- hwntpd log (last 30 lines) ----"
    tail -30 /tmp/hwntpd.log
    echo "---- hwntpd stats ----"
    cat "$STATS" 2>/dev/null || echo "(no stats file)"
    echo "----"
    # The server must have found the PHC and used NIC TX timestamps.
    if grep -qi 'hardware' /tmp/hwntpd.log; then
        check hwntpd-hw-tx PASS "log mentions hardware timestamping"
    else
        check hwntpd-hw-tx FAIL "no 'hardware' in the hwntpd log"
    fi
    if [ -s "$STATS" ]; then
        check hwntpd-stats PASS "$(wc -c <"$STATS") bytes"
    else
        check hwntpd-stats FAIL "stats file $STATS missing or empty"
    fi
fi

exit $FAILED
