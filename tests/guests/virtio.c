/*
 * altovirt test guest: virtio-mmio (version 2, virtio 1.x split virtqueues)
 * probing and device tests.
 *
 * Not a translation unit of its own: guest.c includes this file after its
 * helpers (MMIO/port access, COM1 output, fnv1a32, the boot info), so the
 * three images need no extra build step.
 *
 * Command line:
 *   virtio_mmio.device=<size>@<base>:<irq>[:<id>]  one per device, as Linux
 *       parses it (size with an optional K/M/G suffix; numbers in decimal,
 *       0x hex or 0 octal)
 *   guest.virtio=<test>[,<test>...]  blk, rng, console, console-steps
 *                                    (snapshot tests; never returns),
 *                                    blk-bad, net, vsock,
 *                                    blkbench, hotplug, net-hotplug, fs,
 *                                    balloon, log-flood, net-rx (run
 *                                    in the order given; net-hotplug is in
 *                                    nethotplug.c, net-rx in netrx.c,
 *                                    fs in virtiofs.c, balloon in
 *                                    balloon.c)
 *   guest.blkwrite=1                 blk also writes, flushes and re-reads
 *                                    sector 1
 *   guest.vsockport=<n>              vsock: host port to connect to (1234
 *                                    if absent or 0)
 *   guest.vsocklisten=<n>            vsock: also accept one host connection
 *                                    to guest port n
 *   guest.blkbench=<bytes>:<count>   blkbench: count sequential reads of
 *                                    bytes each (a multiple of 512, at most
 *                                    65536)
 *   guest.netrx=<count>              net-rx: sequence frames to wait for
 *   guest.hotplug.wait=<seconds>     hotplug: how long to wait for events
 *                                    (default 30; a rough pause budget)
 *   guest.hotplug.events=<n>         hotplug: events to wait for (default 2)
 *   guest.balloon.mib=<n>            balloon: size of the region it may give
 *                                    back (default 32)
 *   guest.balloon.events=<n>         balloon: changes to serve (default 2);
 *                                    guest.hotplug.wait= bounds the wait
 *
 * Output (after the cpus: line, before boot-complete):
 *   virtio: base=0x<hex> irq=<n> id=<device id>      (per token; 0 = empty)
 *   blk: capacity=<sectors> ro=<0|1>
 *   blk: sector0 sum=0x<fnv1a32 of 512 bytes, 8 hex>
 *   blk: id=<serial up to NUL>
 *   blk: write status=<n>          \
 *   blk: flush status=<n>           } with guest.blkwrite=1
 *   blk: readback <ok|mismatch>    /
 *   blk: done
 *   rng: len=<used len> nonzero=<non-zero bytes of 64>
 *   console: tx done
 *   console: rx=<bytes received up to the newline> | console: rx timeout
 *   blk-bad: <loop|oob|huge> used=<0|1> status=0x<device status, hex>
 *   blk-bad: recovered sum=0x<fnv1a32 of sector 0, 8 hex>
 *   net: mac=<xx:xx:xx:xx:xx:xx> status=<config status|none without F_STATUS>
 *   net: tx done                 (a 60-byte broadcast frame from the MAC,
 *                                 ethertype 0x88b5, payload "altovirt-net-tx")
 *   net: rx=<payload of the first 0x88b5 frame, up to a NUL or non-printable
 *            byte> | net: rx timeout      (other frames are skipped)
 *   net: done
 *   vsock: cid=<guest_cid>
 *   vsock: connected port=<n> | vsock: connect refused | vsock: connect timeout
 *   vsock: rx=<payload of the host's answer, up to the newline> | vsock: rx timeout
 *   vsock: closed | vsock: close timeout   (after our SHUTDOWN; closed means
 *                                          the host sent RST, or SHUTDOWN
 *                                          that we answered with RST)
 *   vsock: accepted rx=<payload, up to the newline> | vsock: accept timeout |
 *          vsock: accepted rx timeout     (with guest.vsocklisten=)
 *   vsock: accepted done
 *   vsock: done
 *   log-flood: writes=<n>          (n invalid queue sizes written to the rng
 *                                   device, each one a host warning)
 *   blkbench: bytes=<b> count=<requests issued> errors=<non-zero status or timeout>
 *   hotplug: at boot slot=<i> capacity=<N> sum=0x<fnv1a32 of sector 0>
 *            (per blk device already holding a disk; "read status=<n>"
 *             instead of sum= if the read fails)
 *   hotplug: slots=<blk devices>   (every blk device is a slot, initialised
 *   hotplug: ready                  at once; slot i = i-th blk device, 0-based)
 *   hotplug: slot=<i> added capacity=<N> sum=0x<fnv1a32 of sector 0, 8 hex>
 *            (if that read fails: "hotplug: slot=<i> added capacity=<N>" then
 *             "hotplug: slot=<i> read status=<n|timeout>")
 *   hotplug: slot=<i> removed
 *   hotplug: slot=<i> resized capacity=<M>
 *   hotplug: done | hotplug: timeout   (after guest.hotplug.events= events, or
 *                                      when the wait budget runs out)
 * Failures print "<test>: ..." lines saying what went wrong instead.
 *
 * The guest runs with interrupts off and polls the used rings; every wait
 * is bounded. Virtqueue memory is in .bss (identity-mapped, so virtual ==
 * physical addresses).
 */

/* ---- Registers (virtio 1.x, 4.2.2) ------------------------------------- */

#define VIRTIO_MAGIC 0x74726976	/* "virt" */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG_GENERATION 0x0fc
#define VM_CONFIG 0x100

/* Device status bits (2.1). */
#define ST_ACKNOWLEDGE 0x01
#define ST_DRIVER 0x02
#define ST_DRIVER_OK 0x04
#define ST_FEATURES_OK 0x08
#define ST_NEEDS_RESET 0x40
#define ST_FAILED 0x80

#define F_VERSION_1 (1ull << 32)

/* Device IDs (5). */
#define ID_NET 1
#define ID_BLK 2
#define ID_CONSOLE 3
#define ID_RNG 4
#define ID_VSOCK 19

/* Split virtqueue descriptor flags (2.7.5). */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define AVAIL_F_NO_INTERRUPT 1

/* Polling bounds, in pause iterations (the host is slow: keep them small). */
#define WAIT_REQUEST 300000	/* a request that should complete */
#define WAIT_BENCH (WAIT_REQUEST * 100)	/* one an I/O rate limit may hold back */
#define WAIT_BAD 50000		/* a malformed request that may never complete */
#define WAIT_CONSOLE_RX 300000	/* the host side echoing a line back */
#define WAIT_NET_RX 300000	/* the host side answering a frame */
#define WAIT_RESET 1000

static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static u32 vm_rd(u64 base, u32 reg) { return rd32(base + reg); }
static void vm_wr(u64 base, u32 reg, u32 v) { wr32(base + reg, v); }

/* ---- Command line ------------------------------------------------------- */

#define MAX_VIRTIO_DEVS 32
#define VIRTIO_TESTS_MAX 128

struct vdev {
	u64 base;
	u64 size;
	u32 irq;
	u32 id;			/* DeviceID, valid when usable */
	int usable;		/* magic and version 2 checked */
};

static struct {
	u32 n_devs;
	u32 n_bad_tokens;
	struct vdev devs[MAX_VIRTIO_DEVS];
	char tests[VIRTIO_TESTS_MAX];	/* the last guest.virtio= value */
	int blkwrite;
	u64 vsock_port;		/* guest.vsockport=, default VSOCK_DEFAULT_PORT */
	u64 vsock_listen;	/* guest.vsocklisten=, 0 = do not accept */
	u64 bench_bytes, bench_count;	/* guest.blkbench= */
	int bench_bad;		/* guest.blkbench= did not parse */
	u64 netrx_count;	/* guest.netrx= */
	u64 hp_wait;		/* guest.hotplug.wait= seconds, default HP_WAIT_DEFAULT */
	u64 hp_events;		/* guest.hotplug.events=, default HP_EVENTS_DEFAULT */
	int hp_wait_set, hp_events_set;
	u64 bal_mib;		/* guest.balloon.mib=, 0 = default */
	u64 bal_events;		/* guest.balloon.events= */
	int bal_events_set;
} vcfg;

/* Does [tok, tok+len) start with the string s? */
static int token_starts(u64 tok, u64 len, const char *s)
{
	u64 i = 0;
	for (; s[i]; i++)
		if (i >= len || rd8(tok + i) != (u8)s[i])
			return 0;
	return 1;
}

/*
 * Parses an unsigned number at [*p, end) the way the kernel's base-0
 * conversions do (0x hex, leading 0 octal, else decimal). With suffix set,
 * a K/M/G/T (any case) multiplier may follow. Returns 0 if no digit.
 */
static int parse_num(u64 *p, u64 end, int suffix, u64 *out)
{
	u64 i = *p, v = 0;
	u32 radix = 10;
	int digits = 0;

	if (i < end && rd8(i) == '0') {
		radix = 8;
		digits = 1;	/* a lone "0" is a number */
		i++;
		if (i + 1 < end && (rd8(i) | 0x20) == 'x') {
			radix = 16;
			digits = 0;
			i++;
		}
	}
	for (; i < end; i++) {
		u8 c = rd8(i);
		u32 d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			d = (c | 0x20) - 'a' + 10;
		else
			break;
		if (d >= radix)
			break;
		v = v * radix + d;
		digits++;
	}
	if (!digits)
		return 0;
	if (suffix && i < end) {
		int shift = 0;
		switch (rd8(i) | 0x20) {
		case 'k': shift = 10; break;
		case 'm': shift = 20; break;
		case 'g': shift = 30; break;
		case 't': shift = 40; break;
		}
		if (shift) {
			v <<= shift;
			i++;
		}
	}
	*p = i;
	*out = v;
	return 1;
}

/* <size>@<base>:<irq>[:<platform id>] */
static int parse_device_token(u64 s, u64 end, struct vdev *d)
{
	u64 irq;

	if (!parse_num(&s, end, 1, &d->size) || s >= end || rd8(s++) != '@')
		return 0;
	if (!parse_num(&s, end, 0, &d->base) || s >= end || rd8(s++) != ':')
		return 0;
	if (!parse_num(&s, end, 0, &irq))
		return 0;
	d->irq = (u32)irq;
	return s == end || rd8(s) == ':';
}

/*
 * Reads the virtio options from the command line. Called early, before the
 * AP trampoline may overwrite low memory where a command line could live.
 */
static void virtio_parse_cmdline(u64 cmdline)
{
	static const char dev_key[] = "virtio_mmio.device=";
	static const char test_key[] = "guest.virtio=";
	static const char write_key[] = "guest.blkwrite=";
	static const char vport_key[] = "guest.vsockport=";
	static const char vlisten_key[] = "guest.vsocklisten=";
	static const char bench_key[] = "guest.blkbench=";
	static const char hpwait_key[] = "guest.hotplug.wait=";
	static const char hpevents_key[] = "guest.hotplug.events=";
	static const char balmib_key[] = "guest.balloon.mib=";
	static const char balevents_key[] = "guest.balloon.events=";
	static const char netrx_key[] = "guest.netrx=";
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
		u64 tok = cmdline + start, len = i - start;

		if (token_starts(tok, len, dev_key)) {
			struct vdev d = { 0 };
			u64 k = sizeof(dev_key) - 1;
			if (!parse_device_token(tok + k, tok + len, &d))
				vcfg.n_bad_tokens++;
			else if (vcfg.n_devs < MAX_VIRTIO_DEVS)
				vcfg.devs[vcfg.n_devs++] = d;
		} else if (token_starts(tok, len, test_key)) {
			u64 k = sizeof(test_key) - 1, n = 0;
			for (; k < len && n < VIRTIO_TESTS_MAX - 1; k++, n++)
				vcfg.tests[n] = (char)rd8(tok + k);
			vcfg.tests[n] = 0;
		} else if (token_starts(tok, len, write_key)) {
			u64 k = sizeof(write_key) - 1;
			vcfg.blkwrite = len == k + 1 && rd8(tok + k) == '1';
		} else if (token_starts(tok, len, vport_key)) {
			u64 p = tok + sizeof(vport_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len)
				vcfg.vsock_port = v;
		} else if (token_starts(tok, len, vlisten_key)) {
			u64 p = tok + sizeof(vlisten_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len)
				vcfg.vsock_listen = v;
		} else if (token_starts(tok, len, bench_key)) {
			u64 p = tok + sizeof(bench_key) - 1, b, c;
			vcfg.bench_bad = !(parse_num(&p, tok + len, 1, &b) && p < tok + len &&
					   rd8(p++) == ':' && parse_num(&p, tok + len, 0, &c) &&
					   p == tok + len);
			if (!vcfg.bench_bad) {
				vcfg.bench_bytes = b;
				vcfg.bench_count = c;
			}
		} else if (token_starts(tok, len, hpwait_key)) {
			u64 p = tok + sizeof(hpwait_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len) {
				vcfg.hp_wait = v;
				vcfg.hp_wait_set = 1;
			}
		} else if (token_starts(tok, len, hpevents_key)) {
			u64 p = tok + sizeof(hpevents_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len) {
				vcfg.hp_events = v;
				vcfg.hp_events_set = 1;
			}
		} else if (token_starts(tok, len, netrx_key)) {
			u64 p = tok + sizeof(netrx_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len)
				vcfg.netrx_count = v;
		} else if (token_starts(tok, len, balmib_key)) {
			u64 p = tok + sizeof(balmib_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len)
				vcfg.bal_mib = v;
		} else if (token_starts(tok, len, balevents_key)) {
			u64 p = tok + sizeof(balevents_key) - 1, v;
			if (parse_num(&p, tok + len, 0, &v) && p == tok + len) {
				vcfg.bal_events = v;
				vcfg.bal_events_set = 1;
			}
		}
	}
}

/* ---- Device set-up (3.1.1) ------------------------------------------------ */

static void line_start(const char *prefix)
{
	puts_serial(prefix);
	puts_serial(": ");
}

static void say(const char *prefix, const char *msg)
{
	line_start(prefix);
	puts_serial(msg);
	putc_serial('\n');
}

/* Writes 0 to Status and waits (bounded) until the device reads back 0. */
static int vdev_reset(const struct vdev *d)
{
	vm_wr(d->base, VM_STATUS, 0);
	for (int i = 0; i < WAIT_RESET; i++) {
		if (vm_rd(d->base, VM_STATUS) == 0)
			return 1;
		cpu_pause();
	}
	return 0;
}

static void vdev_set_status(const struct vdev *d, u32 bits)
{
	vm_wr(d->base, VM_STATUS, vm_rd(d->base, VM_STATUS) | bits);
}

static void vdev_fail(const struct vdev *d, const char *prefix, const char *why)
{
	vdev_set_status(d, ST_FAILED);
	line_start(prefix);
	puts_serial("init failed (");
	puts_serial(why);
	puts_serial(")\n");
}

/*
 * Reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 is required;
 * the driver accepts the offered subset of `want`), FEATURES_OK. Queues and
 * DRIVER_OK follow separately. Returns 1 on success with the accepted
 * features in *accepted; otherwise prints "<prefix>: init failed (...)".
 */
static int vdev_begin(const struct vdev *d, u64 want, u64 *accepted, const char *prefix)
{
	if (!vdev_reset(d)) {
		vdev_fail(d, prefix, "reset");
		return 0;
	}
	vdev_set_status(d, ST_ACKNOWLEDGE);
	vdev_set_status(d, ST_DRIVER);

	vm_wr(d->base, VM_DEVICE_FEATURES_SEL, 0);
	u64 offered = vm_rd(d->base, VM_DEVICE_FEATURES);
	vm_wr(d->base, VM_DEVICE_FEATURES_SEL, 1);
	offered |= (u64)vm_rd(d->base, VM_DEVICE_FEATURES) << 32;
	if (!(offered & F_VERSION_1)) {
		vdev_fail(d, prefix, "no VERSION_1");
		return 0;
	}
	u64 acc = offered & (want | F_VERSION_1);
	vm_wr(d->base, VM_DRIVER_FEATURES_SEL, 0);
	vm_wr(d->base, VM_DRIVER_FEATURES, (u32)acc);
	vm_wr(d->base, VM_DRIVER_FEATURES_SEL, 1);
	vm_wr(d->base, VM_DRIVER_FEATURES, (u32)(acc >> 32));

	vdev_set_status(d, ST_FEATURES_OK);
	if (!(vm_rd(d->base, VM_STATUS) & ST_FEATURES_OK)) {
		vdev_fail(d, prefix, "FEATURES_OK not kept");
		return 0;
	}
	*accepted = acc;
	return 1;
}

/* Driver status after DRIVER_OK, for the caller to check. */
static u32 vdev_driver_ok(const struct vdev *d)
{
	vdev_set_status(d, ST_DRIVER_OK);
	return vm_rd(d->base, VM_STATUS);
}

/* ---- Split virtqueues (2.7) --------------------------------------------- */

#define QSZ 8

struct vq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vq_used_elem {
	u32 id;
	u32 len;
};

/* Alignment per 2.7: descriptors 16, driver area 2, device area 4. */
struct vq_ring {
	struct vq_desc desc[QSZ] __attribute__((aligned(16)));
	struct {
		u16 flags;
		u16 idx;
		u16 ring[QSZ];
		u16 used_event;
	} avail __attribute__((aligned(16)));
	struct {
		u16 flags;
		u16 idx;
		struct vq_used_elem ring[QSZ];
		u16 avail_event;
	} used __attribute__((aligned(16)));
};

struct vq {
	const struct vdev *dev;
	volatile struct vq_ring *r;
	u32 index;		/* queue number on the device */
	u16 size;
	u16 avail_idx;		/* the driver's copy of avail.idx */
	u16 last_used;		/* used elements consumed (vq_publish skips to used.idx) */
};

/*
 * One ring per queue any test uses: blk 0 (blk, blk-bad, blkbench), rng 0,
 * console 0 and 1, net 0 and 1, vsock 0, 1 and 2, fs 0 and 1, balloon 0, 1
 * and 2; hotplug has one blk queue 0 per slot (RING_HP + slot index).
 */
enum {
	RING_BLK, RING_RNG, RING_CON_RX, RING_CON_TX, RING_NET_RX, RING_NET_TX,
	RING_VS_RX, RING_VS_TX, RING_VS_EV, RING_FS_HIPRIO, RING_FS_REQ,
	RING_BAL_INF, RING_BAL_DEF, RING_BAL_REP, RING_HP,
	N_RINGS = RING_HP + MAX_VIRTIO_DEVS
};
static struct vq_ring rings[N_RINGS];

/* Sets up queue `index` of d with rings[ring]; prints why on failure. */
static int vq_setup(struct vq *q, const struct vdev *d, u32 index, int ring, const char *prefix)
{
	u64 base = d->base;
	volatile struct vq_ring *r = &rings[ring];

	vm_wr(base, VM_QUEUE_SEL, index);
	if (vm_rd(base, VM_QUEUE_READY) != 0) {
		vdev_fail(d, prefix, "queue already ready");
		return 0;
	}
	u32 max = vm_rd(base, VM_QUEUE_NUM_MAX);
	if (max == 0) {
		vdev_fail(d, prefix, "queue not available");
		return 0;
	}
	memset((void *)r, 0, sizeof(*r));
	r->avail.flags = AVAIL_F_NO_INTERRUPT;	/* polled */

	q->dev = d;
	q->r = r;
	q->index = index;
	q->size = max < QSZ ? (u16)max : QSZ;
	q->avail_idx = 0;
	q->last_used = 0;

	u64 desc = (u64)&r->desc, avail = (u64)&r->avail, used = (u64)&r->used;
	vm_wr(base, VM_QUEUE_NUM, q->size);
	vm_wr(base, VM_QUEUE_DESC_LOW, (u32)desc);
	vm_wr(base, VM_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	vm_wr(base, VM_QUEUE_DRIVER_LOW, (u32)avail);
	vm_wr(base, VM_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
	vm_wr(base, VM_QUEUE_DEVICE_LOW, (u32)used);
	vm_wr(base, VM_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
	mb();
	vm_wr(base, VM_QUEUE_READY, 1);
	return 1;
}

static void vq_set_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	q->r->desc[i].addr = addr;
	q->r->desc[i].len = len;
	q->r->desc[i].flags = flags;
	q->r->desc[i].next = next;
}

/*
 * Makes the chain at `head` available without notifying. last_used is left
 * alone, so used elements not yet consumed stay pending (receive queues).
 */
static void vq_push(struct vq *q, u16 head)
{
	q->r->avail.ring[q->avail_idx % q->size] = head;
	mb();			/* ring entry before index */
	q->avail_idx++;
	q->r->avail.idx = q->avail_idx;
	mb();			/* index before the notification */
}

/* vq_push for one request at a time: vq_wait then waits for its element. */
static void vq_publish(struct vq *q, u16 head)
{
	q->last_used = q->r->used.idx;
	vq_push(q, head);
}

static void vq_notify(struct vq *q)
{
	vm_wr(q->dev->base, VM_QUEUE_NOTIFY, q->index);
}

/*
 * Polls (up to `bound` pauses) for a used element after last_used. Returns
 * 1 and fills *e when there is one, consuming it; 0 on timeout.
 */
static int vq_wait(struct vq *q, u32 bound, struct vq_used_elem *e)
{
	for (u32 i = 0; i <= bound; i++) {
		if (q->r->used.idx != q->last_used) {
			mb();	/* index before the element */
			e->id = q->r->used.ring[q->last_used % q->size].id;
			e->len = q->r->used.ring[q->last_used % q->size].len;
			q->last_used++;
			/* Acknowledge whatever interrupt the device raised. */
			u32 isr = vm_rd(q->dev->base, VM_INTERRUPT_STATUS);
			if (isr)
				vm_wr(q->dev->base, VM_INTERRUPT_ACK, isr);
			return 1;
		}
		cpu_pause();
	}
	return 0;
}

/* The first usable device with this ID, or 0. */
static const struct vdev *vdev_find(u32 id)
{
	for (u32 i = 0; i < vcfg.n_devs; i++)
		if (vcfg.devs[i].usable && vcfg.devs[i].id == id)
			return &vcfg.devs[i];
	return 0;
}

/* ---- virtio-blk (5.2) ----------------------------------------------------- */

#define BLK_F_RO (1ull << 5)
#define BLK_F_FLUSH (1ull << 9)
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_ID_BYTES 20
#define SECTOR 512

struct blk_req_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct {
	struct blk_req_hdr hdr __attribute__((aligned(16)));
	u8 data[SECTOR] __attribute__((aligned(16)));
	u8 status;
} blkbuf;

struct blk {
	const struct vdev *dev;
	struct vq q;
	u64 features;
	u64 capacity;
};

/* Full blk initialisation: features, queue 0 on rings[ring], DRIVER_OK. */
static int blk_init_ring(struct blk *b, const struct vdev *d, int ring, const char *prefix)
{
	b->dev = d;
	if (!vdev_begin(d, BLK_F_RO | BLK_F_FLUSH, &b->features, prefix))
		return 0;
	if (!vq_setup(&b->q, d, 0, ring, prefix))
		return 0;
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, prefix, "DRIVER_OK not kept");
		return 0;
	}
	return 1;
}

static int blk_init(struct blk *b, const struct vdev *d, const char *prefix)
{
	return blk_init_ring(b, d, RING_BLK, prefix);
}

/* Capacity (config offset 0, u64) read as two 32-bit halves, generation-checked. */
static u64 blk_capacity(const struct vdev *d)
{
	u64 cap = 0;
	for (int tries = 0; tries < 10; tries++) {
		u32 gen = vm_rd(d->base, VM_CONFIG_GENERATION);
		u64 lo = vm_rd(d->base, VM_CONFIG);
		u64 hi = vm_rd(d->base, VM_CONFIG + 4);
		cap = lo | (hi << 32);
		if (vm_rd(d->base, VM_CONFIG_GENERATION) == gen)
			break;
	}
	return cap;
}

/*
 * One request: header, optional data buffer (device-writable if data_in),
 * status byte. Returns the status byte, or -1 if no used element came.
 */
static int blk_request(struct blk *b, u32 type, u64 sector, void *data, u32 len, int data_in)
{
	struct vq *q = &b->q;
	struct vq_used_elem e;
	u16 st = 1;

	blkbuf.hdr.type = type;
	blkbuf.hdr.reserved = 0;
	blkbuf.hdr.sector = sector;
	blkbuf.status = 0xff;
	vq_set_desc(q, 0, (u64)&blkbuf.hdr, sizeof(blkbuf.hdr), DESC_F_NEXT, 1);
	if (len) {
		vq_set_desc(q, 1, (u64)data, len, DESC_F_NEXT | (data_in ? DESC_F_WRITE : 0), 2);
		st = 2;
	}
	vq_set_desc(q, st, (u64)&blkbuf.status, 1, DESC_F_WRITE, 0);
	vq_publish(q, 0);
	vq_notify(q);
	if (!vq_wait(q, WAIT_REQUEST, &e))
		return -1;
	mb();
	return *(volatile u8 *)&blkbuf.status;
}

static void put_status(int st)
{
	if (st < 0)
		puts_serial("timeout");
	else
		put_dec((u32)st);
}

/* Reads sector 0 and prints "<prefix>: <what> sum=0x..." (or the failure). */
static void blk_print_sector0(struct blk *b, const char *prefix, const char *what)
{
	memset(blkbuf.data, 0, SECTOR);
	int st = blk_request(b, BLK_T_IN, 0, blkbuf.data, SECTOR, 1);
	line_start(prefix);
	puts_serial(what);
	if (st == 0) {
		puts_serial(" sum=0x");
		put_hex(fnv1a32((u64)blkbuf.data, SECTOR), 8);
	} else {
		puts_serial(" status=");
		put_status(st);
	}
	putc_serial('\n');
}

static void test_blk(void)
{
	const struct vdev *d = vdev_find(ID_BLK);
	struct blk b;

	if (!d) {
		say("blk", "no device");
		return;
	}
	if (!blk_init(&b, d, "blk"))
		return;
	b.capacity = blk_capacity(d);
	puts_serial("blk: capacity=");
	put_dec(b.capacity);
	puts_serial(" ro=");
	put_dec((b.features & BLK_F_RO) ? 1 : 0);
	putc_serial('\n');

	blk_print_sector0(&b, "blk", "sector0");

	memset(blkbuf.data, 0, BLK_ID_BYTES + 1);
	int st = blk_request(&b, BLK_T_GET_ID, 0, blkbuf.data, BLK_ID_BYTES, 1);
	if (st == 0) {
		puts_serial("blk: id=");
		for (int i = 0; i < BLK_ID_BYTES && blkbuf.data[i]; i++) {
			u8 c = blkbuf.data[i];
			putc_serial(c >= 0x20 && c < 0x7f ? (char)c : '?');
		}
		putc_serial('\n');
	} else {
		puts_serial("blk: id-error status=");
		put_status(st);
		putc_serial('\n');
	}

	if (vcfg.blkwrite) {
		for (u32 i = 0; i < SECTOR; i++)
			blkbuf.data[i] = (u8)(i * 7 + 3);
		st = blk_request(&b, BLK_T_OUT, 1, blkbuf.data, SECTOR, 0);
		puts_serial("blk: write status=");
		put_status(st);
		putc_serial('\n');

		st = blk_request(&b, BLK_T_FLUSH, 0, 0, 0, 0);
		puts_serial("blk: flush status=");
		put_status(st);
		putc_serial('\n');

		memset(blkbuf.data, 0, SECTOR);
		st = blk_request(&b, BLK_T_IN, 1, blkbuf.data, SECTOR, 1);
		int same = st == 0;
		for (u32 i = 0; same && i < SECTOR; i++)
			same = blkbuf.data[i] == (u8)(i * 7 + 3);
		if (st == 0) {
			say("blk", same ? "readback ok" : "readback mismatch");
		} else {
			puts_serial("blk: readback status=");
			put_status(st);
			putc_serial('\n');
		}
	}
	vdev_reset(d);
	say("blk", "done");
}

/*
 * The end of the highest RAM range below 4 GiB, minus one page: a start for
 * the "huge" buffer such that whatever part of it lies in RAM is harmless
 * scratch even if a device writes into it. 0 if there is no such range.
 */
static u64 scratch_near_ram_top(void)
{
	u64 top = 0;
	for (u32 i = 0; i < info.n_e820; i++) {
		u64 end = info.e820[i].addr + info.e820[i].size;
		if (info.e820[i].type == 1 && end <= (1ull << 32) && end > top &&
		    info.e820[i].size >= 0x10000)
			top = end;
	}
	return top ? (top & ~0xfffull) - 0x1000 : 0;
}

/* Publishes the malformed chain already in the descriptors and reports. */
static void blk_bad_case(struct blk *b, const char *name)
{
	struct vq_used_elem e;

	vq_publish(&b->q, 0);
	vq_notify(&b->q);
	int used = vq_wait(&b->q, WAIT_BAD, &e);
	puts_serial("blk-bad: ");
	puts_serial(name);
	puts_serial(" used=");
	put_dec(used);
	puts_serial(" status=");
	put_hex_short(vm_rd(b->dev->base, VM_STATUS));
	putc_serial('\n');
}

/* Re-initialises the device if it wants a reset or is not running. */
static int blk_ensure_ready(struct blk *b)
{
	u32 st = vm_rd(b->dev->base, VM_STATUS);
	if (!(st & (ST_NEEDS_RESET | ST_FAILED)) && (st & ST_DRIVER_OK))
		return 1;
	return blk_init(b, b->dev, "blk-bad");
}

static void test_blk_bad(void)
{
	const struct vdev *d = vdev_find(ID_BLK);
	struct blk b;

	if (!d) {
		say("blk-bad", "no device");
		return;
	}
	if (!blk_init(&b, d, "blk-bad"))
		return;
	blkbuf.hdr.type = BLK_T_IN;
	blkbuf.hdr.reserved = 0;
	blkbuf.hdr.sector = 0;

	/* (a) 0 -> 1 -> 0 -> ...: two device-readable descriptors in a loop. */
	vq_set_desc(&b.q, 0, (u64)&blkbuf.hdr, sizeof(blkbuf.hdr), DESC_F_NEXT, 1);
	vq_set_desc(&b.q, 1, (u64)blkbuf.data, SECTOR, DESC_F_NEXT, 0);
	blk_bad_case(&b, "loop");

	/* (b) a data buffer far beyond RAM. */
	if (!blk_ensure_ready(&b))
		return;
	vq_set_desc(&b.q, 0, (u64)&blkbuf.hdr, sizeof(blkbuf.hdr), DESC_F_NEXT, 1);
	vq_set_desc(&b.q, 1, 0x700000000000ull, SECTOR, DESC_F_NEXT | DESC_F_WRITE, 2);
	vq_set_desc(&b.q, 2, (u64)&blkbuf.status, 1, DESC_F_WRITE, 0);
	blk_bad_case(&b, "oob");

	/* (c) a data buffer of 0xfffffff0 bytes starting in RAM. */
	if (!blk_ensure_ready(&b))
		return;
	u64 huge = scratch_near_ram_top();
	vq_set_desc(&b.q, 0, (u64)&blkbuf.hdr, sizeof(blkbuf.hdr), DESC_F_NEXT, 1);
	vq_set_desc(&b.q, 1, huge ? huge : (u64)blkbuf.data, 0xfffffff0u,
		    DESC_F_NEXT | DESC_F_WRITE, 2);
	vq_set_desc(&b.q, 2, (u64)&blkbuf.status, 1, DESC_F_WRITE, 0);
	blk_bad_case(&b, "huge");

	if (!blk_ensure_ready(&b))
		return;
	blk_print_sector0(&b, "blk-bad", "recovered");
	vdev_reset(d);
}

/* ---- virtio-rng (5.4) ------------------------------------------------------ */

#define RNG_BYTES 64

static u8 rngbuf[RNG_BYTES] __attribute__((aligned(16)));

static void test_rng(void)
{
	const struct vdev *d = vdev_find(ID_RNG);
	struct vq q;
	struct vq_used_elem e;
	u64 features;

	if (!d) {
		say("rng", "no device");
		return;
	}
	if (!vdev_begin(d, 0, &features, "rng") || !vq_setup(&q, d, 0, RING_RNG, "rng"))
		return;
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "rng", "DRIVER_OK not kept");
		return;
	}
	memset(rngbuf, 0, RNG_BYTES);
	vq_set_desc(&q, 0, (u64)rngbuf, RNG_BYTES, DESC_F_WRITE, 0);
	vq_publish(&q, 0);
	vq_notify(&q);
	if (!vq_wait(&q, WAIT_REQUEST, &e)) {
		say("rng", "timeout");
		vdev_reset(d);
		return;
	}
	mb();
	u32 nonzero = 0;
	for (u32 i = 0; i < RNG_BYTES; i++)
		nonzero += ((volatile u8 *)rngbuf)[i] != 0;
	puts_serial("rng: len=");
	put_dec(e.len);
	puts_serial(" nonzero=");
	put_dec(nonzero);
	putc_serial('\n');
	vdev_reset(d);
}

/* ---- virtio-console (5.3), single port, no MULTIPORT ------------------------ */

#define CON_RX_BYTES 64
#define CON_LINE_MAX 64

static struct {
	u8 rx[CON_RX_BYTES] __attribute__((aligned(16)));
	char tx[16];
	char line[CON_LINE_MAX];
} conbuf;

static void con_post_rx(struct vq *rx)
{
	vq_set_desc(rx, 0, (u64)conbuf.rx, CON_RX_BYTES, DESC_F_WRITE, 0);
	vq_publish(rx, 0);
	vq_notify(rx);
}

static void test_console(void)
{
	static const char msg[] = "hello-console\n";
	const struct vdev *d = vdev_find(ID_CONSOLE);
	struct vq rx, tx;
	struct vq_used_elem e;
	u64 features;

	if (!d) {
		say("console", "no device");
		return;
	}
	if (!vdev_begin(d, 0, &features, "console") ||
	    !vq_setup(&rx, d, 0, RING_CON_RX, "console") ||
	    !vq_setup(&tx, d, 1, RING_CON_TX, "console"))
		return;
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "console", "DRIVER_OK not kept");
		return;
	}

	con_post_rx(&rx);

	memcpy(conbuf.tx, msg, sizeof(msg) - 1);
	vq_set_desc(&tx, 0, (u64)conbuf.tx, sizeof(msg) - 1, 0, 0);
	vq_publish(&tx, 0);
	vq_notify(&tx);
	say("console", vq_wait(&tx, WAIT_REQUEST, &e) ? "tx done" : "tx timeout");

	/* Collect received chunks until a newline, reposting the buffer. */
	u32 n = 0, budget = WAIT_CONSOLE_RX;
	int newline = 0;
	while (!newline && budget) {
		/* Wait in slices so the total stays bounded by budget. */
		u32 slice = budget < 10000 ? budget : 10000;
		budget -= slice;
		if (!vq_wait(&rx, slice, &e))
			continue;
		mb();
		u32 len = e.len < CON_RX_BYTES ? e.len : CON_RX_BYTES;
		for (u32 i = 0; i < len && !newline; i++) {
			u8 c = ((volatile u8 *)conbuf.rx)[i];
			if (c == '\n')
				newline = 1;
			else if (n < CON_LINE_MAX - 1)
				conbuf.line[n++] = (char)c;
		}
		if (!newline)
			con_post_rx(&rx);
	}
	conbuf.line[n] = 0;
	if (newline) {
		puts_serial("console: rx=");
		for (u32 i = 0; i < n; i++) {
			u8 c = (u8)conbuf.line[i];
			putc_serial(c >= 0x20 && c < 0x7f ? (char)c : '?');
		}
		putc_serial('\n');
	} else {
		say("console", "rx timeout");
	}
	vdev_reset(d);
}

/*
 * guest.virtio=console-steps (snapshot tests): for each byte received on
 * COM1, sends "con <n>\n" on the console's transmit queue (descriptor
 * n % 4, one buffer reused), waits for the device to use it and prints
 * "console-steps: <n> used=<used.idx> id=<id>" on COM1. Never returns: a
 * guest restored from a snapshot keeps using the same queue, and the host
 * must see each line once.
 */
static void __attribute__((noreturn)) test_console_steps(void)
{
	const struct vdev *d = vdev_find(ID_CONSOLE);
	struct vq rx, tx;
	u64 features;

	if (!d) {
		say("console-steps", "no device");
		halt_forever();
	}
	if (!vdev_begin(d, 0, &features, "console-steps") ||
	    !vq_setup(&rx, d, 0, RING_CON_RX, "console-steps") ||
	    !vq_setup(&tx, d, 1, RING_CON_TX, "console-steps"))
		halt_forever();
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "console-steps", "DRIVER_OK not kept");
		halt_forever();
	}
	say("console-steps", "ready");
	for (u32 n = 1;; n++) {
		while (!(inb(COM1_LSR) & 1))
			cpu_pause();
		(void)inb(COM1);
		char digits[10];
		u32 nd = 0;
		for (u32 v = n; v || !nd; v /= 10)
			digits[nd++] = (char)('0' + v % 10);
		u32 len = 0;
		conbuf.tx[len++] = 'c';
		conbuf.tx[len++] = 'o';
		conbuf.tx[len++] = 'n';
		conbuf.tx[len++] = ' ';
		while (nd)
			conbuf.tx[len++] = digits[--nd];
		conbuf.tx[len++] = '\n';
		u16 head = (u16)(n % 4);
		struct vq_used_elem e = { 0, 0 };
		vq_set_desc(&tx, head, (u64)conbuf.tx, len, 0, 0);
		vq_publish(&tx, head);
		vq_notify(&tx);
		int ok = vq_wait(&tx, WAIT_REQUEST, &e);
		line_start("console-steps");
		put_dec(n);
		puts_serial(ok ? " used=" : " timeout used=");
		put_dec(tx.r->used.idx);
		puts_serial(" id=");
		put_dec(e.id);
		putc_serial('\n');
	}
}

/* ---- virtio-net (5.1), one queue pair, polled ------------------------------- */

#define NET_F_MAC (1ull << 5)
#define NET_F_MRG_RXBUF (1ull << 15)
#define NET_F_STATUS (1ull << 16)
#define NET_CFG_MAC 0		/* u8[6] */
#define NET_CFG_STATUS 6	/* le16 */
#define NET_HDR 12		/* struct virtio_net_hdr, virtio 1.x (num_buffers included) */
#define NET_RX_BUFS 4
#define NET_RX_BYTES 2048
#define NET_FRAME 60		/* minimum Ethernet frame without FCS */
#define ETH_HLEN 14
#define NET_ETHERTYPE 0x88b5	/* IEEE local experimental */
#define NET_PAYLOAD_MAX 64	/* printed at most */

static struct {
	u8 rx[NET_RX_BUFS][NET_RX_BYTES] __attribute__((aligned(16)));
	u8 hdr[NET_HDR] __attribute__((aligned(16)));
	u8 frame[NET_FRAME] __attribute__((aligned(16)));
	u8 mac[6];
} netbuf;

/* Hands receive buffer i (descriptor i) to the device, no notification. */
static void net_rx_post(struct vq *rx, u16 i)
{
	vq_set_desc(rx, i, (u64)netbuf.rx[i], NET_RX_BYTES, DESC_F_WRITE, 0);
	vq_push(rx, i);
}

/* MAC (if offered, else a fixed locally administered one) and status. */
static int net_read_config(const struct vdev *d, u64 features)
{
	static const u8 fallback[6] = { 0x02, 0, 0, 0, 0, 0x01 };
	int status = -1;

	for (int tries = 0; tries < 10; tries++) {
		u32 gen = vm_rd(d->base, VM_CONFIG_GENERATION);
		for (int i = 0; i < 6; i++)
			netbuf.mac[i] = (features & NET_F_MAC) ?
				rd8(d->base + VM_CONFIG + NET_CFG_MAC + i) : fallback[i];
		if (features & NET_F_STATUS)
			status = rd16(d->base + VM_CONFIG + NET_CFG_STATUS);
		if (vm_rd(d->base, VM_CONFIG_GENERATION) == gen)
			break;
	}
	return status;
}

/* Prints "net: rx=<payload>" if buffer b (used length len) is our frame. */
static int net_rx_match(const volatile u8 *b, u32 len)
{
	const volatile u8 *eth = b + NET_HDR;

	if (len < NET_HDR + ETH_HLEN ||
	    ((u32)eth[12] << 8 | eth[13]) != NET_ETHERTYPE)
		return 0;
	puts_serial("net: rx=");
	for (u32 i = NET_HDR + ETH_HLEN; i < len && i < NET_HDR + ETH_HLEN + NET_PAYLOAD_MAX; i++) {
		u8 c = b[i];
		if (c < 0x20 || c >= 0x7f)
			break;
		putc_serial((char)c);
	}
	putc_serial('\n');
	return 1;
}

/* Prints netbuf.mac as xx:xx:xx:xx:xx:xx. */
static void net_put_mac(void)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			putc_serial(':');
		put_hex(netbuf.mac[i], 2);
	}
}

/*
 * Sends the test frame (a broadcast from our MAC, ethertype 0x88b5, payload
 * "altovirt-net-tx") as descriptors 0 and 1 of tx; 1 once it was used.
 */
static int net_send_test_frame(struct vq *tx)
{
	static const char payload[] = "altovirt-net-tx";
	struct vq_used_elem e;

	memset(netbuf.hdr, 0, NET_HDR);
	memset(netbuf.frame, 0, NET_FRAME);
	memset(netbuf.frame, 0xff, 6);
	memcpy(netbuf.frame + 6, netbuf.mac, 6);
	netbuf.frame[12] = NET_ETHERTYPE >> 8;
	netbuf.frame[13] = NET_ETHERTYPE & 0xff;
	memcpy(netbuf.frame + ETH_HLEN, payload, sizeof(payload) - 1);
	vq_set_desc(tx, 0, (u64)netbuf.hdr, NET_HDR, DESC_F_NEXT, 1);
	vq_set_desc(tx, 1, (u64)netbuf.frame, NET_FRAME, 0, 0);
	vq_publish(tx, 0);
	vq_notify(tx);
	return vq_wait(tx, WAIT_REQUEST, &e);
}

/*
 * Waits up to budget polls for our ethertype on rx (receive buffers 0 to
 * n_rx - 1 posted) and prints "net: rx=..." for it; other frames (IPv6 RS,
 * MLD...) are reposted. 1 when found; 0 on timeout or a bad buffer id (then
 * "<prefix>: rx bad id N" is printed).
 */
static int net_wait_reply(struct vq *rx, u16 n_rx, u32 budget, const char *prefix)
{
	struct vq_used_elem e;

	while (budget) {
		u32 slice = budget < 10000 ? budget : 10000;
		budget -= slice;
		if (!vq_wait(rx, slice, &e))
			continue;
		mb();
		if (e.id >= n_rx) {
			line_start(prefix);
			puts_serial("rx bad id ");
			put_dec(e.id);
			putc_serial('\n');
			return 0;
		}
		u32 len = e.len < NET_RX_BYTES ? e.len : NET_RX_BYTES;
		if (net_rx_match(netbuf.rx[e.id], len))
			return 1;
		net_rx_post(rx, (u16)e.id);
		vq_notify(rx);
	}
	return 0;
}

static void test_net(void)
{
	const struct vdev *d = vdev_find(ID_NET);
	struct vq rx, tx;
	u64 features;

	if (!d) {
		say("net", "no device");
		return;
	}
	if (!vdev_begin(d, NET_F_MAC | NET_F_STATUS | NET_F_MRG_RXBUF, &features, "net") ||
	    !vq_setup(&rx, d, 0, RING_NET_RX, "net") ||
	    !vq_setup(&tx, d, 1, RING_NET_TX, "net"))
		return;
	int status = net_read_config(d, features);
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "net", "DRIVER_OK not kept");
		return;
	}
	puts_serial("net: mac=");
	net_put_mac();
	puts_serial(" status=");
	if (status < 0)
		puts_serial("none");
	else
		put_dec((u32)status);
	putc_serial('\n');

	/* Receive buffers first, so a quick reply has somewhere to go. */
	u16 n_rx = rx.size < NET_RX_BUFS ? rx.size : NET_RX_BUFS;
	for (u16 i = 0; i < n_rx; i++)
		net_rx_post(&rx, i);
	vq_notify(&rx);

	say("net", net_send_test_frame(&tx) ? "tx done" : "tx timeout");
	if (!net_wait_reply(&rx, n_rx, WAIT_NET_RX, "net"))
		say("net", "rx timeout");
	vdev_reset(d);
	say("net", "done");
}

/* ---- virtio-vsock (5.10), stream sockets, polled ----------------------------- */

#define VSOCK_F_STREAM (1ull << 0)
#define VSOCK_CFG_CID 0		/* le64 guest_cid; only the low 32 bits are used */
#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_SHUTDOWN_BOTH 3	/* RCV (1) | SEND (2) */
#define VSOCK_BUF_ALLOC 65536	/* receive space advertised on every packet */
#define VSOCK_DEFAULT_PORT 1234
#define VSOCK_LOCAL_PORT 5000	/* source port of the guest-initiated connection */
#define VSOCK_RX_BUFS 4		/* two descriptors each: header, data */
#define VSOCK_RX_DATA 512
#define VSOCK_LINE_MAX 64
#define WAIT_VSOCK 300000	/* the host side answering */
#define WAIT_VSOCK_LISTEN 3000000	/* the host side connecting to us */
#define WAIT_VSOCK_IDLE 20000	/* a partial line with nothing more coming */
#define VSOCK_SLICE 10000

struct vsock_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == 44, "virtio_vsock_hdr is 44 bytes");

static struct {
	struct vsock_hdr rxhdr[VSOCK_RX_BUFS] __attribute__((aligned(16)));
	u8 rxdata[VSOCK_RX_BUFS][VSOCK_RX_DATA] __attribute__((aligned(16)));
	struct vsock_hdr txhdr __attribute__((aligned(16)));
	u8 txdata[16] __attribute__((aligned(16)));
	u8 event[8] __attribute__((aligned(16)));
} vsbuf;

enum vconn_state { VC_FREE, VC_CONNECTING, VC_OPEN, VC_REFUSED, VC_CLOSED };

/* One stream connection, identified by (local port, peer cid, peer port). */
struct vconn {
	enum vconn_state state;
	u64 peer_cid;
	u32 local_port, peer_port;
	u32 fwd_cnt;		/* payload bytes we consumed (all we received) */
	u32 tx_cnt;		/* payload bytes we sent */
	u32 peer_buf_alloc, peer_fwd_cnt;	/* the peer's credit, from its last packet */
	int got_rst;		/* closed by the peer's RST (not by ours) */
	int newline;		/* line[] is complete */
	u32 line_len;
	char line[VSOCK_LINE_MAX];
};

static struct {
	const struct vdev *dev;
	struct vq rx, tx, ev;
	u64 cid;
	u32 listen_port;	/* 0 = not accepting */
	u16 n_rx;
	struct vconn out;	/* guest-initiated */
	struct vconn in;	/* host-initiated, to listen_port */
} vs;

/*
 * Sends one packet (header, then the payload in a second descriptor if any)
 * and waits for the device to use it. Returns 1 when it did.
 */
static int vsock_send_raw(u64 dst_cid, u32 src_port, u32 dst_port, u16 op, u32 flags,
			  u32 fwd_cnt, const void *data, u32 len)
{
	struct vq_used_elem e;
	volatile struct vsock_hdr *h = &vsbuf.txhdr;

	h->src_cid = vs.cid;
	h->dst_cid = dst_cid;
	h->src_port = src_port;
	h->dst_port = dst_port;
	h->len = len;
	h->type = VSOCK_TYPE_STREAM;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = VSOCK_BUF_ALLOC;
	h->fwd_cnt = fwd_cnt;
	if (len > sizeof(vsbuf.txdata))
		len = sizeof(vsbuf.txdata);
	if (len) {
		memcpy(vsbuf.txdata, data, len);
		vq_set_desc(&vs.tx, 0, (u64)h, sizeof(*h), DESC_F_NEXT, 1);
		vq_set_desc(&vs.tx, 1, (u64)vsbuf.txdata, len, 0, 0);
	} else {
		vq_set_desc(&vs.tx, 0, (u64)h, sizeof(*h), 0, 0);
	}
	vq_publish(&vs.tx, 0);
	vq_notify(&vs.tx);
	if (!vq_wait(&vs.tx, WAIT_REQUEST, &e)) {
		say("vsock", "tx timeout");
		return 0;
	}
	return 1;
}

static int vsock_send(struct vconn *c, u16 op, u32 flags, const void *data, u32 len)
{
	if (!vsock_send_raw(c->peer_cid, c->local_port, c->peer_port, op, flags,
			    c->fwd_cnt, data, len))
		return 0;
	c->tx_cnt += len;
	return 1;
}

/* Payload bytes the peer can still take (5.10.6.3). */
static u32 vsock_peer_credit(const struct vconn *c)
{
	u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

/* Hands receive buffer i (descriptors 2i, 2i+1) to the device, no notification. */
static void vsock_rx_post(u16 i)
{
	u16 d = (u16)(2 * i);
	vq_set_desc(&vs.rx, d, (u64)&vsbuf.rxhdr[i], sizeof(struct vsock_hdr),
		    DESC_F_WRITE | DESC_F_NEXT, (u16)(d + 1));
	vq_set_desc(&vs.rx, (u16)(d + 1), (u64)vsbuf.rxdata[i], VSOCK_RX_DATA, DESC_F_WRITE, 0);
	vq_push(&vs.rx, d);
}

static int vconn_matches(const struct vconn *c, const struct vsock_hdr *h)
{
	return c->state != VC_FREE && c->local_port == h->dst_port &&
	       c->peer_port == h->src_port && c->peer_cid == h->src_cid;
}

/* Appends RW payload to the connection's line, up to the first newline. */
static void vconn_take(struct vconn *c, const volatile u8 *p, u32 len)
{
	for (u32 i = 0; i < len && !c->newline; i++) {
		if (p[i] == '\n')
			c->newline = 1;
		else if (c->line_len < VSOCK_LINE_MAX - 1)
			c->line[c->line_len++] = (char)p[i];
	}
	c->fwd_cnt += len;	/* consumed at once, whether kept or not */
}

/* Handles one received packet (header h, payload p of plen bytes). */
static void vsock_dispatch(const struct vsock_hdr *h, const volatile u8 *p, u32 plen)
{
	struct vconn *c = 0;

	if (h->dst_cid == vs.cid && h->type == VSOCK_TYPE_STREAM) {
		if (vconn_matches(&vs.out, h))
			c = &vs.out;
		else if (vconn_matches(&vs.in, h))
			c = &vs.in;
	}
	if (!c || c->state == VC_REFUSED || c->state == VC_CLOSED) {
		/* New connection to the listening port: accept it at once. */
		if (h->op == VSOCK_OP_REQUEST && h->type == VSOCK_TYPE_STREAM &&
		    h->dst_cid == vs.cid && vs.listen_port && h->dst_port == vs.listen_port &&
		    vs.in.state == VC_FREE) {
			c = &vs.in;
			c->peer_cid = h->src_cid;
			c->peer_port = h->src_port;
			c->local_port = h->dst_port;
			c->peer_buf_alloc = h->buf_alloc;
			c->peer_fwd_cnt = h->fwd_cnt;
			c->state = VC_OPEN;
			vsock_send(c, VSOCK_OP_RESPONSE, 0, 0, 0);
			return;
		}
		/* Anything else without a connection is refused (never answer RST with RST). */
		if (h->op != VSOCK_OP_RST)
			vsock_send_raw(h->src_cid, h->dst_port, h->src_port, VSOCK_OP_RST, 0,
				       0, 0, 0);
		return;
	}

	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case VSOCK_OP_RESPONSE:
		if (c->state == VC_CONNECTING)
			c->state = VC_OPEN;
		break;
	case VSOCK_OP_RST:
		c->state = c->state == VC_CONNECTING ? VC_REFUSED : VC_CLOSED;
		c->got_rst = 1;
		break;
	case VSOCK_OP_SHUTDOWN:
		/* The peer is done both ways: finish the close with RST. */
		if ((h->flags & VSOCK_SHUTDOWN_BOTH) == VSOCK_SHUTDOWN_BOTH) {
			vsock_send(c, VSOCK_OP_RST, 0, 0, 0);
			c->state = VC_CLOSED;
		}
		break;
	case VSOCK_OP_RW:
		if (c->state == VC_OPEN)
			vconn_take(c, p, plen);
		break;
	case VSOCK_OP_CREDIT_REQUEST:
		vsock_send(c, VSOCK_OP_CREDIT_UPDATE, 0, 0, 0);
		break;
	default:		/* CREDIT_UPDATE: only the credit fields matter */
		break;
	}
}

/*
 * Waits up to `bound` pauses for one received packet, handles it and
 * reposts its buffer. Returns 1 if a packet came.
 */
static int vsock_poll(u32 bound)
{
	struct vq_used_elem e;

	if (!vq_wait(&vs.rx, bound, &e))
		return 0;
	mb();
	u16 i = (u16)(e.id / 2);
	if ((e.id & 1) || i >= vs.n_rx) {
		line_start("vsock");
		puts_serial("rx bad id ");
		put_dec(e.id);
		putc_serial('\n');
		return 1;
	}
	struct vsock_hdr h = *(volatile struct vsock_hdr *)&vsbuf.rxhdr[i];
	u32 plen = 0;
	if (e.len >= sizeof(h)) {
		plen = e.len - sizeof(h);
		if (plen > h.len)
			plen = h.len;
		if (plen > VSOCK_RX_DATA)
			plen = VSOCK_RX_DATA;
	}
	if (e.len >= sizeof(h))
		vsock_dispatch(&h, vsbuf.rxdata[i], plen);
	vsock_rx_post(i);
	vq_notify(&vs.rx);
	return 1;
}

/* What vsock_wait waits for. */
enum vs_until { UNTIL_NOT_CONNECTING, UNTIL_LINE, UNTIL_CLOSED, UNTIL_ACCEPTED, UNTIL_CREDIT };

static int vsock_done_waiting(struct vconn *c, enum vs_until what, u32 need, int idle)
{
	switch (what) {
	case UNTIL_NOT_CONNECTING:
		return c->state != VC_CONNECTING;
	case UNTIL_LINE:	/* a newline, or a partial line and then silence */
		return c->newline || c->state != VC_OPEN || (idle && c->line_len);
	case UNTIL_CLOSED:
		return c->state == VC_CLOSED;
	case UNTIL_ACCEPTED:
		return c->state != VC_FREE;
	case UNTIL_CREDIT:
		return c->state != VC_OPEN || vsock_peer_credit(c) >= need;
	}
	return 1;
}

/* Handles packets until the condition holds (1) or `budget` pauses pass (0). */
static int vsock_wait(struct vconn *c, enum vs_until what, u32 need, u32 budget)
{
	u32 idle = 0;

	while (!vsock_done_waiting(c, what, need, idle >= WAIT_VSOCK_IDLE)) {
		if (!budget)
			return 0;
		u32 slice = budget < VSOCK_SLICE ? budget : VSOCK_SLICE;
		budget -= slice;
		if (vsock_poll(slice))
			idle = 0;
		else
			idle += slice;
	}
	return 1;
}

/* Sends RW `data` on an open connection, asking for credit if needed. */
static int vsock_write(struct vconn *c, const char *data, u32 len)
{
	if (vsock_peer_credit(c) < len) {
		vsock_send(c, VSOCK_OP_CREDIT_REQUEST, 0, 0, 0);
		if (!vsock_wait(c, UNTIL_CREDIT, len, WAIT_VSOCK) || c->state != VC_OPEN) {
			say("vsock", "no credit");
			return 0;
		}
	}
	return vsock_send(c, VSOCK_OP_RW, 0, data, len);
}

static void vsock_print_line(const char *what, const struct vconn *c)
{
	puts_serial("vsock: ");
	puts_serial(what);
	for (u32 i = 0; i < c->line_len; i++) {
		u8 ch = (u8)c->line[i];
		putc_serial(ch >= 0x20 && ch < 0x7f ? (char)ch : '?');
	}
	putc_serial('\n');
}

/* Guest-initiated: connect to host port, exchange a line, close cleanly. */
static void vsock_connect_test(u32 port)
{
	static const char hello[] = "hello-vsock\n";
	struct vconn *c = &vs.out;

	c->peer_cid = VSOCK_HOST_CID;
	c->local_port = VSOCK_LOCAL_PORT;
	c->peer_port = port;
	c->state = VC_CONNECTING;
	if (!vsock_send(c, VSOCK_OP_REQUEST, 0, 0, 0))
		return;
	if (!vsock_wait(c, UNTIL_NOT_CONNECTING, 0, WAIT_VSOCK)) {
		say("vsock", "connect timeout");
		vsock_send(c, VSOCK_OP_RST, 0, 0, 0);
		c->state = VC_CLOSED;
		return;
	}
	if (c->state != VC_OPEN) {
		say("vsock", "connect refused");
		return;
	}
	puts_serial("vsock: connected port=");
	put_dec(port);
	putc_serial('\n');

	if (!vsock_write(c, hello, sizeof(hello) - 1))
		return;
	if (vsock_wait(c, UNTIL_LINE, 0, WAIT_VSOCK) && c->line_len + c->newline)
		vsock_print_line("rx=", c);
	else
		say("vsock", "rx timeout");

	if (c->state == VC_OPEN) {
		vsock_send(c, VSOCK_OP_SHUTDOWN, VSOCK_SHUTDOWN_BOTH, 0, 0);
		if (!vsock_wait(c, UNTIL_CLOSED, 0, WAIT_VSOCK)) {
			/* No RST in time: disconnect forcibly (5.10.6.6). */
			vsock_send(c, VSOCK_OP_RST, 0, 0, 0);
			c->state = VC_CLOSED;
			say("vsock", "close timeout");
			return;
		}
	}
	say("vsock", "closed");
}

/* Host-initiated: accept one connection to the listen port, answer one line. */
static void vsock_accept_test(void)
{
	static const char pong[] = "pong\n";
	struct vconn *c = &vs.in;

	if (!vsock_wait(c, UNTIL_ACCEPTED, 0, WAIT_VSOCK_LISTEN)) {
		say("vsock", "accept timeout");
		return;
	}
	if (vsock_wait(c, UNTIL_LINE, 0, WAIT_VSOCK) && c->line_len + c->newline) {
		vsock_print_line("accepted rx=", c);
	} else {
		say("vsock", "accepted rx timeout");
		return;
	}
	if (c->state == VC_OPEN && vsock_write(c, pong, sizeof(pong) - 1))
		say("vsock", "accepted done");
}

static void test_vsock(void)
{
	const struct vdev *d = vdev_find(ID_VSOCK);
	u64 features;

	memset(&vs, 0, sizeof(vs));
	if (!d) {
		say("vsock", "no device");
		return;
	}
	vs.dev = d;
	vs.listen_port = (u32)vcfg.vsock_listen;
	if (!vdev_begin(d, VSOCK_F_STREAM, &features, "vsock") ||
	    !vq_setup(&vs.rx, d, 0, RING_VS_RX, "vsock") ||
	    !vq_setup(&vs.tx, d, 1, RING_VS_TX, "vsock") ||
	    !vq_setup(&vs.ev, d, 2, RING_VS_EV, "vsock"))
		return;
	for (int tries = 0; tries < 10; tries++) {
		u32 gen = vm_rd(d->base, VM_CONFIG_GENERATION);
		vs.cid = vm_rd(d->base, VM_CONFIG + VSOCK_CFG_CID);
		vs.cid |= (u64)vm_rd(d->base, VM_CONFIG + VSOCK_CFG_CID + 4) << 32;
		if (vm_rd(d->base, VM_CONFIG_GENERATION) == gen)
			break;
	}
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "vsock", "DRIVER_OK not kept");
		return;
	}
	puts_serial("vsock: cid=");
	put_dec(vs.cid);
	putc_serial('\n');

	/* Event buffer (never looked at) and receive buffers before any request. */
	vq_set_desc(&vs.ev, 0, (u64)vsbuf.event, sizeof(vsbuf.event), DESC_F_WRITE, 0);
	vq_push(&vs.ev, 0);
	vq_notify(&vs.ev);
	vs.n_rx = vs.rx.size / 2 < VSOCK_RX_BUFS ? vs.rx.size / 2 : VSOCK_RX_BUFS;
	for (u16 i = 0; i < vs.n_rx; i++)
		vsock_rx_post(i);
	vq_notify(&vs.rx);

	vsock_connect_test(vcfg.vsock_port ? (u32)vcfg.vsock_port : VSOCK_DEFAULT_PORT);
	if (vs.listen_port)
		vsock_accept_test();

	vdev_reset(d);
	say("vsock", "done");
}

/* ---- blkbench: sequential reads, one request in flight ----------------------- */

#define BENCH_MAX 65536

static u8 benchbuf[BENCH_MAX] __attribute__((aligned(4096)));

static void test_blkbench(void)
{
	const struct vdev *d = vdev_find(ID_BLK);
	u64 bytes = vcfg.bench_bytes, count = vcfg.bench_count, done = 0, errors = 0;
	struct blk b;

	if (vcfg.bench_bad || !bytes || bytes % SECTOR || bytes > BENCH_MAX) {
		say("blkbench", "bad guest.blkbench= (want <bytes>:<count>, bytes a multiple of 512 up to 65536)");
		return;
	}
	if (!d) {
		say("blkbench", "no device");
		return;
	}
	if (!blk_init(&b, d, "blkbench"))
		return;
	u64 cap = blk_capacity(d), step = bytes / SECTOR, sector = 0;
	if (cap < step) {
		say("blkbench", "disk smaller than one request");
		vdev_reset(d);
		return;
	}

	/* The chain never changes: only the header's sector and the status do. */
	struct vq *q = &b.q;
	volatile struct vq_ring *r = q->r;
	volatile u8 *status = &blkbuf.status;
	blkbuf.hdr.type = BLK_T_IN;
	blkbuf.hdr.reserved = 0;
	vq_set_desc(q, 0, (u64)&blkbuf.hdr, sizeof(blkbuf.hdr), DESC_F_NEXT, 1);
	vq_set_desc(q, 1, (u64)benchbuf, (u32)bytes, DESC_F_NEXT | DESC_F_WRITE, 2);
	vq_set_desc(q, 2, (u64)&blkbuf.status, 1, DESC_F_WRITE, 0);

	for (; done < count; done++) {
		*(volatile u64 *)&blkbuf.hdr.sector = sector;
		*status = 0xff;
		vq_publish(q, 0);
		vq_notify(q);
		/* Interrupts are suppressed (AVAIL_F_NO_INTERRUPT): just poll used.idx. */
		u32 i = 0;
		while (r->used.idx == q->last_used && i++ < WAIT_BENCH)
			cpu_pause();
		if (r->used.idx == q->last_used) {
			say("blkbench", "timeout");
			errors++;
			done++;
			break;
		}
		mb();
		if (*status != 0)
			errors++;
		sector += step;
		if (sector + step > cap)
			sector = 0;
	}
	u32 isr = vm_rd(d->base, VM_INTERRUPT_STATUS);
	if (isr)
		vm_wr(d->base, VM_INTERRUPT_ACK, isr);
	vdev_reset(d);
	puts_serial("blkbench: bytes=");
	put_dec(bytes);
	puts_serial(" count=");
	put_dec(done);
	puts_serial(" errors=");
	put_dec(errors);
	putc_serial('\n');
}

/* ---- hotplug: empty blk slots filled and emptied by the host ----------------- */

#define HP_WAIT_DEFAULT 30	/* seconds */
#define HP_EVENTS_DEFAULT 2
#define HP_WAIT_MAX 100000	/* seconds; keeps the budget arithmetic sane */
/*
 * The wait budget is counted in pause iterations at roughly 1 us each; every
 * round polls all slots (MMIO exits, charged as HP_ROUND_MMIO_COST
 * iterations per register read) and then pauses HP_ROUND_PAUSES times.
 */
#define HP_ITERS_PER_SEC 1000000ull
#define HP_ROUND_PAUSES 1000
#define HP_ROUND_MMIO_COST 150

struct hp_slot {
	struct blk b;
	int ok;			/* initialised */
	u32 gen;		/* ConfigGeneration of the capacity we know */
	u64 capacity;
};

static struct hp_slot hp_slots[MAX_VIRTIO_DEVS];

/* Capacity with the generation it was read under (consistent pair). */
static u64 hp_capacity(const struct vdev *d, u32 *gen_out)
{
	u64 cap = 0;
	u32 gen = 0;
	for (int tries = 0; tries < 10; tries++) {
		gen = vm_rd(d->base, VM_CONFIG_GENERATION);
		u64 lo = vm_rd(d->base, VM_CONFIG);
		u64 hi = vm_rd(d->base, VM_CONFIG + 4);
		cap = lo | (hi << 32);
		if (vm_rd(d->base, VM_CONFIG_GENERATION) == gen)
			break;
	}
	*gen_out = gen;
	return cap;
}

static void hp_slot_prefix(u32 i)
{
	puts_serial("hotplug: slot=");
	put_dec(i);
}

/* Checks slot i for a configuration change; returns 1 if it was an event. */
static int hp_poll_slot(u32 i)
{
	struct hp_slot *s = &hp_slots[i];
	const struct vdev *d = s->b.dev;
	u32 gen = vm_rd(d->base, VM_CONFIG_GENERATION);
	u32 isr = vm_rd(d->base, VM_INTERRUPT_STATUS);

	if (isr)
		vm_wr(d->base, VM_INTERRUPT_ACK, isr);
	if (gen == s->gen && !(isr & 2))
		return 0;

	u64 old = s->capacity, cap = hp_capacity(d, &s->gen);
	s->capacity = cap;
	if (cap == old)
		return 0;
	hp_slot_prefix(i);
	if (old == 0) {
		puts_serial(" added capacity=");
		put_dec(cap);
		memset(blkbuf.data, 0, SECTOR);
		int st = blk_request(&s->b, BLK_T_IN, 0, blkbuf.data, SECTOR, 1);
		if (st == 0) {
			puts_serial(" sum=0x");
			put_hex(fnv1a32((u64)blkbuf.data, SECTOR), 8);
			putc_serial('\n');
		} else {
			putc_serial('\n');
			hp_slot_prefix(i);
			puts_serial(" read status=");
			put_status(st);
			putc_serial('\n');
		}
	} else if (cap == 0) {
		puts_serial(" removed\n");
	} else {
		puts_serial(" resized capacity=");
		put_dec(cap);
		putc_serial('\n');
	}
	return 1;
}

/* A slot that already holds a disk when the test starts (boot disk, or one
 * plugged while the VM was stopped). */
static void hp_report_present(u32 i)
{
	struct hp_slot *s = &hp_slots[i];
	puts_serial("hotplug: at boot slot=");
	put_dec(i);
	puts_serial(" capacity=");
	put_dec(s->capacity);
	memset(blkbuf.data, 0, SECTOR);
	int st = blk_request(&s->b, BLK_T_IN, 0, blkbuf.data, SECTOR, 1);
	if (st == 0) {
		puts_serial(" sum=0x");
		put_hex(fnv1a32((u64)blkbuf.data, SECTOR), 8);
	} else {
		puts_serial(" read status=");
		put_status(st);
	}
	putc_serial('\n');
}

static void test_hotplug(void)
{
	u64 wait = vcfg.hp_wait_set ? vcfg.hp_wait : HP_WAIT_DEFAULT;
	u64 want = vcfg.hp_events_set ? vcfg.hp_events : HP_EVENTS_DEFAULT;
	u32 n = 0, live = 0;

	if (wait > HP_WAIT_MAX)
		wait = HP_WAIT_MAX;
	for (u32 i = 0; i < vcfg.n_devs; i++) {
		const struct vdev *d = &vcfg.devs[i];
		if (!d->usable || d->id != ID_BLK)
			continue;
		struct hp_slot *s = &hp_slots[n];
		s->ok = blk_init_ring(&s->b, d, RING_HP + (int)n, "hotplug");
		if (s->ok) {
			s->capacity = hp_capacity(d, &s->gen);
			u32 isr = vm_rd(d->base, VM_INTERRUPT_STATUS);
			if (isr)
				vm_wr(d->base, VM_INTERRUPT_ACK, isr);
			live++;
			if (s->capacity)
				hp_report_present(n);
		}
		n++;
	}
	puts_serial("hotplug: slots=");
	put_dec(n);
	putc_serial('\n');
	say("hotplug", "ready");

	u64 budget = wait * HP_ITERS_PER_SEC, events = 0;
	/* With no working slot nothing can change: do not sit out the budget. */
	while (events < want && live && budget) {
		for (u32 i = 0; i < n && events < want; i++)
			if (hp_slots[i].ok)
				events += (u64)hp_poll_slot(i);
		if (events >= want)
			break;
		u64 cost = HP_ROUND_PAUSES + (u64)live * 2 * HP_ROUND_MMIO_COST;
		budget = budget > cost ? budget - cost : 0;
		for (u32 k = 0; k < HP_ROUND_PAUSES; k++)
			cpu_pause();
	}
	say("hotplug", events >= want ? "done" : "timeout");
	for (u32 i = 0; i < n; i++)
		if (hp_slots[i].ok)
			vdev_reset(hp_slots[i].b.dev);
}

#include "nethotplug.c"
#include "netrx.c"
#include "virtiofs.c"
#include "balloon.c"

/* ---- Probe and dispatch ------------------------------------------------------ */

static void virtio_probe(void)
{
	for (u32 i = 0; i < vcfg.n_bad_tokens; i++)
		say("virtio", "malformed virtio_mmio.device= token");
	for (u32 i = 0; i < vcfg.n_devs; i++) {
		struct vdev *d = &vcfg.devs[i];
		puts_serial("virtio: base=");
		put_hex_short(d->base);
		puts_serial(" irq=");
		put_dec(d->irq);
		if (d->base + 0x200 > (1ull << 32) || d->size < 0x104) {
			/* Outside the 4 GiB identity map, or no room for config. */
			puts_serial(" error=unusable window\n");
			continue;
		}
		u32 magic = vm_rd(d->base, VM_MAGIC);
		u32 version = vm_rd(d->base, VM_VERSION);
		if (magic != VIRTIO_MAGIC) {
			puts_serial(" error=magic ");
			put_hex_short(magic);
			putc_serial('\n');
			continue;
		}
		if (version != 2) {
			puts_serial(" error=version ");
			put_dec(version);
			putc_serial('\n');
			continue;
		}
		d->id = vm_rd(d->base, VM_DEVICE_ID);
		d->usable = 1;
		puts_serial(" id=");
		put_dec(d->id);
		putc_serial('\n');
	}
}

/*
 * log-flood: a hostile driver making the host warn in a loop. Writes an
 * invalid queue size (not a power of two) to the rng device's queue 0
 * LOG_FLOOD_WRITES times; the host must rate-limit its log line.
 */
#define LOG_FLOOD_WRITES 5000

static void test_log_flood(void)
{
	const struct vdev *d = vdev_find(ID_RNG);

	if (!d) {
		say("log-flood", "no device");
		return;
	}
	if (!vdev_reset(d)) {
		say("log-flood", "reset failed");
		return;
	}
	vdev_set_status(d, ST_ACKNOWLEDGE);
	vdev_set_status(d, ST_DRIVER);
	vm_wr(d->base, VM_QUEUE_SEL, 0);
	for (u32 i = 0; i < LOG_FLOOD_WRITES; i++)
		vm_wr(d->base, VM_QUEUE_NUM, 3);
	vdev_reset(d);
	puts_serial("log-flood: writes=");
	put_dec(LOG_FLOOD_WRITES);
	putc_serial('\n');
}

/* Compares the test name [s, s+len) with a literal. */
static int name_is(const char *s, u32 len, const char *lit)
{
	u32 i = 0;
	for (; i < len && lit[i]; i++)
		if (s[i] != lit[i])
			return 0;
	return i == len && lit[i] == 0;
}

/* Probes the announced devices, then runs the guest.virtio= tests in order. */
static void virtio_run(void)
{
	if (vcfg.n_devs == 0 && vcfg.n_bad_tokens == 0 && !vcfg.tests[0])
		return;
	virtio_probe();

	const char *t = vcfg.tests;
	while (*t) {
		u32 len = 0;
		while (t[len] && t[len] != ',')
			len++;
		if (name_is(t, len, "blk"))
			test_blk();
		else if (name_is(t, len, "blk-bad"))
			test_blk_bad();
		else if (name_is(t, len, "rng"))
			test_rng();
		else if (name_is(t, len, "console"))
			test_console();
		else if (name_is(t, len, "console-steps"))
			test_console_steps();
		else if (name_is(t, len, "net"))
			test_net();
		else if (name_is(t, len, "vsock"))
			test_vsock();
		else if (name_is(t, len, "blkbench"))
			test_blkbench();
		else if (name_is(t, len, "hotplug"))
			test_hotplug();
		else if (name_is(t, len, "net-hotplug"))
			test_net_hotplug();
		else if (name_is(t, len, "net-rx"))
			test_net_rx();
		else if (name_is(t, len, "fs"))
			test_fs();
		else if (name_is(t, len, "balloon"))
			test_balloon();
		else if (name_is(t, len, "log-flood"))
			test_log_flood();
		else if (len) {
			puts_serial("virtio: unknown test ");
			for (u32 i = 0; i < len; i++)
				putc_serial(t[i]);
			putc_serial('\n');
		}
		t += len;
		if (*t == ',')
			t++;
	}
}
