/* Runtime entry, exit, panic, and the few libc pieces gcc may call. */
#include "fw.h"

void fw_multiboot_init(uint32_t magic, uint32_t mbi);
void fw_args_init(void);
void fw_alloc_init(void);

FW_NORETURN void fw_start(uint32_t magic, uint32_t mbi);

void fw_start(uint32_t magic, uint32_t mbi)
{
  serial_init();
  fw_multiboot_init(magic, mbi);
  fw_args_init();
  fw_alloc_init();
  int rc = main(magic, mbi);
  debug_exit((uint8_t)rc);
}

void debug_exit(uint8_t code)
{
  outb(FW_DEBUG_EXIT_PORT, code);
  /* No isa-debug-exit device: park the CPU (interrupts off, so a VMM sees a
   * HLT exit and can stop the guest). */
  for (;;)
    __asm__ volatile("cli; hlt");
}

void fw_panic(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  serial_puts("panic: ");
  vprintf(fmt, ap);
  va_end(ap);
  serial_putc('\n');
  debug_exit(FW_EXIT_PANIC);
}

/* memset/memcpy: the bulk moves 4 bytes per `rep stosl`/`rep movsl` step
 * (on kvm_pvm every guest instruction is emulated; a byte loop costs ~4
 * instructions per byte). */
void *memset(void *d, int c, size_t n)
{
  uint8_t *p = d;
  while (n && ((uintptr_t)p & 3)) {
    *p++ = (uint8_t)c;
    n--;
  }
  if (n >= 4) {
    size_t k = n / 4;
    uint32_t w = 0x01010101u * (uint8_t)c;
    __asm__ volatile("rep stosl" : "+D"(p), "+c"(k) : "a"(w) : "memory");
    n &= 3;
  }
  while (n--)
    *p++ = (uint8_t)c;
  return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
  uint8_t *p = d;
  const uint8_t *q = s;
  if (n >= 16 && !(((uintptr_t)p | (uintptr_t)q) & 3)) {
    size_t k = n / 4;
    __asm__ volatile("rep movsl" : "+D"(p), "+S"(q), "+c"(k) : : "memory");
    n &= 3;
  }
  while (n--)
    *p++ = *q++;
  return d;
}

void *memmove(void *d, const void *s, size_t n)
{
  uint8_t *p = d;
  const uint8_t *q = s;
  if (p <= q || p >= q + n)
    return memcpy(d, s, n);
  while (n--)
    p[n] = q[n];
  return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
  const uint8_t *p = a, *q = b;
  for (; n; n--, p++, q++)
    if (*p != *q)
      return *p - *q;
  return 0;
}

size_t strlen(const char *s)
{
  size_t n = 0;
  while (s[n])
    n++;
  return n;
}

int strcmp(const char *a, const char *b)
{
  while (*a && *a == *b)
    a++, b++;
  return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
  for (; n; n--, a++, b++) {
    if (*a != *b)
      return (uint8_t)*a - (uint8_t)*b;
    if (!*a)
      break;
  }
  return 0;
}

bool fw_parse_u64(const char *s, uint64_t *out, const char **end)
{
  uint64_t v = 0;
  unsigned base = 10;
  bool any = false;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s += 2;
  }
  for (;; s++) {
    unsigned d;
    if (*s >= '0' && *s <= '9')
      d = *s - '0';
    else if (base == 16 && *s >= 'a' && *s <= 'f')
      d = *s - 'a' + 10;
    else if (base == 16 && *s >= 'A' && *s <= 'F')
      d = *s - 'A' + 10;
    else
      break;
    v = v * base + d;
    any = true;
  }
  if (end)
    *end = s;
  *out = v;
  return any;
}

uint64_t fw_udiv64(uint64_t n, uint32_t d, uint32_t *rem)
{
#ifdef __x86_64__
  if (rem)
    *rem = (uint32_t)(n % d);
  return n / d;
#else
  uint32_t hi = (uint32_t)(n >> 32), lo = (uint32_t)n;
  uint32_t qhi = hi / d, r = hi % d, qlo;
  /* r < d, so the 64/32 divide cannot overflow. */
  __asm__("divl %4" : "=a"(qlo), "=d"(r) : "a"(lo), "d"(r), "rm"(d));
  if (rem)
    *rem = r;
  return ((uint64_t)qhi << 32) | qlo;
#endif
}
