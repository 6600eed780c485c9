/*
 * http_parse — a strict HTTP/1.x message parser with no I/O (RFC 9110/9112).
 *
 * It finds and parses message heads (requests and responses) held in memory,
 * derives body framing from them, and decodes chunked bodies incrementally.
 * The caller owns the bytes and the sockets; this module never reads, writes
 * or allocates beyond the owned copy of a head.
 *
 * Strictness is the point: anything a smuggling attack could exploit is an
 * error, never a guess — both Content-Length and Transfer-Encoding, differing
 * or malformed Content-Length, invalid chunk sizes, bare CR or LF, obs-fold,
 * control bytes in names or values, a missing or duplicate Host on HTTP/1.1.
 * In requests also: any transfer coding but chunked (501: we do not decode
 * gzip & co.), CONNECT (501: a tunnel has no framing to check), and a header
 * name with '_' that reads as Transfer-Encoding or Content-Length once '_' is
 * '-' (400: "Transfer_Encoding", the lookalike a front-end folding '_' to '-'
 * would honour while we did not — as nginx's underscores_in_headers off and
 * HAProxy refuse it). Other underscore names are ordinary headers.
 * Errors come with the HTTP status the proxy should answer with (400, 431,
 * 501, 505) and a short reason.
 */
#ifndef DW_HTTP_PARSE_H
#define DW_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw.h"

enum http_method {
	HTTP_M_OTHER = 0, /* a valid token we do not know: forwarded as is */
	HTTP_M_GET,
	HTTP_M_HEAD,
	HTTP_M_POST,
	HTTP_M_PUT,
	HTTP_M_PATCH,
	HTTP_M_DELETE,
	HTTP_M_OPTIONS,
	HTTP_M_TRACE,
	HTTP_M_CONNECT,
};

enum http_rc {
	HTTP_OK = 0,
	HTTP_INCOMPLETE = 1, /* need more bytes; nothing seen so far is invalid */
	HTTP_ERROR = -1,     /* *status and err say what and how to answer */
};

#define HTTP_MAX_HEADERS 100

struct http_header {
	const char *name; /* points into http_head.raw; not NUL-terminated */
	size_t name_len;
	const char *value; /* OWS-trimmed */
	size_t value_len;
};

/* A parsed head. Every pointer points into raw, which the head owns. */
struct http_head {
	char *raw; /* owned copy of the head bytes (NUL-terminated) */
	size_t raw_len;
	int version_minor; /* HTTP/1.<version_minor>: 0 or 1 */

	/* requests */
	enum http_method method;
	const char *method_str;
	size_t method_len;
	const char *target; /* request-target as sent (origin-form or absolute-form) */
	size_t target_len;
	const char *path; /* origin-form path without the query */
	size_t path_len;
	const char *query; /* after '?', NULL when there is none */
	size_t query_len;
	const char *host; /* Host header value (required on 1.1 requests) */
	size_t host_len;

	/* responses */
	int status;
	const char *reason;
	size_t reason_len;

	struct http_header headers[HTTP_MAX_HEADERS];
	size_t nheaders;

	/* framing, derived while parsing */
	int64_t content_length; /* -1 when absent */
	bool chunked;		/* Transfer-Encoding: chunked (final coding) */
	bool conn_close;	/* Connection: close seen */
	bool conn_keep_alive;	/* Connection: keep-alive seen */
	bool conn_names;	/* Connection lists a token other than keep-alive */
	bool expect_continue;	/* Expect: 100-continue (requests) */
	bool upgrade;		/* Connection: upgrade or Upgrade header seen */
};

/*
 * Incremental head finder. Keep one scanner per message; call http_scan_head
 * each time more bytes arrive with the whole buffered prefix (buf[0..len)).
 * It resumes where it stopped, so total work is linear.
 *
 * Leading CRLFs before a request line are skipped (RFC 9112 §2.2); *skip says
 * how many bytes of buf were such empty lines, the head starts at buf+*skip.
 * Returns HTTP_OK with *head_len (from the head start, including the final
 * CRLFCRLF), HTTP_INCOMPLETE, or HTTP_ERROR with *status = 400 (bare CR or LF,
 * NUL) or 431 when the head exceeds max_bytes (for responses the caller maps
 * that to 502).
 */
struct http_scanner {
	size_t pos;   /* bytes examined so far */
	size_t skip;  /* leading empty lines skipped */
	int state;    /* private */
};
void http_scanner_init(struct http_scanner *s);
int http_scan_head(struct http_scanner *s, const char *buf, size_t len, size_t max_bytes,
		   size_t *skip, size_t *head_len, int *status, struct dw_err *err) DW_MUSTCHECK;

/*
 * Parse a complete request head (buf[0..len) ends with CRLFCRLF, as found by
 * http_scan_head). On success h is filled and owns a copy of the bytes; on
 * error h is left cleared and *status is 400, 501 (unknown transfer coding) or
 * 505 (version other than HTTP/1.0 or 1.1). Either way call http_head_clear.
 */
int http_parse_request(struct http_head *h, const char *buf, size_t len, int *status,
		       struct dw_err *err) DW_MUSTCHECK;
/* The same for a response head; errors have *status = 502. */
int http_parse_response(struct http_head *h, const char *buf, size_t len, int *status,
			struct dw_err *err) DW_MUSTCHECK;
/* Free what h owns and zero it. Safe on a zeroed or already-cleared head. */
void http_head_clear(struct http_head *h);

/* The first header with this name (case-insensitive), or NULL. */
const struct http_header *http_head_get(const struct http_head *h, const char *name);
/* Whether a header is hop-by-hop: the fixed RFC 9110 set plus every name
 * listed in the message's Connection header(s). */
bool http_is_hop_by_hop(const struct http_head *h, const char *name, size_t name_len);
/* Whether the connection may carry another message after this one, from the
 * version and Connection tokens (1.1 default keep-alive, 1.0 default close). */
bool http_keep_alive(const struct http_head *h);

/* How a response body is delimited (RFC 9112 §6.3). */
enum http_body_kind {
	HTTP_BODY_NONE,	    /* HEAD request, 1xx, 204, 304 */
	HTTP_BODY_LENGTH,   /* exactly content_length bytes */
	HTTP_BODY_CHUNKED,  /* chunked coding */
	HTTP_BODY_UNTIL_CLOSE, /* read until the server closes */
};
enum http_body_kind http_response_body_kind(const struct http_head *resp,
					    enum http_method req_method);

/* RFC 9110 §5.6.2: whether c is a tchar; whether s[0..len) is a token
 * (non-empty, tchars only). The one definition used by config, routes and
 * the mapping engine as well. */
bool http_is_tchar(unsigned char c);
bool http_is_token(const char *s, size_t len);

/* Method name -> enum (HTTP_M_OTHER for unknown tokens) and back. */
enum http_method http_method_from(const char *s, size_t len);
const char *http_method_name(enum http_method m); /* NULL for HTTP_M_OTHER */

/* Canonical reason phrase for a status ("Not Found"), "" if unknown. */
const char *http_reason(int status);

/*
 * Incremental chunked-body decoder. Feed it bytes as they arrive; it calls
 * emit(arg, p, n) for each run of payload bytes and stops exactly after the
 * last-chunk and trailer section. Trailers are validated and discarded.
 * Returns HTTP_OK when the body is complete (*consumed = bytes of this input
 * that belonged to the body), HTTP_INCOMPLETE when all input was consumed and
 * more is needed, HTTP_ERROR on malformed input (chunk-size not hex, too
 * large, bad extension, bare CR/LF, missing CRLF after data, trailer too long).
 * max_trailer_bytes bounds the trailer section. With http_chunked_limit set,
 * a chunk-size that takes the payload past max_total fails as soon as its
 * digits say so (too_large set: the proxy answers 413), before any data.
 */
struct http_chunked {
	int state;	     /* private */
	uint64_t remaining;   /* payload bytes left in the current chunk */
	size_t line_len;      /* length of the size or trailer line so far */
	size_t trailer_bytes; /* trailer bytes so far */
	size_t max_trailer_bytes;
	int digits;	     /* hex digits in the current size */
	uint64_t total;	     /* payload bytes decoded so far */
	uint64_t max_total;   /* payload limit, 0 = none (http_chunked_limit) */
	bool too_large;	     /* the failure was max_total */
};
typedef void (*http_emit_fn)(void *arg, const char *p, size_t n);
void http_chunked_init(struct http_chunked *c, size_t max_trailer_bytes);
/* Refuse payloads over max_total bytes (call after init; 0 = no limit). */
void http_chunked_limit(struct http_chunked *c, uint64_t max_total);
int http_chunked_decode(struct http_chunked *c, const char *in, size_t len, size_t *consumed,
			http_emit_fn emit, void *arg, struct dw_err *err) DW_MUSTCHECK;

/*
 * Parse a Content-Length value: 1*DIGIT, no sign, no spaces, no leading
 * garbage, at most 18 digits. A comma-separated list of identical values is
 * accepted as one (RFC 9110 §8.6); differing values are an error.
 * Returns 0 and *out, or -1.
 */
int http_parse_content_length(const char *v, size_t len, int64_t *out) DW_MUSTCHECK;

#endif
