/* hotpath: nflogd's per-record C path (parse + fold) on synthetic datagrams, for instruction counts.
 *
 * The machine this runs on is shared and noisy; `valgrind --tool=callgrind` counts instructions
 * exactly, so before/after comparisons of the hot path are made with this program:
 *
 *   bench/hotpath.sh            (builds it and prints instructions per record for each case)
 *
 * Datagrams are laid out as the kernel's nfnetlink_log builds them for a UDP packet logged in
 * INPUT on lo with `log group G prefix "bench"`, seq on and copy range 128: PACKET_HDR, PREFIX,
 * IFINDEX_INDEV, HWADDR, HWTYPE, HWLEN, HWHEADER, TIMESTAMP, SEQ, PAYLOAD (IPv4 + UDP + 64 bytes).
 *
 * Usage: hotpath [-c BYTES] [-s USEC] RECORDS KEYS FIELDS [MAX_KEYS]
 *   -c BYTES before each datagram, touch a buffer of BYTES (a line at a time), evicting the
 *            table from the caches as the daemon's wake-ups find it
 *   -s USEC  before each datagram, sleep USEC microseconds (the daemon's worker sleeps between
 *            datagrams; its caches and branch history are cold when it wakes)
 *   RECORDS  records to fold (in datagrams of 1000)
 *   KEYS     distinct keys, cycled record by record (source address and input interface
 *            1..KEYS; 1: a flood of one key, as floods are)
 *   FIELDS   comma list of aggregation fields (nflog.FIELDS names)
 *   MAX_KEYS the table's key limit (default 2^30): keys past it overflow
 * Prints: records=N keys=K overflow=O lost=L ns/record=T (T: wall time of parse + fold natively;
 * noisy, but the only figure here that sees cache misses and stalls, which callgrind does not) */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linux/netfilter/nfnetlink.h>
#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "agg_table.h"
#include "record.h"
#include "sock.h"

#define PER_DATAGRAM 1000

static size_t put_attr(uint8_t *p, uint16_t type, const void *v, size_t len)
{
	struct nlattr a = {.nla_len = (uint16_t)(NLA_HDRLEN + len), .nla_type = type};
	memcpy(p, &a, sizeof(a));
	memcpy(p + NLA_HDRLEN, v, len);
	size_t total = NLA_ALIGN(NLA_HDRLEN + len);
	memset(p + NLA_HDRLEN + len, 0, total - NLA_HDRLEN - len);
	return total;
}

static size_t build_message(uint8_t *p, uint16_t group, uint32_t seq, uint32_t saddr, uint32_t indev)
{
	size_t off = NLMSG_HDRLEN;
	struct nfgenmsg g = {.nfgen_family = 2, .version = NFNETLINK_V0, .res_id = htons(group)};
	memcpy(p + off, &g, sizeof(g));
	off += NLMSG_ALIGN(sizeof(g));

	struct nfulnl_msg_packet_hdr ph = {.hw_protocol = htons(0x0800), .hook = 1};
	off += put_attr(p + off, NFULA_PACKET_HDR, &ph, sizeof(ph));
	off += put_attr(p + off, NFULA_PREFIX, "bench", 6);
	uint32_t in = htonl(indev);
	off += put_attr(p + off, NFULA_IFINDEX_INDEV, &in, 4);
	struct nfulnl_msg_packet_hw hw = {.hw_addrlen = htons(6)};
	off += put_attr(p + off, NFULA_HWADDR, &hw, sizeof(hw));
	uint16_t hwtype = htons(772), hwlen = htons(14);
	off += put_attr(p + off, NFULA_HWTYPE, &hwtype, 2);
	off += put_attr(p + off, NFULA_HWLEN, &hwlen, 2);
	uint8_t hwhdr[14] = {0};
	hwhdr[12] = 0x08;
	off += put_attr(p + off, NFULA_HWHEADER, hwhdr, sizeof(hwhdr));
	struct nfulnl_msg_packet_timestamp ts = {.sec = 0x01000000, .usec = 0x02000000};
	off += put_attr(p + off, NFULA_TIMESTAMP, &ts, sizeof(ts));
	uint32_t s = htonl(seq);
	off += put_attr(p + off, NFULA_SEQ, &s, 4);

	uint8_t pkt[92] = {0};
	pkt[0] = 0x45;
	uint16_t tot = htons(92);
	memcpy(pkt + 2, &tot, 2);
	pkt[8] = 64;
	pkt[9] = 17;
	uint32_t src = htonl(saddr), dst = htonl(0x7f000001);
	memcpy(pkt + 12, &src, 4);
	memcpy(pkt + 16, &dst, 4);
	uint16_t sport = htons(40000), dport = htons(9999), ulen = htons(72);
	memcpy(pkt + 20, &sport, 2);
	memcpy(pkt + 22, &dport, 2);
	memcpy(pkt + 24, &ulen, 2);
	off += put_attr(p + off, NFULA_PAYLOAD, pkt, sizeof(pkt));

	struct nlmsghdr h = {.nlmsg_len = (uint32_t)off,
			     .nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET,
			     .nlmsg_flags = NLM_F_MULTI};
	memcpy(p, &h, sizeof(h));
	return NLMSG_ALIGN(off);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	size_t cold_bytes = 0;
	unsigned sleep_us = 0;
	int opt;
	while ((opt = getopt(argc, argv, "c:s:")) != -1) {
		if (opt == 'c')
			cold_bytes = strtoul(optarg, NULL, 0);
		else if (opt == 's')
			sleep_us = (unsigned)strtoul(optarg, NULL, 0);
		else
			return 2;
	}
	argc -= optind - 1;
	argv += optind - 1;
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: hotpath [-c BYTES] [-s USEC] RECORDS KEYS FIELDS [MAX_KEYS]\n");
		return 2;
	}
	unsigned long long records = strtoull(argv[1], NULL, 0);
	unsigned keys = (unsigned)strtoul(argv[2], NULL, 0);
	uint32_t mask = 0;
	for (char *f = strtok(argv[3], ","); f; f = strtok(NULL, ",")) {
		int i;
		for (i = 0; i < F_NFIELDS && strcmp(f, agg_field_names[i]); i++)
			;
		if (i == F_NFIELDS) {
			fprintf(stderr, "hotpath: unknown field %s\n", f);
			return 2;
		}
		mask |= 1u << i;
	}
	volatile uint8_t *junk = cold_bytes ? calloc(1, cold_bytes) : NULL;
	if (cold_bytes && !junk)
		return 1;
	if (!records || !keys)
		return 2;

	struct nfd_sock s;
	memset(&s, 0, sizeof(s));
	s.bufsize = 512 * 1024;
	s.buf = malloc(s.bufsize);
	s.seq = 1;
	struct agg_table t;
	size_t max_keys = argc == 5 ? strtoul(argv[4], NULL, 0) : 1u << 30;
	if (!s.buf || agg_init(&t, mask, max_keys, NULL) < 0)
		return 1;
	if (argc == 5)  /* a key limit: the daemon's budget policy too (the sketch, displacement) */
		t.policy = (struct agg_policy){.ttl = 300, .min_residency = AGG_DEFAULT_MIN_RESIDENCY,
					       .admit_rate = AGG_DEFAULT_ADMIT_RATE,
					       .decay = AGG_DEFAULT_DECAY};
	s.layout.want = agg_wanted_attrs(mask);  /* as Nflog.aggregate does */

	/* As Nflog.aggregate folds: a few records ahead, flushed at each datagram's end. */
	struct agg_ahead ahead = {.t = &t};
	unsigned long long done = 0;
	uint32_t seq = 0;
	double ns = 0;
	while (done < records) {
		size_t len = 0;
		for (int i = 0; i < PER_DATAGRAM; i++, seq++)
			len += build_message(s.buf + len, 5, seq, 0x7f010000u + seq % keys,
					     1 + seq % keys);
		for (size_t q = 0; q < cold_bytes; q += 64)
			junk[q]++;
		if (sleep_us)
			usleep(sleep_us);
		double t0 = now_ns();  /* parse and fold only, not the building */
		done += nfd_sock_dispatch(&s, len, agg_ahead_visit, &ahead);
		agg_ahead_flush(&ahead);
		ns += now_ns() - t0;
	}
	printf("records=%llu keys=%zu overflow=%llu lost=%llu ns/record=%.1f\n",
	       (unsigned long long)t.records, t.nentries, (unsigned long long)t.overflow_packets,
	       (unsigned long long)s.lost, ns / (double)done);
	agg_destroy(&t);
	free(s.buf);
	free((void *)junk);
	return 0;
}
