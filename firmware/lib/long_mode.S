/* Switch from the 32-bit entry to 64-bit long mode, then run fw_start in
 * 64-bit code. Jumped to (not called) from start.S with ESI = multiboot magic,
 * EBX = multiboot info. Identity-maps the first 4 GiB with 2 MiB pages
 * (1 PML4 + 1 PDPT + 4 page directories = 24 KiB in .pagetables), enables
 * PAE, EFER.LME and paging, and far-jumps to the 64-bit code selector 0x18.
 * Used only by images built from a scenario marked `// fw:long-mode`. */

#define CR0_PG     0x80000000
#define CR4_PAE    0x00000020
#define MSR_EFER   0xC0000080
#define EFER_LME   0x00000100
#define PTE_P      0x001
#define PTE_W      0x002
#define PTE_PS     0x080

        .section .text, "ax"
        .code32
        .globl fw_enter_long_mode
fw_enter_long_mode:
        /* PML4[0] -> PDPT */
        movl    $fw_pdpt + (PTE_P | PTE_W), fw_pml4
        /* PDPT[0..3] -> PD0..PD3 */
        movl    $fw_pd + (PTE_P | PTE_W), %eax
        movl    $fw_pdpt, %edi
        movl    $4, %ecx
1:      movl    %eax, (%edi)
        addl    $4096, %eax
        addl    $8, %edi
        loop    1b
        /* PD entries: 2048 x 2 MiB, identity. */
        movl    $(PTE_P | PTE_W | PTE_PS), %eax
        movl    $fw_pd, %edi
        movl    $2048, %ecx
2:      movl    %eax, (%edi)
        addl    $0x200000, %eax
        addl    $8, %edi
        loop    2b

        call    fw_long_mode_on
        ljmp    $0x18, $fw_long_mode_entry

/* PAE, the page tables above, EFER.LME and paging: the CPU is then in
 * compatibility mode, and a far jump to selector 0x18 enters 64-bit code.
 * Called in 32-bit protected mode with a stack, by the BSP once the tables
 * are filled and by each AP (smp_tramp.S). Clobbers EAX, ECX and EDX. */
        .globl fw_long_mode_on
fw_long_mode_on:
        movl    %cr4, %eax
        orl     $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $fw_pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $CR0_PG, %eax
        movl    %eax, %cr0
        ret

        .code64
fw_long_mode_entry:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $fw_stack_top, %esp         /* zero-extends into RSP */
        xorl    %ebp, %ebp
        movl    %esi, %edi                  /* fw_start(magic, mbi) */
        movl    %ebx, %esi
        call    fw_start
3:      cli
        hlt
        jmp     3b

        .section .pagetables, "aw", @nobits
        .balign 4096
        .globl fw_pml4
fw_pml4:
        .skip   4096
fw_pdpt:
        .skip   4096
fw_pd:
        .skip   4 * 4096

        .section .note.GNU-stack, "", @progbits
