/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Aggregator and SeriesBudget: the Python face of agg_table.c. Readers take a copy under the lock and
 * build Python objects after releasing it, so a scrape holds up a worker only for a memcpy. */
#include "py_ext.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <sys/socket.h>

typedef struct {
	PyObject_HEAD
	struct agg_budget b;
} BudgetObject;

typedef struct {
	PyObject_HEAD
	struct agg_table t;
	PyObject *budget;            /* BudgetObject or NULL */
	PyObject *fields;            /* tuple of names, in the caller's order */
	int order[F_NFIELDS];        /* field ids in that order; written under t.lock (relabel) */
	int nfields;
	struct nfd_nets *nets;       /* NULL without networks */
	PyObject *networks;          /* tuple of (name, cidr) as given, checked */
} AggregatorObject;

/* Most named networks an Aggregator takes: indexes are 16 bits in the key. */
#define NETWORKS_MAX 65535

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

static PyObject *budget_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	BudgetObject *self = (BudgetObject *)type->tp_alloc(type, 0);
	(void)args;
	(void)kw;
	if (self)
		agg_budget_init(&self->b, 0);
	return (PyObject *)self;
}

static void budget_dealloc(BudgetObject *self)
{
	/* Aggregators hold a reference: no member is left by now. */
	agg_budget_destroy(&self->b);
	SELF_FREE(self);
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
	.tp_new = budget_new,
	.tp_dealloc = (destructor)budget_dealloc,
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

/* fields -> (tuple, mask, order); NULL with an exception when they are not valid. */
static PyObject *parse_fields(PyObject *fields, uint32_t *mask, int order[F_NFIELDS])
{
	PyObject *seq = PySequence_Tuple(fields);
	if (!seq)
		return NULL;
	if (PyTuple_GET_SIZE(seq) > F_NFIELDS) {
		Py_DECREF(seq);
		PyErr_SetString(PyExc_ValueError, "too many fields");
		return NULL;
	}
	*mask = 0;
	for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
		int id = field_id(PyTuple_GET_ITEM(seq, i));
		if (id < 0 || (*mask & (1u << id))) {
			if (id >= 0)
				PyErr_Format(PyExc_ValueError, "field %R given twice", PyTuple_GET_ITEM(seq, i));
			Py_DECREF(seq);
			return NULL;
		}
		*mask |= 1u << id;
		order[i] = id;
	}
	return seq;
}

static int seconds_arg(Py_ssize_t v, const char *name, uint32_t *out)
{
	if (v < 0 || v > (Py_ssize_t)INT32_MAX) {
		PyErr_Format(PyExc_ValueError, "%s must be within 0..%ld", name, (long)INT32_MAX);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

/* "203.0.113.0/24" or "2001:db8::/32" into spec; host bits set or a bad text: ValueError. */
static int parse_cidr(PyObject *text, struct nfd_net_spec *spec)
{
	const char *s = PyUnicode_Check(text) ? PyUnicode_AsUTF8(text) : NULL;
	char addr[64];
	const char *slash;
	char *end;
	unsigned long len;

	if (!s) {
		if (!PyErr_Occurred())
			PyErr_Format(PyExc_TypeError, "a network's cidr must be a str, not %R", text);
		return -1;
	}
	slash = strchr(s, '/');
	if (!slash || (size_t)(slash - s) >= sizeof(addr) || !slash[1])
		goto bad;
	memcpy(addr, s, (size_t)(slash - s));
	addr[slash - s] = 0;
	memset(spec->addr, 0, sizeof(spec->addr));
	if (inet_pton(AF_INET, addr, spec->addr) == 1)
		spec->family = 4;
	else if (inet_pton(AF_INET6, addr, spec->addr) == 1)
		spec->family = 6;
	else
		goto bad;
	len = strtoul(slash + 1, &end, 10);
	if (*end || slash[1] < '0' || slash[1] > '9' || len > (spec->family == 4 ? 32u : 128u))
		goto bad;
	spec->len = (uint8_t)len;
	uint8_t masked[16];
	memcpy(masked, spec->addr, 16);
	nfd_mask_addr(masked, spec->family, spec->len);
	if (memcmp(masked, spec->addr, 16) != 0) {
		PyErr_Format(PyExc_ValueError, "network %R has host bits set", text);
		return -1;
	}
	return 0;
bad:
	PyErr_Format(PyExc_ValueError, "%R is not a network (address/length)", text);
	return -1;
}

static int set_networks(AggregatorObject *self, PyObject *networks)
{
	PyObject *seq = PySequence_Tuple(networks);
	struct nfd_net_spec *specs = NULL;
	Py_ssize_t n;
	int r = -1;

	if (!seq)
		return -1;
	n = PyTuple_GET_SIZE(seq);
	if (n > NETWORKS_MAX) {
		PyErr_Format(PyExc_ValueError, "at most %d networks", NETWORKS_MAX);
		goto out;
	}
	specs = calloc(n ? (size_t)n : 1, sizeof(*specs));
	if (!specs) {
		PyErr_NoMemory();
		goto out;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *item = PyTuple_GET_ITEM(seq, i);
		if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
		    !PyUnicode_Check(PyTuple_GET_ITEM(item, 0))) {
			PyErr_Format(PyExc_TypeError, "networks[%zd] must be a (name, cidr) pair of str",
				     i);
			goto out;
		}
		if (parse_cidr(PyTuple_GET_ITEM(item, 1), &specs[i]) < 0)
			goto out;
		specs[i].index = (uint32_t)i + 1;
	}
	if (n) {
		self->nets = malloc(sizeof(*self->nets));
		if (!self->nets || nfd_nets_build(self->nets, specs, (size_t)n) < 0) {
			free(self->nets);
			self->nets = NULL;
			PyErr_NoMemory();
			goto out;
		}
	}
	self->networks = seq;
	seq = NULL;
	r = 0;
out:
	free(specs);
	Py_XDECREF(seq);
	return r;
}

static int aggregator_init(AggregatorObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"fields", "max_keys", "budget", "address_mask", "networks", "ttl",
				 "min_residency", "admit_rate", "decay", NULL};
	PyObject *fields, *seq, *budget = Py_None, *networks = NULL;
	Py_ssize_t max_keys = 65536, ttl = 0, min_residency = AGG_DEFAULT_MIN_RESIDENCY,
		   admit_rate = AGG_DEFAULT_ADMIT_RATE, decay = AGG_DEFAULT_DECAY;
	struct agg_policy policy;
	int order[F_NFIELDS];
	int mask4 = 32, mask6 = 128;
	uint32_t mask = 0;

	if (self->t.slots) {
		PyErr_SetString(PyExc_RuntimeError, "Aggregator is already initialised");
		return -1;
	}
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|nO$(ii)Onnnn:Aggregator", kwlist, &fields,
					 &max_keys, &budget, &mask4, &mask6, &networks, &ttl,
					 &min_residency, &admit_rate, &decay))
		return -1;
	if (mask4 < 0 || mask4 > 32 || mask6 < 0 || mask6 > 128) {
		PyErr_SetString(PyExc_ValueError, "address_mask must be (0..32, 0..128)");
		return -1;
	}
	if (max_keys < 0 || max_keys > UINT32_MAX - 1) {
		PyErr_SetString(PyExc_ValueError, "max_keys must be within 0..4294967294");
		return -1;
	}
	if (seconds_arg(ttl, "ttl", &policy.ttl) < 0 ||
	    seconds_arg(min_residency, "min_residency", &policy.min_residency) < 0 ||
	    seconds_arg(admit_rate, "admit_rate", &policy.admit_rate) < 0 ||
	    seconds_arg(decay, "decay", &policy.decay) < 0)
		return -1;
	if (budget != Py_None && !PyObject_TypeCheck(budget, &SeriesBudgetType)) {
		PyErr_SetString(PyExc_TypeError, "budget must be a SeriesBudget or None");
		return -1;
	}
	seq = parse_fields(fields, &mask, order);
	if (!seq)
		return -1;
	PyObject *none = networks ? NULL : PyTuple_New(0);
	int bad = (networks || none) ? set_networks(self, networks ? networks : none) : -1;
	Py_XDECREF(none);
	if (bad < 0) {
		Py_DECREF(seq);
		return -1;
	}
	if (agg_init(&self->t, mask, (size_t)max_keys,
		     budget == Py_None ? NULL : &((BudgetObject *)budget)->b) < 0) {
		Py_DECREF(seq);
		PyErr_NoMemory();
		return -1;
	}
	self->t.policy = policy;
	memcpy(self->order, order, sizeof(order));
	self->nfields = (int)PyTuple_GET_SIZE(seq);
	self->t.mask4 = (uint8_t)mask4;
	self->t.mask6 = (uint8_t)mask6;
	self->t.nets = self->nets;
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
	if (self->nets) {
		nfd_nets_free(self->nets);
		free(self->nets);
	}
	Py_XDECREF(self->networks);
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

/* An address as text, RFC 5952 for IPv6 (inet_ntop), with "/len" when the mask cut it. */
static PyObject *addr_value(const AggregatorObject *self, const struct agg_key *k, const uint8_t *a)
{
	char buf[INET6_ADDRSTRLEN + 8];
	int v6 = k->pk.addr_family == 6;
	unsigned len = v6 ? self->t.mask6 : self->t.mask4, full = v6 ? 128 : 32;

	if (!k->pk.addr_family)
		Py_RETURN_NONE;
	if (!inet_ntop(v6 ? AF_INET6 : AF_INET, a, buf, INET6_ADDRSTRLEN))
		return PyErr_SetFromErrno(PyExc_OSError);
	if (len < full)
		snprintf(buf + strlen(buf), 8, "/%u", len);
	return PyUnicode_FromString(buf);
}

static PyObject *network_value(const AggregatorObject *self, uint16_t index)
{
	if (!index || !self->networks || index > PyTuple_GET_SIZE(self->networks))
		Py_RETURN_NONE;
	PyObject *name = PyTuple_GET_ITEM(PyTuple_GET_ITEM(self->networks, index - 1), 0);
	Py_INCREF(name);
	return name;
}

static const char *const ct_state_names[] = {NULL, "new", "established", "related"};

static PyObject *key_value(const AggregatorObject *self, const struct agg_key *k, int field)
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
	case F_HWPROTO: return PyLong_FromLong(k->hwproto);
	case F_SADDR: return addr_value(self, k, k->pk.saddr);
	case F_DADDR: return addr_value(self, k, k->pk.daddr);
	case F_SPORT: case F_DPORT:
		if (!(k->flags & KEY_HAS_PORTS))
			Py_RETURN_NONE;
		return PyLong_FromLong(field == F_SPORT ? k->pk.sport : k->pk.dport);
	case F_ICMP_TYPE:
		if (!(k->flags & KEY_HAS_ICMP))
			Py_RETURN_NONE;
		return Py_BuildValue("(ii)", k->flags & KEY_ICMP6 ? 58 : 1, k->pk.icmp_type);
	case F_TCP_FLAGS:
		if (!(k->flags & KEY_HAS_TCP_FLAGS))
			Py_RETURN_NONE;
		return PyLong_FromLong(k->pk.tcp_flags);
	case F_SRC_NET: return network_value(self, k->pk.src_net);
	case F_DST_NET: return network_value(self, k->pk.dst_net);
	default:  /* F_CT_STATE */
		if (!k->pk.ct_state || k->pk.ct_state > 3)
			Py_RETURN_NONE;
		return PyUnicode_FromString(ct_state_names[k->pk.ct_state]);
	}
}

/* A key as a tuple of its values in this field order: what snapshot() and Counts.rows() list
 * and CounterRenderer's label callable is given. */
PyObject *aggregator_key_tuple(PyObject *agg, const int *order, int nfields,
			       const struct agg_key *k)
{
	PyObject *key = PyTuple_New(nfields);
	if (!key)
		return NULL;
	for (int i = 0; i < nfields; i++) {
		PyObject *v = key_value((AggregatorObject *)agg, k, order[i]);
		if (!v) {
			Py_DECREF(key);
			return NULL;
		}
		PyTuple_SET_ITEM(key, i, v);
	}
	return key;
}


void aggregator_order(PyObject *agg, int order[F_NFIELDS], int *nfields)
{
	AggregatorObject *a = (AggregatorObject *)agg;
	memcpy(order, a->order, sizeof(a->order));
	*nfields = a->nfields;
}

int aggregator_check_ready(PyObject *agg)
{
	return check_ready((AggregatorObject *)agg);
}

/* (key, packets, bytes) with the key in the given field order (copied with the entries). */
static PyObject *row(AggregatorObject *self, const struct agg_ckey_plan *plan, const int *order,
		     int nfields, const struct agg_entry *e)
{
	struct agg_key k;
	agg_ckey_unpack(plan, e->ckey, &k);
	PyObject *key = aggregator_key_tuple((PyObject *)self, order, nfields, &k);
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
"None when the record had none; mark 0 when unmarked; group, family, hook and hwproto ints;\n"
"saddr/daddr as str ('203.0.113.7', '2001:db8::/48' when address_mask cut it); sport/dport and\n"
"tcp_flags ints; icmp_type (proto, type) with proto 1 (ICMP) or 58 (ICMPv6); src_net/dst_net the\n"
"network's name; ct_state 'new', 'established' or 'related'; each None when the packet has none.\n"
"Counters only grow, until clear().");

/* Everything a reader needs, copied at one instant under the lock. */
struct agg_copy {
	struct agg_entry *entries;
	size_t n;
	struct agg_ckey_plan plan;  /* the entries' keys were packed by it */
	int order[F_NFIELDS], nfields;
	unsigned long long overflow_packets, overflow_bytes;
};

static int take_copy(AggregatorObject *self, struct agg_copy *c)
{
	int nomem = 0;

	memset(c, 0, sizeof(*c));
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	c->n = self->t.nentries;
	if (c->n) {
		c->entries = malloc(c->n * sizeof(*c->entries));
		if (c->entries)
			memcpy(c->entries, self->t.entries, c->n * sizeof(*c->entries));
		else
			nomem = 1;
	}
	c->plan = self->t.plan;
	memcpy(c->order, self->order, sizeof(c->order));
	c->nfields = self->nfields;
	c->overflow_packets = self->t.overflow_packets;
	c->overflow_bytes = self->t.overflow_bytes;
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	if (nomem) {
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

static PyObject *copy_rows(AggregatorObject *self, struct agg_copy *c)
{
	PyObject *list = PyList_New((Py_ssize_t)c->n);
	for (size_t i = 0; list && i < c->n; i++) {
		PyObject *r = row(self, &c->plan, c->order, c->nfields, &c->entries[i]);
		if (!r) {
			Py_CLEAR(list);
			break;
		}
		PyList_SET_ITEM(list, (Py_ssize_t)i, r);
	}
	free(c->entries);
	c->entries = NULL;
	return list;
}

static PyObject *aggregator_snapshot(AggregatorObject *self, PyObject *unused)
{
	struct agg_copy c;
	(void)unused;

	if (check_ready(self) < 0 || take_copy(self, &c) < 0)
		return NULL;
	return copy_rows(self, &c);
}

PyDoc_STRVAR(read_doc,
"read($self, /)\n--\n\n"
"(fields, rows, (remainder_packets, remainder_bytes)), all taken at one instant: rows as in\n"
"snapshot(), keyed by `fields` (which relabel() may change), the remainder as `overflow`. The\n"
"packets (and bytes) of rows plus remainder are everything folded, and only grow until clear().");

static PyObject *aggregator_read(AggregatorObject *self, PyObject *unused)
{
	struct agg_copy c;
	PyObject *fields, *rows;
	(void)unused;

	if (check_ready(self) < 0 || take_copy(self, &c) < 0)
		return NULL;
	fields = PyTuple_New(c.nfields);
	for (int i = 0; fields && i < c.nfields; i++) {
		PyObject *name = PyUnicode_FromString(agg_field_names[c.order[i]]);
		if (!name)
			Py_CLEAR(fields);
		else
			PyTuple_SET_ITEM(fields, i, name);
	}
	rows = fields ? copy_rows(self, &c) : NULL;
	free(c.entries);
	if (!rows) {
		Py_XDECREF(fields);
		return NULL;
	}
	return Py_BuildValue("(NN(KK))", fields, rows, c.overflow_packets, c.overflow_bytes);
}

PyDoc_STRVAR(tick_doc,
"tick($self, /, now=None)\n--\n\n"
"Advance the aggregator's clock (whole seconds; None: CLOCK_MONOTONIC_COARSE since it was made,\n"
"as aggregate() reads it once per datagram; a number: a test's clock from then on, which\n"
"aggregate() leaves alone; never backwards) and, at most once a second, sweep: expire entries\n"
"idle for ttl, decay the rate estimates every `decay` seconds, refill the admission allowances,\n"
"choose the next victims.\n"
"A reader calls it between aggregate() calls.");

static PyObject *aggregator_tick(AggregatorObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"now", NULL};
	PyObject *now_obj = Py_None;
	long long now;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:tick", kwlist, &now_obj))
		return NULL;
	if (check_ready(self) < 0)
		return NULL;
	if (now_obj == Py_None) {
		now = -2;  /* read under the lock */
	} else {
		now = PyLong_AsLongLong(now_obj);
		if (now == -1 && PyErr_Occurred())
			return NULL;
	}
	if ((now < 0 && now != -2) || now > (long long)UINT32_MAX)
		return PyErr_Format(PyExc_ValueError, "now must be within 0..%lu seconds",
				    (unsigned long)UINT32_MAX);
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	if (now == -2) {
		agg_clock(&self->t);
		agg_tick(&self->t, self->t.now);
	} else {
		self->t.manual_clock = true;
		agg_tick(&self->t, (uint32_t)now);
	}
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	Py_RETURN_NONE;
}

PyDoc_STRVAR(set_policy_doc,
"set_policy($self, /, *, ttl=None, min_residency=None, admit_rate=None, decay=None)\n--\n\n"
"Change the budget policy (None keeps a value); the rows stay.");

static PyObject *aggregator_set_policy(AggregatorObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"ttl", "min_residency", "admit_rate", "decay", NULL};
	PyObject *v[4] = {Py_None, Py_None, Py_None, Py_None};
	struct agg_policy p;
	uint32_t *dst[4] = {&p.ttl, &p.min_residency, &p.admit_rate, &p.decay};

	if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOO:set_policy", kwlist, &v[0], &v[1], &v[2],
					 &v[3]))
		return NULL;
	if (check_ready(self) < 0)
		return NULL;
	p = self->t.policy;  /* written only here, with the GIL held */
	for (int i = 0; i < 4; i++) {
		if (v[i] == Py_None)
			continue;
		Py_ssize_t n = PyNumber_AsSsize_t(v[i], PyExc_OverflowError);
		if (n == -1 && PyErr_Occurred())
			return NULL;
		if (seconds_arg(n, kwlist[i], dst[i]) < 0)
			return NULL;
	}
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	self->t.policy = p;
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	Py_RETURN_NONE;
}

PyDoc_STRVAR(relabel_doc,
"relabel($self, fields, /)\n--\n\n"
"Key by other fields from now on, atomically: every row's counts move into the remainder (the\n"
"overflow), so no record is lost and no sum goes down; records folded after it use the new key.\n"
"The same fields in another order keep the rows (their keys are only reordered).");

static PyObject *aggregator_relabel(AggregatorObject *self, PyObject *fields)
{
	int order[F_NFIELDS];
	uint32_t mask;
	PyObject *seq, *old;

	if (check_ready(self) < 0)
		return NULL;
	seq = parse_fields(fields, &mask, order);
	if (!seq)
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	/* The same fields in another order key the same rows: only the order of key values changes. */
	if (mask != self->t.plan.fields)
		agg_relabel(&self->t, mask);
	memcpy(self->order, order, sizeof(order));
	self->nfields = (int)PyTuple_GET_SIZE(seq);
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	old = self->fields;
	self->fields = seq;
	Py_XDECREF(old);
	Py_RETURN_NONE;
}

PyDoc_STRVAR(add_remainder_doc,
"add_remainder($self, packets, nbytes, /)\n--\n\n"
"Add counts to the remainder (the overflow) without a record: what another aggregator counted\n"
"when it is replaced by this one, so the group's sum carries over and never goes down.");

static PyObject *aggregator_add_remainder(AggregatorObject *self, PyObject *args)
{
	unsigned long long packets, nbytes;

	if (check_ready(self) < 0)
		return NULL;
	if (!PyArg_ParseTuple(args, "KK:add_remainder", &packets, &nbytes))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	self->t.overflow_packets += packets;
	self->t.overflow_bytes += nbytes;
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	Py_RETURN_NONE;
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
	struct agg_churn churn;
	memset(&churn, 0, sizeof(churn));
	if (check_ready(self) < 0)
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->t.lock);
	switch (which) {
	case 0: a = self->t.nentries; break;
	case 1: a = self->t.overflow_packets; b = self->t.overflow_bytes; break;
	case 2: a = self->t.records; break;
	default: churn = self->t.churn; break;
	}
	pthread_mutex_unlock(&self->t.lock);
	Py_END_ALLOW_THREADS
	if (which == 3)
		return Py_BuildValue("(KKKK)", (unsigned long long)churn.admitted,
				     (unsigned long long)churn.expired,
				     (unsigned long long)churn.displaced,
				     (unsigned long long)churn.remainder_records);
	return which == 1 ? Py_BuildValue("(KK)", a, b) : PyLong_FromUnsignedLongLong(a);
}

static PyObject *get_churn(AggregatorObject *self, void *c)
{
	(void)c;
	return read_locked(self, 3);
}

static PyObject *get_policy(AggregatorObject *self, void *c)
{
	(void)c;
	const struct agg_policy *p = &self->t.policy;
	return Py_BuildValue("{sIsIsIsI}", "ttl", p->ttl, "min_residency", p->min_residency,
			     "admit_rate", p->admit_rate, "decay", p->decay);
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

PyDoc_STRVAR(counts_doc,
"counts($self, /)\n--\n\n"
"The counters now as a frozen Counts (one copy under the lock, no Python object per key): what\n"
"CounterRenderer renders, and rows() gives snapshot()'s list when Python wants the rows.");

static PyObject *aggregator_counts(AggregatorObject *self, PyObject *unused)
{
	(void)unused;
	if (check_ready(self) < 0)
		return NULL;
	return counts_of((PyObject *)self);
}

static PyObject *get_address_mask(AggregatorObject *self, void *c)
{
	(void)c;
	return Py_BuildValue("(ii)", self->t.mask4, self->t.mask6);
}

static PyObject *get_networks(AggregatorObject *self, void *c)
{
	(void)c;
	if (check_ready(self) < 0)
		return NULL;
	Py_INCREF(self->networks);
	return self->networks;
}

static PyMethodDef aggregator_methods[] = {
	{"snapshot", (PyCFunction)aggregator_snapshot, METH_NOARGS, snapshot_doc},
	{"counts", (PyCFunction)aggregator_counts, METH_NOARGS, counts_doc},
	{"clear", (PyCFunction)aggregator_clear, METH_NOARGS, clear_doc},
	{"read", (PyCFunction)aggregator_read, METH_NOARGS, read_doc},
	{"tick", (PyCFunction)(void (*)(void))aggregator_tick, METH_VARARGS | METH_KEYWORDS, tick_doc},
	{"relabel", (PyCFunction)aggregator_relabel, METH_O, relabel_doc},
	{"add_remainder", (PyCFunction)aggregator_add_remainder, METH_VARARGS, add_remainder_doc},
	{"set_policy", (PyCFunction)(void (*)(void))aggregator_set_policy, METH_VARARGS | METH_KEYWORDS,
	 set_policy_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef aggregator_getset[] = {
	{"keys", (getter)get_keys, NULL, PyDoc_STR("Distinct keys held."), NULL},
	{"overflow", (getter)get_overflow, NULL,
	 PyDoc_STR("(packets, bytes) of the remainder: records whose key had no row, and the counts of\n"
		   "rows that expired, were displaced or relabelled."), NULL},
	{"churn", (getter)get_churn, NULL,
	 PyDoc_STR("(admitted, expired, displaced, remainder_records): rows made, rows expired, rows\n"
		   "displaced by a heavier key, records counted in the remainder on arrival."), NULL},
	{"policy", (getter)get_policy, NULL,
	 PyDoc_STR("The budget policy: {'ttl', 'min_residency', 'admit_rate', 'decay'} in seconds\n"
		   "(admit_rate: displacements per second)."), NULL},
	{"records", (getter)get_records, NULL, PyDoc_STR("Records folded in all."), NULL},
	{"fields", (getter)get_fields, NULL, PyDoc_STR("The key fields, in order."), NULL},
	{"max_keys", (getter)get_max_keys, NULL, PyDoc_STR("This aggregator's own key limit."), NULL},
	{"budget", (getter)get_budget, NULL, PyDoc_STR("The shared SeriesBudget, or None."), NULL},
	{"address_mask", (getter)get_address_mask, NULL,
	 PyDoc_STR("(ipv4, ipv6): the prefix lengths saddr and daddr are reduced to."), NULL},
	{"networks", (getter)get_networks, NULL,
	 PyDoc_STR("The named networks src_net/dst_net match, as (name, cidr) pairs."), NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(aggregator_doc,
"Aggregator(fields, max_keys=65536, budget=None, *, address_mask=(32, 128), networks=(), ttl=0, min_residency=20, admit_rate=10, decay=10)\n--\n\n"
"Packet and byte counters keyed by the record fields named in `fields` (see FIELDS). Filled by\n"
"Nflog.aggregate() in C with the GIL released; read with read() or snapshot(). A record whose key\n"
"is new when max_keys keys exist, or when the shared budget is spent, is counted in `overflow`\n"
"(the remainder), unless its key is heavy enough to displace a row (see README: series budget).\n"
"Rows idle for ttl seconds (0: never) expire into the remainder at a tick(). A row admitted\n"
"min_residency seconds ago or more may be displaced by a key whose estimated rate is more than\n"
"twice its own, at most admit_rate times a second (0: never); rates decay by half every decay s.\n"
"With a ttl, once a key was refused for want of room, free places fill at most admit_rate a\n"
"second until no new key was refused or kept waiting for 60 s.\n"
"Bytes are the IP header's total length, so they are right whatever the copy range, as long as\n"
"the IP header is copied (COPY_PACKET with copyrange 0 or >= 40); a record without a payload\n"
"(COPY_META, COPY_NONE) adds 0 bytes.\n"
"saddr/daddr are reduced to address_mask (IPv4, IPv6 prefix lengths) before keying; src_net and\n"
"dst_net are the longest match of the full address among networks, (name, cidr) pairs with the\n"
"host bits clear; the payload is parsed for these only when one of them is a field.");

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
