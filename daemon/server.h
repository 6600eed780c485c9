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
#include "readstate.h"
#include "spool.h"

struct worker;
struct mirror;
struct pool_set;
struct evhttp;

#define DW_VERSION "0.1.0"

struct server {
	char *conf_path;
	pthread_mutex_t cfg_lock; /* guards cfg (the pointer, not the snapshot) */
	struct dw_config *cfg;
	/* Runtime state of read routes by name (effective weights), bound to
	 * each snapshot before it is published; outlives every snapshot. */
	struct read_table *reads;
	struct metrics *metrics;
	struct spool *spool; /* shared by the workers */
	struct mirror **mirrors; /* one shard per worker, in that worker's loop */
	size_t nmirrors;
	uint64_t idem_counter;	 /* atomic: workers draw idempotency keys */
	struct pgforward *pgfwd; /* pgforward wiring: NULL unless queue.postgres */
	struct worker **workers;
	size_t nworkers;
	struct event_base *base; /* main thread */
	struct evhttp *admin;	 /* admin listener, NULL when not configured */
	char instance[17];	 /* random per start: prefix of idempotency keys */
	int64_t started_wall_us;
	int active_conns;	 /* atomic, across workers */
	int workers_done;	 /* atomic */
	bool ready;
	bool stopping;
	struct event *stop_tick, *stop_deadline; /* the drain, once stopping */

	/* handles of fixed series */
	struct metric *m_conns_active, *m_conns_total, *m_conns_rejected;
	struct metric *m_reload_ok, *m_reload_failed;
	struct metric *m_queue_depth, *m_queue_dead, *m_queue_bytes, *m_queue_oldest;
	struct metric *m_queue_syncs; /* fdatasyncs that released held answers */
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

/* A failed non-blocking read or write that only means "not now". */
static inline bool errno_retriable(int e)
{
	return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

/*
 * Direct socket I/O on a bufferevent's buffers (sockio.c). A bufferevent
 * keeps its output's start and its input's end frozen so only its own paths
 * touch them; these thaw them around the call in the same way.
 *
 * Both use send(2)/recv(2) when one extent does (the usual case: a head and
 * body built in one chain, a read into one fresh extent) and writev/readv
 * only for several: the vector calls go through the VFS layer (iovec import,
 * file position lock, rw_verify_area), 3-4% of a proxied request's CPU that
 * nginx, which recv(2)s, did not spend.
 */

/* What a read asks for first: 1 KiB with libevent's chain header (48 bytes
 * on 64-bit), as nginx's client_header_buffer_size, which malloc serves from
 * its per-thread cache; a 4 KiB read took an 8 KiB chain from the arena on
 * every read. A read that fills it is followed by bigger ones. */
#define READ_FIRST 976

/* Write what the output holds (up to 16 chains). Returns the bytes written
 * or -1 with errno, as evbuffer_write. */
int evbuffer_write_unfrozen(struct evbuffer *out, evutil_socket_t fd);

/* Read up to want bytes from fd into the input, into reserved space:
 * unlike libevent's own read, no ioctl(FIONREAD) first. Returns what the
 * read returned, errno kept. */
ssize_t evbuffer_read_unfrozen(struct evbuffer *in, evutil_socket_t fd, size_t want);

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

/* ---- upstream connection pools (pool.c), one set per event loop ---- */
struct upconn;
typedef void (*upconn_ready_fn)(struct upconn *uc, int error, void *arg);
struct pool_set *pool_set_new(struct event_base *base, struct metrics *m);
void pool_set_free(struct pool_set *ps);
/*
 * Get a connection to an upstream. An idle pooled one is returned with
 * *connected = true and is usable at once; otherwise a new connection is
 * started, *connected = false, and ready(uc, 0, arg) runs from the loop once
 * it is up, or ready(uc, err, arg) with err = ETIMEDOUT / ECONNREFUSED / ...
 * on failure (the caller then releases it with keep=false). Returns NULL
 * with *err_out set when no connection can even be started.
 */
struct upconn *pool_get(struct pool_set *ps, const struct dw_upstream *up, upconn_ready_fn ready,
			void *arg, bool *connected, int *err_out);
struct bufferevent *upconn_bev(struct upconn *uc);
/* After ready(uc, EPROTO, ...): why the TLS handshake failed ("TLS
 * certificate verify failed: expired (...)"), NULL when not known. Valid
 * until the release. */
const char *upconn_failure(const struct upconn *uc);
bool upconn_reused(const struct upconn *uc);
/* Before writing a request into the connection's output: upconn_begin; after:
 * upconn_flush, which writes at once on plain sockets and arms the write
 * event only for what the socket did not take (and always for TLS). */
void upconn_begin(struct upconn *uc);
void upconn_flush(struct upconn *uc);
/* Read the connection: readcb(bev, arg) when bytes arrived in the
 * bufferevent's input; eventcb(bev, BEV_EVENT_READING | EOF / ERROR /
 * TIMEOUT, arg) when it ended, failed, or stayed silent for timeout_ms
 * (reset by every read; <= 0: none); write failures also go to eventcb.
 * Replaces earlier callbacks. Pause/resume: back-pressure. */
void upconn_read(struct upconn *uc, bufferevent_data_cb readcb, bufferevent_event_cb eventcb,
		 void *arg, int timeout_ms);
void upconn_read_pause(struct upconn *uc);
void upconn_read_resume(struct upconn *uc);
/* Hand the connection back: keep=true returns it to the idle pool (when the
 * pool has room), false closes it. The caller's callbacks are cleared. */
void upconn_release(struct upconn *uc, bool keep);

/* ---- mirroring (mirror.c) ---- */
struct mirror_job;
/* A shard living in base (a worker's loop). */
struct mirror *mirror_new(struct server *srv, struct event_base *base, struct dw_err *err);
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
};
void mirror_capture(struct server *srv, struct mirror *self, const struct mirror_input *in);
/* Journal every write captured by this worker since the last call (one
 * write(2) for all of them) and hand them to their shards. The answers of
 * those writes may be released only after this. */
void mirror_commit(struct mirror *self);

/* Refresh the journal view and the queue gauges; fills st (main.c). */
void server_queue_refresh(struct server *srv, struct spool_stats *st);

/* ---- admin endpoint (admin.c) ---- */
int admin_start(struct server *srv, struct dw_err *err) DW_MUSTCHECK;
void admin_stop(struct server *srv);

/* ---- systemd notification (notify.c) ---- */
void sd_notifyf(const char *fmt, ...) DW_PRINTF(1, 2);

/* ---- listeners (worker.c) ---- */
/* Try binding every address (then close): used to vet a reload. */
int listen_probe(const struct dw_config *cfg, const struct dw_config *old, struct dw_err *err);

#endif
