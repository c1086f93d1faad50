/* virtio over PCI: the modern (1.x, vendor capabilities) and the legacy
 * (0.9.5, I/O BAR0) transports, MSI-X, and split virtqueues.
 * Every register access is a VM exit (MMIO or PIO); config-space accesses
 * are two. The hot paths (vq_publish, vq_pop) touch only guest RAM apart
 * from the one notification write. */
#include "virtio.h"

/* modern common configuration structure */
#define VC_DFSELECT   0x00
#define VC_DF         0x04
#define VC_GFSELECT   0x08
#define VC_GF         0x0c
#define VC_MSIX       0x10
#define VC_NUMQ       0x12
#define VC_STATUS     0x14
#define VC_GEN        0x15
#define VC_Q_SELECT   0x16
#define VC_Q_SIZE     0x18
#define VC_Q_MSIX     0x1a
#define VC_Q_ENABLE   0x1c
#define VC_Q_NOFF     0x1e
#define VC_Q_DESC     0x20
#define VC_Q_AVAIL    0x28
#define VC_Q_USED     0x30

/* legacy I/O registers */
#define VL_HOST_FEATURES  0x00
#define VL_GUEST_FEATURES 0x04
#define VL_QUEUE_PFN      0x08
#define VL_QUEUE_NUM      0x0c
#define VL_QUEUE_SEL      0x0e
#define VL_QUEUE_NOTIFY   0x10
#define VL_STATUS         0x12
#define VL_ISR            0x13
#define VL_CONFIG_VECTOR  0x14
#define VL_QUEUE_VECTOR   0x16
#define VL_ALIGN          4096

/* vendor capability */
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_ISR    3
#define VIRTIO_PCI_CAP_DEVICE 4
#define PCI_CAP_VENDOR 0x09
#define PCI_CAP_MSIX   0x11

/* BAR base addresses of the open device, probed once each (0: not yet). */
static uint64_t bar_base[6];
static uint8_t bar_kind[6];

static bool map_bar(pci_bdf_t bdf, int idx, uint64_t *base, enum pci_bar_kind *kind)
{
  if (idx < 0 || idx > 5)
    return false;
  if (!bar_base[idx]) {
    struct pci_bar b;
    pci_bar_probe(bdf, idx, &b, true);
    if (b.kind == PCI_BAR_MEM && b.base + b.size > 0x100000000ull) {
      /* above 4 GiB: unreachable without paging; move it into the window */
      pci_write32(bdf, PCI_BAR0 + 4 * idx, 0);
      if (b.is64)
        pci_write32(bdf, PCI_BAR0 + 4 * idx + 4, 0);
      pci_bar_probe(bdf, idx, &b, true);
    }
    if (b.kind == PCI_BAR_NONE || !b.base || b.base + b.size > 0x100000000ull)
      return false;
    bar_base[idx] = b.base;
    bar_kind[idx] = (uint8_t)b.kind;
  }
  *base = bar_base[idx];
  *kind = (enum pci_bar_kind)bar_kind[idx];
  return true;
}

bool virtio_pci_open(struct virtio_dev *d, const uint16_t *ids, bool modern, const char **why)
{
  memset(d, 0, sizeof *d);
  memset(bar_base, 0, sizeof bar_base);
  d->modern = modern;
  pci_bdf_t b = PCI_BDF_START;
  bool found = false;
  while (!found && pci_next(&b)) {
    uint32_t id = pci_read32(b, PCI_VENDOR_ID);
    if ((id & 0xffff) != VIRTIO_VENDOR)
      continue;
    for (const uint16_t *p = ids; *p; p++)
      if ((id >> 16) == *p) {
        found = true;
        d->bdf = b;
        d->device_id = (uint16_t)(id >> 16);
        break;
      }
  }
  if (!found) {
    *why = "no virtio device with a matching id on bus 0";
    return false;
  }

  uint64_t base;
  enum pci_bar_kind kind;
  int guard = 48;
  for (uint8_t c = pci_cap_next(d->bdf, 0); c && guard--; c = pci_cap_next(d->bdf, c)) {
    uint8_t id = pci_read8(d->bdf, c);
    if (id == PCI_CAP_MSIX && !d->msix_cap) {
      uint16_t ctrl = pci_read16(d->bdf, c + 2);
      uint32_t tbl = pci_read32(d->bdf, c + 4);
      if (map_bar(d->bdf, tbl & 7, &base, &kind) && kind == PCI_BAR_MEM) {
        d->msix_cap = c;
        d->msix_entries = (ctrl & 0x7ff) + 1;
        d->msix_table = (uintptr_t)base + (tbl & ~7u);
      }
    } else if (id == PCI_CAP_VENDOR && modern) {
      uint8_t type = pci_read8(d->bdf, c + 3);
      uint8_t bar = pci_read8(d->bdf, c + 4);
      uint32_t off = pci_read32(d->bdf, c + 8);
      uintptr_t *slot = type == VIRTIO_PCI_CAP_COMMON ? &d->common
                      : type == VIRTIO_PCI_CAP_NOTIFY ? &d->notify_base
                      : type == VIRTIO_PCI_CAP_ISR    ? &d->isr
                      : type == VIRTIO_PCI_CAP_DEVICE ? &d->devcfg : NULL;
      if (!slot || *slot || bar > 5)
        continue;   /* other types (PCI cfg access), or not the first of its type */
      if (!map_bar(d->bdf, bar, &base, &kind) || kind != PCI_BAR_MEM)
        continue;   /* I/O-mapped structures are allowed by the spec; not handled here */
      *slot = (uintptr_t)base + off;
      if (type == VIRTIO_PCI_CAP_NOTIFY)
        d->notify_mult = pci_read32(d->bdf, c + 16);
    }
  }

  if (modern) {
    if (!d->common || !d->notify_base || !d->isr || !d->devcfg) {
      *why = "modern transport: virtio vendor capabilities missing (legacy-only device?)";
      return false;
    }
  } else {
    if (d->device_id >= 0x1040) {   /* 0x1000..0x103f are transitional */
      *why = "legacy transport: device is modern-only (id >= 0x1040)";
      return false;
    }
    if (!map_bar(d->bdf, 0, &base, &kind) || kind != PCI_BAR_IO) {
      *why = "legacy transport: BAR0 is not an I/O BAR";
      return false;
    }
    d->io = (uint16_t)base;
  }
  pci_enable(d->bdf, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  return true;
}

uint8_t virtio_get_status(struct virtio_dev *d)
{
  return d->modern ? mmio_read8(d->common + VC_STATUS) : inb(d->io + VL_STATUS);
}

void virtio_set_status(struct virtio_dev *d, uint8_t s)
{
  if (d->modern)
    mmio_write8(d->common + VC_STATUS, s);
  else
    outb(d->io + VL_STATUS, s);
}

void virtio_reset(struct virtio_dev *d)
{
  virtio_set_status(d, 0);
  for (int i = 0; i < 100000 && virtio_get_status(d); i++)
    __asm__ volatile("pause");
}

uint64_t virtio_device_features(struct virtio_dev *d)
{
  if (!d->modern)
    return inl(d->io + VL_HOST_FEATURES);
  mmio_write32(d->common + VC_DFSELECT, 0);
  uint32_t lo = mmio_read32(d->common + VC_DF);
  mmio_write32(d->common + VC_DFSELECT, 1);
  uint32_t hi = mmio_read32(d->common + VC_DF);
  return (uint64_t)hi << 32 | lo;
}

void virtio_driver_features(struct virtio_dev *d, uint64_t f)
{
  d->features = f;
  if (!d->modern) {
    outl(d->io + VL_GUEST_FEATURES, (uint32_t)f);
    return;
  }
  mmio_write32(d->common + VC_GFSELECT, 0);
  mmio_write32(d->common + VC_GF, (uint32_t)f);
  mmio_write32(d->common + VC_GFSELECT, 1);
  mmio_write32(d->common + VC_GF, (uint32_t)(f >> 32));
}

uint8_t virtio_cfg_read8(struct virtio_dev *d, uint16_t off)
{
  if (d->modern)
    return mmio_read8(d->devcfg + off);
  return inb(d->io + (d->msix_on ? 0x18 : 0x14) + off);
}

uint16_t virtio_cfg_read16(struct virtio_dev *d, uint16_t off)
{
  if (d->modern)
    return mmio_read16(d->devcfg + off);
  return inw(d->io + (d->msix_on ? 0x18 : 0x14) + off);
}

uint8_t virtio_isr(struct virtio_dev *d)
{
  return d->modern ? mmio_read8(d->isr) : inb(d->io + VL_ISR);
}

uint16_t virtio_num_queues(struct virtio_dev *d)
{
  return d->modern ? mmio_read16(d->common + VC_NUMQ) : 0xffff;
}

bool virtio_msix_enable(struct virtio_dev *d, int n, const uint8_t *vectors)
{
  if (!d->msix_cap || n > d->msix_entries)
    return false;
  uint16_t ctrl = pci_read16(d->bdf, d->msix_cap + 2);
  pci_write16(d->bdf, d->msix_cap + 2, ctrl | 0xc000);   /* enable + function mask */
  uint32_t addr = LAPIC_BASE | (uint32_t)lapic_id() << 12;
  for (int i = 0; i < n; i++) {
    uintptr_t e = d->msix_table + 16 * i;
    mmio_write32(e + 0, addr);
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, vectors[i]);
    mmio_write32(e + 12, 0);   /* unmask the entry */
  }
  pci_write16(d->bdf, d->msix_cap + 2, (ctrl | 0x8000) & ~0x4000);
  d->msix_on = true;
  return true;
}

void virtio_msix_disable(struct virtio_dev *d)
{
  if (!d->msix_cap)
    return;
  uint16_t ctrl = pci_read16(d->bdf, d->msix_cap + 2);
  pci_write16(d->bdf, d->msix_cap + 2, ctrl & ~0xc000);
  d->msix_on = false;
}

bool virtio_config_vector(struct virtio_dev *d, uint16_t v)
{
  if (d->modern) {
    mmio_write16(d->common + VC_MSIX, v);
    return mmio_read16(d->common + VC_MSIX) == v;
  }
  outw(d->io + VL_CONFIG_VECTOR, v);
  return inw(d->io + VL_CONFIG_VECTOR) == v;
}

/* Legacy ring layout (also used for modern, which allows any placement):
 * descriptors, avail ring + used_event, pad to 4096, used ring + avail_event. */
static uint32_t vring_bytes(uint16_t n, uint32_t *used_off)
{
  uint32_t a = 16u * n + 6 + 2u * n;
  *used_off = (a + VL_ALIGN - 1) & ~(VL_ALIGN - 1);
  return *used_off + ((6 + 8u * n + VL_ALIGN - 1) & ~(VL_ALIGN - 1));
}

bool vq_setup(struct virtio_dev *d, struct vq *q, uint16_t index, uint16_t max, uint16_t msix_vector, const char **why)
{
  memset(q, 0, sizeof *q);
  q->dev = d;
  q->index = index;
  uint16_t size;
  if (d->modern) {
    mmio_write16(d->common + VC_Q_SELECT, index);
    size = mmio_read16(d->common + VC_Q_SIZE);
    if (size > max && max) {
      uint16_t s = 1;
      while ((uint32_t)s * 2 <= max)
        s *= 2;
      size = s;
      mmio_write16(d->common + VC_Q_SIZE, size);
    }
  } else {
    outw(d->io + VL_QUEUE_SEL, index);
    size = inw(d->io + VL_QUEUE_NUM);
  }
  if (!size || (size & (size - 1)) || size > 32768) {
    *why = size ? "queue size is not a power of two" : "queue not available (size 0)";
    return false;
  }
  q->size = size;
  uint32_t used_off;
  uint32_t bytes = vring_bytes(size, &used_off);
  uint8_t *mem = fw_alloc(bytes, VL_ALIGN);
  q->desc = (struct vring_desc *)mem;
  q->avail = (struct vring_avail *)(mem + 16u * size);
  q->used = (struct vring_used *)(mem + used_off);
  q->used_event = &q->avail->ring[size];
  q->avail_event = (volatile uint16_t *)&q->used->ring[size];
  q->msix_vector = msix_vector;

  if (d->modern) {
    uint32_t da = (uint32_t)(uintptr_t)q->desc, aa = (uint32_t)(uintptr_t)q->avail, ua = (uint32_t)(uintptr_t)q->used;
    mmio_write32(d->common + VC_Q_DESC, da);
    mmio_write32(d->common + VC_Q_DESC + 4, 0);
    mmio_write32(d->common + VC_Q_AVAIL, aa);
    mmio_write32(d->common + VC_Q_AVAIL + 4, 0);
    mmio_write32(d->common + VC_Q_USED, ua);
    mmio_write32(d->common + VC_Q_USED + 4, 0);
    if (d->msix_on) {
      mmio_write16(d->common + VC_Q_MSIX, msix_vector);
      if (mmio_read16(d->common + VC_Q_MSIX) != msix_vector) {
        *why = "queue MSI-X vector rejected";
        return false;
      }
    }
    q->notify = d->notify_base + (uintptr_t)mmio_read16(d->common + VC_Q_NOFF) * d->notify_mult;
    mmio_write16(d->common + VC_Q_ENABLE, 1);
  } else {
    outl(d->io + VL_QUEUE_PFN, (uint32_t)(uintptr_t)mem / VL_ALIGN);
    if (d->msix_on) {
      outw(d->io + VL_QUEUE_VECTOR, msix_vector);
      if (inw(d->io + VL_QUEUE_VECTOR) != msix_vector) {
        *why = "queue MSI-X vector rejected";
        return false;
      }
    }
    q->notify = d->io + VL_QUEUE_NOTIFY;
  }
  return true;
}

void vq_notify(struct vq *q)
{
  q->kicks++;
  if (q->dev->modern)
    mmio_write16(q->notify, q->index);
  else
    outw((uint16_t)q->notify, q->index);
}

bool vq_publish(struct vq *q)
{
  uint16_t old = q->kicked_idx, new = q->avail_idx;
  if (old == new)
    return false;
  barrier();   /* ring entries and descriptors before the index (x86: stores stay ordered) */
  *(volatile uint16_t *)&q->avail->idx = new;
  q->kicked_idx = new;
  mb();        /* the index store before the load of the device's suppression state */
  bool kick;
  if (q->dev->features & VBIT(VIRTIO_F_RING_EVENT_IDX)) {
    uint16_t ev = *q->avail_event;
    kick = (uint16_t)(new - ev - 1) < (uint16_t)(new - old);
  } else {
    kick = !(*(volatile uint16_t *)&q->used->flags & VRING_USED_F_NO_NOTIFY);
  }
  if (kick)
    vq_notify(q);
  else
    q->kicks_suppressed++;
  return kick;
}

bool vq_pop(struct vq *q, uint32_t *id, uint32_t *len)
{
  if (!vq_has_used(q))
    return false;
  barrier();   /* the index before the element (x86: loads stay ordered) */
  volatile struct vring_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
  *id = e->id;
  *len = e->len;
  q->last_used++;
  return true;
}

void vq_want_irq(struct vq *q, bool on, uint16_t ahead)
{
  if (q->dev->features & VBIT(VIRTIO_F_RING_EVENT_IDX))
    *q->used_event = on ? (uint16_t)(q->last_used + ahead) : (uint16_t)(q->last_used - 1);
  else
    *(volatile uint16_t *)&q->avail->flags = on ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
  if (on)
    mb();
}
