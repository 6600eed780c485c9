/*
 * test_spool — the file spool: round trips, the fold of states across
 * reopens, per-key ordering for replay, ownership and recovery, damage
 * (torn tails, corrupt frames, garbage), limits, rotation and clean-up, and
 * two handles sharing one directory like the daemon and `dualwrite replay`.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "spool_frame.h"

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	char tmpl[] = "/tmp/dw-spool-XXXXXX";
	char *d = mkdtemp(tmpl);

	assert_non_null(d);
	*state = strdup(d);
	return 0;
}

static int teardown(void **state)
{
	nftw(*state, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(*state);
	return 0;
}

static struct spool *open_sp(const char *dir, bool owner, uint64_t seg_bytes, uint64_t max)
{
	struct spool_opts o = {.owner = owner, .segment_bytes = seg_bytes, .max_bytes = max};
	struct dw_err err = {{0}};
	struct spool *sp = spool_open(dir, &o, &err);

	if (!sp)
		fail_msg("spool_open: %s", err.msg);
	return sp;
}

static uint64_t add(struct spool *sp, enum spool_state st, const char *key, const char *path)
{
	struct spool_record r = {0};
	struct dw_err err = {{0}};
	char body[64];

	snprintf(body, sizeof(body), "{\"p\":\"%s\"}", path);
	r.state = st;
	r.route = (char *)"r1";
	r.upstream = (char *)"gear_ops";
	r.key = key ? strdup(key) : NULL;
	r.idem_key = (char *)"idem-1";
	r.method = (char *)"POST";
	r.path = strdup(path);
	r.content_type = (char *)"application/json";
	r.body = body;
	r.body_len = strlen(body);
	r.created_us = 1000;
	if (spool_append(sp, &r, &err) < 0)
		fail_msg("spool_append: %s", err.msg);
	free(r.key);
	free(r.path);
	return r.seq;
}

static void set(struct spool *sp, uint64_t seq, enum spool_state st)
{
	struct dw_err err = {{0}};

	if (spool_set_state(sp, seq, st, 1, 200, NULL, &err) < 0)
		fail_msg("spool_set_state: %s", err.msg);
}

static enum spool_state state_of(struct spool *sp, uint64_t seq)
{
	struct spool_record r;
	struct dw_err err;

	if (spool_read(sp, seq, &r, &err) < 0)
		return 0;
	enum spool_state s = r.state;
	spool_record_clear(&r);
	return s;
}

static size_t warnings_matching(struct spool *sp, const char *needle)
{
	struct dw_errlist w = {0};
	size_t n = 0;

	spool_take_warnings(sp, &w);
	for (size_t i = 0; i < w.n; i++)
		if (strstr(w.msgs[i], needle))
			n++;
	dw_errlist_free(&w);
	return n;
}

static char *seg_file(const char *dir, int idx)
{
	struct dirent **names;
	int n = scandir(dir, &names, NULL, alphasort), k = 0;
	char *out = NULL;

	for (int i = 0; i < n; i++) {
		if (!strncmp(names[i]->d_name, "seg-", 4) && strlen(names[i]->d_name) == 24 &&
		    k++ == idx && !out) {
			if (asprintf(&out, "%s/%s", dir, names[i]->d_name) < 0)
				out = NULL;
		}
		free(names[i]);
	}
	free(names);
	return out;
}

static int count_segs(const char *dir)
{
	int n = 0;
	char *p;

	while ((p = seg_file(dir, n))) {
		free(p);
		n++;
	}
	return n;
}

static off_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

static void test_roundtrip(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	struct spool_record r = {0}, out;
	struct dw_err err = {{0}};
	char bin[] = {'a', '\0', (char)0xff, (char)0xfe, 'z'};

	r.state = SPOOL_QUEUED;
	r.route = (char *)"equipment-create";
	r.upstream = (char *)"gear_ops";
	r.key = (char *)"42";
	r.idem_key = (char *)"dw-abc-1";
	r.method = (char *)"POST";
	r.path = (char *)"/gear-items?x=1";
	r.content_type = (char *)"application/octet-stream";
	r.body = bin;
	r.body_len = sizeof(bin);
	r.request_id = (char *)"req-9";
	r.created_us = 1234567;
	assert_int_equal(spool_append(sp, &r, &err), 0);
	assert_int_equal(r.seq, 1);
	uint64_t s2 = add(sp, SPOOL_QUEUED, NULL, "/nobody");
	assert_int_equal(s2, 2);
	spool_close(sp);

	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(spool_read(sp, 1, &out, &err), 0);
	assert_string_equal(out.route, "equipment-create");
	assert_string_equal(out.upstream, "gear_ops");
	assert_string_equal(out.key, "42");
	assert_string_equal(out.idem_key, "dw-abc-1");
	assert_string_equal(out.method, "POST");
	assert_string_equal(out.path, "/gear-items?x=1");
	assert_string_equal(out.content_type, "application/octet-stream");
	assert_string_equal(out.request_id, "req-9");
	assert_int_equal(out.body_len, sizeof(bin));
	assert_memory_equal(out.body, bin, sizeof(bin));
	assert_int_equal(out.created_us, 1234567);
	assert_int_equal(out.state, SPOOL_QUEUED);
	spool_record_clear(&out);
	assert_int_equal(spool_read(sp, 2, &out, &err), 0);
	assert_null(out.key);
	assert_memory_equal(out.body, "{\"p\":\"/nobody\"}", out.body_len);
	spool_record_clear(&out);
	assert_int_equal(spool_read(sp, 99, &out, &err), -1);
	assert_non_null(strstr(err.msg, "no record 99"));
	assert_int_equal(warnings_matching(sp, ""), 0);
	spool_close(sp);
}

static void test_states_fold(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	struct dw_err err = {{0}};
	struct spool_record r;
	struct spool_stats st;
	uint64_t seqs[8];

	uint64_t a = add(sp, SPOOL_QUEUED, "k1", "/a");
	uint64_t b = add(sp, SPOOL_QUEUED, "k2", "/b");
	uint64_t c = add(sp, SPOOL_QUEUED, "k3", "/c");
	set(sp, a, SPOOL_DELIVERED);
	assert_int_equal(spool_set_state(sp, b, SPOOL_DEAD, 4, 400, "HTTP 400: bad", &err), 0);
	assert_int_equal(spool_set_state(sp, c, SPOOL_QUEUED, 3, 503, "HTTP 503", &err), 0);
	/* Terminal is final. */
	assert_int_equal(spool_set_state(sp, a, SPOOL_QUEUED, 0, 0, NULL, &err), -1);
	assert_non_null(strstr(err.msg, "already delivered"));
	spool_close(sp);

	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(state_of(sp, a), SPOOL_DELIVERED);
	assert_int_equal(spool_read(sp, b, &r, &err), 0);
	assert_int_equal(r.state, SPOOL_DEAD);
	assert_int_equal(r.attempts, 4);
	assert_int_equal(r.last_status, 400);
	assert_string_equal(r.last_error, "HTTP 400: bad");
	spool_record_clear(&r);
	assert_int_equal(spool_read(sp, c, &r, &err), 0);
	assert_int_equal(r.state, SPOOL_QUEUED);
	assert_int_equal(r.attempts, 3);
	spool_record_clear(&r);
	assert_int_equal(spool_list(sp, 0, seqs, 8), 2);
	assert_int_equal(seqs[0], b);
	assert_int_equal(seqs[1], c);
	assert_int_equal(spool_list(sp, SPOOL_DEAD, seqs, 8), 1);
	spool_stats(sp, &st);
	assert_int_equal(st.queued, 1);
	assert_int_equal(st.dead, 1);
	assert_int_equal(st.pending, 0);
	assert_int_equal(st.next_seq, 4);
	assert_int_equal(st.oldest_waiting_us, 1000);
	assert_true(st.bytes > 0);
	/* requeue a dead one, then purge-style terminal */
	assert_int_equal(spool_set_state(sp, b, SPOOL_QUEUED, 0, 0, NULL, &err), 0);
	spool_stats(sp, &st);
	assert_int_equal(st.queued, 2);
	assert_int_equal(st.dead, 0);
	spool_close(sp);
}

static uint64_t add_to(struct spool *sp, enum spool_state st, const char *upstream,
		       const char *key, int64_t created_us)
{
	struct spool_record r = {0};
	struct dw_err err = {{0}};

	r.state = st;
	r.route = (char *)"r1";
	r.upstream = strdup(upstream);
	r.key = key ? strdup(key) : NULL;
	r.idem_key = (char *)"idem-1";
	r.method = (char *)"DELETE";
	r.path = (char *)"/x";
	r.created_us = created_us;
	if (spool_append(sp, &r, &err) < 0)
		fail_msg("spool_append: %s", err.msg);
	free(r.upstream);
	free(r.key);
	return r.seq;
}

/* The per-upstream view of the queue (GET /status): counts per state kept
 * as records change, keyed and unkeyed alike, and the oldest waiting record
 * of each, also when an older one waits again; a reader folds the same. */
static void check_up(const struct spool_upstream_stats *v, size_t n, const char *upstream,
		     uint64_t pending, uint64_t queued, uint64_t dead, int64_t oldest)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].upstream, upstream) != 0)
			continue;
		assert_int_equal(v[i].pending, pending);
		assert_int_equal(v[i].queued, queued);
		assert_int_equal(v[i].dead, dead);
		assert_int_equal(v[i].oldest_waiting_us, oldest);
		return;
	}
	fail_msg("no upstream %s", upstream);
}

static void test_upstream_stats(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 0, 0), *rd;
	struct spool_upstream_stats *v;
	struct dw_err err = {{0}};
	size_t n;

	assert_int_equal(spool_upstream_stats(sp, &v), 0);
	assert_null(v);
	uint64_t a = add_to(sp, SPOOL_PENDING, "gear_ops", "k1", 100);
	uint64_t b = add_to(sp, SPOOL_QUEUED, "gear_ops", NULL, 200);
	uint64_t c = add_to(sp, SPOOL_QUEUED, "v2", "k1", 300);
	uint64_t d = add_to(sp, SPOOL_QUEUED, "gear_ops", "k2", 400);
	add_to(sp, SPOOL_QUEUED, "v2", NULL, 500);
	n = spool_upstream_stats(sp, &v);
	assert_int_equal(n, 2);
	assert_string_equal(v[0].upstream, "gear_ops"); /* in the order met */
	check_up(v, n, "gear_ops", 1, 2, 0, 100);
	check_up(v, n, "v2", 0, 2, 0, 300);
	spool_upstream_stats_free(v, n);

	set(sp, a, SPOOL_DELIVERED);
	assert_int_equal(spool_set_state(sp, b, SPOOL_DEAD, 1, 422, "HTTP 422", &err), 0);
	set(sp, c, SPOOL_DELIVERED);
	n = spool_upstream_stats(sp, &v);
	check_up(v, n, "gear_ops", 0, 1, 1, 400);
	check_up(v, n, "v2", 0, 1, 0, 500);
	spool_upstream_stats_free(v, n);

	/* the dead letter requeued: older than the oldest found so far */
	assert_int_equal(spool_set_state(sp, b, SPOOL_QUEUED, 0, 0, NULL, &err), 0);
	set(sp, d, SPOOL_DELIVERED);
	n = spool_upstream_stats(sp, &v);
	check_up(v, n, "gear_ops", 0, 1, 0, 200);
	spool_upstream_stats_free(v, n);

	/* a reader folds the log to the same counts, and follows the owner */
	rd = open_sp(dir, false, 0, 0);
	n = spool_upstream_stats(rd, &v);
	check_up(v, n, "gear_ops", 0, 1, 0, 200);
	check_up(v, n, "v2", 0, 1, 0, 500);
	spool_upstream_stats_free(v, n);
	set(sp, b, SPOOL_DELIVERED);
	add_to(sp, SPOOL_PENDING, "legacy", "k9", 600);
	assert_int_equal(spool_refresh(rd, &err), 0);
	n = spool_upstream_stats(rd, &v);
	assert_int_equal(n, 3);
	check_up(v, n, "gear_ops", 0, 0, 0, 0);
	check_up(v, n, "legacy", 1, 0, 0, 600);
	spool_upstream_stats_free(v, n);
	spool_close(rd);
	spool_close(sp);
}

/* A batch of outcomes in one append: each applied, a bad one skipped. */
static void test_states_batch(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 0, 0);
	struct dw_err err = {{0}};
	struct spool_record r;
	struct spool_stats st;

	uint64_t a = add(sp, SPOOL_PENDING, "k1", "/a");
	uint64_t b = add(sp, SPOOL_PENDING, "k2", "/b");
	uint64_t c = add(sp, SPOOL_PENDING, "k3", "/c");
	struct spool_change v[] = {
	    {.seq = a, .st = SPOOL_DELIVERED, .attempts = 1, .status = 201},
	    {.seq = 999, .st = SPOOL_DELIVERED}, /* no such record: skipped */
	    {.seq = b, .st = SPOOL_QUEUED, .attempts = 1, .error = "connect: refused"},
	    {.seq = c, .st = SPOOL_DEAD, .attempts = 1, .status = 422, .error = "HTTP 422: no"},
	};
	assert_int_equal(spool_set_states(sp, v, 4, &err), 0);
	assert_non_null(strstr(err.msg, "999"));
	spool_close(sp);

	sp = open_sp(dir, false, 0, 0); /* what a reader sees on disk */
	assert_int_equal(state_of(sp, a), SPOOL_DELIVERED);
	assert_int_equal(spool_read(sp, b, &r, &err), 0);
	assert_int_equal(r.state, SPOOL_QUEUED);
	assert_string_equal(r.last_error, "connect: refused");
	spool_record_clear(&r);
	assert_int_equal(spool_read(sp, c, &r, &err), 0);
	assert_int_equal(r.state, SPOOL_DEAD);
	assert_int_equal(r.last_status, 422);
	spool_record_clear(&r);
	spool_stats(sp, &st);
	assert_int_equal(st.queued, 1);
	assert_int_equal(st.dead, 1);
	assert_int_equal(st.pending, 0);
	/* Only final or unknown records: nothing written, -1. */
	struct spool_change w[] = {{.seq = a, .st = SPOOL_QUEUED}};
	assert_int_equal(spool_set_states(sp, w, 1, &err), -1);
	spool_close(sp);
}

static void test_ready_order(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	uint64_t r[16];

	uint64_t a1 = add(sp, SPOOL_QUEUED, "a", "/a1");
	uint64_t b1 = add(sp, SPOOL_QUEUED, "b", "/b1");
	uint64_t a2 = add(sp, SPOOL_QUEUED, "a", "/a2");
	uint64_t u1 = add(sp, SPOOL_QUEUED, NULL, "/u1");
	uint64_t b2 = add(sp, SPOOL_QUEUED, "b", "/b2");
	uint64_t a3 = add(sp, SPOOL_QUEUED, "a", "/a3");
	uint64_t u2 = add(sp, SPOOL_QUEUED, NULL, "/u2");

	assert_int_equal(spool_ready(sp, r, 16), 4);
	assert_int_equal(r[0], a1);
	assert_int_equal(r[1], b1);
	assert_int_equal(r[2], u1);
	assert_int_equal(r[3], u2);
	assert_int_equal(spool_ready(sp, r, 2), 2);
	assert_true(spool_key_queued(sp, "gear_ops", "a"));
	assert_false(spool_key_queued(sp, "other", "a"));
	assert_false(spool_key_queued(sp, "gear_ops", "zz"));

	set(sp, a1, SPOOL_DELIVERED);
	set(sp, u1, SPOOL_DELIVERED);
	assert_int_equal(spool_ready(sp, r, 16), 3);
	assert_int_equal(r[0], b1);
	assert_int_equal(r[1], a2);
	assert_int_equal(r[2], u2);
	/* DEAD does not block its key. */
	set(sp, a2, SPOOL_DEAD);
	assert_int_equal(spool_ready(sp, r, 16), 3);
	assert_int_equal(r[1], a3);
	set(sp, b1, SPOOL_DELIVERED);
	set(sp, b2, SPOOL_DELIVERED);
	set(sp, a3, SPOOL_DELIVERED);
	set(sp, u2, SPOOL_DELIVERED);
	assert_int_equal(spool_ready(sp, r, 16), 0);
	assert_false(spool_key_queued(sp, "gear_ops", "a"));
	spool_close(sp);
}

/* Key nodes come from a slab that is trimmed when the last one goes (a queue
 * drained after an outage): keys still work after that, and under ASan a node
 * used after its key was released would be reported. */
static void test_keys_after_drain(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	enum { N = 5000 }; /* ~64 B a node: several 64 KiB blocks */
	static uint64_t seq[N];
	char key[32];

	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < N; i++) {
			snprintf(key, sizeof(key), "k%d-%d", round, i);
			seq[i] = add(sp, SPOOL_QUEUED, key, "/x");
		}
		snprintf(key, sizeof(key), "k%d-%d", round, N - 1);
		assert_true(spool_key_queued(sp, "gear_ops", key));
		for (int i = 0; i < N; i++) /* the last node goes: the slab is trimmed */
			set(sp, seq[i], SPOOL_DELIVERED);
		assert_false(spool_key_queued(sp, "gear_ops", key));
	}
	spool_close(sp);

	sp = open_sp(dir, false, 0, 0); /* the fold rebuilds the same from the log */
	assert_false(spool_key_queued(sp, "gear_ops", "k1-4999"));
	uint64_t again = add(sp, SPOOL_QUEUED, "k1-4999", "/y");
	assert_true(spool_key_queued(sp, "gear_ops", "k1-4999"));
	set(sp, again, SPOOL_DELIVERED);
	assert_false(spool_key_queued(sp, "gear_ops", "k1-4999"));
	spool_close(sp);
}

static void expect_keys(struct spool *sp, const bool *left, int n)
{
	char key[32];

	for (int j = 0; j < n; j++) {
		snprintf(key, sizeof(key), "equipment-%d", j);
		assert_int_equal(spool_key_queued(sp, "gear_ops", key), left[j]);
	}
}

/*
 * The key index under deletions in scattered order, while it grows (and
 * moves keys to a bigger table a few at a time) and after: every key must
 * stay findable while others leave its probe cluster (a wrong backward shift
 * loses keys that hashed before the hole), a key released from the table
 * being moved must go, and a key with two records stays queued until both
 * are gone.
 */
static void test_keys_scattered_release(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	enum { N = 6000, STEP = 7919 }; /* STEP is prime: i * STEP % N visits all */
	static uint64_t first[N], second[N];
	static bool left[N], first_gone[N];
	char key[32];

	/* Growing: every other insert releases a scattered earlier record. */
	for (int i = 0; i < N; i++) {
		snprintf(key, sizeof(key), "equipment-%d", i);
		first[i] = add(sp, SPOOL_QUEUED, key, "/a");
		second[i] = i % 5 == 0 ? add(sp, SPOOL_QUEUED, key, "/b") : 0;
		left[i] = true;
		int p = (int)((uint64_t)i * STEP % (uint64_t)(i + 1));
		if (i % 2 && !first_gone[p]) {
			set(sp, first[p], SPOOL_DELIVERED);
			first_gone[p] = true;
			left[p] = second[p] != 0;
		}
		if (i % 64 == 63) /* a move takes 64 inserts or more */
			expect_keys(sp, left, i + 1);
	}
	/* Full: the rest of the first records, scattered. */
	for (int n = 0; n < N; n++) {
		int i = (int)((uint64_t)n * STEP % N);

		if (first_gone[i])
			continue;
		set(sp, first[i], SPOOL_DELIVERED);
		first_gone[i] = true;
		left[i] = second[i] != 0;
		if (n % 500 == 499)
			expect_keys(sp, left, N);
	}
	expect_keys(sp, left, N);
	for (int i = 0; i < N; i += 5) {
		set(sp, second[i], SPOOL_DELIVERED);
		snprintf(key, sizeof(key), "equipment-%d", i);
		assert_false(spool_key_queued(sp, "gear_ops", key));
	}
	snprintf(key, sizeof(key), "equipment-%d", 1);
	assert_false(spool_key_queued(sp, "gear_ops", key));
	uint64_t again = add(sp, SPOOL_QUEUED, key, "/c"); /* the emptied index works */
	assert_true(spool_key_queued(sp, "gear_ops", key));
	set(sp, again, SPOOL_DELIVERED);
	spool_close(sp);
}

static void test_owner_recovery(void **state)
{
	const char *dir = *state;
	struct spool *own = open_sp(dir, true, 0, 0), *cli, *own2;
	struct spool_opts o = {.owner = true};
	struct dw_err err = {{0}};
	uint64_t r[8];

	uint64_t p1 = add(own, SPOOL_PENDING, "k", "/p1");
	uint64_t p2 = add(own, SPOOL_PENDING, "k", "/p2");
	uint64_t q = add(own, SPOOL_QUEUED, "j", "/q");
	/* A second owner is refused, naming the pid. */
	own2 = spool_open(dir, &o, &err);
	assert_null(own2);
	assert_non_null(strstr(err.msg, "in use by another dualwrited (pid "));

	/* The replay side: PENDING of a live owner blocks its key. */
	cli = open_sp(dir, false, 0, 0);
	assert_true(spool_owner_alive(cli));
	assert_false(spool_key_queued(cli, "gear_ops", "k"));
	assert_true(spool_key_queued(cli, "gear_ops", "j"));
	assert_int_equal(spool_ready(cli, r, 8), 1);
	assert_int_equal(r[0], q);

	/* The daemon dies: orphan PENDING counts as waiting. */
	spool_close(own);
	assert_false(spool_owner_alive(cli));
	assert_true(spool_key_queued(cli, "gear_ops", "k"));
	assert_int_equal(spool_ready(cli, r, 8), 2);
	assert_int_equal(r[0], p1);
	assert_int_equal(r[1], q);
	(void)p2;

	/* The next owner turns them into QUEUED; the other handle sees it. */
	own = open_sp(dir, true, 0, 0);
	assert_int_equal(state_of(own, p1), SPOOL_QUEUED);
	assert_int_equal(state_of(own, p2), SPOOL_QUEUED);
	assert_true(spool_key_queued(own, "gear_ops", "k"));
	assert_int_equal(spool_refresh(cli, &err), 0);
	assert_int_equal(state_of(cli, p1), SPOOL_QUEUED);
	struct spool_stats st;
	spool_stats(cli, &st);
	assert_int_equal(st.pending, 0);
	assert_int_equal(st.queued, 3);
	spool_close(own);
	spool_close(cli);
}

static void test_torn_tail(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	struct dw_err err;

	add(sp, SPOOL_QUEUED, "k", "/1");
	add(sp, SPOOL_QUEUED, "k", "/2");
	add(sp, SPOOL_QUEUED, "k", "/3");
	spool_close(sp);
	char *seg = seg_file(dir, 0);
	off_t full = file_size(seg);
	assert_int_equal(truncate(seg, full - 5), 0);

	/* Read-only: reports, leaves the file alone. */
	struct spool_opts ro = {.readonly = true};
	sp = spool_open(dir, &ro, &err);
	assert_non_null(sp);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 2);
	assert_int_equal(warnings_matching(sp, "left alone"), 1);
	assert_int_equal(file_size(seg), full - 5);
	spool_close(sp);

	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(warnings_matching(sp, "torn tail of"), 1);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 2);
	assert_true(file_size(seg) < full - 5);
	uint64_t s = add(sp, SPOOL_QUEUED, "k", "/4");
	assert_int_equal(s, 3);
	spool_close(sp);
	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 3);
	spool_close(sp);
	free(seg);
}

static void test_corrupt_middle(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);
	uint64_t r[8];

	add(sp, SPOOL_QUEUED, "a", "/1");
	add(sp, SPOOL_QUEUED, "b", "/2");
	add(sp, SPOOL_QUEUED, "c", "/3");
	spool_close(sp);
	char *seg = seg_file(dir, 0);
	off_t size = file_size(seg);
	int fd = open(seg, O_RDWR);
	unsigned char c;
	/* A byte in the middle of the second frame. */
	assert_int_equal(pread(fd, &c, 1, size / 2), 1);
	c ^= 0x40;
	assert_int_equal(pwrite(fd, &c, 1, size / 2), 1);
	close(fd);

	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(warnings_matching(sp, "corrupt data of"), 1);
	assert_int_equal(spool_ready(sp, r, 8), 2);
	assert_int_equal(r[0], 1);
	assert_int_equal(r[1], 3);
	assert_int_equal(file_size(seg), size); /* not cut: valid data follows */
	assert_int_equal(add(sp, SPOOL_QUEUED, "d", "/4"), 4);
	spool_close(sp);
	free(seg);
}

static void test_garbage(void **state)
{
	const char *dir = *state;
	char path[512];
	unsigned seed = 12345;

	for (int round = 0; round < 60; round++) {
		unsigned char junk[4096];
		size_t n = (size_t)(rand_r(&seed) % sizeof(junk));
		for (size_t i = 0; i < n; i++)
			junk[i] = (unsigned char)rand_r(&seed);
		/* Sometimes make it look like frames. */
		for (size_t i = 0; i + 4 < n; i += 1 + (size_t)(rand_r(&seed) % 200))
			if (rand_r(&seed) % 3 == 0)
				memcpy(junk + i, "DWQ1", 4);
		snprintf(path, sizeof(path), "%s/seg-%016x.log", dir, 1 + round % 3);
		FILE *f = fopen(path, "w");
		assert_non_null(f);
		fwrite(junk, 1, n, f);
		fclose(f);

		struct spool_opts ro = {.readonly = true};
		struct dw_err err;
		struct spool *sp = spool_open(dir, &ro, &err);
		assert_non_null(sp);
		spool_close(sp);
		sp = open_sp(dir, false, 0, 0);
		uint64_t r[4];
		(void)spool_ready(sp, r, 4);
		add(sp, SPOOL_QUEUED, "k", "/after-garbage");
		struct spool_stats st;
		spool_stats(sp, &st);
		assert_true(st.queued >= 1);
		spool_close(sp);
	}
}

static void test_max_bytes(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 2000);
	struct spool_record r = {0};
	struct dw_err err = {{0}};
	int ok = 0;

	r.state = SPOOL_QUEUED;
	r.upstream = (char *)"u";
	r.path = (char *)"/x";
	for (int i = 0; i < 100; i++) {
		if (spool_append(sp, &r, &err) < 0)
			break;
		ok++;
	}
	assert_true(ok > 3 && ok < 100);
	assert_non_null(strstr(err.msg, "queue full ("));
	assert_non_null(strstr(err.msg, "max 2000)"));
	/* State frames still go through on a full queue. */
	set(sp, 1, SPOOL_DELIVERED);
	spool_close(sp);
}

static void test_rotation_cleanup(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 600, 0);
	uint64_t seqs[64];

	for (int i = 0; i < 20; i++)
		add(sp, SPOOL_QUEUED, i % 2 ? "odd" : "even", "/rot");
	int nseg = count_segs(dir);
	assert_true(nseg > 3);
	/* Reopen follows the chain. */
	spool_close(sp);
	sp = open_sp(dir, false, 600, 0);
	assert_int_equal(spool_list(sp, 0, seqs, 64), 20);
	/* Keep record 1 alive: nothing may be deleted yet. */
	for (int i = 1; i < 20; i++)
		set(sp, seqs[i], SPOOL_DELIVERED);
	assert_true(count_segs(dir) >= nseg);
	set(sp, seqs[0], SPOOL_DELIVERED);
	assert_int_equal(count_segs(dir), 1);
	spool_close(sp);

	sp = open_sp(dir, false, 600, 0);
	assert_int_equal(spool_list(sp, 0, seqs, 64), 0);
	assert_true(add(sp, SPOOL_QUEUED, "k", "/next") > 20);
	assert_int_equal(warnings_matching(sp, ""), 0);
	spool_close(sp);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n - 1; /* the one opendir holds */
}

/* reap_later: a spent segment leaves the directory at once (nothing else
 * sees it), but its file is freed by spool_reap, not by the call that
 * found it spent; spool_close reaps what is left. */
static void test_reap_later(void **state)
{
	const char *dir = *state;
	struct spool_opts o = {.segment_bytes = 600, .reap_later = true};
	struct dw_err err = {{0}};
	int fds_closed = count_fds();
	struct spool *sp = spool_open(dir, &o, &err);
	uint64_t seqs[64];
	int fds0;

	assert_non_null(sp);
	for (int i = 0; i < 20; i++)
		seqs[i] = add(sp, SPOOL_QUEUED, "k", "/rot");
	int nseg = count_segs(dir);
	assert_true(nseg > 3);
	fds0 = count_fds();
	for (int i = 0; i < 20; i++)
		set(sp, seqs[i], SPOOL_DELIVERED);
	assert_int_equal(count_segs(dir), 1);
	assert_true(count_fds() >= fds0 + nseg - 1); /* held for the reaper */
	spool_reap(sp);
	assert_int_equal(count_fds(), fds0);
	spool_reap(sp); /* nothing left: a no-op */
	assert_int_equal(count_fds(), fds0);

	for (int i = 0; i < 20; i++)
		seqs[i] = add(sp, SPOOL_QUEUED, "k", "/again");
	for (int i = 0; i < 20; i++)
		set(sp, seqs[i], SPOOL_DELIVERED);
	assert_true(count_fds() > fds0);
	spool_close(sp); /* reaps them too */
	assert_int_equal(count_fds(), fds_closed);
}

static void test_two_handles(void **state)
{
	const char *dir = *state;
	struct spool *d = open_sp(dir, true, 700, 0);
	struct spool *c = open_sp(dir, false, 700, 0);
	struct dw_err err = {{0}};
	uint64_t r[64];

	uint64_t s1 = add(d, SPOOL_QUEUED, "42", "/a");
	assert_int_equal(spool_ready(c, r, 64), 0); /* not refreshed yet */
	assert_int_equal(spool_refresh(c, &err), 0);
	assert_int_equal(spool_ready(c, r, 64), 1);
	assert_int_equal(r[0], s1);
	set(c, s1, SPOOL_DELIVERED);
	assert_true(spool_key_queued(d, "gear_ops", "42"));
	assert_int_equal(spool_refresh(d, &err), 0);
	assert_false(spool_key_queued(d, "gear_ops", "42"));
	/* Interleaved appends from both, across rotations, keep seqs unique. */
	for (int i = 0; i < 30; i++) {
		add(d, SPOOL_QUEUED, "x", "/d");
		add(c, SPOOL_QUEUED, "x", "/c");
	}
	assert_int_equal(spool_refresh(d, &err), 0);
	assert_int_equal(spool_refresh(c, &err), 0);
	assert_int_equal(spool_list(d, 0, r, 64), 60);
	assert_int_equal(spool_list(c, 0, r, 64), 60);
	for (int i = 1; i < 60; i++)
		assert_true(r[i] > r[i - 1]);
	/* Deliver everything from c; d follows even though segments vanish. */
	for (int i = 0; i < 60; i++)
		set(c, r[i], SPOOL_DELIVERED);
	assert_int_equal(spool_refresh(d, &err), 0);
	assert_int_equal(spool_list(d, 0, r, 64), 0);
	assert_int_equal(warnings_matching(d, ""), 0);
	assert_int_equal(warnings_matching(c, ""), 0);
	spool_close(c);
	spool_close(d);
}

static void test_consumer_lock(void **state)
{
	const char *dir = *state;
	struct spool *a = open_sp(dir, false, 0, 0), *b = open_sp(dir, false, 0, 0);
	struct dw_err err = {{0}};

	assert_int_equal(spool_lock_consumer(a, false, &err), 0);
	assert_int_equal(spool_lock_consumer(b, false, &err), -1);
	assert_non_null(strstr(err.msg, "another replay is running on"));
	spool_close(a);
	assert_int_equal(spool_lock_consumer(b, false, &err), 0);
	spool_close(b);
}

static void test_append_rate(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 0, 0);
	int64_t t0 = dw_now_us();
	char key[32];
	const int n = 50000;

	for (int i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "%d", i);
		uint64_t s = add(sp, SPOOL_PENDING, key, "/perf");
		set(sp, s, SPOOL_DELIVERED);
	}
	int64_t us = dw_now_us() - t0;
	fprintf(stderr, "# %d appends + %d deliveries in %.3f s (%.0f appends/s)\n", n, n,
		us / 1e6, n / (us / 1e6));
	struct spool_stats st;
	spool_stats(sp, &st);
	assert_int_equal(st.pending, 0);
	assert_int_equal(st.next_seq, n + 1);
	spool_close(sp);
}

/* A journal written by 0.1.0 (JSON payloads; tests/unit/fixtures/spool-0.1.0,
 * made with that release's spool_append/spool_set_state): still read, and
 * new binary frames append after it. */
static void test_reads_010_json_journal(void **state)
{
	const char *dir = *state;
	char src[512], dst[512], buf[4096];
	const char *here = __FILE__, *slash = strrchr(here, '/');
	struct spool_stats st;
	struct spool_record r;
	struct dw_err err = {{0}};
	FILE *in, *out;
	size_t n;

	snprintf(src, sizeof(src), "%.*sfixtures/spool-0.1.0/seg-0000000000000001.log",
		 slash ? (int)(slash - here + 1) : 0, here);
	snprintf(dst, sizeof(dst), "%s/seg-0000000000000001.log", dir);
	in = fopen(src, "rb");
	assert_non_null(in);
	out = fopen(dst, "wb");
	assert_non_null(out);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	fclose(out);

	struct spool *sp = open_sp(dir, false, 0, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	spool_stats(sp, &st);
	assert_int_equal(st.queued, 2);
	assert_int_equal(st.dead, 1);
	assert_int_equal(spool_read(sp, 1, &r, &err), 0);
	assert_string_equal(r.key, "42");
	assert_string_equal(r.idem_key, "inst-1");
	assert_int_equal(r.body_len, 22);
	assert_memory_equal(r.body, "{\"id\":1,\"name\":\"Tent\"}", 22);
	spool_record_clear(&r);
	assert_int_equal(spool_read(sp, 2, &r, &err), 0); /* body64: not UTF-8 */
	assert_int_equal(r.body_len, 16);
	assert_memory_equal(r.body, "\xff\xfe binary \x00 body", 16);
	spool_record_clear(&r);
	assert_int_equal(spool_read(sp, 3, &r, &err), 0);
	assert_null(r.key);
	assert_null(r.body);
	assert_int_equal(r.state, SPOOL_DEAD);
	assert_int_equal(r.last_status, 422);
	assert_string_equal(r.last_error, "HTTP 422: bad");
	spool_record_clear(&r);
	/* New frames after old ones; the fold of both survives a reopen. */
	assert_int_equal(add(sp, SPOOL_QUEUED, "42", "/new"), 4);
	set(sp, 1, SPOOL_DELIVERED);
	spool_close(sp);
	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	assert_int_equal(state_of(sp, 1), SPOOL_DELIVERED);
	assert_int_equal(state_of(sp, 2), SPOOL_QUEUED);
	assert_int_equal(state_of(sp, 4), SPOOL_QUEUED);
	assert_int_equal(spool_read(sp, 4, &r, &err), 0);
	assert_string_equal(r.path, "/new");
	assert_memory_equal(r.body, "{\"p\":\"/new\"}", r.body_len);
	spool_record_clear(&r);
	spool_close(sp);
}

/* A loop iteration's records in one write: consecutive seqs, all read back;
 * a batch that would pass max_bytes keeps the ones that fit, in order. */
static void test_append_batch(void **state)
{
	const char *dir = *state;
	struct spool_record recs[3];
	struct spool_record r;
	struct dw_err err = {{0}};
	char body[3][1100];
	struct spool *sp = open_sp(dir, false, 0, 2600);

	memset(recs, 0, sizeof(recs));
	for (int i = 0; i < 3; i++) {
		memset(body[i], 'a' + i, sizeof(body[i]));
		recs[i].state = SPOOL_PENDING;
		recs[i].route = (char *)"r1";
		recs[i].upstream = (char *)"gear_ops";
		recs[i].key = (char *)"k";
		recs[i].idem_key = (char *)"i";
		recs[i].method = (char *)"PUT";
		recs[i].path = (char *)"/x";
		recs[i].body = body[i];
		recs[i].body_len = sizeof(body[i]);
	}
	assert_int_equal(spool_append_batch(sp, recs, 3, NULL, 0, &err), 2);
	assert_non_null(strstr(err.msg, "queue full"));
	assert_int_equal(recs[0].seq, 1);
	assert_int_equal(recs[1].seq, 2);
	spool_close(sp);
	sp = open_sp(dir, true, 0, 0); /* as the next daemon: pending -> queued */
	assert_int_equal(warnings_matching(sp, ""), 0);
	for (uint64_t s = 1; s <= 2; s++) {
		assert_int_equal(spool_read(sp, s, &r, &err), 0);
		assert_int_equal(r.state, SPOOL_QUEUED);
		assert_int_equal(r.body_len, sizeof(body[0]));
		assert_memory_equal(r.body, body[s - 1], r.body_len);
		spool_record_clear(&r);
	}
	assert_int_equal(spool_read(sp, 3, &r, &err), -1);
	spool_close(sp);
}

/* Records and outcomes of earlier records in one write; a change for a
 * record already final is skipped and reported, the rest still go in. */
static void test_append_batch_with_states(void **state)
{
	const char *dir = *state;
	struct dw_err err = {{0}};
	struct spool *sp = open_sp(dir, false, 0, 0);
	uint64_t a = add(sp, SPOOL_PENDING, "k1", "/a"), b = add(sp, SPOOL_PENDING, "k2", "/b");
	struct spool_record rec = {0};
	struct spool_change chg[3] = {
	    {.seq = a, .st = SPOOL_DELIVERED, .attempts = 1, .status = 201},
	    {.seq = b, .st = SPOOL_QUEUED, .attempts = 1, .error = "HTTP 503: busy"},
	    {.seq = a, .st = SPOOL_DEAD, .attempts = 2}, /* a is final by then */
	};

	rec.state = SPOOL_PENDING;
	rec.route = (char *)"r1";
	rec.upstream = (char *)"gear_ops";
	rec.idem_key = (char *)"i3";
	rec.method = (char *)"DELETE";
	rec.path = (char *)"/c";
	assert_int_equal(spool_append_batch(sp, &rec, 1, chg, 2, &err), 1);
	assert_string_equal(err.msg, "");
	assert_int_equal(spool_append_batch(sp, NULL, 0, chg + 2, 1, &err), 0);
	assert_non_null(strstr(err.msg, "already final"));
	spool_close(sp);
	sp = open_sp(dir, false, 0, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	assert_int_equal(state_of(sp, b), SPOOL_QUEUED);
	assert_int_equal(state_of(sp, rec.seq), SPOOL_PENDING);
	struct spool_record r;
	assert_int_equal(spool_read(sp, b, &r, &err), 0);
	assert_string_equal(r.last_error, "HTTP 503: busy");
	spool_record_clear(&r);
	struct spool_stats st;
	spool_stats(sp, &st);
	assert_int_equal(st.queued, 1);
	assert_int_equal(st.pending, 1); /* a delivered, b queued, c pending */
	spool_close(sp);
}

static void file_copy(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	char buf[8192];
	size_t n;

	assert_non_null(in);
	assert_non_null(out);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	fclose(out);
}

/* Copy every segment of dir aside (NAME.saved); returns how many. */
static int save_segs(const char *dir, char **saved, int max)
{
	int n = 0;
	char *p;

	while (n < max && (p = seg_file(dir, n))) {
		saved[n] = p;
		char to[600];
		snprintf(to, sizeof(to), "%s.saved", p);
		file_copy(p, to);
		n++;
	}
	return n;
}

/* Put back the saved segments that are gone. */
static void restore_segs(char **saved, int n)
{
	for (int i = 0; i < n; i++) {
		char from[600];
		snprintf(from, sizeof(from), "%s.saved", saved[i]);
		if (access(saved[i], F_OK) != 0)
			file_copy(from, saved[i]);
	}
}

static void refresh(struct spool *sp)
{
	struct dw_err err = {{0}};

	if (spool_refresh(sp, &err) < 0)
		fail_msg("spool_refresh: %s", err.msg);
}

/* The records waiting in sp, each exactly once, in the states expected. */
static void expect_waiting(struct spool *sp, uint64_t dead, uint64_t queued, uint64_t pending)
{
	struct spool_stats st;
	uint64_t seqs[16];

	assert_int_equal(spool_list(sp, SPOOL_DEAD, seqs, 16), 1);
	assert_int_equal(seqs[0], dead);
	assert_int_equal(spool_list(sp, SPOOL_QUEUED, seqs, 16), 1);
	assert_int_equal(seqs[0], queued);
	assert_int_equal(spool_list(sp, SPOOL_PENDING, seqs, 16), 1);
	assert_int_equal(seqs[0], pending);
	assert_int_equal(spool_list(sp, 0, seqs, 16), 3);
	spool_stats(sp, &st);
	assert_int_equal(st.dead, 1);
	assert_int_equal(st.queued, 1);
	assert_int_equal(st.pending, 1);
	/* The queued one; the pending one too when no daemon owns it. */
	assert_int_equal(spool_ready(sp, seqs, 16), spool_owner_alive(sp) ? 1 : 2);
	assert_int_equal(seqs[0], queued);
	struct spool_record r;
	struct dw_err err;
	assert_int_equal(spool_read(sp, dead, &r, &err), 0);
	assert_string_equal(r.path, "/dead");
	assert_string_equal(r.last_error, "bad tenant");
	assert_int_equal(r.state, SPOOL_DEAD);
	spool_record_clear(&r);
	assert_int_equal(spool_read(sp, queued, &r, &err), 0);
	assert_string_equal(r.path, "/held");
	assert_string_equal(r.key, "held");
	spool_record_clear(&r);
}

/*
 * A dead letter, a queued record and a pending one among thousands of
 * delivered records: the delivered ones' space comes back (compaction
 * copies the three forward), max_bytes counts only what waits, and the
 * three stay exactly once, with their states, across reopens.
 */
static void test_reclaim_past_dead_letters(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 4096, 16384);
	struct dw_err err = {{0}};
	uint64_t dead, queued, pending, seq;
	struct spool_stats st;
	uint64_t appended = 0;

	add(sp, SPOOL_QUEUED, "a", "/first");
	set(sp, 1, SPOOL_DELIVERED);
	dead = add(sp, SPOOL_QUEUED, "d", "/dead");
	assert_int_equal(spool_set_state(sp, dead, SPOOL_DEAD, 1, 0, "bad tenant", &err), 0);
	queued = add(sp, SPOOL_QUEUED, "held", "/held");
	pending = add(sp, SPOOL_PENDING, "inflight", "/inflight");
	for (int i = 0; i < 3000; i++) {
		char key[32];
		snprintf(key, sizeof(key), "k%d", i);
		seq = add(sp, SPOOL_PENDING, key, "/healthy"); /* fails when full */
		set(sp, seq, SPOOL_DELIVERED);
		appended += 160;
		if (i % 50 == 0)
			refresh(sp); /* the daemon's tick */
	}
	refresh(sp);
	assert_true(appended > 20 * 16384);
	spool_stats(sp, &st);
	assert_true(st.waiting_bytes > 0 && st.waiting_bytes < 1024); /* three records */
	assert_true(st.bytes <= 4 * 4096 + 2 * 16384);
	assert_true(count_segs(dir) <= 8);
	expect_waiting(sp, dead, queued, pending);
	spool_close(sp);

	/* Reopened (not as the owner: the pending one stays pending). */
	sp = open_sp(dir, false, 4096, 16384);
	assert_int_equal(warnings_matching(sp, ""), 0);
	expect_waiting(sp, dead, queued, pending);
	seq = add(sp, SPOOL_QUEUED, "x", "/after");
	assert_true(seq > pending);
	spool_close(sp);
}

/*
 * A crash at each step of compaction: (1) after the MOVED copies were
 * written but before the old head was deleted, (2) with the copies torn
 * half-way (the tail is cut on open). Each record must be there exactly
 * once, with its state, and a later compaction must finish the job.
 */
static void test_compaction_crash(void **state)
{
	const char *dir = *state;
	char *saved[16], *head;
	int nsaved;
	struct spool *sp = open_sp(dir, true, 4096, 0);
	struct dw_err err = {{0}};
	uint64_t dead, queued, pending, seq;

	dead = add(sp, SPOOL_QUEUED, "d", "/dead");
	assert_int_equal(spool_set_state(sp, dead, SPOOL_DEAD, 1, 0, "bad tenant", &err), 0);
	queued = add(sp, SPOOL_QUEUED, "held", "/held");
	pending = add(sp, SPOOL_PENDING, "inflight", "/inflight");
	for (int i = 0; i < 60; i++) {
		seq = add(sp, SPOOL_PENDING, "k", "/healthy");
		set(sp, seq, SPOOL_DELIVERED);
	}
	head = seg_file(dir, 0);
	assert_non_null(head);
	nsaved = save_segs(dir, saved, 16);
	char *tail = seg_file(dir, count_segs(dir) - 1);
	off_t moved_at = file_size(tail); /* where the copies go */
	refresh(sp); /* compacts: copies the three forward, deletes the head */
	char *tail2 = seg_file(dir, count_segs(dir) - 1);
	if (strcmp(tail, tail2) != 0) { /* rotated first */
		free(tail);
		tail = tail2;
		moved_at = 0;
	} else {
		free(tail2);
	}
	assert_int_not_equal(access(head, F_OK), 0);
	expect_waiting(sp, dead, queued, pending);
	spool_close(sp);

	/* (1) The segments back as if the unlinks never happened. */
	restore_segs(saved, nsaved);
	struct spool_opts ro = {.readonly = true};
	sp = spool_open(dir, &ro, &err);
	assert_non_null(sp);
	assert_int_equal(warnings_matching(sp, ""), 0);
	spool_close(sp);
	sp = open_sp(dir, false, 4096, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	expect_waiting(sp, dead, queued, pending);
	refresh(sp); /* deletes the head again */
	assert_int_not_equal(access(head, F_OK), 0);
	expect_waiting(sp, dead, queued, pending);
	/* The state changes after the copy win over the original frames. */
	set(sp, queued, SPOOL_DELIVERED);
	spool_close(sp);
	restore_segs(saved, nsaved);
	sp = open_sp(dir, false, 4096, 0);
	assert_int_equal(spool_list(sp, SPOOL_QUEUED, NULL, 0), 0);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 2);
	spool_close(sp);

	/* (2) The copies torn: cut the log inside the MOVED frames. */
	restore_segs(saved, nsaved);
	int fd = open(tail, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, moved_at + 40), 0); /* inside the first copy */
	close(fd);
	sp = open_sp(dir, false, 4096, 0);
	assert_int_equal(warnings_matching(sp, "torn tail"), 1);
	/* The head's originals are all that is left: queued again, once each. */
	assert_int_equal(spool_list(sp, SPOOL_DEAD, NULL, 0), 1);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 3);
	refresh(sp);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 3);
	spool_close(sp);
	free(tail);
	free(head);
	for (int i = 0; i < nsaved; i++)
		free(saved[i]);
}

/* A second handle (replay) keeps up while the first compacts under it, and
 * reads a record whose segment is gone from its new place. */
static void test_compaction_two_handles(void **state)
{
	const char *dir = *state;
	struct spool *d = open_sp(dir, true, 4096, 0);
	struct spool *c = open_sp(dir, false, 4096, 0);
	struct spool_record r;
	struct dw_err err = {{0}};
	uint64_t held = add(d, SPOOL_QUEUED, "held", "/held"), seq, seqs[4];

	refresh(c);
	assert_int_equal(spool_ready(c, seqs, 4), 1);
	for (int i = 0; i < 80; i++) {
		seq = add(d, SPOOL_PENDING, "k", "/healthy");
		set(d, seq, SPOOL_DELIVERED);
	}
	refresh(d); /* compacts */
	assert_true(count_segs(dir) <= 2); /* held no longer pins the segments */
	assert_int_equal(spool_read(c, held, &r, &err), 0); /* c never refreshed */
	assert_string_equal(r.path, "/held");
	spool_record_clear(&r);
	refresh(c);
	assert_int_equal(spool_list(c, 0, seqs, 4), 1);
	assert_int_equal(seqs[0], held);
	set(c, held, SPOOL_DELIVERED);
	refresh(d);
	assert_int_equal(spool_list(d, 0, seqs, 4), 0);
	assert_int_equal(warnings_matching(d, ""), 0);
	assert_int_equal(warnings_matching(c, ""), 0);
	spool_close(c);
	spool_close(d);
}

/* The end offset of the k-th frame (1-based) of a segment file. */
static off_t frame_end(const char *path, int k)
{
	FILE *f = fopen(path, "rb");
	unsigned char h[21];
	off_t off = 0;

	assert_non_null(f);
	for (int i = 0; i < k; i++) {
		assert_int_equal(fseeko(f, off, SEEK_SET), 0);
		assert_int_equal(fread(h, 1, 21, f), 21);
		off += 21 + (off_t)(h[4] | h[5] << 8 | h[6] << 16 | (uint32_t)h[7] << 24);
	}
	fclose(f);
	return off;
}

static uint64_t damaged_of(struct spool *sp)
{
	struct spool_stats st;

	spool_stats(sp, &st);
	return st.damaged;
}

/* Cut exactly at a frame boundary while stopped: the log looks clean, the
 * high-water mark says otherwise, and the missing seqs are named. */
static void test_damage_cut_at_frame_boundary(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 0, 0);

	for (int i = 0; i < 5; i++)
		add(sp, SPOOL_QUEUED, "k", "/x");
	spool_close(sp);
	char *seg = seg_file(dir, 0);
	assert_int_equal(truncate(seg, frame_end(seg, 3)), 0);

	sp = open_sp(dir, true, 0, 0);
	assert_int_equal(warnings_matching(sp, "damaged: the log ends in seg-"), 0 + 1);
	assert_int_equal(damaged_of(sp), 2);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 3);
	assert_int_equal(add(sp, SPOOL_QUEUED, "k", "/y"), 6); /* 4 and 5 are not reused */
	spool_close(sp);
	sp = open_sp(dir, true, 0, 0);
	assert_int_equal(warnings_matching(sp, ""), 0); /* reported once */
	spool_close(sp);

	/* The message names them. */
	sp = open_sp(dir, true, 0, 0);
	spool_close(sp);
	assert_int_equal(truncate(seg, frame_end(seg, 2)), 0);
	sp = open_sp(dir, true, 0, 0);
	assert_int_equal(warnings_matching(sp, "records 3..6 (4) are missing"), 1);
	spool_close(sp);
	free(seg);
}

/* A segment before the tail cut at a frame boundary loses its ROTATE. */
static void test_damage_cut_segment_before_tail(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 600, 0);

	for (int i = 0; i < 12; i++)
		add(sp, SPOOL_QUEUED, "k", "/x");
	spool_close(sp);
	assert_true(count_segs(dir) >= 3);
	char *seg = seg_file(dir, 0);
	assert_int_equal(truncate(seg, frame_end(seg, 2)), 0); /* records 1, 2 stay */

	sp = open_sp(dir, true, 600, 0);
	assert_int_equal(warnings_matching(sp, "without the ROTATE frame"), 1);
	assert_true(damaged_of(sp) >= 1);
	spool_close(sp);
	free(seg);
}

/* A corrupt frame is named by its record and key, not only by bytes. */
static void test_damage_corrupt_frame_named(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 0, 0);

	add(sp, SPOOL_QUEUED, "a", "/1");
	add(sp, SPOOL_QUEUED, "b", "/2");
	add(sp, SPOOL_QUEUED, "c", "/3");
	spool_close(sp);
	char *seg = seg_file(dir, 0);
	off_t at = frame_end(seg, 1) + 21 + 10; /* inside record 2's payload */
	int fd = open(seg, O_RDWR);
	unsigned char c;
	assert_int_equal(pread(fd, &c, 1, at), 1);
	c ^= 0x01;
	assert_int_equal(pwrite(fd, &c, 1, at), 1);
	close(fd);

	sp = open_sp(dir, false, 0, 0);
	struct dw_errlist w = {0};
	spool_take_warnings(sp, &w);
	assert_int_equal(w.n, 1);
	assert_non_null(strstr(w.msgs[0], "corrupt data of"));
	assert_non_null(strstr(w.msgs[0], "record 2, key gear_ops/b"));
	dw_errlist_free(&w);
	assert_int_equal(damaged_of(sp), 1);
	spool_close(sp);
	free(seg);
}

/* Removed under a running handle: a segment, the tail, the directory. Each
 * is found by the next refresh (the daemon's tick), its records named with
 * their keys and no longer counted as waiting, and writes go on. */
static void test_damage_removed_while_running(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 600, 0);
	struct spool_stats st;
	struct dw_err err = {{0}};

	for (int i = 0; i < 12; i++)
		add(sp, SPOOL_QUEUED, i < 4 ? "early" : "late", "/x");
	char *first = seg_file(dir, 0);
	assert_int_equal(unlink(first), 0);
	refresh(sp);
	struct dw_errlist w = {0};
	spool_take_warnings(sp, &w);
	assert_int_equal(w.n, 1);
	assert_non_null(strstr(w.msgs[0], "seg-0000000000000001.log was removed: "));
	assert_non_null(strstr(w.msgs[0], "waiting records gone: seq 1 (queued, key gear_ops/early), "
					  "2 (queued, key gear_ops/early)"));
	dw_errlist_free(&w);
	spool_stats(sp, &st);
	assert_true(st.damaged >= 4);
	assert_int_equal(st.queued, 12 - st.damaged);
	free(first);

	/* The tail. */
	char *tail = seg_file(dir, count_segs(dir) - 1);
	assert_int_equal(unlink(tail), 0);
	refresh(sp);
	assert_int_equal(warnings_matching(sp, "removed under the running process"), 1);
	spool_stats(sp, &st);
	assert_true(st.queued < 8 && st.damaged > 5);
	uint64_t s = add(sp, SPOOL_QUEUED, "new", "/after-tail");
	assert_int_equal(state_of(sp, s), SPOOL_QUEUED);
	free(tail);

	/* The directory. */
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	assert_int_equal(system(cmd), 0);
	refresh(sp);
	assert_int_equal(warnings_matching(sp, "was removed or replaced"), 1);
	spool_stats(sp, &st);
	assert_int_equal(st.queued + st.pending + st.dead, 0);
	s = add(sp, SPOOL_QUEUED, "new", "/after-dir");
	assert_int_equal(state_of(sp, s), SPOOL_QUEUED);
	assert_int_equal(spool_sync(sp, &err), 0);
	spool_close(sp);
	sp = open_sp(dir, true, 600, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 1);
	assert_int_equal(state_of(sp, s), SPOOL_QUEUED);
	spool_close(sp);
}

/* The tail cut under a running handle (at a frame boundary). */
static void test_damage_tail_cut_while_running(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 0, 0);

	for (int i = 0; i < 5; i++)
		add(sp, SPOOL_QUEUED, i == 4 ? "last" : "k", "/x");
	char *seg = seg_file(dir, 0);
	assert_int_equal(truncate(seg, frame_end(seg, 3)), 0);
	refresh(sp);
	assert_int_equal(warnings_matching(sp, "2 waiting records gone: seq 4 (queued, key "
					       "gear_ops/k), 5 (queued, key gear_ops/last)"),
			 1);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 3);
	assert_int_equal(add(sp, SPOOL_QUEUED, "k", "/y"), 6);
	spool_close(sp);
	sp = open_sp(dir, true, 0, 0);
	assert_int_equal(warnings_matching(sp, ""), 0);
	assert_int_equal(spool_list(sp, 0, NULL, 0), 4);
	spool_close(sp);
	free(seg);
}

/* ---- write-ahead intents ---- */

/* Append one intent (and optionally its close in the same write). */
static uint64_t intent(struct spool *sp, const char *route, const char *key, bool close)
{
	struct sf_buf ib = {0}, cb = {0};
	struct sf_intent in = {.id = spool_intent_id(sp), .t_us = 5000, .route = route,
			       .upstream = "gear_ops", .method = "PUT", .target = "/equipment/9?x=1",
			       .target_len = 16, .request_id = "req-1", .key = key};
	struct spool_group g = {0};
	struct dw_err err = {{0}};
	bool in_ok = false;

	sf_put_intent(&ib, &in);
	if (close)
		sf_put_close(&cb, in.id);
	g.intents = ib.p;
	g.intents_len = ib.len;
	g.closes = cb.p;
	g.closes_len = cb.len;
	assert_int_equal(spool_append_group(sp, &g, &in_ok, &err), 0);
	assert_true(in_ok);
	free(ib.p);
	free(cb.p);
	return in.id;
}

static void close_intent(struct spool *sp, uint64_t id)
{
	struct sf_buf cb = {0};
	struct spool_group g = {0};
	struct dw_err err = {{0}};
	bool in_ok = false;

	sf_put_close(&cb, id);
	g.closes = cb.p;
	g.closes_len = cb.len;
	(void)spool_append_group(sp, &g, &in_ok, &err);
	assert_true(in_ok);
	free(cb.p);
}

static void test_intent_frame_roundtrip(void **state)
{
	struct sf_buf b = {0};
	struct sf_intent in = {.id = 77, .t_us = -3, .route = "r", .upstream = "u", .method = NULL,
			       .target = "/a/b", .target_len = 4, .request_id = "", .key = "k\n1"};
	struct spool_intent out;
	size_t flen;

	(void)state;
	sf_put_intent(&b, &in);
	assert_int_equal(sf_check(b.p, b.len, &flen), SF_OK);
	assert_int_equal(flen, b.len);
	assert_int_equal(sf_frame_type(b.p), SF_INTENT);
	assert_int_equal(sf_frame_seq(b.p), 77);
	assert_int_equal(sf_decode_intent(b.p + SF_HDR_LEN, flen - SF_HDR_LEN, 77, &out), 0);
	assert_int_equal(out.id, 77);
	assert_int_equal(out.t_us, -3);
	assert_string_equal(out.route, "r");
	assert_string_equal(out.upstream, "u");
	assert_null(out.method);
	assert_string_equal(out.target, "/a/b");
	assert_string_equal(out.request_id, "");
	assert_string_equal(out.key, "k\n1");
	spool_intent_clear(&out);
	/* one byte short, or one too many, does not parse */
	assert_int_equal(sf_decode_intent(b.p + SF_HDR_LEN, flen - SF_HDR_LEN - 1, 77, &out), -1);
	sf_put_close(&b, 77);
	assert_int_equal(sf_check(b.p + flen, b.len - flen, &flen), SF_OK);
	assert_int_equal(flen, SF_HDR_LEN);
	assert_int_equal(sf_frame_type(b.p + b.len - flen), SF_CLOSE);
	free(b.p);
}

/* An intent open when the owner died is found by the next one, settled as
 * an unbuilt dead letter with the reason, and never found again. A closed
 * one is not found; ids keep rising across reopens. */
static void test_intent_recovery(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, true, 0, 0), *cli;
	struct spool_intent *v;
	struct spool_record rec;
	struct dw_err err = {{0}};
	uint64_t seqs[2], r[4];
	const char *reasons[2] = {"stopped: outcome unknown", "stopped: key unknown"};

	uint64_t a = intent(sp, "upd", "9", false);
	(void)intent(sp, "upd", "10", true);	     /* closed in the same write */
	uint64_t c = intent(sp, "create", NULL, false);
	uint64_t d = intent(sp, "upd", "11", false);
	close_intent(sp, d);			     /* closed by a later write */
	assert_int_equal(add(sp, SPOOL_PENDING, "9", "/p"), 1); /* records keep their seqs */
	spool_close(sp); /* the daemon dies with a and c open */

	/* a reader sees them, but only the owner settles them */
	cli = open_sp(dir, false, 0, 0);
	assert_int_equal(spool_intents_open(cli, &v), 2);
	for (int i = 0; i < 2; i++)
		spool_intent_clear(&v[i]);
	free(v);

	sp = open_sp(dir, true, 0, 0);
	assert_true(spool_intent_id(sp) > d);
	assert_int_equal(spool_intents_open(sp, &v), 2);
	assert_int_equal(v[0].id, a);
	assert_string_equal(v[0].route, "upd");
	assert_string_equal(v[0].key, "9");
	assert_string_equal(v[0].method, "PUT");
	assert_string_equal(v[0].target, "/equipment/9?x=1");
	assert_string_equal(v[0].request_id, "req-1");
	assert_int_equal(v[0].t_us, 5000);
	assert_int_equal(v[1].id, c);
	assert_null(v[1].key);
	assert_int_equal(spool_intents_settle(sp, v, reasons, 2, seqs, &err), 0);
	for (int i = 0; i < 2; i++)
		spool_intent_clear(&v[i]);
	free(v);
	assert_int_equal(spool_list(sp, SPOOL_DEAD, r, 4), 2);
	assert_int_equal(r[0], seqs[0]);
	assert_int_equal(spool_read(sp, seqs[0], &rec, &err), 0);
	assert_true(spool_record_unbuilt(&rec));
	assert_int_equal(rec.state, SPOOL_DEAD);
	assert_string_equal(rec.route, "upd");
	assert_string_equal(rec.upstream, "gear_ops");
	assert_string_equal(rec.key, "9");
	assert_string_equal(rec.path, "/equipment/9?x=1");
	assert_string_equal(rec.last_error, "stopped: outcome unknown");
	spool_record_clear(&rec);
	assert_int_equal(spool_intents_open(sp, &v), 0);
	free(v);
	spool_close(sp);

	/* the reader catches up; a new owner finds nothing open */
	assert_int_equal(spool_refresh(cli, &err), 0);
	assert_int_equal(spool_intents_open(cli, &v), 0);
	free(v);
	spool_close(cli);
	sp = open_sp(dir, true, 0, 0);
	assert_int_equal(spool_intents_open(sp, &v), 0);
	free(v);
	assert_int_equal(warnings_matching(sp, ""), 0);
	spool_close(sp);
}

/* An open intent pins its segment: compaction and clean-up must not delete
 * it while the write is out, or a crash would leave no trace. */
static void test_intent_pins_segment(void **state)
{
	const char *dir = *state;
	struct spool *sp = open_sp(dir, false, 600, 0);
	struct spool_intent *v;
	uint64_t seqs[64];

	uint64_t id = intent(sp, "upd", "1", false);
	for (int i = 0; i < 20; i++)
		add(sp, SPOOL_QUEUED, "k", "/rot");
	assert_int_equal(spool_list(sp, 0, seqs, 64), 20);
	for (int i = 0; i < 20; i++)
		set(sp, seqs[i], SPOOL_DELIVERED);
	assert_true(count_segs(dir) > 1); /* the intent's segment stays */
	spool_close(sp);
	sp = open_sp(dir, false, 600, 0);
	assert_int_equal(spool_intents_open(sp, &v), 1);
	assert_int_equal(v[0].id, id);
	spool_intent_clear(&v[0]);
	free(v);
	close_intent(sp, id);
	add(sp, SPOOL_QUEUED, "z", "/last");
	assert_int_equal(spool_list(sp, 0, seqs, 64), 1);
	set(sp, seqs[0], SPOOL_DELIVERED);
	assert_int_equal(count_segs(dir), 1);
	spool_close(sp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_states_fold, setup, teardown),
		cmocka_unit_test_setup_teardown(test_states_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upstream_stats, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_keys_after_drain, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_keys_scattered_release, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ready_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_owner_recovery, setup, teardown),
		cmocka_unit_test(test_intent_frame_roundtrip),
		cmocka_unit_test_setup_teardown(test_intent_recovery, setup, teardown),
		cmocka_unit_test_setup_teardown(test_intent_pins_segment, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_middle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_max_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotation_cleanup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reap_later, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_handles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_consumer_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_rate, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reads_010_json_journal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_append_batch_with_states, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reclaim_past_dead_letters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compaction_crash, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compaction_two_handles, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage_cut_at_frame_boundary, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage_cut_segment_before_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage_corrupt_frame_named, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage_removed_while_running, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damage_tail_cut_while_running, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
