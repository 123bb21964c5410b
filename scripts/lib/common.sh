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
