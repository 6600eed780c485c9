/*
 * pgdsn.c — see pgdsn.h. PQconninfoParse does the reading, so both the
 * keyword and the URI forms, quoting and percent-encoding are libpq's own.
 */
#include "pgdsn.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

static bool is_secret(const PQconninfoOption *o)
{
	return o->dispchar && strchr(o->dispchar, '*') != NULL;
}

/* Append s to the growing string *b (length *n). */
static void add(char **b, size_t *n, const char *s, size_t len)
{
	*b = dw_realloc(*b, *n + len + 1);
	memcpy(*b + *n, s, len);
	*n += len;
	(*b)[*n] = '\0';
}

static void add_value(char **b, size_t *n, const char *v)
{
	bool quote = !*v || strpbrk(v, " \t\n\r'\\=") != NULL;

	if (!quote) {
		add(b, n, v, strlen(v));
		return;
	}
	add(b, n, "'", 1);
	for (; *v; v++) {
		if (*v == '\'' || *v == '\\')
			add(b, n, "\\", 1);
		add(b, n, v, 1);
	}
	add(b, n, "'", 1);
}

char *pgdsn_display(const char *dsn)
{
	PQconninfoOption *opts;
	char *errmsg = NULL, *b = NULL;
	size_t n = 0;

	if (!dsn || !*dsn)
		return dw_strdup("PG* environment");
	opts = PQconninfoParse(dsn, &errmsg);
	PQfreemem(errmsg); /* may quote the DSN: never shown */
	if (!opts)
		return dw_strdup("(unparsable DSN, not shown)");
	for (const PQconninfoOption *o = opts; o->keyword; o++) {
		if (!o->val)
			continue;
		if (n)
			add(&b, &n, " ", 1);
		add(&b, &n, o->keyword, strlen(o->keyword));
		add(&b, &n, "=", 1);
		if (is_secret(o))
			add(&b, &n, "***", 3);
		else
			add_value(&b, &n, o->val);
	}
	PQconninfoFree(opts);
	return b ? b : dw_strdup("(no settings: PG* environment)");
}

char *pgdsn_scrub(const char *msg, const char *dsn)
{
	PQconninfoOption *opts;
	char *errmsg = NULL, *out = dw_strdup(msg ? msg : "");

	if (!dsn || !*dsn)
		return out;
	opts = PQconninfoParse(dsn, &errmsg);
	PQfreemem(errmsg);
	if (!opts)
		return out;
	for (const PQconninfoOption *o = opts; o->keyword; o++) {
		size_t vl;
		char *p, *b = NULL;
		size_t n = 0;
		const char *from;

		if (!o->val || !is_secret(o) || (vl = strlen(o->val)) < 3)
			continue;
		from = out;
		while ((p = strstr(from, o->val))) {
			add(&b, &n, from, (size_t)(p - from));
			add(&b, &n, "***", 3);
			from = p + vl;
		}
		if (b) {
			add(&b, &n, from, strlen(from));
			free(out);
			out = b;
		}
	}
	PQconninfoFree(opts);
	return out;
}
