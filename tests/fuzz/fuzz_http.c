/*
 * fuzz_http — libFuzzer target for lib/http_parse: every input is scanned
 * (at once and in two pieces), parsed as a request and as a response, and
 * what follows the head is fed to the chunked decoder (at once, in two
 * pieces and byte by byte). Beyond "no crash, no sanitizer report" it checks
 * the invariants callers rely on: the answers do not depend on how the bytes
 * were split, consumed never exceeds the input, parsed pointers stay inside
 * the owned copy, and errors carry the documented statuses.
 *
 * Differential mode: a second, deliberately naive reader written apart from
 * lib/http_parse (ref_* below: memmem for CRLF, split at the first SP and
 * ':', no state machine) re-reads every input the real parser accepts. The
 * request framing — where the head ends, method, target, version, Host,
 * number of fields, Content-Length, chunked — and, for every chunked body the
 * real decoder accepts, where the body ends and its payload, must agree, or
 * the run aborts. The reference is lenient by design: it only has to agree
 * on what the strict parser lets through.
 * Seeds: tests/fuzz/corpus/http. Without libFuzzer, replay_main.c drives it.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz_http: %s:%d: check failed: %s\n",        \
				__FILE__, __LINE__, #cond);                            \
			abort();                                                       \
		}                                                                      \
	} while (0)

/* Running hash of emitted payload, to compare differently split decodes. */
struct digest {
	uint64_t h;
	uint64_t n;
};

static void digest_emit(void *arg, const char *p, size_t n)
{
	struct digest *d = arg;

	CHECK(n > 0);
	for (size_t i = 0; i < n; i++)
		d->h = (d->h ^ (unsigned char)p[i]) * 1099511628211ULL;
	d->n += n;
}

static bool inside(const struct http_head *h, const char *p, size_t n)
{
	if (!p)
		return n == 0;
	if (n == 1 && strcmp(p, "/") == 0 && h->path == p)
		return true; /* absolute-form without a path */
	return p >= h->raw && p + n <= h->raw + h->raw_len;
}

static void check_head(const struct http_head *h, bool request)
{
	CHECK(h->raw && h->raw[h->raw_len] == '\0');
	CHECK(h->version_minor == 0 || h->version_minor == 1);
	CHECK(h->nheaders <= HTTP_MAX_HEADERS);
	for (size_t i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];

		CHECK(f->name_len > 0 && inside(h, f->name, f->name_len));
		CHECK(inside(h, f->value, f->value_len));
		(void)http_is_hop_by_hop(h, f->name, f->name_len);
		if (f->value_len)
			CHECK(f->value[0] != ' ' && f->value[f->value_len - 1] != ' ');
	}
	CHECK(!(h->chunked && h->content_length >= 0));
	CHECK(h->content_length >= -1);
	(void)http_keep_alive(h);
	if (request) {
		CHECK(inside(h, h->method_str, h->method_len) && h->method_len > 0);
		CHECK(http_method_from(h->method_str, h->method_len) == h->method);
		CHECK(inside(h, h->target, h->target_len) && h->target_len > 0);
		CHECK(inside(h, h->path, h->path_len));
		CHECK(inside(h, h->query, h->query_len));
		CHECK(inside(h, h->host, h->host_len));
		if (h->version_minor == 1)
			CHECK(h->host != NULL);
	} else {
		CHECK(h->status >= 100 && h->status <= 599);
		CHECK(inside(h, h->reason, h->reason_len));
		for (int m = HTTP_M_OTHER; m <= HTTP_M_CONNECT; m++) {
			enum http_body_kind k = http_response_body_kind(h, (enum http_method)m);

			CHECK(k == HTTP_BODY_NONE || k == HTTP_BODY_LENGTH ||
			      k == HTTP_BODY_CHUNKED || k == HTTP_BODY_UNTIL_CLOSE);
		}
	}
}

/* ---- the reference reader (differential mode) -------------------------- */

static const char *ref_crlf(const char *p, const char *e)
{
	return memmem(p, (size_t)(e - p), "\r\n", 2);
}

static bool ref_ieq(const char *s, size_t n, const char *lit)
{
	return n == strlen(lit) && strncasecmp(s, lit, n) == 0;
}

static void ref_trim(const char **p, size_t *n)
{
	while (*n && (**p == ' ' || **p == '\t')) {
		(*p)++;
		(*n)--;
	}
	while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t'))
		(*n)--;
}

/* A chunked body from in[0..len): the end offset and the payload digest, or
 * -1 when it does not end there. Sizes are hex before any ';' or blank. */
static long ref_chunked(const char *in, size_t len, struct digest *d)
{
	const char *p = in, *e = in + len, *eol;

	memset(d, 0, sizeof(*d));
	for (;;) {
		uint64_t size = 0;
		const char *q;

		if (!(eol = ref_crlf(p, e)))
			return -1;
		for (q = p; q < eol && isxdigit((unsigned char)*q); q++) {
			if (q - p >= 15)
				return -1;
			size = size * 16 + (uint64_t)(isdigit((unsigned char)*q)
							  ? *q - '0'
							  : (tolower((unsigned char)*q) - 'a' + 10));
		}
		if (q == p)
			return -1;
		p = eol + 2;
		if (size == 0)
			break;
		if ((uint64_t)(e - p) < size + 2 || memcmp(p + size, "\r\n", 2) != 0)
			return -1;
		digest_emit(d, p, (size_t)size);
		p += size + 2;
	}
	/* trailer lines up to an empty one */
	for (;;) {
		if (!(eol = ref_crlf(p, e)))
			return -1;
		if (eol == p)
			return (long)(eol + 2 - in);
		p = eol + 2;
	}
}

struct ref_req {
	size_t head_end; /* offset just after the empty line, from the input start */
	const char *method, *target, *host;
	size_t method_len, target_len, host_len;
	int minor;
	size_t nfields;
	int64_t content_length; /* -1: none */
	bool chunked;
};

/* A request head from buf[0..len): false when the reader cannot make one. */
static bool ref_request(const char *buf, size_t len, struct ref_req *r)
{
	const char *p = buf, *e = buf + len, *eol, *sp1, *sp2;

	memset(r, 0, sizeof(*r));
	r->content_length = -1;
	while (e - p >= 2 && p[0] == '\r' && p[1] == '\n')
		p += 2;
	if (!(eol = ref_crlf(p, e)))
		return false;
	sp1 = memchr(p, ' ', (size_t)(eol - p));
	if (!sp1)
		return false;
	sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
	if (!sp2 || eol - sp2 != 9)
		return false;
	r->method = p;
	r->method_len = (size_t)(sp1 - p);
	r->target = sp1 + 1;
	r->target_len = (size_t)(sp2 - sp1 - 1);
	r->minor = sp2[8] - '0';
	for (p = eol + 2;; p = eol + 2) {
		const char *colon, *v;
		size_t vn;

		if (!(eol = ref_crlf(p, e)))
			return false;
		if (eol == p)
			break;
		colon = memchr(p, ':', (size_t)(eol - p));
		if (!colon)
			return false;
		v = colon + 1;
		vn = (size_t)(eol - v);
		ref_trim(&v, &vn);
		r->nfields++;
		if (ref_ieq(p, (size_t)(colon - p), "host")) {
			r->host = v;
			r->host_len = vn;
		} else if (ref_ieq(p, (size_t)(colon - p), "content-length")) {
			/* "n" or "n, n, ...": every element the same */
			const char *el = v, *end = v + vn;

			while (el <= end) {
				const char *comma = memchr(el, ',', (size_t)(end - el));
				const char *t = el;
				size_t tn = (size_t)((comma ? comma : end) - el);
				int64_t n = 0;

				ref_trim(&t, &tn);
				if (tn == 0)
					return false;
				for (size_t i = 0; i < tn; i++) {
					if (!isdigit((unsigned char)t[i]) || n > (INT64_MAX - 9) / 10)
						return false;
					n = n * 10 + (t[i] - '0');
				}
				if (r->content_length >= 0 && r->content_length != n)
					return false;
				r->content_length = n;
				if (!comma)
					break;
				el = comma + 1;
			}
		} else if (ref_ieq(p, (size_t)(colon - p), "transfer-encoding")) {
			/* chunked when the last listed coding is */
			const char *last = memrchr(v, ',', vn);
			const char *t = last ? last + 1 : v;
			size_t tn = (size_t)(v + vn - t);

			ref_trim(&t, &tn);
			r->chunked = ref_ieq(t, tn, "chunked");
		}
	}
	r->head_end = (size_t)(eol + 2 - buf);
	return true;
}

static bool same(const char *a, size_t an, const char *b, size_t bn)
{
	return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* The real parser accepted head h at buf[skip..skip+hl): the reference must
 * read the same request, and the same end of a chunked body behind it. */
static void differential(const char *buf, size_t size, size_t skip, size_t hl,
			 const struct http_head *h)
{
	struct ref_req r;

	CHECK(ref_request(buf, size, &r));
	CHECK(r.head_end == skip + hl);
	CHECK(same(r.method, r.method_len, h->method_str, h->method_len));
	CHECK(same(r.target, r.target_len, h->target, h->target_len));
	CHECK(r.minor == h->version_minor);
	CHECK(r.nfields == h->nheaders);
	CHECK((r.host == NULL) == (h->host == NULL));
	if (r.host)
		CHECK(same(r.host, r.host_len, h->host, h->host_len));
	CHECK(r.content_length == h->content_length);
	CHECK(r.chunked == h->chunked);
}

/* Decode `in` with the given split points; returns rc, *used, digest. */
static int decode(const char *in, size_t len, size_t cut, bool bytewise, size_t *used,
		  struct digest *d)
{
	struct http_chunked c;
	struct dw_err err = {""};
	size_t off = 0;
	int rc = HTTP_INCOMPLETE;

	http_chunked_init(&c, 256);
	memset(d, 0, sizeof(*d));
	while (off < len) {
		size_t n = bytewise ? 1 : (off < cut ? cut - off : len - off), consumed = 99;

		rc = http_chunked_decode(&c, in + off, n, &consumed, digest_emit, d, &err);
		CHECK(consumed <= n);
		off += consumed;
		if (rc == HTTP_ERROR) {
			CHECK(err.msg[0] != '\0');
			break;
		}
		if (rc == HTTP_OK)
			break;
		CHECK(rc == HTTP_INCOMPLETE && consumed == n);
	}
	CHECK(c.total == d->n);
	*used = off;
	return rc;
}

static void fuzz_chunked(const char *in, size_t len, size_t cut)
{
	struct digest d1, d2, d3;
	size_t u1, u2, u3;
	int r1 = decode(in, len, len, false, &u1, &d1);
	int r2 = decode(in, len, cut, false, &u2, &d2);
	int r3 = len <= 4096 ? decode(in, len, 0, true, &u3, &d3) : r1;

	CHECK(r1 == r2);
	if (r1 == HTTP_OK) {
		struct digest dr;

		CHECK(u1 == u2 && d1.h == d2.h && d1.n == d2.n);
		CHECK(u1 >= 5); /* "0\r\n\r\n" at least */
		/* differential: the reference ends the body at the same byte */
		CHECK(ref_chunked(in, len, &dr) == (long)u1);
		CHECK(dr.h == d1.h && dr.n == d1.n);
	}
	if (len <= 4096) {
		CHECK(r1 == r3);
		if (r1 == HTTP_OK)
			CHECK(u1 == u3 && d1.h == d3.h);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct http_scanner s1, s2;
	struct http_head h;
	struct dw_err err = {""};
	size_t skip1 = 0, hl1 = 0, skip2 = 0, hl2 = 0, cut, max, rest_off = 0;
	int st1 = 0, st2 = 0, r1, r2, status = 0;
	int64_t cl;

	if (size == 0)
		return 0;
	cut = ((size_t)data[0] * 131 + size) % (size + 1);
	max = (data[0] & 1) ? 16384 : 64 + data[size - 1];

	/* scanning: once, and in two pieces */
	http_scanner_init(&s1);
	r1 = http_scan_head(&s1, buf, size, max, &skip1, &hl1, &st1, &err);
	http_scanner_init(&s2);
	r2 = http_scan_head(&s2, buf, cut, max, &skip2, &hl2, &st2, &err);
	CHECK(s2.pos <= cut);
	if (r2 == HTTP_INCOMPLETE)
		r2 = http_scan_head(&s2, buf, size, max, &skip2, &hl2, &st2, &err);
	CHECK(r1 == r2);
	if (r1 == HTTP_ERROR)
		CHECK(st1 == st2 && (st1 == 400 || st1 == 431));
	if (r1 == HTTP_OK) {
		CHECK(skip1 == skip2 && hl1 == hl2);
		CHECK(hl1 >= 4 && hl1 <= max && skip1 + hl1 <= size);
		CHECK(memcmp(buf + skip1 + hl1 - 4, "\r\n\r\n", 4) == 0);
		rest_off = skip1 + hl1;

		if (http_parse_request(&h, buf + skip1, hl1, &status, &err) == HTTP_OK) {
			check_head(&h, true);
			differential(buf, size, skip1, hl1, &h);
		} else {
			CHECK(status == 400 || status == 431 || status == 501 || status == 505);
			CHECK(h.raw == NULL);
		}
		http_head_clear(&h);
		if (http_parse_response(&h, buf + skip1, hl1, &status, &err) == HTTP_OK)
			check_head(&h, false);
		else
			CHECK(status == 502 && h.raw == NULL);
		http_head_clear(&h);
	}

	/* the parser on its own must survive any bytes, not only scanned heads */
	if (http_parse_request(&h, buf, size, &status, &err) == HTTP_OK)
		check_head(&h, true);
	http_head_clear(&h);

	/* whatever follows the head (or the whole input) as a chunked body */
	fuzz_chunked(buf + rest_off, size - rest_off, cut > rest_off ? cut - rest_off : 0);

	if (http_parse_content_length(buf, size, &cl) == 0)
		CHECK(cl >= 0 && cl <= 999999999999999999LL);
	(void)http_reason((int)(data[0] * 3));
	return 0;
}
