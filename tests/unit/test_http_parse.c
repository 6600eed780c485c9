/*
 * test_http_parse — the strict HTTP/1.x parser against the fixture files in
 * tests/unit/http_cases (naming scheme in its README) and against hand-written
 * checks of parsed fields, incremental scanning and chunked decoding.
 * Run from the repository root.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

#define CASES "tests/unit/http_cases"
#define MAX_HEAD 16384
#define MAX_TRAILER 1024

/* ---- helpers ------------------------------------------------------------ */

struct file {
	char *data;
	size_t len;
};

static struct file load(const char *path)
{
	struct file f = {NULL, 0};
	FILE *fp = fopen(path, "rb");
	long n;

	if (!fp)
		fail_msg("cannot open %s (run from the repository root)", path);
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	n = ftell(fp);
	assert_true(n >= 0);
	rewind(fp);
	f.data = malloc((size_t)n + 1);
	assert_non_null(f.data);
	assert_int_equal(fread(f.data, 1, (size_t)n, fp), (size_t)n);
	f.data[n] = '\0';
	f.len = (size_t)n;
	fclose(fp);
	return f;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names in dir ending in suffix; NULL-terminated, caller frees. */
static char **list_dir(const char *dir, const char *suffix, size_t *count)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, sl = strlen(suffix);

	if (!d)
		fail_msg("cannot open %s", dir);
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);

		if (l <= sl || strcmp(de->d_name + l - sl, suffix) != 0)
			continue;
		names = realloc(names, (n + 2) * sizeof(*names));
		assert_non_null(names);
		names[n++] = strdup(de->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(*names), cmp_str);
	if (names)
		names[n] = NULL;
	*count = n;
	return names;
}

static void free_list(char **names)
{
	for (size_t i = 0; names && names[i]; i++)
		free(names[i]);
	free(names);
}

/* Scan then parse a request or response. Returns HTTP_OK or HTTP_ERROR
 * (status set); an incomplete head is a test failure. */
static int scan_parse(const char *buf, size_t len, bool request, struct http_head *h,
		      size_t *skip, size_t *head_len, int *status, struct dw_err *err)
{
	struct http_scanner s;
	int rc;

	memset(h, 0, sizeof(*h));
	http_scanner_init(&s);
	rc = http_scan_head(&s, buf, len, MAX_HEAD, skip, head_len, status, err);
	if (rc == HTTP_INCOMPLETE) {
		snprintf(err->msg, sizeof(err->msg), "head incomplete");
		*status = -1;
		return HTTP_ERROR;
	}
	if (rc != HTTP_OK) {
		if (!request)
			*status = 502; /* the caller's mapping for responses */
		return rc;
	}
	if (request)
		return http_parse_request(h, buf + *skip, *head_len, status, err);
	return http_parse_response(h, buf + *skip, *head_len, status, err);
}

static struct http_head parse_req_file(const char *name, struct file *f)
{
	char path[512];
	struct http_head h;
	size_t skip, hl;
	int status = 0;
	struct dw_err err = {""};

	snprintf(path, sizeof(path), CASES "/requests/%s", name);
	*f = load(path);
	if (scan_parse(f->data, f->len, true, &h, &skip, &hl, &status, &err) != HTTP_OK)
		fail_msg("%s: %d %s", name, status, err.msg);
	return h;
}

static bool hdr_is(const char *p, size_t n, const char *want)
{
	return p && n == strlen(want) && memcmp(p, want, n) == 0;
}
#define assert_span(p, n, want)                                                        \
	do {                                                                           \
		if (!hdr_is((p), (n), (want)))                                         \
			fail_msg("got '%.*s', want '%s'", (int)(n), (p) ? (p) : "",    \
				 (want));                                              \
	} while (0)

struct sink {
	char buf[65536];
	size_t len;
	int calls;
};

static void sink_emit(void *arg, const char *p, size_t n)
{
	struct sink *s = arg;

	assert_true(s->len + n <= sizeof(s->buf));
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	s->calls++;
}

/* Decode in pieces of `step` bytes; returns the rc, total consumed in *used. */
static int decode_steps(const char *in, size_t len, size_t step, struct sink *out, size_t *used)
{
	struct http_chunked c;
	struct dw_err err = {""};
	size_t off = 0;
	int rc = HTTP_INCOMPLETE;

	http_chunked_init(&c, MAX_TRAILER);
	out->len = 0;
	out->calls = 0;
	while (off < len) {
		size_t n = len - off < step ? len - off : step, consumed = 0;

		rc = http_chunked_decode(&c, in + off, n, &consumed, sink_emit, out, &err);
		assert_true(consumed <= n);
		off += consumed;
		if (rc != HTTP_INCOMPLETE)
			break;
		assert_int_equal(consumed, n);
	}
	assert_int_equal(c.total, out->len);
	*used = off;
	return rc;
}

/* ---- fixture-driven tests ----------------------------------------------- */

static void test_request_fixtures(void **state)
{
	size_t n, nbad = 0, nok = 0, failures = 0;
	char **names = list_dir(CASES "/requests", ".http", &n);

	(void)state;
	for (size_t i = 0; i < n; i++) {
		char path[512];
		struct file f;
		struct http_head h;
		size_t skip = 0, hl = 0;
		int status = 0, rc, want = 0;
		struct dw_err err = {""};

		snprintf(path, sizeof(path), CASES "/requests/%s", names[i]);
		f = load(path);
		rc = scan_parse(f.data, f.len, true, &h, &skip, &hl, &status, &err);
		if (strncmp(names[i], "ok-", 3) == 0) {
			nok++;
			if (rc != HTTP_OK) {
				print_error("FAIL %s: want ok, got %d (%s)\n", names[i], status,
					    err.msg);
				failures++;
			} else if (skip + hl > f.len || h.raw_len != hl) {
				print_error("FAIL %s: bad head length\n", names[i]);
				failures++;
			}
		} else if (sscanf(names[i], "bad-%d-", &want) == 1) {
			nbad++;
			if (rc == HTTP_ERROR && status == 400 && h.raw == NULL &&
			    skip + hl == 0) {
				/* the scanner caught it; the parser must too on its own */
				struct http_head h2;
				int st2 = 0;

				if (http_parse_request(&h2, f.data, f.len, &st2, &err) !=
					    HTTP_ERROR ||
				    st2 != 400) {
					print_error("FAIL %s: parser alone accepts it\n",
						    names[i]);
					failures++;
				}
				http_head_clear(&h2);
			}
			if (rc != HTTP_ERROR || status != want) {
				print_error("FAIL %s: want %d, got rc %d status %d (%s)\n",
					    names[i], want, rc, status, err.msg);
				failures++;
			} else if (!err.msg[0]) {
				print_error("FAIL %s: no error message\n", names[i]);
				failures++;
			} else if (h.raw != NULL) {
				print_error("FAIL %s: head not cleared on error\n", names[i]);
				failures++;
			}
		} else {
			fail_msg("unexpected fixture name %s", names[i]);
		}
		http_head_clear(&h);
		free(f.data);
	}
	print_message("requests: %zu ok, %zu bad cases\n", nok, nbad);
	free_list(names);
	assert_int_equal(failures, 0);
	assert_true(nbad >= 45);
	assert_true(nok >= 20);
}

static void test_response_fixtures(void **state)
{
	static const char *kinds[] = {"none", "length", "chunked", "close"};
	size_t n, failures = 0;
	char **names = list_dir(CASES "/responses", ".http", &n);

	(void)state;
	assert_true(n >= 20);
	for (size_t i = 0; i < n; i++) {
		char path[512], kind[32] = "", meth[32] = "";
		struct file f;
		struct http_head h;
		size_t skip, hl;
		int status = 0, rc;
		struct dw_err err = {""};

		snprintf(path, sizeof(path), CASES "/responses/%s", names[i]);
		f = load(path);
		rc = scan_parse(f.data, f.len, false, &h, &skip, &hl, &status, &err);
		if (strncmp(names[i], "bad-502-", 8) == 0) {
			if (rc != HTTP_ERROR || status != 502) {
				print_error("FAIL %s: want 502, got %d %d\n", names[i], rc, status);
				failures++;
			}
		} else if (sscanf(names[i], "ok-%31[a-z]-%31[A-Z]-", kind, meth) >= 1) {
			enum http_method m = meth[0] ? http_method_from(meth, strlen(meth))
						     : HTTP_M_GET;
			int want = -1;

			for (size_t k = 0; k < DW_ARRAY_LEN(kinds); k++)
				if (strcmp(kind, kinds[k]) == 0)
					want = (int)k;
			assert_true(want >= 0);
			if (rc != HTTP_OK) {
				print_error("FAIL %s: %d %s\n", names[i], status, err.msg);
				failures++;
			} else if ((int)http_response_body_kind(&h, m) != want) {
				print_error("FAIL %s: body kind %d, want %d\n", names[i],
					    (int)http_response_body_kind(&h, m), want);
				failures++;
			}
		} else {
			fail_msg("unexpected fixture name %s", names[i]);
		}
		http_head_clear(&h);
		free(f.data);
	}
	free_list(names);
	assert_int_equal(failures, 0);
}

/* Byte-at-a-time scanning must give the answer scanning all at once gives. */
static void check_incremental(const char *dir, size_t *count)
{
	size_t n;
	char **names = list_dir(dir, ".http", &n);

	for (size_t i = 0; i < n; i++) {
		char path[512];
		struct file f;
		struct http_scanner whole, inc;
		size_t skip1 = 0, hl1 = 0, skip2 = 0, hl2 = 0, prev_pos = 0;
		int st1 = 0, st2 = 0, rc1, rc2 = HTTP_INCOMPLETE;
		struct dw_err err = {""};

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		f = load(path);
		http_scanner_init(&whole);
		rc1 = http_scan_head(&whole, f.data, f.len, MAX_HEAD, &skip1, &hl1, &st1, &err);
		http_scanner_init(&inc);
		for (size_t l = 1; l <= f.len && rc2 == HTTP_INCOMPLETE; l++) {
			rc2 = http_scan_head(&inc, f.data, l, MAX_HEAD, &skip2, &hl2, &st2, &err);
			/* resumable: never re-examines, never runs ahead of the input */
			assert_true(inc.pos >= prev_pos && inc.pos <= l);
			prev_pos = inc.pos;
		}
		if (rc1 != rc2 || (rc1 == HTTP_OK && (skip1 != skip2 || hl1 != hl2)) ||
		    (rc1 == HTTP_ERROR && st1 != st2))
			fail_msg("%s: whole rc %d st %d hl %zu, bytewise rc %d st %d hl %zu",
				 names[i], rc1, st1, hl1, rc2, st2, hl2);
		free(f.data);
		(*count)++;
	}
	free_list(names);
}

static void test_scan_bytewise_fixtures(void **state)
{
	size_t count = 0;

	(void)state;
	check_incremental(CASES "/requests", &count);
	check_incremental(CASES "/responses", &count);
	assert_true(count > 100);
}

static void test_chunked_fixtures(void **state)
{
	size_t n, nok = 0, nbad = 0;
	char **names = list_dir(CASES "/chunked", ".chunk", &n);
	static struct sink out;
	static const size_t steps[] = {1, 2, 3, 7, 0 /* all at once */};

	(void)state;
	for (size_t i = 0; i < n; i++) {
		char path[512];
		struct file f;
		size_t used;
		int rc;

		snprintf(path, sizeof(path), CASES "/chunked/%s", names[i]);
		f = load(path);
		if (strncmp(names[i], "ok-", 3) == 0) {
			struct file body;

			snprintf(path, sizeof(path), CASES "/chunked/%.*s.body",
				 (int)(strlen(names[i]) - 6), names[i]);
			body = load(path);
			for (size_t k = 0; k < DW_ARRAY_LEN(steps); k++) {
				size_t step = steps[k] ? steps[k] : f.len;

				rc = decode_steps(f.data, f.len, step, &out, &used);
				if (rc != HTTP_OK || used != f.len || out.len != body.len ||
				    memcmp(out.buf, body.data, body.len) != 0)
					fail_msg("%s (step %zu): rc %d used %zu payload %zu/%zu",
						 names[i], step, rc, used, out.len, body.len);
			}
			free(body.data);
			nok++;
		} else {
			for (size_t k = 0; k < DW_ARRAY_LEN(steps); k++) {
				size_t step = steps[k] ? steps[k] : f.len;

				rc = decode_steps(f.data, f.len, step, &out, &used);
				if (rc != HTTP_ERROR)
					fail_msg("%s (step %zu): rc %d, want error", names[i],
						 step, rc);
			}
			nbad++;
		}
		free(f.data);
	}
	print_message("chunked: %zu ok, %zu bad cases\n", nok, nbad);
	free_list(names);
	assert_true(nok >= 8 && nbad >= 20);
}

/* ---- parsed fields ------------------------------------------------------ */

static void test_get_query(void **state)
{
	struct file f;
	struct http_head h = parse_req_file("ok-get-query.http", &f);
	const struct http_header *ua;

	(void)state;
	assert_int_equal(h.method, HTTP_M_GET);
	assert_span(h.method_str, h.method_len, "GET");
	assert_span(h.target, h.target_len, "/items/42?expand=1&x=%20y");
	assert_span(h.path, h.path_len, "/items/42");
	assert_span(h.query, h.query_len, "expand=1&x=%20y");
	assert_span(h.host, h.host_len, "example.com");
	assert_int_equal(h.version_minor, 1);
	assert_int_equal(h.nheaders, 3);
	assert_span(h.headers[1].name, h.headers[1].name_len, "Accept");
	assert_span(h.headers[1].value, h.headers[1].value_len, "*/*");
	ua = http_head_get(&h, "user-AGENT");
	assert_non_null(ua);
	assert_span(ua->value, ua->value_len, "t");
	assert_null(http_head_get(&h, "Content-Length"));
	assert_int_equal(h.content_length, -1);
	assert_false(h.chunked);
	assert_true(http_keep_alive(&h));
	assert_int_equal(h.raw[h.raw_len], '\0');
	http_head_clear(&h);
	assert_null(h.raw);
	http_head_clear(&h); /* twice is fine */
	free(f.data);
}

static void test_post_cl(void **state)
{
	struct file f;
	struct http_head h = parse_req_file("ok-post-cl.http", &f);

	(void)state;
	assert_int_equal(h.method, HTTP_M_POST);
	assert_int_equal(h.content_length, 13);
	assert_null(h.query);
	/* the body follows the head exactly */
	assert_int_equal(f.len - h.raw_len, 13);
	assert_memory_equal(f.data + h.raw_len, "{\"name\":\"a\"}\n", 13);
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-cl-list-same.http", &f);
	assert_int_equal(h.content_length, 5);
	http_head_clear(&h);
	free(f.data);
	h = parse_req_file("ok-cl-duplicate-same.http", &f);
	assert_int_equal(h.content_length, 5);
	http_head_clear(&h);
	free(f.data);
	h = parse_req_file("ok-cl-leading-ows.http", &f);
	assert_int_equal(h.content_length, 3);
	assert_span(http_head_get(&h, "content-length")->value,
		    http_head_get(&h, "content-length")->value_len, "3");
	http_head_clear(&h);
	free(f.data);
}

static void test_chunked_post_bytewise(void **state)
{
	struct file f;
	struct http_head h = parse_req_file("ok-chunked-post.http", &f);
	struct http_chunked c;
	struct dw_err err = {""};
	static struct sink out;
	size_t off = h.raw_len, used;
	int rc = HTTP_INCOMPLETE;

	(void)state;
	assert_true(h.chunked);
	assert_int_equal(h.content_length, -1);
	http_chunked_init(&c, MAX_TRAILER);
	memset(&out, 0, sizeof(out));
	/* one byte at a time: the body ends exactly at the end of the file */
	while (off < f.len) {
		rc = http_chunked_decode(&c, f.data + off, 1, &used, sink_emit, &out, &err);
		assert_int_equal(used, 1);
		off++;
		if (rc != HTTP_INCOMPLETE)
			break;
	}
	assert_int_equal(rc, HTTP_OK);
	assert_int_equal(off, f.len);
	assert_int_equal(out.len, 11);
	assert_memory_equal(out.buf, "hello world", 11);
	assert_int_equal(c.total, 11);
	/* once done, further input is not the body's */
	rc = http_chunked_decode(&c, "GET", 3, &used, sink_emit, &out, &err);
	assert_int_equal(rc, HTTP_OK);
	assert_int_equal(used, 0);
	http_head_clear(&h);
	free(f.data);
}

static void test_chunked_stops_at_end(void **state)
{
	const char in[] = "4\r\nWiki\r\n5;x=\"y\"\r\npedia\r\n0\r\nA: b\r\n\r\nGET / HTTP/1.1\r\n";
	struct http_chunked c;
	struct dw_err err = {""};
	static struct sink out;
	size_t used;
	int rc;

	(void)state;
	http_chunked_init(&c, MAX_TRAILER);
	memset(&out, 0, sizeof(out));
	rc = http_chunked_decode(&c, in, sizeof(in) - 1, &used, sink_emit, &out, &err);
	assert_int_equal(rc, HTTP_OK);
	assert_int_equal(used, strlen("4\r\nWiki\r\n5;x=\"y\"\r\npedia\r\n0\r\nA: b\r\n\r\n"));
	assert_memory_equal(in + used, "GET ", 4);
	assert_int_equal(out.len, 9);
	assert_memory_equal(out.buf, "Wikipedia", 9);
	/* a data run is emitted in one call when it arrives in one piece */
	assert_int_equal(out.calls, 2);

	/* NULL emit is allowed: count only */
	http_chunked_init(&c, MAX_TRAILER);
	rc = http_chunked_decode(&c, in, sizeof(in) - 1, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_OK);
	assert_int_equal(c.total, 9);

	/* after an error the decoder stays failed */
	http_chunked_init(&c, MAX_TRAILER);
	rc = http_chunked_decode(&c, "z\r\n", 3, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_ERROR);
	assert_true(err.msg[0] != '\0');
	rc = http_chunked_decode(&c, "0\r\n\r\n", 5, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_ERROR);

	/* the largest size we accept (15 hex digits) does not overflow */
	http_chunked_init(&c, MAX_TRAILER);
	rc = http_chunked_decode(&c, "fffffffffffffff\r\nab", 19, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_INCOMPLETE);
	assert_int_equal(c.remaining, 0xfffffffffffffffULL - 2);

	/* payload limit: a size past it fails on its digits, before any data;
	 * exactly at the limit passes, across chunks too */
	http_chunked_init(&c, MAX_TRAILER);
	http_chunked_limit(&c, 1048576);
	rc = http_chunked_decode(&c, "100000005", 9, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_ERROR);
	assert_true(c.too_large);
	assert_true(used < 9); /* failed on a digit, not at the end of the line */
	http_chunked_init(&c, MAX_TRAILER);
	http_chunked_limit(&c, 5);
	rc = http_chunked_decode(&c, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 20, &used, NULL, NULL,
				 &err);
	assert_int_equal(rc, HTTP_OK);
	http_chunked_init(&c, MAX_TRAILER);
	http_chunked_limit(&c, 5);
	rc = http_chunked_decode(&c, "3\r\nabc\r\n3\r\n", 11, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_ERROR);
	assert_true(c.too_large);
	http_chunked_init(&c, MAX_TRAILER);
	rc = http_chunked_decode(&c, "zz\r\n", 4, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_ERROR);
	assert_false(c.too_large);

	/* trailer limit: exactly at the limit passes, one more byte fails */
	http_chunked_init(&c, 6);
	rc = http_chunked_decode(&c, "0\r\nA: b\r\n\r\n", 11, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_OK);
	http_chunked_init(&c, 5);
	rc = http_chunked_decode(&c, "0\r\nA: b\r\n\r\n", 11, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_ERROR);
	http_chunked_init(&c, 0);
	rc = http_chunked_decode(&c, "0\r\n\r\n", 5, &used, NULL, NULL, &err);
	assert_int_equal(rc, HTTP_OK);
}

static void test_pipelined(void **state)
{
	struct file f;
	struct http_scanner s;
	struct http_head h;
	size_t skip, hl, skip2, hl2;
	int status = 0;
	struct dw_err err = {""};
	const char *second;

	(void)state;
	h = parse_req_file("ok-pipelined.http", &f);
	assert_span(h.path, h.path_len, "/a");
	assert_true(http_keep_alive(&h));
	assert_true(h.raw_len < f.len);
	http_head_clear(&h);

	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, f.data, f.len, MAX_HEAD, &skip, &hl, &status, &err),
			 HTTP_OK);
	assert_int_equal(skip, 0);
	assert_int_equal(hl, strlen("GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n"));
	/* asking again returns the same answer */
	assert_int_equal(http_scan_head(&s, f.data, f.len, MAX_HEAD, &skip2, &hl2, &status, &err),
			 HTTP_OK);
	assert_int_equal(hl2, hl);

	second = f.data + hl;
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, second, f.len - hl, MAX_HEAD, &skip2, &hl2, &status,
					&err),
			 HTTP_OK);
	assert_int_equal(skip2 + hl2, f.len - hl);
	assert_int_equal(http_parse_request(&h, second, hl2, &status, &err), HTTP_OK);
	assert_span(h.path, h.path_len, "/b");
	assert_span(h.query, h.query_len, "c");
	assert_true(h.conn_close);
	assert_false(http_keep_alive(&h));
	http_head_clear(&h);
	free(f.data);
}

static void test_versions_and_forms(void **state)
{
	struct file f;
	struct http_head h;

	(void)state;
	h = parse_req_file("ok-http10-keepalive.http", &f);
	assert_int_equal(h.version_minor, 0);
	assert_true(h.conn_keep_alive);
	assert_true(http_keep_alive(&h));
	assert_null(h.host);
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-http10-no-host.http", &f);
	assert_false(http_keep_alive(&h));
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-absolute-form.http", &f);
	assert_span(h.target, h.target_len, "http://example.com:8080/p/q?z=1");
	assert_span(h.path, h.path_len, "/p/q");
	assert_span(h.query, h.query_len, "z=1");
	assert_span(h.host, h.host_len, "example.com");
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-absolute-form-no-path.http", &f);
	assert_span(h.path, h.path_len, "/");
	assert_null(h.query);
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-options-star.http", &f);
	assert_int_equal(h.method, HTTP_M_OPTIONS);
	assert_span(h.target, h.target_len, "*");
	http_head_clear(&h);
	free(f.data);

	/* a name with '_' is an ordinary header unless it reads as framing */
	h = parse_req_file("ok-underscore-other-header.http", &f);
	assert_non_null(http_head_get(&h, "X_Custom_Name"));
	assert_null(http_head_get(&h, "X-Custom-Name"));
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-lowercase-method.http", &f);
	assert_int_equal(h.method, HTTP_M_OTHER);
	assert_span(h.method_str, h.method_len, "get");
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-empty-host.http", &f);
	assert_non_null(h.host);
	assert_int_equal(h.host_len, 0);
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-100-headers.http", &f);
	assert_int_equal(h.nheaders, HTTP_MAX_HEADERS);
	assert_span(h.headers[99].name, h.headers[99].name_len, "X-H100");
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-htab-in-value.http", &f);
	assert_span(http_head_get(&h, "x-tab")->value, http_head_get(&h, "x-tab")->value_len,
		    "a\tb");
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-empty-value.http", &f);
	assert_int_equal(http_head_get(&h, "X-Spaces")->value_len, 0);
	http_head_clear(&h);
	free(f.data);
}

static void test_leading_crlf(void **state)
{
	struct file f;
	struct http_scanner s;
	size_t skip, hl;
	int status = 0;
	struct dw_err err = {""};
	struct http_head h;

	(void)state;
	h = parse_req_file("ok-leading-crlf.http", &f);
	assert_span(h.method_str, h.method_len, "GET");
	http_head_clear(&h);
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, f.data, f.len, MAX_HEAD, &skip, &hl, &status, &err),
			 HTTP_OK);
	assert_int_equal(skip, 4);
	assert_int_equal(skip + hl, f.len);
	free(f.data);

	/* endless empty lines are bounded too */
	{
		char buf[64];

		for (size_t i = 0; i < sizeof(buf); i += 2)
			memcpy(buf + i, "\r\n", 2);
		http_scanner_init(&s);
		assert_int_equal(http_scan_head(&s, buf, sizeof(buf), 32, &skip, &hl, &status,
						&err),
				 HTTP_ERROR);
		assert_int_equal(status, 400);
	}
}

static void test_connection_and_hop_by_hop(void **state)
{
	struct file f;
	struct http_head h = parse_req_file("ok-connection-list.http", &f);

	(void)state;
	assert_true(h.conn_close);
	assert_true(h.conn_keep_alive);
	assert_true(h.upgrade);
	assert_false(http_keep_alive(&h)); /* close wins */
	assert_true(http_is_hop_by_hop(&h, "Connection", 10));
	assert_true(http_is_hop_by_hop(&h, "KEEP-ALIVE", 10));
	assert_true(http_is_hop_by_hop(&h, "proxy-connection", 16));
	assert_true(http_is_hop_by_hop(&h, "Proxy-Authorization", 19));
	assert_true(http_is_hop_by_hop(&h, "Proxy-Authenticate", 18));
	assert_true(http_is_hop_by_hop(&h, "TE", 2));
	assert_true(http_is_hop_by_hop(&h, "Trailer", 7));
	assert_true(http_is_hop_by_hop(&h, "Transfer-Encoding", 17));
	assert_true(http_is_hop_by_hop(&h, "Upgrade", 7));
	assert_true(http_is_hop_by_hop(&h, "x-private", 9)); /* named in Connection */
	assert_false(http_is_hop_by_hop(&h, "x-privat", 8));
	assert_false(http_is_hop_by_hop(&h, "Host", 4));
	assert_false(http_is_hop_by_hop(&h, "Content-Length", 14));
	assert_false(http_is_hop_by_hop(NULL, "X-Private", 9));
	assert_true(http_is_hop_by_hop(NULL, "te", 2));
	http_head_clear(&h);
	free(f.data);

	h = parse_req_file("ok-expect-continue.http", &f);
	assert_true(h.expect_continue);
	assert_int_equal(h.method, HTTP_M_PUT);
	assert_false(h.upgrade);
	http_head_clear(&h);
	free(f.data);
	h = parse_req_file("ok-get-query.http", &f);
	assert_false(h.expect_continue);
	http_head_clear(&h);
	free(f.data);
}

static void test_responses(void **state)
{
	static const char r1[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n";
	static const char r2[] = "HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n";
	static const char r3[] = "HTTP/1.0 200 OK\r\n\r\n";
	struct http_head h;
	int status = 0;
	struct dw_err err = {""};

	(void)state;
	assert_int_equal(http_parse_response(&h, r1, sizeof(r1) - 1, &status, &err), HTTP_OK);
	assert_int_equal(h.status, 404);
	assert_span(h.reason, h.reason_len, "Not Found");
	assert_int_equal(h.content_length, 9);
	assert_int_equal(http_response_body_kind(&h, HTTP_M_GET), HTTP_BODY_LENGTH);
	assert_int_equal(http_response_body_kind(&h, HTTP_M_HEAD), HTTP_BODY_NONE);
	assert_true(http_keep_alive(&h));
	http_head_clear(&h);

	assert_int_equal(http_parse_response(&h, r2, sizeof(r2) - 1, &status, &err), HTTP_OK);
	assert_int_equal(h.status, 200);
	assert_int_equal(h.reason_len, 0);
	assert_true(h.chunked);
	assert_int_equal(http_response_body_kind(&h, HTTP_M_POST), HTTP_BODY_CHUNKED);
	http_head_clear(&h);

	assert_int_equal(http_parse_response(&h, r3, sizeof(r3) - 1, &status, &err), HTTP_OK);
	assert_int_equal(http_response_body_kind(&h, HTTP_M_GET), HTTP_BODY_UNTIL_CLOSE);
	assert_false(http_keep_alive(&h));
	http_head_clear(&h);

	/* a request line is not a status line */
	assert_int_equal(http_parse_response(&h, "GET / HTTP/1.1\r\n\r\n", 18, &status, &err),
			 HTTP_ERROR);
	assert_int_equal(status, 502);
	http_head_clear(&h);
}

static void test_parse_needs_complete_head(void **state)
{
	struct http_head h;
	int status = 0;
	struct dw_err err = {""};

	(void)state;
	assert_int_equal(http_parse_request(&h, "GET / HTTP/1.1\r\nHost: a\r\n", 25, &status,
					    &err),
			 HTTP_ERROR);
	assert_int_equal(status, 400);
	assert_null(h.raw);
	/* trailing bytes after the empty line are not part of a head */
	assert_int_equal(http_parse_request(&h, "GET / HTTP/1.1\r\nHost: a\r\n\r\nX: y\r\n\r\n",
					    35, &status, &err),
			 HTTP_ERROR);
	assert_int_equal(status, 400);
	assert_int_equal(http_parse_request(&h, "", 0, &status, &err), HTTP_ERROR);
	http_head_clear(&h);
}

static void test_scan_limits_and_resume(void **state)
{
	static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"; /* 27 bytes */
	struct http_scanner s;
	size_t skip, hl, len = sizeof(req) - 1;
	int status = 0;
	struct dw_err err = {""};

	(void)state;
	/* a head of exactly max_bytes fits, one byte less does not */
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, req, len, len, &skip, &hl, &status, &err), HTTP_OK);
	assert_int_equal(hl, len);
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, req, len, len - 1, &skip, &hl, &status, &err),
			 HTTP_ERROR);
	assert_int_equal(status, 431);
	/* 431 also when the head is incomplete and already too long */
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, req, 20, 10, &skip, &hl, &status, &err), HTTP_ERROR);
	assert_int_equal(status, 431);
	/* the error is sticky */
	assert_int_equal(http_scan_head(&s, req, 20, 10, &skip, &hl, &status, &err), HTTP_ERROR);
	assert_int_equal(status, 431);

	/* resumes in arbitrary pieces, including CR|LF split across calls */
	for (size_t cut = 1; cut < len; cut++) {
		http_scanner_init(&s);
		assert_int_equal(http_scan_head(&s, req, cut, 100, &skip, &hl, &status, &err),
				 HTTP_INCOMPLETE);
		assert_int_equal(s.pos, cut);
		assert_int_equal(http_scan_head(&s, req, len, 100, &skip, &hl, &status, &err),
				 HTTP_OK);
		assert_int_equal(hl, len);
	}

	/* bare LF is reported as soon as it is seen, without waiting for more */
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, "GET / HTTP/1.1\n", 15, 100, &skip, &hl, &status, &err),
			 HTTP_ERROR);
	assert_int_equal(status, 400);
	/* a CR at the very end is not yet bare */
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, "GET / HTTP/1.1\r", 15, 100, &skip, &hl, &status, &err),
			 HTTP_INCOMPLETE);
	assert_int_equal(http_scan_head(&s, "GET / HTTP/1.1\rX", 16, 100, &skip, &hl, &status, &err),
			 HTTP_ERROR);
	assert_int_equal(status, 400);
	http_scanner_init(&s);
	assert_int_equal(http_scan_head(&s, "GET /\0", 6, 100, &skip, &hl, &status, &err),
			 HTTP_ERROR);
	assert_int_equal(status, 400);
}

static void test_content_length_fn(void **state)
{
	static const struct {
		const char *in;
		int rc;
		int64_t val;
	} cases[] = {
		{"0", 0, 0},
		{"5", 0, 5},
		{"007", 0, 7},
		{"5, 5", 0, 5},
		{"5,5", 0, 5},
		{"5 ,\t5 , 5", 0, 5},
		{"999999999999999999", 0, 999999999999999999LL},
		{"1000000000000000000", -1, 0},
		{"", -1, 0},
		{" 3", -1, 0},
		{"3 ", -1, 0},
		{"+3", -1, 0},
		{"-1", -1, 0},
		{"3x", -1, 0},
		{"0x10", -1, 0},
		{"3 3", -1, 0},
		{"5, 6", -1, 0},
		{"5,", -1, 0},
		{",5", -1, 0},
		{"5,,5", -1, 0},
		{"1e3", -1, 0},
	};

	(void)state;
	for (size_t i = 0; i < DW_ARRAY_LEN(cases); i++) {
		int64_t v = -42;
		int rc = http_parse_content_length(cases[i].in, strlen(cases[i].in), &v);

		if (rc != cases[i].rc || (rc == 0 && v != cases[i].val))
			fail_msg("'%s': rc %d v %lld", cases[i].in, rc, (long long)v);
	}
	/* not NUL-terminated: only len bytes count */
	{
		int64_t v;

		assert_int_equal(http_parse_content_length("12345", 2, &v), 0);
		assert_int_equal(v, 12);
	}
}

static void test_methods_and_reasons(void **state)
{
	(void)state;
	for (int m = HTTP_M_GET; m <= HTTP_M_CONNECT; m++) {
		const char *name = http_method_name((enum http_method)m);

		assert_non_null(name);
		assert_int_equal(http_method_from(name, strlen(name)), m);
	}
	assert_null(http_method_name(HTTP_M_OTHER));
	assert_int_equal(http_method_from("get", 3), HTTP_M_OTHER);
	assert_int_equal(http_method_from("GETX", 3), HTTP_M_GET);
	assert_int_equal(http_method_from("PROPFIND", 8), HTTP_M_OTHER);
	assert_string_equal(http_reason(404), "Not Found");
	assert_string_equal(http_reason(431), "Request Header Fields Too Large");
	assert_string_equal(http_reason(505), "HTTP Version Not Supported");
	assert_string_equal(http_reason(299), "");
	{
		static const int codes[] = {100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304,
					    307, 308, 400, 401, 403, 404, 405, 408, 409, 411, 412,
					    413, 414, 415, 417, 422, 429, 431, 500, 501, 502, 503,
					    504, 505};

		for (size_t i = 0; i < DW_ARRAY_LEN(codes); i++)
			assert_true(http_reason(codes[i])[0] != '\0');
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_request_fixtures),
		cmocka_unit_test(test_response_fixtures),
		cmocka_unit_test(test_scan_bytewise_fixtures),
		cmocka_unit_test(test_chunked_fixtures),
		cmocka_unit_test(test_get_query),
		cmocka_unit_test(test_post_cl),
		cmocka_unit_test(test_chunked_post_bytewise),
		cmocka_unit_test(test_chunked_stops_at_end),
		cmocka_unit_test(test_pipelined),
		cmocka_unit_test(test_versions_and_forms),
		cmocka_unit_test(test_leading_crlf),
		cmocka_unit_test(test_connection_and_hop_by_hop),
		cmocka_unit_test(test_responses),
		cmocka_unit_test(test_parse_needs_complete_head),
		cmocka_unit_test(test_scan_limits_and_resume),
		cmocka_unit_test(test_content_length_fn),
		cmocka_unit_test(test_methods_and_reasons),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
