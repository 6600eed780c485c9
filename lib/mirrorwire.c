/*
 * mirrorwire.c — the mirror's request bytes and its answer's class
 * (mirrorwire.h). The request is appended piece by piece with
 * evbuffer_add: on the daemon's path that is cheaper than formatting it.
 */
#include "mirrorwire.h"

#include <stdio.h>
#include <string.h>

static void add_str(struct evbuffer *out, const char *s)
{
	evbuffer_add(out, s, strlen(s));
}

static void add_header(struct evbuffer *out, const char *crlf_name, size_t n, const char *v)
{
	if (!v)
		return;
	evbuffer_add(out, crlf_name, n);
	add_str(out, v);
}

#define HDR(out, lit, v) add_header((out), lit, sizeof(lit) - 1, (v))

void mirrorwire_write(struct evbuffer *out, const struct dw_upstream *up,
		      const struct mirrorwire_req *r)
{
	char num[32];
	int n;

	add_str(out, r->method);
	evbuffer_add(out, " ", 1);
	if (up->base_path)
		add_str(out, up->base_path);
	add_str(out, r->path ? r->path : "/");
	evbuffer_add(out, " HTTP/1.1\r\nHost: ", 17);
	add_str(out, up->host_header);
	HDR(out, "\r\nIdempotency-Key: ", r->idem_key);
	HDR(out, "\r\nX-Dualwrite-Route: ", r->route);
	if (r->replay_attempt) {
		n = snprintf(num, sizeof(num), "%u", (unsigned)r->replay_attempt);
		evbuffer_add(out, "\r\nX-Dualwrite-Replay: ", 22);
		evbuffer_add(out, num, (size_t)n);
	}
	HDR(out, "\r\nX-Request-Id: ", r->request_id);
	if (r->body) {
		HDR(out, "\r\nContent-Type: ", r->content_type ? r->content_type : "application/json");
		n = snprintf(num, sizeof(num), "%zu", r->body_len);
		evbuffer_add(out, "\r\nContent-Length: ", 18);
		evbuffer_add(out, num, (size_t)n);
	} else if (strcmp(r->method, "POST") == 0 || strcmp(r->method, "PUT") == 0 ||
		   strcmp(r->method, "PATCH") == 0) {
		evbuffer_add(out, "\r\nContent-Length: 0", 19);
	}
	evbuffer_add(out, "\r\n\r\n", 4);
	if (r->body)
		evbuffer_add(out, r->body, r->body_len);
}

const struct dw_mirror *mirrorwire_block(const struct dw_route *rt, int ui)
{
	if (!rt)
		return NULL;
	if (rt->reverse && rt->reverse->upstream == ui)
		return rt->reverse;
	return rt->mirror;
}

enum mirror_class mirrorwire_classify(const struct dw_mirror *m, int status)
{
	if (status < 100 || status > 599)
		return MIRROR_RETRY;
	if (m)
		return (enum mirror_class)m->klass[status];
	if (status >= 200 && status < 300)
		return MIRROR_DELIVERED;
	if (status == 408 || status == 429 || status >= 500)
		return MIRROR_RETRY;
	return MIRROR_PERMANENT;
}
