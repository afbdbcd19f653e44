/* flood: a bounded UDP flood for the NFLOG benchmark.
 *
 * Sends a fixed number of datagrams with sendmmsg (batches amortise the syscall, so the sender,
 * not the syscall, is what limits the rate) from P forked sender processes, optionally paced to a
 * total rate, optionally each under its own uid. It is meant to run inside a private network
 * namespace, towards a port whose traffic an nft rule counts, logs and drops.
 *
 * Usage: flood [-d DST] [-p PORT] [-N NPORTS] [-n COUNT] [-r RATE] [-P PROCS] [-u UID_BASE]
 *              [-U NUIDS] [-s SIZE] [-b BATCH]
 *   -n   total datagrams over all senders (bounded: at most 100,000,000)
 *   -r   total datagrams per second over all senders (0: as fast as possible)
 *   -N   sender i sends to PORT + (i % NPORTS): two ports can feed two NFLOG groups at once
 *   -u   sender i runs as uid/gid UID_BASE + i (switched before its socket exists: NFLOG takes the
 *        uid from the credentials the socket was opened with, so setuid after socket() is useless)
 *   -U   uid sweep instead of a flood: one process sends COUNT/NUIDS datagrams from each of NUIDS
 *        uids UID_BASE .. UID_BASE+NUIDS-1 (one socket each), to make many distinct uid labels
 *   -S   many sources: datagram k of a sender comes from 127.1.0.0 + (k % NSRC) (IP_PKTINFO per
 *        message; every 127/8 address is local on lo), so records carry NSRC source addresses
 *   -R   random sources: every datagram from a random address in 127.64.0.0/10 (4M addresses),
 *        so nearly every record is a new key: a flood that keeps a series budget full
 * Prints one line: sent=N errors=E elapsed=S rate=R procs=P.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_COUNT 100000000ULL
#define MAX_PROCS 64
#define MAX_BATCH 1024
#define MAX_SIZE 65000

/* Where datagrams come from: the socket's own address, NSRC cycled ones, or random ones. */
struct sources {
	unsigned n;    /* 0: the socket's address */
	int random;
	uint64_t rng;  /* xorshift64 state, per sender */
	unsigned long long next;
};

struct result {
	unsigned long long sent;
	unsigned long long errors;
};

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "flood: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int open_socket(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	/* A large send buffer keeps sendmmsg from blocking on the loopback queue. */
	int sz = 4 * 1024 * 1024;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	return fd;
}

static uint32_t next_source(struct sources *src)
{
	if (src->random) {
		uint64_t x = src->rng;
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		src->rng = x;
		return 0x7f400000u | (uint32_t)(x & 0x3fffff);
	}
	return 0x7f010000u + (uint32_t)(src->next++ % src->n);
}

/* Send `count` datagrams, in batches, paced to `rate` per second (0 = unpaced). */
static void send_loop(int fd, const struct sockaddr_in *dst, unsigned long long count, double rate,
		      unsigned batch, size_t size, struct sources *src, struct result *res)
{
	static struct mmsghdr msgs[MAX_BATCH];
	static struct iovec iov[MAX_BATCH];
	static char cmsg[MAX_BATCH][CMSG_SPACE(sizeof(struct in_pktinfo))];
	char *payload = calloc(1, size ? size : 1);
	if (!payload)
		die("calloc");
	memset(payload, 'x', size);
	for (unsigned i = 0; i < batch; i++) {
		iov[i].iov_base = payload;
		iov[i].iov_len = size;
		memset(&msgs[i], 0, sizeof(msgs[i]));
		msgs[i].msg_hdr.msg_name = (void *)dst;
		msgs[i].msg_hdr.msg_namelen = sizeof(*dst);
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		if (src->n || src->random) {
			struct msghdr *h = &msgs[i].msg_hdr;
			h->msg_control = cmsg[i];
			h->msg_controllen = sizeof(cmsg[i]);
			struct cmsghdr *c = CMSG_FIRSTHDR(h);
			c->cmsg_level = IPPROTO_IP;
			c->cmsg_type = IP_PKTINFO;
			c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
		}
	}

	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	unsigned long long sent = 0, errors = 0;
	/* Bounded: each pass either sends >= 1 datagram or counts an error, and errors are capped. */
	while (sent < count && errors < 1000000) {
		if (rate > 0) {
			/* Absolute schedule: datagram k is due at start + k / rate, so sleep overshoot
			 * is caught up in the next batch instead of drifting the rate down. */
			double due = (double)sent / rate;
			struct timespec t = start;
			t.tv_sec += (time_t)due;
			t.tv_nsec += (long)((due - (double)(time_t)due) * 1e9);
			if (t.tv_nsec >= 1000000000L) {
				t.tv_sec++;
				t.tv_nsec -= 1000000000L;
			}
			while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL) == EINTR)
				;
		}
		unsigned n = batch;
		if (count - sent < n)
			n = (unsigned)(count - sent);
		for (unsigned i = 0; (src->n || src->random) && i < n; i++) {
			struct in_pktinfo pi = {.ipi_spec_dst.s_addr = htonl(next_source(src))};
			memcpy(CMSG_DATA(CMSG_FIRSTHDR(&msgs[i].msg_hdr)), &pi, sizeof(pi));
		}
		int r = sendmmsg(fd, msgs, n, 0);
		if (r < 0 && (errno == EPERM || errno == ECONNREFUSED)) {
			/* Dropped by netfilter on the way out (or an ICMP error from an earlier datagram):
			 * the first datagram of the batch still reached the rule, so it counts as sent. */
			sent++;
			continue;
		}
		if (r <= 0) {
			errors++;
			/* Transient (buffer full): yield instead of spinning on the error. */
			if (r < 0 && errno != ENOBUFS && errno != EAGAIN && errno != EINTR)
				die("sendmmsg");
			sched_yield();
			continue;
		}
		sent += (unsigned)r;
	}
	res->sent = sent;
	res->errors = errors;
	free(payload);
}

static void switch_uid(uid_t uid)
{
	if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0)
		die("setresuid");
}

/* Many distinct uids from one process: switch only the effective (and so the fs) uid, keep the
 * saved uid 0 to switch back, open a socket under each uid. Cheap: no fork, no exec per uid. */
static void uid_sweep(const struct sockaddr_in *dst, unsigned long long count, unsigned nuids,
		      uid_t base, size_t size, struct result *res)
{
	unsigned long long per = count / nuids ? count / nuids : 1;
	char *payload = calloc(1, size ? size : 1);
	if (!payload)
		die("calloc");
	for (unsigned i = 0; i < nuids; i++) {
		uid_t u = base + i;
		if (setresgid((gid_t)-1, u, (gid_t)-1) < 0 || setresuid((uid_t)-1, u, (uid_t)-1) < 0)
			die("seteuid");
		int fd = open_socket();
		if (seteuid(0) < 0 || setegid(0) < 0)
			die("seteuid back");
		for (unsigned long long k = 0; k < per; k++) {
			if (sendto(fd, payload, size, 0, (const struct sockaddr *)dst, sizeof(*dst)) < 0)
				res->errors++;
			else
				res->sent++;
		}
		close(fd);
	}
	free(payload);
}

int main(int argc, char **argv)
{
	const char *dst_ip = "127.0.0.1";
	unsigned port = 9999, nports = 1, procs = 1, batch = 64, nuids = 0;
	unsigned long long count = 100000;
	double rate = 0;
	long uid_base = -1;
	size_t size = 64;
	unsigned nsrc = 0;
	int random_src = 0;
	int opt;

	while ((opt = getopt(argc, argv, "d:p:N:n:r:P:u:U:s:b:S:R")) != -1) {
		switch (opt) {
		case 'd': dst_ip = optarg; break;
		case 'p': port = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'N': nports = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'n': count = strtoull(optarg, NULL, 0); break;
		case 'r': rate = strtod(optarg, NULL); break;
		case 'P': procs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'u': uid_base = strtol(optarg, NULL, 0); break;
		case 'U': nuids = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': size = strtoul(optarg, NULL, 0); break;
		case 'b': batch = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'S': nsrc = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'R': random_src = 1; break;
		default:
			fprintf(stderr, "usage: flood [-d DST] [-p PORT] [-N NPORTS] [-n COUNT] [-r RATE] "
					"[-P PROCS] [-u UID_BASE] [-U NUIDS] [-s SIZE] [-b BATCH] "
					"[-S NSRC | -R]\n");
			return 2;
		}
	}
	if (count == 0 || count > MAX_COUNT || procs == 0 || procs > MAX_PROCS || batch == 0 ||
	    batch > MAX_BATCH || size > MAX_SIZE || port == 0 || nports == 0 || port + nports > 65536 ||
	    rate < 0 || (nuids && uid_base < 0) || nsrc > 65536 || (nsrc && random_src)) {
		fprintf(stderr, "flood: option out of range\n");
		return 2;
	}

	struct sockaddr_in dst;
	memset(&dst, 0, sizeof(dst));
	dst.sin_family = AF_INET;
	if (inet_pton(AF_INET, dst_ip, &dst.sin_addr) != 1) {
		fprintf(stderr, "flood: bad address %s\n", dst_ip);
		return 2;
	}

	if (nuids) {
		struct result r = { 0, 0 };
		dst.sin_port = htons((uint16_t)port);
		double t0 = mono();
		uid_sweep(&dst, count, nuids, (uid_t)uid_base, size, &r);
		double el = mono() - t0;
		printf("sent=%llu errors=%llu elapsed=%.6f rate=%.0f procs=1 uids=%u\n", r.sent, r.errors,
		       el, el > 0 ? (double)r.sent / el : 0.0, nuids);
		return 0;
	}

	/* Results land in shared memory; a pipe is the start barrier, so every sender has its socket
	 * (and its uid) before the clock starts. */
	struct result *res = mmap(NULL, sizeof(*res) * procs, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (res == MAP_FAILED)
		die("mmap");
	memset(res, 0, sizeof(*res) * procs);
	int go[2], ready[2];
	if (pipe(go) < 0 || pipe(ready) < 0)
		die("pipe");

	pid_t pids[MAX_PROCS];
	for (unsigned i = 0; i < procs; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0) {
			close(go[1]);
			close(ready[0]);
			if (uid_base >= 0)
				switch_uid((uid_t)(uid_base + i));
			int fd = open_socket();
			struct sockaddr_in d = dst;
			d.sin_port = htons((uint16_t)(port + i % nports));
			unsigned long long mine = count / procs + (i < count % procs ? 1 : 0);
			char c = 'r';
			if (write(ready[1], &c, 1) != 1)
				_exit(1);
			/* Blocks until the parent closes the write end: all start together. */
			if (read(go[0], &c, 1) < 0)
				_exit(1);
			/* Paced senders use small batches so the rate is smooth at the scale of a millisecond. */
			struct sources src = {.n = nsrc, .random = random_src,
					      .rng = 0x9e3779b97f4a7c15ull * (i + 1), .next = i};
			send_loop(fd, &d, mine, rate / procs, rate > 0 && batch > 16 ? 16 : batch, size,
				  &src, &res[i]);
			_exit(0);
		}
		pids[i] = pid;
	}
	close(go[0]);
	close(ready[1]);
	for (unsigned i = 0; i < procs; i++) {
		char c;
		if (read(ready[0], &c, 1) != 1) {
			fprintf(stderr, "flood: a sender failed to start\n");
			for (unsigned k = 0; k < procs; k++)
				kill(pids[k], SIGKILL);
			return 1;
		}
	}
	double t0 = mono();
	close(go[1]);
	int failed = 0;
	for (unsigned i = 0; i < procs; i++) {
		int st;
		if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			failed = 1;
	}
	double el = mono() - t0;
	unsigned long long sent = 0, errors = 0;
	for (unsigned i = 0; i < procs; i++) {
		sent += res[i].sent;
		errors += res[i].errors;
	}
	printf("sent=%llu errors=%llu elapsed=%.6f rate=%.0f procs=%u\n", sent, errors, el,
	       el > 0 ? (double)sent / el : 0.0, procs);
	return failed;
}
