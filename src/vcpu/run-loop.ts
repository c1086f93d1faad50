// The vCPU run loop: KVM_RUN, then dispatch the exit — port I/O and MMIO to
// the bus, emulation failures to the fix-ups, debug exits to SYSCALL
// completion (kvm_pvm), the rest to the end of the run.
// This is the exit path whose latency the product measures: it allocates
// nothing per exit and reads exit fields straight from the mmap'd kvm_run.
import * as abi from '../kvm/abi.js';
import type { Vcpu } from '../kvm/vcpu.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { MmioBus, PioBus } from '../bus/io-bus.js';
import { EINTR, EAGAIN } from '../sys/libc.js';
import { completeInstruction, hex } from './fixups.js';
import { readLinear } from './page-walk.js';
import type { SyscallCompletion } from './syscall-completion.js';
import type { ForwardedDevice, MailboxServer } from './exit-forwarding.js';
import type { ExitKind, ExitStats } from './protocol.js';

export interface RunEnd {
  kind: ExitKind;
  code?: number;
  message: string;
}

/** What puts the vCPU to sleep: how long for, and where the guest goes on (src/vcpu/suspend.ts). */
export interface Sleeper {
  wakeInMs(): number | null;
  resume(): RunEnd | null;
}

export class RunLoop {
  private readonly run: DataView;
  private readonly runBytes: Uint8Array;
  readonly exitCounts = new Float64Array(64);
  readonly fixupCounts = new Map<string, number>();
  readonly ripSamples = new Map<bigint, number>();
  unclaimedPio = 0;
  unclaimedMmio = 0;
  private end: RunEnd | null = null;
  private startedAt = 0;
  /** A sleep the guest asked for (ACPI S3), taken once the current exit is handled. */
  private sleepRequest: Sleeper | null = null;

  constructor(
    private readonly vcpu: Vcpu,
    private readonly mem: GuestMemory,
    private readonly pio: PioBus,
    private readonly mmio: MmioBus,
    private readonly control: Int32Array,
    private readonly stopWord: number,
    private readonly sampleWord: number,
    private readonly checkHaltWord: number,
    /** Present when this vCPU completes the SYSCALLs kvm_pvm leaves half done. */
    private readonly syscalls: SyscallCompletion | null = null,
    /**
     * With several vCPUs (src/vcpu/exit-forwarding.ts): the BSP's `server`
     * answers the APs' device exits; an AP's `forwarded` device carries them.
     * `pollStart`: an AP waits for its SIPI outside KVM_RUN (kvm_pvm; see waitForStart).
     */
    private readonly smp: { server?: MailboxServer; forwarded?: ForwardedDevice; vcpuId?: number; pollStart?: boolean } = {},
  ) {
    this.run = vcpu.run;
    this.runBytes = vcpu.runBytes;
  }

  /** Ends the run after the current exit is handled (devices call this: reset, debug-exit). */
  finish(end: RunEnd): void {
    if (!this.end) this.end = end;
  }

  /**
   * Keeps the vCPU out of KVM_RUN once the current exit is handled, for
   * `wakeInMs()` milliseconds (null: until the VMM stops it), then calls
   * `resume` to set where the guest goes on (src/vcpu/suspend.ts).
   */
  sleep(sleeper: Sleeper): void {
    this.sleepRequest = sleeper;
  }

  /** Waits outside KVM_RUN; false if the VMM stopped the vCPU meanwhile. */
  private waitOutside(ms: number | null): boolean {
    const deadline = ms === null ? Infinity : performance.now() + ms;
    for (;;) {
      if (Atomics.load(this.control, this.stopWord)) return false;
      const left = deadline - performance.now();
      if (left <= 0) return true;
      // Slices, so that a stop is seen within 100 ms whoever signals it.
      Atomics.wait(this.control, this.stopWord, 0, Math.min(left, 100));
    }
  }

  loop(): RunEnd {
    this.startedAt = performance.now();
    const run = this.run;
    const counts = this.exitCounts;
    const server = this.smp.server ?? null;
    if (this.smp.forwarded && this.smp.pollStart) {
      const stopped = this.waitForStart();
      if (stopped) return stopped;
    }
    this.syscalls?.arm();
    while (this.end === null) {
      const r = this.vcpu.enter();
      if (r < 0) {
        if (r === -EINTR || r === -EAGAIN) {
          // Cleared before serving the mailbox, so an AP that posts after the serve kicks again.
          run.setUint8(abi.RUN.immediate_exit, 0);
          server?.serveAfterKick();
          if (Atomics.load(this.control, this.sampleWord)) this.sample();
          if (Atomics.load(this.control, this.stopWord)) return { kind: 'stopped', message: 'stopped by the VMM' };
          if (Atomics.load(this.control, this.checkHaltWord)) {
            // The same periodic kick keeps the #PF breakpoint on the guest's current handler.
            this.syscalls?.recheck();
            this.checkHalt();
          }
          continue;
        }
        return { kind: 'error', message: `KVM_RUN failed: errno ${-r}` };
      }
      const reason = run.getUint32(abi.RUN.exit_reason, true);
      counts[reason & 63]++;
      switch (reason) {
        case abi.KVM_EXIT_IO:
          this.handleIo();
          break;
        case abi.KVM_EXIT_MMIO:
          this.handleMmio();
          break;
        case abi.KVM_EXIT_INTERNAL_ERROR:
          this.handleInternalError();
          break;
        case abi.KVM_EXIT_DEBUG:
          this.handleDebug();
          break;
        case abi.KVM_EXIT_SHUTDOWN:
          this.finish({ kind: 'triple-fault', message: this.tripleFault() });
          break;
        case abi.KVM_EXIT_HLT:
          this.finish({ kind: 'poweroff', message: 'the guest halted with interrupts off' });
          break;
        case abi.KVM_EXIT_SYSTEM_EVENT: {
          const type = run.getUint32(abi.RUN.system_event_type, true);
          // 1 SHUTDOWN, 2 RESET, 3 CRASH
          if (type === 2) this.finish({ kind: 'reset', message: 'the guest reset the machine' });
          else if (type === 1) this.finish({ kind: 'poweroff', message: 'the guest powered off' });
          else this.finish({ kind: 'internal-error', message: `system event ${type}` });
          break;
        }
        case abi.KVM_EXIT_FAIL_ENTRY:
          this.finish({ kind: 'internal-error', message: `KVM could not enter the guest (hardware reason 0x${run.getBigUint64(abi.RUN.fail_entry_reason, true).toString(16)})` });
          break;
        case abi.KVM_EXIT_INTR:
          if (Atomics.load(this.control, this.sampleWord)) this.sample();
          if (Atomics.load(this.control, this.stopWord)) return this.stopped();
          break;
        default:
          this.finish({ kind: 'internal-error', message: `unexpected exit ${abi.EXIT_REASON_NAMES[reason] ?? reason} at ${this.where()}` });
      }
      if (this.sleepRequest !== null && this.end === null) {
        const sleeper = this.sleepRequest;
        this.sleepRequest = null;
        const ms = sleeper.wakeInMs();
        if (!this.waitOutside(ms)) return { kind: 'stopped', message: `stopped by the VMM while the guest slept in ACPI S3${ms === null ? ' with no wake-up set (the RTC alarm, with PM1_EN.RTC_EN)' : ''}` };
        const end = sleeper.resume();
        if (end) this.finish(end);
      }
      if (server !== null) server.serve();
    }
    return this.end;
  }

  private handleIo(): void {
    const run = this.run;
    const dir = run.getUint8(abi.RUN.io_direction);
    const size = run.getUint8(abi.RUN.io_size);
    const port = run.getUint16(abi.RUN.io_port, true);
    const count = run.getUint32(abi.RUN.io_count, true);
    // data_offset is a u64 holding an offset into this page: its low word is all of it.
    // (getBigUint64 would allocate a BigInt on every exit.)
    let off = run.getUint32(abi.RUN.io_data_offset, true);
    if (run.getUint32(abi.RUN.io_data_offset + 4, true) !== 0) return;
    if (size !== 1 && size !== 2 && size !== 4) return;
    if (off + size * count > this.runBytes.byteLength) return;
    this.pio.counts[port]++;
    const dev = this.pio.lookup(port);
    for (let i = 0; i < count; i++, off += size) {
      if (dir === abi.KVM_EXIT_IO_OUT) {
        const v = size === 1 ? run.getUint8(off) : size === 2 ? run.getUint16(off, true) : run.getUint32(off, true);
        if (dev) dev.pioWrite(port, size, v);
        else this.unclaimedPio++;
      } else {
        let v = 0xffffffff;
        if (dev) v = dev.pioRead(port, size);
        else this.unclaimedPio++;
        if (size === 1) run.setUint8(off, v & 0xff);
        else if (size === 2) run.setUint16(off, v & 0xffff, true);
        else run.setUint32(off, v >>> 0, true);
      }
    }
  }

  private handleMmio(): void {
    const run = this.run;
    // Two 32-bit halves, not getBigUint64: no BigInt allocated per exit.
    const addr = run.getUint32(abi.RUN.mmio_phys_addr + 4, true) * 0x100000000 + run.getUint32(abi.RUN.mmio_phys_addr, true);
    const len = run.getUint32(abi.RUN.mmio_len, true);
    const isWrite = run.getUint8(abi.RUN.mmio_is_write) !== 0;
    const i = this.mmio.find(addr);
    const d = abi.RUN.mmio_data;
    if (i < 0) {
      this.unclaimedMmio++;
      if (!isWrite) for (let k = 0; k < 8; k++) run.setUint8(d + k, 0xff);
      return;
    }
    this.mmio.counts[i]++;
    const range = this.mmio.ranges[i];
    const off = addr - range.base;
    const dev = range.device;
    // 8-byte accesses go to the device as two 4-byte halves, low first.
    if (isWrite) {
      if (len === 1) dev.mmioWrite(off, 1, run.getUint8(d));
      else if (len === 2) dev.mmioWrite(off, 2, run.getUint16(d, true));
      else if (len === 4) dev.mmioWrite(off, 4, run.getUint32(d, true));
      else if (len === 8) {
        dev.mmioWrite(off, 4, run.getUint32(d, true));
        dev.mmioWrite(off + 4, 4, run.getUint32(d + 4, true));
      }
    } else {
      if (len === 1) run.setUint8(d, dev.mmioRead(off, 1) & 0xff);
      else if (len === 2) run.setUint16(d, dev.mmioRead(off, 2) & 0xffff, true);
      else if (len === 4) run.setUint32(d, dev.mmioRead(off, 4) >>> 0, true);
      else if (len === 8) {
        run.setUint32(d, dev.mmioRead(off, 4) >>> 0, true);
        run.setUint32(d + 4, dev.mmioRead(off + 4, 4) >>> 0, true);
      }
    }
  }

  /** The faulting instruction's bytes: from KVM when it supplied them, else read through the guest page tables. */
  private instructionBytes(): Uint8Array {
    const run = this.run;
    const flags = run.getBigUint64(abi.RUN.emulation_flags, true);
    const ndata = run.getUint32(abi.RUN.internal_ndata, true);
    if (flags & BigInt(abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) && ndata >= 3) {
      const n = Math.min(run.getUint8(abi.RUN.emulation_insn_size), 15);
      if (n > 0) return this.runBytes.slice(abi.RUN.emulation_insn_bytes, abi.RUN.emulation_insn_bytes + n);
    }
    const regs = this.vcpu.getRegs();
    const sregs = this.vcpu.getSregs();
    return readLinear(this.mem, sregs, sregs.cs.base + regs.rip, 15);
  }

  private handleInternalError(): void {
    const run = this.run;
    const suberror = run.getUint32(abi.RUN.internal_suberror, true);
    if (suberror !== abi.KVM_INTERNAL_ERROR_EMULATION) {
      this.finish({ kind: 'internal-error', message: `KVM internal error, suberror ${suberror}, at ${this.where()}` });
      return;
    }
    const bytes = this.instructionBytes();
    const result = completeInstruction(bytes, this.vcpu, this.mem);
    if ('refused' in result) {
      this.finish({ kind: 'emulation-failure', message: `KVM could not emulate the instruction [${hex(bytes)}] at ${this.where()}, and ${result.refused}` });
      return;
    }
    this.fixupCounts.set(result.done, (this.fixupCounts.get(result.done) ?? 0) + 1);
  }

  /** A breakpoint or step of SYSCALL completion, or the guest's own #DB; not a hot path, so BigInts are fine. */
  private handleDebug(): void {
    if (!this.syscalls) {
      this.finish({ kind: 'internal-error', message: `unexpected KVM_EXIT_DEBUG (tsvisor set no guest debugging) at ${this.where()}` });
      return;
    }
    this.syscalls.onDebugExit(this.run.getBigUint64(abi.RUN.debug_pc, true), this.run.getBigUint64(abi.RUN.debug_dr6, true));
  }

  /**
   * A vCPU halted with interrupts disabled can never run again (no NMI source
   * here): that is how Linux without ACPI ends `poweroff -f` and `halt`, the
   * APs first. The main thread asks about four times a second. An AP only
   * records its answer (an AP the guest never started counts as halted); the
   * BSP's answer ends the run once every AP has said so too.
   */
  private checkHalt(): void {
    Atomics.store(this.control, this.checkHaltWord, 0);
    // Interrupts first, KVM_GET_MP_STATE only when they are off. A running guest
    // nearly always has them on, and that ioctl is not free: where KVM offers MPX
    // it swaps the vCPU's FPU state in and out (kvm_arch_vcpu_ioctl_get_mpstate).
    // Under the lane's emulated SVM, frequent calls of it on other vCPUs were
    // followed by vCPU 0 triple-faulting (docs/testing.md); QEMU never makes them.
    const interruptsOn = (this.vcpu.getRegs().rflags & BigInt(abi.X86_EFLAGS_IF)) !== 0n;
    const forwarded = this.smp.forwarded;
    if (forwarded) {
      // An AP the guest never started has interrupts off (its reset state) and counts as halted.
      const state = interruptsOn ? -1 : this.vcpu.getMpState();
      forwarded.setHalted(state === abi.KVM_MP_STATE_UNINITIALIZED || state === abi.KVM_MP_STATE_INIT_RECEIVED || state === abi.KVM_MP_STATE_HALTED);
      return;
    }
    if (interruptsOn || this.vcpu.getMpState() !== abi.KVM_MP_STATE_HALTED) return;
    if (this.smp.server && !this.smp.server.allApsHalted()) return;
    this.finish({ kind: 'poweroff', message: 'the guest halted with interrupts disabled (a power-off or halt)' });
  }

  /**
   * An AP before the guest starts it, on kvm_pvm: KVM_GET_MP_STATE (which
   * takes in a pending INIT or SIPI) every millisecond until it is runnable.
   * Not KVM_RUN: kvm_pvm spins in it for an AP that waits for its SIPI, a
   * core burnt for as long as the guest takes to boot its BSP (and that BSP
   * then ran several times slower). Hardware KVM sleeps there, so elsewhere
   * an AP goes straight into KVM_RUN, as QEMU's do: in the hardware-KVM lane
   * this polling was followed by vCPU 0 triple-faulting in 2 of 2 four-vCPU
   * boots, and entering KVM_RUN instead by none (see checkHalt). Returns the
   * end when stopped before starting.
   */
  private waitForStart(): RunEnd | null {
    for (;;) {
      if (Atomics.load(this.control, this.stopWord)) return { kind: 'stopped', message: 'stopped by the VMM (before the guest started this vCPU)' };
      if (Atomics.load(this.control, this.checkHaltWord)) this.checkHalt();
      const state = this.vcpu.getMpState();
      if (state !== abi.KVM_MP_STATE_UNINITIALIZED && state !== abi.KVM_MP_STATE_INIT_RECEIVED) return null;
      Atomics.wait(this.control, this.stopWord, 0, 1);
    }
  }

  private sample(): void {
    Atomics.store(this.control, this.sampleWord, 0);
    const rip = this.vcpu.getRegs().rip;
    this.ripSamples.set(rip, (this.ripSamples.get(rip) ?? 0) + 1);
  }

  /**
   * The end when the VMM stops the vCPU (vm.stop(), a signal, --timeout):
   * where the guest was, so that a guest stuck somewhere says where.
   */
  private stopped(): RunEnd {
    let at = '';
    try {
      const r = this.vcpu.getRegs();
      const s = this.vcpu.getSregs();
      const halted = this.vcpu.getMpState() === abi.KVM_MP_STATE_HALTED;
      at = ` (the vCPU was ${halted ? 'halted' : 'running'} at rip=0x${r.rip.toString(16)}, CPL ${s.cs.selector & 3}, ${this.totalExits()} exits so far)`;
    } catch {
      /* registers unavailable: the plain message */
    }
    return { kind: 'stopped', message: `stopped by the VMM${at}` };
  }

  private totalExits(): number {
    let n = 0;
    for (const c of this.exitCounts) n += c;
    return n;
  }

  /** RIP and the general registers, for error messages. */
  /**
   * On AMD SVM, KVM puts a vCPU through INIT on a shutdown intercept (the VMCB
   * is undefined after one), so its registers are the reset state, not the
   * fault's: say so rather than report 0xfff0 as where the guest was.
   */
  private tripleFault(): string {
    const who = this.smp.vcpuId === undefined ? 'the guest' : `the guest's vCPU ${this.smp.vcpuId}`;
    const where = this.where();
    const reset = /rip=0xfff0 .* cs=0xf000$/.test(where);
    return `${who} triple-faulted (KVM_EXIT_SHUTDOWN)${reset ? '; KVM reset its registers on the shutdown (AMD SVM does), so where it faulted is lost' : ` at ${where}`}`;
  }

  private where(): string {
    try {
      const r = this.vcpu.getRegs();
      const s = this.vcpu.getSregs();
      const h = (v: bigint) => '0x' + v.toString(16);
      return `rip=${h(r.rip)} rsp=${h(r.rsp)} rax=${h(r.rax)} rbx=${h(r.rbx)} rcx=${h(r.rcx)} rdx=${h(r.rdx)} rsi=${h(r.rsi)} rdi=${h(r.rdi)} rflags=${h(r.rflags)} cr0=${h(s.cr0)} cr3=${h(s.cr3)} cr4=${h(s.cr4)} efer=${h(s.efer)} cs=${h(BigInt(s.cs.selector))}`;
    } catch {
      return 'an unknown RIP';
    }
  }

  stats(pioNames: (port: number) => string, mmioNames: string[]): ExitStats {
    const exitsByReason: Record<string, number> = {};
    let total = 0;
    this.exitCounts.forEach((n, r) => {
      if (n > 0) { exitsByReason[abi.EXIT_REASON_NAMES[r] ?? String(r)] = n; total += n; }
    });
    const pioByPort: Record<string, number> = {};
    this.pio.counts.forEach((n, p) => {
      if (n > 0) pioByPort[`0x${p.toString(16)} ${pioNames(p)}`] = n;
    });
    const mmioByRegion: Record<string, number> = {};
    mmioNames.forEach((name, i) => {
      if (this.mmio.counts[i] > 0) mmioByRegion[name] = this.mmio.counts[i];
    });
    const ripSamples: Record<string, number> = {};
    for (const [rip, n] of this.ripSamples) ripSamples['0x' + rip.toString(16)] = n;
    return {
      exitsByReason, pioByPort, mmioByRegion,
      fixups: Object.fromEntries(this.fixupCounts),
      unclaimedPio: this.unclaimedPio + (this.smp.server?.unclaimedPio ?? 0), unclaimedMmio: this.unclaimedMmio + (this.smp.server?.unclaimedMmio ?? 0),
      totalExits: total, runMs: performance.now() - this.startedAt,
      ripSamples: this.ripSamples.size ? ripSamples : undefined,
      syscalls: this.syscalls?.stats(),
    };
  }
}
