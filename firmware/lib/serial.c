/* COM1 16550A, polled: wait for LSR.THRE before every byte. Two exits per byte. */
#include "fw.h"

#define UART_THR 0   /* transmit holding (DLAB=0) */
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_DLL 0   /* divisor latch (DLAB=1) */
#define UART_DLM 1
#define UART_LCR_DLAB 0x80
#define UART_LCR_8N1  0x03
#define UART_LSR_THRE 0x20
#define THRE_POLL_LIMIT 100000   /* give up waiting (no UART at all reads 0xff/0x00) */

void serial_init(void)
{
  outb(COM1_PORT + UART_IER, 0x00);              /* no interrupts */
  outb(COM1_PORT + UART_LCR, UART_LCR_DLAB);
  outb(COM1_PORT + UART_DLL, 0x01);              /* 115200 baud */
  outb(COM1_PORT + UART_DLM, 0x00);
  outb(COM1_PORT + UART_LCR, UART_LCR_8N1);
  outb(COM1_PORT + UART_FCR, 0x07);              /* FIFO on, cleared */
}

void serial_putc(char c)
{
  for (int i = 0; i < THRE_POLL_LIMIT; i++)
    if (inb(COM1_PORT + UART_LSR) & UART_LSR_THRE)
      break;
  outb(COM1_PORT + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t n)
{
  while (n--)
    serial_putc(*s++);
}

void serial_puts(const char *s)
{
  while (*s)
    serial_putc(*s++);
}
