// The CPU state a boot protocol asks for: a flat GDT, identity page tables and
// the control registers for 64-bit entry (Linux), or flat 32-bit protected
// mode with paging off (multiboot). Written into guest memory and returned as
// register values for the vCPU.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Regs, Segment, Sregs } from '../kvm/vcpu.js';
import { GDT_ADDR, IDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR } from './layout.js';

const X86_CR0_PE = 1n;
const X86_CR0_ET = 1n << 4n;
const X86_CR0_NE = 1n << 5n;
const X86_CR0_PG = 1n << 31n;
const X86_CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

/** GDT descriptor from flags/base/limit (the classic encoding). */
function gdtEntry(flags: number, base: number, limit: number): bigint {
  return (
    (BigInt(base & 0xff000000) << 32n) |
    (BigInt(flags & 0xf0ff) << 40n) |
    (BigInt(limit & 0x000f0000) << 32n) |
    (BigInt(base & 0x00ffffff) << 16n) |
    BigInt(limit & 0x0000ffff)
  );
}

/** The segment register value a GDT entry loads. */
function segmentFrom(entry: bigint, index: number): Segment {
  const flags = Number((entry >> 40n) & 0xf0ffn);
  const limitRaw = Number(((entry >> 32n) & 0xf0000n) | (entry & 0xffffn));
  const g = (flags >> 15) & 1;
  return {
    base: ((entry >> 16n) & 0xffffffn) | (((entry >> 56n) & 0xffn) << 24n),
    limit: g ? limitRaw * 4096 + 0xfff : limitRaw,
    selector: index * 8,
    type: flags & 0xf,
    present: (flags >> 7) & 1,
    dpl: (flags >> 5) & 3,
    db: (flags >> 14) & 1,
    s: (flags >> 4) & 1,
    l: (flags >> 13) & 1,
    g,
    avl: (flags >> 12) & 1,
  };
}

/**
 * Writes the boot GDT: 0x10 code, 0x18 data (the selectors the Linux boot
 * protocol names as __BOOT_CS/__BOOT_DS), 0x20 a TSS. `long` picks a 64-bit
 * or a 32-bit code segment.
 */
function writeGdt(mem: GuestMemory, long: boolean): { cs: Segment; ds: Segment; tr: Segment } {
  const entries = [
    0n,
    0n,
    long ? gdtEntry(0xa09b, 0, 0xfffff) : gdtEntry(0xc09b, 0, 0xfffff),
    gdtEntry(0xc093, 0, 0xfffff),
    gdtEntry(0x808b, 0, 0xfffff),
  ];
  entries.forEach((e, i) => mem.writeU64(GDT_ADDR + i * 8, e));
  mem.writeU64(IDT_ADDR, 0n);
  return { cs: segmentFrom(entries[2], 2), ds: segmentFrom(entries[3], 3), tr: segmentFrom(entries[4], 4) };
}

/** Identity maps the first 4 GiB with 2 MiB pages. */
function writeIdentityPageTables(mem: GuestMemory): void {
  mem.writeU64(PML4_ADDR, BigInt(PDPT_ADDR) | 0x3n);
  for (let i = 0; i < 4; i++) {
    const pd = PD_ADDR + i * 0x1000;
    mem.writeU64(PDPT_ADDR + i * 8, BigInt(pd) | 0x3n);
    for (let j = 0; j < 512; j++) {
      const addr = (BigInt(i) << 30n) | (BigInt(j) << 21n);
      mem.writeU64(pd + j * 8, addr | 0x83n); // present, writable, 2 MiB page
    }
  }
}

export interface BootCpuState {
  regs: Partial<Regs>;
  sregs: Partial<Sregs>;
}

/** 64-bit long mode with identity paging, as the Linux 64-bit boot protocol requires. */
export function longModeState(mem: GuestMemory, entry: number, rsi: number, rsp: number): BootCpuState {
  const { cs, ds, tr } = writeGdt(mem, true);
  writeIdentityPageTables(mem);
  return {
    regs: { rip: BigInt(entry), rsi: BigInt(rsi), rsp: BigInt(rsp), rbp: BigInt(rsp), rflags: 2n },
    sregs: {
      cs, ds, es: ds, fs: ds, gs: ds, ss: ds, tr,
      gdt: { base: BigInt(GDT_ADDR), limit: 5 * 8 - 1 },
      idt: { base: BigInt(IDT_ADDR), limit: 7 },
      cr0: X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG,
      cr3: BigInt(PML4_ADDR),
      cr4: X86_CR4_PAE,
      efer: EFER_LME | EFER_LMA,
    },
  };
}

/** Flat 32-bit protected mode, paging off, as the multiboot spec requires. */
export function protectedModeState(mem: GuestMemory, entry: number, eax: number, ebx: number): BootCpuState {
  const { cs, ds, tr } = writeGdt(mem, false);
  return {
    regs: { rip: BigInt(entry), rax: BigInt(eax), rbx: BigInt(ebx), rflags: 2n },
    sregs: {
      cs, ds, es: ds, fs: ds, gs: ds, ss: ds, tr,
      gdt: { base: BigInt(GDT_ADDR), limit: 5 * 8 - 1 },
      idt: { base: BigInt(IDT_ADDR), limit: 7 },
      cr0: X86_CR0_PE | X86_CR0_ET,
      cr3: 0n,
      cr4: 0n,
      efer: 0n,
    },
  };
}

/**
 * Real mode at `vector` (CS = vector >> 4, IP = its low 4 bits), caches on,
 * paging and long mode off: how a PC BIOS enters the OS's waking vector on
 * the way out of ACPI S3. The IVT's bounds stand in for an IDT.
 */
export function realModeState(vector: number): BootCpuState {
  const seg = (selector: number, type: number): Segment => ({
    base: BigInt(selector * 16), limit: 0xffff, selector, type, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0,
  });
  const ds = seg(0, 0x3); // read/write, accessed
  return {
    regs: { rip: BigInt(vector & 0xf), rflags: 2n, rsp: 0n },
    sregs: {
      cs: seg(vector >>> 4, 0xb), // execute/read, accessed
      ds, es: ds, fs: ds, gs: ds, ss: ds,
      tr: { ...seg(0, 0xb), s: 0 }, // a busy TSS, as after reset
      ldt: { ...seg(0, 0x2), s: 0 },
      gdt: { base: 0n, limit: 0xffff },
      idt: { base: 0n, limit: 0x3ff },
      cr0: X86_CR0_ET,
      cr2: 0n,
      cr3: 0n,
      cr4: 0n,
      efer: 0n,
    },
  };
}
