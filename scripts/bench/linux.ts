// The default Linux guest under tsvisor: boot time to its user space, VM
// exits per run, tsvisor's own share of the boot's wall time, resident memory
// beyond guest RAM once booted, and what the guest's own user space measures
// with busybox tools through the real virtio_net driver and the guest
// kernel's system calls: its ping RTT to the host, its syscall rate, and TCP
// throughput both ways. The host also pings the guest. On kvm_pvm the guest
// kernel itself runs emulated and tsvisor completes the guest's SYSCALLs
// (src/vcpu/syscall-completion.ts), so these figures say more about the host
// than about tsvisor there; the run's --stats-json says what that cost tsvisor.
import { readFileSync, writeFileSync } from 'node:fs';
import { NetNamespace } from '../../src/net/netns.js';
import { defaultGuestPaths, GUEST_READY_MARKER, DEFAULT_GUEST_MISSING } from '../../src/guest/default-guest.js';
import { appendArchive, hostFilesArchive } from '../../src/guest/host-files.js';
import { sandboxIpParam, SANDBOX_GUEST_IP, SANDBOX_HOST_IP } from '../../src/net/net-option.js';
import { readStats, start, TAP, tsvisorCli, rssBreakdown, pidOf, vmmCpuMsNow, type RssBreakdown, type Scratch } from './procs.js';
import { summarize, type Summary } from './summary.js';
import { qemuArgv } from './qemu.js';

const MEM_MIB = 256;
/** The namespace's ports: the gate the guest waits at while the host pings it, a TCP sink, a TCP source. */
const GATE_PORT = 7000;
const SINK_PORT = 7001;
const SOURCE_PORT = 7002;
const TCP_BYTES = 32 << 20;
/** dd's block size for the syscall rate: small, so a block is mostly its read(2) and write(2). */
const SYSCALL_BS = 64;
/** The syscall loop grows ×4 from this many blocks until one pass takes a second of guest time. */
const SYSCALL_MIN_BLOCKS = 1000;
const SYSCALL_MAX_BLOCKS = 64_000_000;

export interface LinuxFigures {
  /** Spawning tsvisor → the command's first line (`user-space-up`) on its stdout. */
  bootMs: Summary | null;
  /** Every VM exit of the run: the boot and the guest's benchmark command. */
  exits: Summary | null;
  vmmShare: Summary | null;
  /** Host (namespace) → guest ping, the guest idle. */
  pingRttUs: Summary | null;
  /** Guest user space → host ping (busybox ping), avg RTT. */
  guestPingRttUs: Summary | null;
  /** busybox dd's read(2)+write(2) per block, timed in the guest. */
  syscallsPerS: Summary | null;
  /** Guest → host TCP, timed by the receiver in the namespace. */
  tcpMbps: Summary | null;
  /** Host → guest TCP, timed in the guest around its nc (connection set-up included). */
  tcpInMbps: Summary | null;
  rssAfterBootMib: Summary | null;
  /** The same, by where it lives: malloc's heap, anonymous mappings (V8 heaps, stacks), mapped files. */
  rssHeapMib: Summary | null;
  rssAnonymousMib: Summary | null;
  rssFilesMib: Summary | null;
  /** kvm_pvm only: SYSCALL completion's work over the whole run (--stats-json `stats.syscalls`). */
  syscallsCompleted: Summary | null;
  faultsStepped: Summary | null;
  vmmNsPerCompletion: Summary | null;
  vmmNsPerStep: Summary | null;
  /** Hardware KVM only: the same kernel, initramfs and command under QEMU, to its ready marker. */
  qemuBootMs: Summary | null;
  /** Hardware KVM only: QEMU's resident memory beyond guest RAM at its ready marker, and by kind. */
  qemuRssMib: Summary | null;
  qemuRssHeapMib: Summary | null;
  qemuRssAnonymousMib: Summary | null;
  qemuRssFilesMib: Summary | null;
  /** Why a figure above is null, by its name here, from the last run that missed it. */
  why: Partial<Record<keyof LinuxFigures, string>>;
}

type Run = {
  bootMs: number; exits: number; vmmShare: number; rttUs: number; guestRttUs: number; syscallsPerS: number;
  tcpMbps: number; tcpInMbps: number; rss: number; rssHeap: number; rssAnonymous: number; rssFiles: number;
  completed: number; stepped: number; nsPerCompletion: number; nsPerStep: number;
  why: Partial<Record<keyof LinuxFigures, string>>;
};

/**
 * The guest's command (busybox sh). Its first line marks user space. It then
 * waits at the gate while the host pings it, and prints one `bench-…` line
 * per figure for the host to parse. Times come from adjtimex (µs).
 */
export function guestCommand(): string {
  const H = SANDBOX_HOST_IP;
  return [
    'echo user-space-up',
    `now() { adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { print s * 1000000 + u }'; }`,
    `nc ${H} ${GATE_PORT} </dev/null >/dev/null`,
    `echo "bench-guest-ping $(ping -c 10 -i 0.2 -W 5 ${H} | grep round-trip)"`,
    `n=${SYSCALL_MIN_BLOCKS}`,
    `while :; do a=$(now); dd if=/dev/zero of=/dev/null bs=${SYSCALL_BS} count=$n 2>/dev/null; b=$(now); us=$((b - a)); ` +
      `if [ $us -ge 1000000 ] || [ $n -ge ${SYSCALL_MAX_BLOCKS} ]; then break; fi; n=$((n * 4)); done`,
    // dd's start and end alone (no blocks), taken off the pass above.
    `a=$(now); dd if=/dev/zero of=/dev/null bs=${SYSCALL_BS} count=0 2>/dev/null; b=$(now)`,
    `echo "bench-syscalls blocks=$n us=$us base_us=$((b - a))"`,
    `dd if=/dev/zero bs=65536 count=${TCP_BYTES / 65536} 2>/dev/null | nc ${H} ${SINK_PORT}`,
    `a=$(now); nc ${H} ${SOURCE_PORT} </dev/null >/dev/null; s=$?; b=$(now)`,
    `echo "bench-tcp-in status=$s us=$((b - a))"`,
  ].join('\n');
}

/**
 * The namespace's side (node): the gate holds the guest's connection until
 * SIGUSR2; the sink times what it receives from the first byte to the
 * sender's FIN; the source sends TCP_BYTES and says when all were handed to
 * the kernel.
 */
export function hostServers(): string {
  const H = SANDBOX_HOST_IP;
  return `
    const net = require('node:net');
    let listening = 0;
    const ready = () => { if (++listening === 3) console.log('listening'); };
    let open = false;
    const held = [];
    process.on('SIGUSR2', () => { open = true; for (const s of held) s.end(); });
    net.createServer({ allowHalfOpen: true }, (s) => { s.resume(); if (open) s.end(); else held.push(s); }).listen(${GATE_PORT}, '${H}', ready);
    net.createServer((s) => {
      let n = 0, t0 = 0;
      s.on('data', (d) => { if (!t0) t0 = performance.now(); n += d.length; });
      s.on('end', () => console.log('tcp-out bytes=' + n + ' ms=' + (performance.now() - t0)));
    }).listen(${SINK_PORT}, '${H}', ready);
    net.createServer({ allowHalfOpen: true }, (s) => {
      s.resume();
      const buf = Buffer.alloc(65536);
      let sent = 0;
      const pump = () => {
        while (sent < ${TCP_BYTES}) { sent += buf.length; if (!s.write(buf)) { s.once('drain', pump); return; } }
        s.end();
      };
      s.on('finish', () => console.log('tcp-in bytes=' + sent));
      pump();
    }).listen(${SOURCE_PORT}, '${H}', ready);`;
}

export class LinuxBench {
  constructor(private readonly scratch: Scratch, private readonly ns: NetNamespace, private readonly host: 'kvm_pvm' | 'hardware', private readonly withQemu: boolean) {}

  static missing(): string | null {
    return defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING;
  }

  private async once(log: (s: string) => void, i: number): Promise<Run> {
    const stats = this.scratch.file('linux.json');
    const why: Run['why'] = {};
    const server = start([process.execPath, '-e', hostServers()], { ns: this.ns, timeoutMs: 1_000_000 });
    await server.waitFor(/listening/);
    const append = `console=ttyS0 panic=-1 quiet ${sandboxIpParam()}`;
    const guest = start([process.execPath, tsvisorCli, 'run', '--append', append, '--mem', String(MEM_MIB), '--net', `tap:${TAP}`, '--timeout', '900', '--stats-json', stats, '--', guestCommand()], { ns: this.ns, timeoutMs: 1_000_000 });
    let bootMs: number;
    try {
      bootMs = await guest.waitFor(/user-space-up/);
    } catch (e) {
      server.child.kill('SIGTERM');
      throw e;
    }
    // tsvisor's share of the boot itself: its CPU so far over the time to the marker.
    const vmmAtMarker = vmmCpuMsNow(pidOf(guest));
    const mem = rssBreakdown(pidOf(guest), MEM_MIB << 20);
    const rss = mem?.total ?? NaN;
    // The guest waits at the gate (idle) until this ping is done.
    const ping = await this.ns.run(['ping', '-c', '10', '-i', '0.2', '-W', '5', SANDBOX_GUEST_IP], { timeoutMs: 60_000 });
    server.child.kill('SIGUSR2');
    const m = /= [\d.]+\/([\d.]+)\//.exec(ping.out);
    const rttUs = m ? Number(m[1]) * 1000 : NaN;
    if (!m) why.pingRttUs = `host ping got no reply: ${ping.out.trim().split('\n').pop() ?? ''}`;
    const g = await guest.done;
    server.child.kill('SIGTERM');
    const s = await server.done;
    const out = g.stdout;
    if (g.status !== 0) log(`linux run ${i + 1}: tsvisor ended with status ${g.status}: ${g.stderr.trim().split('\n').pop() ?? ''}`);

    const gp = /bench-guest-ping round-trip min\/avg\/max = [\d.]+\/([\d.]+)\//.exec(out);
    const guestRttUs = gp ? Number(gp[1]) * 1000 : NaN;
    if (!gp) why.guestPingRttUs = `the guest's ping got no reply (${/bench-guest-ping.*/.exec(out)?.[0] ?? 'no bench-guest-ping line'})`;

    let syscallsPerS = NaN;
    const sc = /bench-syscalls blocks=(\d+) us=(-?\d+) base_us=(-?\d+)/.exec(out);
    if (!sc) why.syscallsPerS = 'the guest printed no bench-syscalls line';
    else if (+sc[2] - +sc[3] <= 0) why.syscallsPerS = `the dd pass took no longer than dd alone (${sc[0]})`;
    else syscallsPerS = (2 * +sc[1]) / ((+sc[2] - +sc[3]) / 1e6);

    let tcpMbps = NaN;
    const t = /tcp-out bytes=(\d+) ms=([\d.]+)/.exec(s.stdout);
    if (t && +t[1] === TCP_BYTES) tcpMbps = (+t[1] * 8) / (+t[2] * 1000);
    else why.tcpMbps = t ? `the host received ${t[1]} of ${TCP_BYTES} bytes` : 'no guest → host transfer reached its end';

    let tcpInMbps = NaN;
    const ti = /bench-tcp-in status=(\d+) us=(\d+)/.exec(out);
    const sent = /tcp-in bytes=(\d+)/.exec(s.stdout);
    // The host queued every byte before its FIN and the guest's nc read to that FIN without error: all arrived.
    if (ti && +ti[1] === 0 && sent && +sent[1] === TCP_BYTES) tcpInMbps = (TCP_BYTES * 8) / +ti[2];
    else why.tcpInMbps = !ti ? 'the guest printed no bench-tcp-in line' : +ti[1] !== 0 ? `the guest's nc failed (status ${ti[1]})` : `the host sent ${sent?.[1] ?? 0} of ${TCP_BYTES} bytes`;

    const st = readStats(stats).stats;
    const sys = st.syscalls;
    if (!sys) {
      const no = this.host === 'kvm_pvm' ? 'the run reported no SYSCALL completion' : 'SYSCALL completion runs only on kvm_pvm';
      why.syscallsCompleted = why.faultsStepped = why.vmmNsPerCompletion = why.vmmNsPerStep = no;
    }
    else {
      if (sys.vmmNsPerCompletion === undefined) why.vmmNsPerCompletion = 'no SYSCALL was completed';
      if (sys.vmmNsPerStep === undefined) why.vmmNsPerStep = 'no #PF was stepped';
    }
    const vmmShare = vmmAtMarker !== null ? vmmAtMarker / bootMs : NaN;
    const f = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : '—');
    log(`linux run ${i + 1}: user space ${(bootMs / 1000).toFixed(1)} s, ${st.totalExits} exits, tsvisor share ${f(vmmShare * 100, 1)} %, ` +
      `ping host→guest ${f(rttUs / 1000, 2)} ms, guest→host ${f(guestRttUs / 1000, 2)} ms, ${f(syscallsPerS, 0)} syscalls/s, ` +
      `TCP out ${f(tcpMbps, 0)} in ${f(tcpInMbps, 0)} Mbit/s, RSS beyond RAM ${f(rss, 1)} MiB` +
      (sys ? `, ${sys.completed} syscalls completed (${f(sys.vmmNsPerCompletion ?? NaN, 0)} ns each), ${sys.faultsStepped} #PF stepped (${f(sys.vmmNsPerStep ?? NaN, 0)} ns each)` : ''));
    return {
      bootMs, exits: st.totalExits, vmmShare, rttUs, guestRttUs, syscallsPerS, tcpMbps, tcpInMbps, rss,
      rssHeap: mem?.heap ?? NaN, rssAnonymous: mem?.anonymous ?? NaN, rssFiles: mem?.files ?? NaN,
      completed: sys?.completed ?? NaN, stepped: sys?.faultsStepped ?? NaN, nsPerCompletion: sys?.vmmNsPerCompletion ?? NaN, nsPerStep: sys?.vmmNsPerStep ?? NaN,
      why,
    };
  }

  /** QEMU booting the same guest (bzImage, as QEMU loads it) to the ready marker: ms, and its memory there. */
  private async qemuOnce(): Promise<{ ms: number; mem: RssBreakdown | null }> {
    const g = defaultGuestPaths()!;
    // The same initramfs with the same kind of command appended, as tsvisor hands it over.
    const initrd = this.scratch.file('qemu-initrd.cpio');
    writeFileSync(initrd, appendArchive(readFileSync(g.initrd), hostFilesArchive([], 'true')));
    const q = start(qemuArgv(g.bzImage, `console=ttyS0 panic=-1 ${sandboxIpParam()}`, { memMiB: MEM_MIB, initrd }), { ns: this.ns, timeoutMs: 600_000 });
    const ms = await q.waitFor(new RegExp(GUEST_READY_MARKER));
    const mem = rssBreakdown(pidOf(q), MEM_MIB << 20);
    // Without ACPI in the guest kernel its power-off halts the CPU, which QEMU does not treat as an end.
    q.child.kill('SIGTERM');
    await q.done;
    return { ms, mem };
  }

  async measure(runs: number, log: (s: string) => void): Promise<LinuxFigures> {
    const r: Run[] = [];
    const qemu: Array<{ ms: number; mem: RssBreakdown | null }> = [];
    for (let i = 0; i < runs; i++) {
      r.push(await this.once(log, i));
      if (this.host === 'hardware' && this.withQemu) {
        qemu.push(await this.qemuOnce());
        const m = qemu[i].mem;
        log(`linux run ${i + 1}: QEMU ready ${(qemu[i].ms / 1000).toFixed(1)} s, RSS beyond RAM ${m ? m.total.toFixed(1) : '—'} MiB`);
      }
    }
    const why: LinuxFigures['why'] = {};
    for (const x of r) Object.assign(why, x.why);
    return {
      bootMs: summarize(r.map((x) => x.bootMs)),
      exits: summarize(r.map((x) => x.exits)),
      vmmShare: summarize(r.map((x) => x.vmmShare)),
      pingRttUs: summarize(r.map((x) => x.rttUs)),
      guestPingRttUs: summarize(r.map((x) => x.guestRttUs)),
      syscallsPerS: summarize(r.map((x) => x.syscallsPerS)),
      tcpMbps: summarize(r.map((x) => x.tcpMbps)),
      tcpInMbps: summarize(r.map((x) => x.tcpInMbps)),
      rssAfterBootMib: summarize(r.map((x) => x.rss)),
      rssHeapMib: summarize(r.map((x) => x.rssHeap)),
      rssAnonymousMib: summarize(r.map((x) => x.rssAnonymous)),
      rssFilesMib: summarize(r.map((x) => x.rssFiles)),
      syscallsCompleted: summarize(r.map((x) => x.completed)),
      faultsStepped: summarize(r.map((x) => x.stepped)),
      vmmNsPerCompletion: summarize(r.map((x) => x.nsPerCompletion)),
      vmmNsPerStep: summarize(r.map((x) => x.nsPerStep)),
      qemuBootMs: summarize(qemu.map((q) => q.ms)),
      qemuRssMib: summarize(qemu.map((q) => q.mem?.total ?? NaN)),
      qemuRssHeapMib: summarize(qemu.map((q) => q.mem?.heap ?? NaN)),
      qemuRssAnonymousMib: summarize(qemu.map((q) => q.mem?.anonymous ?? NaN)),
      qemuRssFilesMib: summarize(qemu.map((q) => q.mem?.files ?? NaN)),
      why,
    };
  }
}
