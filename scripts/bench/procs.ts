// What the benchmarks run: tsvisor as a child process (the way users run it),
// the C reference programs compiled here with the system cc, QEMU, and a
// network namespace with a TAP in it for everything that sends frames. The
// namespace holds the TAP and nothing else, and is deleted at the end.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetNamespace } from '../../src/net/netns.js';
import { SANDBOX_HOST_IP, SANDBOX_PREFIX } from '../../src/net/net-option.js';
import type { ExitStats } from '../../src/vcpu/protocol.js';
import { procCpu, vmmCpuMs } from '../../src/util/thread-cpu.js';

export const root = fileURLToPath(new URL('../../..', import.meta.url));
export const tsvisorCli = join(root, 'bin/tsvisor.js');
export const TAP = 'tap0';

export function firmware(name: string): string {
  return join(root, 'firmware/build', `${name}.elf`);
}

export interface Run {
  status: number;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface Spawned {
  child: ChildProcess;
  /** Resolves when `re` matches the stdout seen so far (or rejects when the child ends first). */
  waitFor(re: RegExp): Promise<number>;
  done: Promise<Run>;
}

/** Starts a command (inside `ns` if given), collecting its output. */
export function start(argv: string[], opts: { ns?: NetNamespace; timeoutMs?: number } = {}): Spawned {
  const full = opts.ns ? ['ip', 'netns', 'exec', opts.ns.name, ...argv] : argv;
  const t0 = performance.now();
  const child = spawn(full[0], full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const waiters: Array<{ re: RegExp; resolve: (ms: number) => void; reject: (e: Error) => void }> = [];
  child.stdout!.setEncoding('latin1').on('data', (d: string) => {
    stdout += d;
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (waiters[i].re.test(stdout)) {
        waiters[i].resolve(performance.now() - t0);
        waiters.splice(i, 1);
      }
    }
  });
  child.stderr!.setEncoding('latin1').on('data', (d: string) => (stderr += d));
  const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : undefined;
  const done = new Promise<Run>((resolve) => {
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      for (const w of waiters) w.reject(new Error(`${argv[0]} ended before printing ${w.re}: ${lastLine(stderr || stdout)}`));
      resolve({ status: code ?? 128 + (signal === 'SIGKILL' ? 9 : 15), stdout, stderr, ms: performance.now() - t0 });
    });
  });
  return {
    child,
    done,
    waitFor: (re) => (re.test(stdout) ? Promise.resolve(performance.now() - t0) : new Promise((resolve, reject) => waiters.push({ re, resolve, reject }))),
  };
}

export function lastLine(s: string): string {
  return s.trim().split('\n').pop() ?? '';
}

/** tsvisor's arguments for a firmware image, with its statistics written to `statsFile`. */
export function tsvisorArgv(image: string, append: string, statsFile: string, extra: string[] = []): string[] {
  return [process.execPath, tsvisorCli, 'run', '--kernel', image, '--append', append, '--mem', '64', '--timeout', '120', '--stats-json', statsFile, ...extra];
}

export interface StatsFile { status: number; kind: string; reason: string; stats: ExitStats; net?: Record<string, unknown> }

export function readStats(file: string): StatsFile {
  return JSON.parse(readFileSync(file, 'utf8')) as StatsFile;
}

/** A scratch directory for one bench invocation: compiled C programs, stats files. */
export class Scratch {
  readonly dir = mkdtempSync(join(tmpdir(), 'tsvisor-bench-'));
  private n = 0;
  file(name: string): string {
    return join(this.dir, `${this.n++}-${name}`);
  }
  /** Compiles one C file of scripts/bench/ with the system cc. */
  compile(name: string): string {
    const out = join(this.dir, name);
    const r = spawnSync('cc', ['-O2', '-Wall', '-o', out, join(root, 'scripts/bench', `${name}.c`)], { encoding: 'utf8' });
    if (r.error || r.status !== 0) throw new Error(`cc scripts/bench/${name}.c failed: ${(r.stderr || r.error?.message || '').trim()} (apt-get install build-essential)`);
    return out;
  }
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A namespace with a persistent TAP (host side 10.0.2.2/24, as in --net
 * sandbox) that tsvisor, the C floor and QEMU attach to in turn.
 */
export function benchNet(): NetNamespace {
  const ns = NetNamespace.create('tsvbench');
  try {
    ns.must(['ip', 'tuntap', 'add', 'dev', TAP, 'mode', 'tap', 'vnet_hdr']);
    ns.must(['ip', 'addr', 'add', `${SANDBOX_HOST_IP}/${SANDBOX_PREFIX}`, 'dev', TAP]);
    // No IPv6 on the TAP: its multicast reports at carrier-up would be counted as received frames.
    ns.must(['sysctl', '-qw', `net.ipv6.conf.${TAP}.disable_ipv6=1`]);
    ns.must(['ip', 'link', 'set', TAP, 'up']);
    return ns;
  } catch (e) {
    ns.delete();
    throw e;
  }
}

/** The TAP's byte and packet counters as the namespace sees them (rx: frames from the guest side). */
export function tapCounters(ns: NetNamespace): { rxPackets: number; rxBytes: number; txPackets: number; txBytes: number; txDropped: number } {
  const [link] = JSON.parse(ns.must(['ip', '-s', '-j', 'link', 'show', TAP])) as Array<{ stats64: { rx: { packets: number; bytes: number }; tx: { packets: number; bytes: number; dropped: number } } }>;
  const s = link.stats64;
  return { rxPackets: s.rx.packets, rxBytes: s.rx.bytes, txPackets: s.tx.packets, txBytes: s.tx.bytes, txDropped: s.tx.dropped };
}

/** Resident memory beyond guest RAM, MiB, by where it lives (`/proc/PID/smaps`). */
export interface RssBreakdown {
  total: number;
  /** malloc's heap ([heap]): the addon, koffi, libuv, V8's own C++ side. */
  heap: number;
  /** Anonymous mappings: V8's JavaScript heaps, thread stacks, native buffers, glibc arenas of other threads. */
  anonymous: number;
  /** Mapped files: the node (or QEMU) binary, shared libraries, the addon, ICU data. */
  files: number;
}

/**
 * Resident memory beyond guest RAM, by mapping kind: every mapping's Rss,
 * less the largest resident mapping exactly the guest's size (its RAM).
 * null when the process is gone.
 */
export function rssBreakdown(pid: number, guestBytes: number): RssBreakdown | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/smaps`, 'utf8');
  } catch {
    return null;
  }
  const kb = { heap: 0, anonymous: 0, files: 0 };
  let kind: keyof typeof kb = 'anonymous';
  let size = 0;
  let guest = 0;
  let guestKind: keyof typeof kb | null = null;
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) {
      size = parseInt(m[2], 16) - parseInt(m[1], 16);
      const name = m[3];
      kind = name === '[heap]' ? 'heap' : name.startsWith('/') ? 'files' : 'anonymous';
      continue;
    }
    const r = /^Rss:\s+(\d+) kB/.exec(line);
    if (r) {
      const n = Number(r[1]);
      kb[kind] += n;
      if (size === guestBytes && n > guest) {
        guest = n;
        guestKind = kind;
      }
    }
  }
  // Guest RAM is an anonymous mapping in tsvisor; QEMU's may be a file (memfd) or anonymous.
  if (guestKind) kb[guestKind] -= guest;
  const mib = (x: number) => x / 1024;
  return { total: mib(kb.heap + kb.anonymous + kb.files), heap: mib(kb.heap), anonymous: mib(kb.anonymous), files: mib(kb.files) };
}

/** Resident memory beyond guest RAM, MiB; null when the process is gone. */
export function rssBeyondGuest(pid: number, guestBytes: number): number | null {
  return rssBreakdown(pid, guestBytes)?.total ?? null;
}

/** The PID of the tsvisor process a child started (ip netns exec execs in place). */
export function pidOf(s: Spawned): number {
  return s.child.pid!;
}

/** The TAP's MAC as the namespace sees it (tx-burst gets it as host_mac=, so it sends no ARP request). */
export function tapMac(ns: NetNamespace): string {
  return ns.must(['cat', `/sys/class/net/${TAP}/address`]).trim();
}

/** tsvisor's own CPU time so far in process `pid`, ms, as --stats computes it at the end of a run (the vCPU thread is named vcpu0). */
export function vmmCpuMsNow(pid: number): number | null {
  try {
    const p = procCpu(`/proc/${pid}/stat`);
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      if (readFileSync(`/proc/${pid}/task/${tid}/comm`, 'latin1').trim() === 'vcpu0') return vmmCpuMs(p.userMs, p.sysMs, procCpu(`/proc/${pid}/task/${tid}/stat`));
    }
    return null;
  } catch {
    return null;
  }
}
