// The virtio transport state that the vCPU thread and the main thread share.
//
// Who does what (see DESIGN.md §3):
// - the vCPU worker runs the virtio-pci transport (src/devices/virtio/virtio-pci.ts):
//   every guest register access lands there, and it writes this state
//   (status, features, queue configuration, MSI-X table, vectors);
// - the main thread runs the device's data path (virtqueues, TAP, bottom
//   halves): it reads queue configuration from here when it activates its
//   `Virtqueue`s, and raises interrupts through `InterruptSender`, which reads
//   the vectors and the MSI-X table from here.
//
// Everything lives in one SharedArrayBuffer made by `createTransportState()`;
// `new TransportState(sab)` is the same typed facade on either thread (pass the
// SAB in workerData). Words are 32-bit. Fields only one thread writes are
// plain loads/stores; the few that synchronize the threads use Atomics:
// - `resetGeneration` / `resetAck`: the reset hand-shake (`VcpuResetHandshake`,
//   `MainResetHandshake`);
// - `queueGeneration(i)`: bumped (Atomics.add, after the queue fields are
//   written) whenever queue i is enabled or disabled, so the main thread can
//   tell "configuration changed since I activated" with one load;
// - `isr`, the MSI-X pending bits and the INTx line are changed only under the
//   interrupt lock (`SpinLock`), so a main-thread "raise" and a vCPU-thread
//   "ISR read clears / unmask delivers" can never leave the line or a pending
//   bit inconsistent.
// What is built on this state has a module each: interrupt-sender.ts (raising
// interrupts), reset-handshake.ts (device reset across the threads),
// virtio-device.ts (status bits and the device's vCPU-side callbacks).
//
// Layout (word offsets into the Uint32Array):
//   [0, HEADER_WORDS)                          header, see H_*
//   [queueBase, + numQueues * QUEUE_WORDS)     per queue, see Q_*
//   [msixBase, + MSIX_HEADER_WORDS + 4 * vectors + pbaWords)   MSI-X (see msix.ts: MsixShared)

import { MsixShared, MSIX_NO_VECTOR, msixSharedWords } from '../pci/msix.js';
import { FeatureSet, type FeatureWords } from './feature-set.js';

export { MSIX_NO_VECTOR, type MsiSink } from '../pci/msix.js';
// The pieces built on this state, re-exported for callers that want one import.
export * from './virtio-device.js';
export { InterruptSender, type IrqSink } from './interrupt-sender.js';
export { MainResetHandshake, RESET_ACK_TIMEOUT_MS, VcpuResetHandshake } from './reset-handshake.js';

const MAGIC = 0x76747073; // 'vtps'

// Header words.
const H_MAGIC = 0;
const H_NUM_QUEUES = 1;
const H_MSIX_VECTORS = 2;
const H_STATUS = 3;
const H_DRIVER_FEATURES_LO = 4;
const H_DRIVER_FEATURES_HI = 5;
const H_DEVICE_FEATURES_LO = 6;
const H_DEVICE_FEATURES_HI = 7;
const H_CONFIG_GENERATION = 8;
const H_ISR = 9;
const H_CONFIG_VECTOR = 10;
const H_RESET_GENERATION = 11; // Int32, Atomics.wait target on the vCPU side is H_RESET_ACK
const H_RESET_ACK = 12;
const H_MAIN_ATTACHED = 13;    // 1 once the main thread handles resets (else the vCPU does not wait)
const H_IRQ_LOCK = 14;
const H_INTX_LEVEL = 15;       // the level tsvisor last set on the INTx GSI
const H_INTX_GSI = 16;         // the GSI (IOAPIC pin) of INTA#, -1 for none
const H_INTERRUPTS_SENT = 17;  // statistics: interrupts raised (MSI or INTx edge)
const H_INTERRUPTS_PENDED = 18;// statistics: MSI-X vectors left pending because masked
const H_MODERN = 19;           // 1 when the driver uses the modern interface (VERSION_1 negotiated)
export const HEADER_WORDS = 32;

// Per-queue words.
const Q_SIZE = 0;
const Q_MAX_SIZE = 1;
const Q_ENABLED = 2;
const Q_DESC_LO = 3;
const Q_DESC_HI = 4;
const Q_AVAIL_LO = 5;
const Q_AVAIL_HI = 6;
const Q_USED_LO = 7;
const Q_USED_HI = 8;
const Q_VECTOR = 9;
const Q_GENERATION = 10;
// Word 11 was a per-queue notify counter; the device counts its own kicks.
export const QUEUE_WORDS = 16;

const TWO32 = 0x100000000;

export interface TransportStateOptions {
  /** Virtqueues the device has. */
  numQueues: number;
  /** Maximum (and initial) size per queue: a power of two. */
  queueMaxSizes: number[];
  /** MSI-X table entries (QEMU's virtio-net uses numQueues + 1). */
  msixVectors: number;
  /**
   * Device feature bits as the device offers them (the transport adds
   * VERSION_1 on the modern interface). A BigInt is still taken from setup
   * code that has not moved to FeatureSet; it is split into words here, once.
   */
  deviceFeatures: FeatureSet | FeatureWords | bigint;
  /** GSI of INTA# (IOAPIC pin), or -1. */
  intxGsi: number;
}

/** Words of the shared state for a device shape. */
function layout(numQueues: number, vectors: number) {
  const queueBase = HEADER_WORDS;
  const msixBase = queueBase + numQueues * QUEUE_WORDS;
  const total = msixBase + msixSharedWords(vectors);
  return { queueBase, msixBase, total };
}

/** Makes and initializes the shared state (on the main thread, before the worker starts). */
export function createTransportState(opts: TransportStateOptions): SharedArrayBuffer {
  if (!Number.isInteger(opts.numQueues) || opts.numQueues < 1 || opts.numQueues > 1024) throw new RangeError(`bad queue count ${opts.numQueues}`);
  if (opts.queueMaxSizes.length !== opts.numQueues) throw new RangeError('queueMaxSizes needs one size per queue');
  if (!Number.isInteger(opts.msixVectors) || opts.msixVectors < 0 || opts.msixVectors > 2048) throw new RangeError(`bad MSI-X vector count ${opts.msixVectors}`);
  const l = layout(opts.numQueues, opts.msixVectors);
  const sab = new SharedArrayBuffer(l.total * 4);
  const u = new Uint32Array(sab);
  u[H_MAGIC] = MAGIC;
  u[H_NUM_QUEUES] = opts.numQueues;
  u[H_MSIX_VECTORS] = opts.msixVectors;
  const offered = FeatureSet.from(opts.deviceFeatures);
  u[H_DEVICE_FEATURES_LO] = offered.lo;
  u[H_DEVICE_FEATURES_HI] = offered.hi;
  new Int32Array(sab)[H_INTX_GSI] = opts.intxGsi;
  const s = new TransportState(sab);
  for (let i = 0; i < opts.numQueues; i++) {
    const m = opts.queueMaxSizes[i];
    if (!Number.isInteger(m) || m < 1 || m > 32768 || (m & (m - 1)) !== 0) throw new RangeError(`queue ${i} max size ${m} is not a power of two <= 32768`);
    u[l.queueBase + i * QUEUE_WORDS + Q_MAX_SIZE] = m;
  }
  s.resetDeviceState();
  return sab;
}

/** A spin lock over one Int32 word; held only around a register update and one ioctl. */
export class SpinLock {
  constructor(private readonly words: Int32Array, private readonly index: number) {}
  lock(): void {
    while (Atomics.compareExchange(this.words, this.index, 0, 1) !== 0) {
      // The holder runs a handful of instructions and at most one ioctl.
    }
  }
  unlock(): void {
    Atomics.store(this.words, this.index, 0);
  }
}

/**
 * Typed accessors over the shared transport state; usable from either thread.
 * Queue accessors take the queue index unchecked except where noted: callers
 * range-check guest-supplied indexes against `numQueues` first.
 */
export class TransportState {
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  readonly numQueues: number;
  readonly msixVectors: number;
  /** The MSI-X table, PBA and control bits (shared). */
  readonly msix: MsixShared;
  /** Guards ISR, the INTx level and the MSI-X pending bits. */
  readonly irqLock: SpinLock;
  private readonly qb: number;

  constructor(readonly sab: SharedArrayBuffer) {
    this.u32 = new Uint32Array(sab);
    this.i32 = new Int32Array(sab);
    if (this.u32[H_MAGIC] !== MAGIC) throw new Error('not a virtio transport state buffer');
    this.numQueues = this.u32[H_NUM_QUEUES];
    this.msixVectors = this.u32[H_MSIX_VECTORS];
    const l = layout(this.numQueues, this.msixVectors);
    this.qb = l.queueBase;
    this.irqLock = new SpinLock(this.i32, H_IRQ_LOCK);
    this.msix = new MsixShared(sab, l.msixBase, this.msixVectors, this.irqLock);
  }

  // ---- device-wide ----
  get status(): number { return Atomics.load(this.u32, H_STATUS); }
  set status(v: number) { Atomics.store(this.u32, H_STATUS, v & 0xff); }
  /** Atomically sets status bits (e.g. NEEDS_RESET from the main thread); returns the previous status. */
  orStatus(bits: number): number { return Atomics.or(this.u32, H_STATUS, bits & 0xff); }
  /** Atomically replaces the status if it still equals `expected`. */
  casStatus(expected: number, v: number): boolean { return Atomics.compareExchange(this.u32, H_STATUS, expected, v & 0xff) === expected; }

  /** Device features as offered by the device (VERSION_1 included only if the device put it there). A new set: not for the exit path. */
  get deviceFeatures(): FeatureSet { return new FeatureSet(this.u32[H_DEVICE_FEATURES_LO], this.u32[H_DEVICE_FEATURES_HI]); }
  deviceFeaturesWord(sel: number): number { return sel === 0 ? this.u32[H_DEVICE_FEATURES_LO] : sel === 1 ? this.u32[H_DEVICE_FEATURES_HI] : 0; }

  /** Features the driver accepted (what the data path must honour once DRIVER_OK). */
  get driverFeatures(): FeatureSet { return this.readDriverFeatures(new FeatureSet()); }
  /** Copies the accepted features into `out` (a reused set, so the exit path allocates nothing); returns `out`. */
  readDriverFeatures(out: FeatureSet): FeatureSet { return out.set(this.u32[H_DRIVER_FEATURES_LO], this.u32[H_DRIVER_FEATURES_HI]); }
  driverFeaturesWord(sel: number): number { return sel === 0 ? this.u32[H_DRIVER_FEATURES_LO] : sel === 1 ? this.u32[H_DRIVER_FEATURES_HI] : 0; }
  setDriverFeaturesWord(sel: number, v: number): void {
    if (sel === 0) this.u32[H_DRIVER_FEATURES_LO] = v >>> 0;
    else if (sel === 1) this.u32[H_DRIVER_FEATURES_HI] = v >>> 0;
  }
  /** Allocation-free test of one negotiated feature bit (0-63). */
  hasDriverFeature(bit: number): boolean {
    if (bit >= 0 && bit < 32) return (this.u32[H_DRIVER_FEATURES_LO] & (1 << bit)) !== 0;
    return bit >= 32 && bit < 64 ? (this.u32[H_DRIVER_FEATURES_HI] & (1 << (bit - 32))) !== 0 : false;
  }

  get configGeneration(): number { return Atomics.load(this.u32, H_CONFIG_GENERATION) & 0xff; }
  /** Call after changing device config space (either thread), before the config interrupt. */
  bumpConfigGeneration(): void { Atomics.add(this.u32, H_CONFIG_GENERATION, 1); }

  get isr(): number { return Atomics.load(this.u32, H_ISR); }

  get configVector(): number { return this.u32[H_CONFIG_VECTOR]; }
  set configVector(v: number) { this.u32[H_CONFIG_VECTOR] = v & 0xffff; }

  get intxGsi(): number { return this.i32[H_INTX_GSI]; }
  get intxLevel(): number { return Atomics.load(this.u32, H_INTX_LEVEL); }

  /** True when the driver negotiated VERSION_1 (modern ring and config semantics). */
  get modern(): boolean { return this.u32[H_MODERN] !== 0; }
  set modern(v: boolean) { this.u32[H_MODERN] = v ? 1 : 0; }

  get interruptsSent(): number { return this.u32[H_INTERRUPTS_SENT]; }
  get interruptsPended(): number { return this.u32[H_INTERRUPTS_PENDED]; }

  // ---- per queue ----
  private q(i: number): number { return this.qb + i * QUEUE_WORDS; }
  queueSize(i: number): number { return this.u32[this.q(i) + Q_SIZE]; }
  setQueueSize(i: number, v: number): void { this.u32[this.q(i) + Q_SIZE] = v & 0xffff; }
  queueMaxSize(i: number): number { return this.u32[this.q(i) + Q_MAX_SIZE]; }
  /** Whether the driver enabled the queue (modern queue_enable = 1, or a legacy PFN ≠ 0) and the transport accepted it. */
  queueEnabled(i: number): boolean { return Atomics.load(this.u32, this.q(i) + Q_ENABLED) !== 0; }
  queueDesc(i: number): number { const b = this.q(i); return this.u32[b + Q_DESC_HI] * TWO32 + this.u32[b + Q_DESC_LO]; }
  queueAvail(i: number): number { const b = this.q(i); return this.u32[b + Q_AVAIL_HI] * TWO32 + this.u32[b + Q_AVAIL_LO]; }
  queueUsed(i: number): number { const b = this.q(i); return this.u32[b + Q_USED_HI] * TWO32 + this.u32[b + Q_USED_LO]; }
  /** Address register halves, word 0 = lo, 1 = hi; `which` 0 desc, 1 avail (driver), 2 used (device). */
  queueAddrWord(i: number, which: number, word: number): number { return this.u32[this.q(i) + Q_DESC_LO + which * 2 + word]; }
  setQueueAddrWord(i: number, which: number, word: number, v: number): void { this.u32[this.q(i) + Q_DESC_LO + which * 2 + word] = v >>> 0; }
  setQueueAddrs(i: number, desc: number, avail: number, used: number): void {
    const b = this.q(i);
    this.u32[b + Q_DESC_LO] = desc % TWO32; this.u32[b + Q_DESC_HI] = Math.floor(desc / TWO32);
    this.u32[b + Q_AVAIL_LO] = avail % TWO32; this.u32[b + Q_AVAIL_HI] = Math.floor(avail / TWO32);
    this.u32[b + Q_USED_LO] = used % TWO32; this.u32[b + Q_USED_HI] = Math.floor(used / TWO32);
  }
  queueVector(i: number): number { return this.u32[this.q(i) + Q_VECTOR]; }
  setQueueVector(i: number, v: number): void { this.u32[this.q(i) + Q_VECTOR] = v & 0xffff; }
  /** Bumped on every enable/disable of queue i (after its fields are written). */
  queueGeneration(i: number): number { return Atomics.load(this.u32, this.q(i) + Q_GENERATION); }
  /** Enables or disables queue i; the fields must already be written. */
  setQueueEnabled(i: number, on: boolean): void {
    const b = this.q(i);
    Atomics.store(this.u32, b + Q_ENABLED, on ? 1 : 0);
    Atomics.add(this.u32, b + Q_GENERATION, 1);
  }

  // ---- reset ----
  get resetGeneration(): number { return Atomics.load(this.i32, H_RESET_GENERATION); }
  get resetAck(): number { return Atomics.load(this.i32, H_RESET_ACK); }
  /** The main thread declares it resets its queues on request (else the vCPU side does not wait for it). */
  set mainAttached(v: boolean) { Atomics.store(this.i32, H_MAIN_ATTACHED, v ? 1 : 0); }
  get mainAttached(): boolean { return Atomics.load(this.i32, H_MAIN_ATTACHED) !== 0; }

  /**
   * Back to the power-on state, on the vCPU thread before the reset hand-shake:
   * status, driver features, ISR, config vector and queue vectors, queues
   * (disabled, size = max, addresses 0), MSI-X pending bits. The MSI-X table,
   * enable and function mask belong to PCI config space and stay.
   */
  resetDeviceState(): void {
    const u = this.u32;
    u[H_DRIVER_FEATURES_LO] = 0;
    u[H_DRIVER_FEATURES_HI] = 0;
    u[H_CONFIG_VECTOR] = MSIX_NO_VECTOR;
    u[H_MODERN] = 0;
    for (let i = 0; i < this.numQueues; i++) {
      const b = this.q(i);
      const wasEnabled = u[b + Q_ENABLED] !== 0;
      u[b + Q_SIZE] = u[b + Q_MAX_SIZE];
      for (let w = Q_DESC_LO; w <= Q_USED_HI; w++) u[b + w] = 0;
      u[b + Q_VECTOR] = MSIX_NO_VECTOR;
      if (wasEnabled) this.setQueueEnabled(i, false);
    }
    this.irqLock.lock();
    Atomics.store(u, H_ISR, 0);
    this.msix.clearPendingLocked();
    this.irqLock.unlock();
    Atomics.store(u, H_STATUS, 0);
  }

  // ---- used by InterruptSender and the transport (callers hold irqLock) ----
  /** @internal */ orIsrLocked(bits: number): number { return Atomics.or(this.u32, H_ISR, bits) | bits; }
  /** @internal */ takeIsrLocked(): number { return Atomics.exchange(this.u32, H_ISR, 0); }
  /** @internal */ setIntxLevelLocked(v: number): void { Atomics.store(this.u32, H_INTX_LEVEL, v); }
  /** @internal */ countSent(): void { this.u32[H_INTERRUPTS_SENT]++; }
  /** @internal */ countPended(): void { this.u32[H_INTERRUPTS_PENDED]++; }
  /** @internal */ bumpResetGeneration(): number { return Atomics.add(this.i32, H_RESET_GENERATION, 1) + 1; }
  /** @internal */ ackReset(gen: number): void { Atomics.store(this.i32, H_RESET_ACK, gen); Atomics.notify(this.i32, H_RESET_ACK); }
  /** @internal */ waitResetAck(gen: number, timeoutMs: number): boolean {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ack = Atomics.load(this.i32, H_RESET_ACK);
      if (ack === gen) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      Atomics.wait(this.i32, H_RESET_ACK, ack, left);
    }
  }
}
