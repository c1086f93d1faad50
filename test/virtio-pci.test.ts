import test from 'ava';
import { bindingFailures } from '../src/devices/virtio/vcpu-devices.js';
import { GuestErrorLog } from '../src/devices/virtio/guest-error-log.js';
import { FeatureSet } from '../src/devices/virtio/feature-set.js';
import fc from 'fast-check';
import { Worker } from 'node:worker_threads';
import { MmioBus, PioBus } from '../src/bus/io-bus.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { PciBus } from '../src/devices/pci/pci-bus.js';
import { PCI_CAP_ID_VNDR, PCI_COMMAND } from '../src/devices/pci/config-space.js';
import { PCI_CAP_ID_MSIX, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL } from '../src/devices/pci/msix.js';
import { legacyVringLayout } from '../src/devices/virtio/virtqueue.js';
import {
  createTransportState, InterruptSender, MainResetHandshake, MSIX_NO_VECTOR, TransportState, VcpuResetHandshake,
  VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
  type VirtioDeviceVcpuSide,
} from '../src/devices/virtio/transport-state.js';
import {
  VirtioPciDevice, MODERN_DEVICE_OFFSET, MODERN_ISR_OFFSET, MODERN_NOTIFY_OFFSET, MSIX_PBA_OFFSET,
  VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_PCI_CFG,
  VIRTIO_PCI_COMMON_CFGGENERATION, VIRTIO_PCI_COMMON_DF, VIRTIO_PCI_COMMON_DFSELECT, VIRTIO_PCI_COMMON_GF, VIRTIO_PCI_COMMON_GFSELECT,
  VIRTIO_PCI_COMMON_MSIX, VIRTIO_PCI_COMMON_NUMQ, VIRTIO_PCI_COMMON_Q_AVAILLO, VIRTIO_PCI_COMMON_Q_DESCHI, VIRTIO_PCI_COMMON_Q_DESCLO,
  VIRTIO_PCI_COMMON_Q_ENABLE, VIRTIO_PCI_COMMON_Q_MSIX, VIRTIO_PCI_COMMON_Q_NOFF, VIRTIO_PCI_COMMON_Q_SELECT, VIRTIO_PCI_COMMON_Q_SIZE,
  VIRTIO_PCI_COMMON_Q_USEDLO, VIRTIO_PCI_COMMON_STATUS, VIRTIO_PCI_GUEST_FEATURES, VIRTIO_PCI_HOST_FEATURES, VIRTIO_PCI_ISR,
  VIRTIO_PCI_QUEUE_NOTIFY, VIRTIO_PCI_QUEUE_NUM, VIRTIO_PCI_QUEUE_PFN, VIRTIO_PCI_QUEUE_SEL, VIRTIO_PCI_STATUS, VIRTIO_MSI_CONFIG_VECTOR,
  VIRTIO_MSI_QUEUE_VECTOR,
} from '../src/devices/virtio/virtio-pci.js';

const RAM = 1 << 20;
const F_CSUM = 0;
const F_GUEST_CSUM = 1;
const F_MAC = 5;
const F_GUEST_TSO4 = 7; // depends on GUEST_CSUM
const F_EVENT_IDX = 29;
const F_VERSION_1 = 32;
const bitOf = (b: number) => 1n << BigInt(b);
const OFFERED = bitOf(F_CSUM) | bitOf(F_GUEST_CSUM) | bitOf(F_MAC) | bitOf(F_GUEST_TSO4) | bitOf(F_EVENT_IDX);
/** A set as the words the transport holds, for comparing with state.driverFeatures. */
const words = (f: bigint) => FeatureSet.from(f).toString();

class FakeDevice implements VirtioDeviceVcpuSide {
  readonly name = 'fake-net';
  readonly deviceId = 1;
  readonly numQueues = 2;
  readonly deviceFeatures: FeatureSet;
  readonly configSize = 8;
  config = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0]);
  notifies: number[] = [];
  statuses: Array<[number, number]> = [];
  enables: Array<[number, boolean]> = [];
  resets = 0;
  /** The sets validateFeatures saw, as words (the transport reuses the object it passes). */
  validated: string[] = [];
  constructor(offered: bigint) { this.deviceFeatures = FeatureSet.from(offered); }
  queueMaxSize(i: number): number { return i === 0 ? 256 : 128; }
  readConfig(off: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = (v << 8) | this.config[off + i];
    return v >>> 0;
  }
  writeConfig(off: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) this.config[off + i] = value >>> (8 * i);
  }
  validateFeatures(f: FeatureSet): boolean {
    this.validated.push(f.toString());
    // GUEST_TSO4 needs GUEST_CSUM (virtio 1.2 §5.1.3.1).
    return !(f.has(F_GUEST_TSO4) && !f.has(F_GUEST_CSUM));
  }
  onQueueNotify(i: number): void { this.notifies.push(i); }
  onStatusChange(o: number, n: number): void { this.statuses.push([o, n]); }
  onReset(): void { this.resets++; }
  onQueueEnabled(i: number, on: boolean): void { this.enables.push([i, on]); }
}

class FakeIrq {
  lines: Array<[number, number]> = [];
  msis: number[][] = [];
  irqLine(gsi: number, level: 0 | 1): void { this.lines.push([gsi, level]); }
  signalMsi(lo: number, hi: number, data: number): number { this.msis.push([lo, hi, data]); return 1; }
}

function setup(opts: { vectors?: number; ringReset?: (s: TransportState) => void; resetTimeoutMs?: number; offered?: bigint } = {}) {
  const mem = GuestMemory.fake(RAM);
  const offered = opts.offered ?? OFFERED;
  const sab = createTransportState({ numQueues: 2, queueMaxSizes: [256, 128], msixVectors: opts.vectors ?? 3, deviceFeatures: FeatureSet.from(offered), intxGsi: 19 });
  const state = new TransportState(sab);
  const irq = new FakeIrq();
  const device = new FakeDevice(offered);
  let rings = 0;
  const dev = new VirtioPciDevice({ device, state, mem, irq, ringReset: () => { rings++; opts.ringReset?.(state); }, resetTimeoutMs: opts.resetTimeoutMs });
  const pio = new PioBus();
  const mmio = new MmioBus();
  const bus = new PciBus({ pio, mmio });
  bus.plug(dev, 3);
  // The main thread's sender, over the same state.
  const mainIrq = new FakeIrq();
  const sender = new InterruptSender(new TransportState(sab), mainIrq);
  const cap = dev.msix!.capOffset;
  const enableMsix = () => dev.configWrite(cap + 2, 2, PCI_MSIX_FLAGS_ENABLE);
  const common = {
    r: (off: number, size: number) => dev.modernRead(off, size),
    w: (off: number, size: number, v: number) => dev.modernWrite(off, size, v),
  };
  return { mem, sab, state, irq, mainIrq, device, dev, pio, mmio, bus, sender, enableMsix, common, rings: () => rings };
}

/** Drives the modern common config to a working queue `q` at `base` with `size` entries. */
function modernQueue(s: ReturnType<typeof setup>, q: number, base: number, size: number) {
  const { w } = s.common;
  w(VIRTIO_PCI_COMMON_Q_SELECT, 2, q);
  w(VIRTIO_PCI_COMMON_Q_SIZE, 2, size);
  w(VIRTIO_PCI_COMMON_Q_DESCLO, 4, base);
  w(VIRTIO_PCI_COMMON_Q_DESCHI, 4, 0);
  w(VIRTIO_PCI_COMMON_Q_AVAILLO, 4, base + 16 * size);
  w(VIRTIO_PCI_COMMON_Q_USEDLO, 4, base + 0x2000);
  w(VIRTIO_PCI_COMMON_Q_ENABLE, 2, 1);
}

function negotiateModern(s: ReturnType<typeof setup>, features: bigint): number {
  const { w, r } = s.common;
  w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 0);
  w(VIRTIO_PCI_COMMON_GF, 4, Number(features & 0xffffffffn));
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 1);
  w(VIRTIO_PCI_COMMON_GF, 4, Number(features >> 32n));
  w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
  return r(VIRTIO_PCI_COMMON_STATUS, 1);
}

test('PCI identity of a transitional virtio-net and its capabilities', (t) => {
  const { dev } = setup();
  const c = dev.config;
  t.is(c.read(0, 4), 0x10001af4);
  t.is(c.read(8, 1), 0, 'revision 0 (legacy ABI)');
  t.is(c.read(0x0a, 2), 0x0200, 'ethernet controller');
  t.is(c.read(0x2c, 2), 0x1af4);
  t.is(c.read(0x2e, 2), 1, 'subsystem id = virtio device id');
  t.is(c.read(0x3d, 1), 1, 'INTA#');
  t.is(c.read(0x3c, 1), 19, 'line = GSI of slot 3');
  t.is(c.read(0x10, 4) & 1, 1, 'BAR0 is I/O');
  t.is(c.read(0x14, 4) & 7, 0, 'BAR1 is 32-bit memory');
  t.is(c.read(0x20, 4) & 0xf, 0xc, 'BAR4 is 64-bit prefetchable memory');
  const caps: Record<number, { bar: number; offset: number; length: number; at: number }> = {};
  let msix = 0;
  for (let p = c.read(0x34, 1); p; p = c.read(p + 1, 1)) {
    if (c.read(p, 1) === PCI_CAP_ID_MSIX) msix = p;
    if (c.read(p, 1) === PCI_CAP_ID_VNDR) caps[c.read(p + 3, 1)] = { bar: c.read(p + 4, 1), offset: c.read(p + 8, 4), length: c.read(p + 12, 4), at: p };
  }
  t.truthy(msix);
  for (const type of [VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_DEVICE_CFG]) {
    t.is(caps[type].bar, 4);
    t.true(caps[type].length >= 56 || type !== VIRTIO_PCI_CAP_COMMON_CFG);
  }
  t.is(caps[VIRTIO_PCI_CAP_ISR_CFG].offset, MODERN_ISR_OFFSET);
  t.is(caps[VIRTIO_PCI_CAP_NOTIFY_CFG].offset, MODERN_NOTIFY_OFFSET);
  t.is(c.read(caps[VIRTIO_PCI_CAP_NOTIFY_CFG].at + 2, 1), 20, 'notify cap length');
  t.is(c.read(caps[VIRTIO_PCI_CAP_NOTIFY_CFG].at + 16, 4), 4, 'notify_off_multiplier');
  t.truthy(caps[VIRTIO_PCI_CAP_PCI_CFG]);
  t.is(c.read(msix + 2, 2) & 0x7ff, 2, '3 vectors');
});

test('legacy register file: features, queue PFN, notify, status, config offset moves with MSI-X', (t) => {
  const s = setup();
  const { dev, device, state } = s;
  const host = dev.legacyRead(VIRTIO_PCI_HOST_FEATURES, 4);
  t.is(host, Number(OFFERED & 0xffffffffn), 'low 32 bits, never VERSION_1');
  dev.legacyWrite(VIRTIO_PCI_GUEST_FEATURES, 4, 0xffffffff);
  t.is(dev.legacyRead(VIRTIO_PCI_GUEST_FEATURES, 4), host, 'masked to the offer');
  t.false(state.modern);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_SEL, 2, 1);
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_NUM, 2), 128);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_NUM, 2, 16);
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_NUM, 2), 128, 'legacy queue size is read-only');
  dev.legacyWrite(VIRTIO_PCI_QUEUE_PFN, 4, 0x10);
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_PFN, 4), 0x10);
  t.true(state.queueEnabled(1));
  const l = legacyVringLayout(0x10, 128);
  t.deepEqual([state.queueDesc(1), state.queueAvail(1), state.queueUsed(1)], [l.desc, l.avail, l.used]);
  t.deepEqual(device.enables, [[1, true]]);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_NOTIFY, 2, 1);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_NOTIFY, 2, 0);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_NOTIFY, 2, 9);
  t.deepEqual(device.notifies, [1, 0]);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_PFN, 4, 0);
  t.false(state.queueEnabled(1));
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_PFN, 4), 0);
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  t.is(dev.legacyRead(VIRTIO_PCI_STATUS, 1), 7);
  t.deepEqual(device.statuses.at(-1), [0, 7]);
  // Device config at 20 without MSI-X, at 24 with it.
  t.is(dev.legacyRead(20, 4), 0x12005452);
  t.is(dev.legacyRead(20 + 4, 2), 0x5634);
  s.enableMsix();
  t.is(dev.legacyRead(24, 1), 0x52);
  t.is(dev.legacyRead(VIRTIO_MSI_CONFIG_VECTOR, 2), MSIX_NO_VECTOR);
  dev.legacyWrite(VIRTIO_MSI_CONFIG_VECTOR, 2, 0);
  t.is(dev.legacyRead(VIRTIO_MSI_CONFIG_VECTOR, 2), 0);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_SEL, 2, 0);
  dev.legacyWrite(VIRTIO_MSI_QUEUE_VECTOR, 2, 5);
  t.is(dev.legacyRead(VIRTIO_MSI_QUEUE_VECTOR, 2), MSIX_NO_VECTOR, 'vector beyond the table refused');
  dev.legacyWrite(VIRTIO_MSI_QUEUE_VECTOR, 2, 2);
  t.is(state.queueVector(0), 2);
  // MAC writes reach the device (legacy drivers may set it).
  dev.legacyWrite(24 + 5, 1, 0x99);
  t.is(device.config[5], 0x99);
});

test('access widths: wrong widths and holes are ignored, read as 0, and counted', (t) => {
  const s = setup();
  const { dev, state } = s;
  const before = dev.stats.badAccesses;
  t.is(dev.legacyRead(VIRTIO_PCI_HOST_FEATURES, 2), 0);
  dev.legacyWrite(VIRTIO_PCI_STATUS, 4, 0xff);
  t.is(state.status, 0);
  dev.legacyWrite(VIRTIO_PCI_HOST_FEATURES, 4, 0);
  t.is(s.common.r(VIRTIO_PCI_COMMON_NUMQ, 4), 0);
  t.is(s.common.r(VIRTIO_PCI_COMMON_STATUS, 2), 0);
  s.common.w(VIRTIO_PCI_COMMON_Q_SELECT, 4, 1);
  t.is(dev.queueSelect, 0);
  t.is(s.common.r(57, 1), 0);
  s.common.w(VIRTIO_PCI_COMMON_NUMQ, 2, 7);
  t.is(s.common.r(VIRTIO_PCI_COMMON_NUMQ, 2), 2);
  t.is(dev.modernRead(MODERN_ISR_OFFSET + 1, 1), 0);
  t.is(dev.modernRead(MODERN_DEVICE_OFFSET + 7, 2), 0, 'crosses the end of device config');
  dev.modernWrite(MODERN_NOTIFY_OFFSET + 2, 2, 0);
  t.is(dev.stats.badAccesses - before, 11);
});

test('modern register file: features with VERSION_1, queues, notify region, config generation', (t) => {
  const s = setup();
  const { dev, device, state, common: { r, w } } = s;
  w(VIRTIO_PCI_COMMON_DFSELECT, 4, 0);
  t.is(r(VIRTIO_PCI_COMMON_DF, 4), Number(OFFERED & 0xffffffffn));
  w(VIRTIO_PCI_COMMON_DFSELECT, 4, 1);
  t.is(r(VIRTIO_PCI_COMMON_DF, 4), 1, 'VERSION_1 offered on the modern interface');
  w(VIRTIO_PCI_COMMON_DFSELECT, 4, 2);
  t.is(r(VIRTIO_PCI_COMMON_DF, 4), 0);
  t.is(r(VIRTIO_PCI_COMMON_NUMQ, 2), 2);
  t.is(negotiateModern(s, bitOf(F_MAC) | bitOf(F_EVENT_IDX) | bitOf(F_VERSION_1)) & VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_FEATURES_OK);
  t.true(state.modern);
  t.true(state.hasDriverFeature(F_EVENT_IDX));
  t.true(state.hasDriverFeature(F_VERSION_1));
  t.is(state.driverFeatures.toString(), words(bitOf(F_MAC) | bitOf(F_EVENT_IDX) | bitOf(F_VERSION_1)));
  // Queue 1: max 128, shrink to 64.
  w(VIRTIO_PCI_COMMON_Q_SELECT, 2, 1);
  t.is(r(VIRTIO_PCI_COMMON_Q_SIZE, 2), 128);
  t.is(r(VIRTIO_PCI_COMMON_Q_NOFF, 2), 1);
  const gen = state.queueGeneration(1);
  modernQueue(s, 1, 0x4000, 64);
  t.is(r(VIRTIO_PCI_COMMON_Q_ENABLE, 2), 1);
  t.true(state.queueEnabled(1));
  t.is(state.queueGeneration(1), gen + 1);
  t.deepEqual([state.queueSize(1), state.queueDesc(1), state.queueAvail(1), state.queueUsed(1)], [64, 0x4000, 0x4000 + 1024, 0x6000]);
  t.is(r(VIRTIO_PCI_COMMON_Q_DESCLO, 4), 0x4000);
  // Enabled queues ignore reconfiguration.
  w(VIRTIO_PCI_COMMON_Q_SIZE, 2, 32);
  w(VIRTIO_PCI_COMMON_Q_DESCLO, 4, 0x8000);
  t.is(state.queueSize(1), 64);
  t.is(state.queueDesc(1), 0x4000);
  w(VIRTIO_PCI_COMMON_Q_MSIX, 2, 1);
  t.is(r(VIRTIO_PCI_COMMON_Q_MSIX, 2), 1);
  w(VIRTIO_PCI_COMMON_MSIX, 2, 0);
  t.is(r(VIRTIO_PCI_COMMON_MSIX, 2), 0);
  w(VIRTIO_PCI_COMMON_MSIX, 2, 3);
  t.is(r(VIRTIO_PCI_COMMON_MSIX, 2), MSIX_NO_VECTOR);
  // Notify region: queue index * 4.
  dev.modernWrite(MODERN_NOTIFY_OFFSET + 4, 2, 1);
  dev.modernWrite(MODERN_NOTIFY_OFFSET, 2, 0);
  dev.modernWrite(MODERN_NOTIFY_OFFSET + 400, 2, 100);
  t.deepEqual(device.notifies, [1, 0]);
  // Device config and its generation.
  t.is(dev.modernRead(MODERN_DEVICE_OFFSET, 4), 0x12005452);
  t.is(dev.modernRead(MODERN_DEVICE_OFFSET + 6, 2), 1);
  const g = r(VIRTIO_PCI_COMMON_CFGGENERATION, 1);
  state.bumpConfigGeneration();
  t.is(r(VIRTIO_PCI_COMMON_CFGGENERATION, 1), (g + 1) & 0xff);
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0xf);
  t.is(state.status, 0xf);
  t.deepEqual(device.statuses.at(-1), [0xb, 0xf]);
});

test('feature bits above 53 survive negotiation masking exactly (bit 63 offered by a test-only device)', (t) => {
  // 2^63 is not exact in a double next to low bits: a Number anywhere on the path would lose or smear it.
  const F_HIGH = 63;
  const s = setup({ offered: OFFERED | bitOf(F_HIGH) | bitOf(54) });
  const { dev, state, device, common: { r, w } } = s;
  w(VIRTIO_PCI_COMMON_DFSELECT, 4, 1);
  t.is(r(VIRTIO_PCI_COMMON_DF, 4), (0x80000000 | (1 << 22) | 1) >>> 0, 'bits 63, 54 and VERSION_1 in the high word');
  // The driver takes bit 63 and VERSION_1 but not 54, and tries unoffered bit 62: it is masked off as written.
  const st = negotiateModern(s, bitOf(F_HIGH) | bitOf(62) | bitOf(F_MAC) | bitOf(F_VERSION_1));
  t.is(st & VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_FEATURES_OK);
  t.is(state.driverFeatures.toString(), words(bitOf(F_HIGH) | bitOf(F_MAC) | bitOf(F_VERSION_1)));
  t.true(state.hasDriverFeature(F_HIGH));
  t.false(state.hasDriverFeature(62));
  t.false(state.hasDriverFeature(54));
  t.is(device.validated.at(-1), words(bitOf(F_HIGH) | bitOf(F_MAC) | bitOf(F_VERSION_1)), 'the device saw the exact set');
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 1);
  t.is(r(VIRTIO_PCI_COMMON_GF, 4), 0x80000001, 'read back as the driver left it');
  // The legacy interface has no high word: bit 63 is neither offered nor kept there.
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(dev.offeredWord(1, false), 0);
  dev.legacyWrite(VIRTIO_PCI_GUEST_FEATURES, 4, Number(bitOf(F_MAC)));
  t.is(state.driverFeatures.toString(), words(bitOf(F_MAC)));
});

test('feature negotiation: FEATURES_OK refused for a missing dependency or no VERSION_1; unoffered bits masked', (t) => {
  const s = setup();
  const { dev, state, common: { r, w } } = s;
  // GUEST_TSO4 without GUEST_CSUM: the device refuses, FEATURES_OK does not stick.
  let st = negotiateModern(s, bitOf(F_GUEST_TSO4) | bitOf(F_VERSION_1));
  t.is(st & VIRTIO_CONFIG_S_FEATURES_OK, 0);
  t.is(dev.stats.refusedFeatures, 1);
  t.regex(dev.lastError, /refused/);
  // Features still writable; fix the set.
  st = negotiateModern(s, bitOf(F_GUEST_TSO4) | bitOf(F_GUEST_CSUM) | bitOf(F_VERSION_1));
  t.is(st & VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_FEATURES_OK);
  // After FEATURES_OK the features are frozen.
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 0);
  w(VIRTIO_PCI_COMMON_GF, 4, 0);
  t.is(r(VIRTIO_PCI_COMMON_GF, 4), Number(bitOf(F_GUEST_TSO4) | bitOf(F_GUEST_CSUM)));
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(state.driverFeatures.toString(), words(0n));
  // Unoffered bits (bit 40, bit 2) are masked off as they are written: FEATURES_OK then holds for what remains.
  st = negotiateModern(s, bitOf(40) | bitOf(2) | bitOf(F_MAC) | bitOf(F_VERSION_1));
  t.is(st & VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_FEATURES_OK);
  t.is(state.driverFeatures.toString(), words(bitOf(F_MAC) | bitOf(F_VERSION_1)));
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  // Modern interface without VERSION_1.
  st = negotiateModern(s, bitOf(F_MAC));
  t.is(st & VIRTIO_CONFIG_S_FEATURES_OK, 0);
  t.regex(dev.lastError, /VERSION_1/);
});

test('reset (status 0) clears features, queues, vectors, ISR and MSI-X pending bits, keeps the MSI-X table', (t) => {
  const s = setup();
  const { dev, device, state, irq, sender, common: { w } } = s;
  negotiateModern(s, bitOf(F_MAC) | bitOf(F_VERSION_1));
  modernQueue(s, 0, 0x4000, 256);
  w(VIRTIO_PCI_COMMON_Q_MSIX, 2, 1);
  w(VIRTIO_PCI_COMMON_MSIX, 2, 0);
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0xf);
  // An INTx interrupt outstanding and an MSI-X vector pending.
  sender.sendQueueInterrupt(0);
  t.is(state.isr, 1);
  s.enableMsix();
  dev.msix!.tableWrite(16, 4, 0xfee00000);
  sender.sendQueueInterrupt(0);
  t.true(state.msix.pending(1));
  dev.queueSelect = 1;
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(device.resets, 1);
  t.is(state.status, 0);
  t.is(state.driverFeatures.toString(), words(0n));
  t.false(state.modern);
  t.false(state.queueEnabled(0));
  t.is(state.queueSize(0), 256);
  t.is(state.queueDesc(0), 0);
  t.is(state.queueVector(0), MSIX_NO_VECTOR);
  t.is(state.configVector, MSIX_NO_VECTOR);
  t.is(state.isr, 0);
  t.false(state.msix.pending(1));
  t.is(dev.queueSelect, 0);
  t.is(state.msix.entryWord(1, 0), 0xfee00000, 'the MSI-X table is PCI state, not virtio state');
  t.true(state.msix.enabled);
  t.is(irq.lines.at(-1)?.[1] ?? 0, 0, 'INTx dropped');
  // Legacy reset the same way.
  dev.legacyWrite(VIRTIO_PCI_QUEUE_PFN, 4, 0x20);
  t.true(state.queueEnabled(0));
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, 0);
  t.false(state.queueEnabled(0));
  t.is(device.resets, 2);
  // Legacy has no NEEDS_RESET bit (the data path just stops); modern gets it, sticky until a reset.
  sender.needsReset();
  t.is(state.status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
  negotiateModern(s, bitOf(F_MAC) | bitOf(F_VERSION_1));
  sender.needsReset();
  w(VIRTIO_PCI_COMMON_STATUS, 1, 1);
  t.is(state.status & VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_CONFIG_S_NEEDS_RESET);
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(state.status, 0);
});

test('reset hand-shake: waits for the main thread, which resets its queues and acknowledges', (t) => {
  let mainResets = 0;
  let main: MainResetHandshake | null = null;
  const s = setup({ ringReset: () => { main!.poll(() => { mainResets++; }); } });
  main = new MainResetHandshake(new TransportState(s.sab));
  // Not attached: no ring, no wait.
  s.common.w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(s.rings(), 0);
  main.attach();
  s.common.w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(s.rings(), 1);
  t.is(mainResets, 1);
  t.is(s.dev.stats.resetTimeouts, 0);
  t.false(main.pending);
  t.false(main.poll(() => { mainResets++; }), 'nothing outstanding');
});

test('reset hand-shake: a main thread that never answers costs a bounded wait', (t) => {
  const s = setup({ resetTimeoutMs: 30 });
  new MainResetHandshake(new TransportState(s.sab)).attach();
  const t0 = Date.now();
  s.common.w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  const took = Date.now() - t0;
  t.true(took >= 25 && took < 1000, `took ${took} ms`);
  t.is(s.dev.stats.resetTimeouts, 1);
  t.is(s.state.status, 0);
});

test('reset hand-shake across threads: the vCPU side blocks until a worker acknowledges', async (t) => {
  const sab = createTransportState({ numQueues: 1, queueMaxSizes: [8], msixVectors: 0, deviceFeatures: 0n, intxGsi: -1 });
  const url = new URL('../src/devices/virtio/transport-state.js', import.meta.url).href;
  // The "main thread" of the device, played by a worker: poll, sleep a little, reset, acknowledge.
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.url).then(({ TransportState, MainResetHandshake }) => {
      const s = new TransportState(workerData.sab);
      const h = new MainResetHandshake(s);
      h.attach();
      parentPort.postMessage('attached');
      const flag = new Int32Array(workerData.flag);
      const tick = () => {
        if (h.pending) { const until = Date.now() + 50; while (Date.now() < until); h.poll(() => { Atomics.add(flag, 0, 1); }); }
        if (Atomics.load(flag, 1) === 0) setTimeout(tick, 1);
      };
      tick();
    });`;
  const flag = new SharedArrayBuffer(8);
  const flags = new Int32Array(flag);
  const w = new Worker(code, { eval: true, workerData: { sab, url, flag } });
  await new Promise<void>((resolve) => w.once('message', () => resolve()));
  const state = new TransportState(sab);
  const h = new VcpuResetHandshake(state, () => {}, 2000);
  const t0 = Date.now();
  t.true(h.resetAndWait());
  const took = Date.now() - t0;
  t.is(Atomics.load(flags, 0), 1, 'the main side reset its queues before the write returned');
  t.true(took >= 40, `blocked ${took} ms`);
  Atomics.store(flags, 1, 1);
  await w.terminate();
});

test('MSI-X: masked vectors go pending, unmasking delivers through signalMsi, NO_VECTOR sends nothing', (t) => {
  const s = setup();
  const { dev, state, irq, mainIrq, sender, common: { w } } = s;
  negotiateModern(s, bitOf(F_MAC) | bitOf(F_VERSION_1));
  modernQueue(s, 0, 0x4000, 256);
  w(VIRTIO_PCI_COMMON_Q_SELECT, 2, 0);
  w(VIRTIO_PCI_COMMON_Q_MSIX, 2, 1);
  s.enableMsix();
  const bar1 = dev.barHandler(1)!;
  bar1.write(16, 4, 0xfee00000);
  bar1.write(20, 4, 0);
  bar1.write(24, 4, 0x4031);
  // Entry still masked (power-on state): pending.
  sender.sendQueueInterrupt(0);
  t.deepEqual(mainIrq.msis, []);
  t.is(bar1.read(MSIX_PBA_OFFSET, 4), 2);
  t.is(state.interruptsPended, 1);
  // The guest unmasks on the vCPU thread: delivered there, pending cleared.
  bar1.write(28, 4, 0);
  t.deepEqual(irq.msis, [[0xfee00000, 0, 0x4031]]);
  t.is(bar1.read(MSIX_PBA_OFFSET, 4), 0);
  sender.sendQueueInterrupt(0);
  t.deepEqual(mainIrq.msis, [[0xfee00000, 0, 0x4031]]);
  // Function mask through config space.
  const cap = dev.msix!.capOffset;
  dev.configWrite(cap + 2, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
  sender.sendQueueInterrupt(0);
  t.is(mainIrq.msis.length, 1);
  dev.configWrite(cap + 2, 2, PCI_MSIX_FLAGS_ENABLE);
  t.is(irq.msis.length, 2);
  // Config vector NO_VECTOR: nothing at all, no ISR either.
  sender.sendConfigInterrupt();
  t.is(mainIrq.msis.length + irq.msis.length, 3);
  t.is(state.isr, 0);
  // Queue 1 has no vector.
  sender.sendQueueInterrupt(1);
  t.is(mainIrq.msis.length, 1);
  t.deepEqual(mainIrq.lines, [], 'no INTx while MSI-X is on');
});

test('INTx: ISR bits and a level line; the ISR read clears and drops the line', (t) => {
  const s = setup();
  const { dev, state, irq, mainIrq, sender } = s;
  sender.sendQueueInterrupt(0);
  sender.sendQueueInterrupt(1);
  t.deepEqual(mainIrq.lines, [[19, 1]], 'raised once while high');
  t.is(state.isr, 1);
  sender.sendConfigInterrupt();
  t.is(state.isr, 3);
  t.is(dev.legacyRead(VIRTIO_PCI_ISR, 1), 3);
  t.deepEqual(irq.lines, [[19, 0]]);
  t.is(state.intxLevel, 0);
  t.is(dev.legacyRead(VIRTIO_PCI_ISR, 1), 0);
  t.deepEqual(irq.lines, [[19, 0]], 'no second lowering');
  // Modern ISR region behaves the same.
  sender.sendConfigInterrupt();
  t.is(dev.modernRead(MODERN_ISR_OFFSET, 1), 2);
  t.is(state.intxLevel, 0);
  // Enabling MSI-X drops an asserted INTx line.
  sender.sendQueueInterrupt(0);
  s.enableMsix();
  t.is(state.intxLevel, 0);
  t.deepEqual(irq.lines.at(-1), [19, 0]);
});

test('PCI_CFG window reaches BAR registers through config space', (t) => {
  const s = setup();
  const { dev } = s;
  const c = dev.config;
  let p = c.read(0x34, 1);
  while (p && !(c.read(p, 1) === PCI_CAP_ID_VNDR && c.read(p + 3, 1) === VIRTIO_PCI_CAP_PCI_CFG)) p = c.read(p + 1, 1);
  t.truthy(p);
  dev.configWrite(p + 4, 1, 4);
  dev.configWrite(p + 8, 4, VIRTIO_PCI_COMMON_NUMQ);
  dev.configWrite(p + 12, 4, 2);
  t.is(dev.configRead(p + 16, 4), 2, 'num_queues through the window');
  dev.configWrite(p + 8, 4, VIRTIO_PCI_COMMON_Q_SELECT);
  dev.configWrite(p + 16, 4, 1);
  t.is(dev.queueSelect, 1);
  dev.configWrite(p + 4, 1, 9);
  t.is(dev.configRead(p + 16, 4), 0, 'bad BAR index reads 0');
});

test('hostile queue configuration is refused, never thrown', (t) => {
  const s = setup();
  const { dev, state, common: { r, w } } = s;
  const tryQueue = (size: number, desc: number, avail: number, used: number) => {
    w(VIRTIO_PCI_COMMON_Q_SELECT, 2, 0);
    w(VIRTIO_PCI_COMMON_Q_SIZE, 2, size);
    w(VIRTIO_PCI_COMMON_Q_DESCLO, 4, desc % 2 ** 32);
    w(VIRTIO_PCI_COMMON_Q_DESCHI, 4, Math.floor(desc / 2 ** 32));
    w(VIRTIO_PCI_COMMON_Q_AVAILLO, 4, avail);
    w(VIRTIO_PCI_COMMON_Q_USEDLO, 4, used);
    w(VIRTIO_PCI_COMMON_Q_ENABLE, 2, 1);
    return r(VIRTIO_PCI_COMMON_Q_ENABLE, 2);
  };
  t.is(tryQueue(0xffff, 0x1000, 0x2000, 0x4000), 0, 'huge size');
  t.is(tryQueue(100, 0x1000, 0x2000, 0x4000), 0, 'not a power of two');
  t.is(tryQueue(512, 0x1000, 0x2000, 0x4000), 0, 'above the maximum');
  t.is(tryQueue(0, 0x1000, 0x2000, 0x4000), 0, 'zero');
  t.is(tryQueue(16, 0x1008, 0x2000, 0x4000), 0, 'misaligned descriptor table');
  t.is(tryQueue(16, 0x1000, 0x2001, 0x4000), 0, 'misaligned avail');
  t.is(tryQueue(16, 0x1000, 0x2000, 0x4002), 0, 'misaligned used');
  t.is(tryQueue(16, RAM - 16 * 8, 0x2000, 0x4000), 0, 'descriptors run off the end of RAM');
  t.is(tryQueue(16, 2 ** 40, 0x2000, 0x4000), 0, 'far outside RAM');
  t.is(dev.stats.refusedQueues, 9);
  t.regex(dev.lastError, /outside guest RAM/);
  t.false(state.queueEnabled(0));
  t.is(tryQueue(16, 0x1000, 0x2000, 0x4000), 1, 'a sane one still works');
  // Out-of-range queue_select.
  w(VIRTIO_PCI_COMMON_Q_SELECT, 2, 77);
  t.is(r(VIRTIO_PCI_COMMON_Q_SIZE, 2), 0);
  t.is(r(VIRTIO_PCI_COMMON_Q_ENABLE, 2), 0);
  t.is(r(VIRTIO_PCI_COMMON_Q_MSIX, 2), MSIX_NO_VECTOR);
  w(VIRTIO_PCI_COMMON_Q_SIZE, 2, 8);
  w(VIRTIO_PCI_COMMON_Q_ENABLE, 2, 1);
  w(VIRTIO_PCI_COMMON_Q_DESCHI, 4, 1);
  t.is(r(VIRTIO_PCI_COMMON_Q_DESCHI, 4), 0);
  // Legacy PFNs beyond RAM.
  dev.legacyWrite(VIRTIO_PCI_QUEUE_SEL, 2, 1);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_PFN, 4, 0xffffffff);
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_PFN, 4), 0);
  dev.legacyWrite(VIRTIO_PCI_QUEUE_PFN, 4, RAM / 4096 - 1);
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_PFN, 4), 0, 'ring straddles the end of RAM');
  t.false(state.queueEnabled(1));
  dev.legacyWrite(VIRTIO_PCI_QUEUE_SEL, 2, 2);
  t.is(dev.legacyRead(VIRTIO_PCI_QUEUE_NUM, 2), 0);
  t.notThrows(() => dev.legacyWrite(VIRTIO_PCI_QUEUE_PFN, 4, 0x10));
});

test('fuzz: random register accesses on every window never throw and keep invariants', (t) => {
  fc.assert(fc.property(
    fc.array(fc.record({
      where: fc.integer({ min: 0, max: 4 }),
      off: fc.integer({ min: 0, max: 0x3fff }),
      size: fc.constantFrom(1, 2, 4, 3, 8),
      value: fc.integer({ min: 0, max: 0xffffffff }),
      write: fc.boolean(),
    }), { maxLength: 200 }),
    (ops) => {
      const s = setup({ resetTimeoutMs: 5 });
      const { dev, state } = s;
      for (const op of ops) {
        const size = op.size;
        if (op.where === 0) op.write ? dev.legacyWrite(op.off & 63, size, op.value) : dev.legacyRead(op.off & 63, size);
        else if (op.where === 1) op.write ? dev.modernWrite(op.off, size, op.value) : dev.modernRead(op.off, size);
        else if (op.where === 2) op.write ? dev.barHandler(1)!.write(op.off & 0xfff, size, op.value) : dev.barHandler(1)!.read(op.off & 0xfff, size);
        else if (op.where === 3 && (op.off & 0xff) + Math.min(size, 4) <= 256) {
          // Keep the BARs and command register where the test expects them.
          const o = op.off & 0xff;
          if (o >= 0x04 && o < 0x28) continue;
          op.write ? dev.configWrite(o, Math.min(size, 4), op.value) : dev.configRead(o, Math.min(size, 4));
        } else if (op.where === 4) {
          s.sender.sendQueueInterrupt(op.value % 3);
        }
      }
      for (let i = 0; i < 2; i++) {
        if (state.queueEnabled(i)) {
          const n = state.queueSize(i);
          if (n === 0 || n > state.queueMaxSize(i) || (n & (n - 1)) !== 0) return false;
          if (!s.mem.contains(state.queueDesc(i), 16 * n)) return false;
        }
      }
      return state.configVector === MSIX_NO_VECTOR || state.configVector < 3;
    },
  ), { numRuns: 300 });
  t.pass();
});

test('BARs on the buses: legacy I/O, MSI-X and modern regions answer at their assigned addresses', (t) => {
  const s = setup();
  const { dev, pio, mmio } = s;
  t.truthy(dev.config.getWord(PCI_COMMAND) & 3);
  const io = dev.barAddress(0);
  t.is(pio.lookup(io + VIRTIO_PCI_HOST_FEATURES)!.pioRead(io + VIRTIO_PCI_HOST_FEATURES, 4), Number(OFFERED & 0xffffffffn));
  const modern = dev.barAddress(4);
  const i = mmio.find(modern);
  t.is(mmio.ranges[i].device.mmioRead(VIRTIO_PCI_COMMON_NUMQ, 2), 2);
  const a = dev.notifyAddresses(1);
  t.is(a.legacyPort, io + VIRTIO_PCI_QUEUE_NOTIFY);
  t.is(a.modernGpa, modern + MODERN_NOTIFY_OFFSET + 4);
  mmio.ranges[mmio.find(a.modernGpa)].device.mmioWrite(a.modernGpa - modern, 2, 1);
  t.deepEqual(s.device.notifies, [1]);
});

test('the shared queue configuration is what the main thread builds its Virtqueue from; a reset disables it', (t) => {
  const s = setup();
  const { state, dev } = s;
  t.false(state.queueEnabled(0));
  const gen0 = state.queueGeneration(0);
  negotiateModern(s, bitOf(F_EVENT_IDX) | bitOf(F_VERSION_1));
  modernQueue(s, 0, 0x4000, 64);
  t.true(state.queueEnabled(0));
  t.not(state.queueGeneration(0), gen0);
  t.deepEqual([state.queueSize(0), state.queueDesc(0), state.queueAvail(0), state.queueUsed(0), state.hasDriverFeature(F_EVENT_IDX)], [64, 0x4000, 0x4400, 0x6000, true]);
  const gen1 = state.queueGeneration(0);
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, 0);
  t.false(state.queueEnabled(0), 'reset drops it');
  t.not(state.queueGeneration(0), gen1);
});

test('vCPU-side KVM rebinds that fail are counted and logged at a bounded rate, never thrown into the exit loop', (t) => {
  const lines: string[] = [];
  const f = bindingFailures(new GuestErrorLog('virtio-net', { sink: (l) => lines.push(l) }));
  for (let i = 0; i < 1000; i++) f.guard('MSI-X route update', () => { throw new Error('KVM_SET_GSI_ROUTING: ENOSPC'); });
  let ran = false;
  f.guard('ioeventfd rebind', () => { ran = true; });
  t.true(ran);
  t.is(f.count, 1000);
  t.is(f.lastError, 'MSI-X route update: KVM_SET_GSI_ROUTING: ENOSPC');
  t.true(lines.length >= 1 && lines.length <= 10, `${lines.length} lines`);
  t.regex(lines[0], /MSI-X route update: KVM_SET_GSI_ROUTING: ENOSPC \(the guest keeps running/);
});

const S_ACK_DRIVER = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;

test('feature negotiation: every path to DRIVER_OK checks the features, whichever interface wrote them', (t) => {
  const s = setup();
  const { dev, state, common: { w } } = s;
  // Legacy: there is no FEATURES_OK, so DRIVER_OK is where a missing dependency is caught.
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER);
  dev.legacyWrite(VIRTIO_PCI_GUEST_FEATURES, 4, Number(bitOf(F_GUEST_TSO4)));
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  t.is(state.status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
  t.regex(dev.lastError, /refused the feature set/);
  dev.legacyWrite(VIRTIO_PCI_GUEST_FEATURES, 4, Number(bitOf(F_GUEST_TSO4) | bitOf(F_GUEST_CSUM)));
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  t.is(state.status & VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_DRIVER_OK);
  // Frozen from DRIVER_OK: a legacy rewrite is ignored, so both threads keep one set.
  dev.legacyWrite(VIRTIO_PCI_GUEST_FEATURES, 4, Number(bitOf(F_MAC)));
  t.is(state.driverFeatures.toString(), words(bitOf(F_GUEST_TSO4) | bitOf(F_GUEST_CSUM)));
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, 0);

  // The modern/legacy mix: features through the modern registers, DRIVER_OK through the legacy status register.
  const refused = dev.stats.refusedFeatures;
  w(VIRTIO_PCI_COMMON_STATUS, 1, S_ACK_DRIVER);
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 0);
  w(VIRTIO_PCI_COMMON_GF, 4, Number(bitOf(F_MAC)));
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 1);
  w(VIRTIO_PCI_COMMON_GF, 4, 1); // VERSION_1
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  t.is(state.status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
  t.regex(dev.lastError, /legacy interface did not offer/);
  t.is(dev.stats.refusedFeatures, refused + 1);
  // Modern DRIVER_OK without FEATURES_OK.
  w(VIRTIO_PCI_COMMON_STATUS, 1, S_ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  t.is(state.status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
  t.regex(dev.lastError, /without FEATURES_OK/);
});

test('feature negotiation: after a reset the driver negotiates a different set from scratch', (t) => {
  const s = setup();
  const { dev, state, common: { w, r } } = s;
  t.is(negotiateModern(s, bitOf(F_MAC) | bitOf(F_EVENT_IDX) | bitOf(F_VERSION_1)) & VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_FEATURES_OK);
  w(VIRTIO_PCI_COMMON_STATUS, 1, S_ACK_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
  t.true(state.modern);
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  t.is(state.driverFeatures.toString(), words(0n));
  // Legacy this time, a smaller set.
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER);
  dev.legacyWrite(VIRTIO_PCI_GUEST_FEATURES, 4, 0xffffffff);
  t.is(state.driverFeatures.toString(), words(OFFERED & 0xffffffffn), 'masked to the legacy offer');
  dev.legacyWrite(VIRTIO_PCI_STATUS, 1, S_ACK_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  t.is(state.status & VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_DRIVER_OK);
  t.false(state.modern);
  w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
  // Modern again, with the dependency satisfied this time.
  t.is(negotiateModern(s, bitOf(F_GUEST_TSO4) | bitOf(F_GUEST_CSUM) | bitOf(F_VERSION_1)) & VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_FEATURES_OK);
  w(VIRTIO_PCI_COMMON_GFSELECT, 4, 0);
  t.is(r(VIRTIO_PCI_COMMON_GF, 4), Number(bitOf(F_GUEST_TSO4) | bitOf(F_GUEST_CSUM)));
  t.true(state.modern);
});
