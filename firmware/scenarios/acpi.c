/* acpi: finds the ACPI tables as an OS does and uses what they describe.
 * Scans 0xE0000-0xFFFFF for "RSD PTR " (checksummed), walks the RSDT to the
 * FACP, checks the checksums on the way, reads the PM timer twice around a
 * busy loop (it must advance, in 24 bits), finds \_S5's sleep type in the
 * DSDT and writes SLP_TYP | SLP_EN to PM1a_CNT, which must power the machine
 * off. Prints
 *   acpi: rsdp 0xADDR rev R; facp pm1a_cnt=0xP pm_tmr=0xT sci=N
 *   acpi: pm timer advanced N ticks over M TSC cycles
 *   acpi: powering off with SLP_TYP S
 * Exit (debug-exit) 1: no RSDP or FACP, or a bad checksum; 2: the timer did not
 * advance; 3: no \_S5 in the DSDT; 4: still running after the power-off write. */
#include "fw.h"

static uint8_t sum(const uint8_t *p, uint32_t n)
{
  uint8_t s = 0;
  while (n--)
    s += *p++;
  return s;
}

static uint32_t u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static const uint8_t *find_rsdp(void)
{
  for (uintptr_t a = 0xe0000; a < 0x100000; a += 16) {
    const uint8_t *p = (const uint8_t *)a;
    if (p[0] == 'R' && p[1] == 'S' && p[2] == 'D' && p[3] == ' ' && p[4] == 'P' && p[5] == 'T' && p[6] == 'R' && p[7] == ' ' && sum(p, 20) == 0)
      return p;
  }
  return 0;
}

/* The table `sig` listed in the RSDT, checksum checked, or 0. */
static const uint8_t *find_table(const uint8_t *rsdt, const char *sig)
{
  uint32_t len = u32(rsdt + 4);
  for (uint32_t o = 36; o + 4 <= len; o += 4) {
    const uint8_t *t = (const uint8_t *)(uintptr_t)u32(rsdt + o);
    if (t[0] == sig[0] && t[1] == sig[1] && t[2] == sig[2] && t[3] == sig[3])
      return sum(t, u32(t + 4)) == 0 ? t : 0;
  }
  return 0;
}

/* \_S5's first package element in the DSDT's AML: NameOp "_S5_" PackageOp PkgLength NumElements BytePrefix/Zero/One. */
static int s5_type(const uint8_t *dsdt)
{
  uint32_t len = u32(dsdt + 4);
  for (uint32_t i = 36; i + 10 <= len; i++) {
    const uint8_t *p = dsdt + i;
    if (p[0] == '_' && p[1] == 'S' && p[2] == '5' && p[3] == '_' && p[4] == 0x12) {
      const uint8_t *e = p + 7; /* after PackageOp, a one-byte PkgLength, NumElements */
      if (e[0] == 0x0a)
        return e[1];
      if (e[0] == 0x00 || e[0] == 0x01)
        return e[0];
    }
  }
  return -1;
}

int main(uint32_t magic, uint32_t mbi)
{
  const uint8_t *rsdp = find_rsdp();
  if (!rsdp) {
    printf("acpi: FAIL no RSDP in 0xE0000-0xFFFFF\n");
    return 1;
  }
  const uint8_t *rsdt = (const uint8_t *)(uintptr_t)u32(rsdp + 16);
  if (sum(rsdt, u32(rsdt + 4)) != 0) {
    printf("acpi: FAIL RSDT checksum\n");
    return 1;
  }
  const uint8_t *facp = find_table(rsdt, "FACP");
  if (!facp) {
    printf("acpi: FAIL no FACP (or a bad checksum)\n");
    return 1;
  }
  uint16_t pm1a_cnt = (uint16_t)u32(facp + 64), pm_tmr = (uint16_t)u32(facp + 76);
  printf("acpi: rsdp 0x%x rev %u; facp pm1a_cnt=0x%x pm_tmr=0x%x sci=%u\n", (uint32_t)(uintptr_t)rsdp, rsdp[15], pm1a_cnt, pm_tmr, u16(facp + 46));

  uint32_t t0 = inl(pm_tmr) & 0xffffff;
  uint64_t c0 = rdtsc();
  while (rdtsc() - c0 < 10000000)
    ;
  uint32_t t1 = inl(pm_tmr);
  uint32_t ticks = (t1 - t0) & 0xffffff;
  printf("acpi: pm timer advanced %u ticks over %u TSC cycles\n", ticks, 10000000);
  if (ticks == 0 || (t1 >> 24) != 0) {
    printf("acpi: FAIL the PM timer did not advance in 24 bits (0x%x then 0x%x)\n", t0, t1);
    return 2;
  }

  const uint8_t *dsdt = (const uint8_t *)(uintptr_t)u32(facp + 40);
  int typ = s5_type(dsdt);
  if (sum(dsdt, u32(dsdt + 4)) != 0 || typ < 0) {
    printf("acpi: FAIL no \\_S5 in the DSDT\n");
    return 3;
  }
  printf("acpi: powering off with SLP_TYP %d\n", typ);
  outw(pm1a_cnt, (uint16_t)((inw(pm1a_cnt) & 1) | (typ & 7) << 10 | 1 << 13));
  printf("acpi: FAIL still running after the power-off write\n");
  return 4;
}
