/* Application processors' start. smp_start_aps() (lib/smp.c) copies the
 * real-mode trampoline below to SMP_TRAMPOLINE (a page below 1 MiB) and sends
 * INIT, then SIPI with that page's number: each AP starts there in real mode
 * with CS = page << 8, loads the image's GDT, enables protection and jumps to
 * fw_ap_entry32 at its linked address, which takes a CPU number and a stack
 * and calls the function the BSP gave. In a long-mode image the AP first
 * takes the path the BSP took in long_mode.S (PAE, the BSP's page tables,
 * EFER.LME, paging), on the same GDT's 64-bit code selector. */

        .section .rodata, "a"
        .code16
        .globl fw_ap_trampoline, fw_ap_trampoline_end
fw_ap_trampoline:
        cli
        lgdtl   %cs:(fw_ap_gdt_desc - fw_ap_trampoline)
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $fw_ap_entry32
        .balign 4
fw_ap_gdt_desc:
        .word   4 * 8 - 1                   /* start.S's fw_gdt: null, code32, data, code64 */
        .long   fw_gdt
fw_ap_trampoline_end:

        .section .text, "ax"
        .code32
fw_ap_entry32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        /* CPU number: 1, 2, … in the order the APs get here. */
        movl    $1, %eax
        lock xaddl %eax, fw_ap_next
        /* Its stack: FW_AP_STACK bytes each, in fw_ap_stacks. */
        movl    %eax, %ecx
        shll    $12, %ecx
        addl    $fw_ap_stacks + 4096, %ecx
        movl    %ecx, %esp
        xorl    %ebp, %ebp
#ifdef FW_LONG_MODE
        movl    %eax, %edi                  /* fw_ap_main(cpu) in 64-bit code */
        call    fw_long_mode_on             /* long_mode.S: the BSP's page tables */
        ljmp    $0x18, $fw_ap_entry64

        .code64
fw_ap_entry64:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    %esp, %esp                  /* zero-extends into RSP */
        call    fw_ap_main
#else
        pushl   %eax
        call    fw_ap_main                  /* lib/smp.c; does not return */
#endif
1:      cli
        hlt
        jmp     1b
        .section .note.GNU-stack, "", @progbits
