/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "netmatch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void load(int family, const uint8_t *addr, uint64_t *hi, uint64_t *lo)
{
	unsigned n = family == 4 ? 4 : 16;
	uint8_t b[16] = {0};
	memcpy(b, addr, n);
	*hi = *lo = 0;
	for (int i = 0; i < 8; i++) {
		*hi = (*hi << 8) | b[i];
		*lo = (*lo << 8) | b[8 + i];
	}
}

static void mask(uint64_t *hi, uint64_t *lo, unsigned len)
{
	if (len == 0) {
		*hi = *lo = 0;
	} else if (len < 64) {
		*hi &= ~0ull << (64 - len);
		*lo = 0;
	} else if (len == 64) {
		*lo = 0;
	} else if (len < 128) {
		*lo &= ~0ull << (128 - len);
	}
}

void nfd_mask_addr(uint8_t *addr, int family, unsigned len)
{
	unsigned bytes = family == 4 ? 4 : 16;
	for (unsigned i = 0; i < bytes; i++) {
		unsigned bit = i * 8;
		if (bit >= len)
			addr[i] = 0;
		else if (bit + 8 > len)
			addr[i] &= (uint8_t)(0xff << (8 - (len - bit)));
	}
}

static int cmp_prefix(const void *a, const void *b)
{
	const struct nfd_prefix *x = a, *y = b;
	if (x->hi != y->hi)
		return x->hi < y->hi ? -1 : 1;
	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;  /* stable: the first given wins */
}

void nfd_nets_free(struct nfd_nets *nets)
{
	struct nfd_family_nets *fams[2] = {&nets->v4, &nets->v6};
	for (int f = 0; f < 2; f++) {
		for (size_t i = 0; i < fams[f]->nlens; i++)
			free(fams[f]->lens[i].v);
		fams[f]->nlens = 0;
	}
}

static int build_family(struct nfd_family_nets *fam, int family, const struct nfd_net_spec *specs,
			size_t n)
{
	unsigned maxlen = family == 4 ? 32 : 128;
	size_t count[129] = {0};

	for (size_t i = 0; i < n; i++)
		if (specs[i].family == family)
			count[specs[i].len]++;
	for (int len = (int)maxlen; len >= 0; len--) {
		if (!count[len])
			continue;
		struct nfd_len_table *t = &fam->lens[fam->nlens++];
		t->len = (uint8_t)len;
		t->v = malloc(count[len] * sizeof(*t->v));
		if (!t->v)
			return -ENOMEM;
		t->n = 0;
		for (size_t i = 0; i < n; i++) {
			if (specs[i].family != family || specs[i].len != len)
				continue;
			struct nfd_prefix *p = &t->v[t->n++];
			load(family, specs[i].addr, &p->hi, &p->lo);
			if (family == 4)  /* IPv4 occupies the top 32 bits of hi */
				p->hi &= 0xffffffff00000000ull;
			mask(&p->hi, &p->lo, (unsigned)len);
			p->index = specs[i].index;
		}
		qsort(t->v, t->n, sizeof(*t->v), cmp_prefix);
		/* Duplicates: keep the first (lowest index) of each prefix. */
		size_t w = 0;
		for (size_t i = 0; i < t->n; i++)
			if (!w || t->v[w - 1].hi != t->v[i].hi || t->v[w - 1].lo != t->v[i].lo)
				t->v[w++] = t->v[i];
		t->n = w;
	}
	return 0;
}

int nfd_nets_build(struct nfd_nets *nets, const struct nfd_net_spec *specs, size_t n)
{
	memset(nets, 0, sizeof(*nets));
	for (size_t i = 0; i < n; i++)
		if (!((specs[i].family == 4 && specs[i].len <= 32) ||
		      (specs[i].family == 6 && specs[i].len <= 128)) || specs[i].index == 0)
			return -EINVAL;
	int r = build_family(&nets->v4, 4, specs, n);
	if (r == 0)
		r = build_family(&nets->v6, 6, specs, n);
	if (r < 0)
		nfd_nets_free(nets);
	return r;
}

uint32_t nfd_nets_lookup(const struct nfd_nets *nets, int family, const uint8_t *addr)
{
	const struct nfd_family_nets *fam = family == 4 ? &nets->v4 : &nets->v6;
	uint64_t hi, lo;

	if (family != 4 && family != 6)
		return 0;
	load(family, addr, &hi, &lo);
	for (size_t i = 0; i < fam->nlens; i++) {  /* longest length first: the first hit wins */
		const struct nfd_len_table *t = &fam->lens[i];
		uint64_t mh = hi, ml = lo;
		mask(&mh, &ml, t->len);
		size_t a = 0, b = t->n;
		while (a < b) {
			size_t m = a + (b - a) / 2;
			const struct nfd_prefix *p = &t->v[m];
			if (p->hi == mh && p->lo == ml)
				return p->index;
			if (p->hi < mh || (p->hi == mh && p->lo < ml))
				a = m + 1;
			else
				b = m;
		}
	}
	return 0;
}
