/*
 * altovirt test guest: network hotplug (guest.virtio=net-hotplug).
 *
 * Included by virtio.c (after the net helpers), like virtio.c is by guest.c.
 *
 * Drives the first virtio-net device (with -machine microvm,net-slots=N and
 * no boot-time NIC: net slot 0) like a running driver: negotiates, posts
 * receive buffers, sets DRIVER_OK, then polls the link status. When the link
 * comes up (QMP netdev_add + device_add), it prints the MAC now in
 * configuration space, sends the "altovirt-net-tx" frame from it and waits
 * for the peer's answer through the same queues; then it waits for the link
 * to go down again (device_del).
 *
 * Output:
 *   nethp: ready mac=<slot MAC> status=<link status>
 *   nethp: up mac=<MAC> config-irq=<0|1>  (1: the config change interrupt
 *                                          bit was set in InterruptStatus)
 *   nethp: tx done | nethp: tx timeout
 *   net: rx=<payload> | nethp: rx timeout
 *   nethp: down config-irq=<0|1>
 *   nethp: done | nethp: timeout           (guest.hotplug.wait= budget)
 */

/* Polls the link status until it equals want; 1 when it does. */
static int nethp_wait_link(const struct vdev *d, u64 features, int want, u64 *budget, u32 *isr_seen)
{
	*isr_seen = 0;
	while (*budget) {
		u32 isr = vm_rd(d->base, VM_INTERRUPT_STATUS);
		if (isr) {
			vm_wr(d->base, VM_INTERRUPT_ACK, isr);
			*isr_seen |= isr;
		}
		int status = net_read_config(d, features);
		if (status >= 0 && (status & 1) == want) {
			/*
			 * The device updates the configuration before it raises
			 * the interrupt: give the interrupt a moment to follow.
			 */
			for (u32 k = 0; k < WAIT_REQUEST && !(*isr_seen & 2); k++) {
				isr = vm_rd(d->base, VM_INTERRUPT_STATUS);
				if (isr) {
					vm_wr(d->base, VM_INTERRUPT_ACK, isr);
					*isr_seen |= isr;
				}
				cpu_pause();
			}
			return 1;
		}
		u64 cost = HP_ROUND_PAUSES + 4 * HP_ROUND_MMIO_COST;
		*budget = *budget > cost ? *budget - cost : 0;
		for (u32 k = 0; k < HP_ROUND_PAUSES; k++)
			cpu_pause();
	}
	return 0;
}

static void test_net_hotplug(void)
{
	const struct vdev *d = vdev_find(ID_NET);
	u64 wait = vcfg.hp_wait_set ? vcfg.hp_wait : HP_WAIT_DEFAULT;
	struct vq rx, tx;
	u64 features;
	u32 isr;

	if (!d) {
		say("nethp", "no device");
		return;
	}
	if (wait > HP_WAIT_MAX)
		wait = HP_WAIT_MAX;
	u64 budget = wait * HP_ITERS_PER_SEC;
	if (!vdev_begin(d, NET_F_MAC | NET_F_STATUS, &features, "nethp") ||
	    !vq_setup(&rx, d, 0, RING_NET_RX, "nethp") ||
	    !vq_setup(&tx, d, 1, RING_NET_TX, "nethp"))
		return;
	if (!(features & NET_F_STATUS)) {
		vdev_fail(d, "nethp", "no VIRTIO_NET_F_STATUS");
		return;
	}
	u16 n_rx = rx.size < NET_RX_BUFS ? rx.size : NET_RX_BUFS;
	for (u16 i = 0; i < n_rx; i++)
		net_rx_post(&rx, i);
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "nethp", "DRIVER_OK not kept");
		return;
	}
	vq_notify(&rx);
	int status = net_read_config(d, features);
	puts_serial("nethp: ready mac=");
	net_put_mac();
	puts_serial(" status=");
	put_dec((u32)status);
	putc_serial('\n');

	if (!nethp_wait_link(d, features, 1, &budget, &isr)) {
		say("nethp", "timeout");
		vdev_reset(d);
		return;
	}
	puts_serial("nethp: up mac=");
	net_put_mac();
	puts_serial(isr & 2 ? " config-irq=1\n" : " config-irq=0\n");

	say("nethp", net_send_test_frame(&tx) ? "tx done" : "tx timeout");
	/* Generous: the peer is a Python script on a possibly busy host. */
	if (!net_wait_reply(&rx, n_rx, WAIT_NET_RX * 20, "nethp"))
		say("nethp", "rx timeout");

	if (!nethp_wait_link(d, features, 0, &budget, &isr)) {
		say("nethp", "timeout");
		vdev_reset(d);
		return;
	}
	puts_serial(isr & 2 ? "nethp: down config-irq=1\n" : "nethp: down config-irq=0\n");
	vdev_reset(d);
	say("nethp", "done");
}
