// virtio-net, vCPU-thread side: what the virtio-pci transport calls on guest
// register accesses (VirtioDeviceVcpuSide). Config reads and writes are
// answered from the shared VirtioNetConfig; queue notifications are turned
// into doorbell rings for the main thread, where the data path runs
// (virtio-net.ts). Nothing here allocates: this is the exit path.
//
// TX notify = QEMU virtio_net_handle_tx_bh: if tx_waiting is set a TX
// bottom-half run is already due, so return; else set it, suppress further
// kicks (without EVENT_IDX: VRING_USED_F_NO_NOTIFY in used->flags; with
// EVENT_IDX the stale avail_event already suppresses them) and ring the TX
// doorbell, then return to the guest at once. With several queue pairs each
// transmitq has its own tx_waiting word and doorbell (QEMU's per-queue tx_bh).
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { TransportState } from '../virtio/transport-state.js';
import { VIRTIO_CONFIG_S_DRIVER_OK, type VirtioDeviceVcpuSide } from '../virtio/virtio-device.js';
import { UsedRingFlags, VIRTIO_RING_F_EVENT_IDX } from '../virtio/virtqueue.js';
import { validateFeatures, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MQ } from './virtio-net-features.js';
import { FeatureSet, NO_FEATURES, type FeatureWords } from '../virtio/feature-set.js';
import {
  NET_CTR_CTRL_KICKS,
  NET_CTR_RX_KICKS,
  NET_CTR_TX_KICKS,
  NET_CTR_TX_KICKS_COALESCED,
  NET_WORD_TX_WAITING,
  QUEUE_CTRL,
  QUEUE_RX,
  QUEUE_TX,
  VIRTIO_ID_NET,
  VIRTIO_NET_CONFIG_SIZE,
  VirtioNetConfig,
  queueRole,
  txQueueIndex,
} from './virtio-net-config.js';

/** Something that wakes the main thread (DoorbellRinger). */
export interface Ringer {
  ring(): void;
}

/** What the vCPU side is built from; all of it crosses the thread boundary as plain data. */
export interface VirtioNetVcpuData {
  /** VirtioNetConfig.buffer. */
  shared: SharedArrayBuffer;
  /** Max sizes of every queue index, [rx, tx, …, rx, tx, ctrl] (netQueueSizes): 2N + 1 for N pairs. */
  queueSizes: number[];
  /**
   * Offered features without VERSION_1 (the transport adds it on the modern
   * interface). Plain words because this crosses to the vCPU worker by
   * postMessage; a BigInt is still taken from setup code not yet moved.
   */
  deviceFeatures: FeatureWords | bigint;
  /** Doorbell eventfds of the main-thread side (VirtioNet.doorbells): one per queue index, and control. */
  doorbellFds: { queues: number[]; control: number };
}

/** The doorbells the vCPU side rings, as `doorbellFds`. */
export interface VirtioNetRingers {
  queues: Ringer[];
  control: Ringer;
}

export class VirtioNetVcpu implements VirtioDeviceVcpuSide {
  readonly name = 'virtio-net';
  readonly deviceId = VIRTIO_ID_NET;
  readonly numQueues: number;
  /** Queue pairs (max_virtqueue_pairs). */
  readonly pairs: number;
  readonly configSize = VIRTIO_NET_CONFIG_SIZE;
  readonly deviceFeatures: FeatureSet;
  readonly config: VirtioNetConfig;
  /** Feature sets refused at FEATURES_OK, for diagnostics. */
  refusedFeatures = 0;
  lastRefusal = '';
  private readonly words: Int32Array;
  private readonly counters: Float64Array;
  private readonly queueSizes: number[];
  private state: TransportState | null = null;
  /** Each transmitq's used-ring flags word, rebound when that queue's generation moves (never per exit). */
  private readonly txUsedFlags: UsedRingFlags[];
  private readonly txUsedGeneration: number[];
  /** The driver's features read for a config write: reused, so the exit allocates nothing. */
  private readonly driverScratch = new FeatureSet();

  constructor(
    private readonly memory: GuestMemory,
    data: VirtioNetVcpuData,
    private readonly rings: VirtioNetRingers,
  ) {
    this.config = new VirtioNetConfig(data.shared);
    this.words = this.config.words;
    this.counters = this.config.counters;
    this.queueSizes = data.queueSizes;
    this.numQueues = data.queueSizes.length;
    this.pairs = (this.numQueues - 1) >> 1;
    this.txUsedFlags = Array.from({ length: this.pairs }, () => new UsedRingFlags());
    this.txUsedGeneration = new Array<number>(this.pairs).fill(-1);
    this.deviceFeatures = FeatureSet.from(data.deviceFeatures).without(FeatureSet.of(VIRTIO_F_VERSION_1));
  }

  /** The transport's shared state (needed for the TX queue's used ring and the negotiated features). */
  attach(state: TransportState): void {
    this.state = state;
  }

  queueMaxSize(index: number): number {
    return this.queueSizes[index] ?? 0;
  }

  readConfig(offset: number, size: number): number {
    return this.config.read(offset, size);
  }

  writeConfig(offset: number, size: number, value: number): void {
    const s = this.state;
    this.config.write(offset, size, value, s === null ? NO_FEATURES : s.readDriverFeatures(this.driverScratch));
  }

  validateFeatures(driverFeatures: FeatureSet): boolean {
    const why = validateFeatures(driverFeatures);
    if (why === null) return true;
    this.refusedFeatures++;
    this.lastRefusal = why;
    return false;
  }

  onQueueNotify(index: number): void {
    // Which queue an index is depends on whether the driver took MQ (virtio-net-config.ts).
    const s = this.state;
    const mq = this.pairs > 1 && s !== null && s.hasDriverFeature(VIRTIO_NET_F_MQ);
    switch (queueRole(index, this.pairs, mq)) {
      case QUEUE_TX:
        this.handleTx(index >> 1);
        break;
      case QUEUE_RX:
        // The guest added RX buffers: the main thread resumes reading if it had stopped.
        this.counters[NET_CTR_RX_KICKS]++;
        this.rings.queues[index].ring();
        break;
      case QUEUE_CTRL:
        this.counters[NET_CTR_CTRL_KICKS]++;
        this.rings.queues[index].ring();
        break;
    }
  }

  /** QEMU virtio_net_handle_tx_bh, on the vCPU, for pair `pair`'s transmitq. */
  private handleTx(pair: number): void {
    this.counters[NET_CTR_TX_KICKS]++;
    if (Atomics.compareExchange(this.words, NET_WORD_TX_WAITING + pair, 0, 1) !== 0) {
      this.counters[NET_CTR_TX_KICKS_COALESCED]++;
      return;
    }
    const s = this.state;
    const index = txQueueIndex(pair);
    if (s !== null && s.queueEnabled(index) && !s.hasDriverFeature(VIRTIO_RING_F_EVENT_IDX)) {
      // used->flags = NO_NOTIFY. The main thread's Virtqueue writes the same word through
      // the same UsedRingFlags; the tx_waiting hand-off orders us: its BH clears
      // tx_waiting before it flushes and always ends by re-enabling kicks (or rescheduling
      // itself), so a NO_NOTIFY written here is always followed by a BH run that clears it.
      const gen = s.queueGeneration(index);
      const flags = this.txUsedFlags[pair];
      if (gen !== this.txUsedGeneration[pair]) {
        this.txUsedGeneration[pair] = gen;
        flags.bind(this.memory, s.queueUsed(index));
      }
      flags.suppressKicks(true);
    }
    this.rings.queues[index].ring();
  }

  onStatusChange(oldStatus: number, newStatus: number): void {
    // DRIVER_OK (or anything after it, e.g. FAILED): the main thread activates or stops the queues.
    if ((oldStatus ^ newStatus) & VIRTIO_CONFIG_S_DRIVER_OK || newStatus & VIRTIO_CONFIG_S_DRIVER_OK) this.rings.control.ring();
  }

  /** Enabling a queue after DRIVER_OK (rare; some drivers re-enable queues) needs the main thread to look again. */
  onQueueEnabled(_index: number, _enabled: boolean): void {
    const s = this.state;
    if (s !== null && s.status & VIRTIO_CONFIG_S_DRIVER_OK) this.rings.control.ring();
  }

  onReset(): void {
    // The transport rings the control doorbell (its ringReset) and waits for the main thread.
    for (let p = 0; p < this.pairs; p++) Atomics.store(this.words, NET_WORD_TX_WAITING + p, 0);
  }
}
