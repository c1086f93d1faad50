/* Minimal 32-bit IDT: 64 interrupt gates through idt_stubs.S: exceptions
 * 0..31 and external interrupts 32..63 (lib/apic.c routes device interrupts
 * there). An interrupt vector with no handler is ignored (no EOI). */
#include "fw.h"

#define IDT_VECTORS 64
#define FIRST_IRQ_VECTOR 32
#define GATE_INTERRUPT32 0x8e   /* present, DPL 0, 32-bit interrupt gate */
#define KERNEL_CS 0x08

struct idt_gate {
  uint16_t off_lo, sel;
  uint8_t zero, type;
  uint16_t off_hi;
} __attribute__((packed));

struct idt_desc {
  uint16_t limit;
  uint32_t base;
} __attribute__((packed));

extern const uint32_t fw_trap_stubs[IDT_VECTORS];
static struct idt_gate idt[IDT_VECTORS];
static fw_trap_handler handlers[IDT_VECTORS];

static const char *const names[IDT_VECTORS] = {
  "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "?9", "#TS", "#NP",
  "#SS", "#GP", "#PF", "?15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
};

void fw_trap(struct fw_trap_frame *f);

/* idt_stubs.S returns with popf + ret unless this is set (iret=1). */
uint8_t fw_use_iret;

void idt_init(void)
{
  fw_use_iret = fw_arg_u64("iret", 0) != 0;
  for (int i = 0; i < IDT_VECTORS; i++) {
    idt[i].off_lo = fw_trap_stubs[i] & 0xffff;
    idt[i].off_hi = fw_trap_stubs[i] >> 16;
    idt[i].sel = KERNEL_CS;
    idt[i].zero = 0;
    idt[i].type = GATE_INTERRUPT32;
  }
  struct idt_desc d = { sizeof idt - 1, (uint32_t)(uintptr_t)idt };
  __asm__ volatile("lidt %0" : : "m"(d));
}

void idt_set_handler(uint8_t vector, fw_trap_handler h)
{
  if (vector < IDT_VECTORS)
    handlers[vector] = h;
}

void fw_trap(struct fw_trap_frame *f)
{
  if (f->vector < IDT_VECTORS && handlers[f->vector]) {
    handlers[f->vector](f);
    return;
  }
  if (f->vector >= FIRST_IRQ_VECTOR)
    return;   /* stray interrupt (e.g. the LAPIC spurious vector) */
  uint32_t cr2 = 0;
  if (f->vector == 14)
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
  printf("exception %u %s err=0x%x eip=0x%x cr2=0x%x eflags=0x%x\n", f->vector,
         f->vector < 22 ? names[f->vector] : "?", f->error, f->eip, cr2, f->eflags);
  debug_exit(FW_EXIT_EXCEPTION);
}
