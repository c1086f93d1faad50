/* printf-lite: %c %s %d %i %u %x %X %p %%, length modifiers l ll z,
 * flags '0' and '-', a field width (digits or '*'). No precision, no floats. */
#include "fw.h"

struct sink {
  char *buf;        /* NULL: serial */
  size_t size, len;
};

static void emit(struct sink *k, char c)
{
  if (!k->buf)
    serial_putc(c);
  else if (k->len + 1 < k->size)
    k->buf[k->len] = c;
  k->len++;
}

static void emit_padded(struct sink *k, const char *s, size_t n, int width, bool left, char pad)
{
  int fill = width > (int)n ? width - (int)n : 0;
  if (!left && pad == '0' && n && (*s == '-')) {   /* "-0012", not "00-12" */
    emit(k, *s++);
    n--;
  }
  if (!left)
    while (fill--)
      emit(k, pad);
  while (n--)
    emit(k, *s++);
  if (left)
    while (fill-- > 0)
      emit(k, ' ');
}

static int format(struct sink *k, const char *fmt, va_list ap)
{
  static const char digits_lower[] = "0123456789abcdef", digits_upper[] = "0123456789ABCDEF";
  for (; *fmt; fmt++) {
    if (*fmt != '%') {
      emit(k, *fmt);
      continue;
    }
    fmt++;
    bool left = false;
    char pad = ' ';
    for (;; fmt++) {
      if (*fmt == '-')
        left = true;
      else if (*fmt == '0')
        pad = '0';
      else
        break;
    }
    int width = 0;
    if (*fmt == '*') {
      width = va_arg(ap, int);
      fmt++;
    } else
      while (*fmt >= '0' && *fmt <= '9')
        width = width * 10 + (*fmt++ - '0');
    int lng = 0;   /* 0 int, 1 long, 2 long long, 3 size_t */
    if (*fmt == 'l') {
      lng = 1;
      if (*++fmt == 'l') {
        lng = 2;
        fmt++;
      }
    } else if (*fmt == 'z') {
      lng = 3;
      fmt++;
    }
    char tmp[24];
    const char *digits = digits_lower;
    unsigned base = 10;
    bool is_signed = false;
    uint64_t v;
    switch (*fmt) {
    case '\0':
      return (int)k->len;
    case '%':
      emit(k, '%');
      continue;
    case 'c':
      tmp[0] = (char)va_arg(ap, int);
      emit_padded(k, tmp, 1, width, left, ' ');
      continue;
    case 's': {
      const char *s = va_arg(ap, const char *);
      if (!s)
        s = "(null)";
      emit_padded(k, s, strlen(s), width, left, ' ');
      continue;
    }
    case 'p':
      v = (uintptr_t)va_arg(ap, void *);
      emit(k, '0');
      emit(k, 'x');
      base = 16;
      goto number;
    case 'd':
    case 'i':
      is_signed = true;
      break;
    case 'u':
      break;
    case 'X':
      digits = digits_upper;
      /* fall through */
    case 'x':
      base = 16;
      break;
    default:   /* unknown conversion: print it as is */
      emit(k, '%');
      emit(k, *fmt);
      continue;
    }
    if (is_signed) {
      int64_t sv = lng == 2 ? va_arg(ap, long long) : lng == 1 ? va_arg(ap, long)
                 : lng == 3 ? (int64_t)va_arg(ap, size_t) : va_arg(ap, int);
      v = sv < 0 ? -(uint64_t)sv : (uint64_t)sv;
      is_signed = sv < 0;
    } else {
      v = lng == 2 ? va_arg(ap, unsigned long long) : lng == 1 ? va_arg(ap, unsigned long)
        : lng == 3 ? va_arg(ap, size_t) : va_arg(ap, unsigned int);
    }
  number: {
    char *p = tmp + sizeof tmp;
    do {
      uint32_t r;
      v = fw_udiv64(v, base, &r);
      *--p = digits[r];
    } while (v);
    if (is_signed)
      *--p = '-';
    emit_padded(k, p, (size_t)(tmp + sizeof tmp - p), width, left, pad);
  }
  }
  return (int)k->len;
}

int vprintf(const char *fmt, va_list ap)
{
  struct sink k = { 0, 0, 0 };
  return format(&k, fmt, ap);
}

int printf(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int n = vprintf(fmt, ap);
  va_end(ap);
  return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
  struct sink k = { buf, size, 0 };
  int n = format(&k, fmt, ap);
  if (size)
    buf[k.len < size ? k.len : size - 1] = '\0';
  return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}
