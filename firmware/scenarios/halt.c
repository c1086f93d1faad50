/* halt: prints one line, then halts with interrupts disabled for good — what
 * Linux does for `poweroff -f` when it has no ACPI. The VMM must notice and
 * end the run (tsvisor reports a power-off, status 0) instead of hanging. */
#include "fw.h"

int main(uint32_t magic, uint32_t mbi)
{
  printf("halt: halting with interrupts disabled\n");
  for (;;) __asm__ volatile("cli; hlt");
  return FW_EXIT_OK;
}
