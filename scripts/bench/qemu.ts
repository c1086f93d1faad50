// The same guest programs under QEMU and under tsvisor, alternating run by
// run in one invocation, on a TAP in the bench namespace: QEMU with KVM and
// its userspace virtio-net-pci (vhost=off: tsvisor has no vhost either).
// Two matched pairs: the notify handled on the exit path (tsvisor's default;
// QEMU with ioeventfd=off) and bound to an eventfd inside KVM (tsvisor
// --ioeventfd; QEMU's default).
import { spawnSync } from 'node:child_process';
import { NetNamespace } from '../../src/net/netns.js';
import { firmware, start, lastLine, TAP, tapMac, tsvisorArgv, type Scratch } from './procs.js';
import { summarize, type Summary } from './summary.js';
import { modeArgs, type Mode } from './exits.js';

const QEMU = 'qemu-system-x86_64';

/** Installs QEMU from the distribution's packages when it is missing; null when it is there, else why not. */
export function ensureQemu(log: (s: string) => void): string | null {
  if (spawnSync('sh', ['-c', `command -v ${QEMU}`]).status === 0) return null;
  log(`${QEMU} is missing; installing qemu-system-x86 with apt-get`);
  const r = spawnSync('apt-get', ['install', '-y', '-q', 'qemu-system-x86'], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) return `${QEMU} is not installed and apt-get install qemu-system-x86 failed: ${lastLine(r.stderr ?? '')}`;
  return null;
}

export type NotifyPath = 'exit' | 'ioeventfd';
type Vmm = 'tsvisor' | 'qemu';

/** QEMU with KVM and a virtio-net-pci on the bench TAP (userspace backend, as tsvisor's), booting `kernel`. */
export function qemuArgv(kernel: string, append: string, o: { path?: NotifyPath; memMiB?: number; initrd?: string; cpus?: number } = {}): string[] {
  return [QEMU, '-accel', 'kvm', '-cpu', 'host,-arch-capabilities', '-m', String(o.memMiB ?? 64), '-smp', String(o.cpus ?? 1), '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
    '-kernel', kernel, ...(o.initrd ? ['-initrd', o.initrd] : []), '-append', append, '-device', 'isa-debug-exit,iobase=0xf4,iosize=1',
    '-netdev', `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`, '-device', `virtio-net-pci,netdev=n0,ioeventfd=${o.path === 'exit' ? 'off' : 'on'}`];
}

export interface PairFigures { tsvisor: Summary | null; qemu: Summary | null }

export interface QemuFigures {
  /** Per notify path: mean echo RTT (µs), tx-burst 64 B frames/s, guest cycles per queue-notify write. */
  [path: string]: { pingRttUs: PairFigures; txPps: PairFigures; notifyCycles: PairFigures };
}

const PING_RE = /ping: (\d+)\/(\d+) replies rtt_min=(\d+) rtt_avg=(\d+) rtt_max=(\d+)/;
const TX_RE = /tx-burst: (\d+) frames size=\d+ cycles=(\d+)/;
const NOTIFY_RE = /exits kind=notify n=\d+ cycles_per_exit=(\d+)/;

export class QemuBench {
  private readonly hostMac: string;

  constructor(private readonly scratch: Scratch, private readonly ns: NetNamespace, private readonly tscKhz: number) {
    this.hostMac = tapMac(ns);
  }

  private async run(vmm: Vmm, path: NotifyPath, image: string, append: string, re: RegExp): Promise<RegExpExecArray> {
    const argv = vmm === 'qemu' ? qemuArgv(image, append, { path }) : tsvisorArgv(image, append, this.scratch.file('q.json'), ['--net', `tap:${TAP}`, ...(path === 'ioeventfd' ? ['--ioeventfd'] : [])]);
    const r = await start(argv, { ns: this.ns, timeoutMs: 120_000 }).done;
    const m = re.exec(r.stdout);
    if (!m) throw new Error(`${vmm} (${path}) ${image.split('/').pop()}: no result (status ${r.status}): ${lastLine(r.stderr || r.stdout)}`);
    return m;
  }

  async measure(runs: number, pingCount: number, txCount: number, notifyCount: number, log: (s: string) => void, mode: Mode = 'cpl0'): Promise<QemuFigures> {
    const m = modeArgs(mode);
    const out: QemuFigures = {};
    for (const path of ['exit', 'ioeventfd'] as const) {
      const rtt: Record<Vmm, number[]> = { tsvisor: [], qemu: [] };
      const pps: Record<Vmm, number[]> = { tsvisor: [], qemu: [] };
      const notify: Record<Vmm, number[]> = { tsvisor: [], qemu: [] };
      for (let i = 0; i < runs; i++) {
        for (const vmm of ['tsvisor', 'qemu'] as const) {
          const p = await this.run(vmm, path, firmware('ping'), `count=${pingCount} interval=0${m}`, PING_RE);
          if (p[1] !== p[2]) throw new Error(`${vmm} (${path}) ping: ${p[1]}/${p[2]} replies`);
          rtt[vmm].push((+p[4] / this.tscKhz) * 1000);
          const t = await this.run(vmm, path, firmware('tx-burst'), `count=${txCount} size=64 host_mac=${this.hostMac}${m}`, TX_RE);
          pps[vmm].push(+t[1] / (+t[2] / (this.tscKhz * 1000)));
          notify[vmm].push(+(await this.run(vmm, path, firmware('exits'), `kind=notify n=${notifyCount}${m}`, NOTIFY_RE))[1]);
        }
        log(`qemu side-by-side (${mode.toUpperCase()}, ${path} notify) run ${i + 1}/${runs}: ping RTT tsvisor ${rtt.tsvisor[i].toFixed(0)} µs, QEMU ${rtt.qemu[i].toFixed(0)} µs; ` +
          `tx-burst tsvisor ${pps.tsvisor[i].toFixed(0)}/s, QEMU ${pps.qemu[i].toFixed(0)}/s; notify tsvisor ${notify.tsvisor[i]} cycles, QEMU ${notify.qemu[i]}`);
      }
      const pair = (x: Record<Vmm, number[]>): PairFigures => ({ tsvisor: summarize(x.tsvisor), qemu: summarize(x.qemu) });
      out[path] = { pingRttUs: pair(rtt), txPps: pair(pps), notifyCycles: pair(notify) };
    }
    return out;
  }
}
