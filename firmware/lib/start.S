/* Multiboot v1 entry. The loader leaves us in 32-bit protected mode, paging
 * off, EAX = 0x2BADB002, EBX = physical address of the multiboot info, and
 * no guaranteed stack or GDT. We load our own GDT and stack, zero .bss, then
 * call fw_start(magic, mbi) (lib/runtime.c), which calls the scenario's main.
 * Built with FW_LONG_MODE, we first switch to 64-bit mode (long_mode.S). */

#define MULTIBOOT_MAGIC      0x1BADB002
#define MULTIBOOT_PAGE_ALIGN (1 << 0)
#define MULTIBOOT_MEMORY     (1 << 1)
#define MULTIBOOT_FLAGS      (MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY)

#define STACK_SIZE 16384

        .section .multiboot, "a"
        .balign 4
        .long MULTIBOOT_MAGIC
        .long MULTIBOOT_FLAGS
        .long -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

        .section .text.start, "ax"
        .code32
        .globl _start
_start:
        cli
        cld
        movl    %eax, %esi                  /* magic; EBX keeps the info pointer */
        lgdt    fw_gdt_desc
        ljmp    $0x08, $1f
1:      movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $fw_stack_top, %esp
        xorl    %ebp, %ebp

        /* .bss must be zero; do it here rather than trust the loader. */
        movl    $__bss_start, %edi
        movl    $__bss_end, %ecx
        subl    %edi, %ecx
        shrl    $2, %ecx
        xorl    %eax, %eax
        rep stosl

#ifdef FW_LONG_MODE
        jmp     fw_enter_long_mode          /* long_mode.S: esi = magic, ebx = mbi */
#else
        pushl   %ebx
        pushl   %esi
        call    fw_start                    /* does not return */
2:      cli
        hlt
        jmp     2b
#endif

/* Flat GDT shared by 32- and 64-bit images:
 * 0x08 code32, 0x10 data (base 0, limit 4 GiB), 0x18 code64 (L=1). */
        .section .rodata
        .balign 8
        .globl fw_gdt
fw_gdt:
        .quad   0
        .quad   0x00cf9a000000ffff
        .quad   0x00cf92000000ffff
        .quad   0x00af9a000000ffff
fw_gdt_end:
        .balign 4
        .globl fw_gdt_desc
fw_gdt_desc:
        .word   fw_gdt_end - fw_gdt - 1
        .long   fw_gdt
        .long   0                           /* 64-bit base high half for lgdt in long mode */

        .section .stack, "aw", @nobits
        .balign 16
        .globl fw_stack_bottom
fw_stack_bottom:
        .skip   STACK_SIZE
        .globl fw_stack_top
fw_stack_top:

        .section .note.GNU-stack, "", @progbits
