// struct iovec arrays in native memory, filled from descriptor-chain segments
// so readv/writev move packets straight between the TAP and guest RAM. Host
// addresses are kept as Numbers (user-space addresses are below 2^47, exact in
// a double), so building an iovec allocates nothing: no BigInt per segment.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { NativeBuffer } from '../../sys/libc.js';

/** Linux UIO_MAXIOV: the most segments one readv/writev takes. */
export const IOV_MAX = 1024;
const IOVEC_SIZE = 16;
const TWO32 = 0x100000000;

export class Iovecs {
  readonly buf: NativeBuffer;
  /** Entries filled since reset(). */
  count = 0;
  /** Sum of their lengths. */
  bytes = 0;
  private readonly dv: DataView;
  private readonly regionGpa: Float64Array;
  private readonly regionEnd: Float64Array;
  private readonly regionHost: Float64Array;

  constructor(memory: GuestMemory, readonly capacity = IOV_MAX) {
    this.buf = new NativeBuffer(capacity * IOVEC_SIZE);
    this.dv = this.buf.dv;
    const rs = memory.regions;
    this.regionGpa = Float64Array.from(rs, (r) => r.gpa);
    this.regionEnd = Float64Array.from(rs, (r) => r.gpa + r.bytes.byteLength);
    this.regionHost = Float64Array.from(rs, (r) => Number(r.hostAddress));
  }

  get address(): bigint {
    return this.buf.address;
  }

  reset(): void {
    this.count = 0;
    this.bytes = 0;
  }

  /**
   * Appends guest range [gpa, gpa+len). False when the array is full or the
   * range is not inside one RAM region (Virtqueue.pop has checked it already).
   */
  add(gpa: number, len: number): boolean {
    if (this.count >= this.capacity) return false;
    const n = this.regionGpa.length;
    for (let i = 0; i < n; i++) {
      if (gpa >= this.regionGpa[i] && gpa + len <= this.regionEnd[i]) {
        return this.addHost(this.regionHost[i] + (gpa - this.regionGpa[i]), len);
      }
    }
    return false;
  }

  /** Appends a host range (a bounce buffer). */
  addHost(host: number, len: number): boolean {
    if (this.count >= this.capacity) return false;
    const off = this.count * IOVEC_SIZE;
    const dv = this.dv;
    dv.setUint32(off, host % TWO32, true);
    dv.setUint32(off + 4, Math.floor(host / TWO32), true);
    dv.setUint32(off + 8, len, true);
    dv.setUint32(off + 12, 0, true);
    this.count++;
    this.bytes += len;
    return true;
  }
}
