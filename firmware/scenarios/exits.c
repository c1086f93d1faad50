/* exits: times N VM exits of one kind with rdtsc.
 * Command line (all optional):
 *   kind=pio_out|pio_in|mmio_write|mmio_read|notify   default pio_out
 *              notify: N writes of the TX queue's index (1) to the virtio-net
 *              TX queue-notify register after device setup, no buffers added
 *              (modern: 16-bit MMIO write to the notify region; legacy with
 *              transport=legacy: outw to QUEUE_NOTIFY). The driver options of
 *              README.md apply; irq defaults to poll here.
 *   n=N        number of exits, default 1000
 *   port=P     I/O port for pio_*, default 0xe0 (unassigned on a PC)
 *   addr=A     guest-physical address for mmio_*, default 0xd0000000 (above
 *              the PCI BAR window the runtime assigns from 0xc0000000, outside
 *              RAM: the VMM sees every access)
 * PIO accesses are 1 byte, MMIO accesses 4 bytes. The loop is unrolled 8x so
 * loop overhead is ~0.25 instruction per exit. Prints
 *   exits kind=pio_out n=1000 cycles_per_exit=NNN cycles=TOTAL
 * in TSC cycles (the TSC frequency is not measured). Exit 0; a bad argument
 * exits 2. */
#include "fw.h"
#include "virtio.h"

#define DEFAULT_PORT 0xe0
#define DEFAULT_ADDR 0xd0000000u

#define X8(s) s s s s s s s s

static void pio_out(uint16_t port, uint32_t n)
{
  for (uint32_t i = n / 8; i; i--)
    __asm__ volatile(X8("outb %%al, %%dx\n\t") : : "a"(0), "d"(port));
  for (uint32_t i = n % 8; i; i--)
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"(port));
}

static void pio_in(uint16_t port, uint32_t n)
{
  for (uint32_t i = n / 8; i; i--)
    __asm__ volatile(X8("inb %%dx, %%al\n\t") : : "d"(port) : "eax");
  for (uint32_t i = n % 8; i; i--)
    __asm__ volatile("inb %%dx, %%al" : : "d"(port) : "eax");
}

static void mmio_write(uintptr_t addr, uint32_t n)
{
  for (uint32_t i = n / 8; i; i--)
    __asm__ volatile(X8("movl %%eax, (%0)\n\t") : : "r"(addr), "a"(0) : "memory");
  for (uint32_t i = n % 8; i; i--)
    __asm__ volatile("movl %%eax, (%0)" : : "r"(addr), "a"(0) : "memory");
}

static void pio_outw(uint16_t port, uint16_t v, uint32_t n)
{
  for (uint32_t i = n / 8; i; i--)
    __asm__ volatile(X8("outw %%ax, %%dx\n\t") : : "a"(v), "d"(port));
  for (uint32_t i = n % 8; i; i--)
    __asm__ volatile("outw %%ax, %%dx" : : "a"(v), "d"(port));
}

static void mmio_write16x(uintptr_t addr, uint16_t v, uint32_t n)
{
  for (uint32_t i = n / 8; i; i--)
    __asm__ volatile(X8("movw %%ax, (%0)\n\t") : : "r"(addr), "a"(v) : "memory");
  for (uint32_t i = n % 8; i; i--)
    __asm__ volatile("movw %%ax, (%0)" : : "r"(addr), "a"(v) : "memory");
}

static void mmio_read(uintptr_t addr, uint32_t n)
{
  for (uint32_t i = n / 8; i; i--)
    __asm__ volatile(X8("movl (%0), %%eax\n\t") : : "r"(addr) : "eax", "memory");
  for (uint32_t i = n % 8; i; i--)
    __asm__ volatile("movl (%0), %%eax" : : "r"(addr) : "eax", "memory");
}

int main(uint32_t magic, uint32_t mbi)
{
  const char *kind = fw_arg_str("kind", "pio_out");
  uint64_t n64 = fw_arg_u64("n", 1000);
  uint64_t port = fw_arg_u64("port", DEFAULT_PORT);
  uint64_t addr = fw_arg_u64("addr", DEFAULT_ADDR);
  if (n64 == 0 || n64 > 0xffffffffu || port > 0xffff || addr > 0xfffffffcu) {
    printf("exits: bad arguments n=%llu port=0x%llx addr=0x%llx\n",
           (unsigned long long)n64, (unsigned long long)port, (unsigned long long)addr);
    return FW_EXIT_USAGE;
  }
  uint32_t n = (uint32_t)n64;

  static struct vnet nic;
  bool notify = !strcmp(kind, "notify");
  if (notify) {
    struct vnet_opts o;
    const char *why;
    if (!vnet_opts_parse(&o, &why)) {
      printf("exits: bad argument %s\n", why);
      return FW_EXIT_USAGE;
    }
    if (!fw_arg("irq")) {
      o.irq = VNET_IRQ_POLL;
      o.wait_irq = false;
    }
    if (!vnet_init(&nic, &o, &why)) {
      printf("exits: FAIL device: %s\n", why);
      return FW_EXIT_FAIL;
    }
  }

  uint64_t t0 = rdtsc();
  if (!strcmp(kind, "pio_out"))
    pio_out((uint16_t)port, n);
  else if (!strcmp(kind, "pio_in"))
    pio_in((uint16_t)port, n);
  else if (!strcmp(kind, "mmio_write"))
    mmio_write((uintptr_t)addr, n);
  else if (!strcmp(kind, "mmio_read"))
    mmio_read((uintptr_t)addr, n);
  else if (notify && nic.dev.modern)
    mmio_write16x(nic.tx.notify, nic.tx.index, n);
  else if (notify)
    pio_outw((uint16_t)nic.tx.notify, nic.tx.index, n);
  else {
    printf("exits: unknown kind=%s (pio_out|pio_in|mmio_write|mmio_read|notify)\n", kind);
    return FW_EXIT_USAGE;
  }
  uint64_t cycles = rdtsc() - t0;
  if (notify) {
    bool used = vq_has_used(&nic.tx);   /* an empty avail ring: nothing may be used */
    vnet_shutdown(&nic);
    if (used) {
      printf("exits kind=notify n=%u FAIL the device used a buffer that was never made available\n", n);
      return FW_EXIT_FAIL;
    }
  }

  printf("exits kind=%s n=%u cycles_per_exit=%llu cycles=%llu\n", kind, n,
         (unsigned long long)fw_udiv64(cycles, n, NULL), (unsigned long long)cycles);
  return FW_EXIT_OK;
}
