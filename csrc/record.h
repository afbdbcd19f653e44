/* SPDX-License-Identifier: GPL-2.0-or-later */
/* One NFLOG record parsed from a netlink message: pure C, no Python, every length checked. */
#ifndef NFLOGD_RECORD_H
#define NFLOGD_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <linux/netlink.h>

/* Bits of nfd_record.present: one per NFULA_* attribute type that was in the message. */
#define REC_HAS(rec, attr) (((rec)->present >> (attr)) & 1u)

/* The kernel's prefix is at most 128 bytes with its NUL (NF_LOG_PREFIXLEN); longer is clipped. */
#define NFD_PREFIX_MAX 127

struct nfd_record {
	uint32_t present;             /* 1 << NFULA_x for each attribute seen */
	uint8_t family;               /* nfgenmsg.nfgen_family: NFPROTO_* */
	uint16_t group;               /* nfgenmsg.res_id */
	uint16_t hw_protocol;         /* EtherType, host order (PACKET_HDR) */
	uint8_t hook;                 /* netfilter hook number (PACKET_HDR) */
	uint32_t mark;
	uint32_t indev, outdev, physindev, physoutdev; /* ifindex; 0 when absent */
	uint32_t uid, gid, seq;
	uint16_t hwtype, hwlen;
	int64_t ts_sec, ts_usec;
	const uint8_t *prefix;        /* without the NUL; prefix_len <= NFD_PREFIX_MAX */
	uint16_t prefix_len;
	const uint8_t *payload;
	uint32_t payload_len;
	const uint8_t *hwaddr;        /* nfulnl_msg_packet_hw.hw_addr, hwaddr_len bytes */
	uint16_t hwaddr_len;
	const uint8_t *hwhdr;
	uint16_t hwhdr_len;
	/* Derived from the payload's IP header, when there is one. */
	bool has_l4proto;
	uint8_t l4proto;
	uint32_t ip_len;              /* IP total length; payload_len when unknown; 0 with no payload */
	/* Where the rest lives, found by the same walk, so labels read them only when configured
	 * (nfd_record_ports() etc.): 4 or 6 when the payload holds a whole IP header, else 0. */
	uint8_t ip_version;
	bool fragment;                /* a non-first fragment: no transport header in it */
	uint16_t l4_off;              /* offset of the transport header in payload; 0: none found */
	uint32_t ct_info;             /* NFULA_CT_INFO (enum ip_conntrack_info), when present */
};

/* Conntrack state of a record, from NFULA_CT_INFO: 0 when the kernel sent none. */
enum nfd_ct_state { NFD_CT_NONE, NFD_CT_NEW, NFD_CT_ESTABLISHED, NFD_CT_RELATED };

enum nfd_ct_state nfd_record_ct_state(const struct nfd_record *rec);

/* The label fields below are read per record by tables keyed on them: inline, so the key's
 * fast path makes no calls. They rely on nfd_record_parse's facts: ip_version set only with a
 * whole IP header in the payload, l4_off only inside it. */

/* The transport header when `need` bytes of it lie inside both the copy and the IP packet (bytes
 * past the IP length are link-layer padding, not header), else NULL. */
static inline const uint8_t *nfd_l4_header(const struct nfd_record *rec, uint32_t need)
{
	uint32_t limit = rec->payload_len;
	if (!rec->l4_off || rec->fragment)
		return NULL;
	if (rec->ip_len && rec->ip_len < limit)
		limit = rec->ip_len;
	if ((uint32_t)rec->l4_off + need > limit)
		return NULL;
	return rec->payload + rec->l4_off;
}

static inline uint16_t nfd_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* Source and destination address: copies 4 (IPv4) or 16 (IPv6) bytes each into saddr/daddr and
 * returns 4 or 6; 0 when the record has no whole IP header. */
static inline int nfd_record_addrs(const struct nfd_record *rec, uint8_t saddr[16],
				   uint8_t daddr[16])
{
	if (rec->ip_version == 4) {  /* parse_ip saw >= 20 bytes */
		memcpy(saddr, rec->payload + 12, 4);
		memcpy(daddr, rec->payload + 16, 4);
	} else if (rec->ip_version == 6) {  /* and >= 40 here */
		memcpy(saddr, rec->payload + 8, 16);
		memcpy(daddr, rec->payload + 24, 16);
	}
	return rec->ip_version;
}

/* TCP, UDP, UDP-Lite, SCTP and DCCP ports (host order): true when the packet has them. A
 * non-first fragment, another protocol, or a copy too short to hold them gives false. */
static inline bool nfd_record_ports(const struct nfd_record *rec, uint16_t *sport,
				    uint16_t *dport)
{
	const uint8_t *h;
	switch (rec->l4proto) {
	case 6: case 17: case 33: case 132: case 136:  /* TCP, UDP, DCCP, SCTP, UDP-Lite */
		break;
	default:
		return false;
	}
	if (!rec->has_l4proto || !(h = nfd_l4_header(rec, 4)))
		return false;
	*sport = nfd_be16(h);
	*dport = nfd_be16(h + 2);
	return true;
}

/* ICMP (l4proto 1 in IPv4) or ICMPv6 (58 in IPv6) type: true when there is one. */
static inline bool nfd_record_icmp_type(const struct nfd_record *rec, uint8_t *type)
{
	const uint8_t *h;
	if (!rec->has_l4proto || !((rec->l4proto == 1 && rec->ip_version == 4) ||
				   (rec->l4proto == 58 && rec->ip_version == 6)))
		return false;
	if (!(h = nfd_l4_header(rec, 1)))
		return false;
	*type = h[0];
	return true;
}

/* The TCP flags byte (FIN 0x01 .. CWR 0x80): true for a TCP header held in the copy. */
static inline bool nfd_record_tcp_flags(const struct nfd_record *rec, uint8_t *flags)
{
	const uint8_t *h;
	if (!rec->has_l4proto || rec->l4proto != 6 || !(h = nfd_l4_header(rec, 14)))
		return false;
	*flags = h[13];
	return true;
}

/* Parse one NFULNL_MSG_PACKET message. Returns 0, or -EBADMSG when a length is inconsistent. */
int nfd_record_parse(const struct nlmsghdr *nlh, struct nfd_record *rec);

/* What nfd_record_parse_some reads, and the attribute layout it learnt from the last message.
 * Consecutive messages of a flood carry the same attributes at the same offsets; a message whose
 * length and attribute headers all equal the learnt ones passed every length check already, so
 * only its wanted attributes are visited. */
#define NFD_ATTRS_ALL 0xffffffffu
#define NFD_LAYOUT_MAX 24
struct nfd_layout {
	uint32_t want;                  /* set by the caller: bit 1 << NFULA_x per attribute to read */
	uint32_t learnt_want;
	uint32_t msglen;                /* of the learnt message; 0: nothing learnt */
	uint8_t nattrs, nwanted;
	uint16_t off[NFD_LAYOUT_MAX];   /* each attribute's offset in the message */
	uint32_t hdr[NFD_LAYOUT_MAX];   /* and its header word (length, type) */
	uint16_t wanted[NFD_LAYOUT_MAX]; /* offsets of the wanted ones */
};

/* The same as nfd_record_parse, reading only the attributes in l->want (the lengths of all are
 * checked): the rest stay absent from rec. The aggregation path asks only for what its key fields
 * need (agg_wanted_attrs), because parsing is most of its cost per record. */
int nfd_record_parse_some(const struct nlmsghdr *nlh, struct nfd_record *rec,
			  struct nfd_layout *l);

/* Is nlh an NFLOG packet message (type NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET)? */
bool nfd_is_packet_msg(const struct nlmsghdr *nlh);

#endif
