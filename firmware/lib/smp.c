/* Starting the other CPUs (32-bit images): how many there are (fw_cfg's
 * NB_CPUS, as kvm-unit-tests reads it), INIT and SIPI through the local APIC's
 * ICR to all but self, and a spinlock for what they share (the console). */
#include "fw.h"

#define SMP_TRAMPOLINE  0x10000         /* SIPI vector 0x10: below 1 MiB, free RAM */
#define LAPIC_ICR_LOW   0x300
#define ICR_ALL_BUT_SELF (3u << 18)
#define ICR_INIT        (5u << 8)
#define ICR_STARTUP     (6u << 8)
#define ICR_ASSERT      (1u << 14)
#define ICR_PENDING     (1u << 12)
#define FW_CFG_SEL      0x510
#define FW_CFG_DATA     0x511
#define FW_CFG_NB_CPUS  0x05

extern const uint8_t fw_ap_trampoline[], fw_ap_trampoline_end[];
volatile uint32_t fw_ap_next = 1;
uint8_t fw_ap_stacks[FW_MAX_CPUS * 4096] __attribute__((aligned(4096)));
static void (*volatile ap_fn)(unsigned cpu);
static volatile uint32_t aps_started;

unsigned smp_cpus(void)
{
  outw(FW_CFG_SEL, FW_CFG_NB_CPUS);
  unsigned n = inb(FW_CFG_DATA);
  n |= (unsigned)inb(FW_CFG_DATA) << 8;
  return n == 0 || n > FW_MAX_CPUS ? 1 : n;
}

void fw_ap_main(unsigned cpu)
{
  __atomic_add_fetch(&aps_started, 1, __ATOMIC_SEQ_CST);
  ap_fn(cpu);
  for (;;)
    __asm__ volatile("cli; hlt");
}

static void icr_send(uint32_t v)
{
  mmio_write32(LAPIC_BASE + LAPIC_ICR_LOW, v);
  while (mmio_read32(LAPIC_BASE + LAPIC_ICR_LOW) & ICR_PENDING)
    __asm__ volatile("pause");
}

unsigned smp_start_aps(void (*fn)(unsigned cpu), unsigned timeout_ms)
{
  unsigned want = smp_cpus() - 1;
  if (want == 0)
    return 0;
  ap_fn = fn;
  memcpy((void *)SMP_TRAMPOLINE, fw_ap_trampoline, (size_t)(fw_ap_trampoline_end - fw_ap_trampoline));
  mmio_write32(LAPIC_BASE + 0xF0, (1u << 8) | 0xFF);   /* the BSP's APIC enabled, to send IPIs */
  icr_send(ICR_ALL_BUT_SELF | ICR_INIT | ICR_ASSERT);
  uint64_t deadline = rdtsc() + fw_ms_to_tsc(timeout_ms);
  /* The MP spec's two SIPIs; KVM starts an AP on the first. */
  for (int sipi = 0; sipi < 2 && aps_started < want; sipi++) {
    icr_send(ICR_ALL_BUT_SELF | ICR_STARTUP | (SMP_TRAMPOLINE >> 12));
    uint64_t wait = rdtsc() + fw_ms_to_tsc(timeout_ms / 4 + 1);
    while (aps_started < want && rdtsc() < wait)
      __asm__ volatile("pause");
  }
  while (aps_started < want && rdtsc() < deadline)
    __asm__ volatile("pause");
  return aps_started;
}

void spin_lock(volatile uint32_t *l)
{
  while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE))
    while (*l)
      __asm__ volatile("pause");
}

void spin_unlock(volatile uint32_t *l)
{
  __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}
