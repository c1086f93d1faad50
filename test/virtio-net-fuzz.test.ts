// Property tests: virtio-net fed adversarial descriptor tables and rings by a
// hostile guest, through the real transport and data path (helpers/hostile-rig).
// TX: random chains, direct and indirect, with one defect or none — addresses
// outside RAM or across its end, WRITE on TX, loops, next or head beyond the
// queue, indirect tables of bad length, nested or chained, headers shorter
// than the vnet header, garbage vnet headers, avail.idx jumps. RX: buffers
// outside RAM, read-only, tiny, too few for a mergeable frame. Control queue:
// garbage commands. Properties:
// - no exception, nothing outside guest RAM touched (memory and iovecs);
// - the TAP gets exactly the frames of the valid chains before the first
//   invalid one, byte for byte (a frame with a garbage header may be refused,
//   never altered); an invalid chain never reaches the TAP and stops the
//   device (NEEDS_RESET on modern, checked by CheckedSender);
// - what lands in the guest's RX buffers is exactly what the host sent, in order;
// - after a reset and a clean set-up the device moves packets again.
import test from 'ava';
import fc from 'fast-check';
import {
  RAM_A_SIZE, RAM_B, RAM_B_SIZE, RAM_END, cleanSetup, equal, hostileRig, roundTrip, type CleanSetup, type Rig,
} from './helpers/hostile-rig.js';
import { assertProperty, fuzzRuns } from './helpers/fuzz-runs.js';
import { GuestErrorLog } from '../src/devices/virtio/guest-error-log.js';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../src/devices/virtio/virtqueue.js';
import {
  featureSet, VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
} from '../src/devices/net/virtio-net-features.js';

const rig = hostileRig();
test.after.always(() => rig.close());

/** Frame contents: slices of one random-looking pattern (cheaper than filling each frame byte by byte). */
const PATTERN = Uint8Array.from({ length: 0x80000 }, (_, i) => (i * 2654435761) >>> 24);

// Guest RAM the cases use: segment data in region B, indirect tables in A.
const DATA = RAM_B + 0x20000;
const BIG_DATA = RAM_B + 0x40000;
const TABLES = 0x50000;

const setupArb = fc.record({
  modern: fc.boolean(),
  msix: fc.boolean(),
  extra: fc.subarray([VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_CTRL_RX]),
}).map((c) => {
  // Keep the set valid (dependencies), as a driver that means well would.
  const has = (b: number) => c.extra.includes(b);
  const bits = c.extra.filter((b) => !(b === VIRTIO_NET_F_HOST_TSO4 && !has(VIRTIO_NET_F_CSUM)) && !(b === VIRTIO_NET_F_GUEST_TSO4 && !has(VIRTIO_NET_F_GUEST_CSUM)) && !(b === VIRTIO_NET_F_CTRL_RX && !has(VIRTIO_NET_F_CTRL_VQ)));
  return { ...c, extra: bits };
});
type SetupChoice = typeof setupArb extends fc.Arbitrary<infer T> ? T : never;

function setUp(r: Rig, c: SetupChoice): CleanSetup {
  const features = featureSet(VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, ...c.extra) + (c.modern ? 2 ** VIRTIO_F_VERSION_1 : 0);
  return cleanSetup(r, { modern: c.modern, msix: c.msix, features, ctrl: c.extra.includes(VIRTIO_NET_F_CTRL_VQ) });
}

function wipe(r: Rig): void {
  const [a, b] = r.mem.regions;
  a.bytes.fill(0, 0, TABLES + 8 * 0x5000);
  a.bytes.fill(0, RAM_A_SIZE - 0x1000);
  b.bytes.fill(0, 0, 0x50000);
}

function writeDesc(r: Rig, at: number, addr: number, hi: number, len: number, flags: number, next: number): void {
  r.mem.writeU32(at, addr >>> 0);
  r.mem.writeU32(at + 4, hi >>> 0);
  r.mem.writeU32(at + 8, len >>> 0);
  r.mem.writeU16(at + 12, flags);
  r.mem.writeU16(at + 14, next);
}

function takeViolations(r: Rig): string[] {
  const v = [...r.mem.violations, ...r.backend.violations, ...r.sender.violations];
  r.mem.violations.length = 0;
  r.backend.violations.length = 0;
  r.sender.violations.length = 0;
  return v;
}

// ------------------------------------------------------------------- TX

const DEFECTS = ['outside', 'hole', 'crossEnd', 'write', 'loop', 'nextOOR', 'headOOR', 'indLen', 'indNested', 'indNext', 'indOutside', 'indLoop', 'shortHdr', 'tooMany'] as const;
type Defect = (typeof DEFECTS)[number] | 'none';

const segLen = fc.oneof(
  { weight: 10, arbitrary: fc.integer({ min: 0, max: 300 }) },
  { weight: 2, arbitrary: fc.integer({ min: 0, max: 12 }) },
  { weight: 1, arbitrary: fc.constantFrom(0x8000, 0x10000) },
);
const txChain = fc.record({
  segs: fc.array(segLen, { minLength: 1, maxLength: 5 }),
  indirect: fc.boolean(),
  defect: fc.oneof({ weight: 10, arbitrary: fc.constant('none' as Defect) }, { weight: 1, arbitrary: fc.constantFrom<Defect>(...DEFECTS) }),
  garbageHdr: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.uint8Array({ minLength: 12, maxLength: 12 }) }),
  at: fc.integer({ min: 0, max: 3 }),
});
type TxChain = typeof txChain extends fc.Arbitrary<infer T> ? T : never;
const txCase = fc.record({ setup: setupArb, chains: fc.array(txChain, { minLength: 1, maxLength: 8 }), jump: fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 0xffff }) }), seed: fc.integer({ min: 0, max: 0xffff }) });

interface Expected {
  bytes: Uint8Array;
  /** May be refused by the device or the TAP (garbage header, larger than the socket takes), never altered. */
  mayDrop: boolean;
  /** readable bytes == header: dropped as a zero-length frame, never sent. */
  empty: boolean;
}

/**
 * Writes the chains into the TX ring as the guest would and returns what the
 * TAP must see: the frames of the valid chains before the first invalid one,
 * and whether one was invalid.
 */
function writeTx(r: Rig, s: CleanSetup, chains: TxChain[], jump: number): { expected: Expected[]; broken: boolean; published: number } {
  const d = s.tx;
  const size = d.size;
  const hdr = s.hdrLen;
  const expected: Expected[] = [];
  let broken = false;
  let nextDesc = 0;
  let dataAt = DATA;
  let bigAt = BIG_DATA;
  let published = 0;
  chains.forEach((c, k) => {
    // Direct chains need one descriptor per segment: stop when the table is full.
    const need = c.indirect ? 1 : c.segs.length;
    if (nextDesc + need > size) return;
    let segs = c.segs.map((len) => ({ gpa: 0, hi: 0, len, flags: 0 }));
    if (c.defect === 'shortHdr') segs = [{ gpa: 0, hi: 0, len: (c.segs[0] % hdr), flags: 0 }];
    let total = 0;
    for (const sg of segs) {
      // Big segments each get their own room while it lasts, then shrink.
      if (sg.len >= 0x8000 && bigAt + sg.len > RAM_B + RAM_B_SIZE) sg.len = 300;
      if (sg.len >= 0x8000) {
        sg.gpa = bigAt;
        bigAt += sg.len;
      } else {
        sg.gpa = dataAt;
        dataAt += (sg.len + 15) & ~15;
      }
      total += sg.len;
    }
    // Contents: a header (zeros or garbage), then a pattern naming the chain.
    const start = (k * 257 + c.at * 61) & 0xfff;
    const content = PATTERN.slice(start, start + total);
    content.fill(0, 0, Math.min(hdr, total));
    if (c.garbageHdr) content.set(c.garbageHdr.subarray(0, Math.min(hdr, total)), 0);
    let off = 0;
    for (const sg of segs) {
      const n = sg.len;
      if (n > 0) r.mem.write(sg.gpa, content.subarray(off, off + n));
      off += n;
    }
    // The defect, if any.
    const bad = segs[c.at % segs.length];
    switch (c.defect) {
      case 'outside':
        // Beyond RAM, far beyond 2^32, or in RAM with a length that runs past it.
        bad.gpa = c.at === 2 ? DATA : RAM_END + 0x1000 * c.at;
        bad.hi = c.at === 3 ? 0x10 : 0;
        bad.len = c.at === 2 ? 0xffffffff : Math.max(1, bad.len);
        break;
      case 'hole': bad.gpa = RAM_A_SIZE + 0x100; if (bad.len === 0) bad.len = 1; break;
      case 'crossEnd': bad.gpa = RAM_B + RAM_B_SIZE - 4; bad.len = 64; break;
      case 'write': bad.flags |= VIRTQ_DESC_F_WRITE; break;
      default: break;
    }
    const head = nextDesc;
    const last = segs.length - 1;
    if (c.indirect) {
      const table = TABLES + k * 0x5000;
      const n = c.defect === 'tooMany' ? 1100 : segs.length;
      for (let i = 0; i < n; i++) {
        const sg = segs[Math.min(i, last)];
        let flags = sg.flags | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
        let next = i < n - 1 ? i + 1 : 0;
        if (i === n - 1 && c.defect === 'indLoop') { flags |= VIRTQ_DESC_F_NEXT; next = 0; }
        if (i === n - 1 && c.defect === 'nextOOR') { flags |= VIRTQ_DESC_F_NEXT; next = n + c.at; }
        if (i === 0 && c.defect === 'indNested') flags |= VIRTQ_DESC_F_INDIRECT;
        writeDesc(r, table + 16 * i, sg.gpa % 2 ** 32, sg.hi + Math.floor(sg.gpa / 2 ** 32), i < segs.length ? sg.len : 1, flags, next);
      }
      let tlen = 16 * n;
      let tgpa = table;
      if (c.defect === 'indLen') tlen = [0, 8, 16 * n + 4, 0xfffffff0][c.at];
      if (c.defect === 'indOutside') tgpa = [RAM_A_SIZE - 8, RAM_END, RAM_A_SIZE + 0x10, 2 ** 40][c.at];
      const hflags = VIRTQ_DESC_F_INDIRECT | (c.defect === 'indNext' ? VIRTQ_DESC_F_NEXT : 0);
      writeDesc(r, d.desc + 16 * head, tgpa % 2 ** 32, Math.floor(tgpa / 2 ** 32), tlen, hflags, (head + 1) % size);
      nextDesc += 1;
    } else {
      segs.forEach((sg, i) => {
        let flags = sg.flags | (i < last ? VIRTQ_DESC_F_NEXT : 0);
        let next = i < last ? head + i + 1 : 0;
        if (i === last && (c.defect === 'loop' || c.defect === 'indLoop')) { flags |= VIRTQ_DESC_F_NEXT; next = head; }
        if (i === last && c.defect === 'nextOOR') { flags |= VIRTQ_DESC_F_NEXT; next = size + c.at; }
        if (i === 0 && c.defect === 'indNext') flags |= VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT;
        if (i === 0 && c.defect === 'indNested') flags |= VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT;
        writeDesc(r, d.desc + 16 * (head + i), sg.gpa % 2 ** 32, sg.hi + Math.floor(sg.gpa / 2 ** 32), sg.len, flags, next);
      });
      nextDesc += segs.length;
    }
    const slot = (d.availIdx + published) & (size - 1);
    r.mem.writeU16(d.avail + 4 + 2 * slot, c.defect === 'headOOR' ? size + c.at * 1000 : head);
    published++;
    // What the device must do with it. Defects that do nothing in this shape count as none.
    const structural = c.defect !== 'none' && c.defect !== 'shortHdr'
      && (c.indirect ? c.defect !== 'loop' : c.defect !== 'indLen' && c.defect !== 'indOutside' && c.defect !== 'tooMany');
    const invalid = structural || total < hdr;
    if (broken) return;
    if (invalid) {
      broken = true;
      return;
    }
    expected.push({ bytes: content, mayDrop: c.garbageHdr !== null || total > 100_000, empty: total === hdr });
  });
  let idx = (d.availIdx + published) & 0xffff;
  if (jump > 0 && ((idx + jump - d.lastUsed) & 0xffff) > size) {
    // avail.idx runs more than a queue ahead: nothing may be used.
    idx = (idx + jump) & 0xffff;
    broken = true;
    expected.length = 0;
  }
  r.mem.writeU16(d.avail + 2, idx);
  d.availIdx = idx;
  return { expected, broken, published };
}

test.serial('TX: hostile chains never escape, never leave RAM, never reach the TAP; valid frames arrive exactly', (t) => {
  const r = rig;
  const started = Date.now();
  let runs = 0;
  let sent = 0;
  let refused = 0;
  let brokenCases = 0;
  assertProperty(() => fc.assert(
    fc.property(txCase, (c) => {
      runs++;
      wipe(r);
      const s = setUp(r, c.setup);
      const nr = r.sender.needsResets;
      r.backend.drain();
      const framesBefore = r.backend.frames.length;
      const { expected, broken } = r.mem.guest(() => writeTx(r, s, c.chains, c.jump));
      s.notify(1);
      r.runMain();
      r.runMain();
      r.backend.drain();
      const v = takeViolations(r);
      if (v.length > 0) throw new Error(v.join('; '));
      const got = r.backend.frames.slice(framesBefore);
      // Match frames to expected chains in order: refusable ones may be skipped, none altered.
      let e = 0;
      for (const f of got) {
        for (;;) {
          if (e >= expected.length) throw new Error(`the TAP got a frame no valid chain described (${f.length} bytes)`);
          const x = expected[e++];
          if (!x.empty && equal(f, x.bytes)) break;
          if (!x.mayDrop && !x.empty) throw new Error(`frame ${e - 1}: the TAP got other bytes than the chain held (${f.length} vs ${x.bytes.length})`);
        }
      }
      for (; e < expected.length; e++) if (!expected[e].mayDrop && !expected[e].empty) throw new Error(`frame ${e} never reached the TAP (${r.net.stats.deviceErrors.join('; ')})`);
      const resets = r.sender.needsResets - nr;
      if (broken && resets !== 1) throw new Error(`an invalid chain did not stop the device (needsReset ${resets} times; ${JSON.stringify({ ...r.net.stats, frames: got.length })})`);
      if (!broken && resets !== 0) throw new Error(`valid chains stopped the device: ${r.net.stats.deviceErrors.at(-1)}`);
      if (!broken && r.mem.guest(() => s.tx.usedIdx()) !== s.tx.availIdx) throw new Error('valid chains were not all returned');
      sent += got.length;
      if (broken) {
        brokenCases++;
        refused++;
        wipe(r);
        roundTrip(r, setUp(r, c.setup), c.seed);
        const w = takeViolations(r);
        if (w.length > 0) throw new Error(`after the reset: ${w.join('; ')}`);
      }
      return true;
    }),
    { numRuns: fuzzRuns(30_000) },
  ));
  const ms = Date.now() - started;
  t.log(`${runs} cases, ${sent} frames at the TAP, ${brokenCases} devices stopped by an invalid chain and recovered after a reset, ${ms} ms`);
  t.true(sent > runs, 'the generator reaches valid chains');
  t.true(refused > runs / 10, 'and invalid ones');
});

// ------------------------------------------------------------------- RX

const rxBuf = fc.record({
  segs: fc.array(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 1, max: 2048 }) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 12 }) }), { minLength: 1, maxLength: 3 }),
  defect: fc.oneof({ weight: 10, arbitrary: fc.constant('none') }, { weight: 1, arbitrary: fc.constantFrom('outside', 'readonly', 'mixed', 'loop', 'headOOR', 'crossEnd') }),
});
const rxCase = fc.record({
  setup: setupArb,
  bufs: fc.array(rxBuf, { minLength: 0, maxLength: 10 }),
  // Up to the largest frame of a 1500 MTU with a VLAN tag: the socketpair, unlike tun, truncates longer ones silently.
  frames: fc.array(fc.integer({ min: 0, max: 1518 }), { minLength: 1, maxLength: 6 }),
  seed: fc.integer({ min: 0, max: 0xffff }),
});

test.serial('RX: hostile buffers never escape or leave RAM; what lands in the guest is exactly what the host sent, in order', (t) => {
  const r = rig;
  const started = Date.now();
  let runs = 0;
  let delivered = 0;
  let stopped = 0;
  assertProperty(() => fc.assert(
    fc.property(rxCase, (c) => {
      runs++;
      wipe(r);
      const s = setUp(r, c.setup);
      const nr = r.sender.needsResets;
      const d = s.rx;
      const hdr = s.hdrLen;
      // The guest's RX buffers: chain k at descriptors from `next`, data from DATA.
      const chains = new Map<number, Array<{ gpa: number; len: number }>>();
      r.mem.guest(() => {
        let next = 0;
        let at = DATA;
        for (const b of c.bufs) {
          if (next + b.segs.length > d.size) break;
          const head = next;
          const segs = b.segs.map((len) => { const g = at; at += (len + 15) & ~15; return { gpa: g, len }; });
          segs.forEach((sg, i) => {
            const last = i === segs.length - 1;
            let gpa = sg.gpa;
            let flags = VIRTQ_DESC_F_WRITE | (last ? 0 : VIRTQ_DESC_F_NEXT);
            let nx = last ? 0 : head + i + 1;
            if (b.defect === 'outside' && last) gpa = RAM_END + 0x100;
            if (b.defect === 'crossEnd' && last) { gpa = RAM_A_SIZE - 4; sg.len = 64; }
            if (b.defect === 'readonly') flags &= ~VIRTQ_DESC_F_WRITE;
            if (b.defect === 'mixed' && i === 0 && !last) flags &= ~VIRTQ_DESC_F_WRITE;
            if (b.defect === 'loop' && last) { flags |= VIRTQ_DESC_F_NEXT; nx = head; }
            writeDesc(r, d.desc + 16 * (head + i), gpa, 0, sg.len, flags, nx);
          });
          chains.set(head, b.defect === 'mixed' && segs.length > 1 ? segs.slice(1) : segs);
          d.addHead(b.defect === 'headOOR' ? d.size + 3 : head);
          next += segs.length;
        }
        d.kick();
      });
      s.notify(0);
      r.runMain();
      const sentFrames: Uint8Array[] = [];
      c.frames.forEach((len, k) => {
        const f = new Uint8Array(hdr + len);
        for (let i = hdr; i < f.length; i++) f[i] = (i * 11 + k * 37 + c.seed) & 0xff;
        sentFrames.push(f);
        r.backend.send(f);
      });
      r.runMain(true);
      r.runMain(true);
      const v = takeViolations(r);
      if (v.length > 0) throw new Error(v.join('; '));
      const mergeable = c.setup.extra.includes(VIRTIO_NET_F_MRG_RXBUF);
      // Rebuild each delivered frame from the used ring and the chains' buffers.
      const used = r.mem.guest(() => d.takeUsed());
      let f = 0;
      for (let u = 0; u < used.length;) {
        const first = chains.get(used[u].id);
        if (!first) throw new Error(`used id ${used[u].id} is no chain the guest made`);
        const stream = (id: number, len: number) => {
          const out: number[] = [];
          for (const sg of chains.get(id)!) {
            if (out.length >= len) break;
            const take = Math.min(sg.len, len - out.length);
            if (take > 0) out.push(...r.mem.guest(() => r.mem.read(sg.gpa, take))!);
          }
          if (out.length !== len) throw new Error(`used len ${len} exceeds chain ${id}`);
          return out;
        };
        const head = stream(used[u].id, used[u].len);
        const nb = hdr >= 12 && head.length >= 12 ? head[10] | (head[11] << 8) : 1;
        const count = mergeable ? nb : 1;
        if (count < 1 || u + count > used.length) throw new Error(`num_buffers ${nb} with ${used.length - u} used entries left`);
        const bytes = [...head];
        for (let k = 1; k < count; k++) bytes.push(...stream(used[u + k].id, used[u + k].len));
        u += count;
        if (hdr >= 12 && bytes.length >= 12) {
          bytes[10] = 0;
          bytes[11] = 0;
        }
        // An in-order subsequence of what the host sent (frames may be dropped, never altered).
        while (f < sentFrames.length && !equal(Uint8Array.from(bytes), sentFrames[f])) f++;
        if (f === sentFrames.length) throw new Error('the guest got bytes the host never sent (or out of order)');
        f++;
        delivered++;
      }
      // With MRG_RXBUF every buffer must hold a header (virtio 1.2 §5.1.6.3.1).
      const allValid = c.bufs.every((b) => b.defect === 'none' && (!mergeable || b.segs.reduce((x, y) => x + y, 0) >= hdr));
      if (r.sender.needsResets !== nr) {
        stopped++;
        if (allValid) throw new Error(`valid RX buffers stopped the device: ${r.net.stats.deviceErrors.at(-1)}`);
      }
      // Reset and a clean set-up: the device works again.
      wipe(r);
      roundTrip(r, setUp(r, c.setup), c.seed);
      const w = takeViolations(r);
      if (w.length > 0) throw new Error(`after the reset: ${w.join('; ')}`);
      return true;
    }),
    { numRuns: fuzzRuns(15_000) },
  ));
  const ms = Date.now() - started;
  t.log(`${runs} cases, ${delivered} frames delivered and checked, ${stopped} devices stopped by hostile buffers, ${ms} ms`);
  t.true(delivered > runs / 2);
  t.true(stopped > 0);
});

// --------------------------------------------------------- control queue

const CTRL_KINDS = ['noAck', 'noHeader', 'writeFirst', 'hole', 'end', 'huge', 'hugeMany', 'longAck'] as const;
const ctrlChain = fc.record({
  kind: fc.oneof({ weight: 10, arbitrary: fc.constant('good' as const) }, { weight: 2, arbitrary: fc.constantFrom(...CTRL_KINDS) }),
  data: fc.uint8Array({ minLength: 0, maxLength: 40 }),
  cls: fc.constantFrom(0, 1, 2, 3, 9, 0xff),
  cmd: fc.constantFrom(0, 1, 2, 3, 4, 5, 0xff),
});
type CtrlChain = typeof ctrlChain extends fc.Arbitrary<infer T> ? T : never;
const ctrlCase = fc.record({ setup: setupArb.map((c) => ({ ...c, extra: [...new Set([...c.extra, VIRTIO_NET_F_CTRL_VQ])] })), chains: fc.array(ctrlChain, { minLength: 1, maxLength: 6 }), seed: fc.integer({ min: 0, max: 0xffff }) });

/** The segments of one control command: header, data, ack, bent by `kind`. Well-formed ones say where the ack byte is. */
function ctrlSegments(c: CtrlChain, at: number): { segs: Array<{ gpa: number; len: number; write: boolean }>; ack: number; valid: boolean } {
  const hdr = { gpa: at, len: 2, write: false };
  const data = { gpa: at + 2, len: c.data.length, write: false };
  const ack = { gpa: at + 0x40, len: 1, write: true };
  const body = data.len > 0 ? [hdr, data] : [hdr];
  switch (c.kind) {
    case 'good': return { segs: [...body, ack], ack: ack.gpa, valid: true };
    case 'longAck': return { segs: [...body, { ...ack, len: 0x100 }], ack: ack.gpa, valid: true };
    case 'noAck': return { segs: body, ack: -1, valid: false };
    case 'noHeader': return { segs: [{ ...hdr, len: 1 }, ack], ack: -1, valid: false };
    case 'writeFirst': return { segs: [ack, ...body], ack: -1, valid: false };
    case 'hole': return { segs: [hdr, { gpa: RAM_A_SIZE + 0x40, len: 8, write: false }, ack], ack: -1, valid: false };
    case 'end': return { segs: [hdr, { gpa: RAM_END - 4, len: 8, write: false }, ack], ack: -1, valid: false };
    // All in RAM, but far more than any command: answered with ERR, never copied whole.
    case 'huge': return { segs: [hdr, { gpa: RAM_B, len: RAM_B_SIZE, write: false }, ack], ack: ack.gpa, valid: true };
    case 'hugeMany': return { segs: [hdr, ...Array.from({ length: 40 }, () => ({ gpa: RAM_B, len: RAM_B_SIZE, write: false })), ack], ack: ack.gpa, valid: true };
  }
}

test.serial('control queue: garbage commands never escape or leave RAM; well-formed ones get an OK or ERR ack', (t) => {
  const r = rig;
  const started = Date.now();
  let runs = 0;
  let acked = 0;
  assertProperty(() => fc.assert(
    fc.property(ctrlCase, (c) => {
      runs++;
      wipe(r);
      const s = setUp(r, c.setup);
      const d = s.ctrl!;
      const nr = r.sender.needsResets;
      // The acks the device must write, in order, up to the first malformed command (which stops it).
      const acks: number[] = [];
      let stops = false;
      r.mem.guest(() => {
        let next = 0;
        c.chains.forEach((ch, k) => {
          const { segs, ack, valid } = ctrlSegments(ch, DATA + k * 0x100);
          if (next + segs.length > d.size) return;
          const head = next;
          r.mem.write(DATA + k * 0x100, Uint8Array.from([ch.cls, ch.cmd, ...ch.data]));
          r.mem.writeU8(DATA + k * 0x100 + 0x40, 0xee);
          segs.forEach((sg, i) => {
            const last = i === segs.length - 1;
            writeDesc(r, d.desc + 16 * (head + i), sg.gpa, 0, sg.len, (sg.write ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT), last ? 0 : head + i + 1);
          });
          d.addHead(head);
          next += segs.length;
          if (stops) return;
          if (valid) acks.push(ack);
          else stops = true;
        });
        d.kick();
      });
      s.notify(2);
      r.runMain();
      const v = takeViolations(r);
      if (v.length > 0) throw new Error(v.join('; '));
      const used = r.mem.guest(() => d.takeUsed());
      if (used.length !== acks.length) throw new Error(`${used.length} commands answered, ${acks.length} expected (${r.net.stats.deviceErrors.join('; ')})`);
      for (let i = 0; i < used.length; i++) {
        const ack = r.mem.guest(() => r.mem.readU8(acks[i]));
        if (used[i].len !== 1 || (ack !== 0 && ack !== 1)) throw new Error(`command ${i}: ack ${ack}, used length ${used[i].len}`);
        acked++;
      }
      if (stops !== (r.sender.needsResets !== nr)) throw new Error(stops ? 'a malformed command did not stop the device' : `well-formed commands stopped the device: ${r.net.stats.deviceErrors.at(-1)}`);
      wipe(r);
      roundTrip(r, setUp(r, c.setup), c.seed);
      const w = takeViolations(r);
      if (w.length > 0) throw new Error(`after the reset: ${w.join('; ')}`);
      return true;
    }),
    { numRuns: fuzzRuns(10_000) },
  ));
  const ms = Date.now() - started;
  t.log(`${runs} cases, ${acked} commands acknowledged, ${ms} ms`);
  t.true(acked > runs / 4);
});

// ------------------------------------------------- what the fuzz found

test.serial('regression: a control command longer than any real one is answered ERR, never copied (it made the host allocate its size)', (t) => {
  const r = rig;
  wipe(r);
  const s = setUp(r, { modern: true, msix: false, extra: [VIRTIO_NET_F_CTRL_VQ] });
  const d = s.ctrl!;
  // A guest with RAM far up (64 GiB): segments of 4 GiB each are all "in RAM".
  const far = 2 ** 36;
  const contains = r.mem.contains.bind(r.mem);
  const runAt = r.mem.runAt.bind(r.mem);
  r.mem.contains = (gpa: number, len: number) => (gpa >= far && gpa + len <= far + 2 ** 34) || contains(gpa, len);
  r.mem.runAt = (gpa: number, len: number) => (gpa >= far && gpa < far + 2 ** 34 ? Math.min(len, far + 2 ** 34 - gpa) : runAt(gpa, len));
  try {
    r.mem.guest(() => {
      r.mem.write(DATA, Uint8Array.from([1, 0]));
      r.mem.writeU8(DATA + 0x40, 0xee);
      writeDesc(r, d.desc, DATA, 0, 2, VIRTQ_DESC_F_NEXT, 1);
      for (let i = 1; i < d.size - 1; i++) writeDesc(r, d.desc + 16 * i, 0, far / 2 ** 32, 0xffffffff, VIRTQ_DESC_F_NEXT, i + 1);
      writeDesc(r, d.desc + 16 * (d.size - 1), DATA + 0x40, 0, 1, VIRTQ_DESC_F_WRITE, 0);
      d.addHead(0);
      d.kick();
    });
    s.notify(2);
    t.notThrows(() => r.runMain());
    t.is(r.mem.guest(() => r.mem.readU8(DATA + 0x40)), 1, 'VIRTIO_NET_ERR');
    t.deepEqual(r.mem.guest(() => d.takeUsed()), [{ id: 0, len: 1 }]);
    t.deepEqual(takeViolations(r), []);
  } finally {
    delete (r.mem as { contains?: unknown }).contains;
    delete (r.mem as { runAt?: unknown }).runAt;
  }
  roundTrip(r, setUp(r, { modern: true, msix: false, extra: [] }), 1);
});

test.serial('regression: with MRG_RXBUF an RX buffer smaller than the header stops the device (num_buffers had nowhere to go)', (t) => {
  const r = rig;
  wipe(r);
  const s = setUp(r, { modern: true, msix: true, extra: [VIRTIO_NET_F_MRG_RXBUF] });
  const nr = r.sender.needsResets;
  const lines: string[] = [];
  const log = r.net.guestLog;
  r.net.guestLog = new GuestErrorLog('virtio-net', { sink: (l) => lines.push(l) });
  t.teardown(() => { r.net.guestLog = log; });
  r.mem.guest(() => {
    s.rx.addChain([{ gpa: DATA, len: 8, write: true }]);
    s.rx.addChain([{ gpa: DATA + 0x100, len: 2048, write: true }]);
    s.rx.kick();
  });
  s.notify(0);
  r.runMain();
  r.backend.send(new Uint8Array(12 + 60).fill(7, 12));
  r.runMain(true);
  t.is(r.sender.needsResets, nr + 1);
  t.truthy(r.state.status & 0x40, 'NEEDS_RESET');
  t.deepEqual(r.mem.guest(() => s.rx.takeUsed()), [], 'nothing delivered');
  t.deepEqual(lines, ['virtio-net: virtio-net receive buffer smaller than the header with MRG_RXBUF: device stopped until the driver resets it'], 'and said so, once');
  t.deepEqual(takeViolations(r), []);
  roundTrip(r, setUp(r, { modern: true, msix: true, extra: [VIRTIO_NET_F_MRG_RXBUF] }), 2);
});

test.serial('legacy: a bad chain stops the device without NEEDS_RESET (legacy has no such bit); a reset brings it back', (t) => {
  const r = rig;
  wipe(r);
  const s = setUp(r, { modern: false, msix: false, extra: [] });
  const nr = r.sender.needsResets;
  r.mem.guest(() => {
    s.tx.addChain([{ gpa: RAM_END + 0x1000, len: 100 }]);
    s.tx.kick();
  });
  s.notify(1);
  r.runMain();
  t.is(r.sender.needsResets, nr + 1);
  t.is(r.state.status & 0x40, 0);
  const frames = r.backend.frames.length;
  r.mem.guest(() => {
    s.tx.addChain([{ gpa: DATA, len: 10 }, { gpa: DATA + 0x100, len: 60 }]);
    s.tx.kick();
  });
  s.notify(1);
  r.runMain();
  r.backend.drain();
  t.is(r.backend.frames.length, frames, 'the stopped queue sends nothing more');
  t.deepEqual(takeViolations(r), []);
  roundTrip(r, setUp(r, { modern: false, msix: false, extra: [] }), 3);
});
