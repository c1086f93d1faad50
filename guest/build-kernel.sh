#!/usr/bin/env bash
# Builds the default guest kernel from Debian's linux-source-6.1 with
# guest/kernel.config merged over tinyconfig, and caches the result.
# The cache key covers the config, this script and the source package version,
# so a changed config rebuilds and an unchanged one costs nothing.
# Prints the cache directory (holding vmlinux, bzImage, System.map, config) on stdout.
# Usage: guest/build-kernel.sh [smp]   (smp: guest/kernel-smp.config merged on top, for --cpus N > 1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tarball=/usr/src/linux-source-6.1.tar.xz
# shellcheck source=guest/packages.sh
. "$here/packages.sh"
need linux-source-6.1:$tarball make:make gcc:gcc bc:bc flex:flex bison:bison xz-utils:xz \
  libelf-dev:/usr/include/gelf.h libssl-dev:/usr/include/openssl/ssl.h
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$tarball")
fragments=("$here/kernel.config")
[ "${1:-}" = smp ] && fragments+=("$here/kernel-smp.config")
key=$(cat "${fragments[@]}" "$0" | sha256sum | cut -c1-12)
cache=${TSVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tsvisor}
out="$cache/kernel-$srcver-$key"
if [ -f "$out/vmlinux" ] && [ -f "$out/System.map" ]; then
  echo "build-kernel: cached $out" >&2
  echo "$out"; exit 0
fi
work="$cache/build-linux-6.1"
mkdir -p "$work"
if [ ! -f "$work/.unpacked-$srcver" ]; then
  echo "build-kernel: unpacking $tarball" >&2
  rm -rf "$work"; mkdir -p "$work"
  tar -xJf "$tarball" -C "$work" --strip-components=1
  touch "$work/.unpacked-$srcver"
fi
cd "$work"
echo "build-kernel: configuring (tinyconfig + ${fragments[*]##*/})" >&2
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >/dev/null
make -s olddefconfig >/dev/null
# Every line of the fragment must have survived: a silently dropped option
# (a typo, an unmet dependency) would give a kernel that fails much later.
missing=0
# (A later fragment may set what an earlier one leaves unset.)
for f in "${fragments[@]}"; do
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) grep -qx -- "$line" .config || { echo "build-kernel: option not applied: $line" >&2; missing=1; } ;;
      "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
        overridden=0
        for g in "${fragments[@]}"; do [ "$g" = "$f" ] || ! grep -q "^$opt=" "$g" || overridden=1; done
        [ "$overridden" = 1 ] || ! grep -q "^$opt=" .config || { echo "build-kernel: option still set: $opt" >&2; missing=1; } ;;
    esac
  done < "$f"
done
[ "$missing" = 0 ] || exit 1
jobs=$(nproc)
# About 1 900 build steps for this config: progress as a percentage of that.
echo "build-kernel: compiling with $jobs jobs (about 5-10 minutes on 2 cores the first time)" >&2
make -j"$jobs" bzImage 2>&1 | awk '/^  [A-Z]/ { n++; if (n % 100 == 0) { p = int(n * 100 / 1900); if (p > 99) p = 99; printf "build-kernel: %d%% (%d steps)\n", p, n > "/dev/stderr" } } / error:|\*\*\*/ { print > "/dev/stderr" }'
[ "${PIPESTATUS[0]}" = 0 ] || { echo "build-kernel: make failed in $work" >&2; exit 1; }
tmp="$out.tmp.$$"
mkdir -p "$tmp"
cp vmlinux System.map .config "$tmp/"
cp arch/x86/boot/bzImage "$tmp/"
rm -rf "$out"; mv "$tmp" "$out"
echo "build-kernel: done $out" >&2
echo "$out"
