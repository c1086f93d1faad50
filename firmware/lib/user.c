/* Ring 3 for long-mode images (see fw.h): user_run(fn, arg) runs fn(arg) at
 * CPL3 and returns its result at CPL0.
 *
 * Why long mode: on kvm_pvm only 64-bit ring-3 code runs natively. Measured
 * with a probe (docs/performance.md): a 32-bit `iret` to ring 3 is an
 * emulation failure, `sysexit` works but 32-bit ring-3 code (paging off, or
 * compat mode under long mode) is emulated like ring 0 (≈ 3 000 cycles per
 * `dec; jnz`), and `int` from ring 3 raises #UD. A 64-bit code segment at
 * CPL3 runs natively (≈ 1 cycle per iteration).
 *
 * GDT: the runtime's 0x08 code32, 0x10 data, 0x18 code64, then 0x20 data
 * DPL 3 (selector 0x23), 0x28 code64 DPL 3 (0x2b), 0x30 a 64-bit TSS. */
#include "fw.h"

#define PTE_U 0x4ull
#define IO_BITMAP_BYTES (65536 / 8)

struct tss64 {
  uint32_t reserved0;
  uint64_t rsp0, rsp1, rsp2;
  uint64_t reserved1, ist[7], reserved2;
  uint16_t reserved3, iomap_base;
  uint8_t iomap[IO_BITMAP_BYTES + 1];   /* 0 = allowed; a final 0xff byte ends the map */
} __attribute__((packed));

static uint64_t gdt[8] __attribute__((aligned(16)));
static struct tss64 tss __attribute__((aligned(128)));
static uint8_t trap_stack[16384] __attribute__((aligned(16)));
static uint8_t user_stack[16384] __attribute__((aligned(16)));
static bool user_ready;

/* user_stubs.S */
uint64_t fw_user_enter(fw_user_fn fn, void *arg, uint64_t user_rsp, uint64_t rflags);
FW_NORETURN void fw_user_resume(uint64_t result);
extern const uint8_t fw_user_return_ud2[];
extern uint64_t fw_pml4[];

/* U/S on every entry of the identity map long_mode.S built (PML4 → PDPT → 4 PDs of 2 MiB pages). */
static void map_user(void)
{
  fw_pml4[0] |= PTE_U;
  uint64_t *pdpt = (uint64_t *)(uintptr_t)(fw_pml4[0] & ~0xfffull);
  for (int i = 0; i < 4; i++) {
    pdpt[i] |= PTE_U;
    uint64_t *pd = (uint64_t *)(uintptr_t)(pdpt[i] & ~0xfffull);
    for (int j = 0; j < 512; j++)
      pd[j] |= PTE_U;
  }
  uintptr_t cr3;
  __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3) : : "memory");   /* flush the TLB */
}

static void user_init(void)
{
  if (user_ready)
    return;
  user_ready = true;
  idt_init();
  map_user();
  gdt[0] = 0;
  gdt[1] = 0x00cf9a000000ffffull;   /* 0x08 code32, as start.S */
  gdt[2] = 0x00cf92000000ffffull;   /* 0x10 data */
  gdt[3] = 0x00af9a000000ffffull;   /* 0x18 code64 */
  gdt[4] = 0x00cff2000000ffffull;   /* 0x20 data, DPL 3 */
  gdt[5] = 0x00affa000000ffffull;   /* 0x28 code64, DPL 3 */
  uint64_t base = (uint64_t)(uintptr_t)&tss, limit = sizeof tss - 1;
  gdt[6] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89ull << 40 | ((limit >> 16) & 0xf) << 48 |
           ((base >> 24) & 0xff) << 56;   /* 0x30 TSS, available */
  gdt[7] = base >> 32;
  tss.rsp0 = (uint64_t)(uintptr_t)(trap_stack + sizeof trap_stack);
  tss.iomap_base = (uint16_t)offsetof(struct tss64, iomap);
  tss.iomap[IO_BITMAP_BYTES] = 0xff;
  struct {
    uint16_t limit;
    uint64_t base;
  } __attribute__((packed)) d = { sizeof gdt - 1, (uint64_t)(uintptr_t)gdt };
  __asm__ volatile("lgdt %0" : : "m"(d) : "memory");
  __asm__ volatile("ltr %w0" : : "r"((uint16_t)FW_TSS_SEL));
}

uint64_t user_run(fw_user_fn fn, void *arg)
{
  user_init();
  /* IOPL 3 (legacy notifies are `out`), IF 0, bit 1 always set. kvm_pvm
   * strips IOPL from iretq's frame: there the TSS bitmap is what allows the
   * ports (docs/performance.md). */
  return fw_user_enter(fn, arg, (uint64_t)(uintptr_t)(user_stack + sizeof user_stack), 0x3002);
}

void user_trap(struct fw_trap_frame *f)
{
  if (f->vector == 6 && f->eip == (uintptr_t)fw_user_return_ud2)
    fw_user_resume(f->eax);   /* fn returned: back to user_run's caller */
  /* Anything else at CPL3 is a bug in the ring-3 code: report it (fw_trap goes on). */
  printf("exception at CPL3: ");
}
