/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Fold records into packet/byte counters keyed by chosen fields: one hash lookup per record, no
 * allocation once a key exists. Pure C; the caller holds agg->lock around fold and copy. */
#ifndef NFLOGD_AGG_TABLE_H
#define NFLOGD_AGG_TABLE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "record.h"

enum agg_field {
	F_GROUP, F_PREFIX, F_INDEV, F_OUTDEV, F_PHYSINDEV, F_PHYSOUTDEV,
	F_UID, F_GID, F_FAMILY, F_PROTO, F_HOOK, F_MARK, F_HWPROTO, F_NFIELDS
};

extern const char *const agg_field_names[F_NFIELDS];

/* Which optional values a key carries (absent differs from 0 for uid, gid and proto). */
#define KEY_HAS_UID 1u
#define KEY_HAS_GID 2u
#define KEY_HAS_PROTO 4u

/* Fixed part first, in 8-byte words, so hashing and comparing are word loops. */
struct agg_key {
	uint32_t indev, outdev, physindev, physoutdev;
	uint32_t uid, gid, mark;
	uint16_t group, hwproto;
	uint8_t family, proto, hook, flags;
	uint8_t prefix_len, pad[3];
	char prefix[NFD_PREFIX_MAX + 1];
};
#define AGG_KEY_FIXED offsetof(struct agg_key, prefix)
/* The bytes of a key that count: the fixed part and the prefix zero-padded to whole words, so
 * hashing and comparing are loops over 8-byte words with no tail. */
#define AGG_KEY_LEN(k) (AGG_KEY_FIXED + (((size_t)(k)->prefix_len + 7u) & ~(size_t)7u))
_Static_assert(AGG_KEY_FIXED % 8 == 0, "the fixed key part is whole 8-byte words");
_Static_assert(sizeof(((struct agg_key *)0)->prefix) % 8 == 0, "the padded prefix fits");

struct agg_entry {
	struct agg_key key;
	uint64_t hash;
	uint64_t packets, bytes;
	/* Names this entry for its whole life, wherever it moves in `entries`, and is never reused
	 * by this table (from 1): readers cache per entry by it (exposition.c's label strings, the
	 * hot entry below). Whatever puts a new key into an entry (insert, displacement) gives it a
	 * new serial: ++last_serial. */
	uint64_t serial;
};

/* A limit on keys shared by several tables (the daemon's max_series across groups). */
struct agg_budget {
	long limit;
	long used;  /* atomic */
};

struct agg_table {
	pthread_mutex_t lock;
	uint32_t fields;            /* bit per enum agg_field */
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
