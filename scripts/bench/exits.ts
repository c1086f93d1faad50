// Exit round trip: the `exits` guest program makes N exits of one kind and
// times them with rdtsc. tsvisor runs it through its real dispatch path; the
// floor is scripts/bench/exit-floor.c, a C loop around KVM_RUN that does the
// least a VMM can do per exit, on the same image, with the same machine.
// Both are timed two ways: guest TSC cycles per exit (the program's own
// figure) and host nanoseconds per exit (the VMM's wall time around its
// KVM_RUN loop divided by the exits of the run; the program's own setup, a
// few thousand instructions and ~130 serial exits, is in both alike).
// Each mode (CPL3: the accesses made from guest ring 3, `cpl3=1`; CPL0: from
// ring 0) is measured the same way, for tsvisor and the floor alike.
import { NetNamespace } from '../../src/net/netns.js';
import { firmware, readStats, start, lastLine, TAP, tsvisorArgv, type Scratch } from './procs.js';
import { summarize, type Summary } from './summary.js';
import { qemuArgv } from './qemu.js';

/** Where the guest programs run their data loops: ring 3 (`cpl3=1`, native on kvm_pvm) or ring 0. */
export type Mode = 'cpl3' | 'cpl0';
export const modeArgs = (mode: Mode) => (mode === 'cpl3' ? ' cpl3=1' : '');

export const EXIT_KINDS = ['pio_out', 'pio_in', 'mmio_write', 'mmio_read', 'notify'] as const;
export type ExitKind = (typeof EXIT_KINDS)[number];

export interface Histogram { overhead: number; buckets: Array<[number, number]>; p50: number; p90: number; p99: number; max: number }

interface OneRun { cyclesPerExit: number; hostNs: number; exits: number; hist: Histogram | null }

export interface ExitFigures {
  tsvisor: { cycles: Summary | null; ns: Summary | null; hist: Histogram | null };
  floor: { cycles: Summary | null; ns: Summary | null; hist: Histogram | null };
  /** notify only: the same writes bound to an eventfd inside KVM (--ioeventfd). */
  ioeventfd?: { cycles: Summary | null; ns: Summary | null };
}

const RESULT_RE = /exits kind=\S+ n=(\d+) cycles_per_exit=(\d+) cycles=(\d+)/;
const CPU_RE = /exits cpu=(\d+) kind=\S+ n=\d+ cycles_per_exit=(\d+)/g;

/** The exit kinds measured with two vCPUs: a write, a read (its answer carried back to an AP), the device's notify. */
export const SMP_EXIT_KINDS = ['pio_out', 'mmio_read', 'notify'] as const;

/**
 * Guest cycles per exit (CPL0) on one vCPU, on the BSP of two with the AP
 * never started (what the SMP machinery costs the BSP's own path), and on
 * each of two vCPUs exiting at once (`smp=1`), the AP's exits forwarded to
 * the BSP's thread (src/vcpu/exit-forwarding.ts).
 */
export interface SmpExitFigures {
  one: Summary | null; bspIdleAp: Summary | null; bsp: Summary | null; ap: Summary | null;
  /** The same program under QEMU with -smp 2 (each vCPU thread handles its own exits under the big lock; notify on the exit path). */
  qemu?: { bsp: Summary | null; ap: Summary | null };
}
const HIST_RE = /exits hist kind=\S+ n=\d+ overhead=(\d+) p50=(\d+) p90=(\d+) p99=(\d+) max=(\d+) buckets=(\S*)/;

function parseHist(out: string): Histogram | null {
  const m = HIST_RE.exec(out);
  if (!m) return null;
  const buckets = m[6].split(',').filter(Boolean).map((b) => b.split(':').map(Number) as [number, number]);
  return { overhead: +m[1], p50: +m[2], p90: +m[3], p99: +m[4], max: +m[5], buckets };
}

/** The program's arguments for one kind; the floor has no virtio device, so its notify is a 16-bit MMIO write. */
function programArgs(kind: ExitKind, n: number, floor: boolean, hist: boolean, mode: Mode): string {
  const h = (hist ? ' hist=1' : '') + modeArgs(mode);
  if (kind === 'notify' && floor) return `kind=mmio_write width=2 n=${n}${h}`;
  return `kind=${kind} n=${n}${h}`;
}

export class ExitBench {
  tscKhz: number | null = null;
  private readonly floorBin: string;

  constructor(private readonly scratch: Scratch, private readonly ns: NetNamespace) {
    this.floorBin = scratch.compile('exit-floor');
  }

  /** One run under the C floor: guest cycles per exit, and the wall time of its KVM_RUN loop. */
  private async floor(kind: ExitKind, n: number, hist: boolean, mode: Mode): Promise<OneRun> {
    const r = await start([this.floorBin, firmware('exits'), programArgs(kind, n, true, hist, mode), '64'], { timeoutMs: 120_000 }).done;
    const m = RESULT_RE.exec(r.stdout);
    const f = /exit-floor: exits=(\d+) run_ns=(\d+) tsc_khz=(-?\d+)/.exec(r.stderr);
    if (!m || !f) throw new Error(`exit-floor ${kind}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    if (+f[3] > 0) this.tscKhz = +f[3];
    return { cyclesPerExit: +m[2], hostNs: +f[2], exits: +f[1], hist: parseHist(r.stdout) };
  }

  /** One run under tsvisor (notify: with a NIC on the bench namespace's TAP). */
  private async tsvisor(kind: ExitKind, n: number, hist: boolean, mode: Mode, ioeventfd = false): Promise<OneRun> {
    const stats = this.scratch.file('exits.json');
    const net = kind === 'notify' ? ['--net', `tap:${TAP}`, ...(ioeventfd ? ['--ioeventfd'] : [])] : [];
    const r = await start(tsvisorArgv(firmware('exits'), programArgs(kind, n, false, hist, mode), stats, net), { ns: kind === 'notify' ? this.ns : undefined, timeoutMs: 120_000 }).done;
    const m = RESULT_RE.exec(r.stdout);
    if (!m) throw new Error(`tsvisor exits ${kind}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    const s = readStats(stats).stats;
    return { cyclesPerExit: +m[2], hostNs: s.runMs * 1e6, exits: s.totalExits, hist: parseHist(r.stdout) };
  }

  /** One `exits` run on `cpus` vCPUs: each CPU's cycles per exit (one entry, the BSP's, without smp=1). */
  private async perCpu(kind: ExitKind, n: number, cpus: number, smp: boolean): Promise<number[]> {
    const stats = this.scratch.file('exits.json');
    const net = kind === 'notify' ? ['--net', `tap:${TAP}`] : [];
    const r = await start(tsvisorArgv(firmware('exits'), `kind=${kind} n=${n}${smp ? ' smp=1' : ''}`, stats, [...net, '--cpus', String(cpus)]), { ns: kind === 'notify' ? this.ns : undefined, timeoutMs: 300_000 }).done;
    const one = RESULT_RE.exec(r.stdout);
    const each = [...r.stdout.matchAll(CPU_RE)].map((m) => +m[2]);
    if (!one || (smp && each.length !== cpus)) throw new Error(`tsvisor exits ${kind} --cpus ${cpus}${smp ? ' smp=1' : ''}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return smp ? each : [+one[2]];
  }

  /** Both vCPUs of QEMU -smp 2 exiting at once: [BSP, AP] cycles per exit. */
  private async qemuBoth(kind: ExitKind, n: number): Promise<number[]> {
    const r = await start(qemuArgv(firmware('exits'), `kind=${kind} n=${n} smp=1`, { path: 'exit', cpus: 2 }), { ns: this.ns, timeoutMs: 300_000 }).done;
    const each = [...r.stdout.matchAll(CPU_RE)].map((m) => +m[2]);
    if (each.length !== 2) throw new Error(`QEMU exits ${kind} -smp 2 smp=1: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return each;
  }

  /** The configurations of SmpExitFigures, alternated run by run; with `qemu`, QEMU's two vCPUs too. */
  async measureSmp(kind: ExitKind, n: number, runs: number, log: (s: string) => void, qemu = false): Promise<SmpExitFigures> {
    const one: number[] = [], idle: number[] = [], bsp: number[] = [], ap: number[] = [], qBsp: number[] = [], qAp: number[] = [];
    for (let i = 0; i < runs; i++) {
      one.push((await this.perCpu(kind, n, 1, false))[0]);
      idle.push((await this.perCpu(kind, n, 2, false))[0]);
      const both = await this.perCpu(kind, n, 2, true);
      bsp.push(both[0]);
      ap.push(both[1]);
      if (qemu) {
        const q = await this.qemuBoth(kind, n);
        qBsp.push(q[0]);
        qAp.push(q[1]);
      }
      log(`exits ${kind} (CPL0, vCPUs) run ${i + 1}/${runs}: one vCPU ${one[i]} cycles, BSP with an idle AP ${idle[i]}, both at once: BSP ${bsp[i]}, AP ${ap[i]}${qemu ? `; QEMU both at once: BSP ${qBsp[i]}, AP ${qAp[i]}` : ''}`);
    }
    return {
      one: summarize(one), bspIdleAp: summarize(idle), bsp: summarize(bsp), ap: summarize(ap),
      ...(qemu ? { qemu: { bsp: summarize(qBsp), ap: summarize(qAp) } } : {}),
    };
  }

  /** Host ns per exit over the whole run. */
  private static perExit(run: OneRun): number {
    return run.hostNs / run.exits;
  }

  async measure(kind: ExitKind, n: number, runs: number, log: (s: string) => void, mode: Mode = 'cpl0'): Promise<ExitFigures> {
    const t: OneRun[] = [];
    const f: OneRun[] = [];
    // Alternate tsvisor and the floor run by run, so drift hits both alike.
    for (let i = 0; i < runs; i++) {
      t.push(await this.tsvisor(kind, n, false, mode));
      f.push(await this.floor(kind, n, false, mode));
      log(`exits ${kind} (${mode.toUpperCase()}) run ${i + 1}/${runs}: tsvisor ${t[i].cyclesPerExit} cycles, floor ${f[i].cyclesPerExit} cycles`);
    }
    // The distribution comes from a run of its own: timing each exit alone adds work the means must not see.
    const tHist = (await this.tsvisor(kind, n, true, mode)).hist;
    const fHist = (await this.floor(kind, n, true, mode)).hist;
    const fig: ExitFigures = {
      tsvisor: { cycles: summarize(t.map((r) => r.cyclesPerExit)), ns: summarize(t.map((r) => ExitBench.perExit(r))), hist: tHist },
      floor: { cycles: summarize(f.map((r) => r.cyclesPerExit)), ns: summarize(f.map((r) => ExitBench.perExit(r))), hist: fHist },
    };
    if (kind === 'notify') {
      const io: OneRun[] = [];
      for (let i = 0; i < runs; i++) io.push(await this.tsvisor(kind, n, false, mode, true));
      // With ioeventfd the notifies never reach userspace, so no host clock sees them
      // one by one: their time is the guest's cycles at the TSC rate.
      const khz = this.tscKhz;
      fig.ioeventfd = {
        cycles: summarize(io.map((r) => r.cyclesPerExit)),
        ns: khz ? summarize(io.map((r) => (r.cyclesPerExit / khz) * 1e6)) : null,
      };
    }
    return fig;
  }
}
