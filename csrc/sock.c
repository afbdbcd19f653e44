/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "sock.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <libmnl/libmnl.h>
#include <libnetfilter_log/libnetfilter_log.h>

#define CONFIG_SEQ 1    /* the bind, acknowledged */
#define RECONFIG_SEQ 2  /* nfd_sock_configure: answered only when refused */
#define ACK_TIMEOUT_MS 5000

uint32_t nfd_nlbuf_min(void)
{
	long page = sysconf(_SC_PAGESIZE);
	return page > 0 && page < 8192 ? (uint32_t)page : 8192u;
}

/* The kernel fills a batch up to the slab size of its buffer, i.e. nlbuf rounded up to a power of
 * two (~256 KiB at nlbuf 131072), and one message alone may reach ~65.6 KB: fit both. */
static size_t recv_buffer_size(uint32_t nlbuf)
{
	size_t need = (nlbuf > 66000 ? nlbuf : 66000) + 1024, size = 4096;
	while (size < need)
		size <<= 1;
	return size;
}

/* One message binds the group and sets everything, so no half-configured state is ever visible.
 * Without bind it re-configures the instance this socket holds, keeping its queued batch. */
static int send_config(struct nfd_sock *s, const struct nfd_config *cfg, bool bind)
{
	/* Zeroed: libmnl 1.0.4 (Debian 12) leaves attribute padding as it finds it, so stack bytes
	 * would go to the kernel (valgrind: "sendto(msg) points to uninitialised byte(s)"). */
	_Alignas(4) char msg[512];  /* the message is < 100 bytes */
	memset(msg, 0, sizeof(msg));
	struct nlmsghdr *nlh = nflog_nlmsg_put_header(msg, NFULNL_MSG_CONFIG, AF_UNSPEC, cfg->group);
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};

	if (bind) {
		nlh->nlmsg_flags |= NLM_F_ACK;
		nlh->nlmsg_seq = CONFIG_SEQ;
		nflog_attr_put_cfg_cmd(nlh, NFULNL_CFG_CMD_BIND);
	} else {
		nlh->nlmsg_seq = RECONFIG_SEQ;  /* so dispatch knows a refusal when it meets one */
	}
	nflog_attr_put_cfg_mode(nlh, cfg->copymode, cfg->copyrange);
	if (cfg->nlbuf)
		mnl_attr_put_u32(nlh, NFULA_CFG_NLBUFSIZ, htonl(cfg->nlbuf));
	mnl_attr_put_u32(nlh, NFULA_CFG_TIMEOUT, htonl(cfg->timeout));
	mnl_attr_put_u32(nlh, NFULA_CFG_QTHRESH, htonl(cfg->qthresh));
	mnl_attr_put_u16(nlh, NFULA_CFG_FLAGS, htons((cfg->seq ? NFULNL_CFG_F_SEQ : 0) |
						     (cfg->conntrack ? NFULNL_CFG_F_CONNTRACK : 0)));
	if (sendto(s->fd, nlh, nlh->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return -errno;
	return 0;
}

/* Wait for the bind's acknowledgement. Log data can overtake it (the group is live as soon as it is
 * bound): such a datagram proves the bind worked and is kept for the first read. */
static int wait_ack(struct nfd_sock *s)
{
	for (;;) {
		int r = nfd_sock_wait(s, ACK_TIMEOUT_MS);
		if (r == 0)
			return -ETIMEDOUT;
		if (r < 0 && r != -EINTR)
			return r;
		ssize_t len = nfd_sock_recv(s);
		if (len < 0 && len != -ENOBUFS && len != -EMSGSIZE)
			return (int)len;
		if (len <= 0)
			continue;
		const size_t total = (size_t)len;
		int remaining = (int)len;  /* signed: NLMSG_NEXT may step past the end */
		s->datagrams--;  /* `datagrams` counts log data; this one is counted if it holds some */
		for (struct nlmsghdr *nlh = (struct nlmsghdr *)s->buf; NLMSG_OK(nlh, remaining);
		     nlh = NLMSG_NEXT(nlh, remaining)) {
			if (nlh->nlmsg_type == NLMSG_ERROR && nlh->nlmsg_seq == CONFIG_SEQ) {
				const struct nlmsgerr *e = NLMSG_DATA(nlh);
				if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(*e)))
					return -EBADMSG;
				return e->error;
			}
			if (nfd_is_packet_msg(nlh)) {
				s->datagrams++;
				s->pending = total;  /* the whole datagram, from its start */
				return 0;
			}
		}
	}
}

int nfd_sock_open(struct nfd_sock *s, const struct nfd_config *cfg)
{
	struct sockaddr_nl local = {.nl_family = AF_NETLINK};
	int one = 1, r;

	memset(s, 0, sizeof(*s));
	s->fd = s->wakefd = -1;
	s->group = cfg->group;
	s->seq = cfg->seq;
	/* Sized for the largest nlbuf, whatever this one is: configure() may raise it later. */
	s->bufsize = recv_buffer_size(NFD_NLBUF_MAX);
	s->buf = malloc(s->bufsize);
	if (!s->buf)
		return -ENOMEM;
	s->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	s->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->fd < 0 || s->wakefd < 0)
		goto fail_errno;
	if (bind(s->fd, (struct sockaddr *)&local, sizeof(local)) < 0)
		goto fail_errno;
	if (cfg->enobufs_mode == ENOBUFS_DISABLE &&
	    setsockopt(s->fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one)) < 0)
		goto fail_errno;
	if (cfg->rcvbuf > 0 && (r = nfd_sock_set_rcvbuf(s, cfg->rcvbuf)) < 0)
		goto fail;
	if ((r = send_config(s, cfg, true)) < 0 || (r = wait_ack(s)) < 0)
		goto fail;
	return 0;

fail_errno:
	r = -errno;
fail:
	nfd_sock_close(s);
	return r;
}

int nfd_sock_configure(struct nfd_sock *s, const struct nfd_config *cfg)
{
	/* No ACK asked: the kernel applies the message before sendto returns, and an ACK could not be
	 * told apart from log data without holding up the reader. The values were validated already. */
	return send_config(s, cfg, false);
}

void nfd_sock_close(struct nfd_sock *s)
{
	/* Closing the socket destroys the kernel instance: the group is unbound. */
	if (s->fd >= 0)
		close(s->fd);
	if (s->wakefd >= 0)
		close(s->wakefd);
	s->fd = s->wakefd = -1;
	free(s->buf);
	s->buf = NULL;
	s->pending = 0;
}

int nfd_sock_wait(struct nfd_sock *s, int timeout_ms)
{
	struct pollfd fds[2] = {{.fd = s->fd, .events = POLLIN}, {.fd = s->wakefd, .events = POLLIN}};

	if (s->pending)
		return 1;
	int r = poll(fds, 2, timeout_ms);
	if (r < 0)
		return -errno;
	if (fds[1].revents)
		return -ECANCELED;
	if (fds[0].revents & (POLLERR | POLLNVAL))
		return 1;  /* let recv report the error */
	return r > 0;
}

int nfd_sock_wake(struct nfd_sock *s)
{
	uint64_t one = 1;
	return write(s->wakefd, &one, sizeof(one)) < 0 ? -errno : 0;
}

ssize_t nfd_sock_recv(struct nfd_sock *s)
{
	struct sockaddr_nl from;
	socklen_t fromlen = sizeof(from);

	if (s->pending) {
		ssize_t len = (ssize_t)s->pending;
		s->pending = 0;
		return len;
	}
	for (;;) {
		/* MSG_TRUNC makes recv return the datagram's real length, so truncation is detectable. */
		ssize_t len = recvfrom(s->fd, s->buf, s->bufsize, MSG_DONTWAIT | MSG_TRUNC,
				       (struct sockaddr *)&from, &fromlen);
		if (len < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == ENOBUFS)
				s->enobufs++;
			return -errno;
		}
		if ((size_t)len > s->bufsize) {
			s->truncated++;
			return -EMSGSIZE;
		}
		/* Only the kernel speaks NFLOG; ignore anything another socket sends us. */
		if (fromlen != sizeof(from) || from.nl_pid != 0)
			continue;
		s->datagrams++;
		return len;
	}
}

size_t nfd_sock_dispatch(struct nfd_sock *s, size_t len, nfd_visit_fn fn, void *ctx)
{
	struct nfd_record rec;
	size_t visited = 0;
	int remaining = (int)len;
	struct timespec now;

	for (struct nlmsghdr *nlh = (struct nlmsghdr *)s->buf; remaining > 0;
	     nlh = NLMSG_NEXT(nlh, remaining)) {
		if (!NLMSG_OK(nlh, remaining)) {
			s->decode_errors++;  /* a header that overruns the datagram: nothing after it is safe */
			break;
		}
		if (nlh->nlmsg_type == NLMSG_ERROR) {
			/* Without NLM_F_ACK the kernel answers a reconfiguration only to refuse it. */
			const struct nlmsgerr *e = NLMSG_DATA(nlh);
			if (nlh->nlmsg_seq == RECONFIG_SEQ && nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(*e)) &&
			    e->error < 0 && !s->config_error)
				s->config_error = e->error;
			continue;
		}
		if (!nfd_is_packet_msg(nlh))
			continue;  /* NLMSG_DONE ends a batch */
		if ((s->layout.want ? nfd_record_parse_some(nlh, &rec, &s->layout)
				    : nfd_record_parse(nlh, &rec)) < 0) {
			s->decode_errors++;
			continue;
		}
		if (s->seq && REC_HAS(&rec, NFULA_SEQ)) {
			uint32_t gap = rec.seq - s->next_seq;  /* unsigned: wraps correctly at 2^32 */
			if (gap < 0x80000000u)
				s->lost += gap;
			s->next_seq = rec.seq + 1;
		}
		s->received++;
		visited++;
		if (fn && fn(ctx, &rec, nlh))
			break;
	}
	if (visited) {
		clock_gettime(CLOCK_REALTIME, &now);
		s->last_message_time = (double)now.tv_sec + now.tv_nsec / 1e9;
	}
	return visited;
}

int nfd_sock_set_rcvbuf(struct nfd_sock *s, int bytes)
{
	/* SO_RCVBUFFORCE passes rmem_max when we have CAP_NET_ADMIN, which binding needs anyway. */
	if (setsockopt(s->fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof(bytes)) == 0)
		return 0;
	if (setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes)) == 0)
		return 0;
	return -errno;
}

int nfd_sock_get_rcvbuf(const struct nfd_sock *s)
{
	int v = 0;
	socklen_t l = sizeof(v);
	return getsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &v, &l) < 0 ? -errno : v;
}

long long nfd_sock_kernel_drops(const struct nfd_sock *s)
{
	uint32_t mem[SK_MEMINFO_VARS] = {0};
	socklen_t l = sizeof(mem);
	if (getsockopt(s->fd, SOL_SOCKET, SO_MEMINFO, mem, &l) < 0)
		return -errno;
	return l > SK_MEMINFO_DROPS * sizeof(uint32_t) ? (long long)mem[SK_MEMINFO_DROPS] : -ENOTSUP;
}

long nfd_group_holder(uint16_t group)
{
	/* /proc/net is the thread group leader's namespace; this thread may have entered another. */
	FILE *f = fopen("/proc/thread-self/net/netfilter/nfnetlink_log", "re");
	if (!f)
		f = fopen("/proc/net/netfilter/nfnetlink_log", "re");
	unsigned g, portid;
	char line[256];
	long found = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%u %u", &g, &portid) == 2 && g == group) {
			found = portid;
			break;
		}
	fclose(f);
	return found;
}
