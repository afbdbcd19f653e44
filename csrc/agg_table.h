/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Fold records into packet/byte counters keyed by chosen fields: one hash lookup per record, no
 * allocation once a key exists. Pure C; the caller holds agg->lock around fold and copy. */
#ifndef NFLOGD_AGG_TABLE_H
#define NFLOGD_AGG_TABLE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "netmatch.h"
#include "record.h"

/* The C side of nflogd/labels.py's table: a test keeps agg_field_names equal to its fields. */
enum agg_field {
	F_GROUP, F_PREFIX, F_INDEV, F_OUTDEV, F_PHYSINDEV, F_PHYSOUTDEV,
	F_UID, F_GID, F_FAMILY, F_PROTO, F_HOOK, F_MARK, F_HWPROTO,
	/* From the copied payload (parsed only when one of these is a field). */
	F_SADDR, F_DADDR, F_SPORT, F_DPORT, F_ICMP_TYPE, F_TCP_FLAGS, F_SRC_NET, F_DST_NET,
	F_CT_STATE, F_NFIELDS
};

extern const char *const agg_field_names[F_NFIELDS];

/* Which optional values a key carries (absent differs from 0 for uid, gid and proto). */
#define KEY_HAS_UID 1u
#define KEY_HAS_GID 2u
#define KEY_HAS_PROTO 4u
#define KEY_HAS_PORTS 8u
#define KEY_HAS_ICMP 16u
#define KEY_ICMP6 32u      /* the ICMP type is ICMPv6's */
#define KEY_HAS_TCP_FLAGS 64u

/* What a key takes from the payload. Apart, so tables keyed on none of these never clear, hash or
 * compare it (the default labels pay nothing for them), and before the prefix, so tables keyed on
 * them find it in the cache lines a lookup reads anyway. Addresses take 16
 * bytes whatever the family (addr_family says which), already reduced to the table's mask. */
struct agg_pkey {
	uint8_t addr_family, icmp_type, tcp_flags, ct_state;  /* addr_family 4, 6 or 0: none */
	uint16_t sport, dport;
	uint16_t src_net, dst_net;   /* 1-based index into the table's networks; 0: none */
	uint8_t pad[4];
	uint8_t saddr[16], daddr[16];  /* adjacent: compared as one 32-byte block */
};

/* Fixed part first, in 8-byte words, so hashing and comparing are word loops. A key is hashed and
 * compared as [0, AGG_KEY_FIXED), then pk in tables with payload fields, then prefix_len bytes. */
struct agg_key {
	uint32_t indev, outdev, physindev, physoutdev;
	uint32_t uid, gid, mark;
	uint16_t group, hwproto;
	uint8_t family, proto, hook, flags;
	uint8_t prefix_len, pad[3];
	struct agg_pkey pk;          /* only in tables with payload fields (agg_table.payload) */
	char prefix[NFD_PREFIX_MAX + 1];
};
#define AGG_KEY_FIXED offsetof(struct agg_key, pk)

/* Counters and hash first: a lookup reads them and the key's start in one or two cache lines. */
struct agg_entry {
	uint64_t hash;
	uint64_t packets, bytes;
	/* Names this entry for its whole life, wherever it moves in `entries`, and is never reused
	 * by this table (from 1): readers cache per entry by it (exposition.c's label strings, the
	 * hot entry below). Whatever puts a new key into an entry (insert, displacement) gives it a
	 * new serial: ++last_serial. */
	uint64_t serial;
	struct agg_key key;
};

/* A limit on keys shared by several tables (the daemon's max_series across groups). */
struct agg_budget {
	long limit;
	long used;  /* atomic */
};

struct agg_table {
	pthread_mutex_t lock;
	uint32_t fields;            /* bit per enum agg_field */
	bool payload;               /* a field lives in agg_key.pk */
	uint64_t seed;              /* of the key hash, random per table */
	uint64_t secrets[12];       /* derived from seed, one per hashed word */
	uint8_t mask4, mask6;       /* address_mask: prefix lengths saddr/daddr are reduced to */
	const struct nfd_nets *nets;  /* for src_net/dst_net; owned by the caller, may be NULL */
	size_t max_keys;
	struct agg_budget *budget;  /* may be NULL */
	uint32_t *slots;            /* open addressing: index + 1 into entries; 0 = empty */
	size_t nslots;              /* power of two */
	struct agg_entry *entries;  /* dense, in insertion order */
	size_t nentries, capacity;
	uint64_t overflow_packets, overflow_bytes, records;
	uint64_t last_serial;       /* of the newest entry; agg_clear keeps counting */
	/* The entry the previous record went to (index + 1, and its serial in case entries moved):
	 * floods are runs of one key, so it is tried before hashing. */
	size_t hot;
	uint64_t hot_serial;
};

int agg_init(struct agg_table *t, uint32_t fields, size_t max_keys, struct agg_budget *budget);
void agg_destroy(struct agg_table *t);
/* The NFULA_* attributes (bit 1 << NFULA_x) a record needs for a table of these fields, for
 * nfd_record_parse_some. */
uint32_t agg_wanted_attrs(uint32_t fields);
/* Count one record; the caller holds t->lock. */
void agg_fold(struct agg_table *t, const struct nfd_record *rec);
/* Drop all keys (returning them to the budget); the caller holds t->lock. */
void agg_clear(struct agg_table *t);

#endif
