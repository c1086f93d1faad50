/* Minimal IDT: 64 interrupt gates through idt_stubs.S (32-bit images) or
 * idt_stubs64.S (long mode): exceptions 0..31 and external interrupts
 * 32..63 (lib/apic.c routes device interrupts there). An interrupt vector
 * with no handler is ignored (no EOI). */
#include "fw.h"

#define IDT_VECTORS 64
#define FIRST_IRQ_VECTOR 32
#define GATE_INTERRUPT 0x8e   /* present, DPL 0, 32-bit (64-bit in long mode) interrupt gate */

#ifdef FW_LONG_MODE
#define KERNEL_CS 0x18
struct idt_gate {
  uint16_t off_lo, sel;
  uint8_t ist, type;
  uint16_t off_mid;
  uint32_t off_hi, reserved;
} __attribute__((packed));
#else
#define KERNEL_CS 0x08
struct idt_gate {
  uint16_t off_lo, sel;
  uint8_t zero, type;
  uint16_t off_hi;
} __attribute__((packed));
#endif

struct idt_desc {
  uint16_t limit;
  uintptr_t base;
} __attribute__((packed));

extern const uintptr_t fw_trap_stubs[IDT_VECTORS];
static struct idt_gate idt[IDT_VECTORS];
static fw_trap_handler handlers[IDT_VECTORS];

static const char *const names[IDT_VECTORS] = {
  "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "?9", "#TS", "#NP",
  "#SS", "#GP", "#PF", "?15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void fw_trap(struct fw_trap_frame *f);

/* idt_stubs.S returns with popf + ret unless this is set (iret=1). */
uint8_t fw_use_iret;

static void set_gate(uint8_t vector, uintptr_t addr, uint8_t dpl)
{
  struct idt_gate *g = &idt[vector];
  memset(g, 0, sizeof *g);
  g->off_lo = addr & 0xffff;
  g->sel = KERNEL_CS;
  g->type = GATE_INTERRUPT | (uint8_t)((dpl & 3) << 5);
#ifdef FW_LONG_MODE
  g->off_mid = (addr >> 16) & 0xffff;
  g->off_hi = (uint32_t)(addr >> 32);
#else
  g->off_hi = addr >> 16;
#endif
}

static bool idt_ready;

void idt_init(void)
{
  if (idt_ready)
    return;   /* once: a gate changed with idt_set_gate stays so */
  idt_ready = true;
  fw_use_iret = fw_arg_u64("iret", 0) != 0;
  for (int i = 0; i < IDT_VECTORS; i++)
    set_gate((uint8_t)i, fw_trap_stubs[i], 0);
  struct idt_desc d = { sizeof idt - 1, (uintptr_t)idt };
  __asm__ volatile("lidt %0" : : "m"(d));
}

void idt_set_gate(uint8_t vector, uint8_t dpl)
{
  if (vector < IDT_VECTORS)
    set_gate(vector, fw_trap_stubs[vector], dpl);
}

void idt_set_handler(uint8_t vector, fw_trap_handler h)
{
  if (vector < IDT_VECTORS)
    handlers[vector] = h;
}

void fw_trap(struct fw_trap_frame *f)
{
#ifdef FW_LONG_MODE
  if ((f->cs & 3) == 3)
    user_trap(f);   /* lib/user.c: the ring-3 code's way back, or a fault there */
#endif
  if (f->vector < IDT_VECTORS && handlers[f->vector]) {
    handlers[f->vector](f);
    return;
  }
  if (f->vector >= FIRST_IRQ_VECTOR)
    return;   /* stray interrupt (e.g. the LAPIC spurious vector) */
  uintptr_t cr2 = 0;
  if (f->vector == 14)
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
  printf("exception %u %s err=0x%x eip=0x%lx cr2=0x%lx eflags=0x%x\n", (unsigned)f->vector,
         f->vector < 22 ? names[f->vector] : "?", (unsigned)f->error, (unsigned long)f->eip,
         (unsigned long)cr2, (unsigned)f->eflags);
  debug_exit(FW_EXIT_EXCEPTION);
}
