/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Named networks (the `networks:` list): longest-prefix match of an address to a network index.
 * Pure C. One sorted array of masked prefixes per prefix length in use, searched from the longest
 * length down: a few thousand networks cost (lengths in use) x log2(networks per length)
 * comparisons, with no allocation after building and nothing shared between threads but reads. */
#ifndef NFLOGD_NETMATCH_H
#define NFLOGD_NETMATCH_H

#include <stddef.h>
#include <stdint.h>

struct nfd_prefix {
	uint64_t hi, lo;   /* the masked address, big-endian bit order: IPv4 in the top of hi */
	uint32_t index;    /* 1-based network index; 0 is "no network" */
};

struct nfd_len_table {
	uint8_t len;       /* prefix length */
	size_t n;
	struct nfd_prefix *v;  /* sorted by (hi, lo) */
};

struct nfd_family_nets {
	size_t nlens;
	struct nfd_len_table lens[129];  /* longest first; only nlens used */
};

struct nfd_nets {
	struct nfd_family_nets v4, v6;
};

/* One network to add: family 4 or 6, addr in network byte order (4 or 16 bytes), len <= 32/128. */
struct nfd_net_spec {
	int family;
	uint8_t addr[16];
	uint8_t len;
	uint32_t index;
};

/* Build from specs (any order). Returns 0, -ENOMEM, or -EINVAL for a bad family or length; two
 * specs with the same prefix: the first wins (config validation rejects that earlier). */
int nfd_nets_build(struct nfd_nets *nets, const struct nfd_net_spec *specs, size_t n);
void nfd_nets_free(struct nfd_nets *nets);
/* The index of the longest prefix holding addr (4 or 16 bytes by family), or 0. */
uint32_t nfd_nets_lookup(const struct nfd_nets *nets, int family, const uint8_t *addr);
/* Zero the bits of addr beyond len (family 4: 4 bytes, 6: 16 bytes). */
void nfd_mask_addr(uint8_t *addr, int family, unsigned len);

#endif
