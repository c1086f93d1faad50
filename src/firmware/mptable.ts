// The Intel MultiProcessor Specification 1.4 table (MP floating pointer +
// configuration table) that tells a guest without ACPI where the IOAPIC is
// and how ISA and PCI interrupts reach it. Linux parses it in
// arch/x86/kernel/mpparse.c when it finds no ACPI tables.
//
// What it describes (and what tsvisor wires up to match):
// - `cpus` processors, LAPIC ids 0…cpus-1 (0 is the boot processor), at LAPIC_ADDR;
// - bus 0 = PCI, bus 1 = ISA;
// - one IOAPIC, id `ioapicId(cpus)` (the first id after the LAPICs', as kvmtool
//   numbers it), version 0x11, at IOAPIC_ADDR, 24 pins;
// - ISA IRQ 0 (the PIT) on pin 2, ISA IRQs 1 and 3-15 on the pin of the same
//   number (edge, active high: "conforms to bus");
// - each PCI device's INTA# on its pin (level, active low), see pciIntxGsi;
// - LINT0 ExtINT (the 8259 in virtual-wire mode), LINT1 NMI.
// KVM's default GSI routing sends GSI 0 to IOAPIC pin 0; `pcGsiRoutes()` is
// the PC routing (GSI 0 → pin 2, as QEMU and kvmtool set it) that must be
// installed with KVM_SET_GSI_ROUTING for the table to be true.
import type { GuestMemory } from '../memory/guest-memory.js';
import { IOAPIC_ADDR, LAPIC_ADDR } from '../boot/layout.js';

export const MPF_SIGNATURE = '_MP_';
export const MPC_SIGNATURE = 'PCMP';
export const MPC_SPEC_REV = 4; // 1.4
export const MPF_SIZE = 16;
export const MPC_HEADER_SIZE = 44;

// Entry types and sizes.
export const MP_PROCESSOR = 0;
export const MP_BUS = 1;
export const MP_IOAPIC = 2;
export const MP_INTSRC = 3;
export const MP_LINTSRC = 4;
const PROCESSOR_SIZE = 20;
const ENTRY_SIZE = 8;

export const CPU_ENABLED = 1;
export const CPU_BOOTPROCESSOR = 2;
export const MPC_APIC_USABLE = 1;
// Interrupt types.
export const MP_INT = 0;
export const MP_NMI = 1;
export const MP_EXTINT = 3;
// Flags: polarity bits 1:0, trigger bits 3:2.
export const MP_IRQPOL_DEFAULT = 0;
export const MP_IRQPOL_ACTIVE_LOW = 3;
export const MP_IRQTRIG_DEFAULT = 0;
export const MP_IRQTRIG_LEVEL = 3 << 2;

export const MP_BUS_PCI = 0;
export const MP_BUS_ISA = 1;
/** The IOAPIC's id in the MP table and the MADT: the first one no LAPIC has (1 with one vCPU, as before). */
export function ioapicId(cpus: number): number {
  return Math.max(1, cpus);
}
export const MP_IOAPIC_VERSION = 0x11;
export const MP_LAPIC_VERSION = 0x14;
export const IOAPIC_PINS = 24;

export interface MpPciIrq {
  /** PCI slot (device number) on bus 0. */
  slot: number;
  /** 1 = INTA#. */
  pin: number;
  /** IOAPIC pin (GSI) it is wired to. */
  gsi: number;
}

export interface MpTableOptions {
  /** CPUID leaf 1 EAX (family/model/stepping) and EDX (features). */
  cpuSignature: number;
  cpuFeatures: number;
  pciIrqs: MpPciIrq[];
  /** Processors (LAPIC ids 0…cpus-1, 0 the boot processor); default 1. */
  cpus?: number;
}

/** Bytes the table takes for `nPci` PCI interrupt entries. */
export function mpTableSize(nPci: number, cpus = 1): number {
  return MPF_SIZE + MPC_HEADER_SIZE + cpus * PROCESSOR_SIZE + 2 * ENTRY_SIZE + ENTRY_SIZE + (15 + nPci) * ENTRY_SIZE + 2 * ENTRY_SIZE;
}

/** Builds the floating pointer and configuration table; the floating pointer at offset 0, the table right after it. */
export function buildMpTable(base: number, opts: MpTableOptions): Uint8Array {
  const cpus = opts.cpus ?? 1;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 254) throw new RangeError(`${cpus} processors do not fit an MP table (1-254)`);
  const ioapic = ioapicId(cpus);
  const bytes = new Uint8Array(mpTableSize(opts.pciIrqs.length, cpus));
  const dv = new DataView(bytes.buffer);
  const mpc = MPF_SIZE;

  // Floating pointer structure.
  ascii(bytes, 0, MPF_SIGNATURE);
  dv.setUint32(4, base + mpc, true); // physptr
  bytes[8] = 1;                      // length in 16-byte units
  bytes[9] = MPC_SPEC_REV;
  // 10 checksum; 11 feature1 = 0 (a configuration table is present); 12 feature2 = 0 (virtual wire, no IMCR)
  bytes[10] = checksumByte(bytes, 0, MPF_SIZE);

  let o = mpc + MPC_HEADER_SIZE;
  let count = 0;
  // Processors: LAPIC id = KVM's vCPU id.
  for (let id = 0; id < cpus; id++) {
    bytes[o] = MP_PROCESSOR;
    bytes[o + 1] = id;                         // LAPIC id
    bytes[o + 2] = MP_LAPIC_VERSION;
    bytes[o + 3] = id === 0 ? CPU_ENABLED | CPU_BOOTPROCESSOR : CPU_ENABLED;
    dv.setUint32(o + 4, opts.cpuSignature >>> 0, true);
    dv.setUint32(o + 8, opts.cpuFeatures >>> 0, true);
    o += PROCESSOR_SIZE;
    count++;
  }
  // Buses.
  for (const [id, name] of [[MP_BUS_PCI, 'PCI   '], [MP_BUS_ISA, 'ISA   ']] as const) {
    bytes[o] = MP_BUS;
    bytes[o + 1] = id;
    ascii(bytes, o + 2, name);
    o += ENTRY_SIZE;
    count++;
  }
  // IOAPIC.
  bytes[o] = MP_IOAPIC;
  bytes[o + 1] = ioapic;
  bytes[o + 2] = MP_IOAPIC_VERSION;
  bytes[o + 3] = MPC_APIC_USABLE;
  dv.setUint32(o + 4, IOAPIC_ADDR, true);
  o += ENTRY_SIZE;
  count++;
  const intsrc = (type: number, flags: number, bus: number, busIrq: number, destId: number, destPin: number, kind = MP_INTSRC) => {
    bytes[o] = kind;
    bytes[o + 1] = type;
    dv.setUint16(o + 2, flags, true);
    bytes[o + 4] = bus;
    bytes[o + 5] = busIrq;
    bytes[o + 6] = destId;
    bytes[o + 7] = destPin;
    o += ENTRY_SIZE;
    count++;
  };
  // ISA IRQs: 0 → pin 2, the rest identity; IRQ 2 (the cascade) has no entry.
  for (let irq = 0; irq < 16; irq++) {
    if (irq === 2) continue;
    intsrc(MP_INT, MP_IRQPOL_DEFAULT | MP_IRQTRIG_DEFAULT, MP_BUS_ISA, irq, ioapic, irq === 0 ? 2 : irq);
  }
  // PCI INTx: source bus IRQ = slot << 2 | (pin - 1).
  for (const p of opts.pciIrqs) {
    if (p.slot < 0 || p.slot > 31 || p.pin < 1 || p.pin > 4 || p.gsi < 0 || p.gsi >= IOAPIC_PINS) throw new RangeError(`bad PCI interrupt ${JSON.stringify(p)}`);
    intsrc(MP_INT, MP_IRQPOL_ACTIVE_LOW | MP_IRQTRIG_LEVEL, MP_BUS_PCI, (p.slot << 2) | (p.pin - 1), ioapic, p.gsi);
  }
  // Local interrupts, to every LAPIC (0xff).
  intsrc(MP_EXTINT, 0, MP_BUS_ISA, 0, 0xff, 0, MP_LINTSRC);
  intsrc(MP_NMI, 0, MP_BUS_ISA, 0, 0xff, 1, MP_LINTSRC);

  // Configuration table header.
  ascii(bytes, mpc, MPC_SIGNATURE);
  dv.setUint16(mpc + 4, o - mpc, true);       // base table length
  bytes[mpc + 6] = MPC_SPEC_REV;
  ascii(bytes, mpc + 8, 'TSVISOR ');          // OEM id, 8
  ascii(bytes, mpc + 16, '0.1         ');     // product id, 12
  // 28 OEM table pointer, 32 OEM table size: 0
  dv.setUint16(mpc + 34, count, true);
  dv.setUint32(mpc + 36, LAPIC_ADDR, true);
  // 40 extended table length, 42 extended checksum: 0
  bytes[mpc + 7] = checksumByte(bytes, mpc, o - mpc);
  return bytes;
}

/** Builds the table and writes it at `base` in guest memory (inside the e820-reserved BIOS area). */
export function writeMpTable(mem: GuestMemory, base: number, opts: MpTableOptions): number {
  const bytes = buildMpTable(base, opts);
  if (!mem.write(base, bytes)) throw new Error(`MP table at 0x${base.toString(16)} does not fit in guest RAM`);
  return bytes.byteLength;
}

/** The byte that makes [off, off+len) sum to 0 mod 256 (its own slot must be 0 when called). */
function checksumByte(b: Uint8Array, off: number, len: number): number {
  let s = 0;
  for (let i = off; i < off + len; i++) s = (s + b[i]) & 0xff;
  return (0x100 - s) & 0xff;
}

function ascii(b: Uint8Array, off: number, s: string): void {
  for (let i = 0; i < s.length; i++) b[off + i] = s.charCodeAt(i);
}

/**
 * The PC's GSI routing for KVM_SET_GSI_ROUTING (what QEMU and kvmtool
 * install): GSIs 0-7 and 8-15 to the master and slave 8259 (except GSI 2,
 * the cascade), GSI 0 to IOAPIC pin 2 and GSIs 1, 3-23 to the pin of the same
 * number. MSI routes (irqfd) go after these.
 */
export function pcGsiRoutes(): Array<{ gsi: number; type: 'irqchip'; chip: number; pin: number }> {
  const KVM_IRQCHIP_PIC_MASTER = 0;
  const KVM_IRQCHIP_PIC_SLAVE = 1;
  const KVM_IRQCHIP_IOAPIC = 2;
  const routes: Array<{ gsi: number; type: 'irqchip'; chip: number; pin: number }> = [];
  for (let i = 0; i < 16; i++) {
    if (i === 2) continue;
    routes.push({ gsi: i, type: 'irqchip', chip: i < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: i % 8 });
  }
  for (let i = 0; i < IOAPIC_PINS; i++) {
    if (i === 2) continue;
    routes.push({ gsi: i, type: 'irqchip', chip: KVM_IRQCHIP_IOAPIC, pin: i === 0 ? 2 : i });
  }
  return routes;
}
