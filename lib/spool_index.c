/*
 * spool_index.c — the key index and the interned reasons (spool_index.h).
 */
#include "spool_index.h"

#include <stdlib.h>
#include <string.h>

#include "dw.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif
#ifdef SLAB_ASAN
#include <sanitizer/asan_interface.h>
#define slab_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define slab_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define slab_poison(p, n) ((void)(p), (void)(n))
#define slab_unpoison(p, n) ((void)(p), (void)(n))
#endif

/* Hash of upstream '\0' key (and of interned reasons): eight bytes a step,
 * then a finalizer that spreads every input bit over the low bits the
 * tables index with. In memory only; never written anywhere. */
uint64_t key_hash(const char *s, size_t n)
{
	const uint64_t m = 0x9e3779b97f4a7c15ull;
	uint64_t h = (uint64_t)n * m, w;

	for (; n >= 8; s += 8, n -= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * m;
		h ^= h >> 32;
	}
	if (n) {
		w = 0;
		memcpy(&w, s, n);
		h = (h ^ w) * m;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

static struct keynode *tab_find(const struct keytab *t, const char *s, size_t n, uint64_t h)
{
	size_t mask = t->cap - 1;

	if (!t->cap)
		return NULL;
	for (size_t i = h & mask; t->t[i].k; i = (i + 1) & mask) {
		struct keynode *k = t->t[i].k;
		if (t->t[i].hash == h && k->len == n && memcmp(k->s, s, n) == 0)
			return k;
	}
	return NULL;
}

/* Put a slot's node in the first free slot of its probe sequence (it is
 * not in t yet); the slot's copy of the hash spares reading the node. */
static void tab_place(struct keytab *t, struct keyslot slot)
{
	size_t mask = t->cap - 1, i = slot.hash & mask;

	while (t->t[i].k)
		i = (i + 1) & mask;
	t->t[i] = slot;
}

/* The slot holding k in t, or SIZE_MAX when t does not have it. */
static size_t tab_slot_of(const struct keytab *t, const struct keynode *k)
{
	size_t mask = t->cap - 1;

	if (!t->cap)
		return SIZE_MAX;
	for (size_t i = k->hash & mask; t->t[i].k; i = (i + 1) & mask)
		if (t->t[i].k == k)
			return i;
	return SIZE_MAX;
}

/* Empty slot i, moving up each later member of its cluster that may sit
 * there (its home is not in the cyclic range (i, j]). */
static void tab_remove_at(struct keytab *t, size_t i)
{
	size_t mask = t->cap - 1;

	for (size_t j = (i + 1) & mask; t->t[j].k; j = (j + 1) & mask)
		if (((j - (t->t[j].hash & mask)) & mask) >= ((j - i) & mask)) {
			t->t[i] = t->t[j];
			i = j;
		}
	t->t[i].k = NULL;
}

struct keynode *keymap_find(const struct keymap *m, const char *s, size_t n, uint64_t h)
{
	struct keynode *k = tab_find(&m->cur, s, n, h);

	return k ? k : tab_find(&m->old, s, n, h);
}

/*
 * Move up to KEYMAP_STEP of old's slots into cur. Taking each key out of old
 * by the same backward shift keeps old's slots before mig empty: a shift
 * only fills slots of the cluster at or after the emptied one, and no
 * cluster wraps into an empty slot 0. So the slot at mig is looked at again
 * until it is empty, and every key is moved once.
 */
static void keymap_migrate(struct keymap *m)
{
	for (int budget = KEYMAP_STEP; m->old.cap && budget > 0; budget--) {
		if (m->old.t[m->mig].k) {
			tab_place(&m->cur, m->old.t[m->mig]);
			tab_remove_at(&m->old, m->mig);
		} else if (++m->mig == m->old.cap) {
			free(m->old.t);
			memset(&m->old, 0, sizeof(m->old));
			m->mig = 0;
		}
	}
}

/* A fresh cur of cap slots; the keys in the one before move over later. */
static void keymap_grow(struct keymap *m, size_t cap)
{
	while (m->old.cap) /* the move before this one must be over */
		keymap_migrate(m);
	m->old = m->cur;
	m->mig = 0;
	m->cur.t = dw_calloc(cap, sizeof(*m->cur.t));
	m->cur.cap = cap;
}

static size_t slab_class(size_t size)
{
	return (size + SLAB_CLASS - 1) / SLAB_CLASS - 1;
}

static void *slab_alloc(struct slab *sl, size_t size)
{
	size_t c = slab_class(size), sz = (c + 1) * SLAB_CLASS;
	void *p;

	if (size > SLAB_MAX)
		return dw_calloc(1, size);
	if ((p = sl->free[c])) {
		slab_unpoison(p, sz);
		sl->free[c] = *(void **)p;
	} else {
		if (sl->left < sz) {
			sl->blocks = dw_realloc(sl->blocks, (sl->nblocks + 1) * sizeof(void *));
			sl->cur = dw_malloc(SLAB_BLOCK);
			slab_poison(sl->cur, SLAB_BLOCK);
			sl->blocks[sl->nblocks++] = sl->cur;
			sl->left = SLAB_BLOCK;
		}
		p = sl->cur;
		slab_unpoison(p, sz);
		sl->cur += sz;
		sl->left -= sz;
	}
	sl->live++;
	memset(p, 0, sz);
	return p;
}

/* Blocks from index first on back to malloc. */
static void slab_free_blocks(struct slab *sl, size_t first)
{
	for (size_t i = first; i < sl->nblocks; i++) {
		slab_unpoison(sl->blocks[i], SLAB_BLOCK);
		free(sl->blocks[i]);
	}
}

/* With nothing live: keep the first block, empty, and free the rest. */
static void slab_trim(struct slab *sl)
{
	slab_free_blocks(sl, 1);
	memset(sl->free, 0, sizeof(sl->free));
	if (sl->nblocks) {
		sl->nblocks = 1;
		sl->cur = sl->blocks[0];
		sl->left = SLAB_BLOCK;
		slab_poison(sl->cur, SLAB_BLOCK);
	}
}

/* Every block back to malloc; the slab is empty and usable again. */
static void slab_release(struct slab *sl)
{
	slab_free_blocks(sl, 0);
	free(sl->blocks);
	memset(sl, 0, sizeof(*sl));
}

static void slab_free(struct slab *sl, void *p, size_t size)
{
	size_t c = slab_class(size);

	if (size > SLAB_MAX) {
		free(p);
		return;
	}
	if (--sl->live == 0) { /* the last one: give the memory back */
		slab_trim(sl);
		return;
	}
	*(void **)p = sl->free[c];
	sl->free[c] = p;
	slab_poison(p, (c + 1) * SLAB_CLASS);
}

void keystr_make(struct keystr *k, const char *upstream, const char *key)
{
	size_t ul = strlen(upstream), kl = strlen(key);

	k->n = ul + 1 + kl;
	k->s = k->n <= sizeof(k->buf) ? k->buf : dw_malloc(k->n);
	memcpy(k->s, upstream, ul);
	k->s[ul] = '\0';
	memcpy(k->s + ul + 1, key, kl);
	k->hash = key_hash(k->s, k->n);
}

void keystr_done(struct keystr *k)
{
	if (k->s != k->buf)
		free(k->s);
}

/*
 * Start loading the slot that upstream/key hashes to. A batch's new records
 * are mostly new keys (ids the legacy just assigned), each a cache miss in a
 * backlog's table; prefetched before the batch is written, those misses
 * overlap with the write instead of following one another in the fold.
 */
void keymap_prefetch(const struct keymap *m, const char *upstream, const char *key)
{
	struct keystr ks;

	if (!m->cur.cap)
		return;
	keystr_make(&ks, upstream, key);
	__builtin_prefetch(&m->cur.t[ks.hash & (m->cur.cap - 1)], 1);
	keystr_done(&ks);
}

struct keynode *keymap_get(struct keymap *m, const char *upstream, const char *key)
{
	struct keystr ks;
	struct keynode *k;

	keystr_make(&ks, upstream, key);
	k = keymap_find(m, ks.s, ks.n, ks.hash);
	if (!k) {
		keymap_migrate(m);
		if ((m->n + 1) * 2 > m->cur.cap)
			keymap_grow(m, m->cur.cap ? m->cur.cap * 2 : KEYMAP_MIN);
		k = slab_alloc(&m->slab, sizeof(*k) + ks.n);
		k->hash = ks.hash;
		k->len = ks.n;
		memcpy(k->s, ks.s, ks.n);
		tab_place(&m->cur, (struct keyslot){ .hash = ks.hash, .k = k });
		m->n++;
	}
	keystr_done(&ks);
	return k;
}

/* Both tables go (not the nodes); the index is empty and usable again. */
static void keymap_drop_tables(struct keymap *m)
{
	free(m->cur.t);
	free(m->old.t);
	memset(&m->cur, 0, sizeof(m->cur));
	memset(&m->old, 0, sizeof(m->old));
	m->mig = 0;
}

void keymap_free(struct keymap *m)
{
	const struct keytab *tabs[2] = { &m->cur, &m->old };

	for (int t = 0; t < 2; t++)
		for (size_t i = 0; i < tabs[t]->cap; i++) {
			struct keynode *k = tabs[t]->t[i].k;
			if (k && sizeof(*k) + k->len > SLAB_MAX)
				free(k);
		}
	slab_release(&m->slab);
	keymap_drop_tables(m);
	m->n = 0;
}

/* Drop a reference; the last one takes k out of the index and frees it. */
void keymap_release(struct keymap *m, struct keynode *k)
{
	size_t i;

	if (--k->refs)
		return;
	if ((i = tab_slot_of(&m->cur, k)) != SIZE_MAX)
		tab_remove_at(&m->cur, i);
	else
		tab_remove_at(&m->old, tab_slot_of(&m->old, k));
	slab_free(&m->slab, k, sizeof(*k) + k->len);
	if (--m->n == 0 && m->cur.cap > KEYMAP_MIN) { /* an outage drained */
		keymap_drop_tables(m);
	} else {
		keymap_migrate(m);
	}
}

const char *errs_get(struct errs *m, const char *s)
{
	size_t len;
	uint64_t h;
	struct errstr *x;

	if (!s)
		return NULL;
	len = strlen(s);
	h = key_hash(s, len);
	if (m->nb && (x = m->b[h & (m->nb - 1)]))
		for (; x; x = x->next)
			if (x->hash == h && strcmp(x->s, s) == 0) {
				x->refs++;
				return x->s;
			}
	if (m->n >= m->nb) { /* grow: power of two, rehash */
		size_t nb = m->nb ? m->nb * 2 : 64;
		struct errstr **b = dw_calloc(nb, sizeof(struct errstr *));
		for (size_t i = 0; i < m->nb; i++)
			while ((x = m->b[i])) {
				m->b[i] = x->next;
				x->next = b[x->hash & (nb - 1)];
				b[x->hash & (nb - 1)] = x;
			}
		free(m->b);
		m->b = b;
		m->nb = nb;
	}
	x = dw_malloc(sizeof(*x) + len + 1);
	x->hash = h;
	x->refs = 1;
	memcpy(x->s, s, len + 1);
	x->next = m->b[h & (m->nb - 1)];
	m->b[h & (m->nb - 1)] = x;
	m->n++;
	return x->s;
}

void errs_put(struct errs *m, const char *s)
{
	struct errstr *x, **pp;

	if (!s)
		return;
	x = (struct errstr *)(uintptr_t)(s - offsetof(struct errstr, s));
	if (--x->refs)
		return;
	for (pp = &m->b[x->hash & (m->nb - 1)]; *pp != x; pp = &(*pp)->next)
		;
	*pp = x->next;
	m->n--;
	free(x);
}

void errs_free(struct errs *m)
{
	struct errstr *x;

	for (size_t i = 0; i < m->nb; i++)
		while ((x = m->b[i])) {
			m->b[i] = x->next;
			free(x);
		}
	free(m->b);
}
