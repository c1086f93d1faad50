// The split virtqueue (virtio 1.2 §2.7) as a library: descriptor walking,
// used-ring publishing and notification suppression over GuestMemory. It knows
// nothing of devices or transports (rust-vmm `virtio-queue` style): a transport
// fills in size/addresses and calls `activate()`, a device pops and pushes.
//
// Everything the guest controls is hostile. A malformed ring never throws: the
// queue marks itself `broken` with a reason and stops (the transport can then
// set DEVICE_NEEDS_RESET), like QEMU's virtio_error().
//
// Memory ordering. Guest RAM is shared with the vCPUs (the guest driver runs on
// another CPU), so the order of our loads and stores against the guest's is
// what the spec's barriers are about. On x86-64 (TSO) the hardware keeps
// load→load and store→store order; the one reordering it allows is a later load
// passing an earlier store, which needs a full fence. The JIT, however, may
// reorder or merge plain typed-array accesses as if single-threaded. So:
// - the indices the guest publishes (avail.idx, avail.flags, used_event) are
//   read with Atomics.load: the JIT keeps every later ring/descriptor read after
//   it, which is the acquire the spec's "read idx, then ring" needs;
// - the indices we publish (used.idx, used.flags, avail_event) are written with
//   Atomics.store: sequentially consistent, V8 emits `xchg` on x64, a full
//   barrier. That is both the release for "write used elements, then idx" and
//   the store→load fence for "write avail_event/flags, then re-read avail.idx"
//   (enableNotificationAndCheck) and "publish used.idx, then read used_event"
//   (needsNotification);
// - ring entries and descriptors are plain loads/stores, ordered by the above.

import type { GuestMemory } from '../../memory/guest-memory.js';
import type { DescriptorChain } from './descriptor-chain.js';

export { DescriptorChain, ChainReader, ChainWriter, copyToChains } from './descriptor-chain.js';

// virtq_desc.flags
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
// virtq_avail.flags
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
// virtq_used.flags
export const VRING_USED_F_NO_NOTIFY = 1;
// Feature bits this module implements (the transport negotiates them).
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;

/** Largest split queue size the spec allows. */
export const VIRTQUEUE_MAX_SIZE = 32768;
/** Legacy (virtio 0.9.5) ring alignment and PFN shift. */
export const VIRTIO_PCI_VRING_ALIGN = 4096;
export const VIRTIO_PCI_QUEUE_ADDR_SHIFT = 12;

const DESC_SIZE = 16;

/**
 * `vring_need_event` (virtio 1.2 §2.7.7.2 / Linux virtio_ring.h): true when the
 * other side asked to be notified at `eventIdx`, and that index lies in the
 * window of indices [old, new) just published. All arithmetic is mod 2^16.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** GPAs of the three ring parts. */
export interface VringLayout {
  desc: number;
  avail: number;
  used: number;
}

/**
 * Legacy ring layout (virtio 0.9.5 `vring_init`): the three parts packed from
 * `pfn << 12`, the used ring aligned to `align`. The PFN register is 32 bits,
 * so addresses stay below 2^44: multiplication, not shifts, keeps them exact.
 */
export function legacyVringLayout(pfn: number, size: number, align = VIRTIO_PCI_VRING_ALIGN): VringLayout {
  const desc = pfn * (1 << VIRTIO_PCI_QUEUE_ADDR_SHIFT);
  const avail = desc + size * DESC_SIZE;
  const availEnd = avail + 2 * (3 + size); // flags, idx, ring[size], used_event
  const used = Math.ceil(availEnd / align) * align;
  return { desc, avail, used };
}

/** Bytes spanned by a legacy ring of `size` entries (Linux `vring_size`). */
export function legacyVringSize(size: number, align = VIRTIO_PCI_VRING_ALIGN): number {
  const l = legacyVringLayout(0, size, align);
  return l.used + 6 + 8 * size;
}

/**
 * used->flags of one split ring, which holds one bit: VRING_USED_F_NO_NOTIFY,
 * the device's "do not kick me" (virtio 1.2 §2.7.10). Without EVENT_IDX it
 * is how kicks are suppressed, and two threads write it for the TX queue: the
 * vCPU thread on the exit path (handle_tx suppresses kicks before it rings
 * the TX bottom half) and the main thread's Virtqueue (around a flush). Both
 * write through this class, so there is one rule: the whole word is stored
 * with Atomics.store (a full fence on x86-64, see the ordering notes above),
 * and no thread keeps a cached copy another could contradict.
 */
export class UsedRingFlags {
  private word: Uint16Array = EMPTY_U16;

  /** Binds to the used ring at `usedGpa`; false (and unbound) when it is not 2-aligned RAM. */
  bind(memory: GuestMemory, usedGpa: number): boolean {
    const b = usedGpa % 2 === 0 ? memory.slice(usedGpa, 2) : null;
    if (b === null || b.byteOffset % 2 !== 0) {
      this.word = EMPTY_U16;
      return false;
    }
    this.word = new Uint16Array(b.buffer, b.byteOffset, 1);
    return true;
  }

  /** Binds to an existing view whose element 0 is used->flags (the Virtqueue's used ring). */
  bindView(used: Uint16Array): void {
    this.word = used;
  }

  unbind(): void {
    this.word = EMPTY_U16;
  }

  get bound(): boolean {
    return this.word.length > 0;
  }

  /** Sets (true) or clears NO_NOTIFY; nothing when unbound. */
  suppressKicks(on: boolean): void {
    if (this.word.length > 0) Atomics.store(this.word, 0, on ? VRING_USED_F_NO_NOTIFY : 0);
  }
}

/**
 * A split virtqueue. Transport side: set `size`, `descGpa`, `availGpa`,
 * `usedGpa`, `eventIdx`, then `activate()`; `reset()` on device reset.
 * Device side: `pop` / `push` / `needsNotification`, and notification
 * suppression with `setNotification` / `enableNotificationAndCheck`.
 *
 * With EVENT_IDX the avail_event index is written only when notifications are
 * enabled (as vhost does), so a device must call enableNotificationAndCheck()
 * before it goes idle on an empty queue; that is also the race-free pattern
 * without EVENT_IDX.
 *
 * One thread owns a Virtqueue: its indices are plain fields.
 */
export class Virtqueue {
  // Configuration, written by the transport before activate().
  size: number;
  descGpa = 0;
  availGpa = 0;
  usedGpa = 0;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx = false;

  /** Next avail ring slot to pop (free-running mod 2^16). */
  lastAvailIdx = 0;
  /** Last avail.idx read from the guest; pop re-reads only when it has caught up. */
  shadowAvailIdx = 0;
  /** Our used.idx (free-running mod 2^16); the guest sees it after flush. */
  usedIdx = 0;
  /** used.idx at the last interrupt we decided to send (EVENT_IDX). */
  signalledUsed = 0;
  signalledUsedValid = false;
  /** Whether the device currently wants kicks (setNotification). */
  notificationEnabled = true;

  broken = false;
  brokenReason = '';
  /** Counts activate() and reset() calls: a device holding popped chains knows they belong to an earlier ring. */
  generation = 0;

  private isReady = false;
  // The size the views were built for: `size` is the transport's register and
  // may be rewritten by a misbehaving driver; the hot paths use this copy.
  private qsize = 0;
  private readonly usedFlags = new UsedRingFlags();
  // Views over guest RAM built by activate(); empty until then.
  private descU32: Uint32Array = EMPTY_U32;
  private descU16: Uint16Array = EMPTY_U16;
  private avail: Uint16Array = EMPTY_U16; // flags, idx, ring[size], used_event
  private usedU16: Uint16Array = EMPTY_U16; // flags, idx, {id,len}[size] as u16s, avail_event
  private usedU32: Uint32Array = EMPTY_U32; // [0] = flags|idx, elem i at 1+2i (id), 2+2i (len)

  constructor(readonly memory: GuestMemory, readonly maxSize = 256) {
    if (!isPow2(maxSize) || maxSize > VIRTQUEUE_MAX_SIZE) {
      throw new RangeError(`virtqueue size ${maxSize} is not a power of two <= ${VIRTQUEUE_MAX_SIZE}`);
    }
    this.size = maxSize;
  }

  get ready(): boolean {
    return this.isReady;
  }

  /**
   * Validates the configuration and maps the rings. False (and `broken`) when
   * the size is not a power of two within maxSize, a ring is misaligned, or a
   * ring is not entirely inside one RAM region.
   */
  activate(): boolean {
    if (this.broken) return false;
    const size = this.size;
    if (!isPow2(size) || size > this.maxSize) return this.fail('queue size is not a power of two within the maximum');
    // Alignment from virtio 1.2 §2.7 (desc 16, avail 2, used 4): it lets the
    // ring fields be typed-array elements, which Atomics needs.
    if (this.descGpa % 16 !== 0 || this.availGpa % 2 !== 0 || this.usedGpa % 4 !== 0) {
      return this.fail('ring address misaligned');
    }
    const desc = this.memory.slice(this.descGpa, size * DESC_SIZE);
    const avail = this.memory.slice(this.availGpa, 6 + 2 * size);
    const used = this.memory.slice(this.usedGpa, 6 + 8 * size);
    if (desc === null || avail === null || used === null) return this.fail('ring outside guest RAM');
    if (desc.byteOffset % 4 !== 0 || avail.byteOffset % 2 !== 0 || used.byteOffset % 4 !== 0) {
      return this.fail('ring misaligned in host memory');
    }
    this.descU32 = new Uint32Array(desc.buffer, desc.byteOffset, size * 4);
    this.descU16 = new Uint16Array(desc.buffer, desc.byteOffset, size * 8);
    this.avail = new Uint16Array(avail.buffer, avail.byteOffset, 3 + size);
    this.usedU16 = new Uint16Array(used.buffer, used.byteOffset, 3 + 4 * size);
    this.usedU32 = new Uint32Array(used.buffer, used.byteOffset, 1 + 2 * size);
    this.usedFlags.bindView(this.usedU16);
    this.qsize = size;
    this.isReady = true;
    this.generation++;
    return true;
  }

  /** Back to the power-on state: not ready, indices zero, not broken. */
  reset(): void {
    this.generation++;
    this.isReady = false;
    this.size = this.maxSize;
    this.qsize = 0;
    this.descGpa = this.availGpa = this.usedGpa = 0;
    this.eventIdx = false;
    this.lastAvailIdx = this.shadowAvailIdx = this.usedIdx = 0;
    this.signalledUsed = 0;
    this.signalledUsedValid = false;
    this.notificationEnabled = true;
    this.usedFlags.unbind();
    this.broken = false;
    this.brokenReason = '';
    this.descU32 = EMPTY_U32;
    this.descU16 = EMPTY_U16;
    this.avail = EMPTY_U16;
    this.usedU16 = EMPTY_U16;
    this.usedU32 = EMPTY_U32;
  }

  /** Marks the queue broken (first reason wins) and returns false, for `return this.fail(...)`. */
  fail(reason: string): false {
    if (!this.broken) {
      this.broken = true;
      this.brokenReason = reason;
    }
    this.isReady = false;
    return false;
  }

  /**
   * Reads avail.idx from the guest into shadowAvailIdx. False (and broken)
   * when the guest moved it more than `size` past lastAvailIdx.
   */
  private refreshAvail(): boolean {
    const idx = Atomics.load(this.avail, 1);
    if (((idx - this.lastAvailIdx) & 0xffff) > this.qsize) return this.fail('avail idx moved by more than the queue size');
    this.shadowAvailIdx = idx;
    return true;
  }

  /** Buffers the guest has made available and we have not popped (re-reads avail.idx). */
  availCount(): number {
    if (!this.isReady || !this.refreshAvail()) return 0;
    return (this.shadowAvailIdx - this.lastAvailIdx) & 0xffff;
  }

  /**
   * Takes the next available chain into `chain`. False when the queue is
   * empty, not ready or broken; a malformed chain breaks the queue (see
   * `broken`/`brokenReason`) and also returns false. Never throws on guest data.
   */
  pop(chain: DescriptorChain): boolean {
    if (!this.isReady) return false;
    if (this.lastAvailIdx === this.shadowAvailIdx) {
      if (!this.refreshAvail() || this.lastAvailIdx === this.shadowAvailIdx) return false;
    }
    const size = this.qsize;
    // A driver has at most `size` buffers outstanding: more popped than used
    // means it offered a head again while the device still holds it (QEMU's
    // "Virtqueue size exceeded").
    if (((this.lastAvailIdx - this.usedIdx) & 0xffff) >= size) return this.fail('more buffers in flight than the queue size (a head offered again while in use)');
    const head = this.avail[2 + (this.lastAvailIdx & (size - 1))];
    if (head >= size) return this.fail('avail ring head index out of range');
    chain.clear();
    chain.head = head;

    const d32 = this.descU32;
    const d16 = this.descU16;
    let i = head;
    // Each direct descriptor is visited at most once in a well-formed chain, so
    // more than `size` steps means a loop.
    for (let steps = 1; ; steps++) {
      if (steps > size) return this.fail('descriptor chain loops or exceeds the queue size');
      const hi = d32[i * 4 + 1];
      const lo = d32[i * 4];
      const len = d32[i * 4 + 2];
      const flags = d16[i * 8 + 6];
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // The indirect descriptor ends the direct chain (NEXT with it is
        // forbidden, §2.7.5.3.1); its WRITE flag is ignored (§2.7.5.3.2).
        if (flags & VIRTQ_DESC_F_NEXT) return this.fail('descriptor has both INDIRECT and NEXT');
        if (!this.walkIndirect(chain, hi, lo, len)) return false;
        break;
      }
      if (!this.addSegment(chain, hi, lo, len, flags)) return false;
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      i = d16[i * 8 + 7];
      if (i >= size) return this.fail('descriptor next index out of range');
    }
    this.lastAvailIdx = (this.lastAvailIdx + 1) & 0xffff;
    return true;
  }

  /** Walks one indirect table; its descriptors go through GuestMemory reads, bounds-checked there too. */
  private walkIndirect(chain: DescriptorChain, hi: number, lo: number, len: number): boolean {
    if (len === 0 || len % DESC_SIZE !== 0) return this.fail('indirect table length is not a non-zero multiple of 16');
    if (hi >= 0x200000) return this.fail('indirect table outside guest RAM');
    const table = hi * 0x100000000 + lo;
    // Its descriptors are read one by one, so the table may cross into an adjacent region.
    if (!this.memory.containsSpan(table, len)) return this.fail('indirect table outside guest RAM');
    const n = len / DESC_SIZE;
    const mem = this.memory;
    let j = 0;
    for (let steps = 1; ; steps++) {
      if (steps > n) return this.fail('indirect descriptor chain loops');
      const at = table + j * DESC_SIZE;
      const dlo = mem.readU32(at);
      const dhi = mem.readU32(at + 4);
      const dlen = mem.readU32(at + 8);
      const dflags = mem.readU16(at + 12);
      if (dflags & VIRTQ_DESC_F_INDIRECT) return this.fail('indirect descriptor inside an indirect table');
      if (!this.addSegment(chain, dhi, dlo, dlen, dflags)) return false;
      if (!(dflags & VIRTQ_DESC_F_NEXT)) return true;
      j = mem.readU16(at + 14);
      if (j >= n) return this.fail('indirect descriptor next index out of range');
    }
  }

  private addSegment(chain: DescriptorChain, hi: number, lo: number, len: number, flags: number): boolean {
    // hi >= 2^21 puts the address beyond 2^53: never RAM, and not a safe integer.
    if (hi >= 0x200000) return this.fail('descriptor address outside guest RAM');
    let gpa = hi * 0x100000000 + lo;
    const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
    // §2.7.4.2: device-readable descriptors come before device-writable ones.
    if (!writable && chain.length !== chain.readableSegments) return this.fail('readable descriptor after a writable one');
    if (len === 0) return this.memory.contains(gpa, 0) ? this.appendSegment(chain, gpa, 0, writable) : this.fail('descriptor buffer outside guest RAM');
    // A buffer that runs from one RAM region into the adjacent one (a guest
    // with more than 2 GiB) becomes one segment per region, as QEMU maps a
    // descriptor across MemoryRegions.
    for (let rest = len; rest > 0; ) {
      const run = this.memory.runAt(gpa, rest);
      if (run <= 0) return this.fail('descriptor buffer outside guest RAM');
      if (!this.appendSegment(chain, gpa, run, writable)) return false;
      gpa += run;
      rest -= run;
    }
    return true;
  }

  private appendSegment(chain: DescriptorChain, gpa: number, len: number, writable: boolean): boolean {
    const n = chain.length;
    if (n >= chain.capacity) return this.fail('descriptor chain has too many segments');
    if (writable) {
      chain.writableBytes += len;
    } else {
      chain.readableBytes += len;
      chain.readableSegments = n + 1;
    }
    chain.gpa[n] = gpa;
    chain.len[n] = len;
    chain.length = n + 1;
    return true;
  }

  /**
   * Gives back the last `count` popped chains (QEMU virtqueue_unpop): the next
   * pop returns them again. Only valid for chains popped and not pushed.
   */
  unpop(count = 1): void {
    this.lastAvailIdx = (this.lastAvailIdx - count) & 0xffff;
  }

  /** Writes used element `offset` past usedIdx without publishing it (QEMU virtqueue_fill). */
  fill(head: number, len: number, offset = 0): void {
    if (!this.isReady) return;
    const slot = (this.usedIdx + offset) & (this.qsize - 1);
    this.usedU32[1 + 2 * slot] = head;
    this.usedU32[2 + 2 * slot] = len;
  }

  /** Publishes `count` filled elements: moves used.idx (QEMU virtqueue_flush). */
  flush(count: number): void {
    if (!this.isReady) return;
    const old = this.usedIdx;
    const next = (old + count) & 0xffff;
    this.usedIdx = next;
    // Release: the element stores above become visible before the index.
    Atomics.store(this.usedU16, 1, next);
    // used.idx just ran past the last signalled value (a 2^16 wrap): the old
    // reference point is meaningless, signal on the next check.
    if (((next - this.signalledUsed) & 0xffff) < ((next - old) & 0xffff)) this.signalledUsedValid = false;
  }

  /** Returns one chain to the guest with `len` bytes written into it. */
  push(head: number, len: number): void {
    this.fill(head, len, 0);
    this.flush(1);
  }

  /**
   * Whether the guest wants an interrupt for what was pushed since the last
   * call that returned true (QEMU virtio_should_notify). Call after push/flush;
   * a true result must be followed by an interrupt.
   */
  needsNotification(): boolean {
    if (!this.isReady) return false;
    if (!this.eventIdx) return (Atomics.load(this.avail, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    const valid = this.signalledUsedValid;
    const old = this.signalledUsed;
    const next = this.usedIdx;
    this.signalledUsedValid = true;
    this.signalledUsed = next;
    // The Atomics.store of used.idx in flush() fenced this load.
    const usedEvent = Atomics.load(this.avail, 2 + this.qsize);
    return !valid || vringNeedEvent(usedEvent, next, old);
  }

  /**
   * Asks the guest to kick (true) or not to bother (false). With EVENT_IDX,
   * enabling writes avail_event = the avail.idx last read ("kick when you
   * publish past what I have seen"); disabling writes nothing, a stale avail_event
   * already suppresses kicks.
   */
  setNotification(enable: boolean): void {
    this.notificationEnabled = enable;
    if (!this.isReady) return;
    if (this.eventIdx) {
      // The last avail.idx read, as vhost and QEMU write: equal to lastAvailIdx on
      // an empty queue; past it when a device left (unpopped) chains it cannot
      // use yet (virtio-net RX waiting for room), so the next publish kicks.
      if (enable) Atomics.store(this.usedU16, 2 + 4 * this.qsize, this.shadowAvailIdx);
    } else {
      this.usedFlags.suppressKicks(!enable);
    }
  }

  /**
   * Re-enables notifications, then re-reads avail.idx: true if buffers are
   * available, so the caller must keep processing (the guest may have added
   * them while notifications were off and will not kick for them).
   */
  enableNotificationAndCheck(): boolean {
    this.setNotification(true);
    if (!this.isReady) return false;
    // setNotification's Atomics.store is the full fence between our store and this load.
    if (!this.refreshAvail()) return false;
    return this.shadowAvailIdx !== this.lastAvailIdx;
  }
}

const EMPTY_U16 = new Uint16Array(0);
const EMPTY_U32 = new Uint32Array(0);

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
