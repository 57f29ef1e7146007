/*
 * altovirt test guest: counting received frames (guest.virtio=net-rx).
 *
 * Included by virtio.c (after the net and hotplug helpers), like
 * nethotplug.c.
 *
 * Drives the first virtio-net device (a boot NIC, or an empty network slot
 * a NIC is hot-plugged into later: the link status is not looked at),
 * posts NET_RX_BUFS receive buffers and counts the sequence frames the host
 * sends (tests/guests/net_flood.py): ethertype 0x88b5, payload a 32-bit
 * big-endian sequence number from 0 followed by "altovirt-seq". Each used
 * buffer is reposted at once. Stops when guest.netrx= frames have arrived
 * or when the guest.hotplug.wait= budget (seconds, default 30) runs out.
 *
 * Output:
 *   netrx: ready
 *   netrx: frames=<sequence frames> lost=<sequence numbers skipped>
 *          misordered=<numbers at or below one already seen> other=<other
 *          frames>
 *   netrx: done | netrx: timeout
 */

static const char netrx_magic[] = "altovirt-seq";

/* Counts of the sequence frames. */
struct netrx_count {
	u64 frames, lost, misordered, other;
	u64 next;		/* the sequence number expected next */
};

/* Classifies buffer b with used length len. */
static void netrx_account(struct netrx_count *c, const volatile u8 *b, u32 len)
{
	const volatile u8 *eth = b + NET_HDR;
	u32 magic_len = sizeof(netrx_magic) - 1;

	if (len < NET_HDR + ETH_HLEN + 4 + magic_len ||
	    ((u32)eth[12] << 8 | eth[13]) != NET_ETHERTYPE) {
		c->other++;
		return;
	}
	const volatile u8 *p = eth + ETH_HLEN;
	for (u32 i = 0; i < magic_len; i++) {
		if (p[4 + i] != (u8)netrx_magic[i]) {
			c->other++;
			return;
		}
	}
	u64 seq = (u64)p[0] << 24 | (u64)p[1] << 16 | (u64)p[2] << 8 | p[3];
	c->frames++;
	if (seq < c->next) {
		c->misordered++;
		return;
	}
	c->lost += seq - c->next;
	c->next = seq + 1;
}

static void test_net_rx(void)
{
	const struct vdev *d = vdev_find(ID_NET);
	u64 wait = vcfg.hp_wait_set ? vcfg.hp_wait : HP_WAIT_DEFAULT;
	struct netrx_count c = { 0 };
	struct vq rx, tx;
	u64 features;

	if (!d) {
		say("netrx", "no device");
		return;
	}
	if (wait > HP_WAIT_MAX)
		wait = HP_WAIT_MAX;
	u64 budget = wait * HP_ITERS_PER_SEC;
	if (!vdev_begin(d, NET_F_MAC | NET_F_STATUS, &features, "netrx") ||
	    !vq_setup(&rx, d, 0, RING_NET_RX, "netrx") ||
	    !vq_setup(&tx, d, 1, RING_NET_TX, "netrx"))
		return;
	u16 n_rx = rx.size < NET_RX_BUFS ? rx.size : NET_RX_BUFS;
	for (u16 i = 0; i < n_rx; i++)
		net_rx_post(&rx, i);
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "netrx", "DRIVER_OK not kept");
		return;
	}
	vq_notify(&rx);
	say("netrx", "ready");

	int done = 0;
	while (budget && !done) {
		struct vq_used_elem e;
		u32 slice = budget < 10000 ? (u32)budget : 10000;
		if (!vq_wait(&rx, slice, &e)) {
			budget -= slice;
			continue;
		}
		/* A frame costs about one MMIO exit of budget. */
		budget = budget > HP_ROUND_MMIO_COST ? budget - HP_ROUND_MMIO_COST : 0;
		mb();
		if (e.id >= n_rx) {
			line_start("netrx");
			puts_serial("rx bad id ");
			put_dec(e.id);
			putc_serial('\n');
			break;
		}
		u32 len = e.len < NET_RX_BYTES ? e.len : NET_RX_BYTES;
		netrx_account(&c, netbuf.rx[e.id], len);
		done = c.next >= vcfg.netrx_count;
		net_rx_post(&rx, (u16)e.id);
		vq_notify(&rx);
	}
	line_start("netrx");
	puts_serial("frames=");
	put_dec(c.frames);
	puts_serial(" lost=");
	put_dec(c.lost);
	puts_serial(" misordered=");
	put_dec(c.misordered);
	puts_serial(" other=");
	put_dec(c.other);
	putc_serial('\n');
	vdev_reset(d);
	say("netrx", done ? "done" : "timeout");
}
