/*
 * guard.c — the guard table, its latches and the latch file (guard.h).
 */
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define MISMATCH_WINDOW_MS 3600000 /* shadow_mismatches_per_hour: one hour */
#define MISMATCH_SLOTS 60

struct guard_wins {
	struct guard_wins *prev; /* retired shapes, freed with the table */
	int64_t window_ms;
	unsigned nslots;
	struct window **reads, **mirrors; /* [nslots] */
};

struct guard_table {
	unsigned nslots;
	struct guard_limits limits;
	int64_t window_ms; /* of the current shape; 0 before the first bind */
	struct guard_up *head, **tail;
};

static struct guard_wins *wins_new(int64_t window_ms, unsigned nslots, struct guard_wins *prev)
{
	struct guard_wins *w = dw_calloc(1, sizeof(*w));
	/* a slot of a second at 60 s; at least a quarter of a second */
	int64_t ring = window_ms / 250 < 60 ? window_ms / 250 : 60;

	if (ring < 1)
		ring = 1;
	w->prev = prev;
	w->window_ms = window_ms;
	w->nslots = nslots;
	w->reads = dw_calloc(nslots, sizeof(struct window *));
	w->mirrors = dw_calloc(nslots, sizeof(struct window *));
	for (unsigned i = 0; i < nslots; i++) {
		w->reads[i] = window_new(window_ms, (unsigned)ring, 1);
		w->mirrors[i] = window_new(window_ms, (unsigned)ring, 0);
	}
	return w;
}

static void wins_free(struct guard_wins *w)
{
	while (w) {
		struct guard_wins *p = w->prev;

		for (unsigned i = 0; i < w->nslots; i++) {
			window_free(w->reads[i]);
			window_free(w->mirrors[i]);
		}
		free(w->reads);
		free(w->mirrors);
		free(w);
		w = p;
	}
}

static struct guard_wins *wins_of(const struct guard_up *g)
{
	return __atomic_load_n(&g->wins, __ATOMIC_ACQUIRE);
}

struct guard_table *guard_table_new(unsigned nslots)
{
	struct guard_table *t = dw_calloc(1, sizeof(*t));

	t->nslots = nslots ? nslots : 1;
	t->tail = &t->head;
	guard_limits_default(&t->limits);
	return t;
}

void guard_table_free(struct guard_table *t)
{
	if (!t)
		return;
	for (struct guard_up *g = t->head, *n; g; g = n) {
		n = g->next;
		wins_free(g->wins);
		window_free(g->mismatches);
		free(g->name);
		free(g);
	}
	free(t);
}

struct guard_up *guard_find(const struct guard_table *t, const char *name)
{
	for (struct guard_up *g = t->head; g; g = g->next)
		if (strcmp(g->name, name) == 0)
			return g;
	return NULL;
}

struct guard_up *guard_table_first(const struct guard_table *t)
{
	return t->head;
}

void guard_table_each(const struct guard_table *t, void (*cb)(void *arg, struct guard_up *g),
		      void *arg)
{
	for (struct guard_up *g = t->head; g; g = g->next)
		cb(arg, g);
}

void guard_table_bind(struct guard_table *t, struct dw_config *cfg)
{
	int64_t window_ms = (int64_t)cfg->guards.window_s * 1000;
	bool reshape = t->window_ms != 0 && t->window_ms != window_ms;

	t->limits.min_requests = (uint64_t)cfg->guards.min_requests;
	t->limits.read_error_rate = cfg->guards.read_error_rate;
	t->limits.read_p99_ms = cfg->guards.read_p99_ms;
	t->limits.mirror_failure_rate = cfg->guards.mirror_failure_rate;
	t->limits.shadow_mismatches_per_hour = cfg->guards.shadow_mismatches_per_hour;
	t->window_ms = window_ms;
	for (struct guard_up *g = t->head; g; g = g->next) {
		g->bound = false;
		if (reshape) /* new windows; the old stay until the table goes */
			__atomic_store_n(&g->wins, wins_new(window_ms, t->nslots, g->wins),
					 __ATOMIC_RELEASE);
	}
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		struct dw_upstream *u = &cfg->upstreams[i];
		struct guard_up *g = guard_find(t, u->name);

		if (!g) {
			g = dw_calloc(1, sizeof(*g));
			g->name = dw_strdup(u->name);
			g->wins = wins_new(window_ms, t->nslots, NULL);
			g->mismatches = window_new(MISMATCH_WINDOW_MS, MISMATCH_SLOTS, 0);
			g->latch.state = GUARD_OK;
			*t->tail = g;
			t->tail = &g->next;
		}
		g->bound = true;
		u->guard = g;
	}
}

void guard_note_read(struct guard_up *g, unsigned slot, int64_t now_ms, bool failed,
		     int64_t latency_us)
{
	struct guard_wins *w;

	if (!g)
		return;
	w = wins_of(g);
	window_record(w->reads[slot % w->nslots], now_ms, failed, latency_us);
}

void guard_note_mirror(struct guard_up *g, unsigned slot, int64_t now_ms, bool failed)
{
	struct guard_wins *w;

	if (!g)
		return;
	w = wins_of(g);
	window_record(w->mirrors[slot % w->nslots], now_ms, failed, -1);
}

void guard_note_mismatch(struct guard_up *g, int64_t now_ms)
{
	if (g)
		window_record(g->mismatches, now_ms, 1, -1);
}

void guard_sums(struct guard_up *g, int64_t now_ms, struct window_sum *reads,
		struct window_sum *mirrors, struct window_sum *mismatches)
{
	struct guard_wins *w = wins_of(g);

	window_sum_reset(reads);
	window_sum_reset(mirrors);
	window_sum_reset(mismatches);
	for (unsigned i = 0; i < w->nslots; i++) {
		window_sum_add(reads, w->reads[i], now_ms);
		window_sum_add(mirrors, w->mirrors[i], now_ms);
	}
	window_sum_add(mismatches, g->mismatches, now_ms);
}

void guard_latch_set(struct guard_up *g, const struct guard_latch *l)
{
	g->latch = *l;
	__atomic_store_n(&g->state, (unsigned)l->state, __ATOMIC_RELAXED);
}

void guard_clear(struct guard_up *g)
{
	struct guard_wins *w = wins_of(g);

	for (unsigned i = 0; i < w->nslots; i++) {
		window_clear(w->reads[i]);
		window_clear(w->mirrors[i]);
	}
	window_clear(g->mismatches);
	memset(&g->latch, 0, sizeof(g->latch));
	g->latch.state = GUARD_OK;
	g->fleet_seen = false;
	__atomic_store_n(&g->state, (unsigned)GUARD_OK, __ATOMIC_RELAXED);
}

/* Three sums on the heap: each is ~6 KiB. */
struct sums {
	struct window_sum reads, mirrors, mismatches;
};

size_t guard_table_tick(struct guard_table *t, int64_t now_ms, int64_t wall_ms,
			void (*latched)(void *arg, struct guard_up *g,
					const struct guard_verdict *v),
			void *arg)
{
	struct sums *s = NULL;
	size_t n = 0;

	for (struct guard_up *g = t->head; g; g = g->next) {
		struct guard_verdict v;
		struct guard_latch l;

		if (!g->bound || g->latch.state == GUARD_TRIPPED)
			continue; /* nothing is above a trip */
		if (!s)
			s = dw_malloc(sizeof(*s));
		guard_sums(g, now_ms, &s->reads, &s->mirrors, &s->mismatches);
		v = guard_check(&t->limits, &s->reads, &s->mirrors, &s->mismatches);
		if (v.state <= g->latch.state)
			continue;
		memset(&l, 0, sizeof(l));
		l.state = v.state;
		snprintf(l.reason, sizeof(l.reason), "%s", guard_reason_name(v.reason));
		l.measured = v.measured;
		l.limit = v.limit;
		l.sample = v.sample;
		l.window_ms = v.window_ms;
		l.since_ms = wall_ms;
		guard_verdict_format(&v, l.detail, sizeof(l.detail));
		guard_latch_set(g, &l);
		n++;
		if (latched)
			latched(arg, g, &v);
	}
	free(s);
	return n;
}

bool guard_latched(const struct guard_table *t, const char *upstream)
{
	const struct guard_up *g = guard_find(t, upstream);

	return g && g->latch.state != GUARD_OK;
}

bool guard_tripped(const struct guard_table *t, const char *upstream)
{
	const struct guard_up *g = guard_find(t, upstream);

	return g && g->latch.state == GUARD_TRIPPED;
}

/* ---- reloads ---- */

static const struct dw_route *route_named(const struct dw_config *c, const char *name)
{
	for (size_t i = 0; i < c->nroutes; i++)
		if (c->routes[i].name && strcmp(c->routes[i].name, name) == 0)
			return &c->routes[i];
	return NULL;
}

int guard_reload_check(const struct guard_table *t, const struct dw_config *running,
		       const struct dw_config *neu, struct dw_err *err)
{
	for (size_t i = 0; i < neu->nroutes; i++) {
		const struct dw_route *r = &neu->routes[i];
		const char *up;
		const struct guard_up *g;
		const struct dw_route *o;
		uint32_t before = 0;

		if (!r->read || !r->name)
			continue;
		up = neu->upstreams[r->read->upstream].name;
		g = guard_find(t, up);
		if (!g || g->latch.state != GUARD_PAUSED)
			continue;
		o = route_named(running, r->name);
		if (o && o->read && strcmp(running->upstreams[o->read->upstream].name, up) == 0)
			before = o->read->weight;
		if (r->read->weight > before) {
			dw_err_set(err,
				   "route \"%s\": read weight %.2f -> %.2f raises upstream \"%s\", "
				   "which is paused (%s); reset the guard first "
				   "(dualwrite guard reset %s)",
				   r->name, before / 100.0, r->read->weight / 100.0, up,
				   g->latch.detail[0] ? g->latch.detail : g->latch.reason, up);
			return -1;
		}
	}
	return 0;
}

void guard_reload_clears(const struct guard_table *t, const struct dw_config *running,
			 const struct dw_config *neu,
			 void (*cleared)(void *arg, struct guard_up *g, const char *route),
			 void *arg)
{
	for (size_t i = 0; i < running->nroutes; i++) {
		const struct dw_route *o = &running->routes[i];
		const struct dw_route *r;
		struct guard_up *g;

		if (!o->read || !o->name)
			continue;
		g = guard_find(t, running->upstreams[o->read->upstream].name);
		if (!g || g->latch.state != GUARD_TRIPPED)
			continue;
		r = route_named(neu, o->name);
		if (r && r->read && r->read->weight != o->read->weight)
			cleared(arg, g, o->name);
	}
}

/* ---- the latch file ---- */

void guard_file_free(struct guard_file *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->v[i].name);
	free(f->v);
	f->v = NULL;
	f->n = 0;
}

const struct guard_latch *guard_file_find(const struct guard_file *f, const char *name)
{
	for (size_t i = 0; i < f->n; i++)
		if (strcmp(f->v[i].name, name) == 0)
			return &f->v[i].latch;
	return NULL;
}

void guard_file_put(struct guard_file *f, const char *name, const struct guard_latch *l)
{
	size_t i;

	for (i = 0; i < f->n; i++)
		if (strcmp(f->v[i].name, name) == 0)
			break;
	if (l->state == GUARD_OK) {
		if (i < f->n) {
			free(f->v[i].name);
			memmove(&f->v[i], &f->v[i + 1], (f->n - i - 1) * sizeof(f->v[0]));
			f->n--;
		}
		return;
	}
	if (i == f->n) {
		f->v = dw_realloc(f->v, (f->n + 1) * sizeof(f->v[0]));
		f->v[i].name = dw_strdup(name);
		f->n++;
	}
	f->v[i].latch = *l;
}

static int parse_state(const char *s, enum guard_state *out)
{
	if (strcmp(s, "paused") == 0)
		*out = GUARD_PAUSED;
	else if (strcmp(s, "tripped") == 0)
		*out = GUARD_TRIPPED;
	else
		return -1;
	return 0;
}

static bool is_name(const char *s)
{
	if (!*s || strlen(s) > 128)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

static int parse_entry(const char *name, json_t *o, struct guard_latch *l, struct dw_err *err)
{
	json_t *v;

	memset(l, 0, sizeof(*l));
	if (!is_name(name)) {
		dw_err_set(err, "upstreams: \"%.60s\" is not an upstream name", name);
		return -1;
	}
	if (!json_is_object(o)) {
		dw_err_set(err, "upstreams.%s: expected an object", name);
		return -1;
	}
	v = json_object_get(o, "state");
	if (!json_is_string(v) || parse_state(json_string_value(v), &l->state) < 0) {
		dw_err_set(err, "upstreams.%s.state: expected \"paused\" or \"tripped\"", name);
		return -1;
	}
	v = json_object_get(o, "reason");
	if (!json_is_string(v) || strlen(json_string_value(v)) >= sizeof(l->reason)) {
		dw_err_set(err, "upstreams.%s.reason: expected a short string", name);
		return -1;
	}
	snprintf(l->reason, sizeof(l->reason), "%s", json_string_value(v));
	v = json_object_get(o, "since_ms");
	if (!json_is_integer(v) || json_integer_value(v) < 0) {
		dw_err_set(err, "upstreams.%s.since_ms: expected milliseconds since the epoch",
			   name);
		return -1;
	}
	l->since_ms = json_integer_value(v);
	if ((v = json_object_get(o, "measured")) && json_is_number(v))
		l->measured = json_number_value(v);
	if ((v = json_object_get(o, "limit")) && json_is_number(v))
		l->limit = json_number_value(v);
	if ((v = json_object_get(o, "sample")) && json_is_integer(v) && json_integer_value(v) >= 0)
		l->sample = (uint64_t)json_integer_value(v);
	if ((v = json_object_get(o, "window_s")) && json_is_number(v))
		l->window_ms = (int64_t)(json_number_value(v) * 1000);
	if ((v = json_object_get(o, "detail")) && json_is_string(v))
		snprintf(l->detail, sizeof(l->detail), "%s", json_string_value(v));
	return 0;
}

int guard_file_parse(const char *text, size_t len, struct guard_file *f, struct dw_err *err)
{
	json_error_t je;
	json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je), *ups, *v;
	const char *name;

	f->v = NULL;
	f->n = 0;
	if (!doc) {
		dw_err_set(err, "not JSON: line %d: %s", je.line, je.text);
		return -1;
	}
	if (!json_is_object(doc)) {
		dw_err_set(err, "expected a JSON object");
		goto bad;
	}
	v = json_object_get(doc, "version");
	if (!json_is_integer(v) || json_integer_value(v) != 1) {
		dw_err_set(err, "version: expected 1");
		goto bad;
	}
	ups = json_object_get(doc, "upstreams");
	if (!json_is_object(ups)) {
		dw_err_set(err, "upstreams: expected an object");
		goto bad;
	}
	json_object_foreach(ups, name, v) {
		struct guard_latch l;

		if (parse_entry(name, v, &l, err) < 0) {
			guard_file_free(f);
			goto bad;
		}
		guard_file_put(f, name, &l);
	}
	json_decref(doc);
	return 0;
bad:
	json_decref(doc);
	return -1;
}

char *guard_file_format(const struct guard_file *f)
{
	json_t *doc = json_object(), *ups = json_object();
	char *text, *out;
	size_t n;

	json_object_set_new(doc, "version", json_integer(1));
	for (size_t i = 0; i < f->n; i++) {
		const struct guard_latch *l = &f->v[i].latch;

		json_object_set_new(
		    ups, f->v[i].name,
		    json_pack("{s:s, s:s, s:f, s:f, s:I, s:f, s:I, s:s}", "state",
			      guard_state_name(l->state), "reason", l->reason, "measured",
			      l->measured, "limit", l->limit, "sample", (json_int_t)l->sample,
			      "window_s", (double)l->window_ms / 1000.0, "since_ms",
			      (json_int_t)l->since_ms, "detail", l->detail));
	}
	json_object_set_new(doc, "upstreams", ups);
	text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(10));
	json_decref(doc);
	if (!text)
		dw_oom(0);
	n = strlen(text);
	out = dw_malloc(n + 2);
	memcpy(out, text, n);
	out[n] = '\n';
	out[n + 1] = '\0';
	free(text);
	return out;
}

int guard_file_read(const char *dir, struct guard_file *f, struct dw_err *err)
{
	char path[4096];
	struct stat st;
	char *buf;
	ssize_t got;
	size_t off = 0;
	int fd, rc;
	struct dw_err perr = {""};

	f->v = NULL;
	f->n = 0;
	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_FILE_NAME);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		dw_err_set(err, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || st.st_size > (1 << 20)) {
		dw_err_set(err, "%s: %s", path, st.st_size > (1 << 20) ? "larger than 1 MiB"
									: strerror(errno));
		close(fd);
		return -1;
	}
	buf = dw_malloc((size_t)st.st_size + 1);
	while (off < (size_t)st.st_size &&
	       ((got = read(fd, buf + off, (size_t)st.st_size - off)) > 0 || errno == EINTR))
		if (got > 0)
			off += (size_t)got;
	close(fd);
	buf[off] = '\0';
	rc = guard_file_parse(buf, off, f, &perr);
	free(buf);
	if (rc < 0) {
		dw_err_set(err, "%s: %s", path, perr.msg);
		return -1;
	}
	return 1;
}

static int fsync_dir(const char *dir, struct dw_err *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fsync(fd) < 0) {
		dw_err_set(err, "%s: cannot sync the directory: %s", dir, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

int guard_file_write(const char *dir, const struct guard_file *f, struct dw_err *err)
{
	char path[4096], tmp[4200];
	char *text;
	size_t len, off = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_FILE_NAME);
	if (f->n == 0) {
		if (unlink(path) < 0 && errno != ENOENT) {
			dw_err_set(err, "%s: cannot remove: %s", path, strerror(errno));
			return -1;
		}
		return fsync_dir(dir, err);
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0) {
		dw_err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
		return -1;
	}
	text = guard_file_format(f);
	len = strlen(text);
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			dw_err_set(err, "%s: cannot write: %s", tmp, strerror(w < 0 ? errno : EIO));
			goto fail;
		}
		off += (size_t)w;
	}
	if (fsync(fd) < 0) {
		dw_err_set(err, "%s: cannot sync: %s", tmp, strerror(errno));
		goto fail;
	}
	close(fd);
	free(text);
	if (rename(tmp, path) < 0) {
		dw_err_set(err, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return fsync_dir(dir, err);
fail:
	free(text);
	close(fd);
	unlink(tmp);
	return -1;
}

int guard_file_lock(const char *dir, struct dw_err *err)
{
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, GUARD_LOCK_NAME);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		dw_err_set(err, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	while (flock(fd, LOCK_EX) < 0) {
		if (errno == EINTR)
			continue;
		dw_err_set(err, "%s: cannot lock: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

void guard_file_unlock(int fd)
{
	if (fd >= 0)
		close(fd); /* drops the flock */
}

void guard_table_export(const struct guard_table *t, struct guard_file *f)
{
	f->v = NULL;
	f->n = 0;
	for (const struct guard_up *g = t->head; g; g = g->next)
		if (g->latch.state != GUARD_OK)
			guard_file_put(f, g->name, &g->latch);
}
