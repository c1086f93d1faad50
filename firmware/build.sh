#!/usr/bin/env bash
# Builds firmware images: bash firmware/build.sh [name...]
# No names: every scenarios/<name>.c. Output: firmware/build/<name>.elf.
# Incremental (make): an up-to-date image is not rebuilt. Prints the image
# paths on stdout, one a line; build chatter goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

for tool in gcc ld objcopy make; do
  command -v "$tool" >/dev/null || { echo "firmware/build.sh: '$tool' not found; install it with: apt-get install -y gcc binutils make" >&2; exit 1; }
done
# gcc must produce 32-bit code. Freestanding code needs only gcc's own headers,
# but some gcc installs lack i386 support without the multilib package.
mkdir -p build
if [ ! -f build/.m32-ok ]; then
  if echo 'int x(void){return 0;}' | gcc -m32 -ffreestanding -c -x c - -o build/.m32-probe.o 2>/dev/null; then
    rm -f build/.m32-probe.o; touch build/.m32-ok
  else
    echo "firmware/build.sh: gcc -m32 does not work here; install it with: apt-get install -y gcc-multilib" >&2
    exit 1
  fi
fi

targets=()
for name in "$@"; do
  name=${name%.elf}
  if [ ! -f "scenarios/$name.c" ]; then
    echo "firmware/build.sh: no scenario '$name' (have: $(make -s list))" >&2
    exit 1
  fi
  targets+=("build/$name.elf")
done
[ ${#targets[@]} -gt 0 ] || read -r -a targets <<<"$(make -s list | sed 's#[^ ][^ ]*#build/&.elf#g')"

make -s --no-print-directory -j"$(nproc)" "${targets[@]}" >&2
for t in "${targets[@]}"; do echo "$here/$t"; done
