// fw:long-mode
/* tx-burst: transmits count= frames (default 1000) of size= bytes (Ethernet
 * frame without FCS, 60..1514, default 64) as fast as the TX ring allows: a
 * UDP datagram to host:9 (discard), all frames the same, every descriptor
 * pointing at one buffer (so the guest spends its time on the ring, not on
 * copying). With tso=1 (CSUM + HOST_TSO4 negotiated, and GUEST_CSUM +
 * GUEST_TSO4 with it, see lib/virtio_net.c) the frame is TCP (ACK|PSH) to
 * host:port with the checksum left to the device (NEEDS_CSUM) and, when its
 * payload exceeds 1448 bytes, a TSO super-frame (gso TCPV4, gso_size 1448)
 * that the host cuts into segments: size= then goes up to 65549 (Ethernet
 * header + the largest IPv4 packet), e.g. size=65536 tso=1 (larger than
 * 1514 without tso=1: exit 2; no CSUM + HOST_TSO4 offered: exit 1). The
 * ring is filled, then published with one notification per batch= frames
 * (default: the TX ring's size, i.e. one per ring-full; the kick is skipped
 * when the device suppresses it), then the used ring is reaped (polled with
 * wait=poll; with wait=irq one TX interrupt per batch is asked for, at the
 * batch's last frame with EVENT_IDX). The host's MAC comes from ARP unless
 * host_mac= is given (not timed; then the host does not learn ours either,
 * so its answers — TCP RSTs, ICMP — do not come back to be recycled). Prints
 *   tx-burst: N frames size=S cycles=C kicks=K
 * C: TSC cycles from the first frame queued to the last one used; K: queue
 * notifications written. Exit 0, 1 if the device stalled for timeout= ms
 * (default 5000), 2 bad argument.
 * cpl3=1: setup (device, rings, ARP, the frame) at CPL0; the loop from the
 * first frame queued to the last used runs at CPL3 (lib/user.c), polling the
 * used ring (interrupts off), kicking through the notify register (MMIO, or
 * `out` with transport=legacy). Same line, same meaning. */
#include "net.h"

static struct vnet nic;
static struct net s;

/* The timed loop's inputs and results (shared by CPL0 and CPL3: one address space). */
static struct burst {
  uint8_t *buf;
  uint32_t size, count, batch;
  uint64_t stall;
  uint32_t queued, done;
  uint64_t t0, last;
  bool stalled;
} b;

static uint64_t burst_loop(void *arg)
{
  b.t0 = b.last = rdtsc();
  while (b.done < b.count) {
    uint32_t k = 0;
    while (b.queued < b.count && nic.tx_nfree && k < b.batch) {
      vnet_tx_queue_at(&nic, b.buf, b.size);
      b.queued++;
      k++;
    }
    if (k)
      vnet_tx_kick(&nic);
    /* reap; block only when the ring is full or everything is queued */
    for (;;) {
      unsigned r = vnet_tx_reclaim(&nic);
      b.done += r;
      if (r)
        b.last = rdtsc();
      if (b.done >= b.count || (b.queued < b.count && nic.tx_nfree >= (b.batch < nic.tx_slots ? b.batch : 1)))
        break;
      uint32_t inflight = b.queued - b.done;
      nic.tx_irq_ahead = (uint16_t)(inflight ? inflight - 1 : 0);
      /* RX traffic (the host's replies) is recycled without a look */
      uint32_t l;
      while (vnet_rx(&nic, &l))
        vnet_rx_done(&nic);
      if (!vnet_wait(&nic, true, b.last + b.stall) && !vq_has_used(&nic.tx)) {
        b.stalled = true;
        break;
      }
    }
    if (b.stalled)
      break;
  }
  return 0;
}

int main(uint32_t magic, uint32_t mbi)
{
  uint32_t count = (uint32_t)fw_arg_u64("count", 1000);
  uint32_t size = (uint32_t)fw_arg_u64("size", 64);
  uint32_t batch = (uint32_t)fw_arg_u64("batch", 0);
  uint32_t timeout = (uint32_t)fw_arg_u64("timeout", 5000);
  uint64_t port = fw_arg_u64("port", 9);
  struct vnet_opts o;
  const char *why;
  if (!vnet_opts_parse(&o, &why)) {
    printf("tx-burst: bad argument %s\n", why);
    return FW_EXIT_USAGE;
  }
  uint32_t max = o.tso ? ETH_HLEN + 0xffff : 1514;
  if (count == 0 || size < 60 || size > max || port > 0xffff) {
    printf("tx-burst: bad argument count/size/port\n");
    return FW_EXIT_USAGE;
  }
  int rc = net_bring_up("tx-burst", &nic, &s, &o);
  if (rc)
    return rc;
  if (o.tso && !nic.tx_tso) {
    printf("tx-burst: 0 frames FAIL device: CSUM + HOST_TSO4 not offered\n");
    vnet_shutdown(&nic);
    return FW_EXIT_FAIL;
  }
  if (!net_resolve_host(&s, rdtsc() + fw_ms_to_tsc((uint32_t)fw_arg_u64("arp_timeout", 3000)))) {
    printf("tx-burst: 0 frames FAIL arp: no answer from the host\n");
    vnet_shutdown(&nic);
    return FW_EXIT_FAIL;
  }
  /* one frame: virtio-net header + Ethernet/IP/UDP (or TCP) + payload */
  uint8_t *buf = fw_alloc(nic.hdr_len + size, 64);
  uint8_t *frame = buf + nic.hdr_len;
  uint32_t l4 = o.tso ? TCP_HLEN : UDP_HLEN;
  uint32_t payload = size - (ETH_HLEN + IP_HLEN + l4);
  uint8_t *data = frame + ETH_HLEN + IP_HLEN + l4;
  /* bytes count up from 0; past 256, copy whole 256-byte periods (rep movs: few emulated steps) */
  for (uint32_t i = 0; i < payload && i < 256; i++)
    data[i] = (uint8_t)i;
  for (uint32_t have = 256; have < payload; have *= 2)
    memcpy(data + have, data, payload - have < have ? payload - have : have);
  if (o.tso)
    net_build_tcp_tso(&s, frame, 40009, (uint16_t)port, 1, payload, (struct virtio_net_hdr *)buf);
  else
    net_build_udp(&s, frame, 40009, (uint16_t)port, data, payload);

  vnet_tx_reclaim(&nic);   /* ARP's slots */
  if (!batch || batch > nic.tx_slots)
    batch = nic.tx_slots;
  uint32_t kicks0 = nic.tx.kicks;
  b.buf = buf;
  b.size = size;
  b.count = count;
  b.batch = batch;
  b.stall = fw_ms_to_tsc(timeout);
  fw_run_loop(o.cpl3, burst_loop, NULL);
  uint32_t done = b.done, queued = b.queued;
  bool stalled = b.stalled;
  uint64_t cycles = b.last - b.t0;
  uint32_t kicks = nic.tx.kicks - kicks0;
  vnet_shutdown(&nic);
  if (stalled) {
    printf("tx-burst: %u frames size=%u FAIL stalled with %u in flight\n", done, size, queued - done);
    return FW_EXIT_FAIL;
  }
  printf("tx-burst: %u frames size=%u cycles=%llu kicks=%u\n", done, size, (unsigned long long)cycles, kicks);
  return FW_EXIT_OK;
}
