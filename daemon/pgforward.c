/*
 * pgforward.c — the forwarder thread behind pgforward.h.
 *
 * One cycle, every 500 ms while connected: forward what is queued locally,
 * then reload the set of keys with queued rows in the table. Forwarding takes
 * the spool's REPLAY lock (flock on our own descriptor, per batch), so it
 * never races a `dualwrite replay` that is consuming this spool directly.
 *
 * Which local records may move (pgq_forward_spool): every QUEUED unkeyed
 * record, and for a key its QUEUED records in seq order starting at the key's
 * oldest waiting one — a key whose oldest waiting record is still PENDING (in
 * flight in a mirror shard) is left alone, so rows of one key enter the
 * table in journal order and ids (bigserial, one transaction at a time)
 * follow it.
 *
 * The order of effects is what keeps G3 when a record leaves the spool: the
 * table commit, then the key into the in-memory set, then the local
 * FORWARDED mark. A mirror shard checks the spool first and this set
 * second, so a key is never seen as free in between.
 */
#include "pgforward.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "pgq.h"
#include "server.h"

#define CYCLE_MS 500
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000
#define BATCH 256

/* A set of "upstream\nkey" strings (open addressing). */
struct kset {
	char **slot;
	size_t cap, n;
};

struct pgforward {
	struct server *srv;
	char *dsn, *table, *replay_path;
	char sidecar[300];
	int replay_fd;
	pthread_t thread;
	pthread_mutex_t mu; /* guards stop and keys */
	pthread_cond_t cv;
	bool stop;
	struct kset keys;

	/* forwarder thread only */
	struct pgq *q;
	bool down_logged, ever_up;
	int backoff_ms;
	struct metric *m_up, *m_forwarded;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static void kset_free(struct kset *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->slot[i]);
	free(s->slot);
	memset(s, 0, sizeof(*s));
}

static char **kset_find(const struct kset *s, const char *k)
{
	size_t i;

	for (i = hash_str(k) & (s->cap - 1); s->slot[i]; i = (i + 1) & (s->cap - 1))
		if (!strcmp(s->slot[i], k))
			return &s->slot[i];
	return &s->slot[i];
}

static void kset_add_owned(struct kset *s, char *k)
{
	char **p;

	if ((s->n + 1) * 2 > s->cap) {
		struct kset g = {dw_calloc(s->cap ? s->cap * 2 : 64, sizeof(char *)),
				 s->cap ? s->cap * 2 : 64, 0};
		for (size_t i = 0; i < s->cap; i++)
			if (s->slot[i])
				kset_add_owned(&g, s->slot[i]);
		free(s->slot);
		*s = g;
	}
	p = kset_find(s, k);
	if (*p) {
		free(k);
		return;
	}
	*p = k;
	s->n++;
}

static char *hkey(const char *upstream, const char *key)
{
	char *s;

	if (asprintf(&s, "%s\n%s", upstream, key) < 0)
		abort();
	return s;
}

static bool kset_has(const struct kset *s, const char *upstream, const char *key)
{
	char *k = hkey(upstream, key);
	bool r = s->cap && *kset_find(s, k);

	free(k);
	return r;
}

bool pgforward_key_queued(struct pgforward *pf, const char *upstream, const char *key)
{
	bool r;

	if (!pf || !upstream || !key)
		return false;
	pthread_mutex_lock(&pf->mu);
	r = kset_has(&pf->keys, upstream, key);
	pthread_mutex_unlock(&pf->mu);
	return r;
}

/* ---- connection state ---- */

static void went_down(struct pgforward *pf, const char *why)
{
	pgq_close(pf->q);
	pf->q = NULL;
	metric_set(pf->m_up, 0);
	if (!pf->down_logged) {
		log_warn("queue: postgres unreachable, keeping failed mirrors in the local spool: %s",
			 why);
		pf->down_logged = true;
	}
}

static void came_up(struct pgforward *pf)
{
	metric_set(pf->m_up, 1);
	if (pf->down_logged)
		log_info("queue: postgres reachable again (table %s); forwarding the failed mirrors "
			 "kept in the local spool",
			 pf->table);
	else if (!pf->ever_up)
		log_info("queue: failed mirrors go to the postgres queue (table %s)", pf->table);
	pf->down_logged = false;
	pf->ever_up = true;
	pf->backoff_ms = BACKOFF_MIN_MS;
}

/* ---- forwarding ---- */

/* After the table commit, before the local FORWARDED mark. */
static void remember_key(void *arg, const struct spool_record *r)
{
	struct pgforward *pf = arg;

	if (!r->key)
		return;
	pthread_mutex_lock(&pf->mu);
	kset_add_owned(&pf->keys, hkey(r->upstream, r->key));
	pthread_mutex_unlock(&pf->mu);
}

static long forward_batch(struct pgforward *pf, struct dw_err *err)
{
	struct dw_errlist warns = {0};
	long n = pgq_forward_spool(pf->q, pf->srv->spool, false, BATCH, pf->sidecar, remember_key,
				   pf, &warns, err);

	for (size_t i = 0; i < warns.n; i++)
		log_warn("queue: forward: %s", warns.msgs[i]);
	dw_errlist_free(&warns);
	if (n > 0) {
		metric_add(pf->m_forwarded, n);
		log_info("queue: forwarded %ld failed mirror%s to postgres (table %s)", n,
			 n == 1 ? "" : "s", pf->table);
	}
	return n;
}

static int forward_all(struct pgforward *pf, struct dw_err *err)
{
	struct dw_err rerr = {""};
	int rc = 0;
	long n;

	if (pf->replay_fd < 0) {
		pf->replay_fd = open(pf->replay_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
		if (pf->replay_fd < 0) {
			log_warn("queue: forward: %s: %s", pf->replay_path, strerror(errno));
			return 0;
		}
	}
	/* A replay consuming this spool directly has it; it moves or delivers
	 * the records itself. */
	if (flock(pf->replay_fd, LOCK_EX | LOCK_NB) < 0)
		return 0;
	if (spool_refresh(pf->srv->spool, &rerr) < 0)
		log_warn("queue: %s", rerr.msg);
	if (journal_sync(pf->srv, journal_sync_mark(pf->srv), &rerr) < 0)
		log_warn("queue: %s", rerr.msg);
	for (int i = 0; i < 64; i++) {
		if ((n = forward_batch(pf, err)) < 0) {
			rc = -1;
			break;
		}
		if (n < BATCH)
			break;
	}
	if (journal_sync(pf->srv, journal_sync_mark(pf->srv), &rerr) < 0)
		log_warn("queue: %s", rerr.msg);
	(void)flock(pf->replay_fd, LOCK_UN);
	return rc;
}

static void add_key(void *arg, const char *upstream, const char *key)
{
	kset_add_owned(arg, hkey(upstream, key));
}

static int refresh_keys(struct pgforward *pf, struct dw_err *err)
{
	struct kset fresh = {0}, old;

	if (pgq_queued_keys(pf->q, add_key, &fresh, err) < 0) {
		kset_free(&fresh);
		return -1;
	}
	pthread_mutex_lock(&pf->mu);
	old = pf->keys;
	pf->keys = fresh;
	pthread_mutex_unlock(&pf->mu);
	kset_free(&old);
	return 0;
}

/* Returns the milliseconds to wait before the next cycle. */
static int cycle(struct pgforward *pf, bool last)
{
	struct dw_err err = {""};
	int wait;

	if (!pf->q) {
		pf->q = pgq_open(pf->dsn, pf->table, &err);
		if (!pf->q) {
			went_down(pf, err.msg);
			wait = pf->backoff_ms;
			pf->backoff_ms = pf->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
									 : pf->backoff_ms * 2;
			return wait;
		}
		came_up(pf);
	}
	if (forward_all(pf, &err) < 0 || (!last && refresh_keys(pf, &err) < 0)) {
		went_down(pf, err.msg);
		return pf->backoff_ms;
	}
	return CYCLE_MS;
}

static void *pgforward_main(void *arg)
{
	struct pgforward *pf = arg;
	struct timespec ts;
	int wait;

	pthread_mutex_lock(&pf->mu);
	while (!pf->stop) {
		pthread_mutex_unlock(&pf->mu);
		wait = cycle(pf, false);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += wait / 1000;
		ts.tv_nsec += (long)(suseconds_t)(wait % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&pf->mu);
		while (!pf->stop && pthread_cond_timedwait(&pf->cv, &pf->mu, &ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&pf->mu);
	/* What the drain queued at shutdown: into the table while we can. */
	if (pf->q)
		(void)cycle(pf, true);
	return NULL;
}

struct pgforward *pgforward_start(struct server *srv, struct dw_err *err)
{
	struct pgforward *pf = dw_calloc(1, sizeof(*pf));
	struct dw_config *cfg = server_config(srv);
	pthread_condattr_t ca;
	char host[256] = "";
	int rc;

	pf->srv = srv;
	pf->dsn = dw_strdup(cfg->queue.postgres ? cfg->queue.postgres : "");
	pf->table = dw_strdup(cfg->queue.table ? cfg->queue.table : "dualwrite_queue");
	if (asprintf(&pf->replay_path, "%s/REPLAY", cfg->queue.path) < 0)
		abort();
	config_unref(cfg);
	if (gethostname(host, sizeof(host) - 1) < 0)
		snprintf(host, sizeof(host), "unknown");
	snprintf(pf->sidecar, sizeof(pf->sidecar), "%s:%d", host, (int)getpid());
	pf->replay_fd = -1;
	pf->backoff_ms = BACKOFF_MIN_MS;
	pf->m_up = metrics_gauge(srv->metrics, "dualwrite_queue_postgres_up",
				 "1 while the shared PostgreSQL queue is reachable, else 0.", NULL);
	pf->m_forwarded =
	    metrics_counter(srv->metrics, "dualwrite_queue_forwarded_total",
			    "Failed mirrors moved from the local spool to the PostgreSQL queue.", NULL);
	metric_set(pf->m_up, 0);
	pthread_mutex_init(&pf->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&pf->cv, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&pf->thread, NULL, pgforward_main, pf);
	if (rc != 0) {
		dw_err_set(err, "queue: postgres forwarder: pthread_create: %s", strerror(rc));
		pthread_cond_destroy(&pf->cv);
		pthread_mutex_destroy(&pf->mu);
		free(pf->dsn);
		free(pf->table);
		free(pf->replay_path);
		free(pf);
		return NULL;
	}
	return pf;
}

void pgforward_stop(struct pgforward *pf)
{
	if (!pf)
		return;
	pthread_mutex_lock(&pf->mu);
	pf->stop = true;
	pthread_cond_signal(&pf->cv);
	pthread_mutex_unlock(&pf->mu);
	pthread_join(pf->thread, NULL);
	pgq_close(pf->q);
	if (pf->replay_fd >= 0)
		close(pf->replay_fd);
	kset_free(&pf->keys);
	pthread_cond_destroy(&pf->cv);
	pthread_mutex_destroy(&pf->mu);
	free(pf->dsn);
	free(pf->table);
	free(pf->replay_path);
	free(pf);
}
