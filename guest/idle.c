/* /bin/tsvisor-idle: an init for hosts where guest user space cannot make
 * system calls (kvm_pvm). It makes none while it runs: it spins for the TSC
 * cycles given as tsvisor_idle_cycles=N on the kernel command line (which the
 * kernel passes to init as an environment variable), so the guest kernel
 * stays up — answering ARP, ping and TCP on its own — and then exits. On
 * kvm_pvm that exit faults and the kernel panics; on hardware KVM init exits;
 * either way panic=-1 ends the run with a reboot.
 * Built freestanding (no libc): gcc -static -nostdlib -O2. */
typedef unsigned long u64;

static u64 rdtsc(void)
{
  unsigned lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}

static u64 idle_cycles(char **envp)
{
  static const char key[] = "tsvisor_idle_cycles=";
  for (; *envp; envp++) {
    const char *s = *envp;
    int i = 0;
    while (key[i] && s[i] == key[i]) i++;
    if (key[i]) continue;
    u64 n = 0;
    for (s += i; *s >= '0' && *s <= '9'; s++) n = n * 10 + (u64)(*s - '0');
    return n;
  }
  return 0;
}

__attribute__((noreturn, used)) void idle_main(u64 *sp)
{
  long argc = (long)sp[0];
  char **envp = (char **)(sp + 1 + argc + 1);
  u64 end = rdtsc() + idle_cycles(envp);
  while (rdtsc() < end) __asm__ volatile("pause");
  for (;;) __asm__ volatile("syscall" : : "a"(60), "D"(0) : "rcx", "r11", "memory");
}

__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call idle_main\n");
