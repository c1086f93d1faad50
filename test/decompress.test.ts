// Kernel payload decompression against the real compressors, with the options
// the kernel's build uses, with and without its 4-byte size trailer; then the
// default guest's and the Debian guest's real bzImages when they are built.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { bcjX86Decode, bzImagePayload, decompressPayload, lz4LegacyDecompress } from '../src/boot/decompress.js';
import { TsvisorError } from '../src/errors.js';
import { debianGuestPaths, defaultGuestPaths } from '../src/guest/default-guest.js';

/** ~2.5 MB: x86-64 machine code (for the BCJ filter), random bytes, zeros, text. */
function sampleData(): Uint8Array {
  const node = readFileSync(process.execPath);
  const code = node.subarray(node.length >> 2, (node.length >> 2) + (1 << 20));
  const text = Buffer.from('tsvisor boots Linux with a virtio-net NIC on a TAP device. '.repeat(8000));
  // Random bytes where one in four is E8/E9: stresses BCJ's prefix mask logic.
  const calls = randomBytes(200_000).map((b, i) => (i % 4 === 0 ? 0xe8 | (b & 1) : b));
  return Buffer.concat([code, randomBytes(300_000), Buffer.alloc(400_000), text, calls, Buffer.from([0xe8, 0, 0])]);
}
const data = sampleData();

function sizeTrailer(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

function compress(tool: string, args: string[], input: Uint8Array, pkg: string): Buffer {
  try {
    return execFileSync(tool, args, { input, maxBuffer: 1 << 30 });
  } catch (e) {
    throw new Error(`${tool} failed (${(e as Error).message}); install it with: apt-get install ${pkg}`);
  }
}

// The compressors as scripts/Makefile.lib and scripts/xz_wrap.sh run them.
const formats: [string, string, string[], string][] = [
  ['gzip', 'gzip', ['-9', '-c'], 'gzip'],
  ['xz', 'xz', ['--check=crc32', '--x86', '--lzma2=preset=9e', '-c'], 'xz-utils'],
  ['lz4', 'lz4', ['-l', '-9', '-c'], 'lz4'],
  ['zstd', 'zstd', ['-19', '-c', '-q'], 'zstd'],
  ['lzma', 'lzma', ['-9', '-c'], 'xz-utils'],
];

const packedCache = new Map<string, Buffer>();
function packedFor(tool: string, args: string[], pkg: string): Buffer {
  const key = [tool, ...args].join(' ');
  let p = packedCache.get(key);
  if (!p) packedCache.set(key, (p = compress(tool, args, data, pkg)));
  return p;
}

for (const [format, tool, args, pkg] of formats) {
  test(`${format}: round trip, with and without the size trailer`, (t) => {
    const packed = packedFor(tool, args, pkg);
    const plain = decompressPayload(packed);
    t.is(plain.format, format);
    t.true(Buffer.from(plain.data).equals(data));
    const kernelLayout = decompressPayload(Buffer.concat([packed, sizeTrailer(data.length)]));
    t.is(kernelLayout.format, format);
    t.true(Buffer.from(kernelLayout.data).equals(data));
  });

  test(`${format}: truncated data is a TsvisorError`, (t) => {
    const packed = packedFor(tool, args, pkg);
    const err = t.throws(() => decompressPayload(packed.subarray(0, packed.length >> 1)));
    t.true(err instanceof TsvisorError, String(err));
  });
}

test('lz4: several 8 MiB legacy blocks and concatenated frames', (t) => {
  const big = Buffer.concat([data, data, data, data]); // > 8 MiB: two blocks
  const packed = compress('lz4', ['-l', '-9', '-c'], big, 'lz4');
  t.true(Buffer.from(lz4LegacyDecompress(Buffer.concat([packed, sizeTrailer(big.length)]))).equals(big));
  const small = compress('lz4', ['-l', '-c'], data.subarray(0, 1000), 'lz4');
  t.true(Buffer.from(lz4LegacyDecompress(Buffer.concat([packed, small]))).equals(Buffer.concat([big, data.subarray(0, 1000)])));
  const bad = Buffer.concat([packed, sizeTrailer(big.length + 1)]);
  t.throws(() => lz4LegacyDecompress(bad), { message: /size trailer/ });
});

test('xz: multi-block streams (xz --block-size)', (t) => {
  const packed = compress('xz', ['--check=crc64', '--x86', '--lzma2=preset=6', '--block-size=700000', '-c'], data, 'xz-utils');
  t.true(Buffer.from(decompressPayload(packed).data).equals(data));
});

test('bcjX86Decode undoes xz --x86 on raw streams', (t) => {
  // Raw LZMA2 with and without the x86 filter: the difference is the filter alone.
  const code = data.subarray(0, 1 << 20);
  const filtered = execFileSync('xz', ['--format=raw', '--x86', '--lzma2=preset=0', '-c'], { input: code });
  const plain = execFileSync('xz', ['--format=raw', '--lzma2=preset=0', '-dc'], { input: filtered });
  t.false(plain.equals(code)); // really filtered
  const copy = new Uint8Array(plain);
  bcjX86Decode(copy);
  t.true(Buffer.from(copy).equals(code));
});

test('unsupported and unknown formats name the problem', (t) => {
  const bz = Buffer.from('BZh91AY&SY\x00\x00', 'latin1'); // bzip2 stream header
  t.throws(() => decompressPayload(bz), { instanceOf: TsvisorError, message: /unsupported kernel compression: bzip2 \(rebuild the kernel with gzip, xz, lz4 or zstd, or pass the uncompressed vmlinux\)/ });
  const lzo = Buffer.from([0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0]);
  t.throws(() => decompressPayload(lzo), { instanceOf: TsvisorError, message: /unsupported kernel compression: lzo/ });
  t.throws(() => decompressPayload(Buffer.from('not a kernel')), { instanceOf: TsvisorError, message: /unknown kernel compression/ });
  t.throws(() => bzImagePayload(Buffer.alloc(4096)), { instanceOf: TsvisorError, message: /HdrS/ });
});

// --- real kernels: present only once guest/build.sh or guest/debian-kernel.sh has run --

function checkBzImage(path: string, format?: string) {
  return (t: import('ava').ExecutionContext): Uint8Array => {
    const image = readFileSync(path);
    const start = Date.now();
    const out = decompressPayload(bzImagePayload(image));
    t.log(`${path}: ${out.format} payload → ${out.data.length} bytes in ${Date.now() - start} ms`);
    if (format) t.is(out.format, format);
    t.deepEqual([...out.data.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
    t.is(out.data[4], 2); // ELFCLASS64
    t.is(out.data[18] | (out.data[19] << 8), 62); // EM_X86_64
    return out.data;
  };
}

const guest = defaultGuestPaths();
if (guest && existsSync(guest.bzImage)) {
  test('default guest bzImage decompresses to an x86-64 ELF', (t) => {
    const elf = checkBzImage(guest.bzImage)(t);
    // The payload is vmlinux.bin = `objcopy -R .comment -S vmlinux` (plus relocations if relocatable).
    const dir = mkdtempSync(join(tmpdir(), 'tsvisor-vmlinux-'));
    let stripped: Buffer;
    try {
      execFileSync('objcopy', ['-R', '.comment', '-S', guest.kernel, join(dir, 'vmlinux.bin')]);
      stripped = readFileSync(join(dir, 'vmlinux.bin'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    t.true(Buffer.from(elf.subarray(0, stripped.length)).equals(stripped));
  });
} else {
  test.skip('default guest bzImage decompresses (SKIPPED: default guest not built; run npm run guest)', () => {});
}

const debian = debianGuestPaths();
if (debian) {
  test('Debian cloud bzImage (LZ4) decompresses to an x86-64 ELF', checkBzImage(debian.bzImage, 'lz4'));
} else {
  test.skip('Debian cloud bzImage decompresses (SKIPPED: not prepared; run bash guest/debian-kernel.sh)', () => {});
}
