// The Linux x86 64-bit boot protocol: load the kernel (a vmlinux ELF, or a
// bzImage whose compressed payload is decompressed here on the host so the
// guest never runs its own decompressor), the initrd and the command line,
// fill the zero page (boot_params) with the e820 map, and return the CPU state
// for the 64-bit entry point with RSI pointing at boot_params.
import { TsvisorError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { EM_X86_64, isElf, parseElf, type ElfImage } from './elf.js';
import { decompressPayload } from './decompress.js';
import { HDR, HDRS_MAGIC, BOOT_FLAG, LOADED_HIGH, CAN_USE_HEAP, isBzImage, parseSetupHeader, payloadOf, type SetupHeader } from './setup-header.js';
import { BOOT_PARAMS_ADDR, BOOT_STACK_TOP, CMDLINE_ADDR, CMDLINE_MAX, e820Map, MiB, PCI_HOLE_START } from './layout.js';
import { longModeState, type BootCpuState } from './cpu-state.js';

/** struct boot_params offsets outside the setup header. */
const BP = {
  ext_ramdisk_image: 0x0c0,
  ext_ramdisk_size: 0x0c4,
  ext_cmd_line_ptr: 0x0c8,
  e820_entries: 0x1e8,
  e820_table: 0x2d0,
} as const;
const E820_MAX_ENTRIES_ZEROPAGE = 128;
/** x86 COMMAND_LINE_SIZE; the limit for a vmlinux, whose own header is not at hand. */
const DEFAULT_CMDLINE_SIZE = 2048;
const TYPE_OF_LOADER_UNDEFINED = 0xff;

export interface LinuxKernel {
  format: 'bzImage' | 'vmlinux';
  /** For a bzImage: the compression of its payload. */
  compression?: string;
  elf: ElfImage;
  header?: SetupHeader;
  /** Lowest and highest guest physical address the kernel occupies, including its init_size footprint. */
  start: number;
  end: number;
  cmdlineSize: number;
  initrdAddrMax: number;
}

/** Recognizes and unpacks a kernel image: bzImage (payload decompressed on the host) or vmlinux. */
export function parseLinuxKernel(image: Uint8Array, name = 'kernel'): LinuxKernel {
  let elfBytes: Uint8Array;
  let header: SetupHeader | undefined;
  let compression: string | undefined;
  if (isBzImage(image)) {
    header = parseSetupHeader(image, name);
    const { format, data } = decompressPayload(payloadOf(image, header));
    compression = format;
    elfBytes = data;
    if (!isElf(elfBytes)) throw new TsvisorError(`${name}: its ${format} payload did not decompress to an ELF vmlinux`, 1, 'pass the vmlinux from the kernel build instead');
  } else if (isElf(image)) {
    elfBytes = image;
  } else {
    throw new TsvisorError(`${name} is not a kernel tsvisor can load (neither bzImage, ELF vmlinux nor multiboot)`, 1, 'pass a bzImage, a vmlinux or a multiboot image');
  }
  const elf = parseElf(elfBytes, name);
  if (elf.class !== 64 || elf.machine !== EM_X86_64) throw new TsvisorError(`${name} is not an x86-64 kernel`, 1, 'tsvisor boots 64-bit x86 Linux');
  let start = Infinity;
  let end = 0;
  for (const s of elf.segments) {
    start = Math.min(start, s.paddr);
    end = Math.max(end, s.paddr + s.memsz);
  }
  if (header && header.initSize > 0) end = Math.max(end, start + header.initSize);
  return {
    format: header ? 'bzImage' : 'vmlinux',
    compression,
    elf,
    header,
    start,
    end,
    cmdlineSize: header && header.version >= 0x0206 ? header.cmdlineSize : DEFAULT_CMDLINE_SIZE,
    initrdAddrMax: header ? header.initrdAddrMax : 0x7fffffff,
  };
}

export interface LinuxBootResult extends BootCpuState {
  initrdAddr: number;
  kernel: LinuxKernel;
}

/** Loads kernel, initrd and command line into `mem` and builds the zero page. */
export function loadLinux(mem: GuestMemory, memBytes: number, kernel: LinuxKernel, cmdline: string, initrd: Uint8Array | null): LinuxBootResult {
  const lowRamEnd = Math.min(memBytes, PCI_HOLE_START);
  if (kernel.end > lowRamEnd) {
    throw new TsvisorError(`the kernel needs guest RAM up to ${Math.ceil(kernel.end / MiB)} MiB but --mem gives ${Math.floor(memBytes / MiB)} MiB`, 2, 'raise --mem');
  }
  for (const seg of kernel.elf.segments) {
    const dst = mem.slice(seg.paddr, seg.memsz);
    if (dst === null) throw new TsvisorError(`kernel segment at 0x${seg.paddr.toString(16)} lies outside guest RAM`, 2, 'raise --mem');
    dst.set(seg.data);
    dst.fill(0, seg.data.byteLength);
  }

  // Command line: the kernel's cmdline_size excludes the terminating NUL.
  const cmdBytes = new TextEncoder().encode(cmdline);
  const cmdlineLimit = Math.min(kernel.cmdlineSize, CMDLINE_MAX - 1);
  if (cmdBytes.byteLength > cmdlineLimit)
    throw new TsvisorError(`the kernel command line is ${cmdBytes.byteLength} bytes, longer than this kernel's limit of ${cmdlineLimit} (its cmdline_size)`, 2, 'shorten --append; tsvisor also appends --host-params');
  const cmdArea = mem.slice(CMDLINE_ADDR, cmdBytes.byteLength + 1)!;
  cmdArea.set(cmdBytes);
  cmdArea[cmdBytes.byteLength] = 0;

  // Initrd: as high as the kernel allows, page aligned, above the kernel.
  let initrdAddr = 0;
  if (initrd && initrd.byteLength > 0) {
    const top = Math.min(lowRamEnd, kernel.initrdAddrMax + 1);
    initrdAddr = Math.floor((top - initrd.byteLength) / 4096) * 4096;
    if (initrdAddr < Math.ceil(kernel.end / 4096) * 4096) {
      const size = `${(initrd.byteLength / MiB).toFixed(1)} MiB`;
      // More RAM helps only while RAM, not the kernel's initrd_addr_max, is the limit.
      if (kernel.initrdAddrMax + 1 < lowRamEnd)
        throw new TsvisorError(`the initrd (${size}) does not fit between the kernel and this kernel's initrd_addr_max (0x${kernel.initrdAddrMax.toString(16)})`, 2, 'use a smaller initrd');
      throw new TsvisorError(`the initrd (${size}) does not fit in guest RAM above the kernel (--mem ${Math.floor(memBytes / MiB)} MiB)`, 2, 'raise --mem or use a smaller initrd');
    }
    mem.write(initrdAddr, initrd);
  }

  // The zero page: the kernel's own setup header when it came from a bzImage.
  const zp = mem.slice(BOOT_PARAMS_ADDR, 4096)!;
  zp.fill(0);
  const dv = new DataView(zp.buffer, zp.byteOffset, 4096);
  if (kernel.header) {
    zp.set(kernel.header.raw, HDR.setup_sects);
  } else {
    dv.setUint16(HDR.boot_flag, BOOT_FLAG, true);
    dv.setUint32(HDR.header, HDRS_MAGIC, true);
    dv.setUint16(HDR.version, 0x020f, true);
    dv.setUint32(HDR.kernel_alignment, 0x1000000, true);
  }
  dv.setUint8(HDR.type_of_loader, TYPE_OF_LOADER_UNDEFINED);
  dv.setUint8(HDR.loadflags, dv.getUint8(HDR.loadflags) | LOADED_HIGH | CAN_USE_HEAP);
  dv.setUint16(HDR.heap_end_ptr, 0xfe00, true);
  dv.setUint32(HDR.cmd_line_ptr, CMDLINE_ADDR, true);
  dv.setUint32(BP.ext_cmd_line_ptr, 0, true);
  dv.setUint32(HDR.cmdline_size, kernel.cmdlineSize, true);
  dv.setUint32(HDR.ramdisk_image, initrdAddr, true);
  dv.setUint32(HDR.ramdisk_size, initrd ? initrd.byteLength : 0, true);
  const map = e820Map(memBytes);
  if (map.length > E820_MAX_ENTRIES_ZEROPAGE) throw new Error('e820 map too long');
  dv.setUint8(BP.e820_entries, map.length);
  map.forEach((e, i) => {
    const o = BP.e820_table + i * 20;
    dv.setBigUint64(o, BigInt(e.addr), true);
    dv.setBigUint64(o + 8, BigInt(e.size), true);
    dv.setUint32(o + 16, e.type, true);
  });

  const cpu = longModeState(mem, kernel.elf.entry, BOOT_PARAMS_ADDR, BOOT_STACK_TOP);
  return { ...cpu, initrdAddr, kernel };
}
