/* Application processors' start (32-bit images only). smp_start_aps()
 * (lib/smp.c) copies the real-mode trampoline below to SMP_TRAMPOLINE (a page
 * below 1 MiB) and sends INIT, then SIPI with that page's number: each AP
 * starts there in real mode with CS = page << 8, loads the image's GDT,
 * enables protection and jumps to fw_ap_entry32 at its linked address, which
 * takes a CPU number and a stack and calls the function the BSP gave. */

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
        pushl   %eax
        call    fw_ap_main                  /* lib/smp.c; does not return */
1:      cli
        hlt
        jmp     1b
        .section .note.GNU-stack, "", @progbits
