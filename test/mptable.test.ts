import test from 'ava';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { MPTABLE_ADDR, e820Map, E820_RESERVED, LAPIC_ADDR, IOAPIC_ADDR } from '../src/boot/layout.js';
import { pcGsiRoutes, writeMpTable, MP_BUS, MP_INTSRC, MP_IOAPIC, MP_LINTSRC, MP_PROCESSOR, mpTableSize } from '../src/firmware/mptable.js';
import { pciIntxGsi } from '../src/devices/pci/pci-bus.js';

const sum = (b: Uint8Array) => b.reduce((a, x) => (a + x) & 0xff, 0);
const str = (b: Uint8Array, off: number, n: number) => String.fromCharCode(...b.subarray(off, off + n));

/** Finds and parses the table the way Linux's mpparse does (smp_scan_config + smp_read_mpc). */
function parse(mem: GuestMemory) {
  // Scan the BIOS area 0xF0000-0xFFFFF on 16-byte boundaries.
  let mpf = -1;
  for (let a = 0xf0000; a < 0x100000; a += 16) {
    const b = mem.slice(a, 16)!;
    if (str(b, 0, 4) === '_MP_' && b[8] === 1 && sum(b) === 0 && (b[9] === 1 || b[9] === 4)) { mpf = a; break; }
  }
  if (mpf < 0) throw new Error('no floating pointer');
  const fp = mem.slice(mpf, 16)!;
  const physptr = new DataView(fp.buffer, fp.byteOffset).getUint32(4, true);
  const hdr = mem.slice(physptr, 44)!;
  const hv = new DataView(hdr.buffer, hdr.byteOffset, 44);
  const length = hv.getUint16(4, true);
  const table = mem.slice(physptr, length)!;
  const tv = new DataView(table.buffer, table.byteOffset, length);
  const entries: Array<{ type: number; bytes: Uint8Array }> = [];
  let o = 44;
  while (o < length) {
    const type = table[o];
    const size = type === MP_PROCESSOR ? 20 : 8;
    entries.push({ type, bytes: table.subarray(o, o + size) });
    o += size;
  }
  return {
    mpf, physptr, feature1: fp[11], signature: str(hdr, 0, 4), spec: hdr[6], checksum: sum(table), count: tv.getUint16(34, true),
    lapic: tv.getUint32(36, true), oem: str(hdr, 8, 8), entries, length,
  };
}

test('MP table: floating pointer and configuration table parse back with good checksums', (t) => {
  const mem = GuestMemory.fake(1 << 20);
  const pci = [{ slot: 3, pin: 1, gsi: pciIntxGsi(3) }, { slot: 4, pin: 1, gsi: pciIntxGsi(4) }];
  const n = writeMpTable(mem, MPTABLE_ADDR, { cpuSignature: 0x000806f8, cpuFeatures: 0x178bfbff, pciIrqs: pci });
  t.is(n, mpTableSize(2));
  const p = parse(mem);
  t.is(p.mpf, MPTABLE_ADDR);
  t.is(p.feature1, 0, 'a configuration table follows, no default configuration');
  t.is(p.signature, 'PCMP');
  t.is(p.spec, 4);
  t.is(p.checksum, 0);
  t.is(p.lapic, LAPIC_ADDR);
  t.is(p.oem, 'TSVISOR ');
  t.is(p.count, p.entries.length);
  t.is(p.physptr + p.length, MPTABLE_ADDR + n);
  const byType = (ty: number) => p.entries.filter((e) => e.type === ty);
  t.is(byType(MP_PROCESSOR).length, 1);
  t.is(byType(MP_BUS).length, 2);
  t.is(byType(MP_IOAPIC).length, 1);
  t.is(byType(MP_INTSRC).length, 15 + 2);
  t.is(byType(MP_LINTSRC).length, 2);

  const cpu = byType(MP_PROCESSOR)[0].bytes;
  const cv = new DataView(cpu.buffer, cpu.byteOffset, 20);
  t.is(cpu[1], 0, 'LAPIC id 0');
  t.is(cpu[3], 3, 'enabled, boot processor');
  t.is(cv.getUint32(4, true), 0x000806f8);
  t.is(cv.getUint32(8, true), 0x178bfbff);
  const buses = byType(MP_BUS).map((e) => [e.bytes[1], str(e.bytes, 2, 6)]);
  t.deepEqual(buses, [[0, 'PCI   '], [1, 'ISA   ']]);
  const io = byType(MP_IOAPIC)[0].bytes;
  t.is(io[1], 1, 'IOAPIC id 1, not the LAPIC id');
  t.is(io[2], 0x11);
  t.is(io[3], 1);
  t.is(new DataView(io.buffer, io.byteOffset, 8).getUint32(4, true), IOAPIC_ADDR);

  const ints = byType(MP_INTSRC).map((e) => ({ type: e.bytes[1], flags: e.bytes[2] | (e.bytes[3] << 8), bus: e.bytes[4], irq: e.bytes[5], apic: e.bytes[6], pin: e.bytes[7] }));
  const isa = ints.filter((i) => i.bus === 1);
  t.is(isa.length, 15);
  t.deepEqual(isa.find((i) => i.irq === 0), { type: 0, flags: 0, bus: 1, irq: 0, apic: 1, pin: 2 }, 'PIT on pin 2');
  t.falsy(isa.find((i) => i.irq === 2), 'no cascade entry');
  for (const i of isa) if (i.irq !== 0) t.is(i.pin, i.irq);
  t.deepEqual(ints.filter((i) => i.bus === 0), [
    { type: 0, flags: 0x0f, bus: 0, irq: (3 << 2) | 0, apic: 1, pin: 19 },
    { type: 0, flags: 0x0f, bus: 0, irq: (4 << 2) | 0, apic: 1, pin: 20 },
  ], 'PCI INTA#: level, active low, on the slot GSI');
  const lints = byType(MP_LINTSRC).map((e) => [e.bytes[1], e.bytes[6], e.bytes[7]]);
  t.deepEqual(lints, [[3, 0xff, 0], [1, 0xff, 1]], 'ExtINT on LINT0, NMI on LINT1');
});

test('MP table with 4 processors: LAPIC ids 0-3, only 0 the boot processor, the IOAPIC id after them, every interrupt routed to it', (t) => {
  const mem = GuestMemory.fake(1 << 20);
  const n = writeMpTable(mem, MPTABLE_ADDR, { cpus: 4, cpuSignature: 0x000806f8, cpuFeatures: 0x178bfbff, pciIrqs: [{ slot: 4, pin: 1, gsi: pciIntxGsi(4) }] });
  t.is(n, mpTableSize(1, 4));
  const p = parse(mem);
  t.is(p.checksum, 0);
  t.is(p.count, p.entries.length);
  const cpus = p.entries.filter((e) => e.type === MP_PROCESSOR).map((e) => [e.bytes[1], e.bytes[3]]);
  t.deepEqual(cpus, [[0, 3], [1, 1], [2, 1], [3, 1]], 'ids 0-3, all enabled, 0 the BSP');
  const io = p.entries.find((e) => e.type === MP_IOAPIC)!.bytes;
  t.is(io[1], 4);
  const dests = new Set(p.entries.filter((e) => e.type === MP_INTSRC).map((e) => e.bytes[6]));
  t.deepEqual([...dests], [4], 'every I/O interrupt names that IOAPIC');
  t.throws(() => writeMpTable(mem, MPTABLE_ADDR, { cpus: 0, cpuSignature: 0, cpuFeatures: 0, pciIrqs: [] }), { message: /processors/ });
  t.throws(() => writeMpTable(mem, MPTABLE_ADDR, { cpus: 255, cpuSignature: 0, cpuFeatures: 0, pciIrqs: [] }), { message: /processors/ });
});

test('MP table lies in the e820-reserved BIOS area', (t) => {
  const size = mpTableSize(8, 64);
  const r = e820Map(256 << 20).find((e) => e.type === E820_RESERVED && e.addr <= MPTABLE_ADDR && MPTABLE_ADDR + size <= e.addr + e.size);
  t.truthy(r);
});

test('MP table refuses impossible PCI interrupts', (t) => {
  const mem = GuestMemory.fake(1 << 20);
  t.throws(() => writeMpTable(mem, MPTABLE_ADDR, { cpuSignature: 0, cpuFeatures: 0, pciIrqs: [{ slot: 40, pin: 1, gsi: 16 }] }));
  t.throws(() => writeMpTable(mem, MPTABLE_ADDR, { cpuSignature: 0, cpuFeatures: 0, pciIrqs: [{ slot: 1, pin: 1, gsi: 24 }] }));
  t.throws(() => writeMpTable(GuestMemory.fake(0x80000), MPTABLE_ADDR, { cpuSignature: 0, cpuFeatures: 0, pciIrqs: [] }), { message: /does not fit/ });
});

test('PC GSI routing: GSI 0 to IOAPIC pin 2 and PIC pin 0, no GSI 2, identity elsewhere', (t) => {
  const r = pcGsiRoutes();
  const ioapic = r.filter((e) => e.chip === 2);
  const pic = r.filter((e) => e.chip !== 2);
  t.deepEqual(ioapic.find((e) => e.gsi === 0), { gsi: 0, type: 'irqchip', chip: 2, pin: 2 });
  t.falsy(r.find((e) => e.gsi === 2));
  t.is(ioapic.length, 23);
  t.is(pic.length, 15);
  for (const e of ioapic) if (e.gsi !== 0) t.is(e.pin, e.gsi);
  t.deepEqual(pic.find((e) => e.gsi === 12), { gsi: 12, type: 'irqchip', chip: 1, pin: 4 });
});
