// The same guest program under QEMU and under tsvisor, alternating run by
// run in one invocation, both on a TAP in the bench namespace: QEMU with KVM,
// its userspace virtio-net-pci (vhost=off, as tsvisor has no vhost either).
import { spawnSync } from 'node:child_process';
import { NetNamespace } from '../../src/net/netns.js';
import { firmware, start, lastLine, TAP, tsvisorArgv, type Scratch } from './procs.js';
import { summarize, type Summary } from './summary.js';

const QEMU = 'qemu-system-x86_64';

/** Installs QEMU from the distribution's packages when it is missing; null when it is there, else why not. */
export function ensureQemu(log: (s: string) => void): string | null {
  if (spawnSync('sh', ['-c', `command -v ${QEMU}`]).status === 0) return null;
  log(`bench: ${QEMU} is missing; installing qemu-system-x86 with apt-get`);
  const r = spawnSync('apt-get', ['install', '-y', '-q', 'qemu-system-x86'], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) return `${QEMU} is not installed and apt-get install qemu-system-x86 failed: ${lastLine(r.stderr ?? '')}`;
  return null;
}

function qemuArgv(image: string, append: string): string[] {
  return [QEMU, '-accel', 'kvm', '-cpu', 'host,-arch-capabilities', '-m', '64', '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
    '-kernel', image, '-append', append, '-device', 'isa-debug-exit,iobase=0xf4,iosize=1',
    '-netdev', `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=off`, '-device', 'virtio-net-pci,netdev=n0'];
}

export interface QemuFigures {
  pingRttUs: { tsvisor: Summary | null; qemu: Summary | null };
  txPps: { tsvisor: Summary | null; qemu: Summary | null };
  /** Guest cycles per queue-notify write (exits kind=notify): both VMMs' notify exit path. */
  notifyCycles: { tsvisor: Summary | null; qemu: Summary | null };
}

const PING_RE = /ping: (\d+)\/(\d+) replies rtt_min=(\d+) rtt_avg=(\d+) rtt_max=(\d+)/;
const TX_RE = /tx-burst: (\d+) frames size=\d+ cycles=(\d+)/;

export class QemuBench {
  constructor(private readonly scratch: Scratch, private readonly ns: NetNamespace, private readonly tscKhz: number) {}

  private async run(vmm: 'tsvisor' | 'qemu', image: string, append: string): Promise<string> {
    const argv = vmm === 'qemu' ? qemuArgv(image, append) : tsvisorArgv(image, append, this.scratch.file('q.json'), ['--net', `tap:${TAP}`]);
    const r = await start(argv, { ns: this.ns, timeoutMs: 120_000 }).done;
    return r.stdout + (r.status > 1 && !/ replies| frames/.test(r.stdout) ? `\n${vmm} status ${r.status}: ${lastLine(r.stderr)}` : '');
  }

  /** Mean echo RTT in µs of one `ping` run (count echoes, no interval). */
  private async ping(vmm: 'tsvisor' | 'qemu', count: number): Promise<number> {
    const out = await this.run(vmm, firmware('ping'), `count=${count} interval=0`);
    const m = PING_RE.exec(out);
    if (!m || m[1] !== m[2]) throw new Error(`${vmm} ping: ${m ? `${m[1]}/${m[2]} replies` : 'no result'}: ${lastLine(out)}`);
    return (+m[4] / this.tscKhz) * 1000;
  }

  private async tx(vmm: 'tsvisor' | 'qemu', count: number): Promise<number> {
    const out = await this.run(vmm, firmware('tx-burst'), `count=${count} size=64`);
    const m = TX_RE.exec(out);
    if (!m) throw new Error(`${vmm} tx-burst: no result: ${lastLine(out)}`);
    return +m[1] / (+m[2] / (this.tscKhz * 1000));
  }

  private async notify(vmm: 'tsvisor' | 'qemu', n: number): Promise<number> {
    const out = await this.run(vmm, firmware('exits'), `kind=notify n=${n}`);
    const m = /exits kind=notify n=\d+ cycles_per_exit=(\d+)/.exec(out);
    if (!m) throw new Error(`${vmm} exits kind=notify: no result: ${lastLine(out)}`);
    return +m[1];
  }

  async measure(runs: number, pingCount: number, txCount: number, notifyCount: number, log: (s: string) => void): Promise<QemuFigures> {
    const rtt = { tsvisor: [] as number[], qemu: [] as number[] };
    const pps = { tsvisor: [] as number[], qemu: [] as number[] };
    const notify = { tsvisor: [] as number[], qemu: [] as number[] };
    for (let i = 0; i < runs; i++) {
      for (const vmm of ['tsvisor', 'qemu'] as const) {
        rtt[vmm].push(await this.ping(vmm, pingCount));
        pps[vmm].push(await this.tx(vmm, txCount));
        notify[vmm].push(await this.notify(vmm, notifyCount));
      }
      log(`qemu side-by-side run ${i + 1}/${runs}: ping RTT tsvisor ${rtt.tsvisor[i].toFixed(1)} µs, QEMU ${rtt.qemu[i].toFixed(1)} µs; tx-burst tsvisor ${pps.tsvisor[i].toFixed(0)}/s, QEMU ${pps.qemu[i].toFixed(0)}/s; notify tsvisor ${notify.tsvisor[i]} cycles, QEMU ${notify.qemu[i]} cycles`);
    }
    return {
      pingRttUs: { tsvisor: summarize(rtt.tsvisor), qemu: summarize(rtt.qemu) },
      txPps: { tsvisor: summarize(pps.tsvisor), qemu: summarize(pps.qemu) },
      notifyCycles: { tsvisor: summarize(notify.tsvisor), qemu: summarize(notify.qemu) },
    };
  }
}
