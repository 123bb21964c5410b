#!/usr/bin/env bash
# vm-hwtest.sh: run hwntpd's "real NIC" checks inside QEMU guests with two emulated
# Intel NICs: igb (PHC, SIOCSHWTSTAMP, hardware TX timestamps) and e1000e (accepts
# hardware timestamping, then delivers none: hwntpd must notice). See shared/VM-HWTEST.md.
#
# Usage (as root, from any directory):  bash scripts/vm-hwtest.sh
#
# What it does:
#   1. installs what it needs (idempotent): QEMU 10 from bookworm-backports, busybox-static,
#      cpio, xz-utils; fetches Debian's linux-image-6.12.*+deb12-amd64-unsigned with
#      `apt-get download` and keeps only vmlinuz + the NIC modules in $VM_CACHE;
#   2. builds the guest binaries statically (glibc +crt-static) into target/vm:
#      scripts/vm/probe (always) and, when asked, hwntpd itself;
#   3. builds an initramfs: busybox, modules, scripts/vm/init.sh as /init,
#      scripts/vm/guest-test.sh, the binaries in GUEST_BINARIES below, and an NTS
#      CA and server certificate for the guest's server address (made here with
#      openssl) in /etc/nts;
#   4. boots QEMU (TCG, two NICs of one model on one hub) once per model in VM_NICS,
#      prints the guest's CHECK lines and exits 0 only if every guest printed
#      "VM-HWTEST RESULT: PASS".
#
# Environment knobs:
#   VM_CACHE=/var/cache/hwntpd-vm  downloads and the extracted kernel (reused across runs)
#   VM_HWNTPD=1|0                  1 (default): build hwntpd and hwntpd-bench statically
#                                  and run the hwntpd section of guest-test.sh
#   HWNTPD_BIN=/path               use this hwntpd binary instead of building it (implies
#                                  the hwntpd section); HWNTPD_BENCH_BIN likewise
#   VM_EXTRA_BINS="/a /b"          more programs for the guest's /bin (shared libraries
#                                  are copied along when they are dynamic, e.g. chronyd)
#   VM_TIMEOUT=300                 seconds the guest may run before it is killed
#   VM_SMP=1 VM_MEM=512            guest vCPUs / MiB
#   VM_NICS="igb e1000e"           NIC models, one boot each. igb: hardware TX stamps,
#                                  software RX, a PHC that keeps time. e1000e: accepts
#                                  rx filter ALL and TX_ON but stamps nothing (RX
#                                  software only, every TX stamp missed) and its PHC runs
#                                  2.5x too fast; the guest checks that hwntpd reports
#                                  both directions degraded. VM_NIC=X is VM_NICS=X.
#   VM_KEEP=1                      keep the work dir (initramfs, console log) for debugging
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VMDIR="$REPO/scripts/vm"
VM_CACHE=${VM_CACHE:-/var/cache/hwntpd-vm}
VM_TIMEOUT=${VM_TIMEOUT:-300}
VM_SMP=${VM_SMP:-1}
VM_MEM=${VM_MEM:-512}
VM_NICS=${VM_NIC:-${VM_NICS:-igb e1000e}}
VM_NIC=${VM_NICS%% *}
VM_HWNTPD=${VM_HWNTPD:-1}
HWNTPD_BIN=${HWNTPD_BIN:-}
HWNTPD_BENCH_BIN=${HWNTPD_BENCH_BIN:-}
VM_EXTRA_BINS=${VM_EXTRA_BINS:-}
VM_KEEP=${VM_KEEP:-0}
RUST_TARGET=x86_64-unknown-linux-gnu
VM_TARGET_DIR="$REPO/target/vm"
export DEBIAN_FRONTEND=noninteractive

# Kernel modules for the guest, in insmod order (path under lib/modules/VERSION/kernel/).
# e1000e is optional: present means it is loaded too (needed for the e1000e run).
GUEST_MODULES=(
    drivers/dca/dca.ko
    drivers/i2c/algos/i2c-algo-bit.ko
    drivers/net/ethernet/intel/igb/igb.ko
    drivers/net/ethernet/intel/e1000e/e1000e.ko
)

T0=$(date +%s)
log() { echo "[vm-hwtest +$(($(date +%s) - T0))s] $*"; }
die() { echo "[vm-hwtest] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and QEMU reads the cache dir)"

WORK=$(mktemp -d /tmp/hwntpd-vm.XXXXXX)
POLICY_RC_ADDED=0
cleanup() {
    if [ "$POLICY_RC_ADDED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$VM_KEEP" = 1 ]; then
        echo "[vm-hwtest] work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ------------------------------------------------------------------ 1. host packages
have_qemu_igb() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local devs nic
    devs=$(timeout 30 qemu-system-x86_64 -device help 2>/dev/null)
    for nic in $VM_NICS; do
        grep -q "name \"$nic\"" <<<"$devs" || return 1
    done
}
have_busybox_static() {
    [ -x /bin/busybox ] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}

# Add bookworm-backports to the Suites: line that lists plain "bookworm".
ensure_backports_suite() {
    local f=/etc/apt/sources.list.d/debian.sources
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    APT_UPDATED=0 # the lists must be fetched again
    if [ -f "$f" ] && grep -Eq '^Suites:(.*[[:space:]])?bookworm([[:space:]]|$)' "$f"; then
        log "adding bookworm-backports to the Suites: line of $f"
        sed -i -E '/^Suites:(.*[[:space:]])?bookworm([[:space:]]|$)/ s/[[:space:]]*$/ bookworm-backports/' "$f"
    else
        log "adding /etc/apt/sources.list.d/hwntpd-backports.list"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' \
            >/etc/apt/sources.list.d/hwntpd-backports.list
    fi
}

APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        timeout 300 apt-get update -q >"$WORK/apt-update.log" 2>&1 ||
            { tail -20 "$WORK/apt-update.log"; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
}

apt_install() {
    # No daemon may start from a postinst here; keep an existing policy-rc.d as it is.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_ADDED=1
    fi
    log "apt-get install $*"
    timeout 600 apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" \
        >"$WORK/apt-install.log" 2>&1 ||
        { tail -30 "$WORK/apt-install.log"; die "apt-get install $* failed"; }
}

ensure_host_packages() {
    local pkgs=()
    have_busybox_static || pkgs+=(busybox-static)
    command -v cpio >/dev/null 2>&1 || pkgs+=(cpio)
    command -v xz >/dev/null 2>&1 || pkgs+=(xz-utils)
    command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
    if [ ${#pkgs[@]} -gt 0 ]; then
        apt_update
        apt_install "${pkgs[@]}"
    fi
    if ! have_qemu_igb; then
        ensure_backports_suite
        apt_update
        apt_install -t bookworm-backports qemu-system-x86
        have_qemu_igb || die "QEMU lacks one of the devices '$VM_NICS' even after installing from bookworm-backports"
    fi
    log "host tools: $(qemu-system-x86_64 --version | head -1); busybox $(busybox | head -1 | awk '{print $2}')"
}

# ------------------------------------------------------------------ 1b. guest kernel
KDIR="$VM_CACHE/kernel"
ensure_kernel() {
    if [ -f "$KDIR/complete" ]; then
        log "guest kernel (cached): $(cat "$KDIR/version")"
        return 0
    fi
    mkdir -p "$VM_CACHE"
    local dl="$VM_CACHE/download"
    rm -rf "$KDIR" "$dl"
    mkdir -p "$dl"
    chmod 755 "$VM_CACHE" "$dl" # so apt's _apt user may write (no "unsandboxed" warning)
    chown _apt "$dl" 2>/dev/null || true

    # Newest first; up to 3 tries with the lists at hand, then again after apt-get update
    # (old lists may name versions the mirror no longer has).
    local pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'
    local cands pkg ok=0 tries pass
    for pass in 1 2; do
        if [ $pass = 2 ]; then
            [ "$APT_UPDATED" = 0 ] || break
            apt_update
        fi
        cands=$(apt-cache pkgnames linux-image-6.12. 2>/dev/null | grep -E "$pattern" | sort -V -r || true)
        tries=0
        for pkg in $cands; do
            tries=$((tries + 1))
            [ $tries -le 3 ] || break
            log "apt-get download $pkg (~107 MB)"
            if (cd "$dl" && timeout 600 apt-get download -q "$pkg" >"$WORK/apt-download.log" 2>&1); then
                ok=1
                break 2
            fi
            tail -5 "$WORK/apt-download.log"
        done
    done
    [ $ok = 1 ] || die "could not download a linux-image-6.12.*+deb12-amd64-unsigned package"

    local deb
    deb=$(ls "$dl"/*.deb | head -1)
    local x="$dl/x"
    mkdir -p "$x"
    local globs=('./boot/vmlinuz-*')
    local m
    for m in "${GUEST_MODULES[@]}"; do globs+=("./lib/modules/*/kernel/$m*"); done
    log "extracting vmlinuz and modules from $(basename "$deb")"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards "${globs[@]}" ||
        die "extracting $deb failed"

    mkdir -p "$KDIR/modules"
    cp "$x"/boot/vmlinuz-* "$KDIR/vmlinuz"
    local kver
    kver=$(basename "$(ls -d "$x"/lib/modules/*)")
    : >"$KDIR/modules/order"
    for m in "${GUEST_MODULES[@]}"; do
        local name src
        name=$(basename "$m" .ko)
        src=$(ls "$x/lib/modules/$kver/kernel/$m"* 2>/dev/null | head -1 || true)
        if [ -z "$src" ]; then
            log "module $name not in the package (skipped)"
            continue
        fi
        case "$src" in
            *.xz) xz -dc "$src" >"$KDIR/modules/$name.ko" ;;
            *.zst) zstd -dc "$src" >"$KDIR/modules/$name.ko" ;;
            *.gz) gzip -dc "$src" >"$KDIR/modules/$name.ko" ;;
            *) cp "$src" "$KDIR/modules/$name.ko" ;;
        esac
        echo "$name" >>"$KDIR/modules/order"
    done
    grep -qx igb "$KDIR/modules/order" || die "igb module missing from $deb"
    echo "$kver ($(basename "$deb"))" >"$KDIR/version"
    touch "$KDIR/complete"
    rm -rf "$dl"
    log "guest kernel: $(cat "$KDIR/version")"
}

# ------------------------------------------------------------------ 2. static binaries
# The guest's /bin, as "source-path:name-in-guest" (filled below; dynamic ones are fine
# too: their shared libraries are copied along).
GUEST_BINARIES=()

cargo_static() {
    # cargo_static MANIFEST_DIR ARGS...: release build, glibc, statically linked.
    local dir=$1
    shift
    (cd "$dir" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        timeout 1200 cargo build --release --target "$RUST_TARGET" \
        --target-dir "$VM_TARGET_DIR" "$@")
}

build_binaries() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found"
    log "building scripts/vm/probe (static)"
    cargo_static "$VMDIR/probe" -q --locked || die "probe build failed"
    local out="$VM_TARGET_DIR/$RUST_TARGET/release"
    GUEST_BINARIES+=("$out/vm-probe:vm-probe")

    if [ -n "$HWNTPD_BIN" ]; then
        GUEST_BINARIES+=("$HWNTPD_BIN:hwntpd")
        [ -z "$HWNTPD_BENCH_BIN" ] || GUEST_BINARIES+=("$HWNTPD_BENCH_BIN:hwntpd-bench")
    elif [ "$VM_HWNTPD" = 1 ]; then
        log "building hwntpd (static, --bins) into target/vm"
        cargo_static "$REPO" --bins || die "hwntpd build failed"
        GUEST_BINARIES+=("$out/hwntpd:hwntpd")
        [ ! -x "$out/hwntpd-bench" ] || GUEST_BINARIES+=("$out/hwntpd-bench:hwntpd-bench")
    fi
    local b
    for b in $VM_EXTRA_BINS; do GUEST_BINARIES+=("$b:$(basename "$b")"); done
}

# ------------------------------------------------------------------ 3. initramfs
# copy_with_libs SRC DEST_IN_ROOT: a program plus, when dynamic, what ldd lists.
copy_with_libs() {
    local src=$1 dest=$2 root=$WORK/root lib
    [ -f "$src" ] || die "guest binary not found: $src"
    install -D -m 755 "$src" "$root$dest"
    if ldd "$src" >/dev/null 2>&1; then
        for lib in $(ldd "$src" | grep -oE '/[^ ]+' | sort -u); do
            [ -e "$root$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
        done
    fi
}

build_initramfs() {
    local root=$WORK/root
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules-vm}
    cp /bin/busybox "$root/bin/busybox"
    install -m 755 "$VMDIR/init.sh" "$root/init"
    install -m 755 "$VMDIR/guest-test.sh" "$root/guest-test.sh"
    cp "$KDIR"/modules/*.ko "$KDIR/modules/order" "$root/lib/modules-vm/"
    local entry
    for entry in "${GUEST_BINARIES[@]}"; do
        copy_with_libs "${entry%%:*}" "/bin/${entry##*:}"
    done
    make_nts_certs "$root/etc/nts"
    # Settings the guest reads (a file, not the kernel command line: easier to extend).
    cat >"$root/etc/vm-test.conf" <<EOF
VM_NIC=$VM_NIC
GUEST_BINARIES="$(for entry in "${GUEST_BINARIES[@]}"; do printf '%s ' "${entry##*:}"; done)"
EOF
    (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"
    log "initramfs: $(du -h "$WORK/initrd.gz" | cut -f1) with /bin: $(ls "$root/bin" | tr '\n' ' ')"
}

# make_nts_certs DIR: a CA and a server certificate for the guest's server address
# (10.99.0.1, scripts/vm/init.sh), valid two days, for the NTS check in guest-test.sh.
make_nts_certs() {
    local d=$1 ip=10.99.0.1
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkdir -p "$d"
    (
        cd "$WORK"
        openssl req -x509 "${ec[@]}" -keyout ca.key -out "$d/ca.pem" -days 2 -subj "/CN=vm-hwtest CA"
        openssl req "${ec[@]}" -keyout "$d/server.key" -out server.csr -subj "/CN=$ip"
        printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
            "$ip" >ext.cnf
        openssl x509 -req -in server.csr -CA "$d/ca.pem" -CAkey ca.key -CAcreateserial \
            -out "$d/server.pem" -days 2 -extfile ext.cnf
    ) >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log"; die "cannot make the NTS certificates"; }
}

# ------------------------------------------------------------------ 4. boot and judge
run_vm() {
    local console=$WORK/console.log rc=0
    log "booting QEMU (tcg, 2x $VM_NIC on one hub, timeout ${VM_TIMEOUT}s); guest console follows"
    set +e
    timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
        -accel tcg -cpu max -smp "$VM_SMP" -m "$VM_MEM" -nographic -no-reboot \
        -kernel "$KDIR/vmlinuz" -initrd "$WORK/initrd.gz" \
        -append "console=ttyS0 panic=-1 quiet loglevel=3" \
        -device "$VM_NIC,netdev=n0,addr=0x4" -netdev hubport,id=n0,hubid=0 \
        -device "$VM_NIC,netdev=n1,addr=0x8" -netdev hubport,id=n1,hubid=0 \
        </dev/null 2>&1 | sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc/\n/g' |
        tee "$console" | sed -u 's/^/  guest| /'
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" = 0 ] || log "QEMU exited with $rc$([ "$rc" = 124 ] && echo ' (timeout)')"

    local checks pass fail
    checks=$(grep -E '^CHECK [^:]+: (PASS|FAIL)' "$console" || true)
    pass=$(printf '%s\n' "$checks" | grep -c ': PASS' || true)
    fail=$(printf '%s\n' "$checks" | grep -c ': FAIL' || true)
    echo
    echo "==== vm-hwtest checks (guest kernel $(cut -d' ' -f1 "$KDIR/version"), NIC $VM_NIC) ===="
    if [ -n "$checks" ]; then printf '%s\n' "$checks"; else echo "(no CHECK lines in the console log)"; fi
    local verdict
    verdict=$(grep -E '^VM-HWTEST RESULT:' "$console" | tail -1 || true)
    echo "${verdict:-VM-HWTEST RESULT: none (the guest did not finish; see the console above)}"
    echo "vm-hwtest: $pass passed, $fail failed"
    log "done"
    case "$verdict" in
        "VM-HWTEST RESULT: PASS"*) return 0 ;;
        *) return 1 ;;
    esac
}

ensure_host_packages
ensure_kernel
build_binaries
overall=0
for VM_NIC in $VM_NICS; do
    if [ "$VM_NIC" != igb ] && ! grep -qx "$VM_NIC" "$KDIR/modules/order"; then
        die "no $VM_NIC module in the guest kernel"
    fi
    build_initramfs
    run_vm || overall=1
done
echo "vm-hwtest: NIC models $VM_NICS: $([ $overall = 0 ] && echo PASS || echo FAIL)"
exit $overall
