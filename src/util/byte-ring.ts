// A single-producer, single-consumer byte ring in a SharedArrayBuffer, for
// streams that cross between the vCPU worker and the main thread (serial
// output and input). Indices only grow (mod 2^32); Atomics order the data
// writes before the index that publishes them.

const HEAD = 0; // next byte the producer writes (count of bytes ever written)
const TAIL = 1; // next byte the consumer reads

export class ByteRing {
  readonly sab: SharedArrayBuffer;
  private readonly idx: Int32Array;
  private readonly data: Uint8Array;
  private readonly mask: number;

  /** `capacity` must be a power of two. Pass an existing buffer to attach to a ring made elsewhere. */
  constructor(capacityOrSab: number | SharedArrayBuffer) {
    this.sab = typeof capacityOrSab === 'number' ? new SharedArrayBuffer(8 + capacityOrSab) : capacityOrSab;
    const capacity = this.sab.byteLength - 8;
    if (capacity <= 0 || (capacity & (capacity - 1)) !== 0) throw new Error('ByteRing capacity must be a power of two');
    this.idx = new Int32Array(this.sab, 0, 2);
    this.data = new Uint8Array(this.sab, 8, capacity);
    this.mask = capacity - 1;
  }

  get capacity(): number {
    return this.mask + 1;
  }

  /** Bytes waiting to be read. */
  get length(): number {
    return (Atomics.load(this.idx, HEAD) - Atomics.load(this.idx, TAIL)) >>> 0;
  }

  /** Producer: appends one byte; false when full. */
  push(byte: number): boolean {
    const head = Atomics.load(this.idx, HEAD);
    if (((head - Atomics.load(this.idx, TAIL)) >>> 0) > this.mask) return false;
    this.data[head & this.mask] = byte;
    Atomics.store(this.idx, HEAD, (head + 1) | 0);
    return true;
  }

  /** Producer: appends as many of `bytes` as fit; returns how many. */
  pushAll(bytes: Uint8Array): number {
    let n = 0;
    while (n < bytes.length && this.push(bytes[n])) n++;
    return n;
  }

  /** Consumer: the next byte, or -1 when empty. */
  shift(): number {
    const tail = Atomics.load(this.idx, TAIL);
    if (tail === Atomics.load(this.idx, HEAD)) return -1;
    const b = this.data[tail & this.mask];
    Atomics.store(this.idx, TAIL, (tail + 1) | 0);
    Atomics.notify(this.idx, TAIL);
    return b;
  }

  /** Consumer: the next byte without taking it, or -1. */
  peek(): number {
    const tail = Atomics.load(this.idx, TAIL);
    if (tail === Atomics.load(this.idx, HEAD)) return -1;
    return this.data[tail & this.mask];
  }

  /** Consumer: takes everything waiting, as a new Buffer. */
  drain(): Buffer {
    const tail = Atomics.load(this.idx, TAIL);
    const head = Atomics.load(this.idx, HEAD);
    const n = (head - tail) >>> 0;
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.data[(tail + i) & this.mask];
    Atomics.store(this.idx, TAIL, head);
    Atomics.notify(this.idx, TAIL);
    return out;
  }

  /** Producer: blocks (worker threads only) until there is room or `timeoutMs` passes. */
  waitForRoom(timeoutMs: number): void {
    const tail = Atomics.load(this.idx, TAIL);
    if (((Atomics.load(this.idx, HEAD) - tail) >>> 0) <= this.mask) return;
    Atomics.wait(this.idx, TAIL, tail, timeoutMs);
  }
}
