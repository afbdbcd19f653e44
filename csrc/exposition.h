/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The record counters as Prometheus text, written in C: a scrape of 100k series must take
 * milliseconds, which building a Python string per series cannot do.
 *
 * Label strings (`{group="5",prefix="x"}`) are built once per key by the caller (in Python: the one
 * table of labels decides how a value renders) and interned here; a per-table key map remembers
 * which interned label each table entry (by its serial, see agg_table.h) maps to, so later scrapes
 * only add numbers. Keys that render to the same label string share one series: their counts are
 * summed. Pure C, no Python; the caller serialises calls. */
#ifndef NFLOGD_EXPOSITION_H
#define NFLOGD_EXPOSITION_H

#include <stddef.h>
#include <stdint.h>

#define EXPO_NONE UINT32_MAX

/* One interned label string and this render's sums for it. */
struct expo_label {
	char *text;               /* NULL: a free slot */
	size_t len;
	uint64_t hash;
	uint64_t packets, bytes;
	uint32_t render;          /* the render that last added to it */
};

/* Every label string in use, deduplicated, with stable indexes. */
struct expo {
	struct expo_label *labels;
	uint32_t nlabels, cap;    /* slots used (live or free) and allocated */
	uint32_t *free;           /* free slot indexes */
	uint32_t nfree;
	uint32_t *intern;         /* open addressing on text: label index + 1; 0 = empty */
	uint32_t ninterned, intern_slots;
	uint32_t *order;          /* labels added to in this render, first addition first */
	uint32_t norder, order_cap;
	uint32_t render;
};

/* serial -> label index, for one table: rebuilt by every render from the previous one. */
struct expo_keymap {
	uint64_t *serials;        /* 0 = empty (serials start at 1) */
	uint32_t *labels;
	uint32_t n, slots;        /* slots: 0 or a power of two */
};

void expo_init(struct expo *e);
void expo_destroy(struct expo *e);
/* Forget every label (names or configuration changed). */
void expo_reset(struct expo *e);

/* Start a render: sums restart at zero. */
void expo_begin(struct expo *e);
/* The index of this label text, interned if new; EXPO_NONE when out of memory. */
uint32_t expo_intern(struct expo *e, const char *text, size_t len);
/* Add counts to a label in this render; -1 when out of memory. */
int expo_add(struct expo *e, uint32_t label, uint64_t packets, uint64_t bytes);
/* End a render: frees the labels it did not add to (their keys are gone). */
void expo_sweep(struct expo *e);

/* Bytes expo_write needs for this render's series under these two sample names and heads. */
size_t expo_size(const struct expo *e, size_t packets_head, size_t packets_name,
		 size_t bytes_head, size_t bytes_name);
/* Writes both families (head, then one line per series) into out; returns the bytes written. */
size_t expo_write(const struct expo *e, char *out,
		  const char *packets_head, size_t packets_head_len,
		  const char *packets_name, size_t packets_name_len,
		  const char *bytes_head, size_t bytes_head_len,
		  const char *bytes_name, size_t bytes_name_len);

void keymap_init(struct expo_keymap *m);
void keymap_destroy(struct expo_keymap *m);
/* Room for n keys without growing; -1 when out of memory. */
int keymap_reserve(struct expo_keymap *m, uint32_t n);
uint32_t keymap_get(const struct expo_keymap *m, uint64_t serial);
/* The caller reserved room first. */
void keymap_put(struct expo_keymap *m, uint64_t serial, uint32_t label);

#endif
