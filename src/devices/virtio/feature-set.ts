// A virtio feature set (virtio 1.2 §2.2): 64 bits held as two 32-bit words,
// the way the transport registers and the shared state carry them. A Number
// loses bits above 52 and a BigInt allocates on every operation, so neither
// is used for a set; bit tests and masks here are word operations only.

/** Plain words of a feature set: what survives a postMessage (a class instance loses its methods). */
export interface FeatureWords {
  lo: number;
  hi: number;
}

/** Anything that can answer "is bit N set" (a FeatureSet, the transport's shared state). */
export interface FeatureBits {
  has(bit: number): boolean;
}

export class FeatureSet implements FeatureWords, FeatureBits {
  /** Bits 0-31, unsigned. */
  lo: number;
  /** Bits 32-63, unsigned. */
  hi: number;

  constructor(lo = 0, hi = 0) {
    this.lo = lo >>> 0;
    this.hi = hi >>> 0;
  }

  /** The set holding exactly `bits` (each 0-63; others are a programming error). */
  static of(...bits: number[]): FeatureSet {
    const f = new FeatureSet();
    for (const b of bits) f.add(b);
    return f;
  }

  /** From plain words (e.g. received from the other thread). */
  static fromWords(w: FeatureWords): FeatureSet {
    return new FeatureSet(w.lo, w.hi);
  }

  /**
   * Setup-time conversion for callers that still hold a BigInt or a Number
   * (a Number is exact only up to bit 52, so such a caller cannot name more).
   */
  static from(f: FeatureSet | FeatureWords | bigint | number): FeatureSet {
    if (typeof f === 'bigint') return new FeatureSet(Number(f & 0xffffffffn), Number((f >> 32n) & 0xffffffffn));
    if (typeof f === 'number') {
      if (!Number.isSafeInteger(f) || f < 0) throw new RangeError(`feature set ${f} is not a non-negative safe integer`);
      return new FeatureSet(f % 0x100000000, Math.floor(f / 0x100000000));
    }
    return new FeatureSet(f.lo, f.hi);
  }

  /** Whether bit `bit` (0-63) is set; false outside that range. */
  has(bit: number): boolean {
    if (bit >= 0 && bit < 32) return (this.lo & (1 << bit)) !== 0;
    if (bit >= 32 && bit < 64) return (this.hi & (1 << (bit - 32))) !== 0;
    return false;
  }

  /** Sets bit `bit` in place; returns this. */
  add(bit: number): this {
    if (!Number.isInteger(bit) || bit < 0 || bit > 63) throw new RangeError(`feature bit ${bit} is outside 0-63`);
    if (bit < 32) this.lo = (this.lo | (1 << bit)) >>> 0;
    else this.hi = (this.hi | (1 << (bit - 32))) >>> 0;
    return this;
  }

  /** Overwrites both words in place (reused scratch sets on the exit path); returns this. */
  set(lo: number, hi: number): this {
    this.lo = lo >>> 0;
    this.hi = hi >>> 0;
    return this;
  }

  /** A new set: the bits in both. */
  and(o: FeatureWords): FeatureSet {
    return new FeatureSet(this.lo & o.lo, this.hi & o.hi);
  }

  /** A new set: the bits in either. */
  or(o: FeatureWords): FeatureSet {
    return new FeatureSet(this.lo | o.lo, this.hi | o.hi);
  }

  /** A new set: the bits of this not in `o`. */
  without(o: FeatureWords): FeatureSet {
    return new FeatureSet(this.lo & ~o.lo, this.hi & ~o.hi);
  }

  /** Whether every bit of this is in `o`. */
  subsetOf(o: FeatureWords): boolean {
    return (this.lo & ~o.lo) === 0 && (this.hi & ~o.hi) === 0;
  }

  equals(o: FeatureWords): boolean {
    return this.lo === o.lo >>> 0 && this.hi === o.hi >>> 0;
  }

  isEmpty(): boolean {
    return this.lo === 0 && this.hi === 0;
  }

  /** Plain words, for postMessage. */
  toWords(): FeatureWords {
    return { lo: this.lo, hi: this.hi };
  }

  /** The set bits, low to high. */
  bits(): number[] {
    const out: number[] = [];
    for (let b = 0; b < 64; b++) if (this.has(b)) out.push(b);
    return out;
  }

  /** Hex, for diagnostics and test messages: 0xHHHHHHHH_LLLLLLLL. */
  toString(): string {
    return `0x${this.hi.toString(16).padStart(8, '0')}_${this.lo.toString(16).padStart(8, '0')}`;
  }
}

/** The empty set; never mutate it. */
export const NO_FEATURES: Readonly<FeatureSet> = Object.freeze(new FeatureSet());
