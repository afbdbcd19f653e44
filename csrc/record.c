/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Parse NFLOG packet messages by hand: one pass, no allocation, no callbacks, every length the kernel
 * sends checked against the message it came in. (libnetfilter_log's nflog_nlmsg_parse costs a
 * callback and a validation call per attribute; this is the per-record hot path.) */
#include "record.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <libnetfilter_log/linux_nfnetlink_log.h>

#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_IPV6 0x86dd

static uint32_t get_be32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return ntohl(v);
}

static uint16_t get_be16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, sizeof(v));
	return ntohs(v);
}

static uint64_t get_be64(const uint8_t *p)
{
	return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

bool nfd_is_packet_msg(const struct nlmsghdr *nlh)
{
	return nlh->nlmsg_type == ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET);
}

/* Walk IPv6 extension headers to the upper-layer protocol, as the kernel's ipv6_find_hdr does;
 * bounded by the payload and a hop count. A fragment header with a non-zero offset ends the walk:
 * what follows is the middle of someone else's transport header. */
static void parse_ipv6_l4(struct nfd_record *rec)
{
	const uint8_t *p = rec->payload;
	uint32_t len = rec->payload_len, off = 40;
	uint8_t next = p[6];

	for (int hops = 0; hops < 8; hops++) {
		uint32_t hlen;
		switch (next) {
		case 0:   /* hop-by-hop */
		case 43:  /* routing */
		case 60:  /* destination options */
			if (off + 2 > len)
				return;
			hlen = ((uint32_t)p[off + 1] + 1) * 8;
			break;
		case 44:  /* fragment: fixed 8 bytes, the offset in its 13 high bits of bytes 2-3 */
			if (off + 8 > len)
				return;
			if (get_be16(p + off + 2) & 0xfff8) {
				rec->l4proto = p[off];
				rec->has_l4proto = true;
				rec->fragment = true;
				return;
			}
			hlen = 8;
			break;
		case 51:  /* authentication header */
			if (off + 2 > len)
				return;
			hlen = ((uint32_t)p[off + 1] + 2) * 4;
			break;
		default:
			rec->l4proto = next;
			rec->has_l4proto = true;
			if (off < len)
				rec->l4_off = (uint16_t)off;  /* len < 65536: the payload attribute's bound */
			return;
		}
		next = p[off];
		off += hlen;
	}
}

/* Bytes and L4 protocol from the IP header: the payload may be cut at the copy range, the header is
 * not. Also where the transport header starts, for the labels that read it (only when asked). */
static void parse_ip(struct nfd_record *rec)
{
	const uint8_t *p = rec->payload;
	uint32_t len = rec->payload_len;
	unsigned version;

	rec->ip_len = len;
	if (len < 1)
		return;
	version = p[0] >> 4;
	bool want4 = rec->hw_protocol == ETHERTYPE_IPV4 || rec->family == 2;
	bool want6 = rec->hw_protocol == ETHERTYPE_IPV6 || rec->family == 10;
	if (version == 4 && want4 && len >= 20) {
		uint16_t tot_len = get_be16(p + 2);
		uint32_t ihl = (uint32_t)(p[0] & 0x0f) * 4;
		/* 0 marks a BIG TCP GSO packet over 64 KiB: keep the copied length, as for jumbograms. */
		if (tot_len != 0)
			rec->ip_len = tot_len;
		rec->l4proto = p[9];
		rec->has_l4proto = true;
		rec->ip_version = 4;
		if (get_be16(p + 6) & 0x1fff)
			rec->fragment = true;
		else if (ihl >= 20 && ihl < len)
			rec->l4_off = (uint16_t)ihl;  /* options included: IHL says where they end */
	} else if (version == 6 && want6 && len >= 40) {
		uint16_t plen = get_be16(p + 4);
		/* A zero payload length means a jumbogram: keep the copied length. */
		if (plen != 0)
			rec->ip_len = 40u + plen;
		rec->ip_version = 6;
		parse_ipv6_l4(rec);
	}
}

/* Does this message have the layout l learnt: the same length and the same attribute headers
 * (length and type words) at the same offsets? Then walking it visits exactly the attributes the
 * learnt message had, so every length check that passed there passes here. */
static bool layout_matches(const struct nfd_layout *l, const uint8_t *base, size_t msglen,
			   uint32_t want)
{
	if (l->msglen != msglen || l->learnt_want != want || !l->msglen)
		return false;
	uint32_t differ = 0;  /* no branch per attribute: a flood's messages all match */
	for (unsigned i = 0; i < l->nattrs; i++) {
		uint32_t h;
		memcpy(&h, base + l->off[i], 4);
		differ |= h ^ l->hdr[i];
	}
	return !differ;
}

static int parse(const struct nlmsghdr *nlh, struct nfd_record *rec, uint32_t want,
		 struct nfd_layout *l);

/* memset(rec, 0, ...) as sixteen-byte stores: GCC makes a memset of this size a `rep stos`,
 * whose start-up cost was a tenth of parse() per record. The empty asm hides that the value is
 * zero, so the loop is not turned back into one. */
static inline void zero_record(struct nfd_record *rec)
{
#if defined(__SSE2__)
	typedef char v16 __attribute__((vector_size(16), aligned(1), may_alias));
	char *p = (char *)rec;
	v16 z = {0};
	_Static_assert(sizeof(*rec) >= 16, "zero_record's last store would start before rec");
	__asm__("" : "+x"(z));
	for (size_t i = 0; i + 16 <= sizeof(*rec); i += 16)
		*(v16 *)(p + i) = z;
	*(v16 *)(p + sizeof(*rec) - 16) = z;
#else
	memset(rec, 0, sizeof(*rec));
#endif
}

enum nfd_ct_state nfd_record_ct_state(const struct nfd_record *rec)
{
	if (!REC_HAS(rec, NFULA_CT_INFO))
		return NFD_CT_NONE;
	switch (rec->ct_info) {  /* enum ip_conntrack_info; the _REPLY values are the same states */
	case 0: case 3: return NFD_CT_ESTABLISHED;
	case 1: case 4: return NFD_CT_RELATED;
	case 2: return NFD_CT_NEW;
	default: return NFD_CT_NONE;
	}
}

int nfd_record_parse(const struct nlmsghdr *nlh, struct nfd_record *rec)
{
	return parse(nlh, rec, NFD_ATTRS_ALL, NULL);
}

int nfd_record_parse_some(const struct nlmsghdr *nlh, struct nfd_record *rec,
			  struct nfd_layout *l)
{
	return parse(nlh, rec, l->want, l);
}

static int parse(const struct nlmsghdr *nlh, struct nfd_record *rec, uint32_t want,
		 struct nfd_layout *l)
{
	const size_t hdrlen = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
	const uint8_t *base = (const uint8_t *)nlh;
	size_t msglen = nlh->nlmsg_len, off;
	uint32_t present = 0;  /* in a register: rec's stores may alias the message for the compiler */

	zero_record(rec);

	if (msglen < hdrlen)
		return -EBADMSG;
	const struct nfgenmsg *nfg = (const struct nfgenmsg *)(base + NLMSG_HDRLEN);
	rec->family = nfg->nfgen_family;
	rec->group = ntohs(nfg->res_id);

	/* Floods log by one rule: message after message has the same layout. Then only the wanted
	 * attributes are visited, at their known offsets; otherwise the walk checks every length and
	 * learns the layout for the next message. */
	bool known = l && layout_matches(l, base, msglen, want);
	bool learn = l && !known;
	unsigned k = 0, nattrs = 0, nwanted = 0;
	if (learn)
		l->msglen = 0;  /* what is written below matches nothing until the walk succeeds */
	for (off = hdrlen;;) {
		const struct nlattr *nla;
		const uint8_t *v;
		uint16_t alen, type;
		uint32_t bit;
		size_t vlen;
		if (known) {
			if (k == l->nwanted)
				break;
			nla = (const struct nlattr *)(base + l->wanted[k++]);
			alen = nla->nla_len;
			type = nla->nla_type & NLA_TYPE_MASK;
			v = (const uint8_t *)nla + NLA_HDRLEN;
			vlen = alen - NLA_HDRLEN;
			bit = 1u << type;
		} else {
			if (off + NLA_HDRLEN > msglen)
				break;
			nla = (const struct nlattr *)(base + off);
			v = base + off + NLA_HDRLEN;
			alen = nla->nla_len;
			type = nla->nla_type & NLA_TYPE_MASK;
			if (alen < NLA_HDRLEN || alen > msglen - off)
				return -EBADMSG;
			vlen = alen - NLA_HDRLEN;
			if (learn && nattrs < NFD_LAYOUT_MAX) {
				l->off[nattrs] = (uint16_t)off;
				memcpy(&l->hdr[nattrs], nla, 4);
			}
			nattrs++;
			off += NLA_ALIGN(alen);
			bit = type < 32 ? 1u << type : 0;
			if (!(want & bit))
				continue;  /* not wanted, or newer than us: its length was checked, that is all */
			if (learn && nwanted < NFD_LAYOUT_MAX)
				l->wanted[nwanted] = (uint16_t)((const uint8_t *)nla - base);
			nwanted++;
		}

		switch (type) {
		case NFULA_PACKET_HDR:
			if (vlen < sizeof(struct nfulnl_msg_packet_hdr))
				return -EBADMSG;
			rec->hw_protocol = get_be16(v);
			rec->hook = v[2];
			break;
		case NFULA_MARK:
		case NFULA_IFINDEX_INDEV:
		case NFULA_IFINDEX_OUTDEV:
		case NFULA_IFINDEX_PHYSINDEV:
		case NFULA_IFINDEX_PHYSOUTDEV:
		case NFULA_UID:
		case NFULA_GID:
		case NFULA_SEQ:
		case NFULA_CT_INFO:
			if (vlen < 4)
				return -EBADMSG;
			{
				uint32_t x = get_be32(v);
				switch (type) {
				case NFULA_MARK: rec->mark = x; break;
				case NFULA_IFINDEX_INDEV: rec->indev = x; break;
				case NFULA_IFINDEX_OUTDEV: rec->outdev = x; break;
				case NFULA_IFINDEX_PHYSINDEV: rec->physindev = x; break;
				case NFULA_IFINDEX_PHYSOUTDEV: rec->physoutdev = x; break;
				case NFULA_UID: rec->uid = x; break;
				case NFULA_GID: rec->gid = x; break;
				case NFULA_CT_INFO: rec->ct_info = x; break;
				default: rec->seq = x; break;
				}
			}
			break;
		case NFULA_TIMESTAMP:
			if (vlen < sizeof(struct nfulnl_msg_packet_timestamp))
				return -EBADMSG;
			rec->ts_sec = (int64_t)get_be64(v);
			rec->ts_usec = (int64_t)get_be64(v + 8);
			break;
		case NFULA_HWADDR:
			if (vlen < sizeof(struct nfulnl_msg_packet_hw))
				return -EBADMSG;
			rec->hwaddr_len = get_be16(v);
			if (rec->hwaddr_len > 8)  /* hw_addr[8] in the struct */
				return -EBADMSG;
			rec->hwaddr = v + 4;
			break;
		case NFULA_HWTYPE:
		case NFULA_HWLEN:
			if (vlen < 2)
				return -EBADMSG;
			if (type == NFULA_HWTYPE)
				rec->hwtype = get_be16(v);
			else
				rec->hwlen = get_be16(v);
			break;
		case NFULA_HWHEADER:
			rec->hwhdr = v;
			rec->hwhdr_len = (uint16_t)vlen;
			break;
		case NFULA_PAYLOAD:
			rec->payload = v;
			rec->payload_len = (uint32_t)vlen;
			break;
		case NFULA_PREFIX: {
			/* NUL-terminated as sent; stop at the first NUL or the attribute's end. */
			const uint8_t *nul = memchr(v, 0, vlen);
			size_t plen = nul ? (size_t)(nul - v) : vlen;
			rec->prefix = v;
			rec->prefix_len = (uint16_t)(plen > NFD_PREFIX_MAX ? NFD_PREFIX_MAX : plen);
			break;
		}
		default:
			break;
		}
		present |= bit;
	}
	rec->present = present;
	if (learn) {
		/* Only a message that parsed whole, with few enough attributes, is a layout to reuse. */
		bool fits = nattrs <= NFD_LAYOUT_MAX && msglen <= UINT16_MAX;
		l->msglen = fits ? (uint32_t)msglen : 0;
		l->nattrs = (uint8_t)nattrs;
		l->nwanted = (uint8_t)nwanted;
		l->learnt_want = want;
	}
	/* The hardware header length is bounded by what was actually sent. */
	if (REC_HAS(rec, NFULA_HWLEN) && rec->hwhdr && rec->hwlen < rec->hwhdr_len)
		rec->hwhdr_len = rec->hwlen;
	if (rec->payload)
		parse_ip(rec);
	return 0;
}
