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

// The same check with the receive loop in guest ring 0 and in guest ring 3 (cpl3=1).
for (const [title, mode] of [
  ['firmware rx-sink: frames the host sends land in the guest, which answers pings', ''],
  ['firmware rx-sink cpl3=1: a guest receiving in ring 3 answers pings from the namespace', ' cpl3=1'],
] as const) {
  kvmTestSerial(title, async (t) => {
    const net = testNet(t);
    const vm = await Vm.boot({ kernel: firmwareImage('rx-sink'), cmdline: `count=0 answer=1 ready=1 idle=1500${mode}`, memMiB: 64, timeoutMs: 60_000, net: { tap: net.tap } });
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
}

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

// ---- 64 KiB TSO frames, both directions (the bench's largest frame size) ----

/** Byte and frame counters of the namespace's TAP (rx: frames from the guest). */
function tapTotals(net: import('./helpers/netns.js').TestNet): { rxBytes: number; rxPackets: number } {
  const lines = net.ns.must(['ip', '-s', 'link', 'show', 'tap0']).split('\n').map((l) => l.trim());
  const rx = lines[lines.findIndex((l) => l.startsWith('RX:')) + 1].split(/\s+/);
  return { rxBytes: Number(rx[0]), rxPackets: Number(rx[1]) };
}

kvmTestSerial('firmware tx-burst tso=1: 64 KiB TSO super-frames reach the namespace, one TAP frame each', async (t) => {
  const net = testNet(t);
  const before = tapTotals(net);
  const r = await runFirmware('tx-burst', 'count=200 size=65536 tso=1', net.tap);
  t.regex(r.output, /tx-burst: 200 frames size=65536 cycles=\d+/);
  t.is(r.exit.status, 1);
  const after = tapTotals(net);
  t.true(after.rxBytes - before.rxBytes >= 200 * 65536, `bytes that crossed the TAP: ${after.rxBytes - before.rxBytes}`);
  // Cut into 1448-byte segments they would be ~46 frames each; the ARP request adds one or two.
  const frames = after.rxPackets - before.rxPackets;
  t.true(frames >= 200 && frames < 400, `frames that crossed the TAP: ${frames}`);
}, () => netMissing() ?? firmwareMissing('tx-burst')());

/** scripts/bench/tap-floor.c built into a temporary directory (removed in teardown). */
async function buildTapFloor(t: import('ava').ExecutionContext): Promise<string> {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { execFileSync } = await import('node:child_process');
  const { repoRoot } = await import('./helpers/kvm.js');
  const dir = mkdtempSync(join(tmpdir(), 'tsv-tap-floor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'tap-floor');
  execFileSync('cc', ['-O2', '-o', bin, join(repoRoot, 'scripts/bench/tap-floor.c')]);
  return bin;
}

async function ccMissing(): Promise<string | null> {
  const { spawnSync } = await import('node:child_process');
  return spawnSync('cc', ['--version']).status === 0 ? null : 'needs cc to build scripts/bench/tap-floor.c';
}
const noCc = await ccMissing();

for (const [how, args] of [
  ['65600-byte buffers', 'tso=1'],
  ['merged 2 KiB buffers (MRG_RXBUF)', 'tso=1 mrg=1'],
] as const) {
  kvmTestSerial(`firmware rx-sink ${args}: 64 KiB TSO frames sent into the TAP arrive whole, in ${how}`, async (t) => {
    const net = testNet(t);
    // Quiet the namespace's own IPv6 chatter (MLD reports, router solicitations); a few may be queued already.
    net.ns.exec(['sysctl', '-qw', 'net.ipv6.conf.tap0.disable_ipv6=1']);
    const floor = await buildTapFloor(t);
    const vm = await Vm.boot({ kernel: firmwareImage('rx-sink'), cmdline: `ready=1 ${args} count=0 idle=3000`, memMiB: 64, timeoutMs: 60_000, net: { tap: net.tap } });
    t.teardown(() => vm.stop());
    await vm.console.waitFor(/rx-sink: ready/, { fromStart: true, timeoutMs: 30_000 });
    // The TAP takes 64 KiB frames once the device applied the guest's offloads (at DRIVER_OK, on the main loop).
    for (let i = 0; i < 100 && !vm.net?.isActive; i++) await new Promise((r) => setTimeout(r, 20));
    t.true(vm.net?.isActive, 'the device is active');
    // 65535: the kernel cuts GSO frames of 64 KiB and more (gso_max_size) before the TAP's reader sees them.
    const send = await net.ns.run([floor, 'send', 'tap0', '65535', '50', 'gso'], { timeoutMs: 30_000 });
    t.regex(send.out, /tap-floor send size=65535 frames=50 ns=\d+/);
    const exit = await vm.exited;
    t.is(exit.status, 1);
    // Besides the fifty, a few small frames of the namespace's own may come.
    const m = /rx-sink: (\d+) frames bytes=(\d+) cycles=\d+/.exec(vm.console.output);
    t.truthy(m, vm.console.output);
    const [frames, bytes] = [Number(m![1]), Number(m![2])];
    t.true(frames >= 50 && frames < 100, `frames: ${frames} (cut into 1448-byte segments they would be ~2300)`);
    t.true(bytes >= 50 * 65535 && bytes < 50 * 65535 + 50 * 1514, `bytes: ${bytes}`);
    t.is(exit.net?.rxBytes, bytes, "the device's count agrees");
  }, () => netMissing() ?? firmwareMissing('rx-sink')() ?? noCc);
}

// ---- cpl3=1: the data loops run in guest ring 3 (native on kvm_pvm), notifying through the BAR ----

kvmTestSerial('firmware exits cpl3=1: port and MMIO accesses made from guest ring 3 exit to tsvisor, one each', async (t) => {
  for (const kind of ['pio_out', 'pio_in', 'mmio_write', 'mmio_read'] as const) {
    const vm = await Vm.boot({ kernel: firmwareImage('exits'), cmdline: `kind=${kind} n=500 cpl3=1`, memMiB: 64, timeoutMs: 60_000 });
    const exit = await vm.exited;
    t.regex(vm.console.output, new RegExp(`exits kind=${kind} n=500 cycles_per_exit=\\d+ cycles=\\d+ cpl=3`), 'the loop ran at CPL3 and came back to ring 0 to print');
    t.is(exit.status, 1);
    const seen = kind.startsWith('pio') ? exit.stats.unclaimedPio : exit.stats.unclaimedMmio;
    t.true(seen >= 500, `${kind}: ${seen} accesses reached the VMM`);
  }
}, firmwareMissing('exits'));

for (const transport of ['modern', 'legacy'] as const) {
  kvmTestSerial(`firmware ping cpl3=1 (${transport}): 100/100 with the echo loop in guest ring 3`, async (t) => {
    const net = testNet(t);
    const before = net.counters();
    const r = await runFirmware('ping', `transport=${transport} cpl3=1 count=100`, net.tap);
    t.regex(r.output, /ping: 100\/100 replies/);
    t.is(r.exit.status, 1);
    t.true(net.counters().rxPackets - before.rxPackets >= 101, 'the namespace received the ARP request and 100 echo requests');
    // Ring 3 kicks the TX queue through the notify register: MMIO (modern) or `out` (legacy, IOPL 3).
    const notifies = transport === 'modern' ? r.exit.stats.mmioByRegion['virtio-net modern'] ?? 0 : Object.entries(r.exit.stats.pioByPort).filter(([p]) => /virtio/.test(p)).reduce((a, [, c]) => a + c, 0);
    t.true(notifies >= 100, `${notifies} accesses to the device's BAR`);
  }, needsPing);
}

kvmTestSerial('firmware tx-burst cpl3=1: a burst queued and reaped from guest ring 3 reaches the TAP whole', async (t) => {
  const net = testNet(t);
  const before = net.counters();
  const r = await runFirmware('tx-burst', 'count=5000 size=1500 cpl3=1', net.tap);
  t.regex(r.output, /tx-burst: 5000 frames size=1500 cycles=\d+ kicks=\d+/);
  t.is(r.exit.status, 1);
  t.true(net.counters().rxPackets - before.rxPackets >= 5000, 'every frame arrived in the namespace');
}, () => netMissing() ?? firmwareMissing('tx-burst')());

kvmTestSerial('firmware udp-echo cpl3=1: datagrams sent and checked in guest ring 3 come back intact', async (t) => {
  const net = testNet(t);
  const server = spawn('ip', ['netns', 'exec', net.ns.name, process.execPath, '-e', `
    const s = require('node:dgram').createSocket('udp4');
    s.on('message', (m, r) => s.send(m, r.port, r.address));
    s.bind(7777, '10.0.2.2', () => console.log('ready'));`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => server.kill());
  await new Promise<void>((resolve) => server.stdout!.once('data', () => resolve()));
  const r = await runFirmware('udp-echo', 'count=50 size=512 cpl3=1', net.tap);
  t.regex(r.output, /udp-echo: 50\/50 ok/);
  t.is(r.exit.status, 1);
}, () => netMissing() ?? firmwareMissing('udp-echo')());
