#!/bin/busybox sh
# /init of the vm-hwtest guest (built by scripts/vm-hwtest.sh). Mounts the basics, loads
# the NIC modules, puts the second NIC in a network namespace ("cli"), runs
# /guest-test.sh, prints the verdict line the host looks for, and powers off.
#
# Network layout handed to /guest-test.sh (as environment variables):
#   SRV_IF=eth0 SRV_IP=10.99.0.1/24   default namespace (the server side)
#   CLI_IF=eth1 CLI_IP=10.99.0.2/24   namespace of process CLI_NS_PID (the client side);
#                                     run a command there with: in_cli CMD ARGS
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -f /etc/vm-test.conf ] && . /etc/vm-test.conf

say() { echo "VM-HWTEST: $*"; }
verdict() {
    echo "VM-HWTEST RESULT: $*"
    sync
    poweroff -f
    sleep 10
}

say "init at $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r), binaries: ${GUEST_BINARIES:-?}"

for m in $(cat /lib/modules-vm/order); do
    insmod "/lib/modules-vm/$m.ko" || say "insmod $m failed"
done

# Wait (bounded) for the two NICs the host attached.
i=0
while [ ! -e /sys/class/net/eth1 ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ ! -e /sys/class/net/eth0 ] || [ ! -e /sys/class/net/eth1 ]; then
    verdict "FAIL (NICs missing: $(ls /sys/class/net | tr '\n' ' '))"
fi
for n in eth0 eth1; do
    say "$n: driver $(basename "$(readlink /sys/class/net/$n/device/driver)") mac $(cat /sys/class/net/$n/address) ptp $(ls /sys/class/net/$n/device/ptp 2>/dev/null | tr '\n' ' ')"
done

SRV_IF=eth0
SRV_IP=10.99.0.1
CLI_IF=eth1
CLI_IP=10.99.0.2
ip link set lo up
ip addr add "$SRV_IP/24" dev "$SRV_IF"
ip link set "$SRV_IF" up

# A namespace held by a sleeping process (busybox ip has no "netns add", but has
# "link set IF netns PID", and busybox has unshare/nsenter).
unshare -n sleep 100000 &
CLI_NS_PID=$!
sleep 0.2
ip link set "$CLI_IF" netns "$CLI_NS_PID" || verdict "FAIL (cannot move $CLI_IF to a netns)"
in_cli() { nsenter -t "$CLI_NS_PID" -n -- "$@"; }
in_cli ip link set lo up
in_cli ip addr add "$CLI_IP/24" dev "$CLI_IF"
in_cli ip link set "$CLI_IF" up

# Carrier on both ends (the emulated PHY needs a moment), bounded at 15 s.
i=0
until ip link show "$SRV_IF" | grep -q LOWER_UP && in_cli ip link show "$CLI_IF" | grep -q LOWER_UP; do
    i=$((i + 1))
    [ $i -lt 150 ] || break
    sleep 0.1
done
carrier() { if grep -q LOWER_UP; then echo carrier; else echo NO-CARRIER; fi; }
say "links: $SRV_IF $(ip link show "$SRV_IF" | carrier), $CLI_IF $(in_cli ip link show "$CLI_IF" | carrier) after $((i / 10)).$((i % 10)) s"
if ping -c 1 -W 5 "$CLI_IP" >/dev/null 2>&1; then
    say "ping $SRV_IP -> $CLI_IP ok"
else
    say "ping $SRV_IP -> $CLI_IP failed"
fi

export SRV_IF SRV_IP CLI_IF CLI_IP CLI_NS_PID
say "running /guest-test.sh at $(cut -d' ' -f1 /proc/uptime) s"
# The rc goes through a file: busybox sh pipelines give the last command's status.
{
    timeout 600 sh /guest-test.sh
    echo $? >/tmp/guest-test.rc
} 2>&1 | tee /tmp/guest-test.log
rc=$(cat /tmp/guest-test.rc 2>/dev/null || echo 255)
npass=$(grep -c '^CHECK .*: PASS' /tmp/guest-test.log)
nfail=$(grep -c '^CHECK .*: FAIL' /tmp/guest-test.log)
say "guest-test.sh exit $rc, $npass passed, $nfail failed, at $(cut -d' ' -f1 /proc/uptime) s"
if [ "$rc" = 0 ] && [ "$nfail" = 0 ] && [ "$npass" -gt 0 ]; then
    verdict "PASS ($npass checks)"
else
    verdict "FAIL (exit $rc, $npass passed, $nfail failed)"
fi
