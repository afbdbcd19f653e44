/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Nflog: a handle on one NFLOG group. Every wait and receive runs with the GIL released; an I/O lock
 * (always taken without the GIL) serialises readers, and close() wakes a blocked reader first. */
#include "py_ext.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "sock.h"

/* next()/queue() keep at most this many records queued: reading stops, the kernel queue holds the rest. */
#define QUEUE_MAX 65536
/* aggregate() returns after this many datagrams so the caller can react (stop, reload, heartbeat). */
#define AGGREGATE_MAX_DATAGRAMS 256
/* The kernel keeps twice the receive buffer asked for, capped at INT_MAX: rcvbuf reads back half of
 * what it keeps (what was asked, as in nflogr), so larger values could not read back. */
#define RCVBUF_MAX (INT32_MAX / 2)

typedef struct {
	PyObject_HEAD
	struct nfd_sock sock;
	pthread_mutex_t io_lock;
	int closed;              /* set under the GIL, read by readers under io_lock */
	int enobufs_mode;        /* ENOBUFS_*; the count is sock.enobufs (the API's drops) */
	uint16_t group;
	PyObject *queue;         /* list of NflogData; queue[qhead:] are pending */
	Py_ssize_t qhead;
	uint32_t *offsets;       /* per-datagram record offsets, for building NflogData */
	size_t noffsets;
	struct ifresolver *ifr;  /* names interfaces in the group's namespace; shared with records */
	struct nfd_config cfg; /* as bound, updated by configure() */
} HandleObject;

static PyObject *closed_error(void)
{
	return set_error(-ECANCELED, "the NFLOG handle is closed");
}

/* The kernel refused what configure() sent (found in the data stream by a later read). */
static PyObject *raise_refused(HandleObject *self, int r)
{
	return set_error(r, "NFLOG group %u refused the settings given to configure() (%s): they are "
			 "not in effect", self->group, strerror(-r));
}

/* A failed receive: ENOBUFS (enobufs=ENOBUFS_RAISE) says what was lost and what helps. */
static PyObject *raise_recv_error(HandleObject *self, int r)
{
	if (r == -ENOBUFS)
		return set_error(r, "NFLOG group %u: the receive buffer overflowed and the kernel dropped "
				 "records (raise rcvbuf; open with seq=True to count them exactly)", self->group);
	return set_error(r, "receiving from NFLOG group %u failed", self->group);
}

static PyObject *raise_open_error(int r, const struct nfd_config *cfg)
{
	if (r == -EPERM) {
		long holder = nfd_group_holder(cfg->group);
		if (holder >= 0)
			return set_error(r, "NFLOG group %u is taken by another process (netlink portid %ld); "
					 "see /proc/net/netfilter/nfnetlink_log", cfg->group, holder);
		return set_error(r, "binding NFLOG group %u needs root or CAP_NET_ADMIN", cfg->group);
	}
	if (r == -EBUSY)
		return set_error(r, "NFLOG group %u is already bound by this handle", cfg->group);
	if (r == -EOPNOTSUPP && cfg->conntrack)
		return set_error(r, "NFLOG group %u: this kernel cannot attach conntrack data to records "
				 "(no CONFIG_NETFILTER_NETLINK_GLUE_CT)", cfg->group);
	return set_error(r, "cannot bind NFLOG group %u: %s", cfg->group, strerror(-r));
}

/* Check every value (the kernel acknowledges out-of-range values and ignores them: refuse them
 * here instead) and fill cfg. Returns -1 with ValueError naming the allowed range. */
static int make_config(struct nfd_config *cfg, long group, double timeout, long qthresh,
		       long rcvbuf, long nlbuf, int enobufs_mode, int copymode, long copyrange, int seq)
{
	if (group < 0 || group > 65535)
		return PyErr_Format(PyExc_ValueError, "group %ld is out of range 0..65535", group), -1;
	if (!(timeout >= 0.0 && timeout <= 42949672.95))
		return PyErr_Format(PyExc_ValueError, "timeout must be within 0..42949672.95 seconds"), -1;
	/* qthresh 0 works as 1: the kernel flushes once its queue holds at least qthresh records. */
	if (qthresh < 0 || qthresh > (long)UINT32_MAX)
		return PyErr_Format(PyExc_ValueError, "qthresh %ld is out of range 0..4294967295", qthresh), -1;
	if (rcvbuf < 0 || rcvbuf > RCVBUF_MAX)
		return PyErr_Format(PyExc_ValueError, "rcvbuf %ld is out of range 0..%d", rcvbuf, RCVBUF_MAX), -1;
	if (nlbuf != 0 && (nlbuf < (long)nfd_nlbuf_min() || nlbuf > (long)NFD_NLBUF_MAX))
		return PyErr_Format(PyExc_ValueError, "nlbuf %ld is out of range %u..%u (or 0 for the kernel default)",
				    nlbuf, nfd_nlbuf_min(), NFD_NLBUF_MAX), -1;
	if (copymode != NFULNL_COPY_NONE && copymode != NFULNL_COPY_META && copymode != NFULNL_COPY_PACKET)
		return PyErr_Format(PyExc_ValueError, "copymode %d is not one of COPY_NONE (0), COPY_META (1), "
				    "COPY_PACKET (2)", copymode), -1;
	if (copyrange < 0 || copyrange > (long)NFD_COPY_RANGE_MAX)
		return PyErr_Format(PyExc_ValueError, "copyrange %ld is out of range 0..%u (0 = whole packet)",
				    copyrange, NFD_COPY_RANGE_MAX), -1;
	if (enobufs_mode != ENOBUFS_RAISE && enobufs_mode != ENOBUFS_HANDLE &&
	    enobufs_mode != ENOBUFS_DISABLE)
		return PyErr_Format(PyExc_ValueError, "enobufs %d is not one of ENOBUFS_RAISE, ENOBUFS_HANDLE, "
				    "ENOBUFS_DISABLE", enobufs_mode), -1;
	*cfg = (struct nfd_config){
		.group = (uint16_t)group, .copymode = (uint8_t)copymode,
		.copyrange = (uint32_t)(copyrange ? copyrange : NFD_COPY_RANGE_MAX),
		.nlbuf = (uint32_t)nlbuf, .qthresh = (uint32_t)qthresh,
		.timeout = (uint32_t)lround(timeout * 100.0), .rcvbuf = (int)rcvbuf,
		.enobufs_mode = enobufs_mode, .seq = seq,
	};
	return 0;
}

static int handle_init(HandleObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"group", "timeout", "qthresh", "rcvbuf", "nlbuf", "enobufs",
				 "copymode", "copyrange", "seq", "conntrack", NULL};
	long group, qthresh = 1, rcvbuf = 0, nlbuf = 0, copyrange = 0;
	int enobufs = ENOBUFS_RAISE, copymode = NFULNL_COPY_PACKET, seq = 0, conntrack = 0, r;
	double timeout = 0.0;
	struct nfd_config cfg;

	if (self->offsets) {  /* set once a bind succeeded; a failed __init__ may be retried */
		PyErr_SetString(PyExc_RuntimeError, "Nflog.__init__ was already called: open a new handle");
		return -1;
	}
	if (!PyArg_ParseTupleAndKeywords(args, kw, "l|$dllliilpp:open", kwlist, &group, &timeout,
					 &qthresh, &rcvbuf, &nlbuf, &enobufs, &copymode, &copyrange,
					 &seq, &conntrack))
		return -1;
	if (make_config(&cfg, group, timeout, qthresh, rcvbuf, nlbuf, enobufs, copymode, copyrange,
			seq) < 0)
		return -1;
	cfg.conntrack = conntrack;  /* labels: ct_state (EOPNOTSUPP where the kernel cannot) */
	Py_BEGIN_ALLOW_THREADS
	r = nfd_sock_open(&self->sock, &cfg);
	Py_END_ALLOW_THREADS
	if (r < 0) {
		self->closed = 1;
		raise_open_error(r, &cfg);
		return -1;
	}
	self->noffsets = self->sock.bufsize / (NLMSG_HDRLEN + sizeof(struct nfgenmsg)) + 1;
	self->offsets = malloc(self->noffsets * sizeof(*self->offsets));
	/* Made by this thread, so in the namespace the NFLOG socket was just made in. */
	self->ifr = self->offsets ? ifresolver_new() : NULL;
	if (!self->ifr) {
		int e = self->offsets ? errno : ENOMEM;
		nfd_sock_close(&self->sock);
		free(self->offsets);
		self->offsets = NULL;
		self->closed = 1;
		set_error(-e, "cannot open NFLOG group %u: %s", cfg.group, strerror(e));
		return -1;
	}
	pthread_mutex_init(&self->io_lock, NULL);
	self->group = (uint16_t)group;
	self->enobufs_mode = enobufs;
	self->cfg = cfg;
	self->closed = 0;
	return 0;
}

static PyObject *handle_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	(void)args;
	(void)kw;
	HandleObject *self = (HandleObject *)type->tp_alloc(type, 0);
	if (!self)
		return NULL;
	self->sock.fd = self->sock.wakefd = -1;
	self->closed = 1;  /* until __init__ succeeds */
	/* Made here, not in __init__, so every method is safe on a handle __init__ never opened. */
	self->queue = PyList_New(0);
	if (!self->queue) {
		Py_DECREF(self);
		return NULL;
	}
	return (PyObject *)self;
}

static void do_close(HandleObject *self)
{
	if (self->closed)
		return;
	self->closed = 1;
	/* Wake a reader blocked in poll, then wait for it to leave before the fds go away. */
	nfd_sock_wake(&self->sock);
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->io_lock);
	nfd_sock_close(&self->sock);
	pthread_mutex_unlock(&self->io_lock);
	Py_END_ALLOW_THREADS
	/* Records already made keep their own reference. */
	ifresolver_decref(self->ifr);
	self->ifr = NULL;
}

static void handle_dealloc(HandleObject *self)
{
	if (!self->closed) {
		self->closed = 1;
		nfd_sock_close(&self->sock);  /* no other reference: nobody can be reading */
	}
	ifresolver_decref(self->ifr);
	if (self->offsets) {
		pthread_mutex_destroy(&self->io_lock);
		free(self->offsets);
	}
	Py_XDECREF(self->queue);
	SELF_FREE(self);
}

/* ---- reading records as objects --------------------------------------------------------- */

struct collect_ctx {
	HandleObject *self;
	size_t n;
};

static int collect_offset(void *ctx, const struct nfd_record *rec, const struct nlmsghdr *nlh)
{
	struct collect_ctx *c = ctx;
	(void)rec;
	if (c->n < c->self->noffsets)
		c->self->offsets[c->n++] = (uint32_t)((const uint8_t *)nlh - c->self->sock.buf);
	return 0;
}

/* ---- the receive path, shared by read_datagram and aggregate ------------------------------- */

/* What one wait-and-receive under io_lock found; read_error() turns it into the exception. */
struct read_status {
	int wait;      /* nfd_sock_wait: 1 readable, 0 timed out, -errno (-ECANCELED: closed) */
	ssize_t len;   /* the last recv_data: > 0 a datagram in sock.buf, 0 none waiting, -errno */
	int refused;   /* a configure() the kernel refused (negative errno), taken from the socket */
};

/* The next datagram worth reading. A truncated datagram (counted, discarded) and, unless
 * enobufs=ENOBUFS_RAISE, an ENOBUFS (counted) are no end of the data: read on, or a caller would
 * say "nothing waiting" with the socket still full. Returns as nfd_sock_recv. io_lock held. */
static ssize_t recv_data(HandleObject *self)
{
	ssize_t len;
	do
		len = nfd_sock_recv(&self->sock);
	while (len == -EMSGSIZE || (len == -ENOBUFS && self->enobufs_mode != ENOBUFS_RAISE));
	return len;
}

/* Wait up to timeout_ms for data (io_lock held, GIL released). */
static void wait_data(HandleObject *self, int timeout_ms, struct read_status *st)
{
	st->len = 0;
	st->wait = self->sock.fd < 0 ? -ECANCELED : nfd_sock_wait(&self->sock, timeout_ms);
}

/* Take a refusal of configure() the data stream carried (io_lock held). */
static void take_refusal(HandleObject *self, struct read_status *st)
{
	st->refused = self->sock.config_error;
	self->sock.config_error = 0;
}

/* Raise what st says went wrong, after io_lock is released; 0 when nothing did. What was read
 * with a failure stays read (queued or folded). */
static int read_error(HandleObject *self, const struct read_status *st)
{
	if (st->wait == -ECANCELED || self->closed)
		return closed_error(), -1;
	if (st->wait < 0 && st->wait != -EINTR)
		return set_error(st->wait, "waiting on NFLOG group %u failed", self->group), -1;
	if (st->len < 0)
		return raise_recv_error(self, (int)st->len), -1;
	if (st->refused)
		return raise_refused(self, st->refused), -1;
	if (st->wait == -EINTR && PyErr_CheckSignals() < 0)
		return -1;
	return 0;
}

/* Wait up to timeout_ms for one datagram and queue its records. Returns how many were queued (0 on
 * timeout or an interrupted wait) or -1 with an exception set. */
static Py_ssize_t read_datagram(HandleObject *self, int timeout_ms)
{
	struct collect_ctx ctx = {self, 0};
	struct read_status st;
	int failed = 0;

	if (self->closed)
		return closed_error(), -1;
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->io_lock);
	wait_data(self, timeout_ms, &st);
	if (st.wait > 0 && (st.len = recv_data(self)) > 0)
		nfd_sock_dispatch(&self->sock, (size_t)st.len, collect_offset, &ctx);
	Py_END_ALLOW_THREADS
	/* io_lock is still held: sock.buf stays ours while the objects are built, also when close()
	 * raced with this read (its records are kept like every queued one). */
	for (size_t i = 0; i < ctx.n && !failed; i++) {
		PyObject *d = data_from_message((const struct nlmsghdr *)(self->sock.buf + self->offsets[i]),
					       self->ifr);
		failed = !d || PyList_Append(self->queue, d) < 0;
		Py_XDECREF(d);
	}
	take_refusal(self, &st);
	pthread_mutex_unlock(&self->io_lock);
	if (failed || read_error(self, &st) < 0)
		return -1;
	return (Py_ssize_t)ctx.n;
}

static Py_ssize_t queued(HandleObject *self)
{
	return PyList_GET_SIZE(self->queue) - self->qhead;
}

static PyObject *pop_queued(HandleObject *self)
{
	PyObject *d = PyList_GET_ITEM(self->queue, self->qhead);
	Py_INCREF(d);
	if (++self->qhead == PyList_GET_SIZE(self->queue)) {
		if (PyList_SetSlice(self->queue, 0, PY_SSIZE_T_MAX, NULL) < 0) {
			Py_DECREF(d);
			return NULL;
		}
		self->qhead = 0;
	}
	return d;
}

/* The next record; blocks when wait, else None when nothing is waiting. Records queued before
 * close() are still returned (as nflogr documents); after them a closed handle gives None with
 * wait=False and raises NflogClosedError with wait=True. */
static PyObject *next_record(HandleObject *self, int wait)
{
	for (;;) {
		if (queued(self) > 0)
			return pop_queued(self);
		if (self->closed) {
			if (wait)
				return closed_error();
			Py_RETURN_NONE;
		}
		Py_ssize_t n = read_datagram(self, wait ? -1 : 0);
		if (n < 0) {
			/* Closed while reading: what that read queued comes first, then as above. */
			if (!PyErr_ExceptionMatches(NflogClosedError) || !self->closed)
				return NULL;
			PyErr_Clear();
			continue;
		}
		if (n == 0 && !wait)
			Py_RETURN_NONE;
	}
}

PyDoc_STRVAR(next_doc,
"next($self, /, wait=True)\n--\n\n"
"The next record (NflogData). With wait=False, None when none is waiting. Records queued before\n"
"close() are still returned; then a closed handle gives None with wait=False and raises\n"
"NflogClosedError with wait=True (also when close() is called from another thread while waiting).");

static PyObject *handle_next(HandleObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"wait", NULL};
	int wait = 1;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:next", kwlist, &wait))
		return NULL;
	return next_record(self, wait);
}

PyDoc_STRVAR(queue_doc,
"queue($self, /, wait=True)\n--\n\n"
"Read one datagram from the socket and queue its records for next(). Returns how many records were\n"
"queued: 0 when nothing is waiting and wait=False or records are queued already (it only waits\n"
"when none are), when 65536 are queued already, or once the handle is closed.");

static PyObject *handle_queue(HandleObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"wait", NULL};
	int wait = 1;
	Py_ssize_t n;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:queue", kwlist, &wait))
		return NULL;
	if (self->closed || queued(self) >= QUEUE_MAX)
		return PyLong_FromLong(0);
	wait = wait && queued(self) == 0;  /* as nflogr: never block while records wait to be read */
	do {
		n = read_datagram(self, wait ? -1 : 0);
	} while (n == 0 && wait);
	return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(loop_doc,
"loop($self, fn, /, count=-1)\n--\n\n"
"Call fn(data) for each record, count times (-1: until the handle is closed and the records\n"
"queued before are done). An exception raised by fn stops the loop and propagates. Returns None.");

static PyObject *handle_loop(HandleObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"fn", "count", NULL};
	PyObject *fn;
	Py_ssize_t count = -1;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O|n:loop", kwlist, &fn, &count))
		return NULL;
	if (!PyCallable_Check(fn))
		return PyErr_Format(PyExc_TypeError, "fn must be callable");
	for (Py_ssize_t i = 0; count < 0 || i < count; i++) {
		PyObject *d = next_record(self, 1), *res;
		if (!d) {
			if (PyErr_ExceptionMatches(NflogClosedError)) {
				PyErr_Clear();
				break;
			}
			return NULL;
		}
		res = PyObject_CallOneArg(fn, d);
		Py_DECREF(d);
		if (!res)
			return NULL;
		Py_DECREF(res);
	}
	Py_RETURN_NONE;
}

static PyObject *handle_iternext(HandleObject *self)
{
	PyObject *d = next_record(self, 1);
	if (!d && PyErr_ExceptionMatches(NflogClosedError))
		PyErr_Clear();  /* a closed handle ends iteration */
	return d;
}

/* ---- aggregating in C -------------------------------------------------------------------- */

static double monotonic_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

PyDoc_STRVAR(aggregate_doc,
"aggregate($self, aggregator, /, timeout=None, linger=0.0)\n--\n\n"
"Wait up to timeout seconds (None: until data or close) for records, then drain what the socket\n"
"holds (up to 256 datagrams) and fold every record into aggregator, all in C without the GIL.\n"
"With linger > 0, go on waiting for and folding more for up to linger seconds after the first\n"
"data (a steady flow then returns to Python a few times a second, not once per datagram).\n"
"Returns the number of records folded (0 on timeout). Sequence gaps, truncated datagrams, decode\n"
"errors and ENOBUFS are counted on the handle as in next().");

static PyObject *handle_aggregate(HandleObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"aggregator", "timeout", "linger", NULL};
	PyObject *agg, *timeout_obj = Py_None;
	int timeout_ms = -1;
	double linger = 0.0;
	struct read_status st;
	size_t folded = 0;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|Od:aggregate", kwlist, &AggregatorType, &agg,
					 &timeout_obj, &linger))
		return NULL;
	if (!(linger >= 0.0 && linger <= 3600.0))
		return PyErr_Format(PyExc_ValueError, "linger must be within 0..3600 seconds");
	if (timeout_obj != Py_None) {
		double t = PyFloat_AsDouble(timeout_obj);
		if (t == -1.0 && PyErr_Occurred())
			return NULL;
		if (!(t >= 0.0 && t < 86400.0 * 24))
			return PyErr_Format(PyExc_ValueError, "timeout must be >= 0 seconds or None");
		timeout_ms = (int)ceil(t * 1000.0);
	}
	struct agg_table *t = aggregator_table(agg);
	struct agg_ahead ahead = {.t = t};
	if (!t->slots)
		return PyErr_Format(PyExc_RuntimeError, "Aggregator.__init__ was not called");
	if (self->closed)
		return closed_error();

	Py_INCREF(agg);  /* the table must outlive the unlocked section */
	Py_BEGIN_ALLOW_THREADS
	pthread_mutex_lock(&self->io_lock);
	wait_data(self, timeout_ms, &st);
	self->sock.layout.want = agg_wanted_attrs(t->plan.fields);  /* parse only what the key needs */
	double until = st.wait > 0 && linger > 0.0 ? monotonic_seconds() + linger : 0.0;
	for (int i = 0; st.wait > 0; i++) {
		if ((st.len = recv_data(self)) > 0) {
			pthread_mutex_lock(&t->lock);
			agg_clock(t);  /* the series budget's clock: once per datagram, not per record */
			folded += nfd_sock_dispatch(&self->sock, (size_t)st.len, agg_ahead_visit, &ahead);
			agg_ahead_flush(&ahead);  /* every record counted before the lock goes */
			pthread_mutex_unlock(&t->lock);
		}
		if (st.len < 0 || self->sock.config_error)
			break;  /* reported below */
		if (!until) {  /* drain what is there, then return */
			if (st.len == 0 || i + 1 == AGGREGATE_MAX_DATAGRAMS)
				break;
			continue;
		}
		/* Lingering: poll before each read, not a read until EAGAIN then poll (one system
		 * call a datagram fewer). close() or a signal ends the wait, to be reported below. */
		double left = until - monotonic_seconds();
		if (left <= 0.0)
			break;
		wait_data(self, (int)ceil(left * 1000.0), &st);
	}
	self->sock.layout.want = 0;
	take_refusal(self, &st);
	pthread_mutex_unlock(&self->io_lock);
	Py_END_ALLOW_THREADS
	Py_DECREF(agg);

	if (read_error(self, &st) < 0)  /* what was folded stays folded */
		return NULL;
	return PyLong_FromSize_t(folded);
}

PyDoc_STRVAR(configure_doc,
"configure($self, /, *, timeout=None, qthresh=None, nlbuf=None, copymode=None, copyrange=None)\n--\n\n"
"Change the group's batching and copy settings in place (None keeps a value). The group stays\n"
"bound, so nothing the kernel is batching is lost and sequence numbers continue. Ranges as in\n"
"open(); the receive buffer is the rcvbuf attribute. The kernel applies the settings before this\n"
"returns; should it refuse them (EPERM once CAP_NET_ADMIN is dropped), the refusal arrives with\n"
"the data and the next read (next, queue, aggregate, ...) raises NflogError.");

static PyObject *handle_configure(HandleObject *self, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"timeout", "qthresh", "nlbuf", "copymode", "copyrange", NULL};
	PyObject *timeout_o = Py_None, *qthresh_o = Py_None, *nlbuf_o = Py_None, *mode_o = Py_None,
		 *range_o = Py_None;
	const struct nfd_config *cur = &self->cfg;
	double timeout = cur->timeout / 100.0;
	long qthresh = cur->qthresh, nlbuf = cur->nlbuf, copymode = cur->copymode,
	     copyrange = cur->copyrange;
	struct nfd_config cfg;
	int r;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOOO:configure", kwlist, &timeout_o, &qthresh_o,
					 &nlbuf_o, &mode_o, &range_o))
		return NULL;
	if ((timeout_o != Py_None && (timeout = PyFloat_AsDouble(timeout_o)) == -1.0 && PyErr_Occurred()) ||
	    (qthresh_o != Py_None && (qthresh = PyLong_AsLong(qthresh_o)) == -1 && PyErr_Occurred()) ||
	    (nlbuf_o != Py_None && (nlbuf = PyLong_AsLong(nlbuf_o)) == -1 && PyErr_Occurred()) ||
	    (mode_o != Py_None && (copymode = PyLong_AsLong(mode_o)) == -1 && PyErr_Occurred()) ||
	    (range_o != Py_None && (copyrange = PyLong_AsLong(range_o)) == -1 && PyErr_Occurred()))
		return NULL;
	if (copymode < INT_MIN || copymode > INT_MAX)
		copymode = -1;  /* out of range: make_config names the valid modes */
	if (self->closed)  /* first: a handle never opened has no settings to start from */
		return closed_error();
	if (make_config(&cfg, cur->group, timeout, qthresh, cur->rcvbuf, nlbuf, cur->enobufs_mode,
			(int)copymode, copyrange, cur->seq) < 0)
		return NULL;
	cfg.conntrack = cur->conntrack;  /* the flags are replaced, not ORed: keep what was asked */
	/* Under the GIL: close() flags the handle under the GIL before it closes the fd. */
	r = nfd_sock_configure(&self->sock, &cfg);
	if (r < 0)
		return set_error(r, "cannot configure NFLOG group %u", self->group);
	self->cfg = cfg;
	Py_RETURN_NONE;
}

/* ---- the rest of the handle ---------------------------------------------------------------- */

PyDoc_STRVAR(close_doc,
"close($self, /)\n--\n\n"
"Unbind the group and close the socket; wakes a thread blocked in next(), queue() or aggregate(),\n"
"which then raises NflogClosedError. Records already queued stay readable (next(), iteration,\n"
"loop()), as in nflogr. Closing twice is harmless.");

static PyObject *handle_close(HandleObject *self, PyObject *unused)
{
	(void)unused;
	do_close(self);
	Py_RETURN_NONE;
}

PyDoc_STRVAR(getfd_doc, "getfd($self, /)\n--\n\nThe socket's file descriptor, or None once closed.");

static PyObject *handle_getfd(HandleObject *self, PyObject *unused)
{
	(void)unused;
	if (self->closed)
		Py_RETURN_NONE;
	return PyLong_FromLong(self->sock.fd);
}

PyDoc_STRVAR(fileno_doc,
"fileno($self, /)\n--\n\n"
"The socket's file descriptor, for selectors and asyncio. Raises ValueError once closed, as a\n"
"closed file does.");

static PyObject *handle_fileno(HandleObject *self, PyObject *unused)
{
	(void)unused;
	if (self->closed)
		return PyErr_Format(PyExc_ValueError, "I/O operation on a closed NFLOG handle");
	return PyLong_FromLong(self->sock.fd);
}

PyDoc_STRVAR(getgroup_doc, "getgroup($self, /)\n--\n\nThe NFLOG group number.");

static PyObject *handle_getgroup(HandleObject *self, PyObject *unused)
{
	(void)unused;
	return PyLong_FromLong(self->group);
}

PyDoc_STRVAR(enter_doc, "__enter__($self, /)\n--\n\nReturn the handle itself.");

static PyObject *handle_enter(HandleObject *self, PyObject *unused)
{
	(void)unused;
	Py_INCREF(self);
	return (PyObject *)self;
}

PyDoc_STRVAR(exit_doc,
"__exit__($self, /, *exc_info)\n--\n\nClose the handle (see close()); an exception in the block "
"propagates.");

static PyObject *handle_exit(HandleObject *self, PyObject *args)
{
	(void)args;
	PyObject *r = handle_close(self, NULL);
	if (!r)
		return NULL;
	Py_DECREF(r);
	Py_RETURN_FALSE;
}

/* Counters are written by the reader holding io_lock; a plain read here may be one batch stale. */
enum { C_RECEIVED, C_LOST, C_TRUNCATED, C_DECODE, C_DATAGRAMS };

static PyObject *get_counter(HandleObject *self, void *which)
{
	const struct nfd_sock *s = &self->sock;
	uint64_t v;
	switch ((intptr_t)which) {
	case C_RECEIVED: v = __atomic_load_n(&s->received, __ATOMIC_RELAXED); break;
	case C_LOST: v = __atomic_load_n(&s->lost, __ATOMIC_RELAXED); break;
	case C_TRUNCATED: v = __atomic_load_n(&s->truncated, __ATOMIC_RELAXED); break;
	case C_DECODE: v = __atomic_load_n(&s->decode_errors, __ATOMIC_RELAXED); break;
	default: v = __atomic_load_n(&s->datagrams, __ATOMIC_RELAXED); break;
	}
	return PyLong_FromUnsignedLongLong(v);
}

static PyObject *get_drops(HandleObject *self, void *c)
{
	(void)c;
	return PyLong_FromUnsignedLongLong(__atomic_load_n(&self->sock.enobufs, __ATOMIC_RELAXED));
}

static int set_drops(HandleObject *self, PyObject *v, void *c)
{
	(void)c;
	/* TypeError, as nflogr: the only value it takes is 0, so another one is the wrong kind. */
	if (!v || !PyLong_Check(v) || PyLong_AsLong(v) != 0) {
		PyErr_Clear();  /* an int too large for a long is just as wrong */
		PyErr_SetString(PyExc_TypeError, "drops can only be set to 0");
		return -1;
	}
	__atomic_store_n(&self->sock.enobufs, 0, __ATOMIC_RELAXED);
	return 0;
}

/* The receive buffer as the kernel keeps it: twice what was asked, for its bookkeeping. divisor 2
 * gives what was asked (rcvbuf), 1 the kernel's figure (kernel_rcvbuf). */
static PyObject *read_rcvbuf(HandleObject *self, int divisor)
{
	int v = nfd_sock_get_rcvbuf(&self->sock);
	if (v < 0)
		return set_error(v, "cannot read the receive buffer size");
	return PyLong_FromLong(v / divisor);
}

static PyObject *get_kernel_rcvbuf(HandleObject *self, void *c)
{
	(void)c;
	if (self->closed)
		return closed_error();
	return read_rcvbuf(self, 1);
}

static PyObject *get_rcvbuf(HandleObject *self, void *c)
{
	(void)c;
	if (self->closed)
		Py_RETURN_NONE;  /* as nflogr */
	return read_rcvbuf(self, 2);
}

static int set_rcvbuf(HandleObject *self, PyObject *v, void *c)
{
	(void)c;
	if (!v)
		return PyErr_SetString(PyExc_TypeError, "cannot delete rcvbuf"), -1;
	long bytes = PyLong_AsLong(v);
	int r;
	if (bytes == -1 && PyErr_Occurred())
		return -1;
	if (bytes < 0 || bytes > RCVBUF_MAX) {
		PyErr_Format(PyExc_ValueError, "rcvbuf %ld is out of range 0..%d (0 leaves it as it is)",
			     bytes, RCVBUF_MAX);
		return -1;
	}
	if (self->closed)
		return closed_error(), -1;
	if (bytes == 0)  /* as in open(): 0 keeps the buffer as it is */
		return 0;
	r = nfd_sock_set_rcvbuf(&self->sock, (int)bytes);
	if (r < 0)
		return set_error(r, "cannot set the receive buffer to %ld bytes", bytes), -1;
	return 0;
}

static PyObject *get_kernel_drops(HandleObject *self, void *c)
{
	(void)c;
	if (self->closed)
		return closed_error();
	long long v = nfd_sock_kernel_drops(&self->sock);
	if (v < 0)
		return set_error((int)v, "cannot read the socket's drop counter");
	return PyLong_FromLongLong(v);
}

static PyObject *get_queued(HandleObject *self, void *c)
{
	(void)c;
	return PyLong_FromSsize_t(queued(self));
}

static PyObject *get_closed(HandleObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->closed);
}

static PyObject *get_last_message_time(HandleObject *self, void *c)
{
	(void)c;
	double t = self->sock.last_message_time;
	if (t == 0.0)
		Py_RETURN_NONE;
	return PyFloat_FromDouble(t);
}

/* len(h): records queued, as nflogr (so an empty queue makes the handle false). */
static Py_ssize_t handle_length(HandleObject *self)
{
	return queued(self);
}

static PyMappingMethods handle_mapping = {
	.mp_length = (lenfunc)handle_length,
};

static PyMethodDef handle_methods[] = {
	{"next", (PyCFunction)(void (*)(void))handle_next, METH_VARARGS | METH_KEYWORDS, next_doc},
	{"queue", (PyCFunction)(void (*)(void))handle_queue, METH_VARARGS | METH_KEYWORDS, queue_doc},
	{"loop", (PyCFunction)(void (*)(void))handle_loop, METH_VARARGS | METH_KEYWORDS, loop_doc},
	{"aggregate", (PyCFunction)(void (*)(void))handle_aggregate, METH_VARARGS | METH_KEYWORDS,
	 aggregate_doc},
	{"configure", (PyCFunction)(void (*)(void))handle_configure, METH_VARARGS | METH_KEYWORDS,
	 configure_doc},
	{"close", (PyCFunction)handle_close, METH_NOARGS, close_doc},
	{"getfd", (PyCFunction)handle_getfd, METH_NOARGS, getfd_doc},
	{"fileno", (PyCFunction)handle_fileno, METH_NOARGS, fileno_doc},
	{"getgroup", (PyCFunction)handle_getgroup, METH_NOARGS, getgroup_doc},
	{"__enter__", (PyCFunction)handle_enter, METH_NOARGS, enter_doc},
	{"__exit__", (PyCFunction)handle_exit, METH_VARARGS, exit_doc},
	{NULL, NULL, 0, NULL},
};

#define COUNTER(name, which, doc) {name, (getter)get_counter, NULL, PyDoc_STR(doc), (void *)(intptr_t)which}

static PyGetSetDef handle_getset[] = {
	{"rcvbuf", (getter)get_rcvbuf, (setter)set_rcvbuf,
	 PyDoc_STR("Socket receive buffer in bytes as asked for (the kernel keeps twice as much, see "
		   "kernel_rcvbuf), None once closed; set it to grow or shrink the buffer (0: no change)."),
	 NULL},
	{"kernel_rcvbuf", (getter)get_kernel_rcvbuf, NULL,
	 PyDoc_STR("Socket receive buffer in bytes as the kernel reports it (twice rcvbuf)."), NULL},
	{"drops", (getter)get_drops, (setter)set_drops,
	 PyDoc_STR("ENOBUFS errors seen (the kernel dropped messages); can only be set to 0."), NULL},
	{"queued", (getter)get_queued, NULL, PyDoc_STR("Records read from the socket, not yet returned."), NULL},
	COUNTER("received", C_RECEIVED, "Records received from the kernel."),
	COUNTER("lost", C_LOST, "Records lost between kernel and reader, exact from sequence gaps "
		"(seq=True); a loss at the tail shows when the next record arrives."),
	COUNTER("truncated", C_TRUNCATED, "Datagrams larger than the receive buffer, discarded."),
	COUNTER("decode_errors", C_DECODE, "Malformed messages skipped."),
	COUNTER("datagrams", C_DATAGRAMS, "Datagrams received."),
	{"kernel_drops", (getter)get_kernel_drops, NULL,
	 PyDoc_STR("Datagrams the kernel dropped at this socket's full receive queue (sk_drops)."), NULL},
	{"last_message_time", (getter)get_last_message_time, NULL,
	 PyDoc_STR("Unix time the last record was received, or None."), NULL},
	{"closed", (getter)get_closed, NULL, PyDoc_STR("True once closed."), NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(handle_doc,
"Nflog(group, *, timeout=0.0, qthresh=1, rcvbuf=0, nlbuf=0, enobufs=0, copymode=2, copyrange=0, "
"seq=False, conntrack=False)\n--\n\n"
"A handle on one NFLOG group, bound on creation (use nflog.open(), which documents the arguments;\n"
"enobufs=0 is ENOBUFS_RAISE, copymode=2 is COPY_PACKET). Iterating yields records until the\n"
"handle is closed; it is a context manager that closes on exit.");

PyTypeObject NflogType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "nflogd.nflog.Nflog",
	.tp_basicsize = sizeof(HandleObject),
	.tp_dealloc = (destructor)handle_dealloc,
	.tp_as_mapping = &handle_mapping,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = handle_doc,
	.tp_iter = PyObject_SelfIter,
	.tp_iternext = (iternextfunc)handle_iternext,
	.tp_methods = handle_methods,
	.tp_getset = handle_getset,
	.tp_init = (initproc)handle_init,
	.tp_new = handle_new,
};
