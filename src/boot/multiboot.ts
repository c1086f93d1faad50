// Multiboot v1: recognizes the header in a kernel's first 8 KiB, loads the
// image (ELF segments, or the header's a.out-kludge addresses), builds the
// multiboot information (memory, command line, modules, memory map) and
// enters the image in flat 32-bit protected mode with EAX = 0x2BADB002 and
// EBX = the information. tsvisor's own test programs (firmware/) and
// kvm-unit-tests use it. What the guest sees follows QEMU's -kernel loader,
// which those programs are written against: the command line starts with the
// kernel's name (argv[0]), and --initrd is module 0, page-aligned after the
// image, named by its path (kvm-unit-tests reads it as its environment).
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
const MBI_MODS = 1 << 3;
const MBI_MMAP = 1 << 6;
const MBI_LOADER_NAME = 1 << 9;
/** struct multiboot_info offsets. */
const MBI = { flags: 0, memLower: 4, memUpper: 8, cmdline: 16, modsCount: 20, modsAddr: 24, mmapLength: 44, mmapAddr: 48, bootLoaderName: 64 } as const;
/** struct multiboot_mod_list: mod_start, mod_end, cmdline, pad. */
const MOD_ENTRY = 16;
const MMAP_ENTRY = 24;
const PAGE_SIZE = 4096;

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

export interface MultibootBoot {
  /** What follows the kernel's name on the command line (--append). */
  cmdline: string;
  /** The kernel as the user named it (its path): the command line's first word, as QEMU passes it. */
  kernelName: string;
  /** Module 0 (--initrd): its bytes and its string (QEMU: the path as given). */
  module?: { data: Uint8Array; name: string } | null;
}

export interface MultibootResult extends BootCpuState {
  entry: number;
  /** End of the image (bss included). */
  end: number;
  /** The command line the guest sees: "<kernel name> <cmdline>". */
  cmdline: string;
  /** Where module 0 was put, if there was one. */
  module?: { start: number; end: number };
}

export function loadMultiboot(mem: GuestMemory, memBytes: number, image: Uint8Array, header: MultibootHeader, boot: MultibootBoot): MultibootResult {
  const name = boot.kernelName;
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

  const lowRamEnd = Math.min(memBytes, PCI_HOLE_START);
  if (end > lowRamEnd) throw new TsvisorError(`${name} needs ${Math.ceil(end / MiB)} MiB of RAM`, 2, 'raise --mem');

  // Module 0 on the first page boundary after the image (bss included), as QEMU
  // places it; never below 1 MiB, where the information and strings go.
  let module: { start: number; end: number } | undefined;
  if (boot.module) {
    const start = Math.max(HIGH_MEMORY, Math.ceil(end / PAGE_SIZE) * PAGE_SIZE);
    const modEnd = start + boot.module.data.byteLength;
    if (modEnd > lowRamEnd)
      throw new TsvisorError(`${name} and the initrd (module 0) need ${Math.ceil(modEnd / MiB)} MiB of RAM below ${PCI_HOLE_START / MiB} MiB`, 2, 'raise --mem');
    // Guest RAM is split into views of at most 2 GiB; a module must lie in one.
    if (!mem.write(start, boot.module.data))
      throw new TsvisorError(`the initrd (module 0, ${boot.module.data.byteLength} bytes at 0x${start.toString(16)}) crosses a 2 GiB boundary of guest RAM`, 2, 'use a smaller initrd');
    module = { start, end: modEnd };
  }

  // Strings: the command line, then the module's string, in the command-line area.
  const enc = new TextEncoder();
  const cmdline = `${boot.kernelName} ${boot.cmdline}`;
  const cmdBytes = enc.encode(cmdline);
  const modName = boot.module ? enc.encode(boot.module.name) : new Uint8Array(0);
  if (cmdBytes.byteLength + 1 + (boot.module ? modName.byteLength + 1 : 0) > CMDLINE_MAX)
    throw new TsvisorError(`the multiboot command line is too long: ${cmdBytes.byteLength} bytes (the kernel's name, a space, --append), tsvisor passes at most ${CMDLINE_MAX - 1 - (boot.module ? modName.byteLength + 1 : 0)}`, 2, 'shorten --append');
  mem.write(CMDLINE_ADDR, cmdBytes);
  mem.writeU8(CMDLINE_ADDR + cmdBytes.byteLength, 0);
  const modNameAddr = CMDLINE_ADDR + cmdBytes.byteLength + 1;
  if (boot.module) {
    mem.write(modNameAddr, modName);
    mem.writeU8(modNameAddr + modName.byteLength, 0);
  }

  // The information structure, then the memory map, the module list and the loader's name.
  const map = e820Map(memBytes);
  const info = MULTIBOOT_INFO_ADDR;
  const mmapAddr = info + 0x80;
  const modsAddr = mmapAddr + map.length * MMAP_ENTRY;
  const nameAddr = modsAddr + MOD_ENTRY;
  mem.slice(info, 0x80)!.fill(0);
  mem.writeU32(info + MBI.flags, MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME);
  mem.writeU32(info + MBI.memLower, 640);
  // KiB from 1 MiB to the end of RAM below the PCI hole (QEMU: below-4G RAM - 1 MiB).
  mem.writeU32(info + MBI.memUpper, Math.floor((lowRamEnd - HIGH_MEMORY) / 1024));
  mem.writeU32(info + MBI.cmdline, CMDLINE_ADDR);
  mem.writeU32(info + MBI.modsCount, module ? 1 : 0);
  mem.writeU32(info + MBI.modsAddr, modsAddr);
  mem.writeU32(info + MBI.mmapLength, map.length * MMAP_ENTRY);
  mem.writeU32(info + MBI.mmapAddr, mmapAddr);
  mem.writeU32(info + MBI.bootLoaderName, nameAddr);
  map.forEach((e, i) => {
    const o = mmapAddr + i * MMAP_ENTRY;
    mem.writeU32(o, MMAP_ENTRY - 4); // size of the entry, not counting this field
    mem.writeU64(o + 4, BigInt(e.addr));
    mem.writeU64(o + 12, BigInt(e.size));
    mem.writeU32(o + 20, e.type);
  });
  mem.slice(modsAddr, MOD_ENTRY)!.fill(0);
  if (module) {
    mem.writeU32(modsAddr, module.start);
    mem.writeU32(modsAddr + 4, module.end);
    mem.writeU32(modsAddr + 8, modNameAddr);
  }
  mem.write(nameAddr, enc.encode('tsvisor\0'));
  const cpu = protectedModeState(mem, entry, MULTIBOOT_BOOTLOADER_MAGIC, info);
  return { ...cpu, entry, end, cmdline, module };
}
