// fw:long-mode
/* udp-echo: sends count= UDP datagrams of size= payload bytes (default 64,
 * at least 8) to host:port (default 7777, from sport= 40007) one at a time and
 * waits up to timeout= ms (default 1000) for each to come back unchanged from
 * host:port. Payload: sequence number (be32), a 32-bit sum of the rest
 * (be32), then the pattern (seq + i) & 0xff. A reply counts if its UDP
 * checksum is right, its payload equals what was sent (and so its sum
 * matches). Prints
 *   udp-echo: N/N ok cycles=C
 * (C: TSC cycles for the whole exchange). Exit 0 if all came back, 1
 * otherwise, 2 bad argument. Needs an echo server on the host side, e.g.
 * `socat UDP-RECVFROM:7777,fork EXEC:cat` or the one in README.md.
 * cpl3=1: setup (device, rings, ARP) at CPL0; the exchange (the timed part) runs at CPL3
 * (lib/user.c), polling the used rings (interrupts off) and kicking through
 * the notify register (MMIO, or `out` with transport=legacy). Same output. */
#include "net.h"

static struct vnet nic;
static struct net s;
static uint8_t buf[1472];
static uint32_t count, size, timeout, ok;
static uint64_t port, sport;

static uint64_t echo_loop(void *arg)
{
  for (uint32_t seq = 1; seq <= count; seq++) {
    uint32_t sum = 0;
    for (uint32_t i = 8; i < size; i++) {
      buf[i] = (uint8_t)(seq + i);
      sum += buf[i];
    }
    put_be32(buf, seq);
    put_be32(buf + 4, sum);
    /* The TX ring may be full (answering a ping flood fills it): wait for the
       device to use some of it, up to the same timeout, rather than skip. */
    uint64_t deadline = rdtsc() + fw_ms_to_tsc(timeout);
    bool sent;
    while (!(sent = net_send_udp(&s, (uint16_t)sport, (uint16_t)port, buf, size)) && rdtsc() < deadline)
      __builtin_ia32_pause();
    if (!sent)
      continue;
    deadline = rdtsc() + fw_ms_to_tsc(timeout);
    struct net_pkt p;
    while (net_next(&s, &p, deadline)) {
      if (p.proto != IPPROTO_UDP || p.src != s.host || get_be16(p.l4) != port || get_be16(p.l4 + 2) != sport ||
          p.l4_len != UDP_HLEN + size)
        continue;
      const uint8_t *d = p.l4 + UDP_HLEN;
      if (get_be32(d) != seq || memcmp(d, buf, size))
        continue;   /* stale or corrupted */
      ok++;
      break;
    }
    net_release(&s);
  }
  return 0;
}

int main(uint32_t magic, uint32_t mbi)
{
  count = (uint32_t)fw_arg_u64("count", 10);
  size = (uint32_t)fw_arg_u64("size", 64);
  timeout = (uint32_t)fw_arg_u64("timeout", 1000);
  port = fw_arg_u64("port", 7777);
  sport = fw_arg_u64("sport", 40007);
  if (size < 8 || size > sizeof buf || count == 0 || !port || port > 0xffff || !sport || sport > 0xffff) {
    printf("udp-echo: bad argument size/count/port\n");
    return FW_EXIT_USAGE;
  }
  int rc = net_bring_up("udp-echo", &nic, &s, NULL);
  if (rc)
    return rc;
  if (!net_resolve_host(&s, rdtsc() + fw_ms_to_tsc((uint32_t)fw_arg_u64("arp_timeout", 3000)))) {
    printf("udp-echo: 0/%u ok FAIL arp: no answer from the host\n", count);
    vnet_shutdown(&nic);
    return FW_EXIT_FAIL;
  }
  uint64_t t0 = rdtsc();
  fw_run_loop(nic.o.cpl3, echo_loop, NULL);
  uint64_t cycles = rdtsc() - t0;
  vnet_tx_reclaim(&nic);
  vnet_shutdown(&nic);
  printf("udp-echo: %u/%u ok cycles=%llu\n", ok, count, (unsigned long long)cycles);
  return ok == count ? FW_EXIT_OK : FW_EXIT_FAIL;
}
