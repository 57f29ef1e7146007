/*
 * Application processor start-up trampoline. guest.c copies the bytes from
 * ap_tramp_start to ap_tramp_end to physical AP_TRAMP_BASE (0x1000, SIPI
 * vector 0x01), stores the BSP's CR3 at ap_tramp_cr3 and clears
 * ap_tramp_count. Each AP goes real mode -> protected mode -> long mode on
 * the BSP's page tables, atomically increments the counter and halts.
 *
 * The code runs at AP_TRAMP_BASE, not where it is linked, so every address
 * it uses goes through AT(), which relocates a label into the copy.
 */

	.section .note.GNU-stack, "", @progbits

#define AP_TRAMP_BASE 0x1000
#define AT(label) ((label) - ap_tramp_start + AP_TRAMP_BASE)
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define CR4_PAE 0x20
#define CR0_PG 0x80000000

	/* Data only: never executed where it is linked. */
	.section .rodata.ap_tramp, "a"
	.globl	ap_tramp_start, ap_tramp_end, ap_tramp_cr3, ap_tramp_count

	.code16
ap_tramp_start:
	cli
	cld
	xorw	%ax, %ax
	movw	%ax, %ds
	lgdtl	AT(ap_gdt_desc)
	movl	%cr0, %eax
	orl	$1, %eax		/* PE */
	movl	%eax, %cr0
	ljmpl	$0x08, $AT(ap_protected)

	.code32
ap_protected:
	movl	$0x10, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	AT(ap_tramp_cr3), %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$CR0_PG, %eax
	movl	%eax, %cr0
	ljmp	$0x18, $AT(ap_long_mode)

	.code64
ap_long_mode:
	lock incl AT(ap_tramp_count)
1:	cli
	hlt
	jmp	1b

	.balign	8
ap_gdt:
	.quad	0			/* null */
	.quad	0x00cf9a000000ffff	/* 0x08: 32-bit flat code */
	.quad	0x00cf92000000ffff	/* 0x10: flat data */
	.quad	0x00af9a000000ffff	/* 0x18: 64-bit code */
ap_gdt_end:
ap_gdt_desc:
	.word	ap_gdt_end - ap_gdt - 1
	.long	AT(ap_gdt)

	.balign	4
ap_tramp_cr3:				/* written by the BSP */
	.long	0
ap_tramp_count:				/* APs that reached long mode */
	.long	0
ap_tramp_end:
