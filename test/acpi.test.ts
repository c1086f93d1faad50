// The ACPI tables (src/firmware/acpi.ts), found and walked the way a guest
// does it, and the PM block they describe (src/devices/acpi-pm.ts).
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { BIOS_AREA_START, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR } from '../src/boot/layout.js';
import { facsAddress, writeAcpiTables } from '../src/firmware/acpi.js';
import { ACPI_PM_BASE, AcpiPm, PM_TIMER_HZ } from '../src/devices/acpi-pm.js';
import { pciIntxGsi } from '../src/devices/pci/pci-bus.js';

const sum = (b: Uint8Array) => b.reduce((a, x) => (a + x) & 0xff, 0);
const str = (b: Uint8Array, off: number, n: number) => String.fromCharCode(...b.subarray(off, off + n));

function boot(apicIds = [0]) {
  const mem = GuestMemory.fake(2 * 1024 * 1024);
  const end = writeAcpiTables(mem, BIOS_AREA_START, { apicIds });
  return { mem, end };
}

/** A table at `addr` whose header and checksum hold. */
function table(t: { fail: (m: string) => void }, mem: GuestMemory, addr: number): Uint8Array {
  const len = mem.readU32(addr + 4);
  const b = mem.slice(addr, len)!;
  if (sum(b) !== 0) t.fail(`${str(b, 0, 4)} checksum`);
  return b;
}

/** lib/acpi.c's find_acpi_table_addr: RSDP on a 16-byte boundary in 0xE0000-0xFFFFF, then the XSDT (revision >= 2). */
function find(t: { fail: (m: string) => void }, mem: GuestMemory, sig: string): { addr: number; bytes: Uint8Array } | null {
  let rsdp = -1;
  for (let a = 0xe0000; a < 0x100000; a += 16) if (str(mem.slice(a, 8)!, 0, 8) === 'RSD PTR ') { rsdp = a; break; }
  if (rsdp < 0) return null;
  const xsdtAddr = Number(mem.readU64(rsdp + 24));
  const xsdt = table(t, mem, xsdtAddr);
  for (let o = 36; o < xsdt.length; o += 8) {
    const addr = Number(new DataView(xsdt.buffer, xsdt.byteOffset).getBigUint64(o, true));
    if (str(mem.slice(addr, 4)!, 0, 4) === sig) return { addr, bytes: table(t, mem, addr) };
  }
  return null;
}

test('RSDP: found by the guest\'s scan, revision 2, both checksums, RSDT and XSDT list the same tables', (t) => {
  const { mem, end } = boot();
  t.true(end <= MPTABLE_ADDR, `the tables end at 0x${end.toString(16)}, before the MP table`);
  const rsdp = mem.slice(BIOS_AREA_START, 36)!;
  t.is(str(rsdp, 0, 8), 'RSD PTR ');
  t.is(sum(rsdp.subarray(0, 20)), 0, 'ACPI 1.0 checksum');
  t.is(sum(rsdp), 0, 'extended checksum');
  t.is(rsdp[15], 2);
  const dv = new DataView(rsdp.buffer, rsdp.byteOffset);
  t.is(dv.getUint32(20, true), 36);
  const rsdt = table(t, mem, dv.getUint32(16, true));
  const xsdt = table(t, mem, Number(dv.getBigUint64(24, true)));
  t.is(str(rsdt, 0, 4), 'RSDT');
  t.is(str(xsdt, 0, 4), 'XSDT');
  const r = [...Array((rsdt.length - 36) / 4).keys()].map((i) => new DataView(rsdt.buffer, rsdt.byteOffset).getUint32(36 + 4 * i, true));
  const x = [...Array((xsdt.length - 36) / 8).keys()].map((i) => Number(new DataView(xsdt.buffer, xsdt.byteOffset).getBigUint64(36 + 8 * i, true)));
  t.deepEqual(r, x);
  t.deepEqual(r.map((a) => str(mem.slice(a, 4)!, 0, 4)), ['FACP', 'APIC']);
});

test('FADT: the PM block\'s ports, the SCI, FACS and DSDT in both widths, the i8042 reset register', (t) => {
  const { mem } = boot();
  const f = find(t, mem, 'FACP')!;
  const dv = new DataView(f.bytes.buffer, f.bytes.byteOffset);
  t.is(f.bytes.length, 244);
  t.is(dv.getUint16(46, true), 9, 'SCI_INT');
  t.is(dv.getUint32(48, true), 0, 'no SMI_CMD: always in ACPI mode');
  t.is(dv.getUint32(56, true), ACPI_PM_BASE, 'PM1a_EVT_BLK');
  t.is(dv.getUint32(64, true), ACPI_PM_BASE + 4, 'PM1a_CNT_BLK');
  t.is(dv.getUint32(76, true), ACPI_PM_BASE + 8, 'PM_TMR_BLK, what vmexit\'s inl_pmtimer reads');
  t.deepEqual([f.bytes[88], f.bytes[89], f.bytes[91]], [4, 2, 4]);
  t.is(Number(dv.getBigUint64(208 + 4, true)), ACPI_PM_BASE + 8, 'X_PM_TMR_BLK');
  t.is(Number(dv.getBigUint64(140, true)), dv.getUint32(40, true), 'X_DSDT = DSDT');
  t.is(Number(dv.getBigUint64(132, true)), dv.getUint32(36, true), 'X_FIRMWARE_CTRL = FIRMWARE_CTRL');
  t.true((dv.getUint32(112, true) & (1 << 10)) !== 0, 'RESET_REG_SUP');
  t.is(Number(dv.getBigUint64(116 + 4, true)), 0x64);
  t.is(f.bytes[128], 0xfe);
  const facs = mem.slice(dv.getUint32(36, true), 64)!;
  t.is(str(facs, 0, 4), 'FACS');
  t.is(dv.getUint32(36, true) % 64, 0, 'FACS 64-byte aligned');
  t.is(dv.getUint32(36, true), facsAddress(BIOS_AREA_START), 'where the S3 resume looks for the waking vector');
  t.is(f.bytes[108], 0x32, 'CENTURY: the RTC\'s CMOS byte');
  const dsdt = table(t, mem, dv.getUint32(40, true));
  t.is(str(dsdt, 0, 4), 'DSDT');
});

/** The DSDT as ACPICA's disassembler reads it back: an independent AML parser (acpica-tools). */
function disassemble(dsdt: Uint8Array): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-dsdt-'));
  try {
    writeFileSync(join(dir, 'dsdt.dat'), dsdt);
    const r = spawnSync('iasl', ['-d', join(dir, 'dsdt.dat')], { encoding: 'utf8' });
    if (r.error) throw new Error(`iasl failed (${r.error.message}); install it with: apt-get install acpica-tools`);
    if (r.status !== 0) throw new Error(`iasl could not disassemble the DSDT:\n${r.stdout}${r.stderr}`);
    return readFileSync(join(dir, 'dsdt.dsl'), 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('DSDT, read back by ACPICA: \\_S3 and \\_S5 with sleep types 1 and 5, and the PCI host bridge with its windows and INTx routing', (t) => {
  const { mem } = boot();
  const f = find(t, mem, 'FACP')!;
  const dsdt = table(t, mem, new DataView(f.bytes.buffer, f.bytes.byteOffset).getUint32(40, true));
  t.is(str(dsdt, 0, 4), 'DSDT');
  const dsl = disassemble(dsdt).replace(/\/\*.*?\*\//gs, '').replace(/\/\/.*$/gm, '').replace(/\s+/g, ' ');
  t.regex(dsl, /Name \(\\_S3, Package \(0x04\) \{ One, One, Zero, Zero \}\)/);
  t.regex(dsl, /Name \(\\_S5, Package \(0x04\) \{ 0x05, 0x05, Zero, Zero \}\)/);
  t.regex(dsl, /Scope \(\\_SB\) \{ Device \(PCI0\) \{ Name \(_HID, EisaId \("PNP0A03"\) ?\)/);
  t.regex(dsl, /WordBusNumber \(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, 0x0000, 0x00FF, 0x0000, 0x0100,/);
  t.regex(dsl, /IO \(Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08, \)/);
  t.regex(dsl, /WordIO \(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x0000, 0x0CF7, 0x0000, 0x0CF8,/);
  t.regex(dsl, /WordIO \(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300,/);
  t.regex(dsl, /DWordMemory \(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0x00000000, 0xC0000000, 0xFEBFFFFF, 0x00000000, 0x3EC00000,/);
  const prt = [...dsl.matchAll(/Package \(0x04\) \{ (0x[0-9A-F]+), (Zero|One|0x0[23]), Zero, 0x([0-9A-F]+) \}/g)]
    .map((m) => ({ addr: m[1], pin: m[2], gsi: parseInt(m[3], 16) }));
  t.is(prt.length, 128, 'four pins of each of 32 slots');
  const pinOf = (p: string) => (p === 'Zero' ? 0 : p === 'One' ? 1 : parseInt(p, 16));
  for (const e of prt) {
    const slot = parseInt(e.addr, 16) >>> 16;
    if (pinOf(e.pin) === 0) t.is(e.gsi, pciIntxGsi(slot), `slot ${slot} INTA# where the PCI bus and the MP table put it`);
    t.true(e.gsi >= 16 && e.gsi < 24, 'clear of the ISA IRQs');
  }
  t.deepEqual(prt.filter((e) => e.addr === '0x0004FFFF').map((e) => e.gsi), [20, 21, 22, 23]);
});

test('MADT: one enabled LAPIC per processor, the IOAPIC, IRQ 0 → GSI 2, the SCI level-triggered', (t) => {
  const { mem } = boot([0, 1, 2, 3]);
  const m = find(t, mem, 'APIC')!;
  const dv = new DataView(m.bytes.buffer, m.bytes.byteOffset);
  t.is(dv.getUint32(36, true), LAPIC_ADDR);
  const entries: number[][] = [];
  for (let o = 44; o < m.bytes.length; o += m.bytes[o + 1]) entries.push([...m.bytes.subarray(o, o + m.bytes[o + 1])]);
  const lapics = entries.filter((e) => e[0] === 0);
  t.deepEqual(lapics.map((e) => [e[2], e[3], e[4] & 1]), [[0, 0, 1], [1, 1, 1], [2, 2, 1], [3, 3, 1]]);
  const ioapic = entries.find((e) => e[0] === 1)!;
  t.is(new DataView(Uint8Array.from(ioapic).buffer).getUint32(4, true), IOAPIC_ADDR);
  t.is(ioapic[2], 4, 'the IOAPIC id is the first no LAPIC has');
  const overrides = entries.filter((e) => e[0] === 2).map((e) => ({ irq: e[3], gsi: e[4], flags: e[8] }));
  t.deepEqual(overrides, [{ irq: 0, gsi: 2, flags: 0 }, { irq: 9, gsi: 9, flags: 0x0d }]);
  t.truthy(entries.find((e) => e[0] === 4 && e[5] === 1), 'LINT1 is NMI');
});

test('PM timer: 3.579545 MHz from the clock, 24 bits, readable at every width', (t) => {
  let ms = 1000;
  const pm = new AcpiPm(() => t.fail('no power-off'), () => ms);
  t.is(pm.pioRead(ACPI_PM_BASE + 8, 4), 0);
  ms += 1;
  t.is(pm.pioRead(ACPI_PM_BASE + 8, 4), Math.floor(PM_TIMER_HZ / 1000));
  ms = 1000 + (0x1000000 / PM_TIMER_HZ) * 1000 + 0.001; // one full wrap and a little
  t.true(pm.pioRead(ACPI_PM_BASE + 8, 4) < 0x10, 'wraps at 2^24');
  ms = 1000 + 2;
  const v = pm.pioRead(ACPI_PM_BASE + 8, 4);
  t.is(pm.pioRead(ACPI_PM_BASE + 8, 2), v & 0xffff);
  t.is(pm.pioRead(ACPI_PM_BASE + 9, 1), (v >> 8) & 0xff);
  t.is(pm.pioRead(ACPI_PM_BASE + 11, 1), 0, 'the top byte of a 24-bit timer');
});

test('PM1a control: SCI_EN reads 1; SLP_EN with \\_S5\'s type powers off, with \\_S3\'s suspends, other sleep types do nothing; SLP_EN is never stored', (t) => {
  let offs = 0;
  let suspends = 0;
  const pm = new AcpiPm(() => offs++, () => 0, () => suspends++);
  t.is(pm.pioRead(ACPI_PM_BASE + 4, 2) & 1, 1);
  pm.pioWrite(ACPI_PM_BASE + 4, 2, (3 << 10) | (1 << 13)); // no \_S package names type 3
  t.deepEqual([offs, suspends], [0, 0]);
  t.is(pm.pioRead(ACPI_PM_BASE + 4, 2) & (1 << 13), 0);
  pm.pioWrite(ACPI_PM_BASE + 4, 2, 5 << 10); // the type without SLP_EN
  t.is(offs, 0);
  pm.pioWrite(ACPI_PM_BASE + 4, 2, (5 << 10) | (1 << 13) | 1);
  t.is(offs, 1, 'Linux\'s acpi_power_off: one write of SLP_TYP | SLP_EN');
  // The same as two byte writes, high byte last.
  pm.pioWrite(ACPI_PM_BASE + 5, 1, ((5 << 10) | (1 << 13)) >> 8);
  t.is(offs, 2);
  pm.pioWrite(ACPI_PM_BASE + 4, 2, 0x2400); // kvm-unit-tests' s3: SLP_TYP 1 | SLP_EN
  t.deepEqual([offs, suspends], [2, 1]);
  // Where nothing can resume the machine, S3 is ignored.
  const plain = new AcpiPm(() => offs++, () => 0);
  plain.pioWrite(ACPI_PM_BASE + 4, 2, 0x2400);
  t.is(offs, 2);
});

test('S3 wake-up: RTC_EN in PM1_EN lets the alarm wake the machine; the wake sets WAK_STS and RTC_STS, which the guest clears', (t) => {
  const pm = new AcpiPm(() => t.fail('no power-off'), () => 0, () => undefined);
  t.false(pm.rtcWakeEnabled());
  pm.pioWrite(ACPI_PM_BASE + 2, 2, 0x400); // kvm-unit-tests' s3: outw(0x400, pm1a_evt_blk + 2)
  t.true(pm.rtcWakeEnabled());
  pm.wokeByRtcAlarm();
  t.is(pm.pioRead(ACPI_PM_BASE, 2), 0x8400);
  pm.pioWrite(ACPI_PM_BASE, 2, 0x8400);
  t.is(pm.pioRead(ACPI_PM_BASE, 2), 0);
});

test('PM1 status is write-1-to-clear, enable is read-write, unknown offsets read all-ones and ignore writes', (t) => {
  const pm = new AcpiPm(() => t.fail('no power-off'), () => 0);
  pm.pioWrite(ACPI_PM_BASE + 2, 2, 0x0121);
  t.is(pm.pioRead(ACPI_PM_BASE + 2, 2), 0x0121);
  pm.pioWrite(ACPI_PM_BASE + 3, 1, 0x04);
  t.is(pm.pioRead(ACPI_PM_BASE + 2, 2), 0x0421);
  pm.pioWrite(ACPI_PM_BASE, 2, 0xffff);
  t.is(pm.pioRead(ACPI_PM_BASE, 2), 0);
  t.is(pm.pioRead(ACPI_PM_BASE + 6, 2), 0xffff);
  pm.pioWrite(ACPI_PM_BASE + 6, 4, 0);
  t.is(pm.pioRead(ACPI_PM_BASE + 8, 4), 0);
});
