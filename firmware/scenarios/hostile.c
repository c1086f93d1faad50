/* hostile: feeds the virtio-net device malformed rings, then checks it still
 * works after a reset. After a clean setup, each step posts one kind of bad
 * request and notifies the queue directly (ignoring suppression), lets the
 * device run until it answers, at most settle= ms (default 2000), records the device status
 * (NEEDS_RESET) and whether anything came back used, then resets the device
 * (status 0) and sets it up again from scratch:
 *   1 oob       TX descriptor at 1 TiB (outside RAM)
 *   2 loop      TX chain 0 -> 1 -> 0 (NEXT flags forming a cycle)
 *   3 huge      TX descriptor of length 0xfffffff0 on a valid buffer
 *   4 idx-jump  TX avail->idx moved 1000 entries ahead (more than the queue)
 *   5 head      TX avail ring entry >= queue size
 *   6 indirect  TX descriptor flagged INDIRECT (feature not negotiated) at a
 *               table outside RAM
 *   7 write-tx  TX descriptor flagged WRITE (device-writable in a driver->
 *               device queue)
 *   8 rx-oob    every RX descriptor pointing outside RAM, then an ARP
 *               request so the host's reply must be written somewhere
 * steps=K stops after the first K (default all 8). Then one more clean
 * setup, ARP and one ping. Prints
 *   hostile: survived steps=K ping=ok needs_reset=N used=U
 * (N: steps after which the device set NEEDS_RESET; U: steps after which it
 * returned used entries). Exit 0 if the ping came back, 1 otherwise
 * (`ping=fail`), 2 bad argument. Driver options as in README.md. */
#include "net.h"

#define OOB 0x10000000000ull   /* 1 TiB */
#define NSTEPS 8
static const char *const names[NSTEPS] = { "oob", "loop", "huge", "idx-jump", "head", "indirect", "write-tx", "rx-oob" };

static struct vnet nic;
static struct net s;

static void step(int i)
{
  struct vq *q = &nic.tx;
  uint8_t *buf = nic.tx_bufs;   /* slot 0's buffer: valid RAM */
  switch (i) {
  case 0:
    q->desc[0] = (struct vring_desc){ OOB, 64, 0, 0 };
    vq_push(q, 0);
    break;
  case 1:
    q->desc[0] = (struct vring_desc){ (uintptr_t)buf, 32, VRING_DESC_F_NEXT, 1 };
    q->desc[1] = (struct vring_desc){ (uintptr_t)buf + 32, 32, VRING_DESC_F_NEXT, 0 };
    vq_push(q, 0);
    break;
  case 2:
    q->desc[0] = (struct vring_desc){ (uintptr_t)buf, 0xfffffff0u, 0, 0 };
    vq_push(q, 0);
    break;
  case 3:
    q->avail_idx += 1000;
    break;
  case 4:
    vq_push(q, (uint16_t)(q->size + 5));
    break;
  case 5:
    q->desc[0] = (struct vring_desc){ OOB, 16 * 4, 4 /* VRING_DESC_F_INDIRECT */, 0 };
    vq_push(q, 0);
    break;
  case 6:
    q->desc[0] = (struct vring_desc){ (uintptr_t)buf, 64, VRING_DESC_F_WRITE, 0 };
    vq_push(q, 0);
    break;
  case 7:
    for (uint16_t d = 0; d < nic.rx.size; d++)
      nic.rx.desc[d].addr = OOB + (uint64_t)d * VNET_BUF;
    vq_notify(&nic.rx);
    net_send_arp(&s, 1, NULL, s.host);   /* the reply lands in RX */
    return;
  }
  *(volatile uint16_t *)&q->avail->idx = q->avail_idx;
  q->kicked_idx = q->avail_idx;
  mb();
  vq_notify(q);
}

static bool ping_once(void)
{
  static uint8_t payload[32];
  for (unsigned i = 0; i < sizeof payload; i++)
    payload[i] = (uint8_t)(0xa5 ^ i);
  if (!net_resolve_host(&s, rdtsc() + fw_ms_to_tsc(3000)))
    return false;
  for (int attempt = 0; attempt < 3; attempt++) {
    if (!net_send_icmp(&s, 8, 0x686f, (uint16_t)(attempt + 1), payload, sizeof payload))
      return false;
    struct net_pkt p;
    uint64_t deadline = rdtsc() + fw_ms_to_tsc(1000);
    while (net_next(&s, &p, deadline))
      if (p.proto == IPPROTO_ICMP && p.l4[0] == 0 && get_be16(p.l4 + 4) == 0x686f &&
          get_be16(p.l4 + 6) == attempt + 1 && p.l4_len == ICMP_HLEN + sizeof payload &&
          !memcmp(p.l4 + ICMP_HLEN, payload, sizeof payload)) {
        net_release(&s);
        return true;
      }
    net_release(&s);
  }
  return false;
}

int main(uint32_t magic, uint32_t mbi)
{
  uint32_t steps = (uint32_t)fw_arg_u64("steps", NSTEPS);
  uint32_t settle = (uint32_t)fw_arg_u64("settle", 2000);
  bool verbose = fw_arg_u64("verbose", 0) != 0;
  if (steps > NSTEPS) {
    printf("hostile: bad argument steps (at most %d)\n", NSTEPS);
    return FW_EXIT_USAGE;
  }
  struct vnet_opts o;
  const char *why;
  if (!vnet_opts_parse(&o, &why)) {
    printf("hostile: bad argument %s\n", why);
    return FW_EXIT_USAGE;
  }
  if (!fw_arg("qsize"))
    o.qmax = 64;
  uintptr_t mark = fw_alloc_next();
  int rc = net_bring_up("hostile", &nic, &s, &o);
  if (rc)
    return rc;
  unsigned needs_reset = 0, used = 0;
  for (uint32_t i = 0; i < steps; i++) {
    if (i) {
      fw_alloc_rewind(mark);
      if (!vnet_reinit(&nic, &why)) {
        printf("hostile: FAIL setup after step %u (%s): %s\n", i, names[i - 1], why);
        return FW_EXIT_FAIL;
      }
    }
    step((int)i);
    /* Until the device answers (NEEDS_RESET, or a used buffer), at most settle= ms.
     * In rx-oob the ARP request's TX completion is no answer: the step is about
     * where the host's reply goes, which comes later (much later under TCG). */
    uint64_t until = rdtsc() + fw_ms_to_tsc(settle);
    uint8_t st = virtio_get_status(&nic.dev);
    while (rdtsc() < until && !(i == 7 ? vq_has_used(&nic.rx) : vq_has_used(&nic.tx)) && !(st & VIRTIO_S_NEEDS_RESET)) {
      __asm__ volatile("pause");
      st = virtio_get_status(&nic.dev);
    }
    bool u = vq_has_used(&nic.tx) || (i == 7 && vq_has_used(&nic.rx));
    needs_reset += (st & VIRTIO_S_NEEDS_RESET) != 0;
    used += u;
    if (verbose)
      printf("hostile: step %u %s status=0x%x used=%d\n", i + 1, names[i], st, u);
  }
  fw_alloc_rewind(mark);
  bool ok = vnet_reinit(&nic, &why);
  if (!ok)
    printf("hostile: FAIL final setup: %s\n", why);
  ok = ok && ping_once();
  vnet_shutdown(&nic);
  printf("hostile: survived steps=%u ping=%s needs_reset=%u used=%u\n", steps, ok ? "ok" : "fail", needs_reset, used);
  return ok ? FW_EXIT_OK : FW_EXIT_FAIL;
}
