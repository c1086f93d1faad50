// A KVM virtual machine: memory slots, the in-kernel irqchip and PIT, and the
// ways into its interrupt controllers (IRQ lines, MSIs, irqfd, ioeventfd).
// Interrupt ioctls are safe from any thread; each method keeps its own native
// buffer, so call one Vm's methods from one thread at a time, or give each
// thread its own `VmHandle` over the same fd.
import * as libc from '../sys/libc.js';
import * as abi from './abi.js';
import type { Kvm } from './system.js';

export const KVM_IRQFD_FLAG_DEASSIGN = 1;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;
export const KVM_IRQ_ROUTING_IRQCHIP = 1;
export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_IRQ_ROUTING_MSI = 2;

/** The VM ioctls that any thread may issue, over a VM fd number. */
/** Routes tsvisor installs at most: the PC's 24 pins and the MSI-X vectors of its devices. */
const MAX_GSI_ROUTES = 128;

export class VmHandle {
  private readonly buf = new libc.NativeBuffer(64);
  private routingBuf: libc.NativeBuffer | undefined;
  constructor(readonly fd: number) {}

  private call(name: string, request: number, arg: bigint | number): number {
    const r = libc.ioctl(this.fd, request, arg);
    if (r < 0) throw new libc.SyscallError(name, libc.errno());
    return r;
  }

  /** Sets an IRQ line of the in-kernel PIC/IOAPIC (GSI) to `level`. */
  irqLine(gsi: number, level: 0 | 1): void {
    const b = this.buf;
    b.dv.setUint32(0, gsi, true);
    b.dv.setUint32(4, level, true);
    this.call('KVM_IRQ_LINE', abi.KVM_IRQ_LINE, b.address);
  }

  /** Delivers one MSI (address/data as the device's MSI-X table entry holds them). */
  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const b = this.buf;
    b.clear();
    b.dv.setUint32(0, addressLo, true);
    b.dv.setUint32(4, addressHi, true);
    b.dv.setUint32(8, data, true);
    return libc.ioctl(this.fd, abi.KVM_SIGNAL_MSI, b.address);
  }

  /** Binds `eventfd` to GSI `gsi`: a write to the eventfd injects the interrupt without a userspace hop. */
  irqfd(eventfd: number, gsi: number, deassign = false): void {
    const b = this.buf;
    b.clear();
    b.dv.setUint32(0, eventfd, true);
    b.dv.setUint32(4, gsi, true);
    b.dv.setUint32(8, deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0, true);
    this.call('KVM_IRQFD', abi.KVM_IRQFD, b.address);
  }

  /**
   * Replaces the GSI routing table. KVM's default routes GSI 0-23 to the
   * IOAPIC (and 0-15 to the PIC); tsvisor keeps those and adds MSI routes for irqfd.
   */
  setGsiRouting(routes: Array<{ gsi: number; type: 'irqchip'; chip: number; pin: number } | { gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number }>): void {
    if (routes.length > MAX_GSI_ROUTES) throw new RangeError(`${routes.length} GSI routes, at most ${MAX_GSI_ROUTES}`);
    const b = (this.routingBuf ??= new libc.NativeBuffer(8 + MAX_GSI_ROUTES * 48));
    b.clear();
    b.dv.setUint32(0, routes.length, true);
    routes.forEach((r, i) => {
      const o = 8 + i * 48;
      b.dv.setUint32(o, r.gsi, true);
      if (r.type === 'irqchip') {
        b.dv.setUint32(o + 4, KVM_IRQ_ROUTING_IRQCHIP, true);
        b.dv.setUint32(o + 16, r.chip, true);
        b.dv.setUint32(o + 20, r.pin, true);
      } else {
        b.dv.setUint32(o + 4, KVM_IRQ_ROUTING_MSI, true);
        b.dv.setUint32(o + 16, r.addressLo, true);
        b.dv.setUint32(o + 20, r.addressHi, true);
        b.dv.setUint32(o + 24, r.data, true);
      }
    });
    this.call('KVM_SET_GSI_ROUTING', abi.KVM_SET_GSI_ROUTING, b.address);
  }

  /** Binds a guest write of `len` bytes at `addr` (MMIO, or PIO with `pio`) to an eventfd: no exit to userspace. */
  ioeventfd(opts: { addr: number; len: number; eventfd: number; pio?: boolean; datamatch?: number; deassign?: boolean }): void {
    const b = this.buf;
    b.clear();
    let flags = 0;
    if (opts.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (opts.datamatch !== undefined) flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    if (opts.deassign) flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
    b.dv.setBigUint64(0, BigInt(opts.datamatch ?? 0), true);
    b.dv.setBigUint64(8, BigInt(opts.addr), true);
    b.dv.setUint32(16, opts.len, true);
    b.dv.setInt32(20, opts.eventfd, true);
    b.dv.setUint32(24, flags, true);
    this.call('KVM_IOEVENTFD', abi.KVM_IOEVENTFD, b.address);
  }
}

export class KvmVm extends VmHandle {
  private readonly nb = new libc.NativeBuffer(4096);
  private nextSlot = 0;

  constructor(readonly kvm: Kvm) {
    const fd = libc.ioctl(kvm.fd, abi.KVM_CREATE_VM, 0);
    if (fd < 0) throw new libc.SyscallError('KVM_CREATE_VM', libc.errno());
    super(fd);
  }

  private vmCall(name: string, request: number, arg: bigint | number): number {
    const r = libc.ioctl(this.fd, request, arg);
    if (r < 0) throw new libc.SyscallError(name, libc.errno());
    return r;
  }

  /** Maps `size` bytes of host memory at `hostAddress` as guest RAM at `gpa`. */
  setUserMemoryRegion(gpa: number, size: number, hostAddress: bigint): number {
    const slot = this.nextSlot++;
    const b = this.nb;
    b.clear();
    b.dv.setUint32(0, slot, true);
    b.dv.setUint32(4, 0, true);
    b.dv.setBigUint64(8, BigInt(gpa), true);
    b.dv.setBigUint64(16, BigInt(size), true);
    b.dv.setBigUint64(24, hostAddress, true);
    this.vmCall('KVM_SET_USER_MEMORY_REGION', abi.KVM_SET_USER_MEMORY_REGION, b.address);
    return slot;
  }

  /** The three pages Intel VMX needs for real-mode emulation (a no-op need on AMD/pvm, harmless). */
  setTssAddr(gpa: number): void {
    this.vmCall('KVM_SET_TSS_ADDR', abi.KVM_SET_TSS_ADDR, gpa);
  }

  setIdentityMapAddr(gpa: number): void {
    this.nb.dv.setBigUint64(0, BigInt(gpa), true);
    this.vmCall('KVM_SET_IDENTITY_MAP_ADDR', abi.KVM_SET_IDENTITY_MAP_ADDR, this.nb.address);
  }

  /** PIC, IOAPIC and LAPIC emulated in the kernel. */
  createIrqchip(): void {
    this.vmCall('KVM_CREATE_IRQCHIP', abi.KVM_CREATE_IRQCHIP, 0);
  }

  /**
   * Points the in-kernel 8259s at the vectors a PC BIOS gives them (master
   * 0x08, slave 0x70), as POST leaves them for whatever it boots. KVM resets
   * both to vector 0, where a real-mode image's IRQ would land on the
   * divide-error entry of its IVT; Linux and kvm-unit-tests' protected-mode
   * tests reprogram or mask the PICs themselves.
   */
  setPicVectorBases(master: number, slave: number): void {
    for (const [chip, base] of [[abi.KVM_IRQCHIP_PIC_MASTER, master], [abi.KVM_IRQCHIP_PIC_SLAVE, slave]] as const) {
      const b = this.nb;
      b.clear();
      b.dv.setUint32(0, chip, true);
      this.vmCall('KVM_GET_IRQCHIP', abi.KVM_GET_IRQCHIP, b.address);
      b.dv.setUint8(abi.KVM_PIC_STATE_IRQ_BASE, base);
      this.vmCall('KVM_SET_IRQCHIP', abi.KVM_SET_IRQCHIP, b.address);
    }
  }

  /**
   * The i8254 PIT in the kernel, with its port 0x61 (speaker gate and
   * channel 2 output): guests time the TSC against channel 2 through it, and
   * without it 0x61 would read as all-ones (an output that fired at once).
   */
  createPit2(): void {
    this.nb.clear();
    this.nb.dv.setUint32(0, KVM_PIT_SPEAKER_DUMMY, true);
    this.vmCall('KVM_CREATE_PIT2', abi.KVM_CREATE_PIT2, this.nb.address);
  }

  /**
   * Whether the in-kernel PIT re-injects timer ticks the guest did not take in
   * time (KVM_REINJECT_CONTROL; KVM's default is on). Off is QEMU's
   * `kvm-pit.lost_tick_policy=discard`, which kvm-unit-tests' x86/run sets.
   * Call after createPit2.
   */
  reinjectControl(pitReinject: boolean): void {
    this.nb.clear();
    this.nb.dv.setUint8(0, pitReinject ? 1 : 0);
    this.vmCall('KVM_REINJECT_CONTROL', abi.KVM_REINJECT_CONTROL, this.nb.address);
  }

  createVcpuFd(id: number): number {
    return this.vmCall('KVM_CREATE_VCPU', abi.KVM_CREATE_VCPU, id);
  }

  close(): void {
    libc.close(this.fd);
  }
}
