# shellcheck shell=bash
# Shared by scripts/bench.sh and scripts/accuracy.sh (sourced, not run).

log() { printf '== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

stop_pid() { # stop one process we started, by its id
    local pid=$1
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

install_pkg() { # install Debian packages without starting their services
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    { apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } || rc=$?
    [ "$created" = 1 ] && rm -f "$policy"
    return $rc
}

# make_veth_pair NS_SRV NS_CLI VETH_SRV VETH_CLI SRV_IP CLI_IP: two network
# namespaces joined by a veth pair, addressed SRV_IP/30 and CLI_IP/30.
make_veth_pair() {
    local ns_srv=$1 ns_cli=$2 veth_srv=$3 veth_cli=$4 srv_ip=$5 cli_ip=$6
    ip netns add "$ns_srv"
    ip netns add "$ns_cli"
    ip link add "$veth_srv" type veth peer name "$veth_cli"
    ip link set "$veth_srv" netns "$ns_srv"
    ip link set "$veth_cli" netns "$ns_cli"
    ip -n "$ns_srv" addr add "$srv_ip/30" dev "$veth_srv"
    ip -n "$ns_cli" addr add "$cli_ip/30" dev "$veth_cli"
    for ns in "$ns_srv" "$ns_cli"; do ip -n "$ns" link set lo up; done
    ip -n "$ns_srv" link set "$veth_srv" up
    ip -n "$ns_cli" link set "$veth_cli" up
}

# remove_veth_pair NS_SRV NS_CLI: delete the namespaces of make_veth_pair (the
# veth pair goes with them); quiet and successful when they are already gone.
remove_veth_pair() {
    local ns
    for ns in "$@"; do ip netns del "$ns" 2>/dev/null || true; done
}

# netns_names NS_PREFIX VETH_PREFIX NET: names and addresses for this run's pair
# of namespaces (unique per process id), for make_veth_pair and the servers:
#   NS_SRV=NS_PREFIX-srv-PID  NS_CLI=NS_PREFIX-cli-PID
#   VETH_SRV=VETH_PREFIXsPID  VETH_CLI=VETH_PREFIXcPID
#   SRV_IP=NET.1  CLI_IP=NET.2  PORT=123 (the server's)
# shellcheck disable=SC2034  # the sourcing script uses them
netns_names() {
    local ns=$1 veth=$2 net=$3
    NS_SRV=$ns-srv-$$
    NS_CLI=$ns-cli-$$
    VETH_SRV=${veth}s$$
    VETH_CLI=${veth}c$$
    SRV_IP=$net.1
    CLI_IP=$net.2
    PORT=123
}

# trap_cleanup FN: run FN when the script exits; INT and TERM exit with 130,
# so FN runs once, through the EXIT trap.
trap_cleanup() {
    # shellcheck disable=SC2064  # FN is a function name: expand it now
    trap "$1" EXIT
    trap 'exit 130' INT TERM
}

require_tools() { # require_tools TOOL...: die unless each TOOL is on PATH
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is missing"
    done
}

# have_or_install PKG CMD...: install PKG (install_pkg, logged) unless every CMD
# is on PATH already; the status is install_pkg's, or 0 when nothing was needed.
have_or_install() {
    local pkg=$1 cmd
    shift
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null && continue
        log "installing $pkg"
        install_pkg "$pkg"
        return
    done
    return 0
}

# chrony_server_conf IP PORT PIDFILE: a chronyd configuration, on stdout, for a
# stratum-1 server on its own clock answering on IP:PORT, with no command port
# or socket; no rate limit (ratelimit is off unless configured).
chrony_server_conf() {
    cat <<EOF
port $2
bindaddress $1
allow all
local stratum 1
cmdport 0
bindcmdaddress /
pidfile $3
EOF
}
