/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "exposition.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static uint64_t text_hash(const char *s, size_t n)
{
	uint64_t h = 0x84222325cbf29ce4ull ^ n, w;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		memcpy(&w, s + i, 8);
		h = (h ^ w) * 0x9e3779b97f4a7c15ull;
		h ^= h >> 29;
	}
	if (i < n) {
		w = 0;
		memcpy(&w, s + i, n - i);
		h = (h ^ w) * 0x9e3779b97f4a7c15ull;
		h ^= h >> 29;
	}
	return h;
}

static inline uint64_t serial_hash(uint64_t x)
{
	x *= 0x9e3779b97f4a7c15ull;
	return x ^ (x >> 31);
}

void expo_init(struct expo *e)
{
	memset(e, 0, sizeof(*e));
}

void expo_reset(struct expo *e)
{
	for (uint32_t i = 0; i < e->nlabels; i++)
		free(e->labels[i].text);
	e->nlabels = e->nfree = e->ninterned = e->norder = 0;
	if (e->intern)
		memset(e->intern, 0, e->intern_slots * sizeof(*e->intern));
}

void expo_destroy(struct expo *e)
{
	expo_reset(e);
	free(e->labels);
	free(e->free);
	free(e->intern);
	free(e->order);
	memset(e, 0, sizeof(*e));
}

void expo_begin(struct expo *e)
{
	e->render++;
	if (e->render == 0)  /* wrapped: 0 means "never added to" */
		e->render = 1;
	e->norder = 0;
}

static void intern_place(uint32_t *slots, uint32_t nslots, uint64_t hash, uint32_t idx)
{
	uint32_t mask = nslots - 1, j = (uint32_t)hash & mask;
	while (slots[j])
		j = (j + 1) & mask;
	slots[j] = idx + 1;
}

/* Rebuild the text index over the live labels, at `nslots` (a power of two). */
static int intern_rebuild(struct expo *e, uint32_t nslots)
{
	uint32_t *slots = calloc(nslots, sizeof(*slots));
	if (!slots)
		return -1;
	for (uint32_t i = 0; i < e->nlabels; i++)
		if (e->labels[i].text)
			intern_place(slots, nslots, e->labels[i].hash, i);
	free(e->intern);
	e->intern = slots;
	e->intern_slots = nslots;
	return 0;
}

uint32_t expo_intern(struct expo *e, const char *text, size_t len)
{
	uint64_t h = text_hash(text, len);
	uint32_t mask, j, idx;

	if (e->intern_slots) {
		mask = e->intern_slots - 1;
		for (j = (uint32_t)h & mask; e->intern[j]; j = (j + 1) & mask) {
			struct expo_label *l = &e->labels[e->intern[j] - 1];
			if (l->hash == h && l->len == len && memcmp(l->text, text, len) == 0)
				return e->intern[j] - 1;
		}
	}
	/* New: keep the index at most half full, then take a free slot or a new one. */
	if ((e->ninterned + 1) * 2 > e->intern_slots &&
	    intern_rebuild(e, e->intern_slots ? e->intern_slots * 2 : 1024) < 0)
		return EXPO_NONE;
	if (!e->nfree && e->nlabels == e->cap) {
		uint32_t cap = e->cap ? e->cap * 2 : 1024;
		struct expo_label *l = realloc(e->labels, cap * sizeof(*l));
		uint32_t *fr = l ? realloc(e->free, cap * sizeof(*fr)) : NULL;
		if (l)
			e->labels = l;
		if (!fr)
			return EXPO_NONE;
		e->free = fr;
		e->cap = cap;
	}
	char *copy = malloc(len ? len : 1);
	if (!copy)
		return EXPO_NONE;
	memcpy(copy, text, len);
	idx = e->nfree ? e->free[--e->nfree] : e->nlabels++;
	e->labels[idx] = (struct expo_label){.text = copy, .len = len, .hash = h};
	e->ninterned++;
	intern_place(e->intern, e->intern_slots, h, idx);
	return idx;
}

int expo_add(struct expo *e, uint32_t label, uint64_t packets, uint64_t bytes)
{
	struct expo_label *l = &e->labels[label];
	if (l->render != e->render) {
		if (e->norder == e->order_cap) {
			uint32_t cap = e->order_cap ? e->order_cap * 2 : 1024;
			uint32_t *o = realloc(e->order, cap * sizeof(*o));
			if (!o)
				return -1;
			e->order = o;
			e->order_cap = cap;
		}
		l->render = e->render;
		l->packets = l->bytes = 0;
		e->order[e->norder++] = label;
	}
	l->packets += packets;
	l->bytes += bytes;
	return 0;
}

void expo_sweep(struct expo *e)
{
	bool freed = false;
	for (uint32_t i = 0; i < e->nlabels; i++) {
		struct expo_label *l = &e->labels[i];
		if (l->text && l->render != e->render) {
			free(l->text);
			l->text = NULL;
			e->free[e->nfree++] = i;
			e->ninterned--;
			freed = true;
		}
	}
	if (freed && e->intern_slots)
		intern_rebuild(e, e->intern_slots);  /* on failure the old index only has stale hits */
}

/* Decimal digits of v written at p; returns the count. */
static size_t put_u64(char *p, uint64_t v)
{
	char tmp[20];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

size_t expo_size(const struct expo *e, size_t packets_head, size_t packets_name,
		 size_t bytes_head, size_t bytes_name)
{
	size_t n = packets_head + bytes_head;
	for (uint32_t i = 0; i < e->norder; i++)
		n += 2 * (e->labels[e->order[i]].len + 22);  /* " " + up to 20 digits + "\n" */
	return n + e->norder * (packets_name + bytes_name);
}

static size_t write_family(const struct expo *e, char *out, const char *head, size_t head_len,
			   const char *name, size_t name_len, bool packets)
{
	char *p = out;
	memcpy(p, head, head_len);
	p += head_len;
	for (uint32_t i = 0; i < e->norder; i++) {
		const struct expo_label *l = &e->labels[e->order[i]];
		memcpy(p, name, name_len);
		p += name_len;
		memcpy(p, l->text, l->len);
		p += l->len;
		*p++ = ' ';
		p += put_u64(p, packets ? l->packets : l->bytes);
		*p++ = '\n';
	}
	return (size_t)(p - out);
}

size_t expo_write(const struct expo *e, char *out,
		  const char *packets_head, size_t packets_head_len,
		  const char *packets_name, size_t packets_name_len,
		  const char *bytes_head, size_t bytes_head_len,
		  const char *bytes_name, size_t bytes_name_len)
{
	size_t n = write_family(e, out, packets_head, packets_head_len, packets_name,
				packets_name_len, true);
	return n + write_family(e, out + n, bytes_head, bytes_head_len, bytes_name, bytes_name_len,
				false);
}

void keymap_init(struct expo_keymap *m)
{
	memset(m, 0, sizeof(*m));
}

void keymap_destroy(struct expo_keymap *m)
{
	free(m->serials);
	free(m->labels);
	memset(m, 0, sizeof(*m));
}

int keymap_reserve(struct expo_keymap *m, uint32_t n)
{
	uint32_t slots = 64;
	if (n > (1u << 30))
		return -1;
	while (slots < 2 * (uint64_t)n)
		slots *= 2;
	if (slots <= m->slots)
		return 0;
	uint64_t *s = calloc(slots, sizeof(*s));
	uint32_t *l = malloc(slots * sizeof(*l));
	if (!s || !l) {
		free(s);
		free(l);
		return -1;
	}
	for (uint32_t i = 0; i < m->slots; i++) {
		if (!m->serials[i])
			continue;
		uint32_t j = (uint32_t)serial_hash(m->serials[i]) & (slots - 1);
		while (s[j])
			j = (j + 1) & (slots - 1);
		s[j] = m->serials[i];
		l[j] = m->labels[i];
	}
	free(m->serials);
	free(m->labels);
	m->serials = s;
	m->labels = l;
	m->slots = slots;
	return 0;
}

uint32_t keymap_get(const struct expo_keymap *m, uint64_t serial)
{
	if (!m->slots)
		return EXPO_NONE;
	uint32_t mask = m->slots - 1;
	for (uint32_t j = (uint32_t)serial_hash(serial) & mask; m->serials[j]; j = (j + 1) & mask)
		if (m->serials[j] == serial)
			return m->labels[j];
	return EXPO_NONE;
}

void keymap_put(struct expo_keymap *m, uint64_t serial, uint32_t label)
{
	uint32_t mask = m->slots - 1, j = (uint32_t)serial_hash(serial) & mask;
	while (m->serials[j] && m->serials[j] != serial)
		j = (j + 1) & mask;
	if (!m->serials[j])
		m->n++;
	m->serials[j] = serial;
	m->labels[j] = label;
}
