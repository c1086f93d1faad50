/* 32-bit entry stubs for vectors 0..63: exceptions 0..31 and interrupts
 * 32..63. Each pushes a dummy error code where the CPU pushes none, then its
 * vector, and joins fw_trap_common,
 * which saves the general registers (struct fw_trap_frame) and calls fw_trap.
 * A handler may change the saved registers and EIP; iret resumes there. */
        .code32
        .text

#define TRAP_NOERR(n) \
        .balign 8; trap##n: pushl $0; pushl $n; jmp fw_trap_common
#define TRAP_ERR(n) \
        .balign 8; trap##n: pushl $n; jmp fw_trap_common

TRAP_NOERR(0);  TRAP_NOERR(1);  TRAP_NOERR(2);  TRAP_NOERR(3)
TRAP_NOERR(4);  TRAP_NOERR(5);  TRAP_NOERR(6);  TRAP_NOERR(7)
TRAP_ERR(8);    TRAP_NOERR(9);  TRAP_ERR(10);   TRAP_ERR(11)
TRAP_ERR(12);   TRAP_ERR(13);   TRAP_ERR(14);   TRAP_NOERR(15)
TRAP_NOERR(16); TRAP_ERR(17);   TRAP_NOERR(18); TRAP_NOERR(19)
TRAP_NOERR(20); TRAP_ERR(21);   TRAP_NOERR(22); TRAP_NOERR(23)
TRAP_NOERR(24); TRAP_NOERR(25); TRAP_NOERR(26); TRAP_NOERR(27)
TRAP_NOERR(28); TRAP_ERR(29);   TRAP_ERR(30);   TRAP_NOERR(31)
/* interrupts: the CPU never pushes an error code */
TRAP_NOERR(32); TRAP_NOERR(33); TRAP_NOERR(34); TRAP_NOERR(35)
TRAP_NOERR(36); TRAP_NOERR(37); TRAP_NOERR(38); TRAP_NOERR(39)
TRAP_NOERR(40); TRAP_NOERR(41); TRAP_NOERR(42); TRAP_NOERR(43)
TRAP_NOERR(44); TRAP_NOERR(45); TRAP_NOERR(46); TRAP_NOERR(47)
TRAP_NOERR(48); TRAP_NOERR(49); TRAP_NOERR(50); TRAP_NOERR(51)
TRAP_NOERR(52); TRAP_NOERR(53); TRAP_NOERR(54); TRAP_NOERR(55)
TRAP_NOERR(56); TRAP_NOERR(57); TRAP_NOERR(58); TRAP_NOERR(59)
TRAP_NOERR(60); TRAP_NOERR(61); TRAP_NOERR(62); TRAP_NOERR(63)

fw_trap_common:
        pushal
        cld
        pushl   %esp                /* struct fw_trap_frame * */
        call    fw_trap
        addl    $4, %esp
        popal
        addl    $8, %esp            /* vector, error code */
        cmpb    $0, fw_use_iret
        jne     1f
        /* Same-privilege return without IRET: KVM's instruction emulator
         * implements IRET in real mode only, so on a host where ring-0 guest
         * code is emulated (kvm_pvm) a protected-mode iret is an emulation
         * failure. Stack: eip, cs, eflags (cs is ours, unchanged). Rearrange
         * to eflags, eip, junk; then popf restores the flags (IF too) and
         * ret $4 jumps back. An interrupt between popf and ret nests on this
         * stack and returns to the ret: still consistent. */
        xchgl   %eax, (%esp)        /* eax = eip; slot 0 = caller's eax */
        xchgl   %eax, 4(%esp)       /* slot 1 = eip; eax = cs (dropped) */
        movl    8(%esp), %eax       /* eflags */
        xchgl   %eax, (%esp)        /* slot 0 = eflags; eax restored */
        popfl
        ret     $4
1:      iretl                       /* iret=1 on the command line */

        .section .rodata
        .balign 4
        .globl fw_trap_stubs
fw_trap_stubs:
        .long trap0,  trap1,  trap2,  trap3,  trap4,  trap5,  trap6,  trap7
        .long trap8,  trap9,  trap10, trap11, trap12, trap13, trap14, trap15
        .long trap16, trap17, trap18, trap19, trap20, trap21, trap22, trap23
        .long trap24, trap25, trap26, trap27, trap28, trap29, trap30, trap31
        .long trap32, trap33, trap34, trap35, trap36, trap37, trap38, trap39
        .long trap40, trap41, trap42, trap43, trap44, trap45, trap46, trap47
        .long trap48, trap49, trap50, trap51, trap52, trap53, trap54, trap55
        .long trap56, trap57, trap58, trap59, trap60, trap61, trap62, trap63

        .section .note.GNU-stack, "", @progbits
