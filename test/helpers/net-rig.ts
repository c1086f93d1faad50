// One virtio-net device over fake guest memory, as the tests drive it: the
// transport state with three rings a VringDriver plays the guest side of,
// the main-thread device (VirtioNet) on a backend, and its vCPU side
// (VirtioNetVcpu) ringing the device's doorbells. Torn down with the test.
import type { ExecutionContext } from 'ava';
import { MainLoop, DoorbellRinger } from '../../src/loop/main-loop.js';
import { createTransportState, TransportState, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK } from '../../src/devices/virtio/transport-state.js';
import { VirtioNet, type VirtioNetOptions } from '../../src/devices/net/virtio-net.js';
import { VirtioNetVcpu } from '../../src/devices/net/virtio-net-vcpu.js';
import { VirtioNetConfig, ctrlQueueIndex, netQueueCount, netQueueSizes } from '../../src/devices/net/virtio-net-config.js';
import { featureSet, hasFeature, vnetHeaderSize, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_STATUS, VIRTIO_RING_F_EVENT_IDX } from '../../src/devices/net/virtio-net-features.js';
import type { NetBackend } from '../../src/net/tap.js';
import { VringDriver } from './vring-driver.js';
import { CountingIrq, nativeGuestMemory } from './net-fakes.js';

export interface NetRig<B extends NetBackend> {
  loop: MainLoop;
  net: VirtioNet;
  vcpu: VirtioNetVcpu;
  backend: B;
  irq: CountingIrq;
  ts: TransportState;
  /** Pair 0's receiveq and transmitq, and the control queue (queue 2N with MQ negotiated, else 2). */
  rx: VringDriver;
  tx: VringDriver;
  ctrl: VringDriver;
  /** Every queue index's ring (one per index, 2N + 1). */
  queues: VringDriver[];
  /** The virtio-net header size the features give. */
  hdr: number;
  mem: ReturnType<typeof nativeGuestMemory>['mem'];
}

export interface NetRigOptions {
  /** Negotiated features (default VERSION_1, MAC, STATUS). */
  features?: number[];
  net?: VirtioNetOptions;
  mac?: number[];
  /** Set DRIVER_OK and start the data path at once (default true). */
  activate?: boolean;
  /** Close the backend in teardown (default true). */
  closeBackend?: boolean;
}

export function netRig<B extends NetBackend>(t: ExecutionContext, backend: B, o: NetRigOptions = {}): NetRig<B> {
  const { mem, free } = nativeGuestMemory(8 << 20);
  const features = featureSet(...(o.features ?? [VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS]));
  // As many pairs as the backend has queues; with MQ negotiated the control queue moves to 2N.
  const pairs = 1 + (backend.moreQueues?.length ?? 0);
  const sizes = netQueueSizes(o.net ?? {}, pairs);
  const ts = new TransportState(createTransportState({ numQueues: netQueueCount(pairs), queueMaxSizes: sizes, msixVectors: 0, deviceFeatures: BigInt(features), intxGsi: -1 }));
  const ctrlAt = ctrlQueueIndex(pairs, pairs > 1 && hasFeature(features, VIRTIO_NET_F_MQ));
  const queues = sizes.map((size, i) => new VringDriver(mem, i === ctrlAt ? 64 : size, 0x10000 * (i + 1)));
  const [rx, tx] = queues;
  const ctrl = queues[ctrlAt];
  const eventIdx = hasFeature(features, VIRTIO_RING_F_EVENT_IDX);
  queues.forEach((d, i) => {
    d.eventIdxMode = eventIdx;
    ts.setQueueSize(i, d.size);
    ts.setQueueAddrs(i, d.desc, d.avail, d.used);
    ts.setQueueEnabled(i, true);
  });
  ts.setDriverFeaturesWord(0, features % 2 ** 32);
  ts.setDriverFeaturesWord(1, Math.floor(features / 2 ** 32));
  const loop = new MainLoop();
  const irq = new CountingIrq();
  const cfg = VirtioNetConfig.create(Uint8Array.from(o.mac ?? [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]), 1500, pairs);
  const net = new VirtioNet(loop, mem, backend, ts, cfg, irq, o.net);
  const d = net.doorbells;
  const queueFds = d.queues.map((b) => b.fd);
  const vcpu = new VirtioNetVcpu(mem, { shared: cfg.buffer, queueSizes: sizes, deviceFeatures: BigInt(features), doorbellFds: { queues: queueFds, control: d.control.fd } }, {
    queues: queueFds.map((fd) => new DoorbellRinger(fd)), control: new DoorbellRinger(d.control.fd),
  });
  vcpu.attach(ts);
  t.teardown(() => {
    net.close();
    loop.close();
    if (o.closeBackend ?? true) backend.close();
    free();
  });
  if (o.activate ?? true) {
    ts.status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
    net.controlRun();
  }
  return { loop, net, vcpu, backend, irq, ts, rx, tx, ctrl, queues, hdr: vnetHeaderSize(features), mem };
}

/** Writes a control command (class, command, data) at `at` as a chain on the rig's control queue; returns where its ack lands. */
export function ctrlCmd<B extends NetBackend>(r: NetRig<B>, at: number, cls: number, cmd: number, data: number[]): number {
  r.mem.write(at, Uint8Array.from([cls, cmd, ...data]));
  r.mem.writeU8(at + 0x800, 0xee);
  r.ctrl.addChain([{ gpa: at, len: 2 }, ...(data.length ? [{ gpa: at + 2, len: data.length }] : []), { gpa: at + 0x800, len: 1, write: true }]);
  return at + 0x800;
}
