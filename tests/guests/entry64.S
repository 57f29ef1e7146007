/*
 * 64-bit entry of the ELF64 and bzImage guests (Linux 64-bit boot protocol).
 *
 * State at entry: long mode, flat 64-bit CS, flat DS/SS, paging on with at
 * least the first 4 GiB identity-mapped, interrupts off, RSI = physical
 * address of struct boot_params. The stack pointer is not trusted.
 *
 * BOOT_KIND (0 = ELF64, 2 = bzImage) is set on the compiler command line and
 * tells guest_main which image it runs in.
 */
#ifndef BOOT_KIND
#error "BOOT_KIND must be defined (0 = ELF64, 2 = bzImage)"
#endif

	.section .note.GNU-stack, "", @progbits

	/* Offset 0 of the image. Nothing should jump here: stop if it does. */
	.section .text.head, "ax"
	.code64
stray_entry:
	cli
	hlt
	jmp	stray_entry

	/* Placed by guest.ld at image offset 0x200, the bzImage 64-bit entry. */
	.section .text.entry64, "ax"
	.globl	_start
_start:
	cli
	cld
	movq	%rsi, %rbx		/* boot_params; rep stosb leaves rbx alone */

	movl	$__bss_start, %edi	/* zero .bss (the image is below 4 GiB) */
	movl	$__bss_end, %ecx
	subl	%edi, %ecx
	xorl	%eax, %eax
	rep stosb

	movq	$__stack_top, %rsp
	xorl	%ebp, %ebp
	movl	$BOOT_KIND, %edi
	movq	%rbx, %rsi
	call	guest_main
1:	cli
	hlt
	jmp	1b
