// Multiboot v1: recognizes the header in a kernel's first 8 KiB, loads the
// image (ELF segments, or the header's a.out-kludge addresses), builds the
// multiboot information (memory map, command line) and enters the image in
// flat 32-bit protected mode with EAX = 0x2BADB002 and EBX = the information.
// tsvisor's own test programs (firmware/) and kvm-unit-tests use it.
import { TsvisorError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { EM_386, isElf, parseElf } from './elf.js';
import { CMDLINE_ADDR, CMDLINE_MAX, e820Map, HIGH_MEMORY, MiB, MULTIBOOT_INFO_ADDR, PCI_HOLE_START } from './layout.js';
import { protectedModeState, type BootCpuState } from './cpu-state.js';

export const MULTIBOOT_HEADER_MAGIC = 0x1badb002;
export const MULTIBOOT_BOOTLOADER_MAGIC = 0x2badb002;
const MULTIBOOT_SEARCH = 8192;
const MB_FLAG_AOUT_KLUDGE = 1 << 16;
const MB_FLAG_VIDEO = 1 << 2;
const MBI_MEMORY = 1 << 0;
const MBI_CMDLINE = 1 << 2;
const MBI_MMAP = 1 << 6;
const MBI_LOADER_NAME = 1 << 9;

export interface MultibootHeader {
  offset: number;
  flags: number;
  headerAddr: number;
  loadAddr: number;
  loadEndAddr: number;
  bssEndAddr: number;
  entryAddr: number;
}

/** The multiboot header, if the image has a valid one (magic and checksum) in its first 8 KiB. */
export function findMultibootHeader(image: Uint8Array): MultibootHeader | null {
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const limit = Math.min(image.byteLength, MULTIBOOT_SEARCH) - 12;
  for (let off = 0; off <= limit; off += 4) {
    if (dv.getUint32(off, true) !== MULTIBOOT_HEADER_MAGIC) continue;
    const flags = dv.getUint32(off + 4, true);
    const checksum = dv.getUint32(off + 8, true);
    if (((MULTIBOOT_HEADER_MAGIC + flags + checksum) >>> 0) !== 0) continue;
    const field = (i: number) => (off + 12 + i * 4 + 4 <= image.byteLength ? dv.getUint32(off + 12 + i * 4, true) : 0);
    return { offset: off, flags, headerAddr: field(0), loadAddr: field(1), loadEndAddr: field(2), bssEndAddr: field(3), entryAddr: field(4) };
  }
  return null;
}

export interface MultibootResult extends BootCpuState {
  entry: number;
  end: number;
}

export function loadMultiboot(mem: GuestMemory, memBytes: number, image: Uint8Array, header: MultibootHeader, cmdline: string, name = 'kernel'): MultibootResult {
  if (header.flags & MB_FLAG_VIDEO) {
    // A video mode request is a preference; a serial-only machine ignores it.
  }
  const place = (addr: number, data: Uint8Array, memsz: number) => {
    const dst = mem.slice(addr, memsz);
    if (dst === null) throw new TsvisorError(`${name}: multiboot segment at 0x${addr.toString(16)} (+${memsz}) lies outside guest RAM`, 2, 'raise --mem');
    dst.set(data);
    dst.fill(0, data.byteLength);
  };
  let entry: number;
  let end = 0;
  if (header.flags & MB_FLAG_AOUT_KLUDGE) {
    // Load from the file offset that corresponds to header_addr.
    const fileStart = header.offset - (header.headerAddr - header.loadAddr);
    const loadEnd = header.loadEndAddr || header.loadAddr + (image.byteLength - fileStart);
    if (fileStart < 0 || loadEnd < header.loadAddr || fileStart + (loadEnd - header.loadAddr) > image.byteLength)
      throw new TsvisorError(`${name}: multiboot load addresses do not match the file`, 1, 'check the image');
    const bssEnd = Math.max(header.bssEndAddr, loadEnd);
    place(header.loadAddr, image.subarray(fileStart, fileStart + (loadEnd - header.loadAddr)), bssEnd - header.loadAddr);
    entry = header.entryAddr;
    end = bssEnd;
  } else {
    if (!isElf(image)) throw new TsvisorError(`${name}: multiboot image is not ELF and has no load addresses`, 1, 'link it as ELF or set the a.out kludge flag');
    const elf = parseElf(image, name);
    if (elf.class !== 32 || elf.machine !== EM_386) throw new TsvisorError(`${name}: multiboot ELF images must be 32-bit x86`, 1, 'link with -m elf_i386');
    for (const s of elf.segments) {
      place(s.paddr, s.data, s.memsz);
      end = Math.max(end, s.paddr + s.memsz);
    }
    entry = elf.entry;
  }

  // Multiboot information: memory, command line, memory map.
  const lowRamEnd = Math.min(memBytes, PCI_HOLE_START);
  const cmdBytes = new TextEncoder().encode(cmdline);
  if (cmdBytes.byteLength >= CMDLINE_MAX)
    throw new TsvisorError(`the command line is too long: ${cmdBytes.byteLength} bytes, tsvisor passes at most ${CMDLINE_MAX - 1} to a multiboot image`, 2, 'shorten --append');
  mem.slice(CMDLINE_ADDR, cmdBytes.byteLength + 1)!.set([...cmdBytes, 0]);
  const loaderName = new TextEncoder().encode('tsvisor\0');
  const map = e820Map(memBytes);
  const info = MULTIBOOT_INFO_ADDR;
  const mmapAddr = info + 0x80;
  const nameAddr = mmapAddr + map.length * 24;
  mem.slice(info, 0x80)!.fill(0);
  mem.writeU32(info, MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME);
  mem.writeU32(info + 4, 640);
  mem.writeU32(info + 8, Math.floor((lowRamEnd - HIGH_MEMORY) / 1024));
  mem.writeU32(info + 16, CMDLINE_ADDR);
  mem.writeU32(info + 44, map.length * 24);
  mem.writeU32(info + 48, mmapAddr);
  mem.writeU32(info + 64, nameAddr);
  map.forEach((e, i) => {
    const o = mmapAddr + i * 24;
    mem.writeU32(o, 20); // size of the entry, not counting this field
    mem.writeU64(o + 4, BigInt(e.addr));
    mem.writeU64(o + 12, BigInt(e.size));
    mem.writeU32(o + 20, e.type);
  });
  mem.write(nameAddr, loaderName);
  if (end > lowRamEnd) throw new TsvisorError(`${name} needs ${Math.ceil(end / MiB)} MiB of RAM`, 2, 'raise --mem');
  const cpu = protectedModeState(mem, entry, MULTIBOOT_BOOTLOADER_MAGIC, info);
  return { ...cpu, entry, end };
}
