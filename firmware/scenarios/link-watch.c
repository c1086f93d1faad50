/* link-watch: the link status (VIRTIO_NET_S_LINK_UP, STATUS negotiated) as
 * the driver learns it: through configuration-change interrupts only. Brings
 * the device up, resolves the host's MAC, prints
 *   link-watch: ready link=up mac=52:54:00:12:34:56 ip=10.0.2.15
 * then answers ARP and ping (like rx-sink answer=1) and, with send=MS, sends
 * one UDP datagram to host:9 every MS ms (the device drops them while the
 * link is down). After each config interrupt it reads the status field and,
 * if the link changed, prints
 *   link-watch: link=down config_irqs=N
 * It ends after changes= changes (default 2) or when timeout= ms (default
 * 10000) pass without one:
 *   link-watch: C changes config_irqs=N frames=F sent=S
 * Exit 0 if changes= changes were seen, 1 otherwise (also when STATUS was not
 * negotiated), 2 bad argument. */
#include "net.h"

int main(uint32_t magic, uint32_t mbi)
{
  static struct vnet nic;
  static struct net s;
  uint32_t want = (uint32_t)fw_arg_u64("changes", 2);
  uint32_t timeout = (uint32_t)fw_arg_u64("timeout", 10000);
  uint32_t send = (uint32_t)fw_arg_u64("send", 0);
  int rc = net_bring_up("link-watch", &nic, &s, NULL);
  if (rc)
    return rc;
  s.answer = true;
  if (nic.link_status == 0xffff) {
    printf("link-watch: FAIL device: STATUS not negotiated\n");
    vnet_shutdown(&nic);
    return FW_EXIT_FAIL;
  }
  if (!net_resolve_host(&s, rdtsc() + fw_ms_to_tsc((uint32_t)fw_arg_u64("arp_timeout", 3000)))) {
    printf("link-watch: FAIL arp: no answer from the host\n");
    vnet_shutdown(&nic);
    return FW_EXIT_FAIL;
  }
  bool up = (nic.link_status & 1) != 0;
  char mac[18], ip[16];
  net_format_mac(mac, s.mac);
  net_format_ip(ip, s.ip);
  printf("link-watch: ready link=%s mac=%s ip=%s\n", up ? "up" : "down", mac, ip);

  uint32_t seen_irqs = nic.irq_config, changes = 0, frames = 0, sent = 0;
  uint64_t tick = fw_ms_to_tsc(20), period = fw_ms_to_tsc(send ? send : 1);
  uint64_t deadline = rdtsc() + fw_ms_to_tsc(timeout), next_send = rdtsc() + period;
  uint8_t payload[32] = "tsvisor link-watch";
  while (changes < want) {
    uint32_t len;
    uint8_t *f = vnet_rx(&nic, &len);
    if (f) {
      struct net_pkt p;
      net_handle(&s, f, len, &p);
      vnet_tx_reclaim(&nic);
      vnet_rx_done(&nic);
      frames++;
      continue;
    }
    if (nic.irq_config != seen_irqs) {
      seen_irqs = nic.irq_config;
      bool now_up = (virtio_cfg_read16(&nic.dev, 6) & 1) != 0;
      if (now_up != up) {
        up = now_up;
        changes++;
        printf("link-watch: link=%s config_irqs=%u\n", up ? "up" : "down", seen_irqs);
        deadline = rdtsc() + fw_ms_to_tsc(timeout);
      }
      continue;
    }
    uint64_t now = rdtsc();
    if (now >= deadline)
      break;
    if (send && now >= next_send) {
      vnet_tx_reclaim(&nic);
      if (net_send_udp(&s, 40009, 9, payload, sizeof payload))
        sent++;
      next_send = now + period;
    }
    /* A config interrupt ends the hlt but not vnet_wait; wake at least every tick to look. */
    vnet_wait(&nic, false, now + tick);
  }
  vnet_tx_reclaim(&nic);
  vnet_shutdown(&nic);
  printf("link-watch: %u changes config_irqs=%u frames=%u sent=%u\n", changes, seen_irqs, frames, sent);
  return changes >= want ? FW_EXIT_OK : FW_EXIT_FAIL;
}
