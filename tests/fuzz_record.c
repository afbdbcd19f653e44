/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Bounds of the record parser (record.c, with the label fields it derives from the payload), the
 * datagram walker (sock.c nfd_sock_dispatch), the counter table's key (agg_table.c) and the named
 * networks' longest-prefix match (netmatch.c), built by tests/test_nflog_c.py with
 * -fsanitize=address,undefined.
 *
 * Every message is parsed from a heap block of exactly its length, so any read past it is an
 * AddressSanitizer error; on top of that every pointer and length the parser returns is checked
 * against the message here. Deterministic cases first (each attribute too short, each length
 * field at every value, every truncation point, IPv4/IPv6 header edge cases, sequence wrap),
 * then random mutations for a bounded number of seconds.
 *
 * usage: fuzz_record SECONDS SEED    prints "ok <cases> cases" and exits 0, or aborts. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <linux/netfilter/nfnetlink.h>
#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "agg_table.h"
#include "netmatch.h"
#include "record.h"
#include "sock.h"

static unsigned long long cases;
static uint64_t rnd(void);
/* A table keyed by every field, with networks: every parsed record is folded into it too. */
static struct agg_table fold_table;
static struct nfd_nets fold_nets;

#define CHECK(cond, ...)                                                                      \
	do {                                                                                  \
		if (!(cond)) {                                                                \
			fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                         \
			fputc('\n', stderr);                                                  \
			abort();                                                              \
		}                                                                             \
	} while (0)

/* ---- building messages ------------------------------------------------------------------- */

struct msg {
	uint8_t b[70000];
	size_t len;
};

static void msg_start(struct msg *m, uint8_t family, uint16_t group)
{
	struct nlmsghdr *nlh = (struct nlmsghdr *)m->b;
	struct nfgenmsg *g = (struct nfgenmsg *)(m->b + NLMSG_HDRLEN);
	memset(m->b, 0, sizeof(m->b));
	nlh->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
	g->nfgen_family = family;
	g->version = NFNETLINK_V0;
	g->res_id = htons(group);
	m->len = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*g));
	nlh->nlmsg_len = (uint32_t)m->len;
}

static void msg_attr(struct msg *m, uint16_t type, const void *v, size_t vlen)
{
	struct nlattr *a = (struct nlattr *)(m->b + m->len);
	a->nla_len = (uint16_t)(NLA_HDRLEN + vlen);
	a->nla_type = type;
	memcpy(m->b + m->len + NLA_HDRLEN, v, vlen);
	m->len += NLA_ALIGN(NLA_HDRLEN + vlen);
	((struct nlmsghdr *)m->b)->nlmsg_len = (uint32_t)m->len;
}

static void msg_u32(struct msg *m, uint16_t type, uint32_t v)
{
	v = htonl(v);
	msg_attr(m, type, &v, 4);
}

static const uint8_t MAC_SRC[6] = {0x02, 0x11, 0x22, 0x33, 0x44, 0x55};

/* An IPv4/UDP packet of total length `total` (header fields only; the rest zero). */
static size_t ipv4_udp(uint8_t *p, uint16_t total)
{
	memset(p, 0, total);
	p[0] = 0x45;
	p[2] = (uint8_t)(total >> 8);
	p[3] = (uint8_t)total;
	p[8] = 64;
	p[9] = 17;
	return total;
}

/* Every attribute the parser knows, with known values. */
static void full_message(struct msg *m)
{
	struct nfulnl_msg_packet_hdr ph = {.hw_protocol = htons(0x0800), .hook = 1};
	struct nfulnl_msg_packet_timestamp ts = {.sec = __builtin_bswap64(1700000000),
						 .usec = __builtin_bswap64(250000)};
	struct nfulnl_msg_packet_hw hw = {.hw_addrlen = htons(6)};
	uint8_t hwhdr[14] = {0}, payload[200];
	uint16_t hwtype = htons(1), hwlen = htons(14);

	memcpy(hw.hw_addr, MAC_SRC, 6);
	memcpy(hwhdr + 6, MAC_SRC, 6);
	hwhdr[12] = 0x08;
	msg_start(m, 2, 42);
	msg_attr(m, NFULA_PACKET_HDR, &ph, sizeof(ph));
	msg_u32(m, NFULA_MARK, 0x2a);
	msg_attr(m, NFULA_TIMESTAMP, &ts, sizeof(ts));
	msg_u32(m, NFULA_IFINDEX_INDEV, 3);
	msg_u32(m, NFULA_IFINDEX_OUTDEV, 4);
	msg_u32(m, NFULA_IFINDEX_PHYSINDEV, 5);
	msg_u32(m, NFULA_IFINDEX_PHYSOUTDEV, 6);
	msg_attr(m, NFULA_HWADDR, &hw, sizeof(hw));
	msg_attr(m, NFULA_HWTYPE, &hwtype, 2);
	msg_attr(m, NFULA_HWLEN, &hwlen, 2);
	msg_attr(m, NFULA_HWHEADER, hwhdr, sizeof(hwhdr));
	msg_attr(m, NFULA_PAYLOAD, payload, ipv4_udp(payload, 200));
	msg_attr(m, NFULA_PREFIX, "hello", 6);
	msg_u32(m, NFULA_UID, 1000);
	msg_u32(m, NFULA_GID, 100);
	msg_u32(m, NFULA_SEQ, 7);
	msg_u32(m, 25, 0xdead);            /* unknown attribute types are skipped */
	msg_u32(m, 31, 0xbeef);
	msg_u32(m, NLA_F_NESTED | 40, 0);  /* beyond the present bitmap */
}

/* ---- checking ------------------------------------------------------------------------------ */

static void check_inside(const void *lo, size_t size, const void *p, size_t n, const char *what)
{
	const uint8_t *b = lo, *q = p;
	if (!p) {
		CHECK(n == 0, "%s: NULL pointer with length %zu", what, n);
		return;
	}
	CHECK(q >= b && q <= b + size && n <= (size_t)(b + size - q),
	      "%s: [%td, +%zu) outside the %zu-byte message", what, q - b, n, size);
}

static void check_record(const struct nfd_record *r, const void *msg, size_t size)
{
	check_inside(msg, size, r->prefix, r->prefix_len, "prefix");
	check_inside(msg, size, r->payload, r->payload_len, "payload");
	check_inside(msg, size, r->hwaddr, r->hwaddr_len, "hwaddr");
	check_inside(msg, size, r->hwhdr, r->hwhdr_len, "hwhdr");
	CHECK(r->prefix_len <= NFD_PREFIX_MAX, "prefix_len %u", r->prefix_len);
	CHECK(r->hwaddr_len <= 8, "hwaddr_len %u", r->hwaddr_len);
	if (!r->payload)
		CHECK(r->ip_len == 0 && !r->has_l4proto && !r->ip_version && !r->l4_off,
		      "ip facts without a payload");
	CHECK(!r->l4_off || r->l4_off < r->payload_len, "l4_off %u of %u", r->l4_off, r->payload_len);
	CHECK(r->ip_version == 0 || r->payload_len >= (r->ip_version == 4 ? 20u : 40u), "ip_version");
	/* The label readers, which read the payload: ASan sees any overreach. */
	uint8_t sa[16], da[16], t8;
	uint16_t sp, dp;
	int fam = nfd_record_addrs(r, sa, da);
	CHECK(fam == 0 || fam == 4 || fam == 6, "family %d", fam);
	if (nfd_record_ports(r, &sp, &dp))
		CHECK(!r->fragment && r->l4_off + 4u <= r->payload_len, "ports past the copy");
	if (nfd_record_tcp_flags(r, &t8))
		CHECK(r->l4proto == 6 && r->l4_off + 14u <= r->payload_len, "flags past the copy");
	if (nfd_record_icmp_type(r, &t8))
		CHECK(r->l4proto == 1 || r->l4proto == 58, "icmp type of proto %u", r->l4proto);
	CHECK(nfd_record_ct_state(r) <= NFD_CT_RELATED, "ct state");
	/* Touch every byte the record points at, so ASan sees any overreach. */
	volatile uint8_t sink = 0;
	for (size_t i = 0; i < r->prefix_len; i++)
		sink ^= r->prefix[i];
	for (size_t i = 0; i < r->payload_len; i++)
		sink ^= r->payload[i];
	for (size_t i = 0; i < r->hwaddr_len; i++)
		sink ^= r->hwaddr[i];
	for (size_t i = 0; i < r->hwhdr_len; i++)
		sink ^= r->hwhdr[i];
	(void)sink;
}

/* nfd_record_parse_some, with a layout learnt from earlier messages or none, gives exactly what a
 * fresh walk gives for the same wanted attributes (and with all of them, what nfd_record_parse
 * gives): the learnt-layout shortcut never reads outside a message or misses a malformed one. */
static void check_parse_some(const struct nlmsghdr *nlh, int full_ret, const struct nfd_record *full)
{
	static const uint32_t wants[3] = {
		NFD_ATTRS_ALL,
		(1u << NFULA_PAYLOAD) | (1u << NFULA_PACKET_HDR) | (1u << NFULA_SEQ) |
			(1u << NFULA_PREFIX) | (1u << NFULA_IFINDEX_INDEV) |
			(1u << NFULA_IFINDEX_OUTDEV) | (1u << NFULA_UID),
		(1u << NFULA_PAYLOAD) | (1u << NFULA_SEQ),
	};
	static struct nfd_layout learnt[3];
	for (int i = 0; i < 3; i++) {
		struct nfd_layout fresh = {.want = wants[i]};
		struct nfd_record a, b;
		int ra = nfd_record_parse_some(nlh, &a, &fresh);
		learnt[i].want = wants[i];
		int rb = nfd_record_parse_some(nlh, &b, &learnt[i]);
		CHECK(ra == rb, "want %#x: fresh walk %d, learnt layout %d", wants[i], ra, rb);
		if (ra == 0) {
			check_record(&b, nlh, nlh->nlmsg_len);
			CHECK(memcmp(&a, &b, sizeof(a)) == 0, "want %#x: the learnt layout parsed differently",
			      wants[i]);
		}
		if (i == 0) {
			CHECK(ra == full_ret, "all attributes: %d, nfd_record_parse: %d", ra, full_ret);
			CHECK(ra || memcmp(&a, full, sizeof(a)) == 0, "all attributes parsed differently");
		}
	}
}
/* The label fields of the last record parse_exact parsed, read while its copy was alive. */
static struct {
	int fam;
	uint8_t sa[16], da[16], tf, it;
	bool ports, flags, icmp;
	uint16_t sp, dp;
	enum nfd_ct_state ct;
} last;
#define PORTS() (sp = last.sp, dp = last.dp, last.ports)
#define FLAGS() (t8 = last.tf, last.flags)
#define ICMP() (t8 = last.it, last.icmp)
#define ADDRS() (memcpy(sa, last.sa, 16), memcpy(da, last.da, 16), last.fam)

/* Parse `len` bytes of src from a heap block of exactly that size, with nlmsg_len = len. */
static int parse_exact(const uint8_t *src, size_t len, struct nfd_record *out)
{
	uint8_t *copy = malloc(len ? len : 1);
	struct nfd_record r;
	int ret;

	CHECK(copy != NULL, "malloc");
	memcpy(copy, src, len);
	((struct nlmsghdr *)copy)->nlmsg_len = (uint32_t)len;
	ret = nfd_record_parse((struct nlmsghdr *)copy, &r);
	CHECK(ret == 0 || ret == -EBADMSG, "parse returned %d", ret);
	memset(&last, 0, sizeof(last));
	if (ret == 0) {
		check_record(&r, copy, len);
		last.fam = nfd_record_addrs(&r, last.sa, last.da);
		last.ports = nfd_record_ports(&r, &last.sp, &last.dp);
		last.flags = nfd_record_tcp_flags(&r, &last.tf);
		last.icmp = nfd_record_icmp_type(&r, &last.it);
		last.ct = nfd_record_ct_state(&r);
		if (fold_table.slots) {
			if (fold_table.nentries > 50000)
				agg_clear(&fold_table);
			agg_fold(&fold_table, &r);  /* every field: the key reads the payload too */
		}
	}
	check_parse_some((struct nlmsghdr *)copy, ret, &r);
	if (out)
		*out = r;  /* pointers dangle after free: callers only read scalars */
	free(copy);
	cases++;
	return ret;
}

/* ---- deterministic cases -------------------------------------------------------------------- */

static void test_full_message(void)
{
	struct msg m;
	struct nfd_record r;

	full_message(&m);
	CHECK(parse_exact(m.b, m.len, &r) == 0, "the full message must parse");
	CHECK(r.family == 2 && r.group == 42 && r.hw_protocol == 0x0800 && r.hook == 1, "header");
	CHECK(r.mark == 0x2a && r.indev == 3 && r.outdev == 4 && r.physindev == 5 &&
	      r.physoutdev == 6, "u32 attributes");
	CHECK(r.uid == 1000 && r.gid == 100 && r.seq == 7, "uid/gid/seq");
	CHECK(r.ts_sec == 1700000000 && r.ts_usec == 250000, "timestamp");
	CHECK(r.hwtype == 1 && r.hwlen == 14 && r.hwaddr_len == 6 && r.hwhdr_len == 14, "hw");
	CHECK(r.prefix_len == 5 && r.payload_len == 200 && r.ip_len == 200, "lengths");
	CHECK(r.has_l4proto && r.l4proto == 17, "l4proto");
	CHECK(REC_HAS(&r, NFULA_SEQ) && REC_HAS(&r, NFULA_TIMESTAMP) && !REC_HAS(&r, NFULA_CT),
	      "present bits");

	/* Every truncation point, from the header on. */
	for (size_t k = NLMSG_HDRLEN; k <= m.len; k++)
		parse_exact(m.b, k, NULL);
	/* Shorter than the nfgenmsg header: refused. */
	for (size_t k = NLMSG_HDRLEN; k < NLMSG_HDRLEN + 4; k++)
		CHECK(parse_exact(m.b, k, NULL) == -EBADMSG, "k=%zu", k);
}

/* Set each attribute's nla_len to every value (and past the message): never read outside. */
static void test_every_attribute_length(void)
{
	struct msg m;
	full_message(&m);
	size_t off = NLMSG_HDRLEN + 4;
	while (off + NLA_HDRLEN <= m.len) {
		struct nlattr *a = (struct nlattr *)(m.b + off);
		uint16_t orig = a->nla_len;
		size_t limit = m.len - off + 16;
		for (size_t v = 0; v <= limit && v <= 0xffff; v++) {
			a->nla_len = (uint16_t)v;
			int r = parse_exact(m.b, m.len, NULL);
			if (v < NLA_HDRLEN || v > m.len - off)
				CHECK(r == -EBADMSG, "nla_len %zu at %zu accepted", v, off);
		}
		a->nla_len = 0xffff;
		CHECK(parse_exact(m.b, m.len, NULL) == -EBADMSG, "nla_len 0xffff accepted");
		a->nla_len = orig;
		off += NLA_ALIGN(orig);
	}
}

/* A fixed-size attribute one byte (or more) too short is refused, never read past. */
static void test_short_fixed_attributes(void)
{
	static const struct {
		uint16_t type;
		size_t need;
	} fixed[] = {
		{NFULA_PACKET_HDR, sizeof(struct nfulnl_msg_packet_hdr)},
		{NFULA_MARK, 4}, {NFULA_IFINDEX_INDEV, 4}, {NFULA_IFINDEX_OUTDEV, 4},
		{NFULA_IFINDEX_PHYSINDEV, 4}, {NFULA_IFINDEX_PHYSOUTDEV, 4}, {NFULA_UID, 4},
		{NFULA_GID, 4}, {NFULA_SEQ, 4},
		{NFULA_TIMESTAMP, sizeof(struct nfulnl_msg_packet_timestamp)},
		{NFULA_HWADDR, sizeof(struct nfulnl_msg_packet_hw)},
		{NFULA_HWTYPE, 2}, {NFULA_HWLEN, 2}, {NFULA_CT_INFO, 4},
	};
	uint8_t zeros[64] = {0};
	struct msg m;

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		for (size_t n = 0; n < fixed[i].need; n++) {
			msg_start(&m, 2, 1);
			msg_attr(&m, fixed[i].type, zeros, n);
			CHECK(parse_exact(m.b, m.len, NULL) == -EBADMSG, "type %u with %zu bytes accepted",
			      fixed[i].type, n);
		}
		msg_start(&m, 2, 1);
		msg_attr(&m, fixed[i].type, zeros, fixed[i].need);
		CHECK(parse_exact(m.b, m.len, NULL) == 0, "type %u with %zu bytes refused",
		      fixed[i].type, fixed[i].need);
	}
	/* A hardware address longer than the struct's 8 bytes is refused. */
	for (uint16_t alen = 0; alen < 300; alen++) {
		struct nfulnl_msg_packet_hw hw = {.hw_addrlen = htons(alen)};
		msg_start(&m, 2, 1);
		msg_attr(&m, NFULA_HWADDR, &hw, sizeof(hw));
		CHECK((parse_exact(m.b, m.len, NULL) == 0) == (alen <= 8), "hw_addrlen %u", alen);
	}
}

static void test_prefix_and_hwheader_lengths(void)
{
	struct msg m;
	struct nfd_record r;
	char big[300];

	memset(big, 'a', sizeof(big));
	for (size_t n = 0; n <= sizeof(big); n++) {  /* no NUL at all: bounded by the attribute */
		msg_start(&m, 2, 1);
		msg_attr(&m, NFULA_PREFIX, big, n);
		CHECK(parse_exact(m.b, m.len, &r) == 0, "prefix %zu", n);
		CHECK(r.prefix_len == (n > NFD_PREFIX_MAX ? NFD_PREFIX_MAX : n), "prefix_len %u for %zu",
		      r.prefix_len, n);
	}
	msg_start(&m, 2, 1);
	msg_attr(&m, NFULA_PREFIX, "ab\0cd", 5);  /* stops at the first NUL */
	CHECK(parse_exact(m.b, m.len, &r) == 0 && r.prefix_len == 2, "embedded NUL");

	for (uint16_t hwlen = 0; hwlen < 40; hwlen++) {  /* HWLEN never widens the header */
		uint16_t be = htons(hwlen);
		uint8_t hdr[14] = {0};
		msg_start(&m, 2, 1);
		msg_attr(&m, NFULA_HWLEN, &be, 2);
		msg_attr(&m, NFULA_HWHEADER, hdr, sizeof(hdr));
		CHECK(parse_exact(m.b, m.len, &r) == 0, "hwlen");
		CHECK(r.hwhdr_len == (hwlen < 14 ? hwlen : 14), "hwhdr_len %u for hwlen %u", r.hwhdr_len,
		      hwlen);
	}
}

static int parse_payload(uint8_t family, uint16_t ethertype, const uint8_t *p, size_t n,
			 struct nfd_record *r)
{
	struct nfulnl_msg_packet_hdr ph = {.hw_protocol = htons(ethertype), .hook = 3};
	struct msg m;
	msg_start(&m, family, 1);
	msg_attr(&m, NFULA_PACKET_HDR, &ph, sizeof(ph));
	msg_attr(&m, NFULA_PAYLOAD, p, n);
	return parse_exact(m.b, m.len, r);
}

static void test_ip_headers(void)
{
	uint8_t p[2048];
	struct nfd_record r;

	/* IPv4 cut at every length: the IP length only from a whole header. */
	ipv4_udp(p, 1500);
	for (size_t n = 0; n <= 60; n++) {
		CHECK(parse_payload(2, 0x0800, p, n, &r) == 0, "ipv4 %zu", n);
		if (n >= 20)
			CHECK(r.ip_len == 1500 && r.has_l4proto && r.l4proto == 17, "ipv4 %zu", n);
		else
			CHECK(r.ip_len == n && !r.has_l4proto, "ipv4 short %zu: ip_len %u", n, r.ip_len);
	}
	/* Total length 0 (BIG TCP GSO): the copied length, the protocol still known. */
	p[2] = p[3] = 0;
	CHECK(parse_payload(2, 0x0800, p, 60, &r) == 0 && r.ip_len == 60 && r.l4proto == 17, "tot_len 0");
	/* Not IP (ARP in a bridge record): the copied length, no protocol. */
	CHECK(parse_payload(7, 0x0806, p, 28, &r) == 0 && r.ip_len == 28 && !r.has_l4proto, "arp");
	/* Version and family disagree: not trusted. */
	p[0] = 0x65;
	CHECK(parse_payload(2, 0x0800, p, 40, &r) == 0 && r.ip_len == 40 && !r.has_l4proto, "v6 in v4");

	/* IPv6: plain, then extension header chains that run off the payload or go on forever. */
	memset(p, 0, sizeof(p));
	p[0] = 0x60;
	p[4] = 0;
	p[5] = 8 + 8;
	p[6] = 17;
	for (size_t n = 0; n <= 48; n++) {
		CHECK(parse_payload(10, 0x86dd, p, n, &r) == 0, "ipv6 %zu", n);
		if (n >= 40)
			CHECK(r.ip_len == 56 && r.has_l4proto && r.l4proto == 17, "ipv6 %zu", n);
		else
			CHECK(!r.has_l4proto, "ipv6 short %zu", n);
	}
	static const uint8_t ext[] = {0, 43, 60, 44, 51};
	for (size_t e = 0; e < sizeof(ext); e++) {
		for (unsigned hlen = 0; hlen < 256; hlen += 17) {
			p[6] = ext[e];
			p[40] = 6;               /* then TCP */
			p[41] = (uint8_t)hlen;   /* the header's own length field */
			for (size_t n = 40; n <= 48 + 8 * hlen + 8 && n <= sizeof(p); n += 3)
				CHECK(parse_payload(10, 0x86dd, p, n, &r) == 0, "ext %u n %zu", ext[e], n);
		}
	}
	/* A chain of hop-by-hop headers longer than the walk's hop limit ends without a protocol. */
	memset(p, 0, sizeof(p));
	p[0] = 0x60;
	p[6] = 0;
	for (size_t i = 0; i < 20; i++)
		p[40 + 8 * i] = 0;  /* each says "hop-by-hop next", length 8 */
	CHECK(parse_payload(10, 0x86dd, p, 40 + 8 * 20, &r) == 0 && !r.has_l4proto, "long chain");
	/* Jumbogram (payload length 0): keep the copied length. */
	p[6] = 17;
	CHECK(parse_payload(10, 0x86dd, p, 100, &r) == 0 && r.ip_len == 100, "jumbo");
}

/* ---- label fields from the payload -------------------------------------------------------------- */

/* An IPv4 packet: ihl words of header (options zero), protocol, the fragment field, total length. */
static size_t ipv4_pkt(uint8_t *p, unsigned ihl, uint8_t proto, uint16_t frag, uint16_t total)
{
	memset(p, 0, total);
	p[0] = (uint8_t)(0x40 | ihl);
	p[2] = (uint8_t)(total >> 8);
	p[3] = (uint8_t)total;
	p[6] = (uint8_t)(frag >> 8);
	p[7] = (uint8_t)frag;
	p[8] = 64;
	p[9] = proto;
	memcpy(p + 12, (uint8_t[]){203, 0, 113, 7}, 4);
	memcpy(p + 16, (uint8_t[]){198, 51, 100, 1}, 4);
	return total;
}

static void put_l4(uint8_t *h, uint8_t proto)
{
	h[0] = 0x30; h[1] = 0x39;  /* sport 12345 */
	h[2] = 0x00; h[3] = 0x50;  /* dport 80 */
	if (proto == 6)
		h[13] = 0x12;      /* syn,ack */
	if (proto == 1 || proto == 58)
		h[0] = 8;          /* echo-request (ICMP) */
}

static void test_label_fields(void)
{
	static uint8_t p[2048];
	struct nfd_record r;
	uint16_t sp, dp;
	uint8_t sa[16], da[16], t8;

	/* IPv4 with every header length 5..15 words: the transport header after the options. */
	for (unsigned ihl = 0; ihl <= 15; ihl++) {
		size_t total = ipv4_pkt(p, ihl, 6, 0, 100);
		if (ihl >= 5)
			put_l4(p + ihl * 4, 6);
		CHECK(parse_payload(2, 0x0800, p, total, &r) == 0, "ihl %u", ihl);
		bool ok = ihl >= 5;
		CHECK(PORTS() == ok, "ihl %u ports", ihl);
		if (ok)
			CHECK(sp == 12345 && dp == 80 && FLAGS() && t8 == 0x12,
			      "ihl %u: %u %u", ihl, sp, dp);
		CHECK(ADDRS() == 4 && sa[0] == 203 && da[3] == 1, "v4 addrs");
	}
	/* Cut at every length: ports only with 4 bytes of transport header in the copy, flags with 14. */
	ipv4_pkt(p, 6, 6, 0, 200);
	put_l4(p + 24, 6);
	for (size_t n = 0; n <= 60; n++) {
		CHECK(parse_payload(2, 0x0800, p, n, &r) == 0, "cut %zu", n);
		CHECK(PORTS() == (n >= 28), "cut %zu ports", n);
		CHECK(FLAGS() == (n >= 38), "cut %zu flags", n);
		CHECK((ADDRS() == 4) == (n >= 20), "cut %zu addrs", n);
	}
	/* A total length shorter than the header: bytes past it are padding, not a port. */
	ipv4_pkt(p, 5, 17, 0, 60);
	put_l4(p + 20, 17);
	p[2] = 0; p[3] = 22;
	CHECK(parse_payload(2, 0x0800, p, 60, &r) == 0 && !PORTS(), "tot 22");
	/* Fragments: the first (MF, offset 0) has ports; later ones none, protocol still known. */
	ipv4_pkt(p, 5, 17, 0x2000, 100);
	put_l4(p + 20, 17);
	CHECK(parse_payload(2, 0x0800, p, 100, &r) == 0 && PORTS() && dp == 80,
	      "first fragment");
	for (uint16_t off = 1; off < 0x2000; off = (uint16_t)(off * 3 + 1)) {
		ipv4_pkt(p, 5, 17, off, 100);
		put_l4(p + 20, 17);
		CHECK(parse_payload(2, 0x0800, p, 100, &r) == 0 && r.fragment && r.l4proto == 17 &&
		      !PORTS(), "fragment offset %u", off);
	}
	/* ICMP: its type; not for other protocols, not ICMPv6's number in IPv4. */
	ipv4_pkt(p, 5, 1, 0, 84);
	put_l4(p + 20, 1);
	CHECK(parse_payload(2, 0x0800, p, 84, &r) == 0 && ICMP() && t8 == 8 &&
	      !PORTS() && !FLAGS(), "icmp");
	CHECK(parse_payload(2, 0x0800, p, 20, &r) == 0 && !ICMP(), "icmp cut");
	p[9] = 58;
	CHECK(parse_payload(2, 0x0800, p, 84, &r) == 0 && !ICMP(), "58 in v4");
	/* Ports for exactly TCP, UDP, DCCP, SCTP, UDP-Lite. */
	for (unsigned proto = 0; proto < 256; proto++) {
		ipv4_pkt(p, 5, (uint8_t)proto, 0, 100);
		put_l4(p + 20, (uint8_t)proto);
		bool want = proto == 6 || proto == 17 || proto == 33 || proto == 132 || proto == 136;
		CHECK(parse_payload(2, 0x0800, p, 100, &r) == 0 &&
		      PORTS() == want, "proto %u", proto);
	}

	/* IPv6 through hop-by-hop (8), destination options (16), routing (24), fragment (8), AH (12). */
	memset(p, 0, sizeof(p));
	p[0] = 0x60;
	p[6] = 0;
	size_t off = 40;
	p[off] = 60; p[off + 1] = 0; off += 8;      /* hop-by-hop -> dstopts */
	p[off] = 43; p[off + 1] = 1; off += 16;     /* dstopts -> routing */
	p[off] = 44; p[off + 1] = 2; off += 24;     /* routing -> fragment */
	p[off] = 51; off += 8;                      /* fragment (offset 0) -> AH */
	p[off] = 17; p[off + 1] = 1; off += 12;     /* AH, (1 + 2) * 4 bytes -> UDP */
	put_l4(p + off, 17);
	size_t l4 = off, total = off + 8;
	p[4] = (uint8_t)((total - 40) >> 8);
	p[5] = (uint8_t)(total - 40);
	p[8] = 0x20; p[9] = 0x01; p[10] = 0x0d; p[11] = 0xb8;  /* 2001:db8:: */
	for (size_t n = 0; n <= total; n++) {
		CHECK(parse_payload(10, 0x86dd, p, n, &r) == 0, "v6 chain cut %zu", n);
		CHECK(PORTS() == (n >= l4 + 4), "v6 chain cut %zu ports", n);
	}
	CHECK(r.l4proto == 17 && sp == 12345 && dp == 80 && r.l4_off == l4, "v6 chain");
	CHECK(ADDRS() == 6 && sa[0] == 0x20 && sa[3] == 0xb8, "v6 addrs");
	/* The same chain with a non-first fragment: the walk stops at the fragment header. */
	size_t frag = 40 + 8 + 16 + 24;
	p[frag + 2] = 0x01;  /* offset 32 (x 8 bytes) */
	CHECK(parse_payload(10, 0x86dd, p, total, &r) == 0 && r.fragment && r.l4proto == 51 &&
	      !PORTS(), "v6 later fragment");
	p[frag + 2] = 0;
	p[frag + 3] = 0x01;  /* only the M flag: the first fragment, ports known */
	CHECK(parse_payload(10, 0x86dd, p, total, &r) == 0 && !r.fragment &&
	      PORTS(), "v6 first fragment");
	/* ICMPv6 type; not ICMP's number in IPv6. */
	memset(p, 0, 48);
	p[0] = 0x60; p[5] = 8; p[6] = 58; p[40] = 135;
	CHECK(parse_payload(10, 0x86dd, p, 48, &r) == 0 && ICMP() && t8 == 135,
	      "icmpv6");
	p[6] = 1;
	CHECK(parse_payload(10, 0x86dd, p, 48, &r) == 0 && !ICMP(), "1 in v6");
	/* Not IP: no label field at all. */
	CHECK(parse_payload(7, 0x0806, p, 48, &r) == 0 && !ADDRS() &&
	      !PORTS() && !ICMP(), "arp");
}

/* NFULA_CT_INFO as the kernel sends it (the kernel here cannot: no CONFIG_NETFILTER_NETLINK_GLUE_CT),
 * with the NFULA_CT nest beside it, which is skipped. */
static void test_ct_state(void)
{
	static const enum nfd_ct_state want[] = {
		NFD_CT_ESTABLISHED, NFD_CT_RELATED, NFD_CT_NEW, NFD_CT_ESTABLISHED, NFD_CT_RELATED,
		NFD_CT_NONE, NFD_CT_NONE, NFD_CT_NONE,
	};
	uint8_t nest[16] = {0};
	struct nfd_record r;
	struct msg m;

	for (uint32_t info = 0; info < 8; info++) {
		msg_start(&m, 2, 1);
		msg_attr(&m, NLA_F_NESTED | NFULA_CT, nest, sizeof(nest));
		msg_u32(&m, NFULA_CT_INFO, info);
		CHECK(parse_exact(m.b, m.len, &r) == 0 && last.ct == want[info],
		      "ct_info %u", info);
	}
	msg_start(&m, 2, 1);
	CHECK(parse_exact(m.b, m.len, &r) == 0 && last.ct == NFD_CT_NONE, "no ct");
}

/* ---- named networks and the key --------------------------------------------------------------- */

static uint32_t brute_lookup(const struct nfd_net_spec *specs, size_t n, int family,
			     const uint8_t *addr)
{
	uint32_t best = 0;
	int best_len = -1;
	for (size_t i = 0; i < n; i++) {
		if (specs[i].family != family || specs[i].len <= best_len)
			continue;
		uint8_t a[16] = {0}, b[16];
		memcpy(a, addr, family == 4 ? 4 : 16);
		memcpy(b, specs[i].addr, 16);
		nfd_mask_addr(a, family, specs[i].len);
		nfd_mask_addr(b, family, specs[i].len);
		if (memcmp(a, b, 16) == 0) {
			best = specs[i].index;
			best_len = specs[i].len;
		}
	}
	return best;
}

/* Random networks (clustered so they nest) against a brute-force longest match. */
static void test_netmatch(void)
{
	static struct nfd_net_spec specs[3000];
	struct nfd_nets nets;

	for (int round = 0; round < 20; round++) {
		size_t n = 1 + rnd() % (round < 10 ? 40 : 3000);
		for (size_t i = 0; i < n; i++) {
			struct nfd_net_spec *s = &specs[i];
			memset(s, 0, sizeof(*s));
			s->family = rnd() % 2 ? 4 : 6;
			s->addr[0] = (uint8_t)(rnd() % 4);  /* few top bytes: many overlaps */
			for (int j = 1; j < 16; j++)
				s->addr[j] = (uint8_t)(rnd() % 3 ? rnd() % 4 : rnd());
			s->len = (uint8_t)(rnd() % ((s->family == 4 ? 32 : 128) + 1));
			nfd_mask_addr(s->addr, s->family, s->len);
			if (s->family == 4)
				memset(s->addr + 4, 0, 12);
			s->index = (uint32_t)i + 1;
		}
		CHECK(nfd_nets_build(&nets, specs, n) == 0, "build");
		for (int q = 0; q < 2000; q++) {
			uint8_t a[16];
			int family = rnd() % 2 ? 4 : 6;
			if (rnd() % 2) {  /* an address inside a known network */
				const struct nfd_net_spec *s = &specs[rnd() % n];
				family = s->family;
				memcpy(a, s->addr, 16);
				a[15 - rnd() % 4] ^= (uint8_t)rnd();
				if (family == 4)
					a[3] ^= (uint8_t)rnd();
			} else {
				for (int j = 0; j < 16; j++)
					a[j] = (uint8_t)(j ? rnd() % 4 : rnd() % 5);
			}
			uint32_t got = nfd_nets_lookup(&nets, family, a), want = brute_lookup(specs, n, family, a);
			/* Duplicated prefixes keep the first index: the brute force prefers the first too. */
			CHECK(got == want, "round %d: lookup %u, brute force %u", round, got, want);
			cases++;
		}
		nfd_nets_free(&nets);
	}
	/* Bad specs refused. */
	struct nfd_net_spec bad = {.family = 4, .len = 33, .index = 1};
	CHECK(nfd_nets_build(&nets, &bad, 1) == -EINVAL, "len 33");
	bad.family = 5; bad.len = 8;
	CHECK(nfd_nets_build(&nets, &bad, 1) == -EINVAL, "family 5");
}

/* Fold records with every field into a table: masked addresses merge, each key holds its fields. */

static void fold_setup(void)
{
	static const struct nfd_net_spec specs[] = {
		{.family = 4, .addr = {203, 0, 113, 0}, .len = 24, .index = 1},
		{.family = 4, .addr = {203, 0, 0, 0}, .len = 16, .index = 2},
		{.family = 6, .addr = {0x20, 0x01, 0x0d, 0xb8}, .len = 32, .index = 3},
	};
	CHECK(nfd_nets_build(&fold_nets, specs, 3) == 0, "nets");
	CHECK(agg_init(&fold_table, (1u << F_NFIELDS) - 1, 100000, NULL) == 0, "agg_init");
	fold_table.mask4 = 24;
	fold_table.mask6 = 48;
	fold_table.nets = &fold_nets;
}

static void test_fold_keys(void)
{
	static uint8_t p[200];
	struct msg m;
	struct nfd_record r;
	struct nfulnl_msg_packet_hdr ph = {.hw_protocol = htons(0x0800), .hook = 1};

	agg_clear(&fold_table);
	for (int host = 0; host < 200; host++) {
		ipv4_pkt(p, 5, 6, 0, 100);
		put_l4(p + 20, 6);
		p[15] = (uint8_t)host;  /* 203.0.113.x: one /24 */
		msg_start(&m, 2, 1);
		msg_attr(&m, NFULA_PACKET_HDR, &ph, sizeof(ph));
		msg_attr(&m, NFULA_PAYLOAD, p, 100);
		CHECK(nfd_record_parse((struct nlmsghdr *)m.b, &r) == 0, "parse");
		agg_fold(&fold_table, &r);
	}
	CHECK(fold_table.nentries == 1, "a /24 mask folds 200 hosts into %zu keys", fold_table.nentries);
	struct agg_key key;
	agg_ckey_unpack(&fold_table.plan, fold_table.entries[0].ckey, &key);
	const struct agg_key *k = &key;
	const struct agg_pkey *pk = &k->pk;
	CHECK(pk->addr_family == 4 && pk->saddr[0] == 203 && pk->saddr[2] == 113 && pk->saddr[3] == 0 &&
	      pk->src_net == 1 && pk->dst_net == 0 && pk->sport == 12345 && pk->dport == 80 &&
	      pk->tcp_flags == 0x12 && (k->flags & KEY_HAS_PORTS) && (k->flags & KEY_HAS_TCP_FLAGS),
	      "key fields");
	CHECK(fold_table.entries[0].packets == 200 && fold_table.entries[0].bytes == 200 * 100, "counts");
}

/* ---- the datagram walker ---------------------------------------------------------------------- */

struct walk {
	const uint8_t *buf;
	size_t len;
	size_t visited;
	uint32_t last_seq;
};

static int visit(void *ctx, const struct nfd_record *rec, const struct nlmsghdr *nlh)
{
	struct walk *w = ctx;
	const uint8_t *p = (const uint8_t *)nlh;
	CHECK(p >= w->buf && p + nlh->nlmsg_len <= w->buf + w->len, "message outside the datagram");
	check_record(rec, nlh, nlh->nlmsg_len);
	w->visited++;
	w->last_seq = rec->seq;
	return 0;
}

/* Walk `len` bytes from a heap block of exactly that size. */
static size_t walk_exact(struct nfd_sock *s, const uint8_t *src, size_t len, struct walk *w)
{
	uint8_t *copy = malloc(len ? len : 1);
	CHECK(copy != NULL, "malloc");
	memcpy(copy, src, len);
	*w = (struct walk){.buf = copy, .len = len};
	s->buf = copy;
	s->bufsize = len;
	size_t n = nfd_sock_dispatch(s, len, visit, w);
	CHECK(n == w->visited, "dispatch said %zu, visited %zu", n, w->visited);
	s->buf = NULL;
	free(copy);
	cases++;
	return n;
}

static size_t put_seq_msg(uint8_t *dst, uint32_t seq)
{
	struct msg m;
	msg_start(&m, 2, 1);
	msg_u32(&m, NFULA_SEQ, seq);
	memcpy(dst, m.b, m.len);
	return m.len;
}

static void test_walker(void)
{
	static uint8_t dg[4096];
	struct nfd_sock s;
	struct walk w;
	size_t len = 0;

	/* A batch: three records and NLMSG_DONE. */
	memset(&s, 0, sizeof(s));
	s.seq = true;
	for (uint32_t i = 0; i < 3; i++)
		len += put_seq_msg(dg + len, i);
	struct nlmsghdr *done = (struct nlmsghdr *)(dg + len);
	memset(done, 0, NLMSG_HDRLEN + 4);
	done->nlmsg_len = NLMSG_HDRLEN + 4;
	done->nlmsg_type = NLMSG_DONE;
	len += NLMSG_HDRLEN + 4;
	CHECK(walk_exact(&s, dg, len, &w) == 3 && s.lost == 0 && s.decode_errors == 0, "batch");

	/* Every truncation of the batch: whole messages visited, a cut header stops the walk. */
	for (size_t k = 0; k <= len; k++) {
		memset(&s, 0, sizeof(s));
		walk_exact(&s, dg, k, &w);
	}
	/* nlmsg_len lies (too small, too big, unaligned) in each position. */
	for (size_t at = 0; at < len; at += 4) {
		for (uint32_t v = 0; v < 200; v++) {
			uint8_t copy[4096];
			memcpy(copy, dg, len);
			uint32_t *field = (uint32_t *)(copy + at);
			*field = v;
			memset(&s, 0, sizeof(s));
			walk_exact(&s, copy, len, &w);
		}
	}

	/* Sequence numbers: gaps counted exactly, across the u32 wrap. A jump of 2^31 or more reads
	 * as going backwards (the kernel never does; no reader loses 2^31 records between reads):
	 * no loss, counting resumes from there. */
	static const struct {
		uint32_t seq;
		uint64_t lost_after;
	} steps[] = {
		{0, 0}, {1, 0}, {5, 3}, {6, 3},
		{0xfffffff0u, 3},                /* "backwards": resync */
		{0xfffffffeu, 3 + 13},           /* 0xfffffff1..0xfffffffd lost */
		{0xffffffffu, 16}, {2, 18},      /* wrap: 0 and 1 lost */
		{3, 18}, {1, 18}, {2, 18},       /* backwards, then on from there */
		{0x7fffffffu + 2, 18 + 0x7ffffffeu},  /* the largest gap counted (2^31 - 1 apart) */
	};
	memset(&s, 0, sizeof(s));
	s.seq = true;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		size_t n = put_seq_msg(dg, steps[i].seq);
		CHECK(walk_exact(&s, dg, n, &w) == 1 && w.last_seq == steps[i].seq, "seq walk");
		CHECK(s.lost == steps[i].lost_after, "after seq %u: lost %llu, want %llu", steps[i].seq,
		      (unsigned long long)s.lost, (unsigned long long)steps[i].lost_after);
	}
	CHECK(s.received == sizeof(steps) / sizeof(steps[0]), "received");

	/* Error messages in the stream: only a whole one answering a reconfiguration (seq 2) with a
	 * negative errno is kept, the first one; cut ones are never read past. */
	static const struct {
		uint32_t seq;
		int error;
		size_t len;
		int want;
	} errs[] = {
		{2, -1, NLMSG_LENGTH(sizeof(struct nlmsgerr)), -1},
		{2, -13, NLMSG_LENGTH(sizeof(struct nlmsgerr)), -1},  /* the first one stays */
		{1, -5, NLMSG_LENGTH(sizeof(struct nlmsgerr)), 0},    /* the bind's: not ours here */
		{2, 0, NLMSG_LENGTH(sizeof(struct nlmsgerr)), 0},     /* an ACK is no refusal */
		{2, -1, NLMSG_LENGTH(4), 0},                         /* too short to hold one */
	};
	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		if (i != 1)
			memset(&s, 0, sizeof(s));
		struct nlmsghdr *e = (struct nlmsghdr *)dg;
		memset(dg, 0, sizeof(dg));
		e->nlmsg_type = NLMSG_ERROR;
		e->nlmsg_seq = errs[i].seq;
		e->nlmsg_len = (uint32_t)errs[i].len;
		((struct nlmsgerr *)NLMSG_DATA(e))->error = errs[i].error;
		CHECK(walk_exact(&s, dg, errs[i].len, &w) == 0, "an error message is no record");
		CHECK(s.config_error == errs[i].want, "case %zu: config_error %d", i, s.config_error);
	}
}

/* ---- random mutation ---------------------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void mutate(uint8_t *b, size_t len)
{
	int n = 1 + (int)(rnd() % 8);
	for (int i = 0; i < n && len; i++) {
		size_t at = rnd() % len;
		switch (rnd() % 5) {
		case 0: b[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
		case 1: b[at] = (uint8_t)rnd(); break;
		case 2:  /* a 16-bit length-looking field */
			if (at + 2 <= len) {
				uint16_t v = (uint16_t)(rnd() % 3 == 0 ? rnd() : rnd() % 64);
				memcpy(b + at, &v, 2);
			}
			break;
		case 3: b[at] = 0; break;
		default: b[at] = 0xff; break;
		}
	}
}

static void random_phase(double seconds)
{
	struct msg full;
	static uint8_t buf[70000], dg[8192];
	struct nfd_sock s;
	struct walk w;
	struct timespec t0, t;
	size_t dglen = 0;

	full_message(&full);
	for (int i = 0; i < 4; i++) {
		memcpy(dg + dglen, full.b, full.len);
		dglen += full.len;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned long iter = 0;; iter++) {
		if ((iter & 1023) == 0) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			if ((double)(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds)
				break;
		}
		switch (iter % 5) {
		case 0: {  /* a mutated whole message, possibly cut (after the whole one: its layout) */
			size_t len = full.len;
			if (rnd() % 2)
				parse_exact(full.b, full.len, NULL);
			memcpy(buf, full.b, len);
			mutate(buf + NLMSG_HDRLEN, len - NLMSG_HDRLEN);
			if (rnd() % 2)
				len = NLMSG_HDRLEN + rnd() % (len - NLMSG_HDRLEN + 1);
			parse_exact(buf, len, NULL);
			break;
		}
		case 1: {  /* garbage after a header */
			size_t len = NLMSG_HDRLEN + rnd() % 600;
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)rnd();
			parse_exact(buf, len, NULL);
			break;
		}
		case 2: {  /* garbage attributes with plausible small lengths */
			struct msg m;
			msg_start(&m, (uint8_t)(rnd() % 12), 1);
			int nattr = (int)(rnd() % 12);
			for (int i = 0; i < nattr; i++) {
				uint8_t v[300];
				size_t vlen = rnd() % 3 ? rnd() % 24 : rnd() % sizeof(v);
				for (size_t j = 0; j < vlen; j++)
					v[j] = (uint8_t)(rnd() % 4 ? rnd() % 8 : rnd());
				if (vlen && rnd() % 2)
					v[0] = rnd() % 2 ? 0x45 : 0x60;  /* looks like IP */
				msg_attr(&m, (uint16_t)(rnd() % 34), v, vlen);
			}
			parse_exact(m.b, m.len, NULL);
			break;
		}
		case 3: {  /* IP packets with random options / extension chains, cut anywhere */
			uint8_t pk[600];
			size_t n = 40 + rnd() % 500;
			for (size_t i = 0; i < n; i++)
				pk[i] = (uint8_t)(rnd() % 3 ? rnd() % 64 : rnd());
			static const uint8_t chain[] = {0, 43, 60, 44, 51, 6, 17, 58, 1, 132, 59, 50};
			if (rnd() % 2) {
				pk[0] = 0x60;
				pk[6] = chain[rnd() % sizeof(chain)];
				for (size_t o = 40; o + 2 < n; o += 8)  /* plausible next headers */
					if (rnd() % 2)
						pk[o] = chain[rnd() % sizeof(chain)];
			} else {
				pk[0] = (uint8_t)(0x40 | (rnd() % 16));
				pk[6] = rnd() % 2 ? 0 : (uint8_t)rnd();
				pk[9] = chain[5 + rnd() % 7];
			}
			parse_payload(rnd() % 2 ? 2 : 10, rnd() % 2 ? 0x0800 : 0x86dd, pk,
				      rnd() % (n + 1), NULL);
			break;
		}
		default: {  /* a mutated datagram through the walker */
			uint8_t copy[8192];
			size_t len = dglen;
			memcpy(copy, dg, len);
			mutate(copy, len);
			if (rnd() % 2)
				len = rnd() % (len + 1);
			memset(&s, 0, sizeof(s));
			s.seq = rnd() % 2;
			s.layout.want = rnd() % 2 ? NFD_ATTRS_ALL : 0;  /* 4 alike messages: the shortcut */
			walk_exact(&s, copy, len, &w);
			break;
		}
		}
	}
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 2.0;
	rng_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x9e3779b97f4a7c15ull;
	if (!rng_state)
		rng_state = 1;

	test_full_message();
	test_every_attribute_length();
	test_short_fixed_attributes();
	test_prefix_and_hwheader_lengths();
	test_ip_headers();
	test_label_fields();
	test_ct_state();
	test_netmatch();
	fold_setup();
	test_fold_keys();
	test_walker();
	unsigned long long fixed = cases;
	random_phase(seconds);
	printf("ok %llu cases (%llu deterministic, %llu random)\n", cases, fixed, cases - fixed);
	agg_destroy(&fold_table);
	nfd_nets_free(&fold_nets);
	return 0;
}
