/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The series budget of agg_table.c against a model, built by tests/test_agg_budget.py with
 * -fsanitize=address,undefined. Records are synthetic (key: uid), the clock is the test's.
 *
 * Checked after every fold and tick (the model keeps, per key, the records since its admission):
 * - the sum over rows plus the remainder equals every packet and byte folded, and the remainder
 *   never decreases; every row's count equals its key's records since admission, exactly;
 * - the slots index exactly the rows, each tagged with its row's tag (no lost or duplicate key
 *   after backward-shift deletes);
 * - rows never exceed the budget; the shared budget's `used` equals the rows held;
 * - displacements per second stay within admit_rate; a row expires at the first sweep more
 *   than ttl seconds after its last record's stamp, never before.
 * Scenarios: random operations, a random flood with a steady key (admitted in time), expiry,
 * relabel, a flood in one group and a steady key in another sharing the budget, a long flood
 * (memory stays at the budget's size). And the batched fold (agg_ahead_*, what Nflog.aggregate
 * uses) against agg_fold record by record: the same rows, counts, remainder and churn.
 *
 * usage: agg_budget SEED    prints "ok <checks> checks" and exits 0, or aborts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "agg_table.h"
#include "check.h"

#define NKEYS 300000u

static unsigned long long checks, random_displaced, random_expired, batched_displaced;
static uint64_t rng_state;

static uint32_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 16);
}

/* The model: what a row for each key must hold, and what was folded. */
struct model {
	struct agg_table t;
	struct agg_budget budget;
	uint32_t *present;         /* index + 1 into held, 0 when the model has no row for the key */
	uint32_t *held, nheld;     /* keys with a row, per the model */
	uint64_t *since;           /* packets since admission, while present */
	uint64_t packets, bytes;   /* folded in all */
	uint64_t last_remainder;
	uint64_t displaced_seen, admitted_seen;
};

/* The uid an entry's key holds (the model keys on uid). */
static uint32_t uid_of(const struct agg_table *t, const struct agg_entry *e)
{
	struct agg_key k;
	agg_ckey_unpack(&t->plan, e->ckey, &k);
	return k.uid;
}

static struct agg_entry *find(struct agg_table *t, uint32_t uid)
{
	for (size_t i = 0; i < t->nentries; i++)
		if (uid_of(t, &t->entries[i]) == uid)
			return &t->entries[i];
	return NULL;
}

static void model_init(struct model *m, long limit, struct agg_policy policy)
{
	memset(m, 0, sizeof(*m));
	agg_budget_init(&m->budget, limit);
	CHECK(agg_init(&m->t, 1u << F_UID, (size_t)-1, &m->budget) == 0, "init");
	m->t.policy = policy;
	m->present = calloc(NKEYS, sizeof(*m->present));
	m->held = calloc(NKEYS, sizeof(*m->held));
	m->since = calloc(NKEYS, sizeof(*m->since));
	CHECK(m->present && m->held && m->since, "oom");
}

static void model_free(struct model *m)
{
	agg_destroy(&m->t);
	CHECK(m->budget.used == 0, "budget not returned: %ld", m->budget.used);
	agg_budget_destroy(&m->budget);
	free(m->present);
	free(m->held);
	free(m->since);
}

static void model_add(struct model *m, uint32_t k)
{
	m->held[m->nheld++] = k;
	m->present[k] = m->nheld;
	m->since[k] = 0;
}

static void model_drop(struct model *m, uint32_t k)
{
	uint32_t i = m->present[k] - 1, last = m->held[--m->nheld];
	m->held[i] = last;
	m->present[last] = i + 1;
	m->present[k] = 0;
}

/* Keys the model holds that the table no longer has were removed: forget them. */
static void sync_removed(struct model *m)
{
	for (uint32_t i = m->nheld; i-- > 0;)
		if (!find(&m->t, m->held[i]))
			model_drop(m, m->held[i]);
}

static void verify(struct model *m)
{
	struct agg_table *t = &m->t;
	uint64_t p = t->overflow_packets, b = t->overflow_bytes;
	size_t used = 0;

	CHECK(t->overflow_packets >= m->last_remainder, "remainder went down");
	m->last_remainder = t->overflow_packets;
	CHECK((long)t->nentries <= m->budget.limit, "%zu rows over the budget %ld", t->nentries,
	      m->budget.limit);
	CHECK(m->budget.used == (long)t->nentries, "used %ld != rows %zu", m->budget.used,
	      t->nentries);
	for (size_t i = 0; i < t->nentries; i++) {
		const struct agg_entry *e = &t->entries[i];
		uint32_t uid = uid_of(t, e);
		p += e->packets;
		b += e->bytes;
		CHECK(m->present[uid], "row %u unknown to the model", uid);
		CHECK(e->packets == m->since[uid], "row %u: %llu packets, %llu since admission",
		      uid, (unsigned long long)e->packets, (unsigned long long)m->since[uid]);
	}
	CHECK(p == m->packets && b == m->bytes, "sum %llu/%llu != folded %llu/%llu",
	      (unsigned long long)p, (unsigned long long)b, (unsigned long long)m->packets,
	      (unsigned long long)m->bytes);
	for (size_t j = 0; j < t->nslots; j++)
		if (t->slots[j]) {
			uint32_t index1 = (uint32_t)t->slots[j];
			CHECK(index1 >= 1 && index1 <= t->nentries, "slot %zu -> %u past %zu rows", j,
			      index1, t->nentries);
			CHECK(t->slots[j] >> 32 == t->entries[index1 - 1].tag,
			      "slot %zu: tag is not row %u's", j, index1 - 1);
			used++;
		}
	CHECK(used == t->nentries, "%zu slots for %zu rows", used, t->nentries);
	for (size_t i = 0; i < t->nentries; i++) {
		size_t mask = t->nslots - 1, j = t->entries[i].tag & mask;
		while (t->slots[j] && (uint32_t)t->slots[j] != i + 1)
			j = (j + 1) & mask;
		CHECK((uint32_t)t->slots[j] == i + 1, "row %zu not reachable from its tag", i);
	}
	checks++;
}

static void fold(struct model *m, uint32_t uid, uint32_t len)
{
	struct nfd_record r;
	uint64_t displaced = m->t.churn.displaced;

	memset(&r, 0, sizeof(r));
	r.present = 1u << NFULA_UID;
	r.uid = uid;
	r.ip_len = len;
	agg_fold(&m->t, &r);
	m->packets++;
	m->bytes += len;
	if (m->t.churn.displaced != displaced)
		sync_removed(m);  /* the victim is gone */
	if (find(&m->t, uid)) {
		if (!m->present[uid])
			model_add(m, uid);
		m->since[uid]++;
	}
}

static void tick(struct model *m, uint32_t now)
{
	agg_tick(&m->t, now);
	sync_removed(m);
}

/* Random operations with small parameters, verified after every step. */
static void random_ops(void)
{
	struct agg_policy pol = {.ttl = 1 + rnd() % 6, .min_residency = rnd() % 4,
				 .admit_rate = rnd() % 5, .decay = 1 + rnd() % 3};
	struct model m;
	uint32_t now = 0;

	model_init(&m, 1 + rnd() % 40, pol);
	for (int step = 0; step < 20000; step++) {
		uint32_t r = rnd() % 100;
		if (r < 2) {
			now += rnd() % 3;
			tick(&m, now);
		} else if (r < 60) {
			fold(&m, rnd() % 8, 40 + rnd() % 1400);      /* heavy keys */
		} else {
			fold(&m, 8 + rnd() % 500, 40 + rnd() % 1400);  /* light ones */
		}
		if (step % 7 == 0)
			verify(&m);
	}
	verify(&m);
	random_displaced += m.t.churn.displaced;
	random_expired += m.t.churn.expired;
	if (rnd() % 2) {
		m.budget.limit = rnd() % 10;  /* lowered: rows stay, no new ones past it */
		for (int step = 0; step < 2000; step++)
			fold(&m, rnd() % 600, 100);
		CHECK(m.budget.used == (long)m.t.nentries, "used");
	}
	model_free(&m);
}

/* A random flood (one packet per key) with one steady key at 1 % of the records: the steady key gets
 * a row within min_residency + 10 s; displacements stay within admit_rate per second. */
static void flood_with_steady_key(uint32_t rate, uint32_t start, uint32_t seconds)
{
	struct agg_policy pol = {.ttl = 900, .min_residency = AGG_DEFAULT_MIN_RESIDENCY,
				 .admit_rate = AGG_DEFAULT_ADMIT_RATE, .decay = AGG_DEFAULT_DECAY};
	const uint32_t steady = 7;
	struct model m;
	uint32_t admitted_at = 0, next = 0;
	uint64_t displaced_before;

	model_init(&m, 200, pol);
	for (uint32_t now = 1; now <= seconds; now++) {
		displaced_before = m.t.churn.displaced;
		tick(&m, now);
		for (uint32_t i = 0; i < rate; i++) {
			if (i % 100 == 0 && now >= start)
				fold(&m, steady, 60);
			else
				fold(&m, 1000 + (next++, rnd()) % (NKEYS - 1000), 60);
		}
		CHECK(m.t.churn.displaced - displaced_before <= pol.admit_rate,
		      "%llu displacements in one second",
		      (unsigned long long)(m.t.churn.displaced - displaced_before));
		if (!admitted_at && find(&m.t, steady))
			admitted_at = now;
		verify(&m);
	}
	CHECK(admitted_at && admitted_at - start <= pol.min_residency + 10,
	      "steady key at %u records/s from second %u admitted at second %u", rate / 100, start,
	      admitted_at);
	CHECK(find(&m.t, steady) && m.since[steady] == find(&m.t, steady)->packets, "steady row");
	/* The flood itself does not churn: its keys are never heavier than the noise. */
	CHECK(m.t.churn.displaced <= 3, "%llu displacements by a random flood",
	      (unsigned long long)m.t.churn.displaced);
	CHECK(m.t.capacity <= 256, "entries grew to %zu for a budget of 200", m.t.capacity);
	printf("flood %u/s: steady key from second %u admitted at second %u, %llu displaced, "
	       "%llu admitted\n", rate, start, admitted_at, (unsigned long long)m.t.churn.displaced,
	       (unsigned long long)m.t.churn.admitted);
	model_free(&m);
}

/* 200 steady keys (each 0.25 % of the records) and a random flood (50 %) start together: the
 * first 200 keys seen (100 of each) fill the budget; after min_residency the 100 steady keys left
 * out displace the 100 flood keys, and then nothing moves: no steady key is displaced. */
static void heavy_residents_stay(void)
{
	struct agg_policy pol = {.ttl = 900, .min_residency = AGG_DEFAULT_MIN_RESIDENCY,
				 .admit_rate = AGG_DEFAULT_ADMIT_RATE, .decay = AGG_DEFAULT_DECAY};
	struct model m;
	uint32_t next = 0;

	model_init(&m, 200, pol);
	for (uint32_t now = 1; now <= 120; now++) {
		tick(&m, now);
		for (uint32_t i = 0; i < 40000; i++)
			fold(&m, i % 2 ? (i / 2) % 200 : 1000 + (next++, rnd()) % (NKEYS - 1000), 60);
		verify(&m);
	}
	CHECK(m.t.churn.displaced == 100 && m.t.churn.admitted == 300,
	      "%llu displaced, %llu admitted", (unsigned long long)m.t.churn.displaced,
	      (unsigned long long)m.t.churn.admitted);
	for (uint32_t k = 0; k < 200; k++)
		CHECK(find(&m.t, k), "steady key %u has no row", k);
	model_free(&m);
}

/* Rows idle for more than ttl expire at the first sweep after that, into the remainder. */
static void expiry(void)
{
	struct agg_policy pol = {.ttl = 10, .min_residency = 20, .admit_rate = 10, .decay = 10};
	struct model m;

	model_init(&m, 100, pol);
	tick(&m, 1);
	for (uint32_t k = 0; k < 50; k++)
		for (uint32_t i = 0; i <= k; i++)
			fold(&m, k, 100);
	for (uint32_t now = 2; now <= 11; now++) {
		tick(&m, now);
		fold(&m, 0, 100);  /* key 0 stays busy */
		verify(&m);
		CHECK(m.t.nentries == 50, "expired before the ttl at %u", now);
	}
	tick(&m, 12);
	verify(&m);
	CHECK(m.t.nentries == 1 && find(&m.t, 0), "%zu rows after the ttl", m.t.nentries);
	CHECK(m.t.churn.expired == 49, "expired %llu", (unsigned long long)m.t.churn.expired);
	CHECK(m.t.overflow_packets == 50 * 51 / 2 - 1, "remainder %llu",
	      (unsigned long long)m.t.overflow_packets);
	/* A returning key starts from its return. */
	fold(&m, 30, 100);
	verify(&m);
	CHECK(find(&m.t, 30)->packets == 1, "returned key");
	model_free(&m);
}

static void relabel(void)
{
	struct agg_policy pol = {.ttl = 0, .min_residency = 0, .admit_rate = 10, .decay = 10};
	struct model m;
	uint64_t before;

	model_init(&m, 100, pol);
	for (uint32_t i = 0; i < 1000; i++)
		fold(&m, i % 50, 100);
	before = m.t.overflow_packets;
	agg_relabel(&m.t, 1u << F_GID);  /* records have no gid: one key from now on */
	while (m.nheld)
		model_drop(&m, m.held[0]);
	CHECK(m.t.nentries == 0 && m.budget.used == 0, "rows after relabel");
	CHECK(m.t.overflow_packets == before + 1000 - before, "remainder %llu",
	      (unsigned long long)m.t.overflow_packets);
	struct nfd_record r;
	memset(&r, 0, sizeof(r));
	r.ip_len = 10;
	agg_fold(&m.t, &r);
	CHECK(m.t.nentries == 1 && m.t.entries[0].packets == 1, "new key after relabel");
	CHECK(m.t.overflow_packets + 1 == 1001, "sum after relabel");
	agg_destroy(&m.t);
	agg_budget_destroy(&m.budget);
	free(m.present);
	free(m.held);
	free(m.since);
}

/* Memory: a long flood of distinct keys never grows the table past the budget. */
static void long_flood(void)
{
	struct agg_policy pol = {.ttl = 30, .min_residency = 20, .admit_rate = 10, .decay = 10};
	struct agg_table t;
	struct agg_budget b;
	struct nfd_record r;

	agg_budget_init(&b, 1000);
	CHECK(agg_init(&t, 1u << F_UID, (size_t)-1, &b) == 0, "init");
	t.policy = pol;
	memset(&r, 0, sizeof(r));
	r.present = 1u << NFULA_UID;
	r.ip_len = 60;
	for (uint32_t now = 1; now <= 600; now++) {
		uint64_t admitted = t.churn.admitted;
		agg_tick(&t, now);
		for (uint32_t i = 0; i < 20000; i++) {
			r.uid = rnd();
			agg_fold(&t, &r);
		}
		CHECK(t.nentries <= 1000 && t.capacity <= 1024 && t.nslots <= 4096, "grew: %zu/%zu/%zu",
		      t.nentries, t.capacity, t.nslots);
		/* After the first fill, under pressure: at most admit_rate fills + admit_rate displacements. */
		CHECK(now == 1 || t.churn.admitted - admitted <= 2 * pol.admit_rate,
		      "%llu series admitted in second %u", (unsigned long long)(t.churn.admitted - admitted),
		      now);
	}
	CHECK(t.churn.expired > 0, "nothing expired in a 600 s flood with ttl 30");
	CHECK(t.churn.admitted <= 1000 + 600 * pol.admit_rate, "%llu admitted",
	      (unsigned long long)t.churn.admitted);
	printf("long flood: %llu records, %llu admitted, %llu expired, %llu displaced\n",
	       (unsigned long long)t.records, (unsigned long long)t.churn.admitted,
	       (unsigned long long)t.churn.expired, (unsigned long long)t.churn.displaced);
	agg_destroy(&t);
	agg_budget_destroy(&b);
}

/* Pressure: after a flood filled the budget, free places fill at admit_rate per second; once no
 * new key has been refused or kept waiting for AGG_PRESSURE_SECONDS, first come again; a relabel
 * ends it at once. */
static void pressure(void)
{
	struct agg_policy pol = {.ttl = 5, .min_residency = 20, .admit_rate = 10, .decay = 10};
	struct model m;
	uint32_t now = 1;

	model_init(&m, 100, pol);
	tick(&m, now);
	for (uint32_t k = 0; k < 1000; k++)
		fold(&m, 1000 + k, 60);  /* fills the budget, then refused: pressure */
	CHECK(m.t.nentries == 100, "%zu rows", m.t.nentries);
	now += 7;
	tick(&m, now);  /* all expire; the next 200 new keys in one second get 10 places */
	CHECK(m.t.nentries == 0, "%zu rows", m.t.nentries);
	for (uint32_t k = 0; k < 200; k++)
		fold(&m, 5000 + k, 60);
	verify(&m);
	CHECK(m.t.nentries == 10, "%zu rows under pressure", m.t.nentries);
	/* Quiet for AGG_PRESSURE_SECONDS: first come again. */
	now += AGG_PRESSURE_SECONDS + 1;
	tick(&m, now);
	for (uint32_t k = 0; k < 50; k++)
		fold(&m, 8000 + k, 60);
	verify(&m);
	CHECK(m.t.nentries == 50, "%zu rows after the pressure", m.t.nentries);
	for (uint32_t k = 0; k < 1000; k++)
		fold(&m, 9000 + k, 60);  /* full again: pressure */
	agg_relabel(&m.t, 1u << F_UID);  /* same mask, but the table is re-keyed: places are new */
	while (m.nheld)
		model_drop(&m, m.held[0]);
	for (uint32_t k = 0; k < 100; k++)
		fold(&m, 20000 + k, 60);
	verify(&m);
	CHECK(m.t.nentries == 100, "%zu rows after a relabel", m.t.nentries);
	model_free(&m);
}

/* Two groups share a budget of 100: group A's flood holds all of it; group B's steady key (its
 * only traffic) takes a place of A's lightest series once they are old enough. Sums stay exact
 * in both tables. */
static void flood_in_another_group(void)
{
	struct agg_policy pol = {.ttl = 900, .min_residency = AGG_DEFAULT_MIN_RESIDENCY,
				 .admit_rate = AGG_DEFAULT_ADMIT_RATE, .decay = AGG_DEFAULT_DECAY};
	struct agg_budget b;
	struct agg_table a, c;
	struct nfd_record r;
	uint32_t admitted_at = 0;
	uint64_t pa = 0, pc = 0, sum;

	agg_budget_init(&b, 100);
	CHECK(agg_init(&a, 1u << F_UID, (size_t)-1, &b) == 0 && agg_init(&c, 1u << F_UID, (size_t)-1, &b) == 0,
	      "init");
	a.policy = c.policy = pol;
	memset(&r, 0, sizeof(r));
	r.present = 1u << NFULA_UID;
	r.ip_len = 60;
	for (uint32_t now = 1; now <= 60; now++) {
		agg_tick(&a, now);
		agg_tick(&c, now);
		for (uint32_t i = 0; i < 10000; i++) {
			r.uid = 1000 + rnd() % 1000000;
			agg_fold(&a, &r);
			pa++;
			if (now >= 5 && i % 100 == 0) {
				r.uid = 7;
				agg_fold(&c, &r);
				pc++;
			}
		}
		CHECK(b.used == (long)(a.nentries + c.nentries) && b.used <= 100, "used %ld", b.used);
		sum = a.overflow_packets;
		for (size_t i = 0; i < a.nentries; i++)
			sum += a.entries[i].packets;
		CHECK(sum == pa, "group A: %llu != %llu", (unsigned long long)sum, (unsigned long long)pa);
		sum = c.overflow_packets;
		for (size_t i = 0; i < c.nentries; i++)
			sum += c.entries[i].packets;
		CHECK(sum == pc, "group B: %llu != %llu", (unsigned long long)sum, (unsigned long long)pc);
		if (!admitted_at && c.nentries)
			admitted_at = now;
		checks++;
	}
	CHECK(admitted_at && admitted_at - 5 <= pol.min_residency + 10, "B's key at second %u",
	      admitted_at);
	CHECK(c.nentries == 1 && a.nentries == 99 && a.churn.displaced == 1 && c.churn.displaced == 0,
	      "%zu/%zu rows, %llu displaced in A", c.nentries, a.nentries,
	      (unsigned long long)a.churn.displaced);
	printf("flood in another group: steady key from second 5 admitted at second %u\n",
	       admitted_at);
	agg_destroy(&a);
	agg_destroy(&c);
	CHECK(b.used == 0 && b.members == NULL, "budget after destroy");
	agg_budget_destroy(&b);
}

/* Two tables with one hash seed, one folding record by record (agg_fold), the other a batch at a
 * time (agg_ahead_add, flushed at random points as datagrams end, and when full): runs of one key,
 * many keys, prefixes of every length, a full budget displacing, expiry. After every flush both
 * hold the same rows in the same places with the same counts, serials and remainder. */
static void batched_like_one_by_one(void)
{
	char prefixes[NFD_PREFIX_MAX];  /* a key's prefix: its first key % 128 bytes */
	struct agg_policy pol = {.ttl = 1 + rnd() % 6, .min_residency = rnd() % 4,
				 .admit_rate = 1 + rnd() % 20, .decay = 1 + rnd() % 3};
	uint32_t fields = (1u << F_UID) | (1u << F_PREFIX);
	struct agg_budget ba, bb;
	struct agg_table a, b;
	struct agg_ahead ahead = {.t = &b};
	uint32_t now = 0, key = 0, run = 0, limit = 1 + rnd() % 300;

	for (size_t i = 0; i < sizeof(prefixes); i++)
		prefixes[i] = (char)('a' + i % 26);
	agg_budget_init(&ba, limit);
	agg_budget_init(&bb, limit);
	CHECK(agg_init(&a, fields, (size_t)-1, &ba) == 0 && agg_init(&b, fields, (size_t)-1, &bb) == 0,
	      "init");
	b.seed = a.seed;
	a.policy = b.policy = pol;
	a.manual_clock = b.manual_clock = true;
	for (int step = 0; step < 200000; step++) {
		struct nfd_record r;
		if (!run) {  /* the next run: one key, 1 to 40 records long */
			run = 1 + rnd() % 40;
			/* light keys fill the budget first; then heavy ones come and must displace */
			key = step < 20000 || rnd() % 4 ? 20 + rnd() % 2000 : rnd() % 20;
		}
		run--;
		memset(&r, 0, sizeof(r));
		r.present = 1u << NFULA_UID;
		r.uid = key / 128;
		r.prefix = (const uint8_t *)prefixes;
		r.prefix_len = (uint16_t)(key % 128);
		r.ip_len = 40 + key % 1400;
		agg_fold(&a, &r);
		agg_ahead_add(&ahead, &r);
		if (rnd() % 50 == 0 || step == 199999) {  /* a datagram ends */
			agg_ahead_flush(&ahead);
			CHECK(a.records == b.records && a.nentries == b.nentries &&
			      a.overflow_packets == b.overflow_packets &&
			      a.overflow_bytes == b.overflow_bytes &&
			      a.churn.displaced == b.churn.displaced && a.churn.expired == b.churn.expired,
			      "step %d: batched fold differs: %zu/%zu rows, remainder %llu/%llu", step,
			      a.nentries, b.nentries, (unsigned long long)a.overflow_packets,
			      (unsigned long long)b.overflow_packets);
			for (size_t i = 0; i < a.nentries; i++) {
				const struct agg_entry *x = &a.entries[i], *y = &b.entries[i];
				struct agg_key k;
				CHECK(x->tag == y->tag && x->packets == y->packets &&
				      x->bytes == y->bytes && x->recent == y->recent &&
				      x->serial == y->serial &&
				      memcmp(x->ckey, y->ckey, agg_ckey_len(&a.plan, x->ckey)) == 0,
				      "step %d: row %zu differs", step, i);
				agg_ckey_unpack(&b.plan, y->ckey, &k);  /* what readers see: as folded */
				CHECK((k.flags & KEY_HAS_UID) && k.prefix_len < 128 &&
				      memcmp(k.prefix, prefixes, k.prefix_len) == 0,
				      "step %d: row %zu unpacks to uid %u, prefix of %u bytes", step, i,
				      k.uid, k.prefix_len);
			}
			checks++;
			if (rnd() % 20 == 0) {
				now += rnd() % 3;
				agg_tick(&a, now);
				agg_tick(&b, now);
			}
		}
	}
	batched_displaced += a.churn.displaced;
	agg_destroy(&a);
	agg_destroy(&b);
	agg_budget_destroy(&ba);
	agg_budget_destroy(&bb);
}

int main(int argc, char **argv)
{
	rng_state = argc > 1 ? strtoull(argv[1], NULL, 10) * 2654435761u + 1 : 1;
	for (int i = 0; i < 60; i++)
		random_ops();
	CHECK(random_displaced > 100 && random_expired > 100, "random operations displaced %llu, "
	      "expired %llu", random_displaced, random_expired);
	printf("random operations: %llu displaced, %llu expired\n", random_displaced, random_expired);
	expiry();
	relabel();
	flood_with_steady_key(1000, 5, 60);    /* residents too young until second 21 */
	flood_with_steady_key(20000, 5, 40);
	flood_with_steady_key(20000, 60, 80);  /* residents old enough: at once */
	flood_with_steady_key(200, 30, 80);    /* 2 records/s */
	heavy_residents_stay();
	pressure();
	flood_in_another_group();
	long_flood();
	for (int i = 0; i < 5; i++)
		batched_like_one_by_one();
	CHECK(batched_displaced > 0, "the batched fold was never tried under displacement");
	printf("ok %llu checks\n", checks);
	return 0;
}
