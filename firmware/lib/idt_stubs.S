/* 32-bit exception entry stubs for vectors 0..31. Each pushes a dummy error
 * code where the CPU pushes none, then its vector, and joins fw_trap_common,
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

fw_trap_common:
        pushal
        cld
        pushl   %esp                /* struct fw_trap_frame * */
        call    fw_trap
        addl    $4, %esp
        popal
        addl    $8, %esp            /* vector, error code */
        iretl

        .section .rodata
        .balign 4
        .globl fw_trap_stubs
fw_trap_stubs:
        .long trap0,  trap1,  trap2,  trap3,  trap4,  trap5,  trap6,  trap7
        .long trap8,  trap9,  trap10, trap11, trap12, trap13, trap14, trap15
        .long trap16, trap17, trap18, trap19, trap20, trap21, trap22, trap23
        .long trap24, trap25, trap26, trap27, trap28, trap29, trap30, trap31

        .section .note.GNU-stack, "", @progbits
