/* triple-fault: loads an empty IDT and raises #UD, which escalates to a
 * double fault and then a triple fault (a CPU shutdown). The VMM must end the
 * run with a clear reason instead of hanging or crashing. */
#include "fw.h"

int main(uint32_t magic, uint32_t mbi)
{
  static const struct { uint16_t limit; uint32_t base; } __attribute__((packed)) empty_idt = { 0, 0 };
  printf("triple-fault: raising #UD with an empty IDT\n");
  __asm__ volatile("lidt %0; ud2" : : "m"(empty_idt));
  return FW_EXIT_FAIL;
}
