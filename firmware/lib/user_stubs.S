/* The two crossings of lib/user.c (long mode).
 *
 * uint64_t fw_user_enter(fn, arg, user_rsp, rflags): saves the callee-saved
 * registers and RSP, puts fn's return address (fw_user_return_ud2) on the
 * user stack, and enters fn(arg) at CPL3 with iretq (kvm_pvm's emulator runs
 * an iretq to ring 3; it refuses the 32-bit iret).
 *
 * fw_user_return_ud2 (CPL3): fn returned with its result in RAX; ud2 raises
 * #UD, which arrives at CPL0 on the TSS's RSP0 stack; fw_trap → user_trap
 * recognises the address and calls
 *
 * fw_user_resume(result): back on the stack fw_user_enter saved, returns
 * from fw_user_enter with the result. No return to ring 3 is ever needed. */
#define FW_KERNEL_DS 0x10
#define FW_USER_DS 0x23
#define FW_USER_CS 0x2b

        .code64
        .text
        .globl fw_user_enter
fw_user_enter:
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, fw_user_kernel_rsp(%rip)
        movq    %rdi, %rax                  /* fn */
        movq    %rsi, %rdi                  /* its argument */
        subq    $8, %rdx
        leaq    fw_user_return_ud2(%rip), %rsi
        movq    %rsi, (%rdx)                /* fn's return address */
        movw    $FW_USER_DS, %si
        movw    %si, %ds
        movw    %si, %es
        pushq   $FW_USER_DS                 /* SS */
        pushq   %rdx                        /* RSP */
        pushq   %rcx                        /* RFLAGS */
        pushq   $FW_USER_CS                 /* CS */
        pushq   %rax                        /* RIP */
        iretq

        .globl fw_user_return_ud2
fw_user_return_ud2:
        ud2

        .globl fw_user_resume
fw_user_resume:
        movw    $FW_KERNEL_DS, %si
        movw    %si, %ds
        movw    %si, %es
        movq    %rdi, %rax
        movq    fw_user_kernel_rsp(%rip), %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret

        .bss
        .balign 8
fw_user_kernel_rsp:
        .quad   0

        .section .note.GNU-stack, "", @progbits
