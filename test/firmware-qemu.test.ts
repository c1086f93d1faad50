// The firmware's virtio-net driver against a reference device: QEMU's
// virtio-net-pci (TCG, so it runs anywhere QEMU does) on a TAP device inside a
// network namespace this test creates and always deletes. The `ping` image
// resolves the host with ARP and pings it; the result line is checked from the
// guest, and the TAP's packet counters and neighbour table from the host.
// Nothing leaves the namespace: the TAP is its only interface.
import test from 'ava';
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url)); // dist/test/ → repo
const firmwareDir = join(repoRoot, 'firmware');
const QEMU = 'qemu-system-x86_64';
const GUEST_MAC = '52:54:00:12:34:56'; // QEMU's default for the first NIC
const HOST_IP = '10.0.2.2';

/** Why these tests cannot run here, or null. Decided once, synchronously, so a
 * skip shows its reason in the test title. */
function skipReason(): string | null {
  const which = spawnSync('sh', ['-c', `command -v ${QEMU}`], { encoding: 'utf8' });
  if (which.status !== 0) return `${QEMU} is not installed (apt-get install qemu-system-x86)`;
  const version = spawnSync(QEMU, ['-version'], { encoding: 'utf8', timeout: 20_000 });
  if (version.status !== 0) return `${QEMU} cannot start: ${(version.stderr || version.error?.message || '').trim().split('\n')[0]}`;
  const machine = spawnSync(QEMU, ['-accel', 'tcg', '-machine', 'pc', '-display', 'none', '-nodefaults', '-S', '-device', 'virtio-net-pci,help'], { encoding: 'utf8', timeout: 20_000 });
  if (machine.status !== 0) return `${QEMU} has no virtio-net-pci: ${(machine.stderr || '').trim().split('\n')[0]}`;
  if (process.getuid?.() !== 0) return 'creating a network namespace and a TAP needs root';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  const probe = `tsvfw-probe-${process.pid}`;
  const add = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (add.status !== 0) return `ip netns add failed: ${(add.stderr || add.error?.message || '').trim()}`;
  spawnSync('ip', ['netns', 'del', probe]);
  return null;
}

const reason = skipReason();

function ipNs(ns: string, ...args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', ns, 'ip', ...args], { encoding: 'utf8' });
}

interface Run { stdout: string; stderr: string; status: number | null; signal: NodeJS.Signals | null }

function runQemu(ns: string, image: string, append: string, nicOpts: string, timeoutMs: number): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, QEMU, '-accel', 'tcg', '-cpu', 'max', '-m', '64',
      '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
      '-kernel', image, '-append', append,
      '-device', 'isa-debug-exit,iobase=0xf4,iosize=1',
      '-netdev', 'tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off',
      '-device', `virtio-net-pci,netdev=n0${nicOpts ? `,${nicOpts}` : ''}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (status, signal) => { clearTimeout(timer); resolve({ stdout, stderr, status, signal }); });
  });
}

interface LinkStats { rx: number; tx: number }
function tapStats(ns: string): LinkStats {
  const [link] = JSON.parse(ipNs(ns, '-s', '-j', 'link', 'show', 'tap0')) as Array<{ stats64: { rx: { packets: number }; tx: { packets: number } } }>;
  return { rx: link.stats64.rx.packets, tx: link.stats64.tx.packets };
}

const cases: Array<{ title: string; append: string; nic: string; info: RegExp }> = [
  { title: 'modern transport, MSI-X', append: 'count=10 interval=50 transport=modern irq=msix info=1', nic: '', info: /ping: device modern 1000 .*irq=msix/ },
  { title: 'legacy transport, INTx through the IOAPIC', append: 'count=10 interval=50 transport=legacy irq=intx info=1', nic: '', info: /ping: device legacy 1000 .*irq=intx/ },
  { title: 'modern-only device (1af4:1041), EVENT_IDX + MRG_RXBUF, polled', append: 'count=10 interval=50 irq=poll event_idx=1 mrg=1 info=1', nic: 'disable-legacy=on,disable-modern=off', info: /ping: device modern 1041 .*irq=poll/ },
];

if (reason) {
  test.skip(`firmware ping under QEMU virtio-net-pci — skipped: ${reason}`, () => {});
} else {
  let image = '';
  test.before(() => {
    image = execFileSync('bash', [join(firmwareDir, 'build.sh'), 'ping'], { encoding: 'utf8' }).trim();
  });

  for (const c of cases) {
    test.serial(`firmware ping.elf pings the host under QEMU virtio-net-pci: ${c.title}`, async (t) => {
      const ns = `tsvfw-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
      let created = false;
      const cleanup = () => {
        if (!created) return;
        created = false;
        spawnSync('ip', ['netns', 'del', ns]);
      };
      t.teardown(cleanup);
      try {
        execFileSync('ip', ['netns', 'add', ns]);
        created = true;
        ipNs(ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap');
        ipNs(ns, 'addr', 'add', `${HOST_IP}/24`, 'dev', 'tap0');
        ipNs(ns, 'link', 'set', 'tap0', 'up');
        const before = tapStats(ns);

        // The kernel flushes the TAP's neighbours when QEMU closes it: watch
        // them while the guest runs (it pings every 50 ms).
        let neigh = '';
        const watch = setInterval(() => {
          execFile('ip', ['netns', 'exec', ns, 'ip', 'neigh', 'show', 'dev', 'tap0'], { encoding: 'utf8' }, (err, out) => {
            if (!err && out.includes(GUEST_MAC)) neigh = out;
          });
        }, 40);
        let run: Run;
        try {
          run = await runQemu(ns, image, c.append, c.nic, 90_000);
        } finally {
          clearInterval(watch);
        }
        t.log(run.stdout.trim());
        if (run.stderr.trim()) t.log(`qemu stderr: ${run.stderr.trim()}`);
        t.is(run.signal, null, 'QEMU finished in time');
        t.is(run.status, 1, 'debug-exit code 0 (QEMU status 0 << 1 | 1)');
        t.regex(run.stdout, c.info);
        const m = /^ping: (\d+)\/(\d+) replies rtt_min=(\d+) rtt_avg=(\d+) rtt_max=(\d+) cycles$/m.exec(run.stdout);
        t.truthy(m, 'the result line');
        if (m) {
          t.is(m[1], '10');
          t.is(m[2], '10');
          const [min, avg, max] = [m[3], m[4], m[5]].map(Number);
          t.true(min > 0 && min <= avg && avg <= max, `rtt ${min} <= ${avg} <= ${max}`);
        }

        // Host side: the TAP received the guest's ARP request and 10 echo
        // requests, sent its ARP reply and 10 echo replies, and learned the
        // guest's MAC from the ARP request.
        const after = tapStats(ns);
        t.true(after.rx - before.rx >= 11, `tap0 received ${after.rx - before.rx} packets from the guest`);
        t.true(after.tx - before.tx >= 11, `tap0 sent ${after.tx - before.tx} packets to the guest`);
        t.regex(neigh, new RegExp(`^10\\.0\\.2\\.15 lladdr ${GUEST_MAC}`, 'm'), `neighbours: ${neigh.trim()}`);
      } finally {
        cleanup();
      }
      t.false(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(ns), 'the namespace is gone');
    });
  }
}
