/* exit-floor: the exit-latency reference for tsvisor's benchmark.
 *
 *   cc -O2 -o exit-floor scripts/bench/exit-floor.c
 *   exit-floor IMAGE.elf 'CMDLINE' [MEM_MIB]
 *
 * A minimal KVM VMM (libc and <linux/kvm.h> only) that builds the same
 * machine tsvisor builds for a multiboot v1 image (src/vm.ts,
 * src/boot/multiboot.ts, src/boot/cpu-state.ts, src/kvm/cpuid.ts): RAM below
 * the PCI hole (default 64 MiB), in-kernel irqchip with the PC's GSI routing,
 * PIT2 with the speaker dummy, CPUID as KVM supports it with tsvisor's
 * fix-ups (APIC ID, hypervisor bit, no PMU, CX16 hidden on kvm_pvm), LAPIC
 * LINT0 ExtINT / LINT1 NMI, the multiboot information with command line and
 * memory map at the same addresses, flat 32-bit protected-mode entry.
 *
 * Then it runs the vCPU on the calling thread doing the least userspace work
 * per exit: COM1 THR writes go to stdout (LCR.DLAB tracked so divisor writes
 * are not printed), LSR reads say "transmitter empty", a write to 0xf4 ends
 * the run with status (code << 1) | 1; other port reads return all-ones,
 * MMIO reads all-ones (what tsvisor returns for unclaimed MMIO), writes are
 * ignored. HLT ends the run with 0 (tsvisor: power-off), KVM_EXIT_SHUTDOWN
 * with 3, an emulation failure with 4 (no instruction is completed here), any
 * other internal error or exit with 5.
 *
 * Last line on stderr:
 *   exit-floor: exits=N run_ns=T tsc_khz=K
 * N: KVM_RUN returns with an exit; T: CLOCK_MONOTONIC ns around the whole
 * run loop; K: KVM_GET_TSC_KHZ of the vCPU, -1 if the host lacks it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MiB (1024ull * 1024)
/* Guest layout, as src/boot/layout.ts. */
#define GDT_ADDR 0x500ull
#define IDT_ADDR 0x520ull
#define MULTIBOOT_INFO_ADDR 0x6000ull
#define CMDLINE_ADDR 0x20000ull
#define CMDLINE_MAX 0x10000ull
#define EBDA_START 0x9fc00ull
#define BIOS_AREA_END 0x100000ull
#define HIGH_MEMORY 0x100000ull
#define PCI_HOLE_START 0xc0000000ull
#define PCI_HOLE_END 0x100000000ull
#define KVM_IDENTITY_MAP_ADDR 0xfeffc000ull
#define KVM_TSS_ADDR 0xfeffd000ull

#define MULTIBOOT_HEADER_MAGIC 0x1badb002u
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2badb002u
#define MULTIBOOT_SEARCH 8192
#define MB_FLAG_AOUT_KLUDGE (1u << 16)
#define MBI_MEMORY (1u << 0)
#define MBI_CMDLINE (1u << 2)
#define MBI_MMAP (1u << 6)
#define MBI_LOADER_NAME (1u << 9)

#define COM1_THR 0x3f8
#define COM1_LCR 0x3fb
#define COM1_LSR 0x3fd
#define UART_LCR_DLAB 0x80
#define UART_LSR_THRE_TEMT 0x60
#define DEBUG_EXIT_PORT 0xf4

#define CPUID_1_ECX_CX16 (1u << 13)
#define CPUID_1_ECX_HYPERVISOR (1u << 31)
#define MAX_CPUID_ENTRIES 256
#define IOAPIC_PINS 24

static int fail(const char *what)
{
  fprintf(stderr, "exit-floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int xioctl(int fd, unsigned long req, unsigned long arg, const char *name)
{
  int r = ioctl(fd, req, arg);
  if (r < 0)
    fail(name);
  return r;
}

static uint8_t *ram;
static uint64_t mem_bytes;

/* Host pointer for guest range [gpa, gpa+len) inside low RAM, or NULL. */
static uint8_t *guest(uint64_t gpa, uint64_t len)
{
  uint64_t low = mem_bytes < PCI_HOLE_START ? mem_bytes : PCI_HOLE_START;
  if (gpa > low || len > low - gpa)
    return NULL;
  return ram + gpa;
}

static void put32(uint64_t gpa, uint32_t v) { memcpy(guest(gpa, 4), &v, 4); }
static void put64(uint64_t gpa, uint64_t v) { memcpy(guest(gpa, 8), &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static void place(uint64_t addr, const uint8_t *data, uint64_t filesz, uint64_t memsz)
{
  uint8_t *dst = guest(addr, memsz);
  if (!dst) {
    fprintf(stderr, "exit-floor: segment at 0x%llx (+%llu) lies outside guest RAM; raise MEM_MIB\n",
            (unsigned long long)addr, (unsigned long long)memsz);
    exit(2);
  }
  memcpy(dst, data, filesz);
  memset(dst + filesz, 0, memsz - filesz);
}

static void bad_image(const char *why)
{
  fprintf(stderr, "exit-floor: not a loadable multiboot image: %s\n", why);
  exit(1);
}

/* Loads the image; returns the entry point. */
static uint32_t load_multiboot(const uint8_t *img, size_t size)
{
  size_t limit = (size < MULTIBOOT_SEARCH ? size : MULTIBOOT_SEARCH);
  size_t off;
  uint32_t flags = 0;
  for (off = 0; off + 12 <= limit; off += 4) {
    flags = get32(img + off + 4);
    if (get32(img + off) == MULTIBOOT_HEADER_MAGIC && MULTIBOOT_HEADER_MAGIC + flags + get32(img + off + 8) == 0)
      break;
  }
  if (off + 12 > limit)
    bad_image("no multiboot header in the first 8 KiB");
  uint64_t end = 0;
  uint32_t entry;
  if (flags & MB_FLAG_AOUT_KLUDGE) {
    if (off + 32 > size)
      bad_image("truncated multiboot header");
    uint32_t header_addr = get32(img + off + 12), load_addr = get32(img + off + 16);
    uint32_t load_end = get32(img + off + 20), bss_end = get32(img + off + 24);
    int64_t file_start = (int64_t)off - ((int64_t)header_addr - load_addr);
    uint64_t lend = load_end ? load_end : load_addr + (size - file_start);
    if (file_start < 0 || lend < load_addr || file_start + (lend - load_addr) > size)
      bad_image("load addresses do not match the file");
    uint64_t bend = bss_end > lend ? bss_end : lend;
    place(load_addr, img + file_start, lend - load_addr, bend - load_addr);
    entry = get32(img + off + 28);
    end = bend;
  } else {
    if (size < 52 || memcmp(img, "\x7f" "ELF", 4))
      bad_image("not ELF and no load addresses");
    if (img[4] != 1 || img[5] != 1 || get16(img + 18) != 3)
      bad_image("multiboot ELF images must be 32-bit little-endian x86");
    entry = get32(img + 24);
    uint32_t phoff = get32(img + 28);
    uint16_t phentsize = get16(img + 42), phnum = get16(img + 44);
    if (phnum == 0 || phentsize < 32 || (uint64_t)phoff + (uint64_t)phnum * phentsize > size)
      bad_image("program headers outside the file");
    for (unsigned i = 0; i < phnum; i++) {
      const uint8_t *ph = img + phoff + i * phentsize;
      if (get32(ph) != 1 /* PT_LOAD */)
        continue;
      uint32_t offset = get32(ph + 4), paddr = get32(ph + 12), filesz = get32(ph + 16), memsz = get32(ph + 20);
      if ((uint64_t)offset + filesz > size || memsz < filesz)
        bad_image("segment outside the file");
      if (memsz == 0)
        continue;
      place(paddr, img + offset, filesz, memsz);
      if ((uint64_t)paddr + memsz > end)
        end = (uint64_t)paddr + memsz;
    }
  }
  if (end > (mem_bytes < PCI_HOLE_START ? mem_bytes : PCI_HOLE_START)) {
    fprintf(stderr, "exit-floor: the image needs more RAM; raise MEM_MIB\n");
    exit(2);
  }
  return entry;
}

/* Multiboot information with memory, command line, memory map, loader name. */
static void write_mbi(const char *cmdline)
{
  uint64_t low_end = mem_bytes < PCI_HOLE_START ? mem_bytes : PCI_HOLE_START;
  size_t clen = strlen(cmdline);
  if (clen >= CMDLINE_MAX) {
    fprintf(stderr, "exit-floor: the command line is too long; shorten it\n");
    exit(2);
  }
  memcpy(guest(CMDLINE_ADDR, clen + 1), cmdline, clen + 1);
  struct { uint64_t addr, size; uint32_t type; } map[4];
  int n = 0;
  map[n++] = (typeof(map[0])){0, EBDA_START, 1};
  map[n++] = (typeof(map[0])){EBDA_START, BIOS_AREA_END - EBDA_START, 2};
  map[n++] = (typeof(map[0])){HIGH_MEMORY, low_end - HIGH_MEMORY, 1};
  if (mem_bytes > PCI_HOLE_START)
    map[n++] = (typeof(map[0])){PCI_HOLE_END, mem_bytes - PCI_HOLE_START, 1};
  uint64_t info = MULTIBOOT_INFO_ADDR, mmap_addr = info + 0x80, name_addr = mmap_addr + n * 24;
  memset(guest(info, 0x80), 0, 0x80);
  put32(info, MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME);
  put32(info + 4, 640);
  put32(info + 8, (uint32_t)((low_end - HIGH_MEMORY) / 1024));
  put32(info + 16, CMDLINE_ADDR);
  put32(info + 44, n * 24);
  put32(info + 48, (uint32_t)mmap_addr);
  put32(info + 64, (uint32_t)name_addr);
  for (int i = 0; i < n; i++) {
    uint64_t o = mmap_addr + i * 24;
    put32(o, 20);
    put64(o + 4, map[i].addr);
    put64(o + 12, map[i].size);
    put32(o + 20, map[i].type);
  }
  memcpy(guest(name_addr, 11), "exit-floor", 11);
}

/* The classic GDT descriptor encoding, and the segment register it loads. */
static uint64_t gdt_entry(uint32_t flags, uint32_t base, uint32_t limit)
{
  return ((uint64_t)(base & 0xff000000u) << 32) | ((uint64_t)(flags & 0xf0ffu) << 40) |
         ((uint64_t)(limit & 0x000f0000u) << 32) | ((uint64_t)(base & 0x00ffffffu) << 16) | (limit & 0xffffu);
}

static struct kvm_segment segment_from(uint64_t e, int index)
{
  uint32_t flags = (uint32_t)((e >> 40) & 0xf0ff);
  uint32_t limit_raw = (uint32_t)(((e >> 32) & 0xf0000) | (e & 0xffff));
  struct kvm_segment s = {0};
  s.g = (flags >> 15) & 1;
  s.base = ((e >> 16) & 0xffffff) | (((e >> 56) & 0xff) << 24);
  s.limit = s.g ? limit_raw * 4096 + 0xfff : limit_raw;
  s.selector = (uint16_t)(index * 8);
  s.type = flags & 0xf;
  s.present = (flags >> 7) & 1;
  s.dpl = (flags >> 5) & 3;
  s.db = (flags >> 14) & 1;
  s.s = (flags >> 4) & 1;
  s.l = (flags >> 13) & 1;
  s.avl = (flags >> 12) & 1;
  return s;
}

/* Flat 32-bit protected mode, paging off; EAX = bootloader magic, EBX = info. */
static void enter_protected_mode(int vcpu, uint32_t entry)
{
  uint64_t gdt[5] = {0, 0, gdt_entry(0xc09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)};
  for (int i = 0; i < 5; i++)
    put64(GDT_ADDR + i * 8, gdt[i]);
  put64(IDT_ADDR, 0);
  struct kvm_sregs sregs;
  xioctl(vcpu, KVM_GET_SREGS, (unsigned long)&sregs, "KVM_GET_SREGS");
  struct kvm_segment cs = segment_from(gdt[2], 2), ds = segment_from(gdt[3], 3);
  sregs.cs = cs;
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = ds;
  sregs.tr = segment_from(gdt[4], 4);
  sregs.gdt.base = GDT_ADDR;
  sregs.gdt.limit = 5 * 8 - 1;
  sregs.idt.base = IDT_ADDR;
  sregs.idt.limit = 7;
  sregs.cr0 = 1 | (1 << 4); /* PE | ET */
  sregs.cr3 = 0;
  sregs.cr4 = 0;
  sregs.efer = 0;
  xioctl(vcpu, KVM_SET_SREGS, (unsigned long)&sregs, "KVM_SET_SREGS");
  struct kvm_regs regs;
  xioctl(vcpu, KVM_GET_REGS, (unsigned long)&regs, "KVM_GET_REGS");
  regs.rip = entry;
  regs.rax = MULTIBOOT_BOOTLOADER_MAGIC;
  regs.rbx = MULTIBOOT_INFO_ADDR;
  regs.rflags = 2;
  xioctl(vcpu, KVM_SET_REGS, (unsigned long)&regs, "KVM_SET_REGS");
}

/* KVM's supported CPUID with tsvisor's fix-ups (src/kvm/cpuid.ts). */
static void setup_cpuid(int kvm, int vcpu, int kvm_pvm)
{
  struct kvm_cpuid2 *c = calloc(1, sizeof *c + MAX_CPUID_ENTRIES * sizeof(struct kvm_cpuid_entry2));
  if (!c)
    fail("calloc");
  c->nent = MAX_CPUID_ENTRIES;
  xioctl(kvm, KVM_GET_SUPPORTED_CPUID, (unsigned long)c, "KVM_GET_SUPPORTED_CPUID");
  for (uint32_t i = 0; i < c->nent; i++) {
    struct kvm_cpuid_entry2 *e = &c->entries[i];
    switch (e->function) {
    case 1:
      e->ebx = (e->ebx & 0x0000ffff) | (1u << 16) | (0u << 24);
      e->ecx |= CPUID_1_ECX_HYPERVISOR;
      if (kvm_pvm)
        e->ecx &= ~CPUID_1_ECX_CX16;
      break;
    case 0xa:
      e->eax = e->ebx = e->ecx = e->edx = 0;
      break;
    case 0xb:
    case 0x1f:
      e->edx = 0;
      break;
    }
  }
  xioctl(vcpu, KVM_SET_CPUID2, (unsigned long)c, "KVM_SET_CPUID2");
  free(c);
}

/* The PC's routing: GSI 0 to IOAPIC pin 2 (src/firmware/mptable.ts pcGsiRoutes). */
static void setup_gsi_routing(int vm)
{
  struct kvm_irq_routing *r = calloc(1, sizeof *r + 64 * sizeof(struct kvm_irq_routing_entry));
  if (!r)
    fail("calloc");
  uint32_t n = 0;
  for (uint32_t i = 0; i < 16; i++) {
    if (i == 2)
      continue;
    r->entries[n].gsi = i;
    r->entries[n].type = KVM_IRQ_ROUTING_IRQCHIP;
    r->entries[n].u.irqchip.irqchip = i < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
    r->entries[n++].u.irqchip.pin = i % 8;
  }
  for (uint32_t i = 0; i < IOAPIC_PINS; i++) {
    if (i == 2)
      continue;
    r->entries[n].gsi = i;
    r->entries[n].type = KVM_IRQ_ROUTING_IRQCHIP;
    r->entries[n].u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
    r->entries[n++].u.irqchip.pin = i == 0 ? 2 : i;
  }
  r->nr = n;
  xioctl(vm, KVM_SET_GSI_ROUTING, (unsigned long)r, "KVM_SET_GSI_ROUTING");
  free(r);
}

/* LVT LINT0 ExtINT, LINT1 NMI, as a PC's BIOS leaves them. */
static void setup_lapic_lints(int vcpu)
{
  struct kvm_lapic_state l;
  xioctl(vcpu, KVM_GET_LAPIC, (unsigned long)&l, "KVM_GET_LAPIC");
  uint32_t lvt0, lvt1;
  memcpy(&lvt0, l.regs + 0x350, 4);
  memcpy(&lvt1, l.regs + 0x360, 4);
  lvt0 = (lvt0 & ~0x700u) | (0x7u << 8);
  lvt1 = (lvt1 & ~0x700u) | (0x4u << 8);
  memcpy(l.regs + 0x350, &lvt0, 4);
  memcpy(l.regs + 0x360, &lvt1, 4);
  xioctl(vcpu, KVM_SET_LAPIC, (unsigned long)&l, "KVM_SET_LAPIC");
}

static uint8_t *read_file(const char *path, size_t *size)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) {
    fprintf(stderr, "exit-floor: cannot read %s: %s\n", path, strerror(errno));
    exit(2);
  }
  uint8_t *buf = malloc(st.st_size ? st.st_size : 1);
  size_t got = 0;
  while (buf && got < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + got, st.st_size - got);
    if (r <= 0)
      fail("read");
    got += r;
  }
  close(fd);
  *size = got;
  return buf;
}

int main(int argc, char **argv)
{
  if (argc < 3 || argc > 4) {
    fprintf(stderr, "usage: exit-floor IMAGE.elf 'CMDLINE' [MEM_MIB]\n");
    return 2;
  }
  unsigned long mem_mib = 64;
  if (argc == 4) {
    char *endp;
    mem_mib = strtoul(argv[3], &endp, 10);
    if (*endp || mem_mib < 8 || mem_mib > 1024 * 1024) {
      fprintf(stderr, "exit-floor: MEM_MIB %s is not a size in MiB >= 8; give e.g. 64\n", argv[3]);
      return 2;
    }
  }
  mem_bytes = mem_mib * MiB;
  size_t img_size;
  uint8_t *img = read_file(argv[1], &img_size);

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0)
    fail("open /dev/kvm");
  if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
    fprintf(stderr, "exit-floor: unexpected KVM API version\n");
    return 1;
  }
  int kvm_pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
  int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");

  ram = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED)
    fail("mmap guest RAM");
  struct kvm_userspace_memory_region region = {.slot = 0, .guest_phys_addr = 0,
                                               .memory_size = mem_bytes < PCI_HOLE_START ? mem_bytes : PCI_HOLE_START,
                                               .userspace_addr = (uint64_t)(uintptr_t)ram};
  xioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");
  if (mem_bytes > PCI_HOLE_START) {
    region.slot = 1;
    region.guest_phys_addr = PCI_HOLE_END;
    region.memory_size = mem_bytes - PCI_HOLE_START;
    region.userspace_addr = (uint64_t)(uintptr_t)(ram + PCI_HOLE_START);
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");
  }
  xioctl(vm, KVM_SET_TSS_ADDR, KVM_TSS_ADDR, "KVM_SET_TSS_ADDR");
  uint64_t idmap = KVM_IDENTITY_MAP_ADDR;
  xioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, (unsigned long)&idmap, "KVM_SET_IDENTITY_MAP_ADDR");
  xioctl(vm, KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
  setup_gsi_routing(vm);
  struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
  xioctl(vm, KVM_CREATE_PIT2, (unsigned long)&pit, "KVM_CREATE_PIT2");

  int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
  int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED)
    fail("mmap kvm_run");
  long tsc_khz = ioctl(vcpu, KVM_GET_TSC_KHZ, 0);
  if (tsc_khz <= 0)
    tsc_khz = -1;

  uint32_t entry = load_multiboot(img, img_size);
  free(img);
  write_mbi(argv[2]);
  setup_cpuid(kvm, vcpu, kvm_pvm);
  setup_lapic_lints(vcpu);
  enter_protected_mode(vcpu, entry);

  static char outbuf[1 << 16];
  setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
  uint8_t *const page = (uint8_t *)run;
  uint8_t lcr = 0;
  uint64_t exits = 0;
  int status = -1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (status < 0) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      fprintf(stderr, "exit-floor: KVM_RUN failed: %s\n", strerror(errno));
      status = 1;
      break;
    }
    exits++;
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      uint32_t size = run->io.size, count = run->io.count;
      uint64_t off = run->io.data_offset;
      if ((size != 1 && size != 2 && size != 4) || off > (uint64_t)run_size || (uint64_t)size * count > run_size - off)
        break;
      uint8_t *data = page + off;
      uint16_t port = run->io.port;
      if (run->io.direction == KVM_EXIT_IO_OUT) {
        if (port == COM1_THR && !(lcr & UART_LCR_DLAB)) {
          for (uint32_t i = 0; i < count; i++)
            putchar_unlocked(data[i * size]);
        } else if (port == COM1_LCR) {
          lcr = data[(count - 1) * size];
        } else if (port == DEBUG_EXIT_PORT) {
          status = ((data[0] << 1) | 1) & 0xff;
        }
      } else {
        memset(data, 0xff, (size_t)size * count);
        if (port == COM1_LSR)
          for (uint32_t i = 0; i < count; i++)
            data[i * size] = UART_LSR_THRE_TEMT;
      }
      break;
    }
    case KVM_EXIT_MMIO:
      if (!run->mmio.is_write)
        memset(run->mmio.data, 0xff, sizeof run->mmio.data);
      break;
    case KVM_EXIT_INTR:
      break;
    case KVM_EXIT_HLT:
      fprintf(stderr, "exit-floor: the guest halted with interrupts off\n");
      status = 0;
      break;
    case KVM_EXIT_SHUTDOWN:
      fprintf(stderr, "exit-floor: the guest triple-faulted (KVM_EXIT_SHUTDOWN)\n");
      status = 3;
      break;
    case KVM_EXIT_INTERNAL_ERROR:
      fprintf(stderr, "exit-floor: KVM internal error, suberror %u%s\n", run->internal.suberror,
              run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? " (emulation failure)" : "");
      status = run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? 4 : 5;
      break;
    default:
      fprintf(stderr, "exit-floor: unexpected exit reason %u\n", run->exit_reason);
      status = 5;
      break;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  fflush(stdout);
  long long run_ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec);
  fprintf(stderr, "exit-floor: exits=%llu run_ns=%lld tsc_khz=%ld\n", (unsigned long long)exits, run_ns, tsc_khz);
  return status;
}
