/* virtio-net driver: one RX queue (0) and one TX queue (1), fixed buffers.
 * RX: buffer i (rx_buf_size bytes: VNET_BUF, or VNET_BIG_BUF when TSO frames
 * may arrive without MRG_RXBUF) belongs to descriptor i (or to descriptors
 * 2i/2i+1 when the legacy device lacks ANY_LAYOUT and wants the header in a
 * descriptor of its own); a used buffer is reposted as is. TX: slot i has its
 * own buffer and descriptor(s); free slots are kept on a stack, so the device
 * may complete them in any order. */
#include "virtio.h"

static struct vnet *irq_owner;
static uint16_t rx_cur = 0xffff;  /* head of the buffer handed out by vnet_rx */
static uint16_t rx_pending;       /* reposted but not yet published */

static void on_config(struct fw_trap_frame *f) { irq_owner->irq_config++; irq_eoi(); }
static void on_rx(struct fw_trap_frame *f) { irq_owner->irq_rx++; irq_eoi(); }
static void on_tx(struct fw_trap_frame *f) { irq_owner->irq_tx++; irq_eoi(); }
static void on_intx(struct fw_trap_frame *f)
{
  /* level-triggered: reading the ISR deasserts the line; EOI after that */
  uint8_t isr = virtio_isr(&irq_owner->dev);
  irq_owner->irq_intx++;
  if (isr & 2)
    irq_owner->irq_config++;
  irq_eoi();
}

static bool parse_bool(const char *key, bool dflt, const char **why)
{
  const char *v = fw_arg(key);
  if (!v)
    return dflt;
  if (!strcmp(v, "1") || !strcmp(v, "on") || !strcmp(v, "yes"))
    return true;
  if (!strcmp(v, "0") || !strcmp(v, "off") || !strcmp(v, "no"))
    return false;
  *why = key;
  return dflt;
}

bool vnet_opts_parse(struct vnet_opts *o, const char **why)
{
  const char *bad = NULL;
  memset(o, 0, sizeof *o);
  const char *t = fw_arg_str("transport", "modern");
  o->cpl3 = parse_bool("cpl3", false, &bad);
  /* The ring-3 loop runs with IF 0: it polls, so interrupts are off by default. */
  const char *irq = fw_arg_str("irq", o->cpl3 ? "poll" : "msix");
  const char *msix = fw_arg_str("msix", "split");
  const char *pol = fw_arg_str("intx_polarity", "low");
  if (!strcmp(t, "modern")) o->modern = true;
  else if (strcmp(t, "legacy")) bad = "transport";
  if (!strcmp(irq, "msix")) o->irq = VNET_IRQ_MSIX;
  else if (!strcmp(irq, "intx")) o->irq = VNET_IRQ_INTX;
  else if (!strcmp(irq, "poll")) o->irq = VNET_IRQ_POLL;
  else bad = "irq";
  if (!strcmp(msix, "shared")) o->msix_shared = true;
  else if (strcmp(msix, "split")) bad = "msix";
  if (!strcmp(pol, "low")) o->intx_low = true;
  else if (strcmp(pol, "high")) bad = "intx_polarity";
  const char *w = fw_arg_str("wait", o->irq == VNET_IRQ_POLL ? "poll" : "irq");
  if (!strcmp(w, "irq")) o->wait_irq = true;
  else if (strcmp(w, "poll")) bad = "wait";
  if (o->irq == VNET_IRQ_POLL && o->wait_irq) bad = "wait (irq=poll needs wait=poll)";
  if (o->cpl3 && o->wait_irq) bad = "wait (cpl3=1 needs wait=poll)";
#ifndef FW_LONG_MODE
  if (o->cpl3) bad = "cpl3 (ring 3 needs a long-mode image)";
#endif
  o->mrg = parse_bool("mrg", false, &bad);
  o->event_idx = parse_bool("event_idx", false, &bad);
  o->tso = parse_bool("tso", false, &bad);
  o->gsi = fw_arg("gsi") ? (int)fw_arg_u64("gsi", 0) : -1;
  uint64_t q = fw_arg_u64("qsize", 256);
  if (q < 2 || q > 32768) bad = "qsize";
  o->qmax = (uint16_t)q;
  o->rx_fill = true;
  if (bad) {
    *why = bad;
    return false;
  }
  return true;
}

static bool setup(struct vnet *n, const char **why)
{
  struct virtio_dev *d = &n->dev;
  const struct vnet_opts *o = &n->o;

  virtio_reset(d);
  virtio_set_status(d, VIRTIO_S_ACKNOWLEDGE);
  virtio_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER);
  uint64_t offered = virtio_device_features(d);
  uint64_t want = VBIT(VIRTIO_NET_F_MAC) | VBIT(VIRTIO_NET_F_STATUS);
  if (o->mrg) want |= VBIT(VIRTIO_NET_F_MRG_RXBUF);
  if (o->event_idx) want |= VBIT(VIRTIO_F_RING_EVENT_IDX);
  if (o->tso)
    want |= VBIT(VIRTIO_NET_F_CSUM) | VBIT(VIRTIO_NET_F_HOST_TSO4) |
            VBIT(VIRTIO_NET_F_GUEST_CSUM) | VBIT(VIRTIO_NET_F_GUEST_TSO4);
  want |= d->modern ? VBIT(VIRTIO_F_VERSION_1) : VBIT(VIRTIO_F_ANY_LAYOUT);
  if (d->modern && !(offered & VBIT(VIRTIO_F_VERSION_1))) {
    *why = "device does not offer VERSION_1";
    goto fail;
  }
  virtio_driver_features(d, offered & want);
  if (d->modern) {
    virtio_set_status(d, VIRTIO_S_ACKNOWLEDGE | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
    if (!(virtio_get_status(d) & VIRTIO_S_FEATURES_OK)) {
      *why = "FEATURES_OK not accepted";
      goto fail;
    }
  }
  uint64_t f = d->features;
  n->hdr_len = (f & (VBIT(VIRTIO_F_VERSION_1) | VBIT(VIRTIO_NET_F_MRG_RXBUF))) ? 12 : 10;
  n->any_layout = (f & (VBIT(VIRTIO_F_VERSION_1) | VBIT(VIRTIO_F_ANY_LAYOUT))) != 0;
  n->tx_tso = (f & VBIT(VIRTIO_NET_F_CSUM)) && (f & VBIT(VIRTIO_NET_F_HOST_TSO4));
  n->rx_tso = (f & VBIT(VIRTIO_NET_F_GUEST_CSUM)) && (f & VBIT(VIRTIO_NET_F_GUEST_TSO4));
  /* 64 KiB frames fit one buffer unless the device may merge buffers */
  n->rx_buf_size = n->rx_tso && !(f & VBIT(VIRTIO_NET_F_MRG_RXBUF)) ? VNET_BIG_BUF : VNET_BUF;

  uint16_t vrx = VIRTIO_MSI_NO_VECTOR, vtx = VIRTIO_MSI_NO_VECTOR;
  if (o->irq == VNET_IRQ_MSIX) {
    static const uint8_t split[3] = { VNET_VEC_CONFIG, VNET_VEC_RX, VNET_VEC_TX };
    static const uint8_t shared[2] = { VNET_VEC_CONFIG, VNET_VEC_RX };
    if (!virtio_msix_enable(d, o->msix_shared ? 2 : 3, o->msix_shared ? shared : split)) {
      *why = "no MSI-X capability (or too few entries)";
      goto fail;
    }
    if (!virtio_config_vector(d, 0)) {
      *why = "config MSI-X vector rejected";
      goto fail;
    }
    vrx = 1;
    vtx = o->msix_shared ? 1 : 2;
  } else {
    virtio_msix_disable(d);
  }

  n->has_mac = (f & VBIT(VIRTIO_NET_F_MAC)) != 0;
  if (n->has_mac)
    for (int i = 0; i < 6; i++)
      n->mac[i] = virtio_cfg_read8(d, i);
  n->link_status = (f & VBIT(VIRTIO_NET_F_STATUS)) ? virtio_cfg_read16(d, 6) : 0xffff;

  if (!vq_setup(d, &n->rx, 0, o->qmax, vrx, why) || !vq_setup(d, &n->tx, 1, o->qmax, vtx, why))
    goto fail;

  /* RX buffers: one per slot, header and frame in one buffer */
  uint16_t rslots = n->any_layout ? n->rx.size : n->rx.size / 2;
  uint32_t bsize = n->rx_buf_size;
  n->rx_bufs = fw_alloc_raw((size_t)rslots * bsize, 4096);
  for (uint16_t s = 0; s < rslots; s++) {
    uint8_t *buf = n->rx_bufs + (uint32_t)s * bsize;
    if (n->any_layout) {
      n->rx.desc[s] = (struct vring_desc){ (uintptr_t)buf, bsize, VRING_DESC_F_WRITE, 0 };
    } else {
      n->rx.desc[2 * s] = (struct vring_desc){ (uintptr_t)buf, n->hdr_len, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2 * s + 1 };
      n->rx.desc[2 * s + 1] = (struct vring_desc){ (uintptr_t)buf + n->hdr_len, bsize - n->hdr_len, VRING_DESC_F_WRITE, 0 };
    }
    if (o->rx_fill)
      vq_push(&n->rx, n->any_layout ? s : 2 * s);
  }

  /* TX slots */
  n->tx_slots = n->any_layout ? n->tx.size : n->tx.size / 2;
  n->tx_bufs = fw_alloc_raw((size_t)n->tx_slots * VNET_BUF, 4096);
  n->tx_free = fw_alloc((size_t)n->tx_slots * 2, 4);
  for (uint16_t s = 0; s < n->tx_slots; s++) {
    n->tx_free[s] = n->tx_slots - 1 - s;   /* slot 0 on top */
    uint8_t *buf = n->tx_bufs + (uint32_t)s * VNET_BUF;
    if (n->any_layout) {
      n->tx.desc[s] = (struct vring_desc){ (uintptr_t)buf, 0, 0, 0 };
    } else {
      n->tx.desc[2 * s] = (struct vring_desc){ (uintptr_t)buf, n->hdr_len, VRING_DESC_F_NEXT, 2 * s + 1 };
      n->tx.desc[2 * s + 1] = (struct vring_desc){ (uintptr_t)buf + n->hdr_len, 0, 0, 0 };
    }
  }
  n->tx_nfree = n->tx_slots;

  /* interrupt wiring */
  irq_owner = n;
  if (o->irq != VNET_IRQ_POLL)
    irq_init();
  if (o->irq == VNET_IRQ_MSIX) {
    idt_set_handler(VNET_VEC_CONFIG, on_config);
    idt_set_handler(VNET_VEC_RX, on_rx);
    idt_set_handler(VNET_VEC_TX, on_tx);
  } else if (o->irq == VNET_IRQ_INTX) {
    uint8_t line = o->gsi >= 0 ? (uint8_t)o->gsi : pci_read8(d->bdf, PCI_INTERRUPT_LINE);
    if (line == 0 || line >= 24) {
      *why = "no usable interrupt line in config space (give gsi=N)";
      goto fail;
    }
    n->irq_line = line;
    idt_set_handler(VNET_VEC_INTX, on_intx);
    ioapic_route(line, VNET_VEC_INTX, true, o->intx_low);
  }
  /* RX interrupts when waiting on them; TX completions are reaped by polling */
  vq_want_irq(&n->rx, o->wait_irq, 0);
  vq_want_irq(&n->tx, false, 0);
  if (o->wait_irq)
    lapic_timer_periodic(10000000);   /* 10 ms wake-up tick for deadlines */

  virtio_set_status(d, virtio_get_status(d) | VIRTIO_S_DRIVER_OK);
  if (virtio_get_status(d) & (VIRTIO_S_FAILED | VIRTIO_S_NEEDS_RESET)) {
    *why = "device status shows FAILED/NEEDS_RESET after DRIVER_OK";
    goto fail;
  }
  rx_cur = 0xffff;
  rx_pending = 0;
  vq_publish(&n->rx);
  return true;

fail:
  virtio_set_status(d, virtio_get_status(d) | VIRTIO_S_FAILED);
  return false;
}

bool vnet_init(struct vnet *n, const struct vnet_opts *o, const char **why)
{
  static const uint16_t ids_modern[] = { VIRTIO_NET_MODERN, VIRTIO_NET_TRANSITIONAL, 0 };
  static const uint16_t ids_legacy[] = { VIRTIO_NET_TRANSITIONAL, 0 };
  memset(n, 0, sizeof *n);
  n->o = *o;
  if (!virtio_pci_open(&n->dev, o->modern ? ids_modern : ids_legacy, o->modern, why))
    return false;
  return setup(n, why);
}

bool vnet_reinit(struct vnet *n, const char **why)
{
  struct virtio_dev d = n->dev;
  struct vnet_opts o = n->o;
  lapic_timer_periodic(0);
  memset(n, 0, sizeof *n);
  n->dev = d;
  n->o = o;
  return setup(n, why);
}

void vnet_shutdown(struct vnet *n)
{
  if (n->o.wait_irq)
    lapic_timer_periodic(0);
  if (n->o.irq == VNET_IRQ_INTX && n->irq_line)
    ioapic_mask(n->irq_line);
  virtio_reset(&n->dev);
}

uint8_t *vnet_tx_buf(struct vnet *n)
{
  if (!n->tx_nfree)
    return NULL;
  uint8_t *buf = n->tx_bufs + (uint32_t)n->tx_free[n->tx_nfree - 1] * VNET_BUF;
  memset(buf, 0, n->hdr_len);   /* no checksum offload, no GSO; num_buffers 0 */
  return buf + n->hdr_len;
}

void vnet_tx_queue_at(struct vnet *n, const void *hdr_and_frame, uint32_t len)
{
  uint16_t s = n->tx_free[--n->tx_nfree];
  uintptr_t a = (uintptr_t)hdr_and_frame;
  if (n->any_layout) {
    n->tx.desc[s].addr = a;
    n->tx.desc[s].len = n->hdr_len + len;
    vq_push(&n->tx, s);
  } else {
    n->tx.desc[2 * s].addr = a;
    n->tx.desc[2 * s + 1].addr = a + n->hdr_len;
    n->tx.desc[2 * s + 1].len = len;
    vq_push(&n->tx, 2 * s);
  }
  n->tx_frames++;
}

void vnet_tx_queue(struct vnet *n, uint32_t len)
{
  vnet_tx_queue_at(n, n->tx_bufs + (uint32_t)n->tx_free[n->tx_nfree - 1] * VNET_BUF, len);
}

bool vnet_tx_kick(struct vnet *n)
{
  return vq_publish(&n->tx);
}

unsigned vnet_tx_reclaim(struct vnet *n)
{
  uint32_t id, len;
  unsigned k = 0;
  while (vq_pop(&n->tx, &id, &len)) {
    uint16_t s = (uint16_t)(n->any_layout ? id : id / 2);
    if (s < n->tx_slots && n->tx_nfree < n->tx_slots)
      n->tx_free[n->tx_nfree++] = s;
    k++;
  }
  return k;
}

bool vnet_send(struct vnet *n, const void *frame, uint32_t len)
{
  uint8_t *p = vnet_tx_buf(n);
  if (!p) {
    vnet_tx_reclaim(n);
    p = vnet_tx_buf(n);
    if (!p)
      return false;
  }
  if (len < 60) {
    memset(p + len, 0, 60 - len);   /* Ethernet minimum (the FCS is not ours) */
    memcpy(p, frame, len);
    len = 60;
  } else {
    memcpy(p, frame, len);
  }
  vnet_tx_queue(n, len);
  vnet_tx_kick(n);
  return true;
}

/* Pops the num_buffers - 1 further buffers of a merged frame and reposts
 * them (their contents are not handed out). The device publishes a frame's
 * buffers together, so they are all in the used ring already. Returns their
 * bytes, or -1 if a buffer is missing or malformed. */
static int64_t rx_merged_rest(struct vnet *n, uint16_t more)
{
  int64_t bytes = 0;
  bool ok = true;
  while (more--) {
    uint32_t id, l;
    if (!vq_pop(&n->rx, &id, &l))
      return -1;
    if (id >= n->rx.size || (!n->any_layout && (id & 1)) || l > n->rx_buf_size) {
      ok = false;
      continue;
    }
    bytes += l;
    vq_push(&n->rx, (uint16_t)id);
    rx_pending++;
  }
  return ok ? bytes : -1;
}

uint8_t *vnet_rx(struct vnet *n, uint32_t *len)
{
  uint32_t id, l;
  if (!vq_pop(&n->rx, &id, &l))
    return NULL;
  rx_cur = (uint16_t)id;
  uint16_t slot = (uint16_t)(n->any_layout ? id : id / 2);
  uint8_t *buf = n->rx_bufs + (uint32_t)slot * n->rx_buf_size;
  int64_t rest = 0;
  if (id >= n->rx.size || l < n->hdr_len || l > n->rx_buf_size) {
    l = n->hdr_len;   /* malformed: hand out an empty frame */
  } else if (n->dev.features & VBIT(VIRTIO_NET_F_MRG_RXBUF)) {
    uint16_t nb = *(volatile uint16_t *)(buf + 10);
    rest = nb == 0 || nb > n->rx.size ? -1 : rx_merged_rest(n, (uint16_t)(nb - 1));
    if (rest < 0) {
      l = n->hdr_len;
      rest = 0;
    }
  }
  *len = l - n->hdr_len;
  n->rx_frame_len = *len + (uint32_t)rest;
  n->rx_frames++;
  n->rx_bytes += n->rx_frame_len;
  return buf + n->hdr_len;
}

void vnet_rx_done(struct vnet *n)
{
  if (rx_cur >= n->rx.size)
    return;
  vq_push(&n->rx, rx_cur);
  rx_cur = 0xffff;
  if (++rx_pending >= 16 || rx_pending >= n->rx.size / 4)
    vnet_rx_flush(n);
}

void vnet_rx_flush(struct vnet *n)
{
  rx_pending = 0;
  vq_publish(&n->rx);
}

bool vnet_wait(struct vnet *n, bool tx, uint64_t deadline)
{
  vnet_rx_flush(n);
  for (;;) {
    if (vq_has_used(&n->rx) || (tx && vq_has_used(&n->tx)))
      return true;
    if (deadline && rdtsc() >= deadline)
      return false;
    if (n->o.wait_irq) {
      vq_want_irq(&n->rx, true, 0);
      if (tx)
        vq_want_irq(&n->tx, true, n->tx_irq_ahead);
      if (vq_has_used(&n->rx) || (tx && vq_has_used(&n->tx))) {
        if (tx)
          vq_want_irq(&n->tx, false, 0);
        return true;
      }
      irq_wait();
      if (tx)
        vq_want_irq(&n->tx, false, 0);
    } else {
      __asm__ volatile("pause");
    }
  }
}

const char *vnet_describe(struct vnet *n, char *buf, size_t size)
{
  static const char *const irqs[] = { "msix", "intx", "poll" };
  snprintf(buf, size, "%s %04x %s irq=%s%s wait=%s q=%u/%u hdr=%u feat=0x%llx",
           n->dev.modern ? "modern" : "legacy", n->dev.device_id,
           n->any_layout ? "any_layout" : "split_hdr", irqs[n->o.irq],
           n->o.irq == VNET_IRQ_MSIX ? (n->o.msix_shared ? "/shared" : "/split") : "",
           n->o.wait_irq ? "irq" : "poll", n->rx.size, n->tx.size, n->hdr_len,
           (unsigned long long)n->dev.features);
  return buf;
}
