#!/usr/bin/env bash
# The hardware-KVM lane: runs a command where /dev/kvm is hardware-style KVM,
# on any x86-64 Linux host with QEMU, even one without /dev/kvm of its own.
#
# It boots Debian's generic kernel under QEMU's TCG (pure emulation) with
# `-cpu max`, an AMD CPU with SVM and nested paging, so `kvm_amd` loads inside
# that VM. The VM sees this host's root read-only over 9p, under a tmpfs
# overlay (writes stay in the VM), chroots into it, changes to the current
# directory and runs COMMAND with bash. The exit status is COMMAND's.
#
# Usage: scripts/nested-kvm.sh [--timeout S] [--mem SIZE] [--smp N] [--] COMMAND...
#   env: TSVISOR_NESTED_CACHE (default <tsvisor cache>/nested-kvm), NESTED_VERBOSE=1 shows the VM's kernel log
#   Variables named TSVISOR_* and CI are passed into the VM.
# Exit status: COMMAND's; 125 when the lane itself failed (no status came back).
set -euo pipefail
timeout=5400 mem=6G smp=2
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "nested-kvm: unknown option $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "nested-kvm: no command given; usage: scripts/nested-kvm.sh [--timeout S] -- COMMAND..." >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
say() { echo "nested-kvm: $*" >&2; }

if ! command -v qemu-system-x86_64 >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing qemu-system-x86 (apt-get)"
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
  else
    say "QEMU is missing; install it with: sudo apt-get install qemu-system-x86"; exit 125
  fi
fi

cache=${TSVISOR_NESTED_CACHE:-${TSVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tsvisor}/nested-kvm}
mkdir -p "$cache"

# The VM's kernel: Debian's generic one (kvm_amd, 9p, overlay and tun as modules), cached by package name.
pkg=$(cat "$cache/kernel-package" 2>/dev/null || true)
if [ -z "$pkg" ] || [ ! -s "$cache/$pkg/vmlinuz" ]; then
  apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-[0-9]' || apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$pkg" ] || { say "cannot resolve Debian's linux-image-amd64 (apt-get update?)"; exit 125; }
  say "downloading $pkg (the lane's kernel, cached in $cache)"
  tmp=$(mktemp -d "$cache/dl.XXXX")
  (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || { rm -rf "$tmp"; say "apt-get download $pkg failed"; exit 125; }
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  rm -rf "${cache:?}/$pkg"; mkdir -p "$cache/$pkg"
  cp "$tmp"/x/boot/vmlinuz-* "$cache/$pkg/vmlinuz"
  mv "$tmp"/x/lib/modules/* "$cache/$pkg/modules"
  rm -rf "$tmp"
  echo "$pkg" > "$cache/kernel-package"
fi
kdir="$cache/$pkg"

# The VM's initramfs: busybox, the modules the lane needs, and init. Rebuilt when init or this script changes.
busybox=/bin/busybox
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  say "busybox-static is missing; install it with: apt-get install busybox-static"; exit 125
fi
key=$( (cat "$here/nested-kvm/init" "$0"; echo "$pkg") | sha256sum | cut -c1-12)
initrd="$cache/initramfs-$key.cpio.gz"
if [ ! -s "$initrd" ]; then
  say "building the lane's initramfs"
  root=$(mktemp -d "$cache/root.XXXX")
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,modules}
  cp "$busybox" "$root/bin/busybox"
  # In load order: virtio PCI and 9p for the host's root, overlay, tun for TAPs, veth for tests, KVM.
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet \
           9pnet_virtio 9p overlay tun veth irqbypass ccp kvm kvm-amd; do
    f=$(find "$kdir/modules" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
    [ -n "$f" ] || continue # built in, or absent from this kernel (init says which failed to load)
    case "$f" in *.xz) xz -dc "$f" > "$root/modules/$m.ko" ;; *) cp "$f" "$root/modules/$m.ko" ;; esac
    echo "$m" >> "$root/modules/order"
  done
  install -m 755 "$here/nested-kvm/init" "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$root"
fi

# The run's own directory, shared read-write: the command in, the status out.
run=$(mktemp -d "${TMPDIR:-/tmp}/tsvisor-lane.XXXXXX")
trap 'rm -rf "$run"' EXIT
{
  echo "cd $(printf %q "$PWD") || exit 125"
  # Tests that must not run here (see docs/testing.md) look for it.
  echo "export TSVISOR_IN_LANE=1"
  for v in $(compgen -e); do
    case "$v" in TSVISOR_*|CI) echo "export $v=$(printf %q "${!v}")" ;; esac
  done
  printf '%q ' "$@"; echo
} > "$run/cmd.sh"

say "booting a TCG VM with kvm_amd ($smp vCPUs, $mem; about 10 s) to run: $*"
log=warn
[ "${NESTED_VERBOSE:-0}" = 1 ] && log=info
# The lane's own kernel can lock up inside KVM_RUN under QEMU's emulated SVM
# (seen: "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [vcpu0]", then
# never again a line): stop the VM at the first such line instead of waiting
# for --timeout; scripts/test.js runs a lane that died once more.
watch_console() {
  local line
  while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
      *"watchdog: BUG: soft lockup - CPU#"*)
        say "the lane's kernel locked up (a kvm_amd/TCG fault, not a test's): stopping the VM"
        pkill -f "lane.run=$run" ;;
    esac
  done
}
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem" -no-reboot -nodefaults -display none \
  -kernel "$kdir/vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 quiet loglevel=$([ $log = info ] && echo 6 || echo 3) lane.run=$run" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$run",mount_tag=lanerun,security_model=none \
  -serial stdio -monitor none </dev/null 2>&1 | watch_console
qemu=${PIPESTATUS[0]}
set -e
if [ -f "$run/status" ]; then
  status=$(cat "$run/status")
  exit "$status"
fi
if [ $qemu = 124 ]; then say "the VM did not finish within $timeout s (--timeout)"; else say "the VM ended (QEMU status $qemu) without the command's status"; fi
exit 125
