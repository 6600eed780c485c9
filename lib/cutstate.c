/*
 * cutstate.c — the cut-over's files beside the queue (see cutstate.h).
 */
#include "cutstate.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *state_path(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		abort();
	return p;
}

/* Append obj as one line; sync: fdatasync it too. Takes ownership of obj. */
static int append_line_sync(const char *dir, const char *name, json_t *obj, bool sync,
			    struct dw_err *err)
{
	char *path = state_path(dir, name);
	char *text = json_dumps(obj, JSON_COMPACT);
	size_t len;
	int fd, r = -1;

	json_decref(obj);
	if (!text) {
		dw_err_set(err, "%s: cannot encode a line", path);
		goto out;
	}
	len = strlen(text);
	text[len] = '\n'; /* json_dumps's NUL becomes the newline: one write */
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		dw_err_set(err, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (write(fd, text, len + 1) != (ssize_t)(len + 1)) {
		dw_err_set(err, "%s: write: %s", path, errno ? strerror(errno) : "short write");
	} else if (sync && fdatasync(fd) < 0) {
		dw_err_set(err, "%s: fdatasync: %s", path, strerror(errno));
	} else {
		r = 0;
	}
	close(fd);
out:
	free(text);
	free(path);
	return r;
}

/* Call fn for every well-formed line of the file, in order; a missing file
 * has none. A torn or garbled line is skipped. */
static int each_line(const char *dir, const char *name, void (*fn)(void *arg, json_t *line),
		     void *arg, struct dw_err *err)
{
	char *path = state_path(dir, name), *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	FILE *f = fopen(path, "re");

	if (!f) {
		int e = errno;
		free(path);
		if (e == ENOENT)
			return 0;
		dw_err_set(err, "%s/%s: %s", dir, name, strerror(e));
		return -1;
	}
	while ((n = getline(&buf, &cap, f)) > 0) {
		json_t *j;

		if (buf[n - 1] != '\n')
			break; /* torn: the writer died mid-line */
		j = json_loadb(buf, (size_t)n, 0, NULL);
		if (json_is_object(j))
			fn(arg, j);
		json_decref(j);
	}
	free(buf);
	fclose(f);
	free(path);
	return 0;
}

static int append_line(const char *dir, const char *name, json_t *obj, struct dw_err *err)
{
	return append_line_sync(dir, name, obj, true, err);
}

static char *jstr(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? dw_strdup(s) : NULL;
}

static bool same(const char *a, const char *b)
{
	return a && b ? strcmp(a, b) == 0 : a == b;
}

/* ------------------------------------------------------- indeterminate */

static void indet_entry_clear(struct indet_entry *e)
{
	free(e->route);
	free(e->table);
	free(e->key);
	free(e->request_id);
	free(e->reason);
}

void indet_entries_free(struct indet_entry *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		indet_entry_clear(&v[i]);
	free(v);
}

static json_t *jstr_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

int indet_record(const char *dir, const struct indet_entry *e, bool sync, struct dw_err *err)
{
	json_t *o = json_object();

	json_object_set_new(o, "at", json_integer(e->at_us));
	json_object_set_new(o, "route", jstr_or_null(e->route));
	json_object_set_new(o, "table", jstr_or_null(e->table));
	json_object_set_new(o, "key", jstr_or_null(e->key));
	json_object_set_new(o, "request_id", jstr_or_null(e->request_id));
	json_object_set_new(o, "reason", jstr_or_null(e->reason));
	return append_line_sync(dir, CUTSTATE_INDET, o, sync, err);
}

int indet_clear(const char *dir, const char *table, const char *key, struct dw_err *err)
{
	json_t *o = json_object();

	json_object_set_new(o, "at", json_integer(dw_wall_us()));
	json_object_set_new(o, "clear", json_true());
	json_object_set_new(o, "table", jstr_or_null(table));
	json_object_set_new(o, "key", jstr_or_null(key));
	return append_line(dir, CUTSTATE_INDET, o, err);
}

struct indet_fold {
	struct indet_entry *v;
	size_t n, cap;
};

static void indet_line(void *arg, json_t *j)
{
	struct indet_fold *f = arg;
	const char *table = json_string_value(json_object_get(j, "table"));
	const char *key = json_string_value(json_object_get(j, "key"));
	struct indet_entry *e;

	if (json_is_true(json_object_get(j, "clear"))) {
		size_t k = 0;

		/* a clear of (table, key) closes that table's entries and those
		 * of no table with the same key (NULL: the unknown keys) */
		for (size_t i = 0; i < f->n; i++) {
			bool hit = same(f->v[i].key, key) && (!f->v[i].table || same(f->v[i].table, table));
			if (hit) {
				indet_entry_clear(&f->v[i]);
				continue;
			}
			f->v[k++] = f->v[i];
		}
		f->n = k;
		return;
	}
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 16;
		f->v = dw_realloc(f->v, f->cap * sizeof(*f->v));
	}
	e = &f->v[f->n++];
	e->at_us = json_integer_value(json_object_get(j, "at"));
	e->route = jstr(j, "route");
	e->table = table ? dw_strdup(table) : NULL;
	e->key = key ? dw_strdup(key) : NULL;
	e->request_id = jstr(j, "request_id");
	e->reason = jstr(j, "reason");
}

int indet_load(const char *dir, const char *table, struct indet_entry **out, size_t *n,
	       struct dw_err *err)
{
	struct indet_fold f = { 0 };
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (each_line(dir, CUTSTATE_INDET, indet_line, &f, err) < 0) {
		indet_entries_free(f.v, f.n);
		return -1;
	}
	for (size_t i = 0; i < f.n; i++) {
		if (table && f.v[i].table && strcmp(f.v[i].table, table) != 0) {
			indet_entry_clear(&f.v[i]);
			continue;
		}
		f.v[k++] = f.v[i];
	}
	*out = f.v;
	*n = k;
	return 0;
}

/* ------------------------------------------------------------- verify */

int verify_mark_record(const char *dir, const char *table, const struct verify_mark *m,
		       struct dw_err *err)
{
	json_t *o = json_object();

	json_object_set_new(o, "at", json_integer(m->at_us));
	json_object_set_new(o, "table", json_string(table));
	json_object_set_new(o, "equal", json_boolean(m->equal));
	json_object_set_new(o, "differences", json_integer((json_int_t)m->differences));
	return append_line(dir, CUTSTATE_VERIFY, o, err);
}

struct mark_fold {
	const char *table;
	struct verify_mark *out;
	int found;
};

static void mark_line(void *arg, json_t *j)
{
	struct mark_fold *f = arg;

	if (!same(json_string_value(json_object_get(j, "table")), f->table))
		return;
	f->out->at_us = json_integer_value(json_object_get(j, "at"));
	f->out->equal = json_is_true(json_object_get(j, "equal"));
	f->out->differences = (uint64_t)json_integer_value(json_object_get(j, "differences"));
	f->found = 1;
}

int verify_mark_last(const char *dir, const char *table, struct verify_mark *out,
		     struct dw_err *err)
{
	struct mark_fold f = { table, out, 0 };

	memset(out, 0, sizeof(*out));
	if (each_line(dir, CUTSTATE_VERIFY, mark_line, &f, err) < 0)
		return -1;
	return f.found;
}

/* ----------------------------------------------------------- reads 100 */

int reads100_record(const char *dir, const char *route, uint32_t weight, int64_t at_us,
		    struct dw_err *err)
{
	json_t *o = json_object();

	json_object_set_new(o, "at", json_integer(at_us));
	json_object_set_new(o, "route", json_string(route));
	json_object_set_new(o, "weight", json_integer(weight));
	return append_line(dir, CUTSTATE_READS100, o, err);
}

struct r100_fold {
	const char *route;
	int64_t since; /* 0: not at 100 */
};

static void r100_line(void *arg, json_t *j)
{
	struct r100_fold *f = arg;

	if (!same(json_string_value(json_object_get(j, "route")), f->route))
		return;
	if (json_integer_value(json_object_get(j, "weight")) != 10000)
		f->since = 0;
	else if (!f->since)
		f->since = json_integer_value(json_object_get(j, "at"));
}

int reads100_since(const char *dir, const char *route, int64_t *since_us, struct dw_err *err)
{
	struct r100_fold f = { route, 0 };

	*since_us = 0;
	if (each_line(dir, CUTSTATE_READS100, r100_line, &f, err) < 0)
		return -1;
	*since_us = f.since;
	return f.since ? 1 : 0;
}
