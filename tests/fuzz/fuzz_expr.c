/*
 * fuzz_expr — libFuzzer target for the value-expression compiler and
 * evaluator (lib/expr.c): operators, interpolation, conversions and each
 * mappings.
 *
 * Input: line 1 is an expression as written in a configuration string; line
 * 2, when not empty, an `each` source; the rest a JSON document that is the
 * request, the response, the row and (outside mappings) $item. The
 * expression is compiled alone (with and without $item allowed) and as the
 * body member of a mapping { each = line 2; body = { x = line 1; }; }.
 * Checked: a failed compile says why; $item never compiles where it is not
 * allowed; evaluation returns one of OK (with a value), MISSING (without) or
 * ERROR (with a reason), the same twice in a row, and never changes the
 * document; string evaluation agrees with it. Seeds: tests/fuzz/corpus/expr.
 * Without libFuzzer, replay_main.c drives it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz_expr: %s:%d: check failed: %s\n",        \
				__FILE__, __LINE__, #cond);                            \
			abort();                                                       \
		}                                                                      \
	} while (0)

static const char *header(void *arg, const char *name, size_t *len)
{
	(void)arg;
	if (strcmp(name, "X-Test") != 0)
		return NULL;
	*len = 2;
	return "hv";
}

/* Evaluate e twice; both outcomes must agree and be well-formed. */
static void eval_checked(const struct expr *e, const struct expr_ctx *ctx)
{
	struct dw_err err1 = { { 0 } }, err2 = { { 0 } };
	json_t *a = NULL, *b = NULL;
	char *s = NULL;
	int r1 = expr_eval(e, ctx, &a, &err1);
	int r2 = expr_eval(e, ctx, &b, &err2);

	CHECK(r1 == EXPR_OK || r1 == EXPR_MISSING || r1 == EXPR_ERROR);
	CHECK(r1 == r2);
	if (r1 == EXPR_OK) {
		CHECK(a && b && json_equal(a, b));
		char *text = json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY);
		CHECK(text);
		free(text);
	} else {
		CHECK(!a && !b);
	}
	if (r1 == EXPR_ERROR)
		CHECK(err1.msg[0] && strcmp(err1.msg, err2.msg) == 0);
	struct dw_err err3 = { { 0 } };
	int r3 = expr_eval_string(e, ctx, &s, &err3);
	CHECK(r3 == EXPR_OK || r3 == EXPR_MISSING || r3 == EXPR_ERROR);
	if (r1 == EXPR_MISSING)
		CHECK(r3 == EXPR_MISSING);
	CHECK((r3 == EXPR_OK) == (s != NULL));
	if (r3 == EXPR_ERROR)
		CHECK(err3.msg[0]);
	free(s);
	json_decref(a);
	json_decref(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;
	const char *nl1 = memchr(p, '\n', size);
	const char *l2 = nl1 ? nl1 + 1 : end;
	const char *nl2 = memchr(l2, '\n', (size_t)(end - l2));
	const char *rest = nl2 ? nl2 + 1 : end;
	char *line1 = strndup(p, (size_t)((nl1 ? nl1 : end) - p));
	char *line2 = strndup(l2, (size_t)((nl2 ? nl2 : end) - l2));
	json_error_t jerr;
	json_t *doc = json_loadb(rest, (size_t)(end - rest), JSON_DECODE_ANY, &jerr);
	json_t *before = doc ? json_deep_copy(doc) : NULL;
	static const char *const names[] = { "id", "type" };
	static const char *const values[] = { "42", "a/b" };
	struct expr_ctx ctx = { .request = doc, .response = doc, .row = doc, .item = doc,
				.path_names = names, .path_values = values, .npath = 2,
				.query = "a=1&b=%41", .query_len = 9, .header = header,
				.tenant = "t1", .now = "2024-01-01T00:00:00Z" };
	struct dw_err err = { { 0 } };
	struct expr *e;

	CHECK(line1 && line2);
	/* alone, $item allowed (as inside an each body) */
	e = expr_compile_str(line1, EXPR_SRC_HTTP | EXPR_SRC_ROW | EXPR_SRC_ITEM, &err);
	if (e) {
		eval_checked(e, &ctx);
		ctx.tenant = NULL; /* a bad tenant: an error wherever $tenant is used */
		eval_checked(e, &ctx);
		ctx.tenant = "t1";
		expr_free(e);
	} else {
		CHECK(err.msg[0]);
	}
	/* without $item: it must not compile */
	err.msg[0] = '\0';
	e = expr_compile_str(line1, EXPR_SRC_HTTP, &err);
	if (e) {
		CHECK(!(expr_sources(e) & (EXPR_SRC_ITEM | EXPR_SRC_ROW)));
		expr_free(e);
	} else {
		CHECK(err.msg[0]);
	}

	/* as a mapping */
	config_t cfg;
	config_init(&cfg);
	config_setting_t *m = config_setting_add(config_root_setting(&cfg), "m", CONFIG_TYPE_GROUP);
	if (line2[0])
		config_setting_set_string(config_setting_add(m, "each", CONFIG_TYPE_STRING), line2);
	config_setting_t *body = config_setting_add(m, "body", CONFIG_TYPE_GROUP);
	config_setting_set_string(config_setting_add(body, "x", CONFIG_TYPE_STRING), line1);
	struct expr_opts o = { .allowed = EXPR_SRC_HTTP };
	err.msg[0] = '\0';
	e = (struct expr *)1;
	if (expr_compile_mapping(m, &o, &e, &err) == 0) {
		CHECK(e);
		ctx.item = NULL;
		eval_checked(e, &ctx);
		expr_free(e);
	} else {
		CHECK(!e && err.msg[0]);
	}
	config_destroy(&cfg);

	if (doc)
		CHECK(json_equal(doc, before));
	json_decref(doc);
	json_decref(before);
	free(line1);
	free(line2);
	return 0;
}
