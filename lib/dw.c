/*
 * dw.c — error values, the logger and clock helpers declared in dw.h.
 */
#include "dw.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void dw_err_set(struct dw_err *e, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	if (!e)
		return;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	errno = saved;
}

void dw_err_prefix(struct dw_err *e, const char *fmt, ...)
{
	int saved = errno;
	char head[256], old[sizeof(e->msg)];
	va_list ap;

	if (!e)
		return;
	va_start(ap, fmt);
	vsnprintf(head, sizeof(head), fmt, ap);
	va_end(ap);
	memcpy(old, e->msg, sizeof(old));
	if (snprintf(e->msg, sizeof(e->msg), "%s: %s", head, old) < 0)
		e->msg[0] = '\0';
	errno = saved;
}

void dw_errlist_add(struct dw_errlist *l, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 8;
		l->msgs = dw_realloc(l->msgs, l->cap * sizeof(*l->msgs));
	}
	l->msgs[l->n++] = dw_strdup(buf);
}

void dw_errlist_free(struct dw_errlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->msgs[i]);
	free(l->msgs);
	l->msgs = NULL;
	l->n = l->cap = 0;
}

/* Written once by the top level before threads start; read-only afterwards. */
static enum dw_log_level log_threshold = DW_LOG_INFO;

void dw_log_set_level(enum dw_log_level level)
{
	log_threshold = level;
}

int dw_log_enabled(enum dw_log_level level)
{
	return level >= log_threshold;
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void dw_vlog(enum dw_log_level level, const char *req, const char *fmt, va_list ap)
{
	int saved = errno;
	char line[2048], ts[40];
	int n;

	if (level < log_threshold)
		return;
	dw_rfc3339(dw_wall_us(), ts, sizeof(ts));
	if (req)
		n = snprintf(line, sizeof(line), "%s level=%s req=%s ", ts, level_names[level], req);
	else
		n = snprintf(line, sizeof(line), "%s level=%s ", ts, level_names[level]);
	if (n < 0)
		n = 0;
	if ((size_t)n < sizeof(line)) {
		int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
		if (m > 0)
			n += m;
	}
	if ((size_t)n >= sizeof(line) - 1)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* One fwrite per line keeps lines whole across threads (stdio locks).
	 * When the program made stderr buffered, only request-scoped lines below
	 * warn (the per-write access log) wait for the program's flush; every
	 * operational line and every warning or error goes out at once. */
	fwrite(line, 1, (size_t)n, stderr);
	if (level >= DW_LOG_WARN || !req)
		fflush(stderr);
	errno = saved;
}

void dw_log(enum dw_log_level level, const char *req, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dw_vlog(level, req, fmt, ap);
	va_end(ap);
}

int64_t dw_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t dw_wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void dw_rfc3339(int64_t wall_us, char *buf, size_t len)
{
	time_t secs = (time_t)(wall_us / 1000000);
	struct tm tm;

	gmtime_r(&secs, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)((wall_us / 1000) % 1000));
}

static void oom(size_t n) __attribute__((noreturn));
static void oom(size_t n)
{
	fprintf(stderr, "dualwrite: out of memory allocating %zu bytes\n", n);
	abort();
}

void *dw_malloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		oom(n);
	return p;
}

void *dw_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		oom(n * size);
	return p;
}

void *dw_realloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (!q)
		oom(n);
	return q;
}

char *dw_strdup(const char *s)
{
	return s ? dw_strndup(s, strlen(s)) : NULL;
}

char *dw_strndup(const char *s, size_t n)
{
	char *p;

	if (!s)
		return NULL;
	p = dw_malloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}
