/* arp: resolves the host's MAC address with ARP through virtio-net.
 * Sends a request for host= every 250 ms until a reply comes or timeout= ms
 * (default 3000) pass. Prints
 *   arp: 10.0.2.2 is-at 02:xx:xx:xx:xx:xx cycles=C requests=R
 * (C: TSC cycles from the first request to the reply, R: requests sent).
 * Exit 0, 1 if no reply
 * (`arp: FAIL no reply from 10.0.2.2`), 2 bad argument. */
#include "net.h"

int main(uint32_t magic, uint32_t mbi)
{
  static struct vnet nic;
  static struct net s;
  int rc = net_bring_up("arp", &nic, &s, NULL);
  if (rc)
    return rc;
  char ip[16], mac[18];
  net_format_ip(ip, s.host);
  s.host_mac_ok = false;   /* resolve even if host_mac= was given */
  uint64_t t0 = rdtsc();
  bool ok = net_resolve_host(&s, t0 + fw_ms_to_tsc((uint32_t)fw_arg_u64("timeout", 3000)));
  uint64_t cycles = rdtsc() - t0;
  vnet_shutdown(&nic);
  if (!ok) {
    printf("arp: FAIL no reply from %s\n", ip);
    return FW_EXIT_FAIL;
  }
  net_format_mac(mac, s.host_mac);
  printf("arp: %s is-at %s cycles=%llu requests=%u\n", ip, mac, (unsigned long long)cycles, nic.tx_frames);
  return FW_EXIT_OK;
}
