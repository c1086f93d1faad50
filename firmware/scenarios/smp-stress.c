/* smp-stress: every CPU hammers the same device registers at once, then the
 * NIC must still work. The BSP brings virtio-net up, starts the other CPUs
 * (fw_cfg's count, INIT/SIPI), and all of them, interrupts off, rounds= times
 * (default 2000):
 *   - write (cpu << 24 | round) to pc-testdev's 32-bit scratch port and read
 *     it back: any value read must be one some CPU wrote whole (a torn
 *     register would mix two);
 *   - read the NIC's MAC from its config space (MMIO on the modern
 *     transport): always the BSP's first reading;
 *   - every rounds/4, print `smp-stress: cpu C round R` under a spinlock (the
 *     console's bytes all arrive, none from two lines mixed).
 * Then the BSP resolves the host's MAC with ARP through the same NIC. Prints
 *   smp-stress: cpus=N started=S rounds=R torn=T mac_mismatch=M arp=ok|FAIL
 * Exit 0 when every CPU started and finished with T = M = 0 and ARP worked,
 * 1 otherwise, 2 bad argument. Needs --device pc-testdev and a NIC. */
#include "net.h"

#define SCRATCH_PORT 0xe0
#define VIRTIO_NET_CFG_MAC 0

static struct vnet nic;
static struct net s;
static uint32_t rounds, cpus;
static uint8_t mac0[6];
static volatile uint32_t console_lock, done, torn, mac_mismatch;

static void hammer(unsigned cpu)
{
  for (uint32_t r = 0; r < rounds; r++) {
    outl(SCRATCH_PORT, (cpu << 24) | r);
    uint32_t v = inl(SCRATCH_PORT);
    if ((v >> 24) >= cpus || (v & 0xffffff) >= rounds)
      __atomic_add_fetch(&torn, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 6; i++)
      if (virtio_cfg_read8(&nic.dev, VIRTIO_NET_CFG_MAC + i) != mac0[i]) {
        __atomic_add_fetch(&mac_mismatch, 1, __ATOMIC_SEQ_CST);
        break;
      }
    if (r % (rounds / 4 ? rounds / 4 : 1) == 0) {
      spin_lock(&console_lock);
      printf("smp-stress: cpu %u round %u\n", cpu, r);
      spin_unlock(&console_lock);
    }
  }
  __atomic_add_fetch(&done, 1, __ATOMIC_SEQ_CST);
}

int main(uint32_t magic, uint32_t mbi)
{
  rounds = (uint32_t)fw_arg_u64("rounds", 2000);
  if (rounds == 0 || rounds > 0xffffff) {
    printf("smp-stress: bad argument rounds=%u (1..16777215)\n", rounds);
    return FW_EXIT_USAGE;
  }
  int rc = net_bring_up("smp-stress", &nic, &s, NULL);
  if (rc)
    return rc;
  for (int i = 0; i < 6; i++)
    mac0[i] = virtio_cfg_read8(&nic.dev, VIRTIO_NET_CFG_MAC + i);
  cpus = smp_cpus();
  irq_disable();
  unsigned started = smp_start_aps(hammer, 5000);
  hammer(0);
  uint64_t deadline = rdtsc() + fw_ms_to_tsc(60000);
  while (done < started + 1 && rdtsc() < deadline)
    __asm__ volatile("pause");
  /* The device afterwards: a round trip through TX, the host, RX and the interrupt. */
  s.host_mac_ok = false;
  bool arp = net_resolve_host(&s, rdtsc() + fw_ms_to_tsc(5000));
  printf("smp-stress: cpus=%u started=%u finished=%u rounds=%u torn=%u mac_mismatch=%u arp=%s\n",
         cpus, started + 1, done, rounds, torn, mac_mismatch, arp ? "ok" : "FAIL");
  vnet_shutdown(&nic);
  return started + 1 == cpus && done == cpus && torn == 0 && mac_mismatch == 0 && arp ? FW_EXIT_OK : FW_EXIT_FAIL;
}
