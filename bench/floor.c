/* floor: the cheapest possible NFLOG consumer, to give the benchmark its floor.
 *
 * It does only what any consumer must: one raw netlink socket, one config message that binds the
 * group with large batches, then recv() and walk the messages, counting records and the gaps in
 * their per-instance sequence numbers (NFULA_SEQ). No library: the uapi headers are the contract,
 * so nothing here can hide a cost. Whatever a real consumer spends above this is its own work.
 *
 * Usage: floor -g GROUP [-n MAX_RECORDS] [-t MAX_SECONDS] [-q QTHRESH] [-b NLBUF] [-T TIMEOUT_CS]
 *              [-c COPY_RANGE] [-r RCVBUF] [-D]
 *   -D   kernel default batching (send no nlbuf/qthresh/timeout): shows what batch size is worth.
 * Prints "ready" on stdout once bound, and at the end one line of key=value results.
 * Stops on SIGTERM/SIGINT, after MAX_RECORDS records, or after MAX_SECONDS (bounded by default).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/netlink.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

/* The largest datagram the kernel builds at nlbufsiz 131072 is ~262 KB (two buffers' worth can
 * be queued in one skb); a single message can be ~65.6 KB. 512 KiB leaves room for both. */
#define RECV_BUF (512 * 1024)

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Append one netlink attribute to the message at *nlh (caller guarantees room). */
static void put_attr(struct nlmsghdr *nlh, uint16_t type, const void *data, uint16_t len)
{
	struct nlattr *a = (struct nlattr *)((char *)nlh + NLMSG_ALIGN(nlh->nlmsg_len));
	a->nla_type = type;
	a->nla_len = (uint16_t)(NLA_HDRLEN + len);
	memcpy((char *)a + NLA_HDRLEN, data, len);
	nlh->nlmsg_len = NLMSG_ALIGN(nlh->nlmsg_len) + NLA_ALIGN(a->nla_len);
}

/* Bind and configure the group in one acknowledged message: BIND, MODE, NLBUFSIZ, QTHRESH,
 * TIMEOUT and FLAGS all apply together (kernel facts), so there is no window with defaults. */
static void bind_group(int fd, unsigned group, int defaults, uint32_t qthresh, uint32_t nlbuf,
		       uint32_t timeout_cs, uint32_t copy_range)
{
	union {
		char buf[256];
		struct nlmsghdr align;
	} u;
	struct nlmsghdr *nlh = &u.align;
	struct nfgenmsg *nfg;
	struct nfulnl_msg_config_cmd cmd = { .command = NFULNL_CFG_CMD_BIND };
	struct nfulnl_msg_config_mode mode;
	uint16_t flags = htons(NFULNL_CFG_F_SEQ);
	uint32_t v;

	memset(&u, 0, sizeof(u));
	nlh->nlmsg_len = NLMSG_LENGTH(sizeof(*nfg));
	nlh->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = 1;
	nfg = NLMSG_DATA(nlh);
	nfg->nfgen_family = AF_UNSPEC;
	nfg->version = NFNETLINK_V0;
	nfg->res_id = htons((uint16_t)group);

	put_attr(nlh, NFULA_CFG_CMD, &cmd, sizeof(cmd));
	memset(&mode, 0, sizeof(mode));
	mode.copy_range = htonl(copy_range);
	mode.copy_mode = NFULNL_COPY_PACKET;
	put_attr(nlh, NFULA_CFG_MODE, &mode, sizeof(mode));
	if (!defaults) {
		v = htonl(nlbuf);
		put_attr(nlh, NFULA_CFG_NLBUFSIZ, &v, sizeof(v));
		v = htonl(qthresh);
		put_attr(nlh, NFULA_CFG_QTHRESH, &v, sizeof(v));
		v = htonl(timeout_cs);
		put_attr(nlh, NFULA_CFG_TIMEOUT, &v, sizeof(v));
	}
	put_attr(nlh, NFULA_CFG_FLAGS, &flags, sizeof(flags));

	if (send(fd, nlh, nlh->nlmsg_len, 0) < 0)
		die("send config");

	/* Read the ack; no record can arrive before it since the group was unbound until now. */
	char ack[4096];
	ssize_t n = recv(fd, ack, sizeof(ack), 0);
	if (n < 0)
		die("recv ack");
	struct nlmsghdr *r = (struct nlmsghdr *)ack;
	if (!NLMSG_OK(r, (size_t)n) || r->nlmsg_type != NLMSG_ERROR) {
		fprintf(stderr, "floor: unexpected reply to config\n");
		exit(1);
	}
	struct nlmsgerr *e = NLMSG_DATA(r);
	if (e->error != 0) {
		errno = -e->error;
		die("bind group (EPERM: another socket holds it, see /proc/net/netfilter/nfnetlink_log)");
	}
}

/* Find NFULA_SEQ in one NFULNL_MSG_PACKET message; -1 when absent. */
static int64_t record_seq(const struct nlmsghdr *nlh)
{
	const char *p = (const char *)NLMSG_DATA(nlh) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
	const char *end = (const char *)nlh + nlh->nlmsg_len;
	/* Bounded by the message length: every step advances by at least NLA_HDRLEN. */
	while (p + NLA_HDRLEN <= end) {
		const struct nlattr *a = (const struct nlattr *)p;
		if (a->nla_len < NLA_HDRLEN || p + a->nla_len > end)
			return -1;
		if ((a->nla_type & NLA_TYPE_MASK) == NFULA_SEQ && a->nla_len >= NLA_HDRLEN + 4) {
			uint32_t s;
			memcpy(&s, p + NLA_HDRLEN, 4);
			return ntohl(s);
		}
		p += NLA_ALIGN(a->nla_len);
	}
	return -1;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	unsigned group = 0;
	int have_group = 0, defaults = 0, opt;
	unsigned long long max_records = 0;
	unsigned max_seconds = 600; /* bounded even if nobody stops us */
	uint32_t qthresh = 1000000, nlbuf = 131072, timeout_cs = 100, copy_range = 128;
	int rcvbuf = 64 * 1024 * 1024;

	while ((opt = getopt(argc, argv, "g:n:t:q:b:T:c:r:D")) != -1) {
		switch (opt) {
		case 'g': group = (unsigned)strtoul(optarg, NULL, 0); have_group = 1; break;
		case 'n': max_records = strtoull(optarg, NULL, 0); break;
		case 't': max_seconds = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': qthresh = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'b': nlbuf = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'T': timeout_cs = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'c': copy_range = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'r': rcvbuf = atoi(optarg); break;
		case 'D': defaults = 1; break;
		default:
			fprintf(stderr, "usage: floor -g GROUP [-n MAX] [-t SEC] [-q QTHRESH] [-b NLBUF] "
					"[-T TIMEOUT_CS] [-c COPY_RANGE] [-r RCVBUF] [-D]\n");
			return 2;
		}
	}
	if (!have_group || group > 65535 || max_seconds == 0) {
		fprintf(stderr, "floor: -g GROUP (0-65535) is required\n");
		return 2;
	}

	/* No SA_RESTART: a signal must interrupt the blocking recv so we can stop. */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGALRM, &sa, NULL);

	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0)
		die("socket");
	/* Loss must show as sequence gaps, not as an ENOBUFS error that latches the socket. */
	int one = 1;
	if (setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one)) < 0)
		die("NETLINK_NO_ENOBUFS");
	/* FORCE ignores rmem_max (we are root): headroom while the reader is descheduled. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		die("SO_RCVBUFFORCE");
	struct sockaddr_nl sa_nl;
	memset(&sa_nl, 0, sizeof(sa_nl));
	sa_nl.nl_family = AF_NETLINK;
	if (bind(fd, (struct sockaddr *)&sa_nl, sizeof(sa_nl)) < 0)
		die("bind");

	bind_group(fd, group, defaults, qthresh, nlbuf, timeout_cs, copy_range);
	printf("ready\n");
	fflush(stdout);
	alarm(max_seconds);

	static char buf[RECV_BUF] __attribute__((aligned(8)));
	unsigned long long records = 0, lost = 0, datagrams = 0, truncated = 0, errors = 0;
	uint32_t last_seq = 0;
	int have_seq = 0;
	size_t max_datagram = 0;
	double t_first = 0, t_last = 0;

	while (!stop && (max_records == 0 || records < max_records)) {
		/* MSG_TRUNC makes recv return the real length, so a too-small buffer is visible. */
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_TRUNC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			errors++;
			if (errors > 1000) /* something is badly wrong; do not spin forever */
				break;
			continue;
		}
		if ((size_t)n > sizeof(buf)) {
			truncated++;
			continue;
		}
		if ((size_t)n > max_datagram)
			max_datagram = (size_t)n;
		datagrams++;
		t_last = now();
		if (datagrams == 1)
			t_first = t_last;
		size_t len = (size_t)n;
		for (struct nlmsghdr *nlh = (struct nlmsghdr *)buf; NLMSG_OK(nlh, len);
		     nlh = NLMSG_NEXT(nlh, len)) {
			if (nlh->nlmsg_type == NLMSG_DONE)
				break;
			if (nlh->nlmsg_type != ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET))
				continue;
			records++;
			int64_t s = record_seq(nlh);
			if (s >= 0) {
				/* u32 arithmetic: a wrap is not a gap. */
				if (have_seq && (uint32_t)s != last_seq + 1)
					lost += (uint32_t)((uint32_t)s - last_seq - 1);
				last_seq = (uint32_t)s;
				have_seq = 1;
			}
		}
	}

	printf("records=%llu lost_by_seq=%llu datagrams=%llu truncated=%llu errors=%llu "
	       "records_per_datagram=%.1f max_datagram=%zu active_seconds=%.3f\n",
	       records, lost, datagrams, truncated, errors,
	       datagrams ? (double)records / (double)datagrams : 0.0, max_datagram, t_last - t_first);
	fflush(stdout);
	close(fd);
	return 0;
}
