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
	size_t n = AGG_KEY_FIXED + k->prefix_len, i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&w, p + i, 8);
		h = mix(h, w);
	}
	if (i < n) {
		w = 0;
		memcpy(&w, p + i, n - i);
		h = mix(h, w);
	}
	return h | 1;  /* never 0, so a zeroed entry can't match by accident */
}

static inline bool key_equal(const struct agg_key *a, const struct agg_key *b)
{
	return memcmp(a, b, AGG_KEY_FIXED + a->prefix_len) == 0;
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
		memcpy(k->prefix, r->prefix, r->prefix_len);
	}
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
	t->clock_base = (time_t)agg_clock_read(t);  /* read relative to 0, as memset left it */
	pthread_mutex_init(&t->lock, NULL);
	if (budget) {
		pthread_mutex_lock(&budget->members_lock);
		t->next_member = budget->members;
		budget->members = t;
		pthread_mutex_unlock(&budget->members_lock);
	}
	return 0;
}

void agg_budget_init(struct agg_budget *b, long limit)
{
	memset(b, 0, sizeof(*b));
	b->limit = limit;
	pthread_mutex_init(&b->members_lock, NULL);
}

void agg_budget_destroy(struct agg_budget *b)
{
	pthread_mutex_destroy(&b->members_lock);
}

uint32_t agg_clock_read(const struct agg_table *t)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  /* vDSO, no syscall: cheap per datagram */
	return (uint32_t)(ts.tv_sec - t->clock_base);
}

void agg_clock(struct agg_table *t)
{
	if (!t->manual_clock) {
		uint32_t now = agg_clock_read(t);
		if (now > t->now)
			t->now = now;
	}
}

static void release_keys(struct agg_table *t, size_t n)
{
	if (t->budget && n)
		__atomic_fetch_sub(&t->budget->used, (long)n, __ATOMIC_RELAXED);
}

/* Every entry gone (returned to the budget); the counters stay. */
static void drop_entries(struct agg_table *t)
{
	release_keys(t, t->nentries);
	memset(t->slots, 0, t->nslots * sizeof(*t->slots));
	t->nentries = 0;
	t->nvictims = 0;
}

void agg_clear(struct agg_table *t)
{
	drop_entries(t);
	if (t->sketch)
		memset(t->sketch, 0, AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH * sizeof(*t->sketch));
	t->sketch_total = 0;
	t->overflow_packets = t->overflow_bytes = t->records = 0;
	t->pressure_until = 0;
	memset(&t->churn, 0, sizeof(t->churn));
}

void agg_relabel(struct agg_table *t, uint32_t fields)
{
	for (size_t i = 0; i < t->nentries; i++) {
		t->overflow_packets += t->entries[i].packets;
		t->overflow_bytes += t->entries[i].bytes;
	}
	drop_entries(t);
	if (t->sketch)
		memset(t->sketch, 0, AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH * sizeof(*t->sketch));
	t->sketch_total = 0;
	t->pressure_until = 0;
	t->fields = fields;
}

void agg_destroy(struct agg_table *t)
{
	if (!t->slots)
		return;
	if (t->budget) {
		pthread_mutex_lock(&t->budget->members_lock);
		for (struct agg_table **p = &t->budget->members; *p; p = &(*p)->next_member)
			if (*p == t) {
				*p = t->next_member;
				break;
			}
		pthread_mutex_unlock(&t->budget->members_lock);
	}
	agg_clear(t);
	free(t->slots);
	free(t->entries);
	free(t->sketch);
	t->slots = NULL;
	t->entries = NULL;
	t->sketch = NULL;
	pthread_mutex_destroy(&t->lock);
}

/* May this table take one more key? Reserves it in the shared budget when it may. */
static bool reserve_key(struct agg_table *t)
{
	if (t->nentries >= t->max_keys)
		return false;
	if (!t->budget)
		return true;
	/* A plain load first: under a flood the budget is full and every record would otherwise pay
	 * for two atomic read-modify-writes on a line all groups share. */
	if (__atomic_load_n(&t->budget->used, __ATOMIC_RELAXED) >= t->budget->limit)
		return false;
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

/* A new entry for key, counting rec; the key is reserved already. -ENOMEM leaves the table as is. */
static int insert_entry(struct agg_table *t, const struct agg_key *key, uint64_t h,
			const struct nfd_record *rec, uint32_t recent)
{
	size_t mask, j;

	if ((t->nentries == t->capacity && grow_entries(t) < 0) ||
	    ((t->nentries + 1) * 2 > t->nslots && grow_slots(t) < 0))
		return -ENOMEM;
	mask = t->nslots - 1;
	for (j = h & mask; t->slots[j]; j = (j + 1) & mask)
		;
	struct agg_entry *e = &t->entries[t->nentries];
	memcpy(&e->key, key, AGG_KEY_FIXED + key->prefix_len);
	e->hash = h;
	e->packets = 1;
	e->bytes = rec->ip_len;
	e->recent = recent;
	e->last_seen = e->admitted = t->now;
	t->slots[j] = (uint32_t)++t->nentries;
	t->churn.admitted++;
	return 0;
}

static size_t slot_of(const struct agg_table *t, size_t index)
{
	size_t mask = t->nslots - 1, j = t->entries[index].hash & mask;
	while (t->slots[j] != index + 1)
		j = (j + 1) & mask;
	return j;
}

/* Remove entry i, its counts moving into the remainder; the last entry takes its place. The caller
 * returns the key to the budget (or reuses it). */
static void remove_entry(struct agg_table *t, size_t i)
{
	size_t mask = t->nslots - 1, j = slot_of(t, i), k, last = t->nentries - 1;

	t->overflow_packets += t->entries[i].packets;
	t->overflow_bytes += t->entries[i].bytes;
	/* Linear probing's backward-shift delete: no tombstones, so lookups stay one probe run. */
	t->slots[j] = 0;
	for (k = (j + 1) & mask; t->slots[k]; k = (k + 1) & mask) {
		size_t ideal = t->entries[t->slots[k] - 1].hash & mask;
		if (((k - ideal) & mask) >= ((k - j) & mask)) {
			t->slots[j] = t->slots[k];
			t->slots[k] = 0;
			j = k;
		}
	}
	if (i != last) {
		t->slots[slot_of(t, last)] = (uint32_t)(i + 1);
		t->entries[i] = t->entries[last];
		for (size_t v = 0; v < t->nvictims; v++)
			if (t->victims[v].index == last)
				t->victims[v].index = (uint32_t)i;
	}
	t->nentries = last;
}

/* ---- the sketch of newcomers' rates ------------------------------------------------------ */

_Static_assert(16 + AGG_SKETCH_DEPTH * AGG_SKETCH_BITS <= 64, "the sketch's rows need more hash bits");

/* Adds one record of the key hashed h; returns its estimate, 0 when there is no sketch (no memory).
 * Each row's index is 12 bits of the key hash, from bit 16 up (key_hash() mixes every bit; the
 * slots use the low bits), so no second hash is computed per record. */
static uint32_t sketch_add(struct agg_table *t, uint64_t h)
{
	uint32_t lo = UINT32_MAX, *c[AGG_SKETCH_DEPTH];
	uint64_t bits = h >> 16;

	if (!t->sketch) {
		t->sketch = calloc(AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH, sizeof(*t->sketch));
		if (!t->sketch)
			return 0;
	}
	for (size_t d = 0; d < AGG_SKETCH_DEPTH; d++, bits >>= AGG_SKETCH_BITS) {
		c[d] = t->sketch + d * AGG_SKETCH_WIDTH + (bits & (AGG_SKETCH_WIDTH - 1));
		lo = *c[d] < lo ? *c[d] : lo;
	}
	lo += lo < UINT32_MAX;
	/* Conservative update: raise only the counters below the new estimate. */
	for (size_t d = 0; d < AGG_SKETCH_DEPTH; d++)
		*c[d] = *c[d] < lo ? lo : *c[d];
	t->sketch_total++;
	return lo;
}

/* The lightest still-valid victim of t, or -1; stale ones (gone since the sweep) are dropped. */
static long lightest_victim(struct agg_table *t)
{
	while (t->nvictims) {
		struct agg_victim *v = &t->victims[t->nvictims - 1];
		if (v->index < t->nentries && t->entries[v->index].hash == v->hash)
			return (long)v->index;
		t->nvictims--;
	}
	return -1;
}

/* Remove o's lightest eligible entry if est beats it, keeping its key reserved for the caller. */
static bool displace_in(struct agg_table *o, uint32_t est)
{
	long i = lightest_victim(o);
	if (i < 0 || (uint64_t)est <= (uint64_t)AGG_MARGIN * o->entries[i].recent)
		return false;
	o->nvictims--;
	remove_entry(o, (size_t)i);
	o->churn.displaced++;
	return true;
}

/* No light entry of t's own: take one of another table sharing the budget. The caller holds
 * t->lock; the others are only tried (trylock), so two tables doing this at once cannot
 * deadlock, and a busy one is skipped (the next record tries again). */
static bool displace_elsewhere(struct agg_table *t, uint32_t est)
{
	bool done = false;

	if (!t->budget || t->nentries >= t->max_keys)
		return false;
	pthread_mutex_lock(&t->budget->members_lock);
	for (struct agg_table *o = t->budget->members; o && !done; o = o->next_member) {
		if (o == t || pthread_mutex_trylock(&o->lock) != 0)
			continue;
		done = displace_in(o, est);
		pthread_mutex_unlock(&o->lock);
	}
	pthread_mutex_unlock(&t->budget->members_lock);
	return done;
}

/* A record whose key has no entry: it displaces the lightest eligible entry (its own table's,
 * else another's sharing the budget) when its key is clearly heavier, else it counts in the
 * remainder. A displacement moves the victim's counts into its table's remainder and hands its
 * reserved key to the newcomer, so the count of held keys never changes on the way. */
static void no_entry(struct agg_table *t, const struct agg_key *key, uint64_t h,
		     const struct nfd_record *rec)
{
	uint32_t est;

	/* A heavy key takes a free place if there is one (under pressure, when fill tokens ran
	 * out), else displaces. */
	if (t->policy.admit_rate && (est = sketch_add(t, h)) >= AGG_ADMIT_MIN && t->tokens &&
	    est >= AGG_MARGIN * (t->sketch_total / AGG_SKETCH_WIDTH) &&
	    (reserve_key(t) || displace_in(t, est) || displace_elsewhere(t, est))) {
		if (insert_entry(t, key, h, rec, est) == 0) {
			t->tokens--;
			return;
		}
		release_keys(t, 1);
	}
	t->overflow_packets++;
	t->overflow_bytes += rec->ip_len;
	t->churn.remainder_records++;
}

void agg_fold(struct agg_table *t, const struct nfd_record *rec)
{
	struct agg_key key;
	size_t mask = t->nslots - 1, j;
	uint64_t h;

	t->records++;
	key_build(t, rec, &key);
	h = key_hash(&key);
	for (j = h & mask; t->slots[j]; j = (j + 1) & mask) {
		struct agg_entry *e = &t->entries[t->slots[j] - 1];
		if (e->hash == h && key_equal(&e->key, &key)) {
			e->packets++;
			e->bytes += rec->ip_len;
			e->recent++;
			e->last_seen = t->now;
			return;
		}
	}
	/* A new key: it needs room in the table, the limits and memory (and, under pressure, a fill
	 * token); else see no_entry(). */
	bool pressed = t->policy.ttl && t->policy.admit_rate && t->now < t->pressure_until;
	if (!pressed || t->fill_tokens) {
		if (reserve_key(t)) {
			if (insert_entry(t, &key, h, rec, 1) == 0) {
				t->fill_tokens -= pressed;
				return;
			}
			release_keys(t, 1);
		} else if (t->policy.ttl && t->policy.admit_rate) {
			t->pressure_until = t->now + AGG_PRESSURE_SECONDS;
		}
	} else {
		/* New keys come faster than admit_rate: the pressure goes on. */
		t->pressure_until = t->now + AGG_PRESSURE_SECONDS;
	}
	no_entry(t, &key, h, rec);
}

/* ---- the sweep, once per second at most ------------------------------------------------- */

/* victims[0..n) as a max-heap on recent: the root is the heaviest of the lightest kept. */
static void heap_down(struct agg_victim *v, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && v[l].recent > v[m].recent)
			m = l;
		if (r < n && v[r].recent > v[m].recent)
			m = r;
		if (m == i)
			return;
		struct agg_victim tmp = v[i];
		v[i] = v[m];
		v[m] = tmp;
		i = m;
	}
}

static void heap_up(struct agg_victim *v, size_t i)
{
	while (i) {
		size_t p = (i - 1) / 2;
		if (v[p].recent >= v[i].recent)
			return;
		struct agg_victim tmp = v[i];
		v[i] = v[p];
		v[p] = tmp;
		i = p;
	}
}

void agg_tick(struct agg_table *t, uint32_t now)
{
	const struct agg_policy *p = &t->policy;
	uint32_t elapsed, shift = 0;
	size_t keep, n;

	uint64_t tokens;

	if (now > t->now)
		t->now = now;
	if (t->now == t->swept)
		return;
	elapsed = t->now - t->swept;
	t->swept = t->now;
	tokens = t->tokens + (uint64_t)elapsed * p->admit_rate;
	t->tokens = tokens > p->admit_rate ? p->admit_rate : (uint32_t)tokens;
	tokens = t->fill_tokens + (uint64_t)elapsed * p->admit_rate;
	t->fill_tokens = tokens > p->admit_rate ? p->admit_rate : (uint32_t)tokens;
	if (p->decay && t->now - t->decayed >= p->decay) {
		uint32_t periods = (t->now - t->decayed) / p->decay;
		shift = periods > 31 ? 31 : periods;
		t->decayed += periods * p->decay;
		if (t->sketch)
			for (size_t i = 0; i < AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH; i++)
				t->sketch[i] >>= shift;
		t->sketch_total >>= shift;
	}
	keep = p->admit_rate < AGG_MAX_VICTIMS ? p->admit_rate : AGG_MAX_VICTIMS;
	t->nvictims = 0;
	/* Backwards, so the entry that remove_entry() moves into place i was already seen. */
	for (size_t i = t->nentries; i-- > 0;) {
		struct agg_entry *e = &t->entries[i];
		/* Whole seconds, stamps truncated: "> ttl" means idle for more than ttl seconds. */
		if (p->ttl && t->now - e->last_seen > p->ttl) {
			remove_entry(t, i);
			release_keys(t, 1);
			t->churn.expired++;
			continue;
		}
		e->recent >>= shift;
		if (!keep || t->now - e->admitted < p->min_residency)
			continue;
		struct agg_victim v = {.index = (uint32_t)i, .hash = e->hash, .recent = e->recent};
		if (t->nvictims < keep) {
			t->victims[t->nvictims] = v;
			heap_up(t->victims, t->nvictims++);
		} else if (v.recent < t->victims[0].recent) {
			t->victims[0] = v;
			heap_down(t->victims, t->nvictims, 0);
		}
	}
	/* Heap sort into ascending order, then reverse: the lightest ends last, popped first. */
	for (n = t->nvictims; n > 1; n--) {
		struct agg_victim tmp = t->victims[0];
		t->victims[0] = t->victims[n - 1];
		t->victims[n - 1] = tmp;
		heap_down(t->victims, n - 1, 0);
	}
	for (size_t i = 0; i < t->nvictims / 2; i++) {
		struct agg_victim tmp = t->victims[i];
		t->victims[i] = t->victims[t->nvictims - 1 - i];
		t->victims[t->nvictims - 1 - i] = tmp;
	}
}
