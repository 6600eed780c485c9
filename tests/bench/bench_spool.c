/*
 * bench_spool — append rate of the replay queue (lib/spool.h), in records/s.
 *
 * Journals a realistic mirrored write (the Gear "equipment-create" route: a
 * ~300-byte JSON body plus route, key, Idempotency-Key, path and request id)
 * into a fresh spool directory, for a bounded time, in two durabilities:
 *
 *   process   spool_append only: the record is in the page cache, safe from a
 *             SIGKILL of the daemon but not from a power cut.
 *   fsync K   K appends then one spool_sync (fdatasync): the group commit the
 *             daemon makes when K client writes are in flight together, so K
 *             stands for the number of concurrent writers.
 *
 * With -s each record also gets its DELIVERED state frame, as the daemon
 * appends when the mirror succeeds (the full per-write journal cost). With -q
 * the run is an outage instead: before each append the key is looked up
 * (spool_key_queued, as the daemon does for every keyed write), and after it
 * the record is marked QUEUED with the breaker's reason. Every key stays in
 * the index, so the rate shows what a growing backlog costs per write; the
 * tail_records_per_s column gives the rate of the run's last tenth alone
 * (with -n), and max_record_us the slowest record's journal calls: a stall
 * there (a table rehashed at once, say) stalls the daemon's worker alike.
 * Spent segments are freed as the daemon does (reap_later), between groups:
 * in the rate, not in max_record_us.
 *
 * After each run the directory is opened again as its owner, as a restarted
 * daemon does: that time (folding the whole log and turning the PENDING
 * records into QUEUED ones) is what a backlog costs at startup.
 *
 * Output: one tab-separated line per run on stdout, after a header line:
 *   mode  k  state_frames  records  seconds  records_per_s  syncs  sync_us_mean  bytes  reopen_s
 * The spool directory is created under -d and removed again afterwards. Meant to
 * be driven by tests/bench/bench.sh; the PostgreSQL side of the comparison is
 * pgbench there.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dw.h"
#include "spool.h"

struct run_opts {
	const char *dir;	/* parent of the per-run spool directories */
	double seconds;		/* time bound of one run */
	uint64_t max_records;	/* record bound of one run */
	int state_frames;	/* per record also: 1 a DELIVERED frame, 2 outage (see -q) */
	bool keep;		/* leave the last directory behind (printed on stderr) */
};

struct run_result {
	uint64_t records;
	uint64_t syncs;
	int64_t sync_us;	/* total time spent in spool_sync */
	int64_t elapsed_us;
	uint64_t bytes;
	int64_t reopen_us;	/* spool_open of the finished directory as owner */
	uint64_t tail_records;	/* the last tenth of max_records (0: run ended by time) */
	int64_t tail_us;
	int64_t max_us;		/* the slowest record's journal calls (a stall) */
};

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_spool [-d DIR] [-t SECONDS] [-n MAX_RECORDS] [-s|-q] [-k K,K,...] [-m MODES] [-x]\n"
		   "  -d DIR      parent directory for the spool (default /tmp); same disk as the\n"
		   "              database you compare with\n"
		   "  -t SECONDS  bound of each run (default 5)\n"
		   "  -n N        at most N records per run (default 2000000)\n"
		   "  -s          also append the DELIVERED state frame of each record\n"
		   "  -q          outage: look the key up, append, mark QUEUED (keys accumulate)\n"
		   "  -k LIST     group-commit sizes for fsync mode (default 1,8,50)\n"
		   "  -m MODES    process,fsync (default both)\n"
		   "  -x          keep the spool directory of the last run (path on stderr)\n");
}

/* The daemon removes nothing itself; a run leaves only segment and lock files. */
static void rm_spool_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char path[PATH_MAX];

	if (!d)
		return;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		(void)unlink(path);
	}
	closedir(d);
	(void)rmdir(dir);
}

/* A body like the Gear mirror builds: ~300 bytes of JSON, varying per record
 * so nothing downstream can get lucky with identical payloads. */
static size_t make_body(char *buf, size_t cap, uint64_t i)
{
	int n = snprintf(buf, cap,
			 "{\"id\":%" PRIu64 ",\"user_id\":%" PRIu64 ",\"name\":\"Trail tent 2p "
			 "ultralight model %" PRIu64 "\",\"category\":\"tent\",\"brand\":\"brand%" PRIu64
			 "\",\"status\":\"active\",\"role\":\"personal\",\"tenant_id\":"
			 "\"default_tenant_id\",\"weight_g\":1240,\"color\":\"forest green\","
			 "\"purchased_at\":\"2024-03-01T12:34:56Z\",\"notes\":\"bought for the "
			 "alps trip; seams sealed twice\"}",
			 100000 + i, i % 977, i, i % 10);
	return n < 0 ? 0 : (size_t)n;
}

static int run_one(const struct run_opts *o, bool fsync_mode, unsigned k, bool last,
		   struct run_result *res, struct dw_err *err)
{
	struct spool_opts so = { .max_bytes = 16ull << 30, .fsync = fsync_mode, .owner = true,
				 .reap_later = true };
	char dir[PATH_MAX], body[512], key[32], idem[48], reqid[40];
	struct spool *sp = NULL;
	struct spool_stats st;
	int64_t t0, deadline, t, tail_t0 = 0;
	uint64_t tail_from = o->max_records - o->max_records / 10;
	int rc = -1;

	snprintf(dir, sizeof(dir), "%s/bench-spool-%ld-%s-%u", o->dir, (long)getpid(),
		 fsync_mode ? "fsync" : "process", k);
	rm_spool_dir(dir);
	memset(res, 0, sizeof(*res));
	sp = spool_open(dir, &so, err);
	if (!sp)
		goto out;

	t0 = dw_now_us();
	deadline = t0 + (int64_t)(o->seconds * 1e6);
	for (;;) {
		for (unsigned j = 0; j < k; j++) {
			uint64_t i = res->records;
			struct spool_record r = { 0 };

			snprintf(key, sizeof(key), "%" PRIu64, 100000 + i);
			snprintf(idem, sizeof(idem), "dw-%016" PRIx64 "-%08" PRIx64, (uint64_t)t0, i);
			snprintf(reqid, sizeof(reqid), "req-%012" PRIu64, i);
			r.state = SPOOL_PENDING;
			r.route = (char *)"equipment-create";
			r.upstream = (char *)"gear_ops";
			r.key = key;
			r.idem_key = idem;
			r.method = (char *)"POST";
			r.path = (char *)"/gear-items";
			r.content_type = (char *)"application/json";
			r.body = body;
			r.body_len = make_body(body, sizeof(body), i);
			r.request_id = reqid;
			r.created_us = dw_wall_us();
			int64_t r0 = dw_now_us();
			if (i == tail_from)
				tail_t0 = r0;
			if (o->state_frames == 2 && spool_key_queued(sp, r.upstream, key)) {
				dw_err_set(err, "bench_spool: key %s already queued", key);
				goto out;
			}
			if (spool_append(sp, &r, err) < 0)
				goto out;
			if (o->state_frames == 1 &&
			    spool_set_state(sp, r.seq, SPOOL_DELIVERED, 1, 201, NULL, err) < 0)
				goto out;
			if (o->state_frames == 2 &&
			    spool_set_state(sp, r.seq, SPOOL_QUEUED, 0, 0,
					    "mirror target gear_ops: breaker open after 5 failures: "
					    "connect: Connection refused", err) < 0)
				goto out;
			res->records++;
			if (dw_now_us() - r0 > res->max_us)
				res->max_us = dw_now_us() - r0;
		}
		spool_reap(sp); /* the daemon's main thread does this; counted, not in max_us */
		if (fsync_mode) {
			t = dw_now_us();
			if (spool_sync(sp, err) < 0)
				goto out;
			res->sync_us += dw_now_us() - t;
			res->syncs++;
		}
		if (res->records >= o->max_records || dw_now_us() >= deadline)
			break;
	}
	res->elapsed_us = dw_now_us() - t0;
	if (tail_t0 && res->records >= o->max_records) {
		res->tail_records = res->records - tail_from;
		res->tail_us = dw_now_us() - tail_t0;
	}
	spool_stats(sp, &st);
	res->bytes = st.bytes;
	spool_close(sp);
	t = dw_now_us();
	sp = spool_open(dir, &so, err);
	if (!sp)
		goto out;
	res->reopen_us = dw_now_us() - t;
	rc = 0;
out:
	spool_close(sp);
	if (o->keep && last)
		fprintf(stderr, "bench_spool: kept %s\n", dir);
	else
		rm_spool_dir(dir);
	return rc;
}

static int parse_ks(const char *s, unsigned *ks, size_t cap, size_t *n)
{
	char *copy = dw_strdup(s), *save = NULL, *tok;
	int rc = 0;

	*n = 0;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *end;
		unsigned long v = strtoul(tok, &end, 10);

		if (*end || v < 1 || v > 100000 || *n == cap) {
			rc = -1;
			break;
		}
		ks[(*n)++] = (unsigned)v;
	}
	free(copy);
	return *n ? rc : -1;
}

int main(int argc, char **argv)
{
	struct run_opts o = { .dir = "/tmp", .seconds = 5, .max_records = 2000000 };
	unsigned ks[16] = { 1, 8, 50 };
	size_t nks = 3;
	bool do_process = true, do_fsync = true;
	struct dw_err err = { { 0 } };
	int c;

	while ((c = getopt(argc, argv, "d:t:n:sqk:m:xh")) != -1) {
		switch (c) {
		case 'd':
			o.dir = optarg;
			break;
		case 't':
			o.seconds = atof(optarg);
			if (o.seconds <= 0 || o.seconds > 600) {
				fprintf(stderr, "bench_spool: -t: want 0..600 s\n");
				return 2;
			}
			break;
		case 'n':
			o.max_records = strtoull(optarg, NULL, 10);
			if (!o.max_records) {
				fprintf(stderr, "bench_spool: -n: want a positive count\n");
				return 2;
			}
			break;
		case 's':
			o.state_frames = 1;
			break;
		case 'q':
			o.state_frames = 2;
			break;
		case 'k':
			if (parse_ks(optarg, ks, sizeof(ks) / sizeof(ks[0]), &nks) < 0) {
				fprintf(stderr, "bench_spool: -k: want a list of 1..100000\n");
				return 2;
			}
			break;
		case 'm':
			do_process = strstr(optarg, "process") != NULL;
			do_fsync = strstr(optarg, "fsync") != NULL;
			break;
		case 'x':
			o.keep = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	printf("mode\tk\tstate_frames\trecords\tseconds\trecords_per_s\tsyncs\tsync_us_mean\tbytes"
	       "\treopen_s\ttail_records_per_s\tmax_record_us\n");
	for (int m = 0; m < 2; m++) {
		bool fs = m == 1;

		if ((fs && !do_fsync) || (!fs && !do_process))
			continue;
		for (size_t i = 0; i < (fs ? nks : 1); i++) {
			/* Without fsync a group is just a loop chunk; 64 keeps the clock reads rare. */
			unsigned k = fs ? ks[i] : 64;
			struct run_result r;
			double secs;

			bool last = (fs || !do_fsync) && (!fs || i + 1 == nks);

			if (run_one(&o, fs, k, last, &r, &err) < 0) {
				fprintf(stderr, "bench_spool: %s\n", err.msg);
				return 1;
			}
			secs = (double)r.elapsed_us / 1e6;
			printf("%s\t%u\t%s\t%" PRIu64 "\t%.3f\t%.0f\t%" PRIu64 "\t%.0f\t%" PRIu64
			       "\t%.3f\t%.0f\t%" PRId64 "\n",
			       fs ? "fsync" : "process", fs ? k : 0,
			       (const char *[]){ "none", "delivered", "queued" }[o.state_frames],
			       r.records, secs, secs > 0 ? (double)r.records / secs : 0, r.syncs,
			       r.syncs ? (double)r.sync_us / (double)r.syncs : 0, r.bytes,
			       (double)r.reopen_us / 1e6,
			       r.tail_us > 0 ? (double)r.tail_records * 1e6 / (double)r.tail_us : 0,
			       r.max_us);
			fflush(stdout);
		}
	}
	return 0;
}
