/* fw.h — the firmware runtime: everything a scenario needs, in one header.
 * Freestanding: no libc. Built 32-bit (default) or 64-bit (scenarios marked
 * `// fw:long-mode`; FW_LONG_MODE is defined and main runs in long mode). */
#ifndef FW_H
#define FW_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FW_NORETURN __attribute__((noreturn))
#define FW_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- the scenario's entry point (called by the runtime after init) ----
 * Its return value becomes the debug-exit code. */
int main(uint32_t magic, uint32_t mbi);

/* ---- exit codes (debug_exit: QEMU isa-debug-exit, status = code << 1 | 1) ---- */
#define FW_EXIT_OK        0x00
#define FW_EXIT_FAIL      0x01
#define FW_EXIT_USAGE     0x02   /* bad command-line argument */
#define FW_EXIT_EXCEPTION 0x7e   /* unexpected CPU exception */
#define FW_EXIT_PANIC     0x7f   /* fw_panic */
#define FW_DEBUG_EXIT_PORT 0xf4

FW_NORETURN void debug_exit(uint8_t code);
FW_NORETURN FW_PRINTF(1, 2) void fw_panic(const char *fmt, ...);

/* ---- port I/O, MMIO, CPU ---- */
static inline void outb(uint16_t port, uint8_t v)  { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t  inb(uint16_t port) { uint8_t v;  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* MMIO: one access of exactly the given width (volatile, never split or merged). */
static inline uint8_t  mmio_read8(uintptr_t a)  { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write8(uintptr_t a, uint8_t v)   { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }

static inline uint64_t rdtsc(void)
{
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static inline unsigned long read_flags(void)
{
  unsigned long f;
  __asm__ volatile("pushf; pop %0" : "=r"(f) : : "memory");
  return f;
}

static inline void write_flags(unsigned long f)
{
  __asm__ volatile("push %0; popf" : : "r"(f) : "memory", "cc");
}

#define EFLAGS_IF (1u << 9)
#define EFLAGS_AC (1u << 18)

/* ---- strings / memory (also what gcc may call implicitly) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* Parses decimal or 0x-prefixed hex; *end (if given) points past the digits.
 * Returns false if no digit was found. */
bool fw_parse_u64(const char *s, uint64_t *out, const char **end);

/* 64 / 32 division without libgcc (32-bit code has no native 64-bit divide). */
uint64_t fw_udiv64(uint64_t n, uint32_t d, uint32_t *rem);

/* ---- serial console: COM1 16550A, polled ---- */
#define COM1_PORT 0x3f8
void serial_init(void);
void serial_putc(char c);          /* waits for LSR.THRE, then writes THR */
void serial_write(const char *s, size_t n);
void serial_puts(const char *s);   /* no newline added */

/* ---- printf-lite: %c %s %d %i %u %x %X %p %%, length l ll z,
 * flags '0' '-', field width (number or *). Newlines are sent as "\n". ---- */
FW_PRINTF(1, 2) int printf(const char *fmt, ...);
int vprintf(const char *fmt, va_list ap);
FW_PRINTF(3, 4) int snprintf(char *buf, size_t size, const char *fmt, ...);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* ---- multiboot v1 info ---- */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MULTIBOOT_INFO_MEMORY  (1u << 0)
#define MULTIBOOT_INFO_CMDLINE (1u << 2)
struct multiboot_info {
  uint32_t flags;
  uint32_t mem_lower, mem_upper;  /* KiB below 640K / above 1 MiB (flag bit 0) */
  uint32_t boot_device;
  uint32_t cmdline;               /* physical address of a C string (flag bit 2) */
  uint32_t mods_count, mods_addr;
  uint32_t syms[4];
  uint32_t mmap_length, mmap_addr;
};
extern const struct multiboot_info *fw_mbi;   /* NULL if magic was wrong */
const char *fw_cmdline(void);                 /* "" if none */
uint32_t fw_mem_upper_kib(void);              /* 0 if not reported */

/* ---- command-line arguments: whitespace-separated words; `key=value` words
 * are looked up by key; a bare word `key` has value "". Words are taken from
 * the whole command line (QEMU and GRUB put the image path first: harmless). */
const char *fw_arg(const char *key);                          /* NULL if absent */
const char *fw_arg_str(const char *key, const char *dflt);
uint64_t fw_arg_u64(const char *key, uint64_t dflt);          /* decimal or 0x..; bad value → exit FW_EXIT_USAGE */

/* ---- bump allocator over RAM from _end (4 KiB aligned) up to the top of
 * low memory reported by multiboot (capped at 3 GiB); never freed. ---- */
void *fw_alloc(size_t size, size_t align);   /* zeroed; panics when exhausted */
void *fw_alloc_raw(size_t size, size_t align);   /* not zeroed (DMA buffers: saves the fill) */
uintptr_t fw_alloc_next(void);
uintptr_t fw_alloc_limit(void);
void fw_alloc_rewind(uintptr_t mark);        /* frees all allocated since mark = fw_alloc_next() */

/* ---- PCI, configuration mechanism #1 (0xCF8/0xCFC), bus 0 unless stated ---- */
typedef uint32_t pci_bdf_t;      /* bus << 8 | dev << 3 | fn */
#define PCI_BDF(b, d, f) ((pci_bdf_t)(((b) << 8) | ((d) << 3) | (f)))
#define PCI_BUS(x) (((x) >> 8) & 0xff)
#define PCI_DEV(x) (((x) >> 3) & 0x1f)
#define PCI_FN(x)  ((x) & 7)

#define PCI_VENDOR_ID      0x00
#define PCI_DEVICE_ID      0x02
#define PCI_COMMAND        0x04
#define PCI_STATUS         0x06
#define PCI_CLASS_REVISION 0x08
#define PCI_HEADER_TYPE    0x0e
#define PCI_BAR0           0x10
#define PCI_CAPABILITY_LIST 0x34
#define PCI_INTERRUPT_LINE 0x3c
#define PCI_INTERRUPT_PIN  0x3d
#define PCI_COMMAND_IO     0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_STATUS_CAP_LIST 0x10

uint32_t pci_read32(pci_bdf_t bdf, uint8_t off);
uint16_t pci_read16(pci_bdf_t bdf, uint8_t off);
uint8_t  pci_read8(pci_bdf_t bdf, uint8_t off);
void pci_write32(pci_bdf_t bdf, uint8_t off, uint32_t v);
void pci_write16(pci_bdf_t bdf, uint8_t off, uint16_t v);
void pci_write8(pci_bdf_t bdf, uint8_t off, uint8_t v);

/* Iterates every present function on bus 0: start with *it = PCI_BDF_START. */
#define PCI_BDF_START 0xffffffffu
bool pci_next(pci_bdf_t *it);
/* First function on bus 0 with this vendor/device (0xffff matches any device). */
bool pci_find(uint16_t vendor, uint16_t device, pci_bdf_t *out);

enum pci_bar_kind { PCI_BAR_NONE, PCI_BAR_IO, PCI_BAR_MEM };
struct pci_bar {
  enum pci_bar_kind kind;
  bool is64, prefetch;
  bool assigned;             /* read 0 and was given an address by us */
  uint64_t base, size;
};
/* Sizes BAR `idx` (write all-ones, read back, restore; decoding is off meanwhile).
 * With assign, a BAR that reads 0 gets an address: memory from 0xC0000000 up,
 * I/O from 0xC000 up, naturally aligned. Returns the BAR slots used (2 for a
 * 64-bit memory BAR, else 1). Header type 0 has 6 BARs, type 1 has 2. */
int pci_bar_probe(pci_bdf_t bdf, int idx, struct pci_bar *bar, bool assign);
int pci_bar_count(pci_bdf_t bdf);
void pci_enable(pci_bdf_t bdf, uint16_t command_bits);   /* sets bits in PCI_COMMAND */
/* Offset of the first capability with this id, 0 if none. Walk all with
 * for (o = pci_cap_next(b, 0); o; o = pci_cap_next(b, o)) — id at o, next at o+1. */
uint8_t pci_cap_find(pci_bdf_t bdf, uint8_t id);
uint8_t pci_cap_next(pci_bdf_t bdf, uint8_t cap);   /* cap = 0: first */

#define PCI_MEM_WINDOW_BASE 0xC0000000u
#define PCI_IO_WINDOW_BASE  0xC000u

/* ---- IDT: vectors 0..31 go to fw_trap, which calls a registered handler or
 * reports and exits FW_EXIT_EXCEPTION; vectors 32..63 call their handler or
 * are ignored. 32-bit images: lib/idt_stubs.S; long mode: lib/idt_stubs64.S. ---- */
#ifdef FW_LONG_MODE
struct fw_trap_frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
  uint64_t edi, esi, ebp, ebx, edx, ecx, eax;         /* rdi … rax, named as in 32-bit images */
  uint64_t vector, error;                             /* error = 0 if the CPU pushed none */
  uint64_t eip, cs, eflags, esp, ss;                  /* iretq frame; a handler may move eip */
};
#else
struct fw_trap_frame {
  uint32_t edi, esi, ebp, esp0, ebx, edx, ecx, eax;   /* pusha */
  uint32_t vector, error;                             /* error = 0 if the CPU pushed none */
  uint32_t eip, cs, eflags;                           /* iret frame; a handler may move eip */
};
#endif
typedef void (*fw_trap_handler)(struct fw_trap_frame *f);
void idt_init(void);
void idt_set_handler(uint8_t vector, fw_trap_handler h);
void idt_set_gate(uint8_t vector, uint8_t dpl);   /* the gate's descriptor privilege level */

/* ---- ring 3, long-mode images only (lib/user.c, lib/user_stubs.S) ----
 * user_run(fn, arg) runs fn(arg) at CPL3 and returns its result at CPL0.
 * kvm_pvm runs guest ring-3 code natively (ring 0 is emulated), so a data
 * loop run this way costs what the hardware and the VMM cost. The first call
 * marks the identity map user-accessible (U/S in every level: rings, buffers
 * and BARs are reachable from ring 3), loads a GDT with DPL-3 segments and a
 * TSS (RSP0: a stack of its own; an I/O bitmap allowing every port), then
 * enters fn with iretq (IOPL 3, which kvm_pvm strips, hence the bitmap; IF 0:
 * nothing interrupts it, so it polls).
 * fn comes back by returning: its return address is a `ud2`, whose #UD at
 * CPL3 fw_trap hands to user_trap, which resumes user_run's caller. (`int`
 * from ring 3 raises #UD on kvm_pvm anyway.) fn may print (serial is port
 * I/O, which IOPL 3 allows; each byte costs two exits) but must not run
 * privileged instructions: another fault at CPL3 is reported, exit 0x7e. */
typedef uint64_t (*fw_user_fn)(void *arg);
#ifdef FW_LONG_MODE
#define FW_USER_DS 0x23
#define FW_USER_CS 0x2b
#define FW_TSS_SEL 0x30
uint64_t user_run(fw_user_fn fn, void *arg);
void user_trap(struct fw_trap_frame *f);
#endif
/* fn(arg) at CPL3 when cpl3 (long-mode images; vnet_opts_parse refuses
 * cpl3=1 elsewhere), else a plain call. */
static inline uint64_t fw_run_loop(bool cpl3, fw_user_fn fn, void *arg)
{
#ifdef FW_LONG_MODE
  if (cpl3)
    return user_run(fn, arg);
#endif
  return fn(arg);
}
static inline unsigned fw_cpl(void)
{
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return cs & 3;
}

/* ---- interrupts: LAPIC, IOAPIC, 8259 masking (lib/apic.c) ----
 * Device interrupts use IDT vectors 32..63; the handler must EOI (irq_eoi).
 * Waiting: irq_wait() executes `sti; hlt; cli` (the sti shadow makes checking
 * a condition with interrupts off and then halting race-free). */
#define LAPIC_BASE   0xFEE00000u
#define IOAPIC_BASE  0xFEC00000u
#define IRQ_VEC_TIMER    0x3e
#define IRQ_VEC_SPURIOUS 0x3f
void irq_init(void);                 /* IDT, mask the PIC, enable the LAPIC (SVR bit 8) */
uint8_t lapic_id(void);
static inline void irq_eoi(void) { mmio_write32(LAPIC_BASE + 0xB0, 0); }
/* IOAPIC redirection: gsi -> vector, fixed delivery to this CPU. */
void ioapic_route(uint8_t gsi, uint8_t vector, bool level, bool active_low);
void ioapic_mask(uint8_t gsi);
/* Periodic LAPIC timer (bus clock / 1; 1 GHz on QEMU and KVM): a wake-up
 * tick for hlt-based waits with a deadline. 0 stops it. */
void lapic_timer_periodic(uint32_t count);
extern volatile uint32_t irq_timer_ticks;
static inline void irq_wait(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
#ifdef FW_LONG_MODE
static inline void mb(void) { __asm__ volatile("lock; orl $0, (%%rsp)" ::: "memory"); }
#else
static inline void mb(void) { __asm__ volatile("lock; orl $0, (%%esp)" ::: "memory"); }
#endif
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* ---- other CPUs (lib/smp.c): fw_cfg's CPU count; INIT and SIPI to all but
 * self, each AP then running fn(cpu) with cpu = 1, 2, … on a 4 KiB stack of
 * its own, interrupts off, at CPL0 (in a long-mode image, in 64-bit mode on
 * the BSP's page tables; the IDT is the reset one, so an exception
 * there is a triple fault). Returns how many started
 * within timeout_ms. A spinlock for what they share (the console). ---- */
#define FW_MAX_CPUS 64
unsigned smp_cpus(void);
unsigned smp_start_aps(void (*fn)(unsigned cpu), unsigned timeout_ms);
void spin_lock(volatile uint32_t *l);
void spin_unlock(volatile uint32_t *l);

/* ---- time: TSC frequency (kHz) from tsc_khz=, CPUID 0x15/0x16/0x40000010,
 * or a PIT channel 2 calibration; 1 GHz if all fail (lib/apic.c) ---- */
uint32_t fw_tsc_khz(void);
uint64_t fw_ms_to_tsc(uint32_t ms);

#endif
