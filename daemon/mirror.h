/*
 * mirror.h — the mirror's parts, shared by daemon/mirror*.c only (the
 * daemon's interface to them is in server.h: mirror_capture, mirror_commit,
 * mirror_submit, ...).
 *
 * From a legacy-acknowledged write to its delivery on the new system (or,
 * on a route whose authority is "new", from the new system's
 * acknowledgement to the legacy: the job carries the route's block, mirror
 * or reverse, and everything is the same either way), in four files:
 *
 *   mirror_capture.c  capture and build: the mirror request of one write
 *                     (mapping engine), its pins, write-ahead intents
 *   mirror_journal.c  the journal: records and outcomes in one write(2) per
 *                     loop iteration, the journal's health (G2), the
 *                     outcome's count and access-log line
 *   mirror_order.c    per-key order (G3): the key chains, the hand-over to
 *                     the key's home shard, queueing behind a failure
 *   mirror_send.c     sending: concurrency per upstream, pipelined lanes on
 *                     the buffered exchange (exchange.h), the circuit
 *                     breaker (lib/breaker.h), the answer's class
 *                     (lib/mirrorwire.h)
 *   mirror.c          the shard's life: made, woken, flushed, freed
 *
 * Each worker's event loop runs one mirror shard; a write goes to the shard
 * its ordering key hashes to (an unkeyed write stays in the worker that
 * captured it). Everything here runs in the shard's owning loop except
 * mirror_capture/mirror_commit (the capturing worker: its own shard) and
 * mirror_submit's hand-over (any worker: the inbox, under the lock).
 */
#ifndef DW_MIRROR_H
#define DW_MIRROR_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "breaker.h"
#include "exchange.h"
#include "jsonarena.h"
#include "server.h"
#include "spool_frame.h"

#define MAX_IN_MEMORY 4096 /* jobs held in memory before spilling to the queue */
#define RETAIN_MAX 65536   /* outcomes kept while the journal refuses them */
#define KEY_BUCKETS 4096

enum { WAKE_INBOX = 1 };

struct keyq;

struct mirror_job {
	TAILQ_ENTRY(mirror_job) link;  /* inbox, or an upstream's ready list */
	TAILQ_ENTRY(mirror_job) klink; /* its key's chain */
	uint64_t seq;
	struct dw_config *cfg; /* reference: keeps route and upstream valid */
	const struct dw_route *route;
	const struct dw_mirror *mm; /* the route's mirror or reverse: which way it goes */
	char *key, *idem, *method, *path, *body, *reqid;
	size_t body_len;
	uint32_t attempts;
	int64_t created_us; /* wall clock, when the legacy acknowledged */
	int64_t t_ack; /* monotonic, when the legacy acknowledged */
	struct keyq *kq;
	/* Why this write has no durable journal record (NULL: it has one). With
	 * seq 0 it is not in the journal at all (no state frames are written
	 * for it); with a seq its fdatasync failed. Lost unless delivered. */
	char *nojournal;
	/* Read-your-writes (pinset.h): the keys this write pins (its ordering
	 * key and its route's pins), added before the client's answer; given
	 * back when it is delivered or lost, parked when it waits in the queue.
	 * pinpre: the pin_prefix (config.h, borrowed from cfg) of each of its
	 * pins that did not evaluate: every key that begins so is pinned. */
	char **pinkeys;
	size_t npinkeys;
	const char **pinpre;
	size_t npinpre;
};
TAILQ_HEAD(job_list, mirror_job);

/* The chain of in-memory jobs of one (upstream, key): only the head is sent. */
struct keyq {
	struct keyq *next; /* hash chain */
	char *hkey;	   /* "upstream\nkey" */
	uint64_t hash;	   /* hash_key(upstream, key) */
	struct job_list jobs;
};

/*
 * Per mirror upstream name, in each shard: concurrency, the jobs whose turn
 * it is, the connections carrying sends, and the upstream's circuit breaker
 * (lib/breaker.h: one per name in the server's table, shared by every
 * shard). Runtime state: keyed by the upstream's name, it lives as long as
 * the shard, so a reload keeps it (an open breaker stays open; a renamed
 * upstream starts afresh).
 */

struct target {
	struct target *next;
	char *name;
	int inflight;
	TAILQ_HEAD(, xconn) lanes; /* open connections carrying sends (exchange.h) */
	int nlanes;
	double latency_ms; /* moving average of answered sends: decides pipelining */
	int answered;	   /* answers seen, up to PIPE_WARMUP */
	struct job_list ready;
	struct breaker_cell *br; /* owned by srv->breakers */
	struct metric *m_open;
};

/*
 * A connection to a mirror target carrying sends in order (HTTP/1.1
 * pipelining, exchange.h). A send's request goes into the lane's output at
 * once and the output is written once per loop iteration (flush_cb), so the sends a
 * worker starts in one iteration share one write(2) and their answers tend
 * to share one read(2). Only a fast target gets more than one send per lane
 * (the upstream's pipeline_depth, while its average latency is under
 * PIPE_MAX_LATENCY_MS): a slow one gets a connection per send, as without
 * pipelining, so one slow answer never holds others back; so does a target
 * until PIPE_WARMUP answers have shown how fast it is (one that hangs from
 * the start then fails a send per connection, and opens the breaker within
 * one timeout). Only the head of a key's chain is ever on the wire, so
 * pipelining never reorders a key's writes (G3). When a lane breaks, its
 * head send fails as a send always did; the sends behind it, which the
 * target may or may not have seen, go out once more on another lane with the
 * same Idempotency-Key (G4), and fail for good only if that lane breaks too.
 * A lane that times out fails every send on it: each has waited nearly the
 * whole timeout already, and a target that stopped answering should open the
 * breaker now, not one timeout per send later.
 */
#define PIPE_MAX_LATENCY_MS 20.0
#define PIPE_WARMUP 8

/* One HTTP exchange with a mirror target. */
struct send {
	struct send *next_free; /* mi->sfree */
	struct mirror *mi;
	struct mirror_job *job;
	struct target *t;
	int64_t t_start;
	TAILQ_ENTRY(send) link;
	/* Last (its 3 KiB head last): what is above is zeroed by send_new. */
	struct xchg x;
};

/* Sends a shard keeps for reuse, so a mirrored write costs no malloc/free of
 * its 3 KiB send. */
#define SFREE_MAX 64

struct mirror {
	struct server *srv;
	unsigned slot; /* the owning worker's id: its guard windows */
	struct event_base *base; /* the owning worker's loop (borrowed) */
	struct pool_set *pools;

	pthread_mutex_t lock; /* guards inbox and closed */
	struct job_list inbox;
	bool closed;
	struct wake wake; /* jobs from other workers */

	/* owning worker's thread only */
	struct pending {
		struct mirror_job *job;
		char *dead; /* reason the write cannot be mirrored; NULL: send it */
		struct target *open; /* mirror_commit: its breaker queues the write */
		uint64_t intent; /* closed after the record */
	} *pend;	    /* captured, to be journaled by mirror_commit */
	/* Write-ahead intents and closes since the last mirror_commit, as
	 * frames (spool_append_group writes them after the records). */
	struct sf_buf iframes, cframes;
	size_t npend, cappend;
	struct keyq *keys[KEY_BUCKETS];
	struct target *targets;
	TAILQ_HEAD(, send) sends;
	struct send *sfree; /* cache, SFREE_MAX at most */
	int nsfree;
	struct xloop *xl; /* the sends' connections (exchange.h) */
	size_t in_memory;

	/* Outcomes not yet in the journal: written together once per loop
	 * iteration (flush_ev), and always before a new job is looked at, so
	 * spool_key_queued sees every key queued so far. */
	struct spool_change *chg;
	size_t nchg, capchg;
	/* hash_key() of the keys of the QUEUED ones among them: a new job of such
	 * a key must see them in the journal (spool_key_queued) first */
	uint64_t *qhash;
	size_t nqhash, capqhash;
	/* Outcomes kept because the journal refused them (disk full): tried
	 * again with the next ones, so once it takes writes again no record is
	 * left PENDING (to be re-sent after a restart), and meanwhile their
	 * keys' QUEUED outcomes still hold later writes back (job_arrive). At
	 * most RETAIN_MAX; beyond, dropped with one warning. */
	size_t retained;
	struct event *flush_ev;

	struct outcome_series {
		char *route;
		const char *result;
		struct metric *m;
	} series[64];
	size_t nseries;

	struct histogram *h_duration;
	struct metric *m_inflight, *m_memory, *m_resent;
	struct json_arena jarena; /* the capture's jansson values */
};

/* FNV-1a of "upstream\nkey": picks the key's home shard and its chain's
 * bucket there. */
static inline uint64_t hash_key(const char *upstream, const char *key)
{
	uint64_t h = 1469598103934665603ULL;

	for (const char *p = upstream; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	h = (h ^ '\n') * 1099511628211ULL;
	for (; *key; key++)
		h = (h ^ (unsigned char)*key) * 1099511628211ULL;
	return h;
}

static inline const struct dw_upstream *job_upstream(const struct mirror_job *j)
{
	return &j->cfg->upstreams[j->mm->upstream];
}

/* ---- mirror_capture.c: capture and build ---- */
void job_free(struct mirror_job *j);
/* The write is settled: give its pins back (delivered, lost), or park them
 * under its seq while it waits in the queue (queued, dead). */
void job_unpin(struct server *srv, struct mirror_job *j, enum spool_state st, bool lost);

/* ---- mirror_journal.c: outcomes, the journal and its health ---- */
/* Record a job's outcome in the journal, count and log it, free it. */
void job_finish(struct mirror *mi, struct mirror_job *j, enum spool_state st, int status,
		const char *why);
/* Write the outcomes so far (kept for the next try when refused). */
void flush_states(struct mirror *mi);
/* Whether an outcome kept unwritten queued a write of this key hash. */
bool retained_queued(const struct mirror *mi, uint64_t h);
void chg_clear(struct mirror *mi);

/* ---- mirror_order.c: per-key order (G3) and the hand-over between shards ---- */
void job_ready(struct mirror *mi, struct mirror_job *j);
void key_advance(struct mirror *mi, struct mirror_job *j);
void key_queue_all(struct mirror *mi, struct mirror_job *j, int status, const char *why);
void queue_left(struct mirror *mi, struct mirror_job *j, const char *why);
void keyq_drop(struct mirror *mi, struct keyq *q);
void inbox_cb(struct mirror *mi);
struct mirror *job_home(struct mirror *self, const struct mirror_job *j);
struct target *queue_at_once(struct mirror *self, const struct mirror_job *j);

/* ---- mirror_send.c: sending, pipelining and the breaker ---- */
struct target *target_find(struct mirror *mi, const char *name);
struct target *target_get(struct mirror *mi, const char *name);
bool breaker_open(const struct target *t);
const char *breaker_reason(const struct target *t, char *buf, size_t len);
void start_sends(struct mirror *mi, struct target *t);
void send_free(struct send *s);

#endif
