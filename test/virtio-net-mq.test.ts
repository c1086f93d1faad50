// Multiqueue virtio-net (VIRTIO_NET_F_MQ) over fake guest memory: the queue
// layout, the control queue's VQ_PAIRS_SET, and which backend queue each
// pair's frames take. The backend is a socketpair per queue, as a
// multi-queue TAP has an fd per queue.
import test from 'ava';
import {
  QUEUE_CTRL, QUEUE_NONE, QUEUE_RX, QUEUE_TX, VirtioNetConfig, ctrlQueueIndex, netQueueSizes, queueRole,
} from '../src/devices/net/virtio-net-config.js';
import { VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK } from '../src/devices/net/virtio-net.js';
import {
  offeredFeatureSet, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_STATUS,
} from '../src/devices/net/virtio-net-features.js';
import { checkQueuePairs, defaultQueuePairs } from '../src/devices/net/virtio-net-options.js';
import { TsvisorError } from '../src/errors.js';
import { ctrlCmd, netRig, type NetRig } from './helpers/net-rig.js';
import { SocketBackend, ethFrame, settled, until, withHeader } from './helpers/net-fakes.js';

const MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER = [0x02, 0, 0, 0, 0, 0x99];
const DATA = 0x100000;
const MQ_FEATURES = [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_MQ];

type Rig = NetRig<SocketBackend>;

test('queue layout: rx/tx pairs then the control queue at 2N with MQ; without MQ the control queue is 2 and the rest carry nothing', (t) => {
  t.deepEqual([0, 1, 2, 3, 4, 5].map((i) => queueRole(i, 2, true)), [QUEUE_RX, QUEUE_TX, QUEUE_RX, QUEUE_TX, QUEUE_CTRL, QUEUE_NONE]);
  t.deepEqual([0, 1, 2, 3, 4].map((i) => queueRole(i, 2, false)), [QUEUE_RX, QUEUE_TX, QUEUE_CTRL, QUEUE_NONE, QUEUE_NONE]);
  t.deepEqual([0, 1, 2, 3].map((i) => queueRole(i, 1, true)), [QUEUE_RX, QUEUE_TX, QUEUE_CTRL, QUEUE_NONE], 'one pair: the same either way');
  t.is(queueRole(-1, 2, true), QUEUE_NONE);
  t.is(ctrlQueueIndex(4, true), 8);
  t.deepEqual(netQueueSizes({ rxQueueSize: 512 }, 2), [512, 256, 512, 256, 64]);
  t.is(VirtioNetConfig.create(Uint8Array.from(MAC), 1500, 3).maxQueuePairs, 3, 'max_virtqueue_pairs in the config space');
  t.false(offeredFeatureSet({ backendOffloads: 0 }).has(VIRTIO_NET_F_MQ), 'one pair: MQ not offered (as QEMU)');
  t.true(offeredFeatureSet({ backendOffloads: 0, queuePairs: 2 }).has(VIRTIO_NET_F_MQ));
  t.deepEqual([1, 2, 8, 64].map(defaultQueuePairs), [1, 2, 8, 8], 'one pair per vCPU by default, at most 8');
  for (const bad of [0, 17, 1.5, NaN]) t.throws(() => checkQueuePairs(bad), { instanceOf: TsvisorError, message: /queues=/ });
});

/** Runs the commands through the control queue as the driver does (add, kick, notify), and returns their acks. */
async function ctrl(r: Rig, ctrlIndex: number, cmds: Array<[number, number, number[]]>): Promise<number[]> {
  const before = r.ctrl.usedIdx();
  const acks = cmds.map(([cls, cmd, data], k) => ctrlCmd(r, DATA + 0x80000 + k * 0x1000, cls, cmd, data));
  r.ctrl.kick();
  r.vcpu.onQueueNotify(ctrlIndex);
  await until(() => r.ctrl.usedIdx() === before + cmds.length, 2000, 'the commands answered');
  r.ctrl.takeUsed();
  return acks.map((a) => r.mem.readU8(a));
}

/** A TX frame on queue `index` (header + payload), added and notified. */
function sendTx(r: Rig, index: number, gpa: number, seed: number): void {
  const q = r.queues[index];
  r.mem.write(gpa, new Uint8Array(r.hdr));
  r.mem.write(gpa + 64, ethFrame(PEER, MAC, 0x0800, 100, seed));
  q.addChain([{ gpa, len: r.hdr }, { gpa: gpa + 64, len: 114 }]);
  q.kick();
  r.vcpu.onQueueNotify(index);
}

const pairs = (b: SocketBackend) => [b.queue(0).enabled, b.queue(1).enabled];

test('MQ: one pair carries frames until the driver sets more; VQ_PAIRS_SET 2 enables pair 1, whose TX leaves by backend queue 1 and whose RX fills receiveq 1 with its own interrupt', async (t) => {
  const r = netRig(t, SocketBackend.multiQueue(2), { features: MQ_FEATURES, mac: MAC });
  const b = r.backend;
  t.is(r.net.pairs, 2);
  t.deepEqual(pairs(b), [true, false], 'backend queue 1 detached until the driver enables pair 1');
  t.is(r.net.queuePairsEnabled, 1);

  // A pair the driver has not enabled carries nothing.
  sendTx(r, 3, DATA, 1);
  await settled(r.loop);
  t.deepEqual(b.queue(1).receiveAll(), [], 'pair 1 sent nothing while off');
  t.is(r.queues[3].usedIdx(), 0);

  // Out of range, then 2 (the control queue is 4 = 2N with MQ).
  t.deepEqual(await ctrl(r, 4, [[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [3, 0]], [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [0, 0]], [VIRTIO_NET_CTRL_MQ, 1, [2, 0]]]),
    [VIRTIO_NET_ERR, VIRTIO_NET_ERR, VIRTIO_NET_ERR], 'more pairs than the device has, zero, and RSS (not offered) are refused');
  t.is(r.net.queuePairsEnabled, 1);
  t.deepEqual(await ctrl(r, 4, [[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [2, 0]]]), [VIRTIO_NET_OK]);
  t.is(r.net.queuePairsEnabled, 2);
  t.deepEqual(pairs(b), [true, true], 'attached before the ack');
  t.true(r.irq.queue[4] >= 1, 'the control queue interrupts as queue 4');

  // The frame queued while pair 1 was off goes now, by backend queue 1; pair 0's by queue 0.
  await until(() => r.queues[3].usedIdx() === 1, 2000, 'pair 1 TX completed');
  sendTx(r, 1, DATA + 0x1000, 2);
  await until(() => r.queues[1].usedIdx() === 1, 2000, 'pair 0 TX completed');
  const q1 = b.queue(1).receiveAll();
  const q0 = b.queue(0).receiveAll();
  t.is(q1.length, 1);
  t.is(q0.length, 1);
  t.is(q1[0][r.hdr + 14], ethFrame(PEER, MAC, 0x0800, 100, 1)[14], 'pair 1 sent its own frame');

  // RX: a frame arriving on backend queue 1 lands in receiveq 1 (queue 2), with queue 2's interrupt.
  r.queues[2].addChain([{ gpa: DATA + 0x200000, len: 2048, write: true }]);
  r.queues[2].kick();
  r.vcpu.onQueueNotify(2);
  await settled(r.loop);
  b.queue(1).send(withHeader(ethFrame(MAC, PEER, 0x0800, 60, 7), r.hdr));
  await until(() => r.queues[2].usedIdx() === 1, 2000, 'receiveq 1 filled');
  t.is(r.queues[0].usedIdx(), 0, 'receiveq 0 got nothing');
  t.is(r.irq.queue[2], 1);
  t.deepEqual(r.net.snapshot().pairPackets, [{ tx: 1, rx: 0 }, { tx: 1, rx: 1 }]);

  // Back to one pair: queue 1 detached again.
  t.deepEqual(await ctrl(r, 4, [[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [1, 0]]]), [VIRTIO_NET_OK]);
  t.deepEqual(pairs(b), [true, false]);
  t.deepEqual(r.net.stats.deviceErrors, []);
});

test('MQ: a device reset goes back to one pair, with backend queue 1 detached', async (t) => {
  const r = netRig(t, SocketBackend.multiQueue(2), { features: MQ_FEATURES, mac: MAC });
  t.deepEqual(await ctrl(r, 4, [[VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [2, 0]]]), [VIRTIO_NET_OK]);
  t.deepEqual(pairs(r.backend), [true, true]);
  r.ts.status = 0;
  r.net.controlRun();
  t.false(r.net.isActive);
  t.is(r.net.queuePairsEnabled, 1);
  t.deepEqual(pairs(r.backend), [true, false]);
});

test('without MQ negotiated, a two-pair device is a one-pair device: queue 2 is the control queue, queue 3 carries nothing, MQ commands get ERR', async (t) => {
  const r = netRig(t, SocketBackend.multiQueue(2), { features: [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX], mac: MAC });
  t.is(r.ctrl, r.queues[2]);
  t.deepEqual(await ctrl(r, 2, [[VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, [0]], [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [2, 0]]]), [VIRTIO_NET_OK, VIRTIO_NET_ERR]);
  t.false(r.net.filter.promisc, 'queue 2 took the command as the control queue');
  t.is(r.irq.queue[2], 1);
  sendTx(r, 3, DATA, 1);
  sendTx(r, 1, DATA + 0x1000, 2);
  await until(() => r.queues[1].usedIdx() === 1, 2000, 'pair 0 TX completed');
  await settled(r.loop);
  t.is(r.queues[3].usedIdx(), 0, 'queue 3 is no queue without MQ');
  t.is(r.backend.queue(0).receiveAll().length, 1);
  t.deepEqual(r.backend.queue(1).receiveAll(), []);
  t.deepEqual(pairs(r.backend), [true, false]);
});
