// The multiboot loader over fake guest memory, checked against what QEMU's
// -kernel gives a multiboot image (kvm-unit-tests' lib/x86/setup.c reads it):
// the command line with the kernel's name first, --initrd as module 0 on a
// page boundary after the image, mem_upper, a memory map with page 0 as RAM.
import test from 'ava';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { TsvisorError } from '../src/errors.js';
import { findMultibootHeader, loadMultiboot, MULTIBOOT_BOOTLOADER_MAGIC, type MultibootBoot } from '../src/boot/multiboot.js';
import { GiB, MiB } from '../src/boot/layout.js';

/** A multiboot image with the a.out kludge: 64 bytes of file loaded at 1 MiB, bss to `bssEnd`, entry after the header. */
function image(bssEnd = 0): Uint8Array {
  const file = new Uint8Array(64);
  const dv = new DataView(file.buffer);
  const magic = 0x1badb002;
  const flags = 1 << 16;
  [magic, flags, (-(magic + flags)) >>> 0, 0x100000, 0x100000, 0, bssEnd, 0x100020].forEach((v, i) => dv.setUint32(i * 4, v, true));
  file.set([0xfa, 0xf4], 0x20);
  return file;
}

function boot(memBytes: number, b: Partial<MultibootBoot> = {}, img = image(), fakeBytes = Math.min(memBytes, 64 * MiB)) {
  const mem = GuestMemory.fake(fakeBytes);
  const r = loadMultiboot(mem, memBytes, img, findMultibootHeader(img)!, { cmdline: '', kernelName: 'x86/setjmp.flat', ...b });
  const info = Number(r.regs.rbx);
  const cString = (addr: number) => {
    let end = addr;
    while (mem.readU8(end) !== 0) end++;
    return new TextDecoder().decode(mem.read(addr, end - addr)!);
  };
  const u32 = (off: number) => mem.readU32(info + off);
  return { mem, r, info, cString, u32 };
}

test('EAX and EBX as the spec says; flags name memory, command line, modules, memory map and loader', (t) => {
  const { r, u32, cString } = boot(64 * MiB);
  t.is(Number(r.regs.rax), MULTIBOOT_BOOTLOADER_MAGIC);
  t.is(Number(r.regs.rip), 0x100020);
  t.is(u32(0), (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9));
  t.is(cString(u32(64)), 'tsvisor');
});

test('the command line is "<kernel name> <append>", as QEMU passes it (argv[0] first)', (t) => {
  const a = boot(64 * MiB, { kernelName: '/tmp/kut/x86/vmexit.flat', cmdline: 'cpuid inl_from_pmtimer' });
  t.is(a.cString(a.u32(16)), '/tmp/kut/x86/vmexit.flat cpuid inl_from_pmtimer');
  t.is(a.r.cmdline, '/tmp/kut/x86/vmexit.flat cpuid inl_from_pmtimer');
  const b = boot(64 * MiB, { kernelName: 'x86/setjmp.flat', cmdline: '' });
  t.is(b.cString(b.u32(16)), 'x86/setjmp.flat ', 'an empty --append still leaves the space, as QEMU does');
});

test('--initrd is module 0: page-aligned after the image and its bss, its bytes, its path as the string', (t) => {
  const env = new TextEncoder().encode('NR_CPUS=1\nMEMSIZE=256\nBOOTLOADER=1\n');
  const { mem, r, u32, cString } = boot(64 * MiB, { module: { data: env, name: '/tmp/kvm-unit-tests-env.abc' } }, image(0x102345));
  t.is(r.end, 0x102345);
  t.is(u32(20), 1, 'mods_count');
  const mod = u32(24);
  t.is(mem.readU32(mod), 0x103000, 'mod_start: the first page after the bss');
  t.is(mem.readU32(mod) % 4096, 0);
  t.is(mem.readU32(mod + 4), 0x103000 + env.length, 'mod_end: start + size');
  t.is(cString(mem.readU32(mod + 8)), '/tmp/kvm-unit-tests-env.abc');
  t.is(mem.readU32(mod + 12), 0, 'reserved');
  t.deepEqual(mem.read(0x103000, env.length), env);
  t.deepEqual(r.module, { start: 0x103000, end: 0x103000 + env.length });
  // The module string does not clobber the command line (both are in the command-line area).
  t.is(cString(u32(16)), 'x86/setjmp.flat ');
});

test('an image ending on a page boundary gets its module right there; an empty module is allowed', (t) => {
  const { mem, u32 } = boot(64 * MiB, { module: { data: new Uint8Array(0), name: 'empty' } }, image(0x104000));
  t.is(u32(20), 1);
  t.is(mem.readU32(u32(24)), 0x104000);
  t.is(mem.readU32(u32(24) + 4), 0x104000);
});

test('no initrd: mods_count 0 (kvm-unit-tests then has no environment)', (t) => {
  const { u32, mem } = boot(64 * MiB);
  t.is(u32(20), 0);
  t.is(mem.readU32(u32(24)), 0, 'the list is there, empty');
});

test('mem_lower 640 KiB, mem_upper the KiB from 1 MiB to the end of low RAM; the map starts with RAM at page 0', (t) => {
  const { u32, mem } = boot(256 * MiB);
  t.is(u32(4), 640);
  t.is(u32(8), 255 * 1024);
  const map = [];
  for (let o = u32(48); o < u32(48) + u32(44); o += mem.readU32(o) + 4) {
    map.push({ size: mem.readU32(o), addr: Number(mem.readU64(o + 4)), len: Number(mem.readU64(o + 12)), type: mem.readU32(o + 20) });
  }
  t.deepEqual(map, [
    { size: 20, addr: 0, len: 0x9fc00, type: 1 }, // page 0 usable: the AP trampoline is copied there
    { size: 20, addr: 0x9fc00, len: 0x100000 - 0x9fc00, type: 2 },
    { size: 20, addr: 0x100000, len: 255 * MiB, type: 1 },
  ]);
});

test('above 3 GiB: mem_upper stops at the PCI hole and the map has the RAM above 4 GiB', (t) => {
  const { u32, mem } = boot(4 * GiB, {}, image(), 64 * MiB);
  t.is(u32(8), (3 * GiB - MiB) / 1024);
  const last = u32(48) + u32(44) - 24;
  t.is(Number(mem.readU64(last + 4)), 4 * GiB);
  t.is(Number(mem.readU64(last + 12)), 1 * GiB);
  t.is(mem.readU32(last + 20), 1);
});

test('a module that does not fit below the PCI hole, or a command line too long: one line, status 2', (t) => {
  const big = t.throws(() => boot(16 * MiB, { module: { data: new Uint8Array(16 * MiB), name: 'big' } }), { instanceOf: TsvisorError });
  t.is(big?.exitCode, 2);
  t.regex(big!.line, /initrd \(module 0\) need 18 MiB .*raise --mem/);
  const long = t.throws(() => boot(16 * MiB, { cmdline: 'x'.repeat(70_000) }), { instanceOf: TsvisorError });
  t.is(long?.exitCode, 2);
  t.regex(long!.line, /the multiboot command line is too long: 70016 bytes .*at most 65535 .*shorten --append/);
});
