/*
 * cutover.c — the reload gate of a write cut-over (see cutover.h).
 */
#include "cutover.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct dw_route *route_named(const struct dw_config *c, const char *name)
{
	for (size_t i = 0; c && name && i < c->nroutes; i++)
		if (c->routes[i].name && strcmp(c->routes[i].name, name) == 0)
			return &c->routes[i];
	return NULL;
}

static const char *new_upstream(const struct dw_config *c, const struct dw_route *r)
{
	return r->mirror && r->mirror->upstream >= 0 ? c->upstreams[r->mirror->upstream].name : NULL;
}

bool cutover_flips(const struct dw_config *running, const struct dw_config *neu, size_t i)
{
	const struct dw_route *r = &neu->routes[i], *o;
	const char *nu, *ou;

	if (r->authority != AUTHORITY_NEW)
		return false;
	o = route_named(running, r->name);
	if (!o || o->authority != AUTHORITY_NEW)
		return true;
	nu = new_upstream(neu, r);
	ou = new_upstream(running, o);
	return !nu || !ou || strcmp(nu, ou) != 0; /* another new system: a flip there */
}

int cutover_gate(const struct dw_config *running, const struct dw_config *neu,
		 const struct cutover_probe *p, struct dw_err *err)
{
	for (size_t i = 0; i < neu->nroutes; i++) {
		const struct dw_route *r = &neu->routes[i];
		const char *up;
		uint64_t queued = 0, dead = 0;
		struct dw_err qerr = { "" };
		char why[256] = "";

		if (!cutover_flips(running, neu, i))
			continue;
		up = new_upstream(neu, r);
		if (!up) { /* config_load refuses this; never let it through */
			dw_err_set(err, "route \"%s\": authority \"new\" without a new system", r->name);
			return -1;
		}
		if (p->waiting(p->arg, up, &queued, &dead, &qerr) < 0) {
			dw_err_set(err,
				   "route \"%s\": authority \"new\" refused: cannot tell whether the "
				   "queue holds records for \"%s\": %s",
				   r->name, up, qerr.msg);
			return -1;
		}
		if (queued || dead) {
			dw_err_set(err,
				   "route \"%s\": authority \"new\" refused: the queue holds %" PRIu64
				   " queued and %" PRIu64 " dead record(s) for \"%s\" (run `dualwrite "
				   "replay`; requeue or purge dead letters first)",
				   r->name, queued, dead, up);
			return -1;
		}
		if (p->tripped && p->tripped(p->arg, up, why, sizeof(why))) {
			dw_err_set(err,
				   "route \"%s\": authority \"new\" refused: a guard of \"%s\" is "
				   "tripped%s%s (reset it with `dualwrite guard reset %s`)",
				   r->name, up, why[0] ? ": " : "", why, up);
			return -1;
		}
	}
	return 0;
}

int cutover_guards_latch_tripped(const char *dir, const char *upstream, char *why,
				 size_t whylen)
{
	char path[4096];
	json_error_t je;
	json_t *doc, *ups, *e;
	FILE *f;
	int r = 0;

	snprintf(path, sizeof(path), "%s/guards.json", dir);
	if (!(f = fopen(path, "re"))) {
		if (errno == ENOENT)
			return 0;
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return -1;
	}
	doc = json_loadf(f, 0, &je);
	fclose(f);
	ups = json_object_get(doc, "upstreams");
	if (!doc || (ups && !json_is_object(ups))) {
		snprintf(why, whylen, "%s: not a latch file: %s", path, doc ? "upstreams" : je.text);
		json_decref(doc);
		return -1;
	}
	e = json_object_get(ups, upstream);
	if (e && json_is_string(json_object_get(e, "state")) &&
	    strcmp(json_string_value(json_object_get(e, "state")), "tripped") == 0) {
		const char *reason = json_string_value(json_object_get(e, "reason"));
		snprintf(why, whylen, "%s", reason ? reason : "tripped");
		r = 1;
	}
	json_decref(doc);
	return r;
}
