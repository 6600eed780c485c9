/*
 * plan — who answers a read (SPEC §7.1): the legacy or the route's new
 * system, and why. Pure: it reads the route's configuration, its runtime
 * state (the effective weight) and the request's values, and decides; the
 * proxy carries the decision out and asks again (plan_fallback) when the
 * new system fails.
 *
 * The rule, in order:
 *   - held (the effective weight is forced to 0 by a guard)  -> legacy, guard
 *   - bucket(route name, sticky value) < effective weight     -> new, bucket
 *     (no sticky value: a draw from the caller's generator)
 *     unless a write of the read's key is not yet delivered   -> legacy, pinned
 *   - otherwise                                               -> legacy, bucket
 * Weight 0 and 100 decide without evaluating the sticky value.
 *
 * A sticky expression that fails (not missing: e.g. a malformed tenant)
 * sends the read to the legacy: the safe side, never a guessed bucket.
 *
 * Read-your-writes (SPEC §7.2): the read's key is `key`, or `sticky` when
 * the route has no `key`; the caller's pins.pinned(upstream, key) says
 * whether a write of it (or a blind write of the upstream, pinset.h) is not
 * yet delivered. A missing key asks only about blind writes; a key that
 * fails to evaluate counts as pinned (the safe side). The key is evaluated
 * only when it matters: the bucket chose the new system, or the read is
 * shadowed.
 *
 * Shadow (SPEC §7.3): `shadow` percent of reads, drawn per request from the
 * caller's generator, are also sent to the side that does not serve them
 * (plan.shadow). A pinned read is not shadowed (the new system lacks a
 * write the legacy has: a mismatch that says nothing) and says so
 * (shadow_pinned), so the caller counts it skipped.
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
	bool shadow;	 /* also send the read to the other side and compare */
	bool shadow_pinned; /* drawn for a shadow, not shadowed: the key is pinned */
};

/* Whether a read of (upstream name, key) must wait for a write; key NULL:
 * the read has no key (only writes that pin every key matter). */
struct plan_pins {
	bool (*pinned)(void *arg, const char *upstream, const char *key);
	void *arg;
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
/* The same with read-your-writes: pins may be NULL (nothing is pinned). */
void plan_read_pinned(const struct dw_config *c, const struct dw_route *r,
		      const struct expr_ctx *ctx, struct bucket_rng *rng,
		      const struct plan_pins *pins, struct read_plan *out);

/* The new system failed to give an answer the client may see: the legacy
 * answers instead (reason fallback). Only for a plan with side new and the
 * route's fallback on. */
void plan_fallback(const struct dw_config *c, struct read_plan *p);

#endif
