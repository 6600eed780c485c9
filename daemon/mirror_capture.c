/*
 * mirror_capture.c — capture and build (mirror.h). mirror_capture runs in the worker
 * that served the write, before the client gets its answer: it builds the
 * mirror request with the mapping engine (path, ordering key, body; the
 * Idempotency-Key drawn once, G4) and keeps it for the worker's next
 * mirror_commit (mirror_journal.c), which journals it PENDING. A write whose
 * mirror cannot be built is journaled dead-lettered with the reason; the
 * client is served either way. Also: the write's read-your-writes pins
 * (pinset.h), and the write-ahead intents (SPEC §5 G2) that the same
 * commit journals.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <stdarg.h>

#include "jsonfast.h"

#include "mirror.h"

void job_free(struct mirror_job *j)
{
	if (!j)
		return;
	config_unref(j->cfg);
	free(j->key);
	free(j->idem);
	free(j->method);
	free(j->path);
	free(j->body);
	free(j->reqid);
	free(j->nojournal);
	for (size_t i = 0; i < j->npinkeys; i++)
		free(j->pinkeys[i]);
	free(j->pinkeys);
	free(j->pinpre);
	free(j);
}

/*
 * Pin what this write pins until it is delivered (pinset.h): its ordering
 * key and every key of its route's pins. A pin that does not evaluate pins
 * every key that begins with its literal text (its pin_prefix: every
 * "user:" key for "user:${...}"; a pin with none makes the write blind)
 * unless the write is already dead: a mirror that can never be built pins
 * the keys it has (until purged), never more.
 */
static void job_pin(struct server *srv, struct mirror_job *j, const struct expr_ctx *ctx,
		    bool dead)
{
	const struct dw_mirror *mm = j->route->mirror;
	const char *up = j->cfg->upstreams[mm->upstream].name;
	struct dw_err err = { "" };

	if (!srv->pins || (!j->key && !mm->npins))
		return;
	j->pinkeys = dw_calloc(1 + mm->npins, sizeof(char *));
	if (j->key)
		j->pinkeys[j->npinkeys++] = dw_strdup(j->key);
	for (size_t i = 0; i < mm->npins; i++) {
		char *v = NULL;

		if (expr_eval_string(mm->pins[i], ctx, &v, &err) == EXPR_OK) {
			j->pinkeys[j->npinkeys++] = v;
		} else if (!dead) {
			if (!j->pinpre)
				j->pinpre = dw_calloc(mm->npins, sizeof(char *));
			j->pinpre[j->npinpre++] = mm->pin_prefix[i];
		}
	}
	for (size_t i = 0; i < j->npinkeys; i++)
		pinset_add(srv->pins, up, j->pinkeys[i]);
	for (size_t i = 0; i < j->npinpre; i++)
		pinset_prefix_add(srv->pins, up, j->pinpre[i], 1);
}

/* The write is settled: give its pins back (delivered, lost), or park them
 * under its seq while it waits in the queue (queued, dead). */
void job_unpin(struct server *srv, struct mirror_job *j, enum spool_state st, bool lost)
{
	const char *up;

	if (!srv->pins || (!j->npinkeys && !j->npinpre))
		return;
	up = j->cfg->upstreams[j->route->mirror->upstream].name;
	if (!lost && j->seq && (st == SPOOL_QUEUED || st == SPOOL_DEAD)) {
		pinset_park(srv->pins, j->seq, up, (const char *const *)j->pinkeys, j->npinkeys,
			    j->pinpre, j->npinpre, false);
		return;
	}
	for (size_t i = 0; i < j->npinkeys; i++)
		pinset_del(srv->pins, up, j->pinkeys[i]);
	for (size_t i = 0; i < j->npinpre; i++)
		pinset_prefix_add(srv->pins, up, j->pinpre[i], -1);
}

static const char *dead_reason(char *buf, size_t len, const char *fmt, ...) DW_PRINTF(3, 4);
static const char *dead_reason(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return buf;
}

void mirror_capture(struct server *srv, struct mirror *self, const struct mirror_input *in)
{
	const struct dw_mirror *mm = in->mm ? in->mm : in->route->mirror;
	const struct dw_config *cfg = in->cfg;
	struct expr_ctx ctx;
	json_t *req = NULL, *resp = NULL, *body = NULL;
	json_error_t jerr;
	struct dw_err err = {""};
	char idem[64], tenant[65], now[40], why[700];
	const char *dead = NULL, *tv;
	char *path = NULL, *key = NULL, *text = NULL;
	size_t tlen = 0;
	int rc;

	memset(&ctx, 0, sizeof(ctx));
	json_arena_begin(&self->jarena); /* every value below is dropped before the end */
	snprintf(idem, sizeof(idem), "%s-%" PRIx64, srv->instance,
		 __atomic_add_fetch(&srv->idem_counter, 1, __ATOMIC_RELAXED));

	/* A source only the pins use is read when it can be: a pin that cannot
	 * be worked out pins its prefix (job_pin), never makes the write dead. */
	if ((mm->sources | mm->pin_sources) & EXPR_SRC_REQUEST) {
		req = jsonfast_loadb(in->req_body ? in->req_body : "", in->req_body_len, &jerr);
		if (!req && (mm->sources & EXPR_SRC_REQUEST))
			dead = dead_reason(why, sizeof(why), "request body is not JSON: %s",
					   in->req_body_len ? jerr.text : "empty body");
	}
	if (!dead && ((mm->sources | mm->pin_sources) & EXPR_SRC_RESPONSE)) {
		bool need = (mm->sources & EXPR_SRC_RESPONSE) != 0;

		if (in->resp_too_large) {
			if (need)
				dead = "response larger than max_body_bytes: $response unavailable";
		} else if (!(resp = jsonfast_loadb(in->resp_body ? in->resp_body : "",
						   in->resp_body_len, &jerr)) &&
			   need) {
			dead = dead_reason(why, sizeof(why), "%s response is not JSON: %s",
					   mm == in->route->mirror ? "legacy" : "new system's",
					   in->resp_body_len ? jerr.text : "empty body");
		}
	}
	/* $tenant: the header when well-formed, the default when absent, and a
	 * malformed value is never guessed. */
	tv = in->header(in->header_arg, cfg->tenant.header, &tlen);
	if (!tv) {
		ctx.tenant = cfg->tenant.def;
	} else if (expr_tenant_valid(tv, tlen)) {
		memcpy(tenant, tv, tlen);
		tenant[tlen] = '\0';
		ctx.tenant = tenant;
	} else if (!dead && (mm->sources & EXPR_SRC_TENANT)) {
		dead = dead_reason(why, sizeof(why), "malformed tenant in %s header",
				   cfg->tenant.header);
	}
	if (mm->sources & EXPR_SRC_NOW)
		dw_rfc3339(dw_wall_us(), now, sizeof(now));
	else
		now[0] = '\0';
	ctx.request = req;
	ctx.response = resp;
	ctx.path_names = in->path_names;
	ctx.path_values = in->path_values;
	ctx.npath = in->npath;
	ctx.query = in->query;
	ctx.query_len = in->query_len;
	ctx.header = in->header;
	ctx.header_arg = in->header_arg;
	ctx.now = now[0] ? now : NULL;

	/* Path and key are worked out even for a write already known to be
	 * dead, so its dead letter says which write it was. */
	if (tmpl_render(mm->path, &ctx, &path, &err) < 0 && !dead)
		dead = dead_reason(why, sizeof(why), "mirror path: %s", err.msg);
	if (mm->key) {
		rc = expr_eval_string(mm->key, &ctx, &key, &err);
		if (rc == EXPR_MISSING && !dead)
			dead = "ordering key is missing from the write";
		else if (rc == EXPR_ERROR && !dead)
			dead = dead_reason(why, sizeof(why), "ordering key: %s", err.msg);
	}
	if (!dead && mm->body) {
		rc = expr_eval(mm->body, &ctx, &body, &err);
		if (rc == EXPR_MISSING)
			dead = "mirror body: its source is missing from the write";
		else if (rc != EXPR_OK)
			dead = dead_reason(why, sizeof(why), "mirror body: %s", err.msg);
		else
			text = jsonfast_dumps(body, NULL);
	}

	struct mirror_job *j = dw_calloc(1, sizeof(*j));
	j->cfg = config_ref(in->cfg);
	j->route = in->route;
	j->mm = mm;
	j->key = key;
	key = NULL;
	j->idem = dw_strdup(idem);
	j->method = dw_strdup(mm->method ? mm->method : in->method);
	j->path = path ? path : dw_strdup("");
	path = NULL;
	j->body = text;
	j->body_len = text ? strlen(text) : 0;
	text = NULL;
	j->reqid = dw_strdup(in->request_id);
	job_pin(srv, j, &ctx, dead != NULL);
	j->created_us = dw_wall_us();
	j->t_ack = dw_now_us();
	if (self->npend == self->cappend) {
		self->cappend = self->cappend ? self->cappend * 2 : 32;
		self->pend = dw_realloc(self->pend, self->cappend * sizeof(*self->pend));
	}
	self->pend[self->npend++] = (struct pending){j, dead ? dw_strdup(dead) : NULL, NULL,
						     in->intent};
	json_decref(req);
	json_decref(resp);
	json_decref(body);
	json_arena_end(&self->jarena);
}

uint64_t mirror_intent(struct mirror *self, const char *route, const char *upstream,
		       const char *method, const char *target, size_t target_len,
		       const char *request_id, const char *key)
{
	struct sf_intent in = {
		.id = spool_intent_id(self->srv->spool), .t_us = dw_wall_us(), .route = route,
		.upstream = upstream, .method = method, .target = target,
		.request_id = request_id, .key = key, .target_len = target_len,
	};

	sf_put_intent(&self->iframes, &in);
	return in.id;
}

void mirror_intent_close(struct mirror *self, uint64_t id)
{
	if (id)
		sf_put_close(&self->cframes, id);
}

bool mirror_waiting(const struct mirror *self)
{
	return self->npend || self->iframes.len || self->cframes.len;
}
