// virtio-net end to end with the firmware/ driver: fast (seconds), on real
// KVM, with the TAP inside a namespace each test makes and always deletes.
// The guest pings the host's TAP address; the namespace's own counters
// confirm the frames crossed the TAP.
import { spawn } from 'node:child_process';
import { Vm } from '../src/vm.js';
import { kvmTestSerial, firmwareImage, firmwareMissing } from './helpers/kvm.js';
import { testNet, netMissing } from './helpers/netns.js';

const needsPing = () => netMissing() ?? firmwareMissing('ping')();

async function runFirmware(image: string, cmdline: string, tap: import('../src/net/tap.js').Tap, extra: { txBurst?: number } = {}) {
  const vm = await Vm.boot({ kernel: firmwareImage(image), cmdline, memMiB: 64, timeoutMs: 60_000, net: { tap, ...extra } });
  const exit = await vm.exited;
  return { exit, output: vm.console.output, net: vm.net?.snapshot?.() };
}

for (const [title, args] of [
  ['modern transport with MSI-X', 'transport=modern irq=msix'],
  ['legacy transport with INTx', 'transport=legacy irq=intx'],
] as const) {
  kvmTestSerial(`firmware ping: 100/100 over the ${title}`, async (t) => {
    const net = testNet(t);
    const before = net.counters();
    const r = await runFirmware('ping', `${args} count=100`, net.tap);
    t.log(r.output.trim().split('\n').slice(-2).join(' | '));
    t.regex(r.output, /ping: 100\/100 replies/);
    t.is(r.exit.kind, 'debug-exit');
    t.is(r.exit.status, 1);
    const after = net.counters();
    t.true(after.rxPackets - before.rxPackets >= 101, 'the namespace received the ARP request and 100 echo requests');
    t.true(after.txPackets - before.txPackets >= 101, 'and sent the ARP reply and 100 echo replies');
  }, needsPing);
}

kvmTestSerial('firmware udp-echo: 50 datagrams with checksums come back intact', async (t) => {
  const net = testNet(t);
  // A UDP echo server inside the namespace, bound before the guest starts.
  const server = spawn('ip', ['netns', 'exec', net.ns.name, process.execPath, '-e', `
    const s = require('node:dgram').createSocket('udp4');
    s.on('message', (m, r) => s.send(m, r.port, r.address));
    s.bind(7777, '10.0.2.2', () => console.log('ready'));`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => server.kill());
  await new Promise<void>((resolve) => server.stdout!.once('data', () => resolve()));
  const r = await runFirmware('udp-echo', 'count=50 size=512', net.tap);
  t.regex(r.output, /udp-echo: 50\/50 ok/);
  t.is(r.exit.status, 1);
}, () => netMissing() ?? firmwareMissing('udp-echo')());

kvmTestSerial('firmware tx-burst: a TX burst that fills the ring reaches the TAP whole', async (t) => {
  const net = testNet(t);
  const before = net.counters();
  const r = await runFirmware('tx-burst', 'count=2000 size=64', net.tap);
  t.regex(r.output, /tx-burst: 2000 frames size=64/);
  t.is(r.exit.status, 1);
  t.true(net.counters().rxPackets - before.rxPackets >= 2000, 'every frame arrived in the namespace');
}, () => netMissing() ?? firmwareMissing('tx-burst')());

kvmTestSerial('tsvisor run --net sandbox: the guest pings the host inside a namespace that is gone afterwards', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const { join } = await import('node:path');
  const { repoRoot } = await import('./helpers/kvm.js');
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/tsvisor.js'), 'run', '--kernel', firmwareImage('ping'), '--append', 'count=5', '--net', 'sandbox,mac=52:54:00:00:00:42', '--mem', '64', '--timeout', '60'], { encoding: 'utf8', timeout: 90_000 });
  t.regex(r.stdout, /ping: 5\/5 replies/);
  t.is(r.status, 1);
  const ns = /namespace (\S+),/.exec(r.stderr)?.[1];
  t.truthy(ns, r.stderr);
  t.false(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout.includes(ns!), 'the namespace (and its TAP) was deleted');
}, needsPing);
