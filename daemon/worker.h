/*
 * worker.h — one event-loop thread: its listeners, its client connections
 * and its upstream pools. Shared by worker.c (thread life, listeners,
 * reload) and proxy.c (the client connection state machine).
 */
#ifndef DW_WORKER_H
#define DW_WORKER_H

#include <event2/event.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "bucket.h"
#include "jsonarena.h"
#include "server.h"

struct conn;
struct exchange;
struct shadow_set;
TAILQ_HEAD(conn_queue, conn);

/* proxy.c: connections waiting in a state, one queue per state that has a
 * deadline or a wait (indexed by proxy.c's connection state). */
#define PROXY_QUEUES 8

struct listener {
	struct listener *next;
	char *addr; /* as configured */
	int fd;	    /* this worker's dup of the shared socket */
	struct event *ev;
};

/* A cached metric handle for a (route, status) pair. */
struct status_series {
	char *route;
	int status;
	struct metric *counter;
};

struct worker {
	struct server *srv;
	int id;
	pthread_t thread;
	bool started;
	struct event_base *base;
	struct dw_config *cfg; /* this worker's reference to the current config */
	struct listener *listeners;
	struct pool_set *pools;
	struct mirror *mirror; /* this loop's shard (srv->mirrors[id]) */
	TAILQ_HEAD(, conn) conns;
	int nconns;
	struct wake wake;	/* reload / stop / abort from the main thread */
	struct event *sync_ev, *drain_tick;
	struct event *flush_ev;		 /* end of the loop iteration: flushq */
	TAILQ_HEAD(, conn) flushq;	 /* answers to write then (proxy.c) */
	/* Each queue is in the order its connections entered the state, so its
	 * head has the earliest deadline: one timer serves every connection. */
	struct conn_queue stateq[PROXY_QUEUES];
	struct event *deadline_ev;
	int64_t deadline_at; /* when deadline_ev fires (monotonic us); 0: not armed */
	bool draining;
	bool aborting; /* proxy_abort_all: open intents stay open (outcome unknown) */
	uint64_t reqid_counter;
	uint32_t reqid_seed;
	struct bucket_rng rng; /* draws for reads without a sticky value */
	struct json_arena jarena; /* proxy.c: jansson values of one read's mapping */
	struct status_series series[128];
	size_t nseries;
	struct histogram *h_duration;
	struct exchange *xfree; /* proxy.c's cache of exchanges for reuse */
	struct shadow_set *shadows; /* shadow.c: this loop's shadow exchanges */
	int nxfree;
	struct metric *m_upstream_err[4]; /* connect, timeout, reset, protocol */
	struct metric *m_tls_failed;	  /* client handshakes that failed */

	/* The watchdog (see worker_heartbeat): stamped by beat_ev every
	 * srv->heartbeat_us, read by the main thread; atomics. */
	int64_t heartbeat;
	bool loop_done;
	struct event *beat_ev;
	struct event *wedge_ev; /* test seam: DW_TEST_WEDGE_WORKER_AFTER_MS */

	/* Connections another worker accepted and handed to this one (see
	 * accept_cb in worker.c): taken in by the WAKE_ACCEPT wake-up. */
	pthread_mutex_t in_lock;
	struct handoff {
		int fd;
		socklen_t len;
		struct sockaddr_storage sa;
		struct ssl_ctx_st *tls; /* a reference of its own (SSL_CTX_up_ref), or NULL */
	} *in;
	size_t nin, capin;
	int incoming; /* atomic: handed over, not yet taken in */
};

/* proxy.c */
/* tls: the listener's server context (the worker's current snapshot), NULL
 * for plain HTTP. */
void proxy_accept(struct worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen,
		  struct ssl_ctx_st *tls);
void proxy_drain_idle(struct worker *w);  /* close connections not mid-request */
void proxy_abort_all(struct worker *w);	  /* close every connection */
void proxy_sync_done(struct worker *w);	  /* release answers held for fsync */
void proxy_flush_queued(struct worker *w); /* write the answers of this iteration */
void proxy_deadlines(struct worker *w);	  /* act on passed deadlines, re-arm */
void proxy_worker_free(struct worker *w); /* what proxy.c keeps per worker */

#endif
