// SYSCALL completion (kvm_pvm) over a fake vCPU and fake guest RAM holding
// real 4-level page tables, a real IDT, a #PF frame on a kernel stack and user
// code: what is completed, what is stepped over, what is handed back, and what
// a hostile guest cannot make it do. No /dev/kvm needed.
import test from 'ava';
import * as abi from '../src/kvm/abi.js';
import type { Regs, Segment, Sregs, Vcpu } from '../src/kvm/vcpu.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { MmioBus, PioBus } from '../src/bus/io-bus.js';
import { RunLoop } from '../src/vcpu/run-loop.js';
import { formatStats } from '../src/stats.js';
import type { ExitStats } from '../src/vcpu/protocol.js';
import {
  MSR_LSTAR, MSR_STAR, MSR_SYSCALL_MASK, SyscallCompletion, pageFaultHandler, type SyscallCpu,
} from '../src/vcpu/syscall-completion.js';

const ARM = abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_HW_BP;
const STEP = abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_SINGLESTEP;
const DR6_BS = 1n << 14n;
const DR6_B0 = 0xffff0ff1n;

// Linux-like addresses and values.
const IDT_VA = 0xfffffe0000000000n;
const HANDLER = 0xffffffff81a01230n;     // asm_exc_page_fault
const NEW_HANDLER = 0xffffffff81a05670n;
const LSTAR = 0xffffffff81c00040n;       // entry_SYSCALL_64
const STAR = (0x23n << 48n) | (0x10n << 32n);
const SFMASK = 0x47700n;                 // TF DF IF IOPL NT AC
// The #PF frame straddles two kernel-stack pages, mapped to non-adjacent RAM.
const KERNEL_RSP = 0xffffc90000013fe8n;
const SYSCALL_AT = 0x401234n;            // `0f 05` in user code
const USER_RSP = 0x7ffc12345670n;
const USER_CS = 0x33n;
const USER_SS = 0x2bn;
const USER_RFLAGS = 0x646n;              // IF DF PF ZF as the user ran (R11)
const MASKED_RFLAGS = 0x46n;             // after SFMASK, as the frame holds it

/** Guest RAM with 4-level page tables built on demand (tables from 1 MiB up). */
class GuestRam {
  readonly mem = GuestMemory.fake(8 << 20);
  readonly pml4 = 0x1000;
  private nextTable = 0x100000;

  /** Maps the 4 KiB page at `va` to `pa` (or a 2 MiB page when `large`). */
  map(va: bigint, pa: number, large = false): void {
    let table = this.pml4;
    for (let level = 4; level >= (large ? 2 : 1); level--) {
      const slot = table + Number((va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8;
      if (level === (large ? 2 : 1)) {
        this.mem.writeU64(slot, BigInt(pa) | (large ? 0x83n : 0x3n));
        return;
      }
      let entry = this.mem.readU64(slot);
      if (!(entry & 1n)) {
        entry = BigInt(this.nextTable) | 0x7n;
        this.nextTable += 0x1000;
        this.mem.writeU64(slot, entry);
      }
      table = Number(entry & 0x000ffffffffff000n);
    }
  }

  /** 4 KiB pages mapped with `page`, so the test can write through linear addresses. */
  private readonly pages: Array<[bigint, number]> = [];
  page(va: bigint, pa: number): void {
    this.map(va, pa);
    this.pages.push([va, pa]);
  }
  /** The RAM address behind `va`, for the test's own writes (set up by `page`). */
  pa(va: bigint): number {
    for (const [base, pa] of this.pages) if (va >= base && va < base + 0x1000n) return pa + Number(va - base);
    throw new Error(`not mapped by the test: 0x${va.toString(16)}`);
  }
}

function segment(selector: number, code: boolean, dpl: number): Segment {
  return { base: 0n, limit: 0xffffffff, selector, type: code ? 0xb : 0x3, present: 1, dpl, db: code ? 0 : 1, s: 1, l: code ? 1 : 0, g: 1, avl: 0, unusable: 0 };
}

/** IDT gates are written by physical address: the default IDT is at 0x200000 (2 MiB page), the moved one via `pa`. */
function writeGate(ram: GuestRam, idtVa: bigint, vector: number, handler: bigint, attributes = 0x8e): void {
  const at = (idtVa === IDT_VA ? 0x200000 : ram.pa(idtVa)) + vector * 16;
  ram.mem.writeU16(at, Number(handler & 0xffffn));
  ram.mem.writeU16(at + 2, 0x10);
  ram.mem.writeU8(at + 4, 0);
  ram.mem.writeU8(at + 5, attributes);
  ram.mem.writeU16(at + 6, Number((handler >> 16n) & 0xffffn));
  ram.mem.writeU32(at + 8, Number((handler >> 32n) & 0xffffffffn));
  ram.mem.writeU32(at + 12, 0);
}

interface Frame { error: bigint; rip: bigint; cs: bigint; rflags: bigint; rsp: bigint; ss: bigint }

/**
 * A guest stopped at the first instruction of its #PF handler: IDT[14] →
 * HANDLER, the frame at RSP, `syscall` in user code at SYSCALL_AT. By default
 * the frame is kvm_pvm's half-done syscall; tests change what they need.
 */
function guest(frame: Partial<Frame> = {}) {
  const ram = new GuestRam();
  ram.map(IDT_VA, 0x200000, true); // a 2 MiB page
  ram.page(0xffffc90000013000n, 0x20000);
  ram.page(0xffffc90000014000n, 0x30000);
  ram.page(0x401000n, 0x40000);
  ram.page(0xfffffe0000400000n, 0x50000); // a second IDT location for "the IDT moved"
  writeGate(ram, IDT_VA, 14, HANDLER);
  writeGate(ram, IDT_VA, 13, 0xffffffff81a00000n);
  ram.mem.write(ram.pa(SYSCALL_AT), Uint8Array.of(0x0f, 0x05));
  const f: Frame = { error: 0x15n, rip: LSTAR, cs: USER_CS, rflags: MASKED_RFLAGS | (1n << 16n), rsp: USER_RSP, ss: USER_SS, ...frame };
  [f.error, f.rip, f.cs, f.rflags, f.rsp, f.ss].forEach((v, i) => ram.mem.writeU64(ram.pa(KERNEL_RSP + BigInt(i * 8)), v));

  const zero = Object.fromEntries(Object.keys(abi.REG).map((k) => [k, 0n])) as Regs;
  const regs: Regs = { ...zero, rip: HANDLER, rsp: KERNEL_RSP, rcx: SYSCALL_AT + 2n, r11: USER_RFLAGS, rflags: 0x2n, rax: 39n };
  const userGs: Segment = { ...segment(0, false, 3), base: 0x7f0000001000n };
  const sregs: Sregs = {
    cs: segment(0x10, true, 0), ss: segment(0x18, false, 0), ds: segment(0, false, 3), es: segment(0, false, 3),
    fs: segment(0, false, 3), gs: userGs, tr: segment(0x40, false, 0), ldt: segment(0, false, 0),
    gdt: { base: 0xfffffe0000001000n, limit: 0x7f }, idt: { base: IDT_VA, limit: 0xfff },
    cr0: 0x80050033n, cr2: LSTAR, cr3: BigInt(ram.pml4), cr4: 0x20n, cr8: 0n, efer: 0xd01n, apic_base: 0xfee00900n,
  };
  const msrs = new Map<number, bigint>([[MSR_STAR, STAR], [MSR_LSTAR, LSTAR], [MSR_SYSCALL_MASK, SFMASK]]);
  const debug: Array<{ control: number; debugregs: bigint[] | null }> = [];
  const injected: number[] = [];
  const calls = { getSregs: 0, getMsrs: 0, setRegs: 0, setSregs: 0 };
  const cpu: SyscallCpu = {
    getRegs: () => ({ ...regs }),
    setRegs: (r) => { calls.setRegs++; Object.assign(regs, r); },
    getSregs: () => { calls.getSregs++; return { ...sregs, idt: { ...sregs.idt } }; },
    setSregs: (s) => { calls.setSregs++; Object.assign(sregs, s); },
    getMsrs: (indices) => {
      calls.getMsrs++;
      const out: bigint[] = [];
      for (const i of indices) {
        const v = msrs.get(i);
        if (v === undefined) break; // KVM stops at the first MSR it refuses
        out.push(v);
      }
      return out;
    },
    setGuestDebug: (control, debugregs) => { debug.push({ control, debugregs: debugregs ? [...debugregs] : null }); },
    injectException: (v) => { injected.push(v); },
  };
  const completion = new SyscallCompletion(cpu, ram.mem);
  return { ram, regs, sregs, msrs, debug, injected, calls, cpu, completion, before: { regs: { ...regs }, sregs: { ...sregs } } };
}

const armedAt = (handler: bigint) => ({ control: ARM, debugregs: [handler, 0n, 0n, 0n, 0n, 0n, 0n, 0x601n] });

test('arm() puts an execute breakpoint on the #PF handler read from IDT[14] through the page tables', (t) => {
  const g = guest();
  g.completion.arm();
  t.deepEqual(g.debug, [armedAt(HANDLER)]);
  t.is(g.completion.armedHandler, HANDLER);
  g.completion.recheck();
  t.is(g.debug.length, 1, 'an unchanged handler costs no ioctl');
  t.is(g.completion.handlerChanges, 0);
});

test('a half-done syscall is completed: CPL0 CS/SS from STAR, RIP = LSTAR, user RSP, masked RFLAGS', (t) => {
  const g = guest({ rflags: MASKED_RFLAGS | (1n << 16n) | (1n << 5n) | (1n << 40n) });
  g.completion.arm();
  t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'completed');
  t.is(g.regs.rip, LSTAR);
  t.is(g.regs.rsp, USER_RSP);
  t.is(g.regs.rflags, MASKED_RFLAGS, 'RF, reserved bits and SFMASK bits cleared; bit 1 set');
  t.is(g.regs.rcx, SYSCALL_AT + 2n, 'RCX untouched');
  t.is(g.regs.r11, USER_RFLAGS, 'R11 untouched');
  t.is(g.regs.rax, 39n);
  t.deepEqual(g.sregs.cs, { base: 0n, limit: 0xffffffff, selector: 0x10, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0 });
  t.deepEqual(g.sregs.ss, { base: 0n, limit: 0xffffffff, selector: 0x18, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 });
  t.deepEqual(g.sregs.gs, g.before.sregs.gs, 'GS still the user\'s (entry_SYSCALL_64 does swapgs)');
  t.is(g.sregs.idt, g.before.sregs.idt);
  t.is(g.calls.setSregs, 1);
  t.deepEqual(g.debug, [armedAt(HANDLER)], 'the breakpoint stays armed');
  t.is(g.completion.syscallsCompleted, 1);
  t.is(g.completion.faultsStepped, 0);
  const s = g.completion.stats();
  t.is(s.completed, 1);
  t.true(s.vmmNsPerCompletion !== undefined && s.vmmNsPerCompletion >= 0);
  t.is(s.vmmNsPerStep, undefined);
  t.is(s.handler, '0xffffffff81a01230');
});

test('a real user page fault is stepped over with the breakpoint off, then re-armed at the BS exit', (t) => {
  const g = guest({ rip: 0x401300n, rflags: 0x246n });
  g.completion.arm();
  t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped');
  t.deepEqual(g.debug.at(-1), { control: STEP, debugregs: null });
  t.deepEqual(g.regs, g.before.regs, 'registers untouched');
  t.is(g.calls.setSregs, 0);
  t.is(g.completion.faultsStepped, 1);
  t.is(g.completion.onDebugExit(HANDLER + 4n, DR6_BS), 'rearmed');
  t.deepEqual(g.debug.at(-1), armedAt(HANDLER));
  t.is(g.debug.length, 3);
  t.is(g.completion.syscallsCompleted, 0);
  t.true((g.completion.stats().vmmNsPerStep ?? -1) >= 0);
});

test('the re-arm after a step reads IDT[14] afresh', (t) => {
  const g = guest({ rip: 0x401300n });
  g.completion.arm();
  t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped');
  writeGate(g.ram, IDT_VA, 14, NEW_HANDLER);
  t.is(g.completion.onDebugExit(HANDLER + 4n, DR6_BS), 'rearmed');
  t.deepEqual(g.debug.at(-1), armedAt(NEW_HANDLER));
  t.is(g.completion.handlerChanges, 1);
});

test('a kernel page fault (CS at CPL0) is stepped without reading MSRs', (t) => {
  const g = guest({ rip: LSTAR, cs: 0x10n });
  g.completion.arm();
  t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped');
  t.is(g.calls.getMsrs, 0);
  t.deepEqual(g.regs, g.before.regs);
});

test('an unreadable frame (RSP unmapped, outside RAM, or non-canonical) is stepped, never thrown', (t) => {
  for (const rsp of [0xffffc90000099000n, 0xffffc90000014ff8n, 0x0000800000000000n, 0xfffffffffffffff8n]) {
    const g = guest();
    g.completion.arm();
    g.regs.rsp = rsp;
    t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped', `rsp 0x${rsp.toString(16)}`);
    t.is(g.calls.setRegs, 0);
  }
  // Mapped, but to a page beyond RAM.
  const g = guest();
  g.ram.map(0xffffc900000aa000n, 0x4000_0000);
  g.completion.arm();
  g.regs.rsp = 0xffffc900000aaf00n;
  t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped');
});

test('recheck() follows IDT[14] when the guest changes it, and when the IDT moves', (t) => {
  const g = guest();
  g.completion.arm();
  writeGate(g.ram, IDT_VA, 14, NEW_HANDLER);
  g.completion.recheck();
  t.deepEqual(g.debug.at(-1), armedAt(NEW_HANDLER));
  t.is(g.completion.armedHandler, NEW_HANDLER);
  t.is(g.completion.handlerChanges, 1);
  // The IDTR base moves to a new table whose #PF gate is the first handler again.
  writeGate(g.ram, 0xfffffe0000400000n, 14, HANDLER);
  g.sregs.idt = { base: 0xfffffe0000400000n, limit: 0xff };
  g.completion.recheck();
  t.deepEqual(g.debug.at(-1), armedAt(HANDLER));
  t.is(g.completion.handlerChanges, 2);
  t.is(g.debug.length, 3);
  g.completion.recheck();
  t.is(g.debug.length, 3, 'nothing to do when nothing changed');
});

test('a breakpoint left on an old handler is moved, not taken as a page fault', (t) => {
  const g = guest();
  g.completion.arm();
  writeGate(g.ram, IDT_VA, 14, NEW_HANDLER);
  t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'rearmed');
  t.deepEqual(g.debug.at(-1), armedAt(NEW_HANDLER));
  t.is(g.calls.setRegs, 0);
});

test('a hostile or unready IDTR arms nothing and throws nothing', (t) => {
  const cases: Array<[string, (g: ReturnType<typeof guest>) => void]> = [
    ['limit one byte short of entry 14', (g) => { g.sregs.idt.limit = 14 * 16 + 14; }],
    ['limit 0 (no IDT yet)', (g) => { g.sregs.idt.limit = 0; }],
    ['non-canonical base', (g) => { g.sregs.idt.base = 0x0000900000000000n; }],
    ['base wrapping past 2^64', (g) => { g.sregs.idt.base = 0xffffffffffffff80n; }],
    ['base unmapped', (g) => { g.sregs.idt.base = 0xfffffe8000000000n; }],
    ['gate not present', (g) => writeGate(g.ram, IDT_VA, 14, HANDLER, 0x0e)],
    ['a call gate', (g) => writeGate(g.ram, IDT_VA, 14, HANDLER, 0x8c)],
    ['a non-canonical handler', (g) => writeGate(g.ram, IDT_VA, 14, 0x8000000000001000n)],
    ['not in long mode', (g) => { g.sregs.efer = 0n; }],
  ];
  for (const [name, spoil] of cases) {
    const g = guest();
    spoil(g);
    t.notThrows(() => g.completion.arm(), name);
    t.notThrows(() => g.completion.recheck(), name);
    t.deepEqual(g.debug, [], name);
    t.is(g.completion.armedHandler, null, name);
    t.is(pageFaultHandler(g.ram.mem, g.sregs), null, name);
  }
  // Trap gates are fine.
  const g = guest();
  writeGate(g.ram, IDT_VA, 14, HANDLER, 0x8f);
  g.completion.arm();
  t.deepEqual(g.debug, [armedAt(HANDLER)]);
});

test('an IDT that turns hostile after arming disarms the breakpoint', (t) => {
  const g = guest();
  g.completion.arm();
  g.sregs.idt.limit = 0x10;
  g.completion.recheck();
  t.deepEqual(g.debug.at(-1), { control: 0, debugregs: null });
  t.is(g.completion.armedHandler, null);
});

test('RIP == LSTAR without `0f 05` before RCX (a user jump to LSTAR) is stepped, not completed', (t) => {
  for (const rcx of [SYSCALL_AT + 3n, 0x500002n, 1n, 0x0000800000000001n]) {
    const g = guest();
    g.regs.rcx = rcx;
    g.completion.arm();
    t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped', `rcx 0x${rcx.toString(16)}`);
    t.is(g.calls.setRegs, 0);
    t.is(g.calls.setSregs, 0);
  }
});

test('a forged syscall (a user jump to LSTAR: IF still set in the frame) is not completed', (t) => {
  const interruptsOn = guest({ rflags: 0x246n });
  interruptsOn.regs.r11 = 0x246n;
  interruptsOn.completion.arm();
  t.is(interruptsOn.completion.onDebugExit(HANDLER, DR6_B0), 'stepped');
  t.is(interruptsOn.calls.setRegs, 0);
});

test('hostile or unusable MSRs and EFER are not completed', (t) => {
  const cases: Array<[string, (g: ReturnType<typeof guest>) => void]> = [
    ['STAR CS selector 0', (g) => g.msrs.set(MSR_STAR, 0x23n << 48n)],
    ['STAR CS selector 3 (null with RPL 3)', (g) => g.msrs.set(MSR_STAR, (0x23n << 48n) | (0x3n << 32n))],
    ['STAR CS with RPL bits', (g) => g.msrs.set(MSR_STAR, (0x23n << 48n) | (0x13n << 32n))],
    ['STAR CS whose SS would wrap', (g) => g.msrs.set(MSR_STAR, (0x23n << 48n) | (0xfff8n << 32n))],
    ['LSTAR differs from the frame RIP', (g) => g.msrs.set(MSR_LSTAR, LSTAR + 0x10n)],
    ['LSTAR on the #PF handler itself', (g) => {
      g.msrs.set(MSR_LSTAR, HANDLER);
      g.ram.mem.writeU64(g.ram.pa(KERNEL_RSP + 8n), HANDLER); // frame RIP, so only this check refuses
    }],
    ['the host refuses SFMASK', (g) => g.msrs.delete(MSR_SYSCALL_MASK)],
    ['EFER.SCE clear', (g) => { g.sregs.efer = 0xd00n; }],
  ];
  for (const [name, spoil] of cases) {
    const g = guest();
    spoil(g);
    g.completion.arm();
    t.is(g.completion.onDebugExit(HANDLER, DR6_B0), 'stepped', name);
    t.is(g.calls.setSregs, 0, name);
    t.is(g.regs.rip, HANDLER, name);
  }
});

test('a #DB that is not ours is re-injected into the guest', (t) => {
  const g = guest();
  g.completion.arm();
  t.is(g.completion.onDebugExit(0x401100n, DR6_BS), 'reinjected', 'the guest single-stepping itself');
  t.deepEqual(g.injected, [1]);
  t.is(g.completion.debugReinjected, 1);
  t.is(g.debug.length, 1, 'the breakpoint stays as it was');
  // While stepping, only a BS exit ends the step; another #DB goes back to the guest.
  const s = guest({ rip: 0x401300n });
  s.completion.arm();
  t.is(s.completion.onDebugExit(HANDLER, DR6_B0), 'stepped');
  t.is(s.completion.onDebugExit(0xffffffff81000000n, 0xffff0ff2n), 'reinjected');
  t.deepEqual(s.debug.at(-1), { control: STEP, debugregs: null }, 'still stepping');
  t.is(s.completion.onDebugExit(HANDLER + 4n, DR6_BS), 'rearmed');
});

test('a step that never reports is given up after two rechecks, and the breakpoint re-armed', (t) => {
  const g = guest({ rip: 0x401300n });
  g.completion.arm();
  g.completion.onDebugExit(HANDLER, DR6_B0);
  g.completion.recheck();
  t.deepEqual(g.debug.at(-1), { control: STEP, debugregs: null });
  g.completion.recheck();
  t.deepEqual(g.debug.at(-1), armedAt(HANDLER));
});

test('--stats shows one syscall line only when completion ran', (t) => {
  const base: ExitStats = { exitsByReason: {}, pioByPort: {}, mmioByRegion: {}, fixups: {}, unclaimedPio: 0, unclaimedMmio: 0, totalExits: 0, runMs: 1 };
  t.notRegex(formatStats(base), /syscall/);
  const text = formatStats({ ...base, syscalls: { completed: 390, faultsStepped: 816, debugReinjected: 0, handlerChanges: 1, handler: '0xffffffff81a01230', vmmNsPerCompletion: 41_000, vmmNsPerStep: 30_500 } });
  const lines = text.split('\n').filter((l) => /syscall/.test(l));
  t.is(lines.length, 1);
  t.is(lines[0], 'syscalls completed by tsvisor: 390 (41.0 µs each); #PF stepped: 816 (30.5 µs each); guest #DB re-injected: 0; #PF handler changes: 1; breakpoint last on 0xffffffff81a01230');
});

test('the KVM ABI numbers match <linux/kvm.h>', (t) => {
  t.is(abi.KVM_SET_GUEST_DEBUG, 0x4048ae9b);
  t.is(abi.KVM_GET_MSRS, 0xc008ae88);
  t.deepEqual([abi.RUN.debug_exception, abi.RUN.debug_pc, abi.RUN.debug_dr6, abi.RUN.debug_dr7], [32, 40, 48, 56]);
  t.deepEqual([abi.KVM_GUESTDBG_ENABLE, abi.KVM_GUESTDBG_SINGLESTEP, abi.KVM_GUESTDBG_USE_HW_BP], [1, 2, 0x20000]);
});

/** A Vcpu stand-in for RunLoop: each enter() plays the next scripted exit, then HLT ends the run. */
function scriptedVcpu(g: ReturnType<typeof guest>, exits: Array<{ pc: bigint; dr6: bigint }>) {
  const page = new ArrayBuffer(4096);
  const run = new DataView(page);
  const vcpu = {
    ...g.cpu,
    run,
    runBytes: new Uint8Array(page),
    enter: () => {
      const e = exits.shift();
      run.setUint32(abi.RUN.exit_reason, e ? abi.KVM_EXIT_DEBUG : abi.KVM_EXIT_HLT, true);
      if (e) {
        run.setBigUint64(abi.RUN.debug_pc, e.pc, true);
        run.setBigUint64(abi.RUN.debug_dr6, e.dr6, true);
      }
      return 0;
    },
  };
  return vcpu as unknown as Vcpu;
}

test('the run loop arms before the first KVM_RUN and hands KVM_EXIT_DEBUG to the completion', (t) => {
  const g = guest();
  const loop = new RunLoop(scriptedVcpu(g, [{ pc: HANDLER, dr6: DR6_B0 }]), g.ram.mem, new PioBus(), new MmioBus(), new Int32Array(8), 0, 2, 4, g.completion);
  const end = loop.loop();
  t.is(end.kind, 'poweroff');
  t.deepEqual(g.debug, [armedAt(HANDLER)]);
  t.is(g.regs.rip, LSTAR);
  const stats = loop.stats(() => '', []);
  t.is(stats.exitsByReason.DEBUG, 1);
  t.is(stats.syscalls?.completed, 1);
});

test('without SYSCALL completion a KVM_EXIT_DEBUG ends the run as an internal error', (t) => {
  const g = guest();
  const loop = new RunLoop(scriptedVcpu(g, [{ pc: HANDLER, dr6: DR6_B0 }]), g.ram.mem, new PioBus(), new MmioBus(), new Int32Array(8), 0, 2, 4);
  const end = loop.loop();
  t.is(end.kind, 'internal-error');
  t.regex(end.message, /KVM_EXIT_DEBUG/);
  t.is(loop.stats(() => '', []).syscalls, undefined);
});
