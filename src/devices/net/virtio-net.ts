// virtio-net on the main thread: the device's lifecycle (QEMU
// hw/net/virtio-net.c, Firecracker net/device.rs). It owns the Virtqueues
// (built from the shared transport state when the driver sets DRIVER_OK), the
// negotiated state, the RX filter, the counters and the link state, and
// hands events to the paths that do the work:
//
// With several queue pairs (VIRTIO_NET_F_MQ) each pair has its own NetTx,
// NetRx and backend queue (a multi-queue TAP's fd), as QEMU's VirtIONetQueue:
// pair p's TX bottom half writes to fd p, and fd p's readable handler fills
// receiveq p. Pairs the driver has not enabled (VIRTIO_NET_CTRL_MQ) carry
// nothing: their fds are detached from the TAP, so tun steers no frame there.
//
//   virtio-net-tx.ts    TX: flush, park on EAGAIN, resume
//   virtio-net-rx.ts    RX: fill, hold in the bounce buffer, mergeable buffers
//   virtio-net-ctrl.ts  the control queue and its commands (rx-filter.ts)
//   virtio-net-events.ts  bottom halves, doorbells, the backend fd watch
//   virtio-net-vcpu.ts  the vCPU thread's side (register exits, handle_tx)
//
// Guest errors never throw: they are counted, and a malformed ring or chain
// stops the device (`deviceError`: NEEDS_RESET on a modern device; a legacy
// device just stops), as QEMU's virtio_error.
//
// A backend that goes away for good (the TAP deleted under its open fd: tun
// then fails every read and write with EBADFD and polls with POLLERR) is not
// the guest's fault and does not end the run, as in QEMU: the fd is no longer
// watched, the link is reported down (a config interrupt with STATUS), and TX
// frames are completed as link-down drops.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Doorbell, MainLoop } from '../../loop/main-loop.js';
import { Virtqueue, VIRTIO_RING_F_EVENT_IDX } from '../virtio/virtqueue.js';
import type { TransportState } from '../virtio/transport-state.js';
import { MainResetHandshake } from '../virtio/reset-handshake.js';
import { VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET } from '../virtio/virtio-device.js';
import { strerror } from '../../sys/libc.js';
import type { NetBackend } from '../../net/tap.js';
import { GuestErrorLog } from '../virtio/guest-error-log.js';
import { guestTakesGso, tunOffloadsFor, vnetHeaderSize, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_LEN } from './virtio-net-features.js';
import { FeatureSet } from '../virtio/feature-set.js';
import {
  QUEUE_CTRL, QUEUE_RX, QUEUE_TX, VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP,
  ctrlQueueIndex, formatMac, netQueueCount, queueRole, rxQueueIndex, txQueueIndex, type VirtioNetConfig,
} from './virtio-net-config.js';
import { defaultRxFilter, type RxFilter } from './rx-filter.js';
import { ControlQueue, CTRL_MORE } from './virtio-net-ctrl.js';
import { DEVICE_ERRORS_KEPT, emptyStats, readKickCounters, type VirtioNetStats } from './virtio-net-stats.js';
import { NetTx } from './virtio-net-tx.js';
import { NetRx, RX_MAX_GSO_FRAME } from './virtio-net-rx.js';
import { VirtioNetEvents, type VirtioNetEventTarget } from './virtio-net-events.js';
import type { NetInterrupts, NetNegotiated, NetPathContext } from './virtio-net-context.js';
import { resolveNetOptions, type ResolvedNetOptions, type VirtioNetOptions } from './virtio-net-options.js';

export * from './virtio-net-ctrl.js';
export { RX_MAX_GSO_FRAME } from './virtio-net-rx.js';
export type { RxFilter } from './rx-filter.js';
export type { VirtioNetStats } from './virtio-net-stats.js';
export type { NetInterrupts } from './virtio-net-context.js';
export { resolveNetOptions, type ResolvedNetOptions, type VirtioNetOptions } from './virtio-net-options.js';

/** Ethernet header plus one VLAN tag. */
const ETH_OVERHEAD = 14 + 4;

export class VirtioNet implements NetPathContext, VirtioNetEventTarget {
  /** Queue pairs the device has (max_virtqueue_pairs): one per backend queue. */
  readonly pairs: number;
  /** receiveq and transmitq of each pair. */
  readonly rxqs: Virtqueue[];
  readonly txqs: Virtqueue[];
  readonly ctrlq: Virtqueue;
  /** Eventfds the vCPU side (or a KVM ioeventfd) rings, one per queue index, plus `control` for status/reset. */
  readonly doorbells: { queues: Doorbell[]; control: Doorbell };
  readonly txBurst: number;
  readonly rxBurst: number;
  readonly filter: RxFilter = defaultRxFilter();
  /** Guest errors, one rate-limited line each (stderr by default). */
  guestLog = new GuestErrorLog('virtio-net');
  /** Called once when the backend goes away for good, with a one-line description. */
  onBackendLost: ((message: string) => void) | null = null;

  /** @internal The counters the paths increment (read them through `stats`). */
  readonly counters: VirtioNetStats = emptyStats();
  /** @internal Fixed at DRIVER_OK. */
  readonly negotiated: NetNegotiated & { readonly features: FeatureSet };

  private readonly events: VirtioNetEvents;
  private readonly tx: NetTx[];
  private readonly rx: NetRx[];
  /** The backend queue of each pair (the first is `backend`). */
  private readonly backends: readonly NetBackend[];
  /** VIRTIO_NET_F_MQ negotiated (fixed at DRIVER_OK): the control queue is 2N, not 2. */
  private mq = false;
  /** Pairs that carry frames (QEMU curr_queue_pairs): 1 until the driver sets more. */
  private activePairs = 1;
  private readonly ctrl: ControlQueue;
  private readonly resetHandshake: MainResetHandshake;
  private readonly initialMac: Uint8Array;
  private readonly mtu: number;
  private isActive_ = false;
  private broken = false;
  private readonly queueGen: Float64Array;

  constructor(
    loop: MainLoop,
    readonly memory: GuestMemory,
    readonly backend: NetBackend,
    readonly transport: TransportState,
    readonly config: VirtioNetConfig,
    readonly irq: NetInterrupts,
    opts: ResolvedNetOptions | VirtioNetOptions = {},
  ) {
    const o = 'queueSizes' in opts ? opts : resolveNetOptions(opts);
    this.txBurst = o.txBurst;
    this.rxBurst = o.rxBurst;
    this.mtu = o.mtu;
    this.initialMac = config.mac;
    const n = { hdrLen: VIRTIO_NET_HDR_LEN, mergeable: false, rxMaxFrame: RX_MAX_GSO_FRAME, features: new FeatureSet(), has: (bit: number) => n.features.has(bit) };
    this.negotiated = n;
    this.backends = [backend, ...(backend.moreQueues ?? [])];
    const pairs = this.backends.length;
    this.pairs = pairs;
    this.queueGen = new Float64Array(netQueueCount(pairs)).fill(-1);
    this.rxqs = Array.from({ length: pairs }, (_, p) => new Virtqueue(memory, transport.queueMaxSize(rxQueueIndex(p))));
    this.txqs = Array.from({ length: pairs }, (_, p) => new Virtqueue(memory, transport.queueMaxSize(txQueueIndex(p))));
    // The control queue is queue 2N with MQ and queue 2 without: either index's size may be chosen.
    this.ctrlq = new Virtqueue(memory, Math.max(transport.queueMaxSize(ctrlQueueIndex(pairs, true)), transport.queueMaxSize(ctrlQueueIndex(pairs, false))));
    this.events = new VirtioNetEvents(loop, this.backends.map((b) => b.fd), this);
    this.doorbells = this.events.doorbells;
    this.tx = this.txqs.map((q, p) => new NetTx(q, memory, this, this.events.pairs[p], config.words, this.txBurst, p, this.backends[p]));
    this.rx = this.rxqs.map((q, p) => new NetRx(q, memory, this, this.events.pairs[p], this.filter, this.rxBurst, p, this.backends[p]));
    const target = { filter: this.filter, config, has: n.has, setQueuePairs: (k: number) => this.setActivePairs(k) };
    this.ctrl = new ControlQueue(this.ctrlq, memory, this, target, undefined, () => this.ctrlIndex);
    // Until the driver enables more, only the first pair's backend queue takes frames.
    this.enableBackendQueues(1);
    this.resetHandshake = new MainResetHandshake(transport);
    this.resetHandshake.attach();
  }

  /** receiveq and transmitq of the first pair. */
  get rxq(): Virtqueue {
    return this.rxqs[0];
  }

  get txq(): Virtqueue {
    return this.txqs[0];
  }

  /** The control queue's index now. */
  private get ctrlIndex(): number {
    return ctrlQueueIndex(this.pairs, this.mq);
  }

  /** Pairs that carry frames now. */
  get queuePairsEnabled(): number {
    return this.activePairs;
  }

  /** The filter after a reset (promiscuous). */
  static defaultFilter(): RxFilter {
    return defaultRxFilter();
  }

  get active(): boolean {
    return this.isActive_;
  }

  get running(): boolean {
    return this.isActive_ && !this.broken;
  }

  get backendGone(): string | null {
    return this.counters.backendLost;
  }

  /** Counters; kick counts come from the vCPU side's shared words. */
  get stats(): VirtioNetStats {
    readKickCounters(this.counters, this.config.counters);
    return this.counters;
  }

  /** A JSON-friendly copy of the counters plus identity, for --stats and the API. */
  snapshot(): Record<string, unknown> {
    const st = this.stats;
    return {
      backend: this.backend.name,
      mac: formatMac(this.config.mac),
      active: this.isActive_,
      headerLength: this.negotiated.hdrLen,
      mergeableRxBuffers: this.negotiated.mergeable,
      queuePairs: this.pairs,
      queuePairsEnabled: this.activePairs,
      ...st,
      // Frames per pair: which queues the traffic took.
      pairPackets: this.tx.map((t, p) => ({ tx: t.packets, rx: this.rx[p].packets })),
      drops: { ...st.drops },
      deviceErrors: [...st.deviceErrors],
    };
  }

  get isActive(): boolean {
    return this.isActive_;
  }

  /** @internal The RX bounce buffers, one per pair (host memory the backend may legitimately write; the hostile-guest rig checks against it). */
  get rxBounceBuffers(): { address: bigint; size: number }[] {
    return this.rx.map((r) => r.bounce);
  }

  get headerLength(): number {
    return this.negotiated.hdrLen;
  }

  /** Stops everything and closes the doorbells; the backend stays open (its owner closes it). */
  close(): void {
    this.deactivate();
    this.events.close();
    this.guestLog.flush();
  }

  // ---------------------------------------------------------------- events

  /** Pair `pair`'s TX bottom half (QEMU virtio_net_tx_bh). Public for tests. */
  txBhRun(pair = 0): void {
    if (pair >= this.activePairs) return;
    const sent = this.counters.txPackets;
    this.tx[pair].bottomHalf();
    // The host's stack handles a frame inside the writev that carries it, so an
    // answer (an echo reply, an ACK) may already wait on this pair's backend
    // queue: read it now, not after the main loop's next wake-up (vhost-net's
    // busy poll of the RX socket from handle_tx, done once).
    if (this.counters.txPackets !== sent) this.rx[pair].pollAfterTx();
  }

  /** The guest kicked pair `pair`'s RX queue. Public for tests. */
  rxKick(pair = 0): void {
    if (pair < this.activePairs) this.rx[pair].kick();
  }

  /** The control queue BH (QEMU virtio_net_handle_ctrl). Public for tests. */
  ctrlRun(): void {
    if (this.ctrl.run() === CTRL_MORE) this.events.scheduleQueue(this.ctrlIndex);
  }

  onQueueEvent(index: number): void {
    // Which queue an index is depends on MQ, known from DRIVER_OK on; kicks before it find nothing active.
    switch (queueRole(index, this.pairs, this.mq)) {
      case QUEUE_TX: this.txBhRun(index >> 1); break;
      case QUEUE_RX: this.rxKick(index >> 1); break;
      case QUEUE_CTRL: this.ctrlRun(); break;
    }
  }

  onControl(): void {
    this.controlRun();
  }

  onBackendReadable(pair: number): void {
    this.counters.rxReadableCallbacks++;
    this.rx[pair].pump();
  }

  onBackendWritable(pair: number): void {
    this.tx[pair].resume();
  }

  onBackendError(pair: number): void {
    this.counters.backendErrors++;
    if (this.backend.attached?.() === false) {
      this.backendLost('the interface was deleted');
      return;
    }
    // libuv stopped the watch; look again when the guest next adds RX buffers.
    this.counters.lastErrno = -1;
    this.rx[pair].waitForKick();
    // A chain parked on EAGAIN was waiting for this watch: retry it now (or drop it), never wait on.
    this.tx[pair].pollError();
  }

  /**
   * VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (QEMU virtio_net_set_queue_pairs): pairs
   * [0, n) carry frames from now on. A pair turned off gets its backend queue
   * detached before the command is acknowledged (the spec lets no frame reach
   * its receiveq after that) and its paths stopped; one turned on starts reading.
   */
  private setActivePairs(n: number): void {
    const was = this.activePairs;
    this.activePairs = n;
    this.enableBackendQueues(n);
    for (let p = n; p < was; p++) {
      this.events.stopPair(p);
      this.tx[p].reset();
      this.rx[p].reset();
    }
    if (this.running) for (let p = was; p < n; p++) {
      this.rx[p].start();
      this.events.scheduleQueue(txQueueIndex(p));
    }
  }

  /** TUNSETQUEUE: the first `n` backend queues attached, the rest detached. */
  private enableBackendQueues(n: number): void {
    for (let p = 1; p < this.pairs; p++) {
      try {
        this.backends[p].setQueueEnabled?.(p < n);
      } catch (e) {
        this.deviceError(`queue pair ${p}: ${(e as Error).message}`);
      }
    }
  }

  // ---------------------------------------------------------------- status

  /**
   * The control BH: the vCPU side rang after a status change or a reset.
   * Handles an outstanding reset first, then activates queues once DRIVER_OK.
   * Public so tests and the wiring can run it synchronously.
   */
  controlRun(): void {
    this.resetHandshake.poll(() => this.deactivate());
    const st = this.transport.status;
    if (st === 0) {
      if (this.isActive_) this.deactivate();
      return;
    }
    if (!(st & VIRTIO_CONFIG_S_DRIVER_OK) || st & VIRTIO_CONFIG_S_NEEDS_RESET) return;
    this.activate();
  }

  /** Applies negotiated features and (re)builds any queue whose configuration changed. */
  private activate(): void {
    const t = this.transport;
    const first = !this.isActive_;
    const n = this.negotiated;
    if (first) {
      t.readDriverFeatures(n.features);
      n.hdrLen = vnetHeaderSize(n.features);
      n.mergeable = n.has(VIRTIO_NET_F_MRG_RXBUF);
      n.rxMaxFrame = guestTakesGso(n.features) ? RX_MAX_GSO_FRAME : n.hdrLen + ETH_OVERHEAD + this.mtu;
      try {
        // tun keeps both per interface: set through the first queue, the one always attached.
        this.backend.setVnetHdrLen(n.hdrLen);
        this.backend.setOffload(tunOffloadsFor(n.features));
      } catch (e) {
        this.deviceError(`backend refused the negotiated header/offloads: ${(e as Error).message}`);
        return;
      }
      this.isActive_ = true;
      this.broken = false;
    }
    if (first) this.mq = this.pairs > 1 && n.has(VIRTIO_NET_F_MQ);
    const eventIdx = t.hasDriverFeature(VIRTIO_RING_F_EVENT_IDX);
    for (let i = 0; i < this.queueGen.length; i++) {
      const role = queueRole(i, this.pairs, this.mq);
      const q = role === QUEUE_RX ? this.rxqs[i >> 1] : role === QUEUE_TX ? this.txqs[i >> 1] : role === QUEUE_CTRL ? this.ctrlq : null;
      if (q === null) continue;
      const gen = t.queueGeneration(i);
      if (gen === this.queueGen[i]) continue;
      this.queueGen[i] = gen;
      q.reset();
      if (!t.queueEnabled(i)) continue;
      q.size = t.queueSize(i);
      q.descGpa = t.queueDesc(i);
      q.availGpa = t.queueAvail(i);
      q.usedGpa = t.queueUsed(i);
      q.eventIdx = eventIdx;
      if (!q.activate()) {
        this.deviceError(`queue ${i}: ${q.brokenReason}`);
        return;
      }
    }
    if (first) {
      // Kicks that arrived before DRIVER_OK found nothing active: look now.
      this.events.scheduleAllQueues();
      for (let p = 0; p < this.activePairs; p++) this.rx[p].start();
    }
  }

  /** Back to the state before activation (device reset): drops queue state, parked and held packets. */
  private deactivate(): void {
    this.isActive_ = false;
    this.broken = false;
    for (const q of [...this.rxqs, ...this.txqs, this.ctrlq]) q.reset();
    this.queueGen.fill(-1);
    this.events.quiesce();
    for (const x of [...this.tx, ...this.rx]) x.reset();
    this.mq = false;
    this.activePairs = 1;
    this.enableBackendQueues(1);
    Object.assign(this.filter, defaultRxFilter());
    this.config.setMac(this.initialMac);
    this.config.clearStatusBits(VIRTIO_NET_S_ANNOUNCE);
  }

  /** virtio_error: record, stop the data path, set NEEDS_RESET. */
  deviceError(reason: string): void {
    const s = this.counters;
    if (s.deviceErrors.length < DEVICE_ERRORS_KEPT) s.deviceErrors.push(reason);
    if (this.broken) return;
    this.broken = true;
    this.guestLog.report(`${reason}: device stopped until the driver resets it`);
    this.events.stopDataPath();
    this.irq.needsReset();
  }

  /** Link state as the guest sees it (VIRTIO_NET_S_LINK_UP); a config interrupt tells a driver with STATUS. */
  setLinkUp(up: boolean): void {
    if (up && this.counters.backendLost !== null) return;
    const was = (this.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
    if (was === up) return;
    if (up) this.config.setStatusBits(VIRTIO_NET_S_LINK_UP);
    else this.config.clearStatusBits(VIRTIO_NET_S_LINK_UP);
    if (this.isActive_ && this.negotiated.has(VIRTIO_NET_F_STATUS)) this.configChanged();
    if (up) for (let p = 0; p < this.activePairs; p++) this.events.scheduleQueue(txQueueIndex(p));
  }

  get linkUp(): boolean {
    return (this.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
  }

  /** Asks the guest to announce itself (gratuitous ARP after migration-like events), if it negotiated GUEST_ANNOUNCE. */
  announce(): boolean {
    if (!this.isActive_ || !this.negotiated.has(VIRTIO_NET_F_GUEST_ANNOUNCE)) return false;
    this.config.setStatusBits(VIRTIO_NET_S_ANNOUNCE);
    this.configChanged();
    return true;
  }

  private configChanged(): void {
    this.transport.bumpConfigGeneration();
    this.irq.sendConfigInterrupt();
    this.counters.configInterrupts++;
  }

  /**
   * The backend is gone for good: stop watching its fd (a detached tun fd
   * polls POLLERR forever), report the link down, and complete TX from now on
   * as link-down drops. The guest keeps running; RX simply never comes.
   */
  backendLost(reason: string): void {
    if (this.counters.backendLost !== null) return;
    this.counters.backendLost = reason;
    this.events.closeBackendWatch();
    this.setLinkUp(false);
    // A chain parked on EAGAIN waits for a writable event that cannot come: complete it.
    for (const t of this.tx) if (t.parked) this.events.scheduleQueue(txQueueIndex(t.pair));
    this.onBackendLost?.(`${this.backend.name} went away (${reason}): the guest keeps running with its link down`);
  }

  /** For error messages: errno text of the last backend error. */
  get lastError(): string {
    return this.counters.lastErrno > 0 ? strerror(this.counters.lastErrno) : '';
  }
}
