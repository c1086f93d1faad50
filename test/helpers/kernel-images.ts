// Synthetic kernel images for the boot-protocol and user-error tests: the
// smallest files tsvisor's loaders accept, with the header fields a test
// wants to vary.
import { gzipSync } from 'node:zlib';
import { HDR, HDRS_MAGIC } from '../../src/boot/setup-header.js';
import { MiB } from '../../src/boot/layout.js';

/** An ELF64 x86-64 vmlinux with one PT_LOAD segment at `paddr`. */
export function elf64(paddr: number, body: Uint8Array, memsz = body.length, entry = paddr): Uint8Array {
  const out = new Uint8Array(0x78 + body.length);
  const dv = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  dv.setUint16(16, 2, true); // ET_EXEC
  dv.setUint16(18, 62, true); // EM_X86_64
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, BigInt(entry), true);
  dv.setBigUint64(32, 0x40n, true); // phoff
  dv.setUint16(52, 64, true);
  dv.setUint16(54, 56, true);
  dv.setUint16(56, 1, true);
  const ph = 0x40;
  dv.setUint32(ph, 1, true); // PT_LOAD
  dv.setBigUint64(ph + 8, 0x78n, true);
  dv.setBigUint64(ph + 16, BigInt(paddr), true);
  dv.setBigUint64(ph + 24, BigInt(paddr), true);
  dv.setBigUint64(ph + 32, BigInt(body.length), true);
  dv.setBigUint64(ph + 40, BigInt(memsz), true);
  out.set(body, 0x78);
  return out;
}

export interface BzImageOptions {
  version?: number;
  loadflags?: number;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  /** Keep only the first N bytes of the file. */
  truncate?: number;
}

/** A bzImage: four setup sectors with a setup header, then a gzip payload holding `vmlinux`. */
export function bzImage(vmlinux: Uint8Array, opts: BzImageOptions = {}): Uint8Array {
  const payload = gzipSync(vmlinux);
  const setupSects = 4;
  const kernelOffset = (setupSects + 1) * 512;
  const file = new Uint8Array(kernelOffset + 0x100 + payload.length);
  const dv = new DataView(file.buffer);
  dv.setUint8(HDR.setup_sects, setupSects);
  dv.setUint16(HDR.boot_flag, 0xaa55, true);
  file[HDR.jump] = 0xeb;
  file[HDR.jump + 1] = 0x66;
  dv.setUint32(HDR.header, HDRS_MAGIC, true);
  dv.setUint16(HDR.version, opts.version ?? 0x020f, true);
  dv.setUint8(HDR.loadflags, opts.loadflags ?? 1);
  dv.setUint32(HDR.initrd_addr_max, opts.initrdAddrMax ?? 0x7fffffff, true);
  dv.setUint32(HDR.kernel_alignment, 0x200000, true);
  dv.setUint32(HDR.cmdline_size, opts.cmdlineSize ?? 2047, true);
  dv.setUint32(HDR.payload_offset, 0x100, true);
  dv.setUint32(HDR.payload_length, payload.length, true);
  dv.setUint32(HDR.init_size, 4 * MiB, true);
  file.set(payload, kernelOffset + 0x100);
  return opts.truncate ? file.subarray(0, opts.truncate) : file;
}

/** A multiboot image (a.out kludge, loaded at 1 MiB) whose code is `cli; hlt`: were it ever run, it would end at once. */
export function haltingMultiboot(): Uint8Array {
  const file = new Uint8Array(64);
  const dv = new DataView(file.buffer);
  const magic = 0x1badb002;
  const flags = 1 << 16;
  [magic, flags, (-(magic + flags)) >>> 0, 0x100000, 0x100000, 0, 0, 0x100020].forEach((v, i) => dv.setUint32(i * 4, v, true));
  file.set([0xfa, 0xf4], 0x20);
  return file;
}
