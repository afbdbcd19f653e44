/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "agg_table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <libnetfilter_log/linux_nfnetlink_log.h>

const char *const agg_field_names[F_NFIELDS] = {
	"group", "prefix", "indev", "outdev", "physindev", "physoutdev",
	"uid", "gid", "family", "proto", "hook", "mark", "hwproto",
	"saddr", "daddr", "sport", "dport", "icmp_type", "tcp_flags", "src_net", "dst_net",
	"ct_state",
};

#define FIELDS_ADDR ((1u << F_SADDR) | (1u << F_DADDR) | (1u << F_SRC_NET) | (1u << F_DST_NET))
#define FIELD(f) (1u << (f))

#define INITIAL_SLOTS 64

/* The key hash: 16-byte blocks, each multiplied out in 128 bits with its own secret (the table's
 * seed and the block's position), XORed together. The blocks' products do not depend on each
 * other, so they run in parallel: a word-by-word chain of multiplies was a third of the per-record
 * time. The seed is random per table, so keys cannot be chosen to collide (spoofed addresses and
 * ports are attacker-controlled). */
#define H_P0 0xa0761d6478bd642full
#define H_P1 0xe7037ed1a0b428dbull
#define H_P2 0x8ebc6af09c88c6e3ull

static inline uint64_t mum(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;
	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static inline uint64_t load32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

_Static_assert(sizeof(struct agg_entry) % AGG_ENTRY_ALIGN == 0,
	       "an entry is whole cache lines");

/* Hash n bytes at p as 16-byte blocks. A short tail is read with overlapping loads inside the n
 * bytes (as wyhash does), never copied to a buffer first: that copy's byte stores stalled the
 * loads that followed. */
static uint64_t hash_bytes(const uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t h = n, a, b;
	for (uint64_t block = 1; n; block++) {
		uint64_t k = seed + block * H_P2;
		if (n >= 16) {
			a = load64(p);
			b = load64(p + 8);
			p += 16;
			n -= 16;
		} else {
			if (n >= 8) {
				a = load64(p);
				b = load64(p + n - 8);
			} else if (n >= 4) {
				a = load32(p);
				b = load32(p + n - 4);
			} else {
				a = (uint64_t)p[0] << 16 | (uint64_t)p[n >> 1] << 8 | p[n - 1];
				b = 0;
			}
			n = 0;
		}
		h ^= mum(a ^ k ^ H_P0, b ^ (k >> 32 | k << 32) ^ H_P1);
	}
	return h;
}

/* A packed key's hash. Read as words: only keys packed a while ago are hashed on the hot path
 * (settle()), since right after key_build's narrow stores these loads would stall on store
 * forwarding. */
static uint64_t key_hash(const struct agg_table *t, const uint8_t *ck)
{
	uint64_t h = hash_bytes(ck, agg_ckey_len(&t->plan, ck), t->seed);
	return mum(h ^ H_P0, t->seed ^ H_P1) | 1;  /* never 0: a zeroed entry can't match by accident */
}

/* n bytes of a and b equal? Words read with overlapping loads inside the n bytes, as in
 * hash_bytes: no call to memcmp. */
static inline bool bytes_equal(const uint8_t *a, const uint8_t *b, size_t n)
{
	if (n >= 8) {
		uint64_t d = 0;
		size_t i;
		for (i = 0; i + 8 <= n; i += 8)
			d |= load64(a + i) ^ load64(b + i);
		return !(d | (load64(a + n - 8) ^ load64(b + n - 8)));
	}
	if (n >= 4)
		return !((load32(a) ^ load32(b)) | (load32(a + n - 4) ^ load32(b + n - 4)));
	return !n || (a[0] == b[0] && a[n >> 1] == b[n >> 1] && a[n - 1] == b[n - 1]);
}

/* memcpy of n bytes (n <= 127, a prefix) as overlapping word copies inside the n bytes: the call
 * to memcpy for a variable length cost more than the copy. */
static inline void copy_bytes(uint8_t *dst, const uint8_t *src, size_t n)
{
	if (n >= 8) {
		size_t i;
		for (i = 0; i + 8 <= n; i += 8)
			memcpy(dst + i, src + i, 8);
		memcpy(dst + n - 8, src + n - 8, 8);
	} else if (n >= 4) {
		memcpy(dst, src, 4);
		memcpy(dst + n - 4, src + n - 4, 4);
	} else if (n) {
		dst[0] = src[0];
		dst[n >> 1] = src[n >> 1];
		dst[n - 1] = src[n - 1];
	}
}

/* Packed keys equal? (Both of this table: the lengths are in the bytes compared.) */
static inline bool key_equal(const struct agg_table *t, const uint8_t *a, const uint8_t *b)
{
	return bytes_equal(a, b, agg_ckey_len(&t->plan, b));
}

/* ---- packed keys ---------------------------------------------------------------------------- */

#define MEMBER_SIZE(m) sizeof(((struct agg_key *)0)->m)
/* Each field's bytes in a packed key: its agg_key member's (the prefix is apart, at the end). */
static const uint8_t field_width[F_NFIELDS] = {
	[F_GROUP] = MEMBER_SIZE(group), [F_PREFIX] = 0,
	[F_INDEV] = MEMBER_SIZE(indev), [F_OUTDEV] = MEMBER_SIZE(outdev),
	[F_PHYSINDEV] = MEMBER_SIZE(physindev), [F_PHYSOUTDEV] = MEMBER_SIZE(physoutdev),
	[F_UID] = MEMBER_SIZE(uid), [F_GID] = MEMBER_SIZE(gid), [F_FAMILY] = MEMBER_SIZE(family),
	[F_PROTO] = MEMBER_SIZE(proto), [F_HOOK] = MEMBER_SIZE(hook), [F_MARK] = MEMBER_SIZE(mark),
	[F_HWPROTO] = MEMBER_SIZE(hwproto), [F_SADDR] = MEMBER_SIZE(pk.saddr),
	[F_DADDR] = MEMBER_SIZE(pk.daddr), [F_SPORT] = MEMBER_SIZE(pk.sport),
	[F_DPORT] = MEMBER_SIZE(pk.dport), [F_ICMP_TYPE] = MEMBER_SIZE(pk.icmp_type),
	[F_TCP_FLAGS] = MEMBER_SIZE(pk.tcp_flags), [F_SRC_NET] = MEMBER_SIZE(pk.src_net),
	[F_DST_NET] = MEMBER_SIZE(pk.dst_net), [F_CT_STATE] = MEMBER_SIZE(pk.ct_state),
};
/* Where each field's value lives in an unpacked key. */
static const uint8_t member_offset[F_NFIELDS] = {
	[F_GROUP] = offsetof(struct agg_key, group), [F_PREFIX] = 0,
	[F_INDEV] = offsetof(struct agg_key, indev), [F_OUTDEV] = offsetof(struct agg_key, outdev),
	[F_PHYSINDEV] = offsetof(struct agg_key, physindev),
	[F_PHYSOUTDEV] = offsetof(struct agg_key, physoutdev),
	[F_UID] = offsetof(struct agg_key, uid), [F_GID] = offsetof(struct agg_key, gid),
	[F_FAMILY] = offsetof(struct agg_key, family), [F_PROTO] = offsetof(struct agg_key, proto),
	[F_HOOK] = offsetof(struct agg_key, hook), [F_MARK] = offsetof(struct agg_key, mark),
	[F_HWPROTO] = offsetof(struct agg_key, hwproto),
	[F_SADDR] = offsetof(struct agg_key, pk.saddr), [F_DADDR] = offsetof(struct agg_key, pk.daddr),
	[F_SPORT] = offsetof(struct agg_key, pk.sport), [F_DPORT] = offsetof(struct agg_key, pk.dport),
	[F_ICMP_TYPE] = offsetof(struct agg_key, pk.icmp_type),
	[F_TCP_FLAGS] = offsetof(struct agg_key, pk.tcp_flags),
	[F_SRC_NET] = offsetof(struct agg_key, pk.src_net),
	[F_DST_NET] = offsetof(struct agg_key, pk.dst_net),
	[F_CT_STATE] = offsetof(struct agg_key, pk.ct_state),
};

/* The largest plan's fixed part, every field keyed on: flags, prefix_len, addr_family; indev to
 * mark; group, hwproto; family, proto, hook; saddr, daddr; sport, dport, src_net, dst_net;
 * icmp_type, tcp_flags, ct_state (field_width's). */
#define CKEY_FIXED_LARGEST (3 + 7 * 4 + 2 * 2 + 3 * 1 + 2 * 16 + 4 * 2 + 3 * 1)
_Static_assert(CKEY_FIXED_LARGEST <= AGG_CKEY_FIXED_MAX && AGG_CKEY_FIXED_MAX % 16 == 0 &&
	       CKEY_FIXED_LARGEST + NFD_PREFIX_MAX <= AGG_CKEY_MAX &&
	       AGG_CKEY_FIXED_MAX <= AGG_CKEY_MAX, "a packed key's fixed part and prefix must fit");

static void plan_make(struct agg_ckey_plan *pl, uint32_t fields)
{
	unsigned off = 2;  /* flags, prefix_len */

	memset(pl, 0, sizeof(*pl));
	pl->fields = fields;
	if (fields & (FIELD(F_SADDR) | FIELD(F_DADDR)))
		pl->afam = (uint8_t)off++;
	for (int f = 0; f < F_NFIELDS; f++)
		if ((fields & FIELD(f)) && field_width[f]) {
			pl->off[f] = (uint8_t)off;
			off += field_width[f];
		}
	pl->fixed = (uint8_t)off;
}

void agg_ckey_unpack(const struct agg_ckey_plan *pl, const uint8_t *ck, struct agg_key *k)
{
	memset(k, 0, sizeof(*k));
	k->flags = ck[0];
	k->prefix_len = ck[1];
	if (pl->fields & (FIELD(F_SADDR) | FIELD(F_DADDR)))
		k->pk.addr_family = ck[pl->afam];
	for (int f = 0; f < F_NFIELDS; f++)
		if ((pl->fields & FIELD(f)) && field_width[f])
			memcpy((char *)k + member_offset[f], ck + pl->off[f], field_width[f]);
	memcpy(k->prefix, ck + pl->fixed, k->prefix_len);
}

static inline void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* Zero a packed key's fixed part (at most AGG_CKEY_FIXED_MAX bytes) as sixteen-byte stores. */
static inline void zero_fixed(uint8_t *ck)
{
	typedef char v16 __attribute__((vector_size(16), aligned(1), may_alias));
	v16 z = {0};
	__asm__("" : "+x"(z));  /* hides the zero: not turned into a call to memset */
	for (size_t i = 0; i < AGG_CKEY_FIXED_MAX; i += 16)
		*(v16 *)(ck + i) = z;
}

/* Addresses reduced to the mask before hashing, so one key holds a whole prefix; networks are
 * matched on the full address. */
static void key_addresses(const struct agg_table *t, const struct nfd_record *r, uint8_t *ck)
{
	uint8_t sa[16], da[16];
	uint32_t f = t->plan.fields;
	const uint8_t *o = t->plan.off;
	int fam = nfd_record_addrs(r, sa, da);
	unsigned mask = fam == 4 ? t->mask4 : t->mask6, full = fam == 4 ? 32 : 128;

	if (!fam)
		return;
	if (f & (FIELD(F_SADDR) | FIELD(F_DADDR)))
		ck[t->plan.afam] = (uint8_t)fam;
	if (t->nets && (f & FIELD(F_SRC_NET)))
		put16(ck + o[F_SRC_NET], (uint16_t)nfd_nets_lookup(t->nets, fam, sa));
	if (t->nets && (f & FIELD(F_DST_NET)))
		put16(ck + o[F_DST_NET], (uint16_t)nfd_nets_lookup(t->nets, fam, da));
	/* Constant sizes: copied inline, no call. */
	if (f & FIELD(F_SADDR)) {
		if (fam == 4)
			memcpy(ck + o[F_SADDR], sa, 4);
		else
			memcpy(ck + o[F_SADDR], sa, 16);
		if (mask < full)
			nfd_mask_addr(ck + o[F_SADDR], fam, mask);
	}
	if (f & FIELD(F_DADDR)) {
		if (fam == 4)
			memcpy(ck + o[F_DADDR], da, 4);
		else
			memcpy(ck + o[F_DADDR], da, 16);
		if (mask < full)
			nfd_mask_addr(ck + o[F_DADDR], fam, mask);
	}
}

/* Pack the record's key: only the chosen fields go in, so records differing elsewhere merge. */
static void key_build(const struct agg_table *t, const struct nfd_record *r, uint8_t *ck)
{
	uint32_t f = t->plan.fields;
	const uint8_t *o = t->plan.off;
	uint8_t flags = 0, v;

	zero_fixed(ck);
	if (f & FIELD(F_GROUP)) put16(ck + o[F_GROUP], r->group);
	if (f & FIELD(F_INDEV)) put32(ck + o[F_INDEV], r->indev);
	if (f & FIELD(F_OUTDEV)) put32(ck + o[F_OUTDEV], r->outdev);
	if (f & FIELD(F_PHYSINDEV)) put32(ck + o[F_PHYSINDEV], r->physindev);
	if (f & FIELD(F_PHYSOUTDEV)) put32(ck + o[F_PHYSOUTDEV], r->physoutdev);
	if ((f & FIELD(F_UID)) && REC_HAS(r, NFULA_UID)) {
		put32(ck + o[F_UID], r->uid);
		flags |= KEY_HAS_UID;
	}
	if ((f & FIELD(F_GID)) && REC_HAS(r, NFULA_GID)) {
		put32(ck + o[F_GID], r->gid);
		flags |= KEY_HAS_GID;
	}
	if (f & FIELD(F_FAMILY)) ck[o[F_FAMILY]] = r->family;
	if ((f & FIELD(F_PROTO)) && r->has_l4proto) {
		ck[o[F_PROTO]] = r->l4proto;
		flags |= KEY_HAS_PROTO;
	}
	if (f & FIELD(F_HOOK)) ck[o[F_HOOK]] = r->hook;
	if (f & FIELD(F_MARK)) put32(ck + o[F_MARK], r->mark);
	if (f & FIELD(F_HWPROTO)) put16(ck + o[F_HWPROTO], r->hw_protocol);
	if (f & FIELDS_ADDR)
		key_addresses(t, r, ck);
	if (f & (FIELD(F_SPORT) | FIELD(F_DPORT))) {
		uint16_t sport, dport;
		if (nfd_record_ports(r, &sport, &dport)) {
			flags |= KEY_HAS_PORTS;
			if (f & FIELD(F_SPORT)) put16(ck + o[F_SPORT], sport);
			if (f & FIELD(F_DPORT)) put16(ck + o[F_DPORT], dport);
		}
	}
	if ((f & FIELD(F_ICMP_TYPE)) && nfd_record_icmp_type(r, &v)) {
		ck[o[F_ICMP_TYPE]] = v;
		flags |= KEY_HAS_ICMP | (r->l4proto == 58 ? KEY_ICMP6 : 0);
	}
	if ((f & FIELD(F_TCP_FLAGS)) && nfd_record_tcp_flags(r, &v)) {
		ck[o[F_TCP_FLAGS]] = v;
		flags |= KEY_HAS_TCP_FLAGS;
	}
	if (f & FIELD(F_CT_STATE)) ck[o[F_CT_STATE]] = (uint8_t)nfd_record_ct_state(r);
	ck[0] = flags;
	if ((f & FIELD(F_PREFIX)) && r->prefix_len) {
		ck[1] = (uint8_t)r->prefix_len;
		copy_bytes(ck + t->plan.fixed, r->prefix, r->prefix_len);
	}
}

/* The attributes key_build reads for these fields, plus what every fold needs: the payload (bytes
 * and the L3/L4 fields come from its IP header, which needs PACKET_HDR's protocol) and SEQ (loss).
 * A field added to key_build adds its attribute here. */
uint32_t agg_wanted_attrs(uint32_t fields)
{
	static const uint32_t attr_of[F_NFIELDS] = {
		[F_PREFIX] = 1u << NFULA_PREFIX,
		[F_INDEV] = 1u << NFULA_IFINDEX_INDEV,
		[F_OUTDEV] = 1u << NFULA_IFINDEX_OUTDEV,
		[F_PHYSINDEV] = 1u << NFULA_IFINDEX_PHYSINDEV,
		[F_PHYSOUTDEV] = 1u << NFULA_IFINDEX_PHYSOUTDEV,
		[F_UID] = 1u << NFULA_UID,
		[F_GID] = 1u << NFULA_GID,
		[F_MARK] = 1u << NFULA_MARK,
		[F_CT_STATE] = 1u << NFULA_CT_INFO,
	};
	uint32_t want = (1u << NFULA_PAYLOAD) | (1u << NFULA_PACKET_HDR) | (1u << NFULA_SEQ);
	for (int i = 0; i < F_NFIELDS; i++)
		if (fields & (1u << i))
			want |= attr_of[i];
	return want;
}

int agg_init(struct agg_table *t, uint32_t fields, size_t max_keys, struct agg_budget *budget)
{
	memset(t, 0, sizeof(*t));
	plan_make(&t->plan, fields);
	if (getrandom(&t->seed, sizeof(t->seed), GRND_NONBLOCK) != sizeof(t->seed))
		t->seed = (uint64_t)(uintptr_t)t ^ 0x243f6a8885a308d3ull;  /* no entropy yet: still varies */
	t->mask4 = 32;
	t->mask6 = 128;
	t->max_keys = max_keys;
	t->budget = budget;
	t->nslots = INITIAL_SLOTS;
	t->slots = calloc(t->nslots, sizeof(*t->slots));
	if (!t->slots)
		return -ENOMEM;
	t->clock_base = (time_t)agg_clock_read(t);  /* read relative to 0, as memset left it */
	pthread_mutex_init(&t->lock, NULL);
	if (budget) {
		pthread_mutex_lock(&budget->members_lock);
		t->next_member = budget->members;
		budget->members = t;
		pthread_mutex_unlock(&budget->members_lock);
	}
	return 0;
}

void agg_budget_init(struct agg_budget *b, long limit)
{
	memset(b, 0, sizeof(*b));
	b->limit = limit;
	pthread_mutex_init(&b->members_lock, NULL);
}

void agg_budget_destroy(struct agg_budget *b)
{
	pthread_mutex_destroy(&b->members_lock);
}

uint32_t agg_clock_read(const struct agg_table *t)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  /* vDSO, no syscall: cheap per datagram */
	return (uint32_t)(ts.tv_sec - t->clock_base);
}

void agg_clock(struct agg_table *t)
{
	if (!t->manual_clock) {
		uint32_t now = agg_clock_read(t);
		if (now > t->now)
			t->now = now;
	}
}

static void release_keys(struct agg_table *t, size_t n)
{
	if (t->budget && n)
		__atomic_fetch_sub(&t->budget->used, (long)n, __ATOMIC_RELAXED);
}

/* Every entry gone (returned to the budget); the counters stay. */
static void drop_entries(struct agg_table *t)
{
	release_keys(t, t->nentries);
	memset(t->slots, 0, t->nslots * sizeof(*t->slots));
	t->nentries = t->hot = 0;
	t->shape++;
	t->nvictims = 0;
}

void agg_clear(struct agg_table *t)
{
	drop_entries(t);
	if (t->sketch)
		memset(t->sketch, 0, AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH * sizeof(*t->sketch));
	t->sketch_total = 0;
	t->overflow_packets = t->overflow_bytes = t->records = 0;
	t->pressure_until = 0;
	memset(&t->churn, 0, sizeof(t->churn));
}

void agg_relabel(struct agg_table *t, uint32_t fields)
{
	for (size_t i = 0; i < t->nentries; i++) {
		t->overflow_packets += t->entries[i].packets;
		t->overflow_bytes += t->entries[i].bytes;
	}
	drop_entries(t);
	if (t->sketch)
		memset(t->sketch, 0, AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH * sizeof(*t->sketch));
	t->sketch_total = 0;
	t->pressure_until = 0;
	plan_make(&t->plan, fields);
}

void agg_destroy(struct agg_table *t)
{
	if (!t->slots)
		return;
	if (t->budget) {
		pthread_mutex_lock(&t->budget->members_lock);
		for (struct agg_table **p = &t->budget->members; *p; p = &(*p)->next_member)
			if (*p == t) {
				*p = t->next_member;
				break;
			}
		pthread_mutex_unlock(&t->budget->members_lock);
	}
	agg_clear(t);
	free(t->slots);
	free(t->entries);
	free(t->sketch);
	t->slots = NULL;
	t->entries = NULL;
	t->sketch = NULL;
	pthread_mutex_destroy(&t->lock);
}

/* May this table take one more key? Reserves it in the shared budget when it may. */
static bool reserve_key(struct agg_table *t)
{
	if (t->nentries >= t->max_keys)
		return false;
	if (!t->budget)
		return true;
	/* A plain load first: under a flood the budget is full and every record would otherwise pay
	 * for two atomic read-modify-writes on a line all groups share. */
	if (__atomic_load_n(&t->budget->used, __ATOMIC_RELAXED) >= t->budget->limit)
		return false;
	if (__atomic_fetch_add(&t->budget->used, 1, __ATOMIC_RELAXED) < t->budget->limit)
		return true;
	__atomic_fetch_sub(&t->budget->used, 1, __ATOMIC_RELAXED);
	return false;
}

#define SLOT_TAG_MASK 0xffffffff00000000ull

/* The slot naming entry `index` (0-based), whose key's tag (hash >> 32) is tag. */
static inline uint64_t slot_make(uint32_t tag, size_t index)
{
	return (uint64_t)tag << 32 | (uint32_t)(index + 1);
}

/* Where the probe for a key whose tag is tag starts. */
static inline size_t slot_home(const struct agg_table *t, uint32_t tag)
{
	return tag & (t->nslots - 1);
}

/* The entry a non-empty slot names. */
static inline size_t slot_index(uint64_t slot)
{
	return (uint32_t)slot - 1;
}

static int grow_slots(struct agg_table *t)
{
	size_t n = t->nslots * 2, mask = n - 1;
	uint64_t *slots = calloc(n, sizeof(*slots));
	if (!slots)
		return -ENOMEM;
	for (size_t i = 0; i < t->nentries; i++) {
		size_t j = t->entries[i].tag & mask;
		while (slots[j])
			j = (j + 1) & mask;
		slots[j] = slot_make(t->entries[i].tag, i);
	}
	free(t->slots);
	t->slots = slots;
	t->nslots = n;
	return 0;
}

static int grow_entries(struct agg_table *t)
{
	size_t cap = t->capacity ? t->capacity * 2 : 64;
	void *e;
	/* Not realloc: it keeps only malloc's alignment. */
	if (posix_memalign(&e, AGG_ENTRY_ALIGN, cap * sizeof(struct agg_entry)) != 0)
		return -ENOMEM;
	if (t->nentries)
		memcpy(e, t->entries, t->nentries * sizeof(struct agg_entry));
	free(t->entries);
	t->entries = e;
	t->capacity = cap;
	return 0;
}

/* A new entry for key, counting rec; the key is reserved already. -ENOMEM leaves the table as is. */
static int insert_entry(struct agg_table *t, const uint8_t *key, uint64_t h,
			uint32_t ip_len, uint32_t recent)
{
	size_t mask, j;

	if ((t->nentries == t->capacity && grow_entries(t) < 0) ||
	    ((t->nentries + 1) * 2 > t->nslots && grow_slots(t) < 0))
		return -ENOMEM;
	mask = t->nslots - 1;
	for (j = slot_home(t, (uint32_t)(h >> 32)); t->slots[j]; j = (j + 1) & mask)
		;
	struct agg_entry *e = &t->entries[t->nentries];
	memcpy(e->ckey, key, agg_ckey_len(&t->plan, key));
	e->tag = (uint32_t)(h >> 32);
	e->serial = ++t->last_serial;  /* a new key in this entry: readers' caches must not match */
	e->packets = 1;
	e->bytes = ip_len;
	e->recent = recent;
	e->last_seen = e->admitted = t->now;
	t->slots[j] = slot_make(e->tag, t->nentries++);
	t->shape++;
	t->hot = t->nentries;
	t->hot_shape = t->shape;
	t->churn.admitted++;
	return 0;
}

static size_t slot_of(const struct agg_table *t, size_t index)
{
	size_t mask = t->nslots - 1, j = slot_home(t, t->entries[index].tag);
	while ((uint32_t)t->slots[j] != index + 1)
		j = (j + 1) & mask;
	return j;
}

/* Remove entry i, its counts moving into the remainder; the last entry takes its place. The caller
 * returns the key to the budget (or reuses it). */
static void remove_entry(struct agg_table *t, size_t i)
{
	size_t mask = t->nslots - 1, j = slot_of(t, i), k, last = t->nentries - 1;

	t->overflow_packets += t->entries[i].packets;
	t->overflow_bytes += t->entries[i].bytes;
	/* Linear probing's backward-shift delete: no tombstones, so lookups stay one probe run. */
	t->slots[j] = 0;
	for (k = (j + 1) & mask; t->slots[k]; k = (k + 1) & mask) {
		size_t ideal = slot_home(t, (uint32_t)(t->slots[k] >> 32));
		if (((k - ideal) & mask) >= ((k - j) & mask)) {
			t->slots[j] = t->slots[k];
			t->slots[k] = 0;
			j = k;
		}
	}
	if (i != last) {
		t->slots[slot_of(t, last)] = slot_make(t->entries[last].tag, i);
		t->entries[i] = t->entries[last];
		for (size_t v = 0; v < t->nvictims; v++)
			if (t->victims[v].index == last)
				t->victims[v].index = (uint32_t)i;
	}
	t->nentries = last;
	t->shape++;
}

/* ---- the sketch of newcomers' rates ------------------------------------------------------ */

_Static_assert(16 + AGG_SKETCH_DEPTH * AGG_SKETCH_BITS <= 64, "the sketch's rows need more hash bits");

/* Adds one record of the key hashed h; returns its estimate, 0 when there is no sketch (no memory).
 * Each row's index is 12 bits of the key hash, from bit 16 up (key_hash() mixes every bit), so no
 * second hash is computed per record. */
static uint32_t sketch_add(struct agg_table *t, uint64_t h)
{
	uint32_t lo = UINT32_MAX, *c[AGG_SKETCH_DEPTH];
	uint64_t bits = h >> 16;

	if (!t->sketch) {
		t->sketch = calloc(AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH, sizeof(*t->sketch));
		if (!t->sketch)
			return 0;
	}
	for (size_t d = 0; d < AGG_SKETCH_DEPTH; d++, bits >>= AGG_SKETCH_BITS) {
		c[d] = t->sketch + d * AGG_SKETCH_WIDTH + (bits & (AGG_SKETCH_WIDTH - 1));
		lo = *c[d] < lo ? *c[d] : lo;
	}
	lo += lo < UINT32_MAX;
	/* Conservative update: raise only the counters below the new estimate. */
	for (size_t d = 0; d < AGG_SKETCH_DEPTH; d++)
		*c[d] = *c[d] < lo ? lo : *c[d];
	t->sketch_total++;
	return lo;
}

/* The lightest still-valid victim of t, or -1; stale ones (gone since the sweep) are dropped. */
static long lightest_victim(struct agg_table *t)
{
	while (t->nvictims) {
		struct agg_victim *v = &t->victims[t->nvictims - 1];
		if (v->index < t->nentries && t->entries[v->index].serial == v->serial)
			return (long)v->index;
		t->nvictims--;
	}
	return -1;
}

/* Remove o's lightest eligible entry if est beats it, keeping its key reserved for the caller. */
static bool displace_in(struct agg_table *o, uint32_t est)
{
	long i = lightest_victim(o);
	if (i < 0 || (uint64_t)est <= (uint64_t)AGG_MARGIN * o->entries[i].recent)
		return false;
	o->nvictims--;
	remove_entry(o, (size_t)i);
	o->churn.displaced++;
	return true;
}

/* No light entry of t's own: take one of another table sharing the budget. The caller holds
 * t->lock; the others are only tried (trylock), so two tables doing this at once cannot
 * deadlock, and a busy one is skipped (the next record tries again). */
static bool displace_elsewhere(struct agg_table *t, uint32_t est)
{
	bool done = false;

	if (!t->budget || t->nentries >= t->max_keys)
		return false;
	pthread_mutex_lock(&t->budget->members_lock);
	for (struct agg_table *o = t->budget->members; o && !done; o = o->next_member) {
		if (o == t || pthread_mutex_trylock(&o->lock) != 0)
			continue;
		done = displace_in(o, est);
		pthread_mutex_unlock(&o->lock);
	}
	pthread_mutex_unlock(&t->budget->members_lock);
	return done;
}

/* A record whose key has no entry: it displaces the lightest eligible entry (its own table's,
 * else another's sharing the budget) when its key is clearly heavier, else it counts in the
 * remainder. A displacement moves the victim's counts into its table's remainder and hands its
 * reserved key to the newcomer, so the count of held keys never changes on the way. */
static void no_entry(struct agg_table *t, const uint8_t *key, uint64_t h, uint32_t ip_len)
{
	uint32_t est;

	/* A heavy key takes a free place if there is one (under pressure, when fill tokens ran
	 * out), else displaces. */
	if (t->policy.admit_rate && (est = sketch_add(t, h)) >= AGG_ADMIT_MIN && t->tokens &&
	    est >= AGG_MARGIN * (t->sketch_total / AGG_SKETCH_WIDTH) &&
	    (reserve_key(t) || displace_in(t, est) || displace_elsewhere(t, est))) {
		if (insert_entry(t, key, h, ip_len, est) == 0) {
			t->tokens--;
			return;
		}
		release_keys(t, 1);
	}
	t->overflow_packets++;
	t->overflow_bytes += ip_len;
	t->churn.remainder_records++;
}

static inline void count_on(struct agg_table *t, struct agg_entry *e, uint32_t ip_len)
{
	e->packets++;
	e->bytes += ip_len;
	e->recent++;
	e->last_seen = t->now;
}

/* Does t->hot still name the entry the previous record went to? */
static inline bool hot_valid(const struct agg_table *t)
{
	return t->hot && t->hot_shape == t->shape;
}

/* The hot entry (the previous record's), when it holds key k. */
static inline struct agg_entry *hot_entry(struct agg_table *t, const uint8_t *k)
{
	if (!hot_valid(t))
		return NULL;
	struct agg_entry *e = &t->entries[t->hot - 1];
	return key_equal(t, e->ckey, k) ? e : NULL;
}

/* A record of key k (hashed h), which has no entry: it needs room in the table, the limits and
 * memory (and, under pressure, a fill token); else see no_entry(). */
static void fold_new_key(struct agg_table *t, const uint8_t *k, uint64_t h, uint32_t ip_len)
{
	bool pressed = t->policy.ttl && t->policy.admit_rate && t->now < t->pressure_until;
	if (!pressed || t->fill_tokens) {
		if (reserve_key(t)) {
			if (insert_entry(t, k, h, ip_len, 1) == 0) {
				t->fill_tokens -= pressed;
				return;
			}
			release_keys(t, 1);
		} else if (t->policy.ttl && t->policy.admit_rate) {
			t->pressure_until = t->now + AGG_PRESSURE_SECONDS;
		}
	} else {
		/* New keys come faster than admit_rate: the pressure goes on. */
		t->pressure_until = t->now + AGG_PRESSURE_SECONDS;
	}
	t->hot = 0;  /* unless no_entry() gives it an entry, the next record must look again */
	no_entry(t, k, h, ip_len);
}

/* Count one record of key k (hashed h) on its entry, else as a new key; the hot entry becomes
 * the one counted on (t->hot 0: the remainder). */
static void fold_key(struct agg_table *t, const uint8_t *k, uint64_t h, uint32_t ip_len)
{
	size_t mask = t->nslots - 1, j;

	for (j = slot_home(t, (uint32_t)(h >> 32)); t->slots[j]; j = (j + 1) & mask) {
		if ((t->slots[j] & SLOT_TAG_MASK) != (h & SLOT_TAG_MASK))
			continue;  /* another key: its entry need not be read */
		struct agg_entry *e = &t->entries[slot_index(t->slots[j])];
		if (key_equal(t, e->ckey, k)) {
			count_on(t, e, ip_len);
			t->hot = slot_index(t->slots[j]) + 1;
			t->hot_shape = t->shape;
			return;
		}
	}
	fold_new_key(t, k, h, ip_len);
}

/* One record at a time (tests, tools): fold_key reads the key just built, which agg_ahead_* avoid. */
void agg_fold(struct agg_table *t, const struct nfd_record *rec)
{
	uint8_t key[AGG_CKEY_MAX];
	struct agg_entry *e;

	t->records++;
	key_build(t, rec, key);
	if ((e = hot_entry(t, key))) {
		count_on(t, e, rec->ip_len);
		return;
	}
	fold_key(t, key, key_hash(t, key), rec->ip_len);
}

/* ---- folding a datagram's records a few at a time -------------------------------------- */

/* Compare pending i with the one before it and hash it (or take that one's hash: floods are runs
 * of one key), prefetching its slot. Done one record after key_build wrote the key: read right
 * after its narrow stores, the key's words stall on store forwarding (the addresses' most). */
static inline void settle(const struct agg_table *t, struct agg_ahead *a, unsigned i)
{
	struct agg_pending *p = &a->p[i];

	p->same = i && key_equal(t, a->p[i - 1].ckey, p->ckey);
	if (p->same) {
		p->hash = a->p[i - 1].hash;
	} else {
		p->hash = key_hash(t, p->ckey);
		__builtin_prefetch(&t->slots[slot_home(t, (uint32_t)(p->hash >> 32))]);
	}
}

void agg_ahead_add(struct agg_ahead *a, const struct nfd_record *rec)
{
	struct agg_pending *p = &a->p[a->n];

	key_build(a->t, rec, p->ckey);
	p->ip_len = rec->ip_len;
	if (a->n)
		settle(a->t, a, a->n - 1);
	if (++a->n == AGG_AHEAD)
		agg_ahead_flush(a);
}

int agg_ahead_visit(void *ctx, const struct nfd_record *rec, const struct nlmsghdr *nlh)
{
	(void)nlh;
	agg_ahead_add(ctx, rec);
	return 0;
}

/* The entry a pending key's slot names, or the sketch counters it would add to when it has no
 * entry (a full budget), fetched into the cache while the keys before it are folded. A key
 * no slot's tag matches has no entry: p->found 0 says so while the table keeps its shape. */
static void prefetch_entry(const struct agg_table *t, struct agg_pending *p)
{
	size_t mask = t->nslots - 1, j;
	uint64_t tag = p->hash & SLOT_TAG_MASK;

	p->found = 0;
	for (j = slot_home(t, (uint32_t)(tag >> 32)); t->slots[j]; j = (j + 1) & mask) {
		if ((t->slots[j] & SLOT_TAG_MASK) == tag) {
			/* The counters and the key up to the end of its prefix (agg_entry's layout). */
			const char *e = (const char *)&t->entries[slot_index(t->slots[j])];
			p->found = (uint32_t)t->slots[j];
			size_t end = offsetof(struct agg_entry, ckey) + agg_ckey_len(&t->plan, p->ckey);
			__builtin_prefetch(e);
			for (size_t line = 64; line < end; line += 64)
				__builtin_prefetch(e + line);
			return;
		}
	}
	if (t->sketch) {
		uint64_t bits = p->hash >> 16;
		for (size_t d = 0; d < AGG_SKETCH_DEPTH; d++, bits >>= AGG_SKETCH_BITS)
			__builtin_prefetch(t->sketch + d * AGG_SKETCH_WIDTH +
					   (bits & (AGG_SKETCH_WIDTH - 1)));
	}
}

void agg_ahead_flush(struct agg_ahead *a)
{
	struct agg_table *t = a->t;
	unsigned n = a->n;
	uint32_t shape = t->shape;

	a->n = 0;
	if (n)
		settle(t, a, n - 1);
	for (unsigned i = 0; i < n; i++)
		if (!a->p[i].same)
			prefetch_entry(t, &a->p[i]);
	for (unsigned i = 0; i < n; i++) {
		const struct agg_pending *p = &a->p[i];
		struct agg_entry *e;
		t->records++;
		/* The hot entry is where the previous record went: the same key's record counts there
		 * unless that entry moved since (its serial), the batch's first compares its key. */
		if (p->same && hot_valid(t)) {
			count_on(t, &t->entries[t->hot - 1], p->ip_len);
			continue;
		}
		if (i == 0 && (e = hot_entry(t, p->ckey))) {
			count_on(t, e, p->ip_len);
			continue;
		}
		/* What the probe above found holds unless an entry came or went since: no second probe
		 * for a record with no entry (most of a random-source flood's) or whose tag named its
		 * entry (all but a tag collision's). */
		if (!p->same && t->shape == shape) {
			if (!p->found) {
				fold_new_key(t, p->ckey, p->hash, p->ip_len);
				continue;
			}
			e = &t->entries[slot_index(p->found)];
			if (key_equal(t, e->ckey, p->ckey)) {
				count_on(t, e, p->ip_len);
				t->hot = p->found;
				t->hot_shape = t->shape;
				continue;
			}
		}
		fold_key(t, p->ckey, p->hash, p->ip_len);
	}
}

/* ---- the sweep, once per second at most ------------------------------------------------- */

/* victims[0..n) as a max-heap on recent: the root is the heaviest of the lightest kept. */
static void heap_down(struct agg_victim *v, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && v[l].recent > v[m].recent)
			m = l;
		if (r < n && v[r].recent > v[m].recent)
			m = r;
		if (m == i)
			return;
		struct agg_victim tmp = v[i];
		v[i] = v[m];
		v[m] = tmp;
		i = m;
	}
}

static void heap_up(struct agg_victim *v, size_t i)
{
	while (i) {
		size_t p = (i - 1) / 2;
		if (v[p].recent >= v[i].recent)
			return;
		struct agg_victim tmp = v[i];
		v[i] = v[p];
		v[p] = tmp;
		i = p;
	}
}

void agg_tick(struct agg_table *t, uint32_t now)
{
	const struct agg_policy *p = &t->policy;
	uint32_t elapsed, shift = 0;
	size_t keep, n;

	uint64_t tokens;

	if (now > t->now)
		t->now = now;
	if (t->now == t->swept)
		return;
	elapsed = t->now - t->swept;
	t->swept = t->now;
	tokens = t->tokens + (uint64_t)elapsed * p->admit_rate;
	t->tokens = tokens > p->admit_rate ? p->admit_rate : (uint32_t)tokens;
	tokens = t->fill_tokens + (uint64_t)elapsed * p->admit_rate;
	t->fill_tokens = tokens > p->admit_rate ? p->admit_rate : (uint32_t)tokens;
	if (p->decay && t->now - t->decayed >= p->decay) {
		uint32_t periods = (t->now - t->decayed) / p->decay;
		shift = periods > 31 ? 31 : periods;
		t->decayed += periods * p->decay;
		if (t->sketch)
			for (size_t i = 0; i < AGG_SKETCH_DEPTH * AGG_SKETCH_WIDTH; i++)
				t->sketch[i] >>= shift;
		t->sketch_total >>= shift;
	}
	keep = p->admit_rate < AGG_MAX_VICTIMS ? p->admit_rate : AGG_MAX_VICTIMS;
	t->nvictims = 0;
	/* Backwards, so the entry that remove_entry() moves into place i was already seen. */
	for (size_t i = t->nentries; i-- > 0;) {
		struct agg_entry *e = &t->entries[i];
		/* Whole seconds, stamps truncated: "> ttl" means idle for more than ttl seconds. */
		if (p->ttl && t->now - e->last_seen > p->ttl) {
			remove_entry(t, i);
			release_keys(t, 1);
			t->churn.expired++;
			continue;
		}
		e->recent >>= shift;
		if (!keep || t->now - e->admitted < p->min_residency)
			continue;
		struct agg_victim v = {.index = (uint32_t)i, .recent = e->recent, .serial = e->serial};
		if (t->nvictims < keep) {
			t->victims[t->nvictims] = v;
			heap_up(t->victims, t->nvictims++);
		} else if (v.recent < t->victims[0].recent) {
			t->victims[0] = v;
			heap_down(t->victims, t->nvictims, 0);
		}
	}
	/* Heap sort into ascending order, then reverse: the lightest ends last, popped first. */
	for (n = t->nvictims; n > 1; n--) {
		struct agg_victim tmp = t->victims[0];
		t->victims[0] = t->victims[n - 1];
		t->victims[n - 1] = tmp;
		heap_down(t->victims, n - 1, 0);
	}
	for (size_t i = 0; i < t->nvictims / 2; i++) {
		struct agg_victim tmp = t->victims[i];
		t->victims[i] = t->victims[t->nvictims - 1 - i];
		t->victims[t->nvictims - 1 - i] = tmp;
	}
}
