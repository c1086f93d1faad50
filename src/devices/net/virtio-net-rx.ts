// virtio-net RX, backend → guest (QEMU virtio_net_receive /
// virtio_net_can_receive), on the main thread.
//
// While the backend is readable and the guest has buffers, one frame per
// readv goes straight into the chains' writable segments (with MRG_RXBUF
// several chains, `num_buffers` in the first header). Chains popped and not
// used by a frame stay with the device for the next one, parsed, instead of
// being unpopped and popped again (Firecracker's rx_buffer): with MRG_RXBUF
// the room for a 64 KiB frame is some 40 chains, which every frame and every
// read that finds nothing would otherwise walk. With less room than the largest frame the read goes to a bounce
// buffer first; a frame that does not fit yet is held there. Frames are never
// dropped for lack of buffers: reading stops (the fd watch is turned off)
// until the guest kicks the RX queue (`kick`). One interrupt per batch.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { NativeBuffer, EAGAIN, EBADFD, EINTR } from '../../sys/libc.js';
import { ChainWriter, copyToChains, DescriptorChain, type Virtqueue } from '../virtio/virtqueue.js';
import { Iovecs, IOV_MAX } from './iovec.js';
import { rxFilterAccepts, type RxFilter } from './rx-filter.js';
import { rxQueueIndex } from './virtio-net-config.js';
import type { NetBackend } from '../../net/tap.js';
import type { NetPathContext } from './virtio-net-context.js';

/** The largest frame (header included) a guest with GSO offloads can be handed: 64 KiB + headers. */
export const RX_MAX_GSO_FRAME = 65550;
/** num_buffers sits after the 10-byte header. */
const NUM_BUFFERS_OFFSET = 10;

// receiveOne() results.
const RX_DELIVERED = 0;
const RX_EMPTY = 1;      // nothing to read
const RX_NO_BUFFERS = 2; // the guest must add buffers first
const RX_STOP = 3;       // error: stop this batch

/** How the RX path asks for events (the event layer provides it). */
export interface RxEvents {
  /** Watch the backend for readability (off while the guest has no buffers). */
  watchReadable(on: boolean): void;
}

export class NetRx {
  /** Popped chains; [0, kept) are not used yet, oldest first. */
  private readonly chains: DescriptorChain[] = [];
  private kept = 0;
  /** The queue's generation the kept chains were popped in. */
  private keptGeneration = -1;
  private readonly iov: Iovecs;
  /** Host memory a frame is read into when the guest's buffers are smaller than the largest frame. */
  readonly bounce: NativeBuffer;
  private readonly bounceIov: Iovecs;
  private readonly header: ChainWriter;
  /** Destination MAC of the frame being filtered; -1 where the chain is too short. */
  private readonly dst = new Int16Array(6);
  /** Used entries filled and not yet published. */
  private pending = 0;
  /** Reading stopped until the guest adds buffers. */
  private waiting = false;
  /** Length of a frame held in the bounce buffer, waiting for buffers; -1 for none. */
  private heldLen = -1;
  /** The queue index its interrupts name. */
  private readonly queueIndex: number;
  /** Frames this queue delivered (the device's counters hold the total). */
  packets = 0;

  constructor(
    readonly queue: Virtqueue,
    private readonly memory: GuestMemory,
    private readonly ctx: NetPathContext,
    private readonly events: RxEvents,
    private readonly filter: RxFilter,
    readonly burst: number,
    /** The queue pair this is the receiveq of, and that pair's backend queue. */
    readonly pair = 0,
    private readonly backend: NetBackend = ctx.backend,
  ) {
    this.queueIndex = rxQueueIndex(pair);
    this.iov = new Iovecs(memory);
    this.bounce = new NativeBuffer(RX_MAX_GSO_FRAME + 64);
    this.bounceIov = new Iovecs(memory, 1);
    this.bounceIov.addHost(Number(this.bounce.address), this.bounce.size);
    this.header = new ChainWriter(memory);
  }

  /** Device reset: forget held frames, pending entries and the stall. */
  reset(): void {
    this.kept = 0;
    this.heldLen = -1;
    this.pending = 0;
    this.waiting = false;
  }

  /** Activation: start reading if the queue is usable. */
  start(): void {
    this.waiting = false;
    if (this.queue.ready) this.events.watchReadable(true);
  }

  /** Stop reading until the next kick (a poll error, or an error that would spin). */
  stall(): void {
    this.waiting = true;
    this.events.watchReadable(false);
  }

  /** The fd watch already stopped (libuv does on a poll error): look again when the guest next adds buffers. */
  waitForKick(): void {
    this.waiting = true;
  }

  /** The guest kicked the RX queue: it added buffers (QEMU virtio_net_handle_rx → qemu_flush_queued_packets). */
  kick(): void {
    if (!this.ctx.running || !this.queue.ready) return;
    if (this.waiting) {
      this.waiting = false;
      this.ctx.counters.rxResumes++;
      this.events.watchReadable(true);
    }
    // Deliver a held frame (and whatever else waits) now rather than at the next poll.
    this.pump();
  }

  /** This pair's TX just sent frames: deliver what the backend already holds, unless reading waits for buffers. */
  pollAfterTx(): void {
    if (this.waiting) return;
    const before = this.packets;
    this.pump();
    if (this.packets !== before) this.ctx.counters.rxAfterTx++;
  }

  /** Delivers frames while there are frames and buffers, at most `burst`; one interrupt at the end. */
  pump(): void {
    const ctx = this.ctx;
    const q = this.queue;
    if (!ctx.running || !q.ready || ctx.backendGone !== null) {
      this.events.watchReadable(false);
      return;
    }
    let frames = 0;
    while (frames < this.burst) {
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
          ctx.deviceError(`RX queue: ${q.brokenReason}`);
          break;
        }
        if (!this.waiting) {
          this.waiting = true;
          ctx.counters.rxStalls++;
        }
        this.events.watchReadable(false);
      }
      break;
    }
    if (frames > 0) ctx.counters.rxBatches++;
    this.publish();
  }

  private publish(): void {
    if (this.pending === 0) return;
    const q = this.queue;
    q.flush(this.pending);
    this.pending = 0;
    if (q.needsNotification()) {
      this.ctx.irq.sendQueueInterrupt(this.queueIndex);
      this.ctx.counters.rxInterrupts++;
    }
  }

  private chain(i: number): DescriptorChain {
    let c = this.chains[i];
    if (c === undefined) {
      c = new DescriptorChain();
      this.chains[i] = c;
    }
    return c;
  }

  /**
   * The kept chains, then more popped until their writable space reaches
   * `need` (one chain without MRG_RXBUF), with their writable segments in the
   * iovecs. Returns the chain count, all kept until complete() uses some;
   * `iov.bytes` is the space. -1 when the queue broke.
   */
  private gather(need: number): number {
    const ctx = this.ctx;
    const q = this.queue;
    const iov = this.iov;
    const { mergeable, hdrLen } = ctx.negotiated;
    if (this.keptGeneration !== q.generation) {
      // A reset or a new activation: the chains belonged to the old ring.
      this.kept = 0;
      this.keptGeneration = q.generation;
    }
    iov.reset();
    let n = 0;
    for (; n < this.kept; n++) {
      if (!this.addSegments(this.chains[n])) return -1;
    }
    while (iov.bytes < need && (n === 0 || mergeable) && n < q.maxSize) {
      const c = this.chain(n);
      if (!q.pop(c)) {
        if (q.broken) {
          ctx.deviceError(`RX queue: ${q.brokenReason}`);
          return -1;
        }
        break;
      }
      if (c.writableSegments === 0) {
        ctx.deviceError('virtio-net receive queue contains no in buffers');
        return -1;
      }
      if (mergeable && c.writableBytes < hdrLen) {
        // virtio 1.2 §5.1.6.3.1: with MRG_RXBUF each buffer holds at least a header
        // (num_buffers is written into the first one).
        ctx.deviceError('virtio-net receive buffer smaller than the header with MRG_RXBUF');
        return -1;
      }
      if (iov.count + c.writableSegments > IOV_MAX) {
        q.unpop(1);
        break;
      }
      if (!this.addSegments(c)) return -1;
      n++;
    }
    this.kept = n;
    if (n > 0 && q.notificationEnabled) q.setNotification(false);
    return n;
  }

  private addSegments(c: DescriptorChain): boolean {
    for (let s = c.readableSegments; s < c.length; s++) {
      if (!this.iov.add(c.gpa[s], c.len[s])) {
        // Checked by pop() and by the IOV_MAX test in gather(): a tsvisor bug, not a guest's.
        this.ctx.deviceError('RX chain segment could not be mapped to host memory');
        return false;
      }
    }
    return true;
  }

  /** A frame used the first `used` kept chains: the rest move to the front, oldest first. */
  private consume(used: number): void {
    const c = this.chains;
    const rest = this.kept - used;
    // Swapping forward leaves c[i] = the old c[i + used] for every i < rest.
    for (let i = 0; i < rest; i++) {
      const t = c[i];
      c[i] = c[i + used];
      c[i + used] = t;
    }
    this.kept = rest;
  }

  private receiveOne(): number {
    const ctx = this.ctx;
    const s = ctx.counters;
    const { hdrLen, mergeable } = ctx.negotiated;
    // A frame already read, waiting for buffers.
    if (this.heldLen >= 0) {
      const len = this.heldLen;
      const n = this.gather(len);
      if (n < 0) return RX_STOP;
      if (this.iov.bytes < len) return RX_NO_BUFFERS;
      copyToChains(this.memory, this.chains, n, this.bounce.bytes.subarray(0, len));
      this.heldLen = -1;
      return this.complete(n, len);
    }

    const need = ctx.negotiated.rxMaxFrame;
    const n = this.gather(need);
    if (n < 0) return RX_STOP;
    if (n === 0) return RX_NO_BUFFERS;
    const space = this.iov.bytes;
    let len: number;
    if (space >= need) {
      // Room for the largest possible frame: read straight into guest RAM.
      len = this.backend.readv(this.iov.address, this.iov.count);
    } else {
      // Less room than a maximum frame: read into the bounce buffer, then see if it fits.
      len = this.backend.readv(this.bounceIov.address, 1);
    }
    // From here on, chains a frame does not use stay kept for the next one.
    if (len < 0) {
      if (len === -EAGAIN || len === -EINTR) return RX_EMPTY;
      s.drops.rxReadError++;
      s.lastErrno = -len;
      if (len === -EBADFD && ctx.backend.attached?.() === false) {
        ctx.backendLost('the interface was deleted');
        return RX_STOP;
      }
      // A persistent error (EIO, EBADFD…) would spin the loop: stop reading until the next kick.
      this.stall();
      return RX_STOP;
    }
    if (len === 0) return RX_EMPTY;
    if (len < hdrLen + 14) {
      s.drops.rxRunt++;
      return RX_DELIVERED;
    }
    if (space >= need) {
      if (len > space) {
        // tun reports the whole length of a frame it truncated: the MTU grew past what we planned for.
        s.drops.rxTruncated++;
        return RX_DELIVERED;
      }
    } else if (len > space) {
      if (!mergeable) {
        // QEMU drops what one non-mergeable buffer cannot hold.
        s.drops.rxTooBig++;
        return RX_DELIVERED;
      }
      this.heldLen = len;
      return RX_NO_BUFFERS;
    } else {
      copyToChains(this.memory, this.chains, n, this.bounce.bytes.subarray(0, len));
    }
    return this.complete(n, len);
  }

  /** A frame of `len` bytes (header included) sits in the first chains: filter, fill used entries, keep the rest. */
  private complete(chains: number, len: number): number {
    const ctx = this.ctx;
    const q = this.queue;
    const { hdrLen, mergeable } = ctx.negotiated;
    const first = this.header.bind(this.chains[0]);
    if (!this.filter.promisc) {
      const dst = this.dst;
      for (let i = 0; i < 6; i++) dst[i] = first.byteAt(hdrLen + i);
      if (!rxFilterAccepts(this.filter, dst, ctx.config.bytes)) {
        ctx.counters.drops.rxFiltered++;
        return RX_DELIVERED;
      }
    }
    let left = len;
    let used = 0;
    while (left > 0 && used < chains) {
      const c = this.chains[used];
      const take = Math.min(left, c.writableBytes);
      q.fill(c.head, take, this.pending + used);
      left -= take;
      used++;
    }
    this.consume(used);
    if (hdrLen >= NUM_BUFFERS_OFFSET + 2) first.writeU16(NUM_BUFFERS_OFFSET, mergeable ? used : 1);
    this.pending += used;
    ctx.counters.rxPackets++;
    this.packets++;
    ctx.counters.rxBytes += len - hdrLen;
    // Publish before the pending entries could wrap the used ring.
    if (this.pending >= q.size) this.publish();
    return RX_DELIVERED;
  }
}
