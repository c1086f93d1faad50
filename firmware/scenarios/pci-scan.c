/* pci-scan: lists every PCI function on bus 0, one line each:
 *   pci 00:03.0 1af4:1000 class 020000 hdr 00 bar0=io:0xc000/32 bar1=mem:0xc0000000/4096 caps=11@98,09@84
 * BARs: io:BASE/SIZE, mem:BASE/SIZE (32-bit), mem64:BASE/SIZE; a trailing
 * `p` marks prefetchable and a `*` a BAR that read 0 and was assigned here
 * (memory from 0xc0000000, I/O from 0xc000). Unimplemented BARs are left out.
 * caps=ID@OFFSET in list order (hex), `caps=-` if the list is empty.
 * The command register is left as found. Last line:
 *   pci-scan: N functions
 * Exit 0; no function at all exits 1. */
#include "fw.h"

int main(uint32_t magic, uint32_t mbi)
{
  unsigned count = 0;
  pci_bdf_t b = PCI_BDF_START;
  while (pci_next(&b)) {
    count++;
    uint32_t id = pci_read32(b, PCI_VENDOR_ID);
    uint32_t cls = pci_read32(b, PCI_CLASS_REVISION) >> 8;
    uint8_t hdr = pci_read8(b, PCI_HEADER_TYPE);
    printf("pci %02x:%02x.%x %04x:%04x class %06x hdr %02x", PCI_BUS(b), PCI_DEV(b), PCI_FN(b),
           id & 0xffff, id >> 16, cls, hdr);
    int nbars = pci_bar_count(b);
    for (int i = 0; i < nbars;) {
      struct pci_bar bar;
      int used = pci_bar_probe(b, i, &bar, true);
      if (bar.kind != PCI_BAR_NONE)
        printf(" bar%d=%s:0x%llx/%llu%s%s", i,
               bar.kind == PCI_BAR_IO ? "io" : bar.is64 ? "mem64" : "mem",
               (unsigned long long)bar.base, (unsigned long long)bar.size,
               bar.prefetch ? "p" : "", bar.assigned ? "*" : "");
      i += used;
    }
    printf(" caps=");
    int guard = 48;
    uint8_t o = pci_cap_next(b, 0);
    if (!o)
      printf("-");
    for (bool first = true; o && guard--; o = pci_cap_next(b, o), first = false)
      printf("%s%02x@%02x", first ? "" : ",", pci_read8(b, o), o);
    printf("\n");
  }
  printf("pci-scan: %u functions\n", count);
  return count ? FW_EXIT_OK : FW_EXIT_FAIL;
}
