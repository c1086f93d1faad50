// QEMU's PCI test device (pci-testdev, PCI 1b36:0005), which kvm-unit-tests
// drives to measure exits that reach the VMM against exits KVM completes by
// itself through KVM_IOEVENTFD (x86/vmexit's pci-mem and pci-io).
//
// Two BARs, BAR0 memory (4 KiB) and BAR1 I/O (256 B), each with three tests:
// no-eventfd (the write exits and the device counts it), wildcard-eventfd
// (any write there signals an eventfd inside KVM) and datamatch-eventfd (only
// a write of the test's value does). The guest selects a test by writing its
// number to byte 0 of a BAR; the BAR then reads as that test's header:
//
//   0 test (u8)   1 width (u8)   4 offset (u32)   8 data (u8)   12 count (u32)   16 name (NUL-terminated)
//
// and the guest writes `data`, `width` bytes wide, at `offset` in that BAR.
// As in QEMU, one test is selected per device (a write to byte 0 of either BAR
// selects one of that BAR's tests and deselects the other), accesses are
// taken a byte at a time (a wider access is that many byte accesses, so a
// wider write at the test's offset counts its first byte), and nothing here
// throws on a guest access: anything out of range reads 0 and is ignored.
//
// The eventfd tests are bound with KVM_IOEVENTFD while selected and while
// their BAR decodes; a moved BAR is rebound, a disabled one unbound. KVM
// signals one eventfd, which nothing waits on: the point is the exit that
// does not happen. Without KVM (unit tests), those writes exit and count.
import { PciDevice, type BarHandler } from './pci/config-space.js';
import type { VcpuDeviceContext, VcpuDeviceSpec } from './virtio/vcpu-devices.js';
import type { VmHandle } from '../kvm/vm.js';
import { close, eventfd, errno, read, EFD_CLOEXEC, EFD_NONBLOCK, NativeBuffer, SyscallError } from '../sys/libc.js';
import { TsvisorError } from '../errors.js';

export const PCI_VENDOR_ID_REDHAT = 0x1b36;
export const PCI_DEVICE_ID_REDHAT_TEST = 0x0005;
/**
 * QEMU sets class id PCI_CLASS_OTHERS (0xff) as the 16-bit class word, so the
 * guest sees base class 0x00 (unclassified), subclass 0xff, prog-if 0.
 */
export const PCI_TESTDEV_CLASS = 0x00ff00;
/** QEMU's default subsystem ids for devices that set none. */
const PCI_SUBVENDOR_ID_REDHAT_QUMRANET = 0x1af4;
const PCI_SUBDEVICE_ID_QEMU = 0x1100;

export const PCI_TESTDEV_BAR_MEM = 0;
export const PCI_TESTDEV_BAR_IO = 1;
/** Each BAR is two halves: headers in the first, the tests' write addresses in the second. */
export const PCI_TESTDEV_MEM_SIZE = 4096;
export const PCI_TESTDEV_IO_SIZE = 256;

// The header (struct pci_test_dev_hdr as the guest reads it).
export const HDR_TEST = 0;
export const HDR_WIDTH = 1;
export const HDR_OFFSET = 4;
export const HDR_DATA = 8;
export const HDR_COUNT = 12;
export const HDR_NAME = 16;

/** The value a no-eventfd or datamatch-eventfd test expects; a wildcard test says it writes the other. */
export const PCI_TESTDEV_DATAMATCH = 0xfa;
export const PCI_TESTDEV_NOMATCH = 0xce;

export type PciTestSpace = 'mmio' | 'portio';
export type PciTestKind = 'no-eventfd' | 'wildcard-eventfd' | 'datamatch-eventfd';
/** Test numbers the guest writes to byte 0, per BAR. */
export const PCI_TEST_KINDS: readonly PciTestKind[] = ['no-eventfd', 'wildcard-eventfd', 'datamatch-eventfd'];
const SPACES: readonly PciTestSpace[] = ['mmio', 'portio'];

/** One test: its header bytes (the count lives in them) and what KVM binds for it. */
class IoTest {
  readonly header: Uint8Array;
  private readonly dv: DataView;
  /** Byte offset in its BAR the guest writes to. */
  readonly offset: number;
  /** Only writes of `data` count (and, with an eventfd, only they skip the exit). */
  readonly matchData: boolean;
  readonly data: number;

  constructor(readonly index: number, readonly space: PciTestSpace, readonly kind: PciTestKind) {
    const name = `${space}-${kind}`;
    this.header = new Uint8Array(HDR_NAME + name.length + 1);
    this.dv = new DataView(this.header.buffer);
    // Tests' addresses sit in the BAR's second half, one byte apart, numbered across both BARs.
    this.offset = (space === 'mmio' ? PCI_TESTDEV_MEM_SIZE : PCI_TESTDEV_IO_SIZE) / 2 + index;
    this.matchData = kind !== 'wildcard-eventfd';
    this.data = this.matchData ? PCI_TESTDEV_DATAMATCH : PCI_TESTDEV_NOMATCH;
    this.header[HDR_TEST] = index;
    this.header[HDR_WIDTH] = 1;
    this.dv.setUint32(HDR_OFFSET, this.offset, true);
    this.header[HDR_DATA] = this.data;
    for (let i = 0; i < name.length; i++) this.header[HDR_NAME + i] = name.charCodeAt(i);
  }

  get count(): number {
    return this.dv.getUint32(HDR_COUNT, true);
  }

  set count(v: number) {
    this.dv.setUint32(HDR_COUNT, v >>> 0, true);
  }

  get hasEventfd(): boolean {
    return this.kind !== 'no-eventfd';
  }
}

/** What is bound with KVM_IOEVENTFD now (the same fields unbind it). */
interface IoeventfdBinding {
  addr: number;
  len: number;
  eventfd: number;
  pio?: boolean;
  datamatch?: number;
}

/** The part of a VM the device binds ioeventfds through (a recorder in tests). */
export type IoeventfdSink = Pick<VmHandle, 'ioeventfd'>;

export interface PciTestdevOptions {
  /** Where to bind the eventfd tests; without it their writes exit and count. */
  vm?: IoeventfdSink;
  /** The eventfd KVM signals (non-blocking; drained when a test is selected). */
  eventfd?: number;
}

export class PciTestdev extends PciDevice {
  /** mmio tests 0-2, portio tests 3-5, as QEMU numbers them. */
  readonly tests: readonly IoTest[];
  private current: IoTest | null = null;
  private bound: IoeventfdBinding | null = null;
  private readonly vm: IoeventfdSink | undefined;
  private readonly eventfd: number;
  private drainBuf: NativeBuffer | null = null;
  /** KVM refused a binding (the test's writes then exit and count); for diagnosis. */
  bindFailures = 0;

  constructor(opts: PciTestdevOptions = {}) {
    super('pci-testdev', {
      vendorId: PCI_VENDOR_ID_REDHAT, deviceId: PCI_DEVICE_ID_REDHAT_TEST, classCode: PCI_TESTDEV_CLASS, revision: 0,
      subsystemVendorId: PCI_SUBVENDOR_ID_REDHAT_QUMRANET, subsystemId: PCI_SUBDEVICE_ID_QEMU, interruptPin: 0,
    });
    this.vm = opts.vm;
    this.eventfd = opts.eventfd !== undefined && Number.isInteger(opts.eventfd) && opts.eventfd >= 0 ? opts.eventfd : -1;
    this.tests = SPACES.flatMap((space, s) => PCI_TEST_KINDS.map((kind, k) => new IoTest(s * PCI_TEST_KINDS.length + k, space, kind)));
    this.defineBar(PCI_TESTDEV_BAR_MEM, { kind: 'mem32', size: PCI_TESTDEV_MEM_SIZE, name: 'mmio', handler: this.window('mmio') });
    this.defineBar(PCI_TESTDEV_BAR_IO, { kind: 'io', size: PCI_TESTDEV_IO_SIZE, name: 'portio', handler: this.window('portio') });
  }

  /** Built on the vCPU thread from its spec: `options.eventfd` is the eventfd for KVM to signal. */
  static fromSpec(spec: VcpuDeviceSpec, ctx: VcpuDeviceContext): PciTestdev {
    const fd = spec.options?.eventfd;
    return new PciTestdev({ vm: ctx.vm, eventfd: typeof fd === 'number' ? fd : undefined });
  }

  /** The selected test, or null. */
  get selected(): IoTest | null {
    return this.current;
  }

  /** What KVM_IOEVENTFD binds now, or null. */
  get binding(): Readonly<IoeventfdBinding> | null {
    return this.bound;
  }

  private window(space: PciTestSpace): BarHandler {
    return {
      read: (offset, size) => {
        let v = 0;
        for (let i = size - 1; i >= 0; i--) v = (v << 8) | this.readByte(offset + i);
        return v >>> 0;
      },
      write: (offset, size, value) => {
        for (let i = 0; i < size; i++) this.writeByte(space, offset + i, (value >>> (8 * i)) & 0xff);
      },
    };
  }

  /** The selected test's header; 0 past it (its last byte, the NUL, included) or with none selected. */
  private readByte(offset: number): number {
    const t = this.current;
    if (!t || offset < 0 || offset + 1 >= t.header.length) return 0;
    return t.header[offset];
  }

  private writeByte(space: PciTestSpace, offset: number, value: number): void {
    if (offset === HDR_TEST) {
      this.select(space, value);
      return;
    }
    const t = this.current;
    // QEMU compares the offset only, whichever BAR the write came through.
    if (!t || offset !== t.offset) return;
    if (t.matchData && value !== t.data) return;
    t.count = t.count + 1;
  }

  /** A write to byte 0: deselects, then selects test `n` of this BAR if there is one. */
  private select(space: PciTestSpace, n: number): void {
    this.current = null;
    if (n < PCI_TEST_KINDS.length) {
      const t = this.tests[SPACES.indexOf(space) * PCI_TEST_KINDS.length + n];
      t.count = 0;
      this.drain();
      this.current = t;
    }
    this.rebind();
  }

  protected override mappingsChanged(): void {
    this.rebind();
  }

  /** The binding the selected test wants where its BAR decodes now, or null. */
  private wanted(): IoeventfdBinding | null {
    const t = this.current;
    if (!t || !t.hasEventfd || !this.vm || this.eventfd < 0) return null;
    const base = this.barMapped(t.space === 'mmio' ? PCI_TESTDEV_BAR_MEM : PCI_TESTDEV_BAR_IO);
    if (base < 0) return null;
    const addr = base + t.offset;
    if (t.space === 'portio') return { addr, len: 1, eventfd: this.eventfd, pio: true, datamatch: t.matchData ? t.data : undefined };
    // As QEMU with KVM: an MMIO wildcard binds length 0 (any width, KVM's fast MMIO path).
    return t.matchData ? { addr, len: 1, eventfd: this.eventfd, datamatch: t.data } : { addr, len: 0, eventfd: this.eventfd };
  }

  /** Makes KVM's binding match `wanted()`; a refusal leaves the test on the exit path, never throws. */
  private rebind(): void {
    const vm = this.vm;
    if (!vm) return;
    const want = this.wanted();
    const had = this.bound;
    // Same place and match: kept (its length may be the one-byte fallback of a wanted 0).
    if (had && want && had.addr === want.addr && had.pio === want.pio && had.datamatch === want.datamatch) return;
    if (had) {
      this.bound = null;
      try {
        vm.ioeventfd({ ...had, deassign: true });
      } catch {
        this.bindFailures++;
      }
    }
    if (!want) return;
    try {
      vm.ioeventfd(want);
      this.bound = want;
    } catch {
      // A KVM without any-length ioeventfds (KVM_CAP_IOEVENTFD_ANY_LENGTH): one byte, as the test writes.
      if (want.len === 0) {
        try {
          const oneByte = { ...want, len: 1 };
          vm.ioeventfd(oneByte);
          this.bound = oneByte;
          return;
        } catch {
          /* counted below */
        }
      }
      this.bindFailures++;
    }
  }

  /** Empties the eventfd's counter (as QEMU clears its notifier when a test starts). */
  private drain(): void {
    if (this.eventfd < 0 || !this.vm) return;
    const b = (this.drainBuf ??= new NativeBuffer(8));
    read(this.eventfd, b.address, 8);
  }
}

/**
 * The main thread's side: the eventfd KVM signals for this device and the
 * spec the vCPU worker builds it from. `close()` after the run.
 */
export function pciTestdevSetup(pciSlot: number): { spec: VcpuDeviceSpec; close(): void } {
  const fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) throw new TsvisorError(`cannot create an eventfd for pci-testdev: ${new SyscallError('eventfd', errno()).message}`, 1, 'raise the open-file limit (ulimit -n)');
  let open = true;
  return {
    spec: { kind: 'pci-testdev', pciSlot, doorbellFds: {}, options: { eventfd: fd } },
    close: () => {
      if (open) close(fd);
      open = false;
    },
  };
}
