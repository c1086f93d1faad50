// fw:long-mode
/* long-mode: checks the long-mode runtime (start.S -> long_mode.S -> main in
 * 64-bit code with the first 4 GiB identity-mapped by 2 MiB pages).
 * Prints `long-mode: ok cs=0x18 efer=0x...` and exits 0; a check that fails
 * prints `long-mode: FAIL ...` and exits 1. It writes and reads back one
 * word at the top of the RAM multiboot reports (via the allocator limit), so
 * the mapping is tested beyond the first 2 MiB page. */
#include "fw.h"

#define MSR_EFER 0xC0000080u
#define EFER_LMA (1u << 10)

static uint64_t rdmsr(uint32_t msr)
{
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((uint64_t)hi << 32) | lo;
}

int main(uint32_t magic, uint32_t mbi)
{
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  uint64_t efer = rdmsr(MSR_EFER);
  uint64_t *p = (uint64_t *)((fw_alloc_limit() - 8) & ~(uintptr_t)7);
  *p = 0x1122334455667788ull;
  bool mem_ok = *(volatile uint64_t *)p == 0x1122334455667788ull;
  bool ok = sizeof(void *) == 8 && cs == 0x18 && (efer & EFER_LMA) && mem_ok;
  printf("long-mode: %s cs=0x%x efer=0x%llx ptr=%zu probe=0x%llx:%s\n", ok ? "ok" : "FAIL", cs,
         (unsigned long long)efer, sizeof(void *), (unsigned long long)(uintptr_t)p, mem_ok ? "ok" : "bad");
  return ok ? FW_EXIT_OK : FW_EXIT_FAIL;
}
