#!/usr/bin/env bash
# Runs a firmware image under QEMU with a virtio-net-pci NIC on a TAP device
# that lives in a network namespace of its own (created here, deleted on exit,
# also on failure or Ctrl-C). Nothing is routed anywhere: the namespace holds
# the TAP (10.0.2.2/24 by default) and nothing else.
#
#   bash firmware/qemu-net.sh IMAGE "APPEND" [-- QEMU_ARGS...]
#
# Environment:
#   ACCEL=tcg|kvm      default tcg (kvm adds -cpu host,-arch-capabilities)
#   NIC_OPTS=...       extra virtio-net-pci properties, e.g. disable-modern=on
#   HOST_IP=10.0.2.2/24
#   HOST_CMD='...'     run in the namespace (background) while the guest runs,
#                      e.g. a UDP echo server or ping -f 10.0.2.15
#   TIMEOUT=60         seconds before QEMU is killed
# Prints the guest's serial output; exits with the guest's debug-exit code
# (QEMU status >> 1), or 124 on timeout. After the run, `ip -s link` of the
# TAP is printed to stderr.
set -euo pipefail
image=$1; shift
append=${1:-}; [ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
ns="tsvfw-$$-$RANDOM"
accel=${ACCEL:-tcg}
cpu=(-cpu max)
[ "$accel" = kvm ] && cpu=(-cpu host,-arch-capabilities)
host_ip=${HOST_IP:-10.0.2.2/24}
hostpid=
cleanup() {
  [ -n "$hostpid" ] && kill "$hostpid" 2>/dev/null || true
  ip netns pids "$ns" 2>/dev/null | while read -r p; do kill "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

ip netns add "$ns"
ip netns exec "$ns" ip tuntap add dev tap0 mode tap
ip netns exec "$ns" ip addr add "$host_ip" dev tap0
ip netns exec "$ns" ip link set tap0 up
if [ -n "${HOST_CMD:-}" ]; then
  ip netns exec "$ns" bash -c "$HOST_CMD" >&2 &
  hostpid=$!
fi
set +e
timeout "${TIMEOUT:-60}" ip netns exec "$ns" qemu-system-x86_64 -accel "$accel" "${cpu[@]}" -m 64 \
  -display none -serial stdio -monitor none -no-reboot \
  -kernel "$image" -append "$append" \
  -device isa-debug-exit,iobase=0xf4,iosize=1 \
  -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
  -device "virtio-net-pci,netdev=n0${NIC_OPTS:+,$NIC_OPTS}" "$@"
rc=$?
set -e
ip netns exec "$ns" ip -s link show tap0 >&2 || true
[ $rc -eq 124 ] && exit 124
exit $((rc >> 1))
