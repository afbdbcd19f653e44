/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Shared declarations of the Python side of nflogd._nflog. */
#ifndef NFLOGD_PY_EXT_H
#define NFLOGD_PY_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "agg_table.h"
#include "record.h"

extern PyObject *NflogError, *NflogDroppedError, *NflogClosedError, *NflogRetryError,
	*NflogPermissionError;
extern PyTypeObject NflogType, NflogDataType, AggregatorType, SeriesBudgetType, CountsType,
	CounterRendererType;

/* Raise the exception that fits a negative errno, with a message; returns NULL for `return set_error(...)`. */
PyObject *set_error(int negerr, const char *fmt, ...);

/* Resolves interface indexes in the network namespace of the handle that read a record: an unbound
 * netlink socket made there, because SIOCGIFNAME acts in the socket's namespace, not the calling
 * thread's (a handle opened inside another namespace must not name devices of the reader's).
 * Shared by a handle and the records it made; refs only change with the GIL held. */
struct ifresolver {
	int fd;
	Py_ssize_t refs;
};

/* A resolver for the calling thread's namespace with one reference, or NULL with errno set. */
struct ifresolver *ifresolver_new(void);
void ifresolver_decref(struct ifresolver *r);

/* A new NflogData holding a copy of one packet message; it takes a reference to ifr. */
PyObject *data_from_message(const struct nlmsghdr *nlh, struct ifresolver *ifr);

/* The aggregator's table, for Nflog.aggregate (which folds into it with the GIL released). */
struct agg_table *aggregator_table(PyObject *agg);
/* A key (unpacked: agg_ckey_unpack) as a tuple of its values in this field order (as snapshot()
 * has it). */
PyObject *aggregator_key_tuple(PyObject *agg, const int *order, int nfields,
			       const struct agg_key *k);
/* The aggregator's field order; read with its table's lock held, as a frozen copy must. */
void aggregator_order(PyObject *agg, int order[F_NFIELDS], int *nfields);
/* 0, or -1 with RuntimeError when Aggregator.__init__ was not called. */
int aggregator_check_ready(PyObject *agg);
/* Aggregator.counts(): a frozen Counts of agg (py_exposition.c). */
PyObject *counts_of(PyObject *agg);

#define SELF_FREE(o) Py_TYPE(o)->tp_free((PyObject *)(o))

#endif
