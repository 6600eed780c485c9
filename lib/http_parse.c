/*
 * http_parse.c — the strict HTTP/1.x parser declared in http_parse.h.
 *
 * Three pieces, all without I/O: an incremental head finder (http_scan_head)
 * that only rejects what would otherwise stall it (bare CR/LF, NUL, size),
 * a one-pass head parser working on an owned NUL-terminated copy, and an
 * incremental chunked-body decoder. Every byte class is a lookup in one
 * constant table; the NUL terminator of the copy doubles as a sentinel, so
 * the inner loops of the head parser need no bounds checks of their own.
 * Anything ambiguous is an error: this is where request smuggling is stopped.
 */
#include "http_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- character classes -------------------------------------------------- */

enum {
	C_TCHAR = 1 << 0,  /* token character (RFC 9110 §5.6.2) */
	C_FVAL = 1 << 1,   /* field-value byte: VCHAR / obs-text / SP / HTAB */
	C_TARGET = 1 << 2, /* allowed in a request-target */
	C_HEX = 1 << 3,	   /* HEXDIG */
	C_HOST = 1 << 4,   /* reg-name byte: unreserved / sub-delims minus ',' */
	C_QDTEXT = 1 << 5, /* qdtext (RFC 9110 §5.6.4) */
	C_DIGIT = 1 << 6,
};

#define IS_ALPHA(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_DIG(c) ((c) >= '0' && (c) <= '9')
#define IS_TCHAR(c)                                                                           \
	(IS_ALPHA(c) || IS_DIG(c) || (c) == '!' || (c) == '#' || (c) == '$' || (c) == '%' ||  \
	 (c) == '&' || (c) == '\'' || (c) == '*' || (c) == '+' || (c) == '-' || (c) == '.' || \
	 (c) == '^' || (c) == '_' || (c) == '`' || (c) == '|' || (c) == '~')
#define IS_VCHAR(c) ((c) >= 0x21 && (c) <= 0x7e)
#define IS_OBS(c) ((c) >= 0x80)
#define IS_FVAL(c) (IS_VCHAR(c) || IS_OBS(c) || (c) == ' ' || (c) == '\t')
/* Printable ASCII except '#': lenient about '{', '|', '"' and friends because
 * the legacy service behind us may accept them and the SPEC forbids rejecting
 * what it accepts unless it is a protocol-level hazard (CTL, SP, non-ASCII). */
#define IS_TARGET(c) (IS_VCHAR(c) && (c) != '#')
#define IS_HEXC(c) (IS_DIG(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F'))
#define IS_HOSTC(c)                                                                           \
	(IS_ALPHA(c) || IS_DIG(c) || (c) == '-' || (c) == '.' || (c) == '_' || (c) == '~' ||  \
	 (c) == '!' || (c) == '$' || (c) == '&' || (c) == '\'' || (c) == '(' || (c) == ')' || \
	 (c) == '*' || (c) == '+' || (c) == ';' || (c) == '=')
#define IS_QDTEXT(c)                                                                         \
	((c) == '\t' || (c) == ' ' || (c) == 0x21 || ((c) >= 0x23 && (c) <= 0x5b) ||         \
	 ((c) >= 0x5d && (c) <= 0x7e) || IS_OBS(c))

#define CLS(c)                                                                              \
	((IS_TCHAR(c) ? C_TCHAR : 0) | (IS_FVAL(c) ? C_FVAL : 0) |                          \
	 (IS_TARGET(c) ? C_TARGET : 0) | (IS_HEXC(c) ? C_HEX : 0) | (IS_HOSTC(c) ? C_HOST : 0) | \
	 (IS_QDTEXT(c) ? C_QDTEXT : 0) | (IS_DIG(c) ? C_DIGIT : 0))
#define CLS4(n) CLS(n), CLS((n) + 1), CLS((n) + 2), CLS((n) + 3)
#define CLS16(n) CLS4(n), CLS4((n) + 4), CLS4((n) + 8), CLS4((n) + 12)
#define CLS64(n) CLS16(n), CLS16((n) + 16), CLS16((n) + 32), CLS16((n) + 48)

static const uint8_t cls[256] = {CLS64(0), CLS64(64), CLS64(128), CLS64(192)};

#define HAS(c, f) (cls[(unsigned char)(c)] & (f))

bool http_is_tchar(unsigned char c)
{
	return HAS(c, C_TCHAR) != 0;
}

bool http_is_token(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!HAS(s[i], C_TCHAR))
			return false;
	return true;
}

static inline unsigned char lower(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

/* Case-insensitive equality of s[0..n) with a lowercase literal. */
static bool ci_eq(const char *s, size_t n, const char *lit, size_t litlen)
{
	if (n != litlen)
		return false;
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)s[i]) != (unsigned char)lit[i])
			return false;
	return true;
}
#define CI_EQ(s, n, lit) ci_eq((s), (n), lit, sizeof(lit) - 1)

/* Whether s[0..n) holds a '_' and equals the lowercase literal once every
 * '_' reads as '-': "Transfer_Encoding" for "transfer-encoding". */
static bool underscore_lookalike(const char *s, size_t n, const char *lit, size_t litlen)
{
	bool underscore = false;

	if (n != litlen)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = lower((unsigned char)s[i]);

		if (c == '_') {
			underscore = true;
			c = '-';
		}
		if (c != (unsigned char)lit[i])
			return false;
	}
	return underscore;
}
#define LOOKALIKE(s, n, lit) underscore_lookalike((s), (n), lit, sizeof(lit) - 1)

static bool ci_eq2(const char *a, size_t an, const char *b, size_t bn)
{
	if (an != bn)
		return false;
	for (size_t i = 0; i < an; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

static inline bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Iterate the elements of a comma-separated list (RFC 9110 §5.6.1): returns
 * false when s[*pos..n) is exhausted, else the OWS-trimmed element (possibly
 * empty) in *el and *el_len.
 */
static bool list_next(const char *s, size_t n, size_t *pos, const char **el, size_t *el_len)
{
	size_t i = *pos, j;

	if (i > n)
		return false;
	j = i;
	while (j < n && s[j] != ',')
		j++;
	*pos = j + 1;
	while (i < j && is_ows(s[i]))
		i++;
	while (j > i && is_ows(s[j - 1]))
		j--;
	*el = s + i;
	*el_len = j - i;
	return true;
}

/* ---- methods, reasons --------------------------------------------------- */

static const struct {
	const char *name;
	size_t len;
} method_names[] = {
	[HTTP_M_OTHER] = {NULL, 0},	    [HTTP_M_GET] = {"GET", 3},
	[HTTP_M_HEAD] = {"HEAD", 4},	    [HTTP_M_POST] = {"POST", 4},
	[HTTP_M_PUT] = {"PUT", 3},	    [HTTP_M_PATCH] = {"PATCH", 5},
	[HTTP_M_DELETE] = {"DELETE", 6},    [HTTP_M_OPTIONS] = {"OPTIONS", 7},
	[HTTP_M_TRACE] = {"TRACE", 5},	    [HTTP_M_CONNECT] = {"CONNECT", 7},
};

enum http_method http_method_from(const char *s, size_t len)
{
	/* Methods are case-sensitive (RFC 9110 §9.1): "get" is some other token. */
	for (size_t m = 1; m < DW_ARRAY_LEN(method_names); m++)
		if (method_names[m].len == len && memcmp(method_names[m].name, s, len) == 0)
			return (enum http_method)m;
	return HTTP_M_OTHER;
}

const char *http_method_name(enum http_method m)
{
	if ((size_t)m >= DW_ARRAY_LEN(method_names))
		return NULL;
	return method_names[m].name;
}

const char *http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 411: return "Length Required";
	case 412: return "Precondition Failed";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 417: return "Expectation Failed";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "";
	}
}

/* ---- Content-Length ----------------------------------------------------- */

int http_parse_content_length(const char *v, size_t len, int64_t *out)
{
	int64_t first = -1;
	size_t i = 0;

	/* 1#( 1*18DIGIT ) with OWS only next to the commas: " 3" alone is not a
	 * Content-Length value; the header parser trims field OWS before us. */
	for (;;) {
		int64_t val = 0;
		size_t start;

		if (i > 0)
			while (i < len && is_ows(v[i]))
				i++;
		start = i;
		while (i < len && HAS(v[i], C_DIGIT)) {
			if (i - start == 18)
				return -1; /* checked first: a 19th digit could overflow */
			val = val * 10 + (v[i] - '0');
			i++;
		}
		if (i == start)
			return -1;
		if (first >= 0 && val != first)
			return -1;
		first = val;
		if (i == len)
			break;
		while (i < len && is_ows(v[i]))
			i++;
		if (i == len || v[i] != ',')
			return -1;
		i++;
	}
	*out = first;
	return 0;
}

/* ---- head scanner ------------------------------------------------------- */

enum {
	SC_SKIP = 0, /* before the start line: empty lines are skipped */
	SC_SKIP_CR,  /* CR of a leading empty line seen */
	SC_LINE,     /* inside a line */
	SC_CR,	     /* CR ending a non-empty line seen */
	SC_BOL,	     /* at the beginning of a line after the start line */
	SC_END_CR,   /* CR of the final empty line seen */
	SC_DONE,
	SC_ERR400,
	SC_ERR431,
};

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define HASZERO(v) (((v) - ONES) & ~(v) & HIGHS)

/* Offset of the first CR, LF or NUL in p[0..n), or n. Eight bytes at a time
 * because header lines (cookies, tokens) can be long and this runs on every
 * byte of every request. */
static size_t find_special(const char *p, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t w;

		memcpy(&w, p + i, 8);
		if (HASZERO(w) | HASZERO(w ^ (ONES * '\r')) | HASZERO(w ^ (ONES * '\n')))
			break;
	}
	for (; i < n; i++)
		if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
			return i;
	return n;
}

void http_scanner_init(struct http_scanner *s)
{
	s->pos = 0;
	s->skip = 0;
	s->state = SC_SKIP;
}

int http_scan_head(struct http_scanner *s, const char *buf, size_t len, size_t max_bytes,
		   size_t *skip, size_t *head_len, int *status, struct dw_err *err)
{
	size_t i = s->pos, lim;
	int st = s->state;

	*skip = s->skip;
	*head_len = 0;
	switch (st) {
	case SC_DONE:
		*head_len = s->pos - s->skip;
		return HTTP_OK;
	case SC_ERR400:
		*status = 400;
		dw_err_set(err, "malformed message head");
		return HTTP_ERROR;
	case SC_ERR431:
		*status = 431;
		dw_err_set(err, "message head larger than %zu bytes", max_bytes);
		return HTTP_ERROR;
	}

	/* Leading empty lines, bounded like a head so they cannot grow forever. */
	while ((st == SC_SKIP || st == SC_SKIP_CR) && i < len) {
		char c = buf[i];

		if (st == SC_SKIP_CR) {
			if (c != '\n') {
				dw_err_set(err, "bare CR before the start line");
				goto err400;
			}
			st = SC_SKIP;
			i++;
		} else if (c == '\r') {
			if (i >= max_bytes) {
				dw_err_set(err, "too many empty lines before the start line");
				goto err400;
			}
			st = SC_SKIP_CR;
			i++;
		} else if (c == '\n') {
			dw_err_set(err, "bare LF before the start line");
			goto err400;
		} else {
			s->skip = i;
			*skip = i;
			st = SC_LINE;
		}
	}
	if (st == SC_SKIP || st == SC_SKIP_CR)
		goto incomplete;

	/* Never look further than max_bytes into the head. */
	lim = len - s->skip > max_bytes ? s->skip + max_bytes : len;
	while (i < lim) {
		char c;

		if (st == SC_LINE) {
			i += find_special(buf + i, lim - i);
			if (i == lim)
				break;
		}
		c = buf[i];
		switch (st) {
		case SC_LINE:
			if (c == '\r') {
				st = SC_CR;
				break;
			}
			dw_err_set(err, c == '\n' ? "bare LF in message head" : "NUL in message head");
			goto err400;
		case SC_CR:
			if (c != '\n') {
				dw_err_set(err, "bare CR in message head");
				goto err400;
			}
			st = SC_BOL;
			break;
		case SC_BOL:
			if (c == '\r') {
				st = SC_END_CR;
				break;
			}
			if (c == '\n' || c == '\0') {
				dw_err_set(err, c == '\n' ? "bare LF in message head"
							  : "NUL in message head");
				goto err400;
			}
			st = SC_LINE;
			continue; /* re-examine c as part of the line */
		case SC_END_CR:
			if (c != '\n') {
				dw_err_set(err, "bare CR in message head");
				goto err400;
			}
			i++;
			s->pos = i;
			s->state = SC_DONE;
			*head_len = i - s->skip;
			return HTTP_OK;
		}
		i++;
	}
	if (i - s->skip >= max_bytes) {
		s->pos = i;
		s->state = SC_ERR431;
		*status = 431;
		dw_err_set(err, "message head larger than %zu bytes", max_bytes);
		return HTTP_ERROR;
	}
incomplete:
	s->pos = i;
	s->state = st;
	return HTTP_INCOMPLETE;
err400:
	s->pos = i;
	s->state = SC_ERR400;
	*status = 400;
	return HTTP_ERROR;
}

/* ---- head parser -------------------------------------------------------- */

/* Validate uri-host [":" port] (RFC 9110 §7.2). need_port: authority-form. */
static bool valid_host(const char *s, size_t n, bool need_port)
{
	size_t i = 0, digits;

	if (n > 0 && s[0] == '[') {
		/* IP-literal: IPv6address or IPvFuture; check the alphabet only. */
		for (i = 1; i < n && s[i] != ']'; i++)
			if (!HAS(s[i], C_HOST) && s[i] != ':')
				return false;
		if (i == n || i == 1)
			return false;
		i++;
	} else {
		while (i < n) {
			if (HAS(s[i], C_HOST)) {
				i++;
			} else if (s[i] == '%') {
				if (i + 2 >= n || !HAS(s[i + 1], C_HEX) || !HAS(s[i + 2], C_HEX))
					return false;
				i += 3;
			} else {
				break;
			}
		}
		if (need_port && i == 0)
			return false;
	}
	if (i == n)
		return !need_port;
	if (s[i] != ':')
		return false;
	for (digits = 0, i++; i < n; i++, digits++)
		if (!HAS(s[i], C_DIGIT) || digits >= 5)
			return false;
	return digits > 0 || !need_port;
}

/* Transfer-Encoding accumulated over every field line of the head. */
struct te_info {
	bool seen;
	bool bad;	   /* syntax error, empty element, parameters on chunked */
	bool unknown;	   /* a coding we cannot vouch for */
	bool last_chunked; /* the final coding so far is chunked */
	int nchunked;
};

static void te_add(struct te_info *te, const char *v, size_t n)
{
	size_t pos = 0, el_len;
	const char *el;

	te->seen = true;
	while (list_next(v, n, &pos, &el, &el_len)) {
		size_t t = 0;
		bool params;

		while (t < el_len && HAS(el[t], C_TCHAR))
			t++;
		if (t == 0) {
			te->bad = true;
			continue;
		}
		params = t < el_len;
		if (params) {
			/* only "token OWS ; ..." may follow a coding name */
			size_t k = t;
			while (k < el_len && is_ows(el[k]))
				k++;
			if (k == el_len || el[k] != ';')
				te->bad = true;
		}
		if (CI_EQ(el, t, "chunked")) {
			te->nchunked++;
			te->last_chunked = true;
			if (params)
				te->bad = true;
			continue;
		}
		/* Any other coding (gzip included) is one this proxy does not
		 * decode: a request carrying it is refused with 501 (RFC 9112
		 * §6.1); a response is read until close (§6.3). */
		te->last_chunked = false;
		te->unknown = true;
	}
}

static void connection_add(struct http_head *h, const char *v, size_t n)
{
	size_t pos = 0, el_len;
	const char *el;

	while (list_next(v, n, &pos, &el, &el_len)) {
		if (CI_EQ(el, el_len, "close"))
			h->conn_close = true;
		else if (CI_EQ(el, el_len, "keep-alive"))
			h->conn_keep_alive = true;
		else if (CI_EQ(el, el_len, "upgrade"))
			h->upgrade = true;
		/* every token but keep-alive (hop-by-hop anyway) names a header */
		if (!CI_EQ(el, el_len, "keep-alive"))
			h->conn_names = true;
	}
}

/* "HTTP/" DIGIT "." DIGIT at p: 0 = 1.0/1.1 (minor in *minor), 505 = other
 * digits, 400 = not an HTTP-version at all. */
static int parse_version(const char *p, size_t n, int *minor)
{
	if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || !IS_DIG(p[5]) || p[6] != '.' ||
	    !IS_DIG(p[7]))
		return 400;
	if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
		return 505;
	*minor = p[7] - '0';
	return 0;
}

static void head_zero(struct http_head *h)
{
	/* The header array is written before it is read; skip its 3 KiB. */
	memset(h, 0, offsetof(struct http_head, headers));
	h->nheaders = 0;
	h->content_length = -1;
	h->chunked = h->conn_close = h->conn_keep_alive = h->conn_names = false;
	h->expect_continue = h->upgrade = false;
}

/* Split an absolute-form target into authority, path and query. */
static bool parse_absolute(struct http_head *h)
{
	const char *t = h->target, *e = t + h->target_len, *p = t, *auth, *q;

	if (p == e || !IS_ALPHA((unsigned char)*p))
		return false;
	while (p < e && (IS_ALPHA((unsigned char)*p) || IS_DIG(*p) || *p == '+' || *p == '-' ||
			 *p == '.'))
		p++;
	if (!(CI_EQ(t, (size_t)(p - t), "http") || CI_EQ(t, (size_t)(p - t), "https")))
		return false;
	if (e - p < 3 || memcmp(p, "://", 3) != 0)
		return false;
	auth = p + 3;
	for (p = auth; p < e && *p != '/' && *p != '?'; p++)
		;
	/* an http(s) URI needs a host, and userinfo is an error (RFC 9110 §4.2.4) */
	if (p == auth || !valid_host(auth, (size_t)(p - auth), false))
		return false;
	for (q = p; q < e && *q != '?'; q++)
		;
	if (q == p) {
		h->path = "/"; /* empty path-abempty means "/" (RFC 9112 §3.2.1) */
		h->path_len = 1;
	} else {
		h->path = p;
		h->path_len = (size_t)(q - p);
	}
	if (q < e) {
		h->query = q + 1;
		h->query_len = (size_t)(e - q - 1);
	}
	return true;
}

#define FAIL(code, ...)                                     \
	do {                                                \
		*status = is_request ? (code) : 502;        \
		dw_err_set(err, __VA_ARGS__);               \
		goto fail;                                  \
	} while (0)

static int parse_head(struct http_head *h, const char *buf, size_t len, bool is_request,
		      int *status, struct dw_err *err)
{
	struct te_info te = {0};
	char *p, *q, *e;
	int nhost = 0, rc;

	head_zero(h);
	*status = 0;
	if (len < 4 || memcmp(buf + len - 4, "\r\n\r\n", 4) != 0) {
		*status = is_request ? 400 : 502;
		dw_err_set(err, "message head does not end with an empty line");
		return HTTP_ERROR;
	}
	h->raw = dw_malloc(len + 1);
	memcpy(h->raw, buf, len);
	h->raw[len] = '\0'; /* the sentinel every loop below stops at */
	h->raw_len = len;
	p = h->raw;
	e = p + len;

	if (is_request) {
		for (q = p; HAS(*q, C_TCHAR); q++)
			;
		if (q == p || *q != ' ')
			FAIL(400, "invalid method in request line");
		h->method_str = p;
		h->method_len = (size_t)(q - p);
		h->method = http_method_from(p, h->method_len);
		for (p = ++q; HAS(*q, C_TARGET); q++)
			;
		if (q == p)
			FAIL(400, "missing request-target");
		if (*q != ' ')
			FAIL(400, "invalid character in request-target");
		h->target = p;
		h->target_len = (size_t)(q - p);
		for (p = ++q; *q != '\r' && *q != '\0'; q++)
			;
		rc = parse_version(p, (size_t)(q - p), &h->version_minor);
		if (rc == 505)
			FAIL(505, "unsupported HTTP version");
		if (rc != 0 || *q != '\r' || q[1] != '\n')
			FAIL(400, "malformed HTTP version in request line");

		if (h->target[0] == '/') {
			const char *qm = memchr(h->target, '?', h->target_len);

			h->path = h->target;
			h->path_len = qm ? (size_t)(qm - h->target) : h->target_len;
			if (qm) {
				h->query = qm + 1;
				h->query_len = h->target_len - h->path_len - 1;
			}
			if (h->method == HTTP_M_CONNECT)
				FAIL(400, "CONNECT needs an authority-form target");
		} else if (h->target_len == 1 && h->target[0] == '*') {
			if (h->method != HTTP_M_OPTIONS)
				FAIL(400, "asterisk-form target is only valid for OPTIONS");
			h->path = h->target;
			h->path_len = 1;
		} else if (h->method == HTTP_M_CONNECT) {
			if (!valid_host(h->target, h->target_len, true))
				FAIL(400, "invalid authority-form target");
			/* a tunnel has no framing this proxy could check or mirror */
			FAIL(501, "CONNECT is not supported");
		} else if (!parse_absolute(h)) {
			FAIL(400, "invalid request-target");
		}
	} else {
		int code = 0;

		for (q = p; *q != ' ' && *q != '\r' && *q != '\0'; q++)
			;
		if (parse_version(p, (size_t)(q - p), &h->version_minor) != 0 || *q != ' ')
			FAIL(502, "malformed status line");
		p = q + 1;
		if (!IS_DIG(p[0]) || !IS_DIG(p[1]) || !IS_DIG(p[2]))
			FAIL(502, "malformed status code");
		code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
		if (code < 100 || code > 599)
			FAIL(502, "status code %d out of range", code);
		h->status = code;
		p += 3;
		/* the SP before an empty reason is often dropped: "HTTP/1.1 200" */
		if (*p == ' ')
			p++;
		else if (*p != '\r')
			FAIL(502, "malformed status code");
		for (q = p; HAS(*q, C_FVAL); q++)
			;
		if (*q != '\r' || q[1] != '\n')
			FAIL(502, "invalid character in reason phrase");
		h->reason = p;
		h->reason_len = (size_t)(q - p);
	}
	p = q + 2;

	/* Field lines up to the empty line. */
	for (;;) {
		char *name, *val, *vend;
		size_t nlen, vlen;

		if (*p == '\r') {
			if (p[1] != '\n')
				FAIL(400, "bare CR in header section");
			if (p + 2 != e)
				FAIL(400, "data after the end of the head");
			break;
		}
		if (*p == ' ' || *p == '\t')
			FAIL(400, "obsolete line folding or whitespace before a header");
		for (q = p; HAS(*q, C_TCHAR); q++)
			;
		if (*q != ':') {
			if (q == p)
				FAIL(400, "invalid character at the start of a header field");
			if (*q == ' ' || *q == '\t')
				FAIL(400, "whitespace after a header name");
			FAIL(400, "invalid character in header name or missing colon");
		}
		if (q == p)
			FAIL(400, "empty header name");
		name = p;
		nlen = (size_t)(q - p);
		for (q++; is_ows(*q); q++)
			;
		for (val = q; HAS(*q, C_FVAL); q++)
			;
		if (*q != '\r')
			FAIL(400, "invalid character in value of header %.*s", (int)nlen, name);
		if (q[1] != '\n')
			FAIL(400, "bare CR in header %.*s", (int)nlen, name);
		for (vend = q; vend > val && is_ows(vend[-1]); vend--)
			;
		vlen = (size_t)(vend - val);
		p = q + 2;

		if (h->nheaders == HTTP_MAX_HEADERS) {
			*status = is_request ? 431 : 502;
			dw_err_set(err, "more than %d header fields", HTTP_MAX_HEADERS);
			goto fail;
		}
		h->headers[h->nheaders++] = (struct http_header){name, nlen, val, vlen};

		/* The few fields that decide framing and routing. */
		switch (nlen) {
		case 4:
			if (is_request && CI_EQ(name, nlen, "host")) {
				if (++nhost > 1)
					FAIL(400, "duplicate Host header");
				if (!valid_host(val, vlen, false))
					FAIL(400, "invalid Host header");
				h->host = val;
				h->host_len = vlen;
			}
			break;
		case 6:
			if (is_request && h->version_minor == 1 && CI_EQ(name, nlen, "expect") &&
			    CI_EQ(val, vlen, "100-continue"))
				h->expect_continue = true;
			break;
		case 7:
			if (CI_EQ(name, nlen, "upgrade"))
				h->upgrade = true;
			break;
		case 10:
			if (CI_EQ(name, nlen, "connection"))
				connection_add(h, val, vlen);
			break;
		case 14:
			if (CI_EQ(name, nlen, "content-length")) {
				int64_t cl;

				if (http_parse_content_length(val, vlen, &cl) != 0)
					FAIL(400, "invalid Content-Length");
				if (h->content_length >= 0 && h->content_length != cl)
					FAIL(400, "conflicting Content-Length headers");
				h->content_length = cl;
			} else if (is_request && LOOKALIKE(name, nlen, "content-length")) {
				FAIL(400, "header %.*s looks like Content-Length", (int)nlen, name);
			}
			break;
		case 17:
			if (CI_EQ(name, nlen, "transfer-encoding"))
				te_add(&te, val, vlen);
			else if (is_request && LOOKALIKE(name, nlen, "transfer-encoding"))
				FAIL(400, "header %.*s looks like Transfer-Encoding", (int)nlen, name);
			break;
		}
	}

	if (is_request && h->version_minor == 1 && nhost == 0)
		FAIL(400, "missing Host header");
	if (te.seen) {
		if (h->version_minor == 0)
			FAIL(400, "Transfer-Encoding in an HTTP/1.0 message");
		if (h->content_length >= 0)
			FAIL(400, "both Content-Length and Transfer-Encoding");
		if (te.bad)
			FAIL(400, "malformed Transfer-Encoding");
		if (te.nchunked > 1)
			FAIL(400, "chunked applied more than once");
		if (te.nchunked == 1 && !te.last_chunked)
			FAIL(400, "chunked is not the final transfer coding");
		if (is_request && (te.unknown || te.nchunked == 0))
			FAIL(501, "unsupported transfer coding");
		/* a response without chunked last is read until close (§6.3) */
		h->chunked = te.last_chunked;
	}
	return HTTP_OK;
fail:
	http_head_clear(h);
	return HTTP_ERROR;
}

int http_parse_request(struct http_head *h, const char *buf, size_t len, int *status,
		       struct dw_err *err)
{
	return parse_head(h, buf, len, true, status, err);
}

int http_parse_response(struct http_head *h, const char *buf, size_t len, int *status,
			struct dw_err *err)
{
	return parse_head(h, buf, len, false, status, err);
}

void http_head_clear(struct http_head *h)
{
	if (!h)
		return;
	free(h->raw);
	head_zero(h);
}

const struct http_header *http_head_get(const struct http_head *h, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < h->nheaders; i++)
		if (ci_eq2(h->headers[i].name, h->headers[i].name_len, name, n))
			return &h->headers[i];
	return NULL;
}

bool http_is_hop_by_hop(const struct http_head *h, const char *name, size_t name_len)
{
	static const struct {
		const char *s;
		size_t n;
	} fixed[] = {
		{"connection", 10}, {"keep-alive", 10}, {"proxy-connection", 16},
		{"proxy-authenticate", 18}, {"proxy-authorization", 19}, {"te", 2},
		{"trailer", 7}, {"transfer-encoding", 17}, {"upgrade", 7},
	};

	for (size_t i = 0; i < DW_ARRAY_LEN(fixed); i++)
		if (ci_eq(name, name_len, fixed[i].s, fixed[i].n))
			return true;
	if (!h || !h->conn_names)
		return false;
	for (size_t i = 0; i < h->nheaders; i++) {
		const struct http_header *f = &h->headers[i];
		size_t pos = 0, el_len;
		const char *el;

		if (!CI_EQ(f->name, f->name_len, "connection"))
			continue;
		while (list_next(f->value, f->value_len, &pos, &el, &el_len))
			if (ci_eq2(el, el_len, name, name_len))
				return true;
	}
	return false;
}

bool http_keep_alive(const struct http_head *h)
{
	if (h->conn_close)
		return false;
	return h->version_minor >= 1 || h->conn_keep_alive;
}

enum http_body_kind http_response_body_kind(const struct http_head *resp,
					    enum http_method req_method)
{
	if (req_method == HTTP_M_HEAD || (resp->status >= 100 && resp->status < 200) ||
	    resp->status == 204 || resp->status == 304)
		return HTTP_BODY_NONE;
	/* a 2xx to CONNECT turns the connection into a tunnel (§6.3 item 2) */
	if (req_method == HTTP_M_CONNECT && resp->status >= 200 && resp->status < 300)
		return HTTP_BODY_NONE;
	if (resp->chunked)
		return HTTP_BODY_CHUNKED;
	if (resp->content_length >= 0)
		return HTTP_BODY_LENGTH;
	return HTTP_BODY_UNTIL_CLOSE;
}

/* ---- chunked decoder ---------------------------------------------------- */

/* Longest chunk-size line (size and extensions) we accept. */
#define CHUNK_LINE_MAX 4096

enum {
	CH_SIZE0 = 0, /* start of chunk-size: a HEXDIG is required */
	CH_SIZE,      /* more HEXDIG */
	CH_WS,	      /* SP/HTAB after the size or an extension: ';' or CR next */
	CH_EXT_NAME0, /* after ';': first tchar of the name */
	CH_EXT_NAME,
	CH_EXT_VAL0, /* after '=': token or quoted-string */
	CH_EXT_TOKEN,
	CH_EXT_QS,
	CH_EXT_QP,
	CH_EXT_QEND, /* after the closing quote */
	CH_SIZE_LF,  /* CR of the size line seen */
	CH_DATA,
	CH_DATA_CR,
	CH_DATA_LF,
	CH_TR_BOL, /* beginning of a trailer line or the final CRLF */
	CH_TR_NAME,
	CH_TR_VAL,
	CH_TR_LF,
	CH_END_LF,
	CH_DONE,
	CH_ERROR,
};

void http_chunked_init(struct http_chunked *c, size_t max_trailer_bytes)
{
	memset(c, 0, sizeof(*c));
	c->state = CH_SIZE0;
	c->max_trailer_bytes = max_trailer_bytes;
}

void http_chunked_limit(struct http_chunked *c, uint64_t max_total)
{
	c->max_total = max_total;
}

static int hexval(unsigned char ch)
{
	if (IS_DIG(ch))
		return ch - '0';
	return lower(ch) - 'a' + 10;
}

int http_chunked_decode(struct http_chunked *c, const char *in, size_t len, size_t *consumed,
			http_emit_fn emit, void *arg, struct dw_err *err)
{
	size_t i = 0;
	int st = c->state;
	const char *why = NULL;

	*consumed = 0;
	if (st == CH_DONE)
		return HTTP_OK;
	if (st == CH_ERROR) {
		dw_err_set(err, "chunked body already failed");
		return HTTP_ERROR;
	}
	while (i < len) {
		unsigned char ch = (unsigned char)in[i];

		if (st == CH_DATA) {
			size_t n = len - i;

			if ((uint64_t)n > c->remaining)
				n = (size_t)c->remaining;
			if (emit)
				emit(arg, in + i, n);
			c->total += n;
			c->remaining -= n;
			i += n;
			if (c->remaining == 0)
				st = CH_DATA_CR;
			continue;
		}
		if (st <= CH_SIZE_LF && ++c->line_len > CHUNK_LINE_MAX) {
			why = "chunk-size line too long";
			goto fail;
		}
		/* the final CRLF is not part of the trailer section */
		if (st >= CH_TR_BOL && st != CH_END_LF && !(st == CH_TR_BOL && ch == '\r') &&
		    ++c->trailer_bytes > c->max_trailer_bytes) {
			why = "trailer section too long";
			goto fail;
		}
		switch (st) {
		case CH_SIZE0:
		case CH_SIZE:
			if (HAS(ch, C_HEX)) {
				if (++c->digits > 15) {
					why = "chunk size too large";
					goto fail;
				}
				c->remaining = (c->remaining << 4) | (uint64_t)hexval(ch);
				st = CH_SIZE;
				/* refused as soon as the size says so, not after the bytes */
				if (c->max_total && c->total + c->remaining > c->max_total) {
					c->too_large = true;
					why = "chunked body larger than the limit";
					goto fail;
				}
				break;
			}
			if (st == CH_SIZE0) {
				why = "chunk size is not hexadecimal";
				goto fail;
			}
			goto after_item;
		case CH_WS:
			if (is_ows((char)ch))
				break;
			if (ch != ';') {
				why = "invalid character after chunk size";
				goto fail;
			}
			st = CH_EXT_NAME0;
			break;
		case CH_EXT_NAME0:
			if (!HAS(ch, C_TCHAR)) {
				why = "invalid chunk extension name";
				goto fail;
			}
			st = CH_EXT_NAME;
			break;
		case CH_EXT_NAME:
			if (HAS(ch, C_TCHAR))
				break;
			if (ch == '=') {
				st = CH_EXT_VAL0;
				break;
			}
			goto after_item;
		case CH_EXT_VAL0:
			if (ch == '"')
				st = CH_EXT_QS;
			else if (HAS(ch, C_TCHAR))
				st = CH_EXT_TOKEN;
			else {
				why = "invalid chunk extension value";
				goto fail;
			}
			break;
		case CH_EXT_TOKEN:
			if (HAS(ch, C_TCHAR))
				break;
			goto after_item;
		case CH_EXT_QS:
			if (ch == '"')
				st = CH_EXT_QEND;
			else if (ch == '\\')
				st = CH_EXT_QP;
			else if (!HAS(ch, C_QDTEXT)) {
				why = "invalid character in chunk extension";
				goto fail;
			}
			break;
		case CH_EXT_QP:
			if (!HAS(ch, C_FVAL)) {
				why = "invalid quoted-pair in chunk extension";
				goto fail;
			}
			st = CH_EXT_QS;
			break;
		case CH_EXT_QEND:
			goto after_item;
		case CH_SIZE_LF:
			if (ch != '\n') {
				why = "bare CR in chunk-size line";
				goto fail;
			}
			c->line_len = 0;
			c->digits = 0;
			st = c->remaining ? CH_DATA : CH_TR_BOL;
			break;
		case CH_DATA_CR:
			if (ch != '\r') {
				why = "missing CRLF after chunk data";
				goto fail;
			}
			st = CH_DATA_LF;
			break;
		case CH_DATA_LF:
			if (ch != '\n') {
				why = "missing CRLF after chunk data";
				goto fail;
			}
			st = CH_SIZE0;
			break;
		case CH_TR_BOL:
			if (ch == '\r') {
				st = CH_END_LF;
				break;
			}
			if (!HAS(ch, C_TCHAR)) {
				why = "invalid trailer field";
				goto fail;
			}
			st = CH_TR_NAME;
			break;
		case CH_TR_NAME:
			if (ch == ':')
				st = CH_TR_VAL;
			else if (!HAS(ch, C_TCHAR)) {
				why = "invalid trailer field name";
				goto fail;
			}
			break;
		case CH_TR_VAL:
			if (ch == '\r')
				st = CH_TR_LF;
			else if (!HAS(ch, C_FVAL)) {
				why = "invalid character in trailer field";
				goto fail;
			}
			break;
		case CH_TR_LF:
			if (ch != '\n') {
				why = "bare CR in trailer section";
				goto fail;
			}
			st = CH_TR_BOL;
			break;
		case CH_END_LF:
			if (ch != '\n') {
				why = "bare CR at the end of the chunked body";
				goto fail;
			}
			c->state = CH_DONE;
			*consumed = i + 1;
			return HTTP_OK;
		}
		i++;
		continue;
after_item:
		/* The end of a size, extension name or value: what may follow. */
		if (is_ows((char)ch))
			st = CH_WS;
		else if (ch == ';')
			st = CH_EXT_NAME0;
		else if (ch == '\r')
			st = CH_SIZE_LF;
		else {
			why = ch == '\n' ? "bare LF in chunk-size line" : "invalid chunk-size line";
			goto fail;
		}
		i++;
	}
	c->state = st;
	*consumed = len;
	return HTTP_INCOMPLETE;
fail:
	c->state = CH_ERROR;
	*consumed = i;
	dw_err_set(err, "%s", why);
	return HTTP_ERROR;
}
