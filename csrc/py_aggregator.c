/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Aggregator and SeriesBudget: the Python face of agg_table.c. Readers take a copy under the lock and
 * build Python objects after releasing it, so a scrape holds up a worker only for a memcpy. */
#include "py_ext.h"
#include "exposition.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
	PyObject_HEAD
	struct agg_budget b;
} BudgetObject;

typedef struct {
	PyObject_HEAD
	struct agg_table t;
	PyObject *budget;            /* BudgetObject or NULL */
	PyObject *fields;            /* tuple of names, in the caller's order */
	int order[F_NFIELDS];        /* field ids in that order */
	int nfields;
} AggregatorObject;

/* ---- SeriesBudget ------------------------------------------------------------------------- */

static PyObject *budget_get_limit(BudgetObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(__atomic_load_n(&self->b.limit, __ATOMIC_RELAXED));
}

static int budget_set_limit(BudgetObject *self, PyObject *v, void *c)
{
	(void)c;
	long limit = v ? PyLong_AsLong(v) : -1;
	if (limit == -1 && PyErr_Occurred())
		return -1;
	if (limit < 0) {
		PyErr_SetString(PyExc_ValueError, "limit must be >= 0");
		return -1;
	}
	/* Lowering it keeps the keys that exist; only new keys are refused. */
	__atomic_store_n(&self->b.limit, limit, __ATOMIC_RELAXED);
	return 0;
}

static int budget_init(BudgetObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"limit", NULL};
	PyObject *limit;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O:SeriesBudget", kwlist, &limit))
		return -1;
	return budget_set_limit(self, limit, NULL);
}

static PyObject *budget_get_used(BudgetObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(__atomic_load_n(&self->b.used, __ATOMIC_RELAXED));
}

static PyGetSetDef budget_getset[] = {
	{"limit", (getter)budget_get_limit, (setter)budget_set_limit,
	 PyDoc_STR("Most keys all aggregators sharing this budget may hold together."), NULL},
	{"used", (getter)budget_get_used, NULL, PyDoc_STR("Keys held now."), NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(budget_doc,
"SeriesBudget(limit)\n--\n\n"
"A cap on distinct keys shared by several Aggregators (e.g. one per NFLOG group). A record whose\n"
"new key would exceed it is counted in its aggregator's overflow instead.");

PyTypeObject SeriesBudgetType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "nflogd.nflog.SeriesBudget",
	.tp_basicsize = sizeof(BudgetObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = budget_doc,
	.tp_init = (initproc)budget_init,
	.tp_new = PyType_GenericNew,
	.tp_getset = budget_getset,
};

/* ---- Aggregator --------------------------------------------------------------------------- */

struct agg_table *aggregator_table(PyObject *agg)
{
	return &((AggregatorObject *)agg)->t;
}

static int field_id(PyObject *name)
{
	const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
	if (s)
		for (int i = 0; i < F_NFIELDS; i++)
			if (strcmp(s, agg_field_names[i]) == 0)
				return i;
	if (!PyErr_Occurred())
		PyErr_Format(PyExc_ValueError, "unknown aggregation field %R (known: see nflog.FIELDS)", name);
	return -1;
}

static int aggregator_init(AggregatorObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"fields", "max_keys", "budget", NULL};
	PyObject *fields, *seq, *budget = Py_None;
	Py_ssize_t max_keys = 65536;
	uint32_t mask = 0;

	if (self->t.slots) {
		PyErr_SetString(PyExc_RuntimeError, "Aggregator is already initialised");
		return -1;
	}
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|nO:Aggregator", kwlist, &fields, &max_keys,
					 &budget))
		return -1;
	if (max_keys < 0 || max_keys > UINT32_MAX - 1) {
		PyErr_SetString(PyExc_ValueError, "max_keys must be within 0..4294967294");
		return -1;
	}
	if (budget != Py_None && !PyObject_TypeCheck(budget, &SeriesBudgetType)) {
		PyErr_SetString(PyExc_TypeError, "budget must be a SeriesBudget or None");
		return -1;
	}
	seq = PySequence_Tuple(fields);
	if (!seq)
		return -1;
	if (PyTuple_GET_SIZE(seq) > F_NFIELDS) {
		Py_DECREF(seq);
		PyErr_SetString(PyExc_ValueError, "too many fields");
		return -1;
	}
	for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
		int id = field_id(PyTuple_GET_ITEM(seq, i));
		if (id < 0 || (mask & (1u << id))) {
			if (id >= 0)
				PyErr_Format(PyExc_ValueError, "field %R given twice", PyTuple_GET_ITEM(seq, i));
			Py_DECREF(seq);
			return -1;
		}
		mask |= 1u << id;
		self->order[i] = id;
	}
	self->nfields = (int)PyTuple_GET_SIZE(seq);
	if (agg_init(&self->t, mask, (size_t)max_keys,
		     budget == Py_None ? NULL : &((BudgetObject *)budget)->b) < 0) {
		Py_DECREF(seq);
		PyErr_NoMemory();
		return -1;
	}
	self->fields = seq;
	if (budget != Py_None) {
		Py_INCREF(budget);
		self->budget = budget;
	}
	return 0;
}

static void aggregator_dealloc(AggregatorObject *self)
{
	agg_destroy(&self->t);
	Py_XDECREF(self->budget);
	Py_XDECREF(self->fields);
	SELF_FREE(self);
}

static int check_ready(AggregatorObject *self)
{
	if (self->t.slots)
		return 0;
	PyErr_SetString(PyExc_RuntimeError, "Aggregator.__init__ was not called");
	return -1;
}

static PyObject *key_value(const struct agg_key *k, int field)
{
	switch (field) {
	case F_GROUP: return PyLong_FromLong(k->group);
	case F_PREFIX: return PyBytes_FromStringAndSize(k->prefix, k->prefix_len);
	case F_INDEV: case F_OUTDEV: case F_PHYSINDEV: case F_PHYSOUTDEV: {
		uint32_t i = field == F_INDEV ? k->indev : field == F_OUTDEV ? k->outdev
			   : field == F_PHYSINDEV ? k->physindev : k->physoutdev;
		if (!i)
			Py_RETURN_NONE;
		return PyLong_FromUnsignedLong(i);
	}
	case F_UID:
		if (!(k->flags & KEY_HAS_UID))
			Py_RETURN_NONE;
		return PyLong_FromUnsignedLong(k->uid);
	case F_GID:
		if (!(k->flags & KEY_HAS_GID))
			Py_RETURN_NONE;
		return PyLong_FromUnsignedLong(k->gid);
	case F_FAMILY: return PyLong_FromLong(k->family);
	case F_PROTO:
		if (!(k->flags & KEY_HAS_PROTO))
			Py_RETURN_NONE;
		return PyLong_FromLong(k->proto);
	case F_HOOK: return PyLong_FromLong(k->hook);
	case F_MARK: return PyLong_FromUnsignedLong(k->mark);
	default: return PyLong_FromLong(k->hwproto);
	}
}

/* The key as snapshot() and the label callable of CounterRenderer see it. */
static PyObject *key_tuple(AggregatorObject *self, const struct agg_entry *e)
{
	PyObject *key = PyTuple_New(self->nfields);
	if (!key)
		return NULL;
	for (int i = 0; i < self->nfields; i++) {
		PyObject *v = key_value(&e->key, self->order[i]);
		if (!v) {
			Py_DECREF(key);
			return NULL;
		}
		PyTuple_SET_ITEM(key, i, v);
	}
	return key;
}

static PyObject *row(AggregatorObject *self, const struct agg_entry *e)
{
	PyObject *key = key_tuple(self, e);
	if (!key)
		return NULL;
	return Py_BuildValue("(NKK)", key, (unsigned long long)e->packets,
			     (unsigned long long)e->bytes);
}

PyDoc_STRVAR(snapshot_doc,
"snapshot($self, /)\n--\n\n"
"Counters so far: a list of (key, packets, bytes), key a tuple of the field values in the order\n"
"given to the constructor: prefix as bytes; indev/outdev/physindev/physoutdev as interface\n"
"indexes (None when absent; names belong to the handle's network namespace); uid, gid and proto\n"
"None when the record had none; mark 0 when unmarked; group, family, hook and hwproto ints.\n"
"Counters only grow, until clear().");

static PyObject *aggregator_snapshot(AggregatorObject *self, PyObject *unused)
{
	struct agg_entry *copy = NULL;
	size_t n = 0;
	int nomem = 0;
	PyObject *list;
	(void)unused;

	if (check_ready(self) < 0)
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	n = self->t.nentries;
	if (n) {
		copy = malloc(n * sizeof(*copy));
		if (copy)
			memcpy(copy, self->t.entries, n * sizeof(*copy));
		else
			nomem = 1;
	}
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	if (nomem)
		return PyErr_NoMemory();

	list = PyList_New((Py_ssize_t)n);
	for (size_t i = 0; list && i < n; i++) {
		PyObject *r = row(self, &copy[i]);
		if (!r) {
			Py_CLEAR(list);
			break;
		}
		PyList_SET_ITEM(list, (Py_ssize_t)i, r);
	}
	free(copy);
	return list;
}

PyDoc_STRVAR(clear_doc,
"clear($self, /)\n--\n\n"
"Forget every key and counter (returning the keys to the budget).");

static PyObject *aggregator_clear(AggregatorObject *self, PyObject *unused)
{
	(void)unused;
	if (check_ready(self) < 0)
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	agg_clear(&self->t);
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	Py_RETURN_NONE;
}

/* Small counters read under the lock, so a reader never sees a torn 64-bit value. */
static PyObject *read_locked(AggregatorObject *self, int which)
{
	unsigned long long a = 0, b = 0;
	if (check_ready(self) < 0)
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	switch (which) {
	case 0: a = self->t.nentries; break;
	case 1: a = self->t.overflow_packets; b = self->t.overflow_bytes; break;
	default: a = self->t.records; break;
	}
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	return which == 1 ? Py_BuildValue("(KK)", a, b) : PyLong_FromUnsignedLongLong(a);
}

static PyObject *get_keys(AggregatorObject *self, void *c)
{
	(void)c;
	return read_locked(self, 0);
}

static PyObject *get_overflow(AggregatorObject *self, void *c)
{
	(void)c;
	return read_locked(self, 1);
}

static PyObject *get_records(AggregatorObject *self, void *c)
{
	(void)c;
	return read_locked(self, 2);
}

static PyObject *get_fields(AggregatorObject *self, void *c)
{
	(void)c;
	if (check_ready(self) < 0)
		return NULL;
	Py_INCREF(self->fields);
	return self->fields;
}

static PyObject *get_max_keys(AggregatorObject *self, void *c)
{
	(void)c;
	return PyLong_FromSize_t(self->t.max_keys);
}

static PyObject *get_budget(AggregatorObject *self, void *c)
{
	(void)c;
	PyObject *b = self->budget ? self->budget : Py_None;
	Py_INCREF(b);
	return b;
}

static PyMethodDef aggregator_methods[] = {
	{"snapshot", (PyCFunction)aggregator_snapshot, METH_NOARGS, snapshot_doc},
	{"clear", (PyCFunction)aggregator_clear, METH_NOARGS, clear_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef aggregator_getset[] = {
	{"keys", (getter)get_keys, NULL, PyDoc_STR("Distinct keys held."), NULL},
	{"overflow", (getter)get_overflow, NULL,
	 PyDoc_STR("(packets, bytes) of records whose new key was over a limit."), NULL},
	{"records", (getter)get_records, NULL, PyDoc_STR("Records folded in all."), NULL},
	{"fields", (getter)get_fields, NULL, PyDoc_STR("The key fields, in order."), NULL},
	{"max_keys", (getter)get_max_keys, NULL, PyDoc_STR("This aggregator's own key limit."), NULL},
	{"budget", (getter)get_budget, NULL, PyDoc_STR("The shared SeriesBudget, or None."), NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(aggregator_doc,
"Aggregator(fields, max_keys=65536, budget=None)\n--\n\n"
"Packet and byte counters keyed by the record fields named in `fields` (see FIELDS). Filled by\n"
"Nflog.aggregate() in C with the GIL released; read with snapshot(). A record whose key is new\n"
"when max_keys keys exist, or when the shared budget is spent, is counted in `overflow`.\n"
"Bytes are the IP header's total length, so they are right whatever the copy range, as long as\n"
"the IP header is copied (COPY_PACKET with copyrange 0 or >= 40); a record without a payload\n"
"(COPY_META, COPY_NONE) adds 0 bytes.");

PyTypeObject AggregatorType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "nflogd.nflog.Aggregator",
	.tp_basicsize = sizeof(AggregatorObject),
	.tp_dealloc = (destructor)aggregator_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = aggregator_doc,
	.tp_init = (initproc)aggregator_init,
	.tp_new = PyType_GenericNew,
	.tp_methods = aggregator_methods,
	.tp_getset = aggregator_getset,
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

/* One entry as copied under the table lock: a known label, or a key (at key_off) to render. */
struct render_item {
	uint64_t serial, packets, bytes;
	uint32_t label;
	uint32_t key_len;
	size_t key_off;
};

struct render_copy {
	struct render_item *items;
	size_t n;
	char *keys;
	size_t keys_len, keys_cap;
	uint64_t overflow_packets, overflow_bytes;
};

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

/* Under the table lock (no GIL): counts of every entry, and the key of those not yet labelled. */
static int copy_entries(struct agg_table *t, const struct expo_keymap *map, struct render_copy *rc)
{
	memset(rc, 0, sizeof(*rc));
	pthread_mutex_lock(&t->lock);
	rc->n = t->nentries;
	rc->overflow_packets = t->overflow_packets;
	rc->overflow_bytes = t->overflow_bytes;
	rc->items = rc->n ? malloc(rc->n * sizeof(*rc->items)) : NULL;
	if (rc->n && !rc->items)
		goto nomem;
	for (size_t i = 0; i < rc->n; i++) {
		const struct agg_entry *e = &t->entries[i];
		struct render_item *it = &rc->items[i];
		it->serial = e->serial;
		it->packets = e->packets;
		it->bytes = e->bytes;
		it->label = keymap_get(map, e->serial);
		if (it->label != EXPO_NONE)
			continue;
		it->key_len = (uint32_t)(AGG_KEY_FIXED + e->key.prefix_len);
		size_t need = (it->key_len + 7u) & ~(size_t)7;
		if (rc->keys_len + need > rc->keys_cap) {
			size_t cap = rc->keys_cap ? rc->keys_cap * 2 : 65536;
			while (cap < rc->keys_len + need)
				cap *= 2;
			char *k = realloc(rc->keys, cap);
			if (!k)
				goto nomem;
			rc->keys = k;
			rc->keys_cap = cap;
		}
		it->key_off = rc->keys_len;
		memcpy(rc->keys + rc->keys_len, &e->key, it->key_len);
		rc->keys_len += need;
	}
	pthread_mutex_unlock(&t->lock);
	return 0;
nomem:
	pthread_mutex_unlock(&t->lock);
	free(rc->items);
	free(rc->keys);
	memset(rc, 0, sizeof(*rc));
	return -1;
}

/* The interned label of a new key: labels(key) -> str, built by Python once per key. */
static uint32_t label_of_key(RendererObject *self, AggregatorObject *agg, PyObject *labels,
			     const struct render_copy *rc, const struct render_item *it)
{
	struct agg_entry e;
	memset(&e.key, 0, sizeof(e.key));
	memcpy(&e.key, rc->keys + it->key_off, it->key_len);
	PyObject *key = key_tuple(agg, &e);
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

/* One part: (aggregator, labels, overflow_labels). */
static int render_part(RendererObject *self, PyObject *part)
{
	PyObject *agg_obj, *labels, *overflow;
	struct render_copy rc;
	struct expo_keymap map;
	int nomem = 0, ok = 0;

	if (!PyArg_ParseTuple(part, "O!OO;a part is (Aggregator, labels, overflow_labels)",
			      &AggregatorType, &agg_obj, &labels, &overflow))
		return -1;
	AggregatorObject *agg = (AggregatorObject *)agg_obj;
	if (check_ready(agg) < 0)
		return -1;
	if (overflow != Py_None && !PyUnicode_Check(overflow)) {
		PyErr_SetString(PyExc_TypeError, "overflow_labels must be str or None");
		return -1;
	}
	struct render_cache *c = renderer_cache_for(self, agg_obj);
	if (!c) {
		PyErr_NoMemory();
		return -1;
	}
	c->used = 1;
	Py_BEGIN_ALLOW_THREADS
	nomem = copy_entries(&agg->t, &c->map, &rc) < 0;
	Py_END_ALLOW_THREADS
	if (nomem) {
		PyErr_NoMemory();
		return -1;
	}
	keymap_init(&map);
	if (keymap_reserve(&map, (uint32_t)rc.n) < 0) {
		PyErr_NoMemory();
		goto out;
	}
	for (size_t i = 0; i < rc.n; i++) {
		struct render_item *it = &rc.items[i];
		uint32_t idx = it->label;
		if (idx == EXPO_NONE && (idx = label_of_key(self, agg, labels, &rc, it)) == EXPO_NONE)
			goto out;
		keymap_put(&map, it->serial, idx);
		if (expo_add(&self->e, idx, it->packets, it->bytes) < 0) {
			PyErr_NoMemory();
			goto out;
		}
	}
	if (rc.overflow_packets && overflow != Py_None) {
		Py_ssize_t len;
		const char *text = PyUnicode_AsUTF8AndSize(overflow, &len);
		uint32_t idx = text ? expo_intern(&self->e, text, (size_t)len) : EXPO_NONE;
		if (idx == EXPO_NONE || expo_add(&self->e, idx, rc.overflow_packets,
						 rc.overflow_bytes) < 0) {
			if (!PyErr_Occurred())
				PyErr_NoMemory();
			goto out;
		}
	}
	keymap_destroy(&c->map);
	c->map = map;
	map.slots = 0;  /* now owned by the cache */
	ok = 1;
out:
	if (map.slots)
		keymap_destroy(&map);
	free(rc.items);
	free(rc.keys);
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
"parts: (aggregator, labels, overflow_labels) per aggregator; labels(key) returns the label\n"
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
