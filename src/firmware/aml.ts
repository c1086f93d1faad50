// A small encoder for ACPI Machine Language (ACPI 6.4, chapter 20): just the
// terms a DSDT of named data needs — scopes, devices, names, integers,
// packages, EISA ids and resource templates. No methods: every
// object tsvisor describes is a constant, so a guest's AML interpreter only
// reads, never runs, what tsvisor wrote.
//
// Each function returns the encoded bytes of one term; callers nest them.

export type Aml = number[];

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82;
const ROOT_CHAR = 0x5c; // '\'
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;

/**
 * PkgLength: the length of what follows the opcode, counting its own 1-4
 * bytes. One byte holds up to 63; longer ones put the byte count in bits 7-6
 * of the first byte, its low nibble there, and the rest in the next bytes.
 */
export function pkgLength(bodyLength: number): Aml {
  if (bodyLength + 1 < 0x40) return [bodyLength + 1];
  for (let extra = 1; extra <= 3; extra++) {
    const total = bodyLength + 1 + extra;
    if (total < 1 << (4 + 8 * extra)) {
      const out = [(extra << 6) | (total & 0x0f)];
      for (let i = 0; i < extra; i++) out.push((total >>> (4 + 8 * i)) & 0xff);
      return out;
    }
  }
  throw new RangeError(`AML package of ${bodyLength} bytes is longer than a PkgLength can say`);
}

/** A NameSeg: four characters of [A-Z0-9_], the first not a digit, padded with '_'. */
function nameSeg(seg: string): Aml {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new RangeError(`bad AML name segment ${JSON.stringify(seg)}`);
  return [...seg.padEnd(4, '_')].map((c) => c.charCodeAt(0));
}

/** A NameString: `\_SB.PCI0`, `PCI0`, `_S5`. */
export function nameString(path: string): Aml {
  const out: Aml = [];
  let rest = path;
  if (rest.startsWith('\\')) {
    out.push(ROOT_CHAR);
    rest = rest.slice(1);
  }
  const segs = rest.split('.').map(nameSeg);
  if (segs.length === 2) out.push(DUAL_NAME_PREFIX);
  else if (segs.length > 2) out.push(MULTI_NAME_PREFIX, segs.length);
  for (const s of segs) out.push(...s);
  return out;
}

/** The shortest integer encoding of a non-negative value below 2^53. */
export function integer(v: number): Aml {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`AML integer ${v} out of range`);
  if (v === 0) return [ZERO_OP];
  if (v === 1) return [ONE_OP];
  if (v <= 0xff) return [BYTE_PREFIX, v];
  if (v <= 0xffff) return [WORD_PREFIX, ...le(v, 2)];
  if (v <= 0xffffffff) return [DWORD_PREFIX, ...le(v, 4)];
  return [QWORD_PREFIX, ...le(v, 8)];
}

/** EISAID("PNP0A03"): three letters of 5 bits each, then four hex digits, as a DWORD. */
export function eisaId(id: string): Aml {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new RangeError(`bad EISA id ${id}`);
  const c = (i: number) => (id.charCodeAt(i) - 0x40) & 0x1f;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  const bytes = [vendor >> 8, vendor & 0xff, product >> 8, product & 0xff];
  return [DWORD_PREFIX, ...bytes];
}

export const name = (path: string, value: Aml): Aml => [NAME_OP, ...nameString(path), ...value];

export function pkg(elements: Aml[]): Aml {
  if (elements.length > 255) throw new RangeError('an AML Package holds at most 255 elements');
  const body = [elements.length, ...elements.flat()];
  return [PACKAGE_OP, ...pkgLength(body.length), ...body];
}

export function scope(path: string, terms: Aml[]): Aml {
  const body = [...nameString(path), ...terms.flat()];
  return [SCOPE_OP, ...pkgLength(body.length), ...body];
}

export function device(path: string, terms: Aml[]): Aml {
  const body = [...nameString(path), ...terms.flat()];
  return [EXT_OP_PREFIX, DEVICE_OP, ...pkgLength(body.length), ...body];
}

export function buffer(bytes: number[]): Aml {
  const body = [...integer(bytes.length), ...bytes];
  return [BUFFER_OP, ...pkgLength(body.length), ...body];
}

function le(v: number, n: number): number[] {
  const out: number[] = [];
  let x = BigInt(v);
  for (let i = 0; i < n; i++) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
  }
  return out;
}

// Resource descriptors (ACPI 6.4, 6.4): what a _CRS buffer is made of.

/** Address space descriptors' resource types. */
const MEMORY_RANGE = 0;
const IO_RANGE = 1;
const BUS_NUMBER_RANGE = 2;
/** General flags of a producer whose window is fixed at both ends, positively decoded. */
const PRODUCER_FIXED = (1 << 2) | (1 << 3);

/** IO (Decode16, min, max, align, length): ports a device itself decodes. */
export function ioPorts(min: number, max: number, align: number, length: number): number[] {
  return [0x47, 1, ...le(min, 2), ...le(max, 2), align, length];
}

/** Word Address Space Descriptor: a bus-number or I/O window a bridge passes on. */
function wordAddressSpace(type: number, typeFlags: number, min: number, max: number): number[] {
  return [0x88, ...le(0x0d, 2), type, PRODUCER_FIXED, typeFlags, ...le(0, 2), ...le(min, 2), ...le(max, 2), ...le(0, 2), ...le(max - min + 1, 2)];
}

export const wordBusNumber = (min: number, max: number) => wordAddressSpace(BUS_NUMBER_RANGE, 0, min, max);
/** Type flags 3: the window covers ISA and non-ISA ranges alike. */
export const wordIo = (min: number, max: number) => wordAddressSpace(IO_RANGE, 3, min, max);

/** DWord Address Space Descriptor for memory: read/write, not cacheable. */
export function dwordMemory(min: number, max: number): number[] {
  return [0x87, ...le(0x17, 2), MEMORY_RANGE, PRODUCER_FIXED, 1, ...le(0, 4), ...le(min, 4), ...le(max, 4), ...le(0, 4), ...le(max - min + 1, 4)];
}

/** ResourceTemplate(): the descriptors and the end tag (checksum 0: "treat as correct"). */
export const resourceTemplate = (descriptors: number[][]): Aml => buffer([...descriptors.flat(), 0x79, 0]);
