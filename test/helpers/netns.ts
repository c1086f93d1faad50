// A network namespace per test, with a TAP created inside it (never in the
// host's namespace) and the host-side address 10.0.2.2/24 on it. Deleted in
// teardown, which runs even when the test fails.
import type { ExecutionContext } from 'ava';
import { NetNamespace } from '../../src/net/netns.js';
import { Tap } from '../../src/net/tap.js';
import { SANDBOX_HOST_IP, SANDBOX_PREFIX } from '../../src/net/net-option.js';

export const HOST_IP = SANDBOX_HOST_IP;

export interface TestNet {
  ns: NetNamespace;
  tap: Tap;
  /** `ip -s link` counters of the TAP as the namespace sees them (rx: frames from the guest). */
  counters(): { rxPackets: number; txPackets: number };
}

export function netMissing(): string | null {
  if (process.getuid?.() !== 0) return 'needs root to create a network namespace and a TAP';
  return null;
}

/** `queues`: the TAP's queues, one per virtio-net queue pair (more than one: a multi-queue TAP). */
export function testNet(t: ExecutionContext, name = 'tap0', queues = 1): TestNet {
  const ns = NetNamespace.create('tsvt');
  t.teardown(() => ns.delete());
  const tap = ns.enter(() => Tap.open(name, { queues }));
  t.teardown(() => tap.close());
  ns.must(['ip', 'addr', 'add', `${HOST_IP}/${SANDBOX_PREFIX}`, 'dev', name]);
  ns.must(['ip', 'link', 'set', name, 'up']);
  return {
    ns,
    tap,
    counters() {
      const out = ns.must(['ip', '-s', 'link', 'show', name]);
      const lines = out.split('\n').map((l) => l.trim());
      const rx = lines[lines.findIndex((l) => l.startsWith('RX:')) + 1].split(/\s+/);
      const tx = lines[lines.findIndex((l) => l.startsWith('TX:')) + 1].split(/\s+/);
      return { rxPackets: Number(rx[1]), txPackets: Number(tx[1]) };
    },
  };
}
