// Guest virtual → guest physical translation by walking the guest's page
// tables, for reading the instruction at RIP when an exit needs it. Supports
// paging off, 32-bit (with 4 MiB pages), PAE, and 4/5-level long mode.
import type { GuestMemory } from '../memory/guest-memory.js';

const CR0_PG = 1n << 31n;
const CR4_PSE = 1n << 4n;
const CR4_PAE = 1n << 5n;
const CR4_LA57 = 1n << 12n;
const EFER_LMA = 1n << 10n;
const PRESENT = 1n;
const PAGE_SIZE_BIT = 1n << 7n;
const ADDR_MASK = 0x000ffffffffff000n;

export interface PagingState {
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
}

/** The guest physical address of linear address `va`, or -1 when unmapped or outside RAM. */
export function translate(mem: GuestMemory, st: PagingState, va: bigint): number {
  if (!(st.cr0 & CR0_PG)) return Number(va & 0xffffffffn);
  if (st.efer & EFER_LMA) {
    const levels = st.cr4 & CR4_LA57 ? 5 : 4;
    let table = st.cr3 & ADDR_MASK;
    for (let level = levels; level >= 1; level--) {
      const shift = BigInt(12 + 9 * (level - 1));
      const entry = mem.readU64(Number(table + ((va >> shift) & 0x1ffn) * 8n));
      if (entry < 0n || !(entry & PRESENT)) return -1;
      if (level <= 3 && level > 1 && entry & PAGE_SIZE_BIT) {
        const pageMask = (1n << shift) - 1n;
        return Number((entry & ADDR_MASK & ~pageMask) | (va & pageMask));
      }
      table = entry & ADDR_MASK;
    }
    return Number(table | (va & 0xfffn));
  }
  if (st.cr4 & CR4_PAE) {
    const pdpte = mem.readU64(Number((st.cr3 & 0xffffffe0n) + ((va >> 30n) & 3n) * 8n));
    if (pdpte < 0n || !(pdpte & PRESENT)) return -1;
    const pde = mem.readU64(Number((pdpte & ADDR_MASK) + ((va >> 21n) & 0x1ffn) * 8n));
    if (pde < 0n || !(pde & PRESENT)) return -1;
    if (pde & PAGE_SIZE_BIT) return Number((pde & ADDR_MASK & ~0x1fffffn) | (va & 0x1fffffn));
    const pte = mem.readU64(Number((pde & ADDR_MASK) + ((va >> 12n) & 0x1ffn) * 8n));
    if (pte < 0n || !(pte & PRESENT)) return -1;
    return Number((pte & ADDR_MASK) | (va & 0xfffn));
  }
  const v = Number(va & 0xffffffffn);
  const pde = mem.readU32(Number(st.cr3 & 0xfffff000n) + ((v >>> 22) * 4));
  if (pde < 0 || !(pde & 1)) return -1;
  if (pde & 0x80 && st.cr4 & CR4_PSE) return (pde & 0xffc00000) + (v & 0x3fffff);
  const pte = mem.readU32((pde & 0xfffff000) + (((v >>> 12) & 0x3ff) * 4));
  if (pte < 0 || !(pte & 1)) return -1;
  return (pte & 0xfffff000) + (v & 0xfff);
}

/** Reads up to `len` bytes at linear address `va`, page by page; returns what could be read. */
export function readLinear(mem: GuestMemory, st: PagingState, va: bigint, len: number): Uint8Array {
  const out: number[] = [];
  while (out.length < len) {
    const gpa = translate(mem, st, va + BigInt(out.length));
    if (gpa < 0) break;
    const b = mem.readU8(gpa);
    if (b < 0) break;
    out.push(b);
  }
  return Uint8Array.from(out);
}
