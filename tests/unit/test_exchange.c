/*
 * test_exchange — the buffered upstream exchange (lib/exchange.h) against a
 * scripted server on 127.0.0.1: pipelined answers read in order (length,
 * chunked, no body; interim 100 skipped), an answer saying Connection: close
 * hands back what was pipelined behind it (NOT_TAKEN), a broken answer fails
 * the one being answered and hands back the rest, a silent upstream times
 * every exchange out, a kept body past its bound ends TOO_LARGE, and a
 * pooled connection closed under an exchange before any byte of answer is
 * retried once on a new connection only when the exchange may be resent.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "exchange.h"
#include "metrics.h"
#include "pool.h"

/* ------------------------------------------------ the scripted server */

/* One step of the server's script: read nreq more requests on the current
 * connection, then send reply (NULL: nothing) and close when told. */
struct step {
	int nreq;
	const char *reply;
	bool close;
};

static struct {
	pthread_t th;
	int lfd, port;
	pthread_mutex_t lock;
	const struct step *steps;
	size_t nsteps, next;
	int conns; /* accepted so far */
	volatile bool stop;
} srv;

static bool take_step(struct step *st)
{
	bool ok;

	pthread_mutex_lock(&srv.lock);
	ok = srv.next < srv.nsteps;
	if (ok)
		*st = srv.steps[srv.next++];
	pthread_mutex_unlock(&srv.lock);
	return ok;
}

/* Read until n more request heads ("\r\n\r\n") are in; false at EOF. */
static bool read_requests(int fd, int n, int *pending)
{
	char buf[4096];

	while (*pending < n) {
		ssize_t got = read(fd, buf, sizeof(buf) - 1);

		if (got <= 0)
			return false;
		buf[got] = '\0';
		for (char *p = buf; (p = strstr(p, "\r\n\r\n")); p += 4)
			(*pending)++;
	}
	*pending -= n;
	return true;
}

static void *server_main(void *arg)
{
	(void)arg;
	while (!srv.stop) {
		struct pollfd pfd = {srv.lfd, POLLIN, 0};
		struct step st;
		int fd, pending = 0;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		fd = accept(srv.lfd, NULL, NULL);
		if (fd < 0)
			continue;
		__atomic_add_fetch(&srv.conns, 1, __ATOMIC_RELAXED);
		while (take_step(&st)) {
			if (!read_requests(fd, st.nreq, &pending))
				break;
			if (st.reply && write(fd, st.reply, strlen(st.reply)) < 0)
				break;
			if (st.close)
				break;
		}
		close(fd);
	}
	return NULL;
}

static void script(const struct step *steps, size_t n)
{
	pthread_mutex_lock(&srv.lock);
	srv.steps = steps;
	srv.nsteps = n;
	srv.next = 0;
	pthread_mutex_unlock(&srv.lock);
}

/* ------------------------------------------------ the client side */

static struct event_base *base;
static struct metrics *metrics;
static struct pool_set *pools;
static struct xloop *xl;
static struct dw_config cfg = {.refcnt = 1};
static struct dw_upstream up = {.name = "t", .url = "http://t", .host = "127.0.0.1",
				.host_header = "t", .base_path = "", .timeout_ms = 2000,
				.connect_timeout_ms = 1000, .pool_size = 4};

struct tx {
	int id;
	enum xchg_end how;
	bool ended;
	struct evbuffer *body;
	struct xchg x;
};

static int ended, want;

static void tx_write(struct xchg *x, struct evbuffer *out)
{
	struct tx *t = (struct tx *)((char *)x - offsetof(struct tx, x));

	evbuffer_add_printf(out, "GET /%d HTTP/1.1\r\nHost: t\r\n\r\n", t->id);
}

static void tx_done(struct xchg *x, enum xchg_end how, const char *why)
{
	struct tx *t = (struct tx *)((char *)x - offsetof(struct tx, x));

	(void)why;
	assert_false(t->ended); /* exactly once */
	t->ended = true;
	t->how = how;
	if (++ended == want)
		event_base_loopbreak(base);
}

static void tx_init(struct tx *t, int id, bool resend_ok)
{
	memset(t, 0, sizeof(*t)); /* the owner zeroes it first (exchange.h) */
	xchg_init(&t->x);
	t->id = id;
	t->x.method = HTTP_M_GET;
	t->x.keep = XBODY_EXCERPT;
	t->x.resend_ok = resend_ok;
	t->x.write = tx_write;
	t->x.done = tx_done;
}

static int gone;

static void conn_gone(struct xconn *c)
{
	(void)c;
	gone++;
}

/* Run the loop until n more exchanges ended (bounded by the timeouts). */
static void run_until(int n)
{
	ended = 0;
	want = n;
	event_base_dispatch(base);
	assert_int_equal(ended, n);
}

static int setup(void **state)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);

	(void)state;
	srv.lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(srv.lfd >= 0);
	assert_int_equal(bind(srv.lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(srv.lfd, 16), 0);
	assert_int_equal(getsockname(srv.lfd, (struct sockaddr *)&a, &len), 0);
	srv.port = ntohs(a.sin_port);
	up.port = srv.port;
	pthread_mutex_init(&srv.lock, NULL);
	srv.stop = false;
	assert_int_equal(pthread_create(&srv.th, NULL, server_main, NULL), 0);
	base = event_base_new();
	metrics = metrics_new();
	pools = pool_set_new(base, metrics, NULL); /* a numeric host: no resolver */
	xl = xloop_new(base, pools, NULL, NULL);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	xloop_free(xl);
	pool_set_free(pools);
	metrics_free(metrics);
	event_base_free(base);
	srv.stop = true;
	pthread_join(srv.th, NULL);
	close(srv.lfd);
	pthread_mutex_destroy(&srv.lock);
	return 0;
}

/* ------------------------------------------------ the tests */

/* Script the server, open one connection and send n exchanges on it
 * (pipelined), then run until all n have ended. */
static void send_pipelined(const struct step *steps, size_t nsteps, struct tx *t, int n)
{
	struct xconn *c;

	script(steps, nsteps);
	c = xconn_open(xl, &cfg, &up, conn_gone, NULL);
	assert_non_null(c);
	for (int i = 0; i < n; i++) {
		tx_init(&t[i], i, false);
		xconn_send(c, &t[i].x);
	}
	run_until(n);
}

static void test_pipelined_answers_in_order(void **state)
{
	static const struct step steps[] = {
		{3,
		 "HTTP/1.1 100 Continue\r\n\r\n"
		 "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
		 "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
		 "3\r\nab\n\r\n2\r\ncd\r\n0\r\n\r\n"
		 "HTTP/1.1 204 No Content\r\n\r\n",
		 false},
	};
	struct tx t[3];

	(void)state;
	gone = 0;
	send_pipelined(steps, 1, t, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(t[i].how, XCHG_ANSWERED);
	assert_int_equal(t[0].x.status, 200);
	assert_string_equal(t[0].x.excerpt, "hello");
	assert_int_equal(t[1].x.status, 201);
	assert_string_equal(t[1].x.excerpt, "ab cd"); /* decoded, line breaks as spaces */
	assert_int_equal(t[2].x.status, 204);
	assert_int_equal(gone, 1); /* idle: back to the pool */
	assert_int_equal(cfg.refcnt, 1);
}

static void test_close_hands_back_what_was_behind(void **state)
{
	static const struct step steps[] = {
		{2, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true},
	};
	struct tx t[2];

	(void)state;
	send_pipelined(steps, 1, t, 2);
	assert_int_equal(t[0].how, XCHG_ANSWERED);
	assert_int_equal(t[1].how, XCHG_NOT_TAKEN);
}

static void test_a_broken_answer_fails_the_head_only(void **state)
{
	static const struct step steps[] = {{2, "HTTP/1.1 20x Bad\r\n\r\n", true}};
	struct tx t[2];

	(void)state;
	send_pipelined(steps, 1, t, 2);
	assert_int_equal(t[0].how, XCHG_FAILED);
	assert_int_equal(t[1].how, XCHG_NOT_TAKEN);
}

static void test_a_silent_upstream_times_every_exchange_out(void **state)
{
	static const struct step steps[] = {{2, NULL, false}, {1, NULL, true}}; /* holds */
	struct tx t[2];

	(void)state;
	up.timeout_ms = 200;
	send_pipelined(steps, 2, t, 2);
	up.timeout_ms = 2000;
	assert_int_equal(t[0].how, XCHG_TIMED_OUT);
	assert_int_equal(t[1].how, XCHG_TIMED_OUT);
}

static void test_a_kept_body_past_its_bound_is_too_large(void **state)
{
	static const struct step steps[] = {
		{1, "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789", true},
	};
	struct tx t;

	(void)state;
	script(steps, 1);
	tx_init(&t, 0, false);
	t.body = evbuffer_new();
	t.x.keep = XBODY_KEEP;
	t.x.body = t.body;
	t.x.body_max = 10;
	assert_int_equal(xchg_start(xl, &cfg, &up, &t.x), 0);
	run_until(1);
	assert_int_equal(t.how, XCHG_TOO_LARGE);
	evbuffer_free(t.body);
}

/* A pooled connection the upstream closes when the next request arrives. */
static void reused_then_closed(bool resend_ok, enum xchg_end expect)
{
	static const struct step steps[] = {
		{1, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false},
		{1, NULL, true}, /* the pooled connection: closed, unanswered */
		{1, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain", false},
	};
	struct tx t;
	int conns0;

	script(steps, 3);
	conns0 = __atomic_load_n(&srv.conns, __ATOMIC_RELAXED);
	tx_init(&t, 0, true);
	assert_int_equal(xchg_start(xl, &cfg, &up, &t.x), 0);
	run_until(1);
	assert_int_equal(t.how, XCHG_ANSWERED); /* its connection goes to the pool */
	tx_init(&t, 1, resend_ok);
	assert_int_equal(xchg_start(xl, &cfg, &up, &t.x), 0);
	run_until(1);
	assert_int_equal(t.how, expect);
	assert_int_equal(t.x.retried, resend_ok);
	if (resend_ok)
		assert_string_equal(t.x.excerpt, "again");
	assert_int_equal(__atomic_load_n(&srv.conns, __ATOMIC_RELAXED) - conns0,
			 resend_ok ? 2 : 1);
}

static void test_reused_and_closed_is_retried_once_when_it_may_be(void **state)
{
	(void)state;
	reused_then_closed(true, XCHG_ANSWERED);
}

static void test_reused_and_closed_fails_when_it_may_not_be_resent(void **state)
{
	(void)state;
	reused_then_closed(false, XCHG_FAILED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pipelined_answers_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_hands_back_what_was_behind, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_a_broken_answer_fails_the_head_only, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_a_silent_upstream_times_every_exchange_out,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_kept_body_past_its_bound_is_too_large, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reused_and_closed_is_retried_once_when_it_may_be,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_reused_and_closed_fails_when_it_may_not_be_resent, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
