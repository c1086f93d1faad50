// A whole virtio-net NIC in one thread for property tests with hostile guests:
// the PCI bus and the virtio-pci transport (vCPU side), VirtioNetVcpu, and the
// VirtioNet data path (main-thread side) over guest RAM that reports every
// access outside RAM, with a TAP played by a socketpair whose readv/writev
// check each iovec against guest RAM. Doorbells are flags the test turns into
// main-loop runs (`runMain`), so a whole guest/device interleaving runs
// synchronously and is reproducible from a fast-check seed.
import { MmioBus, PioBus } from '../../src/bus/io-bus.js';
import { GuestMemory, type RamRegion } from '../../src/memory/guest-memory.js';
import * as libc from '../../src/sys/libc.js';
import { MainLoop } from '../../src/loop/main-loop.js';
import { PciBus, PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA } from '../../src/devices/pci/pci-bus.js';
import { PCI_BASE_ADDRESS_0, PCI_COMMAND } from '../../src/devices/pci/config-space.js';
import { PCI_MSIX_FLAGS_ENABLE } from '../../src/devices/pci/msix.js';
import {
  createTransportState, InterruptSender, TransportState, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, type IrqSink,
} from '../../src/devices/virtio/transport-state.js';
import {
  VirtioPciDevice, LEGACY_BAR, MODERN_BAR, MODERN_NOTIFY_OFFSET, MSIX_BAR, VIRTIO_PCI_COMMON_GF, VIRTIO_PCI_COMMON_GFSELECT,
  VIRTIO_PCI_COMMON_MSIX, VIRTIO_PCI_COMMON_Q_AVAILHI, VIRTIO_PCI_COMMON_Q_AVAILLO, VIRTIO_PCI_COMMON_Q_DESCHI, VIRTIO_PCI_COMMON_Q_DESCLO,
  VIRTIO_PCI_COMMON_Q_ENABLE, VIRTIO_PCI_COMMON_Q_MSIX, VIRTIO_PCI_COMMON_Q_SELECT, VIRTIO_PCI_COMMON_Q_SIZE, VIRTIO_PCI_COMMON_Q_USEDHI,
  VIRTIO_PCI_COMMON_Q_USEDLO, VIRTIO_PCI_COMMON_STATUS, VIRTIO_PCI_GUEST_FEATURES, VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER, VIRTIO_PCI_QUEUE_NOTIFY,
  VIRTIO_PCI_QUEUE_PFN, VIRTIO_PCI_QUEUE_SEL, VIRTIO_PCI_STATUS,
} from '../../src/devices/virtio/virtio-pci.js';
import { GuestErrorLog } from '../../src/devices/virtio/guest-error-log.js';
import { legacyVringLayout, type VringLayout } from '../../src/devices/virtio/virtqueue.js';
import { VirtioNet } from '../../src/devices/net/virtio-net.js';
import { VirtioNetVcpu } from '../../src/devices/net/virtio-net-vcpu.js';
import { VirtioNetConfig, netQueueCount, netQueueSizes } from '../../src/devices/net/virtio-net-config.js';
import { offeredFeatures, vnetHeaderSize } from '../../src/devices/net/virtio-net-features.js';
import type { BottomHalfList } from '../../src/loop/bottom-half.js';
import { SocketBackend } from './net-fakes.js';
import { VringDriver } from './vring-driver.js';

// Guest RAM: two regions with a hole between them, so "inside the mapping"
// and "inside RAM" differ.
export const RAM_A = 0;
export const RAM_A_SIZE = 1 << 20;
export const RAM_B = 0x200000;
export const RAM_B_SIZE = 1 << 20;
export const RAM_END = RAM_B + RAM_B_SIZE;

export const MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
export const PCI_SLOT = 4;

/** GuestMemory over native mappings that records every access the device makes outside RAM (it must check first). */
export class CheckedMemory extends GuestMemory {
  armed = true;
  readonly violations: string[] = [];

  private check(what: string, gpa: number, len: number): void {
    if (this.armed && !this.contains(gpa, len) && this.violations.length < 16) this.violations.push(`${what}(0x${gpa.toString(16)}, ${len})`);
  }
  override readU8(gpa: number): number { this.check('readU8', gpa, 1); return super.readU8(gpa); }
  override readU16(gpa: number): number { this.check('readU16', gpa, 2); return super.readU16(gpa); }
  override readU32(gpa: number): number { this.check('readU32', gpa, 4); return super.readU32(gpa); }
  override readU64(gpa: number): bigint { this.check('readU64', gpa, 8); return super.readU64(gpa); }
  override readU64Number(gpa: number): number { this.check('readU64Number', gpa, 8); return super.readU64Number(gpa); }
  override read(gpa: number, len: number): Uint8Array | null { this.check('read', gpa, len); return super.read(gpa, len); }
  override write(gpa: number, data: Uint8Array): boolean { this.check('write', gpa, data.byteLength); return super.write(gpa, data); }
  override writeU8(gpa: number, v: number): boolean { this.check('writeU8', gpa, 1); return super.writeU8(gpa, v); }
  override writeU16(gpa: number, v: number): boolean { this.check('writeU16', gpa, 2); return super.writeU16(gpa, v); }
  override writeU32(gpa: number, v: number): boolean { this.check('writeU32', gpa, 4); return super.writeU32(gpa, v); }
  override writeU64(gpa: number, v: bigint): boolean { this.check('writeU64', gpa, 8); return super.writeU64(gpa, v); }
  // slice()/contains() are the bounds checks themselves: a null answer is the check doing its job.

  /** The guest's own accesses (the test writing rings): unchecked. */
  guest<T>(f: () => T): T {
    const was = this.armed;
    this.armed = false;
    try {
      return f();
    } finally {
      this.armed = was;
    }
  }

  /** True when host range [host, host+len) lies inside one RAM region's mapping. */
  hostRangeIsRam(host: number, len: number): boolean {
    for (const r of this.regions) {
      const base = Number(r.hostAddress);
      if (host >= base && host + len <= base + r.bytes.byteLength) return true;
    }
    return false;
  }

  wipe(): void {
    for (const r of this.regions) r.bytes.fill(0);
  }
}

/** A socketpair backend whose readv/writev check every iovec: guest RAM (or the device's own bounce buffer) only. */
export class CheckedBackend extends SocketBackend {
  /** Host ranges besides guest RAM readv may fill (the device's bounce buffers). */
  readonly extra: Array<{ address: number; size: number }>;
  /** Set while the device is broken: it must not move packets then. */
  deviceBroken = false;
  /** Frames the device wrote, in order (drained from the peer before each write, so the socket never fills). */
  readonly frames: Uint8Array[] = [];
  writes = 0;
  reads = 0;
  private readonly peerBuf = new libc.NativeBuffer(256 << 10);

  /** `violations` and `extra` may be another queue's, so a multi-queue backend keeps one list. */
  constructor(private readonly mem: CheckedMemory, readonly violations: string[] = [], extra: Array<{ address: number; size: number }> = []) {
    super();
    this.extra = extra;
  }

  private checkIov(call: string, iov: bigint, n: number): void {
    if (n < 0 || n > 1024) {
      this.violations.push(`${call}: ${n} iovecs`);
      return;
    }
    if (n === 0) return;
    const dv = new DataView(libc.view(iov, 16 * n));
    for (let i = 0; i < n; i++) {
      const base = dv.getUint32(16 * i, true) + dv.getUint32(16 * i + 4, true) * 2 ** 32;
      const len = dv.getUint32(16 * i + 8, true) + dv.getUint32(16 * i + 12, true) * 2 ** 32;
      const ok = this.mem.hostRangeIsRam(base, len) || (call === 'readv' && this.extra.some((e) => base >= e.address && base + len <= e.address + e.size));
      if (!ok && this.violations.length < 16) this.violations.push(`${call}: iovec ${i} (host 0x${base.toString(16)}, ${len}) is not guest RAM`);
    }
  }

  override writev(iov: bigint, n: number): number {
    this.writes++;
    if (this.deviceBroken) this.violations.push('writev while the device is broken');
    this.checkIov('writev', iov, n);
    this.drain();
    return super.writev(iov, n);
  }

  override readv(iov: bigint, n: number): number {
    this.reads++;
    if (this.deviceBroken) this.violations.push('readv while the device is broken');
    this.checkIov('readv', iov, n);
    return super.readv(iov, n);
  }

  /** Moves what the device sent into `frames`. */
  drain(): void {
    for (;;) {
      const n = libc.read(this.peer, this.peerBuf.address, this.peerBuf.size);
      if (n < 0) return;
      this.frames.push(this.peerBuf.bytes.slice(0, n));
    }
  }

  /** Drops frames the host sent that the device has not read (between cases). */
  flushInbound(): void {
    for (;;) {
      if (libc.read(this.fd, this.peerBuf.address, this.peerBuf.size) < 0) return;
    }
  }
}

/** Counts what the data path raises, and checks virtio_error semantics on each needsReset. */
export class CheckedSender extends InterruptSender {
  configInterrupts = 0;
  needsResets = 0;
  readonly violations: string[] = [];
  onNeedsReset: () => void = () => {};

  override sendConfigInterrupt(): void {
    this.configInterrupts++;
    super.sendConfigInterrupt();
  }

  override needsReset(): void {
    const before = this.state.status;
    const configs = this.configInterrupts;
    this.needsResets++;
    super.needsReset();
    const after = this.state.status;
    if (this.state.modern) {
      if (!(after & VIRTIO_CONFIG_S_NEEDS_RESET)) this.violations.push('modern: violation without NEEDS_RESET');
      if (before & VIRTIO_CONFIG_S_DRIVER_OK && !(before & VIRTIO_CONFIG_S_NEEDS_RESET) && this.configInterrupts !== configs + 1) {
        this.violations.push('modern: NEEDS_RESET without a config interrupt');
      }
    } else if ((after & VIRTIO_CONFIG_S_NEEDS_RESET) !== (before & VIRTIO_CONFIG_S_NEEDS_RESET)) {
      this.violations.push('legacy: NEEDS_RESET set on a legacy device');
    }
    this.onNeedsReset();
  }
}

export class RecordingIrq implements IrqSink {
  lines = 0;
  msis = 0;
  irqLine(): void { this.lines++; }
  signalMsi(): number { this.msis++; return 1; }
}

/** A driver whose used ring sits where the legacy layout puts it (4 KiB aligned). */
export class LayoutDriver extends VringDriver {
  constructor(mem: GuestMemory, size: number, l: VringLayout) {
    super(mem, size, l.desc);
    (this as { used: number }).used = l.used;
  }
}

export interface Rig {
  mem: CheckedMemory;
  backend: CheckedBackend;
  state: TransportState;
  dev: VirtioPciDevice;
  vcpu: VirtioNetVcpu;
  net: VirtioNet;
  sender: CheckedSender;
  pio: PioBus;
  mmio: MmioBus;
  bus: PciBus;
  offered: number;
  /** Lines the transport and the data path logged. */
  logLines: string[];
  /** Doorbells rung and not yet run: one per queue index, and the control one. */
  pending: { queues: boolean[]; control: boolean };
  /** Queue pairs (max_virtqueue_pairs); with more than one the device offers MQ over a backend with a queue per pair. */
  pairs: number;
  /** Where the bus placed the BARs (the recovery puts them back). */
  home: { io: number; msix: number; modern: number };
  /** Runs the main thread: rung doorbells, then one pass of the bottom halves the device scheduled itself. */
  runMain(rxReadable?: boolean): void;
  close(): void;
}

function nativeRegion(gpa: number, size: number): { region: RamRegion; free: () => void } {
  const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS);
  return { region: { gpa, bytes: new Uint8Array(libc.view(addr, size)), hostAddress: addr }, free: () => libc.munmap(addr, size) };
}

/** Builds the NIC with `pairs` queue pairs; one per test file (it maps native buffers that are never unmapped). */
export function hostileRig(pairs = 1): Rig {
  const a = nativeRegion(RAM_A, RAM_A_SIZE);
  const b = nativeRegion(RAM_B, RAM_B_SIZE);
  const mem = new CheckedMemory([a.region, b.region]);
  const offered = offeredFeatures({ backendOffloads: 0x1f, queuePairs: pairs });
  const sizes = netQueueSizes({}, pairs);
  const sab = createTransportState({ numQueues: netQueueCount(pairs), queueMaxSizes: sizes, msixVectors: netQueueCount(pairs) + 1, deviceFeatures: BigInt(offered), intxGsi: 19 });
  const state = new TransportState(sab);
  const cfg = VirtioNetConfig.create(Uint8Array.from(MAC), 1500, pairs);
  const loop = new MainLoop();
  const backend = new CheckedBackend(mem);
  // Every queue of the backend checks what it is given against guest RAM, into one list.
  backend.moreQueues = Array.from({ length: pairs - 1 }, () => new CheckedBackend(mem, backend.violations, backend.extra));
  const logLines: string[] = [];
  const sink = (line: string) => { logLines.push(line); };
  const sender = new CheckedSender(state, new RecordingIrq());
  const net = new VirtioNet(loop, mem, backend, state, cfg, sender, {});
  net.guestLog = new GuestErrorLog('virtio-net', { sink });
  for (const bounce of net.rxBounceBuffers) backend.extra.push({ address: Number(bounce.address), size: bounce.size });
  const setBroken = (on: boolean) => { for (const q of [backend, ...(backend.moreQueues as CheckedBackend[])]) q.deviceBroken = on; };
  const pending = { queues: sizes.map(() => false), control: false };
  const vcpu = new VirtioNetVcpu(mem, { shared: cfg.buffer, queueSizes: sizes, deviceFeatures: BigInt(offered), doorbellFds: { queues: sizes.map(() => -1), control: -1 } }, {
    queues: sizes.map((_, i) => ({ ring: () => { pending.queues[i] = true; } })),
    control: { ring: () => { pending.control = true; } },
  });
  vcpu.attach(state);
  // The reset hand-shake: the main thread runs at once, so the vCPU side never waits.
  const dev = new VirtioPciDevice({ device: vcpu, state, mem, irq: new RecordingIrq(), ringReset: () => { net.controlRun(); setBroken(false); }, log: new GuestErrorLog('virtio-net', { sink }) });
  sender.onNeedsReset = () => setBroken(true);
  const pio = new PioBus();
  const mmio = new MmioBus();
  const bus = new PciBus({ pio, mmio });
  bus.register();
  bus.plug(dev, PCI_SLOT);
  const home = { io: dev.barAddress(LEGACY_BAR), msix: dev.barAddress(MSIX_BAR), modern: dev.barAddress(MODERN_BAR) };
  const bhs = (loop as unknown as { bhs: BottomHalfList }).bhs;
  const runMain = (rxReadable = false) => {
    if (pending.control) { pending.control = false; net.controlRun(); }
    // Each rung doorbell runs its queue's event, as its bottom half would.
    pending.queues.forEach((rung, i) => {
      if (!rung) return;
      pending.queues[i] = false;
      net.onQueueEvent(i);
    });
    if (rxReadable) net.rxKick();
    bhs.runPass();
  };
  const close = () => {
    net.close();
    loop.close();
    backend.close();
    a.free();
    b.free();
  };
  return { mem, backend, state, dev, vcpu, net, sender, pio, mmio, bus, offered, logLines, pending, pairs, home, runMain, close };
}

// ---- the guest's side: register accesses as the vCPU run loop dispatches them ----

/** An MMIO access at a guest physical address, dispatched like the run loop (8 bytes as two halves; other widths dropped). */
export function mmioAccess(r: Rig, addr: number, size: number, write: boolean, value = 0): number {
  const i = r.mmio.find(addr);
  if (i < 0) return write ? 0 : 0xffffffff;
  const range = r.mmio.ranges[i];
  const off = addr - range.base;
  const d = range.device;
  if (write) {
    if (size === 8) {
      d.mmioWrite(off, 4, value >>> 0);
      d.mmioWrite(off + 4, 4, Math.floor(value / 2 ** 32) >>> 0);
    } else if (size === 1 || size === 2 || size === 4) {
      d.mmioWrite(off, size, size === 4 ? value >>> 0 : value & (size === 2 ? 0xffff : 0xff));
    }
    return 0;
  }
  if (size === 8) return d.mmioRead(off, 4) + d.mmioRead(off + 4, 4) * 2 ** 32;
  if (size === 1 || size === 2 || size === 4) return d.mmioRead(off, size);
  return 0;
}

/** A port access, dispatched like the run loop (1, 2, 4 bytes; unclaimed ports read all-ones). */
export function pioAccess(r: Rig, port: number, size: number, write: boolean, value = 0): number {
  if (size !== 1 && size !== 2 && size !== 4) return 0;
  const d = r.pio.lookup(port & 0xffff);
  const v = size === 4 ? value >>> 0 : value & (size === 2 ? 0xffff : 0xff);
  if (!d) return write ? 0 : 0xffffffff;
  if (write) {
    d.pioWrite(port & 0xffff, size, v);
    return 0;
  }
  return d.pioRead(port & 0xffff, size);
}

/** Configuration mechanism #1: our function, register `off`. */
export function cfgWrite(r: Rig, off: number, size: number, value: number): void {
  pioAccess(r, PCI_CONFIG_ADDRESS, 4, true, (0x80000000 | (PCI_SLOT << 11) | (off & 0xfc)) >>> 0);
  pioAccess(r, PCI_CONFIG_DATA + (off & 3), size, true, value);
}

export function cfgRead(r: Rig, off: number, size: number): number {
  pioAccess(r, PCI_CONFIG_ADDRESS, 4, true, (0x80000000 | (PCI_SLOT << 11) | (off & 0xfc)) >>> 0);
  return pioAccess(r, PCI_CONFIG_DATA + (off & 3), size, false);
}

// ---- a clean driver, as after a reset ----

export interface CleanSetup {
  modern: boolean;
  features: number;
  hdrLen: number;
  rx: VringDriver;
  tx: VringDriver;
  ctrl: VringDriver | null;
  notify(queue: number): void;
}

export const CLEAN_RING_BASE = [0x10000, 0x20000, 0x30000];
export const CLEAN_LEGACY_PFN = [0x40, 0x48, 0x50];
export const CLEAN_QUEUE_SIZE = 16;

/**
 * What firmware and a well-behaved driver do after a hostile episode: BARs
 * and decoding back home, MSI-X on (or off), reset, feature negotiation,
 * rings, DRIVER_OK — all through the buses, at the addresses the BARs hold.
 */
export function cleanSetup(r: Rig, o: { modern: boolean; features: number; msix: boolean; ctrl?: boolean }): CleanSetup {
  cfgWrite(r, PCI_COMMAND, 2, 0x7);
  cfgWrite(r, PCI_BASE_ADDRESS_0 + 4 * LEGACY_BAR, 4, r.home.io);
  cfgWrite(r, PCI_BASE_ADDRESS_0 + 4 * MSIX_BAR, 4, r.home.msix);
  cfgWrite(r, PCI_BASE_ADDRESS_0 + 4 * MODERN_BAR, 4, r.home.modern);
  cfgWrite(r, PCI_BASE_ADDRESS_0 + 4 * MODERN_BAR + 4, 4, 0);
  const cap = r.dev.msix!.capOffset;
  cfgWrite(r, cap + 2, 2, o.msix ? PCI_MSIX_FLAGS_ENABLE : 0);
  // Once more: a BAR refused while another still covered its range maps now.
  cfgWrite(r, PCI_COMMAND, 2, 0x7);
  for (let v = 0; v < 4; v++) {
    mmioAccess(r, r.home.msix + 16 * v, 4, true, 0xfee00000);
    mmioAccess(r, r.home.msix + 16 * v + 8, 4, true, 0x40 + v);
    mmioAccess(r, r.home.msix + 16 * v + 12, 4, true, 0);
  }
  r.backend.flushInbound();
  const queues = o.ctrl ? 3 : 2;
  const features = o.features;
  if (o.modern) {
    const w = (off: number, size: number, v: number) => mmioAccess(r, r.home.modern + off, size, true, v);
    w(VIRTIO_PCI_COMMON_STATUS, 1, 0);
    w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    w(VIRTIO_PCI_COMMON_GFSELECT, 4, 0);
    w(VIRTIO_PCI_COMMON_GF, 4, features % 2 ** 32);
    w(VIRTIO_PCI_COMMON_GFSELECT, 4, 1);
    w(VIRTIO_PCI_COMMON_GF, 4, Math.floor(features / 2 ** 32));
    w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK);
    const st = mmioAccess(r, r.home.modern + VIRTIO_PCI_COMMON_STATUS, 1, false);
    if (!(st & VIRTIO_CONFIG_S_FEATURES_OK)) throw new Error(`clean setup: FEATURES_OK refused (${r.dev.lastError})`);
    w(VIRTIO_PCI_COMMON_MSIX, 2, o.msix ? 3 : 0xffff);
    const drivers: VringDriver[] = [];
    for (let q = 0; q < queues; q++) {
      const d = new VringDriver(r.mem, CLEAN_QUEUE_SIZE, CLEAN_RING_BASE[q]);
      drivers.push(d);
      w(VIRTIO_PCI_COMMON_Q_SELECT, 2, q);
      w(VIRTIO_PCI_COMMON_Q_SIZE, 2, CLEAN_QUEUE_SIZE);
      w(VIRTIO_PCI_COMMON_Q_MSIX, 2, o.msix ? q : 0xffff);
      w(VIRTIO_PCI_COMMON_Q_DESCLO, 4, d.desc);
      w(VIRTIO_PCI_COMMON_Q_DESCHI, 4, 0);
      w(VIRTIO_PCI_COMMON_Q_AVAILLO, 4, d.avail);
      w(VIRTIO_PCI_COMMON_Q_AVAILHI, 4, 0);
      w(VIRTIO_PCI_COMMON_Q_USEDLO, 4, d.used);
      w(VIRTIO_PCI_COMMON_Q_USEDHI, 4, 0);
      w(VIRTIO_PCI_COMMON_Q_ENABLE, 2, 1);
      if (mmioAccess(r, r.home.modern + VIRTIO_PCI_COMMON_Q_ENABLE, 2, false) !== 1) throw new Error(`clean setup: queue ${q} refused (${r.dev.lastError})`);
    }
    r.mem.guest(() => drivers.forEach((d) => wipeRing(r.mem, d)));
    w(VIRTIO_PCI_COMMON_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
    r.runMain();
    const notify = (q: number) => mmioAccess(r, r.home.modern + MODERN_NOTIFY_OFFSET + q * VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER, 2, true, q);
    return { modern: true, features, hdrLen: vnetHeaderSize(features), rx: drivers[0], tx: drivers[1], ctrl: drivers[2] ?? null, notify };
  }
  const io = r.home.io;
  const w = (off: number, size: number, v: number) => pioAccess(r, io + off, size, true, v);
  w(VIRTIO_PCI_STATUS, 1, 0);
  w(VIRTIO_PCI_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  w(VIRTIO_PCI_GUEST_FEATURES, 4, features % 2 ** 32);
  const drivers: VringDriver[] = [];
  for (let q = 0; q < queues; q++) {
    const size = r.state.queueMaxSize(q);
    const d = new LayoutDriver(r.mem, size, legacyVringLayout(CLEAN_LEGACY_PFN[q], size));
    drivers.push(d);
    w(VIRTIO_PCI_QUEUE_SEL, 2, q);
    w(VIRTIO_PCI_QUEUE_PFN, 4, CLEAN_LEGACY_PFN[q]);
    if (pioAccess(r, io + VIRTIO_PCI_QUEUE_PFN, 4, false) !== CLEAN_LEGACY_PFN[q]) throw new Error(`clean setup: legacy queue ${q} refused (${r.dev.lastError})`);
  }
  r.mem.guest(() => drivers.forEach((d) => wipeRing(r.mem, d)));
  w(VIRTIO_PCI_STATUS, 1, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  r.runMain();
  const notify = (q: number) => pioAccess(r, io + VIRTIO_PCI_QUEUE_NOTIFY, 2, true, q);
  return { modern: false, features: features % 2 ** 32, hdrLen: vnetHeaderSize(features % 2 ** 32), rx: drivers[0], tx: drivers[1], ctrl: drivers[2] ?? null, notify };
}

function wipeRing(mem: GuestMemory, d: VringDriver): void {
  const end = d.used + 6 + 8 * d.size;
  mem.slice(d.desc, end - d.desc)?.fill(0);
}

/**
 * The "device works" check: one frame through TX to the TAP and one from the
 * TAP into an RX buffer, byte for byte. Throws with what went wrong.
 */
export function roundTrip(r: Rig, s: CleanSetup, seed: number): void {
  const frame = new Uint8Array(60 + (seed % 200));
  for (let i = 0; i < frame.length; i++) frame[i] = (i * 7 + seed) & 0xff;
  frame.set([0x02, 0, 0, 0, 0, 0x99], 0);
  frame.set(MAC, 6);
  const hdr = s.hdrLen;
  const txBuf = RAM_B + 0x1000;
  r.mem.guest(() => {
    r.mem.write(txBuf, new Uint8Array(hdr));
    r.mem.write(txBuf + 0x100, frame);
  });
  const framesBefore = r.backend.frames.length;
  r.mem.guest(() => {
    s.tx.addChain([{ gpa: txBuf, len: hdr }, { gpa: txBuf + 0x100, len: frame.length }]);
    s.tx.kick();
  });
  s.notify(1);
  r.runMain();
  r.backend.drain();
  const got = r.backend.frames.slice(framesBefore);
  if (got.length !== 1) throw new Error(`round trip: ${got.length} frames at the TAP after one TX chain (${r.net.stats.deviceErrors.join('; ')})`);
  const want = new Uint8Array(hdr + frame.length);
  want.set(frame, hdr);
  if (!equal(got[0], want)) throw new Error('round trip: the TAP got other bytes than the guest sent');
  if (r.mem.guest(() => s.tx.usedIdx()) !== s.tx.availIdx) throw new Error('round trip: TX chain not returned');

  const rxBuf = RAM_B + 0x10000;
  r.mem.guest(() => {
    s.rx.addChain([{ gpa: rxBuf, len: 2048, write: true }]);
    s.rx.kick();
  });
  s.notify(0);
  r.runMain();
  const inbound = new Uint8Array(hdr + frame.length);
  inbound.set(frame, hdr);
  if (r.backend.send(inbound) !== inbound.length) throw new Error('round trip: host send failed');
  r.runMain(true);
  const used = r.mem.guest(() => s.rx.takeUsed());
  if (used.length !== 1 || used[0].len !== inbound.length) throw new Error(`round trip: RX used ${JSON.stringify(used)} (${r.net.stats.deviceErrors.join('; ')})`);
  const landed = r.mem.guest(() => r.mem.read(rxBuf, inbound.length))!;
  if (hdr >= 12) {
    if (landed[10] !== 1 || landed[11] !== 0) throw new Error('round trip: num_buffers is not 1');
    landed[10] = inbound[10];
    landed[11] = inbound[11];
  }
  if (!equal(landed, inbound)) throw new Error('round trip: the guest got other bytes than the host sent');
}

export function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}
