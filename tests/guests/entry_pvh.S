/*
 * PVH entry of the PVH guest (Xen PVH boot ABI, as QEMU and linux-loader use
 * it).
 *
 * State at entry: 32-bit protected mode, paging off, flat CS and DS,
 * interrupts off, EBX = physical address of struct hvm_start_info. The
 * stub zeroes .bss, identity-maps the first 4 GiB with 2 MiB pages (tables
 * in .bss), enters long mode with its own GDT and calls
 * guest_main(1, start_info).
 */

	.section .note.GNU-stack, "", @progbits

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define CR4_PAE 0x20
#define CR0_PE_PG 0x80000001
#define PTE_PRESENT_RW 0x3
#define PDE_2M 0x83		/* present, writable, 2 MiB page */
#define BOOT_PVH 1

	/* ELF note "Xen", type 18: the 32-bit physical entry address. */
	.section .note.Xen, "a", @note
	.balign	4
	.long	4			/* namesz: "Xen" and its NUL */
	.long	4			/* descsz */
	.long	XEN_ELFNOTE_PHYS32_ENTRY
	.asciz	"Xen"
	.balign	4
	.long	_start
	.balign	4

	.section .text.pvh, "ax"
	.code32
	.globl	_start
_start:
	cli
	cld
	/* EBX (start info) is kept until guest_main. */

	movl	$__bss_start, %edi	/* zero .bss, page tables included */
	movl	$__bss_end, %ecx
	subl	%edi, %ecx
	shrl	$2, %ecx
	xorl	%eax, %eax
	rep stosl

	/* PML4[0] -> PDPT; PDPT[0..3] -> four page directories. */
	movl	$(pvh_pdpt + PTE_PRESENT_RW), pvh_pml4
	movl	$(pvh_pd + PTE_PRESENT_RW), pvh_pdpt
	movl	$(pvh_pd + 0x1000 + PTE_PRESENT_RW), pvh_pdpt + 8
	movl	$(pvh_pd + 0x2000 + PTE_PRESENT_RW), pvh_pdpt + 16
	movl	$(pvh_pd + 0x3000 + PTE_PRESENT_RW), pvh_pdpt + 24

	/* 2048 directory entries of 2 MiB: 0 .. 4 GiB. */
	movl	$pvh_pd, %edi
	movl	$PDE_2M, %eax
	movl	$2048, %ecx
1:	movl	%eax, (%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	decl	%ecx
	jnz	1b

	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pvh_pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$CR0_PE_PG, %eax
	movl	%eax, %cr0

	lgdt	pvh_gdt_desc
	ljmp	$0x08, $pvh_long_mode

	.code64
pvh_long_mode:
	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movq	$__stack_top, %rsp
	xorl	%ebp, %ebp
	movl	$BOOT_PVH, %edi
	movl	%ebx, %esi		/* zero-extends into RSI */
	call	guest_main
2:	cli
	hlt
	jmp	2b

	.section .rodata.pvh, "a"
	.balign	8
pvh_gdt:
	.quad	0			/* null */
	.quad	0x00af9a000000ffff	/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff	/* 0x10: flat data */
pvh_gdt_end:
pvh_gdt_desc:
	.word	pvh_gdt_end - pvh_gdt - 1
	.long	pvh_gdt

	.section .bss.pvh_pagetables, "aw", @nobits
	.balign	4096
pvh_pml4:
	.skip	4096
pvh_pdpt:
	.skip	4096
pvh_pd:
	.skip	4 * 4096
