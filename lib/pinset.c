/*
 * pinset.c — the counted (upstream, key) set of pinset.h: PINSET_SHARDS
 * chained hash tables, each behind its own mutex, a short list of upstreams
 * (by name; found by a scan, there are a handful) holding the per-upstream
 * counts, and the parked writes in a vector behind one more mutex.
 */
#include "pinset.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

#define PINSET_SHARDS 16
#define PINSET_UPSTREAMS 64
#define SWEEP_BATCH 512
#define PINSET_PREFIXES 16 /* distinct prefixes per upstream; past them a prefix pin is blind */

struct pin {
	struct pin *next;
	uint64_t hash;
	uint64_t count;
	struct pin_up *up;
	size_t len; /* of s: upstream '\0' key */
	char s[];
};

struct shard {
	pthread_mutex_t mu;
	struct pin **b;
	size_t nb, n;
};

struct prefix_pin {
	char *s; /* kept for the pinset's life once made: count may be 0 */
	size_t len;
	int64_t count;
};

struct pin_up {
	char *name;
	uint64_t keys;	/* atomic: distinct keys pinned */
	int64_t blind;	/* atomic */
	uint64_t parked; /* atomic */
	int64_t prefixed; /* atomic: the sum of pre[].count */
	struct prefix_pin pre[PINSET_PREFIXES]; /* under pinset.pre_mu */
	size_t npre;
};

struct ticket {
	uint64_t seq;
	struct pin_up *up;
	char **keys;
	size_t n;
	char **pre; /* prefix pins */
	size_t npre;
	bool blind;
};

struct pinset {
	struct shard shards[PINSET_SHARDS];
	uint64_t total;	 /* atomic: sum of every count and blind count */
	uint64_t underflows; /* atomic */
	pthread_mutex_t up_mu; /* insertion into ups */
	pthread_mutex_t pre_mu; /* every upstream's prefix pins */
	struct pin_up ups[PINSET_UPSTREAMS];
	size_t nups;	       /* atomic: published after the entry is written */
	pthread_mutex_t park_mu;
	struct ticket *park;
	size_t npark, cappark;
};

static uint64_t hash_pair(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h ^ (h >> 29);
}

struct pinset *pinset_new(void)
{
	struct pinset *ps = dw_calloc(1, sizeof(*ps));

	for (int i = 0; i < PINSET_SHARDS; i++) {
		pthread_mutex_init(&ps->shards[i].mu, NULL);
		ps->shards[i].nb = 64;
		ps->shards[i].b = dw_calloc(64, sizeof(struct pin *));
	}
	pthread_mutex_init(&ps->up_mu, NULL);
	pthread_mutex_init(&ps->pre_mu, NULL);
	pthread_mutex_init(&ps->park_mu, NULL);
	return ps;
}

static void ticket_clear(struct ticket *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->keys[i]);
	free(t->keys);
	for (size_t i = 0; i < t->npre; i++)
		free(t->pre[i]);
	free(t->pre);
}

void pinset_free(struct pinset *ps)
{
	if (!ps)
		return;
	for (int i = 0; i < PINSET_SHARDS; i++) {
		struct shard *sh = &ps->shards[i];

		for (size_t b = 0; b < sh->nb; b++)
			for (struct pin *p = sh->b[b], *n; p; p = n) {
				n = p->next;
				free(p);
			}
		free(sh->b);
		pthread_mutex_destroy(&sh->mu);
	}
	for (size_t i = 0; i < ps->nups; i++) {
		free(ps->ups[i].name);
		for (size_t k = 0; k < ps->ups[i].npre; k++)
			free(ps->ups[i].pre[k].s);
	}
	for (size_t i = 0; i < ps->npark; i++)
		ticket_clear(&ps->park[i]);
	free(ps->park);
	pthread_mutex_destroy(&ps->up_mu);
	pthread_mutex_destroy(&ps->pre_mu);
	pthread_mutex_destroy(&ps->park_mu);
	free(ps);
}

/* The upstream's entry; NULL when create is false and it has none (or the
 * table is full: then every upstream past PINSET_UPSTREAMS shares the last
 * one, which only makes blind reads blinder, never fewer). */
static struct pin_up *up_find(struct pinset *ps, const char *name)
{
	size_t n = __atomic_load_n(&ps->nups, __ATOMIC_ACQUIRE);

	for (size_t i = 0; i < n; i++)
		if (strcmp(ps->ups[i].name, name) == 0)
			return &ps->ups[i];
	return NULL;
}

static struct pin_up *up_get(struct pinset *ps, const char *name)
{
	struct pin_up *u = up_find(ps, name);

	if (u)
		return u;
	pthread_mutex_lock(&ps->up_mu);
	if (!(u = up_find(ps, name))) {
		if (ps->nups == PINSET_UPSTREAMS) {
			u = &ps->ups[PINSET_UPSTREAMS - 1];
		} else {
			u = &ps->ups[ps->nups];
			u->name = dw_strdup(name);
			__atomic_store_n(&ps->nups, ps->nups + 1, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&ps->up_mu);
	return u;
}

/* "upstream\0key" in buf (or a malloc'd one when long); returns its length. */
static size_t pair_make(const char *upstream, const char *key, char *buf, size_t cap, char **out)
{
	size_t ul = strlen(upstream), kl = strlen(key), n = ul + 1 + kl;
	char *p = n < cap ? buf : dw_malloc(n + 1);

	memcpy(p, upstream, ul + 1);
	memcpy(p + ul + 1, key, kl + 1);
	*out = p;
	return n;
}

static struct pin **pin_slot(struct shard *sh, const char *s, size_t n, uint64_t h)
{
	struct pin **pp = &sh->b[(h >> 4) & (sh->nb - 1)];

	for (; *pp; pp = &(*pp)->next)
		if ((*pp)->hash == h && (*pp)->len == n && memcmp((*pp)->s, s, n) == 0)
			break;
	return pp;
}

static void shard_grow(struct shard *sh)
{
	size_t nb = sh->nb * 2;
	struct pin **b = dw_calloc(nb, sizeof(struct pin *));

	for (size_t i = 0; i < sh->nb; i++)
		for (struct pin *p = sh->b[i], *n; p; p = n) {
			n = p->next;
			p->next = b[(p->hash >> 4) & (nb - 1)];
			b[(p->hash >> 4) & (nb - 1)] = p;
		}
	free(sh->b);
	sh->b = b;
	sh->nb = nb;
}

static void change(struct pinset *ps, const char *upstream, const char *key, int d)
{
	char buf[256], *s;
	size_t n;
	uint64_t h;
	struct shard *sh;
	struct pin **pp;

	if (!upstream || !key)
		return;
	n = pair_make(upstream, key, buf, sizeof(buf), &s);
	h = hash_pair(s, n);
	sh = &ps->shards[h % PINSET_SHARDS];
	pthread_mutex_lock(&sh->mu);
	pp = pin_slot(sh, s, n, h);
	if (d > 0) {
		if (!*pp) {
			struct pin *p = dw_malloc(sizeof(*p) + n);

			p->next = NULL;
			p->hash = h;
			p->count = 0;
			p->len = n;
			memcpy(p->s, s, n);
			p->up = up_get(ps, upstream);
			*pp = p;
			__atomic_add_fetch(&p->up->keys, 1, __ATOMIC_RELAXED);
			if (++sh->n > sh->nb * 2)
				shard_grow(sh);
			pp = pin_slot(sh, s, n, h);
		}
		(*pp)->count++;
		__atomic_add_fetch(&ps->total, 1, __ATOMIC_RELEASE);
	} else if (*pp) {
		struct pin *p = *pp;

		__atomic_sub_fetch(&ps->total, 1, __ATOMIC_RELEASE);
		if (--p->count == 0) {
			*pp = p->next;
			sh->n--;
			__atomic_sub_fetch(&p->up->keys, 1, __ATOMIC_RELAXED);
			free(p);
		}
	} else {
		__atomic_add_fetch(&ps->underflows, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&sh->mu);
	if (s != buf)
		free(s);
}

void pinset_add(struct pinset *ps, const char *upstream, const char *key)
{
	change(ps, upstream, key, 1);
}

void pinset_del(struct pinset *ps, const char *upstream, const char *key)
{
	change(ps, upstream, key, -1);
}

void pinset_blind_add(struct pinset *ps, const char *upstream, int delta)
{
	struct pin_up *u;

	if (!upstream || !delta)
		return;
	u = up_get(ps, upstream);
	if (delta < 0 && __atomic_load_n(&u->blind, __ATOMIC_RELAXED) < -delta) {
		__atomic_add_fetch(&ps->underflows, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_add_fetch(&u->blind, delta, __ATOMIC_RELAXED);
	if (delta > 0)
		__atomic_add_fetch(&ps->total, (uint64_t)delta, __ATOMIC_RELEASE);
	else
		__atomic_sub_fetch(&ps->total, (uint64_t)-delta, __ATOMIC_RELEASE);
}

void pinset_prefix_add(struct pinset *ps, const char *upstream, const char *prefix, int delta)
{
	struct pin_up *u;
	struct prefix_pin *pp = NULL;
	size_t len;
	bool full;

	if (!upstream || !delta)
		return;
	if (!prefix || !*prefix) {
		pinset_blind_add(ps, upstream, delta);
		return;
	}
	u = up_get(ps, upstream);
	len = strlen(prefix);
	pthread_mutex_lock(&ps->pre_mu);
	for (size_t i = 0; i < u->npre && !pp; i++)
		if (u->pre[i].len == len && memcmp(u->pre[i].s, prefix, len) == 0)
			pp = &u->pre[i];
	full = u->npre == PINSET_PREFIXES;
	if (!pp && delta > 0 && !full) {
		pp = &u->pre[u->npre++];
		pp->s = dw_strdup(prefix);
		pp->len = len;
		pp->count = 0;
	}
	if (pp && (delta > 0 || pp->count >= -delta)) {
		pp->count += delta;
		__atomic_add_fetch(&u->prefixed, delta, __ATOMIC_RELAXED);
		if (delta > 0)
			__atomic_add_fetch(&ps->total, (uint64_t)delta, __ATOMIC_RELEASE);
		else
			__atomic_sub_fetch(&ps->total, (uint64_t)-delta, __ATOMIC_RELEASE);
	} else if (!pp && full) {
		/* The table was full when this prefix came (entries are never
		 * removed, so it was full then too): it went blind. */
		pthread_mutex_unlock(&ps->pre_mu);
		pinset_blind_add(ps, upstream, delta);
		return;
	} else {
		__atomic_add_fetch(&ps->underflows, 1, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&ps->pre_mu);
}

/* Whether a prefix pin of u covers key (any, when key is NULL). */
static bool prefix_has(struct pinset *ps, struct pin_up *u, const char *key)
{
	bool r = false;

	if (__atomic_load_n(&u->prefixed, __ATOMIC_RELAXED) <= 0)
		return false;
	if (!key)
		return true;
	pthread_mutex_lock(&ps->pre_mu);
	for (size_t i = 0; i < u->npre && !r; i++)
		r = u->pre[i].count > 0 && strncmp(key, u->pre[i].s, u->pre[i].len) == 0;
	pthread_mutex_unlock(&ps->pre_mu);
	return r;
}

bool pinset_empty(const struct pinset *ps)
{
	return __atomic_load_n(&ps->total, __ATOMIC_ACQUIRE) == 0;
}

bool pinset_blind(struct pinset *ps, const char *upstream)
{
	struct pin_up *u = up_find(ps, upstream);

	return u && __atomic_load_n(&u->blind, __ATOMIC_RELAXED) > 0;
}

bool pinset_has(struct pinset *ps, const char *upstream, const char *key)
{
	char buf[256], *s;
	size_t n;
	uint64_t h;
	struct shard *sh;
	bool r;

	struct pin_up *u;

	if (!upstream || __atomic_load_n(&ps->total, __ATOMIC_ACQUIRE) == 0)
		return false;
	if (!(u = up_find(ps, upstream))) /* nothing of it was ever pinned */
		return false;
	if (__atomic_load_n(&u->blind, __ATOMIC_RELAXED) > 0 || prefix_has(ps, u, key))
		return true;
	if (!key)
		return false;
	n = pair_make(upstream, key, buf, sizeof(buf), &s);
	h = hash_pair(s, n);
	sh = &ps->shards[h % PINSET_SHARDS];
	pthread_mutex_lock(&sh->mu);
	r = *pin_slot(sh, s, n, h) != NULL;
	pthread_mutex_unlock(&sh->mu);
	if (s != buf)
		free(s);
	return r;
}

/* copies of the non-NULL strings of v[0..n) */
static char **strv_dup(const char *const *v, size_t n, size_t *out_n)
{
	char **r = n ? dw_calloc(n, sizeof(char *)) : NULL;

	*out_n = 0;
	for (size_t i = 0; i < n; i++)
		if (v[i])
			r[(*out_n)++] = dw_strdup(v[i]);
	return r;
}

void pinset_park(struct pinset *ps, uint64_t seq, const char *upstream, const char *const *keys,
		 size_t n, const char *const *prefixes, size_t npre, bool blind)
{
	struct ticket t = { .seq = seq, .up = up_get(ps, upstream), .blind = blind };

	t.keys = strv_dup(keys, n, &t.n);
	t.pre = strv_dup(prefixes, npre, &t.npre);
	pthread_mutex_lock(&ps->park_mu);
	if (ps->npark == ps->cappark) {
		ps->cappark = ps->cappark ? ps->cappark * 2 : 64;
		ps->park = dw_realloc(ps->park, ps->cappark * sizeof(*ps->park));
	}
	ps->park[ps->npark++] = t;
	__atomic_add_fetch(&t.up->parked, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&ps->park_mu);
}

static int ticket_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct ticket *)a)->seq, y = ((const struct ticket *)b)->seq;

	return x < y ? -1 : x > y;
}

size_t pinset_sweep(struct pinset *ps,
		    void (*final)(void *arg, const uint64_t *seqs, size_t n, bool *out), void *arg)
{
	struct ticket *v;
	size_t n, kept = 0, released = 0;
	uint64_t seqs[SWEEP_BATCH];
	bool fin[SWEEP_BATCH];

	/* Take the whole vector out: parking goes on meanwhile into a new one. */
	pthread_mutex_lock(&ps->park_mu);
	v = ps->park;
	n = ps->npark;
	ps->park = NULL;
	ps->npark = ps->cappark = 0;
	pthread_mutex_unlock(&ps->park_mu);
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), ticket_cmp);
	for (size_t i = 0; i < n; i += SWEEP_BATCH) {
		size_t m = n - i < SWEEP_BATCH ? n - i : SWEEP_BATCH;

		for (size_t k = 0; k < m; k++) {
			seqs[k] = v[i + k].seq;
			fin[k] = false;
		}
		final(arg, seqs, m, fin);
		for (size_t k = 0; k < m; k++) {
			struct ticket *t = &v[i + k];

			if (!fin[k]) {
				v[kept++] = *t;
				continue;
			}
			for (size_t j = 0; j < t->n; j++)
				pinset_del(ps, t->up->name, t->keys[j]);
			for (size_t j = 0; j < t->npre; j++)
				pinset_prefix_add(ps, t->up->name, t->pre[j], -1);
			if (t->blind)
				pinset_blind_add(ps, t->up->name, -1);
			__atomic_sub_fetch(&t->up->parked, 1, __ATOMIC_RELAXED);
			ticket_clear(t);
			released++;
		}
	}
	/* Put back what still waits, with what was parked meanwhile. */
	pthread_mutex_lock(&ps->park_mu);
	if (ps->npark) {
		if (kept + ps->npark > n)
			v = dw_realloc(v, (kept + ps->npark) * sizeof(*v));
		memcpy(v + kept, ps->park, ps->npark * sizeof(*v));
		kept += ps->npark;
		free(ps->park);
	}
	if (kept) {
		ps->park = v;
		ps->cappark = kept > n ? kept : n;
		ps->npark = kept;
	} else {
		free(v);
		ps->park = NULL;
		ps->npark = ps->cappark = 0;
	}
	pthread_mutex_unlock(&ps->park_mu);
	return released;
}

void pinset_stats(const struct pinset *ps, const char *upstream, struct pinset_stats *out)
{
	size_t n = __atomic_load_n(&ps->nups, __ATOMIC_ACQUIRE);

	memset(out, 0, sizeof(*out));
	out->underflows = __atomic_load_n(&ps->underflows, __ATOMIC_RELAXED);
	for (size_t i = 0; i < n; i++) {
		const struct pin_up *u = &ps->ups[i];
		int64_t b = __atomic_load_n(&u->blind, __ATOMIC_RELAXED);

		if (upstream && strcmp(u->name, upstream) != 0)
			continue;
		out->keys += __atomic_load_n(&u->keys, __ATOMIC_RELAXED);
		out->blind += b > 0 ? (uint64_t)b : 0;
		b = __atomic_load_n(&u->prefixed, __ATOMIC_RELAXED);
		out->prefixed += b > 0 ? (uint64_t)b : 0;
		out->parked += __atomic_load_n(&u->parked, __ATOMIC_RELAXED);
	}
}
