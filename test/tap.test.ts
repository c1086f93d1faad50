// The TAP backend, unit and against a real TAP.
//
// Network isolation: the real-TAP tests create their own network namespace
// and create the TAP inside it (this thread enters the namespace for the
// TUNSETIFF, then returns). Addresses, routes and all traffic live only
// inside the namespace; the namespace and the TAP are deleted in
// test.after.always, whether the tests passed or not.
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { Tap, TUNSETIFF, TUNGETFEATURES, TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETSNDBUF, TUN_F_CSUM, TUN_F_TSO4 } from '../src/net/tap.js';
import { TsvisorError } from '../src/errors.js';
import { NetNamespace } from '../src/net/netns.js';
import { NativeBuffer, EAGAIN } from '../src/sys/libc.js';
import { VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK } from '../src/devices/virtio/transport-state.js';
import { offeredFeatures, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX } from '../src/devices/net/virtio-net-features.js';
import { netRig } from './helpers/net-rig.js';
import { until } from './helpers/net-fakes.js';

test('ioctl numbers match <linux/if_tun.h>', (t) => {
  t.is(TUNSETIFF, 0x400454ca);
  t.is(TUNGETFEATURES, 0x800454cf);
  t.is(TUNSETOFFLOAD, 0x400454d0);
  t.is(TUNSETSNDBUF, 0x400454d4);
  t.is(TUNSETVNETHDRSZ, 0x400454d8);
});

test('bad interface names are refused before any system call', (t) => {
  for (const bad of ['', 'a-name-longer-than-15', 'has space', 'a/b']) {
    const e = t.throws(() => Tap.open(bad), { instanceOf: TsvisorError });
    t.is(e!.exitCode, 2);
  }
});

// ------------------------------------------------------------ real TAP

const canTap = process.getuid?.() === 0 && existsSync('/dev/net/tun');
const TAP = `tsv${randomBytes(4).toString('hex')}`; // 11 characters
const opened: Tap[] = [];
let namespace: NetNamespace | undefined;

/** The test namespace, made on first use. */
function ns(): NetNamespace {
  namespace ??= NetNamespace.create('tsvtap');
  return namespace;
}
function inNs(...args: string[]): string {
  return ns().must(args);
}

/** Opens TAP inside the test namespace. */
function openInNamespace(): Tap {
  return ns().enter(() => Tap.open(TAP));
}

/** Gives the TAP its namespace-side address and brings it up. */
function setupNamespace(tap: Tap): void {
  // No IPv6 on the TAP: keeps router solicitations and MLD reports out of the way.
  try {
    inNs('sysctl', '-qw', `net.ipv6.conf.${tap.name}.disable_ipv6=1`);
  } catch {
    /* IPv6 may be off already */
  }
  inNs('ip', 'addr', 'add', '10.211.0.1/24', 'dev', tap.name);
  inNs('ip', 'link', 'set', tap.name, 'up');
}

test.after.always('delete the namespace and the TAP', () => {
  for (const t of opened) t.close();
  namespace?.delete();
});

const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP = [10, 211, 0, 2];
const HOST_IP = [10, 211, 0, 1];

/** An ARP request "who has `target`, tell `senderIp`" from `senderMac`, broadcast. */
function arpRequest(senderMac: number[], senderIp: number[], target: number[]): Uint8Array {
  const f = new Uint8Array(42);
  f.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0);
  f.set(senderMac, 6);
  f.set([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01], 12);
  f.set(senderMac, 22);
  f.set(senderIp, 28);
  f.set(target, 38);
  return f;
}

function isArp(frame: Uint8Array, op: number): boolean {
  return frame.length >= 42 && frame[12] === 0x08 && frame[13] === 0x06 && frame[21] === op;
}

/** Reads frames from a Tap (header of `hdr` bytes stripped) until `match`, or null after `ms`. */
async function readUntil(tap: Tap, hdr: number, match: (f: Uint8Array) => boolean, ms = 3000): Promise<Uint8Array | null> {
  const buf = new NativeBuffer(70000);
  const iov = new NativeBuffer(16);
  iov.dv.setBigUint64(0, buf.address, true);
  iov.dv.setBigUint64(8, BigInt(buf.size), true);
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const n = tap.readv(iov.address, 1);
    if (n === -EAGAIN) {
      await new Promise((r) => setTimeout(r, 5));
      continue;
    }
    if (n < 0) throw new Error(`readv: errno ${-n}`);
    const f = buf.bytes.slice(hdr, n);
    if (match(f)) return f;
  }
  return null;
}

function writeFrame(tap: Tap, hdr: number, frame: Uint8Array): number {
  const buf = new NativeBuffer(hdr + frame.length);
  buf.bytes.set(frame, hdr);
  const iov = new NativeBuffer(16);
  iov.dv.setBigUint64(0, buf.address, true);
  iov.dv.setBigUint64(8, BigInt(buf.size), true);
  return tap.writev(iov.address, 1);
}

const tapTest = canTap ? test.serial : test.skip;

tapTest('Tap.open creates the TAP with a vnet header; a second open is refused as busy', (t) => {
  const tap = openInNamespace();
  opened.push(tap);
  t.is(tap.name, TAP);
  t.is(tap.kernelVnetHdrLen(), 10);
  tap.setVnetHdrLen(12);
  t.is(tap.kernelVnetHdrLen(), 12);
  t.is(tap.supportedOffloads & (TUN_F_CSUM | TUN_F_TSO4), TUN_F_CSUM | TUN_F_TSO4);
  tap.setOffload(TUN_F_CSUM | TUN_F_TSO4);
  t.is(tap.offloads, TUN_F_CSUM | TUN_F_TSO4);
  tap.setOffload(0);
  const e = t.throws(() => openInNamespace(), { instanceOf: TsvisorError });
  t.regex(e!.message, /busy/);
  setupNamespace(tap);
  t.true(inNs('ip', '-o', 'link', 'show', TAP).includes(TAP), 'the TAP lives in the test namespace');
  t.false(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).includes(TAP), 'and never in the host namespace');
});

tapTest('a frame written through the backend reaches the namespace, and its ARP reply comes back', async (t) => {
  const tap = opened[0];
  if (!tap) return t.fail('no TAP (previous test failed)');
  const stat = () => Number(inNs('cat', `/sys/class/net/${TAP}/statistics/rx_packets`).trim());
  const before = stat();
  t.is(writeFrame(tap, 12, arpRequest(GUEST_MAC, GUEST_IP, HOST_IP)), 12 + 42);
  const reply = await readUntil(tap, 12, (f) => isArp(f, 2));
  t.truthy(reply, 'an ARP reply from the namespace kernel');
  t.deepEqual([...reply!.subarray(0, 6)], GUEST_MAC, 'addressed to the guest');
  t.deepEqual([...reply!.subarray(28, 32)], HOST_IP, 'for 10.211.0.1');
  t.is(stat() - before, 1, 'the namespace side counted one received frame');
});

tapTest('a frame sent from the namespace side (ping → ARP request) is read by the backend', async (t) => {
  const tap = opened[0];
  if (!tap) return t.fail('no TAP (previous test failed)');
  const ping = spawn('ip', ['netns', 'exec', ns().name, 'ping', '-c1', '-W1', '10.211.0.3'], { stdio: 'ignore' });
  t.teardown(() => ping.kill());
  const req = await readUntil(tap, 12, (f) => isArp(f, 1) && f[38] === 10 && f[41] === 3);
  t.truthy(req, 'an ARP request for 10.211.0.3');
  t.deepEqual([...req!.subarray(28, 32)], HOST_IP);
});

tapTest('virtio-net over the real TAP: guest TX ARP request → device → namespace → ARP reply → device RX into guest buffers', async (t) => {
  const tap = opened[0];
  if (!tap) return t.fail('no TAP (previous test failed)');
  t.true((offeredFeatures({ backendOffloads: tap.supportedOffloads }) / 2 ** 15) % 2 >= 1);
  // The TAP belongs to the earlier tests (opened[]): the rig must not close it.
  const { mem, net, vcpu, ts, irq, rx, tx } = netRig(t, tap, {
    features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX], mac: GUEST_MAC, activate: false, closeBackend: false,
  });
  // Drain what the namespace sent before (earlier tests' ARP traffic).
  await readUntil(tap, 12, () => false, 200);
  ts.status = VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
  vcpu.onStatusChange(0, ts.status);
  await until(() => net.isActive);
  t.is(tap.kernelVnetHdrLen(), 12);
  for (let i = 0; i < 16; i++) rx.addChain([{ gpa: 0x200000 + i * 0x1000, len: 2048, write: true }]);
  rx.kick();
  vcpu.onQueueNotify(0);
  // The guest asks who has 10.211.0.1 (a different sender IP than before, so the neighbour entry is new).
  const req = arpRequest(GUEST_MAC, [10, 211, 0, 4], HOST_IP);
  mem.write(0x100000, new Uint8Array(12));
  mem.write(0x100100, req);
  tx.addChain([{ gpa: 0x100000, len: 12 }, { gpa: 0x100100, len: req.length }]);
  tx.kick();
  vcpu.onQueueNotify(1);
  await until(() => tx.usedIdx() === 1, 3000, 'TX completion');
  t.is(net.stats.txPackets, 1);
  let reply: Uint8Array | null = null;
  await until(() => {
    for (const u of rx.takeUsed()) {
      const i = u.id; // chains were added as single descriptors 0..15
      const f = mem.read(0x200000 + i * 0x1000, u.len)!;
      t.is(f[10] | (f[11] << 8), 1, 'num_buffers');
      if (isArp(f.subarray(12), 2)) reply = f.subarray(12);
    }
    return reply !== null;
  }, 3000, 'the ARP reply in a guest RX buffer');
  t.deepEqual([...reply!.subarray(28, 32)], HOST_IP);
  t.deepEqual([...reply!.subarray(38, 42)], [10, 211, 0, 4]);
  t.true(irq.queue[0] >= 1, 'an RX interrupt');
  t.true(irq.queue[1] >= 1, 'a TX interrupt');
});

// ------------------------------------------------ multi-queue TAP (virtio-net queue pairs)

tapTest('queues=2 opens a multi-queue TAP, one fd per queue; each fd sends to the namespace; a detached queue leaves the interface and gets no frame', async (t) => {
  const name = `tsq${randomBytes(4).toString('hex')}`;
  const tap = ns().enter(() => Tap.open(name, { queues: 2 }));
  t.teardown(() => tap.close());
  t.is(tap.moreQueues.length, 1);
  const q1 = tap.moreQueues[0];
  t.is(q1.name, name);
  t.not(q1.fd, tap.fd);
  t.regex(inNs('ip', '-d', 'link', 'show', name), /multi_queue/, 'the namespace sees one interface, with multi_queue');
  inNs('ip', 'addr', 'add', '10.212.0.1/24', 'dev', name);
  inNs('ip', 'link', 'set', name, 'up');
  const stat = () => Number(inNs('cat', `/sys/class/net/${name}/statistics/rx_packets`).trim());
  const before = stat();
  t.is(writeFrame(tap, 10, arpRequest(GUEST_MAC, [10, 212, 0, 2], [10, 212, 0, 1])), 10 + 42);
  t.is(writeFrame(q1, 10, arpRequest(GUEST_MAC, [10, 212, 0, 3], [10, 212, 0, 1])), 10 + 42);
  t.is(stat() - before, 2, 'both queues reached the namespace');
  // Detached, a queue is disabled in tun: the interface has one queue left, and every frame
  // for the guest is steered to the attached one (a detached fd may still write).
  const queues = () => inNs('ls', `/sys/class/net/${name}/queues`).split(/\s+/).filter((q) => q.startsWith('rx-')).length;
  t.is(queues(), 2);
  q1.setQueueEnabled(false);
  t.is(queues(), 1, 'one queue left');
  await readUntil(tap, 10, () => false, 200);
  for (let ip = 10; ip < 14; ip++) {
    t.is(writeFrame(tap, 10, arpRequest(GUEST_MAC, [10, 212, 0, ip], [10, 212, 0, 1])), 52);
    t.truthy(await readUntil(tap, 10, (f) => isArp(f, 2) && f[41] === ip), `the reply to .${ip} came to the attached queue`);
  }
  t.is(await readUntil(q1, 10, () => true, 100), null, 'the detached queue got nothing');
  q1.setQueueEnabled(true);
  t.is(queues(), 2, 'attached again');
});

tapTest('queues=2 on an existing single-queue TAP is a one-line error naming queues=1 and multi_queue', (t) => {
  const name = `tss${randomBytes(4).toString('hex')}`;
  inNs('ip', 'tuntap', 'add', 'dev', name, 'mode', 'tap', 'vnet_hdr');
  t.teardown(() => inNs('ip', 'link', 'del', name));
  const e = t.throws(() => ns().enter(() => Tap.open(name, { queues: 2 })), { instanceOf: TsvisorError });
  t.regex(e!.message, new RegExp(`cannot open TAP ${name} with 2 queues: it exists but is not a multi-queue TAP`));
  t.regex(e!.line, /queues=1/);
  t.regex(e!.line, /multi_queue/);
});

// ------------------------------------------------ permission errors (no TAP is created)

const canSetpriv = canTap && existsSync('/usr/bin/setpriv');
const privTest = canSetpriv ? test.serial : test.skip;

function openAs(setprivArgs: string[], name: string): string {
  const script = `import(${JSON.stringify(new URL('../src/net/tap.js', import.meta.url).href)}).then((m) => { try { m.Tap.open(${JSON.stringify(name)}); console.log('opened'); } catch (e) { console.log(e.name + ': ' + e.line); } })`;
  // Inside the test namespace, so that even a wrongly successful open could not add a TAP to the host.
  return execFileSync('ip', ['netns', 'exec', ns().name, 'setpriv', ...setprivArgs, process.execPath, '-e', script], { encoding: 'utf8', cwd: '/' }).trim();
}

privTest('without CAP_NET_ADMIN, creating a TAP fails with a one-line error that says how to pre-create it', (t) => {
  const name = `tsv${randomBytes(4).toString('hex')}`;
  const out = openAs(['--bounding-set=-net_admin', '--inh-caps=-net_admin'], name);
  t.regex(out, /^TsvisorError: cannot use TAP tsv[0-9a-f]+: creating a TAP needs CAP_NET_ADMIN/);
  t.true(out.includes(`ip tuntap add dev ${name} mode tap user $USER vnet_hdr`));
  t.throws(() => inNs('ip', 'link', 'show', name), undefined, 'no TAP was created');
});

privTest('without access to /dev/net/tun the error says so', (t) => {
  const out = openAs(['--reuid=65534', '--regid=65534', '--clear-groups'], 'tsvnobody0');
  t.regex(out, /^TsvisorError: \/dev\/net\/tun is not accessible/);
});
