/* virtio.h — virtio over PCI (modern 1.x and legacy 0.9.5 transports), split
 * virtqueues, and a virtio-net driver (lib/virtio.c, lib/virtio_net.c).
 * 32-bit images only (identity-mapped, so a pointer is a DMA address). */
#ifndef FW_VIRTIO_H
#define FW_VIRTIO_H

#include "fw.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_NET_TRANSITIONAL 0x1000
#define VIRTIO_NET_MODERN       0x1041

/* device status */
#define VIRTIO_S_ACKNOWLEDGE 1
#define VIRTIO_S_DRIVER      2
#define VIRTIO_S_DRIVER_OK   4
#define VIRTIO_S_FEATURES_OK 8
#define VIRTIO_S_NEEDS_RESET 0x40
#define VIRTIO_S_FAILED      0x80

/* feature bits */
#define VIRTIO_NET_F_CSUM       0
#define VIRTIO_NET_F_GUEST_CSUM 1
#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_GUEST_TSO4 7
#define VIRTIO_NET_F_HOST_TSO4  11
#define VIRTIO_NET_F_MRG_RXBUF  15
#define VIRTIO_NET_F_STATUS     16
#define VIRTIO_F_ANY_LAYOUT     27
#define VIRTIO_F_RING_EVENT_IDX 29
#define VIRTIO_F_VERSION_1      32
#define VBIT(b) (1ull << (b))

/* split ring */
#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY     1
#define VIRTIO_MSI_NO_VECTOR 0xffff

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vring_avail { uint16_t flags, idx, ring[]; };          /* + used_event after ring[size] */
struct vring_used_elem { uint32_t id, len; };
struct vring_used { uint16_t flags, idx; struct vring_used_elem ring[]; }; /* + avail_event */

struct virtio_dev;

struct vq {
  struct virtio_dev *dev;
  uint16_t index, size;
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;
  volatile uint16_t *used_event;    /* &avail->ring[size] */
  volatile uint16_t *avail_event;   /* &used->ring[size] */
  uint16_t avail_idx;               /* our shadow of avail->idx */
  uint16_t kicked_idx;              /* avail_idx at the last notification */
  uint16_t last_used;               /* next used->ring entry to consume */
  uint16_t msix_vector;
  uintptr_t notify;                 /* modern: MMIO address; legacy: I/O port */
  uint32_t kicks, kicks_suppressed;
};

struct virtio_dev {
  pci_bdf_t bdf;
  uint16_t device_id;
  bool modern;
  uintptr_t common, isr, devcfg, notify_base;   /* modern: MMIO addresses */
  uint32_t notify_mult;
  uint16_t io;                                  /* legacy: I/O BAR0 */
  uint8_t msix_cap;                             /* 0: none */
  uint16_t msix_entries;
  uintptr_t msix_table;
  bool msix_on;
  uint64_t features;                            /* negotiated */
};

/* Finds the first vendor-0x1af4 function whose device id is in ids (0-ended),
 * maps its BARs (assigning those that read 0 or lie above 4 GiB) and checks
 * the transport: modern needs the vendor capabilities, legacy an I/O BAR0.
 * Enables I/O, memory and bus mastering. Returns false with *why set. */
bool virtio_pci_open(struct virtio_dev *d, const uint16_t *ids, bool modern, const char **why);
void virtio_reset(struct virtio_dev *d);            /* status 0, waits until it reads 0 */
uint8_t virtio_get_status(struct virtio_dev *d);
void virtio_set_status(struct virtio_dev *d, uint8_t s);
uint64_t virtio_device_features(struct virtio_dev *d);   /* legacy: 32 bits */
void virtio_driver_features(struct virtio_dev *d, uint64_t f);
uint8_t virtio_cfg_read8(struct virtio_dev *d, uint16_t off);
uint16_t virtio_cfg_read16(struct virtio_dev *d, uint16_t off);
uint8_t virtio_isr(struct virtio_dev *d);           /* read-to-clear */
uint16_t virtio_num_queues(struct virtio_dev *d);   /* legacy: unknown, 0xffff */
/* MSI-X: enables the capability (entries masked first), then programs entry i
 * with address 0xFEE00000 | apic id << 12 and data = vectors[i]. */
bool virtio_msix_enable(struct virtio_dev *d, int n, const uint8_t *vectors);
void virtio_msix_disable(struct virtio_dev *d);
bool virtio_config_vector(struct virtio_dev *d, uint16_t v);   /* read-back check */

/* Queue setup: size from the device, capped at max (modern only: legacy
 * rings have the device's size), rings allocated here (legacy layout with
 * 4096 alignment for both transports), msix_vector programmed and read
 * back (VIRTIO_MSI_NO_VECTOR for none). Returns false with *why set. */
bool vq_setup(struct virtio_dev *d, struct vq *q, uint16_t index, uint16_t max, uint16_t msix_vector, const char **why);
void vq_notify(struct vq *q);                          /* the raw notification write */
/* Publishes avail_idx (after a write barrier) and notifies unless the device
 * suppressed it (NO_NOTIFY, or avail_event with EVENT_IDX). Returns whether it kicked. */
bool vq_publish(struct vq *q);
static inline void vq_push(struct vq *q, uint16_t head)
{
  q->avail->ring[q->avail_idx & (q->size - 1)] = head;
  q->avail_idx++;
}
static inline bool vq_has_used(struct vq *q)
{
  return *(volatile uint16_t *)&q->used->idx != q->last_used;
}
/* Next used element (id, len), or false. */
bool vq_pop(struct vq *q, uint32_t *id, uint32_t *len);
/* Interrupt suppression: on=false asks for none; on=true asks for one at the
 * next used entry (EVENT_IDX: used_event = last_used + ahead). */
void vq_want_irq(struct vq *q, bool on, uint16_t ahead);

/* ---- virtio-net ---- */
enum vnet_irq { VNET_IRQ_MSIX, VNET_IRQ_INTX, VNET_IRQ_POLL };
#define VNET_BUF 2048   /* per RX buffer and TX slot: 12-byte header + 1514-byte frame */
/* RX buffer with GUEST_TSO4 and no MRG_RXBUF: at least 65562 bytes (virtio 1.2 §5.1.6.3.1) */
#define VNET_BIG_BUF (65536 + 64)

/* struct virtio_net_hdr (+ num_buffers: 12 bytes with VERSION_1 or MRG_RXBUF) */
struct virtio_net_hdr {
  uint8_t flags, gso_type;
  uint16_t hdr_len, gso_size, csum_start, csum_offset;
  uint16_t num_buffers;
};
#define VIRTIO_NET_HDR_F_NEEDS_CSUM 1
#define VIRTIO_NET_HDR_GSO_NONE  0
#define VIRTIO_NET_HDR_GSO_TCPV4 1
#define VNET_VEC_CONFIG 0x30
#define VNET_VEC_RX     0x31
#define VNET_VEC_TX     0x32
#define VNET_VEC_INTX   0x33

struct vnet_opts {
  bool modern;            /* transport=modern|legacy */
  bool mrg, event_idx;    /* mrg=0|1 event_idx=0|1 (only if offered) */
  bool tso;               /* tso=0|1: CSUM + HOST_TSO4 + GUEST_CSUM + GUEST_TSO4 (if offered) */
  enum vnet_irq irq;      /* irq=msix|intx|poll */
  bool msix_shared;       /* msix=split|shared: RX and TX on one vector */
  bool wait_irq;          /* wait=irq|poll */
  bool intx_low;          /* intx_polarity=low|high */
  int gsi;                /* gsi=N overrides the interrupt line, -1: from config space */
  uint16_t qmax;          /* qsize=N cap (modern), default 256 */
  bool rx_fill;           /* post RX buffers at init (default true) */
  bool cpl3;              /* cpl3=0|1: the scenario's data loop runs at CPL3 (fw_run_loop); irq=poll by default */
};

struct vnet {
  struct virtio_dev dev;
  struct vnet_opts o;
  struct vq rx, tx;
  uint8_t mac[6];
  bool has_mac;
  uint16_t link_status;   /* 0xffff if no STATUS feature */
  unsigned hdr_len;       /* 12 with VERSION_1 or MRG_RXBUF, else 10 */
  bool any_layout;        /* header and frame in one TX descriptor */
  bool tx_tso;            /* CSUM + HOST_TSO4 negotiated: TX frames may be TSO super-frames */
  bool rx_tso;            /* GUEST_CSUM + GUEST_TSO4 negotiated: RX frames up to 64 KiB */
  uint32_t rx_buf_size;   /* bytes per RX buffer: VNET_BUF, or VNET_BIG_BUF (rx_tso without MRG_RXBUF) */
  uint8_t *rx_bufs, *tx_bufs;
  uint16_t *tx_free;      /* stack of free TX slots */
  uint16_t tx_nfree, tx_slots;
  uint8_t irq_line;
  volatile uint32_t irq_rx, irq_tx, irq_config, irq_intx;
  uint16_t tx_irq_ahead;  /* vnet_wait(tx): with EVENT_IDX, interrupt after this many more used */
  uint32_t rx_frames, tx_frames;
  uint64_t rx_bytes;
  uint32_t rx_frame_len;  /* whole frame (all merged buffers, no header) of the last vnet_rx */
};

/* Reads the options from the command line (see firmware/README.md). */
bool vnet_opts_parse(struct vnet_opts *o, const char **why);
/* Finds, resets and brings up the device; RX buffers posted and published.
 * Prints nothing. Returns false with *why set. */
bool vnet_init(struct vnet *n, const struct vnet_opts *o, const char **why);
/* Reset (status 0) and the same setup again, rings reallocated. */
bool vnet_reinit(struct vnet *n, const char **why);
/* TX: a slot's frame buffer (after the header), NULL if all slots in flight
 * (call vnet_tx_reclaim). Then vnet_tx_queue(len) adds it; vnet_tx_kick
 * publishes and notifies if needed. vnet_send = buf + copy + queue + kick. */
uint8_t *vnet_tx_buf(struct vnet *n);
void vnet_tx_queue(struct vnet *n, uint32_t len);
/* Queues a frame from any buffer (hdr_len zeroed header, then the frame) in
 * the next free slot; the buffer must stay unchanged until reclaimed. */
void vnet_tx_queue_at(struct vnet *n, const void *hdr_and_frame, uint32_t len);
bool vnet_tx_kick(struct vnet *n);
bool vnet_send(struct vnet *n, const void *frame, uint32_t len);
unsigned vnet_tx_reclaim(struct vnet *n);   /* used TX slots back to the free stack */
/* RX: next received frame (after the header), or NULL; *len is what lies
 * in the returned buffer. With MRG_RXBUF a frame may span num_buffers
 * buffers: only the first is handed out (the others are reposted at once)
 * and n->rx_frame_len holds the whole length. Call vnet_rx_done when
 * finished with it (the buffer is reposted; published every 16 or when the
 * ring runs low, and by vnet_rx_flush). */
uint8_t *vnet_rx(struct vnet *n, uint32_t *len);
void vnet_rx_done(struct vnet *n);
void vnet_rx_flush(struct vnet *n);
/* Waits until RX has a used entry (or TX too with tx=true), or until
 * rdtsc() >= deadline (0: none). hlt on interrupts with wait=irq, else polls. */
bool vnet_wait(struct vnet *n, bool tx, uint64_t deadline);
void vnet_shutdown(struct vnet *n);   /* reset, interrupts off */
const char *vnet_describe(struct vnet *n, char *buf, size_t size);

#endif
