// virtio-net over fake guest RAM: the vCPU side and the main-thread data path
// wired through real doorbells and a real main loop, the guest played by the
// vring test driver, the TAP played by a SEQPACKET socketpair.
import test, { type ExecutionContext } from 'ava';
import { DoorbellRinger } from '../src/loop/main-loop.js';
import { VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK } from '../src/devices/virtio/transport-state.js';
import { VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY, DescriptorChain } from '../src/devices/virtio/virtqueue.js';
import { resolveNetOptions, VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_ERR, VIRTIO_NET_OK } from '../src/devices/net/virtio-net.js';
import {
  VirtioNetConfig, VIRTIO_NET_S_LINK_UP, VIRTIO_NET_S_ANNOUNCE, parseMac, formatMac, checkQueueSize, netQueueSizes, NET_WORD_TX_WAITING,
} from '../src/devices/net/virtio-net-config.js';
import {
  FEATURE_DEPENDENCIES, FEATURE_NAMES, featureSet, validateFeatures, vnetHeaderSize, offeredFeatures, tunOffloadsFor, hasFeature, featureNames,
  VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_GUEST_ANNOUNCE,
  VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_RING_F_EVENT_IDX, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO,
} from '../src/devices/net/virtio-net-features.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO } from '../src/net/tap.js';
import { FeatureSet, NO_FEATURES } from '../src/devices/virtio/feature-set.js';
import { TsvisorError } from '../src/errors.js';
import { ctrlCmd, netRig, type NetRig, type NetRigOptions } from './helpers/net-rig.js';
import { SocketBackend, ethFrame, settled, until, withHeader } from './helpers/net-fakes.js';

const MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER = [0x02, 0, 0, 0, 0, 0x99];
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const DATA = 0x100000;

// ---------------------------------------------------------------- features

test('header size: 12 with VERSION_1 or MRG_RXBUF, else 10', (t) => {
  t.is(vnetHeaderSize(0), 10);
  t.is(vnetHeaderSize(featureSet(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_MAC)), 10);
  t.is(vnetHeaderSize(featureSet(VIRTIO_NET_F_MRG_RXBUF)), 12);
  t.is(vnetHeaderSize(featureSet(VIRTIO_F_VERSION_1)), 12);
  t.is(vnetHeaderSize(featureSet(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF)), 12);
});

test('FeatureSet: every bit 0-63 exact, word-wise masks, Number and BigInt conversions', (t) => {
  for (let b = 0; b < 64; b++) {
    const f = FeatureSet.of(b);
    t.true(f.has(b), `bit ${b}`);
    t.is(f.bits().join(), String(b));
    t.deepEqual(FeatureSet.from(1n << BigInt(b)).toWords(), f.toWords(), `BigInt bit ${b}`);
  }
  t.false(FeatureSet.of(63).has(64));
  t.false(FeatureSet.of(0).has(-1));
  t.throws(() => FeatureSet.of(64), { instanceOf: RangeError });
  const a = FeatureSet.of(0, 31, 32, 63);
  const b = FeatureSet.of(31, 63, 40);
  t.deepEqual(a.and(b).bits(), [31, 63]);
  t.deepEqual(a.without(b).bits(), [0, 32]);
  t.true(a.and(b).subsetOf(a));
  t.false(b.subsetOf(a));
  t.deepEqual(FeatureSet.from(featureSet(VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC)).bits(), [VIRTIO_NET_F_MAC, VIRTIO_F_VERSION_1]);
  t.throws(() => featureSet(53), { instanceOf: RangeError }, 'a Number set cannot name bit 53');
});

test('validateFeatures: a bit above 53 is checked against the offer exactly', (t) => {
  const offered = FeatureSet.of(VIRTIO_NET_F_MAC, 63);
  t.is(validateFeatures(FeatureSet.of(VIRTIO_NET_F_MAC, 63), offered), null);
  t.regex(validateFeatures(FeatureSet.of(VIRTIO_NET_F_MAC, 62, 63), offered) ?? '', /did not offer: bit 62$/);
  t.deepEqual(featureNames(FeatureSet.of(VIRTIO_F_VERSION_1, 63)), ['VERSION_1', 'bit 63']);
  t.is(vnetHeaderSize(FeatureSet.of(63)), 10, 'bit 63 does not read as VERSION_1 or MRG_RXBUF');
  t.is(vnetHeaderSize(FeatureSet.of(63, VIRTIO_F_VERSION_1)), 12);
});

test('validateFeatures refuses sets missing a dependency', (t) => {
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_MRG_RXBUF)), null);
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_GUEST_TSO4)), 'GUEST_TSO4 needs GUEST_CSUM');
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4)), null);
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_HOST_TSO4)), 'HOST_TSO4 needs CSUM');
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN)), 'GUEST_ECN needs GUEST_TSO4 or GUEST_TSO6');
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_ECN)), null);
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN)), 'HOST_ECN needs HOST_TSO4 or HOST_TSO6');
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_CTRL_RX)), 'CTRL_RX needs CTRL_VQ');
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_GUEST_ANNOUNCE)), 'GUEST_ANNOUNCE needs CTRL_VQ');
  t.is(validateFeatures(featureSet(VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_F_VERSION_1)), null);
  t.regex(validateFeatures(featureSet(VIRTIO_NET_F_MAC, VIRTIO_NET_F_GUEST_UFO), featureSet(VIRTIO_NET_F_MAC)) ?? '', /did not offer: GUEST_UFO/);
});

test('offered features follow the backend offloads; TAP offloads follow the guest', (t) => {
  const all = offeredFeatures({ backendOffloads: TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO });
  for (const b of [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX]) {
    t.true(hasFeature(all, b), featureNames(2 ** b)[0]);
  }
  t.is(validateFeatures(all), null, 'the full offer is self-consistent');
  const noUfo = offeredFeatures({ backendOffloads: TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN });
  t.false(hasFeature(noUfo, VIRTIO_NET_F_GUEST_UFO));
  t.false(hasFeature(noUfo, VIRTIO_NET_F_HOST_UFO));
  const none = offeredFeatures({ backendOffloads: 0 });
  t.false(hasFeature(none, VIRTIO_NET_F_CSUM));
  t.false(hasFeature(none, VIRTIO_NET_F_GUEST_TSO4));
  t.is(validateFeatures(none), null);
  t.is(tunOffloadsFor(featureSet(VIRTIO_NET_F_GUEST_TSO4)), 0, 'no GUEST_CSUM, no offloads');
  t.is(tunOffloadsFor(featureSet(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_ECN)), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN);
});

test('config space: layout, status, mac writes only for legacy without CTRL_MAC_ADDR', (t) => {
  const c = VirtioNetConfig.create(Uint8Array.from(MAC), 1500);
  t.is(c.read(0, 4), 0x12005452);
  t.is(c.read(4, 2), 0x5634);
  t.is(c.read(6, 2), VIRTIO_NET_S_LINK_UP);
  t.is(c.read(8, 2), 1, 'max_virtqueue_pairs');
  t.is(c.read(10, 2), 1500, 'mtu');
  t.is(c.read(12, 4), 0, 'past the end reads 0');
  c.setStatusBits(VIRTIO_NET_S_ANNOUNCE);
  t.is(c.read(6, 1), 3);
  t.false(c.write(0, 1, 0xaa, FeatureSet.of(VIRTIO_F_VERSION_1)));
  t.false(c.write(0, 1, 0xaa, FeatureSet.of(VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_MAC_ADDR)));
  t.false(c.write(6, 2, 0, NO_FEATURES), 'status is read-only');
  t.true(c.write(4, 2, 0x7788, NO_FEATURES));
  t.is(formatMac(c.mac), '52:54:00:12:88:77');
});

test('options: MAC parsing and queue sizes are validated with the option named', (t) => {
  t.deepEqual([...parseMac('52:54:00:ab:cd:ef')], [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
  t.throws(() => parseMac('52:54:00:ab:cd'), { instanceOf: TsvisorError, message: /--net mac/ });
  t.throws(() => parseMac('01:00:5e:00:00:01'), { instanceOf: TsvisorError, message: /multicast/ });
  t.is(checkQueueSize('the net option rxQueueSize', 512), 512);
  t.deepEqual(netQueueSizes({}), [256, 256, 64]);
  for (const bad of [128, 300, 2048, 0]) {
    const e = t.throws(() => checkQueueSize('the net option rxQueueSize', bad), { instanceOf: TsvisorError });
    t.regex(e!.message, /rxQueueSize/);
  }
  t.throws(() => netQueueSizes({ txQueueSize: 100 }), { message: /the net option txQueueSize 100/ });
});

test('options: every refusal names an option that exists (--tx-burst, or the net option of Vm.boot)', (t) => {
  t.throws(() => resolveNetOptions({ txBurst: 70000 }), { instanceOf: TsvisorError, message: /^--tx-burst 70000 / });
  t.throws(() => resolveNetOptions({ rxBurst: 0 }), { instanceOf: TsvisorError, message: /^the net option rxBurst 0 / });
  t.throws(() => resolveNetOptions({ mtu: 20 }), { instanceOf: TsvisorError, message: /^the net option mtu 20 / });
  t.throws(() => resolveNetOptions({ rxQueueSize: 100 }), { instanceOf: TsvisorError, message: /^the net option rxQueueSize 100 / });
  const o = resolveNetOptions({});
  t.deepEqual([o.txBurst, o.rxBurst, o.mtu, o.queueSizes, o.mtuGiven], [256, 256, 1500, [256, 256, 64], false]);
});

// ------------------------------------------------------------ device rig
//
// The rig tests run concurrently, ~25 rigs in one process, each a main loop
// with its own fd watches. They once had to run serially: a backend fd's epoll
// registration vanished, because a closed rig's stopped watch issued
// EPOLL_CTL_DEL for an fd number that another rig's socket had been given
// since. The addon's watch now polls a duplicate it owns (test/fd-watch-reuse).

type Rig = NetRig<SocketBackend>;

function rig(t: ExecutionContext, o: NetRigOptions & { sndbuf?: number } = {}): Rig {
  return netRig(t, new SocketBackend({ sndbuf: o.sndbuf }), { ...o, mac: MAC });
}

/** Puts a TX packet (header + payload) in guest RAM and adds it as a 2-segment chain. */
function addTx(r: Rig, gpa: number, payload: Uint8Array, hdrFill = 0): number {
  const hdr = new Uint8Array(r.hdr).fill(hdrFill);
  r.mem.write(gpa, hdr);
  r.mem.write(gpa + 64, payload);
  return r.tx.addChain([{ gpa, len: r.hdr }, { gpa: gpa + 64, len: payload.length }]);
}

/** Adds `n` RX chains of one writable buffer of `len` bytes each. */
function addRx(r: Rig, n: number, len: number, base = DATA + 0x200000): number[] {
  const heads = [];
  for (let i = 0; i < n; i++) heads.push(r.rx.addChain([{ gpa: base + i * 0x10000, len, write: true }]));
  return heads;
}

// --------------------------------------------------------------------- TX

test('activation applies the header size and offloads to the backend', (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4] });
  t.true(r.net.isActive);
  t.is(r.net.headerLength, 12);
  t.deepEqual(r.backend.hdrLenCalls, [12]);
  t.is(r.backend.offload, TUN_F_CSUM | TUN_F_TSO4);
  const legacy = rig(t, { features: [VIRTIO_NET_F_MAC] });
  t.is(legacy.net.headerLength, 10);
  t.is(legacy.backend.offload, 0);
});

test('TX: a kick flushes every chain, one writev each, header included; one interrupt', async (t) => {
  const r = rig(t);
  const sent: Uint8Array[] = [];
  for (let i = 0; i < 5; i++) {
    const f = ethFrame(PEER, MAC, 0x0800, 60 + i * 100, i);
    sent.push(f);
    addTx(r, DATA + i * 0x1000, f, 0);
  }
  t.true(r.tx.kick(), 'kicks are on before the first notify');
  r.vcpu.onQueueNotify(1);
  t.is(Atomics.load(r.net.config.words, NET_WORD_TX_WAITING), 1, 'tx_waiting set on the vCPU');
  t.is(r.tx.usedFlags() & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY, 'kicks suppressed before returning to the guest');
  await until(() => r.tx.usedIdx() === 5, 2000, 'used idx 5');
  const got = r.backend.receiveAll();
  t.is(got.length, 5);
  for (let i = 0; i < 5; i++) t.deepEqual(got[i], withHeader(sent[i], 12));
  t.deepEqual(r.tx.takeUsed().map((u) => u.len), [0, 0, 0, 0, 0]);
  t.is(r.irq.queue[1], 1, 'one interrupt for the flush');
  t.is(r.tx.usedFlags() & VRING_USED_F_NO_NOTIFY, 0, 'kicks re-enabled when idle');
  t.is(Atomics.load(r.net.config.words, NET_WORD_TX_WAITING), 0);
  const s = r.net.stats;
  t.is(s.txPackets, 5);
  t.is(s.txBytes, sent.reduce((a, f) => a + f.length, 0));
  t.is(s.txKicks, 1);
  t.is(s.txBhRuns, 1);
});

test('TX: kicks while tx_waiting is set coalesce into one BH run', async (t) => {
  const r = rig(t);
  await settled(r.loop); // the BH runs scheduled by activation
  const runs = r.net.stats.txBhRuns;
  addTx(r, DATA, ethFrame(PEER, MAC, 0x0800, 100));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  r.vcpu.onQueueNotify(1);
  r.vcpu.onQueueNotify(1);
  await until(() => r.tx.usedIdx() === 1);
  await settled(r.loop);
  const s = r.net.stats;
  t.is(s.txKicks, 3);
  t.is(s.txKicksCoalesced, 2);
  t.is(s.txBhRuns - runs, 1);
});

test('TX: tx_burst bounds one BH run; the BH reschedules itself without a kick', async (t) => {
  const r = rig(t, { net: { txBurst: 4 } });
  for (let i = 0; i < 10; i++) addTx(r, DATA + i * 0x1000, ethFrame(PEER, MAC, 0x0800, 64, i));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.tx.usedIdx() === 10);
  await settled(r.loop);
  const s = r.net.stats;
  t.is(s.txPackets, 10);
  t.is(s.txKicks, 1);
  t.is(s.txBhRuns, 3, '4 + 4 + 2');
  t.is(s.txBurstReschedules, 2);
  t.is(r.irq.queue[1], 3, 'one interrupt per flush');
  t.is(r.backend.receiveAll().length, 10);
});

test('TX: buffers added between the last pop and re-enabling kicks are not stranded', async (t) => {
  const r = rig(t);
  addTx(r, DATA, ethFrame(PEER, MAC, 0x0800, 64, 1));
  r.tx.kick();
  // The guest adds a packet right after the device's pop found the ring empty,
  // while kicks are still suppressed: it does not kick.
  const q = r.net.txq;
  const pop = q.pop.bind(q);
  let injected = false;
  let kicked = true;
  q.pop = (c: DescriptorChain) => {
    const ok = pop(c);
    if (!ok && !injected) {
      injected = true;
      addTx(r, DATA + 0x1000, ethFrame(PEER, MAC, 0x0800, 64, 2));
      kicked = r.tx.kick();
    }
    return ok;
  };
  r.vcpu.onQueueNotify(1);
  await until(() => r.tx.usedIdx() === 2, 2000, 'both packets');
  t.true(injected);
  t.false(kicked, 'the guest saw NO_NOTIFY and did not kick');
  t.is(r.net.stats.txRaceRechecks, 1);
  t.is(r.backend.receiveAll().length, 2);
});

test('TX: EAGAIN parks the chain, writable resumes it, order is kept', async (t) => {
  const r = rig(t, { sndbuf: 4096 });
  const N = 40;
  for (let i = 0; i < N; i++) addTx(r, DATA + i * 0x1000, ethFrame(PEER, MAC, 0x0800, 1000, i));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.net.stats.txParked > 0, 2000, 'a parked packet');
  const partial = r.tx.usedIdx();
  t.true(partial < N, `only ${partial} sent before the socket filled`);
  // The host side drains; the device resumes on writable, without another kick.
  const got: Uint8Array[] = [];
  await until(() => {
    got.push(...r.backend.receiveAll());
    return got.length === N;
  }, 5000, 'all frames');
  await until(() => r.tx.usedIdx() === N);
  for (let i = 0; i < N; i++) t.is(got[i][12 + 14], i & 0xff, `frame ${i} in order`);
  const s = r.net.stats;
  t.true(s.txResumed >= 1);
  t.is(s.txResumed, s.txParked);
  t.is(s.txPackets, N);
  t.is(s.txKicks, 1);
});

/** Parks a chain of N (the socket fills), then lets pending wake-ups pass: only the fd watch can resume TX. */
async function parkTx(t: ExecutionContext, N: number): Promise<Rig> {
  const r = rig(t, { sndbuf: 4096 });
  for (let i = 0; i < N; i++) addTx(r, DATA + i * 0x1000, ethFrame(PEER, MAC, 0x0800, 1000, i));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.net.stats.txParked > 0, 2000, 'a parked packet');
  await settled(r.loop);
  t.true(r.net['events'].pairs[0].watchingWritable, 'parked, waiting for POLLOUT');
  return r;
}

/**
 * libuv reports a poll error (as it does for POLLERR) on the backend fd: the
 * FdHandler turns both watches off and calls onError. The backend is still
 * attached, so this is not a deleted TAP. A socketpair cannot be made to poll
 * POLLERR, so the event goes in through the watch's own entry point.
 */
function pollError(r: Rig): void {
  r.net['events'].pairs[0]['fd']['event'](true, true, true);
}

async function drainAll(r: Rig, N: number): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  await until(() => {
    got.push(...r.backend.receiveAll());
    return r.tx.usedIdx() === N;
  }, 5000, 'every chain back on the used ring');
  await settled(r.loop);
  got.push(...r.backend.receiveAll());
  return got;
}

test('TX: a poll error while a chain is parked and the backend is still full drops that chain, returns it, and TX goes on', async (t) => {
  const N = 40;
  const r = await parkTx(t, N);
  const partial = r.tx.usedIdx();
  pollError(r);
  t.is(r.net.stats.backendErrors, 1);
  // Nothing drained yet: the retry meets EAGAIN again.
  await settled(r.loop);
  const s = r.net.stats;
  t.is(s.drops.txPollError, 1, 'the parked chain was dropped and counted');
  t.is(r.tx.usedIdx(), partial + 1, 'and the guest has it back');
  t.true(r.net['events'].pairs[0].watchingWritable, 'the next chain parked and armed the watch again');
  // The host side drains: TX resumes on POLLOUT, without a kick from the guest.
  const got = await drainAll(r, N);
  t.is(got.length, N - 1);
  t.is(s.txPackets, N - 1);
  const seen = got.map((f) => f[12 + 14]);
  t.deepEqual(seen, [...Array(N).keys()].filter((i) => i !== partial), 'in order, without the dropped frame');
  t.is(s.txKicks, 1);
});

test('TX: a poll error while a chain is parked and the backend has room sends the chain', async (t) => {
  const N = 40;
  const r = await parkTx(t, N);
  const got = r.backend.receiveAll(); // room again, but the POLLOUT is lost to the error
  pollError(r);
  got.push(...(await drainAll(r, N)));
  const s = r.net.stats;
  t.is(s.drops.txPollError, 0);
  t.is(got.length, N);
  t.deepEqual(got.map((f) => f[12 + 14]), [...Array(N).keys()]);
  t.true(s.txResumed >= 1);
});

test('TX: zero-length frames are dropped and returned; short headers and writable buffers break the device', async (t) => {
  const r = rig(t);
  r.mem.write(DATA, new Uint8Array(12));
  r.tx.addChain([{ gpa: DATA, len: 12 }]);
  addTx(r, DATA + 0x1000, ethFrame(PEER, MAC, 0x0800, 64));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.tx.usedIdx() === 2);
  t.is(r.net.stats.drops.txZeroLength, 1);
  t.is(r.backend.receiveAll().length, 1);
  t.is(r.irq.resets, 0);

  r.tx.addChain([{ gpa: DATA, len: 8 }]);
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.irq.resets === 1, 2000, 'NEEDS_RESET');
  t.regex(r.net.stats.deviceErrors[0], /header incorrect/);

  const r2 = rig(t);
  r2.tx.addChain([{ gpa: DATA, len: 12 }, { gpa: DATA + 0x100, len: 100 }, { gpa: DATA + 0x1000, len: 100, write: true }]);
  r2.tx.kick();
  r2.vcpu.onQueueNotify(1);
  await until(() => r2.irq.resets === 1, 2000, 'NEEDS_RESET');
  t.regex(r2.net.stats.deviceErrors[0], /device-writable/);
});

test('TX: with the link down packets are returned and counted', async (t) => {
  const r = rig(t);
  r.net.setLinkUp(false);
  t.is(r.irq.config, 1, 'config interrupt for the link change');
  t.is(r.net.config.read(6, 2) & VIRTIO_NET_S_LINK_UP, 0);
  addTx(r, DATA, ethFrame(PEER, MAC, 0x0800, 64));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.tx.usedIdx() === 1);
  t.is(r.net.stats.drops.txLinkDown, 1);
  t.is(r.backend.receiveAll().length, 0);
});

// ------------------------------------------------------------ interrupts

test('EVENT_IDX: one interrupt per flush, and only when used_event asks for it', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX] });
  const burst = async (n: number, base: number) => {
    for (let i = 0; i < n; i++) addTx(r, DATA + (base + i) * 0x1000, ethFrame(PEER, MAC, 0x0800, 64, i));
    t.true(r.tx.kick(), 'the device asked for a kick (avail_event caught up)');
    r.vcpu.onQueueNotify(1);
    await until(() => r.tx.usedIdx() === base + n);
    await settled(r.loop);
  };
  r.tx.setUsedEvent(0);
  await burst(5, 0);
  t.is(r.irq.queue[1], 1, 'first flush: used_event 0 lies in [0, 5)');
  await burst(5, 5);
  t.is(r.irq.queue[1], 1, 'used_event 0 is behind [5, 10): no interrupt');
  r.tx.setUsedEvent(12);
  await burst(5, 10);
  t.is(r.irq.queue[1], 2, 'used_event 12 lies in [10, 15)');
  t.is(r.net.stats.txPackets, 15);
});

test('VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts without EVENT_IDX', async (t) => {
  const r = rig(t);
  r.tx.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
  for (let i = 0; i < 3; i++) addTx(r, DATA + i * 0x1000, ethFrame(PEER, MAC, 0x0800, 64, i));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.tx.usedIdx() === 3);
  t.is(r.irq.queue[1], 0);
});

// --------------------------------------------------------------------- RX

test('RX without MRG_RXBUF: one chain per frame, num_buffers 1, one interrupt per batch', async (t) => {
  const r = rig(t);
  const heads = addRx(r, 4, 1530);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  const frames = [ethFrame(MAC, PEER, 0x0800, 100, 1), ethFrame(MAC, PEER, 0x0800, 1500, 2), ethFrame(BCAST, PEER, 0x0806, 28, 3)];
  for (const f of frames) t.is(r.backend.send(withHeader(f, 12)), f.length + 12);
  await until(() => r.rx.usedIdx() === 3, 2000, '3 frames');
  const used = r.rx.takeUsed();
  t.deepEqual(used.map((u) => u.id), heads.slice(0, 3));
  t.deepEqual(used.map((u) => u.len), frames.map((f) => f.length + 12));
  for (let i = 0; i < 3; i++) {
    const base = DATA + 0x200000 + i * 0x10000;
    t.is(r.mem.readU16(base + 10), 1, 'num_buffers = 1');
    t.deepEqual(r.mem.read(base + 12, frames[i].length), frames[i]);
  }
  t.is(r.irq.queue[0], 1, 'one interrupt for the batch');
  t.is(r.net.stats.rxPackets, 3);
});

test('RX with MRG_RXBUF: a frame larger than one buffer spans several; num_buffers counts them; chains a frame did not use stay with the device and are used next, in order', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF] });
  const heads = addRx(r, 8, 512);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  const big = ethFrame(MAC, PEER, 0x0800, 1200 - 14, 7); // 1200 bytes + 12 header = 1212: 512 + 512 + 188
  const small = ethFrame(MAC, PEER, 0x0800, 50, 9);
  r.backend.send(withHeader(big, 12));
  r.backend.send(withHeader(small, 12));
  await until(() => r.rx.usedIdx() === 4, 2000, '4 used buffers');
  const used = r.rx.takeUsed();
  t.deepEqual(used.map((u) => u.id), heads.slice(0, 4));
  t.deepEqual(used.map((u) => u.len), [512, 512, 188, 64 + 12]);
  const b = DATA + 0x200000;
  t.is(r.mem.readU16(b + 10), 3, 'num_buffers = 3 in the first header');
  const joined = new Uint8Array(1212);
  joined.set(r.mem.read(b, 512)!, 0);
  joined.set(r.mem.read(b + 0x10000, 512)!, 512);
  joined.set(r.mem.read(b + 0x20000, 188)!, 1024);
  t.deepEqual(joined.subarray(12), big);
  t.is(r.mem.readU16(b + 0x30000 + 10), 1, 'the small frame took one buffer');
  // Each read needs the room of a maximal frame (1526 bytes: three chains). After the small frame the device
  // holds chains 4 and 5, and the read that found nothing more popped chain 6: it keeps all three, where
  // unpopping would have left 4 available…
  t.is(r.net.rxq.availCount(), 1, 'the spare chains are kept, not unpopped');
  t.is(r.irq.queue[0], 1);
  // …and the next frames take them in the order the guest offered them, then the chains added later.
  const more = addRx(r, 2, 512, DATA + 0x300000);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  for (let i = 0; i < 5; i++) r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 50, 20 + i), 12));
  await until(() => r.rx.usedIdx() === 9, 2000, '5 more used buffers');
  t.deepEqual(r.rx.takeUsed().map((u) => u.id), [...heads.slice(4, 8), more[0]]);
  t.is(r.net.stats.rxPackets, 7);
  t.deepEqual(r.net.stats.deviceErrors, []);
});

test('TX then RX: an answer the host makes inside the writev (an echo reply) is delivered by the same TX bottom half, not after another wake-up', async (t) => {
  const r = rig(t);
  addRx(r, 4, 1530);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  const reply = ethFrame(MAC, PEER, 0x0800, 80, 3);
  // The peer answers while the device's writev is still in progress, as the host's stack does for a TAP.
  r.backend.writeHook = (iov, n) => {
    r.backend.writeHook = null;
    const sent = r.backend.writev(iov, n);
    r.backend.send(withHeader(reply, 12));
    return sent;
  };
  const readable = r.net.stats.rxReadableCallbacks;
  addTx(r, DATA, ethFrame(PEER, MAC, 0x0800, 80, 2), 0);
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await until(() => r.rx.usedIdx() === 1, 2000, 'the reply delivered');
  await settled(r.loop);
  t.deepEqual(r.mem.read(DATA + 0x200000 + 12, reply.length), reply);
  t.is(r.net.stats.rxAfterTx, 1, 'read right after the TX bottom half sent');
  t.is(r.net.stats.rxReadableCallbacks, readable, 'no readable callback was needed');
  t.is(r.backend.receiveAll().length, 1, 'the request went out');
});

test('RX: no buffers → reading stops (nothing dropped); the RX kick resumes it', async (t) => {
  const r = rig(t);
  await settled(r.loop);
  const f = ethFrame(MAC, PEER, 0x0800, 200, 4);
  r.backend.send(withHeader(f, 12));
  await until(() => r.net.stats.rxStalls === 1, 2000, 'a stall');
  await settled(r.loop);
  t.is(r.net.stats.rxPackets, 0);
  t.is(r.net.stats.drops.rxTruncated + r.net.stats.drops.rxTooBig, 0);
  t.is(r.rx.usedFlags() & VRING_USED_F_NO_NOTIFY, 0, 'kicks enabled while waiting for buffers');
  addRx(r, 1, 1530);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await until(() => r.rx.usedIdx() === 1, 2000, 'delivery after the kick');
  t.deepEqual(r.mem.read(DATA + 0x200000 + 12, f.length), f);
  t.is(r.net.stats.rxResumes, 1);
});

test('RX with MRG_RXBUF: a frame that does not fit the buffers left is held, not dropped', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF] });
  addRx(r, 1, 512);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  const stalls = r.net.stats.rxStalls;
  const big = ethFrame(MAC, PEER, 0x0800, 1000, 5);
  r.backend.send(withHeader(big, 12));
  await until(() => r.net.stats.rxStalls === stalls + 1, 2000, 'a stall');
  t.is(r.rx.usedIdx(), 0);
  addRx(r, 2, 512, DATA + 0x300000);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await until(() => r.rx.usedIdx() === 3, 2000, 'the held frame');
  t.deepEqual(r.rx.takeUsed().map((u) => u.len), [512, 512, 1026 - 1024]);
  t.is(r.mem.readU16(DATA + 0x200000 + 10), 3);
  t.deepEqual(r.mem.read(DATA + 0x200000 + 12, 500), big.subarray(0, 500));
  t.is(r.net.stats.rxPackets, 1);
});

test('RX without MRG_RXBUF: a frame larger than the buffer is dropped (QEMU), counted', async (t) => {
  const r = rig(t);
  addRx(r, 2, 256);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 400), 12));
  r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 100), 12));
  await until(() => r.rx.usedIdx() === 1, 2000, 'the small frame');
  t.is(r.net.stats.drops.rxTooBig, 1);
  t.is(r.rx.takeUsed()[0].len, 114 + 12);
});

test('RX: the burst bound splits a long backlog over several callbacks', async (t) => {
  const r = rig(t, { net: { rxBurst: 2 } });
  addRx(r, 6, 1530);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  for (let i = 0; i < 6; i++) r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 60, i), 12));
  await until(() => r.rx.usedIdx() === 6);
  t.is(r.net.stats.rxBatches, 3, '2 + 2 + 2');
  t.is(r.irq.queue[0], 3, 'one interrupt per batch');
});

// ---------------------------------------------------------- control queue

test('control queue: RX mode, MAC address and table, announce ack, unknown → ERR', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_GUEST_ANNOUNCE] });
  t.true(r.net.announce());
  t.is(r.net.config.status & VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_ANNOUNCE);
  const acks = [
    ctrlCmd(r, DATA, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, [0]),
    ctrlCmd(r, DATA + 0x1000, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
    ctrlCmd(r, DATA + 0x2000, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, [1, 0, 0, 0, 2, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0x5e, 0, 0, 1]),
    ctrlCmd(r, DATA + 0x3000, VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, []),
    ctrlCmd(r, DATA + 0x4000, VIRTIO_NET_CTRL_VLAN, 0, [1, 0]),
    ctrlCmd(r, DATA + 0x5000, 9, 9, []),
    ctrlCmd(r, DATA + 0x6000, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, [5, 0, 0, 0]),
  ];
  r.ctrl.kick();
  r.vcpu.onQueueNotify(2);
  await until(() => r.ctrl.usedIdx() === acks.length, 2000, 'all commands answered');
  t.deepEqual(acks.map((a) => r.mem.readU8(a)), [VIRTIO_NET_OK, VIRTIO_NET_OK, VIRTIO_NET_OK, VIRTIO_NET_OK, VIRTIO_NET_ERR, VIRTIO_NET_ERR, VIRTIO_NET_ERR]);
  t.deepEqual(r.ctrl.takeUsed().map((u) => u.len), Array(acks.length).fill(1));
  t.false(r.net.filter.promisc);
  t.is(formatMac(r.net.config.mac), '52:54:00:aa:bb:cc');
  t.deepEqual(r.net.filter.unicast, ['02:00:00:00:00:01']);
  t.deepEqual(r.net.filter.multicast, ['01:00:5e:00:00:01'], 'the malformed table (last command) changed nothing');
  t.is(r.net.config.status & VIRTIO_NET_S_ANNOUNCE, 0, 'ANNOUNCE cleared by the ack');
  t.is(r.irq.queue[2], 1, 'one interrupt for the batch');
  t.is(r.net.stats.ctrlErrors, 3);
});

test('RX filter: with promisc off only own, listed and broadcast frames get through', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX] });
  ctrlCmd(r, DATA, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, [0]);
  r.ctrl.kick();
  r.vcpu.onQueueNotify(2);
  await until(() => r.ctrl.usedIdx() === 1);
  addRx(r, 4, 1530);
  r.rx.kick();
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  r.backend.send(withHeader(ethFrame([2, 0, 0, 0, 0, 1], PEER, 0x0800, 60), 12));
  r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 60), 12));
  r.backend.send(withHeader(ethFrame(BCAST, PEER, 0x0806, 28), 12));
  r.backend.send(withHeader(ethFrame([0x33, 0x33, 0, 0, 0, 1], PEER, 0x86dd, 60), 12));
  await until(() => r.net.stats.rxPackets + r.net.stats.drops.rxFiltered === 4);
  t.is(r.net.stats.rxPackets, 2);
  t.is(r.net.stats.drops.rxFiltered, 2);
  t.is(r.rx.usedIdx(), 2);
});

// -------------------------------------------------------------- lifecycle

test('reset drops the queues; DRIVER_OK activates them again; kicks before DRIVER_OK are not lost', async (t) => {
  const r = rig(t, { activate: false });
  addTx(r, DATA, ethFrame(PEER, MAC, 0x0800, 64));
  r.tx.kick();
  r.vcpu.onQueueNotify(1);
  await settled(r.loop);
  t.is(r.tx.usedIdx(), 0, 'nothing before DRIVER_OK');
  const old = r.ts.status;
  r.ts.status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
  r.vcpu.onStatusChange(old, r.ts.status);
  await until(() => r.tx.usedIdx() === 1, 2000, 'the early packet');
  t.true(r.net.isActive);
  // A reset from the vCPU side: shared state cleared, generation bumped, control doorbell rung.
  r.vcpu.onReset();
  r.ts.resetDeviceState();
  r.ts.bumpResetGeneration();
  r.vcpu.onStatusChange(0, 0);
  new DoorbellRinger(r.net.doorbells.control.fd).ring();
  await until(() => !r.net.isActive, 2000, 'deactivation');
  await until(() => r.ts.resetAck === r.ts.resetGeneration, 2000, 'reset acknowledged');
  t.false(r.net.txq.ready);
});

test('control queue with EVENT_IDX: the device re-arms avail_event, so the second command is kicked too', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX] });
  for (let k = 0; k < 3; k++) {
    const ack = ctrlCmd(r, DATA + k * 0x1000, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, [k & 1]);
    t.true(r.ctrl.kick(), `command ${k}: the device asked for a kick`);
    r.vcpu.onQueueNotify(2);
    await until(() => r.ctrl.usedIdx() === k + 1, 2000, `command ${k}`);
    t.is(r.mem.readU8(ack), VIRTIO_NET_OK);
  }
});

test('RX with EVENT_IDX: after a stall the next refill by the guest kicks the device', async (t) => {
  const r = rig(t, { features: [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_NET_F_MRG_RXBUF] });
  addRx(r, 1, 1530);
  t.true(r.rx.kick());
  r.vcpu.onQueueNotify(0);
  await settled(r.loop);
  r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 100, 1), 12));
  r.backend.send(withHeader(ethFrame(MAC, PEER, 0x0800, 100, 2), 12));
  await until(() => r.rx.usedIdx() === 1 && r.net.stats.rxStalls >= 1, 2000, 'first frame, then a stall');
  addRx(r, 1, 1530, DATA + 0x400000);
  t.true(r.rx.kick(), 'avail_event was re-armed at the stall');
  r.vcpu.onQueueNotify(0);
  await until(() => r.rx.usedIdx() === 2, 2000, 'second frame');
});

test('validateFeatures: every dependency pair of virtio 1.2 §5.1.3.1, alone refused and with each alternative accepted', (t) => {
  const needs = new Map(FEATURE_DEPENDENCIES);
  // A bit plus what it needs, taking the first alternative all the way down.
  const closure = (bit: number): number[] => [bit, ...(needs.get(bit) ? closure(needs.get(bit)![0]) : [])];
  let pairs = 0;
  for (const [f, alternatives] of FEATURE_DEPENDENCIES) {
    t.is(validateFeatures(featureSet(f)), `${FEATURE_NAMES[f]} needs ${alternatives.map((n) => FEATURE_NAMES[n]).join(' or ')}`);
    for (const n of alternatives) {
      t.is(validateFeatures(featureSet(f, ...closure(n))), null, `${FEATURE_NAMES[f]} with ${FEATURE_NAMES[n]}`);
      pairs++;
    }
  }
  t.is(pairs, 17);
});
