/*
 * dw.h — the few things every module shares: the error out-parameter that
 * carries context up to the one place that reports it, a list of such errors
 * for passes that report everything at once (config), the levelled logger,
 * and small time helpers.
 *
 * It does not allocate on the error path: struct dw_err is a fixed buffer so
 * that an out-of-memory condition can still be described.
 */
#ifndef DW_H
#define DW_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define DW_MUSTCHECK __attribute__((warn_unused_result))
#define DW_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define DW_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* An error message with context. Empty string: no error. */
struct dw_err {
	char msg[512];
};

/* Set the message (replaces any previous one). Keeps errno. */
void dw_err_set(struct dw_err *e, const char *fmt, ...) DW_PRINTF(2, 3);
/* Prepend "context: " to the current message, so callers can add where. */
void dw_err_prefix(struct dw_err *e, const char *fmt, ...) DW_PRINTF(2, 3);

/* A growable list of error lines; each "file:line: where: what". */
struct dw_errlist {
	char **msgs; /* owned */
	size_t n, cap;
};
void dw_errlist_add(struct dw_errlist *l, const char *fmt, ...) DW_PRINTF(2, 3);
void dw_errlist_free(struct dw_errlist *l); /* leaves an empty list */

/* Logging: one line per call to stderr, "TIME level=L [req=ID] message". */
enum dw_log_level { DW_LOG_DEBUG, DW_LOG_INFO, DW_LOG_WARN, DW_LOG_ERROR };
/* Set once at start-up by the program's top level; default INFO. */
void dw_log_set_level(enum dw_log_level level);
int dw_log_enabled(enum dw_log_level level);
/* req may be NULL. Keeps errno. Never call from a signal handler. */
void dw_log(enum dw_log_level level, const char *req, const char *fmt, ...) DW_PRINTF(3, 4);
void dw_vlog(enum dw_log_level level, const char *req, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
/* A line whose message is already formatted (len bytes, no newline). */
void dw_log_text(enum dw_log_level level, const char *req, const char *msg, size_t len);
#define log_debug(...) dw_log(DW_LOG_DEBUG, NULL, __VA_ARGS__)
#define log_info(...) dw_log(DW_LOG_INFO, NULL, __VA_ARGS__)
#define log_warn(...) dw_log(DW_LOG_WARN, NULL, __VA_ARGS__)
#define log_error(...) dw_log(DW_LOG_ERROR, NULL, __VA_ARGS__)

/* Clocks. */
int64_t dw_now_us(void);      /* CLOCK_MONOTONIC, microseconds */
int64_t dw_wall_us(void);     /* CLOCK_REALTIME, microseconds since the epoch */
/* RFC 3339 UTC with milliseconds, e.g. "2026-11-22T04:33:13.123Z"; buf >= 32 bytes. */
void dw_rfc3339(int64_t wall_us, char *buf, size_t len);

/* Text built without printf on hot paths (request heads, access-log lines):
 * appends to a caller-owned buffer of cap bytes; what does not fit is cut and
 * the builder remembers that (cut). No NUL is written; n is the length. */
struct dw_text {
	char *p;
	size_t n, cap;
	int cut;
};
static inline void dw_text_init(struct dw_text *t, char *buf, size_t cap)
{
	t->p = buf;
	t->n = 0;
	t->cap = cap;
	t->cut = 0;
}
void dw_text_put(struct dw_text *t, const void *s, size_t len);
void dw_text_str(struct dw_text *t, const char *s);
/* A string literal, its length known at compile time. */
#define dw_text_lit(t, lit) dw_text_put((t), "" lit, sizeof(lit) - 1)
void dw_text_u64(struct dw_text *t, uint64_t v);
/* v in lowercase hex, zero-padded to exactly width digits (its low 4*width bits). */
void dw_text_hex(struct dw_text *t, uint64_t v, int width);
/* An IPv4 (af AF_INET, 4 bytes) or IPv6 (AF_INET6, 16 bytes) address as text;
 * "?" for anything else. */
void dw_text_addr(struct dw_text *t, int af, const unsigned char *addr);

/* strdup that aborts on out-of-memory (allocation failure of a few bytes is
 * not a condition this program can serve through). NULL in, NULL out. */
char *dw_strdup(const char *s);
char *dw_strndup(const char *s, size_t n);
/* Report a failed allocation of n bytes and abort. */
void dw_oom(size_t n) __attribute__((noreturn));
void *dw_malloc(size_t n);
void *dw_calloc(size_t n, size_t size);
void *dw_realloc(void *p, size_t n);

#endif
