// A KVM vCPU: the mmap'd kvm_run, KVM_RUN itself, and the register state
// ioctls. The run loop (src/vcpu/) calls `run()` and reads exits through
// `runDv` without allocating; the rest is setup and rare fix-ups.
import * as libc from '../sys/libc.js';
import { native } from '../native.js';
import * as abi from './abi.js';
import { CPUID_ENTRY_SIZE, type CpuidEntry } from './system.js';

const kvmRun = native().kvmRun;

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable?: number;
}

export type Regs = Record<keyof typeof abi.REG, bigint>;

export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: { base: bigint; limit: number };
  idt: { base: bigint; limit: number };
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apic_base: bigint;
}

const SEG_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;

export class Vcpu {
  readonly run: DataView;
  readonly runBytes: Uint8Array;
  private readonly regsBuf = new libc.NativeBuffer(abi.REGS_SIZE);
  private readonly sregsBuf = new libc.NativeBuffer(abi.SREGS_SIZE);
  private readonly eventsBuf = new libc.NativeBuffer(abi.EVENTS_SIZE);
  private readonly debugBuf = new libc.NativeBuffer(abi.GUEST_DEBUG_SIZE);
  private readonly big = new libc.NativeBuffer(8 + 256 * CPUID_ENTRY_SIZE);

  constructor(readonly fd: number, mmapSize: number, runAddress?: bigint) {
    const addr = runAddress ?? libc.mmap(mmapSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0);
    this.runAddress = addr;
    const ab = libc.view(addr, mmapSize);
    this.run = new DataView(ab);
    this.runBytes = new Uint8Array(ab);
  }
  readonly runAddress: bigint;

  private call(name: string, request: number, arg: bigint | number): void {
    if (libc.ioctl(this.fd, request, arg) < 0) throw new libc.SyscallError(name, libc.errno());
  }

  /** One KVM_RUN. Returns 0, or -errno (EINTR when kicked by a signal). */
  /** KVM_RUN: 0, or -errno. Through the addon: one N-API call per exit costs less than an FFI call and errno. */
  enter(): number {
    return kvmRun(this.fd);
  }

  get exitReason(): number {
    return this.run.getUint32(abi.RUN.exit_reason, true);
  }

  getRegs(): Regs {
    this.call('KVM_GET_REGS', abi.KVM_GET_REGS, this.regsBuf.address);
    const out = {} as Regs;
    for (const [name, off] of Object.entries(abi.REG)) out[name as keyof Regs] = this.regsBuf.dv.getBigUint64(off, true);
    return out;
  }

  setRegs(regs: Partial<Regs>): void {
    this.call('KVM_GET_REGS', abi.KVM_GET_REGS, this.regsBuf.address);
    for (const [name, v] of Object.entries(regs)) this.regsBuf.dv.setBigUint64(abi.REG[name as keyof Regs], BigInt.asUintN(64, v as bigint), true);
    this.call('KVM_SET_REGS', abi.KVM_SET_REGS, this.regsBuf.address);
  }

  getSregs(): Sregs {
    const dv = this.sregsBuf.dv;
    this.call('KVM_GET_SREGS', abi.KVM_GET_SREGS, this.sregsBuf.address);
    const seg = (o: number): Segment => ({
      base: dv.getBigUint64(o, true), limit: dv.getUint32(o + 8, true), selector: dv.getUint16(o + 12, true),
      type: dv.getUint8(o + 14), present: dv.getUint8(o + 15), dpl: dv.getUint8(o + 16), db: dv.getUint8(o + 17),
      s: dv.getUint8(o + 18), l: dv.getUint8(o + 19), g: dv.getUint8(o + 20), avl: dv.getUint8(o + 21), unusable: dv.getUint8(o + 22),
    });
    const out: Partial<Sregs> = {};
    SEG_NAMES.forEach((n, i) => (out[n] = seg(i * abi.SEGMENT_SIZE)));
    out.gdt = { base: dv.getBigUint64(abi.SREG.gdt, true), limit: dv.getUint16(abi.SREG.gdt + 8, true) };
    out.idt = { base: dv.getBigUint64(abi.SREG.idt, true), limit: dv.getUint16(abi.SREG.idt + 8, true) };
    for (const r of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const) out[r] = dv.getBigUint64(abi.SREG[r], true);
    return out as Sregs;
  }

  /** Sets the fields given; the rest keep their current values (read first). */
  setSregs(s: Partial<Sregs>): void {
    const dv = this.sregsBuf.dv;
    this.call('KVM_GET_SREGS', abi.KVM_GET_SREGS, this.sregsBuf.address);
    SEG_NAMES.forEach((n, i) => {
      const g = s[n];
      if (!g) return;
      const o = i * abi.SEGMENT_SIZE;
      dv.setBigUint64(o, g.base, true); dv.setUint32(o + 8, g.limit, true); dv.setUint16(o + 12, g.selector, true);
      dv.setUint8(o + 14, g.type); dv.setUint8(o + 15, g.present); dv.setUint8(o + 16, g.dpl); dv.setUint8(o + 17, g.db);
      dv.setUint8(o + 18, g.s); dv.setUint8(o + 19, g.l); dv.setUint8(o + 20, g.g); dv.setUint8(o + 21, g.avl); dv.setUint8(o + 22, g.unusable ?? 0);
    });
    if (s.gdt) { dv.setBigUint64(abi.SREG.gdt, s.gdt.base, true); dv.setUint16(abi.SREG.gdt + 8, s.gdt.limit, true); }
    if (s.idt) { dv.setBigUint64(abi.SREG.idt, s.idt.base, true); dv.setUint16(abi.SREG.idt + 8, s.idt.limit, true); }
    for (const r of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apic_base'] as const) {
      const v = s[r];
      if (v !== undefined) dv.setBigUint64(abi.SREG[r], v, true);
    }
    this.call('KVM_SET_SREGS', abi.KVM_SET_SREGS, this.sregsBuf.address);
  }

  setCpuid(entries: CpuidEntry[]): void {
    const b = this.big;
    b.clear();
    b.dv.setUint32(0, entries.length, true);
    entries.forEach((e, i) => {
      const o = 8 + i * CPUID_ENTRY_SIZE;
      b.dv.setUint32(o, e.function, true); b.dv.setUint32(o + 4, e.index, true); b.dv.setUint32(o + 8, e.flags, true);
      b.dv.setUint32(o + 12, e.eax >>> 0, true); b.dv.setUint32(o + 16, e.ebx >>> 0, true);
      b.dv.setUint32(o + 20, e.ecx >>> 0, true); b.dv.setUint32(o + 24, e.edx >>> 0, true);
    });
    this.call('KVM_SET_CPUID2', abi.KVM_SET_CPUID2, b.address);
  }

  /** Writes MSRs; returns how many the host accepted (KVM stops at the first refusal). */
  setMsrs(msrs: Array<{ index: number; value: bigint }>): number {
    const b = this.msrList(msrs.map((m) => m.index));
    msrs.forEach((m, i) => b.dv.setBigUint64(abi.MSRS_HEADER_SIZE + i * abi.MSR_ENTRY_SIZE + 8, m.value, true));
    const r = libc.ioctl(this.fd, abi.KVM_SET_MSRS, b.address);
    if (r < 0) throw new libc.SyscallError('KVM_SET_MSRS', libc.errno());
    return r;
  }

  /** Reads MSRs; returns the values KVM read, in order (fewer than asked when it refused one: KVM stops there). */
  getMsrs(indices: number[]): bigint[] {
    const b = this.msrList(indices);
    const r = libc.ioctl(this.fd, abi.KVM_GET_MSRS, b.address);
    if (r < 0) throw new libc.SyscallError('KVM_GET_MSRS', libc.errno());
    const out: bigint[] = [];
    for (let i = 0; i < r && i < indices.length; i++) out.push(b.dv.getBigUint64(abi.MSRS_HEADER_SIZE + i * abi.MSR_ENTRY_SIZE + 8, true));
    return out;
  }

  /** A struct kvm_msrs naming `indices`, data zero, in the shared buffer. */
  private msrList(indices: number[]): libc.NativeBuffer {
    const b = this.big;
    const used = abi.MSRS_HEADER_SIZE + indices.length * abi.MSR_ENTRY_SIZE;
    if (used > b.size) throw new RangeError(`${indices.length} MSRs do not fit one KVM_GET/SET_MSRS buffer`);
    b.bytes.fill(0, 0, used);
    b.dv.setUint32(0, indices.length, true);
    indices.forEach((index, i) => b.dv.setUint32(abi.MSRS_HEADER_SIZE + i * abi.MSR_ENTRY_SIZE, index, true));
    return b;
  }

  /**
   * KVM_SET_GUEST_DEBUG: `control` is KVM_GUESTDBG_* bits, `debugregs` DR0–DR7
   * as KVM applies them with KVM_GUESTDBG_USE_HW_BP (null: all zero).
   */
  setGuestDebug(control: number, debugregs: bigint[] | null): void {
    if (debugregs && debugregs.length > 8) throw new RangeError('kvm_guest_debug holds 8 debug registers');
    const b = this.debugBuf;
    b.clear();
    b.dv.setUint32(abi.GUEST_DEBUG.control, control >>> 0, true);
    debugregs?.forEach((v, i) => b.dv.setBigUint64(abi.GUEST_DEBUG.debugreg + i * 8, BigInt.asUintN(64, v), true));
    this.call('KVM_SET_GUEST_DEBUG', abi.KVM_SET_GUEST_DEBUG, b.address);
  }

  /** LAPIC LVT LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as a PC's BIOS leaves them. */
  setupLapicLints(): void {
    const b = this.big;
    this.call('KVM_GET_LAPIC', abi.KVM_GET_LAPIC, b.address);
    const APIC_LVT0 = 0x350, APIC_LVT1 = 0x360;
    const APIC_MODE_EXTINT = 0x7 << 8, APIC_MODE_NMI = 0x4 << 8;
    const lvt0 = b.dv.getUint32(APIC_LVT0, true);
    const lvt1 = b.dv.getUint32(APIC_LVT1, true);
    b.dv.setUint32(APIC_LVT0, (lvt0 & ~0x700) | APIC_MODE_EXTINT, true);
    b.dv.setUint32(APIC_LVT1, (lvt1 & ~0x700) | APIC_MODE_NMI, true);
    this.call('KVM_SET_LAPIC', abi.KVM_SET_LAPIC, b.address);
  }

  /** KVM_GET_MP_STATE: KVM_MP_STATE_HALTED (3) while the vCPU sleeps in HLT inside KVM. */
  getMpState(): number {
    this.call('KVM_GET_MP_STATE', abi.KVM_GET_MP_STATE, this.eventsBuf.address);
    return this.eventsBuf.dv.getUint32(0, true);
  }

  /** Injects exception `vector` (no error code) through KVM_SET_VCPU_EVENTS. */
  injectException(vector: number): void {
    const b = this.eventsBuf;
    this.call('KVM_GET_VCPU_EVENTS', abi.KVM_GET_VCPU_EVENTS, b.address);
    b.dv.setUint8(abi.EVENTS.exception_injected, 1);
    b.dv.setUint8(abi.EVENTS.exception_nr, vector);
    b.dv.setUint8(abi.EVENTS.exception_has_error_code, 0);
    b.dv.setUint8(abi.EVENTS.exception_pending, 0);
    b.dv.setUint32(abi.EVENTS.exception_error_code, 0, true);
    b.dv.setUint32(abi.EVENTS.flags, 0, true);
    this.call('KVM_SET_VCPU_EVENTS', abi.KVM_SET_VCPU_EVENTS, b.address);
  }
}
