// The AML encoder (src/firmware/aml.ts) at its edges: PkgLength's one- to
// four-byte forms, names, integers, EISA ids, and the inputs it refuses. The
// whole DSDT is read back by ACPICA in acpi.test.ts.
import test from 'ava';
import { eisaId, integer, nameString, pkg, pkgLength } from '../src/firmware/aml.js';

/** PkgLength decoded as ACPICA does: the byte count in bits 7-6, then 4 + 8k bits. */
function decodePkgLength(b: number[]): number {
  const extra = b[0] >> 6;
  if (extra === 0) return b[0] & 0x3f;
  let v = b[0] & 0x0f;
  for (let i = 0; i < extra; i++) v |= b[1 + i] << (4 + 8 * i);
  return v;
}

test('PkgLength: one byte up to 63 in all, then two, three and four, each counting itself', (t) => {
  for (const body of [0, 1, 62, 63, 64, 200, 4093, 4094, 5000, 1 << 20, (1 << 28) - 10]) {
    const enc = pkgLength(body);
    t.is(decodePkgLength(enc), body + enc.length, `body ${body}`);
    t.is(enc.length, body + 1 < 0x40 ? 1 : body + 2 < 1 << 12 ? 2 : body + 3 < 1 << 20 ? 3 : 4, `body ${body}`);
  }
  t.throws(() => pkgLength(1 << 28), { instanceOf: RangeError });
});

test('names: root, single, dual and multi segments, padded with _; bad segments refused', (t) => {
  t.deepEqual(nameString('_S5'), [0x5f, 0x53, 0x35, 0x5f]);
  t.deepEqual(nameString('\\_SB'), [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
  t.deepEqual(nameString('\\_SB.PCI0').slice(0, 2), [0x5c, 0x2e]);
  t.deepEqual(nameString('A.B.C').slice(0, 2), [0x2f, 3]);
  for (const bad of ['', 'pci0', '0ABC', 'TOOLONG', 'A..B']) t.throws(() => nameString(bad), { instanceOf: RangeError }, bad);
});

test('integers take the shortest form; EISAID("PNP0A03") is 0x030AD041', (t) => {
  t.deepEqual(integer(0), [0x00]);
  t.deepEqual(integer(1), [0x01]);
  t.deepEqual(integer(0xff), [0x0a, 0xff]);
  t.deepEqual(integer(0x100), [0x0b, 0x00, 0x01]);
  t.deepEqual(integer(0xffff_ffff), [0x0c, 0xff, 0xff, 0xff, 0xff]);
  t.deepEqual(integer(2 ** 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  t.throws(() => integer(-1), { instanceOf: RangeError });
  t.throws(() => integer(0.5), { instanceOf: RangeError });
  t.deepEqual(eisaId('PNP0A03'), [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
  t.throws(() => eisaId('pnp0a03'), { instanceOf: RangeError });
});

test('a Package says its element count and refuses more than 255', (t) => {
  t.deepEqual(pkg([integer(5), integer(0)]), [0x12, 5, 2, 0x0a, 5, 0x00]);
  t.throws(() => pkg(Array.from({ length: 256 }, () => integer(0))), { instanceOf: RangeError });
});
