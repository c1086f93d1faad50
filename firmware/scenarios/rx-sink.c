// fw:long-mode
/* rx-sink: receives frames until count= have arrived (default 0: no limit)
 * or none came for idle= ms (default 1000) after the first; waits up to
 * start= ms (default 30000) for the first. Frames are counted and their
 * buffers reposted (in batches); with answer=1 each is also parsed, and ARP
 * requests for ip= and ICMP echo requests to it are answered, so the host
 * can ping (or flood-ping) the guest. With ready=1 a line
 *   rx-sink: ready mac=52:54:00:12:34:56 ip=10.0.2.15
 * comes first. Result line:
 *   rx-sink: N frames bytes=B cycles=C
 * B: frame bytes (without the virtio header), C: TSC cycles from the first
 * frame to the last. With answer=1 ` answered=A` (ARP + ICMP replies) is
 * appended. With tso=1 (GUEST_CSUM + GUEST_TSO4, and CSUM + HOST_TSO4, see
 * lib/virtio_net.c) the host may hand over TCP frames up to 64 KiB: each RX
 * buffer then holds 65600 bytes, or with mrg=1 too a frame spans num_buffers
 * 2048-byte buffers; either way it counts as one frame of its whole length.
 * Exit 0 if count= frames arrived (count=0: at least one), 1 otherwise, 2
 * bad argument.
 * cpl3=1: setup (device, rings, ARP) at CPL0; the receive loop (from the first wait on) runs at CPL3
 * (lib/user.c), polling the used rings (interrupts off) and kicking through
 * the notify register (MMIO, or `out` with transport=legacy). Same output. */
#include "net.h"

static struct vnet nic;
static struct net s;
static uint32_t count;
static bool answer;
static uint64_t idle_tsc, first, last, deadline, bytes;
static uint32_t frames;

static uint64_t sink_loop(void *arg)
{
  while (!count || frames < count) {
    uint32_t len;
    uint8_t *f = vnet_rx(&nic, &len);
    if (!f) {
      if (!vnet_wait(&nic, false, deadline))
        break;
      continue;
    }
    last = rdtsc();
    if (!frames)
      first = last;
    frames++;
    bytes += nic.rx_frame_len;   /* len: the first buffer's part of a merged frame */
    deadline = last + idle_tsc;
    if (answer) {
      struct net_pkt p;
      net_handle(&s, f, len, &p);
      vnet_tx_reclaim(&nic);
    }
    vnet_rx_done(&nic);
  }
  return 0;
}

int main(uint32_t magic, uint32_t mbi)
{
  count = (uint32_t)fw_arg_u64("count", 0);
  uint32_t idle = (uint32_t)fw_arg_u64("idle", 1000);
  uint32_t start = (uint32_t)fw_arg_u64("start", 30000);
  int rc = net_bring_up("rx-sink", &nic, &s, NULL);
  if (rc)
    return rc;
  answer = s.answer;
  if (fw_arg_u64("ready", 0)) {
    char mac[18], ip[16];
    net_format_mac(mac, s.mac);
    net_format_ip(ip, s.ip);
    printf("rx-sink: ready mac=%s ip=%s\n", mac, ip);
  }
  idle_tsc = fw_ms_to_tsc(idle);
  deadline = rdtsc() + fw_ms_to_tsc(start);
  fw_run_loop(nic.o.cpl3, sink_loop, NULL);
  vnet_shutdown(&nic);
  printf("rx-sink: %u frames bytes=%llu cycles=%llu", frames, (unsigned long long)bytes,
         (unsigned long long)(last - first));
  if (answer)
    printf(" answered=%u", s.arp_answered + s.icmp_answered);
  printf("\n");
  return (count ? frames >= count : frames > 0) ? FW_EXIT_OK : FW_EXIT_FAIL;
}
