/*
 * altovirt test guest: virtio-fs (guest.virtio=fs).
 *
 * Included by virtio.c (after the queue helpers), like nethotplug.c.
 *
 * Finds the first virtio-fs device (ID 26), reads its configuration space
 * (tag[36], NUL-padded, then num_request_queues as le32), negotiates,
 * sets up the high-priority queue 0 and request queue 1, and sends one
 * FUSE_INIT request on queue 1: fuse_in_header + fuse_init_in (7.31)
 * readable, room for fuse_out_header + fuse_init_out writable.
 *
 * Output:
 *   fs: tag=<tag> queues=<num_request_queues>
 *   fs: init major=<n> minor=<n> | fs: init error=<n> | fs: init timeout |
 *   fs: init bad reply len=<used len>
 *   fs: done
 */

#define ID_FS 26
#define FS_TAG_LEN 36
#define FUSE_INIT 26
#define FUSE_IN_HDR 40
#define FUSE_INIT_IN 16		/* major, minor, max_readahead, flags */
#define FUSE_OUT_HDR 16
#define FUSE_INIT_OUT 64
#define FS_UNIQUE 0x1234

static struct {
	u8 in[FUSE_IN_HDR + FUSE_INIT_IN] __attribute__((aligned(8)));
	u8 out[FUSE_OUT_HDR + FUSE_INIT_OUT] __attribute__((aligned(8)));
} fsbuf;

static void put_le32(u8 *p, u32 v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (u8)(v >> (8 * i));
}

static u32 get_le32(const volatile u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static void test_fs(void)
{
	const struct vdev *d = vdev_find(ID_FS);
	struct vq hiprio, req;
	struct vq_used_elem e;
	u64 features;

	if (!d) {
		say("fs", "no device");
		return;
	}
	puts_serial("fs: tag=");
	for (u32 i = 0; i < FS_TAG_LEN; i++) {
		u8 c = rd8(d->base + VM_CONFIG + i);
		if (!c)
			break;
		putc_serial(c >= 0x20 && c < 0x7f ? (char)c : '?');
	}
	puts_serial(" queues=");
	put_dec(vm_rd(d->base, VM_CONFIG + FS_TAG_LEN));
	putc_serial('\n');

	if (!vdev_begin(d, 0, &features, "fs") ||
	    !vq_setup(&hiprio, d, 0, RING_FS_HIPRIO, "fs") ||
	    !vq_setup(&req, d, 1, RING_FS_REQ, "fs"))
		return;
	if (!(vdev_driver_ok(d) & ST_DRIVER_OK)) {
		vdev_fail(d, "fs", "DRIVER_OK not kept");
		return;
	}

	memset(fsbuf.in, 0, sizeof(fsbuf.in));
	memset(fsbuf.out, 0, sizeof(fsbuf.out));
	put_le32(fsbuf.in + 0, sizeof(fsbuf.in));	/* len */
	put_le32(fsbuf.in + 4, FUSE_INIT);		/* opcode */
	put_le32(fsbuf.in + 8, FS_UNIQUE);		/* unique (low half) */
	put_le32(fsbuf.in + 16, 1);			/* nodeid: FUSE_ROOT_ID */
	put_le32(fsbuf.in + FUSE_IN_HDR + 0, 7);	/* major */
	put_le32(fsbuf.in + FUSE_IN_HDR + 4, 31);	/* minor */
	put_le32(fsbuf.in + FUSE_IN_HDR + 8, 0x20000);	/* max_readahead */
	vq_set_desc(&req, 0, (u64)fsbuf.in, sizeof(fsbuf.in), DESC_F_NEXT, 1);
	vq_set_desc(&req, 1, (u64)fsbuf.out, sizeof(fsbuf.out), DESC_F_WRITE, 0);
	vq_publish(&req, 0);
	vq_notify(&req);

	/* Generous: the backend is a Python script on a possibly busy host. */
	u32 budget = WAIT_REQUEST * 20;
	int done = 0;
	while (!done && budget) {
		u32 slice = budget < 10000 ? budget : 10000;
		budget -= slice;
		done = vq_wait(&req, slice, &e);
	}
	mb();
	if (!done) {
		say("fs", "init timeout");
	} else if (e.len < FUSE_OUT_HDR || get_le32(fsbuf.out + 8) != FS_UNIQUE) {
		puts_serial("fs: init bad reply len=");
		put_dec(e.len);
		putc_serial('\n');
	} else if (get_le32(fsbuf.out + 4) != 0) {
		puts_serial("fs: init error=-");
		put_dec(-get_le32(fsbuf.out + 4));
		putc_serial('\n');
	} else if (e.len < FUSE_OUT_HDR + 8) {
		puts_serial("fs: init bad reply len=");
		put_dec(e.len);
		putc_serial('\n');
	} else {
		puts_serial("fs: init major=");
		put_dec(get_le32(fsbuf.out + FUSE_OUT_HDR));
		puts_serial(" minor=");
		put_dec(get_le32(fsbuf.out + FUSE_OUT_HDR + 4));
		putc_serial('\n');
	}
	vdev_reset(d);
	say("fs", "done");
}
