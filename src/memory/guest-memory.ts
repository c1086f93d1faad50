// Guest physical memory: a list of RAM regions, each a view of host memory.
// Every access from device code goes through here and is bounds-checked, so a
// guest address that points outside RAM yields `null` or `false`, never a read
// of host memory or an exception on the exit path.

/** One contiguous block of guest RAM. */
export interface RamRegion {
  /** Guest physical address of the first byte. */
  readonly gpa: number;
  /** Bytes of host memory backing it (shared across threads when mmap'd). */
  readonly bytes: Uint8Array;
  /** Host virtual address of `bytes[0]`, for system calls (0n for fake memory). */
  readonly hostAddress: bigint;
}

export class GuestMemory {
  readonly regions: readonly RamRegion[];
  private readonly views: DataView[];

  constructor(regions: RamRegion[]) {
    this.regions = [...regions].sort((a, b) => a.gpa - b.gpa);
    this.views = this.regions.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
  }

  /** Fake guest memory for tests: `size` bytes of RAM at GPA 0. */
  static fake(size: number): GuestMemory {
    return new GuestMemory([{ gpa: 0, bytes: new Uint8Array(size), hostAddress: 0n }]);
  }

  /** Total RAM bytes. */
  get size(): number {
    let n = 0;
    for (const r of this.regions) n += r.bytes.byteLength;
    return n;
  }

  /** Index of the region holding [gpa, gpa+len), or -1. Lengths of 0 are valid at any in-RAM address. */
  private find(gpa: number, len: number): number {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(len) || len < 0) return -1;
    const regions = this.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.bytes.byteLength) return i;
    }
    return -1;
  }

  /**
   * How many bytes of [gpa, gpa+len) lie in the region that holds `gpa` (at
   * most `len`), or -1 when `gpa` is not RAM. tsvisor maps RAM in regions of at
   * most 2 GiB, so a guest buffer may run on into the next, adjacent region.
   */
  runAt(gpa: number, len: number): number {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(len) || len < 0) return -1;
    for (const r of this.regions) {
      const end = r.gpa + r.bytes.byteLength;
      if (gpa >= r.gpa && gpa < end) return Math.min(len, end - gpa);
    }
    return -1;
  }

  /** True when [gpa, gpa+len) is all guest RAM, in one region or across adjacent ones. */
  containsSpan(gpa: number, len: number): boolean {
    if (len === 0) return this.contains(gpa, 0);
    while (len > 0) {
      const run = this.runAt(gpa, len);
      if (run <= 0) return false;
      gpa += run;
      len -= run;
    }
    return true;
  }

  /** True when [gpa, gpa+len) is entirely guest RAM within one region. */
  contains(gpa: number, len: number): boolean {
    return this.find(gpa, len) >= 0;
  }

  /** A view of [gpa, gpa+len) without copying, or null if it is not all RAM. */
  slice(gpa: number, len: number): Uint8Array | null {
    const i = this.find(gpa, len);
    if (i < 0) return null;
    const r = this.regions[i];
    return r.bytes.subarray(gpa - r.gpa, gpa - r.gpa + len);
  }

  /** Copies `data` into guest RAM at `gpa`; false if it does not fit in RAM. */
  write(gpa: number, data: Uint8Array): boolean {
    const dst = this.slice(gpa, data.byteLength);
    if (dst === null) return false;
    dst.set(data);
    return true;
  }

  /** Copies [gpa, gpa+len) out of guest RAM, or null. */
  read(gpa: number, len: number): Uint8Array | null {
    const src = this.slice(gpa, len);
    return src === null ? null : src.slice();
  }

  // Little-endian scalar accessors. Reads return -1 when out of RAM (values are
  // unsigned, so -1 is never a real value); writes return false.
  readU8(gpa: number): number {
    const i = this.find(gpa, 1);
    return i < 0 ? -1 : this.views[i].getUint8(gpa - this.regions[i].gpa);
  }
  readU16(gpa: number): number {
    const i = this.find(gpa, 2);
    return i < 0 ? -1 : this.views[i].getUint16(gpa - this.regions[i].gpa, true);
  }
  readU32(gpa: number): number {
    const i = this.find(gpa, 4);
    return i < 0 ? -1 : this.views[i].getUint32(gpa - this.regions[i].gpa, true);
  }
  /** 64-bit read as a BigInt, or -1n. */
  readU64(gpa: number): bigint {
    const i = this.find(gpa, 8);
    return i < 0 ? -1n : this.views[i].getBigUint64(gpa - this.regions[i].gpa, true);
  }
  /** 64-bit read as a Number, or -1 when out of RAM or beyond 2^53 (not a usable guest address). */
  readU64Number(gpa: number): number {
    const i = this.find(gpa, 8);
    if (i < 0) return -1;
    const dv = this.views[i];
    const off = gpa - this.regions[i].gpa;
    const hi = dv.getUint32(off + 4, true);
    if (hi >= 0x200000) return -1;
    return hi * 0x100000000 + dv.getUint32(off, true);
  }
  writeU8(gpa: number, v: number): boolean {
    const i = this.find(gpa, 1);
    if (i < 0) return false;
    this.views[i].setUint8(gpa - this.regions[i].gpa, v);
    return true;
  }
  writeU16(gpa: number, v: number): boolean {
    const i = this.find(gpa, 2);
    if (i < 0) return false;
    this.views[i].setUint16(gpa - this.regions[i].gpa, v, true);
    return true;
  }
  writeU32(gpa: number, v: number): boolean {
    const i = this.find(gpa, 4);
    if (i < 0) return false;
    this.views[i].setUint32(gpa - this.regions[i].gpa, v >>> 0, true);
    return true;
  }
  writeU64(gpa: number, v: bigint): boolean {
    const i = this.find(gpa, 8);
    if (i < 0) return false;
    this.views[i].setBigUint64(gpa - this.regions[i].gpa, v, true);
    return true;
  }
}
