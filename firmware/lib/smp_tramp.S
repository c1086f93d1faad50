/* Application processors' start. smp_start_aps() (lib/smp.c) copies the
 * real-mode trampoline below to SMP_TRAMPOLINE (a page below 1 MiB) and sends
 * INIT, then SIPI with that page's number: each AP starts there in real mode
 * with CS = page << 8, loads the image's GDT, enables protection and jumps to
 * fw_ap_entry32 at its linked address, which takes a CPU number and a stack
 * and calls the function the BSP gave. In a long-mode image the AP first
 * takes the path the BSP took in long_mode.S (PAE, the BSP's page tables,
 * EFER.LME, paging), on the same GDT's 64-bit code selector. */

#define CR0_PG     0x80000000
#define CR4_PAE    0x00000020
#define MSR_EFER   0xC0000080
#define EFER_LME   0x00000100

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
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $fw_pml4, %eax              /* filled by the BSP before any AP starts */
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $CR0_PG, %eax
        movl    %eax, %cr0
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
