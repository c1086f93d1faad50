/* hello: the smallest scenario. Prints one line with the command line, exits 0.
 *   hello from firmware cmdline="<multiboot command line>"
 * Exit code 0 (status 1 under isa-debug-exit). */
#include "fw.h"

int main(uint32_t magic, uint32_t mbi)
{
  printf("hello from firmware cmdline=\"%s\"\n", fw_cmdline());
  return FW_EXIT_OK;
}
