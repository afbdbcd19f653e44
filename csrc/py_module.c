/* SPDX-License-Identifier: GPL-2.0-or-later */
/* nflogd._nflog: read netfilter NFLOG groups through libnetfilter_log, as objects or aggregated in C. */
#include "py_ext.h"

#include <errno.h>
#include <stdarg.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "sock.h"

#ifndef LIBNETFILTER_LOG_VERSION
#define LIBNETFILTER_LOG_VERSION "unknown"
#endif

PyObject *NflogError, *NflogDroppedError, *NflogClosedError, *NflogRetryError, *NflogPermissionError;

PyObject *set_error(int negerr, const char *fmt, ...)
{
	int err = negerr < 0 ? -negerr : negerr;
	PyObject *type = NflogError, *msg, *args;
	va_list ap;

	if (err == ENOBUFS)
		type = NflogDroppedError;
	else if (err == ECANCELED)  /* only close() ends a handle; a lost fd is a failure */
		type = NflogClosedError;
	else if (err == EAGAIN || err == EINTR)
		type = NflogRetryError;
	else if (err == EPERM)  /* as OSError(EPERM, ...) would be: `except PermissionError` catches it */
		type = NflogPermissionError;
	va_start(ap, fmt);
	msg = PyUnicode_FromFormatV(fmt, ap);
	va_end(ap);
	if (!msg)
		return NULL;
	args = Py_BuildValue("(iN)", err, msg);
	if (args) {
		PyErr_SetObject(type, args);
		Py_DECREF(args);
	}
	return NULL;
}

PyDoc_STRVAR(module_doc,
"Read netfilter NFLOG groups through libnetfilter_log.\n\n"
"The low-level module under nflogd.nflog: Nflog handles give NflogData records (the nflogr API),\n"
"or fold records into an Aggregator entirely in C with the GIL released.");

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	.m_name = "nflogd._nflog",
	.m_doc = module_doc,
	.m_size = -1,
};

static int add_exception(PyObject *m, PyObject **slot, const char *name, PyObject *base,
			 const char *doc)
{
	char qualname[64];
	PyOS_snprintf(qualname, sizeof(qualname), "nflogd.nflog.%s", name);
	*slot = PyErr_NewExceptionWithDoc(qualname, doc, base, NULL);
	if (!*slot)
		return -1;
	Py_INCREF(*slot);
	return PyModule_AddObject(m, name, *slot);
}

/* NflogPermissionError is both an NflogError and a PermissionError (nflogr raises PermissionError). */
static int add_permission_error(PyObject *m)
{
	PyObject *bases = PyTuple_Pack(2, NflogError, PyExc_PermissionError);
	int r;
	if (!bases)
		return -1;
	r = add_exception(m, &NflogPermissionError, "NflogPermissionError", bases,
			  "Not permitted (EPERM): the group is bound by another socket, or root or "
			  "CAP_NET_ADMIN is missing. Also a PermissionError.");
	Py_DECREF(bases);
	return r;
}

static int add_type(PyObject *m, PyTypeObject *type, const char *name)
{
	if (PyType_Ready(type) < 0)
		return -1;
	Py_INCREF(type);
	return PyModule_AddObject(m, name, (PyObject *)type);
}

PyMODINIT_FUNC PyInit__nflog(void)
{
	PyObject *m = PyModule_Create(&module_def), *fields;
	if (!m)
		return NULL;
	if (add_exception(m, &NflogError, "NflogError", PyExc_OSError,
			  "An NFLOG operation failed; errno says why when there is one.") < 0 ||
	    add_exception(m, &NflogDroppedError, "NflogDroppedError", NflogError,
			  "The kernel dropped messages (ENOBUFS) with enobufs=ENOBUFS_RAISE.") < 0 ||
	    add_exception(m, &NflogClosedError, "NflogClosedError", NflogError,
			  "The handle was closed.") < 0 ||
	    add_exception(m, &NflogRetryError, "NflogRetryError", NflogError,
			  "A transient failure: the call may be retried.") < 0 ||
	    add_permission_error(m) < 0 ||
	    add_type(m, &NflogType, "Nflog") < 0 || add_type(m, &NflogDataType, "NflogData") < 0 ||
	    add_type(m, &AggregatorType, "Aggregator") < 0 ||
	    add_type(m, &SeriesBudgetType, "SeriesBudget") < 0 ||
	    add_type(m, &CountsType, "Counts") < 0 ||
	    add_type(m, &CounterRendererType, "CounterRenderer") < 0)
		goto fail;

	if (PyModule_AddIntConstant(m, "ENOBUFS_RAISE", ENOBUFS_RAISE) < 0 ||
	    PyModule_AddIntConstant(m, "ENOBUFS_HANDLE", ENOBUFS_HANDLE) < 0 ||
	    PyModule_AddIntConstant(m, "ENOBUFS_DISABLE", ENOBUFS_DISABLE) < 0 ||
	    PyModule_AddIntConstant(m, "COPY_NONE", NFULNL_COPY_NONE) < 0 ||
	    PyModule_AddIntConstant(m, "COPY_META", NFULNL_COPY_META) < 0 ||
	    PyModule_AddIntConstant(m, "COPY_PACKET", NFULNL_COPY_PACKET) < 0 ||
	    PyModule_AddIntConstant(m, "COPY_RANGE_MAX", NFD_COPY_RANGE_MAX) < 0 ||
	    PyModule_AddIntConstant(m, "NLBUF_MIN", nfd_nlbuf_min()) < 0 ||
	    PyModule_AddIntConstant(m, "NLBUF_MAX", NFD_NLBUF_MAX) < 0 ||
	    PyModule_AddIntConstant(m, "PREFIX_MAX", NFD_PREFIX_MAX) < 0 ||
	    PyModule_AddStringConstant(m, "LIBNETFILTER_LOG_VERSION", LIBNETFILTER_LOG_VERSION) < 0)
		goto fail;

	fields = PyTuple_New(F_NFIELDS);
	if (!fields)
		goto fail;
	for (int i = 0; i < F_NFIELDS; i++)
		PyTuple_SET_ITEM(fields, i, PyUnicode_FromString(agg_field_names[i]));
	if (PyModule_AddObject(m, "FIELDS", fields) < 0) {
		Py_DECREF(fields);
		goto fail;
	}
	return m;
fail:
	Py_DECREF(m);
	return NULL;
}
