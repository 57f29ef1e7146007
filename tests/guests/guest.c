/*
 * altovirt test guest: the program shared by the ELF64, PVH and bzImage
 * images. An entry stub (entry64.S or entry_pvh.S) sets up long mode and a
 * stack, then calls guest_main(kind, info) with the physical address of the
 * Linux boot_params (ELF64, bzImage) or of the PVH hvm_start_info.
 *
 * Everything is printed on COM1, one item per line:
 *   altovirt-guest: boot=<elf64|pvh|bzimage>
 *   cmdline: <command line>
 *   e820: 0x<start, 16 hex> 0x<end exclusive, 16 hex> <type>   (per entry)
 *   mem: <bytes of type-1 RAM>
 *   initrd: addr=0x<hex> size=<decimal> sum=0x<FNV-1a 32, 8 hex>  (if any)
 *   acpi: ...   (only with guest.acpi=check; see acpi.c)
 *   cpus: mptable=<enabled processors in the MP table> started=<running>
 *   virtio: ..., blk: ..., rng: ..., console: ..., blk-bad: ..., net: ...
 *       (with virtio_mmio.device= or guest.virtio= words, or virtio-mmio
 *       devices in the ACPI DSDT; see virtio.c and acpi.c)
 *   ged: ...    (only with guest.ged=; see ged.c)
 *   boot-complete
 * then 123 goes to the boot-complete port 0x3F0 and the action chosen by
 * guest.exit= (reset, triplefault, halt, spin, poweroff) runs.
 *
 * The host is slow (~1 us per guest instruction), so nothing here loops
 * over much memory.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

enum boot_kind { BOOT_ELF64 = 0, BOOT_PVH = 1, BOOT_BZIMAGE = 2 };

/* ---- Port and memory access ------------------------------------------ */

static inline void outb(u16 port, u8 val)
{
	__asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 val;
	__asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
	return val;
}

/* Physical memory is identity-mapped; these read/write it by address. */
static inline u8 rd8(u64 addr) { return *(volatile u8 *)addr; }
static inline u16 rd16(u64 addr) { return *(volatile u16 *)addr; }
static inline u32 rd32(u64 addr) { return *(volatile u32 *)addr; }
static inline u64 rd64(u64 addr) { return *(volatile u64 *)addr; }
static inline void wr8(u64 addr, u8 v) { *(volatile u8 *)addr = v; }
static inline void wr32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

static inline void cpu_pause(void) { __asm__ volatile("pause" ::: "memory"); }

static inline u64 read_cr3(void)
{
	u64 v;
	__asm__ volatile("mov %%cr3, %0" : "=r"(v));
	return v;
}

/* gcc may emit calls to these for struct copies; there is no libc. */
void *memset(void *dst, int c, unsigned long n)
{
	u8 *d = dst;
	while (n--)
		*d++ = (u8)c;
	return dst;
}

void *memcpy(void *dst, const void *src, unsigned long n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

/* ---- COM1 output --------------------------------------------------------- */

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20

static void putc_serial(char c)
{
	/* Bounded, so a missing UART cannot hang the guest. */
	for (int i = 0; i < 100000 && !(inb(COM1_LSR) & LSR_THR_EMPTY); i++)
		cpu_pause();
	outb(COM1, (u8)c);
}

static void puts_serial(const char *s)
{
	while (*s)
		putc_serial(*s++);
}

static void put_hex(u64 v, int digits)
{
	for (int i = digits - 1; i >= 0; i--)
		putc_serial("0123456789abcdef"[(v >> (i * 4)) & 0xf]);
}

/* Hex with "0x" and no leading zeros. */
static void put_hex_short(u64 v)
{
	int digits = 1;
	while (digits < 16 && (v >> (digits * 4)))
		digits++;
	puts_serial("0x");
	put_hex(v, digits);
}

static void put_dec(u64 v)
{
	char buf[21];
	int i = sizeof(buf) - 1;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts_serial(&buf[i]);
}

/* ---- Boot information ------------------------------------------------------ */

#define MAX_E820 128
#define CMDLINE_MAX 4096

struct e820_entry {
	u64 addr;
	u64 size;
	u32 type;
};

struct boot_info {
	u64 cmdline;		/* physical address of a NUL-terminated string, or 0 */
	u32 n_e820;
	struct e820_entry e820[MAX_E820];
	int has_initrd;
	u64 initrd_addr;
	u64 initrd_size;
	const char *error;	/* set when the boot block is unusable */
};

static struct boot_info info;

/* Linux struct boot_params (the zero page), per bootparam.h. */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR_RAMDISK_IMAGE 0x218
#define BP_HDR_RAMDISK_SIZE 0x21c
#define BP_HDR_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0
#define BP_E820_ENTRY_SIZE 20	/* packed {u64 addr, u64 size, u32 type} */

static void parse_boot_params(u64 bp)
{
	u64 lo, hi;

	lo = rd32(bp + BP_HDR_CMD_LINE_PTR);
	hi = rd32(bp + BP_EXT_CMD_LINE_PTR);
	info.cmdline = lo | (hi << 32);

	info.n_e820 = rd8(bp + BP_E820_ENTRIES);
	if (info.n_e820 > MAX_E820)
		info.n_e820 = MAX_E820;
	for (u32 i = 0; i < info.n_e820; i++) {
		u64 e = bp + BP_E820_TABLE + (u64)i * BP_E820_ENTRY_SIZE;
		info.e820[i].addr = rd64(e);
		info.e820[i].size = rd64(e + 8);
		info.e820[i].type = rd32(e + 16);
	}

	lo = rd32(bp + BP_HDR_RAMDISK_IMAGE);
	hi = rd32(bp + BP_EXT_RAMDISK_IMAGE);
	info.initrd_addr = lo | (hi << 32);
	lo = rd32(bp + BP_HDR_RAMDISK_SIZE);
	hi = rd32(bp + BP_EXT_RAMDISK_SIZE);
	info.initrd_size = lo | (hi << 32);
	info.has_initrd = info.initrd_addr != 0 || info.initrd_size != 0;
}

/* Xen struct hvm_start_info (version 1), per xen/arch-x86/hvm/start_info.h. */
#define HVM_START_MAGIC 0x336ec578
#define SI_MAGIC 0x00
#define SI_NR_MODULES 0x0c
#define SI_MODLIST_PADDR 0x10
#define SI_CMDLINE_PADDR 0x18
#define SI_MEMMAP_PADDR 0x28
#define SI_MEMMAP_ENTRIES 0x30
#define MOD_PADDR 0x00		/* struct hvm_modlist_entry, 32 bytes */
#define MOD_SIZE 0x08
#define MEMMAP_ENTRY_SIZE 24	/* {u64 addr, u64 size, u32 type, u32 reserved} */

static void parse_start_info(u64 si)
{
	if (rd32(si + SI_MAGIC) != HVM_START_MAGIC) {
		info.error = "hvm_start_info magic is not 0x336ec578";
		return;
	}
	info.cmdline = rd64(si + SI_CMDLINE_PADDR);

	u64 memmap = rd64(si + SI_MEMMAP_PADDR);
	info.n_e820 = memmap ? rd32(si + SI_MEMMAP_ENTRIES) : 0;
	if (info.n_e820 > MAX_E820)
		info.n_e820 = MAX_E820;
	for (u32 i = 0; i < info.n_e820; i++) {
		u64 e = memmap + (u64)i * MEMMAP_ENTRY_SIZE;
		info.e820[i].addr = rd64(e);
		info.e820[i].size = rd64(e + 8);
		info.e820[i].type = rd32(e + 16);
	}

	u64 modlist = rd64(si + SI_MODLIST_PADDR);
	if (rd32(si + SI_NR_MODULES) != 0 && modlist != 0) {
		info.has_initrd = 1;
		info.initrd_addr = rd64(modlist + MOD_PADDR);
		info.initrd_size = rd64(modlist + MOD_SIZE);
	}
}

/* ---- Command line ---------------------------------------------------------- */

enum exit_action { EXIT_RESET, EXIT_TRIPLEFAULT, EXIT_HALT, EXIT_SPIN, EXIT_POWEROFF, EXIT_COUNTER, EXIT_TICKER };

static int is_space(u8 c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Does the token [tok, tok+len) equal the string s? */
static int token_is(u64 tok, u64 len, const char *s)
{
	u64 i = 0;
	for (; i < len && s[i]; i++)
		if (rd8(tok + i) != (u8)s[i])
			return 0;
	return i == len && s[i] == 0;
}

/* The last guest.exit= word wins; unknown values mean reset. */
static enum exit_action parse_exit_action(u64 cmdline)
{
	static const char key[] = "guest.exit=";
	const u64 key_len = sizeof(key) - 1;
	enum exit_action action = EXIT_RESET;
	u64 i = 0;

	if (!cmdline)
		return action;
	while (i < CMDLINE_MAX && rd8(cmdline + i)) {
		if (is_space(rd8(cmdline + i))) {
			i++;
			continue;
		}
		u64 start = i;
		while (i < CMDLINE_MAX && rd8(cmdline + i) && !is_space(rd8(cmdline + i)))
			i++;
		u64 len = i - start;
		if (len < key_len || !token_is(cmdline + start, key_len, key))
			continue;
		u64 val = cmdline + start + key_len, vlen = len - key_len;
		if (token_is(val, vlen, "reset"))
			action = EXIT_RESET;
		else if (token_is(val, vlen, "triplefault"))
			action = EXIT_TRIPLEFAULT;
		else if (token_is(val, vlen, "halt"))
			action = EXIT_HALT;
		else if (token_is(val, vlen, "spin"))
			action = EXIT_SPIN;
		else if (token_is(val, vlen, "poweroff"))
			action = EXIT_POWEROFF;
		else if (token_is(val, vlen, "counter"))
			action = EXIT_COUNTER;
		else if (token_is(val, vlen, "ticker"))
			action = EXIT_TICKER;
		else
			action = EXIT_RESET;
	}
	return action;
}

/* ---- Initrd checksum ------------------------------------------------------- */

/*
 * 32-bit FNV-1a over the bytes, in order: h = 0x811c9dc5; for each byte b:
 * h = (h ^ b) * 0x01000193 (mod 2^32). Memory is read 8 bytes at a time.
 */
static u32 fnv1a32(u64 addr, u64 size)
{
	u32 h = 0x811c9dc5u;
	u64 i = 0;

	for (; i + 8 <= size; i += 8) {
		u64 w = rd64(addr + i);
		for (int k = 0; k < 8; k++, w >>= 8)
			h = (h ^ (u8)w) * 0x01000193u;
	}
	for (; i < size; i++)
		h = (h ^ rd8(addr + i)) * 0x01000193u;
	return h;
}

/* ---- MP table and application processors ---------------------------------- */

#define MAX_CPUS 256

struct mp_cpus {
	u32 count;		/* enabled processor entries */
	u8 apic_id[MAX_CPUS];
};

static struct mp_cpus mp;

static int mp_checksum_ok(u64 addr, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += rd8(addr + i);
	return sum == 0;
}

/* The MP floating pointer: "_MP_" on a 16-byte boundary, 16 bytes summing to 0. */
static u64 mp_find_floating(u64 start, u64 end)
{
	for (u64 p = start; p + 16 <= end; p += 16)
		if (rd32(p) == 0x5f504d5f && mp_checksum_ok(p, 16))
			return p;
	return 0;
}

static void mp_parse(void)
{
	u64 fp = mp_find_floating(0x9fc00, 0xa0000);
	if (!fp)
		fp = mp_find_floating(0xf0000, 0x100000);
	if (!fp)
		return;
	u64 table = rd32(fp + 4);
	if (!table || rd32(table) != 0x504d4350)	/* "PCMP" */
		return;
	u64 len = rd16(table + 4);
	u32 entries = rd16(table + 0x22);
	u64 off = 44;		/* size of the configuration table header */

	for (u32 n = 0; n < entries && off < len; n++) {
		u8 type = rd8(table + off);
		if (type == 0) {	/* processor */
			if ((rd8(table + off + 3) & 1) && mp.count < MAX_CPUS)
				mp.apic_id[mp.count++] = rd8(table + off + 1);
			off += 20;
		} else if (type <= 4) {	/* bus, I/O APIC, I/O and local interrupt */
			off += 8;
		} else {
			break;
		}
	}
}

/* Real-mode trampoline (ap_tramp.S), copied to AP_TRAMP_BASE. */
extern const u8 ap_tramp_start[], ap_tramp_end[], ap_tramp_cr3[], ap_tramp_count[];
#define AP_TRAMP_BASE 0x1000	/* SIPI vector 0x01 */

#define LAPIC_BASE 0xfee00000ull
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY (1u << 12)
#define ICR_INIT 0x4500		/* INIT, level assert */
#define ICR_STARTUP 0x4600	/* start-up, level assert; | vector */
#define AP_WAIT_LOOPS 200000

static u32 lapic_read(u32 reg) { return rd32(LAPIC_BASE + reg); }
static void lapic_write(u32 reg, u32 v) { wr32(LAPIC_BASE + reg, v); }

static void short_delay(void)
{
	for (int i = 0; i < 200; i++)
		cpu_pause();
}

static void send_ipi(u8 apic_id, u32 icr)
{
	for (int i = 0; i < 10000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_pause();
	lapic_write(LAPIC_ICR_HI, (u32)apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr);
	for (int i = 0; i < 10000 && (lapic_read(LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_pause();
	short_delay();
}

/* Starts every other CPU listed in the MP table; returns how many reported in. */
static u32 start_aps(void)
{
	u64 cr3_at = AP_TRAMP_BASE + (u64)(ap_tramp_cr3 - ap_tramp_start);
	u64 count_at = AP_TRAMP_BASE + (u64)(ap_tramp_count - ap_tramp_start);
	u64 size = (u64)(ap_tramp_end - ap_tramp_start);
	u8 self = (u8)(lapic_read(LAPIC_ID) >> 24);
	u32 want = mp.count - 1;

	for (u64 i = 0; i < size; i++)
		wr8(AP_TRAMP_BASE + i, ap_tramp_start[i]);
	wr32(cr3_at, (u32)read_cr3());
	wr32(count_at, 0);

	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100);	/* APIC on */
	for (u32 i = 0; i < mp.count; i++) {
		if (mp.apic_id[i] == self)
			continue;
		send_ipi(mp.apic_id[i], ICR_INIT);
		send_ipi(mp.apic_id[i], ICR_STARTUP | (AP_TRAMP_BASE >> 12));
		send_ipi(mp.apic_id[i], ICR_STARTUP | (AP_TRAMP_BASE >> 12));
	}
	for (u32 i = 0; i < AP_WAIT_LOOPS && rd32(count_at) < want; i++)
		cpu_pause();
	return rd32(count_at);
}

/* ---- Exit actions ---------------------------------------------------------- */

#define BOOT_COMPLETE_PORT 0x3f0
#define BOOT_COMPLETE_VALUE 123
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

/* FADT sleep control register (system I/O), found by acpi.c; 0 if none. */
static u16 acpi_sleep_port;
/* Sleep control register: SLP_TYP (bits 2-4) for S5, and SLP_EN. */
#define SLP_TYP_S5 5
#define SLP_EN 0x20

static void __attribute__((noreturn)) halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/*
 * guest.exit=counter (snapshot tests): each byte received on COM1 adds one
 * to a counter kept in memory and in a register, and the guest prints both
 * with a checksum of a page it filled at boot. A guest restored from a
 * snapshot continues the count: its registers, its memory and the UART
 * came back.
 */
static volatile u32 counter_mem;
static u8 counter_page[4096];

static void __attribute__((noreturn)) run_counter(void)
{
	for (u32 i = 0; i < sizeof(counter_page); i++)
		counter_page[i] = (u8)(i * 7 + 3);
	u32 in_reg = 0;
	puts_serial("counter: ready\n");
	for (;;) {
		while (!(inb(COM1_LSR) & 1))
			cpu_pause();
		(void)inb(COM1);
		in_reg++;
		counter_mem = counter_mem + 1;
		puts_serial("count ");
		put_dec(counter_mem);
		puts_serial(" reg ");
		put_dec(in_reg);
		puts_serial(" sum 0x");
		put_hex(fnv1a32((u64)counter_page, sizeof(counter_page)), 8);
		putc_serial('\n');
	}
}

/*
 * guest.exit=ticker (VM templates): prints "tick N" about every 2^27 TSC
 * cycles, N counted in memory. A VM started from a template taken after
 * "tick K" goes on with "tick K+1" (or a little later), never "tick 1".
 */
static volatile u32 ticks;

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static void __attribute__((noreturn)) run_ticker(void)
{
	u64 last = rdtsc();
	for (;;) {
		while (rdtsc() - last < (1ull << 27))
			cpu_pause();
		last = rdtsc();
		ticks = ticks + 1;
		puts_serial("tick ");
		put_dec(ticks);
		putc_serial('\n');
	}
}

static void __attribute__((noreturn)) do_exit(enum exit_action action)
{
	switch (action) {
	case EXIT_TICKER:
		run_ticker();
	case EXIT_COUNTER:
		run_counter();
	case EXIT_TRIPLEFAULT: {
		/*
		 * #UD with an empty IDT: #GP, then #DF, then shutdown. (ud2, not
		 * int3: on a nested KVM host int3 here ended in
		 * KVM_EXIT_INTERNAL_ERROR instead of a triple fault.)
		 */
		struct __attribute__((packed)) { u16 limit; u64 base; } idt = { 0, 0 };
		__asm__ volatile("cli; lidt %0; ud2" : : "m"(idt));
		break;
	}
	case EXIT_HALT:
		puts_serial("halting\n");
		break;
	case EXIT_SPIN:
		puts_serial("spinning\n");
		__asm__ volatile("cli");
		for (;;)
			cpu_pause();
	case EXIT_RESET:
		outb(I8042_COMMAND, I8042_RESET);
		break;
	case EXIT_POWEROFF:
		/* ACPI S5 through the FADT's sleep control register, as Linux does. */
		if (acpi_sleep_port) {
			outb(acpi_sleep_port, (SLP_TYP_S5 << 2) | SLP_EN);
			/* The VMM stops the vCPUs a moment after the write. */
			for (u32 k = 0; k < 1000000; k++)
				cpu_pause();
		}
		/* Still running: no register (or it did nothing). Reset instead. */
		puts_serial("poweroff: no ACPI sleep control register\n");
		outb(I8042_COMMAND, I8042_RESET);
		break;
	}
	halt_forever();
}

/* ---- virtio-mmio devices (guest.virtio= tests) ---------------------------- */

#include "virtio.c"

/* ---- ACPI tables (guest.acpi=check; virtio devices from the DSDT) ---------- */

#include "acpi.c"

/* ---- ACPI Generic Event Device (guest.ged=; the power button) ---------------- */

#include "ged.c"

/* ---- Main ------------------------------------------------------------------ */

static const char *const boot_names[] = { "elf64", "pvh", "bzimage" };

void __attribute__((noreturn)) guest_main(u32 kind, u64 boot_block)
{
	puts_serial("altovirt-guest: boot=");
	puts_serial(kind <= BOOT_BZIMAGE ? boot_names[kind] : "unknown");
	putc_serial('\n');

	if (kind == BOOT_PVH)
		parse_start_info(boot_block);
	else
		parse_boot_params(boot_block);
	if (info.error) {
		puts_serial("error: ");
		puts_serial(info.error);
		putc_serial('\n');
	}

	puts_serial("cmdline: ");
	for (u64 i = 0; info.cmdline && i < CMDLINE_MAX && rd8(info.cmdline + i); i++)
		putc_serial((char)rd8(info.cmdline + i));
	putc_serial('\n');

	u64 ram = 0;
	for (u32 i = 0; i < info.n_e820; i++) {
		const struct e820_entry *e = &info.e820[i];
		puts_serial("e820: 0x");
		put_hex(e->addr, 16);
		puts_serial(" 0x");
		put_hex(e->addr + e->size, 16);
		putc_serial(' ');
		put_dec(e->type);
		putc_serial('\n');
		if (e->type == 1)
			ram += e->size;
	}
	puts_serial("mem: ");
	put_dec(ram);
	putc_serial('\n');

	if (info.has_initrd) {
		puts_serial("initrd: addr=");
		put_hex_short(info.initrd_addr);
		puts_serial(" size=");
		put_dec(info.initrd_size);
		puts_serial(" sum=0x");
		put_hex(fnv1a32(info.initrd_addr, info.initrd_size), 8);
		putc_serial('\n');
	}

	/* Read the exit action before the AP trampoline overwrites low memory. */
	enum exit_action action = parse_exit_action(info.cmdline);
	enum ged_mode ged = ged_parse(info.cmdline);
	virtio_parse_cmdline(info.cmdline);
	acpi_run(kind, boot_block, info.cmdline);

	mp_parse();
	u32 started = 1;
	if (mp.count > 1)
		started += start_aps();
	puts_serial("cpus: mptable=");
	put_dec(mp.count);
	puts_serial(" started=");
	put_dec(started);
	putc_serial('\n');

	virtio_run();
	ged_run(ged);

	puts_serial("boot-complete\n");
	outb(BOOT_COMPLETE_PORT, BOOT_COMPLETE_VALUE);
	do_exit(action);
}
