#!/usr/bin/env bash
# Builds the default guest: the kernel (guest/build-kernel.sh, cached) and an
# uncompressed initramfs of busybox-static + guest/init, into
# <cache>/default-guest/{vmlinux,bzImage,System.map,initramfs.cpio}, and the
# SMP kernel for --cpus N > 1 into <cache>/default-guest/smp/, where tsvisor
# finds them (src/guest/default-guest.ts). Prints that directory.
# Run by `npm run guest`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
# shellcheck source=guest/packages.sh
. "$here/packages.sh"
busybox=${BUSYBOX:-/bin/busybox}
[ -n "${BUSYBOX:-}" ] || need busybox-static:/bin/busybox file:file
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  echo "guest: $busybox is not statically linked; install busybox-static (sudo apt-get install busybox-static)" >&2
  exit 1
fi
kernel=$(bash "$here/build-kernel.sh")
smp_kernel=$(bash "$here/build-kernel.sh" smp)
cache=${TSVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tsvisor}
out="$cache/default-guest"
if [ ! -f "$root/dist/scripts/build-initramfs.js" ]; then
  (cd "$root" && node scripts/build.js --no-check)
fi
mkdir -p "$out"
node "$root/dist/scripts/build-initramfs.js" --busybox "$busybox" --init "$here/init" --out "$out/initramfs.cpio"
mkdir -p "$out/smp"
for f in vmlinux bzImage System.map; do
  ln -f "$kernel/$f" "$out/$f" 2>/dev/null || cp -f "$kernel/$f" "$out/$f"
  ln -f "$smp_kernel/$f" "$out/smp/$f" 2>/dev/null || cp -f "$smp_kernel/$f" "$out/smp/$f"
done
cp -f "$kernel/.config" "$out/config"
cp -f "$smp_kernel/.config" "$out/smp/config"
echo "guest: kernel $(stat -c %s "$out/vmlinux") bytes vmlinux, $(stat -c %s "$out/bzImage") bytes bzImage; initramfs $(stat -c %s "$out/initramfs.cpio") bytes" >&2
echo "$out"
