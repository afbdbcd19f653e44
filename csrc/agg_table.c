/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "agg_table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

const char *const agg_field_names[F_NFIELDS] = {
	"group", "prefix", "indev", "outdev", "physindev", "physoutdev",
	"uid", "gid", "family", "proto", "hook", "mark", "hwproto",
};

#define INITIAL_SLOTS 64

static inline uint64_t mix(uint64_t h, uint64_t w)
{
	h = (h ^ w) * 0x9e3779b97f4a7c15ull;
	return h ^ (h >> 29);
}

static uint64_t key_hash(const struct agg_key *k)
{
	const uint8_t *p = (const uint8_t *)k;
	uint64_t h = 0x243f6a8885a308d3ull, w;

	for (size_t i = 0, n = AGG_KEY_LEN(k); i < n; i += 8) {
		memcpy(&w, p + i, 8);
		h = mix(h, w);
	}
	return h | 1;  /* never 0, so a zeroed entry can't match by accident */
}

/* Word by word over AGG_KEY_LEN: inline, no call, for keys of a few words. */
static inline bool key_equal(const struct agg_key *a, const struct agg_key *b)
{
	const uint8_t *p = (const uint8_t *)a, *q = (const uint8_t *)b;
	uint64_t diff = 0, x, y;

	if (a->prefix_len != b->prefix_len)
		return false;
	for (size_t i = 0, n = AGG_KEY_LEN(a); i < n; i += 8) {
		memcpy(&x, p + i, 8);
		memcpy(&y, q + i, 8);
		diff |= x ^ y;
	}
	return diff == 0;
}

/* Only the chosen fields go into the key; the rest stay zero so records differing there merge. */
static void key_build(const struct agg_table *t, const struct nfd_record *r, struct agg_key *k)
{
	uint32_t f = t->fields;

	memset(k, 0, AGG_KEY_FIXED);
	if (f & (1u << F_GROUP)) k->group = r->group;
	if (f & (1u << F_INDEV)) k->indev = r->indev;
	if (f & (1u << F_OUTDEV)) k->outdev = r->outdev;
	if (f & (1u << F_PHYSINDEV)) k->physindev = r->physindev;
	if (f & (1u << F_PHYSOUTDEV)) k->physoutdev = r->physoutdev;
	if ((f & (1u << F_UID)) && REC_HAS(r, NFULA_UID)) {
		k->uid = r->uid;
		k->flags |= KEY_HAS_UID;
	}
	if ((f & (1u << F_GID)) && REC_HAS(r, NFULA_GID)) {
		k->gid = r->gid;
		k->flags |= KEY_HAS_GID;
	}
	if (f & (1u << F_FAMILY)) k->family = r->family;
	if ((f & (1u << F_PROTO)) && r->has_l4proto) {
		k->proto = r->l4proto;
		k->flags |= KEY_HAS_PROTO;
	}
	if (f & (1u << F_HOOK)) k->hook = r->hook;
	if (f & (1u << F_MARK)) k->mark = r->mark;
	if (f & (1u << F_HWPROTO)) k->hwproto = r->hw_protocol;
	if ((f & (1u << F_PREFIX)) && r->prefix_len) {
		k->prefix_len = (uint8_t)r->prefix_len;
		memset(k->prefix + (r->prefix_len & ~7u), 0, 8);  /* the padding of the last word */
		memcpy(k->prefix, r->prefix, r->prefix_len);
	}
}

/* The attributes key_build reads for these fields, plus what every fold needs: the payload (bytes
 * and the L3/L4 fields come from its IP header, which needs PACKET_HDR's protocol) and SEQ (loss).
 * A field added to key_build adds its attribute here. */
uint32_t agg_wanted_attrs(uint32_t fields)
{
	static const uint32_t attr_of[F_NFIELDS] = {
		[F_PREFIX] = 1u << NFULA_PREFIX,
		[F_INDEV] = 1u << NFULA_IFINDEX_INDEV,
		[F_OUTDEV] = 1u << NFULA_IFINDEX_OUTDEV,
		[F_PHYSINDEV] = 1u << NFULA_IFINDEX_PHYSINDEV,
		[F_PHYSOUTDEV] = 1u << NFULA_IFINDEX_PHYSOUTDEV,
		[F_UID] = 1u << NFULA_UID,
		[F_GID] = 1u << NFULA_GID,
		[F_MARK] = 1u << NFULA_MARK,
	};
	uint32_t want = (1u << NFULA_PAYLOAD) | (1u << NFULA_PACKET_HDR) | (1u << NFULA_SEQ);
	for (int i = 0; i < F_NFIELDS; i++)
		if (fields & (1u << i))
			want |= attr_of[i];
	return want;
}

int agg_init(struct agg_table *t, uint32_t fields, size_t max_keys, struct agg_budget *budget)
{
	memset(t, 0, sizeof(*t));
	t->fields = fields;
	t->max_keys = max_keys;
	t->budget = budget;
	t->nslots = INITIAL_SLOTS;
	t->slots = calloc(t->nslots, sizeof(*t->slots));
	if (!t->slots)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	return 0;
}

void agg_clear(struct agg_table *t)
{
	if (t->budget)
		__atomic_fetch_sub(&t->budget->used, (long)t->nentries, __ATOMIC_RELAXED);
	memset(t->slots, 0, t->nslots * sizeof(*t->slots));
	t->nentries = t->hot = 0;
	t->overflow_packets = t->overflow_bytes = t->records = 0;
}

void agg_destroy(struct agg_table *t)
{
	if (!t->slots)
		return;
	agg_clear(t);
	free(t->slots);
	free(t->entries);
	t->slots = NULL;
	t->entries = NULL;
	pthread_mutex_destroy(&t->lock);
}

/* May this table take one more key? Reserves it in the shared budget when it may. */
static bool reserve_key(struct agg_table *t)
{
	if (t->nentries >= t->max_keys)
		return false;
	if (!t->budget)
		return true;
	if (__atomic_fetch_add(&t->budget->used, 1, __ATOMIC_RELAXED) < t->budget->limit)
		return true;
	__atomic_fetch_sub(&t->budget->used, 1, __ATOMIC_RELAXED);
	return false;
}

static int grow_slots(struct agg_table *t)
{
	size_t n = t->nslots * 2, mask = n - 1;
	uint32_t *slots = calloc(n, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < t->nentries; i++) {
		size_t j = t->entries[i].hash & mask;
		while (slots[j])
			j = (j + 1) & mask;
		slots[j] = (uint32_t)(i + 1);
	}
	free(t->slots);
	t->slots = slots;
	t->nslots = n;
	return 0;
}

static int grow_entries(struct agg_table *t)
{
	size_t cap = t->capacity ? t->capacity * 2 : 64;
	struct agg_entry *e = realloc(t->entries, cap * sizeof(*e));
	if (!e)
		return -ENOMEM;
	t->entries = e;
	t->capacity = cap;
	return 0;
}

void agg_fold(struct agg_table *t, const struct nfd_record *rec)
{
	struct agg_key key;
	size_t mask = t->nslots - 1, j;
	uint64_t h;

	t->records++;
	key_build(t, rec, &key);
	if (t->hot && t->hot <= t->nentries) {
		struct agg_entry *e = &t->entries[t->hot - 1];
		if (e->serial == t->hot_serial && key_equal(&e->key, &key)) {
			e->packets++;
			e->bytes += rec->ip_len;
			return;
		}
	}
	h = key_hash(&key);
	for (j = h & mask; t->slots[j]; j = (j + 1) & mask) {
		struct agg_entry *e = &t->entries[t->slots[j] - 1];
		if (e->hash == h && key_equal(&e->key, &key)) {
			e->packets++;
			e->bytes += rec->ip_len;
			t->hot = t->slots[j];
			t->hot_serial = e->serial;
			return;
		}
	}
	/* A new key: it needs room in the table, the limits and memory; else it goes to overflow. */
	if (!reserve_key(t))
		goto overflow;
	if ((t->nentries == t->capacity && grow_entries(t) < 0) ||
	    ((t->nentries + 1) * 2 > t->nslots && grow_slots(t) < 0)) {
		if (t->budget)
			__atomic_fetch_sub(&t->budget->used, 1, __ATOMIC_RELAXED);
		goto overflow;
	}
	mask = t->nslots - 1;
	for (j = h & mask; t->slots[j]; j = (j + 1) & mask)
		;
	struct agg_entry *e = &t->entries[t->nentries];
	memcpy(&e->key, &key, AGG_KEY_LEN(&key));
	e->hash = h;
	e->serial = ++t->last_serial;
	e->packets = 1;
	e->bytes = rec->ip_len;
	t->slots[j] = (uint32_t)++t->nentries;
	t->hot = t->nentries;
	t->hot_serial = e->serial;
	return;

overflow:
	t->overflow_packets++;
	t->overflow_bytes += rec->ip_len;
}
