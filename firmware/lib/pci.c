/* PCI configuration mechanism #1: address to 0xCF8, data at 0xCFC + (off & 3).
 * Each access is two port exits. */
#include "fw.h"

#define PCI_CONFIG_ADDRESS 0xcf8
#define PCI_CONFIG_DATA    0xcfc
#define PCI_HEADER_MULTIFUNCTION 0x80

static uint32_t io_next = PCI_IO_WINDOW_BASE;
static uint64_t mem_next = PCI_MEM_WINDOW_BASE;

static void select_reg(pci_bdf_t bdf, uint8_t off)
{
  outl(PCI_CONFIG_ADDRESS, 0x80000000u | (bdf << 8) | (off & 0xfc));
}

uint32_t pci_read32(pci_bdf_t bdf, uint8_t off) { select_reg(bdf, off); return inl(PCI_CONFIG_DATA); }
uint16_t pci_read16(pci_bdf_t bdf, uint8_t off) { select_reg(bdf, off); return inw(PCI_CONFIG_DATA + (off & 2)); }
uint8_t pci_read8(pci_bdf_t bdf, uint8_t off) { select_reg(bdf, off); return inb(PCI_CONFIG_DATA + (off & 3)); }
void pci_write32(pci_bdf_t bdf, uint8_t off, uint32_t v) { select_reg(bdf, off); outl(PCI_CONFIG_DATA, v); }
void pci_write16(pci_bdf_t bdf, uint8_t off, uint16_t v) { select_reg(bdf, off); outw(PCI_CONFIG_DATA + (off & 2), v); }
void pci_write8(pci_bdf_t bdf, uint8_t off, uint8_t v) { select_reg(bdf, off); outb(PCI_CONFIG_DATA + (off & 3), v); }

bool pci_next(pci_bdf_t *it)
{
  pci_bdf_t b = *it;
  for (;;) {
    if (b == PCI_BDF_START)
      b = 0;
    else if (PCI_FN(b) == 0 && !(pci_read8(b, PCI_HEADER_TYPE) & PCI_HEADER_MULTIFUNCTION))
      b += 8;   /* single-function device: skip functions 1..7 */
    else
      b++;
    if (b >= PCI_BDF(1, 0, 0))
      return false;
    if (pci_read16(b, PCI_VENDOR_ID) != 0xffff) {
      *it = b;
      return true;
    }
    if (PCI_FN(b) == 0)
      b += 7;   /* no function 0: no device (the b++ above finishes the skip) */
  }
}

bool pci_find(uint16_t vendor, uint16_t device, pci_bdf_t *out)
{
  pci_bdf_t b = PCI_BDF_START;
  while (pci_next(&b)) {
    uint32_t id = pci_read32(b, PCI_VENDOR_ID);
    if ((id & 0xffff) == vendor && (device == 0xffff || (id >> 16) == device)) {
      *out = b;
      return true;
    }
  }
  return false;
}

int pci_bar_count(pci_bdf_t bdf)
{
  switch (pci_read8(bdf, PCI_HEADER_TYPE) & 0x7f) {
  case 0: return 6;
  case 1: return 2;
  default: return 0;
  }
}

int pci_bar_probe(pci_bdf_t bdf, int idx, struct pci_bar *bar, bool assign)
{
  uint8_t off = PCI_BAR0 + 4 * idx;
  uint16_t cmd = pci_read16(bdf, PCI_COMMAND);
  memset(bar, 0, sizeof *bar);

  pci_write16(bdf, PCI_COMMAND, cmd & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
  uint32_t orig = pci_read32(bdf, off);
  pci_write32(bdf, off, 0xffffffffu);
  uint32_t mask = pci_read32(bdf, off);
  pci_write32(bdf, off, orig);
  int used = 1;

  if (mask == 0 || mask == 0xffffffffu) {
    /* not implemented (all-ones: nothing answers) */
  } else if (mask & 1) {
    bar->kind = PCI_BAR_IO;
    uint32_t m = (mask & ~3u) | 0xffff0000u;   /* I/O BARs may decode only 16 bits */
    bar->size = (uint32_t)(~m + 1);
    bar->base = orig & ~3u;
  } else {
    bar->kind = PCI_BAR_MEM;
    bar->prefetch = (orig & 8) != 0;
    uint64_t m = mask & ~0xfu;
    bar->base = orig & ~0xfu;
    if (((mask >> 1) & 3) == 2 && idx < 5) {
      bar->is64 = true;
      used = 2;
      uint32_t orig_hi = pci_read32(bdf, off + 4);
      pci_write32(bdf, off + 4, 0xffffffffu);
      uint32_t mask_hi = pci_read32(bdf, off + 4);
      pci_write32(bdf, off + 4, orig_hi);
      m |= (uint64_t)mask_hi << 32;
      bar->base |= (uint64_t)orig_hi << 32;
    } else {
      m |= 0xffffffff00000000ull;
    }
    bar->size = ~m + 1;
  }

  if (assign && bar->kind != PCI_BAR_NONE && bar->base == 0 && bar->size) {
    if (bar->kind == PCI_BAR_IO) {
      uint32_t base = (io_next + (uint32_t)bar->size - 1) & ~((uint32_t)bar->size - 1);
      if (base + bar->size <= 0x10000) {
        io_next = base + (uint32_t)bar->size;
        bar->base = base;
        pci_write32(bdf, off, base | (orig & 3));
        bar->assigned = true;
      }
    } else {
      uint64_t base = (mem_next + bar->size - 1) & ~(bar->size - 1);
      if (base + bar->size <= 0x100000000ull) {
        mem_next = base + bar->size;
        bar->base = base;
        pci_write32(bdf, off, (uint32_t)base | (orig & 0xf));
        if (bar->is64)
          pci_write32(bdf, off + 4, 0);
        bar->assigned = true;
      }
    }
  }
  pci_write16(bdf, PCI_COMMAND, cmd);
  return used;
}

void pci_enable(pci_bdf_t bdf, uint16_t command_bits)
{
  pci_write16(bdf, PCI_COMMAND, pci_read16(bdf, PCI_COMMAND) | command_bits);
}

uint8_t pci_cap_next(pci_bdf_t bdf, uint8_t cap)
{
  uint8_t next;
  if (cap == 0) {
    if (!(pci_read16(bdf, PCI_STATUS) & PCI_STATUS_CAP_LIST))
      return 0;
    next = pci_read8(bdf, PCI_CAPABILITY_LIST);
  } else {
    next = pci_read8(bdf, cap + 1);
  }
  next &= 0xfc;
  return next >= 0x40 ? next : 0;
}

uint8_t pci_cap_find(pci_bdf_t bdf, uint8_t id)
{
  int guard = 48;   /* a looping list must not hang us */
  for (uint8_t o = pci_cap_next(bdf, 0); o && guard--; o = pci_cap_next(bdf, o))
    if (pci_read8(bdf, o) == id)
      return o;
  return 0;
}
