/* ttbench reader: holds tap IFNAME (as qemu would) and drains it, counting frames.
 *
 *   reader IFNAME COUNTER_FILE MAX_SECONDS
 *
 * Attaches to an existing tap (made with `ip tuntap add ... mode tap`, which sets IFF_NO_PI),
 * then loops: poll() for readability, read() until EAGAIN (a batch per wake-up). The running
 * totals live in COUNTER_FILE, mmapped shared, so the harness reads them without disturbing
 * the reader: struct { u64 frames; u64 bytes; u64 last_read_ns (CLOCK_MONOTONIC); u64 ready; }.
 * Exits after MAX_SECONDS or on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct counters {
	volatile uint64_t frames;
	volatile uint64_t bytes;
	volatile uint64_t last_read_ns;
	volatile uint64_t ready;
};

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s IFNAME COUNTER_FILE MAX_SECONDS\n", argv[0]);
		return 2;
	}
	double max_s = atof(argv[3]);
	if (max_s <= 0 || max_s > 7200) { fprintf(stderr, "MAX_SECONDS must be in (0, 7200]\n"); return 2; }
	int cf = open(argv[2], O_RDWR | O_CREAT, 0600);
	if (cf < 0 || ftruncate(cf, 4096)) { perror(argv[2]); return 1; }
	struct counters *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, cf, 0);
	if (c == MAP_FAILED) { perror("mmap"); return 1; }
	memset((void *)c, 0, sizeof(*c));

	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
	if (fd < 0) { perror("/dev/net/tun"); return 1; }
	struct ifreq ifr = {0};
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
	if (ioctl(fd, TUNSETIFF, &ifr)) { perror("TUNSETIFF"); return 1; }

	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	c->ready = 1;

	static char buf[65536];
	uint64_t end = now_ns() + (uint64_t)(max_s * 1e9);
	struct pollfd p = {fd, POLLIN, 0};
	uint64_t frames = 0, bytes = 0;
	while (!stop) {
		int r = poll(&p, 1, 100);
		if (r < 0 && errno != EINTR) { perror("poll"); break; }
		for (;;) {
			ssize_t n = read(fd, buf, sizeof(buf));
			if (n < 0)
				break;
			frames++;
			bytes += n;
			if ((frames & 63) == 0) {
				c->frames = frames;
				c->bytes = bytes;
			}
		}
		c->frames = frames;
		c->bytes = bytes;
		c->last_read_ns = now_ns();
		if (c->last_read_ns > end)
			break;
	}
	c->ready = 2;
	close(fd);
	return 0;
}
