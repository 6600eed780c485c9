/*
 * queue.c — `dualwrite queue`: look into the replay queue and manage its
 * dead letters. Inspection opens the spool read-only (no lock files, no
 * repairs), so it is safe next to a running daemon; requeue and purge append
 * state frames like any other writer.
 *
 * With queue.postgres, `stats` also counts the shared PostgreSQL table by
 * state; list, show, requeue and purge work on the local spool only (the
 * table is plain SQL for those).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "pgq.h"
#include "spool.h"

static void queue_usage(FILE *f)
{
	fprintf(f,
		"usage: dualwrite queue -c FILE stats\n"
		"       dualwrite queue -c FILE list [--dead]\n"
		"       dualwrite queue -c FILE show SEQ\n"
		"       dualwrite queue -c FILE requeue SEQ | --all-dead\n"
		"       dualwrite queue -c FILE purge --dead\n"
		"\n"
		"  stats            record counts by state, size on disk, oldest waiting write\n"
		"  list             waiting records (pending, queued); --dead: dead letters\n"
		"  show SEQ         every field of one record, with its body\n"
		"  requeue SEQ      put a dead letter back in the queue (attempts reset);\n"
		"                   --all-dead: every dead letter. One whose mirror was\n"
		"                   never built (body not JSON, bad tenant) is refused:\n"
		"                   there is nothing to send\n"
		"  purge --dead     drop every dead letter for good\n"
		"\n"
		"With queue.postgres set, stats also counts the shared PostgreSQL queue by\n"
		"state; list, show, requeue and purge look at this host's spool only.\n"
		"\n"
		"  -c, --config FILE  the dualwrited configuration (queue.path)\n"
		"  -h, --help         this text\n");
}

/* "42s", "5m07s", "3h12m", "2d04h". */
static void fmt_age(int64_t us, char *buf, size_t len)
{
	int64_t s = us > 0 ? us / 1000000 : 0;

	if (s < 60)
		snprintf(buf, len, "%" PRId64 "s", s);
	else if (s < 3600)
		snprintf(buf, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, len, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
}

static int parse_seq(const char *s, uint64_t *out)
{
	char *end;

	errno = 0;
	*out = strtoull(s, &end, 10);
	return errno || end == s || *end || *out == 0 || s[0] == '-' ? -1 : 0;
}

static void print_warnings(struct spool *sp)
{
	struct dw_errlist w = {0};

	spool_take_warnings(sp, &w);
	for (size_t i = 0; i < w.n; i++)
		fprintf(stderr, "dualwrite: warning: %s\n", w.msgs[i]);
	dw_errlist_free(&w);
}

static uint64_t *all_seqs(struct spool *sp, enum spool_state st, size_t *n)
{
	size_t total = spool_list(sp, st, NULL, 0);
	uint64_t *seqs = dw_calloc(total ? total : 1, sizeof(*seqs));

	*n = spool_list(sp, st, seqs, total);
	if (*n > total)
		*n = total;
	return seqs;
}

static void owner_desc(const char *dir, bool alive, char *buf, size_t len)
{
	char path[4096], pid[32] = "";
	FILE *f;

	if (!alive) {
		snprintf(buf, len, "no dualwrited holds it");
		return;
	}
	snprintf(path, sizeof(path), "%s/OWNER", dir);
	if ((f = fopen(path, "r"))) {
		if (!fgets(pid, sizeof(pid), f))
			pid[0] = '\0';
		fclose(f);
	}
	pid[strcspn(pid, "\n")] = '\0';
	snprintf(buf, len, "owned by a running dualwrited (pid %s)", pid[0] ? pid : "?");
}

/* The shared table's counts; 1 when it cannot be reached. */
static int pg_stats(const struct dw_config *cfg)
{
	struct dw_err err = {{0}};
	struct pgq_stats st;
	struct pgq *q = pgq_open(cfg->queue.postgres, cfg->queue.table, &err);
	char age[32];
	int rc = 1;

	if (!q || pgq_stats(q, NULL, 0, &st, &err) < 0) {
		printf("postgres %s unreachable\n", cfg->queue.table);
		fprintf(stderr, "dualwrite queue: %s\n", err.msg);
		goto out;
	}
	printf("postgres %s: queued %" PRId64 " (%" PRId64 " due now), delivered %" PRId64
	       ", dead %" PRId64 "\n",
	       cfg->queue.table, st.queued, st.due, st.delivered, st.dead);
	if (st.oldest_queued_us) {
		fmt_age(dw_wall_us() - st.oldest_queued_us, age, sizeof(age));
		printf("pg oldest %s waiting\n", age);
	}
	rc = 0;
out:
	pgq_close(q);
	return rc;
}

static int do_stats(struct spool *sp, const char *dir)
{
	struct spool_stats st;
	char age[32], own[128];

	spool_stats(sp, &st);
	owner_desc(dir, spool_owner_alive(sp), own, sizeof(own));
	printf("queue    %s (%s)\n", dir, own);
	printf("pending  %" PRIu64 "\n", st.pending);
	printf("queued   %" PRIu64 "\n", st.queued);
	printf("dead     %" PRIu64 "\n", st.dead);
	printf("bytes    %" PRIu64 " (%.1f MiB) in %" PRIu64 " segment%s\n", st.bytes,
	       (double)st.bytes / (1 << 20), st.segments, st.segments == 1 ? "" : "s");
	if (st.oldest_waiting_us) {
		fmt_age(dw_wall_us() - st.oldest_waiting_us, age, sizeof(age));
		printf("oldest   %s waiting\n", age);
	} else {
		printf("oldest   -\n");
	}
	printf("next seq %" PRIu64 "\n", st.next_seq);
	return 0;
}

static int do_list(struct spool *sp, bool dead)
{
	size_t n;
	uint64_t *seqs = all_seqs(sp, dead ? SPOOL_DEAD : 0, &n);
	size_t shown = 0;
	int64_t now = dw_wall_us();

	for (size_t i = 0; i < n; i++) {
		struct spool_record r;
		struct dw_err err = {{0}};
		char age[32], last[16];
		if (spool_read(sp, seqs[i], &r, &err) < 0) {
			fprintf(stderr, "dualwrite: %s\n", err.msg);
			continue;
		}
		if (!dead && r.state == SPOOL_DEAD) {
			spool_record_clear(&r);
			continue;
		}
		fmt_age(now - r.created_us, age, sizeof(age));
		if (r.last_status)
			snprintf(last, sizeof(last), "%d", r.last_status);
		else
			snprintf(last, sizeof(last), "-");
		printf("%" PRIu64 " %s %s %s %s %s attempts=%u last=%s age=%s", r.seq,
		       spool_state_name(r.state), r.route ? r.route : "-", r.key ? r.key : "-",
		       r.method ? r.method : "-", r.path ? r.path : "-", r.attempts, last, age);
		if (dead && r.last_error)
			printf(" reason=\"%s\"", r.last_error);
		printf("\n");
		shown++;
		spool_record_clear(&r);
	}
	free(seqs);
	fprintf(stderr, "%zu %s record%s\n", shown, dead ? "dead" : "waiting", shown == 1 ? "" : "s");
	return 0;
}

static int do_show(struct spool *sp, uint64_t seq)
{
	struct spool_record r;
	struct dw_err err = {{0}};
	char t[40], u[40];

	if (spool_read(sp, seq, &r, &err) < 0) {
		fprintf(stderr, "dualwrite queue: %s\n", err.msg);
		return 1;
	}
	dw_rfc3339(r.created_us, t, sizeof(t));
	printf("seq          %" PRIu64 "\n", r.seq);
	printf("state        %s\n", spool_state_name(r.state));
	printf("route        %s\n", r.route ? r.route : "-");
	printf("upstream     %s\n", r.upstream ? r.upstream : "-");
	printf("key          %s\n", r.key ? r.key : "-");
	printf("idempotency  %s\n", r.idem_key ? r.idem_key : "-");
	if (spool_record_unbuilt(&r))
		printf("request      never built: nothing to send (see last error)\n");
	else
		printf("request      %s %s\n", r.method, r.path ? r.path : "-");
	printf("request-id   %s\n", r.request_id ? r.request_id : "-");
	printf("created      %s\n", t);
	if (r.updated_us) {
		dw_rfc3339(r.updated_us, u, sizeof(u));
		printf("updated      %s\n", u);
	}
	printf("attempts     %u\n", r.attempts);
	if (r.last_status)
		printf("last status  %d\n", r.last_status);
	else
		printf("last status  -\n");
	printf("last error   %s\n", r.last_error ? r.last_error : "-");
	printf("content-type %s\n", r.content_type ? r.content_type : "-");
	if (r.body) {
		printf("body (%zu bytes)\n", r.body_len);
		fwrite(r.body, 1, r.body_len, stdout);
		if (r.body_len && r.body[r.body_len - 1] != '\n')
			printf("\n");
	} else {
		printf("body         -\n");
	}
	spool_record_clear(&r);
	return 0;
}

enum { MOVE_FAILED = -1, MOVE_DONE = 0, MOVE_UNBUILT = 1 };

/* Move one record from DEAD to st; prints what was done. A dead letter whose
 * mirror was never built is not requeued: MOVE_UNBUILT (said on stderr when
 * loud). */
static int move_dead(struct spool *sp, uint64_t seq, enum spool_state st, bool loud)
{
	struct spool_record r;
	struct dw_err err = {{0}};
	char why[400];
	int rc;

	if (spool_read(sp, seq, &r, &err) < 0) {
		fprintf(stderr, "dualwrite queue: %s\n", err.msg);
		return -1;
	}
	if (r.state != SPOOL_DEAD) {
		fprintf(stderr, "dualwrite queue: record %" PRIu64 " is %s, not dead\n", seq,
			spool_state_name(r.state));
		spool_record_clear(&r);
		return -1;
	}
	if (st == SPOOL_QUEUED && spool_record_unbuilt(&r)) {
		if (loud)
			fprintf(stderr,
				"dualwrite queue: record %" PRIu64 " cannot be requeued: nothing to "
				"send: the mirror was never built (reason: %s)\n",
				seq, r.last_error ? r.last_error : "unknown");
		spool_record_clear(&r);
		return MOVE_UNBUILT;
	}
	if (st == SPOOL_QUEUED) {
		snprintf(why, sizeof(why), "requeued by operator (was: %s)",
			 r.last_error ? r.last_error : "dead");
		rc = spool_set_state(sp, seq, SPOOL_QUEUED, 0, r.last_status, why, &err);
	} else {
		rc = spool_set_state(sp, seq, SPOOL_PURGED, r.attempts, r.last_status, r.last_error,
				     &err);
	}
	if (rc < 0)
		fprintf(stderr, "dualwrite queue: %s\n", err.msg);
	else
		printf("%s %" PRIu64 " %s %s %s %s\n", st == SPOOL_QUEUED ? "requeued" : "purged",
		       seq, r.route ? r.route : "-", r.key ? r.key : "-", r.method ? r.method : "-",
		       r.path ? r.path : "-");
	spool_record_clear(&r);
	return rc;
}

static int move_all_dead(struct spool *sp, enum spool_state st)
{
	size_t n, ok = 0, unbuilt = 0;
	uint64_t *seqs = all_seqs(sp, SPOOL_DEAD, &n);
	int rc = 0, m;

	for (size_t i = 0; i < n; i++) {
		m = move_dead(sp, seqs[i], st, false);
		if (m == MOVE_FAILED)
			rc = 1;
		else if (m == MOVE_UNBUILT)
			unbuilt++;
		else
			ok++;
	}
	free(seqs);
	fprintf(stderr, "%s %zu dead record%s\n", st == SPOOL_QUEUED ? "requeued" : "purged", ok,
		ok == 1 ? "" : "s");
	if (unbuilt)
		fprintf(stderr,
			"skipped %zu dead record%s whose mirror was never built (nothing to send; "
			"`queue list --dead` shows why, `queue purge --dead` drops them)\n",
			unbuilt, unbuilt == 1 ? "" : "s");
	return rc;
}

int cmd_queue(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"dead", no_argument, NULL, 'd'},
		{"all-dead", no_argument, NULL, 'A'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL, *action;
	bool dead = false, all_dead = false, write;
	struct dw_config *cfg = NULL;
	struct spool *sp = NULL;
	struct dw_err err = {{0}};
	uint64_t seq = 0;
	int c, rc = 2;

	optind = 1;
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfgpath = optarg;
			break;
		case 'd':
			dead = true;
			break;
		case 'A':
			all_dead = true;
			break;
		case 'h':
			queue_usage(stdout);
			return 0;
		default:
			fprintf(stderr, "Run 'dualwrite queue --help' for usage.\n");
			return 2;
		}
	}
	if (!cfgpath) {
		fprintf(stderr, "dualwrite queue: -c FILE is required\n");
		return 2;
	}
	if (optind >= argc) {
		fprintf(stderr, "dualwrite queue: missing action (stats, list, show, requeue, purge)\n");
		return 2;
	}
	action = argv[optind++];
	int npos = argc - optind;
	if (!strcmp(action, "stats") || !strcmp(action, "list")) {
		if (npos || all_dead || (dead && !strcmp(action, "stats"))) {
			fprintf(stderr, "dualwrite queue %s: unexpected arguments\n", action);
			return 2;
		}
	} else if (!strcmp(action, "show")) {
		if (npos != 1 || dead || all_dead || parse_seq(argv[optind], &seq) < 0) {
			fprintf(stderr, "dualwrite queue show: expected one record number (SEQ)\n");
			return 2;
		}
	} else if (!strcmp(action, "requeue")) {
		if (dead || (all_dead ? npos != 0 : npos != 1 || parse_seq(argv[optind], &seq) < 0)) {
			fprintf(stderr, "dualwrite queue requeue: expected SEQ or --all-dead\n");
			return 2;
		}
	} else if (!strcmp(action, "purge")) {
		if (!dead || all_dead || npos) {
			fprintf(stderr, "dualwrite queue purge: only 'purge --dead' is supported\n");
			return 2;
		}
	} else {
		fprintf(stderr, "dualwrite queue: unknown action '%s' (stats, list, show, requeue, "
				"purge)\n", action);
		return 2;
	}

	cfg = cli_load_config(cfgpath);
	if (!cfg)
		return 2;
	write = !strcmp(action, "requeue") || !strcmp(action, "purge");
	struct spool_opts so = {
		.max_bytes = cfg->queue.max_bytes,
		.fsync = cfg->queue.durability == QUEUE_DURABILITY_FSYNC,
		.readonly = !write,
	};
	sp = spool_open(cfg->queue.path, &so, &err);
	if (!sp) {
		fprintf(stderr, "dualwrite queue: %s\n", err.msg);
		rc = 1;
		goto out;
	}
	print_warnings(sp);
	if (!strcmp(action, "stats"))
		rc = do_stats(sp, cfg->queue.path) | (cfg->queue.postgres ? pg_stats(cfg) : 0);
	else if (!strcmp(action, "list"))
		rc = do_list(sp, dead);
	else if (!strcmp(action, "show"))
		rc = do_show(sp, seq);
	else if (!strcmp(action, "requeue"))
		rc = all_dead ? move_all_dead(sp, SPOOL_QUEUED)
			      : (move_dead(sp, seq, SPOOL_QUEUED, true) != MOVE_DONE ? 1 : 0);
	else
		rc = move_all_dead(sp, SPOOL_PURGED);
	if (write && spool_sync(sp, &err) < 0) {
		fprintf(stderr, "dualwrite queue: %s\n", err.msg);
		rc = 1;
	}
	print_warnings(sp);
out:
	spool_close(sp);
	config_unref(cfg);
	return rc;
}
