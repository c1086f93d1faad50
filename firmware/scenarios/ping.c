// fw:long-mode
/* ping: ICMP echo to the host through virtio-net.
 * Resolves the host's MAC with ARP, then sends count= echo requests one at
 * a time (id 0x7473, seq 1..N, size= payload bytes: an 8-byte TSC stamp and a
 * pattern) and waits up to timeout= ms for each reply, whose id, seq and
 * payload must match. Prints
 *   ping: N/N replies rtt_min=A rtt_avg=B rtt_max=C cycles
 * (round trips in TSC cycles). Exit 0 if every request got its reply, 1
 * otherwise (`ping: FAIL …` if the device or ARP failed), 2 bad argument.
 * Arguments: count=4 size=56 timeout=1000 interval=0 (ms between requests),
 * arp_timeout=3000, plus the driver's and the network's (README).
 * cpl3=1: setup (device, rings, ARP) at CPL0; the loop of echoes runs at CPL3
 * (lib/user.c), polling the used rings (interrupts off) and kicking through
 * the notify register (MMIO, or `out` with transport=legacy). Same output. */
#include "net.h"

#define PING_ID 0x7473

static struct vnet nic;
static struct net s;
static uint8_t payload[1472], expect[1472];
static uint32_t count, size, timeout, interval;
static uint32_t got;
static uint64_t rmin = ~0ull, rmax, rsum;

static uint64_t echo_loop(void *arg)
{
  for (uint32_t seq = 1; seq <= count; seq++) {
    for (uint32_t i = 8; i < size; i++)
      payload[i] = (uint8_t)(seq + i);
    uint64_t t0 = rdtsc();
    memcpy(payload, &t0, 8);
    memcpy(expect, payload, size);
    if (!net_send_icmp(&s, 8, PING_ID, (uint16_t)seq, payload, size))
      continue;
    uint64_t deadline = t0 + fw_ms_to_tsc(timeout);
    struct net_pkt p;
    while (net_next(&s, &p, deadline)) {
      const uint8_t *ic = p.l4;
      if (p.proto != IPPROTO_ICMP || p.src != s.host || p.l4_len != ICMP_HLEN + size || ic[0] != 0 ||
          get_be16(ic + 4) != PING_ID || get_be16(ic + 6) != (uint16_t)seq)
        continue;
      if (net_fold(net_sum(ic, p.l4_len, 0)) || memcmp(ic + ICMP_HLEN, expect, size))
        continue;   /* corrupted: treat as lost */
      uint64_t rtt = rdtsc() - t0;
      got++;
      rsum += rtt;
      if (rtt < rmin) rmin = rtt;
      if (rtt > rmax) rmax = rtt;
      break;
    }
    net_release(&s);
    if (interval && seq < count) {
      uint64_t until = rdtsc() + fw_ms_to_tsc(interval);
      struct net_pkt p2;
      while (net_next(&s, &p2, until))
        ;
      net_release(&s);
    }
  }
  return 0;
}

int main(uint32_t magic, uint32_t mbi)
{
  count = (uint32_t)fw_arg_u64("count", 4);
  size = (uint32_t)fw_arg_u64("size", 56);
  timeout = (uint32_t)fw_arg_u64("timeout", 1000);
  interval = (uint32_t)fw_arg_u64("interval", 0);
  if (size < 8 || size > sizeof payload || count == 0) {
    printf("ping: bad argument size/count\n");
    return FW_EXIT_USAGE;
  }
  int rc = net_bring_up("ping", &nic, &s, NULL);
  if (rc)
    return rc;
  if (!net_resolve_host(&s, rdtsc() + fw_ms_to_tsc((uint32_t)fw_arg_u64("arp_timeout", 3000)))) {
    printf("ping: 0/%u replies FAIL arp: no answer from the host\n", count);
    vnet_shutdown(&nic);
    return FW_EXIT_FAIL;
  }

  fw_run_loop(nic.o.cpl3, echo_loop, NULL);
  vnet_tx_reclaim(&nic);
  vnet_shutdown(&nic);
  printf("ping: %u/%u replies rtt_min=%llu rtt_avg=%llu rtt_max=%llu cycles\n", got, count,
         (unsigned long long)(got ? rmin : 0), (unsigned long long)(got ? fw_udiv64(rsum, got, NULL) : 0),
         (unsigned long long)rmax);
  return got == count ? FW_EXIT_OK : FW_EXIT_FAIL;
}
