/* Bump allocator over the RAM above the image. */
#include "fw.h"

extern char _end[];
static uintptr_t next, limit;

#define ALLOC_CAP     0xC0000000u        /* stay below the PCI window */
#define ALLOC_DEFAULT (16u << 20)        /* no memory info: assume 16 MiB above _end */

void fw_alloc_init(void)
{
  next = ((uintptr_t)_end + 4095) & ~(uintptr_t)4095;
  uint64_t top = fw_mem_upper_kib() ? 0x100000ull + (uint64_t)fw_mem_upper_kib() * 1024
                                    : (uint64_t)next + ALLOC_DEFAULT;
  limit = top > ALLOC_CAP ? ALLOC_CAP : (uintptr_t)top;
}

void *fw_alloc_raw(size_t size, size_t align)
{
  if (align < 8)
    align = 8;
  uintptr_t p = (next + align - 1) & ~(uintptr_t)(align - 1);
  if (p < next || size > limit || p > limit - size)
    fw_panic("fw_alloc: %zu bytes (align %zu) do not fit below 0x%lx", size, align, (unsigned long)limit);
  next = p + size;
  return (void *)p;
}

void *fw_alloc(size_t size, size_t align)
{
  return memset(fw_alloc_raw(size, align), 0, size);
}

uintptr_t fw_alloc_next(void) { return next; }
uintptr_t fw_alloc_limit(void) { return limit; }

/* Frees everything allocated since mark (a value of fw_alloc_next()). */
void fw_alloc_rewind(uintptr_t mark)
{
  if (mark >= ((uintptr_t)_end + 4095) / 4096 * 4096 && mark <= next)
    next = mark;
}
