/*
 * plan — who answers a read (SPEC §7.1): the legacy or the route's new
 * system, and why. Pure: it reads the route's configuration, its runtime
 * state (the effective weight) and the request's values, and decides; the
 * proxy carries the decision out and asks again (plan_fallback) when the
 * new system fails.
 *
 * The rule, in order:
 *   - held (the effective weight is forced to 0 by a guard)  -> legacy, guard
 *   - [later: a write of the read's key not yet delivered     -> legacy, pinned]
 *   - bucket(route name, sticky value) < effective weight     -> new, bucket
 *     (no sticky value: a draw from the caller's generator)
 *   - otherwise                                               -> legacy, bucket
 * Weight 0 and 100 decide without evaluating the sticky value.
 *
 * A sticky expression that fails (not missing: e.g. a malformed tenant)
 * sends the read to the legacy: the safe side, never a guessed bucket.
 * [later: the plan also says whether to shadow the read.]
 */
#ifndef DW_PLAN_H
#define DW_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "bucket.h"
#include "config.h"
#include "expr.h"
#include "readstate.h"

struct read_plan {
	enum read_side side;
	enum read_reason reason;
	int upstream;	 /* index into the snapshot's upstreams: who answers */
	uint32_t bucket; /* the bucket drawn or hashed; BUCKET_COUNT when not needed */
	uint32_t weight; /* the effective weight the decision used (hundredths) */
};

/*
 * Decide for a read on route r (r->read must be set) of snapshot c. ctx
 * gives the request's values ($path, $query, $header, $tenant); rng is the
 * calling thread's generator. The effective weight comes from
 * r->read->state, or is the configured one when there is no state (a
 * snapshot no daemon bound).
 */
void plan_read(const struct dw_config *c, const struct dw_route *r, const struct expr_ctx *ctx,
	       struct bucket_rng *rng, struct read_plan *out);

/* The new system failed to give an answer the client may see: the legacy
 * answers instead (reason fallback). Only for a plan with side new and the
 * route's fallback on. */
void plan_fallback(const struct dw_config *c, struct read_plan *p);

#endif
