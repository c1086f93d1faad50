// Property tests: a hostile guest drives the whole virtio-net PCI function —
// config space at any offset and width, BARs sized, moved over each other,
// over RAM and to 0, the modern and legacy register files at any offset and
// width, MSI-X table and PBA garbage, queues configured in any order, status
// going backwards, FEATURES_OK with bad features, notifies for any queue, ring
// memory scribbled while the data path runs, the command register's decode
// bits toggled and BARs moved under live ioeventfd bindings (a fake KVM that
// refuses what the kernel refuses, and fails on demand). Whatever it does:
// - no exception reaches the caller (the vCPU run loop or the main loop);
// - the device touches no guest memory outside RAM (CheckedMemory, and every
//   iovec handed to the TAP is checked against the RAM mappings);
// - a violation the data path detects sets NEEDS_RESET with a config
//   interrupt on a modern device, stops the device on a legacy one, and no
//   packet moves until the driver resets it;
// - every remap rebinds the queue notifies: a bound notify address is always
//   one the device decodes now, only injected KVM failures are failures, and
//   after a failure the next remap binds them all again;
// - after a reset and a clean driver set-up, a frame goes through TX to the
//   TAP and another from the TAP into an RX buffer, byte for byte.
import test from 'ava';
import fc from 'fast-check';
import {
  CLEAN_RING_BASE, RAM_A_SIZE, RAM_B, RAM_B_SIZE, RAM_END, cfgRead, cfgWrite, cleanSetup, hostileRig, mmioAccess, pioAccess, roundTrip, type Rig,
} from './helpers/hostile-rig.js';
import { assertProperty, fuzzRuns } from './helpers/fuzz-runs.js';
import { PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_IO, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../src/devices/pci/config-space.js';
import { bindingFailures, followNotifyIoeventfds } from '../src/devices/virtio/vcpu-devices.js';
import { GuestErrorLog } from '../src/devices/virtio/guest-error-log.js';
import { LEGACY_BAR, MODERN_BAR, MODERN_NOTIFY_OFFSET, MSIX_BAR } from '../src/devices/virtio/virtio-pci.js';
import { VIRTIO_CONFIG_S_NEEDS_RESET } from '../src/devices/virtio/transport-state.js';
import { featureSet, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../src/devices/net/virtio-net-features.js';

// Two queue pairs: five queues to select and configure, and MQ among the offered features a hostile driver may take.
const rig = hostileRig(2);
test.after.always(() => rig.close());

type IoeventfdArgs = { addr: number; len: number; eventfd: number; pio?: boolean; datamatch?: number; deassign?: boolean };
const ioeventfdKey = (o: IoeventfdArgs) => `${o.pio ? 'pio' : 'mmio'} 0x${o.addr.toString(16)}/${o.len} fd ${o.eventfd} match ${o.datamatch ?? '-'}`;

/**
 * KVM_IOEVENTFD as the kernel keeps it: assigning a binding twice is EEXIST,
 * deassigning an unknown one ENOENT, an address outside the bus EINVAL;
 * `failNext` makes the next assigns fail as a full io bus would (ENOSPC).
 */
class FakeIoeventfds {
  readonly bound = new Set<string>();
  failNext = 0;
  injected = 0;
  ioeventfd(o: IoeventfdArgs): void {
    const key = ioeventfdKey(o);
    if (o.deassign) {
      if (!this.bound.delete(key)) throw new Error(`ENOENT: ${key}`);
      return;
    }
    if (!Number.isInteger(o.addr) || o.addr < 0 || o.addr + o.len > (o.pio ? 0x10000 : 2 ** 52)) throw new Error(`EINVAL: ${key}`);
    if (this.failNext > 0) {
      this.failNext--;
      this.injected++;
      throw new Error(`ENOSPC (injected): ${key}`);
    }
    if (this.bound.has(key)) throw new Error(`EEXIST: ${key}`);
    this.bound.add(key);
  }
}

// The remap → ioeventfd-rebind path, wired as the vCPU worker wires it under --ioeventfd.
const NOTIFY_FDS = [101, 102, 103, 104, 105];
const kvm = new FakeIoeventfds();
const bindFailures = bindingFailures(new GuestErrorLog('virtio-net', { sink: () => {} }));
/** Whether the last rebind left some notify unbound (an injected failure); the next one must repair it. */
let bindingsStale = false;
/** A rebind failure the fake KVM did not inject (EEXIST, ENOENT, EINVAL: the rebind itself is wrong). */
let unexpectedFailure = '';
let rebinds = 0;
{
  const guard = bindFailures.guard;
  bindFailures.guard = (what, f) => {
    const before = bindFailures.count;
    guard(what, f);
    rebinds++;
    bindingsStale = bindFailures.count !== before;
    // The rebind reports its first error only; an injected one may hide another, which the binding checks then catch.
    if (bindingsStale && !bindFailures.lastError.includes('(injected)')) unexpectedFailure ||= bindFailures.lastError;
  };
}
followNotifyIoeventfds(rig.dev, kvm, NOTIFY_FDS, bindFailures);

/** The bindings the device's current BAR mappings call for. */
function wantedBindings(r: Rig): Set<string> {
  const want = new Set<string>();
  NOTIFY_FDS.forEach((eventfd, q) => {
    const { legacyPort, modernGpa } = r.dev.notifyAddresses(q);
    if (modernGpa >= 0) want.add(ioeventfdKey({ addr: modernGpa, len: 2, eventfd }));
    if (legacyPort >= 0) want.add(ioeventfdKey({ addr: legacyPort, len: 2, eventfd, pio: true, datamatch: q }));
  });
  return want;
}

/** Cases per CI run: 40 000 before the remap ops, cut so the rebinds they add keep the file near its old ~6 s. */
const RUNS = 30_000;

/** Operations that can move a BAR or toggle decode. */
const REMAPS = new Set<string>(['cfg', 'cfgDirect', 'bar', 'command']);

/** Null when the bindings are sound: only what is wanted, all of it unless a failure is pending repair, and decoded by this device. */
function bindingProblem(r: Rig): string | null {
  if (unexpectedFailure !== '') return `a rebind failed without an injected failure: ${unexpectedFailure}`;
  const want = wantedBindings(r);
  for (const k of kvm.bound) if (!want.has(k)) return `stale binding ${k} (wanted: ${[...want].join(', ') || 'none'})`;
  if (!bindingsStale) for (const k of want) if (!kvm.bound.has(k)) return `missing binding ${k}`;
  // A bound notify must reach this device when KVM lets it through: the bus decodes the address to our BAR.
  for (const q of NOTIFY_FDS.keys()) {
    const { legacyPort, modernGpa } = r.dev.notifyAddresses(q);
    if (modernGpa >= 0) {
      const i = r.mmio.find(modernGpa);
      if (i < 0 || r.mmio.ranges[i].base !== r.dev.barMapped(MODERN_BAR)) return `modern notify 0x${modernGpa.toString(16)} is not decoded by the modern BAR`;
    }
    if (legacyPort >= 0 && r.pio.lookup(legacyPort) === undefined) return `legacy notify port 0x${legacyPort.toString(16)} decodes nothing`;
  }
  return null;
}

const HOLE = RAM_A_SIZE + 0x1000;
const BIG = [0, 1, 2, 3, 4, 7, 8, 0xb, 0xf, 0x40, 0x4f, 0x80, 0xff, 16, 64, 256, 0x100, 0xffff, 0x10000, 0x12345678, 0xffffffff, 0x80000000];
const ADDRS = [...CLEAN_RING_BASE, CLEAN_RING_BASE[0] + 0x100, CLEAN_RING_BASE[0] + 0x142, RAM_A_SIZE - 16, RAM_A_SIZE - 6, HOLE, RAM_B, RAM_B + RAM_B_SIZE - 8, 0xfff0_0000];

const u32 = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
  { weight: 3, arbitrary: fc.constantFrom(...BIG) },
  { weight: 2, arbitrary: fc.constantFrom(...ADDRS) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 32 }) },
);
const width = fc.constantFrom(1, 2, 4, 1, 2, 4, 3, 8);
const bus = fc.boolean(); // through the buses at the BAR's address, or straight into the handler

const op = fc.oneof(
  // Config space through mechanism #1 (the BARs, command and capabilities most often).
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('cfg' as const), off: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0x04, max: 0x27 }), fc.integer({ min: 0x40, max: 0xa0 })), size: fc.constantFrom(1, 2, 4), write: fc.boolean(), value: u32 }) },
  // Any offset of the 4 KiB extended space, odd widths, straight into the function.
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('cfgDirect' as const), off: fc.integer({ min: 0, max: 4095 }), size: width, write: fc.boolean(), value: u32 }) },
  // BAR sizing and moves: all-ones, 0, over another BAR or into its middle, over RAM, past RAM, anywhere.
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('bar' as const), index: fc.integer({ min: 0, max: 5 }), target: fc.constantFrom('size', 'zero', 'io', 'msix', 'modern', 'ram', 'random', 'home', 'overlap', 'outside', 'high'), value: u32 }) },
  // The command register: I/O and memory decode toggled (with bus master and INTx disable along), byte or word wide.
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('command' as const), bits: fc.subarray([PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER, PCI_COMMAND_INTX_DISABLE]), byte: fc.boolean() }) },
  // KVM refuses the next ioeventfd assigns (a full io bus): the guest keeps running, the next remap repairs.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('kvmFail' as const), n: fc.integer({ min: 1, max: 3 }) }) },
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('modern' as const), off: fc.oneof(fc.integer({ min: 0, max: 63 }), fc.integer({ min: 0x1000, max: 0x1003 }), fc.integer({ min: 0x2000, max: 0x2010 }), fc.integer({ min: 0x3000, max: 0x3010 }), fc.integer({ min: 0, max: 0x4007 })), size: width, write: fc.boolean(), value: u32, bus }) },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('legacy' as const), off: fc.integer({ min: 0, max: 70 }), size: width, write: fc.boolean(), value: u32, bus }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('msix' as const), off: fc.oneof(fc.integer({ min: 0, max: 0x47 }), fc.integer({ min: 0x800, max: 0x810 }), fc.integer({ min: 0, max: 0x1007 })), size: width, write: fc.boolean(), value: u32, bus }) },
  // Deeper states: a queue configured (well or badly), features, status.
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('queue' as const), q: fc.integer({ min: 0, max: 3 }), legacy: fc.boolean(), size: fc.constantFrom(1, 2, 16, 64, 256, 512, 3, 0, 0xffff), desc: fc.constantFrom(...ADDRS), avail: fc.constantFrom(...ADDRS), used: fc.constantFrom(...ADDRS), pfn: fc.oneof(fc.integer({ min: 0, max: 0x400 }), fc.constantFrom(0xffffffff, RAM_B / 4096, (RAM_A_SIZE >> 12) - 1)) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('features' as const), legacy: fc.boolean(), lo: u32, hi: u32 }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('status' as const), legacy: fc.boolean(), value: fc.oneof(fc.constantFrom(0, 1, 3, 0xb, 0xf, 7, 4, 8, 0x40, 0x80, 0xcf), fc.integer({ min: 0, max: 0xff })) }) },
  // Guest RAM under the rings: garbage descriptors, ring entries and index jumps.
  { weight: 6, arbitrary: fc.record({
    kind: fc.constant('scribble' as const), q: fc.integer({ min: 0, max: 2 }), part: fc.constantFrom('desc', 'desc', 'idx', 'ring', 'word'), i: fc.integer({ min: 0, max: 17 }),
    addr: u32, hi: fc.constantFrom(0, 0, 0, 1, 0xffffffff), len: u32, flags: fc.oneof(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 0xffff })), next: fc.oneof(fc.integer({ min: 0, max: 17 }), fc.integer({ min: 0, max: 0xffff })),
  }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('notify' as const), q: fc.oneof(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 0xffff })), legacy: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('main' as const), readable: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('host' as const), len: fc.integer({ min: 0, max: 1600 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('irq' as const), q: fc.integer({ min: -1, max: 4 }) }) },
);
type Op = typeof op extends fc.Arbitrary<infer T> ? T : never;

const BASE_FEATURES = featureSet(VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS);
const setupArb = fc.record({
  modern: fc.boolean(),
  msix: fc.boolean(),
  extra: fc.subarray([VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CTRL_VQ]),
});
type SetupChoice = typeof setupArb extends fc.Arbitrary<infer T> ? T : never;

function setUp(r: Rig, c: SetupChoice) {
  const features = BASE_FEATURES + featureSet(...c.extra) + (c.modern ? 2 ** VIRTIO_F_VERSION_1 : 0);
  return cleanSetup(r, { modern: c.modern, msix: c.msix, features, ctrl: c.extra.includes(VIRTIO_NET_F_CTRL_VQ) });
}

function barTarget(r: Rig, o: Extract<Op, { kind: 'bar' }>): number {
  switch (o.target) {
    case 'size': return 0xffffffff;
    case 'zero': return 0;
    case 'io': return r.home.io;
    case 'msix': return r.home.msix;
    case 'modern': return r.home.modern;
    case 'ram': return 0x1000;
    case 'home': return [r.home.io, r.home.msix, 0, 0, r.home.modern, 0][o.index];
    // Into the middle of another BAR as it is mapped now (or where it would be).
    case 'overlap': {
      const other = [r.dev.barMapped(LEGACY_BAR), r.dev.barMapped(MSIX_BAR), r.dev.barMapped(MODERN_BAR)][o.value % 3];
      return other < 0 ? o.value : other + (o.value & 0xff0);
    }
    case 'outside': return [RAM_END, RAM_END - 0x1000, RAM_A_SIZE, 0xfff0][o.value % 4];
    // The high half of the 64-bit modern BAR (index 5): above 4 GiB, or back to 0.
    case 'high': return [0, 1, 0x10, 0xffffffff][o.value % 4];
    default: return o.value;
  }
}

function apply(r: Rig, o: Op): void {
  const { dev } = r;
  switch (o.kind) {
    case 'cfg':
      if (o.write) cfgWrite(r, o.off, o.size, o.value);
      else cfgRead(r, o.off, o.size);
      return;
    case 'cfgDirect':
      if (o.write) dev.configWrite(o.off, o.size, o.value);
      else dev.configRead(o.off, o.size);
      return;
    case 'bar':
      cfgWrite(r, PCI_BASE_ADDRESS_0 + 4 * o.index, 4, barTarget(r, o));
      return;
    case 'command': {
      const v = o.bits.reduce((a, b) => a | b, 0);
      if (o.byte) cfgWrite(r, PCI_COMMAND, 1, v & 0xff);
      else cfgWrite(r, PCI_COMMAND, 2, v);
      return;
    }
    case 'kvmFail':
      kvm.failNext = o.n;
      return;
    case 'modern': {
      const at = dev.barMapped(MODERN_BAR);
      if (o.bus && at >= 0) mmioAccess(r, at + o.off, o.size, o.write, o.value);
      else if (o.write) dev.modernWrite(o.off, o.size, o.value);
      else dev.modernRead(o.off, o.size);
      return;
    }
    case 'legacy': {
      const at = dev.barMapped(LEGACY_BAR);
      if (o.bus && at >= 0) pioAccess(r, at + o.off, o.size, o.write, o.value);
      else if (o.write) dev.legacyWrite(o.off, o.size, o.value);
      else dev.legacyRead(o.off, o.size);
      return;
    }
    case 'msix': {
      const at = dev.barMapped(MSIX_BAR);
      const h = dev.barHandler(MSIX_BAR)!;
      if (o.bus && at >= 0) mmioAccess(r, at + o.off, o.size, o.write, o.value);
      else if (o.write) h.write(o.off, o.size, o.value);
      else h.read(o.off, o.size);
      return;
    }
    case 'queue':
      if (o.legacy) {
        dev.legacyWrite(14, 2, o.q);
        dev.legacyWrite(8, 4, o.pfn);
      } else {
        dev.modernWrite(22, 2, o.q);
        dev.modernWrite(24, 2, o.size);
        dev.modernWrite(32, 4, o.desc);
        dev.modernWrite(40, 4, o.avail);
        dev.modernWrite(48, 4, o.used);
        dev.modernWrite(28, 2, 1);
      }
      return;
    case 'features':
      if (o.legacy) {
        dev.legacyWrite(4, 4, o.lo);
      } else {
        dev.modernWrite(8, 4, 0);
        dev.modernWrite(12, 4, o.lo);
        dev.modernWrite(8, 4, 1);
        dev.modernWrite(12, 4, o.hi);
      }
      return;
    case 'status':
      if (o.legacy) dev.legacyWrite(18, 1, o.value);
      else dev.modernWrite(20, 1, o.value);
      return;
    case 'scribble': {
      // The guest writes its own RAM: no checks (writes outside RAM just fail).
      const s = r.state;
      const desc = s.queueDesc(o.q);
      const avail = s.queueAvail(o.q);
      const size = Math.max(1, s.queueSize(o.q));
      r.mem.guest(() => {
        if (o.part === 'desc') {
          const at = desc + 16 * o.i;
          r.mem.writeU32(at, o.addr);
          r.mem.writeU32(at + 4, o.hi);
          r.mem.writeU32(at + 8, o.len);
          r.mem.writeU16(at + 12, o.flags);
          r.mem.writeU16(at + 14, o.next);
        } else if (o.part === 'idx') {
          r.mem.writeU16(avail + 2, (r.mem.readU16(avail + 2) + (o.next < 18 ? o.i : o.next)) & 0xffff);
        } else if (o.part === 'ring') {
          r.mem.writeU16(avail + 4 + 2 * (o.i % size), o.next);
        } else {
          r.mem.writeU16((o.flags & 1 ? s.queueUsed(o.q) : avail) + 2 * o.i, o.next);
        }
      });
      return;
    }
    case 'notify':
      if (o.legacy) {
        const at = dev.barMapped(LEGACY_BAR);
        if (at >= 0) pioAccess(r, at + 16, 2, true, o.q);
        else dev.legacyWrite(16, 2, o.q);
      } else {
        const at = dev.barMapped(MODERN_BAR);
        if (at >= 0) mmioAccess(r, at + MODERN_NOTIFY_OFFSET + 4 * o.q, 2, true, o.q);
        else dev.modernWrite(MODERN_NOTIFY_OFFSET + 4 * (o.q & 0x3ff), 2, o.q);
      }
      return;
    case 'main':
      r.runMain(o.readable);
      return;
    case 'host': {
      const f = new Uint8Array(o.len);
      for (let i = 0; i < f.length; i++) f[i] = i & 0xff;
      r.backend.send(f);
      return;
    }
    case 'irq':
      if (o.q < 0) r.sender.sendConfigInterrupt();
      else r.sender.sendQueueInterrupt(o.q);
      return;
  }
}

/** Zeroes the RAM the rings, buffers and the usual garbage addresses use (all 2 MiB would cost more than a case). */
function wipe(r: Rig): void {
  const [a, b] = r.mem.regions;
  a.bytes.fill(0, 0, 0x60000);
  a.bytes.fill(0, RAM_A_SIZE - 0x1000);
  b.bytes.fill(0, 0, 0x20000);
  b.bytes.fill(0, RAM_B_SIZE - 0x1000);
}

function takeViolations(r: Rig): string[] {
  const v = [...r.mem.violations, ...r.backend.violations, ...r.sender.violations];
  r.mem.violations.length = 0;
  r.backend.violations.length = 0;
  r.sender.violations.length = 0;
  return v;
}

test.serial('hostile register and ring sequences: no exception, no access outside RAM, NEEDS_RESET or a stopped queue, works after reset', (t) => {
  const r = rig;
  const started = Date.now();
  let runs = 0;
  let ops = 0;
  let needsResets = 0;
  let modernNeedsReset = 0;
  let refusedQueues = 0;
  let badAccesses = 0;
  assertProperty(() => fc.assert(
    fc.property(setupArb, fc.array(op, { minLength: 1, maxLength: 40, size: 'medium' }), setupArb, fc.integer({ min: 0, max: 0xffff }), (first, attack, after, seed) => {
      runs++;
      kvm.failNext = 0;
      wipe(r);
      const before = { nr: r.sender.needsResets, rq: r.dev.stats.refusedQueues, ba: r.dev.stats.badAccesses };
      setUp(r, first);
      for (const o of attack) {
        apply(r, o);
        ops++;
        if (r.state.status & VIRTIO_CONFIG_S_NEEDS_RESET) modernNeedsReset++;
        // Only config-space writes remap (checking after every op would double the file's run time).
        if (REMAPS.has(o.kind)) {
          const b = bindingProblem(r);
          if (b !== null) throw new Error(`after ${o.kind}: ${b}`);
        }
      }
      kvm.failNext = 0;
      r.runMain(true);
      r.backend.drain();
      let v = takeViolations(r);
      if (v.length > 0) throw new Error(`during the attack: ${v.join('; ')}`);
      needsResets += r.sender.needsResets - before.nr;
      refusedQueues += r.dev.stats.refusedQueues - before.rq;
      badAccesses += r.dev.stats.badAccesses - before.ba;

      // Reset and a clean driver: the device must work again.
      wipe(r);
      const s = setUp(r, after);
      if (r.state.status & VIRTIO_CONFIG_S_NEEDS_RESET) throw new Error('NEEDS_RESET survived the reset');
      // Firmware put the BARs back home: every notify is bound there again, unless nothing moved since a failure.
      const b = bindingProblem(r);
      if (b !== null) throw new Error(`after the clean set-up: ${b}`);
      roundTrip(r, s, seed);
      v = takeViolations(r);
      if (v.length > 0) throw new Error(`after the reset: ${v.join('; ')}`);
      return true;
    }),
    { numRuns: fuzzRuns(RUNS) },
  ));
  const ms = Date.now() - started;
  t.log(`${runs} cases, ${ops} hostile operations, ${needsResets} device errors (NEEDS_RESET or stopped), ${refusedQueues} queues refused, ${badAccesses} accesses ignored, ${r.logLines.length} log lines, ${rebinds} ioeventfd rebinds (${kvm.injected} refused by the fake KVM), ${ms} ms`);
  t.true(runs >= fuzzRuns(RUNS));
  t.true(needsResets > 50, 'the generator reaches data-path violations');
  t.true(refusedQueues > 100, 'and hostile queue configurations');
  t.true(modernNeedsReset > 0);
  t.true(rebinds > runs, 'BAR moves and decode toggles reach the ioeventfd rebind');
  t.true(kvm.injected > 0, 'and rebinds that KVM refuses');
});
