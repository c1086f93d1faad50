// QEMU's ISA test device (pc-testdev), which kvm-unit-tests' x86 tests drive
// to reach an emulated I/O port, an emulated MMIO range and the interrupt
// controllers' input lines from inside the guest (x86/run gives QEMU
// `-device pc-testdev`). What it answers, all on the vCPU thread:
//
//   ports 0xe0-0xe3       a 32-bit scratch register, little-endian, read and
//                         written at any width from any of its bytes
//   ports 0xe4-0xe7       flush page: a 32-bit write of a guest physical
//                         address makes KVM forget its mapping of that page,
//                         so the guest's next access to it faults into KVM
//                         (see `madvisePageFlusher`); reads give 0
//   ports 0xe8-0xeb       the same scratch register again, as QEMU backs both
//                         with one word (there it is taken a byte at a time)
//   ports 0x2000-0x2017   IRQ line n = port - 0x2000: a write sets the ISA /
//                         IOAPIC line n (KVM_IRQ_LINE) to 1 when the byte is
//                         not 0, else 0; reads give 0
//   MMIO 0xff000000       64 KiB that behave as RAM but exit on every access
//                         (the emulator test's "IORAM"): reads give what was
//                         written, at any width
//
// A port access is taken a byte at a time, each byte by the register its port
// belongs to, which is what QEMU's memory core makes of an access wider than
// a region allows or running past its end: `outw 0x2000` sets lines 0 and 1,
// `outl 0xe2` writes the register's upper half and drops the two bytes that
// land on the flush ports (which take only whole 32-bit writes at 0xe4).
// Bytes past the device's ports read as an unclaimed port (0xff) and are
// dropped. The guest is untrusted: no access throws; a bad size or offset
// reads all-ones and writes nothing, and a failed KVM call is counted.
import type { MmioBus, MmioDevice, PioBus, PioDevice } from '../bus/io-bus.js';
import { madvise, MADV_DONTNEED } from '../sys/libc.js';

export const PC_TESTDEV_IOPORT = 0xe0;
export const PC_TESTDEV_FLUSH_PORT = 0xe4;
export const PC_TESTDEV_IOPORT_BYTE = 0xe8;
/** Ports from PC_TESTDEV_IOPORT the device answers (0xe0-0xeb). */
export const PC_TESTDEV_IOPORT_LENGTH = 12;
export const PC_TESTDEV_IRQ_PORT = 0x2000;
/** ISA/IOAPIC lines 0-23, one port each. */
export const PC_TESTDEV_IRQ_LINES = 24;
/** kvm-unit-tests' IORAM_BASE_PHYS and IORAM_LEN (x86/ioram.h). */
export const PC_TESTDEV_IOMEM_BASE = 0xff000000;
export const PC_TESTDEV_IOMEM_SIZE = 0x10000;
const PAGE_SIZE = 4096;

/** Where IRQ line writes go: the VM's KVM_IRQ_LINE (a recorder in tests). */
export interface IrqLineSink {
  irqLine(gsi: number, level: 0 | 1): void;
}

/** Makes KVM drop its mapping of the guest page at `gpa` (page-aligned); false when that is not guest RAM or the host refused. */
export type PageFlusher = (gpa: number) => boolean;

const validSize = (size: number) => size === 1 || size === 2 || size === 4;

export class PcTestdev implements PioDevice, MmioDevice {
  readonly name = 'pc-testdev';
  /** The scratch register behind ports 0xe0-0xe3 and 0xe8-0xeb. */
  private scratch = 0;
  /** The MMIO window's contents. */
  readonly iomem = new Uint8Array(PC_TESTDEV_IOMEM_SIZE);
  /** Flush-page writes KVM acted on, and those it could not (not RAM, or refused). */
  flushes = 0;
  flushesRefused = 0;
  /** KVM_IRQ_LINE calls that failed (for diagnosis; the guest sees nothing). */
  irqFailures = 0;

  constructor(private readonly irq: IrqLineSink, private readonly flushPage: PageFlusher = () => false) {}

  /** The scratch register as a number (tests and --verbose diagnosis). */
  get register(): number {
    return this.scratch >>> 0;
  }

  pioRead(port: number, size: number): number {
    if (!validSize(size) || !Number.isInteger(port)) return 0xffffffff;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = (v << 8) | this.readPortByte(port + i);
    return v >>> 0;
  }

  pioWrite(port: number, size: number, value: number): void {
    if (!validSize(size) || !Number.isInteger(port)) return;
    const v = value >>> 0;
    if (port === PC_TESTDEV_FLUSH_PORT && size === 4) {
      this.flush(v);
      return;
    }
    for (let i = 0; i < size; i++) this.writePortByte(port + i, (v >>> (8 * i)) & 0xff);
  }

  mmioRead(offset: number, size: number): number {
    if (!validSize(size) || !this.inWindow(offset, size)) return 0xffffffff;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = (v << 8) | this.iomem[offset + i];
    return v >>> 0;
  }

  mmioWrite(offset: number, size: number, value: number): void {
    if (!validSize(size) || !this.inWindow(offset, size)) return;
    for (let i = 0; i < size; i++) this.iomem[offset + i] = (value >>> (8 * i)) & 0xff;
  }

  private inWindow(offset: number, size: number): boolean {
    return Number.isInteger(offset) && offset >= 0 && offset + size <= PC_TESTDEV_IOMEM_SIZE;
  }

  /** Which scratch byte a port is, or -1. */
  private static scratchByte(port: number): number {
    if (port >= PC_TESTDEV_IOPORT && port < PC_TESTDEV_IOPORT + 4) return port - PC_TESTDEV_IOPORT;
    if (port >= PC_TESTDEV_IOPORT_BYTE && port < PC_TESTDEV_IOPORT_BYTE + 4) return port - PC_TESTDEV_IOPORT_BYTE;
    return -1;
  }

  private static ownsPort(port: number): boolean {
    return (port >= PC_TESTDEV_IOPORT && port < PC_TESTDEV_IOPORT + PC_TESTDEV_IOPORT_LENGTH)
      || (port >= PC_TESTDEV_IRQ_PORT && port < PC_TESTDEV_IRQ_PORT + PC_TESTDEV_IRQ_LINES);
  }

  private readPortByte(port: number): number {
    const b = PcTestdev.scratchByte(port);
    if (b >= 0) return (this.scratch >>> (8 * b)) & 0xff;
    // The flush and IRQ ports read 0; anything past the device, as an unclaimed port.
    return PcTestdev.ownsPort(port) ? 0 : 0xff;
  }

  private writePortByte(port: number, byte: number): void {
    const b = PcTestdev.scratchByte(port);
    if (b >= 0) {
      const shift = 8 * b;
      this.scratch = ((this.scratch & ~(0xff << shift)) | (byte << shift)) >>> 0;
      return;
    }
    const line = port - PC_TESTDEV_IRQ_PORT;
    // Lines beyond 23 (a wide write running past the last port) are ignored.
    if (line >= 0 && line < PC_TESTDEV_IRQ_LINES) {
      try {
        this.irq.irqLine(line, byte !== 0 ? 1 : 0);
      } catch {
        this.irqFailures++;
      }
    }
    // Byte writes to the flush ports, and bytes past the device: dropped.
  }

  private flush(value: number): void {
    // The page the written address is in (a 32-bit write reaches the first 4 GiB).
    const gpa = value - (value % PAGE_SIZE);
    let ok = false;
    try {
      ok = this.flushPage(gpa);
    } catch {
      ok = false;
    }
    if (ok) this.flushes++;
    else this.flushesRefused++;
  }
}

/** Puts the device on the buses at its fixed ports and address. */
export function attachPcTestdev(buses: { pio: PioBus; mmio: MmioBus }, irq: IrqLineSink, flushPage?: PageFlusher): PcTestdev {
  const dev = new PcTestdev(irq, flushPage);
  buses.pio.register(dev, PC_TESTDEV_IOPORT, PC_TESTDEV_IOPORT_LENGTH);
  buses.pio.register(dev, PC_TESTDEV_IRQ_PORT, PC_TESTDEV_IRQ_LINES);
  buses.mmio.register(dev, PC_TESTDEV_IOMEM_BASE, PC_TESTDEV_IOMEM_SIZE);
  return dev;
}

/**
 * The flush page under KVM. QEMU mprotects the page's host mapping to
 * PROT_NONE and back: the kernel's MMU notifier tells KVM, which zaps its
 * nested-paging (or shadow) entry, so the guest's next access faults into
 * KVM and is mapped again — what eventinj uses to make an exception's delivery
 * (its IDT, its stack) take such a fault. madvise(MADV_DONTNEED) on the host
 * page has the same effect through the same notifier, without QEMU's window
 * in which another thread (here the main thread's virtio-net data path)
 * touching the page would take a fatal SIGSEGV: guest RAM is a shared
 * anonymous (shmem) mapping, so the page keeps its contents and any access
 * simply maps it again. What it does not do: flush the guest's own TLB (the
 * guest's page tables are untouched), or anything for an address that is not
 * RAM (counted as refused).
 */
export function madvisePageFlusher(ram: ReadonlyArray<{ gpa: number; size: number; hostAddress: bigint }>): PageFlusher {
  return (gpa) => {
    for (const r of ram) {
      if (gpa >= r.gpa && gpa + PAGE_SIZE <= r.gpa + r.size) return madvise(r.hostAddress + BigInt(gpa - r.gpa), PAGE_SIZE, MADV_DONTNEED) === 0;
    }
    return false;
  };
}
