/*
 * spool — the embedded, append-only, crash-safe replay queue (a directory).
 *
 * Every mirror the daemon makes is journaled here *before* the client gets
 * its answer, so a SIGKILL at any instant loses nothing: the record is in the
 * kernel's page cache (durability "process") or on disk (durability "fsync",
 * after spool_sync). Its fate is then appended as a state frame: delivered,
 * queued for replay, or dead-lettered with a reason. The in-memory view of
 * every process using the directory is the fold of the log, and each process
 * catches up with the others' frames by spool_refresh, so the daemon learns
 * when `dualwrite replay` drained a key and the CLI sees what the daemon
 * queued.
 *
 * Record states:
 *   PENDING   journaled by the running daemon, in flight or waiting in memory
 *             behind an earlier write of the same key. Owned by that daemon;
 *             if no daemon holds the directory, PENDING counts as QUEUED.
 *   QUEUED    waiting for replay.
 *   DELIVERED the target answered as delivered (terminal).
 *   DEAD      dead-lettered with a reason (until requeued or purged).
 *   PURGED    removed by `queue purge --dead` (terminal).
 *   FORWARDED moved to the shared PostgreSQL queue (queue.postgres) by the
 *             daemon's forwarder or by `dualwrite replay` (terminal; counted
 *             nowhere as waiting: the PostgreSQL table owns it from then on).
 *
 * Directory layout: seg-<16 hex>.log segments of frames, LOCK (flock held
 * around every append and refresh), OWNER (flock held by the daemon for its
 * life), REPLAY (flock held by a replay consumer), MARK (the high-water
 * mark). Format: lib/SPOOL-FORMAT.md. A torn or corrupt tail found while
 * reading is cut off and reported through spool_take_warnings; never a crash.
 *
 * Space: delivered (and purged, forwarded) records' space is reclaimed even
 * when older records still wait: spool_refresh compacts (copies the few
 * live records of a mostly spent oldest segment forward, then deletes it).
 * max_bytes bounds only what waits.
 *
 * Damage (a corrupt frame, a segment cut short - even at a frame boundary -
 * or removed, the directory removed under a running process) is found on
 * open and by each spool_refresh (the daemon calls it every second); it is
 * reported through spool_take_warnings with the seqs and keys that can be
 * known, counted in spool_stats.damaged, and the lost records leave the
 * index (they are no longer counted as waiting).
 *
 * Thread-safe: one internal mutex serialises all calls on a struct spool.
 */
#ifndef DW_SPOOL_H
#define DW_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw.h"

enum spool_state {
	SPOOL_PENDING = 1,
	SPOOL_QUEUED = 2,
	SPOOL_DELIVERED = 3,
	SPOOL_DEAD = 4,
	SPOOL_PURGED = 5,
	SPOOL_FORWARDED = 6,
};
const char *spool_state_name(enum spool_state s); /* "pending", ... */

/* One mirrored write. Strings are owned by the record (spool_record_clear). */
struct spool_record {
	uint64_t seq;		/* assigned by spool_append; increasing */
	enum spool_state state;
	char *route;		/* route name */
	char *upstream;		/* mirror upstream name */
	char *key;		/* ordering key; NULL: unordered */
	char *idem_key;		/* Idempotency-Key, same on every attempt */
	char *method;		/* NULL: never built (see spool_record_unbuilt) */
	char *path;		/* request target on the upstream, with query */
	char *content_type;	/* NULL when no body */
	char *body;		/* NULL when no body; not NUL-terminated necessarily */
	size_t body_len;
	char *request_id;	/* X-Request-Id of the original write */
	int64_t created_us;	/* wall clock, when the legacy acknowledged */
	uint32_t attempts;	/* delivery attempts so far */
	int last_status;	/* last HTTP status from the target, 0: none */
	char *last_error;	/* last failure / dead-letter reason, NULL: none */
	int64_t updated_us;	/* wall clock of the last state change */
};
void spool_record_clear(struct spool_record *r);

/* Whether rec's mirror request was never built — the write could not be
 * mirrored (body not JSON, malformed tenant, ...), so there is nothing to
 * send, and requeue and replay must refuse it. The daemon journals such a
 * write with no method (the frame format is unchanged: the method string is
 * written absent). Dead letters of older versions carry a method; theirs is
 * told by no attempt and no status, which only the daemon's capture gives a
 * dead letter (every other one was sent at least once). */
static inline bool spool_record_unbuilt(const struct spool_record *rec)
{
	return !rec->method ||
	       (rec->state == SPOOL_DEAD && rec->attempts == 0 && rec->last_status == 0);
}

/*
 * A write-ahead intent (SPEC §5, G2): a write of a mirrored route about to go
 * to its authoritative upstream. Its outcome closes it: the mirror record
 * (an authoritative 2xx), or a plain close (non-2xx, an answer that never
 * came and was recorded as indeterminate, nothing to mirror). An intent still
 * open when the daemon starts is a write whose outcome nobody saw: the
 * daemon dead-letters it (spool_intents_settle). Not the body: only what
 * says which write it was. Strings owned (spool_intent_clear) when read back.
 */
struct spool_intent {
	uint64_t id;	  /* from spool_intent_id; the frames' seq */
	int64_t t_us;	  /* wall clock, when the write went out */
	char *route;
	char *upstream;	  /* the mirror's upstream: where its record would go */
	char *method;
	char *target;	  /* the client's path and query */
	char *request_id;
	char *key;	  /* the ordering key when the request alone gives it; NULL: unknown */
};
void spool_intent_clear(struct spool_intent *in);

struct spool_opts {
	uint64_t max_bytes;	/* new records that would make the waiting (pending,
				 * queued, dead) records' bytes pass this fail
				 * ("queue full"); delivered ones do not count; 0: 1 GiB */
	uint64_t segment_bytes; /* rotate after this; 0: max_bytes / 4 within
				 * [256 KiB, 64 MiB] */
	bool fsync;		/* spool_sync() fdatasyncs */
	bool owner;		/* the daemon: take OWNER; recover PENDING as QUEUED */
	bool readonly;		/* inspect only: no lock files created, no truncation */
	bool reap_later;	/* spent segments: their space is freed by spool_reap() */
};

struct spool;

/* Open (creating the directory if needed). With owner, fails when another
 * process owns the directory. Returns NULL with err. */
struct spool *spool_open(const char *dir, const struct spool_opts *opts, struct dw_err *err);
void spool_close(struct spool *sp); /* NULL is a no-op */

/* With reap_later: a segment whose records are all final leaves the
 * directory as always, but the file stays open until this call closes it,
 * and only then does the kernel free its pages and blocks (12 ms for a full
 * 64 MiB segment, measured with bench_spool -s). The daemon calls it from
 * its main thread, so its workers never wait for that. Any thread; cheap
 * when there is nothing to free. spool_close does it too. */
void spool_reap(struct spool *sp);

/* Problems found while reading (torn tail cut, corrupt frame skipped), each
 * one line; the caller logs them. Cleared by this call. */
void spool_take_warnings(struct spool *sp, struct dw_errlist *out);

/* Journal a new record in state rec->state (PENDING or QUEUED). Assigns
 * rec->seq. Fails (-1, err) on I/O error or when max_bytes would be passed. */
int spool_append(struct spool *sp, struct spool_record *rec, struct dw_err *err) DW_MUSTCHECK;
/* Append a state change for seq. attempts/status/error describe the latest
 * attempt (error may be NULL). */
int spool_set_state(struct spool *sp, uint64_t seq, enum spool_state st, uint32_t attempts,
		    int status, const char *error, struct dw_err *err) DW_MUSTCHECK;
/* Many state changes in one append (one lock, one write): the daemon's mirror
 * thread records the outcomes of a loop iteration at once. A change for a
 * record that is gone or already final is skipped and reported in err (the
 * others are still written); returns -1 only when nothing could be written. */
struct spool_change {
	uint64_t seq;
	enum spool_state st;
	uint32_t attempts;
	int status;
	const char *error; /* may be NULL */
};
int spool_set_states(struct spool *sp, const struct spool_change *v, size_t n,
		     struct dw_err *err) DW_MUSTCHECK;
/* Journal recs[0..n) in order, and the state changes chg[0..nchg) of
 * earlier records, with one lock and one write (the daemon's group of a loop
 * iteration). Returns how many records went in: recs[0..k) got their seqs;
 * for the rest err says why (queue full, I/O error). A change for a record
 * that is gone or final is skipped and reported in err, as by
 * spool_set_states; none is written when the write fails (k is 0 then). */
size_t spool_append_batch(struct spool *sp, struct spool_record *recs, size_t n,
			  const struct spool_change *chg, size_t nchg, struct dw_err *err);
/* The whole of one loop iteration's journal write: the state changes chg,
 * the records recs (as spool_append_batch), then the INTENT frames, then the
 * CLOSE frames (both built by sf_put_intent / sf_put_close, spool_frame.h,
 * so a write costs no copy of its strings). Intents and closes are written
 * whatever the space (a few bytes each, alive for one exchange), and the
 * closes after the records: a close in the log means its record is too.
 * Returns how many records went in; *intents_in whether the intents and
 * closes did (one write: all or none). */
struct spool_group {
	struct spool_record *recs;
	size_t n;
	const struct spool_change *chg;
	size_t nchg;
	const unsigned char *intents;
	size_t intents_len;
	const unsigned char *closes;
	size_t closes_len;
};
size_t spool_append_group(struct spool *sp, const struct spool_group *g, bool *intents_in,
			  struct dw_err *err);
/* A new intent id (increasing, never one seen in the log); any thread. */
uint64_t spool_intent_id(struct spool *sp);
/* The intents with no outcome in the log, oldest first (read back from
 * their frames); *out malloc'd (spool_intent_clear each, free). 0 when none. */
size_t spool_intents_open(struct spool *sp, struct spool_intent **out);
/* Settle open intents whose outcome is unknown (the daemon at start-up, as
 * owner): each becomes a dead letter that was never built (no method, so
 * requeue and replay refuse it) with reasons[i], in state DEAD, and is
 * closed; one write. seqs[i] gets its record's seq. -1 with err. */
int spool_intents_settle(struct spool *sp, const struct spool_intent *v, const char *const *reasons,
			 size_t n, uint64_t *seqs, struct dw_err *err) DW_MUSTCHECK;

/* With opts.fsync, make every frame appended so far durable (one fdatasync
 * for all of them: the caller's group commit). Otherwise a no-op. */
int spool_sync(struct spool *sp, struct dw_err *err) DW_MUSTCHECK;
/* Read frames appended by other processes since the last call; then (not
 * read-only) check for damage and reclaim space (see above). */
int spool_refresh(struct spool *sp, struct dw_err *err) DW_MUSTCHECK;

/* Whether a key of an upstream has records waiting for replay (QUEUED, or
 * orphaned PENDING): later writes of that key must queue behind them. */
bool spool_key_queued(struct spool *sp, const char *upstream, const char *key);

/* The records of one upstream waiting in the queue: queued (QUEUED, and
 * PENDING when no daemon owns the directory) and dead. A keyed record is
 * told from the index; an unkeyed one is read back (spool_read), so this is
 * for rare callers (a reload's gate, `dualwrite cutover check`), not the
 * request path. -1 with err when an unkeyed record cannot be read. */
int spool_upstream_waiting(struct spool *sp, const char *upstream, uint64_t *queued,
			   uint64_t *dead, struct dw_err *err) DW_MUSTCHECK;

/* Read one record (any state still indexed) into out. */
int spool_read(struct spool *sp, uint64_t seq, struct spool_record *out,
	       struct dw_err *err) DW_MUSTCHECK;

/* Seqs of live records in state st (0: every non-terminal state), ascending,
 * at most max; returns how many there are in all (may exceed max). */
size_t spool_list(struct spool *sp, enum spool_state st, uint64_t *seqs, size_t max);

/* For each seqs[i], whether that record is final (delivered, purged,
 * forwarded, or no longer indexed: reclaimed or lost to damage) into
 * out[i]; one lock for the batch. Read-your-writes (pinset.h) asks this of
 * the writes it parked. */
void spool_final(struct spool *sp, const uint64_t *seqs, size_t n, bool *out);

/* Replay: the records that may be sent now — for each key, its oldest
 * waiting record (QUEUED, or PENDING when no daemon owns the directory), and
 * every waiting unkeyed record; ascending seq, at most max. */
size_t spool_ready(struct spool *sp, uint64_t *seqs, size_t max);

/* Take the REPLAY consumer lock (one replay at a time per directory).
 * wait=false: fail at once with err when held. Released by spool_close. */
int spool_lock_consumer(struct spool *sp, bool wait, struct dw_err *err) DW_MUSTCHECK;
/* Whether a daemon currently owns the directory. */
bool spool_owner_alive(struct spool *sp);

struct spool_stats {
	uint64_t pending, queued, dead; /* live records by state */
	uint64_t bytes;			/* segment bytes on disk */
	uint64_t waiting_bytes;		/* bytes of pending, queued and dead records:
					 * what max_bytes bounds */
	uint64_t damaged;		/* records found lost to damage since open */
	uint64_t segments;
	int64_t oldest_waiting_us;	/* created_us of the oldest QUEUED/PENDING; 0: none */
	uint64_t next_seq;
};
void spool_stats(struct spool *sp, struct spool_stats *out);

/* The live records of each upstream the queue has indexed since open (its
 * mirror upstream; also ones no longer configured), in the order first met:
 * the counts are kept as records change state, so this is no scan and cheap
 * enough for every GET /status; oldest_waiting_us is found from where the
 * last call found it (it reads past only what has ended since). *out is
 * malloc'd, NULL when none: spool_upstream_stats_free. */
struct spool_upstream_stats {
	char *upstream;
	uint64_t pending, queued, dead;
	int64_t oldest_waiting_us; /* created_us of its oldest QUEUED/PENDING; 0: none */
};
size_t spool_upstream_stats(struct spool *sp, struct spool_upstream_stats **out);
void spool_upstream_stats_free(struct spool_upstream_stats *v, size_t n);

#endif
