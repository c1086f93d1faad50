// Completing the SYSCALL instruction that kvm_pvm leaves half done.
//
// On kvm_pvm a guest user-mode `syscall` sets RIP = LSTAR, RCX, R11 and masks
// RFLAGS, but CPL stays 3: the fetch at LSTAR takes a #PF, and the guest kernel
// would kill the process. No exit reaches the VMM by itself, so tsvisor puts a
// hardware breakpoint on the guest's #PF handler (IDT vector 14; the emulator
// checks code breakpoints at CPL0). At that KVM_EXIT_DEBUG, a fault whose frame
// is a half-done syscall becomes the privilege switch SYSCALL should have made.
// Any other fault is real and runs on after one single-step past the breakpoint:
// the emulator ignores RFLAGS.RF, so resuming on an armed breakpoint would hit
// it forever. Everything read from the guest is hostile: anything unreadable or
// out of range means "not a syscall", never an exception out of the run loop.
import { KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP } from '../kvm/abi.js';
import type { Regs, Segment, Sregs } from '../kvm/vcpu.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { translate } from './page-walk.js';
import type { SyscallStats } from './protocol.js';

export const MSR_STAR = 0xc0000081;
export const MSR_LSTAR = 0xc0000082;
export const MSR_SYSCALL_MASK = 0xc0000084;

const DB_VECTOR = 1;
const PF_VECTOR = 14;
/** A long-mode IDT gate: offset 15:0 at +0, type and P at +5, offset 31:16 at +6, 63:32 at +8. */
const IDT_GATE_SIZE = 16;
const GATE_PRESENT = 0x80;
const GATE_TYPE_INTERRUPT = 0xe;
const GATE_TYPE_TRAP = 0xf;

const EFER_SCE = 1n;
const EFER_LMA = 1n << 10n;
const CR4_LA57 = 1n << 12n;
/** DR6.BS: the #DB came from single-stepping. */
const DR6_BS = 1n << 14n;
/** DR7: L0 and GE, R/W0 = LEN0 = 0 (instruction breakpoint), bit 10 reads as 1. */
const DR7_EXEC_BP0 = 0x601n;

const X86_EFLAGS_FIXED = 0x2n;
const X86_EFLAGS_RF = 1n << 16n;
const X86_EFLAGS_VM = 1n << 17n;
/** The defined RFLAGS bits (CF … ID), so a value from guest memory cannot set reserved ones. */
const RFLAGS_DEFINED = 0x3f7fd5n;

/** [error code, RIP, CS, RFLAGS, RSP, SS], the #PF frame at the handler's RSP. */
const FRAME_BYTES = 6 * 8;
const SYSCALL_OPCODE = [0x0f, 0x05];
/** A step that has not reported after this many periodic rechecks never will: re-arm. */
const STALE_STEP_RECHECKS = 2;

/** The vCPU state SYSCALL completion reads and changes (Vcpu, or a fake in tests). */
export interface SyscallCpu {
  getRegs(): Regs;
  setRegs(r: Partial<Regs>): void;
  getSregs(): Sregs;
  setSregs(s: Partial<Sregs>): void;
  /** The values read, in order; shorter than `indices` when the host refused one. */
  getMsrs(indices: number[]): bigint[];
  setGuestDebug(control: number, debugregs: bigint[] | null): void;
  injectException(vector: number): void;
}

/**
 * What a KVM_EXIT_DEBUG turned out to be: a syscall completed, a real fault
 * stepped over, the breakpoint re-armed (after a step, or because the handler
 * moved), or the guest's own #DB given back to it.
 */
export type DebugExitOutcome = 'completed' | 'stepped' | 'rearmed' | 'reinjected';

/** One vCPU's SYSCALL completion: the breakpoint on its #PF handler and what to do when it fires. */
export class SyscallCompletion {
  syscallsCompleted = 0;
  faultsStepped = 0;
  debugReinjected = 0;
  handlerChanges = 0;
  /** Where the breakpoint is armed now (null: not armed). */
  armedHandler: bigint | null = null;
  /** The last valid #PF handler seen (what the breakpoint was last on). */
  lastHandler: bigint | null = null;
  private stepping = false;
  private stepRechecks = 0;
  private completionMs = 0;
  private stepMs = 0;

  constructor(private readonly cpu: SyscallCpu, private readonly mem: GuestMemory) {}

  /** Arms the breakpoint on the current #PF handler, if the guest has a usable one yet (before the first KVM_RUN). */
  arm(): void {
    this.pointAt(pageFaultHandler(this.mem, this.cpu.getSregs()));
  }

  /**
   * Follows IDT[14] when the guest changed it (Linux moves from its early
   * handler to asm_exc_page_fault, and the IDT itself, during boot). Called
   * on the run loop's periodic kick: one KVM_GET_SREGS, never per exit.
   */
  recheck(): void {
    if (this.stepping) {
      if (++this.stepRechecks < STALE_STEP_RECHECKS) return;
      // Re-arming is always safe: if the step had not happened, the breakpoint just fires again.
      this.stepping = false;
      this.pointAt(pageFaultHandler(this.mem, this.cpu.getSregs()), true);
      return;
    }
    this.arm();
  }

  /** Handles a KVM_EXIT_DEBUG at linear address `pc` with debug status `dr6`. */
  onDebugExit(pc: bigint, dr6: bigint): DebugExitOutcome {
    const t0 = performance.now();
    if (this.stepping && dr6 & DR6_BS) {
      // Past the handler's first instruction: the breakpoint can go back (IDT[14] read afresh).
      this.stepping = false;
      this.pointAt(pageFaultHandler(this.mem, this.cpu.getSregs()), true);
      this.stepMs += performance.now() - t0;
      return 'rearmed';
    }
    if (!this.stepping && this.armedHandler !== null && pc === this.armedHandler) {
      const regs = this.cpu.getRegs();
      const sregs = this.cpu.getSregs();
      const current = pageFaultHandler(this.mem, sregs);
      if (current !== this.armedHandler) {
        // The guest moved its handler: this address is no longer it.
        this.pointAt(current);
        return 'rearmed';
      }
      if (this.complete(regs, sregs)) {
        this.syscallsCompleted++;
        this.completionMs += performance.now() - t0;
        return 'completed';
      }
      // A real page fault: run the handler's first instruction with the breakpoint off.
      this.cpu.setGuestDebug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, null);
      this.stepping = true;
      this.stepRechecks = 0;
      this.faultsStepped++;
      this.stepMs += performance.now() - t0;
      return 'stepped';
    }
    // With guest debugging on, KVM hands every #DB to userspace: give the guest's own back.
    // (Its DR6 is not updated, and its own hardware breakpoints are off while ours is armed.)
    this.cpu.injectException(DB_VECTOR);
    this.debugReinjected++;
    if (!this.stepping) this.arm();
    return 'reinjected';
  }

  stats(): SyscallStats {
    return {
      completed: this.syscallsCompleted,
      faultsStepped: this.faultsStepped,
      debugReinjected: this.debugReinjected,
      handlerChanges: this.handlerChanges,
      handler: this.lastHandler === null ? undefined : '0x' + this.lastHandler.toString(16),
      vmmNsPerCompletion: this.syscallsCompleted ? (this.completionMs * 1e6) / this.syscallsCompleted : undefined,
      vmmNsPerStep: this.faultsStepped ? (this.stepMs * 1e6) / this.faultsStepped : undefined,
    };
  }

  /**
   * Finishes the SYSCALL when the #PF at the handler is kvm_pvm's half-done
   * one: user code faulted fetching LSTAR right after a `syscall` instruction.
   * Returns false (nothing changed) for anything else.
   */
  private complete(regs: Regs, sregs: Sregs): boolean {
    if ((sregs.efer & (EFER_LMA | EFER_SCE)) !== (EFER_LMA | EFER_SCE)) return false;
    const bytes = readGuest(this.mem, sregs, regs.rsp, FRAME_BYTES);
    if (!bytes) return false;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const frameRip = dv.getBigUint64(8, true);
    const frameCs = dv.getBigUint64(16, true);
    const frameRflags = dv.getBigUint64(24, true);
    const frameRsp = dv.getBigUint64(32, true);
    if ((frameCs & 3n) !== 3n) return false; // a fault in the kernel
    const msrs = this.cpu.getMsrs([MSR_STAR, MSR_LSTAR, MSR_SYSCALL_MASK]);
    if (msrs.length !== 3) return false;
    const star = msrs[0];
    const lstar = msrs[1];
    const fmask = msrs[2] & 0xffffffffn; // IA32_FMASK bits 63:32 are reserved
    if (frameRip !== lstar || !isCanonical(lstar, sregs) || lstar === this.armedHandler) return false;
    // SYSCALL loads CS = STAR[47:32] & ~3 and SS = STAR[47:32] + 8; refuse a null or RPL≠0 selector, and one that wraps.
    const selector = Number((star >> 32n) & 0xffffn);
    if (selector === 0 || (selector & 3) !== 0 || selector + 8 > 0xffff) return false;
    // The half-done syscall masked RFLAGS before the fault: a user jump to LSTAR
    // (with a forged RCX and R11) still has IF set, which Linux's SFMASK clears.
    if (frameRflags & fmask & RFLAGS_DEFINED & ~X86_EFLAGS_RF) return false;
    // RCX is the return address: a real syscall instruction ends there.
    if (regs.rcx < 2n) return false;
    const insn = readGuest(this.mem, sregs, regs.rcx - 2n, 2);
    if (!insn || insn[0] !== SYSCALL_OPCODE[0] || insn[1] !== SYSCALL_OPCODE[1]) return false;

    // RCX, R11 and GS stay as they are: entry_SYSCALL_64 expects the user's GS (it does swapgs).
    this.cpu.setSregs({ cs: kernelCode(selector), ss: kernelStack(selector + 8) });
    // RSP is the user's, as SYSCALL leaves it (the kernel switches stacks itself).
    const rflags = ((frameRflags & RFLAGS_DEFINED & ~fmask) & ~(X86_EFLAGS_RF | X86_EFLAGS_VM)) | X86_EFLAGS_FIXED;
    this.cpu.setRegs({ rip: lstar, rsp: frameRsp, rflags });
    return true;
  }

  /** Arms the breakpoint at `handler`, or disarms when null. `force` re-arms even when unchanged (ending a step). */
  private pointAt(handler: bigint | null, force = false): void {
    if (handler !== null) {
      if (this.lastHandler !== null && handler !== this.lastHandler) this.handlerChanges++;
      this.lastHandler = handler;
    }
    if (handler === this.armedHandler && !force) return;
    if (handler === null) this.cpu.setGuestDebug(0, null);
    else this.cpu.setGuestDebug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP, [handler, 0n, 0n, 0n, 0n, 0n, 0n, DR7_EXEC_BP0]);
    this.armedHandler = handler;
  }
}

/**
 * The linear address of the guest's #PF handler from IDT[14], or null when
 * the guest has no usable one: not in long mode, IDT limit too small, IDT
 * unmapped or non-canonical, gate not present or not an interrupt/trap gate.
 */
export function pageFaultHandler(mem: GuestMemory, sregs: Sregs): bigint | null {
  if (!(sregs.efer & EFER_LMA)) return null; // 16-byte gates exist only in long mode
  if (sregs.idt.limit < PF_VECTOR * IDT_GATE_SIZE + IDT_GATE_SIZE - 1) return null;
  const gate = readGuest(mem, sregs, sregs.idt.base + BigInt(PF_VECTOR * IDT_GATE_SIZE), IDT_GATE_SIZE);
  if (!gate) return null;
  const attributes = gate[5];
  const type = attributes & 0xf;
  if (!(attributes & GATE_PRESENT) || (type !== GATE_TYPE_INTERRUPT && type !== GATE_TYPE_TRAP)) return null;
  const dv = new DataView(gate.buffer, gate.byteOffset, gate.byteLength);
  const offset = BigInt(dv.getUint16(0, true)) | (BigInt(dv.getUint16(6, true)) << 16n) | (BigInt(dv.getUint32(8, true)) << 32n);
  return isCanonical(offset, sregs) ? offset : null;
}

/** True when `va` is a canonical 64-bit address (48-bit, or 57-bit with LA57). */
function isCanonical(va: bigint, sregs: Sregs): boolean {
  const bits = sregs.cr4 & CR4_LA57 ? 57 : 48;
  return va >= 0n && va < 1n << 64n && BigInt.asIntN(bits, va) === BigInt.asIntN(64, va);
}

/**
 * `len` bytes at linear address `va` through the guest's page tables, one
 * walk per page; null when any byte is unmapped, outside RAM, or the range is
 * not canonical.
 */
function readGuest(mem: GuestMemory, sregs: Sregs, va: bigint, len: number): Uint8Array | null {
  const last = BigInt.asUintN(64, va + BigInt(len - 1));
  if (!isCanonical(va, sregs) || !isCanonical(last, sregs)) return null;
  const out = new Uint8Array(len);
  for (let done = 0; done < len;) {
    const at = BigInt.asUintN(64, va + BigInt(done));
    const n = Math.min(len - done, 0x1000 - Number(at & 0xfffn));
    const gpa = translate(mem, sregs, at);
    const src = gpa < 0 ? null : mem.slice(gpa, n);
    if (!src) return null;
    out.set(src, done);
    done += n;
  }
  return out;
}

/** The flat 64-bit ring-0 code segment SYSCALL loads into CS. */
function kernelCode(selector: number): Segment {
  return { base: 0n, limit: 0xffffffff, selector, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0 };
}

/** The flat ring-0 data segment SYSCALL loads into SS. */
function kernelStack(selector: number): Segment {
  return { base: 0n, limit: 0xffffffff, selector, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 };
}
