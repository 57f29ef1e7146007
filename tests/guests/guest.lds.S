/*
 * Linker script of every test guest image, run through the C preprocessor
 * by build.rs: with PVH_NOTE defined for the PVH image, without it for the
 * ELF64 and bzImage images (which then have no PT_NOTE at all).
 *
 * One loadable segment at physical 1 MiB holds code, data and .bss, so the
 * loader's "kernel end" (p_paddr + p_memsz) covers .bss and the stack.
 * Image offset 0x200 is the 64-bit entry (.text.entry64), where the bzImage
 * boot protocol wants it in the protected-mode part.
 */
OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(_start)

PHDRS
{
	image PT_LOAD FLAGS(7);
#ifdef PVH_NOTE
	note PT_NOTE FLAGS(4);
#endif
}

SECTIONS
{
	. = 0x100000;

	.text : {
		KEEP(*(.text.head))
		. = 0x200;
		KEEP(*(.text.entry64))
		*(.text.pvh)
		*(.text .text.*)
	} :image

	.rodata : { *(.rodata .rodata.*) } :image
	.data : { *(.data .data.*) } :image

#ifdef PVH_NOTE
	.note.Xen : { KEEP(*(.note.Xen)) } :image :note
#endif

	.bss : {
		. = ALIGN(16);
		__bss_start = .;
		*(.bss .bss.*)
		*(COMMON)
		. = ALIGN(16);
		__bss_end = .;
		. += 0x4000;		/* 16 KiB stack, not zeroed */
		__stack_top = .;
	} :image

	/DISCARD/ : {
		*(.comment)
		*(.eh_frame*)
		*(.note.*)
	}
}
