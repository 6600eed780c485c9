/*
 * mirrorwire — a mirrored write on the wire: the request a mirror target
 * gets, and what its answer's status means. One builder and one classifier
 * for the daemon's live sends (daemon/mirror_send.c) and `dualwrite replay`
 * (tools/cli/replay.c), so a write replayed from the queue is the same
 * request, judged by the same table, as the one the daemon sent live.
 *
 * The request: "METHOD base_path+path HTTP/1.1", Host (the upstream's
 * host_header), Idempotency-Key (SPEC §5 G4: the same on every send),
 * X-Dualwrite-Route, X-Dualwrite-Replay (replay only: the attempt number),
 * X-Request-Id (the client request's), then Content-Type and
 * Content-Length with a body, or "Content-Length: 0" for a bodiless POST,
 * PUT or PATCH. A header whose value is NULL is left out (records of old
 * queues may lack one). No I/O, no allocation beyond the evbuffer's.
 */
#ifndef DW_MIRRORWIRE_H
#define DW_MIRRORWIRE_H

#include <event2/buffer.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct mirrorwire_req {
	const char *method;	  /* never NULL (an unbuilt record is never sent) */
	const char *path;	  /* after the upstream's base_path; NULL: "/" */
	const char *idem_key;	  /* Idempotency-Key */
	const char *route;	  /* X-Dualwrite-Route */
	const char *request_id;	  /* X-Request-Id */
	const char *content_type; /* with a body; NULL: application/json */
	const char *body;	  /* NULL: none */
	size_t body_len;
	uint32_t replay_attempt; /* 0: a live send; else X-Dualwrite-Replay */
};

/* Append the whole request for upstream up to out. */
void mirrorwire_write(struct evbuffer *out, const struct dw_upstream *up,
		      const struct mirrorwire_req *r);

/* The block of route rt that sends to upstream index ui: its reverse (the
 * write cut-over's mirror towards the legacy, SPEC §7.5) when that is the
 * one going to ui, else its mirror. NULL when rt is NULL (the route is
 * gone from the configuration). */
const struct dw_mirror *mirrorwire_block(const struct dw_route *rt, int ui);

/*
 * What an answer's status means for a write sent by block m: its
 * `delivered`/`retry`/`permanent` table, or, when m is NULL (the route is
 * gone), the defaults: 2xx delivered; 408, 429 and 5xx retry; any other
 * permanent. A status outside 100..599 (no valid answer) is retry.
 */
enum mirror_class mirrorwire_classify(const struct dw_mirror *m, int status);

#endif
