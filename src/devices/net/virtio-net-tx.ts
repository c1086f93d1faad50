// virtio-net TX, guest → backend (QEMU virtio_net_handle_tx_bh /
// virtio_net_tx_bh / virtio_net_flush_tx), on the main thread.
//
// The vCPU side (virtio-net-vcpu.ts) sets tx_waiting, suppresses kicks and
// rings the TX doorbell; the TX bottom half (`bottomHalf`) clears tx_waiting,
// pops chains and writes each with one writev straight from guest RAM (the
// virtio-net header goes along: the TAP has IFF_VNET_HDR with the guest's
// header size). EAGAIN parks the chain until the fd is writable (`resume`).
// After `burst` packets the BH reschedules itself; after fewer it re-enables
// kicks and re-checks the ring (the race with a guest that added buffers
// meanwhile). A poll error on the fd ends the wait for POLLOUT (libuv stops
// the watch): the parked chain is tried once more, and dropped (counted as
// txPollError, returned to the guest) if the backend still says EAGAIN. Used entries are published once per flush (or whenever a
// ring's worth is pending), and at most one interrupt follows each publish.
import { EAGAIN, EBADFD, EINTR } from '../../sys/libc.js';
import { DescriptorChain, type Virtqueue } from '../virtio/virtqueue.js';
import { Iovecs } from './iovec.js';
import { NET_WORD_TX_WAITING, VIRTIO_NET_S_LINK_UP, txQueueIndex } from './virtio-net-config.js';
import type { NetPathContext } from './virtio-net-context.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { NetBackend } from '../../net/tap.js';

/** How the TX path asks for events (the event layer provides it). */
export interface TxEvents {
  /** Run the TX bottom half again on the next loop iteration. */
  scheduleTx(): void;
  /** Watch the backend for writability (a parked chain waits for it). */
  watchWritable(on: boolean): void;
  readonly watchingWritable: boolean;
}

export class NetTx {
  private chain = new DescriptorChain();
  private parkedChain = new DescriptorChain();
  private hasParked = false;
  /** The fd watch failed while a chain was parked: EAGAIN on the retry drops it instead of waiting. */
  private dropParkedOnEagain = false;
  private readonly iov: Iovecs;
  /** This pair's tx_waiting word (NET_WORD_TX_WAITING + pair), shared with the vCPU side. */
  private readonly waitingWord: number;
  /** The queue index its interrupts name. */
  private readonly queueIndex: number;
  /** Frames this queue sent (the device's counters hold the total). */
  packets = 0;

  constructor(
    readonly queue: Virtqueue,
    memory: GuestMemory,
    private readonly ctx: NetPathContext,
    private readonly events: TxEvents,
    /** The tx_waiting words live here (shared with the vCPU side). */
    private readonly words: Int32Array,
    readonly burst: number,
    /** The queue pair this is the transmitq of, and that pair's backend queue. */
    readonly pair = 0,
    private readonly backend: NetBackend = ctx.backend,
  ) {
    this.iov = new Iovecs(memory);
    this.waitingWord = NET_WORD_TX_WAITING + pair;
    this.queueIndex = txQueueIndex(pair);
  }

  /** A chain is waiting for the backend to become writable. */
  get parked(): boolean {
    return this.hasParked;
  }

  /** Device reset: forget the parked chain and tx_waiting. */
  reset(): void {
    this.hasParked = false;
    this.dropParkedOnEagain = false;
    Atomics.store(this.words, this.waitingWord, 0);
  }

  /** The TX bottom half (QEMU virtio_net_tx_bh). */
  bottomHalf(): void {
    Atomics.store(this.words, this.waitingWord, 0);
    const ctx = this.ctx;
    const q = this.queue;
    if (!ctx.running || !q.ready) return;
    // Parked on EAGAIN: the writable callback resumes us.
    if (this.hasParked && this.events.watchingWritable) return;
    ctx.counters.txBhRuns++;
    // Kicks off while we work (the vCPU side did it already for exits; an ioeventfd kick did not).
    q.setNotification(false);
    const sent = this.flush();
    if (sent < 0) return; // parked, or the device broke
    if (sent >= this.burst) {
      // More may be waiting and no kick will come for it: run again next pass.
      ctx.counters.txBurstReschedules++;
      Atomics.store(this.words, this.waitingWord, 1);
      this.events.scheduleTx();
      return;
    }
    if (q.enableNotificationAndCheck()) {
      // The guest added buffers after our last pop and before kicks were back on.
      ctx.counters.txRaceRechecks++;
      q.setNotification(false);
      Atomics.store(this.words, this.waitingWord, 1);
      this.events.scheduleTx();
    }
  }

  /** The backend became writable (QEMU virtio_net_tx_complete): finish the parked packet and flush on. */
  resume(): void {
    this.events.watchWritable(false);
    if (!this.ctx.active) return;
    this.events.scheduleTx();
  }

  /**
   * The backend fd's watch reported a poll error while the backend is still
   * attached (a deleted TAP goes through VirtioNet.backendLost instead).
   * libuv stopped the watch, so the POLLOUT a parked chain waits for will not
   * come and, with kicks off while TX works, neither will a guest kick: run
   * the TX bottom half again. It retries the parked chain; if that is EAGAIN
   * again the chain is dropped, so TX goes on and never waits on a watch that
   * failed. The next EAGAIN parks and arms the watch afresh.
   */
  pollError(): void {
    if (!this.hasParked || !this.ctx.active) return;
    this.dropParkedOnEagain = true;
    this.events.scheduleTx();
  }

  /**
   * QEMU virtio_net_flush_tx: sends up to `burst` packets. Returns the number
   * of chains completed, or -1 when a chain was parked (EAGAIN) or the device
   * broke.
   */
  private flush(): number {
    const ctx = this.ctx;
    const s = ctx.counters;
    const q = this.queue;
    const hdrLen = ctx.negotiated.hdrLen;
    const iov = this.iov;
    const limit = this.burst;
    const maxFill = q.size;
    let linkUp = (ctx.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
    let done = 0;
    let filled = 0;
    let result = 0;
    for (;;) {
      let chain: DescriptorChain;
      if (this.hasParked) {
        chain = this.parkedChain;
      } else {
        if (done >= limit) break;
        chain = this.chain;
        if (!q.pop(chain)) {
          if (q.broken) {
            ctx.deviceError(`TX queue: ${q.brokenReason}`);
            result = -1;
          }
          break;
        }
        if (chain.writableSegments > 0) {
          ctx.deviceError('TX descriptor chain has device-writable buffers');
          result = -1;
          break;
        }
        if (chain.readableBytes < hdrLen) {
          ctx.deviceError('virtio-net header incorrect: TX chain shorter than the header');
          result = -1;
          break;
        }
        if (chain.readableBytes === hdrLen || !linkUp) {
          if (linkUp) s.drops.txZeroLength++;
          else s.drops.txLinkDown++;
          q.fill(chain.head, 0, filled++);
          done++;
          if (filled === maxFill) filled = this.publish(filled);
          continue;
        }
      }
      iov.reset();
      let whole = true;
      for (let i = 0; i < chain.length; i++) if (!iov.add(chain.gpa[i], chain.len[i])) whole = false;
      if (!whole) {
        // pop() checked every segment against RAM, and a chain holds no more
        // segments than an iovec array: a segment that does not map is a
        // tsvisor bug, stopped here rather than sent as a short frame.
        ctx.deviceError('TX chain segment could not be mapped to host memory');
        result = -1;
        break;
      }
      let r = this.backend.writev(iov.address, iov.count);
      if (r === -EINTR) r = this.backend.writev(iov.address, iov.count);
      if (r === -EAGAIN && this.hasParked && this.dropParkedOnEagain) {
        // The watch failed while this chain waited (pollError): drop it rather than wait again.
        this.hasParked = false;
        this.dropParkedOnEagain = false;
        s.drops.txPollError++;
        q.fill(chain.head, 0, filled++);
        done++;
        if (filled === maxFill) filled = this.publish(filled);
        continue;
      }
      if (r === -EAGAIN) {
        if (!this.hasParked) {
          // Keep the chain: swap it into the parked slot, the next pop fills the other object.
          const spare = this.parkedChain;
          this.parkedChain = chain;
          this.chain = spare;
          this.hasParked = true;
          s.txParked++;
        }
        this.events.watchWritable(true);
        result = -1;
        break;
      }
      if (this.hasParked) {
        this.hasParked = false;
        this.dropParkedOnEagain = false;
        s.txResumed++;
      }
      if (r < 0) {
        s.drops.txWriteError++;
        s.lastErrno = -r;
        if (r === -EBADFD && ctx.backend.attached?.() === false) {
          ctx.backendLost('the interface was deleted');
          linkUp = false;
        }
      } else {
        s.txPackets++;
        this.packets++;
        s.txBytes += chain.readableBytes - hdrLen;
      }
      q.fill(chain.head, 0, filled++);
      done++;
      if (filled === maxFill) filled = this.publish(filled);
    }
    if (filled > 0) this.publish(filled);
    return result < 0 ? result : done;
  }

  /** Publishes `filled` used entries, then at most one interrupt. Returns 0. */
  private publish(filled: number): number {
    const q = this.queue;
    q.flush(filled);
    if (q.needsNotification()) {
      this.ctx.irq.sendQueueInterrupt(this.queueIndex);
      this.ctx.counters.txInterrupts++;
    }
    return 0;
  }
}
