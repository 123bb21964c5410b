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
[ -f /etc/vm-test.conf ] && . /etc/vm-test.conf # VM_NIC (igb or e1000e)
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
#    Its expectations are igb's; the e1000e run checks hwntpd's reaction instead.
# --------------------------------------------------------------------------------------
if [ "${VM_NIC:-igb}" = igb ] && [ -x /bin/vm-probe ]; then
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
#    Server on SRV_IF with NIC TX timestamps (igb: hardware TX, software RX),
#    client (hwntpd-bench query, RFC 9769 interleaved) in the namespace.
# --------------------------------------------------------------------------------------
stat() { # stat METRIC-WITH-LABELS: its value in the stats file (0 if absent)
    v=$(grep -F "$1 " "$STATS" 2>/dev/null | tail -1 | awk '{print $NF}')
    echo "${v:-0}"
}
wait_for_phc_tracking() { # LOG PID: up to 20 s for the PHC fit (while the server runs)
    n=0
    while [ $n -lt 20 ] && ! grep -q "PHC tracking established" "$1"; do
        kill -0 "$2" 2>/dev/null || break
        sleep 1
        n=$((n + 1))
    done
}
wait_for_line() { # LOG PATTERN SECS PID: up to SECS s for PATTERN in LOG (while PID runs)
    n=0
    while [ $n -lt "$3" ] && ! grep -q "$2" "$1"; do
        kill -0 "$4" 2>/dev/null || break
        sleep 1
        n=$((n + 1))
    done
}

# --------------------------------------------------------------------------------------
# 2e. e1000e (VM_NIC=e1000e): the NIC accepts rx filter ALL and TX_ON, then stamps
#     nothing. hwntpd must notice within seconds of serving: a warning naming the
#     interface for each direction and hwntpd_timestamping_degraded 1 in the metrics.
# --------------------------------------------------------------------------------------
if [ "${VM_NIC:-igb}" = e1000e ] && [ -x /bin/hwntpd ] && [ -x /bin/hwntpd-bench ]; then
    STATS=/tmp/hwntpd-stats
    LOG=/tmp/hwntpd.log
    hwntpd --interface "$SRV_IF" --reference local --listen "$SRV_IP:123" --workers 1 \
        --stats-file "$STATS" --stats-interval 1 --log-level info >"$LOG" 2>&1 &
    SRV_PID=$!
    wait_for_line "$LOG" "serving NTP" 20 $SRV_PID
    if kill -0 $SRV_PID 2>/dev/null && grep -q "serving NTP" "$LOG"; then
        check e1000e-start PASS "pid $SRV_PID on $SRV_IP:123 ($SRV_IF)"
    else
        check e1000e-start FAIL "not serving: $(tail -5 "$LOG" | tr '\n' '|')"
    fi
    # What the driver claims: both directions in hardware.
    line=$(grep "hardware timestamping:" "$LOG" | head -1)
    case "$line" in
        *"hardware TX, hardware RX (filter ALL)"*) check e1000e-promise PASS "${line##*hardware timestamping: }" ;;
        *) check e1000e-promise FAIL "log: ${line:-no 'hardware timestamping:' line}" ;;
    esac
    # 12 interleaved requests: at least 8 received packets and 8 replies asking
    # for a transmit timestamp, enough for a verdict in each direction.
    in_cli timeout 60 hwntpd-bench query --server "$SRV_IP:123" --count 12 --interleaved \
        --interval-ms 250 >/tmp/client.log 2>&1
    got=$(grep -c "^  transmit" /tmp/client.log)
    wait_for_line "$LOG" "hardware transmit timestamps were promised but none arrive" 5 $SRV_PID
    sleep 2 # one more stats write
    for dir in receive transmit; do
        line=$(grep "hardware $dir timestamps were promised but none arrive" "$LOG" | head -1)
        case "$line" in
            # (the interface= field may carry colour codes: match the name alone)
            *"arrive:"*"$SRV_IF"*) check "e1000e-$dir-degraded-log" PASS "${line##*WARN }" ;;
            *) check "e1000e-$dir-degraded-log" FAIL "no warning naming $SRV_IF ($got replies): $(grep -i 'timestamp' "$LOG" | tail -3 | tr '\n' '|')" ;;
        esac
    done
    rxg=$(stat "hwntpd_timestamping_degraded{interface=\"$SRV_IF\",direction=\"rx\"}")
    txg=$(stat "hwntpd_timestamping_degraded{interface=\"$SRV_IF\",direction=\"tx\"}")
    hw_rx=$(stat 'hwntpd_rx_timestamps_total{source="hardware"}')
    sw_rx=$(stat 'hwntpd_rx_timestamps_total{source="kernel"}')
    hw_tx=$(stat 'hwntpd_tx_timestamps_total{source="hardware"}')
    req_tx=$(stat 'hwntpd_tx_timestamps_requested_total')
    miss_tx=$(stat 'hwntpd_tx_timestamp_misses_total')
    detail="gauges rx=$rxg tx=$txg; rx stamps hardware $hw_rx software $sw_rx; tx requested $req_tx hardware $hw_tx missed $miss_tx; $got replies"
    if [ "$rxg" = 1 ] && [ "$txg" = 1 ] && [ "$hw_rx" = 0 ] && [ "$hw_tx" = 0 ]; then
        check e1000e-degraded-metrics PASS "$detail"
    else
        check e1000e-degraded-metrics FAIL "$detail"
    fi
    kill $SRV_PID 2>/dev/null
    wait $SRV_PID 2>/dev/null
    echo "---- hwntpd log (e1000e) ----"
    cat "$LOG"
    echo "---- hwntpd stats (non-zero) ----"
    grep -v '^#' "$STATS" 2>/dev/null | grep -v ' 0$'

    # With --timestamping hardware the same NIC makes the node unhealthy:
    # /healthz answers 503 naming why, and --on-unsync drop answers nothing.
    LOG=/tmp/hwntpd-hw.log
    hwntpd --interface "$SRV_IF" --timestamping hardware --on-unsync drop --reference local \
        --listen "$SRV_IP:123" --workers 1 --metrics-listen 127.0.0.1:9123 \
        --log-level info >"$LOG" 2>&1 &
    SRV_PID=$!
    wait_for_line "$LOG" "serving NTP" 20 $SRV_PID
    in_cli timeout 60 hwntpd-bench query --server "$SRV_IP:123" --count 12 --interleaved \
        --interval-ms 250 --timeout-ms 200 >/tmp/client-hw.log 2>&1
    sleep 2
    resp=$(printf 'GET /healthz HTTP/1.0\r\n\r\n' | timeout 5 nc 127.0.0.1 9123 2>&1 | tr -d '\r')
    code=$(echo "$resp" | head -1 | awk '{print $2}')
    reason=$(echo "$resp" | tail -1)
    got=$(grep -c "^  transmit" /tmp/client-hw.log)
    case "$code:$reason" in
        503:*"PHC tracking unhealthy"*|503:*"not arriving"*)
            check e1000e-hardware-unhealthy PASS "/healthz $code: $reason; replies with --on-unsync drop: $got of 12" ;;
        *) check e1000e-hardware-unhealthy FAIL "/healthz '$code': '$reason' ($(echo "$resp" | head -3 | tr '\n' '|'))" ;;
    esac
    if [ "$got" = 0 ]; then
        check e1000e-unhealthy-drops PASS "no reply to 12 requests while unhealthy (--on-unsync drop)"
    else
        check e1000e-unhealthy-drops FAIL "$got replies while unhealthy with --on-unsync drop"
    fi
    kill $SRV_PID 2>/dev/null
    wait $SRV_PID 2>/dev/null
    echo "---- hwntpd log (e1000e, --timestamping hardware; no PHC lines) ----"
    grep -v "PHC offset jumped" "$LOG"
fi

# Sections 2 and 3 expect igb (hardware TX stamps, a PHC that keeps time).
# The server also serves NTS (certificates made by the host in /etc/nts), so the
# NTS check below runs on the same hardware-timestamped path.
if [ "${VM_NIC:-igb}" = igb ] && [ -x /bin/hwntpd ]; then
    STATS=/tmp/hwntpd-stats
    LOG=/tmp/hwntpd.log
    NTS_ARGS=
    [ -f /etc/nts/server.pem ] && NTS_ARGS="--nts-cert /etc/nts/server.pem --nts-key /etc/nts/server.key --nts-ke-listen $SRV_IP:4460"
    # shellcheck disable=SC2086 # NTS_ARGS is a list of words
    hwntpd --interface "$SRV_IF" --reference local --listen "$SRV_IP:123" --workers 1 \
        --stats-file "$STATS" --stats-interval 1 --log-level info $NTS_ARGS >"$LOG" 2>&1 &
    SRV_PID=$!
    # PHC tracking needs a few readings before hardware stamps are converted.
    wait_for_phc_tracking "$LOG" $SRV_PID
    if kill -0 $SRV_PID 2>/dev/null; then
        check hwntpd-start PASS "pid $SRV_PID on $SRV_IP:123 ($SRV_IF)"
    else
        check hwntpd-start FAIL "exited early: $(tail -5 "$LOG" | tr '\n' '|')"
    fi

    # The start-up log names the fallback: igb refuses the NTP_ALL and ALL rx filters.
    line=$(grep "hardware timestamping:" "$LOG" | head -1)
    case "$line" in
        *"hardware TX, software RX"*ERANGE*) check hwntpd-hw-fallback PASS "${line##*hardware timestamping: }" ;;
        *) check hwntpd-hw-fallback FAIL "log: ${line:-no 'hardware timestamping:' line}" ;;
    esac
    # The PHC was read by the best method igb has: PRECISE refused, EXTENDED used.
    line=$(grep "PHC offsets via" "$LOG" | head -1)
    case "$line" in
        *PTP_SYS_OFFSET_EXTENDED*) check hwntpd-phc-method PASS "${line##*INFO }" ;;
        *) check hwntpd-phc-method FAIL "log: ${line:-no 'PHC offsets via' line}" ;;
    esac
    if grep -q "PHC tracking established" "$LOG"; then
        check hwntpd-phc-tracking PASS "$(grep 'PHC tracking established' "$LOG" | head -1 | sed 's/.*INFO //')"
    else
        check hwntpd-phc-tracking FAIL "PHC tracking never became healthy"
    fi

    if [ -x /bin/hwntpd-bench ]; then
        in_cli timeout 60 hwntpd-bench query --server "$SRV_IP:123" --count 8 --interleaved \
            --interval-ms 300 >/tmp/client.log 2>&1
        inter=$(grep -c "^#.*interleaved" /tmp/client.log)
        inside=$(grep -c "inside: yes" /tmp/client.log)
        outside=$(grep -c "inside: no" /tmp/client.log)
        if [ "$inter" -ge 3 ]; then
            check hwntpd-interleaved PASS "$inter of 8 replies interleaved"
        else
            check hwntpd-interleaved FAIL "$inter of 8 replies interleaved: $(tail -5 /tmp/client.log | tr '\n' '|')"
        fi
        # Each served transmit time (a NIC stamp converted to UTC through the PHC
        # tracking) lies between the server's receipt of the request and the
        # client's receipt of the reply, both read from the guest's clock.
        if [ "$inside" -ge 3 ] && [ "$outside" -eq 0 ]; then
            check hwntpd-hw-tx-utc PASS "$inside exact transmit times inside [server rx, client rx]: $(grep 'inside: yes' /tmp/client.log | head -1 | sed 's/^ *//')"
        else
            check hwntpd-hw-tx-utc FAIL "$inside inside, $outside outside: $(grep 'exact transmit' /tmp/client.log | tr '\n' '|')"
        fi
        # NTS (RFC 8915) on the same path: an NTS-KE session over TLS 1.3, then
        # authenticated interleaved requests. Every reply must verify, and the
        # interleaved ones must serve the NIC's transmit time as above.
        if [ -n "$NTS_ARGS" ]; then
            in_cli timeout 60 hwntpd-bench query --server "$SRV_IP:123" --count 8 --interleaved \
                --interval-ms 300 --nts-ke "$SRV_IP:4460" --nts-ca /etc/nts/ca.pem \
                >/tmp/client-nts.log 2>&1
            valid=$(grep -c "^  nts: authenticated" /tmp/client-nts.log)
            unauth=$(grep -c "^  nts: .*not a valid reply" /tmp/client-nts.log)
            inter=$(grep -c "^#.*interleaved" /tmp/client-nts.log)
            inside=$(grep -c "inside: yes" /tmp/client-nts.log)
            outside=$(grep -c "inside: no" /tmp/client-nts.log)
            if [ "$valid" -ge 6 ] && [ "$unauth" -eq 0 ] && [ "$inter" -ge 3 ]; then
                check hwntpd-nts-interleaved PASS "$valid of 8 replies authenticated (none failed), $inter interleaved; $(grep -m1 '^NTS-KE' /tmp/client-nts.log)"
            else
                check hwntpd-nts-interleaved FAIL "$valid authenticated, $unauth failed, $inter interleaved: $(grep -E '^NTS-KE|nts:|hwntpd-bench' /tmp/client-nts.log | tail -4 | tr '\n' '|')"
            fi
            if [ "$inside" -ge 3 ] && [ "$outside" -eq 0 ]; then
                check hwntpd-nts-hw-tx-utc PASS "$inside authenticated exact transmit times inside [server rx, client rx]"
            else
                check hwntpd-nts-hw-tx-utc FAIL "$inside inside, $outside outside: $(grep 'exact transmit' /tmp/client-nts.log | tr '\n' '|')"
            fi
        else
            check hwntpd-nts FAIL "no /etc/nts/server.pem in the guest (the host makes it)"
        fi
    else
        check hwntpd-query FAIL "no hwntpd-bench in the guest"
    fi
    sleep 2 # one more stats write
    hw=$(stat 'hwntpd_tx_timestamps_total{source="hardware"}')
    kern=$(stat 'hwntpd_tx_timestamps_total{source="kernel"}')
    inter_srv=$(stat 'hwntpd_replies_total{mode="interleaved"}')
    daemon=$(stat 'hwntpd_tx_timestamps_total{source="daemon"}')
    # Every interleaved reply served an exact (NIC) transmit time, none the
    # pre-send reading, so the inside-the-window check above was about NIC stamps.
    if [ "$hw" -ge 3 ] && [ "$inter_srv" -ge 3 ] && [ "$daemon" -eq 0 ]; then
        check hwntpd-hw-tx-stamps PASS "hardware TX stamps $hw, kernel $kern, interleaved replies $inter_srv, pre-send served $daemon"
    else
        check hwntpd-hw-tx-stamps FAIL "hardware TX stamps $hw, kernel $kern, interleaved replies $inter_srv, pre-send served $daemon"
    fi
    nts_req=$(stat 'hwntpd_nts_requests_total')
    nts_ke=$(stat 'hwntpd_nts_ke_sessions_total')
    nts_bad=$(($(stat 'hwntpd_nts_naks_total') + $(stat 'hwntpd_nts_auth_failures_total') + $(stat 'hwntpd_nts_malformed_total')))
    if [ "$nts_req" -ge 6 ] && [ "$nts_ke" -ge 1 ] && [ "$nts_bad" -eq 0 ]; then
        check hwntpd-nts-counters PASS "NTS-KE sessions $nts_ke, NTS requests $nts_req, NAKs/auth failures/malformed $nts_bad"
    else
        check hwntpd-nts-counters FAIL "NTS-KE sessions $nts_ke, NTS requests $nts_req, NAKs/auth failures/malformed $nts_bad"
    fi
    kill $SRV_PID 2>/dev/null
    wait $SRV_PID 2>/dev/null
    echo "---- hwntpd log ----"
    cat "$LOG"
    echo "---- client ----"
    cat /tmp/client.log 2>/dev/null
    echo "---- NTS client ----"
    cat /tmp/client-nts.log 2>/dev/null
    echo "---- hwntpd stats (non-zero) ----"
    grep -v '^#' "$STATS" 2>/dev/null | grep -v ' 0$'
fi

# --------------------------------------------------------------------------------------
# 3. The PHC as the reference (--reference phc): the igb PHC starts at the guest's
#    UTC time, so --utc-offset 0; the served time must agree with the guest's clock.
#    It runs as nobody after start-up (--user): PHC reads and NIC timestamps
#    go on through what was opened and set while root.
# --------------------------------------------------------------------------------------
if [ "${VM_NIC:-igb}" = igb ] && [ -x /bin/hwntpd ] && [ -x /bin/hwntpd-bench ]; then
    LOG=/tmp/hwntpd-phc.log
    grep -q '^nobody:' /etc/passwd 2>/dev/null || echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>/etc/passwd
    grep -q '^nogroup:' /etc/group 2>/dev/null || echo 'nogroup:x:65534:' >>/etc/group
    hwntpd --reference phc --phc /dev/ptp0 --utc-offset 0 --interface "$SRV_IF" \
        --listen "$SRV_IP:123" --workers 1 --user nobody --log-level info >"$LOG" 2>&1 &
    SRV_PID=$!
    wait_for_phc_tracking "$LOG" $SRV_PID
    # Every thread's real, effective, saved and filesystem uid is nobody's, no capabilities.
    bad=$(for t in /proc/$SRV_PID/task/*/status; do
        grep -E '^(Uid|CapEff|CapPrm):' "$t" | tr -s '\t' ' ' | tr '\n' ' '
        echo
    done | grep -cv 'Uid: 65534 65534 65534 65534 CapPrm: 0000000000000000 CapEff: 0000000000000000')
    nthreads=$(ls /proc/$SRV_PID/task 2>/dev/null | wc -l)
    if [ "$nthreads" -gt 0 ] && [ "$bad" -eq 0 ] && grep -q "dropped privileges" "$LOG"; then
        check hwntpd-user-nobody PASS "$nthreads threads as uid 65534, CapPrm=CapEff=0"
    else
        check hwntpd-user-nobody FAIL "$bad of $nthreads threads not dropped: $(grep -E 'dropped|error' "$LOG" | tail -2 | tr '\n' '|')"
    fi
    in_cli timeout 30 hwntpd-bench query --server "$SRV_IP:123" --count 3 --interval-ms 300 >/tmp/client-phc.log 2>&1
    stratum=$(grep -m1 "^  stratum" /tmp/client-phc.log | awk '{print $2}')
    refid=$(grep -m1 "^  refid" /tmp/client-phc.log | awk '{print $2}')
    # offsets in us, absolute values, worst of the replies
    worst=$(grep "^  offset " /tmp/client-phc.log | awk '{v=$2; if (v<0) v=-v; if (v>m) m=v} END {print m+0}')
    nrep=$(grep -c "^  offset " /tmp/client-phc.log)
    if [ "$stratum" = 1 ] && [ "$refid" = '"PTP"' ] && [ "$nrep" -ge 2 ] && awk "BEGIN {exit !($worst < 2000)}"; then
        check hwntpd-reference-phc PASS "stratum $stratum refid $refid, $nrep replies, worst |offset| $worst us against the guest clock"
    else
        check hwntpd-reference-phc FAIL "stratum '$stratum' refid '$refid' replies $nrep worst |offset| '$worst' us: $(tail -3 /tmp/client-phc.log | tr '\n' '|') $(tail -3 "$LOG" | tr '\n' '|')"
    fi
    kill $SRV_PID 2>/dev/null
    wait $SRV_PID 2>/dev/null
fi

[ $FAILED -eq 0 ]
