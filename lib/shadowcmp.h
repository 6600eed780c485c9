/*
 * shadowcmp — the verdict on one shadowed read (SPEC §7.3): given both
 * sides' answers, match, mismatch or error, and where they differ. Pure:
 * the daemon's shadow (daemon/shadow.c) fetches the other side's answer and
 * counts and logs what this says.
 *
 * Rules, in order:
 *   - a 5xx on either side                    -> error (a side failed)
 *   - different statuses (200 vs 404)         -> mismatch, path
 *                                                "$status(legacy L, new N)"
 *   - the same status, not 2xx                -> match
 *   - both 2xx: each body parsed as JSON (not JSON -> error); the new
 *     system's mapped by the route's `response` when map_new (it did not
 *     map -> error), then compared by jsoncmp with the route's
 *     compare.ignore and compare.unordered   -> match | mismatch, paths
 * The new system's answer is already mapped when it served the read (the
 * proxy mapped it for the client): map_new is false then.
 *
 * Values are made with jansson's allocator: a caller may bracket the call
 * with json_arena_begin/end (nothing outlives it).
 */
#ifndef DW_SHADOWCMP_H
#define DW_SHADOWCMP_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "expr.h"
#include "readstate.h"

struct shadow_answer {
	int status;
	const char *body; /* may be NULL when len is 0 */
	size_t len;
};

/* ctx: the read's request values for the mapping ($path, $query, ...);
 * its response member is set here. paths (cap bytes) gets the differing
 * JSON paths (at most max_paths, space-separated) on a mismatch; why (wlen
 * bytes) says what failed on an error. Both always NUL-terminated. */
enum shadow_result shadowcmp_judge(const struct dw_read *rd, const struct shadow_answer *legacy,
				   const struct shadow_answer *newer, bool map_new,
				   const struct expr_ctx *ctx, unsigned max_paths, char *paths,
				   size_t cap, char *why, size_t wlen);

#endif
