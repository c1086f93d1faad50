// virtio-net end to end with the firmware/ driver: fast (seconds), on real
// KVM, with the TAP inside a namespace each test makes and always deletes.
// The guest pings the host's TAP address; the namespace's own counters
// confirm the frames crossed the TAP.
import { spawn } from 'node:child_process';
import { Vm } from '../src/vm.js';
import { kvmTestSerial, firmwareImage, firmwareMissing } from './helpers/kvm.js';
import { testNet, netMissing } from './helpers/netns.js';

const needsPing = () => netMissing() ?? firmwareMissing('ping')();

async function runFirmware(image: string, cmdline: string, tap: import('../src/net/tap.js').Tap, extra: { txBurst?: number; ioeventfd?: boolean } = {}) {
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

for (const transport of ['modern', 'legacy'] as const) {
  kvmTestSerial(`firmware ping with --ioeventfd (${transport}): 100/100, and queue notifies no longer exit to userspace`, async (t) => {
    const net = testNet(t);
    const r = await runFirmware('ping', `transport=${transport} count=100`, net.tap, { ioeventfd: true });
    t.regex(r.output, /ping: 100\/100 replies/);
    t.is(r.exit.status, 1);
    // Without ioeventfd each TX kick is an exit to the device (txKicks counts them on the vCPU side).
    t.is(r.exit.net?.txKicks, 0, 'no TX notify reached the vCPU thread');
    const n = await runFirmware('exits', `kind=notify n=1000 transport=${transport}`, net.tap, { ioeventfd: true });
    t.is(n.exit.status, 1);
    const notifyExits = transport === 'modern' ? n.exit.stats.mmioByRegion['virtio-net modern'] ?? 0 : Object.entries(n.exit.stats.pioByPort).filter(([p]) => /virtio/.test(p)).reduce((a, [, c]) => a + c, 0);
    t.true(notifyExits < 200, `1000 notify writes, ${notifyExits} exits to that BAR (setup only)`);
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

kvmTestSerial('firmware hostile: bad descriptors, loops, huge lengths and wrong indices break the device, never the VMM; after a reset it pings again', async (t) => {
  const net = testNet(t);
  const r = await runFirmware('hostile', 'verbose=1', net.tap);
  t.regex(r.output, /hostile: survived steps=8 ping=ok needs_reset=8/, 'every step set DEVICE_NEEDS_RESET and the device worked again after a reset');
  t.is(r.exit.kind, 'debug-exit');
  t.is(r.exit.status, 1);
  const errors = (r.exit.net?.deviceErrors ?? []) as string[];
  t.is(errors.length, 8, `the device said what it refused: ${errors.join('; ')}`);
}, () => netMissing() ?? firmwareMissing('hostile')());

for (const transport of ['modern', 'legacy'] as const) {
  kvmTestSerial(`firmware exits kind=notify: 1000 queue-notify writes on the ${transport} transport are dispatched to the device`, async (t) => {
    const net = testNet(t);
    const r = await runFirmware('exits', `kind=notify n=1000 transport=${transport}`, net.tap);
    t.regex(r.output, /exits kind=notify n=1000 cycles_per_exit=\d+/);
    t.is(r.exit.status, 1, 'and no buffer was used for a notify with nothing made available');
    const region = transport === 'modern' ? 'virtio-net modern' : undefined;
    if (region) t.true((r.exit.stats.mmioByRegion[region] ?? 0) >= 1000, 'the writes exited to the modern BAR');
    else t.true(Object.entries(r.exit.stats.pioByPort).some(([port, n]) => /virtio/.test(port) && n >= 1000), 'the writes exited to the legacy I/O BAR');
  }, () => netMissing() ?? firmwareMissing('exits')());
}

kvmTestSerial('firmware rx-sink: frames the host sends land in the guest, which answers pings', async (t) => {
  const net = testNet(t);
  const vm = await Vm.boot({ kernel: firmwareImage('rx-sink'), cmdline: 'count=0 answer=1 ready=1 idle=1500', memMiB: 64, timeoutMs: 60_000, net: { tap: net.tap } });
  t.teardown(() => vm.stop());
  await vm.console.waitFor(/rx-sink: ready/, { fromStart: true, timeoutMs: 30_000 });
  const ping = await net.ns.run(['ping', '-c', '30', '-i', '0.02', '-W', '2', '10.0.2.15'], { timeoutMs: 30_000 });
  const exit = await vm.exited;
  // It counts until 1.5 s pass without a frame: the ARP request and 30 echo requests at least.
  const m = /rx-sink: (\d+) frames bytes=\d+ cycles=\d+ answered=(\d+)/.exec(vm.console.output);
  t.truthy(m, vm.console.output);
  t.true(Number(m![1]) >= 31, `frames received: ${m![1]}`);
  t.true(Number(m![2]) >= 31, `frames answered: ${m![2]}`);
  t.regex(ping.out, /30 packets transmitted, 30 received/);
  t.is(exit.status, 1);
}, () => netMissing() ?? firmwareMissing('rx-sink')());

kvmTestSerial('the host setting the TAP down and up reaches the device as link status', async (t) => {
  const net = testNet(t);
  t.true(net.tap.hostUp?.(), 'the TAP is up in its namespace');
  const vm = await Vm.boot({ kernel: firmwareImage('rx-sink'), cmdline: 'count=0 ready=1 idle=8000 start=8000', memMiB: 64, timeoutMs: 60_000, net: { tap: net.tap } });
  t.teardown(() => vm.stop());
  await vm.console.waitFor(/rx-sink: ready/, { fromStart: true, timeoutMs: 30_000 });
  const until = async (want: boolean) => {
    for (let i = 0; i < 40 && vm.net!.linkUp !== want; i++) await new Promise((r) => setTimeout(r, 100));
    return vm.net!.linkUp;
  };
  t.true(await until(true));
  net.ns.must(['ip', 'link', 'set', 'tap0', 'down']);
  t.false(net.tap.hostUp?.());
  t.false(await until(false), 'link down seen by the device');
  net.ns.must(['ip', 'link', 'set', 'tap0', 'up']);
  t.true(await until(true), 'and up again');
  await vm.stop();
}, needsPing);
