/* fixups: instructions that kvm_pvm's instruction emulator cannot run at CPL0
 * and the VMM must complete (see shared/MEASURED.md):
 *   int3  — must deliver #BP; our handler counts it and returns past the 0xcc
 *   stac  — must set EFLAGS.AC (we clear AC first with popf)
 *   clac  — must clear EFLAGS.AC (we set AC first with popf)
 *   fwait — with no x87 exception pending: a no-op (CR0.TS cleared first)
 * Success: `fixups: int3=1 stac=ok clac=ok fwait=ok`, exit 0.
 * Failure: the same line with the failing item's value (int3=<count>,
 * stac=noac|ud, clac=ac|ud, fwait=nm|ud) then ` FAIL smap=<0|1>`, exit code =
 * bitmask 1 int3, 2 stac, 4 clac, 8 fwait. An exception we do not expect
 * reports itself and exits 0x7e. A VMM that cannot complete an instruction
 * stops the guest there: then no line at all. */
#include "fw.h"

#define VEC_BP 3
#define VEC_UD 6
#define VEC_NM 7
#define CR0_TS (1u << 3)
#define CPUID7_EBX_SMAP (1u << 20)

static volatile unsigned bp_count, ud_count, nm_count;
static volatile uint32_t bp_eip;

static void on_bp(struct fw_trap_frame *f)
{
  bp_count++;
  bp_eip = f->eip;   /* a trap: EIP already points past the int3 */
}

/* #UD / #NM: record and skip the faulting instruction, whose length the
 * probe puts in ECX. */
static void on_ud(struct fw_trap_frame *f) { ud_count++; f->eip += f->ecx; }
static void on_nm(struct fw_trap_frame *f) { nm_count++; f->eip += f->ecx; }

int main(uint32_t magic, uint32_t mbi)
{
  idt_init();
  idt_set_handler(VEC_BP, on_bp);
  idt_set_handler(VEC_UD, on_ud);
  idt_set_handler(VEC_NM, on_nm);
  unsigned fail = 0;

  /* int3: the handler must run exactly once and return to the next instruction. */
  uint32_t after;
  __asm__ volatile("int3\n\t"
                   "1: movl $1b, %0" : "=r"(after) : : "memory");
  bool int3_ok = bp_count == 1 && bp_eip == after;
  if (!int3_ok)
    fail |= 1;

  /* stac: AC 0 -> 1 */
  const char *stac = "ok";
  write_flags(read_flags() & ~EFLAGS_AC);
  unsigned ud0 = ud_count;
  __asm__ volatile("stac" : : "c"(3) : "memory", "cc");
  unsigned long fl = read_flags();
  if (ud_count != ud0)
    stac = "ud", fail |= 2;
  else if (!(fl & EFLAGS_AC))
    stac = "noac", fail |= 2;

  /* clac: AC 1 -> 0 */
  const char *clac = "ok";
  write_flags(read_flags() | EFLAGS_AC);
  ud0 = ud_count;
  __asm__ volatile("clac" : : "c"(3) : "memory", "cc");
  fl = read_flags();
  write_flags(fl & ~EFLAGS_AC);
  if (ud_count != ud0)
    clac = "ud", fail |= 4;
  else if (fl & EFLAGS_AC)
    clac = "ac", fail |= 4;

  /* fwait: with CR0.TS clear and no unmasked x87 exception pending, nothing happens. */
  const char *fwait = "ok";
  __asm__ volatile("clts");
  ud0 = ud_count;
  unsigned nm0 = nm_count;
  __asm__ volatile(".byte 0x9b" : : "c"(1) : "memory");   /* fwait */
  if (ud_count != ud0)
    fwait = "ud", fail |= 8;
  else if (nm_count != nm0)
    fwait = "nm", fail |= 8;

  printf("fixups: int3=%u stac=%s clac=%s fwait=%s", bp_count, stac, clac, fwait);
  if (fail) {
    uint32_t r[4];
    cpuid(0, 0, r);
    unsigned smap = 0;
    if (r[0] >= 7) {
      cpuid(7, 0, r);
      smap = (r[1] & CPUID7_EBX_SMAP) != 0;
    }
    printf(" FAIL smap=%u", smap);
  }
  printf("\n");
  return (int)fail;
}
