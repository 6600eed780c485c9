/*
 * jsoncmp.c — the comparison of jsoncmp.h.
 *
 * One recursive function, cmp(), serves both purposes: with report set it
 * counts every difference and writes paths; without, it answers "equal?"
 * and stops at the first difference (used to confirm hash matches).
 * The path being visited is kept in one buffer in the context, extended on
 * the way down and cut back on the way up.
 */
#include "jsoncmp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

#define PATH_MAX_LEN 400

struct ctx {
	const struct jsoncmp_opts *o;
	size_t *ignore_len; /* [o->nignore] */
	char path[PATH_MAX_LEN + 4];
	size_t plen;
	int path_cut;	    /* path did not fit: printed with "..." */
	char *buf;	    /* output, cap bytes */
	size_t cap, len;
	unsigned written;   /* distinct paths written */
	int omitted;	    /* a distinct path was left out */
};

static int ignored(const struct ctx *c, const char *key, size_t klen)
{
	for (size_t i = 0; i < c->o->nignore; i++)
		if (c->ignore_len[i] == klen && memcmp(c->o->ignore[i], key, klen) == 0)
			return 1;
	return 0;
}

/* ---- paths ---- */

static void path_put(struct ctx *c, const char *s, size_t n)
{
	if (c->plen + n > PATH_MAX_LEN) {
		c->path_cut = 1;
		return;
	}
	memcpy(c->path + c->plen, s, n);
	c->plen += n;
}

static int is_ident(const char *k, size_t n)
{
	if (n == 0 || !((k[0] >= 'a' && k[0] <= 'z') || (k[0] >= 'A' && k[0] <= 'Z') || k[0] == '_'))
		return 0;
	for (size_t i = 1; i < n; i++) {
		char ch = k[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      ch == '_'))
			return 0;
	}
	return 1;
}

static void path_key(struct ctx *c, const char *k, size_t n)
{
	if (is_ident(k, n)) {
		path_put(c, ".", 1);
		path_put(c, k, n);
		return;
	}
	path_put(c, "[\"", 2);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)k[i];
		char esc[8];

		if (ch == '"' || ch == '\\') {
			esc[0] = '\\';
			esc[1] = (char)ch;
			path_put(c, esc, 2);
		} else if (ch <= 0x20 || ch == 0x7f) { /* a space too: paths split on spaces */
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
			path_put(c, esc, 6);
		} else {
			path_put(c, (const char *)&k[i], 1);
		}
	}
	path_put(c, "\"]", 2);
}

static void path_index(struct ctx *c, size_t i)
{
	char s[32];
	int n = snprintf(s, sizeof(s), "[%zu]", i);

	path_put(c, s, (size_t)n);
}

/* Is the current path already among the written ones? */
static int already_written(const struct ctx *c, const char *p, size_t n)
{
	const char *s = c->buf, *end = c->buf + c->len;

	while (s < end) {
		const char *e = memchr(s, ' ', (size_t)(end - s));

		if (!e)
			e = end;
		if ((size_t)(e - s) == n && memcmp(s, p, n) == 0)
			return 1;
		s = e + 1;
	}
	return 0;
}

/* One difference at the current path: count it (by the caller) and write it. */
static void report_here(struct ctx *c)
{
	char p[PATH_MAX_LEN + 8];
	size_t n = c->plen;

	memcpy(p, c->path, n);
	if (c->path_cut) {
		memcpy(p + n, "...", 4); /* with its NUL; n counts 3 */
		n += 3;
	}
	if (c->cap == 0 || already_written(c, p, n))
		return;
	if (c->written >= c->o->max_paths || c->len + (c->len ? 1 : 0) + n + 5 > c->cap) {
		/* room is kept for " ..." and the NUL */
		c->omitted = 1;
		return;
	}
	if (c->len)
		c->buf[c->len++] = ' ';
	memcpy(c->buf + c->len, p, n);
	c->len += n;
	c->buf[c->len] = '\0';
	c->written++;
}

/* ---- numbers ---- */

/* A real that is integral and in range, as an integer. */
static int real_as_int(double r, json_int_t *out)
{
	if (!(r >= -9223372036854775808.0 && r < 9223372036854775808.0) || r != floor(r))
		return 0;
	*out = (json_int_t)r;
	return 1;
}

static int num_eq(const json_t *a, const json_t *b)
{
	json_int_t i;

	if (json_is_integer(a) && json_is_integer(b))
		return json_integer_value(a) == json_integer_value(b);
	if (json_is_real(a) && json_is_real(b))
		return json_real_value(a) == json_real_value(b);
	if (json_is_real(a)) {
		const json_t *t = a;

		a = b;
		b = t;
	}
	/* a integer, b real */
	return real_as_int(json_real_value(b), &i) && i == json_integer_value(a);
}

/* ---- the canonical hash ---- */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= UINT64_C(0xff51afd7ed558ccd);
	x ^= x >> 33;
	x *= UINT64_C(0xc4ceb9fe1a85ec53);
	x ^= x >> 33;
	return x;
}

/* Not a keyed or cryptographic hash: collisions cost a deep comparison,
 * never a wrong answer. */
static uint64_t hash_bytes(uint64_t seed, const char *p, size_t n)
{
	uint64_t h = seed ^ (n * UINT64_C(0x9e3779b97f4a7c15));

	for (; n >= 8; p += 8, n -= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
		h = (h ^ w) * UINT64_C(0xbf58476d1ce4e5b9);
		h ^= h >> 31;
	}
	if (n) {
		uint64_t w = 0;

		memcpy(&w, p, n);
		h = (h ^ w) * UINT64_C(0x94d049bb133111eb);
	}
	return mix64(h);
}

enum { H_NULL = 1, H_TRUE, H_FALSE, H_INT, H_REAL, H_STR, H_LIST, H_SET, H_OBJ };

static uint64_t hash_v(const struct ctx *c, const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_NULL:
		return mix64(H_NULL);
	case JSON_TRUE:
		return mix64(H_TRUE);
	case JSON_FALSE:
		return mix64(H_FALSE);
	case JSON_INTEGER:
		return mix64((uint64_t)json_integer_value(v) ^ mix64(H_INT));
	case JSON_REAL: {
		double r = json_real_value(v);
		json_int_t i;
		uint64_t bits;

		if (real_as_int(r, &i)) /* 1.0 hashes as 1 */
			return mix64((uint64_t)i ^ mix64(H_INT));
		memcpy(&bits, &r, sizeof(bits));
		return mix64(bits ^ mix64(H_REAL));
	}
	case JSON_STRING:
		return hash_bytes(H_STR, json_string_value(v), json_string_length(v));
	case JSON_ARRAY: {
		size_t n = json_array_size(v);
		uint64_t h = mix64(c->o->unordered ? H_SET : H_LIST), sum = 0;

		for (size_t i = 0; i < n; i++) {
			uint64_t e = hash_v(c, json_array_get(v, i));

			if (c->o->unordered)
				sum += mix64(e); /* commutative */
			else
				h = mix64(h ^ e) + i;
		}
		return c->o->unordered ? mix64(h ^ sum) : h;
	}
	case JSON_OBJECT: {
		const char *k;
		size_t klen;
		json_t *val;
		uint64_t sum = 0;

		json_object_keylen_foreach((json_t *)(uintptr_t)v, k, klen, val)
		{
			if (ignored(c, k, klen))
				continue;
			sum += mix64(hash_bytes(H_STR, k, klen) * 31 + hash_v(c, val));
		}
		return mix64(sum ^ mix64(H_OBJ));
	}
	}
	return 0;
}

/* ---- comparison ---- */

static size_t cmp(struct ctx *c, const json_t *a, const json_t *b, int report);

static size_t cmp_object(struct ctx *c, const json_t *a, const json_t *b, int report)
{
	const char *k;
	size_t klen, diffs = 0, plen = c->plen;
	int cut = c->path_cut;
	json_t *va, *vb;

	json_object_keylen_foreach((json_t *)(uintptr_t)a, k, klen, va)
	{
		if (ignored(c, k, klen))
			continue;
		vb = json_object_getn(b, k, klen);
		if (report)
			path_key(c, k, klen);
		if (!vb) {
			diffs++;
			if (report)
				report_here(c);
		} else {
			diffs += cmp(c, va, vb, report);
		}
		c->plen = plen;
		c->path_cut = cut;
		if (diffs && !report)
			return diffs;
	}
	json_object_keylen_foreach((json_t *)(uintptr_t)b, k, klen, vb)
	{
		if (ignored(c, k, klen) || json_object_getn(a, k, klen))
			continue;
		diffs++;
		if (!report)
			return diffs;
		path_key(c, k, klen);
		report_here(c);
		c->plen = plen;
		c->path_cut = cut;
	}
	return diffs;
}

static size_t cmp_list(struct ctx *c, const json_t *a, const json_t *b, int report)
{
	size_t na = json_array_size(a), nb = json_array_size(b), n = na < nb ? na : nb, diffs = 0;
	size_t plen = c->plen;
	int cut = c->path_cut;

	for (size_t i = 0; i < n; i++) {
		if (report)
			path_index(c, i);
		diffs += cmp(c, json_array_get(a, i), json_array_get(b, i), report);
		c->plen = plen;
		c->path_cut = cut;
		if (diffs && !report)
			return diffs;
	}
	for (size_t i = n; i < (na > nb ? na : nb); i++) {
		diffs++;
		if (!report)
			return diffs;
		path_index(c, i);
		report_here(c);
		c->plen = plen;
		c->path_cut = cut;
	}
	return diffs;
}

struct hent {
	uint64_t h;
	size_t i;
	int matched;
};

static int hent_cmp(const void *x, const void *y)
{
	const struct hent *p = x, *q = y;

	if (p->h != q->h)
		return p->h < q->h ? -1 : 1;
	return p->i < q->i ? -1 : p->i > q->i;
}

static int hent_by_index(const void *x, const void *y)
{
	const struct hent *p = x, *q = y;

	return p->i < q->i ? -1 : p->i > q->i;
}

/* Lists as multisets. Equal elements at the same index from the front are
 * matched in place (the common case: both sides in the same order); the
 * rest are hashed, sorted, and matched within equal-hash runs by a deep
 * comparison (equality is an equivalence, so first-fit matching is exact). */
static size_t cmp_set(struct ctx *c, const json_t *a, const json_t *b, int report)
{
	size_t na = json_array_size(a), nb = json_array_size(b), s = 0, diffs = 0;
	size_t ra, rb, i, j, ua = 0, ub = 0, plen = c->plen;
	int cut = c->path_cut;
	struct hent *ha, *hb;

	while (s < na && s < nb && cmp(c, json_array_get(a, s), json_array_get(b, s), 0) == 0)
		s++;
	if (s == na && s == nb)
		return 0;
	if (!report && na != nb)
		return 1;
	ra = na - s;
	rb = nb - s;
	ha = dw_malloc((ra + rb + 1) * sizeof(*ha));
	hb = ha + ra;
	for (i = 0; i < ra; i++)
		ha[i] = (struct hent){hash_v(c, json_array_get(a, s + i)), s + i, 0};
	for (i = 0; i < rb; i++)
		hb[i] = (struct hent){hash_v(c, json_array_get(b, s + i)), s + i, 0};
	qsort(ha, ra, sizeof(*ha), hent_cmp);
	qsort(hb, rb, sizeof(*hb), hent_cmp);
	for (i = 0, j = 0; i < ra && j < rb;) {
		size_t ie, je;

		if (ha[i].h != hb[j].h) {
			if (ha[i].h < hb[j].h)
				i++;
			else
				j++;
			continue;
		}
		for (ie = i; ie < ra && ha[ie].h == ha[i].h; ie++)
			;
		for (je = j; je < rb && hb[je].h == hb[j].h; je++)
			;
		for (size_t x = i; x < ie; x++)
			for (size_t y = j; y < je; y++)
				if (!hb[y].matched && cmp(c, json_array_get(a, ha[x].i),
							  json_array_get(b, hb[y].i), 0) == 0) {
					ha[x].matched = hb[y].matched = 1;
					break;
				}
		i = ie;
		j = je;
	}
	/* the unmatched ones, in their original order, to the front */
	for (i = 0; i < ra; i++)
		if (!ha[i].matched)
			ha[ua++] = ha[i];
	for (j = 0; j < rb; j++)
		if (!hb[j].matched)
			hb[ub++] = hb[j];
	if (ua == 0 && ub == 0)
		goto out;
	if (!report) {
		diffs = 1;
		goto out;
	}
	qsort(ha, ua, sizeof(*ha), hent_by_index);
	qsort(hb, ub, sizeof(*hb), hent_by_index);
	path_put(c, "[*]", 3);
	for (i = 0; i < ua && i < ub; i++)
		diffs += cmp(c, json_array_get(a, ha[i].i), json_array_get(b, hb[i].i), 1);
	for (; i < (ua > ub ? ua : ub); i++) {
		diffs++;
		report_here(c);
	}
	c->plen = plen;
	c->path_cut = cut;
out:
	free(ha);
	return diffs;
}

static size_t cmp(struct ctx *c, const json_t *a, const json_t *b, int report)
{
	int same;

	if (a == b)
		return 0;
	if (json_is_number(a) && json_is_number(b)) {
		same = num_eq(a, b);
	} else if (json_typeof(a) != json_typeof(b)) {
		same = 0;
	} else {
		switch (json_typeof(a)) {
		case JSON_OBJECT:
			return cmp_object(c, a, b, report);
		case JSON_ARRAY:
			return c->o->unordered ? cmp_set(c, a, b, report) : cmp_list(c, a, b, report);
		case JSON_STRING:
			same = json_string_length(a) == json_string_length(b) &&
			       memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
			break;
		default: /* true, false, null: the type is the value */
			same = 1;
		}
	}
	if (same)
		return 0;
	if (report)
		report_here(c);
	return 1;
}

static void ctx_init(struct ctx *c, const struct jsoncmp_opts *o, size_t *lens, char *buf, size_t cap)
{
	memset(c, 0, sizeof(*c));
	c->o = o;
	c->ignore_len = lens;
	for (size_t i = 0; i < o->nignore; i++)
		lens[i] = strlen(o->ignore[i]);
	c->path[0] = '$';
	c->plen = 1;
	c->buf = buf;
	c->cap = cap;
	if (cap)
		buf[0] = '\0';
}

size_t jsoncmp(const json_t *a, const json_t *b, const struct jsoncmp_opts *o, char *buf, size_t cap)
{
	size_t small[8], *lens = o->nignore <= 8 ? small : dw_malloc(o->nignore * sizeof(*lens));
	struct ctx c;
	size_t diffs;

	ctx_init(&c, o, lens, buf, cap);
	diffs = cmp(&c, a, b, 1);
	if (c.omitted) { /* report_here kept room for this */
		if (c.len && c.len + 5 <= cap)
			memcpy(c.buf + c.len, " ...", 5);
		else if (!c.len && cap >= 4)
			memcpy(c.buf, "...", 4);
	}
	if (lens != small)
		free(lens);
	return diffs;
}

uint64_t jsoncmp_hash(const json_t *v, const struct jsoncmp_opts *o)
{
	size_t small[8], *lens = o->nignore <= 8 ? small : dw_malloc(o->nignore * sizeof(*lens));
	struct ctx c;
	uint64_t h;

	ctx_init(&c, o, lens, NULL, 0);
	h = hash_v(&c, v);
	if (lens != small)
		free(lens);
	return h;
}
