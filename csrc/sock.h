/* SPDX-License-Identifier: GPL-2.0-or-later */
/* An NFLOG group socket: bind and configure, wait, receive, walk a datagram. Pure C, no Python;
 * functions return a negative errno on failure. Not thread-safe by itself: the handle serialises. */
#ifndef NFLOGD_SOCK_H
#define NFLOGD_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "record.h"

enum { ENOBUFS_RAISE = 0, ENOBUFS_HANDLE = 1, ENOBUFS_DISABLE = 2 };

/* The kernel clamps the copy range to 0xffff minus an attribute header. */
#define NFD_COPY_RANGE_MAX 65531u
#define NFD_NLBUF_MAX 131072u

struct nfd_config {
	uint16_t group;
	uint8_t copymode;     /* NFULNL_COPY_NONE/META/PACKET */
	uint32_t copyrange;   /* 0 = the kernel's maximum */
	uint32_t nlbuf;       /* 0 = kernel default */
	uint32_t qthresh;
	uint32_t timeout;     /* 1/100 s */
	int rcvbuf;           /* 0 = system default */
	int enobufs_mode;      /* ENOBUFS_RAISE/HANDLE/DISABLE; the count is nfd_sock.enobufs */
	bool seq;
	bool conntrack;       /* NFULNL_CFG_F_CONNTRACK, for the ct_state label; bind only */
};

struct nfd_sock {
	int fd, wakefd;
	uint16_t group;
	uint8_t *buf;
	size_t bufsize;
	size_t pending;        /* a datagram that arrived before the bind's ack, still in buf */
	bool seq;
	uint32_t next_seq;
	struct nfd_layout layout; /* layout.want: what dispatch parses (0: all, no layout) */
	/* Counters, only touched by the thread holding the handle's I/O lock. */
	uint64_t received, lost, truncated, decode_errors, enobufs, datagrams;
	double last_message_time;
	/* The kernel's refusal of a nfd_sock_configure message (negative errno; 0: none). It comes
	 * back in the data stream, where nfd_sock_dispatch finds it; the reader reports it. */
	int config_error;
};

/* The smallest nlbuf the kernel accepts (one page, or 8 KiB on larger pages, minus overhead). */
uint32_t nfd_nlbuf_min(void);

int nfd_sock_open(struct nfd_sock *s, const struct nfd_config *cfg);
/* Apply new mode, nlbuf, timeout and qthresh to the bound group (cfg->group must be the same).
 * The kernel applies it before this returns; a refusal (e.g. EPERM once CAP_NET_ADMIN is gone)
 * is only sent back, and shows in s->config_error when dispatch meets it. */
int nfd_sock_configure(struct nfd_sock *s, const struct nfd_config *cfg);
void nfd_sock_close(struct nfd_sock *s);

/* Wait up to timeout_ms (-1 = forever) for data. 1 readable, 0 timed out, -ECANCELED when woken by
 * nfd_sock_wake, -EINTR on a signal. */
int nfd_sock_wait(struct nfd_sock *s, int timeout_ms);
int nfd_sock_wake(struct nfd_sock *s);

/* Receive one datagram without blocking into s->buf. Its length, 0 if none is waiting, or -errno
 * (-ENOBUFS: the kernel dropped messages; -EMSGSIZE: a truncated datagram, counted and discarded). */
ssize_t nfd_sock_recv(struct nfd_sock *s);

/* Called for each valid packet record of a datagram; return non-zero to stop the walk. */
typedef int (*nfd_visit_fn)(void *ctx, const struct nfd_record *rec,
			      const struct nlmsghdr *nlh);

/* Walk the datagram in s->buf: parse each record, account sequence gaps and decode errors, visit.
 * Returns the number of records visited. */
size_t nfd_sock_dispatch(struct nfd_sock *s, size_t len, nfd_visit_fn fn, void *ctx);

int nfd_sock_set_rcvbuf(struct nfd_sock *s, int bytes);
int nfd_sock_get_rcvbuf(const struct nfd_sock *s);
/* Datagrams the kernel dropped at this socket (sk_drops), or -errno. */
long long nfd_sock_kernel_drops(const struct nfd_sock *s);

/* The netlink portid bound to group in this network namespace (/proc/net/netfilter/nfnetlink_log),
 * or -1 when no socket has it. */
long nfd_group_holder(uint16_t group);

#endif
