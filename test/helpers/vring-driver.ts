// A guest-side split-ring driver for tests: lays out rings in fake guest RAM,
// writes descriptors, publishes avail entries and reads the used ring, the way
// Linux's virtio_ring.c does it (minus the free-list bookkeeping: tests pick
// descriptor indices explicitly or take them in order).
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import {
  Virtqueue,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  vringNeedEvent,
} from '../../src/devices/virtio/virtqueue.js';

export interface Buf {
  gpa: number;
  len: number;
  /** Device-writable (VIRTQ_DESC_F_WRITE). */
  write?: boolean;
}

export class VringDriver {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  /** The driver's avail.idx (published by kick()). */
  availIdx = 0;
  /** Entries added to the avail ring but not yet published. */
  private pending = 0;
  /** Next descriptor index handed out by addChain. */
  nextDesc = 0;
  /** Used entries consumed by takeUsed(). */
  lastUsed = 0;

  /** Rings packed at `base`: desc table, avail ring, used ring (4-aligned). */
  constructor(readonly mem: GuestMemory, readonly size: number, base = 0x1000) {
    this.desc = base;
    this.avail = base + 16 * size;
    this.used = (this.avail + 6 + 2 * size + 3) & ~3;
  }

  /** A queue configured for this ring and activated. */
  queue(opts: { eventIdx?: boolean; maxSize?: number } = {}): Virtqueue {
    const q = new Virtqueue(this.mem, opts.maxSize ?? this.size);
    this.configure(q, opts.eventIdx ?? false);
    return q;
  }

  configure(q: Virtqueue, eventIdx = false): void {
    q.size = this.size;
    q.descGpa = this.desc;
    q.availGpa = this.avail;
    q.usedGpa = this.used;
    q.eventIdx = eventIdx;
    if (!q.activate()) throw new Error(`activate failed: ${q.brokenReason}`);
  }

  writeDesc(i: number, addr: number | bigint, len: number, flags: number, next = 0): void {
    this.writeDescAt(this.desc + 16 * i, addr, len, flags, next);
  }

  /** Writes one descriptor at any GPA (indirect tables). */
  writeDescAt(at: number, addr: number | bigint, len: number, flags: number, next = 0): void {
    this.mem.writeU64(at, BigInt(addr));
    this.mem.writeU32(at + 8, len);
    this.mem.writeU16(at + 12, flags);
    this.mem.writeU16(at + 14, next);
  }

  /** Puts `head` into the next avail slot (not yet visible: call kick()). */
  addHead(head: number): void {
    const slot = (this.availIdx + this.pending) & (this.size - 1);
    this.mem.writeU16(this.avail + 4 + 2 * slot, head);
    this.pending++;
  }

  /** Writes `bufs` as a linked chain of descriptors from nextDesc and adds its head. */
  addChain(bufs: Buf[]): number {
    const head = this.nextDesc;
    for (let k = 0; k < bufs.length; k++) {
      const i = (head + k) % this.size;
      const last = k === bufs.length - 1;
      const flags = (bufs[k].write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
      this.writeDesc(i, bufs[k].gpa, bufs[k].len, flags, last ? 0 : (i + 1) % this.size);
    }
    this.nextDesc = (head + bufs.length) % this.size;
    this.addHead(head);
    return head;
  }

  /** Writes `bufs` as an indirect table at `table` and one INDIRECT descriptor pointing at it. */
  addIndirect(table: number, bufs: Buf[]): number {
    for (let k = 0; k < bufs.length; k++) {
      const last = k === bufs.length - 1;
      const flags = (bufs[k].write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
      this.writeDescAt(table + 16 * k, bufs[k].gpa, bufs[k].len, flags, last ? 0 : k + 1);
    }
    const head = this.nextDesc;
    this.writeDesc(head, table, 16 * bufs.length, VIRTQ_DESC_F_INDIRECT);
    this.nextDesc = (head + 1) % this.size;
    this.addHead(head);
    return head;
  }

  /** Publishes pending entries (avail.idx += n); returns whether the device asked for a kick. */
  kick(): boolean {
    const old = this.availIdx;
    this.availIdx = (old + this.pending) & 0xffff;
    this.pending = 0;
    this.mem.writeU16(this.avail + 2, this.availIdx);
    return this.deviceWantsKick(old, this.availIdx);
  }

  /** Linux virtqueue_kick_prepare: avail_event with EVENT_IDX, else the NO_NOTIFY flag. */
  deviceWantsKick(old: number, now: number, eventIdx = this.eventIdxMode): boolean {
    if (eventIdx) return vringNeedEvent(this.availEvent(), now, old);
    return (this.usedFlags() & 1) === 0;
  }

  /** Set by tests that negotiated EVENT_IDX, so kick() reads avail_event. */
  eventIdxMode = false;

  setAvailIdx(v: number): void {
    this.availIdx = v & 0xffff;
    this.mem.writeU16(this.avail + 2, this.availIdx);
  }

  setAvailFlags(v: number): void {
    this.mem.writeU16(this.avail, v);
  }

  setUsedEvent(v: number): void {
    this.mem.writeU16(this.avail + 4 + 2 * this.size, v & 0xffff);
  }

  usedIdx(): number {
    return this.mem.readU16(this.used + 2);
  }

  usedFlags(): number {
    return this.mem.readU16(this.used);
  }

  availEvent(): number {
    return this.mem.readU16(this.used + 4 + 8 * this.size);
  }

  usedElem(n: number): { id: number; len: number } {
    const slot = n & (this.size - 1);
    return { id: this.mem.readU32(this.used + 4 + 8 * slot), len: this.mem.readU32(this.used + 8 + 8 * slot) };
  }

  /** Used elements published since the last call. */
  takeUsed(): { id: number; len: number }[] {
    const out = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      out.push(this.usedElem(this.lastUsed));
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }
}
