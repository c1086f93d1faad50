// The virtio-pci transport, transitional (virtio 1.2 §4.1), on the vCPU thread.
//
// One PCI function offers both interfaces:
// - legacy (virtio 0.9.5): an I/O BAR0 with the fixed register block below,
//   VERSION_1 never offered there, ring placed by a page frame number;
// - modern: vendor-specific capabilities (COMMON_CFG, NOTIFY, ISR, DEVICE_CFG,
//   PCI_CFG) pointing into a 64-bit memory BAR4, as QEMU lays it out;
// plus MSI-X with its table and PBA in memory BAR1.
//
// Everything the data path needs (status, features, queue configuration,
// vectors, ISR, MSI-X) lives in the shared `TransportState`; the device's
// vCPU-side callbacks (`VirtioDeviceVcpuSide`) get queue notifications, config
// accesses, status changes and resets. Guest register accesses never throw:
// wrong widths and offsets are ignored (reads give 0) and counted.
//
// Register files are tables: one row per register, with its width and
// accessors, looked up by offset (v86's approach).
import type { GuestMemory } from '../../memory/guest-memory.js';
import { PciDevice, PCI_CAP_ID_VNDR, type BarHandler } from '../pci/config-space.js';
import { Msix, MSIX_NO_VECTOR } from '../pci/msix.js';
import { legacyVringLayout, VIRTIO_PCI_QUEUE_ADDR_SHIFT } from './virtqueue.js';
import { GuestErrorLog } from './guest-error-log.js';
import { FeatureSet } from './feature-set.js';
import type { TransportState } from './transport-state.js';
import { InterruptSender, type IrqSink } from './interrupt-sender.js';
import { VcpuResetHandshake } from './reset-handshake.js';
import { VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1, type VirtioDeviceVcpuSide } from './virtio-device.js';

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
/** Transitional PCI device ids per virtio device id (virtio 1.2 §4.1.2.1). */
export const VIRTIO_TRANSITIONAL_DEVICE_IDS: Readonly<Record<number, number>> = { 1: 0x1000, 2: 0x1001, 5: 0x1002, 3: 0x1003, 8: 0x1004, 4: 0x1005, 9: 0x1009 };
const PCI_CLASS_BY_DEVICE: Readonly<Record<number, number>> = { 1: 0x020000, 2: 0x010000 };
const PCI_CLASS_OTHER = 0xff0000;

// Legacy register block (BAR0).
export const VIRTIO_PCI_HOST_FEATURES = 0;
export const VIRTIO_PCI_GUEST_FEATURES = 4;
export const VIRTIO_PCI_QUEUE_PFN = 8;
export const VIRTIO_PCI_QUEUE_NUM = 12;
export const VIRTIO_PCI_QUEUE_SEL = 14;
export const VIRTIO_PCI_QUEUE_NOTIFY = 16;
export const VIRTIO_PCI_STATUS = 18;
export const VIRTIO_PCI_ISR = 19;
export const VIRTIO_MSI_CONFIG_VECTOR = 20;
export const VIRTIO_MSI_QUEUE_VECTOR = 22;
/** Device config offset in BAR0: 24 with MSI-X enabled, 20 without. */
export function virtioPciConfigOff(msixEnabled: boolean): number {
  return msixEnabled ? 24 : 20;
}

// Modern capability types (struct virtio_pci_cap.cfg_type).
export const VIRTIO_PCI_CAP_COMMON_CFG = 1;
export const VIRTIO_PCI_CAP_NOTIFY_CFG = 2;
export const VIRTIO_PCI_CAP_ISR_CFG = 3;
export const VIRTIO_PCI_CAP_DEVICE_CFG = 4;
export const VIRTIO_PCI_CAP_PCI_CFG = 5;

// Modern common configuration (struct virtio_pci_common_cfg).
export const VIRTIO_PCI_COMMON_DFSELECT = 0;
export const VIRTIO_PCI_COMMON_DF = 4;
export const VIRTIO_PCI_COMMON_GFSELECT = 8;
export const VIRTIO_PCI_COMMON_GF = 12;
export const VIRTIO_PCI_COMMON_MSIX = 16;
export const VIRTIO_PCI_COMMON_NUMQ = 18;
export const VIRTIO_PCI_COMMON_STATUS = 20;
export const VIRTIO_PCI_COMMON_CFGGENERATION = 21;
export const VIRTIO_PCI_COMMON_Q_SELECT = 22;
export const VIRTIO_PCI_COMMON_Q_SIZE = 24;
export const VIRTIO_PCI_COMMON_Q_MSIX = 26;
export const VIRTIO_PCI_COMMON_Q_ENABLE = 28;
export const VIRTIO_PCI_COMMON_Q_NOFF = 30;
export const VIRTIO_PCI_COMMON_Q_DESCLO = 32;
export const VIRTIO_PCI_COMMON_Q_DESCHI = 36;
export const VIRTIO_PCI_COMMON_Q_AVAILLO = 40;
export const VIRTIO_PCI_COMMON_Q_AVAILHI = 44;
export const VIRTIO_PCI_COMMON_Q_USEDLO = 48;
export const VIRTIO_PCI_COMMON_Q_USEDHI = 52;
const COMMON_CFG_SIZE = 56;

// BAR layout (QEMU's): MSI-X in BAR1, modern regions in BAR4, 4 KiB each.
export const LEGACY_BAR = 0;
export const MSIX_BAR = 1;
export const MODERN_BAR = 4;
export const MSIX_BAR_SIZE = 0x1000;
export const MSIX_TABLE_OFFSET = 0;
export const MSIX_PBA_OFFSET = 0x800;
export const MODERN_COMMON_OFFSET = 0x0000;
export const MODERN_ISR_OFFSET = 0x1000;
export const MODERN_DEVICE_OFFSET = 0x2000;
export const MODERN_NOTIFY_OFFSET = 0x3000;
export const MODERN_REGION_SIZE = 0x1000;
export const MODERN_BAR_SIZE = 0x4000;
/** queue_notify_off = queue index; notify address = region + index * multiplier. */
export const VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER = 4;

const VIRTIO_PCI_CAP_LEN = 16;
const VIRTIO_PCI_NOTIFY_CAP_LEN = 20;
const VIRTIO_PCI_CFG_CAP_LEN = 20;

/** A register of a register file: width, and what reading/writing it does. */
interface Register {
  readonly name: string;
  readonly off: number;
  readonly size: 1 | 2 | 4;
  read(t: VirtioPciDevice): number;
  write?(t: VirtioPciDevice, v: number): void;
}

/** Offset → register lookup for a small register file. */
function registerFile(regs: Register[], span: number): { regs: Register[]; byOff: Int8Array } {
  const byOff = new Int8Array(span).fill(-1);
  regs.forEach((r, i) => { byOff[r.off] = i; });
  return { regs, byOff };
}

const COMMON = registerFile([
  { name: 'device_feature_select', off: VIRTIO_PCI_COMMON_DFSELECT, size: 4, read: (t) => t.dfSelect, write: (t, v) => { t.dfSelect = v >>> 0; } },
  { name: 'device_feature', off: VIRTIO_PCI_COMMON_DF, size: 4, read: (t) => t.offeredWord(t.dfSelect, true) },
  { name: 'driver_feature_select', off: VIRTIO_PCI_COMMON_GFSELECT, size: 4, read: (t) => t.gfSelect, write: (t, v) => { t.gfSelect = v >>> 0; } },
  { name: 'driver_feature', off: VIRTIO_PCI_COMMON_GF, size: 4, read: (t) => t.state.driverFeaturesWord(t.gfSelect), write: (t, v) => t.writeDriverFeatures(t.gfSelect, v) },
  { name: 'config_msix_vector', off: VIRTIO_PCI_COMMON_MSIX, size: 2, read: (t) => t.state.configVector, write: (t, v) => { t.state.configVector = t.checkVector(v); } },
  { name: 'num_queues', off: VIRTIO_PCI_COMMON_NUMQ, size: 2, read: (t) => t.device.numQueues },
  { name: 'device_status', off: VIRTIO_PCI_COMMON_STATUS, size: 1, read: (t) => t.state.status, write: (t, v) => t.writeStatus(v, false) },
  { name: 'config_generation', off: VIRTIO_PCI_COMMON_CFGGENERATION, size: 1, read: (t) => t.state.configGeneration },
  { name: 'queue_select', off: VIRTIO_PCI_COMMON_Q_SELECT, size: 2, read: (t) => t.queueSelect, write: (t, v) => { t.queueSelect = v; } },
  { name: 'queue_size', off: VIRTIO_PCI_COMMON_Q_SIZE, size: 2, read: (t) => t.selOk() ? t.state.queueSize(t.queueSelect) : 0, write: (t, v) => { if (t.selWritable()) t.state.setQueueSize(t.queueSelect, v); } },
  { name: 'queue_msix_vector', off: VIRTIO_PCI_COMMON_Q_MSIX, size: 2, read: (t) => t.selOk() ? t.state.queueVector(t.queueSelect) : MSIX_NO_VECTOR, write: (t, v) => { if (t.selOk()) t.state.setQueueVector(t.queueSelect, t.checkVector(v)); } },
  { name: 'queue_enable', off: VIRTIO_PCI_COMMON_Q_ENABLE, size: 2, read: (t) => t.selOk() && t.state.queueEnabled(t.queueSelect) ? 1 : 0, write: (t, v) => { if (v === 1 && t.selOk()) t.enableQueue(t.queueSelect); } },
  { name: 'queue_notify_off', off: VIRTIO_PCI_COMMON_Q_NOFF, size: 2, read: (t) => t.selOk() ? t.queueSelect : 0 },
  ...(['desc', 'driver', 'device'] as const).flatMap((part, which): Register[] => [0, 1].map((word) => ({
    name: `queue_${part}_${word ? 'hi' : 'lo'}`, off: VIRTIO_PCI_COMMON_Q_DESCLO + which * 8 + word * 4, size: 4 as const,
    read: (t: VirtioPciDevice) => t.selOk() ? t.state.queueAddrWord(t.queueSelect, which, word) : 0,
    write: (t: VirtioPciDevice, v: number) => { if (t.selWritable()) t.state.setQueueAddrWord(t.queueSelect, which, word, v); },
  }))),
], COMMON_CFG_SIZE);

const LEGACY = registerFile([
  { name: 'host_features', off: VIRTIO_PCI_HOST_FEATURES, size: 4, read: (t) => t.offeredWord(0, false) },
  { name: 'guest_features', off: VIRTIO_PCI_GUEST_FEATURES, size: 4, read: (t) => t.state.driverFeaturesWord(0), write: (t, v) => t.writeLegacyFeatures(v) },
  { name: 'queue_pfn', off: VIRTIO_PCI_QUEUE_PFN, size: 4, read: (t) => t.legacyPfn(), write: (t, v) => t.writeLegacyPfn(v) },
  { name: 'queue_num', off: VIRTIO_PCI_QUEUE_NUM, size: 2, read: (t) => t.selOk() ? t.state.queueSize(t.queueSelect) : 0 },
  { name: 'queue_sel', off: VIRTIO_PCI_QUEUE_SEL, size: 2, read: (t) => t.queueSelect, write: (t, v) => { t.queueSelect = v; } },
  { name: 'queue_notify', off: VIRTIO_PCI_QUEUE_NOTIFY, size: 2, read: () => 0, write: (t, v) => t.notify(v) },
  { name: 'status', off: VIRTIO_PCI_STATUS, size: 1, read: (t) => t.state.status, write: (t, v) => t.writeStatus(v, true) },
  { name: 'isr', off: VIRTIO_PCI_ISR, size: 1, read: (t) => t.irq.readAndClearIsr() },
  // The two MSI-X registers exist only while MSI-X is enabled (see legacyRead).
  { name: 'config_vector', off: VIRTIO_MSI_CONFIG_VECTOR, size: 2, read: (t) => t.state.configVector, write: (t, v) => { t.state.configVector = t.checkVector(v); } },
  { name: 'queue_vector', off: VIRTIO_MSI_QUEUE_VECTOR, size: 2, read: (t) => t.selOk() ? t.state.queueVector(t.queueSelect) : MSIX_NO_VECTOR, write: (t, v) => { if (t.selOk()) t.state.setQueueVector(t.queueSelect, t.checkVector(v)); } },
], 24);

export interface VirtioPciOptions {
  device: VirtioDeviceVcpuSide;
  state: TransportState;
  /** Guest RAM, to refuse rings outside it. */
  mem: GuestMemory;
  /** This thread's interrupt controller handle (a VmHandle). */
  irq: IrqSink;
  /** Wakes the main thread to reset its queues (a DoorbellRinger's ring). */
  ringReset: () => void;
  resetTimeoutMs?: number;
  /** Called after the guest changed an MSI-X entry's address or data (to refresh irqfd routes). */
  onMsixMessageChanged?: () => void;
  /** Where refused guest values are reported (rate-limited); default: stderr, named after the device. */
  log?: GuestErrorLog;
}

/** Counters a test or --stats can read. */
export interface VirtioPciStats {
  badAccesses: number;
  refusedQueues: number;
  refusedFeatures: number;
  resets: number;
  resetTimeouts: number;
}

export class VirtioPciDevice extends PciDevice {
  readonly device: VirtioDeviceVcpuSide;
  readonly state: TransportState;
  readonly irq: InterruptSender;
  readonly msix: Msix | null;
  private readonly mem: GuestMemory;
  private readonly handshake: VcpuResetHandshake;
  private readonly pciCfgCap: number;
  /** Offered features, modern interface (VERSION_1 added): two words. */
  private readonly offeredLo: number;
  private readonly offeredHi: number;
  /** The driver's set as handed to validateFeatures: reused, so a status write allocates nothing. */
  private readonly driverScratch = new FeatureSet();

  // Transport registers private to the vCPU side.
  dfSelect = 0;
  gfSelect = 0;
  queueSelect = 0;

  readonly stats: VirtioPciStats = { badAccesses: 0, refusedQueues: 0, refusedFeatures: 0, resets: 0, resetTimeouts: 0 };
  /** Why the last queue or FEATURES_OK was refused (diagnostics; set on error paths only). */
  lastError = '';
  /** Refused guest values, one rate-limited line each. */
  readonly log: GuestErrorLog;

  constructor(opts: VirtioPciOptions) {
    const d = opts.device;
    const pciDeviceId = VIRTIO_TRANSITIONAL_DEVICE_IDS[d.deviceId];
    if (pciDeviceId === undefined) throw new RangeError(`virtio device id ${d.deviceId} has no transitional PCI id`);
    super(d.name, {
      vendorId: VIRTIO_PCI_VENDOR_ID, deviceId: pciDeviceId, revision: 0,
      classCode: PCI_CLASS_BY_DEVICE[d.deviceId] ?? PCI_CLASS_OTHER,
      subsystemVendorId: VIRTIO_PCI_VENDOR_ID, subsystemId: d.deviceId, interruptPin: 1,
    });
    if (opts.state.numQueues !== d.numQueues) throw new RangeError(`shared state has ${opts.state.numQueues} queues, the device ${d.numQueues}`);
    this.device = d;
    this.state = opts.state;
    this.mem = opts.mem;
    this.log = opts.log ?? new GuestErrorLog(d.name);
    this.irq = new InterruptSender(opts.state, opts.irq);
    this.handshake = new VcpuResetHandshake(opts.state, opts.ringReset, opts.resetTimeoutMs);
    const offered = FeatureSet.from(d.deviceFeatures).add(VIRTIO_F_VERSION_1);
    this.offeredLo = offered.lo;
    this.offeredHi = offered.hi;

    // BARs.
    const legacySize = pow2AtLeast(24 + d.configSize, 32);
    this.defineBar(LEGACY_BAR, { kind: 'io', size: legacySize, name: 'legacy', handler: { read: (o, s) => this.legacyRead(o, s), write: (o, s, v) => this.legacyWrite(o, s, v) } });
    const vectors = opts.state.msixVectors;
    if (vectors > 0) {
      this.msix = new Msix(this.config, opts.state.msix, opts.irq, MSIX_BAR, MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET, opts.onMsixMessageChanged);
      if (this.msix.tableBytes > MSIX_PBA_OFFSET) throw new RangeError(`${vectors} MSI-X vectors do not fit before the PBA`);
      const m = this.msix;
      const msixBar: BarHandler = {
        read: (o, s) => {
          const bad = m.badAccesses;
          const v = o >= MSIX_PBA_OFFSET ? m.pbaRead(o - MSIX_PBA_OFFSET, s) : m.tableRead(o, s);
          if (m.badAccesses !== bad) this.badAccess(o >= MSIX_PBA_OFFSET ? 'MSI-X PBA' : 'MSI-X table', o, s, false);
          return v;
        },
        write: (o, s, v) => {
          const bad = m.badAccesses;
          if (o >= MSIX_PBA_OFFSET) m.pbaWrite(o - MSIX_PBA_OFFSET, s, v);
          else m.tableWrite(o, s, v);
          if (m.badAccesses !== bad) this.badAccess(o >= MSIX_PBA_OFFSET ? 'MSI-X PBA' : 'MSI-X table', o, s, true);
        },
      };
      this.defineBar(MSIX_BAR, { kind: 'mem32', size: MSIX_BAR_SIZE, name: 'msix', handler: msixBar });
    } else {
      this.msix = null;
    }
    this.defineBar(MODERN_BAR, { kind: 'mem64', size: MODERN_BAR_SIZE, prefetchable: true, name: 'modern', handler: { read: (o, s) => this.modernRead(o, s), write: (o, s, v) => this.modernWrite(o, s, v) } });

    // Modern capabilities.
    this.addVirtioCap(VIRTIO_PCI_CAP_COMMON_CFG, MODERN_BAR, MODERN_COMMON_OFFSET, MODERN_REGION_SIZE, VIRTIO_PCI_CAP_LEN);
    this.addVirtioCap(VIRTIO_PCI_CAP_ISR_CFG, MODERN_BAR, MODERN_ISR_OFFSET, MODERN_REGION_SIZE, VIRTIO_PCI_CAP_LEN);
    this.addVirtioCap(VIRTIO_PCI_CAP_DEVICE_CFG, MODERN_BAR, MODERN_DEVICE_OFFSET, MODERN_REGION_SIZE, VIRTIO_PCI_CAP_LEN);
    const n = this.addVirtioCap(VIRTIO_PCI_CAP_NOTIFY_CFG, MODERN_BAR, MODERN_NOTIFY_OFFSET, MODERN_REGION_SIZE, VIRTIO_PCI_NOTIFY_CAP_LEN);
    this.config.setDword(n + 16, VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER);
    // PCI_CFG: bar, offset and length are the driver's to write; data is the window.
    this.pciCfgCap = this.addVirtioCap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, VIRTIO_PCI_CFG_CAP_LEN);
    this.config.setWriteMask(this.pciCfgCap + 4, 0xff);
    this.config.setWriteMaskDword(this.pciCfgCap + 8, 0xffffffff);
    this.config.setWriteMaskDword(this.pciCfgCap + 12, 0xffffffff);
  }

  private addVirtioCap(type: number, bar: number, offset: number, length: number, capLen: number): number {
    const c = this.config.addCapability(PCI_CAP_ID_VNDR, capLen);
    this.config.setByte(c + 2, capLen);
    this.config.setByte(c + 3, type);
    this.config.setByte(c + 4, bar);
    this.config.setDword(c + 8, offset);
    this.config.setDword(c + 12, length);
    return c;
  }

  /**
   * Where a queue's notify write lands (for binding ioeventfds): the legacy
   * port and the modern MMIO address, or -1 where that BAR decodes nothing.
   */
  notifyAddresses(queue: number): { legacyPort: number; modernGpa: number } {
    const legacy = this.barMapped(LEGACY_BAR);
    const modern = this.barMapped(MODERN_BAR);
    return {
      legacyPort: legacy < 0 ? -1 : legacy + VIRTIO_PCI_QUEUE_NOTIFY,
      modernGpa: modern < 0 ? -1 : modern + MODERN_NOTIFY_OFFSET + queue * VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER,
    };
  }

  private notifyBinder: ((dev: VirtioPciDevice) => void) | null = null;

  /** `bind` runs now and whenever the BARs move, to keep kernel-side notify bindings where the guest writes. */
  followNotifyAddresses(bind: (dev: VirtioPciDevice) => void): void {
    this.notifyBinder = bind;
    bind(this);
  }

  protected override mappingsChanged(): void {
    this.notifyBinder?.(this);
  }

  protected override mapRefused(addr: number, size: number): void {
    if (this.log.admit()) this.log.write(`refused a BAR at 0x${addr.toString(16)} (${size} bytes): the range is taken; the BAR decodes nothing`);
  }

  // ---- PCI config space: MSI-X control and the PCI_CFG window ----
  override configRead(offset: number, size: number): number {
    const data = this.pciCfgCap + 16;
    if (offset < data + 4 && offset + size > data) return this.pciCfgAccess(offset, size, false, 0);
    return super.configRead(offset, size);
  }

  override configWrite(offset: number, size: number, value: number): void {
    const data = this.pciCfgCap + 16;
    if (offset < data + 4 && offset + size > data) {
      this.pciCfgAccess(offset, size, true, value);
      return;
    }
    super.configWrite(offset, size, value);
    const m = this.msix;
    if (m && m.touches(offset, size)) {
      m.controlWritten();
      if (m.enabled) this.irq.lowerIntx();
    }
  }

  /** virtio 1.2 §4.1.4.9: an access to pci_cfg_data reaches BAR cap.bar at cap.offset, cap.length bytes. */
  private pciCfgAccess(offset: number, size: number, write: boolean, value: number): number {
    const c = this.pciCfgCap;
    const bar = this.config.getByte(c + 4);
    const off = this.config.getDword(c + 8);
    const len = this.config.getDword(c + 12);
    const h = bar < 6 ? this.barHandler(bar) : null;
    const spec = bar < 6 ? this.barSpec(bar) : null;
    if (!h || !spec || (len !== 1 && len !== 2 && len !== 4) || off + len > spec.size || offset !== c + 16 || size < len) {
      this.badAccess('PCI_CFG window', offset, size, write);
      return 0;
    }
    if (write) {
      h.write(off, len, len === 4 ? value >>> 0 : value & (len === 2 ? 0xffff : 0xff));
      return 0;
    }
    return h.read(off, len);
  }

  // ---- register semantics shared by both interfaces (used by the tables) ----
  /** @internal */ selOk(): boolean { return this.queueSelect < this.device.numQueues; }
  /** @internal Queue fields may change only while the queue is disabled. */
  selWritable(): boolean { return this.queueSelect < this.device.numQueues && !this.state.queueEnabled(this.queueSelect); }

  /** @internal Offered feature word `sel`: modern includes VERSION_1, legacy only the low 32 bits without it. */
  offeredWord(sel: number, modern: boolean): number {
    if (sel === 0) return this.offeredLo;
    if (sel === 1 && modern) return this.offeredHi;
    return 0;
  }

  /** @internal A vector register write: beyond the table → NO_VECTOR (the driver reads back and sees the refusal). */
  checkVector(v: number): number {
    return v < this.state.msixVectors ? v : MSIX_NO_VECTOR;
  }

  /** Features are fixed from FEATURES_OK (modern) or DRIVER_OK (either interface) until a reset: both threads then read one set. */
  private featuresFrozen(): boolean {
    return (this.state.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)) !== 0;
  }

  /** @internal Modern driver_feature: word `sel`, masked to what was offered there (virtio 1.2 §2.2.1: a driver accepts only offered bits). */
  writeDriverFeatures(sel: number, v: number): void {
    if (this.featuresFrozen()) return;
    this.state.setDriverFeaturesWord(sel, v & this.offeredWord(sel, true));
  }

  /** @internal Legacy guest_features: only the low word, masked to what was offered there. */
  writeLegacyFeatures(v: number): void {
    if (this.featuresFrozen()) return;
    this.state.setDriverFeaturesWord(0, v & this.offeredLo);
    this.state.setDriverFeaturesWord(1, 0);
    this.state.modern = false;
  }

  /** @internal */
  writeStatus(v: number, legacy: boolean): void {
    v &= 0xff;
    if (v === 0) {
      this.reset();
      return;
    }
    const s = this.state;
    const old = s.status;
    if (!legacy && v & VIRTIO_CONFIG_S_FEATURES_OK && !(old & VIRTIO_CONFIG_S_FEATURES_OK) && !this.featuresAcceptable()) {
      v &= ~VIRTIO_CONFIG_S_FEATURES_OK;
      this.refuseFeatures('FEATURES_OK');
    }
    if (!legacy && v & VIRTIO_CONFIG_S_FEATURES_OK) s.modern = s.hasDriverFeature(VIRTIO_F_VERSION_1);
    // Every path to DRIVER_OK checks the features, whichever interface wrote them.
    if (v & VIRTIO_CONFIG_S_DRIVER_OK && !(old & VIRTIO_CONFIG_S_DRIVER_OK) && !this.driverOkAcceptable(legacy, v)) {
      v &= ~VIRTIO_CONFIG_S_DRIVER_OK;
      this.refuseFeatures('DRIVER_OK');
    }
    // NEEDS_RESET is the device's to set (the main thread may set it meanwhile) and only a reset clears it.
    let cur = old;
    while (!s.casStatus(cur, v | (cur & VIRTIO_CONFIG_S_NEEDS_RESET))) cur = s.status;
    v |= cur & VIRTIO_CONFIG_S_NEEDS_RESET;
    if (v !== old) this.device.onStatusChange(old, v);
  }

  private refuseFeatures(what: string): void {
    this.stats.refusedFeatures++;
    if (this.log.admit()) this.log.write(`refused ${what}: ${this.lastError}`);
  }

  /**
   * DRIVER_OK check. Modern: FEATURES_OK must have been accepted (that is
   * where the set was checked). Legacy (virtio 0.9.5 has no FEATURES_OK, so
   * this is the only check): the set must be one the legacy interface offered
   * (low word, no VERSION_1; a driver that wrote the modern feature registers
   * and then the legacy status register fails here) and one the device accepts.
   */
  private driverOkAcceptable(legacy: boolean, status: number): boolean {
    const s = this.state;
    if (!legacy) {
      if (status & VIRTIO_CONFIG_S_FEATURES_OK) return true;
      this.lastError = 'DRIVER_OK on the modern interface without FEATURES_OK';
      return false;
    }
    if (s.driverFeaturesWord(1) !== 0 || (s.driverFeaturesWord(0) & ~this.offeredLo) !== 0) {
      this.lastError = 'features the legacy interface did not offer (modern feature writes, then a legacy status write)';
      return false;
    }
    if (!this.device.validateFeatures(s.readDriverFeatures(this.driverScratch))) {
      this.lastError = 'the device refused the feature set';
      return false;
    }
    return true;
  }

  /** FEATURES_OK check: a subset of the offer, with VERSION_1, that the device accepts. */
  private featuresAcceptable(): boolean {
    const s = this.state;
    const lo = s.driverFeaturesWord(0);
    const hi = s.driverFeaturesWord(1);
    if ((lo & ~this.offeredLo) !== 0 || (hi & ~this.offeredHi) !== 0) {
      this.lastError = 'driver accepted features the device did not offer';
      return false;
    }
    if (!s.hasDriverFeature(VIRTIO_F_VERSION_1)) {
      this.lastError = 'modern interface without VERSION_1';
      return false;
    }
    if (!this.device.validateFeatures(s.readDriverFeatures(this.driverScratch))) {
      this.lastError = 'the device refused the feature set';
      return false;
    }
    return true;
  }

  /** Device reset (status 0): device state, shared state, then the main thread drops its queues. */
  reset(): void {
    this.stats.resets++;
    this.device.onReset();
    this.state.resetDeviceState();
    if (!this.handshake.resetAndWait()) this.stats.resetTimeouts++;
    // Anything the data path raised before it acknowledged is stale.
    this.irq.readAndClearIsr();
    this.state.msix.irqLock.lock();
    this.state.msix.clearPendingLocked();
    this.state.msix.irqLock.unlock();
    this.dfSelect = this.gfSelect = this.queueSelect = 0;
  }

  /** Validates the selected queue's configuration and enables it, or refuses (stays disabled). */
  enableQueue(i: number): boolean {
    const s = this.state;
    if (s.queueEnabled(i)) return true;
    const why = this.queueProblem(s.queueSize(i), s.queueMaxSize(i), s.queueDesc(i), s.queueAvail(i), s.queueUsed(i));
    if (why !== null) {
      this.lastError = `queue ${i}: ${why}`;
      this.stats.refusedQueues++;
      if (this.log.admit()) this.log.write(`refused to enable ${this.lastError}`);
      return false;
    }
    s.setQueueEnabled(i, true);
    this.device.onQueueEnabled?.(i, true);
    return true;
  }

  private queueProblem(size: number, max: number, desc: number, avail: number, used: number): string | null {
    if (size === 0 || size > max || (size & (size - 1)) !== 0) return `size ${size} is not a power of two within 1..${max}`;
    if (desc % 16 !== 0 || avail % 2 !== 0 || used % 4 !== 0) return 'ring address misaligned';
    if (!this.mem.contains(desc, 16 * size) || !this.mem.contains(avail, 6 + 2 * size) || !this.mem.contains(used, 6 + 8 * size)) return 'ring outside guest RAM';
    return null;
  }

  /** @internal Legacy QUEUE_PFN read. */
  legacyPfn(): number {
    if (!this.selOk() || !this.state.queueEnabled(this.queueSelect)) return 0;
    return Math.floor(this.state.queueDesc(this.queueSelect) / (1 << VIRTIO_PCI_QUEUE_ADDR_SHIFT));
  }

  /** @internal Legacy QUEUE_PFN write: 0 disables the queue, else places the ring (size fixed at its maximum). */
  writeLegacyPfn(pfn: number): void {
    if (!this.selOk()) return;
    const i = this.queueSelect;
    const s = this.state;
    pfn >>>= 0;
    if (pfn === 0) {
      if (s.queueEnabled(i)) {
        s.setQueueEnabled(i, false);
        this.device.onQueueEnabled?.(i, false);
      }
      return;
    }
    if (s.queueEnabled(i)) return;
    s.setQueueSize(i, s.queueMaxSize(i));
    const l = legacyVringLayout(pfn, s.queueSize(i));
    s.setQueueAddrs(i, l.desc, l.avail, l.used);
    if (!this.enableQueue(i)) s.setQueueAddrs(i, 0, 0, 0);
  }

  /** @internal A queue notification from either interface. */
  notify(queue: number): void {
    if (queue >= this.device.numQueues) {
      this.stats.badAccesses++;
      if (this.log.admit()) this.log.write(`ignored a notify for queue ${queue}: the device has ${this.device.numQueues}`);
      return;
    }
    this.device.onQueueNotify(queue);
  }

  /** Counts and reports (rate-limited) a register access the transport ignored; builds no string when suppressed. */
  private badAccess(region: string, off: number, size: number, write: boolean): void {
    this.stats.badAccesses++;
    if (this.log.admit()) this.log.write(`ignored a ${size}-byte ${write ? 'write to' : 'read of'} ${region} offset 0x${off.toString(16)}`);
  }

  // ---- BAR0: legacy ----
  legacyRead(off: number, size: number): number {
    const cfg = virtioPciConfigOff(this.msix !== null && this.msix.enabled);
    if (off >= cfg) return this.deviceConfigRead(off - cfg, size);
    const i = LEGACY.byOff[off];
    if (i < 0) { this.badAccess('legacy register', off, size, false); return 0; }
    const r = LEGACY.regs[i];
    if (r.size !== size) { this.badAccess('legacy register', off, size, false); return 0; }
    return r.read(this);
  }

  legacyWrite(off: number, size: number, value: number): void {
    const cfg = virtioPciConfigOff(this.msix !== null && this.msix.enabled);
    if (off >= cfg) { this.deviceConfigWrite(off - cfg, size, value); return; }
    const i = LEGACY.byOff[off];
    if (i < 0) { this.badAccess('legacy register', off, size, true); return; }
    const r = LEGACY.regs[i];
    if (r.size !== size || !r.write) { this.badAccess('legacy register', off, size, true); return; }
    r.write(this, value);
  }

  // ---- BAR4: modern ----
  modernRead(off: number, size: number): number {
    if (off < MODERN_ISR_OFFSET) {
      const i = off < COMMON_CFG_SIZE ? COMMON.byOff[off] : -1;
      if (i < 0) { this.badAccess('common config', off, size, false); return 0; }
      const r = COMMON.regs[i];
      if (r.size !== size) { this.badAccess('common config', off, size, false); return 0; }
      return r.read(this);
    }
    if (off < MODERN_DEVICE_OFFSET) {
      if (off !== MODERN_ISR_OFFSET) { this.badAccess('ISR', off, size, false); return 0; }
      return this.irq.readAndClearIsr();
    }
    if (off < MODERN_NOTIFY_OFFSET) return this.deviceConfigRead(off - MODERN_DEVICE_OFFSET, size);
    return 0;
  }

  modernWrite(off: number, size: number, value: number): void {
    if (off < MODERN_ISR_OFFSET) {
      const i = off < COMMON_CFG_SIZE ? COMMON.byOff[off] : -1;
      if (i < 0) { this.badAccess('common config', off, size, true); return; }
      const r = COMMON.regs[i];
      if (r.size !== size || !r.write) { this.badAccess('common config', off, size, true); return; }
      r.write(this, value);
      return;
    }
    if (off < MODERN_DEVICE_OFFSET) { this.badAccess('ISR', off, size, true); return; }
    if (off < MODERN_NOTIFY_OFFSET) { this.deviceConfigWrite(off - MODERN_DEVICE_OFFSET, size, value); return; }
    const n = off - MODERN_NOTIFY_OFFSET;
    if (n % VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER !== 0) { this.badAccess('notify region', off, size, true); return; }
    this.notify(n / VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER);
  }

  // ---- device-specific configuration ----
  private deviceConfigRead(off: number, size: number): number {
    if ((size !== 1 && size !== 2 && size !== 4) || off + size > this.device.configSize) { this.badAccess('device config', off, size, false); return 0; }
    return this.device.readConfig(off, size);
  }

  private deviceConfigWrite(off: number, size: number, value: number): void {
    if ((size !== 1 && size !== 2 && size !== 4) || off + size > this.device.configSize) { this.badAccess('device config', off, size, true); return; }
    this.device.writeConfig(off, size, value);
  }
}

function pow2AtLeast(n: number, min: number): number {
  let p = min;
  while (p < n) p *= 2;
  return p;
}
