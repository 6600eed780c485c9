/*
 * server.h — the daemon's internal wiring, shared by the files in daemon/ only.
 *
 * Threads: the main thread runs signals, the admin listener, systemd
 * notification and the reload; each worker thread runs an event loop with
 * its own listeners (SO_REUSEPORT), client connections and upstream pools,
 * and one mirror shard that sends the mirrored writes whose ordering key
 * hashes to it — every key has one home, so per-key order holds across
 * workers; the sends are non-blocking, so a slow mirror target never
 * touches a client's path.
 *
 * Configuration: srv->cfg is the current immutable snapshot. Workers hold
 * their own reference and swap it when the main thread signals a reload;
 * every request holds a reference for its whole life, so in-flight requests
 * finish on the configuration they started with.
 */
#ifndef DW_SERVER_H
#define DW_SERVER_H

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "pinset.h"
#include "pool.h"
#include "readstate.h"
#include "resolver.h"
#include "sockio.h"
#include "spool.h"

struct worker;
struct mirror;
struct evhttp;

#define DW_VERSION "0.1.0"

/*
 * Whether the journal takes writes (G2 in detail). Workers report every
 * journal write and sync they make; a change of state is logged once with
 * its counts, never once per write. While the journal refuses writes the
 * mirrors are still sent live (mirror_journal.c): a write that is neither journaled
 * nor delivered is the only one counted lost. In durability "fsync" a write
 * whose fdatasync failed counts as not journaled (lost unless delivered),
 * and the journal is unwritable until a later sync succeeds.
 */
struct journal_health {
	pthread_mutex_t lock; /* guards what follows but `writable`'s fast reads */
	bool writable;	      /* also read atomically without the lock */
	char reason[300];     /* the last error while not writable */
	int64_t since_us;     /* wall clock of the change to not writable */
	uint64_t unjournaled; /* writes sent live without a durable journal record, this time */
	uint64_t lost;	      /* of those, neither journaled nor delivered, this time */
	uint64_t unjournaled_total, lost_total, episodes;
	pthread_mutex_t sync_lock; /* a worker's fdatasync and its sync_failures check */
	uint64_t sync_failures;	   /* atomic: failed fdatasyncs so far (mirror_journal.c journal_sync) */
	struct metric *m_writable;
};

/* The identity of the guard latch file (guards.c): a change by someone else
 * (`dualwrite guard reset`) is noticed by the tick. */
struct guards_file_sig {
	bool exists;
	uint64_t ino;
	int64_t size, mtime_ns;
};

struct server {
	char *conf_path;
	pthread_mutex_t cfg_lock; /* guards cfg (the pointer, not the snapshot) */
	struct dw_config *cfg;
	/* Runtime state of read routes by name (effective weights), bound to
	 * each snapshot before it is published; outlives every snapshot. */
	struct read_table *reads;
	/* The rollback guards by upstream name (guards.c), bound to each
	 * snapshot before the read table; outlives every snapshot. */
	struct guard_table *guards;
	/* The mirror's circuit breakers by upstream name, shared by the mirror
	 * shards (lib/breaker.h); outlives every snapshot. */
	struct breaker_table *breakers;
	struct guards_file_sig guards_sig;
	struct guard_fleet *gfleet; /* queue.postgres: the fleet's guards (guardfleet.c) */
	uint64_t gfleet_gen;	    /* the last fleet snapshot taken */
	uint64_t generation;	     /* configurations applied: 1 at start, +1 per reload */
	char last_reload_error[600]; /* why the last reload failed; "" after a good one */
	/* Read-your-writes: (upstream, key) pairs with writes not yet
	 * delivered (pinset.h); runtime state, outlives every snapshot. */
	struct pinset *pins;
	struct metrics *metrics;
	struct spool *spool; /* shared by the workers */
	bool fsync;	     /* durability "fsync": the spool was opened with fsync */
	struct journal_health journal;
	struct mirror **mirrors; /* one shard per worker, in that worker's loop */
	size_t nmirrors;
	uint64_t idem_counter;	 /* atomic: workers draw idempotency keys */
	struct pgforward *pgfwd; /* pgforward wiring: NULL unless queue.postgres */
	struct resolver *resolver; /* upstream host names (resolver.c) */
	struct worker **workers;
	size_t nworkers;
	struct event_base *base; /* main thread */
	struct evhttp *admin;	 /* admin listener, NULL when not configured */
	char instance[17];	 /* random per start: prefix of idempotency keys */
	int64_t started_wall_us;
	int active_conns;	 /* atomic, across workers */
	int workers_done;	 /* atomic */
	bool ready;
	bool log_debug; /* -d: debug logging whatever log_level says */
	bool stopping; /* atomic: a wedged worker (test seam) polls it */

	/* systemd watchdog: every worker stamps its loop every heartbeat_us (0:
	 * no watchdog); main notifies WATCHDOG=1 only while every stamp is
	 * younger than wd_stale_us. */
	int64_t heartbeat_us, wd_stale_us;
	bool wd_withheld;    /* main thread: WATCHDOG=1 withheld at the last check */
	int64_t wedge_after_ms; /* test seam (see main.c); 0: off */
	struct event *stop_tick, *stop_deadline; /* the drain, once stopping */

	/* The bound listening sockets (see listen_bind); the main thread changes
	 * the set, workers dup from it, under listen_lock. */
	pthread_mutex_t listen_lock;
	struct listen_sock {
		char *addr; /* as configured */
		int fd;
	} *lsocks;
	size_t nlsocks;

	/* handles of fixed series */
	struct metric *m_conns_active, *m_conns_total, *m_conns_rejected;
	struct metric *m_reload_ok, *m_reload_failed;
	struct metric *m_queue_depth, *m_queue_dead, *m_queue_bytes, *m_queue_oldest;
	struct metric *m_queue_syncs; /* fdatasyncs of the journal (journal_sync) */
	struct metric *m_queue_damaged; /* counter: records found lost to queue damage */
};

/* ---- cross-thread wake-ups (wake.c) ---- */
struct wake {
	int fd;			/* eventfd */
	struct event *ev;	/* in the owning thread's loop */
	unsigned pending;	/* atomic: bits posted and not yet handled */
	void (*cb)(void *arg, unsigned bits);
	void *arg;
};
/* Register in base (the owning loop); cb runs there with the bits taken. */
int wake_init(struct wake *w, struct event_base *base, void (*cb)(void *arg, unsigned bits),
	      void *arg, struct dw_err *err) DW_MUSTCHECK;
/* Any thread. */
void wake_post(struct wake *w, unsigned bits);
void wake_free(struct wake *w);


/* A new reference to the current configuration. */
struct dw_config *server_config(struct server *srv);

/* ---- workers (worker.c, proxy.c) ---- */
/* Also creates the worker's mirror shard, srv->mirrors[id]. */
struct worker *worker_new(struct server *srv, int id, struct dw_err *err);
int worker_start(struct worker *w, struct dw_err *err) DW_MUSTCHECK;
/* Called from the main thread: take the new configuration (listeners are
 * reconciled in the worker's own thread). */
void worker_post_reload(struct worker *w);
/* Called from the main thread: stop accepting and drain. */
void worker_post_stop(struct worker *w);
/* Called from the main thread after the drain bound: abort what is left. */
void worker_post_abort(struct worker *w);
/* Wait for the thread to end. Every worker is joined before any is freed:
 * a worker's mirror shard takes hand-overs from the others until then. */
void worker_join(struct worker *w);
/* Queue what its mirror shard did not finish, free everything. */
void worker_free(struct worker *w);
int worker_connections(struct worker *w);
/* Any thread: when w's loop last turned (dw_now_us), INT64_MAX once its loop
 * has ended for good (drained or aborted: nothing left to watch). */
int64_t worker_heartbeat(struct worker *w);

/* ---- mirroring (mirror*.c; their parts in mirror.h) ---- */
struct mirror_job;
/* A shard living in base (worker id's loop). */
struct mirror *mirror_new(struct server *srv, int id, struct event_base *base,
			  struct dw_err *err);
/* Hand job to shard mi; from is the calling worker's own shard (the job is
 * taken at once when mi == from, else through mi's inbox). Takes ownership. */
void mirror_submit(struct mirror *mi, struct mirror *from, struct mirror_job *job);
/* Jobs in memory or handed over and not yet settled (owning thread). */
bool mirror_busy(struct mirror *mi);
/* Take no more hand-overs (any thread); later ones stay PENDING in the
 * journal and are recovered as queued on the next start. */
void mirror_close(struct mirror *mi);
/* After the owning loop has stopped for good: queue what did not finish,
 * record it, free. */
void mirror_free(struct mirror *mi);
void mirror_status_json(struct mirror *mi, void *json_obj);

/*
 * Build the mirror of one acknowledged write and keep it for the worker's
 * next mirror_commit. Called by the worker that served it, before the client
 * gets its answer. Every error is handled here or at the commit
 * (dead-lettered or counted as lost); it never fails the client's request.
 */
struct mirror_input {
	struct dw_config *cfg; /* borrowed; the job takes its own reference */
	const struct dw_route *route;
	/* Which of the route's mirrors: route->mirror (NULL means that one) or,
	 * authority "new", route->reverse towards the legacy (SPEC §7.5).
	 * $response is then the new system's answer. */
	const struct dw_mirror *mm;
	const char *method;
	const char *const *path_names;
	const char *const *path_values;
	size_t npath;
	const char *query;
	size_t query_len;
	const char *(*header)(void *arg, const char *name, size_t *len);
	void *header_arg;
	const char *req_body;
	size_t req_body_len;
	const char *resp_body;
	size_t resp_body_len;
	bool resp_too_large; /* the reply outgrew max_body_bytes: not mappable */
	const char *request_id;
	uint64_t intent; /* the write's intent (mirror_intent), closed with its record; 0: none */
};
void mirror_capture(struct server *srv, struct mirror *self, const struct mirror_input *in);
/* Journal every write captured by this worker since the last call (one
 * write(2) for all of them, and in durability "fsync" one fdatasync), and
 * hand them to their shards. The answers of those writes may be released
 * only after this. A write the journal refused (or whose sync failed) is
 * handed on all the same, marked: it is sent live, and counted lost if it
 * is not delivered. */
void mirror_commit(struct mirror *self);

/*
 * Write-ahead intents (SPEC §5 G2): a write of a mirrored route is recorded
 * before it goes to its authority, so a SIGKILL while the authority holds it
 * leaves a trace. mirror_intent builds the INTENT frame (borrowed strings,
 * copied now) and returns its id; it is journaled by the next mirror_commit,
 * which the worker makes before it flushes requests to upstreams
 * (proxy_flush_queued). Its outcome closes it: the record (mirror_input's
 * intent) or mirror_intent_close. An intent open at start-up is settled by
 * intents_recover (main.c). Owning worker's thread.
 */
uint64_t mirror_intent(struct mirror *self, const char *route, const char *upstream,
		       const char *method, const char *target, size_t target_len,
		       const char *request_id, const char *key);
void mirror_intent_close(struct mirror *self, uint64_t id);
/* Whether captured writes, intents or closes wait for mirror_commit. */
bool mirror_waiting(const struct mirror *self);

/* The journal's health (mirror_journal.c). init: writable, gauge registered. */
void journal_health_init(struct server *srv);
void journal_health_free(struct server *srv);
/* Every fdatasync of the daemon's journal goes through journal_sync, so a
 * failure is seen by each batch it may have lost, whoever's sync reported
 * it: mark before appending, journal_sync after; -1 with err when what was
 * appended since the mark may not be on disk. */
uint64_t journal_sync_mark(struct server *srv);
int journal_sync(struct server *srv, uint64_t mark, struct dw_err *err) DW_MUSTCHECK;
/* /status's "journal" object. */
void journal_health_json(struct server *srv, void *json_obj);

/* Refresh the journal view and the queue gauges; fills st (main.c). */
void server_queue_refresh(struct server *srv, struct spool_stats *st);

/* ---- rollback guards (guards.c), main thread unless said ---- */
struct guard_up;
/* After the queue directory is open and before the read table is bound:
 * the guard table, its latches restored from the file beside the queue
 * (an unreadable file trips every new-system upstream, see guard.h). */
int guards_start(struct server *srv, struct dw_err *err) DW_MUSTCHECK;
void guards_free(struct server *srv);
/* Every GUARD_TICK_MS: an operator's reset first, then the windows; a
 * latch holds the upstream's read routes at weight 0 at once. */
#define GUARD_TICK_MS 500
void guards_tick(struct server *srv);
/* The reload's gate (-1 with err: refused, the running configuration
 * stays), then, once it is accepted and before readstate_bind: clear the
 * trips whose route weights it changes, and bind neu. */
int guards_reload_check(struct server *srv, const struct dw_config *running,
			const struct dw_config *neu, struct dw_err *err) DW_MUSTCHECK;
void guards_reload_bind(struct server *srv, const struct dw_config *running,
			struct dw_config *neu);
/* Any thread: the shadow comparison of a read route found the new system's
 * mapped answer different from the legacy's; up is the route's read
 * upstream in the request's snapshot. Counts toward
 * guards.shadow_mismatches_per_hour (-> pause). */
void guards_note_shadow_mismatch(const struct dw_upstream *up);
/* /status: the latch (state, reason, since...) of g into a JSON object, and
 * for an upstream also what its windows measure now. */
void guards_latch_json(const struct guard_up *g, void *json_obj);
void guards_upstream_json(struct server *srv, struct guard_up *g, void *json_obj);

/* ---- the fleet's guards in PostgreSQL (guardfleet.c) ----
 * Started by guards_start when queue.postgres is set; the main thread
 * queues this sidecar's latches and resets, and takes the table's rows
 * (only a read made after everything it queued). */
struct guard_fleet;
struct guard_latch;
struct guard_file;
struct guard_fleet *guard_fleet_start(struct server *srv, struct dw_err *err);
void guard_fleet_stop(struct guard_fleet *f); /* NULL is a no-op */
/* l NULL or ok: delete name's row (a reset). f NULL: nothing. */
void guard_fleet_put(struct guard_fleet *f, const char *name, const struct guard_latch *l);
/* A newer snapshot than *gen (updated) into out (to free): true. */
bool guard_fleet_take(struct guard_fleet *f, uint64_t *gen, struct guard_file *out);

/* ---- admin endpoint (admin.c) ---- */
int admin_start(struct server *srv, struct dw_err *err) DW_MUSTCHECK;
void admin_stop(struct server *srv);

/* ---- systemd notification (notify.c) ---- */
void sd_notifyf(const char *fmt, ...) DW_PRINTF(1, 2);

/* ---- listeners (worker.c) ----
 * Each address is bound once, by the main thread, without SO_REUSEPORT: a
 * second process (another dualwrited with another queue) cannot bind it
 * while we hold it, and fails to start (SPEC §5: one daemon per listen
 * address). Every worker accepts on its own dup() of that one socket. */
/* Main thread: bind what cfg lists and the set lacks. All or nothing: on a
 * failure nothing new stays bound and err names the address. */
int listen_bind(struct server *srv, const struct dw_config *cfg, struct dw_err *err) DW_MUSTCHECK;
/* Main thread, after the workers were told of cfg: close the set's copy of
 * addresses cfg no longer lists (a worker's dup lives until it lets go). */
void listen_prune(struct server *srv, const struct dw_config *cfg);
/* Any thread: a new descriptor for addr's socket (the caller owns it), or
 * -1 with err. */
int listen_dup(struct server *srv, const char *addr, struct dw_err *err);

#endif
