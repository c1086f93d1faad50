// The KVM userspace ABI for x86-64: ioctl numbers and struct layouts from
// <linux/kvm.h>, named as there. Layouts are byte offsets into native buffers.

const KVMIO = 0xae;
const IOC_NONE = 0, IOC_WRITE = 1, IOC_READ = 2;
function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
}
const IO = (nr: number) => ioc(IOC_NONE, nr, 0);
const IOR = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const IOW = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const IOWR = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

export const KVM_API_VERSION = 12;

// System ioctls
export const KVM_GET_API_VERSION = IO(0x00);
export const KVM_CREATE_VM = IO(0x01);
export const KVM_CHECK_EXTENSION = IO(0x03);
export const KVM_GET_VCPU_MMAP_SIZE = IO(0x04);
export const KVM_GET_SUPPORTED_CPUID = IOWR(0x05, 8);
// VM ioctls
export const KVM_CREATE_VCPU = IO(0x41);
export const KVM_SET_USER_MEMORY_REGION = IOW(0x46, 32);
export const KVM_SET_TSS_ADDR = IO(0x47);
export const KVM_SET_IDENTITY_MAP_ADDR = IOW(0x48, 8);
export const KVM_CREATE_IRQCHIP = IO(0x60);
export const KVM_IRQ_LINE = IOW(0x61, 8);
/** struct kvm_irqchip { __u32 chip_id, pad; union { char dummy[512]; struct kvm_pic_state pic; … } chip; } */
export const KVM_GET_IRQCHIP = IOWR(0x62, 520);
export const KVM_SET_IRQCHIP = IOR(0x63, 520);
export const KVM_IRQCHIP_PIC_MASTER = 0;
export const KVM_IRQCHIP_PIC_SLAVE = 1;
/** struct kvm_pic_state's irq_base (the vector of IRQ 0 of that 8259), at this offset in kvm_irqchip. */
export const KVM_PIC_STATE_IRQ_BASE = 8 + 5;
export const KVM_SET_GSI_ROUTING = IOW(0x6a, 8);
/** struct kvm_reinject_control { __u8 pit_reinject; __u8 reserved[31]; } — an _IO number in <linux/kvm.h>, though it takes the struct. */
export const KVM_REINJECT_CONTROL = IO(0x71);
export const KVM_IRQFD = IOW(0x76, 32);
export const KVM_CREATE_PIT2 = IOW(0x77, 64);
export const KVM_IOEVENTFD = IOW(0x79, 64);
export const KVM_SIGNAL_MSI = IOW(0xa5, 32);
// vCPU ioctls
export const KVM_RUN = IO(0x80);
export const KVM_GET_REGS = IOR(0x81, 144);
export const KVM_SET_REGS = IOW(0x82, 144);
export const KVM_GET_SREGS = IOR(0x83, 312);
export const KVM_SET_SREGS = IOW(0x84, 312);
export const KVM_GET_MSRS = IOWR(0x88, 8);
export const KVM_SET_MSRS = IOW(0x89, 8);
export const KVM_SET_CPUID2 = IOW(0x90, 8);
export const KVM_GET_LAPIC = IOR(0x8e, 1024);
export const KVM_SET_LAPIC = IOW(0x8f, 1024);
export const KVM_GET_VCPU_EVENTS = IOR(0x9f, 64);
export const KVM_SET_VCPU_EVENTS = IOW(0xa0, 64);
export const KVM_GET_TSC_KHZ = IO(0xa3);
export const KVM_GET_MP_STATE = IOR(0x98, 4);
export const KVM_SET_GUEST_DEBUG = IOW(0x9b, 72);
export const KVM_MP_STATE_UNINITIALIZED = 1; // an AP before INIT/SIPI
export const KVM_MP_STATE_INIT_RECEIVED = 2;
export const KVM_MP_STATE_HALTED = 3;
export const X86_EFLAGS_IF = 1 << 9;

// Capabilities tsvisor relies on (KVM_CHECK_EXTENSION).
export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_HLT = 1;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_REINJECT_CONTROL = 24;
export const KVM_CAP_IRQ_ROUTING = 25;
export const KVM_CAP_IRQ_INJECT_STATUS = 26;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_SIGNAL_MSI = 77;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_NR_VCPUS = 9;   // vCPUs KVM recommends
export const KVM_CAP_MAX_VCPUS = 66; // vCPUs KVM allows

// Exit reasons (kvm_run.exit_reason)
export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HYPERCALL = 3;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_SYSTEM_EVENT = 24;

export const EXIT_REASON_NAMES: Record<number, string> = {
  0: 'UNKNOWN', 1: 'EXCEPTION', 2: 'IO', 3: 'HYPERCALL', 4: 'DEBUG', 5: 'HLT', 6: 'MMIO',
  7: 'IRQ_WINDOW_OPEN', 8: 'SHUTDOWN', 9: 'FAIL_ENTRY', 10: 'INTR', 17: 'INTERNAL_ERROR', 24: 'SYSTEM_EVENT',
};

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1;

/** struct kvm_run (the part tsvisor reads), offsets in bytes. */
export const RUN = {
  immediate_exit: 1,
  exit_reason: 8,
  if_flag: 13,
  // union, from offset 32
  io_direction: 32,
  io_size: 33,
  io_port: 34,
  io_count: 36,
  io_data_offset: 40,
  mmio_phys_addr: 32,
  mmio_data: 40,
  mmio_len: 48,
  mmio_is_write: 52,
  internal_suberror: 32,
  internal_ndata: 36,
  internal_data: 40,
  emulation_flags: 40,
  emulation_insn_size: 48,
  emulation_insn_bytes: 49,
  fail_entry_reason: 32,
  system_event_type: 32,
  // struct kvm_debug_exit_arch { u32 exception; u32 pad; u64 pc; u64 dr6; u64 dr7; }
  debug_exception: 32,
  debug_pc: 40,
  debug_dr6: 48,
  debug_dr7: 56,
} as const;

/** struct kvm_regs: 18 u64 in this order. */
export const REGS_SIZE = 144;
export const REG = {
  rax: 0, rbx: 8, rcx: 16, rdx: 24, rsi: 32, rdi: 40, rsp: 48, rbp: 56,
  r8: 64, r9: 72, r10: 80, r11: 88, r12: 96, r13: 104, r14: 112, r15: 120,
  rip: 128, rflags: 136,
} as const;

/** struct kvm_segment: 24 bytes; struct kvm_sregs holds eight of them first. */
export const SEGMENT_SIZE = 24;
export const SREGS_SIZE = 312;
export const SREG = {
  cs: 0, ds: 24, es: 48, fs: 72, gs: 96, ss: 120, tr: 144, ldt: 168,
  gdt: 192, idt: 208, // struct kvm_dtable { u64 base; u16 limit; u16 padding[3]; }
  cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apic_base: 272,
} as const;

/** struct kvm_msrs: u32 nmsrs, u32 pad, then struct kvm_msr_entry { u32 index; u32 reserved; u64 data; } each. */
export const MSRS_HEADER_SIZE = 8;
export const MSR_ENTRY_SIZE = 16;

/** struct kvm_guest_debug: u32 control, u32 pad, then struct kvm_guest_debug_arch { u64 debugreg[8]; }. */
export const GUEST_DEBUG_SIZE = 72;
export const GUEST_DEBUG = { control: 0, debugreg: 8 } as const;
export const KVM_GUESTDBG_ENABLE = 0x1;
export const KVM_GUESTDBG_SINGLESTEP = 0x2;
export const KVM_GUESTDBG_USE_HW_BP = 0x20000;

/** struct kvm_vcpu_events (64 bytes): the exception part. */
export const EVENTS_SIZE = 64;
export const EVENTS = {
  exception_injected: 0,
  exception_nr: 1,
  exception_has_error_code: 2,
  exception_pending: 3,
  exception_error_code: 4,
  flags: 44,
} as const;

export const X86_EFLAGS_AC = 1 << 18;
