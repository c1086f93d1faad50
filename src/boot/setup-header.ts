// The x86 Linux boot protocol's setup header (Documentation/arch/x86/boot.rst):
// parsed from a bzImage and validated before anything is loaded, so a file
// that is not a kernel, or a kernel too old for the 64-bit protocol, is
// refused with a message that says which.
import { TsvisorError } from '../errors.js';

/** Offsets inside the zero page / bzImage, as in boot.rst. */
export const HDR = {
  setup_sects: 0x1f1,
  syssize: 0x1f4,
  boot_flag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  type_of_loader: 0x210,
  loadflags: 0x211,
  code32_start: 0x214,
  ramdisk_image: 0x218,
  ramdisk_size: 0x21c,
  heap_end_ptr: 0x224,
  cmd_line_ptr: 0x228,
  initrd_addr_max: 0x22c,
  kernel_alignment: 0x230,
  relocatable_kernel: 0x234,
  xloadflags: 0x236,
  cmdline_size: 0x238,
  payload_offset: 0x248,
  payload_length: 0x24c,
  pref_address: 0x258,
  init_size: 0x260,
} as const;

export const HDRS_MAGIC = 0x53726448; // "HdrS"
export const BOOT_FLAG = 0xaa55;
export const LOADED_HIGH = 0x01;
export const CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;
/** 2.08: payload_offset/length, cmdline_size; tsvisor needs it to find the compressed kernel. */
export const MIN_PROTOCOL = 0x0208;

export interface SetupHeader {
  setupSects: number;
  version: number;
  loadflags: number;
  xloadflags: number;
  cmdlineSize: number;
  initrdAddrMax: number;
  kernelAlignment: number;
  relocatable: boolean;
  payloadOffset: number;
  payloadLength: number;
  prefAddress: bigint;
  initSize: number;
  /** Byte offset of the protected-mode kernel inside the file. */
  kernelOffset: number;
  /** The raw header bytes (0x1f1 up to the end the jump at 0x200 implies), to copy into boot_params. */
  raw: Uint8Array;
}

/** True if `image` carries the setup header magic of a bzImage. */
export function isBzImage(image: Uint8Array): boolean {
  if (image.byteLength < 0x250) return false;
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return dv.getUint32(HDR.header, true) === HDRS_MAGIC && dv.getUint16(HDR.boot_flag, true) === BOOT_FLAG;
}

export function parseSetupHeader(image: Uint8Array, name = 'kernel'): SetupHeader {
  if (image.byteLength < 0x250) throw new TsvisorError(`${name} is too short to be a Linux kernel (${image.byteLength} bytes)`, 1, 'pass a bzImage or an uncompressed vmlinux');
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (dv.getUint16(HDR.boot_flag, true) !== BOOT_FLAG || dv.getUint32(HDR.header, true) !== HDRS_MAGIC)
    throw new TsvisorError(`${name} is not a bzImage (no HdrS setup header)`, 1, 'pass a bzImage, a vmlinux ELF or a multiboot image');
  const version = dv.getUint16(HDR.version, true);
  if (version < MIN_PROTOCOL)
    throw new TsvisorError(`${name} uses boot protocol ${(version >> 8)}.${(version & 0xff).toString().padStart(2, '0')}, tsvisor needs 2.08 or newer`, 1, 'use a Linux kernel from 2.6.26 on');
  const loadflags = dv.getUint8(HDR.loadflags);
  if (!(loadflags & LOADED_HIGH)) throw new TsvisorError(`${name} is a zImage (loads low), not a bzImage`, 1, 'build the kernel as a bzImage');
  let setupSects = dv.getUint8(HDR.setup_sects);
  if (setupSects === 0) setupSects = 4;
  const kernelOffset = (setupSects + 1) * 512;
  if (kernelOffset >= image.byteLength) throw new TsvisorError(`${name} is truncated: setup code ends past the end of the file`, 1, 'check the file was copied whole');
  const payloadOffset = dv.getUint32(HDR.payload_offset, true);
  const payloadLength = dv.getUint32(HDR.payload_length, true);
  if (payloadLength === 0 || kernelOffset + payloadOffset + payloadLength > image.byteLength)
    throw new TsvisorError(`${name} is truncated: its compressed payload runs past the end of the file`, 1, 'check the file was copied whole');
  // The header extends to the offset given by the jump at 0x200 (a short jmp: 0xEB disp8).
  const hdrEnd = Math.min(0x202 + dv.getUint8(HDR.jump + 1), kernelOffset, 0x290);
  const cmdlineSize = version >= 0x0206 ? dv.getUint32(HDR.cmdline_size, true) : 255;
  return {
    setupSects,
    version,
    loadflags,
    xloadflags: version >= 0x020c ? dv.getUint16(HDR.xloadflags, true) : 0,
    cmdlineSize,
    initrdAddrMax: dv.getUint32(HDR.initrd_addr_max, true) || 0x37ffffff,
    kernelAlignment: dv.getUint32(HDR.kernel_alignment, true),
    relocatable: dv.getUint8(HDR.relocatable_kernel) !== 0,
    payloadOffset,
    payloadLength,
    prefAddress: version >= 0x020a ? dv.getBigUint64(HDR.pref_address, true) : 0x100000n,
    initSize: version >= 0x020a ? dv.getUint32(HDR.init_size, true) : 0,
    kernelOffset,
    raw: image.slice(HDR.setup_sects, hdrEnd),
  };
}

/** The compressed kernel inside a bzImage. */
export function payloadOf(image: Uint8Array, hdr: SetupHeader): Uint8Array {
  const start = hdr.kernelOffset + hdr.payloadOffset;
  return image.subarray(start, start + hdr.payloadLength);
}
