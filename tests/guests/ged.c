/*
 * altovirt test guest: the ACPI Generic Event Device (the power button
 * QMP system_powerdown presses), driven the way Linux's GED driver does:
 * its interrupt through the IOAPIC, then a read of the event selector
 * register the DSDT's _EVT method reads.
 *
 * Not a translation unit of its own: guest.c includes this file after
 * acpi.c, which found the GED (interrupt, selector region) in the DSDT.
 *
 * Command line:
 *   guest.ged=report  print the selector once at boot and go on:
 *     ged: boot sel=0x<hex>
 *   guest.ged=irq     the same, then route the GED's interrupt (IOAPIC pin
 *                     from _CRS, edge, active high) to vector 0x40 of this
 *                     CPU, print
 *     ged: armed vector=0x40 gsi=<n>
 *                     and wait (sti; hlt) for it; then read the selector
 *                     twice (the first read clears it):
 *     ged: irq count=<interrupts> sel=0x<hex> again=0x<hex>
 *   ged: none         (no usable GED in the DSDT)
 * Then the guest goes on to its guest.exit= action.
 */

#define GED_VECTOR 0x40
#define IOAPIC_BASE 0xfec00000ull
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN 0x10
#define IOAPIC_REDIR(pin) (0x10 + 2 * (pin))
#define LAPIC_TPR 0x080
#define LAPIC_EOI 0x0b0
#define PIC1_DATA 0x21
#define PIC2_DATA 0xa1

/* A 64-bit interrupt gate. */
struct idt_gate {
	u16 off_lo, sel;
	u8 ist, type;
	u16 off_mid;
	u32 off_hi, zero;
} __attribute__((packed));

static struct idt_gate ged_idt[256] __attribute__((aligned(16)));

/* Incremented by the handler (not static: the assembly names it). */
volatile u32 ged_irq_count;
extern void ged_isr(void);

/* Counts the interrupt and returns; the EOI is sent from C afterwards. */
__asm__(".text\n"
	".globl ged_isr\n"
	"ged_isr:\n"
	"	lock incl ged_irq_count(%rip)\n"
	"	iretq\n");

static void ioapic_write(u32 reg, u32 v)
{
	wr32(IOAPIC_BASE + IOAPIC_REGSEL, reg);
	wr32(IOAPIC_BASE + IOAPIC_WIN, v);
}

static u16 read_cs(void)
{
	u16 cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs;
}

/* Vector GED_VECTOR -> ged_isr; every other entry not present. */
static void ged_load_idt(void)
{
	u64 isr = (u64)ged_isr;
	struct idt_gate *g = &ged_idt[GED_VECTOR];
	g->off_lo = (u16)isr;
	g->sel = read_cs();
	g->ist = 0;
	g->type = 0x8e;	/* present, DPL 0, interrupt gate */
	g->off_mid = (u16)(isr >> 16);
	g->off_hi = (u32)(isr >> 32);
	g->zero = 0;
	struct __attribute__((packed)) { u16 limit; u64 base; } idtr = {
		sizeof(ged_idt) - 1, (u64)ged_idt
	};
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

static int ged_mode_is(u64 cmdline, const char *want)
{
	u64 i = 0;

	if (!cmdline)
		return 0;
	while (i < CMDLINE_MAX && rd8(cmdline + i)) {
		if (is_space(rd8(cmdline + i))) {
			i++;
			continue;
		}
		u64 start = i;
		while (i < CMDLINE_MAX && rd8(cmdline + i) && !is_space(rd8(cmdline + i)))
			i++;
		if (token_is(cmdline + start, i - start, want))
			return 1;
	}
	return 0;
}

enum ged_mode { GED_OFF, GED_REPORT, GED_IRQ };

/* guest.ged= (read before the AP trampoline reuses low memory). */
static enum ged_mode ged_parse(u64 cmdline)
{
	if (ged_mode_is(cmdline, "guest.ged=irq"))
		return GED_IRQ;
	if (ged_mode_is(cmdline, "guest.ged=report"))
		return GED_REPORT;
	return GED_OFF;
}

static void ged_print_sel(const char *what, u32 v)
{
	puts_serial(what);
	put_hex_short(v);
}

static void ged_run(enum ged_mode mode)
{
	const struct acpi_dev *g = &acpi.ged;

	if (mode == GED_OFF)
		return;
	/* A selector in system memory below 4 GiB and an IOAPIC pin. */
	if (!acpi.has_ged || !g->has_irq || !g->has_region || g->region_space != 0 ||
	    g->region_base >= (1ull << 32) || g->gsi >= 24) {
		puts_serial("ged: none\n");
		return;
	}
	ged_print_sel("ged: boot sel=", rd32(g->region_base));
	putc_serial('\n');
	if (mode != GED_IRQ)
		return;

	__asm__ volatile("cli");
	ged_load_idt();
	/* Nothing through the 8259s (LINT0 is masked too); only the IOAPIC. */
	outb(PIC1_DATA, 0xff);
	outb(PIC2_DATA, 0xff);
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100);
	lapic_write(LAPIC_TPR, 0);
	u8 self = (u8)(lapic_read(LAPIC_ID) >> 24);
	ioapic_write(IOAPIC_REDIR(g->gsi) + 1, (u32)self << 24);
	/* Fixed delivery, physical destination, active high, edge, unmasked. */
	ioapic_write(IOAPIC_REDIR(g->gsi), GED_VECTOR);
	puts_serial("ged: armed vector=0x40 gsi=");
	put_dec(g->gsi);
	putc_serial('\n');

	while (!ged_irq_count)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	lapic_write(LAPIC_EOI, 0);
	u32 sel = rd32(g->region_base);
	u32 again = rd32(g->region_base);
	puts_serial("ged: irq count=");
	put_dec(ged_irq_count);
	ged_print_sel(" sel=", sel);
	ged_print_sel(" again=", again);
	putc_serial('\n');
}
