/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A truncated datagram from the real kernel is detected, counted and discarded, never parsed.
 *
 * nflogd sizes its receive buffer to fit the largest datagram the kernel can send, so truncation
 * cannot happen through the Python API. This harness (built by tests/test_nflog_c.py, run inside
 * a namespace whose nft rule logs udp dport 7300 to group 1) opens the group through sock.c,
 * then shrinks the buffer it receives into below one record and checks what sock.c does:
 *   1. a 200-byte packet's record arrives in a 64-byte buffer: recv says -EMSGSIZE, truncated 1;
 *   2. with the buffer restored the next record parses, and its sequence number shows the
 *      discarded one as lost (lost 1): the loss is accounted, not hidden;
 *   3. one ~60 KB record (the largest kind) fits the real buffer whole.
 * Prints "ok" and exits 0, or says what failed and exits 1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "record.h"
#include "sock.h"

#define FAIL(...)                                                   \
	do {                                                        \
		fprintf(stderr, "line %d: ", __LINE__);             \
		fprintf(stderr, __VA_ARGS__);                       \
		fputc('\n', stderr);                                \
		exit(1);                                            \
	} while (0)

static void send_udp(size_t size)
{
	static char data[60000];
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(7300)};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || sendto(fd, data, size, 0, (struct sockaddr *)&dst, sizeof(dst)) != (ssize_t)size)
		FAIL("sendto: %s", strerror(errno));
	close(fd);
}

struct seen {
	size_t n;
	uint32_t seq, ip_len, payload_len;
};

static int visit(void *ctx, const struct nfd_record *rec, const struct nlmsghdr *nlh)
{
	struct seen *s = ctx;
	(void)nlh;
	s->n++;
	s->seq = rec->seq;
	s->ip_len = rec->ip_len;
	s->payload_len = rec->payload_len;
	return 0;
}

static ssize_t wait_recv(struct nfd_sock *s)
{
	int r = nfd_sock_wait(s, 5000);
	if (r != 1)
		FAIL("no datagram within 5 s (wait %d)", r);
	return nfd_sock_recv(s);
}

int main(void)
{
	struct nfd_config cfg = {
		.group = 1, .copymode = NFULNL_COPY_PACKET, .copyrange = NFD_COPY_RANGE_MAX,
		.qthresh = 1, .timeout = 0, .enobufs_mode = ENOBUFS_RAISE, .seq = true,
	};
	struct nfd_sock s;
	struct seen seen = {0};
	ssize_t len;
	int r = nfd_sock_open(&s, &cfg);
	if (r < 0)
		FAIL("nfd_sock_open: %s", strerror(-r));
	const size_t real = s.bufsize;
	if (real < 131072)
		FAIL("receive buffer %zu is smaller than the kernel's largest datagram", real);

	/* 1. Truncated: detected and counted, nothing handed to the parser. */
	s.bufsize = 64;
	send_udp(200);
	len = wait_recv(&s);
	if (len != -EMSGSIZE || s.truncated != 1 || s.datagrams != 0)
		FAIL("truncated datagram: recv %zd, truncated %llu, datagrams %llu", len,
		     (unsigned long long)s.truncated, (unsigned long long)s.datagrams);

	/* 2. Restored: the next record parses, and the discarded one counts as lost. */
	s.bufsize = real;
	send_udp(200);
	len = wait_recv(&s);
	if (len <= 0)
		FAIL("recv after restoring the buffer: %zd", len);
	if (nfd_sock_dispatch(&s, (size_t)len, visit, &seen) != 1 || seen.seq != 1 ||
	    seen.ip_len != 228 || s.lost != 1 || s.received != 1)
		FAIL("after truncation: n %zu seq %u ip_len %u lost %llu received %llu", seen.n, seen.seq,
		     seen.ip_len, (unsigned long long)s.lost, (unsigned long long)s.received);

	/* 3. The largest single record fits whole. */
	send_udp(60000);
	len = wait_recv(&s);
	seen.n = 0;
	if (len <= 60000 || nfd_sock_dispatch(&s, (size_t)len, visit, &seen) != 1 ||
	    seen.payload_len != 60028 || seen.ip_len != 60028 || s.truncated != 1 || s.lost != 1)
		FAIL("60 KB record: len %zd payload %u truncated %llu", len, seen.payload_len,
		     (unsigned long long)s.truncated);

	nfd_sock_close(&s);
	printf("ok\n");
	return 0;
}
