/*
 * altovirt test guest: virtio-balloon (guest.virtio=balloon).
 *
 * Included by virtio.c (after the hotplug helpers), like nethotplug.c.
 *
 * Gives the host back pages of a region of its RAM ([32 MiB, 32 MiB +
 * guest.balloon.mib MiB), 32 MiB by default) as a balloon driver does:
 * touches every page of the region (a marker in its first 8 bytes, so the
 * host backs it with memory), negotiates (DEFLATE_ON_OOM and REPORTING
 * when offered), sets up inflateq 0, deflateq 1 and, with REPORTING,
 * reporting_vq 2, then polls num_pages. When the host asks for more pages
 * it sends their page frame numbers (256 per buffer) on the inflate queue
 * and writes actual; when it asks for fewer it sends them on the deflate
 * queue, checks which of them read back as zero (the host discarded them),
 * writes its markers again and writes actual. A target beyond the region
 * is capped to the region.
 *
 * With REPORTING, once guest.balloon.events= changes were served it prints
 * "report-ready" and waits for one more configuration change (a QMP
 * balloon command), then reports the whole (re-touched) region as free on
 * reporting_vq, 2 MiB per descriptor, and checks that it reads as zero.
 *
 * Output:
 *   balloon: ready pages=<region pages> num_pages=<n> actual=<n> deflate-on-oom=<0|1> reporting=<0|1>
 *   balloon: inflated actual=<n>
 *   balloon: deflated actual=<n> zeroed=<pages of those given back that read as zero>
 *   balloon: report-ready
 *   balloon: reported bytes=<n> zeroed=<z>/<m>  (z of m sampled pages, one
 *                                               per MiB, read as zero)
 *   balloon: done | balloon: timeout
 * The device is left running (not reset), so actual stays as written.
 */

#define ID_BALLOON 5
#define BAL_F_DEFLATE_ON_OOM (1ull << 2)
#define BAL_F_REPORTING (1ull << 5)
#define BAL_BASE (32ull << 20)
#define BAL_MIB_DEFAULT 32
#define BAL_MIB_MAX 512
#define BAL_EVENTS_DEFAULT 2
#define BAL_PAGE 4096ull
#define BAL_PFNS 256		/* per buffer, as Linux sends them */
#define BAL_REPORT_CHUNK (2ull << 20)
#define BAL_MARK 0xba11000000000000ull

static u32 bal_pfns[BAL_PFNS] __attribute__((aligned(16)));

static struct {
	const struct vdev *d;
	struct vq inf, def, rep;
	u64 pages;		/* pages in the region */
	u64 held;		/* pages in the balloon, from the region's start */
} bal;

static void bal_mark(u64 first, u64 end)
{
	for (u64 i = first; i < end; i++)
		*(volatile u64 *)(BAL_BASE + i * BAL_PAGE) = BAL_MARK | i;
}

static u64 bal_zeroed(u64 first, u64 end)
{
	u64 n = 0;
	for (u64 i = first; i < end; i++)
		n += *(volatile u64 *)(BAL_BASE + i * BAL_PAGE) == 0;
	return n;
}

/* Sends the page frame numbers of region pages [first, end) on q. */
static int bal_send(struct vq *q, u64 first, u64 end)
{
	struct vq_used_elem e;

	while (first < end) {
		u32 n = end - first < BAL_PFNS ? (u32)(end - first) : BAL_PFNS;
		for (u32 i = 0; i < n; i++)
			bal_pfns[i] = (u32)((BAL_BASE >> 12) + first + i);
		vq_set_desc(q, 0, (u64)bal_pfns, n * 4, 0, 0);
		vq_publish(q, 0);
		vq_notify(q);
		if (!vq_wait(q, WAIT_REQUEST, &e))
			return 0;
		first += n;
	}
	return 1;
}

static void bal_set_actual(void)
{
	vm_wr(bal.d->base, VM_CONFIG + 4, (u32)bal.held);
}

/* Follows num_pages once; returns 1 if the balloon changed, -1 on error. */
static int bal_follow(void)
{
	u64 want = vm_rd(bal.d->base, VM_CONFIG);
	u32 isr = vm_rd(bal.d->base, VM_INTERRUPT_STATUS);

	if (isr)
		vm_wr(bal.d->base, VM_INTERRUPT_ACK, isr);
	if (want > bal.pages)
		want = bal.pages;
	if (want == bal.held)
		return 0;
	if (want > bal.held) {
		if (!bal_send(&bal.inf, bal.held, want))
			return -1;
		bal.held = want;
		bal_set_actual();
		puts_serial("balloon: inflated actual=");
		put_dec(bal.held);
		putc_serial('\n');
	} else {
		if (!bal_send(&bal.def, want, bal.held))
			return -1;
		u64 zeroed = bal_zeroed(want, bal.held);
		bal_mark(want, bal.held);
		bal.held = want;
		bal_set_actual();
		puts_serial("balloon: deflated actual=");
		put_dec(bal.held);
		puts_serial(" zeroed=");
		put_dec(zeroed);
		putc_serial('\n');
	}
	return 1;
}

/* Pauses one polling round; returns 0 once the budget is spent. */
static int bal_pause(u64 *budget)
{
	u64 cost = HP_ROUND_PAUSES + 3 * HP_ROUND_MMIO_COST;
	*budget = *budget > cost ? *budget - cost : 0;
	for (u32 k = 0; k < HP_ROUND_PAUSES; k++)
		cpu_pause();
	return *budget != 0;
}

/* Reports the whole region as free, 2 MiB per descriptor. */
static void bal_report(void)
{
	struct vq_used_elem e;
	u64 addr = BAL_BASE, end = BAL_BASE + bal.pages * BAL_PAGE, bytes = 0;

	while (addr < end) {
		u16 n = 0;
		while (addr < end && n < bal.rep.size) {
			u64 len = end - addr < BAL_REPORT_CHUNK ? end - addr : BAL_REPORT_CHUNK;
			vq_set_desc(&bal.rep, n, addr, (u32)len, DESC_F_WRITE | DESC_F_NEXT, n + 1);
			addr += len;
			bytes += len;
			n++;
		}
		bal.rep.r->desc[n - 1].flags = DESC_F_WRITE;
		vq_publish(&bal.rep, 0);
		vq_notify(&bal.rep);
		if (!vq_wait(&bal.rep, WAIT_REQUEST, &e)) {
			say("balloon", "report timeout");
			return;
		}
	}
	/*
	 * One page per MiB is checked: reading a discarded page of shared
	 * memory (a memfd) allocates it again, and the host measures its
	 * memory after this line.
	 */
	u64 zeroed = 0;
	for (u64 i = 0; i < bal.pages; i += 256)
		zeroed += bal_zeroed(i, i + 1);
	puts_serial("balloon: reported bytes=");
	put_dec(bytes);
	puts_serial(" zeroed=");
	put_dec(zeroed);
	putc_serial('/');
	put_dec((bal.pages + 255) / 256);
	putc_serial('\n');
}

static int bal_region_in_ram(void)
{
	u64 end = BAL_BASE + bal.pages * BAL_PAGE;
	for (u32 i = 0; i < info.n_e820; i++) {
		const struct e820_entry *e = &info.e820[i];
		if (e->type == 1 && e->addr <= BAL_BASE && e->addr + e->size >= end)
			return 1;
	}
	return 0;
}

static void test_balloon(void)
{
	u64 mib = vcfg.bal_mib ? vcfg.bal_mib : BAL_MIB_DEFAULT;
	u64 want_events = vcfg.bal_events_set ? vcfg.bal_events : BAL_EVENTS_DEFAULT;
	u64 wait = vcfg.hp_wait_set ? vcfg.hp_wait : HP_WAIT_DEFAULT;
	u64 features;

	bal.d = vdev_find(ID_BALLOON);
	if (!bal.d) {
		say("balloon", "no device");
		return;
	}
	if (mib > BAL_MIB_MAX)
		mib = BAL_MIB_MAX;
	if (wait > HP_WAIT_MAX)
		wait = HP_WAIT_MAX;
	bal.pages = mib << 8;
	bal.held = 0;
	if (!bal_region_in_ram()) {
		say("balloon", "region not in RAM");
		return;
	}
	bal_mark(0, bal.pages);
	if (!vdev_begin(bal.d, BAL_F_DEFLATE_ON_OOM | BAL_F_REPORTING, &features, "balloon") ||
	    !vq_setup(&bal.inf, bal.d, 0, RING_BAL_INF, "balloon") ||
	    !vq_setup(&bal.def, bal.d, 1, RING_BAL_DEF, "balloon"))
		return;
	int reporting = (features & BAL_F_REPORTING) != 0;
	if (reporting && !vq_setup(&bal.rep, bal.d, 2, RING_BAL_REP, "balloon"))
		return;
	if (!(vdev_driver_ok(bal.d) & ST_DRIVER_OK)) {
		vdev_fail(bal.d, "balloon", "DRIVER_OK not kept");
		return;
	}
	puts_serial("balloon: ready pages=");
	put_dec(bal.pages);
	puts_serial(" num_pages=");
	put_dec(vm_rd(bal.d->base, VM_CONFIG));
	puts_serial(" actual=");
	put_dec(vm_rd(bal.d->base, VM_CONFIG + 4));
	puts_serial(features & BAL_F_DEFLATE_ON_OOM ? " deflate-on-oom=1" : " deflate-on-oom=0");
	puts_serial(reporting ? " reporting=1\n" : " reporting=0\n");

	u64 budget = wait * HP_ITERS_PER_SEC, events = 0;
	while (events < want_events) {
		int r = bal_follow();
		if (r < 0) {
			say("balloon", "request timeout");
			vdev_reset(bal.d);
			return;
		}
		events += (u64)r;
		if (events < want_events && !bal_pause(&budget)) {
			say("balloon", "timeout");
			vdev_reset(bal.d);
			return;
		}
	}
	if (reporting) {
		u32 gen = vm_rd(bal.d->base, VM_CONFIG_GENERATION);
		say("balloon", "report-ready");
		while (vm_rd(bal.d->base, VM_CONFIG_GENERATION) == gen) {
			if (!bal_pause(&budget)) {
				say("balloon", "timeout");
				vdev_reset(bal.d);
				return;
			}
		}
		bal_report();
	}
	/* The driver stays: the balloon keeps its pages (no reset). */
	say("balloon", "done");
}
