// The packet path against its floor. TX: the `tx-burst` guest program fills
// its TX ring with frames of one size and tsvisor's bottom half writes them
// to the TAP; the floor is scripts/bench/tap-floor.c writing the same frames
// to the same TAP with the same syscalls (one writev of [vnet header, frame]
// per frame). RX: tap-floor's sender pushes frames into the TAP from the
// namespace side; the `rx-sink` guest program counts what reaches its RX ring
// through tsvisor, and the floor is tap-floor reading the same TAP. Either
// program runs its loop in guest ring 3 (mode cpl3: native on kvm_pvm) or
// ring 0 (cpl0: emulated there, one instruction at a time).
import { NetNamespace } from '../../src/net/netns.js';
import { modeArgs, type Mode } from './exits.js';
import { firmware, readStats, start, lastLine, TAP, tapMac, tsvisorArgv, rssBeyondGuest, pidOf, type Scratch } from './procs.js';
import { summarize, type Summary } from './summary.js';

export const FRAME_SIZES = [64, 1500, 65536] as const;
export type FrameSize = (typeof FRAME_SIZES)[number];

export interface PathFigures {
  tsvisorPps: Summary | null;
  floorPps: Summary | null;
  tsvisorGbps: Summary | null;
  floorGbps: Summary | null;
  /** tsvisor's own CPU time per frame (process CPU less KVM's and the guest's, less a 16-frame run's), µs. */
  cpuUsPerFrame: Summary | null;
  /** The floor's CPU time per frame (user + system over its loop), µs. */
  floorCpuUsPerFrame: Summary | null;
}

const gso = (size: FrameSize) => (size === 65536 ? ['gso'] : []);
const guestOffload = (size: FrameSize) => (size === 65536 ? ' tso=1' : '');
const gbps = (pps: number, size: number) => (pps * size * 8) / 1e9;
/** µs per frame from a CPU-time difference; none when the run was too short for 10 ms clock ticks to see it. */
const perFrame = (ms: number, frames: number) => (ms > 0 && frames > 0 ? (ms * 1000) / frames : NaN);

export class PacketBench {
  private readonly floorBin: string;
  /** Peak resident memory beyond guest RAM seen while frames were arriving, MiB. */
  rssUnderLoad: number | null = null;

  private readonly hostMac: string;

  constructor(private readonly scratch: Scratch, private readonly ns: NetNamespace, private readonly tscKhz: number) {
    this.floorBin = scratch.compile('tap-floor');
    this.hostMac = tapMac(ns);
  }

  private cyclesToS(c: number): number {
    return c / (this.tscKhz * 1000);
  }

  private async tsvisorTx(size: FrameSize, count: number, mode: Mode): Promise<{ pps: number; vmmMs: number }> {
    const stats = this.scratch.file('tx.json');
    // host_mac=: no ARP, so the namespace never learns the guest's MAC and its
    // answers (RSTs, ICMP) are dropped for guest and floor alike.
    const r = await start(tsvisorArgv(firmware('tx-burst'), `count=${count} size=${size}${guestOffload(size)} host_mac=${this.hostMac}${modeArgs(mode)}`, stats, ['--net', `tap:${TAP}`]), { ns: this.ns, timeoutMs: 180_000 }).done;
    const m = /tx-burst: (\d+) frames size=\d+ cycles=(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`tsvisor tx-burst size=${size}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return { pps: +m[1] / this.cyclesToS(+m[2]), vmmMs: readStats(stats).stats.cpu?.vmmMs ?? NaN };
  }

  private async floorTx(size: FrameSize, count: number): Promise<{ pps: number; cpuUs: number }> {
    const r = await start([this.floorBin, 'tx', TAP, String(size), String(count), ...gso(size)], { ns: this.ns, timeoutMs: 120_000 }).done;
    const m = /tap-floor tx size=\d+ frames=(\d+) ns=(\d+) cpu_ns=(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`tap-floor tx ${size}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return { pps: +m[1] / (+m[2] / 1e9), cpuUs: +m[3] / 1000 / +m[1] };
  }

  private sender(size: FrameSize, count: number, pps?: number) {
    return start([this.floorBin, 'send', TAP, String(size), String(count), ...gso(size), ...(pps ? [`pps=${pps}`] : [])], { ns: this.ns, timeoutMs: 120_000 }).done;
  }

  private async tsvisorRx(size: FrameSize, count: number, mode: Mode): Promise<{ pps: number; vmmMs: number; frames: number }> {
    const stats = this.scratch.file('rx.json');
    const guest = start(tsvisorArgv(firmware('rx-sink'), `ready=1 count=${count} idle=1000 start=30000${guestOffload(size)}${modeArgs(mode)}`, stats, ['--net', `tap:${TAP}`]), { ns: this.ns, timeoutMs: 180_000 });
    await guest.waitFor(/rx-sink: ready/);
    // The guest is ready at DRIVER_OK; tsvisor sets the TAP's offloads on its main loop just after.
    await new Promise((r) => setTimeout(r, 300));
    let peak = 0;
    const take = () => {
      const rss = rssBeyondGuest(pidOf(guest), 64 << 20);
      if (rss !== null && rss > peak) peak = rss;
    };
    const sample = setInterval(take, 50);
    // CPL0: paced over ~2 s, still above what a ring-0 guest takes on kvm_pvm: its rate
    // is the same as unpaced (the TAP queue drops the excess), and the run lasts long
    // enough to deliver thousands of frames for the CPU figure. CPL3: unpaced, as the
    // floor's reader is fed, since a ring-3 guest may keep up with the sender.
    await this.sender(size, count, mode === 'cpl0' ? Math.max(1000, Math.round(count / 2)) : undefined);
    take();
    const r = await guest.done;
    clearInterval(sample);
    if (peak > (this.rssUnderLoad ?? 0)) this.rssUnderLoad = peak;
    const m = /rx-sink: (\d+) frames bytes=\d+ cycles=(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`tsvisor rx-sink size=${size}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return { pps: +m[1] / this.cyclesToS(+m[2]), vmmMs: readStats(stats).stats.cpu?.vmmMs ?? NaN, frames: +m[1] };
  }

  private async floorRx(size: FrameSize, count: number): Promise<{ pps: number; cpuUs: number }> {
    const reader = start([this.floorBin, 'rx', TAP, String(size), '0', '1000', ...gso(size)], { ns: this.ns, timeoutMs: 120_000 });
    await reader.waitFor(/tap-floor rx: ready/);
    await this.sender(size, count);
    const r = await reader.done;
    const m = /tap-floor rx size=\d+ frames=(\d+) bytes=\d+ ns=(\d+) cpu_ns=(\d+)/.exec(r.stdout);
    if (!m) throw new Error(`tap-floor rx ${size}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return { pps: +m[1] / (+m[2] / 1e9), cpuUs: +m[3] / 1000 / +m[1] };
  }

  async tx(size: FrameSize, count: number, runs: number, log: (s: string) => void, mode: Mode = 'cpl0'): Promise<PathFigures> {
    const base = await this.tsvisorTx(size, 16, mode);
    const t: Array<{ pps: number; vmmMs: number }> = [];
    const f: Array<{ pps: number; cpuUs: number }> = [];
    for (let i = 0; i < runs; i++) {
      t.push(await this.tsvisorTx(size, count, mode));
      f.push(await this.floorTx(size, count));
      log(`tx ${size} (${mode.toUpperCase()}) run ${i + 1}/${runs}: tsvisor ${t[i].pps.toFixed(0)} frames/s, floor ${f[i].pps.toFixed(0)} frames/s`);
    }
    return {
      tsvisorPps: summarize(t.map((r) => r.pps)),
      floorPps: summarize(f.map((r) => r.pps)),
      tsvisorGbps: summarize(t.map((r) => gbps(r.pps, size))),
      floorGbps: summarize(f.map((r) => gbps(r.pps, size))),
      cpuUsPerFrame: summarize(t.map((r) => perFrame(r.vmmMs - base.vmmMs, count - 16))),
      floorCpuUsPerFrame: summarize(f.map((r) => r.cpuUs)),
    };
  }

  async rx(size: FrameSize, count: number, runs: number, log: (s: string) => void, mode: Mode = 'cpl0'): Promise<PathFigures> {
    const base = await this.tsvisorRx(size, 16, mode);
    const t: Array<{ pps: number; vmmMs: number; frames: number }> = [];
    const f: Array<{ pps: number; cpuUs: number }> = [];
    for (let i = 0; i < runs; i++) {
      t.push(await this.tsvisorRx(size, count, mode));
      f.push(await this.floorRx(size, count));
      log(`rx ${size} (${mode.toUpperCase()}) run ${i + 1}/${runs}: tsvisor ${t[i].pps.toFixed(0)} frames/s (${t[i].frames} of ${count} sent reached the guest), floor ${f[i].pps.toFixed(0)} frames/s`);
    }
    return {
      tsvisorPps: summarize(t.map((r) => r.pps)),
      floorPps: summarize(f.map((r) => r.pps)),
      tsvisorGbps: summarize(t.map((r) => gbps(r.pps, size))),
      floorGbps: summarize(f.map((r) => gbps(r.pps, size))),
      cpuUsPerFrame: summarize(t.map((r) => perFrame(r.vmmMs - base.vmmMs, r.frames - base.frames))),
      floorCpuUsPerFrame: summarize(f.map((r) => r.cpuUs)),
    };
  }
}
