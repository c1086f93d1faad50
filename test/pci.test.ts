import test from 'ava';
import { MmioBus, PioBus } from '../src/bus/io-bus.js';
import {
  PciConfigSpace, PciDevice, PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_CAP_ID_VNDR, PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MEMORY,
  PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN, PCI_STATUS, PCI_STATUS_CAP_LIST, type BarHandler,
} from '../src/devices/pci/config-space.js';
import { PciBus, pciIntxGsi, PCI_IO_START } from '../src/devices/pci/pci-bus.js';
import { Msix, MsixShared, PCI_CAP_ID_MSIX, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL } from '../src/devices/pci/msix.js';
import { SpinLock } from '../src/devices/virtio/transport-state.js';
import { PCI_MMIO_START } from '../src/boot/layout.js';

/** A BAR that records accesses and answers 0x1000 + offset. */
class RecordingBar implements BarHandler {
  log: string[] = [];
  read(offset: number, size: number): number { this.log.push(`r${size}@${offset}`); return 0x1000 + offset; }
  write(offset: number, size: number, value: number): void { this.log.push(`w${size}@${offset}=${value.toString(16)}`); }
}

function machine() {
  const pio = new PioBus();
  const mmio = new MmioBus();
  const bus = new PciBus({ pio, mmio });
  bus.register();
  return { pio, mmio, bus };
}

function testDevice() {
  const dev = new PciDevice('test', { vendorId: 0x1234, deviceId: 0x5678, classCode: 0x020000, revision: 3, subsystemVendorId: 0xaaaa, subsystemId: 0xbbbb, interruptPin: 1 });
  const io = new RecordingBar();
  const mem = new RecordingBar();
  const mem64 = new RecordingBar();
  dev.defineBar(0, { kind: 'io', size: 32, name: 'io', handler: io });
  dev.defineBar(1, { kind: 'mem32', size: 4096, name: 'mem', handler: mem });
  dev.defineBar(2, { kind: 'mem64', size: 0x4000, prefetchable: true, name: 'mem64', handler: mem64 });
  return { dev, io, mem, mem64 };
}

/** Config access through 0xCF8/0xCFC as a guest does it. */
function cfgAddr(slot: number, reg: number, fn = 0, bus = 0): number {
  return (0x80000000 | (bus << 16) | (slot << 11) | (fn << 8) | (reg & 0xfc)) >>> 0;
}
function cfgRead(pio: PioBus, slot: number, off: number, size: number): number {
  pio.lookup(0xcf8)!.pioWrite(0xcf8, 4, cfgAddr(slot, off));
  const port = 0xcfc + (off & 3);
  return pio.lookup(port)!.pioRead(port, size);
}
function cfgWrite(pio: PioBus, slot: number, off: number, size: number, v: number): void {
  pio.lookup(0xcf8)!.pioWrite(0xcf8, 4, cfgAddr(slot, off));
  const port = 0xcfc + (off & 3);
  pio.lookup(port)!.pioWrite(port, size, v);
}

test('config space: ids, class, header type and read-only registers', (t) => {
  const c = new PciConfigSpace({ vendorId: 0x1af4, deviceId: 0x1000, classCode: 0x020000, revision: 0, subsystemVendorId: 0x1af4, subsystemId: 1, interruptPin: 1 });
  t.is(c.read(0, 4), 0x10001af4);
  t.is(c.read(8, 4), 0x02000000);
  t.is(c.read(0x0e, 1), 0);
  t.is(c.read(0x2c, 4), 0x00011af4);
  t.is(c.read(PCI_INTERRUPT_PIN, 1), 1);
  c.write(0, 4, 0xffffffff);
  c.write(8, 4, 0xffffffff);
  c.write(PCI_INTERRUPT_PIN, 1, 4);
  t.is(c.read(0, 4), 0x10001af4, 'ids are read-only');
  t.is(c.read(8, 4), 0x02000000, 'class/revision are read-only');
  t.is(c.read(PCI_INTERRUPT_PIN, 1), 1, 'interrupt pin is read-only');
  c.write(PCI_INTERRUPT_LINE, 1, 17);
  t.is(c.read(PCI_INTERRUPT_LINE, 1), 17, 'interrupt line is writable');
});

test('config space: command bits writable, status error bits write-1-to-clear', (t) => {
  const c = new PciConfigSpace({ vendorId: 1, deviceId: 2, classCode: 0 });
  c.write(PCI_COMMAND, 2, 0xffff);
  t.is(c.read(PCI_COMMAND, 2), 0x547, 'only defined command bits stick');
  c.setWord(PCI_STATUS, 0x8000 | PCI_STATUS_CAP_LIST | 0x0100);
  c.write(PCI_STATUS, 2, 0x8000);
  t.is(c.read(PCI_STATUS, 2), PCI_STATUS_CAP_LIST | 0x0100, 'writing 1 clears the error bit only');
  c.write(PCI_STATUS, 2, 0);
  t.is(c.read(PCI_STATUS, 2), PCI_STATUS_CAP_LIST | 0x0100, 'writing 0 changes nothing');
});

test('capability list: linked from 0x34, walkable, CAP_LIST set', (t) => {
  const c = new PciConfigSpace({ vendorId: 1, deviceId: 2, classCode: 0 });
  t.is(c.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST, 0);
  const a = c.addCapability(PCI_CAP_ID_MSIX, 12);
  const b = c.addCapability(PCI_CAP_ID_VNDR, 16);
  const d = c.addCapability(PCI_CAP_ID_VNDR, 20);
  t.truthy(c.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST);
  // Walk as a driver would.
  const seen: Array<[number, number]> = [];
  for (let p = c.read(PCI_CAPABILITY_LIST, 1); p !== 0; p = c.read(p + 1, 1)) seen.push([p, c.read(p, 1)]);
  t.deepEqual(seen, [[a, PCI_CAP_ID_MSIX], [b, PCI_CAP_ID_VNDR], [d, PCI_CAP_ID_VNDR]]);
  t.true(a >= 0x40 && a % 4 === 0 && b % 4 === 0 && d % 4 === 0);
  t.deepEqual(c.findCapabilities(PCI_CAP_ID_VNDR), [b, d]);
  t.throws(() => c.addCapability(PCI_CAP_ID_VNDR, 200));
});

test('BAR sizing: all-ones reads back the size mask with flag bits, then restore', (t) => {
  const { dev } = testDevice();
  const c = dev.config;
  const sizeOf = (off: number) => {
    const saved = dev.configRead(off, 4);
    dev.configWrite(off, 4, 0xffffffff);
    const mask = dev.configRead(off, 4);
    dev.configWrite(off, 4, saved);
    t.is(dev.configRead(off, 4), saved, 'restored');
    return mask >>> 0;
  };
  t.is(sizeOf(PCI_BASE_ADDRESS_0), (~31 & 0xffffffff | 1) >>> 0, 'io: ~(32-1) | IO bit');
  t.is(sizeOf(PCI_BASE_ADDRESS_0 + 4), 0xfffff000, '4 KiB mem32');
  t.is(sizeOf(PCI_BASE_ADDRESS_0 + 8), (0xffffc000 | 0x4 | 0x8) >>> 0, 'mem64 low: mask | 64-bit | prefetchable');
  t.is(sizeOf(PCI_BASE_ADDRESS_0 + 12), 0xffffffff, 'mem64 high half all writable');
  t.is(sizeOf(PCI_BASE_ADDRESS_0 + 16), 0, 'unused BAR reads 0');
  t.is(sizeOf(0x30), 0, 'no expansion ROM');
  t.is(c.read(PCI_BASE_ADDRESS_0 + 8, 4) & 0xf, 0xc);
});

test('bus assigns BARs, enables decode, routes INTA#, and maps the BARs', (t) => {
  const { pio, mmio, bus } = machine();
  const { dev, io, mem, mem64 } = testDevice();
  const slot = bus.plug(dev, 3);
  t.is(slot, 3);
  t.is(dev.barAddress(0), PCI_IO_START);
  t.is(dev.barAddress(1), PCI_MMIO_START);
  t.is(dev.barAddress(2), PCI_MMIO_START + 0x4000, 'mem64 naturally aligned after the 4 KiB BAR');
  t.is(dev.config.getByte(PCI_INTERRUPT_LINE), pciIntxGsi(3));
  t.is(pciIntxGsi(3), 19);
  t.is(cfgRead(pio, 3, PCI_COMMAND, 2) & 3, 3);
  pio.lookup(PCI_IO_START + 4)!.pioRead(PCI_IO_START + 4, 2);
  t.deepEqual(io.log, ['r2@4']);
  const i = mmio.find(PCI_MMIO_START + 0x10);
  t.true(i >= 0);
  mmio.ranges[i].device.mmioWrite(0x10, 4, 0xabc);
  t.deepEqual(mem.log, ['w4@16=abc']);
  const j = mmio.find(PCI_MMIO_START + 0x4000 + 8);
  mmio.ranges[j].device.mmioRead(8, 4);
  t.deepEqual(mem64.log, ['r4@8']);
});

test('command register gates decoding; moving a BAR remaps it', (t) => {
  const { pio, mmio, bus } = machine();
  const { dev } = testDevice();
  bus.plug(dev, 1);
  const memBase = dev.barAddress(1);
  // Memory decode off: the MMIO BARs vanish, I/O stays.
  cfgWrite(pio, 1, PCI_COMMAND, 2, PCI_COMMAND_IO);
  t.is(mmio.find(memBase), -1);
  t.truthy(pio.lookup(PCI_IO_START));
  // I/O off too.
  cfgWrite(pio, 1, PCI_COMMAND, 2, 0);
  t.is(pio.lookup(PCI_IO_START), undefined);
  // Sizing while decode is off maps nothing.
  cfgWrite(pio, 1, PCI_BASE_ADDRESS_0 + 4, 4, 0xffffffff);
  t.is(cfgRead(pio, 1, PCI_BASE_ADDRESS_0 + 4, 4), 0xfffff000);
  // Move the BAR and enable memory: it appears at the new place only.
  cfgWrite(pio, 1, PCI_BASE_ADDRESS_0 + 4, 4, 0xd0000000);
  cfgWrite(pio, 1, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  t.true(mmio.find(0xd0000000) >= 0);
  t.is(mmio.find(memBase), -1);
  t.is(pio.lookup(PCI_IO_START), undefined);
  // Move the I/O BAR (decode on), then back.
  cfgWrite(pio, 1, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_IO);
  cfgWrite(pio, 1, PCI_BASE_ADDRESS_0, 4, 0xd000);
  t.truthy(pio.lookup(0xd000));
  t.is(pio.lookup(PCI_IO_START), undefined);
});

test('hostile BAR values: overlapping or out-of-range placements decode nothing and never throw', (t) => {
  const { pio, mmio, bus } = machine();
  const a = testDevice();
  const b = testDevice();
  bus.plug(a.dev, 1);
  bus.plug(b.dev, 2);
  // Point b's mem BAR at a's: refused.
  t.notThrows(() => cfgWrite(pio, 2, PCI_BASE_ADDRESS_0 + 4, 4, a.dev.barAddress(1)));
  t.is(b.dev.mapFailures, 1);
  const i = mmio.find(a.dev.barAddress(1));
  mmio.ranges[i].device.mmioRead(0, 4);
  t.deepEqual(a.mem.log, ['r4@0'], 'a still owns its range');
  // An I/O BAR onto the PCI config ports or the serial port: refused.
  t.notThrows(() => cfgWrite(pio, 2, PCI_BASE_ADDRESS_0, 4, 0xce0));
  t.is(pio.lookup(0xcf8)!.name, 'pci-config');
  // All-ones left in an I/O BAR with decode on: beyond 64 KiB, not mapped.
  t.notThrows(() => cfgWrite(pio, 2, PCI_BASE_ADDRESS_0, 4, 0xffffffff));
  // A 64-bit BAR far above 4 GiB maps (no RAM there).
  cfgWrite(pio, 2, PCI_BASE_ADDRESS_0 + 12, 4, 0x10);
  t.true(mmio.find(0x10_0000_0000 + (b.dev.barAddress(2) % 0x100000000)) >= 0);
});

test('type-1 access: byte, word, dword at any offset; latch readback; absent functions read all-ones', (t) => {
  const { pio, bus } = machine();
  const { dev } = testDevice();
  bus.plug(dev, 5);
  const cf8 = pio.lookup(0xcf8)!;
  cf8.pioWrite(0xcf8, 4, 0x80002800);
  t.is(cf8.pioRead(0xcf8, 4), 0x80002800, 'latch reads back (Linux pci_check_type1)');
  // Byte writes to 0xCFB (mechanism #2 probing) do not disturb the latch.
  pio.lookup(0xcfb)!.pioWrite(0xcfb, 1, 0x01);
  t.is(cf8.pioRead(0xcf8, 4), 0x80002800);
  t.is(cfgRead(pio, 5, 0, 4), 0x56781234);
  t.is(cfgRead(pio, 5, 0, 2), 0x1234);
  t.is(cfgRead(pio, 5, 2, 2), 0x5678);
  t.is(cfgRead(pio, 5, 1, 1), 0x12);
  t.is(cfgRead(pio, 5, 3, 1), 0x56);
  t.is(cfgRead(pio, 5, 0x0b, 1), 0x02, 'class byte at an odd offset');
  t.is(cfgRead(pio, 5, 0x0a, 2), 0x0200);
  // Word write at odd-lane 0xCFE into the command register's neighbour (status): no change to ids.
  cfgWrite(pio, 5, PCI_INTERRUPT_LINE, 1, 0x0b);
  t.is(cfgRead(pio, 5, PCI_INTERRUPT_LINE, 2), 0x010b, 'line written, pin untouched');
  // Host bridge at 00:00.0.
  t.is(cfgRead(pio, 0, 0, 4), 0x12378086);
  t.is(cfgRead(pio, 0, 0x0a, 2), 0x0600);
  // Nothing at slot 7, at function 1, on bus 1, or with the enable bit clear.
  t.is(cfgRead(pio, 7, 0, 4), 0xffffffff);
  t.is(cfgRead(pio, 7, 0, 2), 0xffff);
  t.is(cfgRead(pio, 7, 0, 1), 0xff);
  cf8.pioWrite(0xcf8, 4, cfgAddr(5, 0, 1));
  t.is(pio.lookup(0xcfc)!.pioRead(0xcfc, 4), 0xffffffff);
  cf8.pioWrite(0xcf8, 4, cfgAddr(5, 0, 0, 1));
  t.is(pio.lookup(0xcfc)!.pioRead(0xcfc, 4), 0xffffffff);
  cf8.pioWrite(0xcf8, 4, cfgAddr(5, 0) & 0x7fffffff);
  t.is(pio.lookup(0xcfc)!.pioRead(0xcfc, 4), 0xffffffff);
  t.notThrows(() => pio.lookup(0xcfc)!.pioWrite(0xcfc, 4, 0));
});

test('type-1 access: the latch\'s low two bits are ORed with the port\'s lane, as on QEMU (kvm-unit-tests latches the byte\'s offset)', (t) => {
  const { pio, bus } = machine();
  const { dev } = testDevice();
  bus.plug(dev, 5);
  const cf8 = pio.lookup(0xcf8)!;
  /** lib/x86/asm/pci.h: outl(0x80000000 | bdf << 8 | reg, 0xCF8), then the access at 0xCFC. */
  const latch = (reg: number) => cf8.pioWrite(0xcf8, 4, (0x80000000 | (5 << 11) | reg) >>> 0);
  const at = (port: number, size: number) => pio.lookup(port)!.pioRead(port, size);
  latch(0x0e);
  t.is(cf8.pioRead(0xcf8, 4), (0x80000000 | (5 << 11) | 0x0e) >>> 0, 'the latch keeps its low bits');
  t.is(at(0xcfc, 1), 0x00, 'header type (0x0e), not the cache line size at 0x0c');
  latch(0x0b);
  t.is(at(0xcfc, 1), 0x02, 'class code byte at 0x0b');
  latch(0x02);
  t.is(at(0xcfc, 2), 0x5678, 'device id word at 0x02');
  latch(0x01);
  t.is(at(0xcfc, 1), 0x12, 'vendor id high byte');
  // Lanes: register (address & 0xff) | (port & 3).
  latch(0x08);
  t.deepEqual([0xcfc, 0xcfd, 0xcfe, 0xcff].map((p) => at(p, 1)), [0x03, 0x00, 0x00, 0x02], 'revision, prog-if, subclass, class');
  t.is(at(0xcfe, 2), 0x0200);
  latch(0x0a);
  t.is(at(0xcfd, 1), 0x02, '0x0a | 1 = 0x0b');
  // Writes the same way: the latency timer (0x0d) through a byte-offset latch, then through a lane.
  latch(0x0d);
  pio.lookup(0xcfc)!.pioWrite(0xcfc, 1, 0x40);
  t.is(cfgRead(pio, 5, 0x0c, 4), 0x00004000, 'only 0x0d changed');
  latch(0x0c);
  pio.lookup(0xcfd)!.pioWrite(0xcfd, 1, 0x20);
  t.is(cfgRead(pio, 5, 0x0d, 1), 0x20);
  latch(0x3d);
  pio.lookup(0xcfc)!.pioWrite(0xcfc, 1, 0x07);
  t.is(cfgRead(pio, 5, PCI_INTERRUPT_LINE, 2), 0x0100 | pciIntxGsi(5), 'the pin (0x3d) is read-only; the line untouched');
  // Past the end of the 256-byte space: all-ones, writes dropped, never a throw.
  latch(0xfe);
  t.is(at(0xcfc, 4), 0xffffffff);
  t.is(at(0xcfd, 2), 0xffff, '0xff + 2 > 256');
  t.is(at(0xcfd, 1), 0x00, '0xff itself is in range');
  t.notThrows(() => pio.lookup(0xcfd)!.pioWrite(0xcfd, 4, 0xffffffff));
});

test('MSI-X capability: control bits reach the shared state; mask, pending and unmask delivery', (t) => {
  const sab = new SharedArrayBuffer(4096);
  const lock = new SpinLock(new Int32Array(sab), 0);
  const shared = new MsixShared(sab, 4, 3, lock);
  const sent: number[][] = [];
  const sink = { signalMsi: (lo: number, hi: number, data: number) => { sent.push([lo, hi, data]); return 1; } };
  const c = new PciConfigSpace({ vendorId: 1, deviceId: 2, classCode: 0 });
  const m = new Msix(c, shared, sink, 1, 0, 0x800);
  const cap = m.capOffset;
  t.is(c.read(cap, 1), PCI_CAP_ID_MSIX);
  t.is(c.read(cap + 2, 2), 2, 'table size - 1');
  t.is(c.read(cap + 4, 4), 1, 'table at BAR1 offset 0');
  t.is(c.read(cap + 8, 4), 0x801, 'PBA at BAR1 offset 0x800');
  // Entries start masked.
  t.is(m.tableRead(12, 4), 1);
  m.tableWrite(16, 4, 0xfee00000);
  m.tableWrite(20, 4, 0);
  m.tableWrite(24, 4, 0x4041);
  // Disabled: nothing happens.
  t.is(shared.notify(1, sink), -1);
  c.write(cap + 2, 2, PCI_MSIX_FLAGS_ENABLE | 0x7ff);
  t.is(c.read(cap + 2, 2), PCI_MSIX_FLAGS_ENABLE | 2, 'only enable/mask bits are writable');
  m.controlWritten();
  t.true(shared.enabled);
  // Masked entry: pending.
  t.is(shared.notify(1, sink), 0);
  t.true(shared.pending(1));
  t.is(m.pbaRead(0, 4), 2);
  t.is(sent.length, 0);
  // Unmask → delivered, pending cleared.
  m.tableWrite(28, 4, 0);
  t.deepEqual(sent, [[0xfee00000, 0, 0x4041]]);
  t.false(shared.pending(1));
  // Function mask: pending again, delivered on clearing it.
  c.write(cap + 2, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
  m.controlWritten();
  t.is(shared.notify(1, sink), 0);
  t.is(sent.length, 1);
  c.write(cap + 2, 2, PCI_MSIX_FLAGS_ENABLE);
  m.controlWritten();
  t.is(sent.length, 2);
  t.is(shared.notify(1, sink), 1);
  t.is(sent.length, 3);
  // Bad accesses are ignored and counted.
  t.is(m.tableRead(2, 4), 0);
  m.tableWrite(0, 2, 5);
  m.tableWrite(3 * 16, 4, 5);
  m.pbaWrite(0, 4, 1);
  t.is(m.badAccesses, 4);
  t.is(shared.notify(7, sink), -1, 'vector beyond the table');
});
