/* Long-mode entry stubs for vectors 0..63 (the 64-bit twin of idt_stubs.S).
 * Each pushes a dummy error code where the CPU pushes none, then its vector,
 * and joins fw_trap_common, which saves the general registers (struct
 * fw_trap_frame in fw.h) and calls fw_trap. A handler may change the saved
 * registers and RIP. */
        .code64
        .text

#define TRAP_NOERR(n) \
        .balign 16; trap##n: pushq $0; pushq $n; jmp fw_trap_common
#define TRAP_ERR(n) \
        .balign 16; trap##n: pushq $n; jmp fw_trap_common

TRAP_NOERR(0);  TRAP_NOERR(1);  TRAP_NOERR(2);  TRAP_NOERR(3)
TRAP_NOERR(4);  TRAP_NOERR(5);  TRAP_NOERR(6);  TRAP_NOERR(7)
TRAP_ERR(8);    TRAP_NOERR(9);  TRAP_ERR(10);   TRAP_ERR(11)
TRAP_ERR(12);   TRAP_ERR(13);   TRAP_ERR(14);   TRAP_NOERR(15)
TRAP_NOERR(16); TRAP_ERR(17);   TRAP_NOERR(18); TRAP_NOERR(19)
TRAP_NOERR(20); TRAP_ERR(21);   TRAP_NOERR(22); TRAP_NOERR(23)
TRAP_NOERR(24); TRAP_NOERR(25); TRAP_NOERR(26); TRAP_NOERR(27)
TRAP_NOERR(28); TRAP_ERR(29);   TRAP_ERR(30);   TRAP_NOERR(31)
TRAP_NOERR(32); TRAP_NOERR(33); TRAP_NOERR(34); TRAP_NOERR(35)
TRAP_NOERR(36); TRAP_NOERR(37); TRAP_NOERR(38); TRAP_NOERR(39)
TRAP_NOERR(40); TRAP_NOERR(41); TRAP_NOERR(42); TRAP_NOERR(43)
TRAP_NOERR(44); TRAP_NOERR(45); TRAP_NOERR(46); TRAP_NOERR(47)
TRAP_NOERR(48); TRAP_NOERR(49); TRAP_NOERR(50); TRAP_NOERR(51)
TRAP_NOERR(52); TRAP_NOERR(53); TRAP_NOERR(54); TRAP_NOERR(55)
TRAP_NOERR(56); TRAP_NOERR(57); TRAP_NOERR(58); TRAP_NOERR(59)
TRAP_NOERR(60); TRAP_NOERR(61); TRAP_NOERR(62); TRAP_NOERR(63)

fw_trap_common:
        pushq   %rax
        pushq   %rcx
        pushq   %rdx
        pushq   %rbx
        pushq   %rbp
        pushq   %rsi
        pushq   %rdi
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        cld
        movq    %rsp, %rdi          /* struct fw_trap_frame * */
        movq    %rsp, %rbx
        andq    $-16, %rsp          /* the ABI's call alignment */
        call    fw_trap
        movq    %rbx, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rdi
        popq    %rsi
        popq    %rbp
        popq    %rbx
        popq    %rdx
        popq    %rcx
        popq    %rax
        addq    $16, %rsp           /* vector, error code */
        cmpb    $0, fw_use_iret(%rip)
        jne     1f
        /* Same-privilege return without IRETQ (see idt_stubs.S: kvm_pvm's
         * emulator has no protected- or long-mode IRET). Frame: rip@0 cs@8
         * rflags@16 rsp@24 ss@32. Put rip and rflags just below the
         * interrupted RSP (no red zone: -mno-red-zone), keep that new RSP in
         * the cs slot (which neither write can reach: the frame lies below
         * them), switch to it, popfq, ret. */
        pushq   %rax
        pushq   %rbx                /* frame now at 16(%rsp) */
        movq    40(%rsp), %rax      /* interrupted RSP */
        subq    $16, %rax
        movq    16(%rsp), %rbx
        movq    %rbx, 8(%rax)       /* rip */
        movq    32(%rsp), %rbx
        movq    %rbx, (%rax)        /* rflags */
        movq    %rax, 24(%rsp)      /* new RSP in the cs slot */
        popq    %rbx
        popq    %rax
        movq    8(%rsp), %rsp
        popfq
        ret
1:      iretq                       /* iret=1 on the command line */

        .section .rodata
        .balign 8
        .globl fw_trap_stubs
fw_trap_stubs:
        .quad trap0,  trap1,  trap2,  trap3,  trap4,  trap5,  trap6,  trap7
        .quad trap8,  trap9,  trap10, trap11, trap12, trap13, trap14, trap15
        .quad trap16, trap17, trap18, trap19, trap20, trap21, trap22, trap23
        .quad trap24, trap25, trap26, trap27, trap28, trap29, trap30, trap31
        .quad trap32, trap33, trap34, trap35, trap36, trap37, trap38, trap39
        .quad trap40, trap41, trap42, trap43, trap44, trap45, trap46, trap47
        .quad trap48, trap49, trap50, trap51, trap52, trap53, trap54, trap55
        .quad trap56, trap57, trap58, trap59, trap60, trap61, trap62, trap63

        .section .note.GNU-stack, "", @progbits
