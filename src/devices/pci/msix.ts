// MSI-X (PCI Local Bus 3.0 §6.8.2): the capability in config space, the
// table and the pending-bit array (PBA) in a memory BAR.
//
// The table, PBA, enable and function-mask bits live in shared memory
// (`MsixShared`, part of a device's transport state): the guest programs them
// on the vCPU thread (config-space and BAR exits), and the main thread reads
// them to deliver interrupts. Pending bits change only under the device's
// interrupt lock, so "masked → set pending" (main thread) and "unmask →
// deliver pending" (vCPU thread) never lose an interrupt between them.
import type { PciConfigSpace } from './config-space.js';

export const PCI_CAP_ID_MSIX = 0x11;
/** "No vector" in virtio's vector registers. */
export const MSIX_NO_VECTOR = 0xffff;

// Message control (capability offset 2).
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff;
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
// Table entry layout (16 bytes).
export const PCI_MSIX_ENTRY_SIZE = 16;
export const PCI_MSIX_ENTRY_VECTOR_CTRL = 12;
export const PCI_MSIX_ENTRY_CTRL_MASKBIT = 1;
/** Capability length in config space. */
export const PCI_CAP_MSIX_SIZEOF = 12;

const CTRL = 0;
const CTRL_ENABLE = 1;
const CTRL_MASKALL = 2;
const MSIX_HEADER_WORDS = 4;

/**
 * Where an MSI goes: `VmHandle.signalMsi` (returns < 0 on failure, ignored),
 * or with irqfd the eventfd of `vector`, whose KVM route carries the message.
 */
export interface MsiSink {
  signalMsi(addressLo: number, addressHi: number, data: number, vector: number): number;
}

/** The lock MsixShared's pending bits change under. */
export interface Lock {
  lock(): void;
  unlock(): void;
}

/** Words of shared state for `vectors` table entries. */
export function msixSharedWords(vectors: number): number {
  return MSIX_HEADER_WORDS + 4 * vectors + Math.ceil(vectors / 64) * 2;
}

/** MSI-X state in a SharedArrayBuffer, at word `base`. */
export class MsixShared {
  readonly u32: Uint32Array;
  /** Word index of the first table entry and of the PBA. */
  readonly tableBase: number;
  readonly pbaBase: number;
  readonly pbaWords: number;

  constructor(sab: SharedArrayBuffer, private readonly base: number, readonly vectors: number, readonly irqLock: Lock) {
    this.u32 = new Uint32Array(sab);
    this.tableBase = base + MSIX_HEADER_WORDS;
    this.pbaBase = this.tableBase + 4 * vectors;
    this.pbaWords = Math.ceil(vectors / 64) * 2;
  }

  get enabled(): boolean { return (Atomics.load(this.u32, this.base + CTRL) & CTRL_ENABLE) !== 0; }
  get functionMasked(): boolean { return (Atomics.load(this.u32, this.base + CTRL) & CTRL_MASKALL) !== 0; }
  /** @internal Set from the capability's message control (vCPU side). */
  setControl(enable: boolean, maskAll: boolean): void {
    Atomics.store(this.u32, this.base + CTRL, (enable ? CTRL_ENABLE : 0) | (maskAll ? CTRL_MASKALL : 0));
  }

  /** Table entry word (0 addr lo, 1 addr hi, 2 data, 3 vector control). */
  entryWord(vector: number, word: number): number { return this.u32[this.tableBase + vector * 4 + word]; }
  setEntryWord(vector: number, word: number, v: number): void { this.u32[this.tableBase + vector * 4 + word] = v >>> 0; }
  entryMasked(vector: number): boolean { return (this.u32[this.tableBase + vector * 4 + 3] & PCI_MSIX_ENTRY_CTRL_MASKBIT) !== 0; }

  pending(vector: number): boolean { return (Atomics.load(this.u32, this.pbaBase + (vector >>> 5)) & (1 << (vector & 31))) !== 0; }
  pbaWord(i: number): number { return i < this.pbaWords ? Atomics.load(this.u32, this.pbaBase + i) : 0; }

  /** Power-on table: every entry masked, address/data 0, nothing pending, disabled. */
  resetAll(): void {
    for (let v = 0; v < this.vectors; v++) {
      for (let w = 0; w < 3; w++) this.setEntryWord(v, w, 0);
      this.setEntryWord(v, 3, PCI_MSIX_ENTRY_CTRL_MASKBIT);
    }
    this.irqLock.lock();
    this.clearPendingLocked();
    this.irqLock.unlock();
    this.setControl(false, false);
  }

  /** @internal Caller holds the lock. */
  clearPendingLocked(): void {
    for (let i = 0; i < this.pbaWords; i++) Atomics.store(this.u32, this.pbaBase + i, 0);
  }

  /**
   * Raises `vector`: 1 = delivered, 0 = left pending (masked), -1 = nothing
   * (MSI-X disabled or vector out of range).
   */
  notify(vector: number, sink: MsiSink): number {
    if (vector >= this.vectors || !this.enabled) return -1;
    this.irqLock.lock();
    try {
      if (this.functionMasked || this.entryMasked(vector)) {
        Atomics.or(this.u32, this.pbaBase + (vector >>> 5), 1 << (vector & 31));
        return 0;
      }
      const e = this.tableBase + vector * 4;
      sink.signalMsi(this.u32[e], this.u32[e + 1], this.u32[e + 2], vector);
      return 1;
    } finally {
      this.irqLock.unlock();
    }
  }

  /**
   * Delivers every pending vector that is no longer masked (after the guest
   * cleared an entry's mask bit or the function mask). Returns how many.
   */
  deliverUnmasked(sink: MsiSink): number {
    if (!this.enabled) return 0;
    let n = 0;
    this.irqLock.lock();
    try {
      if (this.functionMasked) return 0;
      for (let i = 0; i < this.pbaWords; i++) {
        let bits = Atomics.load(this.u32, this.pbaBase + i);
        while (bits !== 0) {
          const b = 31 - Math.clz32(bits);
          bits &= ~(1 << b);
          const vector = i * 32 + b;
          if (vector >= this.vectors || this.entryMasked(vector)) continue;
          Atomics.and(this.u32, this.pbaBase + i, ~(1 << b));
          const e = this.tableBase + vector * 4;
          sink.signalMsi(this.u32[e], this.u32[e + 1], this.u32[e + 2], vector);
          n++;
        }
      }
    } finally {
      this.irqLock.unlock();
    }
    return n;
  }
}

/**
 * The vCPU side of MSI-X for one PCI function: builds the capability, keeps the
 * message-control bits in step with the shared state, and serves the table
 * and PBA through BAR accesses (`tableRead/Write`, `pbaRead`).
 * Table accesses must be 4 bytes and aligned (8-byte ones arrive split);
 * others are ignored and read as 0, counted in `badAccesses`.
 */
export class Msix {
  readonly capOffset: number;
  badAccesses = 0;

  constructor(
    private readonly config: PciConfigSpace,
    readonly shared: MsixShared,
    private readonly sink: MsiSink,
    bar: number,
    readonly tableOffset: number,
    readonly pbaOffset: number,
    /** Called after the guest changed an entry's address or data (irqfd routes follow the table). */
    private readonly onMessageChanged: () => void = () => {},
  ) {
    const n = shared.vectors;
    if (n < 1 || n > 2048) throw new RangeError(`MSI-X vector count ${n} out of 1..2048`);
    if ((tableOffset | pbaOffset) & 7) throw new RangeError('MSI-X table and PBA must be 8-byte aligned');
    this.capOffset = config.addCapability(PCI_CAP_ID_MSIX, PCI_CAP_MSIX_SIZEOF);
    const c = this.capOffset;
    config.setWord(c + 2, n - 1);
    config.setDword(c + 4, tableOffset | bar);
    config.setDword(c + 8, pbaOffset | bar);
    // Only the enable and function-mask bits are writable.
    config.setWriteMask(c + 3, 0xc0);
    shared.resetAll();
  }

  /** Bytes the table and the PBA span from their offsets. */
  get tableBytes(): number { return this.shared.vectors * PCI_MSIX_ENTRY_SIZE; }
  get pbaBytes(): number { return this.shared.pbaWords * 4; }

  /** After any config-space write that touched the capability. */
  controlWritten(): void {
    const ctl = this.config.getWord(this.capOffset + 2);
    const enable = (ctl & PCI_MSIX_FLAGS_ENABLE) !== 0;
    const maskAll = (ctl & PCI_MSIX_FLAGS_MASKALL) !== 0;
    const was = this.shared.enabled && !this.shared.functionMasked;
    this.shared.setControl(enable, maskAll);
    if (!was && enable && !maskAll) this.shared.deliverUnmasked(this.sink);
  }

  /** True when [offset, offset+size) touches the capability. */
  touches(offset: number, size: number): boolean {
    return offset < this.capOffset + PCI_CAP_MSIX_SIZEOF && offset + size > this.capOffset;
  }

  get enabled(): boolean { return this.shared.enabled; }

  tableRead(off: number, size: number): number {
    if (size !== 4 || (off & 3) !== 0 || off >= this.tableBytes) {
      this.badAccesses++;
      return 0;
    }
    return this.shared.entryWord(off >>> 4, (off >>> 2) & 3);
  }

  tableWrite(off: number, size: number, value: number): void {
    if (size !== 4 || (off & 3) !== 0 || off >= this.tableBytes) {
      this.badAccesses++;
      return;
    }
    const vector = off >>> 4;
    const word = (off >>> 2) & 3;
    if (word === 3) {
      const wasMasked = this.shared.entryMasked(vector);
      // Only the mask bit is defined; the rest reads as written-zero.
      this.shared.setEntryWord(vector, 3, value & PCI_MSIX_ENTRY_CTRL_MASKBIT);
      if (wasMasked && (value & PCI_MSIX_ENTRY_CTRL_MASKBIT) === 0) this.shared.deliverUnmasked(this.sink);
    } else {
      const old = this.shared.entryWord(vector, word);
      this.shared.setEntryWord(vector, word, value);
      if (old !== value >>> 0) this.onMessageChanged();
    }
  }

  pbaRead(off: number, size: number): number {
    if ((size !== 4 && size !== 8) || (off & 3) !== 0 || off >= this.pbaBytes) {
      this.badAccesses++;
      return 0;
    }
    return this.shared.pbaWord(off >>> 2);
  }

  /** PBA writes are ignored (read-only), per spec. */
  pbaWrite(_off: number, _size: number, _value: number): void {
    this.badAccesses++;
  }
}
