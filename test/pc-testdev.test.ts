// pc-testdev (QEMU's ISA test device) as kvm-unit-tests drives it, on the
// buses as the vCPU thread registers it: the scratch register at every width
// and from every byte, the byte-wise window onto the same register, the flush
// port, IRQ lines through a recording sink (lines past 23 ignored), the 64 KiB
// RAM-like MMIO window, and guest accesses with bad sizes or offsets ignored,
// never thrown. The page flush's madvise runs on a real shared mapping here;
// what KVM does with it is exercised by kvm-unit-tests' eventinj in the lane.
import test from 'ava';
import { MmioBus, PioBus } from '../src/bus/io-bus.js';
import {
  attachPcTestdev, madvisePageFlusher, PcTestdev, PC_TESTDEV_IOMEM_BASE, PC_TESTDEV_IOMEM_SIZE, PC_TESTDEV_IRQ_LINES,
  type IrqLineSink,
} from '../src/devices/pc-testdev.js';
import { Vm } from '../src/vm.js';
import { TsvisorError } from '../src/errors.js';
import { PCI_MAX_SLOTS } from '../src/devices/pci/pci-bus.js';
import * as libc from '../src/sys/libc.js';

class IrqRecorder implements IrqLineSink {
  readonly calls: Array<[number, 0 | 1]> = [];
  failNext = false;
  irqLine(gsi: number, level: 0 | 1): void {
    if (this.failNext) {
      this.failNext = false;
      throw new Error('KVM_IRQ_LINE: Invalid argument');
    }
    this.calls.push([gsi, level]);
  }
}

/** The device on fresh buses, accessed as the run loop does (unclaimed: all-ones, write dropped). */
function machine(flush?: (gpa: number) => boolean) {
  const pio = new PioBus();
  const mmio = new MmioBus();
  const irq = new IrqRecorder();
  const flushed: number[] = [];
  const dev = attachPcTestdev({ pio, mmio }, irq, flush ?? ((gpa) => (flushed.push(gpa), true)));
  const g = {
    pio, mmio, irq, dev, flushed,
    in(port: number, size: number): number {
      return pio.lookup(port)?.pioRead(port, size) ?? 0xffffffff;
    },
    out(port: number, size: number, v: number): void {
      pio.lookup(port)?.pioWrite(port, size, v);
    },
    read(addr: number, size: number): number {
      const i = mmio.find(addr);
      if (i < 0) return 0xffffffff;
      return mmio.ranges[i].device.mmioRead(addr - mmio.ranges[i].base, size);
    },
    write(addr: number, size: number, v: number): void {
      const i = mmio.find(addr);
      if (i >= 0) mmio.ranges[i].device.mmioWrite(addr - mmio.ranges[i].base, size, v);
    },
  };
  return g;
}

test('claims 0xe0-0xeb, 0x2000-0x2017 and 0xff000000-0xff00ffff, nothing around them', (t) => {
  const g = machine();
  for (let p = 0xe0; p <= 0xeb; p++) t.is(g.pio.lookup(p)?.name, 'pc-testdev', `0x${p.toString(16)}`);
  for (let p = 0x2000; p < 0x2018; p++) t.is(g.pio.lookup(p)?.name, 'pc-testdev', `0x${p.toString(16)}`);
  for (const p of [0xdf, 0xec, 0x1fff, 0x2018]) t.is(g.pio.lookup(p), undefined, `0x${p.toString(16)}`);
  t.is(g.mmio.find(PC_TESTDEV_IOMEM_BASE - 1), -1);
  t.not(g.mmio.find(PC_TESTDEV_IOMEM_BASE), -1);
  t.not(g.mmio.find(PC_TESTDEV_IOMEM_BASE + PC_TESTDEV_IOMEM_SIZE - 1), -1);
  t.is(g.mmio.find(PC_TESTDEV_IOMEM_BASE + PC_TESTDEV_IOMEM_SIZE), -1);
});

test('scratch register at 0xe0: dword, word and byte writes and reads at every offset, little-endian', (t) => {
  const g = machine();
  t.is(g.in(0xe0, 4), 0, 'starts at 0');
  g.out(0xe0, 4, 0x12345678);
  t.is(g.in(0xe0, 4), 0x12345678);
  t.is(g.in(0xe0, 2), 0x5678);
  t.is(g.in(0xe2, 2), 0x1234);
  t.deepEqual([0xe0, 0xe1, 0xe2, 0xe3].map((p) => g.in(p, 1)), [0x78, 0x56, 0x34, 0x12]);
  t.is(g.in(0xe1, 2), 0x3456, 'an unaligned word');
  g.out(0xe1, 1, 0xab);
  t.is(g.in(0xe0, 4), 0x1234ab78, 'a byte write changes its byte only');
  g.out(0xe2, 2, 0xcdef);
  t.is(g.in(0xe0, 4), 0xcdefab78, 'a word write changes its half only');
  g.out(0xe0, 1, 0x1ff);
  t.is(g.in(0xe0, 1), 0xff, 'a byte write carries 8 bits');
  g.out(0xe0, 4, 0xffffffff);
  t.is(g.in(0xe0, 4), 0xffffffff, 'all ones, unsigned');
});

test('0xe8-0xeb is the same register (QEMU backs both with one word), taken a byte at a time', (t) => {
  const g = machine();
  g.out(0xe0, 4, 0xa1b2c3d4);
  t.is(g.in(0xe8, 4), 0xa1b2c3d4);
  g.out(0xe8, 4, 0x01020304);
  t.is(g.in(0xe0, 4), 0x01020304);
  g.out(0xea, 1, 0x99);
  t.deepEqual([0xe8, 0xe9, 0xea, 0xeb].map((p) => g.in(p, 1)), [0x04, 0x03, 0x99, 0x01]);
  t.is(g.in(0xe2, 1), 0x99);
  t.is(g.in(0xe9, 2), 0x9903);
});

test('the emulator test\'s string I/O: rep outsb leaves the last byte, and a byte read gives it back', (t) => {
  const g = machine();
  for (const c of 'abcdefghijklmnop') g.out(0xe0, 1, c.charCodeAt(0));
  t.is(g.in(0xe0, 1), 'p'.charCodeAt(0));
  g.out(0xe0, 2, 0x9999);
  t.is(g.in(0xe0, 1), 0x99);
});

test('accesses running past a register: bytes on the flush ports are dropped, bytes past the device read 0xff', (t) => {
  const g = machine();
  g.out(0xe0, 4, 0);
  g.out(0xe2, 4, 0x44332211);
  t.is(g.in(0xe0, 4), 0x22110000, 'the upper half written, the rest dropped');
  t.deepEqual(g.flushed, [], 'no flush from bytes that land on 0xe4');
  t.is(g.in(0xe2, 4), 0x00002211, 'the flush ports read 0');
  t.is(g.in(0xea, 4), 0xffff2211, '0xec and 0xed are not the device\'s');
  g.out(0xeb, 4, 0xaabbccdd);
  t.is(g.in(0xe0, 4), 0xdd110000, 'only 0xeb kept');
});

test('flush page: a dword write at 0xe4 flushes the page holding that address; narrower or offset writes do not', (t) => {
  const g = machine();
  g.out(0xe4, 4, 0x00123abc);
  g.out(0xe4, 4, 0xfffff001);
  g.out(0xe4, 2, 0x5000);
  g.out(0xe4, 1, 0x60);
  g.out(0xe5, 1, 0x70);
  g.out(0xe6, 2, 0x8000);
  t.deepEqual(g.flushed, [0x00123000, 0xfffff000]);
  t.is(g.dev.flushes, 2);
  t.is(g.in(0xe4, 4), 0, 'reads 0');
  t.is(g.in(0xe0, 4), 0, 'the scratch register is untouched');
});

test('flush page: a page that is not RAM, or a flusher that fails, is counted, not thrown', (t) => {
  const refusing = machine(() => false);
  t.notThrows(() => refusing.out(0xe4, 4, 0xfec00000));
  t.is(refusing.dev.flushesRefused, 1);
  const throwing = machine(() => {
    throw new Error('madvise: Invalid argument');
  });
  t.notThrows(() => throwing.out(0xe4, 4, 0x1000));
  t.is(throwing.dev.flushesRefused, 1);
  t.is(throwing.dev.flushes, 0);
});

test('IRQ lines: a byte write at 0x2000 + n sets line n to !!value; reads give 0', (t) => {
  const g = machine();
  g.out(0x200e, 1, 1);
  g.out(0x200e, 1, 0);
  g.out(0x2000, 1, 0x80);
  g.out(0x2017, 1, 0xff);
  g.out(0x2004, 1, 0);
  t.deepEqual(g.irq.calls, [[14, 1], [14, 0], [0, 1], [23, 1], [4, 0]]);
  t.is(g.in(0x200e, 1), 0);
  t.is(g.in(0x2000, 4), 0);
});

test('IRQ lines: a wide write sets one line per byte, and lines past 23 are ignored', (t) => {
  const g = machine();
  g.out(0x2000, 2, 0x0100);
  t.deepEqual(g.irq.calls, [[0, 0], [1, 1]]);
  g.irq.calls.length = 0;
  g.out(0x2016, 4, 0x01010101);
  t.deepEqual(g.irq.calls, [[22, 1], [23, 1]], 'lines 24 and 25 do not exist');
  t.true(g.irq.calls.every(([line]) => line < PC_TESTDEV_IRQ_LINES));
  // Called directly with ports the bus would never route here (as a fuzzer might).
  g.irq.calls.length = 0;
  g.dev.pioWrite(0x2018, 1, 1);
  g.dev.pioWrite(0x20ff, 1, 1);
  g.dev.pioWrite(0x1fff, 1, 1);
  t.deepEqual(g.irq.calls, []);
});

test('IRQ lines: KVM refusing KVM_IRQ_LINE is counted, the guest sees nothing', (t) => {
  const g = machine();
  g.irq.failNext = true;
  t.notThrows(() => g.out(0x2001, 1, 1));
  t.is(g.dev.irqFailures, 1);
  g.out(0x2001, 1, 1);
  t.deepEqual(g.irq.calls, [[1, 1]]);
});

test('MMIO window: reads give what was written, at every width and offset, little-endian', (t) => {
  const g = machine();
  const base = PC_TESTDEV_IOMEM_BASE;
  t.is(g.read(base, 4), 0, 'starts zeroed');
  g.write(base, 4, 0xdeadbeef);
  t.is(g.read(base, 4), 0xdeadbeef);
  t.is(g.read(base, 2), 0xbeef);
  t.is(g.read(base + 2, 2), 0xdead);
  t.is(g.read(base + 3, 1), 0xde);
  t.is(g.read(base + 1, 4), 0x00deadbe, 'an unaligned dword');
  g.write(base + 1, 1, 0x11);
  t.is(g.read(base, 4), 0xdead11ef);
  g.write(base + 4095, 2, 0x88aa);
  t.deepEqual([g.read(base + 4095, 1), g.read(base + 4096, 1)], [0xaa, 0x88], 'across a page');
  const last = base + PC_TESTDEV_IOMEM_SIZE - 4;
  g.write(last, 4, 0x01020304);
  t.is(g.read(last, 4), 0x01020304, 'the last dword');
  // The run loop gives an 8-byte access as two dwords, low first.
  g.write(base + 0x100, 4, 0x33221100);
  g.write(base + 0x104, 4, 0x77665544);
  t.is(g.read(base + 0x102, 4), 0x55443322);
  t.is(g.dev.iomem[0x107], 0x77);
});

test('bad sizes and offsets: reads give all-ones, writes change nothing, nothing throws', (t) => {
  const g = machine();
  g.out(0xe0, 4, 0x12345678);
  g.write(PC_TESTDEV_IOMEM_BASE, 4, 0xcafef00d);
  const before = Uint8Array.from(g.dev.iomem);
  for (const size of [0, 3, 5, 8, -1, 1.5, NaN]) {
    t.is(g.dev.pioRead(0xe0, size), 0xffffffff, `pio read size ${size}`);
    t.notThrows(() => g.dev.pioWrite(0xe0, size, 0));
    t.notThrows(() => g.dev.pioWrite(0x2000, size, 1));
    t.notThrows(() => g.dev.pioWrite(0xe4, size, 0x1000));
    t.is(g.dev.mmioRead(0, size), 0xffffffff, `mmio read size ${size}`);
    t.notThrows(() => g.dev.mmioWrite(0, size, 0));
  }
  for (const off of [-1, PC_TESTDEV_IOMEM_SIZE, PC_TESTDEV_IOMEM_SIZE - 1, PC_TESTDEV_IOMEM_SIZE - 3, 2 ** 40, 0.5, NaN]) {
    t.is(g.dev.mmioRead(off, 4), 0xffffffff, `mmio read at ${off}`);
    t.notThrows(() => g.dev.mmioWrite(off, 4, 0));
  }
  t.is(g.dev.mmioRead(PC_TESTDEV_IOMEM_SIZE - 1, 1), 0, 'the last byte itself is in range');
  for (const port of [NaN, 1.5, -1, 0x10000]) {
    t.is(g.dev.pioRead(port, 1) & 0xff, 0xff, `port ${port} reads as unclaimed`);
    t.notThrows(() => g.dev.pioWrite(port, 1, 0));
  }
  t.is(g.dev.register, 0x12345678, 'the register is unchanged');
  t.deepEqual(g.dev.iomem, before, 'the window is unchanged');
  t.deepEqual(g.irq.calls, []);
  t.deepEqual(g.flushed, []);
});

test('a second device on the same buses is refused (fixed ports)', (t) => {
  const g = machine();
  t.throws(() => attachPcTestdev({ pio: g.pio, mmio: g.mmio }, g.irq), { message: /claimed by pc-testdev and pc-testdev/ });
  t.true(new PcTestdev(g.irq) instanceof PcTestdev);
});

test('madvisePageFlusher: the page keeps its contents (shared anonymous memory), addresses outside RAM are refused', (t) => {
  const size = 4 * 4096;
  const address = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE);
  t.teardown(() => libc.munmap(address, size));
  const bytes = new Uint8Array(libc.view(address, size));
  for (let i = 0; i < size; i++) bytes[i] = (i * 7) & 0xff;
  const flush = madvisePageFlusher([{ gpa: 0x10000, size, hostAddress: address }]);
  t.true(flush(0x11000));
  t.true(flush(0x10000));
  t.true(flush(0x13000), 'the last page');
  t.false(flush(0x14000), 'just past the end');
  t.false(flush(0xf000), 'just before the start');
  t.false(flush(0xfec00000), 'the IOAPIC');
  t.true(bytes.every((b, i) => b === ((i * 7) & 0xff)), 'contents intact');
  const dev = new PcTestdev(new IrqRecorder(), flush);
  dev.pioWrite(0xe4, 4, 0x12345);
  dev.pioWrite(0xe4, 4, 0x80000000);
  t.deepEqual([dev.flushes, dev.flushesRefused], [1, 1]);
  t.true(bytes.every((b, i) => b === ((i * 7) & 0xff)), 'contents intact after the device flushed');
});

test('Vm.boot: pc-testdev at most once, and --pit-reinject only on or off (refused before KVM is opened)', async (t) => {
  const kvmPath = '/nonexistent/kvm';
  const twice = await t.throwsAsync(Vm.boot({ kernel: new Uint8Array(16), devices: ['pc-testdev', 'pci-testdev', 'pc-testdev'], kvmPath }), { instanceOf: TsvisorError });
  t.regex(twice!.message, /--device pc-testdev is given 2 times/);
  const reinject = await t.throwsAsync(Vm.boot({ kernel: new Uint8Array(16), pitReinject: 'maybe' as 'on', kvmPath }), { instanceOf: TsvisorError });
  t.regex(reinject!.message, /--pit-reinject maybe is not on or off/);
  // pc-testdev takes no PCI slot: a full bus of pci-testdevs beside it passes the device checks (and fails on the kernel).
  const full = Array.from({ length: PCI_MAX_SLOTS - 5 }, () => 'pci-testdev' as const);
  const notKernel = await t.throwsAsync(Vm.boot({ kernel: new Uint8Array(16), devices: [...full, 'pc-testdev'], kvmPath }), { instanceOf: TsvisorError });
  t.notRegex(notKernel!.message, /do not fit/);
  const tooMany = await t.throwsAsync(Vm.boot({ kernel: new Uint8Array(16), devices: [...full, 'pci-testdev'], kvmPath }), { instanceOf: TsvisorError });
  t.regex(tooMany!.message, /28 PCI devices do not fit on the PCI bus/);
});
