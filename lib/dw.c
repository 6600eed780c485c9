/*
 * dw.c — error values, the logger and clock helpers declared in dw.h.
 */
#include "dw.h"

#include <arpa/inet.h>
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

/* Set by the top level at start and on reload (log_level is reloadable);
 * every thread reads it, hence the atomics. */
static int log_threshold = DW_LOG_INFO;

void dw_log_set_level(enum dw_log_level level)
{
	__atomic_store_n(&log_threshold, (int)level, __ATOMIC_RELAXED);
}

int dw_log_enabled(enum dw_log_level level)
{
	return (int)level >= __atomic_load_n(&log_threshold, __ATOMIC_RELAXED);
}

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Append s at line[n], as much as fits in cap; returns the new length. */
static size_t append(char *line, size_t cap, size_t n, const char *s)
{
	while (*s && n < cap)
		line[n++] = *s++;
	return n;
}

/* "<time> level=<l> [req=<id> ]" into line; returns its length. */
static size_t log_prefix(char *line, size_t cap, enum dw_log_level level, const char *req)
{
	size_t n;

	dw_rfc3339(dw_wall_us(), line, cap);
	n = strlen(line);
	n = append(line, cap, n, " level=");
	n = append(line, cap, n, level_names[level]);
	n = append(line, cap, n, " ");
	if (req) {
		n = append(line, cap, n, "req=");
		n = append(line, cap, n, req);
		n = append(line, cap, n, " ");
	}
	return n;
}

/* One fwrite per line keeps lines whole across threads (stdio locks). When
 * the program made stderr buffered, only request-scoped lines below warn
 * (the per-write access log) wait for the program's flush; every
 * operational line and every warning or error goes out at once. */
static void log_emit(enum dw_log_level level, const char *req, char *line, size_t n, size_t cap)
{
	if (n >= cap - 1)
		n = cap - 2;
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
	if (level >= DW_LOG_WARN || !req)
		fflush(stderr);
}

void dw_vlog(enum dw_log_level level, const char *req, const char *fmt, va_list ap)
{
	char msg[2048];
	int m;

	if (!dw_log_enabled(level))
		return;
	m = vsnprintf(msg, sizeof(msg), fmt, ap);
	if (m < 0)
		m = 0;
	dw_log_text(level, req, msg, (size_t)m < sizeof(msg) ? (size_t)m : sizeof(msg) - 1);
}

void dw_log_text(enum dw_log_level level, const char *req, const char *msg, size_t len)
{
	int saved = errno;
	char line[2048];
	size_t n;

	if (!dw_log_enabled(level))
		return;
	n = log_prefix(line, sizeof(line), level, req);
	if (len > sizeof(line) - 2 - n)
		len = sizeof(line) - 2 - n;
	memcpy(line + n, msg, len);
	log_emit(level, req, line, n + len, sizeof(line));
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

static void put_digits(char *p, unsigned v, int n)
{
	while (n--) {
		p[n] = (char)('0' + v % 10);
		v /= 10;
	}
}

/* Gregorian date of a day count since 1970-01-01 (H. Hinnant's
 * civil_from_days): no gmtime_r and no printf on every log line. */
void dw_rfc3339(int64_t wall_us, char *buf, size_t len)
{
	int64_t secs = wall_us / 1000000, days = secs / 86400, sod = secs % 86400;
	int64_t z, era, doe, yoe, y, doy, mp, d, m;

	if (wall_us < 0 || len < 25) {
		time_t t = (time_t)secs;
		struct tm tm;

		gmtime_r(&t, &tm);
		snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			 (int)((wall_us / 1000) % 1000));
		return;
	}
	z = days + 719468;
	era = z / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	y = yoe + era * 400;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	d = doy - (153 * mp + 2) / 5 + 1;
	m = mp < 10 ? mp + 3 : mp - 9;
	y += m <= 2;
	put_digits(buf, (unsigned)(y % 10000), 4);
	buf[4] = '-';
	put_digits(buf + 5, (unsigned)m, 2);
	buf[7] = '-';
	put_digits(buf + 8, (unsigned)d, 2);
	buf[10] = 'T';
	put_digits(buf + 11, (unsigned)(sod / 3600), 2);
	buf[13] = ':';
	put_digits(buf + 14, (unsigned)(sod / 60 % 60), 2);
	buf[16] = ':';
	put_digits(buf + 17, (unsigned)(sod % 60), 2);
	buf[19] = '.';
	put_digits(buf + 20, (unsigned)(wall_us / 1000 % 1000), 3);
	buf[23] = 'Z';
	buf[24] = '\0';
}

void dw_text_put(struct dw_text *t, const void *s, size_t len)
{
	if (len > t->cap - t->n) {
		len = t->cap - t->n;
		t->cut = 1;
	}
	memcpy(t->p + t->n, s, len);
	t->n += len;
}

void dw_text_str(struct dw_text *t, const char *s)
{
	dw_text_put(t, s, strlen(s));
}

void dw_text_u64(struct dw_text *t, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof(tmp);

	do
		tmp[--i] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	dw_text_put(t, tmp + i, sizeof(tmp) - i);
}

void dw_text_hex(struct dw_text *t, uint64_t v, int width)
{
	char tmp[16];

	if (width > 16)
		width = 16;
	for (int i = width - 1; i >= 0; i--, v >>= 4)
		tmp[i] = "0123456789abcdef"[v & 15];
	dw_text_put(t, tmp, width > 0 ? (size_t)width : 0);
}

void dw_text_addr(struct dw_text *t, int af, const unsigned char *addr)
{
	char buf[INET6_ADDRSTRLEN];

	if (af == AF_INET) {
		for (int i = 0; i < 4; i++) {
			if (i)
				dw_text_put(t, ".", 1);
			dw_text_u64(t, addr[i]);
		}
	} else if (af == AF_INET6 && inet_ntop(AF_INET6, addr, buf, sizeof(buf))) {
		dw_text_str(t, buf);
	} else {
		dw_text_put(t, "?", 1);
	}
}

void dw_oom(size_t n)
{
	fprintf(stderr, "dualwrite: out of memory allocating %zu bytes\n", n);
	abort();
}

void *dw_malloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		dw_oom(n);
	return p;
}

void *dw_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		dw_oom(n * size);
	return p;
}

void *dw_realloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (!q)
		dw_oom(n);
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
