/* Multiboot v1 info and command-line arguments. */
#include "fw.h"

const struct multiboot_info *fw_mbi;

void fw_multiboot_init(uint32_t magic, uint32_t mbi)
{
  if (magic == MULTIBOOT_BOOTLOADER_MAGIC && mbi)
    fw_mbi = (const struct multiboot_info *)(uintptr_t)mbi;
  else
    printf("firmware: not started by a multiboot loader (eax=0x%x)\n", magic);
}

const char *fw_cmdline(void)
{
  if (fw_mbi && (fw_mbi->flags & MULTIBOOT_INFO_CMDLINE) && fw_mbi->cmdline)
    return (const char *)(uintptr_t)fw_mbi->cmdline;
  return "";
}

uint32_t fw_mem_upper_kib(void)
{
  if (fw_mbi && (fw_mbi->flags & MULTIBOOT_INFO_MEMORY))
    return fw_mbi->mem_upper;
  return 0;
}

#define ARGS_BUF 1024
#define ARGS_MAX 64
static char args_buf[ARGS_BUF];
static const char *arg_key[ARGS_MAX], *arg_val[ARGS_MAX];
static int arg_count;

/* Copies the command line and splits it in place into words, and words into
 * key and value at the first '='. */
void fw_args_init(void)
{
  const char *src = fw_cmdline();
  size_t n = strlen(src);
  if (n >= ARGS_BUF)
    n = ARGS_BUF - 1;
  memcpy(args_buf, src, n);
  args_buf[n] = '\0';
  char *p = args_buf;
  while (*p && arg_count < ARGS_MAX) {
    while (*p == ' ' || *p == '\t' || *p == '\n')
      *p++ = '\0';
    if (!*p)
      break;
    arg_key[arg_count] = p;
    arg_val[arg_count] = "";
    while (*p && *p != ' ' && *p != '\t' && *p != '\n') {
      if (*p == '=' && !*arg_val[arg_count]) {
        *p = '\0';
        arg_val[arg_count] = p + 1;
      }
      p++;
    }
    arg_count++;
  }
}

const char *fw_arg(const char *key)
{
  for (int i = arg_count - 1; i >= 0; i--)   /* last one wins */
    if (!strcmp(arg_key[i], key))
      return arg_val[i];
  return NULL;
}

const char *fw_arg_str(const char *key, const char *dflt)
{
  const char *v = fw_arg(key);
  return v ? v : dflt;
}

uint64_t fw_arg_u64(const char *key, uint64_t dflt)
{
  const char *v = fw_arg(key), *end;
  uint64_t n;
  if (!v)
    return dflt;
  if (!fw_parse_u64(v, &n, &end) || *end) {
    printf("firmware: bad number %s=%s\n", key, v);
    debug_exit(FW_EXIT_USAGE);
  }
  return n;
}
