#!/usr/bin/env bash
# Prepares the stock Debian cloud kernel guest for tests: downloads
# linux-image-cloud-amd64's kernel package with apt-get, takes its bzImage
# (LZ4 payload: tsvisor decompresses it on the host) and the System.map from
# the matching -dbg package, and
# writes an uncompressed initramfs of busybox-static, guest/init and the
# virtio-net modules, which /init loads in the order of /lib/modules/load-order.
# Output: <cache>/debian-cloud/{vmlinuz,System.map,config,initramfs.cpio,release}
# (src/guest/default-guest.ts debianGuestPaths()). Prints that directory.
# Cached by package version: a second run costs nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cache=${TSVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tsvisor}
out="$cache/debian-cloud"
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  echo "debian-kernel: $busybox is missing or not static; install it with: apt-get install busybox-static" >&2
  exit 1
fi

# The real kernel package behind the metapackage, e.g. linux-image-6.1.0-56-cloud-amd64.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
if [ -z "$pkg" ]; then
  echo "debian-kernel: apt-cache does not know linux-image-cloud-amd64; run apt-get update first" >&2
  exit 1
fi
version=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
release=${pkg#linux-image-}
stamp="$pkg $version $(cat "$here/init" "$0" | sha256sum | cut -c1-12)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/initramfs.cpio" ]; then
  echo "debian-kernel: cached $out" >&2
  echo "$out"; exit 0
fi

work="$cache/debian-cloud-work"
rm -rf "$work"; mkdir -p "$work"
cd "$work"
echo "debian-kernel: downloading $pkg $version" >&2
apt-get download -q "$pkg=$version" >&2
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/root"
boot="$work/root/boot"
mods="$work/root/lib/modules/$release"
[ -f "$boot/vmlinuz-$release" ] || { echo "debian-kernel: $pkg has no /boot/vmlinuz-$release" >&2; exit 1; }

# The virtio-net stack in dependency order; ones built into this kernel are skipped.
order="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"
args=()
loaded=" "
for m in $order; do
  f=$(find "$mods/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)
  if [ -z "$f" ]; then
    if grep -q "/$m.ko\$" "$mods/modules.builtin" 2>/dev/null; then continue; fi
    echo "debian-kernel: module $m is neither in $pkg nor built in" >&2; exit 1
  fi
  case "$f" in
    *.xz) xz -dc "$f" > "$work/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "$work/$m.ko" ;;
    *.gz) gzip -dc "$f" > "$work/$m.ko" ;;
    *) cp "$f" "$work/$m.ko" ;;
  esac
  # Every dependency must come earlier in the list (or be built in).
  for dep in $(modinfo -F depends "$work/$m.ko" | tr ',' ' '); do
    case "$loaded" in *" $dep "*) ;; *) echo "debian-kernel: $m needs $dep, which is not loaded before it" >&2; exit 1 ;; esac
  done
  loaded="$loaded$m "
  args+=(--module "$work/$m.ko")
done

if [ ! -f "$root/dist/scripts/build-initramfs.js" ]; then
  (cd "$root" && node scripts/build.js --no-check)
fi
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
node "$root/dist/scripts/build-initramfs.js" --busybox "$busybox" --init "$here/init" --out "$tmp/initramfs.cpio" "${args[@]}"
cp "$boot/vmlinuz-$release" "$tmp/vmlinuz"
# The package's System.map is a placeholder; the real one is in the -dbg
# package (about 280 MB, read only up to that file and then deleted).
echo "debian-kernel: downloading $pkg-dbg for System.map" >&2
apt-get download -q "$pkg-dbg=$version" >&2
dpkg-deb --fsys-tarfile "$work/$pkg"-dbg_*.deb 2>/dev/null | tar -xO --occurrence=1 "./usr/lib/debug/boot/System.map-$release" > "$tmp/System.map" || true
rm -f "$work/$pkg"-dbg_*.deb
[ -s "$tmp/System.map" ] || { echo "debian-kernel: no System.map-$release in $pkg-dbg" >&2; exit 1; }
cp "$boot/config-$release" "$tmp/config"
echo "$release" > "$tmp/release"
echo "$stamp" > "$tmp/stamp"
rm -rf "$out"; mv "$tmp" "$out"
rm -rf "$work"
echo "debian-kernel: $release: vmlinuz $(stat -c %s "$out/vmlinuz") bytes, initramfs $(stat -c %s "$out/initramfs.cpio") bytes (modules:${loaded% })" >&2
echo "$out"
