/* SPDX-License-Identifier: GPL-2.0-or-later */
/* NflogData: one record, holding its own copy of the message; values are built when read. */
#include "py_ext.h"

#include <errno.h>
#include <limits.h>
#include <net/if.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <libnetfilter_log/linux_nfnetlink_log.h>

typedef struct {
	PyObject_VAR_HEAD
	struct ifresolver *ifr;   /* the reading handle's namespace; NULL until set */
	PyObject *devnames;       /* unpickled: (indev, outdev, physindev, physoutdev) as named where
				   * the record was pickled; NULL for a record read here */
	struct nfd_record rec;  /* pointers into msg */
	_Alignas(8) uint8_t msg[1];
} DataObject;

struct ifresolver *ifresolver_new(void)
{
	struct ifresolver *r = malloc(sizeof(*r));
	if (!r)
		return NULL;
	/* Never bound and never used for I/O: it only anchors the namespace for ioctls. */
	r->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (r->fd < 0) {
		int e = errno;
		free(r);
		errno = e;
		return NULL;
	}
	r->refs = 1;
	return r;
}

void ifresolver_decref(struct ifresolver *r)
{
	if (r && --r->refs == 0) {
		close(r->fd);
		free(r);
	}
}

/* A record from a copy of len bytes of message (whose nlmsg_len the caller checked equals len). */
static PyObject *data_new(const void *msg, size_t len, struct ifresolver *ifr)
{
	DataObject *d = PyObject_NewVar(DataObject, &NflogDataType, (Py_ssize_t)len);
	if (!d)
		return NULL;
	d->ifr = NULL;
	d->devnames = NULL;
	memcpy(d->msg, msg, len);
	/* Parsed again from our own copy so every pointer stays valid as long as the object. */
	if (nfd_record_parse((const struct nlmsghdr *)d->msg, &d->rec) < 0) {
		Py_DECREF(d);
		return set_error(-EBADMSG, "malformed NFLOG message");
	}
	if (ifr) {
		ifr->refs++;
		d->ifr = ifr;
	}
	return (PyObject *)d;
}

PyObject *data_from_message(const struct nlmsghdr *nlh, struct ifresolver *ifr)
{
	return data_new(nlh, nlh->nlmsg_len, ifr);
}

static void data_dealloc(DataObject *self)
{
	ifresolver_decref(self->ifr);
	Py_XDECREF(self->devnames);
	PyObject_Free(self);
}

#define REC(self) (&((DataObject *)(self))->rec)

static PyObject *u32_or_none(PyObject *self, int attr, uint32_t value)
{
	if (!REC_HAS(REC(self), attr))
		Py_RETURN_NONE;
	return PyLong_FromUnsignedLong(value);
}

static PyObject *bytes_or_none(const uint8_t *p, Py_ssize_t len)
{
	if (!p)
		Py_RETURN_NONE;
	return PyBytes_FromStringAndSize((const char *)p, len);
}

/* Interface names are looked up when read, not per record (most readers never ask), and in the
 * namespace of the handle that read the record. None when the index is unknown there (now). */
static PyObject *ifname_or_none(PyObject *self, uint32_t ifindex)
{
	const struct ifresolver *r = ((DataObject *)self)->ifr;
	struct ifreq req;

	if (!ifindex || ifindex > INT_MAX)
		Py_RETURN_NONE;
	if (!r) {
		char name[IF_NAMESIZE];
		if (!if_indextoname(ifindex, name))
			Py_RETURN_NONE;
		return PyUnicode_DecodeFSDefault(name);
	}
	memset(&req, 0, sizeof(req));
	req.ifr_ifindex = (int)ifindex;
	if (ioctl(r->fd, SIOCGIFNAME, &req) < 0)
		Py_RETURN_NONE;
	req.ifr_name[IFNAMSIZ - 1] = '\0';
	return PyUnicode_DecodeFSDefault(req.ifr_name);
}

/* proto, hwtype, nfmark and hwhdr are 0 / b"" when the kernel sent none, as in nflogr: it omits
 * the mark exactly when it is 0, and the hardware fields where there is no hardware header. */
static PyObject *get_proto(PyObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(REC(self)->hw_protocol);
}

static PyObject *get_hook(PyObject *self, void *c)
{
	(void)c;
	if (!REC_HAS(REC(self), NFULA_PACKET_HDR))
		Py_RETURN_NONE;
	return PyLong_FromLong(REC(self)->hook);
}

static PyObject *get_family(PyObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(REC(self)->family);
}

static PyObject *get_group(PyObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(REC(self)->group);
}

static PyObject *get_hwtype(PyObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(REC(self)->hwtype);
}

static PyObject *get_nfmark(PyObject *self, void *c)
{
	(void)c;
	return PyLong_FromUnsignedLong(REC(self)->mark);
}

static PyObject *get_uid(PyObject *self, void *c)
{
	(void)c;
	return u32_or_none(self, NFULA_UID, REC(self)->uid);
}

static PyObject *get_gid(PyObject *self, void *c)
{
	(void)c;
	return u32_or_none(self, NFULA_GID, REC(self)->gid);
}

static PyObject *get_seq(PyObject *self, void *c)
{
	(void)c;
	return u32_or_none(self, NFULA_SEQ, REC(self)->seq);
}

static PyObject *get_timestamp_us(PyObject *self, void *c)
{
	const struct nfd_record *r = REC(self);
	(void)c;
	if (!REC_HAS(r, NFULA_TIMESTAMP))
		Py_RETURN_NONE;
	return PyLong_FromLongLong((long long)r->ts_sec * 1000000 + r->ts_usec);
}

static PyObject *get_timestamp(PyObject *self, void *c)
{
	const struct nfd_record *r = REC(self);
	(void)c;
	if (!REC_HAS(r, NFULA_TIMESTAMP))
		Py_RETURN_NONE;
	/* From the microseconds, as nflogr computes it, so both give the very same float. */
	return PyFloat_FromDouble((double)((long long)r->ts_sec * 1000000 + r->ts_usec) / 1e6);
}

/* Devices: the name (resolved now) and the raw index. closure selects which of the four. */
static uint32_t dev_index(PyObject *self, void *which)
{
	const struct nfd_record *r = REC(self);
	switch ((intptr_t)which) {
	case 0: return r->indev;
	case 1: return r->outdev;
	case 2: return r->physindev;
	default: return r->physoutdev;
	}
}

static PyObject *get_devname(PyObject *self, void *which)
{
	PyObject *names = ((DataObject *)self)->devnames;
	if (names) {
		PyObject *name = PyTuple_GET_ITEM(names, (intptr_t)which);
		Py_INCREF(name);
		return name;
	}
	return ifname_or_none(self, dev_index(self, which));
}

static PyObject *get_devindex(PyObject *self, void *which)
{
	uint32_t i = dev_index(self, which);
	if (!i)
		Py_RETURN_NONE;
	return PyLong_FromUnsignedLong(i);
}

static PyObject *get_hwaddr(PyObject *self, void *c)
{
	(void)c;
	return bytes_or_none(REC(self)->hwaddr, REC(self)->hwaddr_len);
}

static PyObject *get_hwhdr(PyObject *self, void *c)
{
	(void)c;
	if (!REC(self)->hwhdr)
		return PyBytes_FromStringAndSize(NULL, 0);
	return PyBytes_FromStringAndSize((const char *)REC(self)->hwhdr, REC(self)->hwhdr_len);
}

static PyObject *get_payload(PyObject *self, void *c)
{
	(void)c;
	return bytes_or_none(REC(self)->payload, REC(self)->payload_len);
}

static PyObject *get_prefix(PyObject *self, void *c)
{
	const struct nfd_record *r = REC(self);
	(void)c;
	if (!r->prefix)
		Py_RETURN_NONE;
	/* Prefixes are set by whoever wrote the rules: never fail on bytes that are not UTF-8. */
	return PyUnicode_DecodeUTF8((const char *)r->prefix, r->prefix_len, "backslashreplace");
}

static PyObject *get_l4proto(PyObject *self, void *c)
{
	(void)c;
	if (!REC(self)->has_l4proto)
		Py_RETURN_NONE;
	return PyLong_FromLong(REC(self)->l4proto);
}

static PyObject *get_length(PyObject *self, void *c)
{
	(void)c;
	if (!REC(self)->payload)
		Py_RETURN_NONE;
	return PyLong_FromUnsignedLong(REC(self)->ip_len);
}

/* ---- labels: fields derived from the copied payload (record.c), parsed when read ---------- */

static PyObject *get_addr(PyObject *self, void *which)
{
	uint8_t sa[16], da[16];
	char buf[INET6_ADDRSTRLEN];
	int fam = nfd_record_addrs(REC(self), sa, da);
	if (!fam)
		Py_RETURN_NONE;
	/* str, as inet_ntop writes it (RFC 5952 for IPv6): what labels show and logs print;
	 * ipaddress.ip_address() makes an object of it when one is wanted. */
	if (!inet_ntop(fam == 4 ? AF_INET : AF_INET6, which ? da : sa, buf, sizeof(buf)))
		return PyErr_SetFromErrno(PyExc_OSError);
	return PyUnicode_FromString(buf);
}

static PyObject *get_port(PyObject *self, void *which)
{
	uint16_t sport, dport;
	if (!nfd_record_ports(REC(self), &sport, &dport))
		Py_RETURN_NONE;
	return PyLong_FromLong(which ? dport : sport);
}

static PyObject *get_icmp_type(PyObject *self, void *c)
{
	uint8_t type;
	(void)c;
	if (!nfd_record_icmp_type(REC(self), &type))
		Py_RETURN_NONE;
	return PyLong_FromLong(type);
}

static PyObject *get_tcp_flags(PyObject *self, void *c)
{
	uint8_t flags;
	(void)c;
	if (!nfd_record_tcp_flags(REC(self), &flags))
		Py_RETURN_NONE;
	return PyLong_FromLong(flags);
}

static PyObject *get_ct_state(PyObject *self, void *c)
{
	static const char *const names[] = {NULL, "new", "established", "related"};
	enum nfd_ct_state st = nfd_record_ct_state(REC(self));
	(void)c;
	if (st == NFD_CT_NONE)
		Py_RETURN_NONE;
	return PyUnicode_FromString(names[st]);
}

#define GET(name, fn, doc) {name, (getter)fn, NULL, PyDoc_STR(doc), NULL}
#define DEV(name, fn, which, doc) {name, (getter)fn, NULL, PyDoc_STR(doc), (void *)(intptr_t)which}

/* nflogr's attributes first, in its order (dict(data) keeps it), then ours. */
static PyGetSetDef data_getset[] = {
	GET("proto", get_proto, "Layer 3 protocol (EtherType, see the PROTO_* constants)."),
	GET("hwtype", get_hwtype, "Hardware type (if_arp.h ARPHRD_*, see HWTYPE_*); 0 when the kernel sent none."),
	GET("nfmark", get_nfmark, "Packet mark (0 when unmarked: the kernel sends none then)."),
	GET("timestamp", get_timestamp, "Time the packet was logged (float, s), or None (never in OUTPUT)."),
	GET("timestamp_us", get_timestamp_us, "Time the packet was logged (int, microseconds), or None."),
	DEV("indev", get_devname, 0, "Input interface name, or None."),
	DEV("physindev", get_devname, 2, "Physical input interface name (bridges), or None."),
	DEV("outdev", get_devname, 1, "Output interface name, or None."),
	DEV("physoutdev", get_devname, 3, "Physical output interface name (bridges), or None."),
	GET("uid", get_uid, "Uid of the local socket that sent the packet, or None."),
	GET("gid", get_gid, "Gid of the local socket that sent the packet, or None."),
	GET("hwaddr", get_hwaddr, "Layer 2 source address (bytes), or None."),
	GET("hwhdr", get_hwhdr, "Layer 2 header (bytes; empty when the kernel sent none)."),
	GET("payload", get_payload, "Layer 3 packet data, up to the copy range (bytes), or None."),
	GET("prefix", get_prefix, "Log prefix of the rule (str; bytes not UTF-8 are escaped), or None."),
	DEV("indev_index", get_devindex, 0, "Input interface index, or None."),
	DEV("outdev_index", get_devindex, 1, "Output interface index, or None."),
	DEV("physindev_index", get_devindex, 2, "Physical input interface index, or None."),
	DEV("physoutdev_index", get_devindex, 3, "Physical output interface index, or None."),
	GET("seq", get_seq, "Sequence number within the group (open with seq=True), or None."),
	GET("hook", get_hook, "Netfilter hook number (0 prerouting .. 4 postrouting), or None."),
	GET("family", get_family, "Protocol family of the hook (NFPROTO_*: 2 IPv4, 10 IPv6, 7 bridge ...)."),
	GET("group", get_group, "NFLOG group the record came from."),
	GET("l4proto", get_l4proto, "IP protocol number of the transport header (6 TCP, 17 UDP ...), or None."),
	GET("length", get_length, "Packet length from the IP header (bytes), or None without payload."),
	/* labels: from the copied payload (record.c); None when the copy does not hold them */
	DEV("saddr", get_addr, 0, "Source address (str, RFC 5952 for IPv6), or None without an IP header."),
	DEV("daddr", get_addr, 1, "Destination address (str, RFC 5952 for IPv6), or None without an IP header."),
	DEV("sport", get_port, 0, "TCP/UDP/UDP-Lite/SCTP/DCCP source port, or None (also for non-first fragments)."),
	DEV("dport", get_port, 1, "TCP/UDP/UDP-Lite/SCTP/DCCP destination port, or None (also for non-first fragments)."),
	GET("icmp_type", get_icmp_type, "ICMP or ICMPv6 type (l4proto tells which), or None."),
	GET("tcp_flags", get_tcp_flags, "TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10 ...), or None."),
	GET("ct_state", get_ct_state, "Conntrack state ('new', 'established', 'related'), or None when the kernel sent none."),
	{NULL, NULL, NULL, NULL, NULL},
};

/* dict(data): (name, value) pairs of every attribute, as nflogr offers. */
static PyObject *data_iter(PyObject *self)
{
	PyObject *items = PyList_New(0), *it;
	if (!items)
		return NULL;
	for (PyGetSetDef *g = data_getset; g->name; g++) {
		PyObject *v = g->get(self, g->closure);
		PyObject *pair = v ? Py_BuildValue("(sN)", g->name, v) : NULL;
		if (!pair || PyList_Append(items, pair) < 0) {
			Py_XDECREF(pair);
			Py_DECREF(items);
			return NULL;
		}
		Py_DECREF(pair);
	}
	it = PyObject_GetIter(items);
	Py_DECREF(items);
	return it;
}

/* As nflogr: <NflogData {dict(data)}>. */
static PyObject *data_repr(PyObject *self)
{
	PyObject *d = PyDict_New(), *s = NULL;
	if (d && PyDict_MergeFromSeq2(d, self, 0) == 0)
		s = PyUnicode_FromFormat("<NflogData %S>", d);
	Py_XDECREF(d);
	return s;
}

/* Pickling: the message as the kernel sent it, and the interface names as they are here (an index
 * means nothing in another process's namespace). NflogData(message, devnames) rebuilds it. */
static PyObject *data_reduce(PyObject *self, PyObject *unused)
{
	DataObject *d = (DataObject *)self;
	PyObject *names = PyTuple_New(4);
	(void)unused;
	if (!names)
		return NULL;
	for (intptr_t i = 0; i < 4; i++) {
		PyObject *name = get_devname(self, (void *)i);
		if (!name) {
			Py_DECREF(names);
			return NULL;
		}
		PyTuple_SET_ITEM(names, i, name);
	}
	return Py_BuildValue("O(y#N)", (PyObject *)Py_TYPE(self), (const char *)d->msg,
			     Py_SIZE(d), names);
}

static PyObject *data_tp_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"message", "devnames", NULL};
	Py_buffer msg;
	PyObject *names, *d = NULL;
	struct nlmsghdr nlh;

	(void)type;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "y*O!:NflogData", kwlist, &msg, &PyTuple_Type,
					 &names))
		return NULL;
	if (PyTuple_GET_SIZE(names) != 4) {
		PyErr_SetString(PyExc_ValueError, "devnames must be (indev, outdev, physindev, physoutdev)");
		goto out;
	}
	for (Py_ssize_t i = 0; i < 4; i++) {
		PyObject *n = PyTuple_GET_ITEM(names, i);
		if (n != Py_None && !PyUnicode_Check(n)) {
			PyErr_SetString(PyExc_TypeError, "devnames must be str or None");
			goto out;
		}
	}
	/* Checked like a message from the kernel: the header's length must be the data's. */
	if (msg.len >= (Py_ssize_t)sizeof(nlh))
		memcpy(&nlh, msg.buf, sizeof(nlh));
	if (msg.len < (Py_ssize_t)sizeof(nlh) || msg.len > UINT16_MAX * 2 ||
	    nlh.nlmsg_len != (size_t)msg.len || !nfd_is_packet_msg(&nlh)) {
		PyErr_SetString(PyExc_ValueError, "not an NFLOG packet message");
		goto out;
	}
	d = data_new(msg.buf, (size_t)msg.len, NULL);
	if (d) {
		Py_INCREF(names);
		((DataObject *)d)->devnames = names;
	} else if (PyErr_ExceptionMatches(NflogError)) {
		/* A bad argument, not a failed NFLOG operation. */
		PyErr_Clear();
		PyErr_SetString(PyExc_ValueError, "malformed NFLOG packet message");
	}
out:
	PyBuffer_Release(&msg);
	return d;
}

static PyMethodDef data_methods[] = {
	{"__reduce__", (PyCFunction)data_reduce, METH_NOARGS,
	 PyDoc_STR("__reduce__($self, /)\n--\n\nFor pickle and copy: (NflogData, (message, devnames)).")},
	{NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(data_doc,
"NflogData(message, devnames)\n--\n\n"
"One NFLOG record. Read-only attributes; every attribute the kernel did not send is None, but\n"
"nfmark, hwtype, proto (0) and hwhdr (b'') as in nflogr. dict(data) gives all of them, nflogr's\n"
"first. Records pickle; the constructor rebuilds one from __reduce__'s parts (the message bytes\n"
"and the four interface names), checking the message as one from the kernel.");

PyTypeObject NflogDataType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "nflogd.nflog.NflogData",
	.tp_basicsize = offsetof(DataObject, msg),
	.tp_itemsize = 1,
	.tp_dealloc = (destructor)data_dealloc,
	.tp_repr = data_repr,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = data_doc,
	.tp_iter = data_iter,
	.tp_methods = data_methods,
	.tp_getset = data_getset,
	.tp_new = data_tp_new,
};
