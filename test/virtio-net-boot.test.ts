// End to end: the default guest's kernel brings eth0 up by itself (ip=…,
// CONFIG_IP_PNP) on tsvisor's virtio-net, and a ping from the host side gets
// answered by the guest kernel: RX and TX through the real Linux virtio_net
// driver, the virtio-pci transport, the device and the TAP.
//
// Network isolation as in tap.test.ts: the TAP is created by this process and
// moved at once into a namespace made for this test; 10.0.2.2 (host side) and
// all traffic live only there; the namespace is deleted afterwards.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Vm } from '../src/vm.js';
import { Tap } from '../src/net/tap.js';
import { defaultGuestPaths, DEFAULT_GUEST_MISSING } from '../src/guest/default-guest.js';
import { kvmTestSerial } from './helpers/kvm.js';

const NS = `tsv-${process.pid}-${randomBytes(2).toString('hex')}`;
const ip = (...a: string[]) => execFileSync('ip', a, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const inNs = (...a: string[]) => ip('netns', 'exec', NS, ...a);

function needs(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespace, TAP)';
  return defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING;
}

kvmTestSerial('the guest kernel configures eth0 on virtio-net and answers a ping from the namespace', async (t) => {
  const guest = defaultGuestPaths()!;
  const name = `tsv${randomBytes(4).toString('hex')}`;
  ip('netns', 'add', NS);
  t.teardown(() => {
    try {
      ip('netns', 'del', NS);
    } catch {
      /* gone */
    }
  });
  const tap = Tap.open(name);
  t.teardown(() => tap.close());
  ip('link', 'set', name, 'netns', NS);
  try {
    inNs('sysctl', '-qw', `net.ipv6.conf.${name}.disable_ipv6=1`);
  } catch {
    /* no IPv6 */
  }
  inNs('ip', 'addr', 'add', '10.0.2.2/24', 'dev', name);
  inNs('ip', 'link', 'set', name, 'up');

  const vm = await Vm.boot({
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: 'console=ttyS0 panic=-1 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off',
    memMiB: 256,
    net: { tap },
    timeoutMs: 8 * 60_000,
  });
  t.teardown(() => vm.stop());
  await vm.console.waitFor(/IP-Config: Complete/, { fromStart: true, timeoutMs: 8 * 60_000 });
  // Here init dies soon after (no user space on kvm_pvm): ping at once, asynchronously
  // (a synchronous child would stall the main loop that runs the device).
  const out = await new Promise<string>((resolve) => {
    const p = spawn('ip', ['netns', 'exec', NS, 'ping', '-c20', '-i0.2', '-w10', '10.0.2.15']);
    let o = '';
    p.stdout.on('data', (d) => { o += d; });
    p.on('close', () => resolve(o));
  });
  t.log(out.trim().split('\n').slice(-2).join(' | '));
  const s = vm.net!.stats;
  t.log(`net: tx ${s.txPackets} pkts, rx ${s.rxPackets} pkts, tx irqs ${s.txInterrupts}, rx irqs ${s.rxInterrupts}, ctrl cmds ${s.ctrlCommands}, stalls ${s.rxStalls}`);
  const received = Number(/(\d+) received/.exec(out)?.[1] ?? 0);
  t.true(received >= 1, `at least one echo reply:\n${out}\n${JSON.stringify(vm.net!.snapshot())}\n${vm.console.output.slice(-600)}`);
  t.true(s.rxPackets >= 2, 'ARP request and echo request reached the guest');
  t.true(s.txPackets >= 2, 'ARP reply and echo reply came back');
  t.deepEqual(s.deviceErrors, []);
}, needs);
