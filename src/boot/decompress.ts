// Host-side decompression of a bzImage's payload (the compressed vmlinux), so
// the guest never runs the kernel's own decompressor: under an instruction
// emulator that costs minutes (see MEASURED.md).
//
// The payload's format is found by its magic. The kernel's build appends the
// uncompressed size as a little-endian u32 after every format except gzip
// (scripts/Makefile.lib `size_append`); each decoder accepts the payload with
// or without that trailer and, when it is there, checks the output against it.
//
// XZ: the kernel compresses with the x86 BCJ filter in front of LZMA2
// (scripts/xz_wrap.sh). @napi-rs/lzma's `xz` rejects BCJ ("Unknown filter id
// 4"), so the XZ container is parsed here, each block's raw LZMA2 data goes
// to @napi-rs/lzma's `lzma2`, and the BCJ x86 decoding is done here.
// LZ4: the kernel uses the legacy frame (`lz4 -l`), decoded here.
import { gunzipSync } from 'node:zlib';
import { lzma, lzma2 } from '@napi-rs/lzma';
import { decompress as zstdDecompress } from 'fzstd';
import { TsvisorError } from '../errors.js';

export interface Decompressed {
  /** 'gzip' | 'xz' | 'lz4' | 'zstd' | 'lzma' */
  format: string;
  data: Uint8Array;
}

const UNSUPPORTED_HINT = 'rebuild the kernel with gzip, xz, lz4 or zstd, or pass the uncompressed vmlinux';

/** True if `data` starts with `magic`. */
function startsWith(data: Uint8Array, magic: readonly number[]): boolean {
  if (data.length < magic.length) return false;
  for (let i = 0; i < magic.length; i++) if (data[i] !== magic[i]) return false;
  return true;
}

const u32le = (b: Uint8Array, o: number): number => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;

function corrupt(format: string, why: string): TsvisorError {
  return new TsvisorError(`corrupt ${format} kernel payload: ${why}`);
}

/** Decompresses a bzImage payload (or any gzip/xz/lz4/zstd/lzma stream). */
export function decompressPayload(payload: Uint8Array): Decompressed {
  if (startsWith(payload, [0x1f, 0x8b])) return { format: 'gzip', data: gzip(payload) };
  if (startsWith(payload, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return { format: 'xz', data: xzDecompress(payload) };
  if (startsWith(payload, [0x02, 0x21, 0x4c, 0x18])) return { format: 'lz4', data: lz4LegacyDecompress(payload) };
  if (startsWith(payload, [0x28, 0xb5, 0x2f, 0xfd])) return { format: 'zstd', data: withSizeTrailer('zstd', payload, (d) => zstdDecompress(d)) };
  if (startsWith(payload, [0x5d, 0x00, 0x00])) return { format: 'lzma', data: withSizeTrailer('lzma', payload, (d) => lzma.decompressSync(d)) };
  let other: string | undefined;
  if (startsWith(payload, [0x42, 0x5a, 0x68])) other = 'bzip2';
  else if (startsWith(payload, [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a])) other = 'lzo';
  else if (startsWith(payload, [0x04, 0x22, 0x4d, 0x18])) other = 'lz4 (modern frame)';
  if (other) throw new TsvisorError(`unsupported kernel compression: ${other} (${UNSUPPORTED_HINT})`);
  const magic = Array.from(payload.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(' ');
  throw new TsvisorError(`unknown kernel compression (payload starts ${magic || 'empty'})`, 1, UNSUPPORTED_HINT);
}

/**
 * The payload of a bzImage (boot protocol >= 2.08): the setup header's
 * `payload_offset` (0x248) and `payload_length` (0x24c), relative to the
 * protected-mode code that follows the (setup_sects + 1) * 512 setup bytes.
 */
export function bzImagePayload(image: Uint8Array): Uint8Array {
  if (image.length < 0x250 || u32le(image, 0x202) !== 0x53726448 /* "HdrS" */) {
    throw new TsvisorError('not a bzImage: no "HdrS" setup header signature');
  }
  const version = image[0x206] | (image[0x207] << 8);
  if (version < 0x208) throw new TsvisorError(`bzImage boot protocol ${version >> 8}.${(version & 0xff).toString().padStart(2, '0')} has no payload fields (need 2.08)`);
  const setupSects = image[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + u32le(image, 0x248);
  const end = start + u32le(image, 0x24c);
  if (end > image.length || start >= end) throw new TsvisorError('bzImage payload_offset/payload_length point outside the file');
  return image.subarray(start, end);
}

// --- gzip, zstd, lzma: library decoders plus the optional size trailer --------

function gzip(payload: Uint8Array): Uint8Array {
  // The kernel appends no trailer to gzip (the format has its own ISIZE), but
  // accept one: zlib rejects bytes after the member that are not another member.
  try {
    return gunzipSync(payload);
  } catch (e) {
    if (payload.length > 4) {
      try {
        return gunzipSync(payload.subarray(0, payload.length - 4));
      } catch { /* report the first error */ }
    }
    throw corrupt('gzip', (e as Error).message);
  }
}

/**
 * Decodes with the 4-byte size trailer removed (the kernel's layout; accepted
 * only if the output length matches it), else the payload as it is.
 */
function withSizeTrailer(format: string, payload: Uint8Array, decode: (d: Uint8Array) => Uint8Array): Uint8Array {
  if (payload.length > 8) {
    const expect = u32le(payload, payload.length - 4);
    try {
      const out = decode(payload.subarray(0, payload.length - 4));
      if (out.length % 2 ** 32 === expect) return out;
    } catch { /* maybe no trailer */ }
  }
  try {
    return decode(payload);
  } catch (e) {
    throw corrupt(format, (e as Error).message);
  }
}

// --- LZ4 legacy frame -----------------------------------------------------------

const LZ4_LEGACY_MAGIC = 0x184c2102;
const LZ4_LEGACY_BLOCK_MAX = 8 << 20; // uncompressed bytes per block

/**
 * The LZ4 legacy frame: the magic, then blocks of [u32 LE compressed size][LZ4
 * block], each decompressing to at most 8 MiB. It ends at the end of the data
 * or at the kernel's u32 uncompressed-size trailer; a repeated magic starts a
 * new frame (concatenated archives).
 */
export function lz4LegacyDecompress(src: Uint8Array): Uint8Array {
  let out = new Uint8Array(Math.max(src.length * 3, LZ4_LEGACY_BLOCK_MAX));
  let dp = 0;
  let sp = 0;
  for (;;) {
    const left = src.length - sp;
    if (left === 0) break;
    if (left < 4) throw corrupt('lz4', `${left} stray bytes at the end`);
    const size = u32le(src, sp);
    if (size === LZ4_LEGACY_MAGIC) { sp += 4; continue; }
    if (left === 4) {
      if (size !== dp % 2 ** 32) throw corrupt('lz4', `size trailer says ${size} bytes, decoded ${dp}`);
      break;
    }
    sp += 4;
    if (size === 0 || size > src.length - sp) throw corrupt('lz4', `block of ${size} bytes at offset ${sp - 4} overruns the data`);
    if (out.length - dp < LZ4_LEGACY_BLOCK_MAX) {
      const bigger = new Uint8Array(Math.max(out.length * 2, dp + LZ4_LEGACY_BLOCK_MAX));
      bigger.set(out.subarray(0, dp));
      out = bigger;
    }
    dp = lz4Block(src, sp, sp + size, out, dp, dp + LZ4_LEGACY_BLOCK_MAX);
    sp += size;
  }
  return out.subarray(0, dp);
}

/**
 * Decodes one LZ4 block src[sp, send) into dst at dp (never past dend);
 * returns the new output position. Sequences: a token (literal length << 4 |
 * match length - 4, 15 meaning "more bytes follow, each added, until one is
 * not 255"), the literals, a u16 LE match offset, the extra match length.
 * The last sequence has literals only.
 */
export function lz4Block(src: Uint8Array, sp: number, send: number, dst: Uint8Array, dp: number, dend: number): number {
  while (sp < send) {
    const token = src[sp++];
    let lit = token >> 4;
    if (lit === 15) {
      let b: number;
      do {
        if (sp >= send) throw corrupt('lz4', 'literal length runs past the block');
        b = src[sp++];
        lit += b;
      } while (b === 255);
    }
    if (lit > send - sp || lit > dend - dp) throw corrupt('lz4', 'literals run past the block or the output');
    dst.set(src.subarray(sp, sp + lit), dp);
    sp += lit;
    dp += lit;
    if (sp === send) break;
    if (send - sp < 2) throw corrupt('lz4', 'match offset cut off');
    const off = src[sp] | (src[sp + 1] << 8);
    sp += 2;
    if (off === 0 || off > dp) throw corrupt('lz4', `match offset ${off} at output ${dp} is invalid`);
    let len = (token & 15) + 4;
    if ((token & 15) === 15) {
      let b: number;
      do {
        if (sp >= send) throw corrupt('lz4', 'match length runs past the block');
        b = src[sp++];
        len += b;
      } while (b === 255);
    }
    if (len > dend - dp) throw corrupt('lz4', 'match runs past the output');
    let from = dp - off;
    if (off >= len) {
      dst.copyWithin(dp, from, from + len);
      dp += len;
    } else {
      // Overlapping copy: repeats the last `off` bytes.
      const stop = dp + len;
      while (dp < stop) dst[dp++] = dst[from++];
    }
  }
  return dp;
}

// --- XZ: container parsed here, LZMA2 by @napi-rs/lzma, BCJ x86 here -------------

const XZ_FILTER_X86 = 0x04;
const XZ_FILTER_LZMA2 = 0x21;
/** Bytes of the block check for each check type (xz-file-format.txt 2.1.1.2). */
const xzCheckSize = (type: number): number => (type === 0 ? 0 : 4 << Math.floor((type - 1) / 3));

/** Reads a multibyte integer (7 bits a byte, little-endian); returns [value, next offset]. */
function xzVarint(b: Uint8Array, off: number, end: number): [number, number] {
  let value = 0;
  for (let i = 0; i < 9; i++) {
    if (off >= end) break;
    const byte = b[off++];
    value += (byte & 0x7f) * 2 ** (7 * i);
    if ((byte & 0x80) === 0) return [value, off];
  }
  throw corrupt('xz', 'bad variable-length integer');
}

/**
 * An XZ stream (optionally followed by the kernel's 4-byte size trailer) whose
 * blocks use LZMA2, optionally behind the x86 BCJ filter. Block boundaries come
 * from the index at the end of the stream.
 */
export function xzDecompress(payload: Uint8Array): Uint8Array {
  // Find the stream footer: "YZ" at the very end, or 4 bytes before it.
  let end = payload.length;
  let trailer: number | undefined;
  const endsYZ = (e: number): boolean => e >= 24 && payload[e - 2] === 0x59 && payload[e - 1] === 0x5a;
  if (!endsYZ(end)) {
    if (!endsYZ(end - 4)) throw corrupt('xz', 'no stream footer');
    trailer = u32le(payload, end - 4);
    end -= 4;
  }
  const checkType = payload[7] & 0x0f;
  if (payload[6] !== 0 || payload[end - 4] !== payload[6] || payload[end - 3] !== payload[7]) throw corrupt('xz', 'stream header and footer flags differ');
  const checkSize = xzCheckSize(checkType);
  const indexSize = (u32le(payload, end - 8) + 1) * 4;
  let ip = end - 12 - indexSize;
  if (ip < 12 || payload[ip] !== 0) throw corrupt('xz', 'index not found');
  const indexEnd = ip + indexSize - 4;
  let count: number;
  [count, ip] = xzVarint(payload, ip + 1, indexEnd);
  const blocks: { unpadded: number; size: number }[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    let unpadded: number, size: number;
    [unpadded, ip] = xzVarint(payload, ip, indexEnd);
    [size, ip] = xzVarint(payload, ip, indexEnd);
    blocks.push({ unpadded, size });
    total += size;
  }
  if (trailer !== undefined && total % 2 ** 32 !== trailer) throw corrupt('xz', `size trailer says ${trailer} bytes, index says ${total}`);
  const out = new Uint8Array(total);
  let bp = 12;
  let dp = 0;
  for (const block of blocks) {
    const headerSize = (payload[bp] + 1) * 4;
    const hEnd = bp + headerSize - 4; // the header's CRC32 follows
    const flags = payload[bp + 1];
    if (flags & 0x3c) throw corrupt('xz', 'reserved block flags set');
    let p = bp + 2;
    if (flags & 0x40) p = xzVarint(payload, p, hEnd)[1]; // compressed size
    if (flags & 0x80) p = xzVarint(payload, p, hEnd)[1]; // uncompressed size
    const filters: { id: number; props: Uint8Array }[] = [];
    for (let f = 0; f <= (flags & 3); f++) {
      let id: number, propsSize: number;
      [id, p] = xzVarint(payload, p, hEnd);
      [propsSize, p] = xzVarint(payload, p, hEnd);
      filters.push({ id, props: payload.subarray(p, p + propsSize) });
      p += propsSize;
    }
    if (p > hEnd) throw corrupt('xz', 'block header overruns');
    const last = filters[filters.length - 1];
    if (last.id !== XZ_FILTER_LZMA2) throw corrupt('xz', `last filter is 0x${last.id.toString(16)}, not LZMA2`);
    const dataStart = bp + headerSize;
    const dataEnd = bp + block.unpadded - checkSize;
    if (dataEnd <= dataStart || dataEnd > end) throw corrupt('xz', 'block overruns the stream');
    let data: Uint8Array;
    try {
      data = lzma2.decompressSync(payload.subarray(dataStart, dataEnd));
    } catch (e) {
      throw corrupt('xz', (e as Error).message);
    }
    if (data.length !== block.size) throw corrupt('xz', `block decoded to ${data.length} bytes, index says ${block.size}`);
    for (let f = filters.length - 2; f >= 0; f--) {
      const { id, props } = filters[f];
      if (id !== XZ_FILTER_X86) throw new TsvisorError(`unsupported kernel compression: xz with filter 0x${id.toString(16)} (${UNSUPPORTED_HINT})`);
      bcjX86Decode(data, props.length >= 4 ? u32le(props, 0) : 0);
    }
    out.set(data, dp);
    dp += data.length;
    bp += (block.unpadded + 3) & ~3;
  }
  return out;
}

const BCJ_MASK_ALLOWED = [true, true, true, false, true, false, false, false];
const BCJ_MASK_BIT_NUM = [0, 1, 2, 2, 3, 3, 3, 3];
const bcjMsByte = (b: number): boolean => b === 0x00 || b === 0xff;

/**
 * Undoes the x86 BCJ filter in place: the encoder turned the rel32 of E8
 * (call) and E9 (jmp) instructions into absolute addresses (position +
 * `startPos` + 5 added) when the top byte is 00 or FF; `prevMask` tracks
 * E8/E9 bytes among the previous three so that opcodes inside another
 * instruction's operand are left alone exactly as the encoder did.
 */
export function bcjX86Decode(buf: Uint8Array, startPos = 0): void {
  const limit = buf.length - 4;
  let prevPos = -5;
  let prevMask = 0;
  for (let i = 0; i < limit; i++) {
    if ((buf[i] & 0xfe) !== 0xe8) continue;
    const dist = i - prevPos;
    if (dist > 3) {
      prevMask = 0;
    } else {
      prevMask = (prevMask << (dist - 1)) & 7;
      if (prevMask !== 0) {
        const b = buf[i + 4 - BCJ_MASK_BIT_NUM[prevMask]];
        if (!BCJ_MASK_ALLOWED[prevMask] || bcjMsByte(b)) {
          prevPos = i;
          prevMask = (prevMask << 1) | 1;
          continue;
        }
      }
    }
    prevPos = i;
    if (!bcjMsByte(buf[i + 4])) {
      prevMask = (prevMask << 1) | 1;
      continue;
    }
    let src = u32le(buf, i + 1);
    let dest: number;
    for (;;) {
      dest = (src - (startPos + i + 5)) >>> 0;
      if (prevMask === 0) break;
      const j = BCJ_MASK_BIT_NUM[prevMask] * 8;
      if (!bcjMsByte((dest >>> (24 - j)) & 0xff)) break;
      src = (dest ^ ((1 << (32 - j)) - 1)) >>> 0;
    }
    dest &= 0x01ffffff;
    if (dest & 0x01000000) dest |= 0xfe000000;
    buf[i + 1] = dest & 0xff;
    buf[i + 2] = (dest >>> 8) & 0xff;
    buf[i + 3] = (dest >>> 16) & 0xff;
    buf[i + 4] = (dest >>> 24) & 0xff;
    i += 4;
  }
}
