import test from 'ava';
import { Worker } from 'node:worker_threads';
import * as libc from '../src/sys/libc.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import {
  ChainReader,
  ChainWriter,
  DescriptorChain,
  UsedRingFlags,
  Virtqueue,
  copyToChains,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_USED_F_NO_NOTIFY,
  legacyVringLayout,
  legacyVringSize,
  vringNeedEvent,
} from '../src/devices/virtio/virtqueue.js';
import { VringDriver } from './helpers/vring-driver.js';

const RAM = 1 << 20;

function setup(size = 16, opts: { eventIdx?: boolean } = {}) {
  const mem = GuestMemory.fake(RAM);
  const drv = new VringDriver(mem, size);
  drv.eventIdxMode = opts.eventIdx ?? false;
  const q = drv.queue(opts);
  const chain = new DescriptorChain();
  return { mem, drv, q, chain };
}

function segments(c: DescriptorChain) {
  const out = [];
  for (let i = 0; i < c.length; i++) out.push({ gpa: c.gpa[i], len: c.len[i], write: i >= c.readableSegments });
  return out;
}

test('legacy layout matches vring_init / vring_size', (t) => {
  const l = legacyVringLayout(1, 256);
  t.deepEqual(l, { desc: 4096, avail: 4096 + 4096, used: 12288 });
  t.is(legacyVringSize(256), 10246); // Linux vring_size(256, 4096)
  t.is(legacyVringSize(1024), 28678);
  // A PFN beyond 2^20 (GPA beyond 4 GiB) stays exact.
  t.is(legacyVringLayout(0x12345678, 8).desc, 0x12345678 * 4096);
});

test('direct chain: readable then writable segments, push publishes used elem and idx', (t) => {
  const { drv, q, chain } = setup();
  const head = drv.addChain([
    { gpa: 0x10000, len: 12 },
    { gpa: 0x20000, len: 1500 },
    { gpa: 0x30000, len: 2048, write: true },
  ]);
  t.is(q.availCount(), 0);
  drv.kick();
  t.is(q.availCount(), 1);
  t.true(q.pop(chain));
  t.is(chain.head, head);
  t.deepEqual(segments(chain), [
    { gpa: 0x10000, len: 12, write: false },
    { gpa: 0x20000, len: 1500, write: false },
    { gpa: 0x30000, len: 2048, write: true },
  ]);
  t.is(chain.readableSegments, 2);
  t.is(chain.writableSegments, 1);
  t.is(chain.readableBytes, 1512);
  t.is(chain.writableBytes, 2048);
  t.false(q.pop(chain), 'queue drained');
  t.is(q.availCount(), 0);
  q.push(head, 100);
  t.is(drv.usedIdx(), 1);
  t.deepEqual(drv.takeUsed(), [{ id: head, len: 100 }]);
  t.false(q.broken);
});

test('several chains pop in avail order; fill + one flush publishes them at once', (t) => {
  const { drv, q, chain } = setup(8);
  const heads = [
    drv.addChain([{ gpa: 0x10000, len: 10 }]),
    drv.addChain([{ gpa: 0x11000, len: 20 }, { gpa: 0x12000, len: 30, write: true }]),
    drv.addChain([{ gpa: 0x13000, len: 40, write: true }]),
  ];
  drv.kick();
  t.is(q.availCount(), 3);
  const got: number[] = [];
  while (q.pop(chain)) got.push(chain.head);
  t.deepEqual(got, heads);
  got.forEach((head, k) => q.fill(head, k + 1, k));
  q.flush(3);
  t.is(drv.usedIdx(), 3);
  t.deepEqual(drv.takeUsed(), [
    { id: heads[0], len: 1 },
    { id: heads[1], len: 2 },
    { id: heads[2], len: 3 },
  ]);
});

test('fill/flush: elements are invisible until flush', (t) => {
  const { drv, q, chain } = setup(4);
  drv.addChain([{ gpa: 0x10000, len: 10 }]);
  drv.addChain([{ gpa: 0x11000, len: 10 }]);
  drv.kick();
  t.true(q.pop(chain));
  q.fill(chain.head, 5, 0);
  t.true(q.pop(chain));
  q.fill(chain.head, 6, 1);
  t.is(drv.usedIdx(), 0);
  q.flush(2);
  t.deepEqual(drv.takeUsed(), [{ id: 0, len: 5 }, { id: 1, len: 6 }]);
});

test('indirect chain: segments come from the table; WRITE on the indirect descriptor is ignored', (t) => {
  const { drv, q, chain } = setup();
  const head = drv.addIndirect(0x8000, [
    { gpa: 0x10000, len: 10 },
    { gpa: 0x11000, len: 20 },
    { gpa: 0x12000, len: 30, write: true },
    { gpa: 0x13000, len: 40, write: true },
  ]);
  drv.writeDesc(head, 0x8000, 64, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE);
  drv.kick();
  t.true(q.pop(chain));
  t.is(chain.head, head);
  t.deepEqual(segments(chain), [
    { gpa: 0x10000, len: 10, write: false },
    { gpa: 0x11000, len: 20, write: false },
    { gpa: 0x12000, len: 30, write: true },
    { gpa: 0x13000, len: 40, write: true },
  ]);
  t.is(chain.readableBytes, 30);
  t.is(chain.writableBytes, 70);
});

test('indirect descriptor may end a direct chain', (t) => {
  const { drv, q, chain } = setup();
  drv.writeDescAt(0x8000, 0x20000, 8, VIRTQ_DESC_F_WRITE);
  drv.writeDesc(0, 0x10000, 4, VIRTQ_DESC_F_NEXT, 1);
  drv.writeDesc(1, 0x8000, 16, VIRTQ_DESC_F_INDIRECT);
  drv.addHead(0);
  drv.kick();
  t.true(q.pop(chain));
  t.deepEqual(segments(chain), [
    { gpa: 0x10000, len: 4, write: false },
    { gpa: 0x20000, len: 8, write: true },
  ]);
});

test('indices wrap at 65535 -> 0 (fields preset)', (t) => {
  const { drv, q, chain } = setup(4);
  q.lastAvailIdx = q.shadowAvailIdx = 65534;
  q.usedIdx = 65534;
  drv.availIdx = 65534;
  drv.lastUsed = 65534;
  for (let k = 0; k < 4; k++) drv.addChain([{ gpa: 0x10000 + k * 0x100, len: 8 }]);
  drv.kick();
  t.is(drv.availIdx, 2);
  t.is(q.availCount(), 4);
  let n = 0;
  while (q.pop(chain)) {
    q.push(chain.head, n++);
  }
  t.is(n, 4);
  t.is(q.lastAvailIdx, 2);
  t.is(drv.usedIdx(), 2);
  t.deepEqual(drv.takeUsed().map((e) => e.len), [0, 1, 2, 3]);
  t.false(q.broken);
});

test('indices wrap at 65535 -> 0 (driven through 70 000 buffers)', (t) => {
  const { drv, q, chain } = setup(8);
  let total = 0;
  while (total < 70_000) {
    for (let k = 0; k < 5; k++) drv.addChain([{ gpa: 0x10000 + k * 64, len: 64, write: true }]);
    drv.kick();
    while (q.pop(chain)) q.push(chain.head, 64);
    total += drv.takeUsed().length;
    drv.nextDesc = 0;
  }
  t.is(total, 70_000);
  t.is(q.lastAvailIdx, 70_000 & 0xffff);
  t.is(drv.usedIdx(), 70_000 & 0xffff);
  t.false(q.broken);
});

test('vring_need_event arithmetic', (t) => {
  // event, new, old
  t.true(vringNeedEvent(0, 1, 0), 'event at the first entry published');
  t.false(vringNeedEvent(1, 1, 0), 'event one past what was published');
  t.true(vringNeedEvent(5, 10, 3), 'event inside [old, new)');
  t.true(vringNeedEvent(3, 10, 3), 'event at old');
  t.true(vringNeedEvent(9, 10, 3), 'event at new - 1');
  t.false(vringNeedEvent(10, 10, 3), 'event at new');
  t.false(vringNeedEvent(2, 10, 3), 'event before old');
  t.false(vringNeedEvent(5, 5, 5), 'nothing published');
  t.true(vringNeedEvent(65535, 0, 65535), 'wrap: event at 65535');
  t.true(vringNeedEvent(65534, 1, 65533), 'wrap: window spans 0');
  t.true(vringNeedEvent(0, 1, 65535), 'wrap: event at 0');
  t.false(vringNeedEvent(1, 1, 65535), 'wrap: event at new');
  t.false(vringNeedEvent(0, 0, 65535), 'wrap: event at new (0)');
});

test('without EVENT_IDX: VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts', (t) => {
  const { drv, q, chain } = setup();
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  drv.kick();
  q.pop(chain);
  q.push(chain.head, 0);
  t.true(q.needsNotification());
  drv.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
  q.pop(chain);
  q.push(chain.head, 0);
  t.false(q.needsNotification());
});

test('EVENT_IDX: interrupt only when used_event is crossed', (t) => {
  const { drv, q, chain } = setup(16, { eventIdx: true });
  for (let k = 0; k < 8; k++) drv.addChain([{ gpa: 0x10000, len: 8 }]);
  drv.kick();
  const one = () => {
    t.true(q.pop(chain));
    q.push(chain.head, 0);
  };
  // First check always signals (no reference point yet).
  drv.setUsedEvent(100);
  one();
  t.true(q.needsNotification(), 'first notification is unconditional');
  // Guest wants an interrupt after used entry 2 is published (used_event = 2).
  drv.setUsedEvent(2);
  one(); // used idx 2: entry 1 published
  t.false(q.needsNotification());
  one(); // used idx 3: entry 2 published
  t.true(q.needsNotification());
  one(); // used idx 4, used_event still 2
  t.false(q.needsNotification());
  // Batching: two pushes then one check covering the event.
  drv.setUsedEvent(5);
  one();
  one(); // used idx 6: entries 4, 5
  t.true(q.needsNotification());
  // NO_INTERRUPT is ignored with EVENT_IDX.
  drv.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
  drv.setUsedEvent(6);
  one();
  t.true(q.needsNotification());
});

test('EVENT_IDX: signalledUsedValid is dropped when used idx laps signalledUsed', (t) => {
  const { drv, q } = setup(16, { eventIdx: true });
  drv.setUsedEvent(0xffff); // an event that the wrapped window will not cover
  q.signalledUsedValid = true;
  q.signalledUsed = 10;
  q.usedIdx = 9;
  q.flush(2); // 9 -> 11 passes 10
  t.false(q.signalledUsedValid);
  t.true(q.needsNotification());
});

test('setNotification without EVENT_IDX toggles VRING_USED_F_NO_NOTIFY', (t) => {
  const { drv, q } = setup();
  t.is(drv.usedFlags() & VRING_USED_F_NO_NOTIFY, 0);
  q.setNotification(false);
  t.is(drv.usedFlags() & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  t.false(drv.kick(), 'the driver sees it need not kick');
  q.setNotification(true);
  t.is(drv.usedFlags() & VRING_USED_F_NO_NOTIFY, 0);
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  t.true(drv.kick());
});

test('setNotification with EVENT_IDX writes avail_event = lastAvailIdx only when enabling', (t) => {
  const { drv, q, chain } = setup(16, { eventIdx: true });
  for (let k = 0; k < 3; k++) drv.addChain([{ gpa: 0x10000, len: 8 }]);
  t.true(drv.kick(), 'avail_event 0: first kick wanted');
  q.setNotification(false);
  while (q.pop(chain)) q.push(chain.head, 0);
  t.is(drv.availEvent(), 0, 'disabling writes nothing');
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  t.false(drv.kick(), 'stale avail_event suppresses kicks');
  t.true(q.enableNotificationAndCheck(), 'the buffer added while disabled is found');
  t.is(drv.availEvent(), 3);
  t.true(q.pop(chain));
  t.false(q.enableNotificationAndCheck());
  t.is(drv.availEvent(), 4);
  t.is(drv.usedFlags(), 0, 'flags untouched with EVENT_IDX');
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  t.true(drv.kick(), 'armed again');
});

test('enableNotificationAndCheck closes the race without EVENT_IDX', (t) => {
  const { drv, q, chain } = setup();
  q.setNotification(false);
  t.false(q.enableNotificationAndCheck());
  q.setNotification(false);
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  drv.kick(); // NO_NOTIFY set: the guest does not kick
  t.true(q.enableNotificationAndCheck());
  t.true(q.pop(chain));
  t.false(q.enableNotificationAndCheck());
});

test('unpop rewinds: the same chain pops again', (t) => {
  const { drv, q, chain } = setup();
  const a = drv.addChain([{ gpa: 0x10000, len: 8 }, { gpa: 0x11000, len: 9, write: true }]);
  const b = drv.addChain([{ gpa: 0x12000, len: 10 }]);
  drv.kick();
  t.true(q.pop(chain));
  const parked = segments(chain);
  q.unpop();
  t.true(q.pop(chain));
  t.is(chain.head, a);
  t.deepEqual(segments(chain), parked);
  t.is(chain.readableBytes, 8);
  t.true(q.pop(chain));
  t.is(chain.head, b);
  t.false(q.pop(chain));
});

test('queue over SharedArrayBuffer-backed RAM (the real case: shared with vCPU threads)', (t) => {
  const bytes = new Uint8Array(new SharedArrayBuffer(RAM));
  const mem = new GuestMemory([{ gpa: 0, bytes, hostAddress: 0n }]);
  const drv = new VringDriver(mem, 32);
  const q = drv.queue();
  const chain = new DescriptorChain();
  drv.addChain([{ gpa: 0x10000, len: 8 }]);
  drv.kick();
  t.true(q.pop(chain));
  q.push(chain.head, 8);
  t.is(drv.usedIdx(), 1);
});

test('RAM with two regions: chains may use both, not the hole', (t) => {
  const mem = new GuestMemory([
    { gpa: 0, bytes: new Uint8Array(0x10000), hostAddress: 0n },
    { gpa: 0x100000, bytes: new Uint8Array(0x10000), hostAddress: 0n },
  ]);
  const drv = new VringDriver(mem, 8);
  const q = drv.queue();
  const chain = new DescriptorChain();
  drv.addChain([{ gpa: 0x8000, len: 0x100 }, { gpa: 0x100000, len: 0x10000, write: true }]);
  drv.kick();
  t.true(q.pop(chain));
  drv.addChain([{ gpa: 0xff00, len: 0x200 }]); // straddles the end of region 0
  drv.kick();
  t.false(q.pop(chain));
  t.true(q.broken);
});

test('RAM in adjacent regions (tsvisor maps RAM in 2 GiB regions): a buffer across the boundary is one segment per region, readable and writable whole', (t) => {
  const mem = new GuestMemory([
    { gpa: 0, bytes: new Uint8Array(0x10000), hostAddress: 0n },
    { gpa: 0x10000, bytes: new Uint8Array(0x10000), hostAddress: 0n },
    { gpa: 0x100000, bytes: new Uint8Array(0x1000), hostAddress: 0n },
  ]);
  const drv = new VringDriver(mem, 8);
  const q = drv.queue();
  const chain = new DescriptorChain();
  mem.write(0xfffe, Uint8Array.from([1, 2]));
  mem.write(0x10000, Uint8Array.from([3, 4]));
  drv.addChain([{ gpa: 0xfffe, len: 4 }, { gpa: 0xff00, len: 0x200, write: true }]);
  drv.kick();
  t.true(q.pop(chain));
  t.deepEqual(segments(chain), [
    { gpa: 0xfffe, len: 2, write: false },
    { gpa: 0x10000, len: 2, write: false },
    { gpa: 0xff00, len: 0x100, write: true },
    { gpa: 0x10000, len: 0x100, write: true },
  ]);
  t.is(chain.readableBytes, 4);
  t.is(chain.writableBytes, 0x200);
  const r = new ChainReader(mem).bind(chain);
  const buf = new Uint8Array(4);
  t.is(r.copyTo(buf), 4);
  t.deepEqual([...buf], [1, 2, 3, 4]);
  const w = new ChainWriter(mem).bind(chain);
  t.true(w.writeU16(0xff, 0xbbaa), 'a u16 across the region boundary');
  t.deepEqual([mem.readU8(0xffff), mem.readU8(0x10000)], [0xaa, 0xbb]);
  q.push(chain.head, 0x200);

  // An indirect table across the boundary is read descriptor by descriptor.
  drv.addIndirect(0xfff0, [{ gpa: 0x8000, len: 8 }, { gpa: 0x9000, len: 8, write: true }]);
  drv.kick();
  t.true(q.pop(chain));
  t.deepEqual(segments(chain), [{ gpa: 0x8000, len: 8, write: false }, { gpa: 0x9000, len: 8, write: true }]);
  q.push(chain.head, 0);

  // Running on past the last adjacent region into a gap is still refused.
  drv.addChain([{ gpa: 0x1ff00, len: 0x200 }]);
  drv.kick();
  t.false(q.pop(chain));
  t.regex(q.brokenReason, /outside guest RAM/);
});

test('more buffers in flight than the queue size break the queue (QEMU: "Virtqueue size exceeded")', (t) => {
  const { drv, q, chain } = setup(4);
  // The device holds all four buffers (RX waiting for frames, say) ...
  for (let i = 0; i < 4; i++) drv.addChain([{ gpa: 0x10000 + 0x1000 * i, len: 64, write: true }]);
  drv.kick();
  const held: number[] = [];
  while (q.pop(chain)) held.push(chain.head);
  t.is(held.length, 4);
  t.false(q.broken);
  // ... and the driver offers one of them again: avail.idx is within a queue size of what was popped, but a fifth buffer cannot exist.
  drv.addHead(held[0]);
  drv.kick();
  t.false(q.pop(chain));
  t.true(q.broken);
  t.regex(q.brokenReason, /more buffers in flight than the queue size/);
});

test('a driver that keeps the queue full runs through 2^16 buffers without reaching the in-flight bound', (t) => {
  const { drv, q, chain } = setup(4);
  for (let i = 0; i < 4; i++) drv.addChain([{ gpa: 0x10000 + 0x1000 * i, len: 64, write: true }]);
  drv.kick();
  for (let n = 0; n < 70_000; n++) {
    t.true(q.pop(chain), `pop ${n}`);
    q.push(chain.head, 1);
    drv.takeUsed();
    drv.addHead(chain.head);
    drv.kick();
    if (q.broken) break;
  }
  t.false(q.broken, q.brokenReason);
});

test('activate refuses bad configurations', (t) => {
  const mem = GuestMemory.fake(0x10000);
  const cases: [string, (q: Virtqueue) => void][] = [
    ['size not a power of two', (q) => (q.size = 24)],
    ['size above maximum', (q) => (q.size = 64)],
    ['desc misaligned', (q) => (q.descGpa = 0x1008)],
    ['avail misaligned', (q) => (q.availGpa = 0x2001)],
    ['used misaligned', (q) => (q.usedGpa = 0x3002)],
    ['used outside RAM', (q) => (q.usedGpa = 0xfff0)],
    ['desc beyond 2^53', (q) => (q.descGpa = 2 ** 60)],
  ];
  for (const [name, edit] of cases) {
    const q = new Virtqueue(mem, 32);
    q.descGpa = 0x1000;
    q.availGpa = 0x2000;
    q.usedGpa = 0x3000;
    edit(q);
    t.false(q.activate(), name);
    t.true(q.broken, name);
    t.false(q.ready, name);
    q.reset();
    t.false(q.broken);
  }
  t.throws(() => new Virtqueue(mem, 100), { instanceOf: RangeError });
  t.throws(() => new Virtqueue(mem, 65536), { instanceOf: RangeError });
});

// Each malformed ring is rejected: pop returns false, the queue is broken with
// a reason, and nothing throws.
const malformed: [string, (d: VringDriver) => void, RegExp][] = [
  ['buffer address outside RAM', (d) => d.addChain([{ gpa: RAM + 0x1000, len: 16 }]), /outside guest RAM/],
  [
    'buffer address beyond 2^53',
    (d) => {
      d.writeDesc(0, 0xffff_ffff_0000_0000n, 16, 0);
      d.addHead(0);
    },
    /outside guest RAM/,
  ],
  ['length runs off the end of RAM', (d) => d.addChain([{ gpa: RAM - 8, len: 16 }]), /outside guest RAM/],
  ['length 0xffffffff', (d) => d.addChain([{ gpa: 0x10000, len: 0xffffffff }]), /outside guest RAM/],
  [
    'descriptor loop',
    (d) => {
      d.writeDesc(0, 0x10000, 8, VIRTQ_DESC_F_NEXT, 1);
      d.writeDesc(1, 0x10000, 8, VIRTQ_DESC_F_NEXT, 0);
      d.addHead(0);
    },
    /loops/,
  ],
  [
    'self loop',
    (d) => {
      d.writeDesc(3, 0x10000, 8, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
      d.addHead(3);
    },
    /loops/,
  ],
  [
    'writable before readable',
    (d) => d.addChain([{ gpa: 0x10000, len: 8, write: true }, { gpa: 0x11000, len: 8 }]),
    /readable descriptor after a writable/,
  ],
  [
    'writable before readable inside an indirect table',
    (d) => d.addIndirect(0x8000, [{ gpa: 0x10000, len: 8, write: true }, { gpa: 0x11000, len: 8 }]),
    /readable descriptor after a writable/,
  ],
  [
    'indirect inside indirect',
    (d) => {
      d.addIndirect(0x8000, [{ gpa: 0x10000, len: 8 }, { gpa: 0x9000, len: 16 }]);
      d.writeDescAt(0x8010, 0x9000, 16, VIRTQ_DESC_F_INDIRECT);
      d.writeDescAt(0x9000, 0x10000, 8, 0);
    },
    /indirect descriptor inside an indirect table/,
  ],
  [
    'INDIRECT with NEXT',
    (d) => {
      d.writeDescAt(0x8000, 0x10000, 8, 0);
      d.writeDesc(0, 0x8000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
      d.writeDesc(1, 0x10000, 8, 0);
      d.addHead(0);
    },
    /INDIRECT and NEXT/,
  ],
  [
    'indirect table length not a multiple of 16',
    (d) => {
      d.writeDescAt(0x8000, 0x10000, 8, 0);
      d.writeDesc(0, 0x8000, 24, VIRTQ_DESC_F_INDIRECT);
      d.addHead(0);
    },
    /multiple of 16/,
  ],
  [
    'indirect table of length 0',
    (d) => {
      d.writeDesc(0, 0x8000, 0, VIRTQ_DESC_F_INDIRECT);
      d.addHead(0);
    },
    /multiple of 16/,
  ],
  [
    'indirect table outside RAM',
    (d) => {
      d.writeDesc(0, RAM - 16, 32, VIRTQ_DESC_F_INDIRECT);
      d.addHead(0);
    },
    /indirect table outside guest RAM/,
  ],
  [
    'indirect next index beyond the table',
    (d) => {
      d.writeDescAt(0x8000, 0x10000, 8, VIRTQ_DESC_F_NEXT, 2);
      d.writeDescAt(0x8010, 0x10000, 8, 0);
      d.writeDesc(0, 0x8000, 32, VIRTQ_DESC_F_INDIRECT);
      d.addHead(0);
    },
    /next index out of range/,
  ],
  [
    'indirect loop',
    (d) => {
      d.writeDescAt(0x8000, 0x10000, 8, VIRTQ_DESC_F_NEXT, 1);
      d.writeDescAt(0x8010, 0x10000, 8, VIRTQ_DESC_F_NEXT, 0);
      d.writeDesc(0, 0x8000, 32, VIRTQ_DESC_F_INDIRECT);
      d.addHead(0);
    },
    /loops/,
  ],
  ['avail idx jumps by more than the queue size', (d) => d.setAvailIdx(17), /avail idx moved/],
  ['avail idx jumps backwards', (d) => d.setAvailIdx(0xffff), /avail idx moved/],
  ['head index >= size', (d) => d.addHead(16), /head index out of range/],
  [
    'next index >= size',
    (d) => {
      d.writeDesc(0, 0x10000, 8, VIRTQ_DESC_F_NEXT, 16);
      d.addHead(0);
    },
    /next index out of range/,
  ],
];

for (const [name, build, reason] of malformed) {
  test(`malformed: ${name}`, (t) => {
    const { drv, q, chain } = setup(16);
    build(drv);
    drv.kick();
    t.notThrows(() => {
      t.false(q.pop(chain));
    });
    t.true(q.broken);
    t.regex(q.brokenReason, reason);
    t.false(q.pop(chain), 'stays broken');
    t.is(q.availCount(), 0);
    // Reset and a proper setup bring it back.
    q.reset();
    drv.setAvailIdx(0);
    drv.nextDesc = 0;
    drv.configure(q);
    drv.addChain([{ gpa: 0x10000, len: 8 }]);
    drv.kick();
    t.true(q.pop(chain));
    t.false(q.broken);
  });
}

test('chain longer than the DescriptorChain capacity breaks the queue', (t) => {
  const { drv, q } = setup(16);
  const small = new DescriptorChain(2);
  drv.addChain([{ gpa: 0x10000, len: 1 }, { gpa: 0x10000, len: 1 }, { gpa: 0x10000, len: 1 }]);
  drv.kick();
  t.false(q.pop(small));
  t.regex(q.brokenReason, /too many segments/);
});

test('a full-length chain (size descriptors) is accepted', (t) => {
  const { drv, q, chain } = setup(16);
  const bufs = [];
  for (let k = 0; k < 16; k++) bufs.push({ gpa: 0x10000 + k * 16, len: 16, write: k >= 8 });
  drv.addChain(bufs);
  drv.kick();
  t.true(q.pop(chain));
  t.is(chain.length, 16);
  t.is(chain.readableSegments, 8);
});

test('unused flag bits are ignored; zero-length buffers are allowed', (t) => {
  const { drv, q, chain } = setup();
  drv.writeDesc(0, 0x10000, 0, VIRTQ_DESC_F_NEXT | 0x80, 1);
  drv.writeDesc(1, 0x10000, 4, VIRTQ_DESC_F_WRITE | 0x100);
  drv.addHead(0);
  drv.kick();
  t.true(q.pop(chain));
  t.deepEqual(segments(chain), [
    { gpa: 0x10000, len: 0, write: false },
    { gpa: 0x10000, len: 4, write: true },
  ]);
});

test('not ready: pop, push and notifications do nothing', (t) => {
  const mem = GuestMemory.fake(RAM);
  const q = new Virtqueue(mem, 16);
  const chain = new DescriptorChain();
  t.false(q.pop(chain));
  q.push(0, 0);
  t.false(q.needsNotification());
  t.false(q.enableNotificationAndCheck());
  t.is(q.availCount(), 0);
  t.false(q.broken);
});

test('ChainReader and ChainWriter address the readable and writable streams across segments', (t) => {
  const { mem, drv, q, chain } = setup();
  mem.write(0x10000, Uint8Array.from([1, 2, 3]));
  mem.write(0x11000, Uint8Array.from([4, 5]));
  drv.addChain([{ gpa: 0x10000, len: 3 }, { gpa: 0x11000, len: 2 }, { gpa: 0x20000, len: 1, write: true }, { gpa: 0x21000, len: 4, write: true }]);
  drv.kick();
  t.true(q.pop(chain));
  const r = new ChainReader(mem).bind(chain);
  t.deepEqual([0, 1, 2, 3, 4, 5].map((o) => r.byteAt(o)), [1, 2, 3, 4, 5, -1]);
  const buf = new Uint8Array(4);
  t.is(r.copyTo(buf), 4);
  t.deepEqual([...buf], [1, 2, 3, 4]);
  const w = new ChainWriter(mem).bind(chain);
  // A u16 straddling the 1-byte and the 4-byte writable segments.
  t.true(w.writeU16(0, 0xbbaa));
  t.is(mem.readU8(0x20000), 0xaa);
  t.is(mem.readU8(0x21000), 0xbb);
  t.is(w.byteAt(1), 0xbb);
  t.true(w.writeU8(4, 9));
  t.false(w.writeU8(5, 9), 'past the writable stream');
  t.is(w.byteAt(5), -1);
  t.is(mem.readU8(0x11000), 4, 'readable segments untouched');
});

test('copyToChains fills each chain\'s writable stream in turn and reports what fitted', (t) => {
  const { mem, drv, q } = setup();
  drv.addChain([{ gpa: 0x10000, len: 2, write: true }, { gpa: 0x11000, len: 1, write: true }]);
  drv.addChain([{ gpa: 0x12000, len: 1 }, { gpa: 0x13000, len: 4, write: true }]);
  drv.kick();
  const a = new DescriptorChain();
  const b = new DescriptorChain();
  t.true(q.pop(a));
  t.true(q.pop(b));
  t.is(copyToChains(mem, [a, b], 2, Uint8Array.from([1, 2, 3, 4, 5])), 5);
  t.deepEqual([...mem.read(0x10000, 2)!, ...mem.read(0x11000, 1)!, ...mem.read(0x13000, 2)!], [1, 2, 3, 4, 5]);
  t.is(mem.readU8(0x12000), 0, 'the readable segment is skipped');
  t.is(copyToChains(mem, [a, b], 2, new Uint8Array(9)), 7, 'room ran out');
});

test('UsedRingFlags: one writer API for used->flags; the vCPU side and the Virtqueue see the same word', (t) => {
  const { mem, drv, q } = setup();
  const vcpuSide = new UsedRingFlags();
  t.false(vcpuSide.bind(mem, drv.used + 1), 'misaligned');
  t.false(vcpuSide.bind(mem, RAM), 'outside RAM');
  t.false(vcpuSide.bound);
  vcpuSide.suppressKicks(true); // unbound: nothing
  t.true(vcpuSide.bind(mem, drv.used));
  vcpuSide.suppressKicks(true);
  t.is(mem.readU16(drv.used), VRING_USED_F_NO_NOTIFY);
  q.setNotification(true);
  t.is(mem.readU16(drv.used), 0, 'the main thread clears what the vCPU thread set');
  q.setNotification(false);
  t.is(mem.readU16(drv.used), VRING_USED_F_NO_NOTIFY);
  vcpuSide.suppressKicks(false);
  t.is(mem.readU16(drv.used), 0);
});

test('publish order across threads over mmap memory that is not a SharedArrayBuffer (koffi.view on both sides)', async (t) => {
  // The guest-RAM case: each thread has its own koffi.view of one mmap. The
  // worker publishes like Virtqueue.flush (plain stores of the element, then
  // Atomics.store of the index); this thread reads like pop (Atomics.load of
  // the index, then plain loads). Every element seen must be complete.
  const size = 4096;
  const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_ANONYMOUS);
  try {
    const u32 = new Uint32Array(libc.view(addr, size));
    const rounds = 50_000;
    const ACK = 1023;
    const code = `
      const { workerData } = require('node:worker_threads');
      const koffi = require('koffi');
      const u32 = new Uint32Array(koffi.view(workerData.addr, workerData.size));
      for (let i = 1; i <= workerData.rounds; i++) {
        // Publish round i only once round i-1 was consumed, so the reader races
        // every publication instead of finding them all done.
        while (Atomics.load(u32, workerData.ack) !== i - 1) {}
        const slot = 1 + 2 * (i & 255);
        u32[slot] = i;                  // element: id
        u32[slot + 1] = i ^ 0x5a5a5a5a; // element: len
        Atomics.store(u32, 0, i);       // index, published last
      }`;
    const w = new Worker(code, { eval: true, workerData: { addr, size, rounds, ack: ACK } });
    const done = new Promise((resolve, reject) => { w.once('exit', resolve); w.once('error', reject); });
    let seen = 0;
    let torn = 0;
    const deadline = Date.now() + 60_000;
    while (seen < rounds) {
      const idx = Atomics.load(u32, 0);
      if (idx === seen) {
        if (Date.now() > deadline) break;
        continue;
      }
      seen = idx;
      const slot = 1 + 2 * (idx & 255);
      if (u32[slot] !== idx || u32[slot + 1] !== (idx ^ 0x5a5a5a5a)) torn++;
      Atomics.store(u32, ACK, idx);
    }
    await done;
    t.is(seen, rounds, 'the worker published every round');
    t.is(torn, 0);
    t.log(`${rounds} publications checked`);
  } finally {
    libc.munmap(addr, size);
  }
});
