/*
 * guardfleet.c — the fleet's guards (queue.postgres; lib/pgguard.h): a
 * thread that writes this sidecar's latches and resets into the shared
 * table and reads every row back each FLEET_POLL_MS, so that a trip seen
 * by one sidecar rolls back the reads of all within 2 s.
 *
 * The main thread (guards.c) queues operations (put a latch, delete a row)
 * with a sequence number and takes snapshots of the table; a snapshot says
 * up to which operation it was read after, and one older than the last
 * operation queued is not taken: a sidecar never undoes its own latch or
 * reset with a table read before it was written. While PostgreSQL cannot
 * be reached, operations wait (in order) and the local latches stand; the
 * outage is logged once.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "guard.h"
#include "pgguard.h"
#include "server.h"

#define FLEET_POLL_MS 500
#define FLEET_MAX_OPS 1024 /* an outage longer than this many latches keeps the newest */

struct fleet_op {
	uint64_t seq;
	char *name;
	bool del;
	struct guard_latch latch;
};

struct guard_fleet {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	char *dsn, *table;
	char sidecar[300];
	struct pgguard *pg; /* the thread's */
	bool down_logged;
	/* under mu */
	struct fleet_op *ops;
	size_t nops;
	uint64_t next_seq;   /* main thread's last queued seq */
	uint64_t done_seq;   /* executed in order up to this */
	struct guard_file snap;
	uint64_t snap_gen;   /* bumped per read */
	uint64_t snap_seq;   /* done_seq when snap was read */
};

static void op_free(struct fleet_op *o)
{
	free(o->name);
}

/* Run the queued operations in order; stops at the first failure. */
static int run_ops(struct guard_fleet *f, struct dw_err *err)
{
	for (;;) {
		struct fleet_op o;
		int rc;

		pthread_mutex_lock(&f->mu);
		if (f->nops == 0) {
			pthread_mutex_unlock(&f->mu);
			return 0;
		}
		o = f->ops[0];
		o.name = dw_strdup(o.name);
		pthread_mutex_unlock(&f->mu);
		rc = o.del ? pgguard_delete(f->pg, o.name, err)
			   : pgguard_put(f->pg, o.name, &o.latch, f->sidecar, err);
		op_free(&o);
		if (rc < 0)
			return -1;
		pthread_mutex_lock(&f->mu);
		op_free(&f->ops[0]);
		memmove(&f->ops[0], &f->ops[1], (f->nops - 1) * sizeof(f->ops[0]));
		f->nops--;
		f->done_seq = o.seq;
		pthread_mutex_unlock(&f->mu);
	}
}

static void cycle(struct guard_fleet *f)
{
	struct dw_err err = {""};
	struct guard_file g = {0};
	uint64_t done;

	if (pgguard_broken(f->pg)) {
		pgguard_close(f->pg);
		f->pg = pgguard_open(f->dsn, f->table, &err);
		if (!f->pg)
			goto down;
	}
	if (run_ops(f, &err) < 0)
		goto down;
	pthread_mutex_lock(&f->mu);
	done = f->done_seq;
	pthread_mutex_unlock(&f->mu);
	if (pgguard_read(f->pg, &g, &err) < 0)
		goto down;
	pthread_mutex_lock(&f->mu);
	guard_file_free(&f->snap);
	f->snap = g;
	f->snap_gen++;
	f->snap_seq = done;
	pthread_mutex_unlock(&f->mu);
	if (f->down_logged)
		log_info("guard: the fleet's guards in PostgreSQL are reachable again");
	f->down_logged = false;
	return;
down:
	if (!f->down_logged)
		log_warn("guard: the fleet's guards in PostgreSQL cannot be reached (%s); this "
			 "sidecar guards alone until they can",
			 err.msg);
	f->down_logged = true;
}

static void *fleet_main(void *arg)
{
	struct guard_fleet *f = arg;
	struct timespec ts;

	pthread_mutex_lock(&f->mu);
	while (!f->stop) {
		pthread_mutex_unlock(&f->mu);
		cycle(f);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += (long)FLEET_POLL_MS * 1000000L;
		while (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&f->mu);
		/* woken early by a queued operation, or the stop */
		while (!f->stop && f->nops == 0 &&
		       pthread_cond_timedwait(&f->cv, &f->mu, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&f->mu);
	if (f->nops && !pgguard_broken(f->pg)) { /* what was queued last, while we can */
		struct dw_err err = {""};
		(void)run_ops(f, &err);
	}
	return NULL;
}

struct guard_fleet *guard_fleet_start(struct server *srv, struct dw_err *err)
{
	struct guard_fleet *f = dw_calloc(1, sizeof(*f));
	pthread_condattr_t ca;
	char host[256] = "";
	int rc;

	f->dsn = dw_strdup(srv->cfg->queue.postgres ? srv->cfg->queue.postgres : "");
	f->table = dw_strdup(srv->cfg->queue.table ? srv->cfg->queue.table : "dualwrite_queue");
	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "unknown");
	snprintf(f->sidecar, sizeof(f->sidecar), "%s:%d", host, (int)getpid());
	pthread_mutex_init(&f->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&f->cv, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&f->thread, NULL, fleet_main, f);
	if (rc != 0) {
		dw_err_set(err, "guard: fleet thread: pthread_create: %s", strerror(rc));
		pthread_cond_destroy(&f->cv);
		pthread_mutex_destroy(&f->mu);
		free(f->dsn);
		free(f->table);
		free(f);
		return NULL;
	}
	return f;
}

void guard_fleet_stop(struct guard_fleet *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&f->mu);
	f->stop = true;
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->thread, NULL);
	pgguard_close(f->pg);
	for (size_t i = 0; i < f->nops; i++)
		op_free(&f->ops[i]);
	free(f->ops);
	guard_file_free(&f->snap);
	pthread_cond_destroy(&f->cv);
	pthread_mutex_destroy(&f->mu);
	free(f->dsn);
	free(f->table);
	free(f);
}

void guard_fleet_put(struct guard_fleet *f, const char *name, const struct guard_latch *l)
{
	struct fleet_op *o;

	if (!f)
		return;
	pthread_mutex_lock(&f->mu);
	if (f->nops == FLEET_MAX_OPS) { /* keep the newest; the oldest are superseded */
		op_free(&f->ops[0]);
		memmove(&f->ops[0], &f->ops[1], (f->nops - 1) * sizeof(f->ops[0]));
		f->nops--;
	}
	f->ops = dw_realloc(f->ops, (f->nops + 1) * sizeof(f->ops[0]));
	o = &f->ops[f->nops++];
	memset(o, 0, sizeof(*o));
	o->seq = ++f->next_seq;
	o->name = dw_strdup(name);
	o->del = !l || l->state == GUARD_OK;
	if (!o->del)
		o->latch = *l;
	pthread_cond_signal(&f->cv);
	pthread_mutex_unlock(&f->mu);
}

bool guard_fleet_take(struct guard_fleet *f, uint64_t *gen, struct guard_file *out)
{
	bool fresh = false;

	if (!f)
		return false;
	pthread_mutex_lock(&f->mu);
	if (f->snap_gen != *gen && f->snap_seq >= f->next_seq) {
		*gen = f->snap_gen;
		out->v = NULL;
		out->n = 0;
		for (size_t i = 0; i < f->snap.n; i++)
			guard_file_put(out, f->snap.v[i].name, &f->snap.v[i].latch);
		fresh = true;
	}
	pthread_mutex_unlock(&f->mu);
	return fresh;
}
