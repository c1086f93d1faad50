// pci-testdev (QEMU's PCI test device, 1b36:0005) as kvm-unit-tests sees it:
// config space through 0xCF8/0xCFC, the test headers read through the BARs
// where the PCI bus placed them, the no-eventfd counter, the KVM_IOEVENTFD
// bindings following the BARs (recorded by a fake VM here; real KVM in the
// hardware lane), and guest accesses out of range being ignored, never thrown.
import test from 'ava';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { MmioBus, PioBus } from '../src/bus/io-bus.js';
import { PciBus, PCI_IO_START } from '../src/devices/pci/pci-bus.js';
import { PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MEMORY } from '../src/devices/pci/config-space.js';
import { createPciDevices } from '../src/devices/virtio/vcpu-devices.js';
import {
  HDR_COUNT, HDR_DATA, HDR_NAME, HDR_OFFSET, HDR_TEST, HDR_WIDTH, PciTestdev, pciTestdevSetup, PCI_TESTDEV_DATAMATCH, PCI_TESTDEV_NOMATCH,
  type IoeventfdSink,
} from '../src/devices/pci-testdev.js';
import { PCI_MMIO_START } from '../src/boot/layout.js';
import { Vm } from '../src/vm.js';
import type { VmHandle } from '../src/kvm/vm.js';
import type { GuestMemory } from '../src/memory/guest-memory.js';
import { eventfd, read, write, close, NativeBuffer, EFD_NONBLOCK, EFD_CLOEXEC } from '../src/sys/libc.js';
import { repoRoot } from './helpers/kvm.js';

const SLOT = 5;

type Binding = Parameters<VmHandle['ioeventfd']>[0];

/** Records KVM_IOEVENTFD calls and keeps the set bound now, refusing what `refuse` says. */
class FakeVm implements IoeventfdSink {
  readonly calls: Binding[] = [];
  readonly bound: Binding[] = [];
  constructor(private readonly refuse: (b: Binding) => boolean = () => false) {}
  ioeventfd(b: Binding): void {
    this.calls.push(b);
    if (this.refuse(b)) throw new Error('KVM_IOEVENTFD: Invalid argument');
    const same = (x: Binding) => x.addr === b.addr && x.len === b.len && x.pio === b.pio && x.datamatch === b.datamatch && x.eventfd === b.eventfd;
    if (b.deassign) {
      const i = this.bound.findIndex(same);
      if (i < 0) throw new Error('KVM_IOEVENTFD deassign: no such binding');
      this.bound.splice(i, 1);
    } else {
      if (this.bound.some(same)) throw new Error('KVM_IOEVENTFD: File exists');
      this.bound.push({ ...b });
    }
  }
}

/** A machine with the PCI bus and a pci-testdev in slot 5, accessed as a guest does. */
function machine(opts: { vm?: IoeventfdSink; eventfd?: number } = {}) {
  const pio = new PioBus();
  const mmio = new MmioBus();
  const bus = new PciBus({ pio, mmio });
  bus.register();
  const dev = new PciTestdev(opts);
  bus.plug(dev, SLOT);
  const cfgSelect = (off: number) => pio.lookup(0xcf8)!.pioWrite(0xcf8, 4, (0x80000000 | (SLOT << 11) | (off & 0xfc)) >>> 0);
  const g = {
    pio, mmio, bus, dev,
    cfgRead(off: number, size: number): number {
      cfgSelect(off);
      const port = 0xcfc + (off & 3);
      return pio.lookup(port)!.pioRead(port, size);
    },
    cfgWrite(off: number, size: number, v: number): void {
      cfgSelect(off);
      const port = 0xcfc + (off & 3);
      pio.lookup(port)!.pioWrite(port, size, v);
    },
    /** A guest MMIO read: 0xffffffff where nothing decodes (as tsvisor's run loop answers unclaimed reads, roughly). */
    memRead(addr: number, size: number): number {
      const i = mmio.find(addr);
      if (i < 0) return 0xffffffff;
      const r = mmio.ranges[i];
      return r.device.mmioRead(addr - r.base, size);
    },
    memWrite(addr: number, size: number, v: number): boolean {
      const i = mmio.find(addr);
      if (i < 0) return false;
      const r = mmio.ranges[i];
      r.device.mmioWrite(addr - r.base, size, v);
      return true;
    },
    ioRead(port: number, size: number): number {
      return pio.lookup(port)?.pioRead(port, size) ?? 0xffffffff;
    },
    ioWrite(port: number, size: number, v: number): boolean {
      const d = pio.lookup(port);
      d?.pioWrite(port, size, v);
      return d !== undefined;
    },
    /** BAR0 and BAR1 as the suite's PCI scan reads them (flag bits masked). */
    bars(): { mem: number; io: number } {
      return { mem: (g.cfgRead(PCI_BASE_ADDRESS_0, 4) & ~0xf) >>> 0, io: (g.cfgRead(PCI_BASE_ADDRESS_0 + 4, 4) & ~3) >>> 0 };
    },
  };
  return g;
}
type Machine = ReturnType<typeof machine>;

/** One header as the guest reads it after selecting test `n` (byte, dword and string reads, as x86/vmexit's pci_next does). */
function readHeader(g: Machine, io: boolean, n: number) {
  const { mem, io: port } = g.bars();
  const rd = io ? (off: number, size: number) => g.ioRead(port + off, size) : (off: number, size: number) => g.memRead(mem + off, size);
  const wr = io ? (off: number, size: number, v: number) => g.ioWrite(port + off, size, v) : (off: number, size: number, v: number) => g.memWrite(mem + off, size, v);
  wr(HDR_TEST, 1, n);
  let name = '';
  for (let i = 0; i < 64; i++) {
    const c = rd(HDR_NAME + i, 1);
    if (c === 0) break;
    name += String.fromCharCode(c);
  }
  return { test: rd(HDR_TEST, 1), width: rd(HDR_WIDTH, 1), offset: rd(HDR_OFFSET, 4), data: rd(HDR_DATA, 4), count: rd(HDR_COUNT, 4), name, rd, wr };
}

test('config space: Red Hat 1b36:0005, class as QEMU\'s (00ff), QEMU subsystem ids, no interrupt pin', (t) => {
  const g = machine();
  t.is(g.cfgRead(0x00, 4), 0x00051b36);
  t.is(g.cfgRead(0x08, 4), 0x00ff0000, 'revision 0, prog-if 0, subclass 0xff, base class 0x00');
  t.is(g.cfgRead(0x0a, 2), 0x00ff);
  t.is(g.cfgRead(0x0e, 1), 0, 'type-0 header');
  t.is(g.cfgRead(0x2c, 4), 0x11001af4);
  t.is(g.cfgRead(0x3d, 1), 0, 'no INTx pin');
  t.is(g.cfgRead(0x34, 1), 0, 'no capabilities');
  // BARs as firmware left them, decoding enabled.
  const cmd = g.cfgRead(PCI_COMMAND, 2);
  t.truthy(cmd & PCI_COMMAND_MEMORY);
  t.truthy(cmd & PCI_COMMAND_IO);
  const bar0 = g.cfgRead(PCI_BASE_ADDRESS_0, 4);
  const bar1 = g.cfgRead(PCI_BASE_ADDRESS_0 + 4, 4);
  t.is(bar0 & 0xf, 0, 'BAR0: 32-bit memory, not prefetchable');
  t.true(bar0 >>> 0 >= PCI_MMIO_START && bar0 % 4096 === 0);
  t.is(bar1 & 3, 1, 'BAR1: I/O');
  t.true((bar1 & ~3) >= PCI_IO_START && (bar1 & ~3) % 256 === 0);
  for (let i = 2; i < 6; i++) t.is(g.cfgRead(PCI_BASE_ADDRESS_0 + 4 * i, 4), 0, `BAR${i} unused`);
});

test('BAR sizing as kvm-unit-tests\' pci_bar_size does it: 4 KiB memory, 256 B I/O, then restored', (t) => {
  const g = machine();
  for (const [bar, expect] of [[0, 0xfffff000], [1, 0xffffff01]] as const) {
    const off = PCI_BASE_ADDRESS_0 + 4 * bar;
    const saved = g.cfgRead(off, 4);
    g.cfgWrite(off, 4, 0xffffffff);
    t.is(g.cfgRead(off, 4) >>> 0, expect);
    g.cfgWrite(off, 4, saved);
    t.is(g.cfgRead(off, 4), saved);
  }
  // Still decoding where it was.
  t.is(readHeader(g, false, 0).name, 'mmio-no-eventfd');
  t.is(readHeader(g, true, 0).name, 'portio-no-eventfd');
});

test('the six headers, as QEMU lays them out, read through both BARs', (t) => {
  const g = machine();
  const expected = [
    { io: false, n: 0, test: 0, offset: 2048, data: PCI_TESTDEV_DATAMATCH, name: 'mmio-no-eventfd' },
    { io: false, n: 1, test: 1, offset: 2049, data: PCI_TESTDEV_NOMATCH, name: 'mmio-wildcard-eventfd' },
    { io: false, n: 2, test: 2, offset: 2050, data: PCI_TESTDEV_DATAMATCH, name: 'mmio-datamatch-eventfd' },
    { io: true, n: 0, test: 3, offset: 131, data: PCI_TESTDEV_DATAMATCH, name: 'portio-no-eventfd' },
    { io: true, n: 1, test: 4, offset: 132, data: PCI_TESTDEV_NOMATCH, name: 'portio-wildcard-eventfd' },
    { io: true, n: 2, test: 5, offset: 133, data: PCI_TESTDEV_DATAMATCH, name: 'portio-datamatch-eventfd' },
  ];
  for (const e of expected) {
    const h = readHeader(g, e.io, e.n);
    t.deepEqual({ test: h.test, width: h.width, offset: h.offset, data: h.data, count: h.count, name: h.name }, { test: e.test, width: 1, offset: e.offset, data: e.data, count: 0, name: e.name }, e.name);
    // Wider reads are little-endian byte reads; the padding reads 0.
    t.is(h.rd(0, 4), e.test | (1 << 8));
    t.is(h.rd(HDR_NAME, 4), (e.name.charCodeAt(0) | (e.name.charCodeAt(1) << 8) | (e.name.charCodeAt(2) << 16) | (e.name.charCodeAt(3) << 24)) >>> 0);
  }
  // Test 3 and up: nothing selected, the header reads 0 (vmexit's end: width 0).
  const end = readHeader(g, false, 3);
  t.deepEqual([end.width, end.offset, end.name], [0, 0, '']);
  t.is(readHeader(g, true, 0xff).width, 0);
});

test('a no-eventfd write counts (16 of them, as lib/pci-testdev.c checks); other values and addresses do not', (t) => {
  for (const io of [false, true]) {
    const g = machine();
    const h = readHeader(g, io, 0);
    for (let i = 0; i < 16; i++) h.wr(h.offset, 1, h.data);
    t.is(h.rd(HDR_COUNT, 4), 16, io ? 'portio' : 'mmio');
    h.wr(h.offset, 1, 0x12);
    h.wr(h.offset + 1, 1, h.data);
    h.wr(h.offset - 1, 1, h.data);
    t.is(h.rd(HDR_COUNT, 4), 16, 'wrong value or address: not counted');
    // A wider write is that many byte writes: its first byte is the one at the offset.
    h.wr(h.offset, 2, 0x1100 | h.data);
    h.wr(h.offset, 4, 0x12345600);
    t.is(h.rd(HDR_COUNT, 4), 17);
    // Selecting the test again starts its count over.
    h.wr(HDR_TEST, 1, 0);
    t.is(h.rd(HDR_COUNT, 4), 0);
    // Deselected: writes at the old offset change nothing, reads are 0.
    h.wr(HDR_TEST, 1, 3);
    h.wr(h.offset, 1, h.data);
    t.is(h.rd(HDR_COUNT, 4), 0);
    t.is(g.dev.selected, null);
  }
});

test('without KVM the eventfd tests exit: wildcard counts any value, datamatch only its own', (t) => {
  const g = machine();
  const w = readHeader(g, false, 1);
  w.wr(w.offset, 1, 0x00);
  w.wr(w.offset, 1, 0xce);
  w.wr(w.offset, 4, 0xffffffff);
  t.is(w.rd(HDR_COUNT, 4), 3);
  const d = readHeader(g, true, 2);
  d.wr(d.offset, 1, 0xce);
  d.wr(d.offset, 1, 0xfa);
  t.is(d.rd(HDR_COUNT, 4), 1);
});

test('guest accesses out of range are ignored and never throw', (t) => {
  const g = machine();
  const { mem, io } = g.bars();
  // Nothing selected yet: every byte reads 0.
  for (let off = 0; off < 4096; off += 61) t.is(g.memRead(mem + off, 4), 0);
  for (let off = 0; off < 256; off += 7) t.is(g.ioRead(io + off, 1), 0);
  const h = readHeader(g, false, 2);
  // Past the header (and its last byte, the NUL) reads 0, also for a read that straddles the end.
  const len = HDR_NAME + 'mmio-datamatch-eventfd'.length + 1;
  t.is(h.rd(len - 1, 1), 0);
  t.is(h.rd(len, 4), 0);
  t.is(h.rd(4095, 1), 0);
  t.is(h.rd(len - 3, 4), 'f'.charCodeAt(0) | ('d'.charCodeAt(0) << 8), '"fd", the NUL, then nothing');
  // Writes to the header are not stored.
  h.wr(HDR_OFFSET, 4, 0xdeadbeef);
  h.wr(HDR_COUNT, 4, 77);
  t.is(h.rd(HDR_OFFSET, 4), 2050);
  t.is(h.rd(HDR_COUNT, 4), 0);
  // A hail of random accesses through both windows, including the last bytes.
  let x = 12345;
  const rnd = (n: number) => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8) % n;
  t.notThrows(() => {
    for (let i = 0; i < 20000; i++) {
      const size = [1, 2, 4][rnd(3)];
      const io2 = rnd(2) === 1;
      const off = rnd(io2 ? 256 : 4096) & ~(size - 1);
      if (rnd(2)) {
        if (io2) g.ioWrite(io + off, size, rnd(0x1000000));
        else g.memWrite(mem + off, size, rnd(0x1000000));
      } else if (io2) {
        g.ioRead(io + off, size);
      } else {
        g.memRead(mem + off, size);
      }
    }
  });
  // Whatever was selected last, its header is intact.
  const sel = g.dev.selected;
  if (sel) t.is(new TextDecoder().decode(sel.header.subarray(HDR_NAME, sel.header.length - 1)), `${sel.space}-${sel.kind}`);
  // The device directly, with offsets a bus would never pass.
  const bar = g.dev.barHandler(0)!;
  t.notThrows(() => {
    bar.write(-1, 4, 1);
    bar.write(1 << 20, 4, 1);
    bar.read(-8, 4);
    bar.read(1 << 20, 4);
  });
});

test('ioeventfd: bound while an eventfd test is selected, as QEMU binds them (MMIO wildcard any-length, datamatch 0xfa)', (t) => {
  const vm = new FakeVm();
  const g = machine({ vm, eventfd: 42 });
  const { mem, io } = g.bars();
  readHeader(g, false, 0);
  t.deepEqual(vm.bound, [], 'no-eventfd: nothing bound');
  readHeader(g, false, 1);
  t.deepEqual(vm.bound, [{ addr: mem + 2049, len: 0, eventfd: 42 }]);
  readHeader(g, false, 2);
  t.deepEqual(vm.bound, [{ addr: mem + 2050, len: 1, eventfd: 42, datamatch: 0xfa }]);
  readHeader(g, true, 1);
  t.deepEqual(vm.bound, [{ addr: io + 132, len: 1, eventfd: 42, pio: true, datamatch: undefined }]);
  readHeader(g, true, 2);
  t.deepEqual(vm.bound, [{ addr: io + 133, len: 1, eventfd: 42, pio: true, datamatch: 0xfa }]);
  readHeader(g, true, 3);
  t.deepEqual(vm.bound, [], 'deselected: unbound');
  t.is(g.dev.bindFailures, 0);
});

test('ioeventfd: a moved BAR is rebound, a disabled one unbound, re-enabled bound again', (t) => {
  const vm = new FakeVm();
  const g = machine({ vm, eventfd: 7 });
  const { mem, io } = g.bars();
  readHeader(g, false, 2);
  t.deepEqual(vm.bound.map((b) => b.addr), [mem + 2050]);
  // The guest moves BAR0 by 1 MiB: the window and the binding follow.
  const moved = mem + 0x100000;
  g.cfgWrite(PCI_BASE_ADDRESS_0, 4, moved);
  t.deepEqual(vm.bound.map((b) => b.addr), [moved + 2050]);
  t.is(g.memRead(mem + HDR_NAME, 1), 0xffffffff, 'nothing at the old place');
  t.is(g.memRead(moved + HDR_NAME, 1), 'm'.charCodeAt(0));
  // BAR sizing moves it to 0xfffff000 and back.
  g.cfgWrite(PCI_BASE_ADDRESS_0, 4, 0xffffffff);
  t.deepEqual(vm.bound.map((b) => b.addr), [0xfffff000 + 2050]);
  g.cfgWrite(PCI_BASE_ADDRESS_0, 4, moved);
  t.deepEqual(vm.bound.map((b) => b.addr), [moved + 2050]);
  // Memory decode off: unbound (the I/O test would stay); on: bound again.
  const cmd = g.cfgRead(PCI_COMMAND, 2);
  g.cfgWrite(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MEMORY);
  t.deepEqual(vm.bound, []);
  t.is(g.memRead(moved, 1), 0xffffffff);
  g.cfgWrite(PCI_COMMAND, 2, cmd);
  t.deepEqual(vm.bound.map((b) => b.addr), [moved + 2050]);
  // The I/O BAR: moved, then I/O decode off.
  readHeader(g, true, 1);
  t.deepEqual(vm.bound.map((b) => [b.addr, b.pio]), [[io + 132, true]]);
  g.cfgWrite(PCI_BASE_ADDRESS_0 + 4, 4, 0xe000 | 1);
  t.deepEqual(vm.bound.map((b) => b.addr), [0xe000 + 132]);
  t.is(g.ioRead(0xe000 + HDR_NAME, 1), 'p'.charCodeAt(0));
  t.is(g.ioRead(io + HDR_NAME, 1), 0xffffffff, 'the old ports are free');
  g.cfgWrite(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_IO);
  t.deepEqual(vm.bound, []);
  // Every deassign matched an assign (the fake throws otherwise), and nothing failed.
  t.is(g.dev.bindFailures, 0);
});

test('ioeventfd refused: any-length falls back to one byte; a refusal leaves the write on the exit path, counted', (t) => {
  const noAnyLength = new FakeVm((b) => b.len === 0 && !b.deassign);
  const g = machine({ vm: noAnyLength, eventfd: 3 });
  const { mem } = g.bars();
  readHeader(g, false, 1);
  t.deepEqual(noAnyLength.bound, [{ addr: mem + 2049, len: 1, eventfd: 3 }]);
  readHeader(g, false, 3);
  t.deepEqual(noAnyLength.bound, []);

  const refusing = new FakeVm(() => true);
  const g2 = machine({ vm: refusing, eventfd: 3 });
  const h = readHeader(g2, true, 2);
  t.is(g2.dev.bindFailures, 1);
  t.is(g2.dev.binding, null);
  h.wr(h.offset, 1, 0xfa);
  t.is(h.rd(HDR_COUNT, 4), 1, 'the exit reached the device and counted');
  t.notThrows(() => readHeader(g2, false, 0));
});

test('the eventfd KVM signals is drained when a test is selected', (t) => {
  const fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  t.true(fd >= 0);
  const buf = new NativeBuffer(8);
  try {
    const g = machine({ vm: new FakeVm(), eventfd: fd });
    buf.dv.setBigUint64(0, 5n, true);
    t.is(write(fd, buf.address, 8), 8);
    readHeader(g, false, 1);
    t.is(read(fd, buf.address, 8), -1, 'empty (EAGAIN)');
  } finally {
    close(fd);
  }
});

test('createPciDevices builds a pci-testdev spec from the main thread into its slot', (t) => {
  const pio = new PioBus();
  const mmio = new MmioBus();
  const setup = pciTestdevSetup(SLOT);
  try {
    t.is(setup.spec.kind, 'pci-testdev');
    t.true((setup.spec.options?.eventfd as number) >= 0);
    const { bus } = createPciDevices([setup.spec], { pio, mmio }, { mem: {} as GuestMemory, irq: { irqLine: () => {}, signalMsi: () => 0 } });
    const dev = bus.slots[SLOT];
    t.true(dev instanceof PciTestdev);
    t.is(dev!.config.getDword(0), 0x00051b36);
    t.true(dev!.barMapped(0) >= PCI_MMIO_START);
    t.true(dev!.barMapped(1) >= PCI_IO_START);
  } finally {
    setup.close();
    setup.close();
  }
});

test('Vm.boot refuses an unknown device name before touching KVM or the kernel (status 2)', async (t) => {
  const e = await t.throwsAsync(Vm.boot({ kernel: '/nonexistent/kernel', devices: ['nosuch' as 'pci-testdev'] }));
  t.regex(e!.message, /unknown device "nosuch"/);
  t.is((e as { exitCode?: number }).exitCode, 2);
});

test('tsvisor run --device nosuch: one line naming it and the known devices, status 2', async (t) => {
  const r = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const child = execFile(process.execPath, [join(repoRoot, 'bin/tsvisor.js'), 'run', '--kernel', '/nonexistent/kernel', '--device', 'pci-testdev', '--device', 'nosuch'], { encoding: 'utf8', timeout: 60_000 }, (_e, _out, stderr) => resolve({ status: child.exitCode, stderr }));
  });
  t.is(r.status, 2, r.stderr);
  t.regex(r.stderr, /^tsvisor: [^\n]+ \([^\n]+\)\n$/, 'one line, ending with the fix in parentheses');
  t.true(r.stderr.includes('nosuch'), r.stderr);
  t.true(r.stderr.includes('known devices: pci-testdev'), r.stderr);
  t.notRegex(r.stderr, /\bat .*:\d+:\d+|internal error/);
});
