/*
 * test_mirrorwire — the mirror's request bytes (a live send and a replay of
 * the same record differ only by X-Dualwrite-Replay; headers without a value
 * are left out; bodiless POST/PUT/PATCH say Content-Length: 0; the result is
 * a request the strict parser takes) and the classification of answers (the
 * block's table, the reverse block for the legacy, the defaults for a route
 * that is gone, no status = retry).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "http_parse.h"
#include "mirrorwire.h"

static struct dw_upstream up = {.name = "gear", .host_header = "new.example:8080",
				.base_path = "/v2"};

/* The request as a string (static buffer). */
static const char *wire(const struct mirrorwire_req *r)
{
	static char buf[4096];
	struct evbuffer *b = evbuffer_new();
	size_t n;

	mirrorwire_write(b, &up, r);
	n = evbuffer_get_length(b);
	assert_true(n < sizeof(buf));
	evbuffer_remove(b, buf, n);
	buf[n] = '\0';
	evbuffer_free(b);
	return buf;
}

static const struct mirrorwire_req live = {
	.method = "POST", .path = "/gear-items", .idem_key = "abc-1", .route = "create",
	.request_id = "r-9", .body = "{\"id\":42}", .body_len = 9,
};

static void test_live_send(void **state)
{
	(void)state;
	assert_string_equal(wire(&live), "POST /v2/gear-items HTTP/1.1\r\n"
					 "Host: new.example:8080\r\n"
					 "Idempotency-Key: abc-1\r\n"
					 "X-Dualwrite-Route: create\r\n"
					 "X-Request-Id: r-9\r\n"
					 "Content-Type: application/json\r\n"
					 "Content-Length: 9\r\n"
					 "\r\n"
					 "{\"id\":42}");
}

static void test_replay_differs_only_by_its_attempt(void **state)
{
	struct mirrorwire_req r = live;

	(void)state;
	r.replay_attempt = 3;
	r.content_type = "application/json";
	assert_string_equal(wire(&r), "POST /v2/gear-items HTTP/1.1\r\n"
				      "Host: new.example:8080\r\n"
				      "Idempotency-Key: abc-1\r\n"
				      "X-Dualwrite-Route: create\r\n"
				      "X-Dualwrite-Replay: 3\r\n"
				      "X-Request-Id: r-9\r\n"
				      "Content-Type: application/json\r\n"
				      "Content-Length: 9\r\n"
				      "\r\n"
				      "{\"id\":42}");
}

static void test_missing_values_and_bodiless_writes(void **state)
{
	struct mirrorwire_req r = {.method = "PUT", .path = "/gear-items/7"};

	(void)state;
	assert_string_equal(wire(&r), "PUT /v2/gear-items/7 HTTP/1.1\r\n"
				      "Host: new.example:8080\r\n"
				      "Content-Length: 0\r\n\r\n");
	r.method = "DELETE";
	r.path = NULL;
	assert_string_equal(wire(&r), "DELETE /v2/ HTTP/1.1\r\nHost: new.example:8080\r\n\r\n");
	r.method = "PATCH";
	r.body = "x=1";
	r.body_len = 3;
	r.content_type = "application/x-www-form-urlencoded";
	assert_string_equal(wire(&r), "PATCH /v2/ HTTP/1.1\r\nHost: new.example:8080\r\n"
				      "Content-Type: application/x-www-form-urlencoded\r\n"
				      "Content-Length: 3\r\n\r\nx=1");
}

static void test_the_parser_takes_it(void **state)
{
	struct mirrorwire_req r = live;
	struct http_head h;
	struct dw_err err = {""};
	const char *w;
	int status = 0;

	(void)state;
	r.replay_attempt = 1;
	w = wire(&r);
	memset(&h, 0, sizeof(h));
	assert_int_equal(http_parse_request(&h, w, strstr(w, "\r\n\r\n") + 4 - w, &status, &err),
			 HTTP_OK);
	assert_int_equal(h.method, HTTP_M_POST);
	assert_int_equal(h.content_length, 9);
	assert_non_null(http_head_get(&h, "Idempotency-Key"));
	assert_non_null(http_head_get(&h, "X-Dualwrite-Replay"));
	http_head_clear(&h);
}

static void test_classify(void **state)
{
	static struct dw_mirror fwd, rev;
	struct dw_route rt = {.name = "create", .mirror = &fwd};

	(void)state;
	fwd.upstream = 1;
	rev.upstream = 0;
	for (int s = 100; s < 600; s++) {
		fwd.klass[s] = s < 300 ? MIRROR_DELIVERED : MIRROR_PERMANENT;
		rev.klass[s] = s == 409 ? MIRROR_DELIVERED : MIRROR_RETRY;
	}
	fwd.klass[503] = MIRROR_RETRY;
	/* the block that sends to the upstream */
	assert_ptr_equal(mirrorwire_block(&rt, 1), &fwd);
	assert_ptr_equal(mirrorwire_block(&rt, 0), &fwd); /* no reverse: the mirror */
	rt.reverse = &rev;
	assert_ptr_equal(mirrorwire_block(&rt, 0), &rev);
	assert_ptr_equal(mirrorwire_block(&rt, 1), &fwd);
	assert_null(mirrorwire_block(NULL, 1));
	/* its table */
	assert_int_equal(mirrorwire_classify(&fwd, 201), MIRROR_DELIVERED);
	assert_int_equal(mirrorwire_classify(&fwd, 404), MIRROR_PERMANENT);
	assert_int_equal(mirrorwire_classify(&fwd, 503), MIRROR_RETRY);
	assert_int_equal(mirrorwire_classify(&rev, 409), MIRROR_DELIVERED);
	assert_int_equal(mirrorwire_classify(&rev, 201), MIRROR_RETRY);
	/* no valid answer: retry, whatever the table */
	assert_int_equal(mirrorwire_classify(&fwd, 0), MIRROR_RETRY);
	assert_int_equal(mirrorwire_classify(&fwd, 600), MIRROR_RETRY);
	assert_int_equal(mirrorwire_classify(NULL, 99), MIRROR_RETRY);
	/* the route is gone: the defaults */
	assert_int_equal(mirrorwire_classify(NULL, 204), MIRROR_DELIVERED);
	assert_int_equal(mirrorwire_classify(NULL, 408), MIRROR_RETRY);
	assert_int_equal(mirrorwire_classify(NULL, 429), MIRROR_RETRY);
	assert_int_equal(mirrorwire_classify(NULL, 500), MIRROR_RETRY);
	assert_int_equal(mirrorwire_classify(NULL, 302), MIRROR_PERMANENT);
	assert_int_equal(mirrorwire_classify(NULL, 422), MIRROR_PERMANENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_live_send),
		cmocka_unit_test(test_replay_differs_only_by_its_attempt),
		cmocka_unit_test(test_missing_values_and_bodiless_writes),
		cmocka_unit_test(test_the_parser_takes_it),
		cmocka_unit_test(test_classify),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
