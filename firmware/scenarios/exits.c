// fw:long-mode
/* exits: times N VM exits of one kind with rdtsc.
 * Command line (all optional):
 *   kind=pio_out|pio_in|mmio_write|mmio_read|notify   default pio_out
 *              notify: N writes of the TX queue's index (1) to the virtio-net
 *              TX queue-notify register after device setup, no buffers added
 *              (modern: 16-bit MMIO write to the notify region; legacy with
 *              transport=legacy: outw to QUEUE_NOTIFY). The driver options of
 *              README.md apply; irq defaults to poll here.
 *   n=N        number of exits, default 1000
 *   port=P     I/O port for pio_*, default 0xe0 (unassigned on a PC)
 *   addr=A     guest-physical address for mmio_*, default 0xd0000000 (above
 *              the PCI BAR window the runtime assigns from 0xc0000000, outside
 *              RAM: the VMM sees every access)
 *   width=W    access width in bytes for pio_* and mmio_*: 1, 2 or 4; default
 *              1 for PIO, 4 for MMIO. `kind=mmio_write width=2` is the same
 *              access as a modern notify (a VMM without the device: the
 *              notify's floor); `kind=pio_out width=2` as a legacy one.
 *   hist=1     also time each exit on its own (below)
 *   cpl3=1     run the timed loops (and hist=1's) at CPL3 (lib/user.c):
 *              setup stays at CPL0, the accesses are made from ring 3
 *              (port I/O allowed by IOPL 3 and the TSS's I/O bitmap), where
 *              kvm_pvm runs guest code natively. The result lines are the
 *              same, with ` cpl=3` appended to the first.
 *   smp=1      every CPU the machine has (fw_cfg's count; lib/smp.c starts the
 *              APs) makes its n exits at the same time, from one start flag;
 *              each prints its own figure (below). CPL0 only, no hist=1.
 * Built as a long-mode image (64-bit code) for cpl3=1: on kvm_pvm only
 * 64-bit ring-3 code runs natively.
 * The loop is unrolled 8x so loop overhead is ~0.25 instruction per exit.
 * Prints
 *   exits kind=pio_out n=1000 cycles_per_exit=NNN cycles=TOTAL
 * in TSC cycles (the TSC frequency is not measured): the BSP's, and with
 * smp=1 one more line per CPU, BSP first,
 *   exits cpu=C kind=pio_out n=1000 cycles_per_exit=NNN cycles=TOTAL
 *
 * hist=1: after that loop, N more exits, each between two rdtsc (`rdtsc;
 * save; set up; ACCESS; rdtsc`, one asm block), into a histogram with 8
 * log-spaced buckets per octave (exact below 16 cycles); then min(N, 1000)
 * times the same block without the access, whose median is the cost of the
 * timing itself (on kvm_pvm rdtsc and the moves at CPL0 are emulated: a few
 * thousand cycles). Prints a second line
 *   exits hist kind=K n=N overhead=C p50=A p90=B p99=D max=M buckets=LO:COUNT,...
 * All values are TSC cycles with the overhead NOT subtracted (the reader
 * subtracts C). Buckets: lower edge in cycles and count, non-empty ones only,
 * ascending. Percentiles are interpolated linearly inside their bucket (rank
 * ceil(p% * N)), so they are off by less than a bucket's width (at most
 * 12.5 % of the value); max is exact. Memory stays fixed whatever N
 * (counts, not samples).
 *
 * Exit 0; a bad argument exits 2. */
#include "fw.h"
#include "virtio.h"

#define DEFAULT_PORT 0xe0
#define DEFAULT_ADDR 0xd0000000u
#define HIST_OVERHEAD_SAMPLES 1000

#define X8(s) s s s s s s s s

/* N accesses, 8 asm statements per loop iteration. */
#define UNROLLED(n, insn, ...)                                   \
  do {                                                           \
    for (uint32_t i_ = (n) / 8; i_; i_--)                        \
      __asm__ volatile(X8(insn "\n\t") __VA_ARGS__);             \
    for (uint32_t i_ = (n) % 8; i_; i_--)                        \
      __asm__ volatile(insn __VA_ARGS__);                        \
  } while (0)

static void pio_out(uint16_t port, unsigned width, uint32_t v, uint32_t n)
{
  if (width == 1)
    UNROLLED(n, "outb %%al, %%dx", : : "a"(v), "d"(port));
  else if (width == 2)
    UNROLLED(n, "outw %%ax, %%dx", : : "a"(v), "d"(port));
  else
    UNROLLED(n, "outl %%eax, %%dx", : : "a"(v), "d"(port));
}

static void pio_in(uint16_t port, unsigned width, uint32_t n)
{
  if (width == 1)
    UNROLLED(n, "inb %%dx, %%al", : : "d"(port) : "eax");
  else if (width == 2)
    UNROLLED(n, "inw %%dx, %%ax", : : "d"(port) : "eax");
  else
    UNROLLED(n, "inl %%dx, %%eax", : : "d"(port) : "eax");
}

static void mmio_write(uintptr_t addr, unsigned width, uint32_t v, uint32_t n)
{
  if (width == 1)
    UNROLLED(n, "movb %%al, (%0)", : : "r"(addr), "a"(v) : "memory");
  else if (width == 2)
    UNROLLED(n, "movw %%ax, (%0)", : : "r"(addr), "a"(v) : "memory");
  else
    UNROLLED(n, "movl %%eax, (%0)", : : "r"(addr), "a"(v) : "memory");
}

static void mmio_read(uintptr_t addr, unsigned width, uint32_t n)
{
  if (width == 1)
    UNROLLED(n, "movb (%0), %%al", : : "r"(addr) : "eax", "memory");
  else if (width == 2)
    UNROLLED(n, "movw (%0), %%ax", : : "r"(addr) : "eax", "memory");
  else
    UNROLLED(n, "movl (%0), %%eax", : : "r"(addr) : "eax", "memory");
}

/* ---- per-exit histogram (hist=1) ---- */

/* Exact below 16 cycles, then 8 buckets per octave up to 2^64. */
#define HIST_EXACT 16
#define HIST_BUCKETS (HIST_EXACT + (64 - 4) * 8)

struct hist {
  uint32_t count[HIST_BUCKETS];
  uint32_t total;
  uint64_t max;
};

static inline void hist_add(struct hist *h, uint64_t d)
{
  uint32_t idx;
  if (d < HIST_EXACT) {
    idx = (uint32_t)d;
  } else {
    uint32_t msb = (d >> 32) ? 63 - __builtin_clz((uint32_t)(d >> 32)) : 31 - __builtin_clz((uint32_t)d);
    idx = HIST_EXACT + (msb - 4) * 8 + ((uint32_t)(d >> (msb - 3)) & 7);
  }
  h->count[idx]++;
  h->total++;
  if (d > h->max)
    h->max = d;
}

static uint64_t bucket_lo(uint32_t idx, uint64_t *width)
{
  if (idx < HIST_EXACT) {
    *width = 1;
    return idx;
  }
  uint32_t msb = 4 + (idx - HIST_EXACT) / 8, sub = (idx - HIST_EXACT) % 8;
  *width = 1ull << (msb - 3);
  return (uint64_t)(8 + sub) << (msb - 3);
}

/* The pct-th percentile (rank ceil(pct% * total)), interpolated inside its bucket. */
static uint64_t hist_percentile(const struct hist *h, uint32_t pct)
{
  uint64_t rank = fw_udiv64((uint64_t)h->total * pct + 99, 100, NULL);
  if (rank == 0)
    rank = 1;
  uint64_t before = 0;
  for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
    uint32_t c = h->count[i];
    if (c == 0 || before + c < rank) {
      before += c;
      continue;
    }
    uint64_t width, lo = bucket_lo(i, &width);
    uint64_t v = lo + (fw_udiv64(width * (2 * (rank - before) - 1), c, NULL) >> 1);
    return v > h->max ? h->max : v;
  }
  return h->max;
}

/* One access between two rdtsc, in one asm block: RDTSC, save EDX:EAX, the
 * setup (ECX holds the port or address, EBX the value; EDX is free only after
 * the first RDTSC), the access, RDTSC. With an empty access string it is the
 * timing's own cost. */
#define TIMED(code)                                                               \
  ({                                                                              \
    uint32_t lo0_, hi0_, lo1_, hi1_;                                              \
    __asm__ volatile("rdtsc\n\tmov %%eax, %%esi\n\tmov %%edx, %%edi\n\t" code "rdtsc" \
                     : "=&S"(lo0_), "=&D"(hi0_), "=a"(lo1_), "=d"(hi1_)           \
                     : "c"(target), "b"(value)                                    \
                     : "memory");                                                 \
    (((uint64_t)hi1_ << 32) | lo1_) - (((uint64_t)hi0_ << 32) | lo0_);            \
  })

#define PIO_OUT_SETUP "mov %%ecx, %%edx\n\tmov %%ebx, %%eax\n\t"
#define PIO_IN_SETUP "mov %%ecx, %%edx\n\t"

enum access { PIO_OUT, PIO_IN, MMIO_WRITE, MMIO_READ };

/* Fills h with `count` timed exits (or, with !exits, the same blocks without the access). */
static void hist_run(struct hist *h, enum access a, unsigned width, uint32_t target, uint32_t value,
                     uint32_t count, bool exits)
{
#define LOOP(code) for (uint32_t i = count; i; i--) hist_add(h, TIMED(code))
#define CASE(setup, a1, a2, a4)     \
  if (!exits)                       \
    LOOP(setup);                    \
  else if (width == 1)              \
    LOOP(setup a1 "\n\t");          \
  else if (width == 2)              \
    LOOP(setup a2 "\n\t");          \
  else                              \
    LOOP(setup a4 "\n\t");          \
  break;
  switch (a) {
  case PIO_OUT: CASE(PIO_OUT_SETUP, "outb %%al, %%dx", "outw %%ax, %%dx", "outl %%eax, %%dx")
  case PIO_IN: CASE(PIO_IN_SETUP, "inb %%dx, %%al", "inw %%dx, %%ax", "inl %%dx, %%eax")
  case MMIO_WRITE: CASE("", "movb %%bl, (%%ecx)", "movw %%bx, (%%ecx)", "movl %%ebx, (%%ecx)")
  case MMIO_READ: CASE("", "movb (%%ecx), %%al", "movw (%%ecx), %%ax", "movl (%%ecx), %%eax")
  }
#undef CASE
#undef LOOP
}

static void hist_print(const char *kind, uint32_t n, const struct hist *h, uint64_t overhead)
{
  printf("exits hist kind=%s n=%u overhead=%llu p50=%llu p90=%llu p99=%llu max=%llu buckets=", kind, n,
         (unsigned long long)overhead, (unsigned long long)hist_percentile(h, 50),
         (unsigned long long)hist_percentile(h, 90), (unsigned long long)hist_percentile(h, 99),
         (unsigned long long)h->max);
  const char *sep = "";
  for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
    if (!h->count[i])
      continue;
    uint64_t width;
    printf("%s%llu:%u", sep, (unsigned long long)bucket_lo(i, &width), h->count[i]);
    sep = ",";
  }
  printf("\n");
}

/* The timed part, run at CPL0 or (cpl3=1) through user_run at CPL3. */
struct run {
  enum access a;
  unsigned width;
  uint32_t target, value, n;
  bool hist;
  uint64_t cycles;
  uint16_t cpl;
};
static struct hist exits_hist, overhead_hist;

static uint64_t timed_run(void *arg)
{
  struct run *r = arg;
  r->cpl = fw_cpl();
  uint64_t t0 = rdtsc();
  if (r->a == PIO_OUT)
    pio_out((uint16_t)r->target, r->width, r->value, r->n);
  else if (r->a == PIO_IN)
    pio_in((uint16_t)r->target, r->width, r->n);
  else if (r->a == MMIO_WRITE)
    mmio_write((uintptr_t)r->target, r->width, r->value, r->n);
  else
    mmio_read((uintptr_t)r->target, r->width, r->n);
  r->cycles = rdtsc() - t0;
  if (r->hist) {
    hist_run(&exits_hist, r->a, r->width, r->target, r->value, r->n, true);
    hist_run(&overhead_hist, r->a, r->width, r->target, r->value,
             r->n < HIST_OVERHEAD_SAMPLES ? r->n : HIST_OVERHEAD_SAMPLES, false);
  }
  return 0;
}

/* smp=1: the APs wait for `go`, then run the same loop as the BSP. */
static struct run cpu_runs[FW_MAX_CPUS];
static volatile uint32_t go, finished;

static void ap_exits(unsigned cpu)
{
  while (!go)
    __asm__ volatile("pause");
  timed_run(&cpu_runs[cpu]);
  __atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST);
}

int main(uint32_t magic, uint32_t mbi)
{
  const char *kind = fw_arg_str("kind", "pio_out");
  bool notify = !strcmp(kind, "notify");
  enum access a;
  if (!strcmp(kind, "pio_out"))
    a = PIO_OUT;
  else if (!strcmp(kind, "pio_in"))
    a = PIO_IN;
  else if (!strcmp(kind, "mmio_write") || notify)
    a = MMIO_WRITE;   /* notify: PIO_OUT on the legacy transport, decided below */
  else if (!strcmp(kind, "mmio_read"))
    a = MMIO_READ;
  else {
    printf("exits: unknown kind=%s (pio_out|pio_in|mmio_write|mmio_read|notify)\n", kind);
    return FW_EXIT_USAGE;
  }
  uint64_t n64 = fw_arg_u64("n", 1000);
  uint64_t port = fw_arg_u64("port", DEFAULT_PORT);
  uint64_t addr = fw_arg_u64("addr", DEFAULT_ADDR);
  uint64_t width = fw_arg_u64("width", a == PIO_OUT || a == PIO_IN ? 1 : 4);
  uint64_t hist = fw_arg_u64("hist", 0);
  uint64_t cpl3 = fw_arg_u64("cpl3", 0);
  uint64_t smp = fw_arg_u64("smp", 0);
  if (n64 == 0 || n64 > 0xffffffffu || port > 0xffff || addr > 0xfffffffcu ||
      (width != 1 && width != 2 && width != 4) || hist > 1 || cpl3 > 1 || smp > 1 || (smp && (hist || cpl3))) {
    printf("exits: bad arguments n=%llu port=0x%llx addr=0x%llx width=%llu hist=%llu cpl3=%llu smp=%llu"
           " (smp=1 runs at CPL0 without hist=1)\n",
           (unsigned long long)n64, (unsigned long long)port, (unsigned long long)addr,
           (unsigned long long)width, (unsigned long long)hist, (unsigned long long)cpl3, (unsigned long long)smp);
    return FW_EXIT_USAGE;
  }
  uint32_t n = (uint32_t)n64;
  uint32_t target = a == PIO_OUT || a == PIO_IN ? (uint32_t)port : (uint32_t)addr;
  uint32_t value = 0;

  static struct vnet nic;
  if (notify) {
    struct vnet_opts o;
    const char *why;
    if (!vnet_opts_parse(&o, &why)) {
      printf("exits: bad argument %s\n", why);
      return FW_EXIT_USAGE;
    }
    if (!fw_arg("irq")) {
      o.irq = VNET_IRQ_POLL;
      o.wait_irq = false;
    }
    if (!vnet_init(&nic, &o, &why)) {
      printf("exits: FAIL device: %s\n", why);
      return FW_EXIT_FAIL;
    }
    a = nic.dev.modern ? MMIO_WRITE : PIO_OUT;
    width = 2;
    target = (uint32_t)nic.tx.notify;
    value = nic.tx.index;
  }

  struct run r = { a, (unsigned)width, target, value, n, hist != 0, 0, 0 };
  unsigned cpus = 1;
  if (smp) {
    cpus = smp_cpus();
    for (unsigned c = 0; c < cpus; c++)
      cpu_runs[c] = r;
    irq_disable();
    unsigned started = smp_start_aps(ap_exits, 5000);
    if (started + 1 != cpus) {
      printf("exits: FAIL smp=1: %u of %u CPUs started\n", started + 1, cpus);
      return FW_EXIT_FAIL;
    }
    go = 1;
    timed_run(&cpu_runs[0]);
    while (finished < started)
      __asm__ volatile("pause");
    r = cpu_runs[0];
  } else if (cpl3) {
    user_run(timed_run, &r);
  } else {
    timed_run(&r);
  }
  uint64_t cycles = r.cycles;

  if (notify) {
    bool used = vq_has_used(&nic.tx);   /* an empty avail ring: nothing may be used */
    vnet_shutdown(&nic);
    if (used) {
      printf("exits kind=notify n=%u FAIL the device used a buffer that was never made available\n", n);
      return FW_EXIT_FAIL;
    }
  }

  printf("exits kind=%s n=%u cycles_per_exit=%llu cycles=%llu%s\n", kind, n,
         (unsigned long long)fw_udiv64(cycles, n, NULL), (unsigned long long)cycles, r.cpl == 3 ? " cpl=3" : "");
  if (smp)
    for (unsigned c = 0; c < cpus; c++)
      printf("exits cpu=%u kind=%s n=%u cycles_per_exit=%llu cycles=%llu\n", c, kind, n,
             (unsigned long long)fw_udiv64(cpu_runs[c].cycles, n, NULL), (unsigned long long)cpu_runs[c].cycles);
  if (hist)
    hist_print(kind, n, &exits_hist, hist_percentile(&overhead_hist, 50));
  return FW_EXIT_OK;
}
