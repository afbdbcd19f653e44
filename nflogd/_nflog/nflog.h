/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Shared declarations of the Python side of nflogd._nflog. */
#ifndef NFLOGD_NFLOG_H
#define NFLOGD_NFLOG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "agg.h"
#include "record.h"

extern PyObject *NflogError, *NflogDroppedError, *NflogClosedError, *NflogRetryError;
extern PyTypeObject HandleType, DataType, AggregatorType, BudgetType;

/* Raise the exception that fits a negative errno, with a message; returns NULL for `return set_error(...)`. */
PyObject *set_error(int negerr, const char *fmt, ...);

/* A new NflogData holding a copy of one packet message. */
PyObject *data_from_message(const struct nlmsghdr *nlh);

/* The aggregator's table, for Nflog.aggregate (which folds into it with the GIL released). */
struct agg_table *aggregator_table(PyObject *agg);

#define SELF_FREE(o) Py_TYPE(o)->tp_free((PyObject *)(o))

#endif
