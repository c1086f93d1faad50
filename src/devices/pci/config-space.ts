// PCI configuration space (PCI Local Bus 3.0 ch. 6) and BARs for one function.
//
// `PciConfigSpace` is the 256-byte type-0 header plus capabilities, with a
// write mask and a write-1-to-clear mask per byte (QEMU's wmask/w1cmask
// approach): a guest write changes only writable bits, so the BAR sizing
// protocol falls out of the masks — writing all-ones to a BAR reads back
// ~(size-1) plus its read-only flag bits.
//
// `PciDevice` adds BARs: each BAR's handler is mapped on the PIO or MMIO bus
// at the address the BAR holds, while the command register enables that kind
// of decode; writes to the command register or a BAR remap.
import type { MmioBus, MmioDevice, PioBus, PioDevice } from '../../bus/io-bus.js';

// Header offsets.
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CLASS_DEVICE = 0x0a;
export const PCI_CACHE_LINE_SIZE = 0x0c;
export const PCI_LATENCY_TIMER = 0x0d;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_ROM_ADDRESS = 0x30;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;
export const PCI_CONFIG_SPACE_SIZE = 256;
/** First byte after the type-0 header: capabilities go from here. */
export const PCI_STD_HEADER_SIZEOF = 0x40;

// Command register bits.
export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_PARITY = 0x40;
export const PCI_COMMAND_SERR = 0x100;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
// Status register bits.
export const PCI_STATUS_INTERRUPT = 0x08;
export const PCI_STATUS_CAP_LIST = 0x10;
/** Error bits software clears by writing 1 (parity, aborts, SERR). */
export const PCI_STATUS_W1C = 0xf900;
// BAR flag bits.
export const PCI_BASE_ADDRESS_SPACE_IO = 0x1;
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8;
export const PCI_HEADER_TYPE_NORMAL = 0;

export const PCI_CAP_ID_VNDR = 0x09;

export interface PciIds {
  vendorId: number;
  deviceId: number;
  /** class << 16 | subclass << 8 | prog-if */
  classCode: number;
  revision?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 1 = INTA#, 0 = no interrupt pin. */
  interruptPin?: number;
}

export class PciConfigSpace {
  readonly bytes = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  /** Bits the guest may write, per byte. */
  readonly wmask = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  /** Bits the guest clears by writing 1, per byte. */
  readonly w1cmask = new Uint8Array(PCI_CONFIG_SPACE_SIZE);
  private readonly dv = new DataView(this.bytes.buffer);
  /** Next free offset for a capability, and the last one (for linking). */
  private capNext = PCI_STD_HEADER_SIZEOF;
  private lastCap = 0;

  constructor(ids: PciIds) {
    this.setWord(PCI_VENDOR_ID, ids.vendorId);
    this.setWord(PCI_DEVICE_ID, ids.deviceId);
    this.setByte(PCI_REVISION_ID, ids.revision ?? 0);
    this.setByte(PCI_CLASS_PROG, ids.classCode & 0xff);
    this.setWord(PCI_CLASS_DEVICE, (ids.classCode >>> 8) & 0xffff);
    this.setByte(PCI_HEADER_TYPE, PCI_HEADER_TYPE_NORMAL);
    this.setWord(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystemVendorId ?? 0);
    this.setWord(PCI_SUBSYSTEM_ID, ids.subsystemId ?? 0);
    this.setByte(PCI_INTERRUPT_PIN, ids.interruptPin ?? 0);
    const cmd = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE;
    this.setWriteMask(PCI_COMMAND, cmd & 0xff);
    this.setWriteMask(PCI_COMMAND + 1, cmd >>> 8);
    this.w1cmask[PCI_STATUS] = PCI_STATUS_W1C & 0xff;
    this.w1cmask[PCI_STATUS + 1] = PCI_STATUS_W1C >>> 8;
    this.setWriteMask(PCI_CACHE_LINE_SIZE, 0xff);
    this.setWriteMask(PCI_LATENCY_TIMER, 0xff);
    this.setWriteMask(PCI_INTERRUPT_LINE, 0xff);
  }

  // Device-side accessors: ignore the masks.
  getByte(off: number): number { return this.bytes[off]; }
  getWord(off: number): number { return this.dv.getUint16(off, true); }
  getDword(off: number): number { return this.dv.getUint32(off, true); }
  setByte(off: number, v: number): void { this.bytes[off] = v; }
  setWord(off: number, v: number): void { this.dv.setUint16(off, v & 0xffff, true); }
  setDword(off: number, v: number): void { this.dv.setUint32(off, v >>> 0, true); }
  setWriteMask(off: number, mask: number): void { this.wmask[off] = mask; }
  setWriteMaskDword(off: number, mask: number): void {
    for (let i = 0; i < 4; i++) this.wmask[off + i] = (mask >>> (8 * i)) & 0xff;
  }

  /** Guest read of 1, 2 or 4 bytes at any offset; bytes past the end read as 0xff. */
  read(off: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const o = off + i;
      v = (v << 8) | (o < PCI_CONFIG_SPACE_SIZE ? this.bytes[o] : 0xff);
    }
    return v >>> 0;
  }

  /** Guest write through the masks. */
  write(off: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) {
      const o = off + i;
      if (o >= PCI_CONFIG_SPACE_SIZE) break;
      const b = (value >>> (8 * i)) & 0xff;
      const wm = this.wmask[o];
      const w1c = this.w1cmask[o];
      this.bytes[o] = ((this.bytes[o] & ~wm) | (b & wm)) & ~(b & w1c);
    }
  }

  /**
   * Appends a capability of `length` bytes (id and next pointer included) to
   * the list and returns its offset (dword aligned). The body is zero and
   * read-only until the caller sets masks.
   */
  addCapability(id: number, length: number): number {
    const off = (this.capNext + 3) & ~3;
    if (length < 2 || off + length > PCI_CONFIG_SPACE_SIZE) throw new RangeError(`no room for capability 0x${id.toString(16)} (${length} bytes)`);
    this.bytes[off] = id;
    this.bytes[off + 1] = 0;
    if (this.lastCap === 0) this.bytes[PCI_CAPABILITY_LIST] = off;
    else this.bytes[this.lastCap + 1] = off;
    this.lastCap = off;
    this.capNext = off + length;
    this.setWord(PCI_STATUS, this.getWord(PCI_STATUS) | PCI_STATUS_CAP_LIST);
    return off;
  }

  /** Offsets of the capabilities with `id`, walking the list as a driver does (bounded against loops). */
  findCapabilities(id: number): number[] {
    const out: number[] = [];
    if (!(this.getWord(PCI_STATUS) & PCI_STATUS_CAP_LIST)) return out;
    let p = this.bytes[PCI_CAPABILITY_LIST] & ~3;
    for (let n = 0; p !== 0 && n < 48; n++) {
      if (this.bytes[p] === id) out.push(p);
      p = this.bytes[p + 1] & ~3;
    }
    return out;
  }
}

/** What a BAR's registers do: offsets are from the BAR's start. */
export interface BarHandler {
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

export type BarKind = 'io' | 'mem32' | 'mem64';

export interface BarSpec {
  kind: BarKind;
  /** Power of two; at least 4 for I/O, 16 for memory. */
  size: number;
  prefetchable?: boolean;
  handler: BarHandler;
  name: string;
}

/** Puts a BAR on the PIO bus: ports arrive absolute, the handler sees offsets. */
class PioBarWindow implements PioDevice {
  base = 0;
  constructor(readonly name: string, private readonly h: BarHandler) {}
  pioRead(port: number, size: number): number { return this.h.read(port - this.base, size); }
  pioWrite(port: number, size: number, value: number): void { this.h.write(port - this.base, size, value); }
}

/** Puts a BAR on the MMIO bus (the bus passes offsets already). */
class MmioBarWindow implements MmioDevice {
  constructor(readonly name: string, private readonly h: BarHandler) {}
  mmioRead(offset: number, size: number): number { return this.h.read(offset, size); }
  mmioWrite(offset: number, size: number, value: number): void { this.h.write(offset, size, value); }
}

interface Bar {
  spec: BarSpec;
  window: PioBarWindow | MmioBarWindow;
  /** Where it is mapped now, -1 when not. */
  mapped: number;
}

/** Buses a PCI function's BARs are mapped on. */
export interface PciBuses {
  pio: PioBus;
  mmio: MmioBus;
}

const TWO32 = 0x100000000;

/**
 * One PCI function: its config space, BARs and their mapping. Devices extend
 * it (or compose it) and override `configRead`/`configWrite` for registers
 * with side effects, calling super.
 */
export class PciDevice {
  readonly config: PciConfigSpace;
  private readonly bars: Array<Bar | null> = [null, null, null, null, null, null];
  private buses: PciBuses | null = null;
  /** BAR mappings refused (overlap, outside the port space); for statistics. */
  mapFailures = 0;

  constructor(readonly name: string, ids: PciIds) {
    this.config = new PciConfigSpace(ids);
  }

  /** Declares BAR `index` (a 64-bit BAR takes index and index+1). Before the bus places it. */
  defineBar(index: number, spec: BarSpec): void {
    const size = spec.size;
    if (!Number.isInteger(size) || (size & (size - 1)) !== 0 || size < (spec.kind === 'io' ? 4 : 16) || size > (spec.kind === 'io' ? 256 : 0x80000000)) {
      throw new RangeError(`BAR${index} size ${size} is not a power of two in range`);
    }
    if (index < 0 || index > (spec.kind === 'mem64' ? 4 : 5) || this.bars[index] || (spec.kind === 'mem64' && this.bars[index + 1])) {
      throw new RangeError(`BAR${index} is taken or out of range`);
    }
    const window = spec.kind === 'io' ? new PioBarWindow(`${this.name} ${spec.name}`, spec.handler) : new MmioBarWindow(`${this.name} ${spec.name}`, spec.handler);
    this.bars[index] = { spec, window, mapped: -1 };
    const off = PCI_BASE_ADDRESS_0 + 4 * index;
    if (spec.kind === 'io') {
      this.config.setDword(off, PCI_BASE_ADDRESS_SPACE_IO);
      this.config.setWriteMaskDword(off, ~(size - 1) & 0xfffffffc);
    } else {
      const flags = (spec.kind === 'mem64' ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0) | (spec.prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0);
      this.config.setDword(off, flags);
      this.config.setWriteMaskDword(off, ~(size - 1) & 0xfffffff0);
      if (spec.kind === 'mem64') {
        this.config.setDword(off + 4, 0);
        this.config.setWriteMaskDword(off + 4, 0xffffffff);
      }
    }
  }

  /** BAR specs by index (the high half of a 64-bit BAR is null). */
  barSpec(index: number): BarSpec | null {
    return this.bars[index]?.spec ?? null;
  }

  /** The address BAR `index` holds now (without flag bits). */
  barAddress(index: number): number {
    const b = this.bars[index];
    if (!b) return 0;
    const off = PCI_BASE_ADDRESS_0 + 4 * index;
    const lo = this.config.getDword(off);
    if (b.spec.kind === 'io') return (lo & ~3) >>> 0;
    const low = (lo & ~0xf) >>> 0;
    return b.spec.kind === 'mem64' ? this.config.getDword(off + 4) * TWO32 + low : low;
  }

  /** Sets a BAR's address as firmware would (device side), then remaps. */
  setBarAddress(index: number, address: number): void {
    const b = this.bars[index];
    if (!b) throw new RangeError(`BAR${index} is not defined`);
    const off = PCI_BASE_ADDRESS_0 + 4 * index;
    const flags = this.config.getDword(off) & (b.spec.kind === 'io' ? 3 : 0xf);
    this.config.setDword(off, ((address % TWO32) | flags) >>> 0);
    if (b.spec.kind === 'mem64') this.config.setDword(off + 4, Math.floor(address / TWO32));
    this.updateMappings();
  }

  /** Called by the PCI bus when the function is plugged in. */
  attach(buses: PciBuses): void {
    this.buses = buses;
    this.updateMappings();
  }

  /** A BAR's handler for an access by BAR index (the virtio PCI_CFG window uses this). */
  barHandler(index: number): BarHandler | null {
    return this.bars[index]?.spec.handler ?? null;
  }

  /** Guest config read (1, 2, 4 bytes at `offset` < 256). */
  configRead(offset: number, size: number): number {
    return this.config.read(offset, size);
  }

  /** Guest config write; remaps BARs when the command register or a BAR changed. */
  configWrite(offset: number, size: number, value: number): void {
    this.config.write(offset, size, value);
    const end = offset + size;
    if ((offset < PCI_COMMAND + 2 && end > PCI_COMMAND) || (offset < PCI_BASE_ADDRESS_0 + 24 && end > PCI_BASE_ADDRESS_0)) this.updateMappings();
  }

  /** Maps every BAR where its register says, if its decode is enabled; unmaps the rest. */
  updateMappings(): void {
    const buses = this.buses;
    if (!buses) return;
    let changed = false;
    const cmd = this.config.getWord(PCI_COMMAND);
    for (let i = 0; i < 6; i++) {
      const b = this.bars[i];
      if (!b) continue;
      const size = b.spec.size;
      const addr = this.barAddress(i);
      let want = -1;
      if (b.spec.kind === 'io') {
        if (cmd & PCI_COMMAND_IO && addr !== 0 && addr + size <= 0x10000) want = addr;
      } else if (cmd & PCI_COMMAND_MEMORY && addr !== 0 && addr + size <= 2 ** 52) {
        want = addr;
      }
      if (want === b.mapped) continue;
      this.unmap(b, buses);
      if (want >= 0) this.map(b, buses, want);
      changed = true;
    }
    if (changed) this.mappingsChanged();
  }

  /** Where BAR `index` decodes now, or -1 when it is not mapped. */
  barMapped(index: number): number {
    return this.bars[index]?.mapped ?? -1;
  }

  /** A BAR the guest placed over something else decodes nothing; devices with a log say so (rate-limited). */
  protected mapRefused(_addr: number, _size: number): void {}

  /** Called after BARs were mapped, moved or unmapped (devices with kernel-side bindings follow them). */
  protected mappingsChanged(): void {}

  private unmap(b: Bar, buses: PciBuses): void {
    if (b.mapped < 0) return;
    if (b.window instanceof PioBarWindow) buses.pio.unregister(b.mapped, b.spec.size);
    else buses.mmio.move(b.window, b.mapped, 0, 0);
    b.mapped = -1;
  }

  private map(b: Bar, buses: PciBuses, addr: number): void {
    // A guest can point a BAR at something else's range: refuse that mapping
    // (the BAR decodes nothing), never throw out of the exit path.
    try {
      if (b.window instanceof PioBarWindow) {
        for (let p = addr; p < addr + b.spec.size; p++) {
          if (buses.pio.lookup(p) !== undefined) throw new Error('port taken');
        }
        b.window.base = addr;
        buses.pio.register(b.window, addr, b.spec.size);
      } else {
        buses.mmio.register(b.window, addr, b.spec.size);
      }
      b.mapped = addr;
    } catch {
      this.mapFailures++;
      this.mapRefused(addr, b.spec.size);
    }
  }
}
