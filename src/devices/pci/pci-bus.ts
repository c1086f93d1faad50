// PCI bus 0 behind a host bridge, reached through configuration mechanism #1
// (PCI Local Bus 3.0 §3.2.2.3.2): a dword address latch at 0xCF8 (bit 31
// enable, bus 23:16, device 15:11, function 10:8, register 7:2) and the data
// window 0xCFC-0xCFF, byte/word/dword at any offset. As on QEMU's i440FX, the
// latch's low two bits are kept and ORed with the data port's byte lane: Linux
// latches the dword and picks the byte by port, kvm-unit-tests latches the
// byte's own offset and always uses 0xCFC. Configuration reads of absent
// functions return all-ones.
//
// tsvisor plays firmware: it assigns every BAR at plug-in (memory from
// PCI_MMIO_START, I/O from 0xc000, naturally aligned) and enables decoding,
// so a guest that does not reassign resources (Linux by default) finds them
// ready. The guest may still move them.
//
// INTx routing: every function has INTA# only; slot s raises GSI
// `pciIntxGsi(s)` = 16 + (s % 8), IOAPIC pins 16-23, clear of the ISA IRQs
// 0-15 (the MP table describes the same routing, src/firmware/mptable.ts).
import type { PioDevice } from '../../bus/io-bus.js';
import { PCI_MMIO_END, PCI_MMIO_START } from '../../boot/layout.js';
import { PciDevice, PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN, type PciBuses } from './config-space.js';

export const PCI_CONFIG_ADDRESS = 0xcf8;
export const PCI_CONFIG_DATA = 0xcfc;
export const PCI_IO_START = 0xc000;
export const PCI_IO_END = 0x10000;
export const PCI_MAX_SLOTS = 32;
/** The first IOAPIC pin used for PCI INTx. */
export const PCI_INTX_GSI_BASE = 16;

/** The GSI (IOAPIC pin) that INTA# of the device in `slot` raises. */
export function pciIntxGsi(slot: number): number {
  return PCI_INTX_GSI_BASE + (slot % 8);
}

/** Host bridge ids (Intel 440FX, as QEMU's pc machine). */
export const HOST_BRIDGE_VENDOR = 0x8086;
export const HOST_BRIDGE_DEVICE = 0x1237;
export const PCI_CLASS_BRIDGE_HOST = 0x060000;

export class HostBridge extends PciDevice {
  constructor() {
    super('host-bridge', { vendorId: HOST_BRIDGE_VENDOR, deviceId: HOST_BRIDGE_DEVICE, classCode: PCI_CLASS_BRIDGE_HOST, revision: 2, subsystemVendorId: 0x1af4, subsystemId: 0x1100 });
    this.config.setWord(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY);
  }
}

export class PciBus implements PioDevice {
  readonly name = 'pci-config';
  readonly slots: Array<PciDevice | null> = new Array(PCI_MAX_SLOTS).fill(null);
  private address = 0;
  private nextMmio = PCI_MMIO_START;
  private nextIo = PCI_IO_START;
  /** Config accesses that reached no function (statistics). */
  unclaimed = 0;

  constructor(private readonly buses: PciBuses) {
    this.plug(new HostBridge(), 0);
  }

  /** Claims 0xCF8-0xCFF on the PIO bus. */
  register(): void {
    this.buses.pio.register(this, PCI_CONFIG_ADDRESS, 8);
  }

  /**
   * Plugs `dev` into `slot` (default: the first free one), assigns its BARs,
   * enables decoding, routes INTA# and maps the BARs. Returns the slot.
   */
  plug(dev: PciDevice, slot = this.slots.indexOf(null)): number {
    if (slot < 0 || slot >= PCI_MAX_SLOTS || this.slots[slot]) throw new RangeError(`PCI slot ${slot} is taken or out of range`);
    this.slots[slot] = dev;
    const c = dev.config;
    let cmd = c.getWord(PCI_COMMAND);
    for (let i = 0; i < 6; i++) {
      const spec = dev.barSpec(i);
      if (!spec) continue;
      if (spec.kind === 'io') {
        const base = align(this.nextIo, spec.size);
        if (base + spec.size > PCI_IO_END) throw new RangeError(`no PCI I/O space left for ${dev.name} BAR${i}`);
        this.nextIo = base + spec.size;
        dev.setBarAddress(i, base);
        cmd |= PCI_COMMAND_IO;
      } else {
        const base = align(this.nextMmio, spec.size);
        if (base + spec.size > PCI_MMIO_END) throw new RangeError(`no PCI memory space left for ${dev.name} BAR${i}`);
        this.nextMmio = base + spec.size;
        dev.setBarAddress(i, base);
        cmd |= PCI_COMMAND_MEMORY;
      }
    }
    if (slot !== 0) cmd |= PCI_COMMAND_MASTER;
    c.setWord(PCI_COMMAND, cmd);
    if (c.getByte(PCI_INTERRUPT_PIN) !== 0) c.setByte(PCI_INTERRUPT_LINE, pciIntxGsi(slot));
    dev.attach(this.buses);
    return slot;
  }

  /** The function a config address selects, or null (bus ≠ 0, function ≠ 0, empty slot). */
  private target(addr: number): PciDevice | null {
    if ((addr & 0x80000000) === 0) return null;
    const bus = (addr >>> 16) & 0xff;
    const slot = (addr >>> 11) & 0x1f;
    const fn = (addr >>> 8) & 7;
    if (bus !== 0 || fn !== 0) return null;
    return this.slots[slot];
  }

  pioRead(port: number, size: number): number {
    if (port < PCI_CONFIG_DATA) {
      // The address latch; narrower reads see its bytes.
      const shift = 8 * (port - PCI_CONFIG_ADDRESS);
      return size === 4 && shift === 0 ? this.address >>> 0 : (this.address >>> shift) & (size === 1 ? 0xff : 0xffff);
    }
    return this.configRead(this.address, port - PCI_CONFIG_DATA, size);
  }

  pioWrite(port: number, size: number, value: number): void {
    if (port < PCI_CONFIG_DATA) {
      // Only a dword write at 0xCF8 sets the latch (byte writes at 0xCF9/0xCFB
      // belong to other mechanisms and are ignored, as on QEMU's i440FX).
      if (port === PCI_CONFIG_ADDRESS && size === 4) this.address = value >>> 0;
      return;
    }
    this.configWrite(this.address, port - PCI_CONFIG_DATA, size, value);
  }

  /** A config read through address latch value `addr` at byte `lane` (0-3) of the data window: register (addr & 0xff) | lane. */
  configRead(addr: number, lane: number, size: number): number {
    const dev = this.target(addr);
    const all = size === 4 ? 0xffffffff : size === 2 ? 0xffff : 0xff;
    if (!dev) {
      this.unclaimed++;
      return all;
    }
    const off = (addr & 0xff) | lane;
    if (off + size > 256) return all;
    return dev.configRead(off, size);
  }

  configWrite(addr: number, lane: number, size: number, value: number): void {
    const dev = this.target(addr);
    if (!dev) {
      this.unclaimed++;
      return;
    }
    const off = (addr & 0xff) | lane;
    if (off + size > 256) return;
    dev.configWrite(off, size, value);
  }
}

function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}
