// The default Linux guest under tsvisor: boot time to its ready marker, VM
// exits per boot, tsvisor's own share of the wall time, resident memory
// beyond guest RAM once booted, and the network through the real virtio_net
// driver — host → guest ping RTT everywhere, TCP throughput where guest user
// space runs (hardware KVM). On kvm_pvm the guest kernel itself runs
// emulated, so these figures say more about the host than about tsvisor.
import { NetNamespace } from '../../src/net/netns.js';
import { defaultGuestPaths, guestCommandArg, idleInitArgs, GUEST_READY_MARKER, DEFAULT_GUEST_MISSING } from '../../src/guest/default-guest.js';
import { sandboxIpParam, SANDBOX_GUEST_IP, SANDBOX_HOST_IP } from '../../src/net/net-option.js';
import { readStats, start, TAP, tsvisorCli, rssBeyondGuest, pidOf, vmmCpuMsNow, type Scratch } from './procs.js';
import { summarize, type Summary } from './summary.js';
import { qemuArgv } from './qemu.js';

const MEM_MIB = 256;
const TCP_PORT = 7001;
const TCP_BYTES = 32 << 20;

export interface LinuxFigures {
  bootMs: Summary | null;
  exits: Summary | null;
  vmmShare: Summary | null;
  pingRttUs: Summary | null;
  tcpMbps: Summary | null;
  rssAfterBootMib: Summary | null;
  /** Hardware KVM only: the same kernel, initramfs and command under QEMU, to its ready marker. */
  qemuBootMs: Summary | null;
}

export class LinuxBench {
  constructor(private readonly scratch: Scratch, private readonly ns: NetNamespace, private readonly host: 'kvm_pvm' | 'hardware', private readonly withQemu: boolean) {}

  static missing(): string | null {
    return defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING;
  }

  private async once(log: (s: string) => void, i: number): Promise<{ bootMs: number; exits: number; vmmShare: number; rttUs: number; tcpMbps: number; rss: number }> {
    const stats = this.scratch.file('linux.json');
    const userSpace = this.host === 'hardware';
    // Where user space runs, the guest sends TCP_BYTES to the namespace; a server there times it.
    let server: ReturnType<typeof start> | undefined;
    if (userSpace) {
      server = start([process.execPath, '-e', `
        let n = 0, t0 = 0;
        require('node:net').createServer((s) => {
          s.on('data', (d) => { if (!t0) t0 = performance.now(); n += d.length; });
          s.on('end', () => { console.log('tcp bytes=' + n + ' ms=' + (performance.now() - t0)); process.exit(0); });
        }).listen(${TCP_PORT}, '${SANDBOX_HOST_IP}', () => console.log('listening'));`], { ns: this.ns, timeoutMs: 600_000 });
      await server.waitFor(/listening/);
    }
    const tail = userSpace
      ? guestCommandArg(`sleep 3; dd if=/dev/zero bs=65536 count=${TCP_BYTES / 65536} 2>/dev/null | nc ${SANDBOX_HOST_IP} ${TCP_PORT}`)
      : idleInitArgs(3e9 * 6); // keeps the kernel answering pings for 6-7 s (10 pings take ~2 s), then the run ends
    const append = `console=ttyS0 panic=-1 ${sandboxIpParam()} ${tail}`;
    const guest = start([process.execPath, tsvisorCli, 'run', '--append', append, '--mem', String(MEM_MIB), '--net', `tap:${TAP}`, '--timeout', '900', '--stats-json', stats], { ns: this.ns, timeoutMs: 1_000_000 });
    const marker = userSpace ? new RegExp(GUEST_READY_MARKER) : /Run \S+ as init process/;
    const bootMs = await guest.waitFor(marker);
    // tsvisor's share of the boot itself: its CPU so far over the time to the marker.
    const vmmAtMarker = vmmCpuMsNow(pidOf(guest));
    await guest.waitFor(/IP-Config: Complete/);
    const rss = rssBeyondGuest(pidOf(guest), MEM_MIB << 20) ?? NaN;
    const ping = await this.ns.run(['ping', '-c', '10', '-i', '0.2', '-W', '5', SANDBOX_GUEST_IP], { timeoutMs: 60_000 });
    const m = /= [\d.]+\/([\d.]+)\//.exec(ping.out);
    const rttUs = m ? Number(m[1]) * 1000 : NaN;
    let tcpMbps = NaN;
    if (server) {
      const s = await server.done;
      const t = /tcp bytes=(\d+) ms=([\d.]+)/.exec(s.stdout);
      if (t && +t[1] === TCP_BYTES) tcpMbps = (+t[1] * 8) / (+t[2] * 1000);
    }
    await guest.done;
    const st = readStats(stats).stats;
    const vmmShare = vmmAtMarker !== null ? vmmAtMarker / bootMs : NaN;
    log(`linux run ${i + 1}: ready ${(bootMs / 1000).toFixed(1)} s, ${st.totalExits} exits, tsvisor share ${(vmmShare * 100).toFixed(1)} %, ping ${(rttUs / 1000).toFixed(1)} ms${userSpace ? `, TCP ${tcpMbps.toFixed(0)} Mbit/s` : ''}, RSS beyond RAM ${rss.toFixed(1)} MiB`);
    return { bootMs, exits: st.totalExits, vmmShare, rttUs, tcpMbps, rss };
  }

  /** QEMU booting the same guest (bzImage, as QEMU loads it) to the ready marker, ms. */
  private async qemuOnce(): Promise<number> {
    const g = defaultGuestPaths()!;
    const q = start(qemuArgv(g.bzImage, `console=ttyS0 panic=-1 ${sandboxIpParam()} ${guestCommandArg('true')}`, { memMiB: MEM_MIB, initrd: g.initrd }), { ns: this.ns, timeoutMs: 600_000 });
    const ms = await q.waitFor(new RegExp(GUEST_READY_MARKER));
    // Without ACPI in the guest kernel its power-off halts the CPU, which QEMU does not treat as an end.
    q.child.kill('SIGTERM');
    await q.done;
    return ms;
  }

  async measure(runs: number, log: (s: string) => void): Promise<LinuxFigures> {
    const r = [];
    const qemu: number[] = [];
    for (let i = 0; i < runs; i++) {
      r.push(await this.once(log, i));
      if (this.host === 'hardware' && this.withQemu) {
        qemu.push(await this.qemuOnce());
        log(`linux run ${i + 1}: QEMU ready ${(qemu[i] / 1000).toFixed(1)} s`);
      }
    }
    return {
      bootMs: summarize(r.map((x) => x.bootMs)),
      exits: summarize(r.map((x) => x.exits)),
      vmmShare: summarize(r.map((x) => x.vmmShare)),
      pingRttUs: summarize(r.map((x) => x.rttUs)),
      tcpMbps: summarize(r.map((x) => x.tcpMbps)),
      rssAfterBootMib: summarize(r.map((x) => x.rss)),
      qemuBootMs: summarize(qemu),
    };
  }
}
