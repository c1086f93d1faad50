// What the main thread and a vCPU worker tell each other: the data a worker
// starts with, the control words they share, and the message a worker ends with.
import type { SerialShared } from '../devices/serial.js';
import type { HostKind } from '../kvm/system.js';
import type { VcpuDeviceSpec } from '../devices/virtio/vcpu-devices.js';
import type { FwCfgItem } from '../devices/fw-cfg.js';
import type { ThreadCpu } from '../util/thread-cpu.js';

export interface VcpuWorkerData {
  /** KVM's vCPU id, also its APIC id: 0 is the boot processor, whose thread owns the devices. */
  vcpuId: number;
  vcpuFd: number;
  vmFd: number;
  mmapSize: number;
  ram: Array<{ gpa: number; size: number; hostAddress: bigint }>;
  serial: SerialShared;
  /** Int32 control words, see CONTROL_*. */
  control: SharedArrayBuffer;
  /** Rung when serial output is waiting. */
  consoleDoorbellFd: number;
  hostKind: HostKind;
  /** PCI devices the worker puts on bus 0 next to the host bridge (their register exits run on the vCPU thread). */
  devices?: VcpuDeviceSpec[];
  /**
   * Complete the guest's SYSCALLs in userspace (src/vcpu/syscall-completion.ts):
   * needed on kvm_pvm, which leaves them half done; tests may force it on hardware KVM.
   */
  syscallCompletion?: boolean;
  /** fw_cfg's items (src/devices/fw-cfg.ts), built by the main thread; the worker answers ports 0x510-0x511 with them. */
  fwCfg?: FwCfgItem[];
  /** The ACPI tables were written: answer their PM block (src/devices/acpi-pm.ts). */
  acpi?: boolean;
  /** QEMU's ISA test device (`--device pc-testdev`, src/devices/pc-testdev.ts) on this thread's buses. */
  pcTestdev?: boolean;
  /**
   * With several vCPUs: the mailbox through which the APs' device exits reach
   * the BSP's thread (src/vcpu/exit-forwarding.ts), and, for an AP, the BSP's
   * vCPU fd (to map its kvm_run for kicks) and control words (its thread id).
   */
  smp?: { mailbox: SharedArrayBuffer; bspVcpuFd: number; bspControl: SharedArrayBuffer };
}

// Control words (Int32Array over `control`).
export const CONTROL_STOP = 0;       // main → worker: leave the run loop
export const CONTROL_TID = 1;        // worker → main: its kernel thread id, for kicks
export const CONTROL_SAMPLE = 2;     // main → worker: record RIP at the next kick
export const CONTROL_RUNNING = 3;    // worker → main: 1 while in the run loop
export const CONTROL_CHECK_HALT = 4; // main → worker: at the next kick, end the run if the vCPU is halted for good
export const CONTROL_WORDS = 5;

/** Why a run ended. Exit statuses are distinct per kind (see `exitStatusOf`). */
export type ExitKind =
  | 'reset'            // the guest rebooted (i8042 reset, reset system event)
  | 'poweroff'         // the guest powered off
  | 'debug-exit'       // a write to the debug-exit port
  | 'triple-fault'     // KVM_EXIT_SHUTDOWN
  | 'emulation-failure'// an instruction neither KVM nor tsvisor could complete
  | 'internal-error'   // another KVM internal error, or a failed entry
  | 'stopped'          // the VMM stopped the guest (vm.stop(), a signal)
  | 'timeout'          // --timeout passed
  | 'error'            // a failure inside tsvisor
  | 'vmm-bug'          // an exception in tsvisor's own code (a bug): the guest was stopped
  // Only when the guest runs a command (BootOptions.command, src/guest/command.ts):
  | 'command'          // the command finished; `code` is its exit status
  | 'panic'            // the guest kernel panicked
  | 'no-init'          // the guest ended before its init ran
  | 'no-status';       // the guest ended after init started, without the command's status

export interface ExitStats {
  exitsByReason: Record<string, number>;
  pioByPort: Record<string, number>;
  mmioByRegion: Record<string, number>;
  fixups: Record<string, number>;
  unclaimedPio: number;
  unclaimedMmio: number;
  totalExits: number;
  runMs: number;
  /** Guest RIP samples (hex address → count), when sampling was on. */
  ripSamples?: Record<string, number>;
  /**
   * CPU time at the end of the run: the vCPU thread's (its system time is
   * mostly KVM, its guest time the guest's) and the whole process's. tsvisor's
   * own share is process user + system − vCPU system − vCPU guest.
   */
  cpu?: { vcpu: ThreadCpu; processUserMs: number; processSysMs: number; vmmMs: number };
  /** SYSCALL completion's work, when it was on (summed over the vCPUs). */
  syscalls?: SyscallStats;
  /** With several vCPUs: each one's exits (and its thread's CPU time); the fields above are the totals. */
  vcpus?: Array<{ id: number; totalExits: number; exitsByReason: Record<string, number>; cpu?: ThreadCpu }>;
}

/** What SYSCALL completion did in a run: counts, and tsvisor's mean time per completion and per #PF step. */
export interface SyscallStats {
  completed: number;
  faultsStepped: number;
  debugReinjected: number;
  handlerChanges: number;
  /** The guest #PF handler the breakpoint was last on (hex), if any. */
  handler?: string;
  vmmNsPerCompletion?: number;
  vmmNsPerStep?: number;
}

export interface VcpuExitMessage {
  type: 'exit';
  kind: ExitKind;
  code?: number;
  message: string;
  stats: ExitStats;
}

/**
 * Statuses of a command run (src/guest/command.ts) that did not end with the
 * command's own status: above the ones commands use by convention (0-125,
 * 126/127 from the shell, 128+N for a signal), so a test harness can tell a
 * failed test from a guest that never ran it.
 */
export const COMMAND_EXIT = {
  /** The guest kernel panicked. */
  panic: 242,
  /** The guest never reached init (the kernel stopped, rebooted or hung first). */
  noInit: 243,
  /** --timeout passed before the command finished. */
  timeout: 244,
  /** tsvisor or KVM could not go on (triple fault, an instruction neither completes, an internal error). */
  failure: 245,
  /** The guest ended after init started without the command's status (the command rebooted it, or it was stopped). */
  noStatus: 246,
} as const;

/** A bug in tsvisor stopped the run: sysexits.h's EX_SOFTWARE, "internal software error". */
export const EXIT_VMM_BUG = 70;

export function exitStatusOf(kind: ExitKind, code = 0): number {
  switch (kind) {
    case 'reset':
    case 'poweroff':
    case 'stopped':
      return 0;
    case 'debug-exit':
      return ((code << 1) | 1) & 0xff;
    case 'triple-fault':
      return 3;
    case 'emulation-failure':
      return 4;
    case 'internal-error':
      return 5;
    case 'timeout':
      return 124;
    case 'error':
      return 1;
    case 'vmm-bug':
      return EXIT_VMM_BUG;
    case 'command':
      return code & 0xff;
    case 'panic':
      return COMMAND_EXIT.panic;
    case 'no-init':
      return COMMAND_EXIT.noInit;
    case 'no-status':
      return COMMAND_EXIT.noStatus;
  }
}
