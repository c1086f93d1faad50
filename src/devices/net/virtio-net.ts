// virtio-net on the main thread: the device's lifecycle (QEMU
// hw/net/virtio-net.c, Firecracker net/device.rs). It owns the Virtqueues
// (built from the shared transport state when the driver sets DRIVER_OK), the
// negotiated state, the RX filter, the counters and the link state, and
// hands events to the paths that do the work:
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
import { guestTakesGso, tunOffloadsFor, vnetHeaderSize, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_LEN } from './virtio-net-features.js';
import { FeatureSet } from '../virtio/feature-set.js';
import {
  VIRTIO_NET_CTRL_QUEUE, VIRTIO_NET_NUM_QUEUES, VIRTIO_NET_RX_QUEUE, VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP, VIRTIO_NET_TX_QUEUE,
  formatMac, type VirtioNetConfig,
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
  readonly rxq: Virtqueue;
  readonly txq: Virtqueue;
  readonly ctrlq: Virtqueue;
  /** Eventfds the vCPU side (or a KVM ioeventfd) rings, one per queue, plus `control` for status/reset. */
  readonly doorbells: { rx: Doorbell; tx: Doorbell; ctrl: Doorbell; control: Doorbell };
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
  private readonly tx: NetTx;
  private readonly rx: NetRx;
  private readonly ctrl: ControlQueue;
  private readonly resetHandshake: MainResetHandshake;
  private readonly initialMac: Uint8Array;
  private readonly mtu: number;
  private isActive_ = false;
  private broken = false;
  private readonly queueGen = new Float64Array(VIRTIO_NET_NUM_QUEUES).fill(-1);

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
    this.rxq = new Virtqueue(memory, transport.queueMaxSize(VIRTIO_NET_RX_QUEUE));
    this.txq = new Virtqueue(memory, transport.queueMaxSize(VIRTIO_NET_TX_QUEUE));
    this.ctrlq = new Virtqueue(memory, transport.queueMaxSize(VIRTIO_NET_CTRL_QUEUE));
    this.events = new VirtioNetEvents(loop, backend.fd, this);
    this.doorbells = this.events.doorbells;
    this.tx = new NetTx(this.txq, memory, this, this.events, config.words, this.txBurst);
    this.rx = new NetRx(this.rxq, memory, this, this.events, this.filter, this.rxBurst);
    this.ctrl = new ControlQueue(this.ctrlq, memory, this, { filter: this.filter, config, has: n.has });
    this.resetHandshake = new MainResetHandshake(transport);
    this.resetHandshake.attach();
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
      ...st,
      drops: { ...st.drops },
      deviceErrors: [...st.deviceErrors],
    };
  }

  get isActive(): boolean {
    return this.isActive_;
  }

  /** @internal The RX bounce buffer (host memory the backend may legitimately write; the hostile-guest rig checks against it). */
  get rxBounceBuffer(): { address: bigint; size: number } {
    return this.rx.bounce;
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

  /** The TX bottom half (QEMU virtio_net_tx_bh). Public for tests. */
  txBhRun(): void {
    this.tx.bottomHalf();
  }

  /** The guest kicked the RX queue. Public for tests. */
  rxKick(): void {
    this.rx.kick();
  }

  /** The control queue BH (QEMU virtio_net_handle_ctrl). Public for tests. */
  ctrlRun(): void {
    if (this.ctrl.run() === CTRL_MORE) this.events.ctrlBh.schedule();
  }

  onTxBottomHalf(): void {
    this.tx.bottomHalf();
  }

  onRxKick(): void {
    this.rx.kick();
  }

  onCtrlKick(): void {
    this.ctrlRun();
  }

  onControl(): void {
    this.controlRun();
  }

  onBackendReadable(): void {
    this.counters.rxReadableCallbacks++;
    this.rx.pump();
  }

  onBackendWritable(): void {
    this.tx.resume();
  }

  onBackendError(): void {
    this.counters.backendErrors++;
    if (this.backend.attached?.() === false) {
      this.backendLost('the interface was deleted');
      return;
    }
    // libuv stopped the watch; look again when the guest next adds RX buffers.
    this.counters.lastErrno = -1;
    this.rx.waitForKick();
    // A chain parked on EAGAIN was waiting for this watch: retry it now (or drop it), never wait on.
    this.tx.pollError();
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
        this.backend.setVnetHdrLen(n.hdrLen);
        this.backend.setOffload(tunOffloadsFor(n.features));
      } catch (e) {
        this.deviceError(`backend refused the negotiated header/offloads: ${(e as Error).message}`);
        return;
      }
      this.isActive_ = true;
      this.broken = false;
    }
    const eventIdx = t.hasDriverFeature(VIRTIO_RING_F_EVENT_IDX);
    const queues = [this.rxq, this.txq, this.ctrlq];
    for (let i = 0; i < VIRTIO_NET_NUM_QUEUES; i++) {
      const gen = t.queueGeneration(i);
      if (gen === this.queueGen[i]) continue;
      this.queueGen[i] = gen;
      const q = queues[i];
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
      this.rx.start();
    }
  }

  /** Back to the state before activation (device reset): drops queue state, parked and held packets. */
  private deactivate(): void {
    this.isActive_ = false;
    this.broken = false;
    this.rxq.reset();
    this.txq.reset();
    this.ctrlq.reset();
    this.queueGen.fill(-1);
    this.events.quiesce();
    this.tx.reset();
    this.rx.reset();
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
    if (up) this.events.scheduleTx();
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
    if (this.tx.parked) this.events.scheduleTx();
    this.onBackendLost?.(`${this.backend.name} went away (${reason}): the guest keeps running with its link down`);
  }

  /** For error messages: errno text of the last backend error. */
  get lastError(): string {
    return this.counters.lastErrno > 0 ? strerror(this.counters.lastErrno) : '';
  }
}
