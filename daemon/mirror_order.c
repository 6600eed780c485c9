/*
 * mirror_order.c — per-key order and the hand-over between shards (mirror.h, G3).
 * Every ordering key has one home shard (its hash); the home keeps the
 * key's in-memory chain, and only the chain's head is ever sent. A
 * retryable failure queues that write and every later one of its key, in
 * order; a key that already has records waiting in the queue (or in the
 * PostgreSQL fleet queue) is not sent at all: the write queues behind them
 * until `dualwrite replay` drains them.
 *
 * Order for a write that is not in the journal: it takes its place in its
 * key's chain like any other, so later writes of the key wait behind it and
 * none overtakes it. If it cannot be delivered, it is lost and the writes
 * behind it go to the queue as usual: a write without a journal record is
 * never journaled late. A key that already has writes in the queue takes no
 * unjournaled write: it could only overtake them, so it is lost at once.
 *
 * A backlog beyond MAX_IN_MEMORY spills to the queue; the hand-over to
 * another worker's shard is a mutex-protected inbox and an eventfd, so
 * nothing here blocks a client's path.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgforward.h" /* pgforward wiring */

#include "mirror.h"

static struct keyq *keyq_get(struct mirror *mi, const char *upstream, const char *key,
			     bool create)
{
	uint64_t h = hash_key(upstream, key);
	size_t ul = strlen(upstream), b = h % KEY_BUCKETS;
	struct keyq *q;

	for (q = mi->keys[b]; q; q = q->next)
		if (strncmp(q->hkey, upstream, ul) == 0 && q->hkey[ul] == '\n' &&
		    strcmp(q->hkey + ul + 1, key) == 0)
			return q;
	if (!create)
		return NULL;
	q = dw_calloc(1, sizeof(*q));
	if (asprintf(&q->hkey, "%s\n%s", upstream, key) < 0)
		abort();
	q->hash = h;
	TAILQ_INIT(&q->jobs);
	q->next = mi->keys[b];
	mi->keys[b] = q;
	return q;
}

void keyq_drop(struct mirror *mi, struct keyq *q)
{
	size_t b = q->hash % KEY_BUCKETS;
	struct keyq **pp = &mi->keys[b];

	while (*pp != q)
		pp = &(*pp)->next;
	*pp = q->next;
	free(q->hkey);
	free(q);
}

/* A job whose turn has come: send now or wait for a slot. */
void job_ready(struct mirror *mi, struct mirror_job *j)
{
	struct target *t = target_get(mi, job_upstream(j)->name);

	TAILQ_INSERT_TAIL(&t->ready, j, link);
	start_sends(mi, t);
}

/* After the head of a key's chain is settled (delivered or dead). */
void key_advance(struct mirror *mi, struct mirror_job *j)
{
	struct keyq *q = j->kq;
	struct mirror_job *next;

	if (!q)
		return;
	TAILQ_REMOVE(&q->jobs, j, klink);
	j->kq = NULL;
	if ((next = TAILQ_FIRST(&q->jobs)))
		job_ready(mi, next);
	else
		keyq_drop(mi, q);
}

/* A retryable failure: this job and every later one of its key go to the
 * queue, in order, so replay delivers them in order. */
void key_queue_all(struct mirror *mi, struct mirror_job *j, int status, const char *why)
{
	struct keyq *q = j->kq;
	struct mirror_job *x;
	char behind[96];

	if (!q) {
		job_finish(mi, j, SPOOL_QUEUED, status, why);
		return;
	}
	if (j->seq)
		snprintf(behind, sizeof(behind), "behind queued seq %" PRIu64, j->seq);
	else
		snprintf(behind, sizeof(behind), "behind a write of this key that was not journaled");
	TAILQ_REMOVE(&q->jobs, j, klink);
	job_finish(mi, j, SPOOL_QUEUED, status, why);
	while ((x = TAILQ_FIRST(&q->jobs))) {
		TAILQ_REMOVE(&q->jobs, x, klink);
		job_finish(mi, x, SPOOL_QUEUED, 0, behind);
	}
	keyq_drop(mi, q);
}

/* Shutdown: take a job out of its key chain and queue it. */
void queue_left(struct mirror *mi, struct mirror_job *j, const char *why)
{
	if (j->kq)
		TAILQ_REMOVE(&j->kq->jobs, j, klink);
	j->kq = NULL;
	job_finish(mi, j, SPOOL_QUEUED, 0, why);
}

/* A journaled job arrives in its home shard. */
static void job_arrive(struct mirror *mi, struct mirror_job *j)
{
	const struct dw_upstream *up = job_upstream(j);

	mi->in_memory++;
	metric_inc(mi->m_memory);
	if (j->key) {
		struct keyq *q = keyq_get(mi, up->name, j->key, false);
		if (q) { /* an earlier write of this key is in flight or waiting */
			j->kq = q;
			TAILQ_INSERT_TAIL(&q->jobs, j, klink);
			return;
		}
		if (spool_key_queued(mi->srv->spool, up->name, j->key) ||
		    retained_queued(mi, hash_key(up->name, j->key))) {
			job_finish(mi, j, SPOOL_QUEUED, 0, "key has earlier writes in the queue");
			return;
		}
		/* pgforward wiring: or queued rows in the shared PostgreSQL queue */
		if (mi->srv->pgfwd && pgforward_key_queued(mi->srv->pgfwd, up->name, j->key)) {
			job_finish(mi, j, SPOOL_QUEUED, 0, PGFORWARD_BEHIND);
			return;
		}
	}
	if (mi->in_memory > MAX_IN_MEMORY) {
		job_finish(mi, j, SPOOL_QUEUED, 0, "mirror backlog full");
		return;
	}
	if (j->key) {
		j->kq = keyq_get(mi, up->name, j->key, true);
		TAILQ_INSERT_TAIL(&j->kq->jobs, j, klink);
	}
	job_ready(mi, j);
}

void inbox_cb(struct mirror *mi)
{
	struct job_list batch;
	struct mirror_job *j;

	flush_states(mi); /* so spool_key_queued sees every key queued so far */
	TAILQ_INIT(&batch);
	pthread_mutex_lock(&mi->lock);
	TAILQ_CONCAT(&batch, &mi->inbox, link);
	pthread_mutex_unlock(&mi->lock);
	while ((j = TAILQ_FIRST(&batch))) {
		TAILQ_REMOVE(&batch, j, link);
		job_arrive(mi, j);
	}
}

void mirror_submit(struct mirror *mi, struct mirror *from, struct mirror_job *job)
{
	bool wake;

	if (mi == from) { /* the key's home is this worker: no hand-off */
		if (mi->closed) { /* only set once this loop has ended (mirror_free) */
			mi->in_memory++;
			metric_inc(mi->m_memory);
			queue_left(mi, job, "daemon stopped before the mirror was sent");
			return;
		}
		if (job->key && mi->nqhash) { /* see inbox_cb; only when it matters */
			uint64_t h = hash_key(job_upstream(job)->name, job->key);
			for (size_t i = 0; i < mi->nqhash; i++)
				if (mi->qhash[i] == h) {
					flush_states(mi);
					break;
				}
		}
		job_arrive(mi, job);
		return;
	}
	pthread_mutex_lock(&mi->lock);
	if (mi->closed) {
		pthread_mutex_unlock(&mi->lock);
		if (from && job->nojournal) { /* and it is in no journal: lost */
			from->in_memory++;
			metric_inc(from->m_memory);
			job_finish(from, job, SPOOL_QUEUED, 0, "daemon stopped before the mirror was sent");
			return;
		}
		/* Too late to send: it stays PENDING in the journal and is
		 * recovered as queued on the next start. */
		log_warn("mirror seq=%" PRIu64 " left pending at shutdown", job->seq);
		job_free(job);
		return;
	}
	wake = TAILQ_EMPTY(&mi->inbox);
	TAILQ_INSERT_TAIL(&mi->inbox, job, link);
	pthread_mutex_unlock(&mi->lock);
	if (wake)
		wake_post(&mi->wake, WAKE_INBOX);
}

/* The shard that sends job j: its key's home, or the capturing one. */
struct mirror *job_home(struct mirror *self, const struct mirror_job *j)
{
	struct server *srv = self->srv;

	return j->key ? srv->mirrors[hash_key(job_upstream(j)->name, j->key) % srv->nmirrors]
		      : self;
}

/*
 * The target whose open breaker queues job j as soon as it is journaled, or
 * NULL: when this shard is j's home, the breaker is open here (any send would
 * be queued the moment its turn came), and no earlier write of its key waits
 * in this shard (those go first: G3). A target that is down or hanging then
 * costs a write no trip through the shard.
 */
struct target *queue_at_once(struct mirror *self, const struct mirror_job *j)
{
	const struct dw_upstream *up = job_upstream(j);
	struct target *t;

	if (self->srv->pgfwd || job_home(self, j) != self)
		return NULL;
	t = target_find(self, up->name);
	if (!t || !breaker_open(t))
		return NULL;
	if (j->key && keyq_get(self, up->name, j->key, false))
		return NULL;
	return t;
}
