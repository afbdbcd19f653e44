/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Fold records into packet/byte counters keyed by chosen fields: one hash lookup per record, no
 * allocation once a key exists. Pure C; the caller holds agg->lock around every call but init and
 * destroy.
 *
 * The series budget (see agg_policy): a key with no entry is counted in the remainder
 * (overflow_*); idle entries expire and light ones are displaced by heavier newcomers, their counts
 * moving into the remainder, so packets + bytes summed over entries and remainder only ever grow
 * and equal everything folded. Time is a coarse clock in whole seconds set by agg_tick(). */
#ifndef NFLOGD_AGG_TABLE_H
#define NFLOGD_AGG_TABLE_H

#include <pthread.h>
#include <time.h>
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

/* A key's values, unpacked for readers (agg_ckey_unpack): fields not keyed on are 0. Addresses take
 * 16 bytes whatever the family (addr_family says which), already reduced to the table's mask. */
struct agg_pkey {
	uint8_t addr_family, icmp_type, tcp_flags, ct_state;  /* addr_family 4, 6 or 0: none */
	uint16_t sport, dport;
	uint16_t src_net, dst_net;   /* 1-based index into the table's networks; 0: none */
	uint8_t saddr[16], daddr[16];
};

struct agg_key {
	uint32_t indev, outdev, physindev, physoutdev;
	uint32_t uid, gid, mark;
	uint16_t group, hwproto;
	uint8_t family, proto, hook, flags;
	uint8_t prefix_len;
	struct agg_pkey pk;
	char prefix[NFD_PREFIX_MAX + 1];
};

/* How a table stores, hashes and compares its keys: packed, only the fields it is keyed on, so a
 * lookup reads as few cache lines as the key needs (the address labels' keys fit one line with
 * their counters). Byte 0 is the key's flags (KEY_HAS_*), byte 1 its prefix_len; then each keyed
 * field at off[field] in the width of its agg_key member, addr_family at afam when an address is
 * keyed on; the prefix's bytes from `fixed` on. Every byte below fixed is written for every key,
 * so keys compare as bytes. A relabel changes the plan, and drops every key packed by the old. */
#define AGG_CKEY_FIXED_MAX 96        /* >= every plan's fixed part (checked in agg_table.c) */
#define AGG_CKEY_MAX 216             /* fixed part and prefix: an entry is 256 bytes */
struct agg_ckey_plan {
	uint32_t fields;             /* keyed on: bit per enum agg_field */
	uint8_t off[F_NFIELDS];
	uint8_t afam, fixed;
};
/* A packed key's length. */
static inline size_t agg_ckey_len(const struct agg_ckey_plan *pl, const uint8_t *ck)
{
	return (size_t)pl->fixed + ck[1];
}
void agg_ckey_unpack(const struct agg_ckey_plan *pl, const uint8_t *ck, struct agg_key *k);

/* 256 bytes, in an array aligned to cache lines: the counters and the packed key from byte 32 on,
 * so a lookup whose key is under 32 bytes reads one line. Entries move: removing one moves the
 * last into its place (remove_entry), and relabel/clear drop them all. So never keep an entry's
 * index or address across agg_tick, a fold of a new key, agg_relabel or agg_clear (a "same key as
 * the last record" cache must be reset by those). */
struct agg_entry {
	uint64_t packets, bytes;
	uint32_t recent;    /* records in the decaying window (halved every decay period) */
	uint32_t last_seen; /* agg_table.now at its last record */
	uint32_t tag;       /* the key hash's high 32 bits, as in its slot: where its probe starts */
	uint32_t admitted;  /* agg_table.now when it got its entry */
	uint8_t ckey[AGG_CKEY_MAX];  /* packed by the table's plan */
	/* Names this entry for its whole life, wherever it moves in `entries`, and is never reused
	 * by this table (from 1): readers cache per entry by it (exposition.c's label strings).
	 * Whatever puts a new key into an entry (insert, displacement) gives it a new serial:
	 * ++last_serial. Last: folding never reads it. */
	uint64_t serial;
};
#define AGG_ENTRY_ALIGN 64

/* The budget's policy; 0 disables a mechanism. */
struct agg_policy {
	uint32_t ttl;           /* seconds without a record before an entry expires; 0 = never */
	uint32_t min_residency; /* seconds an entry is safe from displacement */
	uint32_t admit_rate;    /* displacements per second at most (burst: one second's worth) */
	uint32_t decay;         /* seconds between halvings of the rate estimates */
};

/* Defaults of the Python Aggregator (README "Series budget" says why). */
#define AGG_DEFAULT_MIN_RESIDENCY 20
#define AGG_DEFAULT_ADMIT_RATE 10
#define AGG_DEFAULT_DECAY 10

/* The estimator of newcomers' rates: a count-min sketch, conservative update, decayed like the
 * entries' `recent`, so the two compare. AGG_SKETCH_DEPTH rows of AGG_SKETCH_WIDTH counters
 * (64 KiB); a row's index is AGG_SKETCH_BITS bits of the key hash (16 + 4 * 12 <= 64). */
#define AGG_SKETCH_DEPTH 4
#define AGG_SKETCH_BITS 12
#define AGG_SKETCH_WIDTH (1u << AGG_SKETCH_BITS)
/* A newcomer displaces the lightest eligible entry when its estimate is at least AGG_ADMIT_MIN,
 * at least AGG_MARGIN times the sketch's mean counter (collision noise) and more than AGG_MARGIN
 * times the victim's `recent`. */
#define AGG_ADMIT_MIN 8
#define AGG_MARGIN 2
/* Pressure (with a ttl and an admit_rate): once a key was refused for want of budget, new keys
 * fill free places (freed by expiry, or by another table sharing the budget) at most admit_rate
 * a second, until for this long no new key was refused or had to wait: a flood cannot churn
 * the places at every expiry. A relabel ends it (all places are new then). */
#define AGG_PRESSURE_SECONDS 60
/* Victims chosen per tick, lightest first (bounds the displacements between two ticks). */
#define AGG_MAX_VICTIMS 256

struct agg_victim {
	uint32_t index;
	uint32_t recent;  /* at the sweep */
	uint64_t serial;  /* the entry still there? (a safety net: removals fix indexes up) */
};

struct agg_churn {
	uint64_t admitted, expired, displaced;
	uint64_t remainder_records;  /* records counted in the remainder on arrival */
};

struct agg_table;

/* A limit on keys shared by several tables (the daemon's max_series across groups). Its members
 * let a table with no light entry of its own displace another table's lightest (see no_entry):
 * a flood in one group cannot starve the others' heavy label sets. */
struct agg_budget {
	long limit;
	long used;                      /* atomic */
	pthread_mutex_t members_lock;   /* taken after a table's lock, never before */
	struct agg_table *members;      /* linked by agg_table.next_member */
};

void agg_budget_init(struct agg_budget *b, long limit);
void agg_budget_destroy(struct agg_budget *b);

struct agg_table {
	pthread_mutex_t lock;
	struct agg_ckey_plan plan;  /* how keys are packed; plan.fields: bit per enum agg_field */
	uint64_t seed;              /* of the key hash, random per table */
	uint8_t mask4, mask6;       /* address_mask: prefix lengths saddr/daddr are reduced to */
	const struct nfd_nets *nets;  /* for src_net/dst_net; owned by the caller, may be NULL */
	size_t max_keys;
	struct agg_budget *budget;  /* may be NULL */
	struct agg_table *next_member;  /* in budget->members */
	/* Open addressing. A slot is the key hash's high 32 bits (a tag, whose low bits are the slot
	 * its probe starts at) over index + 1 into entries in its low 32 bits; 0 = empty. A lookup
	 * compares tags first, so a miss (every record of a random-source flood) reads only this
	 * array, not the entries it would pass over; moving slots needs no entry read. */
	uint64_t *slots;
	size_t nslots;              /* power of two */
	struct agg_entry *entries;  /* dense, in insertion order; AGG_ENTRY_ALIGN-aligned */
	size_t nentries, capacity;
	uint64_t overflow_packets, overflow_bytes, records;
	uint64_t last_serial;       /* of the newest entry; agg_clear keeps counting */
	/* Counts every entry added or removed: a lookup's result holds while it is unchanged. */
	uint32_t shape;
	/* The entry the previous record went to (index + 1; 0 none), good while shape is still
	 * hot_shape: floods are runs of one key, so it is tried before hashing. */
	size_t hot;
	uint32_t hot_shape;
	struct agg_policy policy;
	uint32_t now;               /* coarse clock, seconds since clock_base (agg_clock, agg_tick) */
	time_t clock_base;          /* CLOCK_MONOTONIC_COARSE second that is the table's second 0 */
	bool manual_clock;          /* a test drives the clock: agg_clock() leaves it alone */
	uint32_t swept, decayed;    /* now at the last sweep and the last decay */
	uint32_t tokens;            /* displacements allowed until the next refill */
	uint32_t fill_tokens;       /* new entries in free places allowed, under pressure */
	uint32_t pressure_until;    /* now < this: a key was refused lately (AGG_PRESSURE_SECONDS) */
	uint32_t *sketch;           /* AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH, allocated on first need */
	uint64_t sketch_total;      /* records added to the sketch, decayed alike */
	struct agg_victim victims[AGG_MAX_VICTIMS];  /* heaviest first; the lightest is last */
	size_t nvictims;
	struct agg_churn churn;
};

/* Policy all zero: no expiry, no displacement (set t->policy after init). */
int agg_init(struct agg_table *t, uint32_t fields, size_t max_keys, struct agg_budget *budget);
void agg_destroy(struct agg_table *t);
/* The NFULA_* attributes (bit 1 << NFULA_x) a record needs for a table of these fields, for
 * nfd_record_parse_some. */
uint32_t agg_wanted_attrs(uint32_t fields);
/* Count one record; the caller holds t->lock. */
void agg_fold(struct agg_table *t, const struct nfd_record *rec);
/* Folding a datagram a few records at a time: each record's key is built and hashed as it is
 * parsed and its slot prefetched, and the batch's entries are prefetched before it is folded, so
 * the cache misses of a many-source flood (a slot, then an entry, per record) overlap instead of
 * stalling one by one. The same counts as agg_fold, record for record, in the same order. */
#define AGG_AHEAD 32
struct agg_pending {
	uint64_t hash;
	uint32_t ip_len;
	bool same;                  /* the same key as the record before it in the batch */
	/* The first slot whose tag was its key's when the batch was prefetched (its entry's index
	 * + 1); 0: none, no entry holds the key. */
	uint32_t found;
	uint8_t ckey[AGG_CKEY_MAX];
};
struct agg_ahead {
	struct agg_table *t;        /* folded into; set by the caller */
	unsigned n;
	struct agg_pending p[AGG_AHEAD];
};
/* Queue one record (rec's memory may go once this returns); a full batch is folded. */
void agg_ahead_add(struct agg_ahead *a, const struct nfd_record *rec);
/* agg_ahead_add as an nfd_sock_dispatch visitor (nfd_visit_fn): ctx is the struct agg_ahead. */
int agg_ahead_visit(void *ctx, const struct nfd_record *rec, const struct nlmsghdr *nlh);
/* Fold what is queued. Before a->t->lock is released: queued records are not counted yet. */
void agg_ahead_flush(struct agg_ahead *a);
/* Drop all keys (returning them to the budget) and zero every counter. */
void agg_clear(struct agg_table *t);
/* Read the coarse clock into t->now: once per datagram, by the reader (records are stamped with it). */
void agg_clock(struct agg_table *t);
/* The coarse clock's second now, relative to the table's second 0. */
uint32_t agg_clock_read(const struct agg_table *t);
/* Advance the clock to `now` (seconds, never backwards) and, once per second at most, sweep: expire
 * idle entries, decay the estimates, refill the admission tokens, choose the next victims. Amortised:
 * one pass over the entries per second, none per record. */
void agg_tick(struct agg_table *t, uint32_t now);
/* Count by other fields from now on: every entry's counts move into the remainder, so nothing is
 * lost and no sum goes down; the sketch forgets (its keys meant something else). */
void agg_relabel(struct agg_table *t, uint32_t fields);

#endif
