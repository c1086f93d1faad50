// Completing instructions KVM's in-kernel emulator cannot. On kvm_pvm every
// ring-0 instruction of the guest is emulated, and a few are missing there
// (KVM_EXIT_INTERNAL_ERROR, emulation failure). Their semantics are small and
// exact, so tsvisor finishes them in userspace and resumes the guest. Anything
// else ends the run with the bytes, RIP and registers — never a hang.
import { X86_EFLAGS_AC } from '../kvm/abi.js';
import type { Regs, Sregs } from '../kvm/vcpu.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { readLinear } from './page-walk.js';

export const BP_VECTOR = 3;

/** The vCPU state a fix-up reads and changes. */
export interface FixupCpu {
  getRegs(): Regs;
  setRegs(r: Partial<Regs>): void;
  getSregs(): Sregs;
  injectException(vector: number): void;
}

/** The fix-up's name on success, or why the instruction cannot be completed. */
export type FixupResult = { done: string } | { refused: string };

const RFLAGS_FIXED = 0x2n;
/** Flags IRET may restore at CPL0 (all but VM, VIF/VIP handled as plain bits). */
const RFLAGS_IRET_MASK = 0x3f7fd5n;

/**
 * Completes the instruction whose bytes start `bytes`, on `cpu`. Handles
 * prefix-free int3, fwait, clac, stac, and same-privilege iret/iretq (which
 * the emulator refuses outside real mode; a guest that took an injected #BP
 * needs it to return).
 */
export function completeInstruction(bytes: Uint8Array, cpu: FixupCpu, mem: GuestMemory): FixupResult {
  if (bytes.length < 1) return { refused: 'the instruction bytes could not be read' };
  const b0 = bytes[0];
  const advance = (n: number, flagsSet = 0n, flagsClear = 0n) => {
    const r = cpu.getRegs();
    cpu.setRegs({ rip: r.rip + BigInt(n), rflags: (r.rflags | flagsSet) & ~flagsClear });
  };
  // int3 is a trap: #BP is delivered with RIP already past the 0xCC.
  if (b0 === 0xcc) {
    advance(1);
    cpu.injectException(BP_VECTOR);
    return { done: 'int3' };
  }
  // fwait: with no unmasked x87 exception pending it does nothing.
  if (b0 === 0x9b) {
    advance(1);
    return { done: 'fwait' };
  }
  if (b0 === 0x0f && bytes.length >= 3 && bytes[1] === 0x01 && (bytes[2] === 0xca || bytes[2] === 0xcb)) {
    if (bytes[2] === 0xca) advance(3, 0n, BigInt(X86_EFLAGS_AC));
    else advance(3, BigInt(X86_EFLAGS_AC));
    return { done: bytes[2] === 0xca ? 'clac' : 'stac' };
  }
  if (b0 === 0xcf || (b0 === 0x48 && bytes[1] === 0xcf)) return iret(b0 === 0x48, cpu, mem);
  return { refused: 'tsvisor does not complete this instruction' };
}

/** IRET back to the same code segment and privilege level, in protected or long mode. */
function iret(rexW: boolean, cpu: FixupCpu, mem: GuestMemory): FixupResult {
  const r = cpu.getRegs();
  const s = cpu.getSregs();
  const longMode = s.cs.l === 1;
  const width = rexW ? 8 : 4;
  if (!longMode && !s.cs.db) return { refused: 'iret in 16-bit code' };
  if (r.rflags & (1n << 14n)) return { refused: 'iret with NT set (task return)' };
  const sp = longMode ? r.rsp : r.rsp & 0xffffffffn;
  const stack = readLinear(mem, s, (longMode ? 0n : s.ss.base) + sp, width * (longMode ? 5 : 3));
  if (stack.length < width * (longMode ? 5 : 3)) return { refused: 'iret frame not readable' };
  const dv = new DataView(stack.buffer);
  const slot = (i: number) => (width === 8 ? dv.getBigUint64(i * 8, true) : BigInt(dv.getUint32(i * 4, true)));
  const rip = slot(0);
  const cs = Number(slot(1) & 0xffffn);
  const rflags = (slot(2) & RFLAGS_IRET_MASK) | RFLAGS_FIXED;
  if (cs !== s.cs.selector) return { refused: `iret to another code segment (0x${cs.toString(16)})` };
  if (longMode) {
    const ss = Number(slot(4) & 0xffffn);
    if (ss !== s.ss.selector && ss !== 0) return { refused: 'iretq to another stack segment' };
    cpu.setRegs({ rip, rflags, rsp: slot(3) });
  } else {
    cpu.setRegs({ rip, rflags, rsp: (r.rsp & ~0xffffffffn) | ((sp + 12n) & 0xffffffffn) });
  }
  return { done: rexW ? 'iretq' : 'iret' };
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
}
