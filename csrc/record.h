/* SPDX-License-Identifier: GPL-2.0-or-later */
/* One NFLOG record parsed from a netlink message: pure C, no Python, every length checked. */
#ifndef NFLOGD_RECORD_H
#define NFLOGD_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
};

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
