// The ACPI tables a guest finds by scanning 0xE0000-0xFFFFF for "RSD PTR ",
// as Linux and kvm-unit-tests' lib/acpi.c do: RSDP (revision 2) → RSDT and
// XSDT → FADT (with FACS and DSDT) and MADT. They describe the ACPI PM block
// of src/devices/acpi-pm.ts (PM timer, PM1a event and control registers, so
// `poweroff` and the suite's `inl_from_pmtimer` work), the reset register
// (the i8042's 0xFE), the LAPICs and the IOAPIC with the ISA overrides the MP
// table also lists. The DSDT (dsdtAml) holds \_S3, \_S5 and the PCI host bridge
// with its windows and INTx routing, all constant data (src/firmware/aml.ts).
import type { GuestMemory } from '../memory/guest-memory.js';
import { IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO_END, PCI_MMIO_START } from '../boot/layout.js';
import { ioapicId } from './mptable.js';
import { type Aml, device, dwordMemory, eisaId, integer, ioPorts, name, pkg, resourceTemplate, scope, wordBusNumber, wordIo } from './aml.js';
import { PCI_CONFIG_ADDRESS, PCI_INTX_GSI_BASE, PCI_MAX_SLOTS } from '../devices/pci/pci-bus.js';
import { ACPI_PM_BASE, PM1_CNT_OFFSET, PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_OFFSET, PM_TMR_LEN, SCI_IRQ, SLP_TYP_S3, SLP_TYP_S5 } from '../devices/acpi-pm.js';
import { RTC_CENTURY } from '../devices/cmos-rtc.js';

const OEM_ID = 'TSVSOR';
const OEM_TABLE_ID = 'TSVISOR ';
const CREATOR_ID = 'TSVR';
const HEADER_SIZE = 36;
const RSDP_SIZE = 36;
const FADT_SIZE = 244; // revision 3 (ACPI 2.0): the X_ fields included
const FACS_SIZE = 64;
/** FACS: where the OS leaves the real-mode address to resume at after S3. */
export const FACS_FIRMWARE_WAKING_VECTOR = 12;

export interface AcpiOptions {
  /** Local APIC ids of the processors, boot processor first. */
  apicIds: number[];
}

/** One ACPI table, built in a growing byte array. */
class Table {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }
  ascii(off: number, s: string): void {
    for (let i = 0; i < s.length; i++) this.bytes[off + i] = s.charCodeAt(i);
  }
  u8(off: number, v: number): void { this.view.setUint8(off, v); }
  u16(off: number, v: number): void { this.view.setUint16(off, v, true); }
  u32(off: number, v: number): void { this.view.setUint32(off, v, true); }
  u64(off: number, v: number): void { this.view.setBigUint64(off, BigInt(v), true); }
  /** Generic Address Structure: a register in system I/O space. */
  gasIo(off: number, port: number, bytes: number): void {
    this.u8(off, 1); // address space: system I/O
    this.u8(off + 1, bytes * 8); // register bit width
    this.u8(off + 2, 0); // bit offset
    this.u8(off + 3, bytes === 1 ? 1 : bytes === 2 ? 2 : bytes === 4 ? 3 : 4); // access size
    this.u64(off + 4, port);
  }
}

/** A System Description Table with its standard header; the checksum is set by `finish`. */
function sdt(signature: string, size: number, revision: number): Table {
  const t = new Table(size);
  t.ascii(0, signature);
  t.u32(4, size);
  t.u8(8, revision);
  t.ascii(10, OEM_ID);
  t.ascii(16, OEM_TABLE_ID);
  t.u32(24, 1); // OEM revision
  t.ascii(28, CREATOR_ID);
  t.u32(32, 1); // creator revision
  return t;
}

/** Sets byte `at` so that bytes [0, len) sum to zero mod 256. */
function checksum(bytes: Uint8Array, at: number, len = bytes.length): void {
  bytes[at] = 0;
  let s = 0;
  for (let i = 0; i < len; i++) s = (s + bytes[i]) & 0xff;
  bytes[at] = (0x100 - s) & 0xff;
}

/**
 * DSDT: \_S3 and \_S5 (the sleep types that suspend to RAM and power
 * off; QEMU's values) and the PCI host bridge
 * \_SB.PCI0, so that a guest with ACPI enumerates PCI through it as on a PC:
 * - _CRS: bus 0-255, the config ports 0xCF8-0xCFF, every other I/O port, and
 *   the 32-bit memory window where tsvisor places BARs;
 * - _PRT: INTA#-INTD# of every slot to a GSI: INTA# where pciIntxGsi and
 *   the MP table put it, the other pins rotated from there.
 *   Entries name GSIs directly (source 0), so they are level-triggered and
 *   active-low, as the MP table says too.
 */
export function dsdtAml(): number[] {
  const prt: Aml[] = [];
  for (let slot = 0; slot < PCI_MAX_SLOTS; slot++) {
    for (let pin = 0; pin < 4; pin++) {
      prt.push(pkg([integer(slot * 0x10000 + 0xffff), integer(pin), integer(0), integer(PCI_INTX_GSI_BASE + ((slot + pin) % 8))]));
    }
  }
  // A Package holds at most 255 elements: 128 entries fit.
  const pci0 = device('PCI0', [
    name('_HID', eisaId('PNP0A03')),
    name('_UID', integer(0)),
    name('_BBN', integer(0)),
    name('_CRS', resourceTemplate([
      wordBusNumber(0, 0xff),
      ioPorts(PCI_CONFIG_ADDRESS, PCI_CONFIG_ADDRESS, 1, 8),
      wordIo(0, PCI_CONFIG_ADDRESS - 1),
      wordIo(PCI_CONFIG_ADDRESS + 8, 0xffff),
      dwordMemory(PCI_MMIO_START, PCI_MMIO_END - 1),
    ])),
    name('_PRT', pkg(prt)),
  ]);
  return [
    ...name('\\_S3', pkg([integer(SLP_TYP_S3), integer(SLP_TYP_S3), integer(0), integer(0)])),
    ...name('\\_S5', pkg([integer(SLP_TYP_S5), integer(SLP_TYP_S5), integer(0), integer(0)])),
    ...scope('\\_SB', [pci0]),
  ];
}

function dsdt(): Table {
  const aml = dsdtAml();
  const t = sdt('DSDT', HEADER_SIZE + aml.length, 2);
  t.bytes.set(aml, HEADER_SIZE);
  return t;
}

function facs(): Table {
  const t = new Table(FACS_SIZE);
  t.ascii(0, 'FACS');
  t.u32(4, FACS_SIZE);
  t.u8(32, 1); // version (ACPI 2.0)
  return t;
}

function fadt(facsAddr: number, dsdtAddr: number): Table {
  const t = sdt('FACP', FADT_SIZE, 3);
  t.u32(36, facsAddr); // FIRMWARE_CTRL
  t.u32(40, dsdtAddr);
  t.u16(46, SCI_IRQ);
  // SMI_CMD (48) stays 0: there is no SMM; the machine is always in ACPI mode (SCI_EN reads 1).
  t.u32(56, ACPI_PM_BASE); // PM1a_EVT_BLK
  t.u32(64, ACPI_PM_BASE + PM1_CNT_OFFSET); // PM1a_CNT_BLK
  t.u32(76, ACPI_PM_BASE + PM_TMR_OFFSET); // PM_TMR_BLK
  t.u8(88, PM1_EVT_LEN);
  t.u8(89, PM1_CNT_LEN);
  t.u8(91, PM_TMR_LEN);
  t.u16(96, 0x0fff); // P_LVL2_LAT > 100: no C2
  t.u16(98, 0x0fff); // P_LVL3_LAT > 1000: no C3
  t.u8(108, RTC_CENTURY); // CENTURY: the RTC's CMOS byte that holds it
  // Flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON (none: 1 means "not a fixed button"), RESET_REG_SUP; a 24-bit timer.
  t.u32(112, (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 10));
  t.gasIo(116, 0x64, 1); // RESET_REG: the i8042's command port ...
  t.u8(128, 0xfe); // ... and its CPU-reset command
  t.u64(132, facsAddr); // X_FIRMWARE_CTRL
  t.u64(140, dsdtAddr); // X_DSDT
  t.gasIo(148, ACPI_PM_BASE, PM1_EVT_LEN);
  t.gasIo(172, ACPI_PM_BASE + PM1_CNT_OFFSET, PM1_CNT_LEN);
  t.gasIo(208, ACPI_PM_BASE + PM_TMR_OFFSET, PM_TMR_LEN);
  return t;
}

/** MADT: the LAPICs, the IOAPIC, IRQ 0 → GSI 2 as on a PC, the SCI level-triggered, and LINT1 as NMI. */
function madt(o: AcpiOptions): Table {
  const entries: number[][] = [];
  o.apicIds.forEach((id, i) => entries.push([0, 8, i, id, 1, 0, 0, 0])); // Processor Local APIC, enabled
  const io = IOAPIC_ADDR;
  entries.push([1, 12, ioapicId(o.apicIds.length), 0, io & 0xff, (io >>> 8) & 0xff, (io >>> 16) & 0xff, io >>> 24, 0, 0, 0, 0]);
  entries.push([2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // ISA IRQ 0 → GSI 2, bus-conforming
  entries.push([2, 10, 0, SCI_IRQ, SCI_IRQ, 0, 0, 0, 0x0d, 0]); // SCI: active high, level
  entries.push([4, 6, 0xff, 0, 0, 1]); // Local APIC NMI: every processor, LINT1
  const size = HEADER_SIZE + 8 + entries.reduce((n, e) => n + e.length, 0);
  const t = sdt('APIC', size, 1);
  t.u32(36, LAPIC_ADDR);
  t.u32(40, 1); // PCAT_COMPAT: there are 8259s too
  let off = HEADER_SIZE + 8;
  for (const e of entries) {
    t.bytes.set(e, off);
    off += e.length;
  }
  return t;
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/** Where the FACS lies when the tables start at `base` (the first after the RSDP, 64-byte aligned as ACPI asks). */
export function facsAddress(base: number): number {
  return align(base + RSDP_SIZE, 64);
}

/** The whole set as it lies in memory from `base` (16-byte aligned, below 1 MiB): each table with its address. */
export function acpiTables(base: number, o: AcpiOptions): Array<{ addr: number; bytes: Uint8Array }> {
  if (base % 16 !== 0) throw new Error('the RSDP must be 16-byte aligned');
  if (o.apicIds.length === 0) throw new Error('at least one processor');
  const rsdpAddr = base;
  const facsAddr = facsAddress(base);
  const dsdtTable = dsdt();
  const dsdtAddr = facsAddr + FACS_SIZE;
  const fadtAddr = align(dsdtAddr + dsdtTable.bytes.length, 16);
  const madtTable = madt(o);
  const madtAddr = align(fadtAddr + FADT_SIZE, 16);
  const pointed = [fadtAddr, madtAddr];
  const rsdtAddr = align(madtAddr + madtTable.bytes.length, 16);
  const rsdt = sdt('RSDT', HEADER_SIZE + 4 * pointed.length, 1);
  pointed.forEach((a, i) => rsdt.u32(HEADER_SIZE + 4 * i, a));
  const xsdtAddr = align(rsdtAddr + rsdt.bytes.length, 16);
  const xsdt = sdt('XSDT', HEADER_SIZE + 8 * pointed.length, 1);
  pointed.forEach((a, i) => xsdt.u64(HEADER_SIZE + 8 * i, a));
  const fadtTable = fadt(facsAddr, dsdtAddr);
  for (const t of [dsdtTable, fadtTable, madtTable, rsdt, xsdt]) checksum(t.bytes, 9);

  const rsdp = new Table(RSDP_SIZE);
  rsdp.ascii(0, 'RSD PTR ');
  rsdp.ascii(9, OEM_ID);
  rsdp.u8(15, 2); // revision 2: the XSDT is there
  rsdp.u32(16, rsdtAddr);
  rsdp.u32(20, RSDP_SIZE);
  rsdp.u64(24, xsdtAddr);
  checksum(rsdp.bytes, 8, 20); // the ACPI 1.0 part
  checksum(rsdp.bytes, 32); // the whole structure

  return [
    { addr: rsdpAddr, bytes: rsdp.bytes },
    { addr: facsAddr, bytes: facs().bytes },
    { addr: dsdtAddr, bytes: dsdtTable.bytes },
    { addr: fadtAddr, bytes: fadtTable.bytes },
    { addr: madtAddr, bytes: madtTable.bytes },
    { addr: rsdtAddr, bytes: rsdt.bytes },
    { addr: xsdtAddr, bytes: xsdt.bytes },
  ];
}

/** Writes the tables at `base` in guest memory; returns the first byte after them. */
export function writeAcpiTables(mem: GuestMemory, base: number, o: AcpiOptions): number {
  let end = base;
  for (const t of acpiTables(base, o)) {
    if (!mem.write(t.addr, t.bytes)) throw new Error(`ACPI table at 0x${t.addr.toString(16)} is outside guest RAM`);
    end = Math.max(end, t.addr + t.bytes.length);
  }
  return end;
}
