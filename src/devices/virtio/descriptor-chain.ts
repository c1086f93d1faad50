// A popped descriptor chain (virtio 1.2 §2.7.5) and byte-stream access to it.
//
// `Virtqueue.pop` fills a `DescriptorChain` with the chain's buffers as
// scatter-gather segments, device-readable ones first (§2.7.4.2 forbids a
// readable descriptor after a writable one). Every segment was checked to lie
// inside one RAM region, so the readers and writers below never leave RAM.
//
// A device sees a chain as two byte streams: the readable one (the driver's
// request) and the writable one (room for the reply). `ChainReader` and
// `ChainWriter` address those streams by offset, across segment boundaries,
// in the manner of rust-vmm virtio-queue's Reader/Writer. They are
// preallocated and rebound per chain, so the data path allocates nothing.
import type { GuestMemory } from '../../memory/guest-memory.js';

/**
 * One popped element: the head index and its buffers as scatter-gather
 * segments, readable ones first. Preallocated and refilled by every pop, so a
 * device keeps one (or a few, for parked elements) and never allocates.
 */
export class DescriptorChain {
  static readonly MAX_SEGMENTS = 1024;

  /** Head descriptor index, the id to hand back in push(). */
  head = 0;
  /** Number of valid segments. */
  length = 0;
  /** Segments [0, readableSegments) are device-readable, the rest device-writable. */
  readableSegments = 0;
  readableBytes = 0;
  writableBytes = 0;
  /** Guest physical address of each segment (checked to be RAM). */
  readonly gpa: Float64Array;
  readonly len: Uint32Array;

  constructor(readonly capacity = DescriptorChain.MAX_SEGMENTS) {
    this.gpa = new Float64Array(capacity);
    this.len = new Uint32Array(capacity);
  }

  get writableSegments(): number {
    return this.length - this.readableSegments;
  }

  clear(): void {
    this.head = 0;
    this.length = 0;
    this.readableSegments = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
  }
}

/** The byte at `offset` of segments [from, to) of `c` taken as one stream, or -1 past their end. */
function byteInSegments(memory: GuestMemory, c: DescriptorChain, from: number, to: number, offset: number): number {
  for (let s = from; s < to; s++) {
    if (offset < c.len[s]) return memory.readU8(c.gpa[s] + offset);
    offset -= c.len[s];
  }
  return -1;
}

/** The device-readable bytes of a chain, addressed as one stream. */
export class ChainReader {
  private chain: DescriptorChain | null = null;

  constructor(private readonly memory: GuestMemory) {}

  /** Reads from `chain` until the next bind. */
  bind(chain: DescriptorChain): this {
    this.chain = chain;
    return this;
  }

  /** The byte at `offset` of the readable stream, or -1 past its end. */
  byteAt(offset: number): number {
    const c = this.chain;
    return c === null ? -1 : byteInSegments(this.memory, c, 0, c.readableSegments, offset);
  }

  /** Copies the first `dst.length` readable bytes into `dst`; returns the bytes copied. */
  copyTo(dst: Uint8Array): number {
    const c = this.chain;
    if (c === null) return 0;
    let off = 0;
    for (let s = 0; s < c.readableSegments && off < dst.length; s++) {
      const take = Math.min(c.len[s], dst.length - off);
      const src = this.memory.slice(c.gpa[s], take);
      if (src !== null) dst.set(src, off);
      off += take;
    }
    return off;
  }
}

/** The device-writable bytes of a chain (or of several, for mergeable RX buffers), addressed as one stream. */
export class ChainWriter {
  private chain: DescriptorChain | null = null;

  constructor(private readonly memory: GuestMemory) {}

  bind(chain: DescriptorChain): this {
    this.chain = chain;
    return this;
  }

  /** Byte at `offset` of the writable stream, as the device wrote it (to inspect a received frame); -1 past the end. */
  byteAt(offset: number): number {
    const c = this.chain;
    return c === null ? -1 : byteInSegments(this.memory, c, c.readableSegments, c.length, offset);
  }

  /** Writes one byte at `offset` of the writable stream; false past its end. */
  writeU8(offset: number, value: number): boolean {
    const c = this.chain;
    if (c === null) return false;
    for (let s = c.readableSegments; s < c.length; s++) {
      if (offset < c.len[s]) return this.memory.writeU8(c.gpa[s] + offset, value);
      offset -= c.len[s];
    }
    return false;
  }

  /** Writes a little-endian u16 at `offset`; the two bytes may fall in different segments. */
  writeU16(offset: number, value: number): boolean {
    const lo = this.writeU8(offset, value & 0xff);
    return this.writeU8(offset + 1, (value >>> 8) & 0xff) && lo;
  }
}

/**
 * Copies `src` into the writable streams of `chains[0..count)`, filling each
 * chain before the next (a mergeable RX frame spread over several buffers).
 * Returns the bytes copied: less than `src.length` when the room ran out.
 */
export function copyToChains(memory: GuestMemory, chains: readonly DescriptorChain[], count: number, src: Uint8Array): number {
  const len = src.length;
  let off = 0;
  for (let k = 0; k < count && off < len; k++) {
    const c = chains[k];
    for (let s = c.readableSegments; s < c.length && off < len; s++) {
      const take = Math.min(c.len[s], len - off);
      const dst = memory.slice(c.gpa[s], take);
      if (dst !== null) dst.set(src.subarray(off, off + take));
      off += take;
    }
  }
  return off;
}
