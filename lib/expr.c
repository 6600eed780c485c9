/*
 * expr.c — value expressions and path templates (SPEC §3).
 *
 * An expression is a small tree compiled once from the configuration:
 * literals (prebuilt jansson values), references into one of the sources of
 * a write ($request.a.b, $path.id, $tenant, ...), objects and arrays of
 * expressions, and mirror documents (a base document with top-level names
 * dropped and members merged over it). Evaluation only reads the context, so
 * a compiled expression is shared by every worker thread without locks.
 *
 * "Missing" is a value, not an error: a reference to an absent field makes
 * the enclosing object member (or array element) disappear, and only at the
 * top of an expression is it reported to the caller as EXPR_MISSING. Errors
 * are reserved for writes whose mirror must not be built at all (a bad
 * tenant, a base that is not an object, text that is not UTF-8).
 */
#include "expr.h"
#include "http_parse.h"
#include "jsonfast.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * N_COALESCE: items, the first present and not null; N_FUNC: a conversion
 * (fn) of items[0]; N_CAT: an interpolated string, items are string literals
 * and expressions; N_EACH: base is the list, body the element's mapping.
 */
enum node_kind { N_LIT, N_REF, N_OBJ, N_ARR, N_DOC, N_COALESCE, N_FUNC, N_CAT, N_EACH };

enum ref_src { R_REQUEST, R_RESPONSE, R_PATH, R_QUERY, R_HEADER, R_TENANT, R_NOW, R_ROW, R_ITEM };

enum func { F_STRING, F_NUMBER, F_JSON };

static const char *const func_names[] = { "string", "number", "json" };

static const struct {
	const char *name;
	enum ref_src src;
	unsigned bit;
} ref_sources[] = {
	{ "request", R_REQUEST, EXPR_SRC_REQUEST }, { "response", R_RESPONSE, EXPR_SRC_RESPONSE },
	{ "path", R_PATH, EXPR_SRC_PATH },	    { "query", R_QUERY, EXPR_SRC_QUERY },
	{ "header", R_HEADER, EXPR_SRC_HEADER },    { "tenant", R_TENANT, EXPR_SRC_TENANT },
	{ "now", R_NOW, EXPR_SRC_NOW },		    { "row", R_ROW, EXPR_SRC_ROW },
	{ "item", R_ITEM, EXPR_SRC_ITEM },
};

struct expr {
	enum node_kind kind;
	unsigned sources;
	json_t *lit; /* N_LIT */

	/* N_REF: the source and, for documents, the path into it; for
	 * $path/$query/$header the single name is comp[0]. */
	enum ref_src src;
	enum func fn; /* N_FUNC */
	char *text; /* as written, for messages */
	char **comp;
	size_t ncomp;

	/* N_OBJ (keys set) and N_ARR */
	size_t n;
	char **keys;
	struct expr **items;

	/* N_DOC */
	struct expr *base; /* may be NULL */
	char **drop;
	size_t ndrop;
	struct expr *body; /* an N_OBJ, may be NULL */
};

struct tpart {
	char *lit;	/* literal text, or NULL */
	struct expr *e; /* a placeholder */
	char *text;	/* the placeholder as written, without braces */
};

struct tmpl {
	size_t n;
	struct tpart *parts;
	unsigned sources;
};

/* ---------------------------------------------------------------- freeing */

void expr_free(struct expr *e)
{
	if (!e)
		return;
	json_decref(e->lit);
	free(e->text);
	for (size_t i = 0; i < e->ncomp; i++)
		free(e->comp[i]);
	free(e->comp);
	for (size_t i = 0; i < e->n; i++) {
		if (e->keys)
			free(e->keys[i]);
		expr_free(e->items[i]);
	}
	free(e->keys);
	free(e->items);
	expr_free(e->base);
	for (size_t i = 0; i < e->ndrop; i++)
		free(e->drop[i]);
	free(e->drop);
	expr_free(e->body);
	free(e);
}

void tmpl_free(struct tmpl *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++) {
		free(t->parts[i].lit);
		free(t->parts[i].text);
		expr_free(t->parts[i].e);
	}
	free(t->parts);
	free(t);
}

unsigned expr_sources(const struct expr *e)
{
	return e ? e->sources : 0;
}

/* Appends t to buf[n..cap) (cut to fit); returns the new length. */
static size_t prefix_append(char *buf, size_t n, size_t cap, const char *t)
{
	size_t l = strlen(t);

	if (l > cap - 1 - n)
		l = cap - 1 - n;
	memcpy(buf + n, t, l);
	buf[n + l] = '\0';
	return n + l;
}

size_t expr_literal_prefix(const struct expr *e, char *buf, size_t cap)
{
	size_t n = 0;

	if (!cap)
		return 0;
	buf[0] = '\0';
	if (e && e->kind == N_LIT && json_is_string(e->lit))
		return prefix_append(buf, 0, cap, json_string_value(e->lit));
	if (e && e->kind == N_CAT) /* its literal items up to the first placeholder */
		for (size_t i = 0; i < e->n && e->items[i]->kind == N_LIT &&
				   json_is_string(e->items[i]->lit);
		     i++)
			n = prefix_append(buf, n, cap, json_string_value(e->items[i]->lit));
	return n;
}

unsigned tmpl_sources(const struct tmpl *t)
{
	return t ? t->sources : 0;
}

/* ---------------------------------------------------------------- compiling */

static bool is_ident(const char *s, size_t len)
{
	if (len == 0 || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z') || s[0] == '_'))
		return false;
	for (size_t i = 1; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return false;
	}
	return true;
}


static struct expr *node_new(enum node_kind k)
{
	struct expr *e = dw_calloc(1, sizeof(*e));
	e->kind = k;
	return e;
}

static struct expr *lit_new(json_t *v)
{
	struct expr *e = node_new(N_LIT);
	e->lit = v;
	return e;
}

/* Compile one "$..." reference (s starts with '$' and is not "$$..."). On
 * error sets err to the bare reason. */
static struct expr *compile_ref(const char *s, const struct expr_opts *o, struct dw_err *err)
{
	const char *name = s + 1, *dot = strchr(name, '.');
	size_t nlen = dot ? (size_t)(dot - name) : strlen(name);
	struct expr *e;
	size_t k;

	for (k = 0; k < DW_ARRAY_LEN(ref_sources); k++)
		if (strlen(ref_sources[k].name) == nlen && memcmp(ref_sources[k].name, name, nlen) == 0)
			break;
	if (k == DW_ARRAY_LEN(ref_sources)) {
		dw_err_set(err,
			   "bad expression \"%s\": unknown source \"$%.*s\" (known: $request, "
			   "$response, $path, $query, $header, $tenant, $now, $row, $item; \"$$\" "
			   "for a literal \"$\")",
			   s, (int)nlen, name);
		return NULL;
	}
	if (ref_sources[k].src == R_ITEM && !(o->allowed & EXPR_SRC_ITEM)) {
		dw_err_set(err,
			   "bad expression \"%s\": $item is only available in the body of an "
			   "\"each\" mapping",
			   s);
		return NULL;
	}
	if (!(o->allowed & ref_sources[k].bit)) {
		dw_err_set(err, "bad expression \"%s\": $%s is not available here", s,
			   ref_sources[k].name);
		return NULL;
	}
	e = node_new(N_REF);
	e->src = ref_sources[k].src;
	e->sources = ref_sources[k].bit;
	e->text = dw_strdup(s);
	switch (e->src) {
	case R_REQUEST:
	case R_RESPONSE:
	case R_ROW:
	case R_ITEM:
		while (dot) {
			const char *c = dot + 1, *next = strchr(c, '.');
			size_t clen = next ? (size_t)(next - c) : strlen(c);
			if (clen == 0) {
				dw_err_set(err, "bad expression \"%s\": empty field name", s);
				goto fail;
			}
			e->comp = dw_realloc(e->comp, (e->ncomp + 1) * sizeof(*e->comp));
			e->comp[e->ncomp++] = dw_strndup(c, clen);
			dot = next;
		}
		break;
	case R_PATH:
	case R_QUERY:
	case R_HEADER:
		if (!dot || !dot[1]) {
			dw_err_set(err, "bad expression \"%s\": $%s needs a name ($%s.NAME)", s,
				   ref_sources[k].name, ref_sources[k].name);
			goto fail;
		}
		if (e->src == R_PATH && !is_ident(dot + 1, strlen(dot + 1))) {
			dw_err_set(err, "bad expression \"%s\": bad capture name \"%s\"", s, dot + 1);
			goto fail;
		}
		if (e->src == R_HEADER && !http_is_token(dot + 1, strlen(dot + 1))) {
			dw_err_set(err, "bad expression \"%s\": bad header name \"%s\"", s, dot + 1);
			goto fail;
		}
		if (e->src == R_PATH && o->check_path) {
			size_t i;
			for (i = 0; i < o->npath; i++)
				if (strcmp(o->path_names[i], dot + 1) == 0)
					break;
			if (i == o->npath) {
				dw_err_set(err,
					   "bad expression \"%s\": \"%s\" is not a capture of the "
					   "route's match",
					   s, dot + 1);
				goto fail;
			}
		}
		e->comp = dw_malloc(sizeof(*e->comp));
		e->comp[0] = dw_strdup(dot + 1);
		e->ncomp = 1;
		break;
	case R_TENANT:
	case R_NOW:
		if (dot) {
			dw_err_set(err, "bad expression \"%s\": $%s takes no field", s,
				   ref_sources[k].name);
			goto fail;
		}
		break;
	}
	return e;
fail:
	expr_free(e);
	return NULL;
}

/*
 * The operator grammar, inside a string that starts with "$" (and inside
 * "${...}" in any other string):
 *
 *   expr    := operand ( "??" operand )*
 *   operand := "$" source[.field...]         a reference (compile_ref)
 *            | "$" name "(" expr ")"          a conversion: string, number, json
 *            | "'" text "'"                   quoted text; '' is one quote
 *            | number | true | false | null   JSON literals
 *            | {} | []                        an empty object, an empty list
 *
 * A reference ends at white space or at one of , ( ) { } ' and "??". The
 * parser never backtracks; every error names the whole string.
 */
struct parser {
	const char *whole; /* the string, for messages */
	const char *p;
	struct expr_opts *o;
	struct dw_err *err;
};

static bool ref_end(const char *p)
{
	return !*p || strchr(" \t\r\n,(){}'", *p) || (p[0] == '?' && p[1] == '?');
}

static void skip_ws(struct parser *ps)
{
	while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r' || *ps->p == '\n')
		ps->p++;
}

static void *parse_fail(struct parser *ps, const char *why)
{
	size_t at = (size_t)(ps->p - ps->whole);

	dw_err_set(ps->err, "bad expression \"%s\": %s at offset %zu", ps->whole, why, at);
	return NULL;
}

static struct expr *parse_expr(struct parser *ps, int depth);

static struct expr *parse_quoted(struct parser *ps)
{
	char *buf = dw_malloc(strlen(ps->p) + 1), *q = buf;
	json_t *v;

	ps->p++;
	for (;;) {
		if (!*ps->p) {
			free(buf);
			return parse_fail(ps, "unterminated 'quoted text'");
		}
		if (*ps->p == '\'') {
			if (ps->p[1] != '\'')
				break;
			ps->p++;
		}
		*q++ = *ps->p++;
	}
	ps->p++;
	v = json_stringn(buf, (size_t)(q - buf));
	free(buf);
	if (!v)
		return parse_fail(ps, "quoted text is not valid UTF-8");
	return lit_new(v);
}

/* A JSON number, strictly: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? ;
 * integers that do not fit are reals. Returns NULL on anything else. */
static json_t *number_value(const char *s, size_t len)
{
	size_t i = 0;
	bool integer = true;
	char buf[64];
	double d;

	if (len == 0 || len >= sizeof(buf))
		return NULL;
	if (s[i] == '-')
		i++;
	if (i == len || s[i] < '0' || s[i] > '9')
		return NULL;
	if (s[i] == '0')
		i++;
	else
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
	if (i < len && s[i] == '.') {
		integer = false;
		if (++i == len || s[i] < '0' || s[i] > '9')
			return NULL;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	if (i < len && (s[i] == 'e' || s[i] == 'E')) {
		integer = false;
		if (++i < len && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i == len || s[i] < '0' || s[i] > '9')
			return NULL;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	if (i != len)
		return NULL;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	if (integer) {
		long long ll = strtoll(buf, NULL, 10);
		if (errno == 0)
			return json_integer(ll);
		errno = 0;
	}
	d = strtod(buf, NULL);
	if (errno == ERANGE && (d > 1 || d < -1))
		return NULL; /* out of range: not a finite number */
	return json_real(d);
}

static struct expr *parse_func(struct parser *ps, const char *name, size_t nlen, int depth)
{
	struct expr *e, *arg;
	size_t k;

	for (k = 0; k < DW_ARRAY_LEN(func_names); k++)
		if (strlen(func_names[k]) == nlen && memcmp(func_names[k], name, nlen) == 0)
			break;
	if (k == DW_ARRAY_LEN(func_names)) {
		dw_err_set(ps->err,
			   "bad expression \"%s\": unknown operator \"$%.*s(...)\" (known: "
			   "$string, $number, $json)",
			   ps->whole, (int)nlen, name);
		return NULL;
	}
	ps->p++; /* '(' */
	arg = parse_expr(ps, depth + 1);
	if (!arg)
		return NULL;
	skip_ws(ps);
	if (*ps->p != ')') {
		expr_free(arg);
		return parse_fail(ps, *ps->p == ',' ? "an operator takes one value"
						    : "expected ')'");
	}
	ps->p++;
	e = node_new(N_FUNC);
	e->fn = (enum func)k;
	e->text = dw_strndup(name, nlen);
	e->n = 1;
	e->items = dw_calloc(1, sizeof(struct expr *));
	e->items[0] = arg;
	e->sources = arg->sources;
	return e;
}

static struct expr *parse_operand(struct parser *ps, int depth)
{
	const char *start;
	size_t len;

	skip_ws(ps);
	start = ps->p;
	if (*ps->p == '\'')
		return parse_quoted(ps);
	if (ps->p[0] == '{' && ps->p[1] == '}') {
		ps->p += 2;
		return lit_new(json_object());
	}
	if (ps->p[0] == '[' && ps->p[1] == ']') {
		ps->p += 2;
		return lit_new(json_array());
	}
	if (*ps->p == '$') {
		struct expr *e;
		char *tok;
		size_t nlen = 0;
		while (ps->p[1 + nlen] == '_' || (ps->p[1 + nlen] >= 'a' && ps->p[1 + nlen] <= 'z') ||
		       (ps->p[1 + nlen] >= 'A' && ps->p[1 + nlen] <= 'Z') ||
		       (nlen > 0 && ps->p[1 + nlen] >= '0' && ps->p[1 + nlen] <= '9'))
			nlen++;
		if (ps->p[1 + nlen] == '(') {
			ps->p += 1 + nlen;
			return parse_func(ps, start + 1, nlen, depth);
		}
		while (!ref_end(ps->p))
			ps->p++;
		tok = dw_strndup(start, (size_t)(ps->p - start));
		e = compile_ref(tok, ps->o, ps->err);
		free(tok);
		return e;
	}
	while (!ref_end(ps->p))
		ps->p++;
	len = (size_t)(ps->p - start);
	if (len == 4 && memcmp(start, "true", 4) == 0)
		return lit_new(json_true());
	if (len == 5 && memcmp(start, "false", 5) == 0)
		return lit_new(json_false());
	if (len == 4 && memcmp(start, "null", 4) == 0)
		return lit_new(json_null());
	if (len > 0) {
		json_t *v = number_value(start, len);
		if (v)
			return lit_new(v);
	}
	ps->p = start;
	return parse_fail(ps, "expected a $reference, $operator(...), 'quoted text', a number, "
			      "true, false, null, {} or []");
}

static struct expr *parse_expr(struct parser *ps, int depth)
{
	struct expr *first, *c;

	if (depth > 32)
		return parse_fail(ps, "nested too deeply");
	first = parse_operand(ps, depth);
	if (!first)
		return NULL;
	skip_ws(ps);
	if (!(ps->p[0] == '?' && ps->p[1] == '?'))
		return first;
	c = node_new(N_COALESCE);
	c->items = dw_calloc(1, sizeof(struct expr *));
	c->items[c->n++] = first;
	c->sources = first->sources;
	while (ps->p[0] == '?' && ps->p[1] == '?') {
		struct expr *next;
		ps->p += 2;
		next = parse_operand(ps, depth);
		if (!next) {
			expr_free(c);
			return NULL;
		}
		c->items = dw_realloc(c->items, (c->n + 1) * sizeof(struct expr *));
		c->items[c->n++] = next;
		c->sources |= next->sources;
		skip_ws(ps);
	}
	return c;
}

static int eval_node(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		     struct dw_err *err);

/* Conversions whose operand is a literal are done once, here: a bad one
 * ($number('abc')) is then a configuration error. */
static struct expr *fold_constants(struct expr *e, struct parser *ps)
{
	static const struct expr_ctx none;
	json_t *v = NULL;

	if (e->kind == N_FUNC) {
		e->items[0] = fold_constants(e->items[0], ps);
		if (!e->items[0]) {
			expr_free(e);
			return NULL;
		}
		if (e->items[0]->kind != N_LIT)
			return e;
		if (eval_node(e, &none, &v, ps->err) != EXPR_OK) {
			dw_err_prefix(ps->err, "bad expression \"%s\"", ps->whole);
			expr_free(e);
			return NULL;
		}
		expr_free(e);
		return lit_new(v);
	}
	for (size_t i = 0; e->kind == N_COALESCE && i < e->n; i++) {
		e->items[i] = fold_constants(e->items[i], ps);
		if (!e->items[i]) {
			expr_free(e);
			return NULL;
		}
	}
	return e;
}

static struct expr *parse_whole(const char *s, struct expr_opts *o, struct dw_err *err)
{
	struct parser ps = { .whole = s, .p = s, .o = o, .err = err };
	struct expr *e = parse_expr(&ps, 0);

	if (!e)
		return NULL;
	skip_ws(&ps);
	if (*ps.p) {
		expr_free(e);
		return parse_fail(&ps, ps.p[0] == '?' ? "expected \"??\"" : "unexpected text");
	}
	if (e->kind == N_FUNC || e->kind == N_COALESCE)
		e = fold_constants(e, &ps);
	return e;
}

static void cat_add(struct expr *c, struct expr *part)
{
	c->items = dw_realloc(c->items, (c->n + 1) * sizeof(struct expr *));
	c->items[c->n++] = part;
	c->sources |= part->sources;
}

/* Literal text in an interpolated string, as a string literal node. */
static bool cat_lit(struct expr *c, const char *s, size_t len, struct dw_err *err)
{
	json_t *v;

	if (len == 0)
		return true;
	v = json_stringn(s, len);
	if (!v) {
		dw_err_set(err, "not valid UTF-8");
		return false;
	}
	cat_add(c, lit_new(v));
	return true;
}

/* A string that is not an expression: literal text, "${expr}" placeholders
 * and "$${" for a literal "${". s is whole, or whole + 2 after a leading
 * "$$" (a literal "$"). */
static struct expr *compile_text(const char *whole, const char *s, struct expr_opts *o,
				 struct dw_err *err)
{
	struct expr *c;
	const char *p = s, *lit = s;

	if (!strstr(s, "${")) {
		json_t *v = json_string(s != whole ? whole + 1 : whole);
		if (!v) {
			dw_err_set(err, "not valid UTF-8");
			return NULL;
		}
		return lit_new(v);
	}
	c = node_new(N_CAT);
	c->items = dw_calloc(1, sizeof(struct expr *));
	if (s != whole && !cat_lit(c, "$", 1, err))
		goto fail;
	while ((p = strstr(p, "${"))) {
		if (p > s && p[-1] == '$' && p - 1 >= lit) {
			/* "$${": a literal "${" */
			if (!cat_lit(c, lit, (size_t)(p - 1 - lit), err) || !cat_lit(c, "${", 2, err))
				goto fail;
			lit = p = p + 2;
			continue;
		}
		if (!cat_lit(c, lit, (size_t)(p - lit), err))
			goto fail;
		struct parser ps = { .whole = whole, .p = p + 2, .o = o, .err = err };
		skip_ws(&ps);
		if (*ps.p == '}') {
			dw_err_set(err, "bad expression \"%s\": empty \"${}\"", whole);
			goto fail;
		}
		struct expr *e = parse_expr(&ps, 0);
		if (!e)
			goto fail;
		skip_ws(&ps);
		if (*ps.p != '}') {
			expr_free(e);
			parse_fail(&ps, *ps.p ? "expected '}'" : "unclosed \"${\"");
			goto fail;
		}
		if (e->kind == N_FUNC || e->kind == N_COALESCE)
			e = fold_constants(e, &ps);
		if (!e)
			goto fail;
		cat_add(c, e);
		lit = p = ps.p + 1;
	}
	if (!cat_lit(c, lit, strlen(lit), err))
		goto fail;
	return c;
fail:
	expr_free(c);
	return NULL;
}

static struct expr *compile_string(const char *s, struct expr_opts *o, struct dw_err *err)
{
	if (s[0] == '$' && s[1] != '$' && s[1] != '{')
		return parse_whole(s, o, err);
	return compile_text(s, s[0] == '$' && s[1] == '$' ? s + 2 : s, o, err);
}

/* where: this setting's path relative to the compiled root, for messages. */
static struct expr *compile_setting(const config_setting_t *s, const char *where,
				    struct expr_opts *o, struct dw_err *err)
{
	struct expr *e = NULL;
	char sub[256];
	int n;

	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
		return lit_new(json_integer(config_setting_get_int(s)));
	case CONFIG_TYPE_INT64:
		return lit_new(json_integer(config_setting_get_int64(s)));
	case CONFIG_TYPE_FLOAT:
		return lit_new(json_real(config_setting_get_float(s)));
	case CONFIG_TYPE_BOOL:
		return lit_new(json_boolean(config_setting_get_bool(s)));
	case CONFIG_TYPE_STRING:
		e = compile_string(config_setting_get_string(s), o, err);
		if (!e)
			goto fail;
		return e;
	case CONFIG_TYPE_GROUP:
	case CONFIG_TYPE_LIST:
	case CONFIG_TYPE_ARRAY: {
		bool group = config_setting_is_group(s);
		e = node_new(group ? N_OBJ : N_ARR);
		n = config_setting_length(s);
		e->items = dw_calloc((size_t)n + 1, sizeof(struct expr *));
		if (group)
			e->keys = dw_calloc((size_t)n + 1, sizeof(*e->keys));
		for (int i = 0; i < n; i++) {
			const config_setting_t *m = config_setting_get_elem(s, (unsigned)i);
			struct expr *it;
			if (group)
				snprintf(sub, sizeof(sub), "%s%s%s", where, *where ? "." : "",
					 config_setting_name(m));
			else
				snprintf(sub, sizeof(sub), "%s[%d]", where, i);
			it = compile_setting(m, sub, o, err);
			if (!it) {
				expr_free(e);
				return NULL; /* err and line already name the member */
			}
			if (group)
				e->keys[e->n] = dw_strdup(config_setting_name(m));
			e->items[e->n++] = it;
			e->sources |= it->sources;
		}
		return e;
	}
	default:
		dw_err_set(err, "unsupported value");
		goto fail;
	}
fail:
	o->line = config_setting_source_line(s);
	if (*where)
		dw_err_prefix(err, "%s", where);
	return NULL;
}

struct expr *expr_compile_opts(const config_setting_t *s, struct expr_opts *o, struct dw_err *err)
{
	const char *name = config_setting_name(s);
	o->line = 0;
	return compile_setting(s, name ? name : "", o, err);
}

struct expr *expr_compile(const config_setting_t *s, unsigned allowed, struct dw_err *err)
{
	struct expr_opts o = { .allowed = allowed };
	struct expr *e = expr_compile_opts(s, &o, err);

	if (!e && o.line > 0)
		dw_err_prefix(err, "line %d", o.line);
	return e;
}

struct expr *expr_compile_str(const char *s, unsigned allowed, struct dw_err *err)
{
	struct expr_opts o = { .allowed = allowed };
	return compile_string(s, &o, err);
}

struct expr *expr_compile_document_opts(const config_setting_t *base,
					const config_setting_t *drop,
					const config_setting_t *body, struct expr_opts *o,
					struct dw_err *err)
{
	struct expr *d = node_new(N_DOC);

	o->line = 0;
	if (!base && !drop && !body) {
		dw_err_set(err, "a document needs a base or a body");
		goto fail;
	}
	if (drop && !base) {
		o->line = config_setting_source_line(drop);
		dw_err_set(err, "drop: \"drop\" needs a \"base\" to drop from");
		goto fail;
	}
	if (base) {
		if (config_setting_type(base) == CONFIG_TYPE_STRING) {
			const char *b = config_setting_get_string(base);
			d->base = compile_string(b, o, err);
			if (!d->base) {
				o->line = config_setting_source_line(base);
				dw_err_prefix(err, "base");
				goto fail;
			}
			if (d->base->kind != N_REF ||
			    !(d->base->src == R_REQUEST || d->base->src == R_RESPONSE ||
			      d->base->src == R_ROW || d->base->src == R_ITEM)) {
				o->line = config_setting_source_line(base);
				dw_err_set(err,
					   "base: \"%s\" is not a document (use $request, $response, "
					   "$item or a group)",
					   b);
				goto fail;
			}
		} else if (config_setting_is_group(base)) {
			d->base = compile_setting(base, "base", o, err);
			if (!d->base)
				goto fail;
		} else {
			o->line = config_setting_source_line(base);
			dw_err_set(err, "base: must be \"$request\", \"$response\" or a group");
			goto fail;
		}
		d->sources |= d->base->sources;
	}
	if (drop) {
		int n;
		if (!config_setting_is_list(drop) && !config_setting_is_array(drop)) {
			o->line = config_setting_source_line(drop);
			dw_err_set(err, "drop: must be a list of field names");
			goto fail;
		}
		n = config_setting_length(drop);
		d->drop = dw_calloc((size_t)n + 1, sizeof(*d->drop));
		for (int i = 0; i < n; i++) {
			const config_setting_t *m = config_setting_get_elem(drop, (unsigned)i);
			if (config_setting_type(m) != CONFIG_TYPE_STRING) {
				o->line = config_setting_source_line(m);
				dw_err_set(err, "drop[%d]: must be a string (a field name)", i);
				goto fail;
			}
			d->drop[d->ndrop++] = dw_strdup(config_setting_get_string(m));
		}
	}
	if (body) {
		if (!config_setting_is_group(body)) {
			o->line = config_setting_source_line(body);
			dw_err_set(err, "body: must be a group when used with base");
			goto fail;
		}
		d->body = compile_setting(body, "body", o, err);
		if (!d->body)
			goto fail;
		d->sources |= d->body->sources;
	}
	return d;
fail:
	expr_free(d);
	return NULL;
}

struct expr *expr_compile_document(const config_setting_t *base, const config_setting_t *drop,
				   const config_setting_t *body, unsigned allowed,
				   struct dw_err *err)
{
	struct expr_opts o = { .allowed = allowed };
	struct expr *e = expr_compile_document_opts(base, drop, body, &o, err);

	if (!e && o.line > 0)
		dw_err_prefix(err, "line %d", o.line);
	return e;
}


/* The element (or the whole) document of a mapping from base/drop/body. */
static struct expr *compile_body(const config_setting_t *base, const config_setting_t *drop,
				 const config_setting_t *body, struct expr_opts *o,
				 struct dw_err *err)
{
	if (base || drop || (body && config_setting_is_group(body)))
		return expr_compile_document_opts(base, drop, body, o, err);
	return expr_compile_opts(body, o, err);
}

int expr_compile_mapping(const config_setting_t *g, struct expr_opts *o, struct expr **out,
			 struct dw_err *err)
{
	const config_setting_t *each = config_setting_get_member(g, "each");
	const config_setting_t *base = config_setting_get_member(g, "base");
	const config_setting_t *drop = config_setting_get_member(g, "drop");
	const config_setting_t *body = config_setting_get_member(g, "body");
	unsigned allowed = o->allowed;
	struct expr *src, *elem, *e;

	*out = NULL;
	o->line = 0;
	if (!each) {
		if (!base && !drop && !body)
			return 0;
		*out = compile_body(base, drop, body, o, err);
		return *out ? 0 : -1;
	}
	o->line = config_setting_source_line(each);
	if (config_setting_type(each) != CONFIG_TYPE_STRING) {
		dw_err_set(err, "each: must be an expression giving a list, e.g. \"$request.items\"");
		return -1;
	}
	o->allowed &= ~(unsigned)EXPR_SRC_ITEM; /* no nested each: $item is one element */
	src = compile_string(config_setting_get_string(each), o, err);
	o->allowed = allowed;
	if (!src) {
		o->line = config_setting_source_line(each);
		dw_err_prefix(err, "each");
		return -1;
	}
	if (src->kind == N_LIT || src->kind == N_CAT || src->kind == N_FUNC) {
		expr_free(src);
		o->line = config_setting_source_line(each);
		dw_err_set(err, "each: \"%s\" cannot be a list (use a reference, e.g. "
				"\"$request.items\")",
			   config_setting_get_string(each));
		return -1;
	}
	if (!base && !drop && !body) {
		expr_free(src);
		o->line = config_setting_source_line(each);
		dw_err_set(err, "each: needs a body (or a base) to map each element with");
		return -1;
	}
	o->allowed = allowed | EXPR_SRC_ITEM;
	elem = compile_body(base, drop, body, o, err);
	o->allowed = allowed;
	if (!elem) {
		expr_free(src);
		return -1;
	}
	e = node_new(N_EACH);
	e->text = dw_strdup(config_setting_get_string(each));
	e->base = src;
	e->body = elem;
	e->sources = (src->sources | elem->sources) & ~(unsigned)EXPR_SRC_ITEM;
	*out = e;
	return 0;
}

/* ---------------------------------------------------------------- evaluating */

/* A real's text for $string and ordering keys: the shortest that reads back
 * the same, printf's form (1.0 -> "1", 1e-7 -> "1e-07"); see jsonfast.h. */
static char *real_string(double d)
{
	char buf[JSONFAST_REAL_MAX];

	if (jsonfast_real(d, false, buf) < 0)
		return dw_strdup(isnan(d) ? "nan" : d < 0 ? "-inf" : "inf"); /* json_real() refuses them */
	return dw_strdup(buf);
}


static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

char *expr_query_decode(const char *s, size_t len, size_t *outlen)
{
	char *out = dw_malloc(len + 1), *p = out;

	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%') {
			int h, l;
			if (i + 2 >= len || (h = hexval((unsigned char)s[i + 1])) < 0 ||
			    (l = hexval((unsigned char)s[i + 2])) < 0) {
				free(out);
				return NULL;
			}
			*p++ = (char)(h * 16 + l);
			i += 2;
		} else {
			*p++ = s[i] == '+' ? ' ' : s[i];
		}
	}
	*p = '\0';
	if (outlen)
		*outlen = (size_t)(p - out);
	return out;
}

/* jansson takes non-const pointers for reference counting; the context's
 * documents are shared read-only and only their count changes. */
static json_t *share(const json_t *v)
{
	return json_incref((json_t *)(uintptr_t)v);
}

static int text_value(const char *s, size_t len, const char *what, json_t **out,
		      struct dw_err *err)
{
	*out = json_stringn(s, len);
	if (!*out) {
		dw_err_set(err, "%s is not valid UTF-8", what);
		return EXPR_ERROR;
	}
	return EXPR_OK;
}

static int eval_query(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		      struct dw_err *err)
{
	const char *q = ctx->query, *end;
	const char *name = e->comp[0];
	size_t nlen = strlen(name);

	if (!q)
		return EXPR_MISSING;
	end = q + ctx->query_len;
	while (q < end) {
		const char *amp = memchr(q, '&', (size_t)(end - q));
		const char *pe = amp ? amp : end;
		const char *eq = memchr(q, '=', (size_t)(pe - q));
		const char *ke = eq ? eq : pe;
		size_t klen, vlen;
		char *k = expr_query_decode(q, (size_t)(ke - q), &klen);
		if (k && klen == nlen && memcmp(k, name, nlen) == 0) {
			char *v = eq ? expr_query_decode(eq + 1, (size_t)(pe - eq - 1), &vlen)
				     : dw_strdup("");
			int rc;
			free(k);
			if (!v) {
				dw_err_set(err, "%s: bad percent-encoding", e->text);
				return EXPR_ERROR;
			}
			if (!eq)
				vlen = 0;
			rc = text_value(v, vlen, e->text, out, err);
			free(v);
			return rc;
		}
		free(k);
		q = amp ? amp + 1 : end;
	}
	return EXPR_MISSING;
}

static int eval_ref(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		    struct dw_err *err)
{
	const json_t *doc = NULL;

	*out = NULL;
	switch (e->src) {
	case R_REQUEST:
		doc = ctx->request;
		break;
	case R_RESPONSE:
		doc = ctx->response;
		break;
	case R_ROW:
		doc = ctx->row;
		break;
	case R_ITEM:
		doc = ctx->item;
		break;
	case R_PATH:
		for (size_t i = 0; i < ctx->npath; i++)
			if (ctx->path_names[i] && strcmp(ctx->path_names[i], e->comp[0]) == 0)
				return text_value(ctx->path_values[i], strlen(ctx->path_values[i]),
						  e->text, out, err);
		return EXPR_MISSING;
	case R_QUERY:
		return eval_query(e, ctx, out, err);
	case R_HEADER: {
		size_t len = 0;
		const char *v = ctx->header ? ctx->header(ctx->header_arg, e->comp[0], &len) : NULL;
		if (!v)
			return EXPR_MISSING;
		return text_value(v, len, e->text, out, err);
	}
	case R_TENANT:
		if (!ctx->tenant) {
			dw_err_set(err, "bad tenant");
			return EXPR_ERROR;
		}
		return text_value(ctx->tenant, strlen(ctx->tenant), "$tenant", out, err);
	case R_NOW: {
		char buf[40];
		if (ctx->now)
			return text_value(ctx->now, strlen(ctx->now), "$now", out, err);
		dw_rfc3339(dw_wall_us(), buf, sizeof(buf));
		*out = json_string(buf);
		return EXPR_OK;
	}
	}
	if (!doc)
		return EXPR_MISSING;
	for (size_t i = 0; i < e->ncomp; i++) {
		const char *c = e->comp[i];
		if (json_is_object(doc)) {
			doc = json_object_get(doc, c);
		} else if (json_is_array(doc) && c[0] >= '0' && c[0] <= '9' &&
			   strspn(c, "0123456789") == strlen(c) && strlen(c) < 10) {
			doc = json_array_get(doc, strtoul(c, NULL, 10));
		} else {
			doc = NULL;
		}
		if (!doc)
			return EXPR_MISSING;
	}
	*out = share(doc);
	return EXPR_OK;
}

static int eval_node(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		     struct dw_err *err);

/* Set body's members over obj (owned), merging groups into existing objects. */
static int merge_into(json_t *obj, const struct expr *body, const struct expr_ctx *ctx,
		      struct dw_err *err)
{
	for (size_t i = 0; i < body->n; i++) {
		const struct expr *it = body->items[i];
		json_t *cur = json_object_get(obj, body->keys[i]), *v;
		int rc;

		if (it->kind == N_OBJ && json_is_object(cur)) {
			/* cur may be shared with the source document: change a copy
			 * (copy-on-write along the merged paths only) */
			json_t *own = json_copy(cur);
			json_object_set_new(obj, body->keys[i], own);
			if (merge_into(own, it, ctx, err) < 0)
				return EXPR_ERROR;
			continue;
		}
		rc = eval_node(it, ctx, &v, err);
		if (rc == EXPR_ERROR)
			return rc;
		if (rc == EXPR_OK)
			json_object_set_new(obj, body->keys[i], v);
	}
	return EXPR_OK;
}

static const char *type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "a list";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	default:
		return "null";
	}
}

/* A scalar's text: strings as they are, integers in decimal, reals in the
 * shortest form that reads back the same (1.0 -> "1", 0.1 -> "0.1"),
 * booleans as true/false. NULL for null, objects and lists. */
static char *scalar_text(const json_t *v, size_t *len)
{
	char buf[32], *out;

	switch (json_typeof(v)) {
	case JSON_STRING:
		*len = json_string_length(v);
		out = dw_malloc(*len + 1);
		memcpy(out, json_string_value(v), *len + 1);
		return out;
	case JSON_INTEGER:
		snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		out = dw_strdup(buf);
		break;
	case JSON_REAL:
		out = real_string(json_real_value(v));
		break;
	case JSON_TRUE:
		out = dw_strdup("true");
		break;
	case JSON_FALSE:
		out = dw_strdup("false");
		break;
	default:
		return NULL;
	}
	*len = strlen(out);
	return out;
}

static int eval_func(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		     struct dw_err *err)
{
	json_t *v = NULL;
	int rc = eval_node(e->items[0], ctx, &v, err);
	char *text;
	size_t len = 0;

	if (rc != EXPR_OK)
		return rc;
	if (json_is_null(v) && e->fn != F_JSON) {
		*out = v; /* null stays null: "no value" is not the text "null" */
		return EXPR_OK;
	}
	switch (e->fn) {
	case F_STRING:
		text = scalar_text(v, &len);
		if (!text) {
			dw_err_set(err, "$string: the value is %s (use $json for JSON text)",
				   type_name(v));
			rc = EXPR_ERROR;
			break;
		}
		*out = json_stringn_nocheck(text, len);
		free(text);
		break;
	case F_NUMBER:
		if (json_is_number(v)) {
			*out = json_incref(v);
		} else if (json_is_string(v) &&
			   (*out = number_value(json_string_value(v), json_string_length(v)))) {
			break;
		} else {
			if (json_is_string(v))
				dw_err_set(err, "$number: \"%.60s\" is not a number",
					   json_string_value(v));
			else
				dw_err_set(err, "$number: the value is %s, not a number or a numeric "
						"string",
					   type_name(v));
			rc = EXPR_ERROR;
		}
		break;
	case F_JSON: {
		/* the mirror body's writer, so a real reads the same in both */
		size_t n = 0;
		text = jsonfast_dumps(v, &n);
		if (!text) {
			dw_err_set(err, "$json: the value cannot be written as JSON");
			rc = EXPR_ERROR;
			break;
		}
		*out = json_stringn(text, n);
		free(text);
		if (!*out) {
			dw_err_set(err, "$json: the value is not valid UTF-8");
			rc = EXPR_ERROR;
		}
		break;
	}
	}
	json_decref(v);
	return rc;
}

static int eval_coalesce(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
			 struct dw_err *err)
{
	int rc = EXPR_MISSING;

	for (size_t i = 0; i < e->n; i++) {
		json_decref(*out);
		*out = NULL;
		rc = eval_node(e->items[i], ctx, out, err);
		if (rc == EXPR_ERROR || (rc == EXPR_OK && !json_is_null(*out)))
			return rc;
	}
	return rc; /* the last operand's: missing, or null */
}

/* An interpolated string; a part that is missing or null makes the whole
 * string missing (`??` inside the placeholder gives a default). */
static int eval_cat(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		    struct dw_err *err)
{
	size_t len = 0, cap = 64;
	char *buf = dw_malloc(cap);
	int rc = EXPR_OK;

	for (size_t i = 0; i < e->n && rc == EXPR_OK; i++) {
		json_t *v = NULL;
		char *text;
		size_t tlen = 0;

		rc = eval_node(e->items[i], ctx, &v, err);
		if (rc != EXPR_OK)
			break;
		if (json_is_null(v)) {
			json_decref(v);
			rc = EXPR_MISSING;
			break;
		}
		text = scalar_text(v, &tlen);
		if (!text) {
			buf[len] = '\0';
			dw_err_set(err, "${...} after \"%.40s\": the value is %s (use $json(...))",
				   buf, type_name(v));
			json_decref(v);
			rc = EXPR_ERROR;
			break;
		}
		json_decref(v);
		if (len + tlen + 1 > cap) {
			cap = (len + tlen + 1) * 2;
			buf = dw_realloc(buf, cap);
		}
		memcpy(buf + len, text, tlen);
		len += tlen;
		buf[len] = '\0';
		free(text);
	}
	if (rc == EXPR_OK)
		*out = json_stringn_nocheck(buf, len);
	free(buf);
	return rc;
}

static int eval_each(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		     struct dw_err *err)
{
	json_t *list = NULL, *acc;
	struct expr_ctx ic = *ctx;
	int rc = eval_node(e->base, ctx, &list, err);

	if (rc == EXPR_ERROR) {
		dw_err_prefix(err, "each");
		return rc;
	}
	if (rc == EXPR_MISSING || !json_is_array(list)) {
		dw_err_set(err, "each: \"%s\" is %s, not a list", e->text,
			   rc == EXPR_MISSING ? "missing" : type_name(list));
		json_decref(list);
		return EXPR_ERROR;
	}
	acc = json_array();
	for (size_t i = 0; i < json_array_size(list); i++) {
		json_t *v = NULL;
		ic.item = json_array_get(list, i);
		if (e->body->kind == N_DOC && !json_is_object(ic.item)) {
			/* a row of a batch that is not a row: never sent half-mapped */
			dw_err_set(err, "each: element %zu is %s, not an object", i,
				   type_name(ic.item));
			json_decref(acc);
			json_decref(list);
			return EXPR_ERROR;
		}
		rc = eval_node(e->body, &ic, &v, err);
		if (rc == EXPR_MISSING)
			dw_err_set(err, "each: element %zu maps to nothing", i);
		else if (rc == EXPR_ERROR)
			dw_err_prefix(err, "each: element %zu", i);
		if (rc != EXPR_OK) {
			json_decref(acc);
			json_decref(list);
			return EXPR_ERROR;
		}
		json_array_append_new(acc, v);
	}
	json_decref(list);
	*out = acc;
	return EXPR_OK;
}

static int eval_node(const struct expr *e, const struct expr_ctx *ctx, json_t **out,
		     struct dw_err *err)
{
	json_t *v = NULL, *acc;
	int rc;

	*out = NULL;
	switch (e->kind) {
	case N_LIT:
		*out = json_incref(e->lit);
		return EXPR_OK;
	case N_REF:
		return eval_ref(e, ctx, out, err);
	case N_OBJ:
	case N_ARR:
		acc = e->kind == N_OBJ ? json_object() : json_array();
		for (size_t i = 0; i < e->n; i++) {
			rc = eval_node(e->items[i], ctx, &v, err);
			if (rc == EXPR_ERROR) {
				json_decref(acc);
				return rc;
			}
			if (rc == EXPR_MISSING)
				continue;
			if (e->kind == N_OBJ)
				json_object_set_new(acc, e->keys[i], v);
			else
				json_array_append_new(acc, v);
		}
		*out = acc;
		return EXPR_OK;
	case N_DOC:
		if (e->base) {
			rc = eval_node(e->base, ctx, &v, err);
			if (rc != EXPR_OK)
				return rc;
			if (!json_is_object(v)) {
				json_decref(v);
				dw_err_set(err, "base is not a JSON object");
				return EXPR_ERROR;
			}
			/* A shallow copy: members stay shared with the source, and
			 * merge_into copies an object before changing it. */
			acc = json_copy(v);
			json_decref(v);
		} else {
			acc = json_object();
		}
		for (size_t i = 0; i < e->ndrop; i++)
			json_object_del(acc, e->drop[i]);
		if (e->body && merge_into(acc, e->body, ctx, err) < 0) {
			json_decref(acc);
			return EXPR_ERROR;
		}
		*out = acc;
		return EXPR_OK;
	case N_COALESCE:
		return eval_coalesce(e, ctx, out, err);
	case N_FUNC:
		return eval_func(e, ctx, out, err);
	case N_CAT:
		return eval_cat(e, ctx, out, err);
	case N_EACH:
		return eval_each(e, ctx, out, err);
	}
	return EXPR_ERROR;
}

int expr_eval(const struct expr *e, const struct expr_ctx *ctx, json_t **out, struct dw_err *err)
{
	static const struct expr_ctx empty;
	int rc = eval_node(e, ctx ? ctx : &empty, out, err);

	if (rc != EXPR_OK) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

int expr_eval_string(const struct expr *e, const struct expr_ctx *ctx, char **out,
		     struct dw_err *err)
{
	json_t *v = NULL;
	int rc;
	char buf[32];

	*out = NULL;
	rc = expr_eval(e, ctx, &v, err);
	if (rc != EXPR_OK)
		return rc;
	switch (json_typeof(v)) {
	case JSON_STRING:
		if (strlen(json_string_value(v)) != json_string_length(v)) {
			dw_err_set(err, "value contains a NUL byte");
			rc = EXPR_ERROR;
			break;
		}
		*out = dw_strdup(json_string_value(v));
		break;
	case JSON_INTEGER:
		snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		*out = dw_strdup(buf);
		break;
	case JSON_REAL:
		*out = real_string(json_real_value(v));
		break;
	case JSON_TRUE:
		*out = dw_strdup("true");
		break;
	case JSON_FALSE:
		*out = dw_strdup("false");
		break;
	default:
		dw_err_set(err, "value is %s, not a string or number",
			   json_is_null(v) ? "null" : json_is_object(v) ? "an object" : "an array");
		rc = EXPR_ERROR;
		break;
	}
	json_decref(v);
	return rc;
}

/* ---------------------------------------------------------------- path refs */

static void path_refs(const struct expr *e, void (*cb)(void *, const char *), void *arg)
{
	if (!e)
		return;
	if (e->kind == N_REF && e->src == R_PATH)
		cb(arg, e->comp[0]);
	for (size_t i = 0; i < e->n; i++)
		path_refs(e->items[i], cb, arg);
	path_refs(e->base, cb, arg);
	path_refs(e->body, cb, arg);
}

void expr_path_refs(const struct expr *e, void (*cb)(void *arg, const char *name), void *arg)
{
	path_refs(e, cb, arg);
}

void tmpl_path_refs(const struct tmpl *t, void (*cb)(void *arg, const char *name), void *arg)
{
	for (size_t i = 0; t && i < t->n; i++)
		path_refs(t->parts[i].e, cb, arg);
}

/* ---------------------------------------------------------------- templates */

static void tmpl_add(struct tmpl *t, char *lit, struct expr *e, char *text)
{
	t->parts = dw_realloc(t->parts, (t->n + 1) * sizeof(*t->parts));
	t->parts[t->n].lit = lit;
	t->parts[t->n].e = e;
	t->parts[t->n].text = text;
	t->n++;
	if (e)
		t->sources |= e->sources;
}

struct tmpl *tmpl_compile_opts(const char *s, struct expr_opts *o, struct dw_err *err)
{
	struct tmpl *t = dw_calloc(1, sizeof(*t));
	const char *p = s;

	o->line = 0;
	while (*p) {
		size_t lit = strcspn(p, "{}");
		if (lit) {
			/* the result goes into a request line: no spaces, no controls */
			for (size_t i = 0; i < lit; i++) {
				unsigned char ch = (unsigned char)p[i];
				if (ch <= 0x20 || ch >= 0x7f) {
					dw_err_set(err, "template \"%s\": invalid character 0x%02x",
						   s, ch);
					goto fail;
				}
			}
			tmpl_add(t, dw_strndup(p, lit), NULL, NULL);
			p += lit;
			continue;
		}
		if (*p == '}') {
			dw_err_set(err, "template \"%s\": unmatched '}'", s);
			goto fail;
		}
		const char *close = strchr(p + 1, '}');
		size_t ilen = close ? (size_t)(close - p - 1) : 0;
		if (!close || memchr(p + 1, '{', ilen)) {
			dw_err_set(err, "template \"%s\": unclosed '{'", s);
			goto fail;
		}
		if (ilen == 0) {
			dw_err_set(err, "template \"%s\": empty placeholder \"{}\"", s);
			goto fail;
		}
		char *inner = dw_strndup(p + 1, ilen), *ref;
		struct expr *e;
		int rc;
		if (strchr(inner, '.') || strcmp(inner, "tenant") == 0 || strcmp(inner, "now") == 0)
			rc = asprintf(&ref, "$%s", inner);
		else
			rc = asprintf(&ref, "$path.%s", inner);
		if (rc < 0)
			abort();
		e = inner[0] == '$' ? NULL : compile_ref(ref, o, err);
		if (inner[0] == '$')
			dw_err_set(err, "placeholder \"{%s}\": write it without '$'", inner);
		free(ref);
		if (!e) {
			dw_err_prefix(err, "template \"%s\"", s);
			free(inner);
			goto fail;
		}
		tmpl_add(t, NULL, e, inner);
		p = close + 1;
	}
	return t;
fail:
	tmpl_free(t);
	return NULL;
}

struct tmpl *tmpl_compile(const char *s, unsigned allowed, struct dw_err *err)
{
	struct expr_opts o = { .allowed = allowed };
	return tmpl_compile_opts(s, &o, err);
}

static bool unreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

/* A value's byte in a path: as is, or %XX ("." and ".." are encoded whole,
 * as they would be dot-segments). */
static bool tmpl_plain(unsigned char c, bool dots)
{
	return unreserved(c) && !(dots && c == '.');
}

/*
 * Render in two passes, into one exact allocation: the values first (each
 * checked), then the path. Once per mirrored write; an open_memstream here
 * (a FILE, its buffer, their growth) was most of the malloc traffic of
 * building a mirror request.
 */
int tmpl_render(const struct tmpl *t, const struct expr_ctx *ctx, char **out, struct dw_err *err)
{
	static const char hex[] = "0123456789ABCDEF";
	char *stack[8], **vals = t->n <= 8 ? stack : dw_calloc(t->n, sizeof(*vals));
	size_t len = 0, i;
	int rc = EXPR_OK;
	char *buf, *p;

	*out = NULL;
	for (i = 0; i < t->n && rc == EXPR_OK; i++) {
		const struct tpart *pt = &t->parts[i];
		char *v = NULL;

		vals[i] = NULL;
		if (pt->lit) {
			len += strlen(pt->lit);
			continue;
		}
		rc = expr_eval_string(pt->e, ctx, &v, err);
		if (rc == EXPR_MISSING) {
			dw_err_set(err, "missing value for {%s}", pt->text);
			rc = EXPR_ERROR;
		} else if (rc == EXPR_OK && !*v) {
			dw_err_set(err, "empty value for {%s}", pt->text);
			rc = EXPR_ERROR;
		}
		if (rc != EXPR_OK) {
			free(v);
			break;
		}
		vals[i] = v;
		bool dots = strcmp(v, ".") == 0 || strcmp(v, "..") == 0;
		for (const unsigned char *c = (const unsigned char *)v; *c; c++)
			len += tmpl_plain(*c, dots) ? 1 : 3;
	}
	if (rc == EXPR_OK) {
		p = buf = dw_malloc(len + 1);
		for (size_t j = 0; j < t->n; j++) {
			const char *v = t->parts[j].lit ? t->parts[j].lit : vals[j];
			if (t->parts[j].lit) {
				size_t n = strlen(v);
				memcpy(p, v, n);
				p += n;
				continue;
			}
			bool dots = strcmp(v, ".") == 0 || strcmp(v, "..") == 0;
			for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
				if (tmpl_plain(*c, dots)) {
					*p++ = (char)*c;
				} else {
					*p++ = '%';
					*p++ = hex[*c >> 4];
					*p++ = hex[*c & 15];
				}
			}
		}
		*p = '\0';
		*out = buf;
	}
	for (size_t j = 0; j < i && j < t->n; j++)
		free(vals[j]);
	if (vals != stack)
		free(vals);
	return rc == EXPR_OK ? EXPR_OK : EXPR_ERROR;
}

/* ---------------------------------------------------------------- tenant */

bool expr_tenant_valid(const char *s, size_t len)
{
	if (!s || len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}
