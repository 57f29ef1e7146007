/*
 * altovirt test guest: finds and checks the ACPI tables.
 *
 * Not a translation unit of its own: guest.c includes this file after
 * virtio.c, whose device list it may fill.
 *
 * The RSDP is looked for as Linux does: at boot_params.acpi_rsdp_addr
 * (zero page offset 0x70) or the PVH start info's rsdp_paddr, else by
 * scanning the BIOS area 0xE0000-0xFFFFF on 16-byte boundaries. From it the
 * guest walks the XSDT (the RSDT for a revision 0 RSDP), checks every
 * table's checksum and length, reads the FADT (hardware-reduced flag, the
 * DSDT address), counts the MADT's enabled processors, and parses the
 * DSDT's AML (Scope, Device and Name objects with integer, string and
 * buffer data, OperationRegion, Field and Method: what the VMM writes) for
 * LNRO0005 (virtio-mmio) devices and their _CRS: Memory32Fixed base and
 * size, extended interrupt and its flags; and for the Generic Event Device
 * (ACPI0013: interrupt, event selector region and field, _EVT) and the
 * power button (PNP0C0C) it notifies. Method bodies are skipped.
 *
 * Unless the command line says acpi=off, the LNRO0005 devices become the
 * virtio devices, ahead of the virtio_mmio.device= words (what a Linux
 * guest whose virtio_mmio driver reads ACPI sees), so the guest.virtio=
 * tests run on them; see acpi_run().
 *
 * Command line:
 *   guest.acpi=check   print the result (after the cmdline: line):
 *     acpi: rsdp=0x<hex> via=<bootparams|pvh|scan> tables=<checked> \
 *           hw_reduced=<0|1> cpus=<enabled processors> ioapics=<n> \
 *           uarts=<PNP0501 devices> lnro=<LNRO0005 devices>
 *     acpi: lnro base=0x<hex> size=<bytes> gsi=<n> edge=<0|1> low=<0|1>
 *           (one per device, in DSDT order)
 *     acpi: ged gsi=<n> edge=<0|1> low=<0|1> sel=<mem|io|space N>:0x<hex>/<bytes> \
 *           field=<access>:<bits> evt=<0|1> pwrb=<PNP0C0C devices>
 *           (when there is a GED)
 *     or: acpi: no rsdp  |  acpi: error <what>
 */

#define ACPI_MAX_DEVS 32
#define ACPI_MAX_TABLE (1u << 20)	/* a larger length is taken as garbage */
#define ACPI_AML_DEPTH 8

#define SIG_RSDP 0x2052545020445352ull	/* "RSD PTR " */
#define SIG_XSDT 0x54445358		/* "XSDT" */
#define SIG_RSDT 0x54445352		/* "RSDT" */
#define SIG_FACP 0x50434146		/* "FACP" */
#define SIG_APIC 0x43495041		/* "APIC" */
#define SIG_DSDT 0x54445344		/* "DSDT" */
#define SEG_HID 0x4449485f		/* "_HID" */
#define SEG_CRS 0x5352435f		/* "_CRS" */
#define SEG_S5 0x5f35535f		/* "_S5_" */
#define SEG_EVT 0x5456455f		/* "_EVT" */
#define EISAID_PNP0501 0x0105d041	/* 16550 UART */

struct acpi_dev {
	u64 base, size;
	u32 gsi;
	u8 irq_flags;
	int lnro, uart, has_mem, has_irq;
	int ged, pwrb, has_evt;
	/* OperationRegion (space, offset, length) and its first field. */
	u8 region_space, field_access;
	u64 region_base, region_len;
	u32 field_bits;
	int has_region;
};

static struct {
	int check;		/* guest.acpi=check */
	int cmdline_off;	/* the last acpi= word on the command line is acpi=off */
	u64 rsdp;
	const char *via;
	const char *error;
	u32 tables;		/* tables whose signature, length and checksum were checked */
	int hw_reduced;
	int s5;			/* a \_S5 package at the root */
	u32 cpus, ioapics, uarts;
	u32 n_lnro;
	struct acpi_dev lnro[ACPI_MAX_DEVS];
	int has_ged;
	struct acpi_dev ged;	/* the ACPI0013 device, if any */
	u32 pwrbs;		/* PNP0C0C devices */
} acpi;

static void acpi_fail(const char *what)
{
	if (!acpi.error)
		acpi.error = what;
}

/* guest.acpi=check anywhere on the command line; the last acpi= word. */
static void acpi_parse_cmdline(u64 cmdline)
{
	u64 i = 0;

	if (!cmdline)
		return;
	while (i < CMDLINE_MAX && rd8(cmdline + i)) {
		if (is_space(rd8(cmdline + i))) {
			i++;
			continue;
		}
		u64 start = i;
		while (i < CMDLINE_MAX && rd8(cmdline + i) && !is_space(rd8(cmdline + i)))
			i++;
		if (token_is(cmdline + start, i - start, "guest.acpi=check"))
			acpi.check = 1;
		else if (i - start >= 5 && token_is(cmdline + start, 5, "acpi="))
			acpi.cmdline_off = token_is(cmdline + start, i - start, "acpi=off");
	}
}

/* "RSD PTR ", the first 20 bytes sum to 0, and (revision 2) all of them. */
static int acpi_rsdp_ok(u64 p)
{
	if (rd64(p) != SIG_RSDP || !mp_checksum_ok(p, 20))
		return 0;
	if (rd8(p + 15) < 2)
		return 1;
	u32 len = rd32(p + 20);
	return len >= 36 && len < 4096 && mp_checksum_ok(p, len);
}

static u64 acpi_find_rsdp(u32 kind, u64 boot_block)
{
	u64 p;

	if (kind == BOOT_PVH) {
		p = rd32(boot_block) == HVM_START_MAGIC ? rd64(boot_block + 0x20) : 0;
		acpi.via = "pvh";
	} else {
		p = rd64(boot_block + 0x70);
		acpi.via = "bootparams";
	}
	if (p) {
		if (!acpi_rsdp_ok(p))
			acpi_fail("the boot block's RSDP address has no valid RSDP");
		return p;
	}
	acpi.via = "scan";
	for (p = 0xe0000; p < 0x100000; p += 16)
		if (rd64(p) == SIG_RSDP && acpi_rsdp_ok(p))
			return p;
	return 0;
}

/* Checks the table header at addr (signature sig unless 0); returns its length or 0. */
static u32 acpi_table(u64 addr, u32 sig)
{
	if (!addr || addr >= (1ull << 32)) {
		acpi_fail("table address outside the identity map");
		return 0;
	}
	u32 len = rd32(addr + 4);
	if (sig && rd32(addr) != sig) {
		acpi_fail("table signature mismatch");
		return 0;
	}
	if (len < 36 || len > ACPI_MAX_TABLE) {
		acpi_fail("table length out of range");
		return 0;
	}
	if (!mp_checksum_ok(addr, len)) {
		acpi_fail("table checksum");
		return 0;
	}
	acpi.tables++;
	return len;
}

static void acpi_madt(u64 t, u32 len)
{
	for (u64 off = 44; off + 2 <= len;) {
		u8 type = rd8(t + off), elen = rd8(t + off + 1);
		if (elen < 2 || off + elen > len) {
			acpi_fail("MADT entry length");
			return;
		}
		if (type == 0 && elen >= 8 && (rd32(t + off + 4) & 1))
			acpi.cpus++;	/* processor local APIC, enabled */
		else if (type == 9 && elen >= 16 && (rd32(t + off + 8) & 1))
			acpi.cpus++;	/* processor local x2APIC, enabled */
		else if (type == 1)
			acpi.ioapics++;
		off += elen;
	}
}

/* ---- AML (the subset the DSDT uses) ----------------------------------- */

struct aml {
	u64 p, end;
};

/* PkgLength at a->p; returns the end of the package, or 0 on error. */
static u64 aml_pkg_end(struct aml *a)
{
	u64 start = a->p;
	u8 lead = rd8(a->p++);
	u32 follow = lead >> 6;
	u64 len = follow ? (lead & 0x0f) : (lead & 0x3f);

	for (u32 k = 0; k < follow; k++)
		len |= (u64)rd8(a->p++) << (4 + 8 * k);
	if (start + len > a->end || start + len < a->p) {
		acpi_fail("AML package length");
		return 0;
	}
	return start + len;
}

/* NameString: optional root or parent prefixes, then one NameSeg. */
static u32 aml_name(struct aml *a)
{
	while (a->p < a->end && (rd8(a->p) == '\\' || rd8(a->p) == '^'))
		a->p++;
	if (a->p + 4 > a->end) {
		acpi_fail("AML name");
		return 0;
	}
	u32 seg = rd32(a->p);
	a->p += 4;
	return seg;
}

static u64 aml_integer(struct aml *a)
{
	u64 v = 0;
	switch (rd8(a->p++)) {
	case 0x00: return 0;
	case 0x01: return 1;
	case 0xff: return ~0ull;
	case 0x0a: v = rd8(a->p); a->p += 1; return v;
	case 0x0b: v = rd16(a->p); a->p += 2; return v;
	case 0x0c: v = rd32(a->p); a->p += 4; return v;
	case 0x0e: v = rd64(a->p); a->p += 8; return v;
	}
	acpi_fail("unexpected AML data object");
	return 0;
}

/* Resource descriptors in [p, end): Memory32Fixed and extended interrupt. */
static void aml_resources(u64 p, u64 end, struct acpi_dev *d)
{
	while (p < end) {
		u8 tag = rd8(p);
		if (tag & 0x80) {
			u64 len = rd16(p + 1);
			if (p + 3 + len > end)
				break;
			if (tag == 0x86 && len == 9) {
				d->base = rd32(p + 4);
				d->size = rd32(p + 8);
				d->has_mem = 1;
			} else if (tag == 0x89 && len >= 6 && rd8(p + 4) >= 1) {
				d->irq_flags = rd8(p + 3);
				d->gsi = rd32(p + 5);
				d->has_irq = 1;
			}
			p += 3 + len;
		} else {
			if (((tag >> 3) & 0xf) == 0xf)
				return;	/* end tag */
			p += 1 + (tag & 7);
		}
	}
	acpi_fail("resource template without end tag");
}

static void aml_terms(struct aml *a, struct acpi_dev *dev, int depth)
{
	if (depth > ACPI_AML_DEPTH) {
		acpi_fail("AML nested too deep");
		return;
	}
	while (a->p < a->end && !acpi.error) {
		u8 op = rd8(a->p++);
		if (op == 0x10 || (op == 0x5b && rd8(a->p) == 0x82)) {
			/* Scope (\_SB_) { ... } or Device (NAME) { ... } */
			int is_dev = op == 0x5b;
			if (is_dev)
				a->p++;
			u64 end = aml_pkg_end(a);
			if (!end)
				return;
			struct aml inner = { a->p, end };
			aml_name(&inner);
			if (is_dev) {
				struct acpi_dev d = { 0 };
				aml_terms(&inner, &d, depth + 1);
				if (d.lnro && acpi.n_lnro < ACPI_MAX_DEVS)
					acpi.lnro[acpi.n_lnro++] = d;
				acpi.uarts += d.uart;
				acpi.pwrbs += d.pwrb;
				if (d.ged && !acpi.has_ged) {
					acpi.ged = d;
					acpi.has_ged = 1;
				}
			} else {
				aml_terms(&inner, dev, depth + 1);
			}
			a->p = end;
		} else if (op == 0x08) {
			/* Name (SEG, data) */
			u32 seg = aml_name(a);
			u8 kind = rd8(a->p);
			if (kind == 0x0d) {
				u64 s = ++a->p;
				while (a->p < a->end && rd8(a->p))
					a->p++;
				if (dev && seg == SEG_HID && token_is(s, a->p - s, "LNRO0005"))
					dev->lnro = 1;
				if (dev && seg == SEG_HID && token_is(s, a->p - s, "ACPI0013"))
					dev->ged = 1;
				if (dev && seg == SEG_HID && token_is(s, a->p - s, "PNP0C0C"))
					dev->pwrb = 1;
				a->p++;
			} else if (kind == 0x12) {
				/* Package (\_S5): skipped whole */
				a->p++;
				u64 end = aml_pkg_end(a);
				if (!end)
					return;
				if (!dev && seg == SEG_S5)
					acpi.s5 = 1;
				a->p = end;
			} else if (kind == 0x11) {
				a->p++;
				u64 end = aml_pkg_end(a);
				if (!end)
					return;
				struct aml buf = { a->p, end };
				u64 size = aml_integer(&buf);
				if (buf.p + size != end)
					acpi_fail("AML buffer size does not match its package");
				else if (dev && seg == SEG_CRS)
					aml_resources(buf.p, end, dev);
				a->p = end;
			} else {
				u64 v = aml_integer(a);
				if (dev && seg == SEG_HID && v == EISAID_PNP0501)
					dev->uart = 1;
			}
		} else if (op == 0x5b && rd8(a->p) == 0x80) {
			/* OperationRegion (NAME, space, offset, length) */
			a->p++;
			aml_name(a);
			u8 space = rd8(a->p++);
			u64 base = aml_integer(a);
			u64 len = aml_integer(a);
			if (dev && !dev->has_region) {
				dev->region_space = space;
				dev->region_base = base;
				dev->region_len = len;
				dev->has_region = 1;
			}
		} else if (op == 0x5b && rd8(a->p) == 0x81) {
			/* Field (REGION, flags) { NAME, bits, ... }: the first entry */
			a->p++;
			u64 end = aml_pkg_end(a);
			if (!end)
				return;
			aml_name(a);
			u8 flags = rd8(a->p++);
			if (dev && a->p + 4 < end) {
				a->p += 4;
				u64 bits_at = a->p;
				/* A field's PkgLength counts bits. */
				struct aml f = { a->p, ~0ull };
				u64 bits_end = aml_pkg_end(&f);
				dev->field_access = flags & 0xf;
				dev->field_bits = (u32)(bits_end - bits_at);
			}
			a->p = end;
		} else if (op == 0x14) {
			/* Method (NAME, flags) { ... }: only its name matters here */
			u64 end = aml_pkg_end(a);
			if (!end)
				return;
			if (dev && aml_name(a) == SEG_EVT)
				dev->has_evt = 1;
			a->p = end;
		} else {
			acpi_fail("unexpected AML opcode");
		}
	}
	if (a->p != a->end)
		acpi_fail("AML object runs past its package");
}

/* ---- Walk ------------------------------------------------------------------ */

static void acpi_walk(u64 rsdp)
{
	int xsdt = rd8(rsdp + 15) >= 2;
	u64 root = xsdt ? rd64(rsdp + 24) : rd32(rsdp + 16);
	u32 root_len = acpi_table(root, xsdt ? SIG_XSDT : SIG_RSDT);
	u32 entry = xsdt ? 8 : 4;
	u64 dsdt = 0;

	if (!root_len)
		return;
	for (u64 off = 36; off + entry <= root_len; off += entry) {
		u64 t = xsdt ? rd64(root + off) : rd32(root + off);
		u32 len = acpi_table(t, 0);
		if (!len)
			return;
		if (rd32(t) == SIG_FACP) {
			acpi.hw_reduced = len >= 116 && ((rd32(t + 112) >> 20) & 1);
			dsdt = len >= 148 ? rd64(t + 140) : 0;
			if (!dsdt)
				dsdt = rd32(t + 40);
			/* SLEEP_CONTROL_REG: a GAS at 244, address at 248. */
			if (len >= 256 && rd8(t + 244) == 1)
				acpi_sleep_port = (u16)rd64(t + 248);
		} else if (rd32(t) == SIG_APIC) {
			acpi_madt(t, len);
		}
	}
	if (!dsdt) {
		acpi_fail("no FADT with a DSDT");
		return;
	}
	u32 len = acpi_table(dsdt, SIG_DSDT);
	if (!len)
		return;
	struct aml a = { dsdt + 36, dsdt + len };
	aml_terms(&a, 0, 0);
	/* Like Linux: powering off needs the register and \_S5 both. */
	if (!acpi.s5)
		acpi_sleep_port = 0;
}

static void acpi_print(void)
{
	if (!acpi.rsdp && !acpi.error) {
		puts_serial("acpi: no rsdp\n");
		return;
	}
	if (acpi.error) {
		puts_serial("acpi: error ");
		puts_serial(acpi.error);
		putc_serial('\n');
		return;
	}
	puts_serial("acpi: rsdp=");
	put_hex_short(acpi.rsdp);
	puts_serial(" via=");
	puts_serial(acpi.via);
	puts_serial(" tables=");
	put_dec(acpi.tables);
	puts_serial(" hw_reduced=");
	put_dec(acpi.hw_reduced);
	puts_serial(" cpus=");
	put_dec(acpi.cpus);
	puts_serial(" ioapics=");
	put_dec(acpi.ioapics);
	puts_serial(" uarts=");
	put_dec(acpi.uarts);
	puts_serial(" lnro=");
	put_dec(acpi.n_lnro);
	putc_serial('\n');
	for (u32 i = 0; i < acpi.n_lnro; i++) {
		const struct acpi_dev *d = &acpi.lnro[i];
		puts_serial("acpi: lnro base=");
		put_hex_short(d->base);
		puts_serial(" size=");
		put_dec(d->size);
		puts_serial(" gsi=");
		put_dec(d->gsi);
		puts_serial(" edge=");
		put_dec((d->irq_flags >> 1) & 1);
		puts_serial(" low=");
		put_dec((d->irq_flags >> 2) & 1);
		if (!d->has_mem || !d->has_irq)
			puts_serial(" incomplete");
		putc_serial('\n');
	}
	if (acpi.has_ged) {
		static const char *const access[] = {
			"any", "byte", "word", "dword", "qword", "buffer"
		};
		const struct acpi_dev *g = &acpi.ged;
		puts_serial("acpi: ged gsi=");
		put_dec(g->gsi);
		puts_serial(" edge=");
		put_dec((g->irq_flags >> 1) & 1);
		puts_serial(" low=");
		put_dec((g->irq_flags >> 2) & 1);
		puts_serial(" sel=");
		if (!g->has_region) {
			puts_serial("none");
		} else {
			if (g->region_space == 0)
				puts_serial("mem");
			else if (g->region_space == 1)
				puts_serial("io");
			else {
				puts_serial("space");
				put_dec(g->region_space);
			}
			putc_serial(':');
			put_hex_short(g->region_base);
			putc_serial('/');
			put_dec(g->region_len);
		}
		puts_serial(" field=");
		puts_serial(g->field_access <= 5 ? access[g->field_access] : "?");
		putc_serial(':');
		put_dec(g->field_bits);
		puts_serial(" evt=");
		put_dec(g->has_evt);
		puts_serial(" pwrb=");
		put_dec(acpi.pwrbs);
		if (!g->has_irq)
			puts_serial(" incomplete");
		putc_serial('\n');
	}
}

/* Token devices, set aside while the DSDT's are registered first. */
static struct vdev acpi_tokens[MAX_VIRTIO_DEVS];

/*
 * Finds and checks the tables; prints them with guest.acpi=check. Unless
 * the command line says acpi=off, the guest then registers its virtio
 * devices the way a Linux kernel with both ACPI and virtio-mmio command-line
 * devices ends up with them: the DSDT's LNRO0005 devices first, then each
 * virtio_mmio.device= token whose window none of them has (a token for a
 * window the DSDT already described is a second registration of the same
 * window, which loses). It prints, after the acpi: lines,
 *   devices: dsdt=<LNRO0005 devices> tokens=<tokens> duplicates=<tokens
 *            naming a DSDT window> conflicts=<of those, with another size or IRQ>
 * Called after virtio_parse_cmdline().
 */
static void acpi_run(u32 kind, u64 boot_block, u64 cmdline)
{
	acpi_parse_cmdline(cmdline);
	acpi.rsdp = acpi_find_rsdp(kind, boot_block);
	if (acpi.rsdp && !acpi.error)
		acpi_walk(acpi.rsdp);
	if (acpi.check)
		acpi_print();
	if (!acpi.rsdp || acpi.error || acpi.cmdline_off || vcfg.n_bad_tokens)
		return;
	u32 n_tokens = vcfg.n_devs, dups = 0, conflicts = 0;
	for (u32 i = 0; i < n_tokens; i++)
		acpi_tokens[i] = vcfg.devs[i];
	vcfg.n_devs = 0;
	for (u32 i = 0; i < acpi.n_lnro && vcfg.n_devs < MAX_VIRTIO_DEVS; i++) {
		const struct acpi_dev *d = &acpi.lnro[i];
		if (!d->has_mem || !d->has_irq)
			continue;
		struct vdev *v = &vcfg.devs[vcfg.n_devs++];
		v->base = d->base;
		v->size = d->size;
		v->irq = d->gsi;
	}
	u32 n_dsdt = vcfg.n_devs;
	for (u32 t = 0; t < n_tokens; t++) {
		const struct vdev *tok = &acpi_tokens[t];
		int dup = 0;
		for (u32 i = 0; i < n_dsdt; i++) {
			if (vcfg.devs[i].base != tok->base)
				continue;
			dup = 1;
			if (vcfg.devs[i].size != tok->size || vcfg.devs[i].irq != tok->irq)
				conflicts++;
		}
		if (dup)
			dups++;
		else if (vcfg.n_devs < MAX_VIRTIO_DEVS)
			vcfg.devs[vcfg.n_devs++] = *tok;
	}
	puts_serial("devices: dsdt=");
	put_dec(n_dsdt);
	puts_serial(" tokens=");
	put_dec(n_tokens);
	puts_serial(" duplicates=");
	put_dec(dups);
	puts_serial(" conflicts=");
	put_dec(conflicts);
	putc_serial('\n');
}
