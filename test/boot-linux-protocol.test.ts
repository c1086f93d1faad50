// The Linux boot protocol over fake guest memory: setup-header validation,
// the zero page, the e820 map, command line and initrd placement.
import test from 'ava';
import { parseSetupHeader, isBzImage, HDR, HDRS_MAGIC } from '../src/boot/setup-header.js';
import { loadLinux, parseLinuxKernel } from '../src/boot/linux.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { TsvisorError } from '../src/errors.js';
import { BOOT_PARAMS_ADDR, CMDLINE_ADDR, MiB, PML4_ADDR, e820Map, GiB } from '../src/boot/layout.js';
import { bzImage, elf64 } from './helpers/kernel-images.js';

const kernelBody = new Uint8Array(4096).map((_, i) => (i * 7) & 0xff);

test('a bzImage header is parsed and its payload decompressed to the vmlinux', (t) => {
  const img = bzImage(elf64(0x1000000, kernelBody));
  t.true(isBzImage(img));
  const hdr = parseSetupHeader(img);
  t.is(hdr.version, 0x020f);
  t.is(hdr.cmdlineSize, 2047);
  const k = parseLinuxKernel(img);
  t.is(k.format, 'bzImage');
  t.is(k.compression, 'gzip');
  t.is(k.start, 0x1000000);
  t.is(k.end, 0x1000000 + 0x400000, 'init_size extends the kernel footprint');
});

test('bad setup headers are refused with the reason', (t) => {
  const good = bzImage(elf64(0x1000000, kernelBody));
  const noMagic = good.slice();
  noMagic[HDR.header] = 0;
  t.throws(() => parseLinuxKernel(noMagic), { instanceOf: TsvisorError, message: /not a kernel/ });
  t.throws(() => parseSetupHeader(bzImage(elf64(0x1000000, kernelBody), { version: 0x0204 })), { message: /boot protocol 2\.04.*2\.08/ });
  t.throws(() => parseSetupHeader(bzImage(elf64(0x1000000, kernelBody), { loadflags: 0 })), { message: /zImage/ });
  t.throws(() => parseSetupHeader(good.subarray(0, good.length - 20)), { message: /truncated/ });
  t.throws(() => parseSetupHeader(good.subarray(0, 0x100)), { message: /too short/ });
  const badPayload = good.slice();
  badPayload.fill(0x11, 5 * 512 + 0x100, 5 * 512 + 0x108);
  t.throws(() => parseLinuxKernel(badPayload), { instanceOf: TsvisorError });
});

test('a vmlinux is loaded at its physical address and the zero page describes the machine', (t) => {
  const memBytes = 64 * MiB;
  const mem = GuestMemory.fake(memBytes);
  const kernel = parseLinuxKernel(elf64(0x1000000, kernelBody, 0x2000));
  const initrd = new Uint8Array(100_000).fill(0xab);
  const r = loadLinux(mem, memBytes, kernel, 'console=ttyS0 quiet', initrd);
  t.deepEqual(mem.read(0x1000000, kernelBody.length), kernelBody);
  t.is(mem.readU8(0x1000000 + 0x1fff), 0, 'bss is zeroed');
  // Zero page
  t.is(mem.readU16(BOOT_PARAMS_ADDR + HDR.boot_flag), 0xaa55);
  t.is(mem.readU32(BOOT_PARAMS_ADDR + HDR.header), HDRS_MAGIC);
  t.is(mem.readU8(BOOT_PARAMS_ADDR + HDR.type_of_loader), 0xff);
  t.is(mem.readU32(BOOT_PARAMS_ADDR + HDR.cmd_line_ptr), CMDLINE_ADDR);
  t.is(Buffer.from(mem.read(CMDLINE_ADDR, 20)!).toString('latin1'), 'console=ttyS0 quiet\0');
  // Initrd: page aligned, at the top of RAM, above the kernel
  const initrdAddr = mem.readU32(BOOT_PARAMS_ADDR + HDR.ramdisk_image);
  t.is(initrdAddr % 4096, 0);
  t.true(initrdAddr + initrd.length <= memBytes);
  t.true(initrdAddr > kernel.end);
  t.is(mem.readU32(BOOT_PARAMS_ADDR + HDR.ramdisk_size), initrd.length);
  t.deepEqual(mem.read(initrdAddr, 16), initrd.subarray(0, 16));
  // e820: low RAM, reserved BIOS area, RAM from 1 MiB to the end
  const n = mem.readU8(BOOT_PARAMS_ADDR + 0x1e8);
  const entries = Array.from({ length: n }, (_, i) => ({
    addr: Number(mem.readU64(BOOT_PARAMS_ADDR + 0x2d0 + i * 20)),
    size: Number(mem.readU64(BOOT_PARAMS_ADDR + 0x2d0 + i * 20 + 8)),
    type: mem.readU32(BOOT_PARAMS_ADDR + 0x2d0 + i * 20 + 16),
  }));
  t.deepEqual(entries, [
    { addr: 0, size: 0x9fc00, type: 1 },
    { addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: 2 },
    { addr: 0x100000, size: memBytes - 0x100000, type: 1 },
  ]);
  // 64-bit entry state
  t.is(r.regs.rip, 0x1000000n);
  t.is(r.regs.rsi, BigInt(BOOT_PARAMS_ADDR));
  t.is(r.sregs.cr3, BigInt(PML4_ADDR));
  t.is(r.sregs.cs!.l, 1, 'long mode code segment');
  t.is(r.sregs.cs!.selector, 0x10);
  t.is(r.sregs.ds!.selector, 0x18);
});

test('RAM above 3 GiB goes above the PCI hole in the e820 map', (t) => {
  const map = e820Map(5 * GiB);
  t.deepEqual(map.slice(2), [
    { addr: 0x100000, size: 3 * GiB - 0x100000, type: 1 },
    { addr: 4 * GiB, size: 2 * GiB, type: 1 },
  ]);
});

test('what does not fit is refused: command line, initrd, RAM', (t) => {
  const img = bzImage(elf64(0x1000000, kernelBody), { cmdlineSize: 16 });
  const k = parseLinuxKernel(img);
  const mem = GuestMemory.fake(64 * MiB);
  t.throws(() => loadLinux(mem, 64 * MiB, k, 'x'.repeat(17), null), { message: /command line is 17 bytes.*limit of 16/ });
  t.notThrows(() => loadLinux(mem, 64 * MiB, k, 'x'.repeat(16), null));
  const v = parseLinuxKernel(elf64(0x1000000, kernelBody));
  t.throws(() => loadLinux(mem, 64 * MiB, v, '', new Uint8Array(60 * MiB)), { message: /initrd .* does not fit/ });
  const small = GuestMemory.fake(16 * MiB);
  t.throws(() => loadLinux(small, 16 * MiB, parseLinuxKernel(elf64(0x1000000, kernelBody, 2 * MiB)), '', null), { message: /needs guest RAM up to 18 MiB but --mem gives 16 MiB/ });
});

test('non-kernels are refused', (t) => {
  t.throws(() => parseLinuxKernel(new TextEncoder().encode('#!/bin/sh\necho hi\n'.repeat(40))), { message: /not a kernel/ });
  const elf32 = elf64(0x100000, kernelBody);
  elf32[4] = 1; // ELFCLASS32 with a 64-bit layout: not a valid 64-bit kernel
  t.throws(() => parseLinuxKernel(elf32), { instanceOf: TsvisorError });
});
