/*
 * cutover.c — the reload gate of a write cut-over (see cutover.h).
 */
#include "cutover.h"

#include "guard.h"

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
	struct guard_file f = { 0 };
	struct dw_err err = { "" };
	const struct guard_latch *l;
	int r = guard_file_read(dir, &f, &err);

	if (r < 0) {
		snprintf(why, whylen, "%s", err.msg);
		guard_file_free(&f);
		return -1;
	}
	r = 0;
	if ((l = guard_file_find(&f, upstream)) && l->state == GUARD_TRIPPED) {
		snprintf(why, whylen, "%s", l->reason[0] ? l->reason : "tripped");
		r = 1;
	}
	guard_file_free(&f);
	return r;
}
