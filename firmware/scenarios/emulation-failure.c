/* emulation-failure: executes one ring-0 instruction that kvm_pvm's
 * instruction emulator lacks and tsvisor does not complete (popcnt; see
 * ../shared/MEASURED.md), so the VMM must end the run with the instruction
 * named instead of hanging or crashing. Where the CPU runs it (hardware KVM,
 * QEMU TCG) it prints
 *   emulation-failure: popcnt ran natively (result 3)
 * and exits 0. */
#include "fw.h"

int main(uint32_t magic, uint32_t mbi)
{
  uint32_t in = 0x15, out = 0;
  printf("emulation-failure: executing popcnt at CPL0\n");
  __asm__ volatile("popcnt %1, %0" : "=r"(out) : "r"(in));
  printf("emulation-failure: popcnt ran natively (result %u)\n", out);
  return out == 3 ? FW_EXIT_OK : FW_EXIT_FAIL;
}
