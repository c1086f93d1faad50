/* Interrupt plumbing for 32-bit images: 8259 masked, local APIC enabled,
 * IOAPIC redirection entries, a periodic LAPIC timer tick for waits with a
 * deadline, and the TSC frequency. */
#include "fw.h"

#define LAPIC_ID        0x20
#define LAPIC_TPR       0x80
#define LAPIC_SVR       0xF0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_DCR 0x3E0
#define LAPIC_SVR_ENABLE  (1u << 8)
#define LVT_MASKED        (1u << 16)
#define LVT_TIMER_PERIODIC (1u << 17)

#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN    0x10

volatile uint32_t irq_timer_ticks;
static bool irq_ready;

static void timer_handler(struct fw_trap_frame *f)
{
  irq_timer_ticks++;
  irq_eoi();
}

void irq_init(void)
{
  if (irq_ready)
    return;
  irq_ready = true;
  idt_init();
  outb(0x21, 0xff);   /* mask both 8259s: all external interrupts go through the IOAPIC */
  outb(0xa1, 0xff);
  mmio_write32(LAPIC_BASE + LAPIC_TPR, 0);
  mmio_write32(LAPIC_BASE + LAPIC_SVR, LAPIC_SVR_ENABLE | IRQ_VEC_SPURIOUS);
  idt_set_handler(IRQ_VEC_TIMER, timer_handler);
}

uint8_t lapic_id(void)
{
  return (uint8_t)(mmio_read32(LAPIC_BASE + LAPIC_ID) >> 24);
}

static void ioapic_write(uint8_t reg, uint32_t v)
{
  mmio_write32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
  mmio_write32(IOAPIC_BASE + IOAPIC_WIN, v);
}

void ioapic_route(uint8_t gsi, uint8_t vector, bool level, bool active_low)
{
  ioapic_write(0x11 + 2 * gsi, (uint32_t)lapic_id() << 24);
  ioapic_write(0x10 + 2 * gsi, vector | (active_low ? 1u << 13 : 0) | (level ? 1u << 15 : 0));
}

void ioapic_mask(uint8_t gsi)
{
  ioapic_write(0x10 + 2 * gsi, 1u << 16);
}

void lapic_timer_periodic(uint32_t count)
{
  if (!count) {
    mmio_write32(LAPIC_BASE + LAPIC_LVT_TIMER, LVT_MASKED);
    mmio_write32(LAPIC_BASE + LAPIC_TIMER_ICR, 0);
    return;
  }
  mmio_write32(LAPIC_BASE + LAPIC_TIMER_DCR, 0xb);   /* divide by 1 */
  mmio_write32(LAPIC_BASE + LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | IRQ_VEC_TIMER);
  mmio_write32(LAPIC_BASE + LAPIC_TIMER_ICR, count);
}

/* ---- TSC frequency ---- */

static uint32_t tsc_khz;

/* PIT channel 2, mode 0, 10 ms; port 0x61 bit 5 is the channel's output. */
static uint32_t pit_calibrate(void)
{
  const uint32_t ticks = 11932;   /* 1193182 Hz * 10 ms */
  outb(0x61, (inb(0x61) & ~0x02) | 0x01);
  outb(0x43, 0xb0);
  outb(0x42, ticks & 0xff);
  outb(0x42, ticks >> 8);
  uint64_t t0 = rdtsc(), dt = 0;
  /* no PIT (bit 5 never rises): give up after 100k polls or ~1e9 cycles */
  for (uint32_t guard = 0; guard < 100000 && dt < 1000000000ull; guard++) {
    dt = rdtsc() - t0;
    if (inb(0x61) & 0x20)
      return (uint32_t)fw_udiv64(dt, 10, NULL);
  }
  return 0;
}

uint32_t fw_tsc_khz(void)
{
  if (tsc_khz)
    return tsc_khz;
  uint32_t r[4];
  uint64_t v = fw_arg_u64("tsc_khz", 0);
  if (v) {
    tsc_khz = (uint32_t)v;
    return tsc_khz;
  }
  cpuid(0, 0, r);
  uint32_t max = r[0];
  if (max >= 0x15) {
    cpuid(0x15, 0, r);   /* TSC/crystal = ebx/eax, crystal Hz in ecx */
    if (r[0] && r[1] && r[2])
      tsc_khz = (uint32_t)fw_udiv64((uint64_t)r[2] * r[1], r[0] * 1000u, NULL);
  }
  if (!tsc_khz && max >= 0x16) {
    cpuid(0x16, 0, r);   /* base frequency, MHz */
    if (r[0] & 0xffff)
      tsc_khz = (r[0] & 0xffff) * 1000u;
  }
  if (!tsc_khz) {
    cpuid(1, 0, r);
    if (r[2] & (1u << 31)) {   /* hypervisor: KVM/VMware timing leaf */
      cpuid(0x40000000, 0, r);
      if (r[0] >= 0x40000010) {
        cpuid(0x40000010, 0, r);
        tsc_khz = r[0];
      }
    }
  }
  if (!tsc_khz)
    tsc_khz = pit_calibrate();
  if (!tsc_khz)
    tsc_khz = 1000000;
  return tsc_khz;
}

uint64_t fw_ms_to_tsc(uint32_t ms)
{
  return (uint64_t)fw_tsc_khz() * ms;
}
