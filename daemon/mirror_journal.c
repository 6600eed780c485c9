/*
 * mirror_journal.c — the mirror's journal (mirror.h). mirror_commit journals what a
 * worker captured in one loop iteration with one write(2) (and, in
 * durability "fsync", one fdatasync) before any of those answers leaves
 * (G2), then hands each write to its key's home shard (mirror_order.c).
 * Outcomes (delivered, queued, dead) are appended once per iteration
 * (flush_states); job_finish is where a write's outcome is decided, counted
 * and logged, and the job freed.
 *
 * A write the journal refuses (disk full, queue full, I/O error; in
 * durability "fsync" also a failed fdatasync) is still sent live, marked
 * (job->nojournal): delivered, it counts as delivered; otherwise — a failed
 * send, a permanent answer, an open breaker, shutdown — it is "lost", the
 * one outcome that is neither journaled nor delivered, logged at error level
 * with both reasons. The journal's state (struct journal_health) is logged
 * once per change with its counts, not once per write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "guard.h"

#include "mirror.h"

/* The mirror access log: one line per outcome. */
static void log_outcome(const char *reqid, const char *route, const char *key, const char *idem,
			uint64_t seq, const char *result, int status, uint32_t attempt,
			double latency_ms, const char *why)
{
	enum dw_log_level level = strcmp(result, "lost") == 0	 ? DW_LOG_ERROR
				  : strcmp(result, "dead") == 0 ? DW_LOG_WARN
								: DW_LOG_INFO;
	uint64_t tenths = latency_ms > 0 ? (uint64_t)(latency_ms * 10 + 0.5) : 0;
	char buf[1024];
	struct dw_text l;

	if (!dw_log_enabled(level))
		return;
	dw_text_init(&l, buf, sizeof(buf));
	dw_text_lit(&l, "mirror route=");
	dw_text_str(&l, route);
	dw_text_lit(&l, " key=");
	dw_text_str(&l, key ? key : "-");
	dw_text_lit(&l, " idem=");
	dw_text_str(&l, idem);
	dw_text_lit(&l, " seq=");
	dw_text_u64(&l, seq);
	dw_text_lit(&l, " result=");
	dw_text_str(&l, result);
	dw_text_lit(&l, " status=");
	if (status < 0) {
		dw_text_lit(&l, "-");
		dw_text_u64(&l, (uint64_t)(-(int64_t)status));
	} else {
		dw_text_u64(&l, (uint64_t)status);
	}
	dw_text_lit(&l, " attempt=");
	dw_text_u64(&l, attempt);
	dw_text_lit(&l, " latency_ms=");
	dw_text_u64(&l, tenths / 10);
	dw_text_lit(&l, ".");
	dw_text_u64(&l, tenths % 10);
	if (why) {
		dw_text_lit(&l, " reason=");
		dw_text_str(&l, why);
	}
	dw_log_text(level, reqid, buf, l.n);
}

/* dualwrite_mirror_total for this shard, with handles cached. */
static void mirror_count(struct mirror *mi, const char *route, const char *result)
{
	for (size_t i = 0; i < mi->nseries; i++)
		if (strcmp(mi->series[i].result, result) == 0 &&
		    strcmp(mi->series[i].route, route) == 0) {
			metric_inc(mi->series[i].m);
			return;
		}
	char labels[256], esc[128];
	snprintf(labels, sizeof(labels), "route=\"%s\",result=\"%s\"",
		 metrics_label_escape(route, esc, sizeof(esc)), result);
	struct metric *m = metrics_counter(mi->srv->metrics, "dualwrite_mirror_total",
					   "Mirrored writes by route and outcome.", labels);
	if (mi->nseries < DW_ARRAY_LEN(mi->series)) {
		mi->series[mi->nseries].route = dw_strdup(route);
		mi->series[mi->nseries].result = result;
		mi->series[mi->nseries].m = m;
		mi->nseries++;
	}
	metric_inc(m);
}

void journal_health_init(struct server *srv)
{
	struct journal_health *h = &srv->journal;

	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->sync_lock, NULL);
	h->writable = true;
	h->m_writable = metrics_gauge(srv->metrics, "dualwrite_queue_writable",
				      "1 while the journal (replay queue) takes writes; 0 while "
				      "mirrors are sent live without it (see /status).",
				      NULL);
	metric_set(h->m_writable, 1);
}

void journal_health_free(struct server *srv)
{
	pthread_mutex_destroy(&srv->journal.lock);
	pthread_mutex_destroy(&srv->journal.sync_lock);
}

/* n writes were not journaled, or not durably, because of why: the journal
 * is not writable. Logged when that is news. */
static void journal_failed(struct server *srv, const char *why, size_t n)
{
	struct journal_health *h = &srv->journal;

	pthread_mutex_lock(&h->lock);
	snprintf(h->reason, sizeof(h->reason), "%s", why);
	h->unjournaled_total += n;
	if (h->writable) {
		__atomic_store_n(&h->writable, false, __ATOMIC_RELEASE);
		h->since_us = dw_wall_us();
		h->unjournaled = n;
		h->lost = 0;
		h->episodes++;
		metric_set(h->m_writable, 0);
		log_error("queue: journal not writable: %s; %zu writes sent live without journal, "
			  "and so are the next ones until it is writable again",
			  why, n);
	} else {
		h->unjournaled += n;
	}
	pthread_mutex_unlock(&h->lock);
}

/* A write went in (and, in fsync mode, is on disk): the journal is
 * writable. Costs one atomic load when it already was. */
static void journal_ok(struct server *srv)
{
	struct journal_health *h = &srv->journal;

	if (__atomic_load_n(&h->writable, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&h->lock);
	if (!h->writable) {
		__atomic_store_n(&h->writable, true, __ATOMIC_RELEASE);
		metric_set(h->m_writable, 1);
		log_warn("queue: journal writable again after %.1f s and %" PRIu64
			 " writes sent live without journal, %" PRIu64 " lost so far (last error: %s)",
			 (double)(dw_wall_us() - h->since_us) / 1e6, h->unjournaled, h->lost,
			 h->reason);
	}
	pthread_mutex_unlock(&h->lock);
}

static void journal_lost(struct server *srv)
{
	struct journal_health *h = &srv->journal;

	pthread_mutex_lock(&h->lock);
	h->lost++;
	h->lost_total++;
	pthread_mutex_unlock(&h->lock);
}

/*
 * fdatasync what this worker just appended. Every worker shares the
 * segment's file description, so the kernel reports a writeback error to
 * the first fdatasync after it only: another worker's sync failing after
 * our frames were written may have lost them too, and ours then returns 0.
 * sync_failures, read before the append (f0) and compared after the sync
 * under sync_lock, catches that. Returns 0 when everything appended since
 * f0 is known to be durable.
 */
uint64_t journal_sync_mark(struct server *srv)
{
	return __atomic_load_n(&srv->journal.sync_failures, __ATOMIC_ACQUIRE);
}

int journal_sync(struct server *srv, uint64_t f0, struct dw_err *err)
{
	struct journal_health *h = &srv->journal;
	int r = 0;

	pthread_mutex_lock(&h->sync_lock);
	if (spool_sync(srv->spool, err) < 0) {
		__atomic_add_fetch(&h->sync_failures, 1, __ATOMIC_RELEASE);
		r = -1;
	} else if (srv->fsync) {
		metric_inc(srv->m_queue_syncs);
	}
	if (r == 0 && __atomic_load_n(&h->sync_failures, __ATOMIC_ACQUIRE) != f0) {
		dw_err_set(err, "queue: an fdatasync of the journal failed after these writes "
				"were written to it");
		r = -1;
	}
	pthread_mutex_unlock(&h->sync_lock);
	return r;
}

void journal_health_json(struct server *srv, void *obj)
{
	struct journal_health *h = &srv->journal;
	json_t *o = obj;
	char since[40];

	pthread_mutex_lock(&h->lock);
	json_object_set_new(o, "writable", json_boolean(h->writable));
	if (!h->writable) {
		dw_rfc3339(h->since_us, since, sizeof(since));
		json_object_set_new(o, "error", json_string(h->reason));
		json_object_set_new(o, "since", json_string(since));
		json_object_set_new(o, "for_s",
				    json_integer((dw_wall_us() - h->since_us) / 1000000));
		json_object_set_new(o, "writes_without_journal",
				    json_integer((json_int_t)h->unjournaled));
		json_object_set_new(o, "lost", json_integer((json_int_t)h->lost));
	}
	json_object_set_new(o, "writes_without_journal_total",
			    json_integer((json_int_t)h->unjournaled_total));
	json_object_set_new(o, "lost_total", json_integer((json_int_t)h->lost_total));
	json_object_set_new(o, "unwritable_times", json_integer((json_int_t)h->episodes));
	pthread_mutex_unlock(&h->lock);
}

/* Forget the outcomes once they are in the journal (or failed to be). */
void chg_clear(struct mirror *mi)
{
	for (size_t i = 0; i < mi->nchg; i++)
		free((char *)(uintptr_t)mi->chg[i].error);
	mi->nchg = 0;
	mi->nqhash = 0;
	mi->retained = 0;
}

/* Write the outcomes so far. When none could be written (the journal
 * refuses writes), keep them for the next try, up to RETAIN_MAX. */
void flush_states(struct mirror *mi)
{
	struct dw_err err = {""};
	bool writable = __atomic_load_n(&mi->srv->journal.writable, __ATOMIC_ACQUIRE);
	int rc;

	if (mi->nchg == 0)
		return;
	/* The batch's access-log lines go out before its journal frames, so a
	 * state anyone can see in the queue always has its log line. */
	fflush(stderr);
	rc = spool_set_states(mi->srv->spool, mi->chg, mi->nchg, &err);
	/* While the journal is known not to be writable, that is logged once
	 * (journal_failed), not once per loop iteration here. */
	if ((rc < 0 || err.msg[0]) && writable)
		log_error("mirror: recording %zu outcomes: %s%s", mi->nchg, err.msg,
			  rc < 0 ? " (kept to be tried again)" : "");
	if (rc < 0 && mi->nchg <= RETAIN_MAX) {
		mi->retained = mi->nchg;
		return;
	}
	if (rc < 0)
		log_warn("mirror: %zu outcomes could not be recorded: %s (their records stay "
			 "pending and are recovered as queued on the next start)",
			 mi->nchg, err.msg);
	chg_clear(mi);
}

/* Whether an outcome kept unwritten queued a write of this key hash. */
bool retained_queued(const struct mirror *mi, uint64_t h)
{
	if (!mi->retained)
		return false;
	for (size_t i = 0; i < mi->nqhash; i++)
		if (mi->qhash[i] == h)
			return true;
	return false;
}

/* Record a job's outcome in the journal, count and log it, free it. A job
 * with no durable journal record that is not delivered is lost. */
void job_finish(struct mirror *mi, struct mirror_job *j, enum spool_state st, int status,
		       const char *why)
{
	bool lost = j->nojournal && st != SPOOL_DELIVERED;
	const char *result = lost			? "lost"
			     : st == SPOOL_DELIVERED ? "delivered"
			     : st == SPOOL_DEAD	     ? "dead"
						     : "queued";
	double ms = (double)(dw_now_us() - j->t_ack) / 1e3;
	char lwhy[800];

	/* Queued without an attempt (an open breaker, behind a failed write of
	 * its key): not delivered at its first chance, for the guard. */
	if (j->attempts == 0 && st == SPOOL_QUEUED)
		guard_note_mirror(job_upstream(j)->guard, mi->slot, dw_now_us() / 1000, true);

	if (lost) {
		snprintf(lwhy, sizeof(lwhy), "%s; not %s: %s", why ? why : "not delivered",
			 j->seq ? "durably journaled" : "journaled", j->nojournal);
		why = lwhy;
		journal_lost(mi->srv);
	}
	if (j->seq == 0) /* not in the journal: nothing to record there */
		goto counted;
	if (mi->nchg == mi->capchg) {
		mi->capchg = mi->capchg ? mi->capchg * 2 : 64;
		mi->chg = dw_realloc(mi->chg, mi->capchg * sizeof(*mi->chg));
	}
	mi->chg[mi->nchg++] = (struct spool_change){.seq = j->seq, .st = st,
						    .attempts = j->attempts, .status = status,
						    .error = dw_strdup(why)};
	if (st == SPOOL_QUEUED && j->key) {
		if (mi->nqhash == mi->capqhash) {
			mi->capqhash = mi->capqhash ? mi->capqhash * 2 : 64;
			mi->qhash = dw_realloc(mi->qhash, mi->capqhash * sizeof(*mi->qhash));
		}
		mi->qhash[mi->nqhash++] = hash_key(job_upstream(j)->name, j->key);
	}
	if ((mi->nchg == 1 || mi->retained) && mi->flush_ev)
		event_active(mi->flush_ev, EV_TIMEOUT, 0); /* once per iteration */
	else if (mi->nchg - mi->retained >= 512)
		flush_states(mi);
counted:
	job_unpin(mi->srv, j, st, lost);
	mirror_count(mi, j->route->name, result);
	if (st == SPOOL_DELIVERED)
		histogram_observe(mi->h_duration, ms / 1e3);
	log_outcome(j->reqid, j->route->name, j->key, j->idem, j->seq, result, status, j->attempts,
		    ms, why);
	mi->in_memory--;
	metric_add(mi->m_memory, -1);
	job_free(j);
}

/* Journal the intents and closes alone (no record this time). Not
 * fdatasync'd: see daemon/DESIGN.md, "Write-ahead intents". A failure is
 * the journal's (logged once per episode); the writes go out all the same. */
static void intents_flush(struct mirror *self)
{
	struct spool_group g = {.intents = self->iframes.p, .intents_len = self->iframes.len,
				.closes = self->cframes.p, .closes_len = self->cframes.len};
	struct dw_err err = {""};
	bool in = false;

	(void)spool_append_group(self->srv->spool, &g, &in, &err);
	if (!in)
		journal_failed(self->srv, err.msg, 0);
	self->iframes.len = self->cframes.len = 0;
}

void mirror_commit(struct mirror *self)
{
	struct server *srv = self->srv;
	struct spool_record *recs;
	struct dw_err err = {""}, serr = {""};
	size_t n = self->npend, k, nchg;
	char why[300];
	const char *unsynced = NULL;
	uint64_t f0;
	bool iin = false;

	if (n == 0) {
		if (self->iframes.len || self->cframes.len)
			intents_flush(self);
		return;
	}
	self->npend = 0;
	recs = dw_calloc(n, sizeof(*recs));
	for (size_t i = 0; i < n; i++) {
		struct mirror_job *j = self->pend[i].job;
		struct spool_record *r = &recs[i];

		r->state = SPOOL_PENDING;
		self->pend[i].open = self->pend[i].dead ? NULL : queue_at_once(self, j);
		r->route = j->route->name;
		r->upstream = job_upstream(j)->name;
		r->key = j->key;
		r->idem_key = j->idem;
		/* Never built: no method, so no replay can send it (spool.h). */
		r->method = self->pend[i].dead ? NULL : j->method;
		r->path = j->path;
		r->content_type = j->body ? (char *)"application/json" : NULL;
		r->body = j->body;
		r->body_len = j->body_len;
		r->request_id = j->reqid;
		r->created_us = j->created_us;
		r->updated_us = j->created_us;
		mirror_intent_close(self, self->pend[i].intent);
	}
	/* The outcomes settled so far in this iteration share the write; their
	 * access-log lines go out first (see flush_states). */
	if (self->nchg)
		fflush(stderr);
	if (self->retained)
		flush_states(self); /* the kept outcomes first, on their own */
	nchg = self->retained ? 0 : self->nchg; /* still refused: not again */
	f0 = journal_sync_mark(srv);
	struct spool_group g = {.recs = recs, .n = n, .chg = self->chg, .nchg = nchg,
				.intents = self->iframes.p, .intents_len = self->iframes.len,
				.closes = self->cframes.p, .closes_len = self->cframes.len};
	k = spool_append_group(srv->spool, &g, &iin, &err);
	self->iframes.len = self->cframes.len = 0;
	if (k < n)
		journal_failed(srv, err.msg, n - k);
	else if (err.msg[0])
		log_error("mirror: journal: %s", err.msg);
	/* With no record in, the outcomes may be in (a full queue refuses only
	 * records) or not (I/O error): writing them again settles it, as final
	 * ones are skipped, and keeps them if they are still refused. */
	if (nchg && k == 0)
		flush_states(self);
	else if (nchg)
		chg_clear(self);
	/* G2 in fsync mode: a failed fdatasync is no acknowledgement. */
	if (k && srv->fsync && journal_sync(srv, f0, &serr) < 0) {
		unsynced = serr.msg;
		journal_failed(srv, serr.msg, k);
	}
	if (k == n && !unsynced)
		journal_ok(srv);
	for (size_t i = 0; i < n; i++) {
		struct mirror_job *j = self->pend[i].job;
		char *dead = self->pend[i].dead;
		struct target *open = self->pend[i].open;

		j->seq = i < k ? recs[i].seq : 0;
		if (i >= k)
			j->nojournal = dw_strdup(err.msg); /* sent live all the same */
		else if (unsynced)
			j->nojournal = dw_strdup(unsynced);
		if (dead || open) {
			self->in_memory++; /* job_finish counts it out */
			metric_inc(self->m_memory);
			if (dead)
				job_finish(self, j, SPOOL_DEAD, 0, dead);
			else
				job_finish(self, j, SPOOL_QUEUED, 0,
					   breaker_reason(open, why, sizeof(why)));
		} else {
			mirror_submit(job_home(self, j), self, j);
		}
		free(dead);
	}
	free(recs);
}
