/*
 * shadowcmp.c — the verdict of shadowcmp.h.
 */
#include "shadowcmp.h"

#include <stdio.h>
#include <string.h>

#include "jsoncmp.h"
#include "jsonfast.h"

/* Parse one side's answer; NULL with why when it is not JSON. */
static json_t *load(const struct shadow_answer *a, char *why, size_t wlen, const char *side)
{
	json_error_t je;
	json_t *doc = jsonfast_loadb(a->body ? a->body : "", a->len, &je);

	if (!doc)
		snprintf(why, wlen, "%s answer is not JSON: %s", side, je.text);
	return doc;
}

/* The new system's answer mapped by the route's response (a new reference). */
static json_t *map(const struct dw_read *rd, json_t *doc, const struct expr_ctx *ctx0, char *why,
		   size_t wlen)
{
	struct expr_ctx ctx = *ctx0;
	struct dw_err err = { "" };
	json_t *out = NULL;
	int rc;

	if (!rd->response)
		return json_incref(doc);
	ctx.response = doc;
	rc = expr_eval(rd->response, &ctx, &out, &err);
	if (rc != EXPR_OK) {
		snprintf(why, wlen, "new system's answer does not map: %s",
			 rc == EXPR_MISSING ? "the mapping found nothing" : err.msg);
		json_decref(out);
		return NULL;
	}
	return out;
}

enum shadow_result shadowcmp_judge(const struct dw_read *rd, const struct shadow_answer *legacy,
				   const struct shadow_answer *newer, bool map_new,
				   const struct expr_ctx *ctx, unsigned max_paths, char *paths,
				   size_t cap, char *why, size_t wlen)
{
	struct jsoncmp_opts o = { (const char *const *)rd->compare_ignore, rd->ncompare_ignore,
				  rd->compare_unordered, max_paths };
	json_t *l = NULL, *n = NULL, *m = NULL;
	enum shadow_result r = SHADOW_ERROR;

	if (cap)
		paths[0] = '\0';
	if (wlen)
		why[0] = '\0';
	if (newer->status >= 500 || legacy->status >= 500) {
		snprintf(why, wlen, "status legacy %d, new %d", legacy->status, newer->status);
		return SHADOW_ERROR;
	}
	if (legacy->status != newer->status) {
		snprintf(paths, cap, "$status(legacy %d, new %d)", legacy->status, newer->status);
		return SHADOW_MISMATCH;
	}
	if (legacy->status < 200 || legacy->status > 299)
		return SHADOW_MATCH;
	if ((l = load(legacy, why, wlen, "legacy's")) &&
	    (n = load(newer, why, wlen, "new system's")) &&
	    (m = map_new ? map(rd, n, ctx, why, wlen) : json_incref(n)))
		r = jsoncmp(l, m, &o, paths, cap) ? SHADOW_MISMATCH : SHADOW_MATCH;
	json_decref(l);
	json_decref(n);
	json_decref(m);
	return r;
}
