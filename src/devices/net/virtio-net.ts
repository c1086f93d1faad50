// virtio-net, main-thread side: the data path (QEMU hw/net/virtio-net.c).
//
// This side owns the Virtqueues (built from the shared transport state when
// the driver sets DRIVER_OK), the backend fd (a TAP) and the bottom halves.
// The vCPU side (virtio-net-vcpu.ts) handles register exits and rings our
// doorbells; with ioeventfd, KVM rings the same eventfds without an exit.
//
// TX (guest → TAP), QEMU virtio_net_handle_tx_bh / virtio_net_tx_bh /
// virtio_net_flush_tx: the vCPU sets tx_waiting, suppresses kicks and rings
// the TX doorbell; the TX bottom half clears tx_waiting, pops chains and
// writes each with one writev straight from guest RAM (the virtio-net header
// goes along: the TAP has IFF_VNET_HDR with the guest's header size). EAGAIN
// parks the chain until the fd is writable. After `txBurst` packets the BH
// reschedules itself; after fewer it re-enables kicks and re-checks the ring
// (the race with a guest that added buffers meanwhile). Used entries are
// published once per flush, and at most one interrupt follows.
//
// RX (TAP → guest), QEMU virtio_net_receive / virtio_net_can_receive: while
// the TAP is readable and the guest has buffers, read one frame per readv
// straight into the chains' writable segments (with MRG_RXBUF several chains,
// `num_buffers` in the first header; unneeded chains are unpopped). Frames are
// never dropped for lack of buffers: reading stops (the fd watch is turned
// off) until the guest kicks the RX queue. One interrupt per batch.
//
// Guest errors never throw: they are counted, and a malformed ring or chain
// marks the device NEEDS_RESET (QEMU virtio_error).
//
// A backend that goes away for good (the TAP deleted under its open fd: tun
// then fails every read and write with EBADFD and polls with POLLERR) is not
// the guest's fault and does not end the run, as in QEMU: the fd is no longer
// watched, the link is reported down (a config interrupt with STATUS), and TX
// frames are completed as link-down drops.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { BottomHalf, Doorbell, FdHandler, MainLoop } from '../../loop/main-loop.js';
import { DescriptorChain, Virtqueue, VIRTIO_RING_F_EVENT_IDX } from '../virtio/virtqueue.js';
import {
  MainResetHandshake,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_NEEDS_RESET,
  type TransportState,
} from '../virtio/transport-state.js';
import { NativeBuffer, EAGAIN, EBADFD, EINTR, strerror } from '../../sys/libc.js';
import type { NetBackend } from '../../net/tap.js';
import { Iovecs, IOV_MAX } from './iovec.js';
import { GuestErrorLog } from '../virtio/guest-error-log.js';
import {
  guestTakesGso,
  tunOffloadsFor,
  vnetHeaderSize,
  VIRTIO_NET_F_CTRL_MAC_ADDR,
  VIRTIO_NET_F_CTRL_RX,
  VIRTIO_NET_F_GUEST_ANNOUNCE,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_LEN,
} from './virtio-net-features.js';
import {
  DEFAULT_MAC,
  NET_CTR_CTRL_KICKS,
  NET_CTR_RX_KICKS,
  NET_CTR_TX_KICKS,
  NET_CTR_TX_KICKS_COALESCED,
  NET_WORD_TX_WAITING,
  VIRTIO_NET_CTRL_QUEUE,
  VIRTIO_NET_RX_QUEUE,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
  VIRTIO_NET_TX_QUEUE,
  VirtioNetConfig,
  formatMac,
  netQueueSizes,
  parseMac,
  VIRTIO_NET_NUM_QUEUES,
} from './virtio-net-config.js';
import { TsvisorError } from '../../errors.js';

// ---- control queue (virtio 1.2 §5.1.6.5) ----
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
export const VIRTIO_NET_CTRL_RX_ALLUNI = 2;
export const VIRTIO_NET_CTRL_RX_NOMULTI = 3;
export const VIRTIO_NET_CTRL_RX_NOUNI = 4;
export const VIRTIO_NET_CTRL_RX_NOBCAST = 5;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0;
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;
export const VIRTIO_NET_CTRL_VLAN = 2;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;
/** QEMU MAC_TABLE_ENTRIES: more addresses than this switch to "all" for that class. */
export const MAC_TABLE_ENTRIES = 64;
/** Largest control command read (header included): a MAC table of ~10 000 addresses; longer ones get VIRTIO_NET_ERR. */
export const CTRL_MAX_COMMAND = 2 + 8 + 6 * 10_000;

/** The largest frame (header included) a guest with GSO offloads can be handed: 64 KiB + headers. */
export const RX_MAX_GSO_FRAME = 65550;
/** Ethernet header plus one VLAN tag. */
const ETH_OVERHEAD = 14 + 4;
/** num_buffers sits after the 10-byte header. */
const NUM_BUFFERS_OFFSET = 10;

export interface VirtioNetOptions {
  /** MAC address, default 52:54:00:12:34:56. */
  mac?: string;
  /** Packets one TX bottom-half run sends before rescheduling itself (QEMU tx_burst), default 256. */
  txBurst?: number;
  /** Frames one readable callback delivers before yielding to the loop, default 256. */
  rxBurst?: number;
  /** RX/TX queue sizes, powers of two in [256, 1024], default 256. */
  rxQueueSize?: number;
  txQueueSize?: number;
  /** MTU the guest is told when VIRTIO_NET_F_MTU is offered; also bounds frames without guest GSO. Default 1500. */
  mtu?: number;
}

/** What the device raises interrupts through (InterruptSender from the transport provides it). */
export interface NetInterrupts {
  sendQueueInterrupt(queue: number): void;
  sendConfigInterrupt(): void;
  /** Sets NEEDS_RESET (virtio_error) and tells the driver. */
  needsReset(): void;
}

/** Counters for --stats and the API: plain numbers, read any time. */
export interface VirtioNetStats {
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
  /** Guest notifications per queue (counted by the vCPU side). */
  txKicks: number;
  rxKicks: number;
  ctrlKicks: number;
  /** TX kicks that found tx_waiting set (a BH run already pending). */
  txKicksCoalesced: number;
  txBhRuns: number;
  /** TX BH runs that hit txBurst and rescheduled themselves. */
  txBurstReschedules: number;
  /** TX BH runs whose re-check after re-enabling kicks found more work. */
  txRaceRechecks: number;
  /** writev returned EAGAIN: a chain was parked until the fd became writable. */
  txParked: number;
  txResumed: number;
  txInterrupts: number;
  rxInterrupts: number;
  ctrlInterrupts: number;
  configInterrupts: number;
  /** Times RX stopped reading the backend for lack of guest buffers, and resumed. */
  rxStalls: number;
  rxResumes: number;
  rxReadableCallbacks: number;
  /** RX pump runs that delivered at least one frame (each ends with at most one interrupt). */
  rxBatches: number;
  ctrlCommands: number;
  ctrlErrors: number;
  /** Poll errors the backend fd reported (POLLERR: a TAP deleted under us). */
  backendErrors: number;
  drops: {
    txZeroLength: number;
    txLinkDown: number;
    txWriteError: number;
    rxTruncated: number;
    rxTooBig: number;
    rxRunt: number;
    rxFiltered: number;
    rxReadError: number;
  };
  /** Guest errors that made the device NEEDS_RESET (first few, as text). */
  deviceErrors: string[];
  lastErrno: number;
  /** Why the backend went away for good (see backendLost), or null. */
  backendLost: string | null;
}

function emptyStats(): VirtioNetStats {
  return {
    txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, txKicks: 0, rxKicks: 0, ctrlKicks: 0, txKicksCoalesced: 0,
    txBhRuns: 0, txBurstReschedules: 0, txRaceRechecks: 0, txParked: 0, txResumed: 0,
    txInterrupts: 0, rxInterrupts: 0, ctrlInterrupts: 0, configInterrupts: 0,
    rxStalls: 0, rxResumes: 0, rxReadableCallbacks: 0, rxBatches: 0, ctrlCommands: 0, ctrlErrors: 0, backendErrors: 0,
    drops: { txZeroLength: 0, txLinkDown: 0, txWriteError: 0, rxTruncated: 0, rxTooBig: 0, rxRunt: 0, rxFiltered: 0, rxReadError: 0 },
    deviceErrors: [], lastErrno: 0, backendLost: null,
  };
}

/** The receive filter the control queue programs (QEMU VirtIONet promisc/allmulti/mac_table). */
export interface RxFilter {
  promisc: boolean;
  allmulti: boolean;
  alluni: boolean;
  nomulti: boolean;
  nouni: boolean;
  nobcast: boolean;
  uniOverflow: boolean;
  multiOverflow: boolean;
  unicast: string[];
  multicast: string[];
}

// receiveOne() results.
const RX_DELIVERED = 0;
const RX_EMPTY = 1;      // nothing to read
const RX_NO_BUFFERS = 2; // the guest must add buffers first
const RX_STOP = 3;       // error: stop this batch

/** Validated, defaulted options. */
export function resolveNetOptions(opts: VirtioNetOptions): Required<Omit<VirtioNetOptions, 'mac'>> & { mac: Uint8Array; queueSizes: number[] } {
  const txBurst = opts.txBurst ?? 256;
  if (!Number.isInteger(txBurst) || txBurst < 1 || txBurst > 65536) throw new TsvisorError(`--net tx_burst ${txBurst} is invalid`, 2, 'give a whole number from 1 to 65536');
  const rxBurst = opts.rxBurst ?? 256;
  if (!Number.isInteger(rxBurst) || rxBurst < 1 || rxBurst > 65536) throw new TsvisorError(`--net rx_burst ${rxBurst} is invalid`, 2, 'give a whole number from 1 to 65536');
  const mtu = opts.mtu ?? 1500;
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new TsvisorError(`--net mtu ${mtu} is invalid`, 2, 'give a value from 68 to 65535');
  const queueSizes = netQueueSizes(opts);
  return { mac: parseMac(opts.mac ?? DEFAULT_MAC), txBurst, rxBurst, mtu, rxQueueSize: queueSizes[0], txQueueSize: queueSizes[1], queueSizes };
}

export class VirtioNet {
  readonly rxq: Virtqueue;
  readonly txq: Virtqueue;
  readonly ctrlq: Virtqueue;
  /** Eventfds the vCPU side (or a KVM ioeventfd) rings, one per queue, plus `control` for status/reset. */
  readonly doorbells: { rx: Doorbell; tx: Doorbell; ctrl: Doorbell; control: Doorbell };
  readonly txBurst: number;
  readonly rxBurst: number;
  readonly filter: RxFilter = VirtioNet.defaultFilter();
  /** Guest errors, one rate-limited line each (stderr by default). */
  guestLog = new GuestErrorLog('virtio-net');
  /** Called once when the backend goes away for good, with a one-line description. */
  onBackendLost: ((message: string) => void) | null = null;

  private readonly s = emptyStats();
  private readonly txBh: BottomHalf;
  private readonly rxKickBh: BottomHalf;
  private readonly ctrlBh: BottomHalf;
  private readonly controlBh: BottomHalf;
  private readonly fdh: FdHandler;
  private readonly resetHandshake: MainResetHandshake;
  private readonly txWaiting: Int32Array;
  private readonly initialMac: Uint8Array;
  private readonly mtu: number;

  // Negotiated state, set by activate().
  private active = false;
  private features = 0;
  private hdrLen = VIRTIO_NET_HDR_LEN;
  private mergeable = false;
  private rxMaxFrame = RX_MAX_GSO_FRAME;
  private queueGen = new Float64Array(VIRTIO_NET_NUM_QUEUES).fill(-1);
  private broken = false;

  // TX.
  private txChain = new DescriptorChain();
  private txParkedChain = new DescriptorChain();
  private txHasParked = false;
  private readonly txIov: Iovecs;

  // RX.
  private rxChains: DescriptorChain[] = [];
  private readonly rxIov: Iovecs;
  private rxPending = 0;
  /** Reading stopped until the guest adds buffers. */
  private rxWaiting = false;
  private readonly bounce: NativeBuffer;
  private readonly bounceIov: Iovecs;
  /** Length of a frame held in the bounce buffer, waiting for buffers; -1 for none. */
  private heldLen = -1;

  // Control queue.
  private readonly ctrlChain = new DescriptorChain(64);
  /** Destination MAC of the frame being filtered. */
  private readonly rxDst = new Int16Array(6); // -1 where the chain is too short

  constructor(
    private readonly loop: MainLoop,
    private readonly memory: GuestMemory,
    readonly backend: NetBackend,
    readonly transport: TransportState,
    readonly config: VirtioNetConfig,
    private readonly irq: NetInterrupts,
    opts: VirtioNetOptions = {},
  ) {
    const o = resolveNetOptions(opts);
    this.txBurst = o.txBurst;
    this.rxBurst = o.rxBurst;
    this.mtu = o.mtu;
    this.initialMac = config.mac;
    this.rxq = new Virtqueue(memory, transport.queueMaxSize(VIRTIO_NET_RX_QUEUE));
    this.txq = new Virtqueue(memory, transport.queueMaxSize(VIRTIO_NET_TX_QUEUE));
    this.ctrlq = new Virtqueue(memory, transport.queueMaxSize(VIRTIO_NET_CTRL_QUEUE));
    this.txWaiting = config.words;
    this.txIov = new Iovecs(memory);
    this.rxIov = new Iovecs(memory);
    this.bounce = new NativeBuffer(RX_MAX_GSO_FRAME + 64);
    this.bounceIov = new Iovecs(memory, 1);
    this.bounceIov.addHost(Number(this.bounce.address), this.bounce.size);

    this.txBh = loop.newBh('virtio-net-tx', () => this.txBhRun());
    this.rxKickBh = loop.newBh('virtio-net-rx-kick', () => this.rxKick());
    this.ctrlBh = loop.newBh('virtio-net-ctrl', () => this.ctrlRun());
    this.controlBh = loop.newBh('virtio-net-control', () => this.controlRun());
    this.doorbells = {
      tx: loop.newDoorbell('virtio-net-tx', this.txBh),
      rx: loop.newDoorbell('virtio-net-rx', this.rxKickBh),
      ctrl: loop.newDoorbell('virtio-net-ctrl', this.ctrlBh),
      control: loop.newDoorbell('virtio-net-control', this.controlBh),
    };
    this.fdh = loop.watchFd(backend.fd, {
      onReadable: () => this.onBackendReadable(),
      onWritable: () => this.onBackendWritable(),
      onError: () => this.onBackendError(),
    }, { readable: false, writable: false });
    this.resetHandshake = new MainResetHandshake(transport);
    this.resetHandshake.attach();
  }

  static defaultFilter(): RxFilter {
    // QEMU virtio_net_reset: promiscuous until the driver says otherwise.
    return { promisc: true, allmulti: false, alluni: false, nomulti: false, nouni: false, nobcast: false, uniOverflow: false, multiOverflow: false, unicast: [], multicast: [] };
  }

  /** Counters; kick counts come from the vCPU side's shared words. */
  get stats(): VirtioNetStats {
    const c = this.config.counters;
    this.s.txKicks = c[NET_CTR_TX_KICKS];
    this.s.rxKicks = c[NET_CTR_RX_KICKS];
    this.s.ctrlKicks = c[NET_CTR_CTRL_KICKS];
    this.s.txKicksCoalesced = c[NET_CTR_TX_KICKS_COALESCED];
    return this.s;
  }

  /** A JSON-friendly copy of the counters plus identity, for --stats and the API. */
  snapshot(): Record<string, unknown> {
    const st = this.stats;
    return {
      backend: this.backend.name,
      mac: formatMac(this.config.mac),
      active: this.active,
      headerLength: this.hdrLen,
      mergeableRxBuffers: this.mergeable,
      ...st,
      drops: { ...st.drops },
      deviceErrors: [...st.deviceErrors],
    };
  }

  get isActive(): boolean {
    return this.active;
  }

  get headerLength(): number {
    return this.hdrLen;
  }

  /** Stops everything and closes the doorbells; the backend stays open (its owner closes it). */
  close(): void {
    this.deactivate();
    this.fdh.close();
    this.txBh.delete();
    this.rxKickBh.delete();
    this.ctrlBh.delete();
    this.controlBh.delete();
    for (const d of Object.values(this.doorbells)) d.close();
    this.guestLog.flush();
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
      if (this.active) this.deactivate();
      return;
    }
    if (!(st & VIRTIO_CONFIG_S_DRIVER_OK) || st & VIRTIO_CONFIG_S_NEEDS_RESET) return;
    this.activate();
  }

  /** Applies negotiated features and (re)builds any queue whose configuration changed. */
  private activate(): void {
    const t = this.transport;
    const first = !this.active;
    if (first) {
      this.features = Number(t.driverFeatures);
      this.hdrLen = vnetHeaderSize(this.features);
      this.mergeable = (this.features / 2 ** VIRTIO_NET_F_MRG_RXBUF) % 2 >= 1;
      this.rxMaxFrame = guestTakesGso(this.features) ? RX_MAX_GSO_FRAME : this.hdrLen + ETH_OVERHEAD + this.mtu;
      try {
        this.backend.setVnetHdrLen(this.hdrLen);
        this.backend.setOffload(tunOffloadsFor(this.features));
      } catch (e) {
        this.deviceError(`backend refused the negotiated header/offloads: ${(e as Error).message}`);
        return;
      }
      this.active = true;
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
      this.txBh.schedule();
      this.rxKickBh.schedule();
      this.ctrlBh.schedule();
      this.rxWaiting = false;
      if (this.rxq.ready) this.fdh.setReadable(true);
    }
  }

  /** Back to the state before activation (device reset): drops queue state, parked and held packets. */
  private deactivate(): void {
    this.active = false;
    this.broken = false;
    this.rxq.reset();
    this.txq.reset();
    this.ctrlq.reset();
    this.queueGen.fill(-1);
    this.txBh.cancel();
    this.rxKickBh.cancel();
    this.ctrlBh.cancel();
    this.fdh.setReadable(false);
    this.fdh.setWritable(false);
    this.txHasParked = false;
    this.heldLen = -1;
    this.rxPending = 0;
    this.rxWaiting = false;
    Atomics.store(this.txWaiting, NET_WORD_TX_WAITING, 0);
    Object.assign(this.filter, VirtioNet.defaultFilter());
    this.config.setMac(this.initialMac);
    this.config.clearStatusBits(VIRTIO_NET_S_ANNOUNCE);
  }

  /** virtio_error: record, stop the data path, set NEEDS_RESET. */
  private deviceError(reason: string): void {
    if (this.s.deviceErrors.length < 8) this.s.deviceErrors.push(reason);
    if (this.broken) return;
    this.broken = true;
    this.guestLog.report(`${reason}: device stopped until the driver resets it`);
    this.fdh.setReadable(false);
    this.fdh.setWritable(false);
    this.txBh.cancel();
    this.irq.needsReset();
  }

  private has(bit: number): boolean {
    return (this.features / 2 ** bit) % 2 >= 1;
  }

  /** Link state as the guest sees it (VIRTIO_NET_S_LINK_UP); a config interrupt tells a driver with STATUS. */
  setLinkUp(up: boolean): void {
    if (up && this.s.backendLost !== null) return;
    const was = (this.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
    if (was === up) return;
    if (up) this.config.setStatusBits(VIRTIO_NET_S_LINK_UP);
    else this.config.clearStatusBits(VIRTIO_NET_S_LINK_UP);
    if (this.active && this.has(VIRTIO_NET_F_STATUS)) this.configChanged();
    if (up) this.txBh.schedule();
  }

  get linkUp(): boolean {
    return (this.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
  }

  /** Asks the guest to announce itself (gratuitous ARP after migration-like events), if it negotiated GUEST_ANNOUNCE. */
  announce(): boolean {
    if (!this.active || !this.has(VIRTIO_NET_F_GUEST_ANNOUNCE)) return false;
    this.config.setStatusBits(VIRTIO_NET_S_ANNOUNCE);
    this.configChanged();
    return true;
  }

  private configChanged(): void {
    this.transport.bumpConfigGeneration();
    this.irq.sendConfigInterrupt();
    this.s.configInterrupts++;
  }

  // -------------------------------------------------------------------- TX

  /** The TX bottom half (QEMU virtio_net_tx_bh). Public for tests. */
  txBhRun(): void {
    Atomics.store(this.txWaiting, NET_WORD_TX_WAITING, 0);
    if (!this.active || this.broken || !this.txq.ready) return;
    // Parked on EAGAIN: the writable callback resumes us.
    if (this.txHasParked && this.fdh.isWritable) return;
    this.s.txBhRuns++;
    const q = this.txq;
    // Kicks off while we work (the vCPU side did it already for exits; an ioeventfd kick did not).
    q.setNotification(false);
    const sent = this.flushTx();
    if (sent < 0) return; // parked, or the device broke
    if (sent >= this.txBurst) {
      // More may be waiting and no kick will come for it: run again next pass.
      this.s.txBurstReschedules++;
      Atomics.store(this.txWaiting, NET_WORD_TX_WAITING, 1);
      this.txBh.schedule();
      return;
    }
    if (q.enableNotificationAndCheck()) {
      // The guest added buffers after our last pop and before kicks were back on.
      this.s.txRaceRechecks++;
      q.setNotification(false);
      Atomics.store(this.txWaiting, NET_WORD_TX_WAITING, 1);
      this.txBh.schedule();
    }
  }

  /**
   * QEMU virtio_net_flush_tx: sends up to txBurst packets. Returns the number
   * of chains completed, or -1 when a chain was parked (EAGAIN) or the device
   * broke.
   */
  private flushTx(): number {
    const q = this.txq;
    const hdrLen = this.hdrLen;
    const iov = this.txIov;
    const limit = this.txBurst;
    const maxFill = q.size;
    let linkUp = (this.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
    let done = 0;
    let filled = 0;
    let result = 0;
    for (;;) {
      let chain: DescriptorChain;
      if (this.txHasParked) {
        chain = this.txParkedChain;
      } else {
        if (done >= limit) break;
        chain = this.txChain;
        if (!q.pop(chain)) {
          if (q.broken) {
            this.deviceError(`TX queue: ${q.brokenReason}`);
            result = -1;
          }
          break;
        }
        if (chain.writableSegments > 0) {
          this.deviceError('TX descriptor chain has device-writable buffers');
          result = -1;
          break;
        }
        if (chain.readableBytes < hdrLen) {
          this.deviceError('virtio-net header incorrect: TX chain shorter than the header');
          result = -1;
          break;
        }
        if (chain.readableBytes === hdrLen || !linkUp) {
          if (linkUp) this.s.drops.txZeroLength++;
          else this.s.drops.txLinkDown++;
          q.fill(chain.head, 0, filled++);
          done++;
          if (filled === maxFill) filled = this.publishTx(filled);
          continue;
        }
      }
      iov.reset();
      for (let i = 0; i < chain.length; i++) iov.add(chain.gpa[i], chain.len[i]);
      let r = this.backend.writev(iov.address, iov.count);
      if (r === -EINTR) r = this.backend.writev(iov.address, iov.count);
      if (r === -EAGAIN) {
        if (!this.txHasParked) {
          // Keep the chain: swap it into the parked slot, the next pop fills the other object.
          const spare = this.txParkedChain;
          this.txParkedChain = chain;
          this.txChain = spare;
          this.txHasParked = true;
          this.s.txParked++;
        }
        this.fdh.setWritable(true);
        result = -1;
        break;
      }
      if (this.txHasParked) {
        this.txHasParked = false;
        this.s.txResumed++;
      }
      if (r < 0) {
        this.s.drops.txWriteError++;
        this.s.lastErrno = -r;
        if (r === -EBADFD && this.backend.attached?.() === false) {
          this.backendLost('the interface was deleted');
          linkUp = false;
        }
      } else {
        this.s.txPackets++;
        this.s.txBytes += chain.readableBytes - hdrLen;
      }
      q.fill(chain.head, 0, filled++);
      done++;
      if (filled === maxFill) filled = this.publishTx(filled);
    }
    if (filled > 0) this.publishTx(filled);
    return result < 0 ? result : done;
  }

  /** Publishes `filled` used entries, then at most one interrupt. Returns 0. */
  private publishTx(filled: number): number {
    this.txq.flush(filled);
    if (this.txq.needsNotification()) {
      this.irq.sendQueueInterrupt(VIRTIO_NET_TX_QUEUE);
      this.s.txInterrupts++;
    }
    return 0;
  }

  private onBackendWritable(): void {
    this.fdh.setWritable(false);
    if (!this.active) return;
    // QEMU virtio_net_tx_complete: finish the parked packet and flush on.
    this.txBh.schedule();
  }

  private onBackendError(): void {
    this.s.backendErrors++;
    if (this.backend.attached?.() === false) {
      this.backendLost('the interface was deleted');
      return;
    }
    // libuv stopped the watch; look again when the guest next adds RX buffers.
    this.s.lastErrno = -1;
    this.rxWaiting = true;
  }

  /**
   * The backend is gone for good: stop watching its fd (a detached tun fd
   * polls POLLERR forever), report the link down, and complete TX from now on
   * as link-down drops. The guest keeps running; RX simply never comes.
   */
  backendLost(reason: string): void {
    if (this.s.backendLost !== null) return;
    this.s.backendLost = reason;
    this.fdh.close();
    this.setLinkUp(false);
    // A chain parked on EAGAIN waits for a writable event that cannot come: complete it.
    if (this.txHasParked) this.txBh.schedule();
    this.onBackendLost?.(`${this.backend.name} went away (${reason}): the guest keeps running with its link down`);
  }

  // -------------------------------------------------------------------- RX

  private onBackendReadable(): void {
    this.s.rxReadableCallbacks++;
    this.rxPump();
  }

  /** The guest kicked the RX queue: it added buffers (QEMU virtio_net_handle_rx → qemu_flush_queued_packets). */
  rxKick(): void {
    if (!this.active || this.broken || !this.rxq.ready) return;
    if (this.rxWaiting) {
      this.rxWaiting = false;
      this.s.rxResumes++;
      this.fdh.setReadable(true);
    }
    // Deliver a held frame (and whatever else waits) now rather than at the next poll.
    this.rxPump();
  }

  /** Delivers frames while there are frames and buffers, at most rxBurst; one interrupt at the end. */
  private rxPump(): void {
    if (!this.active || this.broken || !this.rxq.ready || this.s.backendLost !== null) {
      this.fdh.setReadable(false);
      return;
    }
    const q = this.rxq;
    let frames = 0;
    while (frames < this.rxBurst) {
      const r = this.receiveOne();
      if (r === RX_DELIVERED) {
        frames++;
        continue;
      }
      if (r === RX_NO_BUFFERS) {
        // Out of (enough) buffers: ask for a kick, then look again: buffers the
        // guest added before kicks were on would otherwise wait forever. What
        // counts is whether the count grew, since chains too small for a held
        // frame stay available (QEMU virtio_net_has_buffers, vhost_enable_notify).
        const had = q.availCount();
        q.setNotification(true);
        if (q.availCount() > had) continue;
        if (q.broken) {
          this.deviceError(`RX queue: ${q.brokenReason}`);
          break;
        }
        if (!this.rxWaiting) {
          this.rxWaiting = true;
          this.s.rxStalls++;
        }
        this.fdh.setReadable(false);
      }
      break;
    }
    if (frames > 0) this.s.rxBatches++;
    this.publishRx();
  }

  private publishRx(): void {
    if (this.rxPending === 0) return;
    this.rxq.flush(this.rxPending);
    this.rxPending = 0;
    if (this.rxq.needsNotification()) {
      this.irq.sendQueueInterrupt(VIRTIO_NET_RX_QUEUE);
      this.s.rxInterrupts++;
    }
  }

  private rxChain(i: number): DescriptorChain {
    let c = this.rxChains[i];
    if (c === undefined) {
      c = new DescriptorChain();
      this.rxChains[i] = c;
    }
    return c;
  }

  /**
   * Pops chains until their writable space reaches `need` (one chain without
   * MRG_RXBUF), filling rxIov with their writable segments. Returns the chain
   * count; `rxIov.bytes` is the space. -1 when the queue broke.
   */
  private gatherRx(need: number): number {
    const q = this.rxq;
    const iov = this.rxIov;
    iov.reset();
    let n = 0;
    while (iov.bytes < need && (n === 0 || this.mergeable) && n < q.maxSize) {
      const c = this.rxChain(n);
      if (!q.pop(c)) {
        if (q.broken) {
          this.deviceError(`RX queue: ${q.brokenReason}`);
          return -1;
        }
        break;
      }
      if (c.writableSegments === 0) {
        this.deviceError('virtio-net receive queue contains no in buffers');
        return -1;
      }
      if (this.mergeable && c.writableBytes < this.hdrLen) {
        // virtio 1.2 §5.1.6.3.1: with MRG_RXBUF each buffer holds at least a header
        // (num_buffers is written into the first one).
        this.deviceError('virtio-net receive buffer smaller than the header with MRG_RXBUF');
        return -1;
      }
      if (iov.count + c.writableSegments > IOV_MAX) {
        q.unpop(1);
        break;
      }
      for (let s = c.readableSegments; s < c.length; s++) iov.add(c.gpa[s], c.len[s]);
      n++;
    }
    if (n > 0 && q.notificationEnabled) q.setNotification(false);
    return n;
  }

  private receiveOne(): number {
    const q = this.rxq;
    // A frame already read, waiting for buffers.
    if (this.heldLen >= 0) {
      const len = this.heldLen;
      const n = this.gatherRx(len);
      if (n < 0) return RX_STOP;
      if (this.rxIov.bytes < len) {
        q.unpop(n);
        return RX_NO_BUFFERS;
      }
      this.copyFromBounce(n, len);
      this.heldLen = -1;
      return this.complete(n, len);
    }

    const need = this.rxMaxFrame;
    const n = this.gatherRx(need);
    if (n < 0) return RX_STOP;
    if (n === 0) return RX_NO_BUFFERS;
    const space = this.rxIov.bytes;
    let len: number;
    if (space >= need) {
      // Room for the largest possible frame: read straight into guest RAM.
      len = this.backend.readv(this.rxIov.address, this.rxIov.count);
    } else {
      // Less room than a maximum frame: read into the bounce buffer, then see if it fits.
      len = this.backend.readv(this.bounceIov.address, 1);
    }
    if (len < 0) {
      q.unpop(n);
      if (len === -EAGAIN || len === -EINTR) return RX_EMPTY;
      this.s.drops.rxReadError++;
      this.s.lastErrno = -len;
      if (len === -EBADFD && this.backend.attached?.() === false) {
        this.backendLost('the interface was deleted');
        return RX_STOP;
      }
      // A persistent error (EIO, EBADFD…) would spin the loop: stop reading until the next kick.
      this.rxWaiting = true;
      this.fdh.setReadable(false);
      return RX_STOP;
    }
    if (len === 0) {
      q.unpop(n);
      return RX_EMPTY;
    }
    if (len < this.hdrLen + 14) {
      q.unpop(n);
      this.s.drops.rxRunt++;
      return RX_DELIVERED;
    }
    if (space >= need) {
      if (len > space) {
        // tun reports the whole length of a frame it truncated: the MTU grew past what we planned for.
        q.unpop(n);
        this.s.drops.rxTruncated++;
        return RX_DELIVERED;
      }
    } else if (len > space) {
      q.unpop(n);
      if (!this.mergeable) {
        // QEMU drops what one non-mergeable buffer cannot hold.
        this.s.drops.rxTooBig++;
        return RX_DELIVERED;
      }
      this.heldLen = len;
      return RX_NO_BUFFERS;
    } else {
      this.copyFromBounce(n, len);
    }
    return this.complete(n, len);
  }

  /** Copies a frame of `len` bytes from the bounce buffer into the gathered chains' writable segments. */
  private copyFromBounce(chains: number, len: number): void {
    const src = this.bounce.bytes;
    let off = 0;
    for (let k = 0; k < chains && off < len; k++) {
      const c = this.rxChains[k];
      for (let s = c.readableSegments; s < c.length && off < len; s++) {
        const take = Math.min(c.len[s], len - off);
        const dst = this.memory.slice(c.gpa[s], take);
        if (dst !== null) dst.set(src.subarray(off, off + take));
        off += take;
      }
    }
  }

  /** A frame of `len` bytes (header included) sits in the first chains: filter, fill used entries, unpop the rest. */
  private complete(chains: number, len: number): number {
    const q = this.rxq;
    if (!this.filter.promisc && !this.accepts(this.rxChains[0])) {
      q.unpop(chains);
      this.s.drops.rxFiltered++;
      return RX_DELIVERED;
    }
    let left = len;
    let used = 0;
    while (left > 0 && used < chains) {
      const c = this.rxChains[used];
      const take = Math.min(left, c.writableBytes);
      q.fill(c.head, take, this.rxPending + used);
      left -= take;
      used++;
    }
    if (used < chains) q.unpop(chains - used);
    if (this.hdrLen >= NUM_BUFFERS_OFFSET + 2) this.writeChainU16(this.rxChains[0], NUM_BUFFERS_OFFSET, this.mergeable ? used : 1);
    this.rxPending += used;
    this.s.rxPackets++;
    this.s.rxBytes += len - this.hdrLen;
    // Publish before the pending entries could wrap the used ring.
    if (this.rxPending >= q.size) this.publishRx();
    return RX_DELIVERED;
  }

  /** Writes a u16 at byte `offset` of a chain's writable stream (it may straddle segments). */
  private writeChainU16(c: DescriptorChain, offset: number, value: number): void {
    this.writeChainByte(c, offset, value & 0xff);
    this.writeChainByte(c, offset + 1, value >>> 8);
  }

  private writeChainByte(c: DescriptorChain, offset: number, value: number): void {
    for (let s = c.readableSegments; s < c.length; s++) {
      if (offset < c.len[s]) {
        this.memory.writeU8(c.gpa[s] + offset, value);
        return;
      }
      offset -= c.len[s];
    }
  }

  private readChainByte(c: DescriptorChain, offset: number, writable: boolean): number {
    const start = writable ? c.readableSegments : 0;
    const end = writable ? c.length : c.readableSegments;
    for (let s = start; s < end; s++) {
      if (offset < c.len[s]) return this.memory.readU8(c.gpa[s] + offset);
      offset -= c.len[s];
    }
    return -1;
  }

  /**
   * QEMU receive_filter without VLANs: destination MAC against the programmed
   * filter. Runs per received frame once the guest turns promiscuous mode off,
   * so it reads into a preallocated buffer and formats a MAC only to look it up
   * in a non-empty table.
   */
  private accepts(c: DescriptorChain): boolean {
    const f = this.filter;
    const dst = this.rxDst;
    for (let i = 0; i < 6; i++) dst[i] = this.readChainByte(c, this.hdrLen + i, true);
    if (dst[0] & 1) {
      let bcast = true;
      for (let i = 0; i < 6; i++) if (dst[i] !== 0xff) bcast = false;
      if (bcast) return !f.nobcast;
      if (f.nomulti) return false;
      if (f.allmulti || f.multiOverflow) return true;
      return f.multicast.length > 0 && f.multicast.includes(formatMac(dst));
    }
    if (f.nouni) return false;
    if (f.alluni || f.uniOverflow) return true;
    const mac = this.config.bytes;
    let own = true;
    for (let i = 0; i < 6; i++) if (dst[i] !== mac[i]) own = false;
    return own || (f.unicast.length > 0 && f.unicast.includes(formatMac(dst)));
  }

  // ---------------------------------------------------------- control queue

  /** The control queue BH (QEMU virtio_net_handle_ctrl). Public for tests. */
  ctrlRun(): void {
    if (!this.active || this.broken || !this.ctrlq.ready) return;
    const q = this.ctrlq;
    const c = this.ctrlChain;
    let pushed = 0;
    for (;;) {
      if (!q.pop(c)) {
        if (q.broken) {
          this.deviceError(`control queue: ${q.brokenReason}`);
          break;
        }
        // Going idle: ask for the next kick (with EVENT_IDX this writes avail_event,
        // without which the driver never kicks again) and look once more.
        if (q.enableNotificationAndCheck()) continue;
        break;
      }
      if (c.readableBytes < 2 || c.writableBytes < 1) {
        this.deviceError('virtio-net ctrl missing headers');
        break;
      }
      if (c.readableBytes > CTRL_MAX_COMMAND) {
        // The copy below is sized by the guest: refuse what no command needs
        // (64 segments of all RAM would be an allocation the host cannot make).
        this.s.ctrlCommands++;
        this.s.ctrlErrors++;
        this.writeChainByte(c, 0, VIRTIO_NET_ERR);
        q.push(c.head, 1);
        pushed++;
        continue;
      }
      const data = new Uint8Array(c.readableBytes);
      let off = 0;
      for (let s = 0; s < c.readableSegments; s++) {
        const src = this.memory.slice(c.gpa[s], c.len[s]);
        if (src !== null) data.set(src, off);
        off += c.len[s];
      }
      const status = this.ctrlCommand(data[0], data[1], data.subarray(2));
      this.s.ctrlCommands++;
      if (status !== VIRTIO_NET_OK) this.s.ctrlErrors++;
      this.writeChainByte(c, 0, status);
      q.push(c.head, 1);
      pushed++;
    }
    if (pushed > 0 && q.needsNotification()) {
      this.irq.sendQueueInterrupt(VIRTIO_NET_CTRL_QUEUE);
      this.s.ctrlInterrupts++;
    }
  }

  private ctrlCommand(cls: number, cmd: number, data: Uint8Array): number {
    switch (cls) {
      case VIRTIO_NET_CTRL_RX:
        return this.ctrlRx(cmd, data);
      case VIRTIO_NET_CTRL_MAC:
        return this.ctrlMac(cmd, data);
      case VIRTIO_NET_CTRL_ANNOUNCE:
        if (cmd === VIRTIO_NET_CTRL_ANNOUNCE_ACK && this.config.status & VIRTIO_NET_S_ANNOUNCE) {
          this.config.clearStatusBits(VIRTIO_NET_S_ANNOUNCE);
          return VIRTIO_NET_OK;
        }
        return VIRTIO_NET_ERR;
      default:
        return VIRTIO_NET_ERR;
    }
  }

  private ctrlRx(cmd: number, data: Uint8Array): number {
    if (!this.has(VIRTIO_NET_F_CTRL_RX) || data.length !== 1) return VIRTIO_NET_ERR;
    const on = data[0] !== 0;
    const f = this.filter;
    switch (cmd) {
      case VIRTIO_NET_CTRL_RX_PROMISC: f.promisc = on; break;
      case VIRTIO_NET_CTRL_RX_ALLMULTI: f.allmulti = on; break;
      // The RX_EXTRA commands (not offered; QEMU accepts them anyway).
      case VIRTIO_NET_CTRL_RX_ALLUNI: f.alluni = on; break;
      case VIRTIO_NET_CTRL_RX_NOMULTI: f.nomulti = on; break;
      case VIRTIO_NET_CTRL_RX_NOUNI: f.nouni = on; break;
      case VIRTIO_NET_CTRL_RX_NOBCAST: f.nobcast = on; break;
      default: return VIRTIO_NET_ERR;
    }
    return VIRTIO_NET_OK;
  }

  private ctrlMac(cmd: number, data: Uint8Array): number {
    if (cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET) {
      if (!this.has(VIRTIO_NET_F_CTRL_MAC_ADDR) || data.length !== 6) return VIRTIO_NET_ERR;
      this.config.setMac(data);
      return VIRTIO_NET_OK;
    }
    if (cmd !== VIRTIO_NET_CTRL_MAC_TABLE_SET) return VIRTIO_NET_ERR;
    // Two tables: le32 entries, then entries * 6 bytes; unicast first, then multicast.
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const tables: string[][] = [[], []];
    const overflow = [false, false];
    let off = 0;
    for (let t = 0; t < 2; t++) {
      if (off + 4 > data.length) return VIRTIO_NET_ERR;
      const entries = dv.getUint32(off, true);
      off += 4;
      if (entries > (data.length - off) / 6) return VIRTIO_NET_ERR;
      if (entries > MAC_TABLE_ENTRIES) overflow[t] = true;
      else for (let e = 0; e < entries; e++) tables[t].push(formatMac(data.subarray(off + 6 * e, off + 6 * e + 6)));
      off += 6 * entries;
    }
    if (off !== data.length) return VIRTIO_NET_ERR;
    const f = this.filter;
    f.unicast = tables[0];
    f.multicast = tables[1];
    f.uniOverflow = overflow[0];
    f.multiOverflow = overflow[1];
    return VIRTIO_NET_OK;
  }

  /** For error messages: errno text of the last backend error. */
  get lastError(): string {
    return this.s.lastErrno > 0 ? strerror(this.s.lastErrno) : '';
  }
}
