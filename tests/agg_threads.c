/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The series budget's locking, built by tests/test_agg_budget.py with -fsanitize=thread: four
 * tables share one budget, each filled by its own thread (a random flood in table 0, two heavy
 * keys in each other table, which must displace table 0's series), while a reader copies every table under its
 * lock as a scrape does. The reader checks that each table's sum never decreases and never
 * exceeds what its thread folded; at the end every sum is exact and the budget's count is right.
 *
 * usage: agg_threads SEED    prints "ok ..." and exits 0, or aborts. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "agg_table.h"
#include "check.h"

#define NTABLES 4
#define RECORDS 1500000u
#define PER_SECOND 15000u

static struct agg_budget budget;
static struct agg_table tables[NTABLES];
static uint64_t folded[NTABLES];  /* atomic: records folded by each thread */
static int done;                  /* atomic */
static unsigned long long seed;

static void *writer(void *arg)
{
	size_t n = (size_t)(uintptr_t)arg;
	struct agg_table *t = &tables[n];
	struct nfd_record r;
	uint64_t x = seed * 2654435761u + n + 1;

	memset(&r, 0, sizeof(r));
	r.present = 1u << NFULA_UID;
	r.ip_len = 60;
	for (uint32_t i = 0; i < RECORDS; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		/* Table 0 is all flood. The others have one heavy key from the start (a free place, or
		 * one of table 0's if the flood was first) and a steady key at 5 % from second 5, when
		 * the flood holds the rest of the budget: it must take a place of table 0's (its own
		 * key is too heavy to give up). */
		if (n)
			r.uid = i % 20 == 0 && i >= 5 * PER_SECOND ? 7 : 8;
		else
			r.uid = 1000 + (uint32_t)(x % 10000000);
		pthread_mutex_lock(&t->lock);
		if (i % PER_SECOND == 0)
			agg_tick(t, i / PER_SECOND + 1);
		agg_fold(t, &r);
		__atomic_store_n(&folded[n], i + 1, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&t->lock);
	}
	return NULL;
}

static uint64_t table_sum(struct agg_table *t)
{
	uint64_t s = t->overflow_packets;
	for (size_t i = 0; i < t->nentries; i++)
		s += t->entries[i].packets;
	return s;
}

static void *reader(void *arg)
{
	uint64_t last[NTABLES] = {0}, reads = 0;
	(void)arg;
	while (!__atomic_load_n(&done, __ATOMIC_ACQUIRE)) {
		for (size_t n = 0; n < NTABLES; n++) {
			uint64_t before = __atomic_load_n(&folded[n], __ATOMIC_ACQUIRE), sum, after;
			pthread_mutex_lock(&tables[n].lock);
			sum = table_sum(&tables[n]);
			pthread_mutex_unlock(&tables[n].lock);
			after = __atomic_load_n(&folded[n], __ATOMIC_ACQUIRE);
			CHECK(sum >= last[n] && sum >= before && sum <= after,
			      "table %zu: sum %llu (last %llu) outside folded %llu..%llu", n,
			      (unsigned long long)sum, (unsigned long long)last[n],
			      (unsigned long long)before, (unsigned long long)after);
			last[n] = sum;
			reads++;
		}
	}
	printf("reader: %llu copies checked\n", (unsigned long long)reads);
	return NULL;
}

int main(int argc, char **argv)
{
	struct agg_policy pol = {.ttl = 30, .min_residency = 20, .admit_rate = 10, .decay = 10};
	pthread_t w[NTABLES], rd;
	uint64_t displaced = 0;
	long held = 0;

	seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
	agg_budget_init(&budget, 64);
	for (size_t n = 0; n < NTABLES; n++) {
		CHECK(agg_init(&tables[n], 1u << F_UID, (size_t)-1, &budget) == 0, "init");
		tables[n].policy = pol;
		tables[n].manual_clock = true;
	}
	pthread_create(&rd, NULL, reader, NULL);
	for (size_t n = 0; n < NTABLES; n++)
		pthread_create(&w[n], NULL, writer, (void *)(uintptr_t)n);
	for (size_t n = 0; n < NTABLES; n++)
		pthread_join(w[n], NULL);
	__atomic_store_n(&done, 1, __ATOMIC_RELEASE);
	pthread_join(rd, NULL);
	for (size_t n = 0; n < NTABLES; n++) {
		CHECK(table_sum(&tables[n]) == RECORDS, "table %zu: %llu of %u", n,
		      (unsigned long long)table_sum(&tables[n]), RECORDS);
		held += (long)tables[n].nentries;
		displaced += tables[n].churn.displaced;
	}
	CHECK(held == budget.used && held <= 64, "held %ld, used %ld", held, budget.used);
	for (size_t n = 1; n < NTABLES; n++) {
		CHECK(tables[n].nentries == 2 && tables[n].churn.displaced == 0,
		      "table %zu: %zu rows, %llu displaced", n, tables[n].nentries,
		      (unsigned long long)tables[n].churn.displaced);
		struct agg_key k0, k1;
		agg_ckey_unpack(&tables[n].plan, tables[n].entries[0].ckey, &k0);
		agg_ckey_unpack(&tables[n].plan, tables[n].entries[1].ckey, &k1);
		CHECK(k0.uid + k1.uid == 15, "table %zu: keys %u and %u", n, k0.uid, k1.uid);
	}
	CHECK(displaced >= NTABLES - 1 && displaced <= 2 * (NTABLES - 1),
	      "%llu displacements in all", (unsigned long long)displaced);
	for (size_t n = 0; n < NTABLES; n++)
		agg_destroy(&tables[n]);
	CHECK(budget.used == 0 && budget.members == NULL, "budget after destroy");
	agg_budget_destroy(&budget);
	printf("ok %llu displacements across %d tables\n", (unsigned long long)displaced, NTABLES);
	return 0;
}
