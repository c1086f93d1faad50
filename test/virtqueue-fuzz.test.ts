// Property tests: random (mostly hostile) descriptor tables and rings never
// make the virtqueue throw or read outside guest RAM, and a reset queue works
// again; random well-formed chains pop back exactly as the driver wrote them.
import test from 'ava';
import fc from 'fast-check';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { DescriptorChain, Virtqueue, VIRTQ_DESC_F_INDIRECT } from '../src/devices/virtio/virtqueue.js';
import { VringDriver, type Buf } from './helpers/vring-driver.js';
import { fuzzRuns } from './helpers/fuzz-runs.js';

// Two RAM regions with a hole between them, so "in range of the buffer" and
// "in RAM" differ.
const A = 0x0;
const A_END = 0x4000;
const B = 0x8000;
const B_END = 0xc000;

/** GuestMemory that counts reads the queue makes outside RAM (it must check first). */
class CheckedMemory extends GuestMemory {
  armed = false;
  violations: string[] = [];

  private check(what: string, gpa: number, len: number): void {
    if (this.armed && !this.contains(gpa, len)) this.violations.push(`${what}(${gpa}, ${len})`);
  }
  override readU8(gpa: number): number {
    this.check('readU8', gpa, 1);
    return super.readU8(gpa);
  }
  override readU16(gpa: number): number {
    this.check('readU16', gpa, 2);
    return super.readU16(gpa);
  }
  override readU32(gpa: number): number {
    this.check('readU32', gpa, 4);
    return super.readU32(gpa);
  }
  override readU64(gpa: number): bigint {
    this.check('readU64', gpa, 8);
    return super.readU64(gpa);
  }
  override readU64Number(gpa: number): number {
    this.check('readU64Number', gpa, 8);
    return super.readU64Number(gpa);
  }
  override read(gpa: number, len: number): Uint8Array | null {
    this.check('read', gpa, len);
    return super.read(gpa, len);
  }
  // slice() is how the queue maps its rings: a null answer is the bounds
  // check doing its job, so it is not counted.

  wipe(): void {
    for (const r of this.regions) r.bytes.fill(0);
  }
}

function newMemory(): CheckedMemory {
  return new CheckedMemory([
    { gpa: A, bytes: new Uint8Array(A_END - A), hostAddress: 0n },
    { gpa: B, bytes: new Uint8Array(B_END - B), hostAddress: 0n },
  ]);
}

// Fixed, valid ring placement for the common case (size <= 16).
const DESC = 0x100;
const AVAIL = 0x400;
const USED = 0x800;
// Where indirect tables are likely to be.
const TABLES = [0x1000, 0x9000, 0x3ff0, 0xbfe0];

const u64 = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: B_END + 0x100 }).map(BigInt) },
  { weight: 3, arbitrary: fc.constantFrom(...[...TABLES, A_END - 16, A_END, B - 16, B, B_END - 16, B_END].map(BigInt)) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) },
);
const u32len = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0, max: 0x100 }) },
  { weight: 3, arbitrary: fc.constantFrom(0, 16, 32, 48, 64, 128, 24, 0x4000, 0xffffffff) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) },
);
// NEXT/WRITE mostly, INDIRECT sometimes, any bits rarely.
const flags = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 3 }) },
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 7 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
);
const rawDesc = (maxNext: number) =>
  fc.record({
    addr: u64,
    len: u32len,
    flags,
    next: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: maxNext }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
  });

const ringGpa = (valid: number) =>
  fc.oneof({ weight: 12, arbitrary: fc.constant(valid) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: B_END + 0x100 }) }, { weight: 1, arbitrary: fc.maxSafeNat() });

const hostileCase = fc
  .constantFrom(1, 2, 4, 8, 16)
  .chain((size) =>
    fc.record({
      size: fc.constant(size),
      descGpa: ringGpa(DESC),
      availGpa: ringGpa(AVAIL),
      usedGpa: ringGpa(USED),
      eventIdx: fc.boolean(),
      descs: fc.array(rawDesc(size + 1), { minLength: size, maxLength: size }),
      tables: fc.array(fc.array(rawDesc(9), { maxLength: 8 }), { minLength: TABLES.length, maxLength: TABLES.length }),
      ring: fc.array(fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: size }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }), {
        minLength: size,
        maxLength: size,
      }),
      start: fc.oneof(fc.constant(0), fc.constant(0xfffe), fc.integer({ min: 0, max: 0xffff })),
      ahead: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: size }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
      availFlags: fc.integer({ min: 0, max: 0xffff }),
      usedEvent: fc.integer({ min: 0, max: 0xffff }),
      ops: fc.array(fc.constantFrom('pop', 'pop', 'pop', 'enable', 'disable', 'count', 'unpop'), { maxLength: 24 }),
    }),
  );

function writeRawDesc(mem: GuestMemory, at: number, d: { addr: bigint; len: number; flags: number; next: number }): void {
  mem.writeU64(at, d.addr);
  mem.writeU32(at + 8, d.len);
  mem.writeU16(at + 12, d.flags);
  mem.writeU16(at + 14, d.next);
}

test('hostile rings: never throws, never reads outside RAM, segments are RAM, reset recovers', (t) => {
  const mem = newMemory();
  const chain = new DescriptorChain();
  const q = new Virtqueue(mem, 16);
  const started = Date.now();
  let pops = 0;
  let broken = 0;
  let runs = 0;

  fc.assert(
    fc.property(hostileCase, (c) => {
      runs++;
      mem.wipe();
      mem.violations.length = 0;
      q.reset();
      // The guest's side, written without checks (writes outside RAM just fail).
      for (let i = 0; i < c.size; i++) writeRawDesc(mem, c.descGpa + 16 * i, c.descs[i]);
      c.tables.forEach((tbl, k) => tbl.forEach((d, i) => writeRawDesc(mem, TABLES[k] + 16 * i, d)));
      mem.writeU16(c.availGpa, c.availFlags);
      mem.writeU16(c.availGpa + 2, (c.start + c.ahead) & 0xffff);
      for (let i = 0; i < c.size; i++) mem.writeU16(c.availGpa + 4 + 2 * i, c.ring[i]);
      mem.writeU16(c.availGpa + 4 + 2 * c.size, c.usedEvent);

      mem.armed = true;
      q.size = c.size;
      q.descGpa = c.descGpa;
      q.availGpa = c.availGpa;
      q.usedGpa = c.usedGpa;
      q.eventIdx = c.eventIdx;
      const active = q.activate();
      q.lastAvailIdx = q.shadowAvailIdx = c.start;
      q.usedIdx = c.start;
      let popped = 0;
      for (const op of c.ops) {
        if (op === 'pop') {
          if (q.pop(chain)) {
            pops++;
            popped++;
            if (!active) throw new Error('popped from a queue that did not activate');
            if (chain.head >= c.size) throw new Error(`head ${chain.head} >= size`);
            if (chain.length > chain.capacity) throw new Error('chain over capacity');
            let rb = 0;
            let wb = 0;
            for (let i = 0; i < chain.length; i++) {
              if (!mem.contains(chain.gpa[i], chain.len[i])) throw new Error(`segment ${chain.gpa[i]}+${chain.len[i]} not RAM`);
              if (i >= chain.readableSegments) wb += chain.len[i];
              else rb += chain.len[i];
            }
            if (rb !== chain.readableBytes || wb !== chain.writableBytes) throw new Error('byte counts');
            q.push(chain.head, chain.writableBytes > 0xffffffff ? 0xffffffff : chain.writableBytes);
            q.needsNotification();
          }
        } else if (op === 'enable') {
          q.enableNotificationAndCheck();
        } else if (op === 'disable') {
          q.setNotification(false);
        } else if (op === 'count') {
          const n = q.availCount();
          if (n < 0 || n > c.size) throw new Error(`availCount ${n}`);
        } else if (op === 'unpop' && popped > 0) {
          q.unpop();
          popped--;
        }
      }
      if (q.broken) {
        broken++;
        if (q.pop(chain)) throw new Error('a broken queue popped');
        if (q.brokenReason === '') throw new Error('broken without a reason');
      }
      mem.armed = false;
      if (mem.violations.length > 0) throw new Error(`reads outside RAM: ${mem.violations.slice(0, 3).join(', ')}`);

      // Reset, proper setup, one clean chain: it must pop.
      q.reset();
      mem.wipe();
      const drv = new VringDriver(mem, c.size, DESC);
      drv.configure(q, c.eventIdx);
      const head = drv.addChain([
        { gpa: 0x2000, len: 64 },
        { gpa: B + 0x100, len: 128, write: true },
      ].slice(0, Math.min(2, c.size)));
      drv.kick();
      if (!q.pop(chain) || chain.head !== head || chain.gpa[0] !== 0x2000 || chain.len[0] !== 64) {
        throw new Error(`clean chain after reset did not pop: ${q.brokenReason}`);
      }
      return true;
    }),
    { numRuns: fuzzRuns(20_000) },
  );
  const ms = Date.now() - started;
  t.log(`${runs} cases, ${pops} chains popped, ${broken} queues broken, ${ms} ms`);
  t.true(runs >= fuzzRuns(20_000));
  t.true(pops > 1000, 'the generator reaches valid chains too');
  t.true(broken > 1000, 'and malformed ones');
});

// A random well-formed workload: chains of 1..6 segments, direct or indirect,
// readable first; the queue must give back exactly what was written, in order,
// across index wrap-around.
const segment = fc.record({
  gpa: fc.oneof(fc.integer({ min: 0x2000, max: A_END - 0x200 }), fc.integer({ min: B, max: B_END - 0x200 })),
  len: fc.integer({ min: 0, max: 0x200 }),
});
const goodChain = fc.record({
  readable: fc.array(segment, { maxLength: 3 }),
  writable: fc.array(segment, { maxLength: 3 }),
  indirect: fc.boolean(),
}).filter((c) => c.readable.length + c.writable.length > 0);

test('well-formed random chains pop exactly as written', (t) => {
  const mem = newMemory();
  const chain = new DescriptorChain();
  fc.assert(
    fc.property(fc.array(fc.array(goodChain, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 12 }), fc.integer({ min: 0, max: 0xffff }), (batches, start) => {
      mem.wipe();
      const size = 32;
      const drv = new VringDriver(mem, size, DESC);
      const q = drv.queue({ eventIdx: true });
      q.lastAvailIdx = q.shadowAvailIdx = q.usedIdx = start;
      drv.setAvailIdx(start);
      drv.lastUsed = start;
      for (const batch of batches) {
        drv.nextDesc = 0;
        const expected: { head: number; bufs: Buf[] }[] = [];
        batch.forEach((c, k) => {
          const bufs: Buf[] = [...c.readable, ...c.writable.map((s) => ({ ...s, write: true }))];
          // Direct chains use at most 6 descriptors: 3 of them fit in 32 without reuse.
          const head = c.indirect ? drv.addIndirect(0x1000 + k * 0x100, bufs) : drv.addChain(bufs);
          expected.push({ head, bufs });
        });
        drv.kick();
        for (const e of expected) {
          if (!q.pop(chain)) throw new Error(`pop failed: ${q.brokenReason}`);
          if (chain.head !== e.head || chain.length !== e.bufs.length) throw new Error('wrong chain');
          e.bufs.forEach((b, i) => {
            if (chain.gpa[i] !== b.gpa || chain.len[i] !== b.len || (i >= chain.readableSegments) !== (b.write === true)) throw new Error(`segment ${i} differs`);
          });
          q.push(chain.head, 1);
        }
        if (q.pop(chain)) throw new Error('popped more than was added');
        if (drv.takeUsed().length !== batch.length) throw new Error('used count');
      }
      return true;
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('indirect descriptor is never followed into a second level', (t) => {
  // Deterministic companion to the property: a table whose entries all carry INDIRECT.
  const mem = newMemory();
  const drv = new VringDriver(mem, 4, DESC);
  const q = drv.queue();
  for (let i = 0; i < 4; i++) drv.writeDescAt(0x1000 + 16 * i, 0x1000, 64, VIRTQ_DESC_F_INDIRECT);
  drv.writeDesc(0, 0x1000, 64, VIRTQ_DESC_F_INDIRECT);
  drv.addHead(0);
  drv.kick();
  t.false(q.pop(new DescriptorChain()));
  t.regex(q.brokenReason, /inside an indirect/);
});
