// Just enough ELF to load a kernel: the loadable segments of an ELF64 vmlinux
// or an ELF32 multiboot image, with every offset checked against the file.
import { TsvisorError } from '../errors.js';

export interface LoadSegment {
  /** Physical (load) address. */
  paddr: number;
  /** Bytes from the file. */
  data: Uint8Array;
  /** Size in memory (≥ data length; the rest is zeroed). */
  memsz: number;
}

export interface ElfImage {
  class: 32 | 64;
  machine: number;
  entry: number;
  segments: LoadSegment[];
}

export const EM_386 = 3;
export const EM_X86_64 = 62;
const PT_LOAD = 1;

export function isElf(image: Uint8Array): boolean {
  return image.byteLength >= 52 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c && image[3] === 0x46;
}

export function parseElf(image: Uint8Array, name = 'kernel'): ElfImage {
  const bad = (why: string) => new TsvisorError(`${name} is not a loadable ELF: ${why}`, 1, 'pass a vmlinux, bzImage or multiboot image');
  const truncated = (why: string) => new TsvisorError(`${name} is truncated: ${why}`, 1, 'check the file was copied whole');
  if (!isElf(image)) throw bad('no ELF magic');
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const cls = image[4] === 2 ? 64 : image[4] === 1 ? 32 : 0;
  if (cls === 0) throw bad('unknown ELF class');
  if (image[5] !== 1) throw bad('not little-endian');
  const machine = dv.getUint16(18, true);
  const is64 = cls === 64;
  if (is64 && image.byteLength < 64) throw truncated('its ELF header runs past the end of the file');
  const entry = is64 ? Number(dv.getBigUint64(24, true)) : dv.getUint32(24, true);
  const phoff = is64 ? Number(dv.getBigUint64(32, true)) : dv.getUint32(28, true);
  const phentsize = dv.getUint16(is64 ? 54 : 42, true);
  const phnum = dv.getUint16(is64 ? 56 : 44, true);
  if (phnum === 0) throw bad('no program headers');
  if (phentsize < (is64 ? 56 : 32)) throw bad(`program header entries of ${phentsize} bytes`);
  if (phoff + phnum * phentsize > image.byteLength) throw truncated('its program headers run past the end of the file');
  const segments: LoadSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (dv.getUint32(o, true) !== PT_LOAD) continue;
    const offset = is64 ? Number(dv.getBigUint64(o + 8, true)) : dv.getUint32(o + 4, true);
    const paddr = is64 ? Number(dv.getBigUint64(o + 24, true)) : dv.getUint32(o + 12, true);
    const filesz = is64 ? Number(dv.getBigUint64(o + 32, true)) : dv.getUint32(o + 16, true);
    const memsz = is64 ? Number(dv.getBigUint64(o + 40, true)) : dv.getUint32(o + 20, true);
    if (offset + filesz > image.byteLength) throw truncated(`ELF segment ${i} runs past the end of the file (${offset + filesz} bytes needed, ${image.byteLength} present)`);
    if (memsz < filesz) throw bad(`segment ${i} is smaller in memory than in the file`);
    if (memsz === 0) continue;
    segments.push({ paddr, data: image.subarray(offset, offset + filesz), memsz });
  }
  if (segments.length === 0) throw bad('no loadable segments');
  return { class: cls, machine, entry, segments };
}
