/* ttbench sender: UDP/IPv4 frames out of one interface through AF_PACKET, in sendmmsg batches.
 *
 *   sender IFNAME DST_MAC SRC_MAC RATE_PPS MAX_FRAMES MAX_SECONDS
 *
 * RATE_PPS 0 means as fast as possible. Stops at MAX_FRAMES or MAX_SECONDS, whichever comes
 * first, and prints one JSON line: {"sent":N,"errors":E,"elapsed_s":T}. Frames go out with
 * PACKET_QDISC_BYPASS (straight into the driver, as a frame arriving from an uplink would: no
 * qdisc, no net_dev_queue on the sender's side). Every frame carries a sequence number, so no
 * two frames of a run are identical. Addresses: 198.51.100.1 -> 198.51.100.10, UDP 9 (discard).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FRAME_LEN 64

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int parse_mac(const char *s, uint8_t *out)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &out[0], &out[1], &out[2], &out[3], &out[4],
		      &out[5]) == 6 ? 0 : -1;
}

static uint16_t csum(const uint8_t *p, int n)
{
	uint32_t s = 0;
	for (int i = 0; i < n; i += 2)
		s += (p[i] << 8) | p[i + 1];
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

static void build(uint8_t *f, const uint8_t *dst, const uint8_t *src, uint64_t seq)
{
	memset(f, 0, FRAME_LEN);
	memcpy(f, dst, 6);
	memcpy(f + 6, src, 6);
	f[12] = 0x08; f[13] = 0x00;
	uint8_t *ip = f + 14;
	ip[0] = 0x45;
	uint16_t tot = FRAME_LEN - 14;
	ip[2] = tot >> 8; ip[3] = tot & 0xff;
	ip[4] = (seq >> 8) & 0xff; ip[5] = seq & 0xff; /* IP id */
	ip[8] = 64; ip[9] = 17;
	uint8_t s[4] = {198, 51, 100, 1}, d[4] = {198, 51, 100, 10};
	memcpy(ip + 12, s, 4);
	memcpy(ip + 16, d, 4);
	uint16_t c = csum(ip, 20);
	ip[10] = c >> 8; ip[11] = c & 0xff;
	uint8_t *udp = ip + 20;
	udp[0] = 0x9c; udp[1] = 0x40; /* 40000 */
	udp[2] = 0; udp[3] = 9;
	uint16_t ul = tot - 20;
	udp[4] = ul >> 8; udp[5] = ul & 0xff;
	memcpy(udp + 8, &seq, sizeof(seq)); /* the sequence number makes every frame unique */
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: %s IFNAME DST_MAC SRC_MAC RATE_PPS MAX_FRAMES MAX_SECONDS\n", argv[0]);
		return 2;
	}
	uint8_t dst[6], src[6];
	if (parse_mac(argv[2], dst) || parse_mac(argv[3], src)) {
		fprintf(stderr, "bad MAC\n");
		return 2;
	}
	double rate = atof(argv[4]);
	uint64_t max_frames = strtoull(argv[5], NULL, 10);
	double max_s = atof(argv[6]);
	if (max_s <= 0 || max_s > 600 || max_frames == 0) {
		fprintf(stderr, "MAX_SECONDS must be in (0, 600], MAX_FRAMES > 0\n");
		return 2;
	}
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) { perror("socket"); return 1; }
	int one = 1;
	if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)))
		perror("PACKET_QDISC_BYPASS (continuing without)");
	struct sockaddr_ll sll = {0};
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = if_nametoindex(argv[1]);
	sll.sll_halen = 6;
	memcpy(sll.sll_addr, dst, 6);
	if (!sll.sll_ifindex) { perror("if_nametoindex"); return 1; }
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) { perror("bind"); return 1; }

	static uint8_t frames[BATCH][FRAME_LEN];
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = frames[i];
		iov[i].iov_len = FRAME_LEN;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	/* Paced runs send small batches so the rate is smooth at the 100 µs scale. */
	int batch = BATCH;
	if (rate > 0) {
		batch = (int)(rate / 20000.0);
		if (batch < 1) batch = 1;
		if (batch > BATCH) batch = BATCH;
	}
	uint64_t seq = 0, sent = 0, errors = 0;
	uint64_t start = now_ns(), end = start + (uint64_t)(max_s * 1e9);
	uint64_t t = start;
	while (sent < max_frames && (t = now_ns()) < end) {
		if (rate > 0) {
			uint64_t due = start + (uint64_t)((double)sent * 1e9 / rate);
			if (due > t) {
				if (due - t > 200000) {
					struct timespec ts = {0, (long)(due - t - 100000)};
					nanosleep(&ts, NULL);
				}
				continue;
			}
		}
		int n = batch;
		if (max_frames - sent < (uint64_t)n) n = (int)(max_frames - sent);
		for (int i = 0; i < n; i++)
			build(frames[i], dst, src, seq + i);
		int r = sendmmsg(fd, msgs, n, 0);
		if (r < 0) {
			errors++;
			if (errno != ENOBUFS && errno != EAGAIN) { perror("sendmmsg"); break; }
			continue;
		}
		seq += r;
		sent += r;
	}
	double el = (double)(now_ns() - start) / 1e9;
	printf("{\"sent\":%llu,\"errors\":%llu,\"elapsed_s\":%.6f}\n", (unsigned long long)sent,
	       (unsigned long long)errors, el);
	close(fd);
	return 0;
}
