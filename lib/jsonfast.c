/*
 * jsonfast.c — the JSON reader and writer declared in jsonfast.h.
 *
 * Reader: recursive descent over a pointer range. jansson reads its input one
 * byte at a time through a callback and re-buffers every token; here a string
 * without escapes is validated in place (one table lookup per ASCII byte, a
 * UTF-8 check only for bytes >= 0x80) and handed to jansson, which copies it
 * once. Strings with escapes are decoded into a scratch buffer that lives on
 * the stack until it outgrows it. Reals take Clinger's exact fast path when
 * the decimal fits in a double's mantissa and a power of ten up to 1e22,
 * otherwise strtod() like jansson.
 *
 * Writer: one growing buffer instead of jansson's per-token callback;
 * strings are copied in spans between the bytes that need escaping. Reals
 * are written in their shortest round-tripping form (jsonfast.h), with exact
 * 128-bit integer arithmetic instead of snprintf/strtod for the usual
 * magnitudes (real_exact, reads_back).
 *
 * Where jansson 2.14 has a quirk, the quirk is reproduced (and marked "jansson
 * quirk"), because the whole point is that callers cannot tell the two apart
 * — except for the text of reals, where jansson's "%.17g" changes the number
 * for readers that keep decimals.
 */
#include "jsonfast.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared: character classes and UTF-8 ------------------------------- */

/* Bytes inside a string literal while reading. */
enum { SC_PLAIN = 0, SC_QUOTE, SC_BACKSLASH, SC_CTRL, SC_HIGH };
static const unsigned char read_class[256] = {
	[0x00 ... 0x1f] = SC_CTRL,
	['"'] = SC_QUOTE,
	['\\'] = SC_BACKSLASH,
	[0x80 ... 0xff] = SC_HIGH,
};

/* Bytes of a string value while writing: escape them, or validate them. */
enum { WC_PLAIN = 0, WC_ESCAPE, WC_HIGH };
static const unsigned char write_class[256] = {
	[0x00 ... 0x1f] = WC_ESCAPE,
	['"'] = WC_ESCAPE,
	['\\'] = WC_ESCAPE,
	[0x80 ... 0xff] = WC_HIGH,
};

#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_ALPHA(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_WS(c) ((c) == ' ' || (c) == '\n' || (c) == '\r' || (c) == '\t')

/*
 * Length of the well-formed UTF-8 sequence at p (p[0] >= 0x80), or 0. The
 * same rules as jansson's utf.c: no overlong forms (C0, C1, E0 80..9F,
 * F0 80..8F), no UTF-16 surrogates (ED A0..BF), nothing above U+10FFFF
 * (F4 90.., F5..FF), and no stray continuation bytes.
 */
static size_t utf8_seq(const unsigned char *p, size_t avail)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xBF;

	if (c >= 0xC2 && c <= 0xDF)
		return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
	if (c >= 0xE0 && c <= 0xEF) {
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
		return avail >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
	}
	if (c >= 0xF0 && c <= 0xF4) {
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
		return avail >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 &&
				       (p[3] & 0xC0) == 0x80
			       ? 4
			       : 0;
	}
	return 0;
}

/* ---- reader --------------------------------------------------------------- */

struct parser {
	const unsigned char *start, *p, *end;
	json_error_t *err;
	bool failed;
	size_t skipped; /* NUL bytes dropped by the jansson quirk (err->position) */
	/* decoded strings that had escapes: a stack of spans, see scan_string */
	char *scratch;
	size_t scratch_len, scratch_cap;
	char local[512];
};

/* Where a string token's bytes are: in the input, or (after escapes) in the
 * scratch buffer at an offset, because the buffer may move while a key waits
 * for its member value to be parsed. */
struct span {
	const char *ptr; /* in the input, when !in_scratch */
	size_t off;	 /* in ps->scratch, when in_scratch */
	size_t len;
	bool in_scratch;
};

static void fail(struct parser *ps, const unsigned char *at, enum json_error_code code,
		 const char *msg)
{
	json_error_t *e = ps->err;
	const unsigned char *q, *line_start = ps->start;
	int line = 1, column = 0;
	char near[24];
	size_t n = 0;

	if (ps->failed)
		return;
	ps->failed = true;
	if (!e)
		return;
	if (at > ps->end)
		at = ps->end;
	for (q = ps->start; q < at; q++)
		if (*q == '\n') {
			line++;
			line_start = q + 1;
		}
	/* jansson counts columns in characters, the character at the error included */
	for (q = line_start; q < at || (q == at && q < ps->end); q++)
		if ((*q & 0xC0) != 0x80)
			column++;
	/* a little context, printable ASCII only: the text ends up in logs */
	for (q = at; q < ps->end && n < 16; q++)
		near[n++] = (*q >= 0x20 && *q < 0x7f && *q != '\'') ? (char)*q : '?';
	near[n] = '\0';
	if (n)
		snprintf(e->text, JSON_ERROR_TEXT_LENGTH - 1, "%s near '%s'", msg, near);
	else
		snprintf(e->text, JSON_ERROR_TEXT_LENGTH - 1, "%s near end of input", msg);
	e->text[JSON_ERROR_TEXT_LENGTH - 1] = (char)code; /* as json_error_code() expects */
	e->line = line;
	e->column = column;
	e->position = (int)(at - ps->start);
}

static bool scratch_append(struct parser *ps, const void *src, size_t n)
{
	if (ps->scratch_cap - ps->scratch_len < n) {
		size_t cap = ps->scratch_cap * 2;
		char *nb;

		while (cap - ps->scratch_len < n)
			cap *= 2;
		if (ps->scratch == ps->local) {
			nb = malloc(cap);
			if (nb)
				memcpy(nb, ps->local, ps->scratch_len);
		} else {
			nb = realloc(ps->scratch, cap);
		}
		if (!nb) {
			fail(ps, ps->p, json_error_out_of_memory, "out of memory");
			return false;
		}
		ps->scratch = nb;
		ps->scratch_cap = cap;
	}
	memcpy(ps->scratch + ps->scratch_len, src, n);
	ps->scratch_len += n;
	return true;
}

static int hex4(const unsigned char *p, const unsigned char *end)
{
	int v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		unsigned char c = p[i];

		v <<= 4;
		if (IS_DIGIT(c))
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/* Decode the escape at p (a backslash) into the scratch buffer; returns the
 * byte after it, or NULL after fail(). */
static const unsigned char *decode_escape(struct parser *ps, const unsigned char *p)
{
	const unsigned char *end = ps->end;
	unsigned char utf8[4];
	char one;
	int cp, lo;
	size_t n;

	if (end - p < 2) {
		fail(ps, p, json_error_premature_end_of_input, "premature end of input");
		return NULL;
	}
	switch (p[1]) {
	case '"':
	case '\\':
	case '/':
		one = (char)p[1];
		break;
	case 'b':
		one = '\b';
		break;
	case 'f':
		one = '\f';
		break;
	case 'n':
		one = '\n';
		break;
	case 'r':
		one = '\r';
		break;
	case 't':
		one = '\t';
		break;
	case 'u':
		cp = hex4(p + 2, end);
		if (cp < 0) {
			fail(ps, p, json_error_invalid_syntax, "invalid escape");
			return NULL;
		}
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			/* a high surrogate must be followed by an escaped low one */
			lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8, end) : -1;
			if (lo < 0xDC00 || lo > 0xDFFF) {
				fail(ps, p, json_error_invalid_syntax, "invalid Unicode surrogate pair");
				return NULL;
			}
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
			p += 6;
		} else if (cp >= 0xDC00 && cp <= 0xDFFF) {
			fail(ps, p, json_error_invalid_syntax, "lone low surrogate");
			return NULL;
		} else if (cp == 0) {
			/* jansson without JSON_ALLOW_NUL (and for keys, always) */
			fail(ps, p, json_error_null_character,
			     "\\u0000 is not allowed without JSON_ALLOW_NUL");
			return NULL;
		}
		if (cp < 0x80) {
			utf8[0] = (unsigned char)cp;
			n = 1;
		} else if (cp < 0x800) {
			utf8[0] = (unsigned char)(0xC0 | (cp >> 6));
			utf8[1] = (unsigned char)(0x80 | (cp & 0x3F));
			n = 2;
		} else if (cp < 0x10000) {
			utf8[0] = (unsigned char)(0xE0 | (cp >> 12));
			utf8[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
			utf8[2] = (unsigned char)(0x80 | (cp & 0x3F));
			n = 3;
		} else {
			utf8[0] = (unsigned char)(0xF0 | (cp >> 18));
			utf8[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
			utf8[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
			utf8[3] = (unsigned char)(0x80 | (cp & 0x3F));
			n = 4;
		}
		return scratch_append(ps, utf8, n) ? p + 6 : NULL;
	default:
		fail(ps, p, json_error_invalid_syntax, "invalid escape");
		return NULL;
	}
	return scratch_append(ps, &one, 1) ? p + 2 : NULL;
}

/*
 * Scan the string literal at ps->p (its opening quote). Without escapes the
 * result is the span of the input between the quotes; after the first escape
 * everything is copied to the end of the scratch buffer. The caller gives the
 * scratch space back by resetting scratch_len to what it was before.
 */
static bool scan_string(struct parser *ps, struct span *out)
{
	const unsigned char *p = ps->p + 1, *end = ps->end, *run = p;
	size_t base = ps->scratch_len, n;
	bool copied = false;

	for (;;) {
		while (p < end && read_class[*p] == SC_PLAIN)
			p++;
		if (p == end) {
			fail(ps, p, json_error_premature_end_of_input, "premature end of input");
			return false;
		}
		switch (read_class[*p]) {
		case SC_QUOTE:
			if (copied) {
				if (!scratch_append(ps, run, (size_t)(p - run)))
					return false;
				out->in_scratch = true;
				out->off = base;
				out->len = ps->scratch_len - base;
				out->ptr = NULL;
			} else {
				out->in_scratch = false;
				out->ptr = (const char *)run;
				out->len = (size_t)(p - run);
			}
			ps->p = p + 1;
			return true;
		case SC_HIGH:
			n = utf8_seq(p, (size_t)(end - p));
			if (!n) {
				fail(ps, p, json_error_invalid_utf8, "invalid UTF-8");
				return false;
			}
			p += n;
			break;
		case SC_BACKSLASH:
			if (!scratch_append(ps, run, (size_t)(p - run)))
				return false;
			copied = true;
			p = decode_escape(ps, p);
			if (!p)
				return false;
			run = p;
			break;
		default: /* SC_CTRL */
			fail(ps, p, json_error_invalid_syntax,
			     *p == '\n' ? "unexpected newline" : "control character in string");
			return false;
		}
	}
}

static const char *span_ptr(const struct parser *ps, const struct span *s)
{
	return s->in_scratch ? ps->scratch + s->off : s->ptr;
}

/* jansson quirk: its lexer "ungets" the byte after a number or a literal, and
 * an ungot NUL is lost (its 1-byte pushback buffer treats NUL as empty), so
 * "1\0" and "[true\0]" are accepted as if the NUL were not there. */
static void skip_quirk_nul(struct parser *ps)
{
	if (ps->p < ps->end && *ps->p == '\0') {
		ps->p++;
		ps->skipped++;
	}
}

/* Exact powers of ten a double represents (Clinger's fast path). */
static const double pow10_exact[] = {
	1e0,  1e1,  1e2,  1e3,	1e4,  1e5,  1e6,  1e7,	1e8,  1e9,  1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* The decimal text [s, e) (validated JSON number syntax) as strtod reads it;
 * returns false on overflow, where jansson reports "real number overflow". */
static bool decimal_to_double(const unsigned char *s, const unsigned char *e, double *out)
{
	const unsigned char *p = s;
	bool neg = false;
	uint64_t m = 0;
	int sig = 0, scale = 0;
	long exp10 = 0;
	char local[64], *buf;
	size_t len = (size_t)(e - s);
	double v;
	char point;
	int saved_errno;

	if (*p == '-') {
		neg = true;
		p++;
	}
	for (; p < e && (IS_DIGIT(*p) || *p == '.'); p++) {
		if (*p == '.') {
			scale = 1;
			continue;
		}
		if (sig || *p != '0') {
			if (++sig > 19)
				break;
			m = m * 10 + (uint64_t)(*p - '0');
		}
		if (scale)
			exp10--;
	}
	if (sig <= 19) {
		if (p < e) { /* 'e' or 'E' */
			bool eneg = false;
			long x = 0;

			p++;
			if (*p == '+' || *p == '-')
				eneg = *p++ == '-';
			for (; p < e && x < 100000; p++)
				x = x * 10 + (*p - '0');
			if (p < e)
				goto slow; /* absurd exponent: let strtod decide */
			exp10 += eneg ? -x : x;
		}
#if FLT_EVAL_METHOD == 0 /* doubles are rounded once per operation (SSE, not x87) */
		/* m and 10^|exp10| are exact doubles, so one correctly rounded
		 * multiplication or division gives strtod's exact answer */
		if (m == 0) {
			*out = neg ? -0.0 : 0.0;
			return true;
		}
		if (m <= (UINT64_C(1) << 53) && exp10 >= -22 && exp10 <= 22) {
			v = (double)m;
			v = exp10 < 0 ? v / pow10_exact[-exp10] : v * pow10_exact[exp10];
			*out = neg ? -v : v;
			return true;
		}
#endif
	}
slow:
	buf = len < sizeof(local) ? local : malloc(len + 1);
	if (!buf)
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	/* strtod wants the locale's decimal point, as jansson's to_locale() does */
	point = localeconv()->decimal_point[0];
	if (point != '.' && point != '\0') {
		char *dot = memchr(buf, '.', len);

		if (dot)
			*dot = point;
	}
	saved_errno = errno;
	errno = 0;
	v = strtod(buf, NULL);
	if ((v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE) {
		if (buf != local)
			free(buf);
		errno = saved_errno;
		return false;
	}
	errno = saved_errno;
	if (buf != local)
		free(buf);
	*out = v;
	return true;
}

static json_t *parse_number(struct parser *ps)
{
	const unsigned char *s = ps->p, *p = s, *end = ps->end, *digits, *int_end;
	bool neg = false, real = false;
	json_t *v;

	if (*p == '-') {
		neg = true;
		p++;
	}
	digits = p;
	if (p == end || !IS_DIGIT(*p)) {
		fail(ps, s, json_error_invalid_syntax, "invalid token");
		return NULL;
	}
	if (*p == '0') {
		p++;
		if (p < end && IS_DIGIT(*p)) {
			fail(ps, s, json_error_invalid_syntax, "invalid token (leading zero)");
			return NULL;
		}
	} else {
		while (p < end && IS_DIGIT(*p))
			p++;
	}
	int_end = p;
	if (p < end && *p == '.') {
		real = true;
		p++;
		if (p == end || !IS_DIGIT(*p)) {
			fail(ps, s, json_error_invalid_syntax, "invalid token (digit expected after '.')");
			return NULL;
		}
		while (p < end && IS_DIGIT(*p))
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		real = true;
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p == end || !IS_DIGIT(*p)) {
			fail(ps, s, json_error_invalid_syntax, "invalid token (bad exponent)");
			return NULL;
		}
		while (p < end && IS_DIGIT(*p))
			p++;
	}

	if (!real) {
		/* strtoll semantics: ERANGE beyond json_int_t, "-0" is 0 */
		size_t nd = (size_t)(int_end - digits);
		uint64_t u = 0, limit = neg ? (uint64_t)LLONG_MAX + 1 : (uint64_t)LLONG_MAX;

		if (nd <= 19)
			for (const unsigned char *q = digits; q < int_end; q++)
				u = u * 10 + (uint64_t)(*q - '0'); /* 19 digits fit in 64 bits */
		if (nd > 19 || u > limit) {
			fail(ps, s, json_error_numeric_overflow,
			     neg ? "too big negative integer" : "too big integer");
			return NULL;
		}
		v = json_integer(neg ? (u == limit ? LLONG_MIN : -(json_int_t)u) : (json_int_t)u);
	} else {
		double d;

		if (!decimal_to_double(s, p, &d)) {
			fail(ps, s, json_error_numeric_overflow, "real number overflow");
			return NULL;
		}
		v = json_real(d);
	}
	if (!v) {
		fail(ps, s, json_error_out_of_memory, "out of memory");
		return NULL;
	}
	ps->p = p;
	skip_quirk_nul(ps);
	return v;
}

static json_t *parse_literal(struct parser *ps, const char *word, size_t n, json_t *(*make)(void))
{
	const unsigned char *p = ps->p;

	/* jansson reads the whole run of letters: "truex" is one invalid token */
	if ((size_t)(ps->end - p) < n || memcmp(p, word, n) != 0 ||
	    (p + n < ps->end && IS_ALPHA(p[n]))) {
		fail(ps, p, json_error_invalid_syntax, "invalid token");
		return NULL;
	}
	ps->p = p + n;
	skip_quirk_nul(ps);
	return make();
}

static void skip_ws(struct parser *ps)
{
	const unsigned char *p = ps->p;

	while (p < ps->end && IS_WS(*p))
		p++;
	ps->p = p;
}

static json_t *parse_value(struct parser *ps, unsigned depth);

static json_t *parse_array(struct parser *ps, unsigned depth)
{
	json_t *arr = json_array(), *v;

	if (!arr) {
		fail(ps, ps->p, json_error_out_of_memory, "out of memory");
		return NULL;
	}
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == ']') {
		ps->p++;
		return arr;
	}
	for (;;) {
		v = parse_value(ps, depth + 1);
		if (!v)
			goto error;
		if (json_array_append_new(arr, v)) {
			fail(ps, ps->p, json_error_out_of_memory, "out of memory");
			goto error;
		}
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			skip_ws(ps);
			continue;
		}
		if (ps->p < ps->end && *ps->p == ']') {
			ps->p++;
			return arr;
		}
		fail(ps, ps->p, json_error_invalid_syntax, "']' expected");
		goto error;
	}
error:
	json_decref(arr);
	return NULL;
}

static json_t *parse_object(struct parser *ps, unsigned depth)
{
	json_t *obj = json_object(), *v;
	struct span key;
	size_t base;

	if (!obj) {
		fail(ps, ps->p, json_error_out_of_memory, "out of memory");
		return NULL;
	}
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == '}') {
		ps->p++;
		return obj;
	}
	for (;;) {
		if (ps->p == ps->end || *ps->p != '"') {
			fail(ps, ps->p, json_error_invalid_syntax, "string or '}' expected");
			goto error;
		}
		base = ps->scratch_len;
		if (!scan_string(ps, &key))
			goto error;
		skip_ws(ps);
		if (ps->p == ps->end || *ps->p != ':') {
			fail(ps, ps->p, json_error_invalid_syntax, "':' expected");
			goto error;
		}
		ps->p++;
		skip_ws(ps);
		/* the key stays in the scratch buffer (if it is there) meanwhile */
		v = parse_value(ps, depth + 1);
		if (!v)
			goto error;
		/* a duplicate key replaces the value in place, as in jansson */
		if (json_object_setn_new_nocheck(obj, span_ptr(ps, &key), key.len, v)) {
			fail(ps, ps->p, json_error_out_of_memory, "out of memory");
			goto error;
		}
		ps->scratch_len = base;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			skip_ws(ps);
			continue;
		}
		if (ps->p < ps->end && *ps->p == '}') {
			ps->p++;
			return obj;
		}
		fail(ps, ps->p, json_error_invalid_syntax, "'}' expected");
		goto error;
	}
error:
	json_decref(obj);
	return NULL;
}

/* ps->p is at the first byte of the value (whitespace skipped). */
static json_t *parse_value(struct parser *ps, unsigned depth)
{
	struct span s;
	size_t base;
	json_t *v;

	/* jansson counts every value, scalars included, against the limit */
	if (depth > JSON_PARSER_MAX_DEPTH) {
		fail(ps, ps->p, json_error_stack_overflow, "maximum parsing depth reached");
		return NULL;
	}
	if (ps->p == ps->end) {
		fail(ps, ps->p, json_error_premature_end_of_input, "value expected");
		return NULL;
	}
	switch (*ps->p) {
	case '{':
		return parse_object(ps, depth);
	case '[':
		return parse_array(ps, depth);
	case '"':
		base = ps->scratch_len;
		if (!scan_string(ps, &s))
			return NULL;
		/* validated above: jansson need not check the UTF-8 again */
		v = json_stringn_nocheck(span_ptr(ps, &s), s.len);
		ps->scratch_len = base;
		if (!v)
			fail(ps, ps->p, json_error_out_of_memory, "out of memory");
		return v;
	case '-':
	case '0':
	case '1':
	case '2':
	case '3':
	case '4':
	case '5':
	case '6':
	case '7':
	case '8':
	case '9':
		return parse_number(ps);
	case 't':
		return parse_literal(ps, "true", 4, json_true);
	case 'f':
		return parse_literal(ps, "false", 5, json_false);
	case 'n':
		return parse_literal(ps, "null", 4, json_null);
	default:
		fail(ps, ps->p, json_error_invalid_syntax, "invalid token");
		return NULL;
	}
}

json_t *jsonfast_loadb(const char *buf, size_t len, json_error_t *err)
{
	struct parser ps;
	json_t *v = NULL;

	if (err) {
		memset(err->text, 0, sizeof(err->text)); /* json_error_unknown */
		snprintf(err->source, sizeof(err->source), "%s", "<buffer>");
		err->line = -1;
		err->column = -1;
		err->position = 0;
	}
	ps.start = ps.p = (const unsigned char *)buf;
	ps.end = ps.start + (buf ? len : 0);
	ps.err = err;
	ps.failed = false;
	ps.skipped = 0;
	ps.scratch = ps.local;
	ps.scratch_len = 0;
	ps.scratch_cap = sizeof(ps.local);
	if (!buf) {
		fail(&ps, ps.p, json_error_invalid_argument, "wrong arguments");
		return NULL;
	}

	skip_ws(&ps);
	v = parse_value(&ps, 1);
	if (v) {
		skip_ws(&ps);
		if (ps.p != ps.end) {
			fail(&ps, ps.p, json_error_end_of_input_expected, "end of file expected");
			json_decref(v);
			v = NULL;
		} else if (err) {
			err->position = (int)(len - ps.skipped); /* jansson sets it on success too */
		}
	}
	if (ps.scratch != ps.local)
		free(ps.scratch);
	return v;
}

/* ---- writer --------------------------------------------------------------- */

struct out {
	char *buf;
	size_t len, cap; /* cap - len > 0 always: room for the final NUL */
	bool oom;
};

static bool out_grow(struct out *o, size_t n)
{
	size_t cap = o->cap * 2;
	char *nb;

	if (o->oom)
		return false;
	while (cap - o->len <= n)
		cap *= 2;
	nb = realloc(o->buf, cap);
	if (!nb) {
		o->oom = true;
		return false;
	}
	o->buf = nb;
	o->cap = cap;
	return true;
}

static inline void out_put(struct out *o, const void *s, size_t n)
{
	if (o->cap - o->len <= n && !out_grow(o, n))
		return;
	memcpy(o->buf + o->len, s, n);
	o->len += n;
}

static inline void out_ch(struct out *o, char c)
{
	if (o->cap - o->len <= 1 && !out_grow(o, 1))
		return;
	o->buf[o->len++] = c;
}

/*
 * jansson's dump_string: named escapes for \" \\ \b \f \n \r \t, \u00XX with
 * upper-case hex for the other control characters, everything else (DEL, '/',
 * non-ASCII) as is. Invalid UTF-8 fails the dump; like jansson, what was
 * written before the failing sequence stays written, except the pending span
 * of plain bytes since the last escape (this shows in object keys, whose
 * failures jansson ignores).
 */
static int dump_string(struct out *o, const char *str, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p = (const unsigned char *)str, *end = p + len, *run = p;
	char esc[6];
	size_t n;

	out_ch(o, '"');
	for (;;) {
		while (p < end && write_class[*p] == WC_PLAIN)
			p++;
		if (p == end)
			break;
		if (write_class[*p] == WC_HIGH) {
			n = utf8_seq(p, (size_t)(end - p));
			if (!n)
				return -1;
			p += n;
			continue;
		}
		out_put(o, run, (size_t)(p - run));
		esc[0] = '\\';
		n = 2;
		switch (*p) {
		case '"':
			esc[1] = '"';
			break;
		case '\\':
			esc[1] = '\\';
			break;
		case '\b':
			esc[1] = 'b';
			break;
		case '\f':
			esc[1] = 'f';
			break;
		case '\n':
			esc[1] = 'n';
			break;
		case '\r':
			esc[1] = 'r';
			break;
		case '\t':
			esc[1] = 't';
			break;
		default:
			esc[1] = 'u';
			esc[2] = '0';
			esc[3] = '0';
			esc[4] = hex[*p >> 4];
			esc[5] = hex[*p & 0xF];
			n = 6;
			break;
		}
		out_put(o, esc, n);
		run = ++p;
	}
	out_put(o, run, (size_t)(p - run));
	out_ch(o, '"');
	return 0;
}

static void dump_integer(struct out *o, json_int_t v)
{
	char tmp[24], *e = tmp + sizeof(tmp), *s = e;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

	do {
		*--s = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--s = '-';
	out_put(o, s, (size_t)(e - s));
}

#ifdef __SIZEOF_INT128__
typedef unsigned __int128 u128;

static const u128 pow10_u128[23] = {
	1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL,
	100000000ULL, 1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL,
	10000000000000ULL, 100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL,
	100000000000000000ULL, 1000000000000000000ULL, 10000000000000000000ULL,
	(u128)10000000000000000000ULL * 10, (u128)10000000000000000000ULL * 100,
	(u128)10000000000000000000ULL * 1000,
};

/*
 * A double a > 0 in exact integer arithmetic, at the scale of its 17th
 * significant digit: a = m * 2^e, and a * 10^k = num / den exactly, with
 * k = 16 - X for X = floor(log10 a), so that q = floor(num / den) has 17
 * digits. den is 2^sh (k >= 0, e < 0), 10^-k (k < 0) or 1 (k >= 0, e >= 0).
 * a's neighbours are 2^e away (half that below a power of two); ulp is that
 * distance in the units of num: 10^k, 2^e and 10^k * 2^e respectively.
 * |16 - X| <= 22 keeps everything within 128 bits; that covers about
 * 1e-6 <= a < 1.7e38, where nearly every real a request carries lies.
 */
struct exact {
	uint64_t m, q;	/* q: the first 17 digits, truncated */
	int x;		/* X */
	int sh;		/* den = 2^sh, or -1 */
	u128 num, den, ulp;
};

/* Fills *ex for a > 0; false outside the range above (the caller then asks
 * snprintf). */
static bool real_exact(double a, struct exact *ex)
{
	int e2, x, k, sh;
	uint64_t m, q;
	u128 num, den, ulp;

	m = (uint64_t)ldexp(frexp(a, &e2), 53); /* a = m * 2^(e2 - 53), exactly */
	x = (int)floor((e2 - 1) * 0.30102999566398120); /* floor(log10 a) or one less */
	for (int tries = 0;; tries++) {
		int e = e2 - 53;

		if (tries > 2)
			return false;
		k = 16 - x;
		if (k > 22 || k < -22)
			return false;
		if (k >= 0) {
			if (e >= 0) { /* a < 1e17 here, so no overflow */
				num = ((u128)m * pow10_u128[k]) << e;
				den = 1;
				sh = 0;
				ulp = pow10_u128[k] << e;
			} else {
				if (-e > 125)
					return false;
				num = (u128)m * pow10_u128[k];
				sh = -e;
				den = (u128)1 << sh;
				ulp = pow10_u128[k];
			}
		} else {
			if (e < 0 || e > 72) /* a >= 1e17 has e >= 0; m << e must fit */
				return false;
			num = (u128)m << e;
			den = pow10_u128[-k];
			sh = -1;
			ulp = (u128)1 << e;
		}
		q = (uint64_t)(sh >= 0 ? num >> sh : num / den); /* a shift is much cheaper */
		/* the truncated value must have exactly 17 digits, else x was off */
		if (q >= 100000000000000000ULL) {
			x++;
			continue;
		}
		if (q < 10000000000000000ULL) {
			x--;
			continue;
		}
		break;
	}
	ex->m = m;
	ex->q = q;
	ex->x = x;
	ex->num = num;
	ex->den = den;
	ex->sh = sh;
	ex->ulp = ulp;
	return true;
}

/* Does the decimal c * 10^(X-16) read back as a (strtod rounds to nearest,
 * ties to even)? Exactly: it must lie within half a gap of a's neighbours. */
static bool reads_back(const struct exact *ex, uint64_t c)
{
	u128 cv = ex->sh >= 0 ? (u128)c << ex->sh : (u128)c * ex->den, twice;

	if (cv >= ex->num) {
		twice = 2 * (cv - ex->num);
		return twice < ex->ulp || (twice == ex->ulp && !(ex->m & 1));
	}
	twice = 2 * (ex->num - cv);
	if (ex->m == (UINT64_C(1) << 52)) /* a power of two: the gap below is half */
		twice *= 2;
	return twice < ex->ulp || (twice == ex->ulp && !(ex->m & 1));
}

/*
 * The shortest of "%.15g", "%.16g", "%.17g" of a > 0 that reads back as a,
 * as digits: a ~ 0.dig[0..n) * 10^(X+1), P the precision that won. Each
 * candidate is a correctly rounded to P digits (ties to even, as glibc's
 * printf), and whether it reads back is decided exactly (reads_back); 17
 * digits always do. Returns false outside real_exact's range.
 */
static bool real_shortest(double a, char dig[17], int *n_out, int *x_out, int *p_out)
{
	struct exact ex;
	uint64_t q = 0;
	int x = 0, p, n;

	if (!real_exact(a, &ex))
		return false;
	for (p = 15; p <= 17; p++) {
		uint64_t div = (uint64_t)pow10_u128[17 - p], t = ex.q / div, c;
		u128 unit = (u128)div * ex.den; /* one unit of digit p, in num's units */
		u128 rest = ex.num - t * unit;	/* a's part below digit p */
		bool up = 2 * rest > unit || (2 * rest == unit && (t & 1));

		q = t + up;
		c = q * div;
		x = ex.x;
		if (q == (uint64_t)pow10_u128[p]) { /* 9.99... rounded up to 10.0 */
			q = (uint64_t)pow10_u128[p - 1];
			x++;
		}
		if (p == 17 || reads_back(&ex, c))
			break;
	}
	for (int i = p - 1; i >= 0; i--) {
		dig[i] = (char)('0' + q % 10);
		q /= 10;
	}
	n = p;
	while (n > 1 && dig[n - 1] == '0') /* %g drops trailing zeros */
		n--;
	*n_out = n;
	*x_out = x;
	*p_out = p;
	return true;
}

/* "%.<prec>g" of a finite d (digits from real_shortest), '.' as the decimal
 * point, in JSON's form (see jsonfast.h) when json, else printf's. */
static int real_format(bool neg, const char *dig, int n, int x, int prec, bool json, char *b)
{
	char *p = b;

	if (neg)
		*p++ = '-';
	if (x >= -4 && x < prec) { /* %g picks fixed notation */
		if (x >= 0) {
			for (int i = 0; i <= x; i++)
				*p++ = i < n ? dig[i] : '0';
			if (n > x + 1) {
				*p++ = '.';
				memcpy(p, dig + x + 1, (size_t)(n - x - 1));
				p += n - x - 1;
			} else if (json) {
				*p++ = '.'; /* jansson's ".0": it reads back as a real */
				*p++ = '0';
			}
		} else {
			*p++ = '0';
			*p++ = '.';
			for (int i = 0; i < -x - 1; i++)
				*p++ = '0';
			memcpy(p, dig, (size_t)n);
			p += n;
		}
	} else { /* exponent: jansson drops '+' and leading zeros, printf has 2+ digits */
		*p++ = dig[0];
		if (n > 1) {
			*p++ = '.';
			memcpy(p, dig + 1, (size_t)(n - 1));
			p += n - 1;
		}
		*p++ = 'e';
		if (x < 0) {
			*p++ = '-';
			x = -x;
		} else if (!json) {
			*p++ = '+';
		}
		if (x >= 100)
			*p++ = (char)('0' + x / 100);
		if (x >= 10 || !json)
			*p++ = (char)('0' + x / 10 % 10);
		*p++ = (char)('0' + x % 10);
	}
	*p = '\0';
	return (int)(p - b);
}

static int real_fast(double d, bool json, char *b)
{
	char dig[17];
	int n, x, prec;

	if (d == 0) {
		n = snprintf(b, JSONFAST_REAL_MAX, "%s%s", signbit(d) ? "-" : "", json ? "0.0" : "0");
		return n;
	}
	if (!real_shortest(fabs(d), dig, &n, &x, &prec))
		return -1;
	return real_format(signbit(d) != 0, dig, n, x, prec, json, b);
}
#else
static int real_fast(double d, bool json, char *b)
{
	(void)d;
	(void)json;
	(void)b;
	return -1;
}
#endif

/* The same text the slow way: snprintf at 15, 16, 17 digits, the first that
 * strtod reads back (both in the locale's decimal point, turned into '.').
 * A subnormal has fewer significant bits, so it starts from 1 digit there
 * (5e-324, not 4.94065645841247e-324). */
static int real_slow(double d, bool json, char *b)
{
	char *start, *end, point = localeconv()->decimal_point[0];
	int n = -1;
	size_t len;

	/* below 15 digits "%.15g" is already the shortest, but for subnormals */
	for (int prec = fabs(d) < DBL_MIN ? 1 : 15; prec <= 17; prec++) {
		n = snprintf(b, JSONFAST_REAL_MAX, "%.*g", prec, d);
		if (n < 0 || n >= JSONFAST_REAL_MAX - 3)
			return -1;
		if (strtod(b, NULL) == d)
			break;
	}
	len = (size_t)n;
	for (size_t i = 0; i < len; i++)
		if (b[i] == point || (!IS_DIGIT(b[i]) && b[i] != '-' && b[i] != '+' && b[i] != 'e'))
			b[i] = '.'; /* whatever the locale's decimal point is */
	if (!json)
		return n;
	if (!memchr(b, '.', len) && !memchr(b, 'e', len)) {
		memcpy(b + len, ".0", 3);
		len += 2;
	}
	start = memchr(b, 'e', len);
	if (start) {
		start++; /* at the sign, which %g always writes */
		end = start + 1;
		if (*start == '-')
			start++;
		while (*end == '0')
			end++;
		if (end != start) {
			memmove(start, end, len + 1 - (size_t)(end - b));
			len -= (size_t)(end - start);
		}
	}
	return (int)len;
}

int jsonfast_real(double d, bool json, char *buf)
{
	int n;

	if (!isfinite(d)) /* json_real() refuses them; never valid JSON */
		return -1;
	n = real_fast(d, json, buf);
	return n > 0 ? n : real_slow(d, json, buf);
}

static int dump_real(struct out *o, double d)
{
	char b[JSONFAST_REAL_MAX];
	int n = jsonfast_real(d, true, b);

	if (n < 0)
		return -1;
	out_put(o, b, (size_t)n);
	return 0;
}

/* The containers being written, innermost first, for jansson's cycle check. */
struct chain {
	const json_t *v;
	const struct chain *up;
};

static bool on_chain(const struct chain *c, const json_t *v)
{
	for (; c; c = c->up)
		if (c->v == v)
			return true;
	return false;
}

static int dump_value(struct out *o, const json_t *v, const struct chain *up)
{
	struct chain me = { v, up };
	/* jansson's object iterator takes a non-const object but does not modify it */
	json_t *mv = (json_t *)(uintptr_t)v;
	void *it;
	size_t n;
	bool first = true;

	if (!v)
		return -1;
	switch (json_typeof(v)) {
	case JSON_NULL:
		out_put(o, "null", 4);
		return 0;
	case JSON_TRUE:
		out_put(o, "true", 4);
		return 0;
	case JSON_FALSE:
		out_put(o, "false", 5);
		return 0;
	case JSON_INTEGER:
		dump_integer(o, json_integer_value(v));
		return 0;
	case JSON_REAL:
		return dump_real(o, json_real_value(v));
	case JSON_STRING:
		return dump_string(o, json_string_value(v), json_string_length(v));
	case JSON_ARRAY:
		if (on_chain(up, v))
			return -1;
		n = json_array_size(v);
		out_ch(o, '[');
		for (size_t i = 0; i < n; i++) {
			if (i)
				out_ch(o, ',');
			if (dump_value(o, json_array_get(v, i), &me))
				return -1;
		}
		out_ch(o, ']');
		return 0;
	case JSON_OBJECT:
		if (on_chain(up, v))
			return -1;
		out_ch(o, '{');
		for (it = json_object_iter(mv); it; it = json_object_iter_next(mv, it)) {
			if (!first)
				out_ch(o, ',');
			first = false;
			/* jansson quirk: a key's dump failure is ignored */
			(void)dump_string(o, json_object_iter_key(it), json_object_iter_key_len(it));
			out_ch(o, ':');
			if (dump_value(o, json_object_iter_value(it), &me))
				return -1;
		}
		out_ch(o, '}');
		return 0;
	default:
		return -1;
	}
}

char *jsonfast_dumps(const json_t *v, size_t *len_out)
{
	struct out o = { NULL, 0, 512, false };

	o.buf = malloc(o.cap);
	if (!o.buf)
		return NULL;
	if (dump_value(&o, v, NULL) != 0 || o.oom) {
		free(o.buf);
		return NULL;
	}
	o.buf[o.len] = '\0';
	if (len_out)
		*len_out = o.len;
	return o.buf;
}
