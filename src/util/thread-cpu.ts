// CPU time of one thread or of the process, from procfs. The vCPU thread's
// system time is mostly KVM (on kvm_pvm: the guest's emulated ring-0 code),
// and its guest time is the guest's; what is left is tsvisor's own work —
// that split is what `--stats` and the benchmarks report as the VMM's share.
import { readFileSync, writeFileSync } from 'node:fs';

/** USER_HZ: procfs counts clock ticks of 10 ms on every Linux architecture tsvisor runs on. */
const MS_PER_TICK = 10;

export interface ThreadCpu {
  userMs: number;
  sysMs: number;
  /** Time the thread ran guest code (included in userMs by the kernel). */
  guestMs: number;
}

/**
 * CPU time from a procfs stat file: a process (`/proc/PID/stat`, its threads
 * summed, ended ones included) or a thread (`/proc/PID/task/TID/stat`).
 */
export function procCpu(statPath: string): ThreadCpu {
  const text = readFileSync(statPath, 'latin1');
  // The command name may hold spaces and parentheses; the fields follow its last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // stat(5): utime is field 14, stime 15, guest_time 43; f[0] is field 3.
  return { userMs: Number(f[11]) * MS_PER_TICK, sysMs: Number(f[12]) * MS_PER_TICK, guestMs: Number(f[40]) * MS_PER_TICK };
}

/** CPU time of the calling thread. */
export function threadCpu(): ThreadCpu {
  return procCpu('/proc/thread-self/stat');
}

/** tsvisor's own CPU time: the process's user + system time less the vCPU thread's system (KVM) and guest time. */
export function vmmCpuMs(processUserMs: number, processSysMs: number, vcpu: ThreadCpu): number {
  return Math.max(0, processUserMs + processSysMs - vcpu.sysMs - vcpu.guestMs);
}

/** Names the calling thread (shown by top -H, ps -L, perf). Best effort: at most 15 bytes. */
export function nameThread(name: string): void {
  try {
    writeFileSync('/proc/thread-self/comm', name.slice(0, 15));
  } catch {
    /* procfs not mounted: the name is cosmetic */
  }
}
