/*
 * route.c — "METHOD /path/{param}" patterns: compile, match, and detect
 * shadowing between two patterns.
 *
 * A pattern is a method token and a list of path segments, each either a
 * literal (compared byte for byte against the raw request segment, so that
 * "/a%2Fb" never matches "/a/b") or a capture of one non-empty segment,
 * percent-decoded. The root path "/" is one empty segment and a trailing
 * slash is an extra empty segment, so "/a" and "/a/" are different routes.
 */
#include "route.h"

#include "http_parse.h"

#include <stdlib.h>
#include <string.h>

struct seg {
	char *lit; /* NULL: a capture */
	size_t len;
	int param; /* index into params for a capture */
};

struct route_pattern {
	char *method;
	size_t nseg;
	struct seg *segs;
	size_t nparams;
	char *params[ROUTE_MAX_PARAMS];
};


/* RFC 3986 pchar, with '%' accepted here and checked as pct-encoded below. */
static bool is_pchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c && strchr("-._~!$&'()*+,;=:@%", c) != NULL;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void route_pattern_free(struct route_pattern *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->nseg; i++)
		free(p->segs[i].lit);
	for (size_t i = 0; i < p->nparams; i++)
		free(p->params[i]);
	free(p->segs);
	free(p->method);
	free(p);
}

static int add_segment(struct route_pattern *p, const char *s, size_t len, bool last,
		       struct dw_err *err)
{
	struct seg *sg;

	p->segs = dw_realloc(p->segs, (p->nseg + 1) * sizeof(*p->segs));
	sg = &p->segs[p->nseg];
	memset(sg, 0, sizeof(*sg));
	if (len > 0 && s[0] == '{') {
		if (len < 3 || s[len - 1] != '}') {
			dw_err_set(err, "a capture must be a whole segment \"{name}\": \"%.*s\"",
				   (int)len, s);
			return -1;
		}
		const char *n = s + 1;
		size_t nl = len - 2;
		if (!((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= 'A' && n[0] <= 'Z') || n[0] == '_')) {
			dw_err_set(err, "bad capture name \"%.*s\"", (int)nl, n);
			return -1;
		}
		for (size_t i = 1; i < nl; i++) {
			unsigned char c = (unsigned char)n[i];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			      (c >= '0' && c <= '9') || c == '_')) {
				dw_err_set(err, "bad capture name \"%.*s\"", (int)nl, n);
				return -1;
			}
		}
		for (size_t i = 0; i < p->nparams; i++) {
			if (strlen(p->params[i]) == nl && memcmp(p->params[i], n, nl) == 0) {
				dw_err_set(err, "duplicate capture name \"%.*s\"", (int)nl, n);
				return -1;
			}
		}
		if (p->nparams == ROUTE_MAX_PARAMS) {
			dw_err_set(err, "too many captures (at most %d)", ROUTE_MAX_PARAMS);
			return -1;
		}
		sg->param = (int)p->nparams;
		p->params[p->nparams++] = dw_strndup(n, nl);
		p->nseg++;
		return 0;
	}
	if (len == 0 && !last) {
		dw_err_set(err, "empty path segment");
		return -1;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!is_pchar(c)) {
			dw_err_set(err, "invalid character '%c' in path segment \"%.*s\"",
				   c >= 0x20 && c < 0x7f ? c : '?', (int)len, s);
			return -1;
		}
		if (c == '%' && (i + 2 >= len || hexval((unsigned char)s[i + 1]) < 0 ||
				 hexval((unsigned char)s[i + 2]) < 0)) {
			dw_err_set(err, "bad percent-encoding in path segment \"%.*s\"", (int)len, s);
			return -1;
		}
	}
	sg->lit = dw_strndup(s, len);
	sg->len = len;
	p->nseg++;
	return 0;
}

struct route_pattern *route_pattern_compile(const char *match, struct dw_err *err)
{
	struct route_pattern *p = dw_calloc(1, sizeof(*p));
	const char *s = match, *path;
	size_t mlen = 0;

	while (http_is_tchar((unsigned char)s[mlen]))
		mlen++;
	if (mlen == 0) {
		dw_err_set(err, "\"%s\": expected \"METHOD /path\"", match);
		goto fail;
	}
	if (s[mlen] != ' ') {
		dw_err_set(err, "\"%s\": expected \"METHOD /path\" (one space after the method)",
			   match);
		goto fail;
	}
	p->method = dw_strndup(s, mlen);
	path = s + mlen + 1;
	if (path[0] != '/') {
		dw_err_set(err, "\"%s\": the path must start with '/'", match);
		goto fail;
	}
	path++;
	for (;;) {
		const char *slash = strchr(path, '/');
		size_t len = slash ? (size_t)(slash - path) : strlen(path);
		if (add_segment(p, path, len, slash == NULL, err) < 0) {
			dw_err_prefix(err, "\"%s\"", match);
			goto fail;
		}
		if (!slash)
			break;
		path = slash + 1;
	}
	return p;
fail:
	route_pattern_free(p);
	return NULL;
}

const char *route_pattern_method(const struct route_pattern *p)
{
	return p->method;
}

size_t route_pattern_nparams(const struct route_pattern *p)
{
	return p->nparams;
}

const char *route_pattern_param(const struct route_pattern *p, size_t i)
{
	return i < p->nparams ? p->params[i] : NULL;
}

/* True when every request b matches is matched by a too: b listed after a
 * could never be chosen. */
bool route_pattern_conflicts(const struct route_pattern *a, const struct route_pattern *b)
{
	if (strcmp(a->method, b->method) != 0 || a->nseg != b->nseg)
		return false;
	for (size_t i = 0; i < a->nseg; i++) {
		const struct seg *x = &a->segs[i], *y = &b->segs[i];
		if (!x->lit) {
			/* a capture covers any non-empty segment */
			if (y->lit && y->len == 0)
				return false;
			continue;
		}
		if (!y->lit || x->len != y->len || memcmp(x->lit, y->lit, x->len) != 0)
			return false;
	}
	return true;
}

void route_params_clear(struct route_params *rp)
{
	if (!rp)
		return;
	for (size_t i = 0; i < rp->n; i++) {
		free(rp->values[i]);
		rp->values[i] = NULL;
		rp->names[i] = NULL;
	}
	rp->n = 0;
}

/* Percent-decode one segment; NULL when malformed or it decodes to a NUL. */
static char *pct_decode(const char *s, size_t len)
{
	char *out = dw_malloc(len + 1), *o = out;

	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%') {
			int h, l;
			if (i + 2 >= len || (h = hexval((unsigned char)s[i + 1])) < 0 ||
			    (l = hexval((unsigned char)s[i + 2])) < 0 || (h == 0 && l == 0)) {
				free(out);
				return NULL;
			}
			*o++ = (char)(h * 16 + l);
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

bool route_pattern_match(const struct route_pattern *p, const char *method, size_t method_len,
			 const char *path, size_t path_len, struct route_params *rp)
{
	const char *seg[ROUTE_MAX_PARAMS];
	size_t seglen[ROUTE_MAX_PARAMS];
	size_t ncap = 0, si = 0, pos;

	if (strlen(p->method) != method_len || memcmp(p->method, method, method_len) != 0)
		return false;
	if (path_len == 0 || path[0] != '/')
		return false;
	pos = 1;
	for (;;) {
		size_t start = pos;
		while (pos < path_len && path[pos] != '/')
			pos++;
		if (si >= p->nseg)
			return false;
		const struct seg *sg = &p->segs[si++];
		size_t len = pos - start;
		if (sg->lit) {
			if (len != sg->len || memcmp(path + start, sg->lit, len) != 0)
				return false;
		} else {
			if (len == 0)
				return false;
			seg[ncap] = path + start;
			seglen[ncap] = len;
			ncap++;
		}
		if (pos >= path_len)
			break;
		pos++; /* skip '/' */
	}
	if (si != p->nseg)
		return false;

	/* Decode only once the shape matched, so a miss allocates nothing. */
	char *vals[ROUTE_MAX_PARAMS];
	for (size_t i = 0; i < ncap; i++) {
		vals[i] = pct_decode(seg[i], seglen[i]);
		if (!vals[i]) {
			for (size_t j = 0; j < i; j++)
				free(vals[j]);
			return false;
		}
	}
	if (!rp) {
		for (size_t i = 0; i < ncap; i++)
			free(vals[i]);
		return true;
	}
	route_params_clear(rp);
	for (size_t i = 0; i < ncap; i++) {
		rp->names[i] = p->params[i];
		rp->values[i] = vals[i];
	}
	rp->n = ncap;
	return true;
}
