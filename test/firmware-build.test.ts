// Builds the firmware images (firmware/build.sh) and checks that each one is
// what a multiboot v1 loader takes: a 32-bit x86 ELF executable loaded at or
// above 1 MiB, with a valid multiboot header (magic, checksum, memory-info
// flag, no a.out kludge) in its first 8 KiB. No guest runs here.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url)); // dist/test/ → repo
const firmwareDir = join(repoRoot, 'firmware');
const scenarios = readdirSync(join(firmwareDir, 'scenarios'))
  .filter((f) => f.endsWith('.c'))
  .map((f) => f.slice(0, -2))
  .sort();

const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
const MULTIBOOT_SEARCH = 8192;
const MB_FLAG_MEMORY = 1 << 1;
const MB_FLAG_AOUT_KLUDGE = 1 << 16;
const ELFCLASS32 = 1;
const ELFDATA2LSB = 1;
const ET_EXEC = 2;
const EM_386 = 3;
const PT_LOAD = 1;
const PF_X = 1;

/** Runs the build script; its stdout lists the images, one a line. */
function build(names: string[] = []): string[] {
  try {
    return execFileSync('bash', [join(firmwareDir, 'build.sh'), ...names], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
      .split('\n')
      .filter(Boolean);
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`firmware/build.sh failed: ${err.stderr?.trim() || err.message}`);
  }
}

interface Segment { type: number; offset: number; paddr: number; filesz: number; memsz: number; flags: number }

function checkImage(image: Uint8Array): string[] {
  const problems: string[] = [];
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.byteLength < 52 || dv.getUint32(0, false) !== 0x7f454c46) return ['not an ELF file'];
  if (image[4] !== ELFCLASS32) problems.push(`ELF class ${image[4]}, want 32-bit`);
  if (image[5] !== ELFDATA2LSB) problems.push('not little-endian');
  if (dv.getUint16(16, true) !== ET_EXEC) problems.push(`e_type ${dv.getUint16(16, true)}, want EXEC`);
  if (dv.getUint16(18, true) !== EM_386) problems.push(`e_machine ${dv.getUint16(18, true)}, want EM_386`);
  const entry = dv.getUint32(24, true);
  const phoff = dv.getUint32(28, true);
  const phentsize = dv.getUint16(42, true);
  const phnum = dv.getUint16(44, true);
  const segments: Segment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    segments.push({
      type: dv.getUint32(o, true), offset: dv.getUint32(o + 4, true), paddr: dv.getUint32(o + 12, true),
      filesz: dv.getUint32(o + 16, true), memsz: dv.getUint32(o + 20, true), flags: dv.getUint32(o + 24, true),
    });
  }
  const loads = segments.filter((s) => s.type === PT_LOAD && s.memsz > 0);
  if (loads.length === 0) problems.push('no PT_LOAD segment');
  for (const s of loads) {
    if (s.paddr < 0x100000) problems.push(`segment at 0x${s.paddr.toString(16)} is below 1 MiB`);
    if (s.offset + s.filesz > image.byteLength) problems.push('segment runs past the end of the file');
  }
  if (!loads.some((s) => s.flags & PF_X && entry >= s.paddr && entry < s.paddr + s.memsz))
    problems.push(`entry 0x${entry.toString(16)} is not in an executable segment`);

  let header = -1;
  for (let off = 0; off + 12 <= Math.min(image.byteLength, MULTIBOOT_SEARCH); off += 4) {
    if (dv.getUint32(off, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = dv.getUint32(off + 4, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + dv.getUint32(off + 8, true)) >>> 0) !== 0) continue;
    header = off;
    if (!(flags & MB_FLAG_MEMORY)) problems.push('multiboot flags do not ask for memory information');
    if (flags & MB_FLAG_AOUT_KLUDGE) problems.push('multiboot a.out kludge set (the image is ELF)');
    if (!loads.some((s) => off >= s.offset && off + 12 <= s.offset + s.filesz)) problems.push('multiboot header is not inside a loaded segment');
    break;
  }
  if (header < 0) problems.push('no multiboot header (magic + checksum) in the first 8 KiB');
  return problems;
}

test.serial('build.sh builds every scenario into a multiboot ELF', (t) => {
  const images = build();
  t.deepEqual(images, scenarios.map((n) => join(firmwareDir, 'build', `${n}.elf`)));
  for (const name of ['hello', 'fixups', 'exits', 'pci-scan']) t.true(scenarios.includes(name), `scenario ${name}`);
  for (const path of images) {
    const image = readFileSync(path);
    t.deepEqual(checkImage(image), [], path);
    t.true(image.byteLength < 64 * 1024, `${path} is ${image.byteLength} bytes`);
  }
});

test.serial('build.sh is incremental and builds single images by name', (t) => {
  const before = build().map((p) => [p, statSync(p).mtimeMs] as const);
  const again = build(['hello', 'fixups.elf']);
  t.deepEqual(again, ['hello', 'fixups'].map((n) => join(firmwareDir, 'build', `${n}.elf`)));
  for (const [path, mtime] of before) t.is(statSync(path).mtimeMs, mtime, `${path} was rebuilt`);
  t.throws(() => build(['no-such-scenario']), { message: /no scenario 'no-such-scenario'/ });
});
