/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Counts and CounterRenderer: an Aggregator's counters frozen in one copy, and the record counters
 * of several such copies written as Prometheus text by exposition.c, each key's label string built
 * by a Python callable once while the key lives. Nothing here builds a Python object per series
 * except for a key seen for the first time. */
#include "py_ext.h"
#include "exposition.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* ---- Counts ------------------------------------------------------------------------------- */

struct count_item {
	uint64_t serial, packets, bytes;
	size_t key_off;           /* the packed key (key_pack) at keys + key_off */
};

/* Room for a packed key (agg_ckey_len), rounded to 8 bytes so the next one stays aligned. */
static size_t key_room(const struct agg_ckey_plan *pl, const uint8_t *ck)
{
	return (agg_ckey_len(pl, ck) + 7u) & ~(size_t)7u;
}

typedef struct {
	PyObject_HEAD
	PyObject *agg;            /* the Aggregator copied: the renderer's cache key */
	int order[F_NFIELDS];     /* its field order when copied (keys are read in it) */
	int nfields;
	struct agg_ckey_plan plan;  /* the keys were packed by it */
	struct count_item *items;
	size_t n;
	char *keys;
	uint64_t overflow_packets, overflow_bytes;
} CountsObject;

/* Under the table lock, without the GIL: sizes first, so each buffer is allocated once. */
static int copy_table(struct agg_table *t, CountsObject *c)
{
	size_t keys_len = 0;
	int ok = 0;
	pthread_mutex_lock(&t->lock);
	aggregator_order(c->agg, c->order, &c->nfields);  /* a relabel may change it, under the lock */
	c->n = t->nentries;
	c->plan = t->plan;
	c->overflow_packets = t->overflow_packets;
	c->overflow_bytes = t->overflow_bytes;
	for (size_t i = 0; i < c->n; i++)
		keys_len += key_room(&c->plan, t->entries[i].ckey);
	c->items = malloc((c->n ? c->n : 1) * sizeof(*c->items));
	c->keys = malloc(keys_len ? keys_len : 1);
	if (c->items && c->keys) {
		size_t off = 0;
		for (size_t i = 0; i < c->n; i++) {
			const struct agg_entry *e = &t->entries[i];
			c->items[i] = (struct count_item){.serial = e->serial, .packets = e->packets,
							  .bytes = e->bytes, .key_off = off};
			memcpy(c->keys + off, e->ckey, agg_ckey_len(&c->plan, e->ckey));
			off += key_room(&c->plan, e->ckey);
		}
		ok = 1;
	}
	pthread_mutex_unlock(&t->lock);
	return ok ? 0 : -1;
}

/* 0, or -1 with RuntimeError for a Counts made by __new__ alone. */
static int counts_ready(const CountsObject *c)
{
	if (c->agg)
		return 0;
	PyErr_SetString(PyExc_RuntimeError, "Counts.__init__ was not called");
	return -1;
}

PyObject *counts_of(PyObject *agg)
{
	int failed;
	CountsObject *c = (CountsObject *)CountsType.tp_alloc(&CountsType, 0);  /* zeroed */
	if (!c)
		return NULL;
	Py_INCREF(agg);
	c->agg = agg;
	Py_BEGIN_ALLOW_THREADS
	failed = copy_table(aggregator_table(agg), c) < 0;
	Py_END_ALLOW_THREADS
	if (failed) {
		Py_DECREF(c);
		return PyErr_NoMemory();
	}
	return (PyObject *)c;
}

static void counts_dealloc(CountsObject *self)
{
	free(self->items);
	free(self->keys);
	Py_XDECREF(self->agg);
	SELF_FREE(self);
}

/* Item i's key as snapshot() has it. */
static PyObject *counts_key(const CountsObject *c, size_t i)
{
	struct agg_key k;
	agg_ckey_unpack(&c->plan, (const uint8_t *)c->keys + c->items[i].key_off, &k);
	return aggregator_key_tuple(c->agg, c->order, c->nfields, &k);
}

PyDoc_STRVAR(rows_doc,
"rows($self, /)\n--\n\n"
"The counters as Aggregator.snapshot() lists them: (key, packets, bytes) per key.");

static PyObject *counts_rows(CountsObject *self, PyObject *unused)
{
	(void)unused;
	if (counts_ready(self) < 0)
		return NULL;
	PyObject *list = PyList_New((Py_ssize_t)self->n);
	for (size_t i = 0; list && i < self->n; i++) {
		PyObject *key = counts_key(self, i);
		PyObject *r = key ? Py_BuildValue("(NKK)", key,
						  (unsigned long long)self->items[i].packets,
						  (unsigned long long)self->items[i].bytes) : NULL;
		if (!r) {
			Py_CLEAR(list);
			break;
		}
		PyList_SET_ITEM(list, (Py_ssize_t)i, r);
	}
	return list;
}

static Py_ssize_t counts_len(CountsObject *self)
{
	return (Py_ssize_t)self->n;
}

static PyObject *counts_get_overflow(CountsObject *self, void *c)
{
	(void)c;
	return Py_BuildValue("(KK)", (unsigned long long)self->overflow_packets,
			     (unsigned long long)self->overflow_bytes);
}

static PyObject *counts_get_fields(CountsObject *self, void *c)
{
	(void)c;
	PyObject *t = PyTuple_New(self->nfields);
	for (int i = 0; t && i < self->nfields; i++) {
		PyObject *name = PyUnicode_FromString(agg_field_names[self->order[i]]);
		if (!name) {
			Py_CLEAR(t);
			break;
		}
		PyTuple_SET_ITEM(t, i, name);
	}
	return t;
}

static PyObject *counts_get_sum(CountsObject *self, void *c)
{
	unsigned long long packets = 0, bytes = 0;
	(void)c;
	for (size_t i = 0; i < self->n; i++) {
		packets += self->items[i].packets;
		bytes += self->items[i].bytes;
	}
	return Py_BuildValue("(KK)", packets, bytes);
}

static PyObject *counts_get_aggregator(CountsObject *self, void *c)
{
	(void)c;
	if (counts_ready(self) < 0)
		return NULL;
	Py_INCREF(self->agg);
	return self->agg;
}

static PyMethodDef counts_methods[] = {
	{"rows", (PyCFunction)counts_rows, METH_NOARGS, rows_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef counts_getset[] = {
	{"overflow", (getter)counts_get_overflow, NULL,
	 PyDoc_STR("(packets, bytes) of the aggregator's overflow when copied."), NULL},
	{"fields", (getter)counts_get_fields, NULL,
	 PyDoc_STR("The key fields, in the order the keys were copied in."), NULL},
	{"sum", (getter)counts_get_sum, NULL,
	 PyDoc_STR("(packets, bytes) over every key (overflow not included)."), NULL},
	{"aggregator", (getter)counts_get_aggregator, NULL,
	 PyDoc_STR("The Aggregator these counts were copied from."), NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods counts_as_sequence = {.sq_length = (lenfunc)counts_len};

static int counts_init(CountsObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"aggregator", NULL};
	PyObject *agg;
	int failed;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O!:Counts", kwlist, &AggregatorType, &agg) ||
	    aggregator_check_ready(agg) < 0)
		return -1;
	if (self->agg) {
		PyErr_SetString(PyExc_RuntimeError, "Counts is already initialised");
		return -1;
	}
	Py_INCREF(agg);
	self->agg = agg;
	Py_BEGIN_ALLOW_THREADS
	failed = copy_table(aggregator_table(agg), self) < 0;
	Py_END_ALLOW_THREADS
	if (failed) {
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

PyDoc_STRVAR(counts_type_doc,
"Counts(aggregator)\n--\n\n"
"An Aggregator's counters frozen at one instant (also Aggregator.counts()): len() keys, fields,\n"
"overflow, sum, rows(). CounterRenderer renders it without a Python object per key.");

PyTypeObject CountsType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "nflogd.nflog.Counts",
	.tp_basicsize = sizeof(CountsObject),
	.tp_dealloc = (destructor)counts_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = counts_type_doc,
	.tp_init = (initproc)counts_init,
	.tp_new = PyType_GenericNew,
	.tp_methods = counts_methods,
	.tp_getset = counts_getset,
	.tp_as_sequence = &counts_as_sequence,
};

/* ---- CounterRenderer ---------------------------------------------------------------------- */

/* The keys of one aggregator's entries as the renderer last saw them. Holding the aggregator keeps
 * its address from being reused by another one while the map still names its serials. */
struct render_cache {
	PyObject *agg;
	struct expo_keymap map;
	int used;
};

typedef struct {
	PyObject_HEAD
	pthread_mutex_t lock;        /* one render at a time; taken without the GIL */
	struct expo e;
	PyObject *tag;
	struct render_cache *caches;
	Py_ssize_t ncaches, cap;
} RendererObject;

static int renderer_init(RendererObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {NULL};
	if (!PyArg_ParseTupleAndKeywords(args, kw, ":CounterRenderer", kwlist))
		return -1;
	if (self->tag) {
		PyErr_SetString(PyExc_RuntimeError, "CounterRenderer is already initialised");
		return -1;
	}
	pthread_mutex_init(&self->lock, NULL);
	expo_init(&self->e);
	Py_INCREF(Py_None);
	self->tag = Py_None;
	return 0;
}

static void renderer_drop_cache(struct render_cache *c)
{
	keymap_destroy(&c->map);
	Py_CLEAR(c->agg);
}

static void renderer_dealloc(RendererObject *self)
{
	for (Py_ssize_t i = 0; i < self->ncaches; i++)
		renderer_drop_cache(&self->caches[i]);
	free(self->caches);
	if (self->tag) {
		expo_destroy(&self->e);
		pthread_mutex_destroy(&self->lock);
	}
	Py_XDECREF(self->tag);
	SELF_FREE(self);
}

static struct render_cache *renderer_cache_for(RendererObject *self, PyObject *agg)
{
	for (Py_ssize_t i = 0; i < self->ncaches; i++)
		if (self->caches[i].agg == agg)
			return &self->caches[i];
	if (self->ncaches == self->cap) {
		Py_ssize_t cap = self->cap ? self->cap * 2 : 8;
		struct render_cache *c = realloc(self->caches, (size_t)cap * sizeof(*c));
		if (!c)
			return NULL;
		self->caches = c;
		self->cap = cap;
	}
	struct render_cache *c = &self->caches[self->ncaches++];
	Py_INCREF(agg);
	c->agg = agg;
	keymap_init(&c->map);
	c->used = 0;
	return c;
}

/* The interned label of a new key: labels(key) -> str, built by Python once per key. */
static uint32_t label_of_key(RendererObject *self, const CountsObject *c, size_t i,
			     PyObject *labels)
{
	PyObject *key = counts_key(c, i);
	if (!key)
		return EXPO_NONE;
	PyObject *s = PyObject_CallOneArg(labels, key);
	Py_DECREF(key);
	if (!s)
		return EXPO_NONE;
	uint32_t idx = EXPO_NONE;
	Py_ssize_t len;
	const char *text = PyUnicode_Check(s) ? PyUnicode_AsUTF8AndSize(s, &len) : NULL;
	if (!text && !PyErr_Occurred())
		PyErr_Format(PyExc_TypeError, "labels() must return str, not %.100s",
			     Py_TYPE(s)->tp_name);
	if (text && (idx = expo_intern(&self->e, text, (size_t)len)) == EXPO_NONE)
		PyErr_NoMemory();
	Py_DECREF(s);
	return idx;
}

/* The overflow series of a part, when it has records. */
static int add_overflow(RendererObject *self, PyObject *overflow, uint64_t packets, uint64_t bytes)
{
	Py_ssize_t len;
	if (!packets || overflow == Py_None)
		return 0;
	const char *text = PyUnicode_AsUTF8AndSize(overflow, &len);
	uint32_t idx = text ? expo_intern(&self->e, text, (size_t)len) : EXPO_NONE;
	if (idx == EXPO_NONE || expo_add(&self->e, idx, packets, bytes) < 0) {
		if (!PyErr_Occurred())
			PyErr_NoMemory();
		return -1;
	}
	return 0;
}

/* A part whose counts are Python rows (key, packets, bytes), e.g. a snapshot made by hand: with no
 * entry serials to cache by, every row's label string is built again. Its overflow is the part's
 * optional fourth item, (packets, bytes). */
static int render_rows(RendererObject *self, PyObject *rows, PyObject *labels)
{
	PyObject *it = PyObject_GetIter(rows), *row;
	if (!it)
		return -1;
	while ((row = PyIter_Next(it))) {
		PyObject *key, *s;
		unsigned long long packets, bytes;
		int ok = PyArg_ParseTuple(row, "OKK;a row is (key, packets, bytes)", &key, &packets,
					  &bytes);
		s = ok ? PyObject_CallOneArg(labels, key) : NULL;
		Py_DECREF(row);
		if (!s)
			break;
		Py_ssize_t len;
		const char *text = PyUnicode_Check(s) ? PyUnicode_AsUTF8AndSize(s, &len) : NULL;
		uint32_t idx = text ? expo_intern(&self->e, text, (size_t)len) : EXPO_NONE;
		if (!text && !PyErr_Occurred())
			PyErr_Format(PyExc_TypeError, "labels() must return str, not %.100s",
				     Py_TYPE(s)->tp_name);
		Py_DECREF(s);
		if (idx == EXPO_NONE || expo_add(&self->e, idx, packets, bytes) < 0) {
			if (!PyErr_Occurred())
				PyErr_NoMemory();
			break;
		}
	}
	Py_DECREF(it);
	return PyErr_Occurred() ? -1 : 0;
}

/* One part: (counts or aggregator or rows, labels, overflow_labels[, overflow]). */
static int render_part(RendererObject *self, PyObject *part)
{
	PyObject *src, *labels, *overflow, *owned = NULL;
	struct expo_keymap map;
	int ok = 0;

	keymap_init(&map);
	unsigned long long over_packets = 0, over_bytes = 0;
	if (!PyArg_ParseTuple(part, "OOO|(KK);a part is (Counts, labels, overflow_labels)", &src,
			      &labels, &overflow, &over_packets, &over_bytes))
		return -1;
	if (overflow != Py_None && !PyUnicode_Check(overflow)) {
		PyErr_SetString(PyExc_TypeError, "overflow_labels must be str or None");
		return -1;
	}
	if (PyObject_TypeCheck(src, &AggregatorType)) {
		if (aggregator_check_ready(src) < 0 || !(owned = src = counts_of(src)))
			return -1;
	} else if (!PyObject_TypeCheck(src, &CountsType)) {
		if (render_rows(self, src, labels) < 0)
			return -1;
		return add_overflow(self, overflow, over_packets, over_bytes);
	}
	CountsObject *c = (CountsObject *)src;
	if (counts_ready(c) < 0)
		goto out;
	struct render_cache *rc = renderer_cache_for(self, c->agg);
	if (!rc || keymap_reserve(&map, (uint32_t)c->n) < 0) {
		PyErr_NoMemory();
		goto out;
	}
	rc->used = 1;
	for (size_t i = 0; i < c->n; i++) {
		const struct count_item *it = &c->items[i];
		uint32_t idx = keymap_get(&rc->map, it->serial);
		if (idx == EXPO_NONE && (idx = label_of_key(self, c, i, labels)) == EXPO_NONE)
			goto out;
		keymap_put(&map, it->serial, idx);
		if (expo_add(&self->e, idx, it->packets, it->bytes) < 0) {
			PyErr_NoMemory();
			goto out;
		}
	}
	if (add_overflow(self, overflow, c->overflow_packets, c->overflow_bytes) < 0)
		goto out;
	keymap_destroy(&rc->map);
	rc->map = map;
	keymap_init(&map);  /* now owned by the cache */
	ok = 1;
out:
	keymap_destroy(&map);
	Py_XDECREF(owned);
	return ok ? 0 : -1;
}

/* Caches of aggregators that were not rendered this time are gone with them. */
static void renderer_drop_unused(RendererObject *self)
{
	Py_ssize_t j = 0;
	for (Py_ssize_t i = 0; i < self->ncaches; i++) {
		if (self->caches[i].used) {
			self->caches[j++] = self->caches[i];
		} else {
			renderer_drop_cache(&self->caches[i]);
		}
	}
	self->ncaches = j;
}

PyDoc_STRVAR(render_doc,
"render($self, parts, tag, families, tail=b'', /)\n--\n\n"
"The record counters as Prometheus text, followed by tail, as one bytes object.\n"
"parts: (counts, labels, overflow_labels) per aggregator, counts an Aggregator.counts() (or the\n"
"Aggregator, copied now, or rows as snapshot() lists them, their label strings then built every\n"
"time, with the overflow as an optional fourth item (packets, bytes)); labels(key) returns the label\n"
"string of a key (as in snapshot(), e.g. '{group=\"5\"}') and is called once per new key, the\n"
"result cached per aggregator entry; overflow_labels (str or None) names the aggregator's\n"
"overflow series. Keys whose label strings are equal, in any part, are one series: their counts\n"
"add up. Every cached label is dropped when tag differs from the previous render's (interface\n"
"names or the configuration changed). families: ((head, sample_name), (head, sample_name)) as\n"
"bytes, for packets and for bytes: each head (HELP/TYPE lines) then one line per series.");

static PyObject *renderer_render(RendererObject *self, PyObject *args)
{
	PyObject *parts, *tag, *seq, *out = NULL;
	const char *ph, *pn, *bh, *bn, *tail = "";
	Py_ssize_t phl, pnl, bhl, bnl, taill = 0;
	int failed = 0;

	if (!self->tag) {
		PyErr_SetString(PyExc_RuntimeError, "CounterRenderer.__init__ was not called");
		return NULL;
	}
	if (!PyArg_ParseTuple(args, "OO((y#y#)(y#y#))|y#:render", &parts, &tag, &ph, &phl, &pn, &pnl,
			      &bh, &bhl, &bn, &bnl, &tail, &taill))
		return NULL;
	seq = PySequence_Tuple(parts);
	if (!seq)
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->lock);
	Py_END_ALLOW_THREADS

	int same = PyObject_RichCompareBool(tag, self->tag, Py_EQ);
	if (same < 0)
		goto done;
	if (!same) {
		for (Py_ssize_t i = 0; i < self->ncaches; i++)
			renderer_drop_cache(&self->caches[i]);
		self->ncaches = 0;
		expo_reset(&self->e);
		Py_INCREF(tag);
		Py_SETREF(self->tag, tag);
	}
	expo_begin(&self->e);
	for (Py_ssize_t i = 0; i < self->ncaches; i++)
		self->caches[i].used = 0;  /* a failed render before may have left some set */
	for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq) && !failed; i++)
		failed = render_part(self, PyTuple_GET_ITEM(seq, i)) < 0;
	if (failed)
		goto done;
	renderer_drop_unused(self);
	expo_sweep(&self->e);

	size_t size = expo_size(&self->e, (size_t)phl, (size_t)pnl, (size_t)bhl, (size_t)bnl);
	out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(size + (size_t)taill));
	if (!out)
		goto done;
	char *buf = PyBytes_AS_STRING(out);
	size_t n;
	Py_BEGIN_ALLOW_THREADS  /* the buffer is ours alone until returned */
	n = expo_write(&self->e, buf, ph, (size_t)phl, pn, (size_t)pnl, bh, (size_t)bhl, bn,
		       (size_t)bnl);
	memcpy(buf + n, tail, (size_t)taill);
	Py_END_ALLOW_THREADS
	_PyBytes_Resize(&out, (Py_ssize_t)(n + (size_t)taill));
done:
	pthread_mutex_unlock(&self->lock);
	Py_DECREF(seq);
	return out;
}

static PyObject *renderer_get_labels(RendererObject *self, void *c)
{
	(void)c;
	return PyLong_FromUnsignedLong(self->e.ninterned);
}

static PyMethodDef renderer_methods[] = {
	{"render", (PyCFunction)renderer_render, METH_VARARGS, render_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef renderer_getset[] = {
	{"labels", (getter)renderer_get_labels, NULL,
	 PyDoc_STR("Distinct label strings held since the last render."), NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(renderer_doc,
"CounterRenderer()\n--\n\n"
"Writes the record counters of Aggregators as Prometheus text in C, with each key's label string\n"
"built once (by a Python callable) and cached while the key lives. See render().");

PyTypeObject CounterRendererType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "nflogd.nflog.CounterRenderer",
	.tp_basicsize = sizeof(RendererObject),
	.tp_dealloc = (destructor)renderer_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = renderer_doc,
	.tp_init = (initproc)renderer_init,
	.tp_new = PyType_GenericNew,
	.tp_methods = renderer_methods,
	.tp_getset = renderer_getset,
};
