/*
 * confsyntax.c — a second reader of libconfig's grammar, only to describe
 * the first syntax error (see confsyntax.h). The lexer follows libconfig's
 * scanner closely enough for the mistakes people make; where it would differ
 * the caller keeps libconfig's own verdict.
 */
#include "confsyntax.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dw.h"

#define MAX_DEPTH 200

enum tk { T_EOF, T_NAME, T_BOOL, T_INT, T_FLOAT, T_STRING, T_PUNCT, T_GARBAGE };

struct tok {
	enum tk k;
	const char *s; /* the token's text in the input */
	size_t n;
	int line;
};

struct rd {
	const char *p, *end;
	int line;
	struct tok cur; /* the lookahead */
	int depth;
	int mlstr_line; /* start of the last string that ran across lines, 0: none */
	struct tok badstr; /* a string the input ends in (k == T_STRING when there is one) */
	bool failed;
	struct confsyntax_diag *d;
};

static bool is_alpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_namech(char c)
{
	return is_alpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*';
}

/* Skip blanks, newlines, comments and @include lines. */
static void skip_space(struct rd *R)
{
	while (R->p < R->end) {
		char c = *R->p;
		if (c == '\n') {
			R->line++;
			R->p++;
		} else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
			R->p++;
		} else if (c == '#' || (c == '/' && R->p + 1 < R->end && R->p[1] == '/') ||
			   (c == '@' && (size_t)(R->end - R->p) >= 8 && memcmp(R->p, "@include", 8) == 0)) {
			while (R->p < R->end && *R->p != '\n')
				R->p++;
		} else if (c == '/' && R->p + 1 < R->end && R->p[1] == '*') {
			R->p += 2;
			while (R->p < R->end && !(*R->p == '*' && R->p + 1 < R->end && R->p[1] == '/')) {
				if (*R->p == '\n')
					R->line++;
				R->p++;
			}
			R->p = R->p < R->end ? R->p + 2 : R->end;
		} else {
			return;
		}
	}
}

/* A number as libconfig's scanner reads one: [-+]digits[.digits][e[-+]digits][L[L]], or hex. */
static enum tk lex_number(struct rd *R)
{
	const char *p = R->p;
	bool fl = false;

	if (*p == '-' || *p == '+')
		p++;
	if (p + 2 < R->end && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') &&
	    (is_digit(p[2]) || (p[2] >= 'a' && p[2] <= 'f') || (p[2] >= 'A' && p[2] <= 'F'))) {
		p += 2;
		while (p < R->end && (is_digit(*p) || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F')))
			p++;
	} else {
		while (p < R->end && is_digit(*p))
			p++;
		if (p < R->end && *p == '.') {
			fl = true;
			p++;
			while (p < R->end && is_digit(*p))
				p++;
		}
		if (p < R->end && (*p == 'e' || *p == 'E')) {
			const char *q = p + 1;
			if (q < R->end && (*q == '-' || *q == '+'))
				q++;
			if (q < R->end && is_digit(*q)) {
				fl = true;
				p = q;
				while (p < R->end && is_digit(*p))
					p++;
			}
		}
	}
	if (!fl && p < R->end && *p == 'L') {
		p++;
		if (p < R->end && *p == 'L')
			p++;
	}
	R->p = p;
	return fl ? T_FLOAT : T_INT;
}

static void lex(struct rd *R)
{
	struct tok *t = &R->cur;
	char c;

	skip_space(R);
	t->s = R->p;
	t->line = R->line;
	if (R->p >= R->end) {
		t->k = T_EOF;
		t->n = 0;
		return;
	}
	c = *R->p;
	if (is_alpha(c) || c == '*') {
		while (R->p < R->end && is_namech(*R->p))
			R->p++;
		t->n = (size_t)(R->p - t->s);
		t->k = (t->n == 4 && strncasecmp(t->s, "true", 4) == 0) ||
			       (t->n == 5 && strncasecmp(t->s, "false", 5) == 0)
			   ? T_BOOL
			   : T_NAME;
		return;
	}
	/* libconfig's float pattern matches a lone "." (and "-.", "+."), so
	 * "admin.listen" reads as a name, a float and a name. */
	if (is_digit(c) || c == '.' ||
	    ((c == '-' || c == '+') && R->p + 1 < R->end && (is_digit(R->p[1]) || R->p[1] == '.'))) {
		t->k = lex_number(R);
		t->n = (size_t)(R->p - t->s);
		return;
	}
	if (c == '"') {
		R->p++;
		while (R->p < R->end && *R->p != '"') {
			if (*R->p == '\\' && R->p + 1 < R->end)
				R->p++;
			if (*R->p == '\n')
				R->line++;
			R->p++;
		}
		if (R->p >= R->end) {
			/* libconfig drops a string the input ends in and sees the
			 * end of the file; so do we, and remember it for the message. */
			t->n = (size_t)(R->p - t->s);
			t->k = T_STRING;
			R->badstr = *t;
			t->k = T_EOF;
			t->n = 0;
			return;
		} else {
			R->p++;
			t->k = T_STRING;
			if (R->line != t->line)
				R->mlstr_line = t->line;
		}
		t->n = (size_t)(R->p - t->s);
		return;
	}
	R->p++;
	t->n = 1;
	t->k = strchr("=:;,{}[]()", c) ? T_PUNCT : T_GARBAGE;
}

static bool is_punct(const struct tok *t, char c)
{
	return t->k == T_PUNCT && t->s[0] == c;
}

static bool is_scalar(const struct tok *t)
{
	return t->k == T_BOOL || t->k == T_INT || t->k == T_FLOAT || t->k == T_STRING;
}

/* The token as shown in a message: its first line, cut at 40 bytes. */
static void tok_text(const struct tok *t, char *buf, size_t len)
{
	size_t n = t->n;
	const char *nl;

	if (t->k == T_EOF) {
		snprintf(buf, len, "end of file");
		return;
	}
	if ((nl = memchr(t->s, '\n', n)))
		n = (size_t)(nl - t->s);
	if (n > 40)
		snprintf(buf, len, "'%.40s...'", t->s);
	else
		snprintf(buf, len, "'%.*s'", (int)n, t->s);
}

static void fail(struct rd *R, int line, const char *fmt, ...) DW_PRINTF(3, 4);

static void fail(struct rd *R, int line, const char *fmt, ...)
{
	char what[256];
	va_list ap;

	if (R->failed)
		return;
	R->failed = true;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (R->mlstr_line && R->mlstr_line < line) {
		/* A string missing its closing quote runs on to the next '"' and
		 * the error surfaces lines later: point back at where it started. */
		R->d->line = R->mlstr_line;
		snprintf(R->d->what, sizeof(R->d->what),
			 "syntax error: the string that starts here runs on to a later line (a "
			 "'\"' missing?); then at line %d: %s",
			 line, what);
	} else if (R->badstr.k == T_STRING) {
		char near[64];

		tok_text(&R->badstr, near, sizeof(near));
		R->d->line = R->badstr.line;
		snprintf(R->d->what, sizeof(R->d->what),
			 "syntax error near %s: this string is never closed (a '\"' is missing)", near);
	} else {
		R->d->line = line;
		snprintf(R->d->what, sizeof(R->d->what), "%s", what);
	}
}

/* "syntax error near X: " + the rest, at the lookahead token. */
static void fail_near(struct rd *R, const char *fmt, ...) DW_PRINTF(2, 3);

static void fail_near(struct rd *R, const char *fmt, ...)
{
	char near[64], rest[300];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rest, sizeof(rest), fmt, ap);
	va_end(ap);
	tok_text(&R->cur, near, sizeof(near));
	if (R->cur.k == T_EOF)
		fail(R, R->cur.line, "syntax error at the end of the file: %s", rest);
	else
		fail(R, R->cur.line, "syntax error near %s: %s", near, rest);
}

static void read_settings(struct rd *R, char closer, int open_line, const char *owner);

/* One value of the setting `name`. */
static void read_value(struct rd *R, const char *name)
{
	struct tok open = R->cur;

	if (R->cur.k == T_STRING) {
		while (R->cur.k == T_STRING) /* adjacent strings concatenate */
			lex(R);
		return;
	}
	if (is_scalar(&R->cur)) {
		lex(R);
		return;
	}
	if (++R->depth > MAX_DEPTH) {
		fail_near(R, "nested deeper than %d levels", MAX_DEPTH);
		return;
	}
	if (is_punct(&R->cur, '{')) {
		lex(R);
		read_settings(R, '}', open.line, name);
	} else if (is_punct(&R->cur, '[') || is_punct(&R->cur, '(')) {
		bool array = R->cur.s[0] == '[';
		char closer = array ? ']' : ')';
		const char *kind = array ? "array" : "list";

		lex(R);
		if (is_punct(&R->cur, closer)) {
			lex(R);
			R->depth--;
			return;
		}
		for (;;) {
			if (R->cur.k == T_EOF) {
				fail(R, open.line,
				     "syntax error: the %s '%c' of '%s' is never closed (a '%c' is missing)",
				     kind, open.s[0], name, closer);
				break;
			}
			if (is_punct(&R->cur, closer)) {
				fail_near(R, "a ',' before '%c' is not allowed in the %s '%s'", closer,
					  kind, name);
				break;
			}
			if (array && !is_scalar(&R->cur)) {
				if (is_punct(&R->cur, '{'))
					fail_near(R, "an array [ ] holds plain values only; a list of "
						     "groups is written ( { ... }, { ... } )");
				else
					fail_near(R, "expected a value or ']' in the array '%s'", name);
				break;
			}
			read_value(R, name);
			if (R->failed)
				break;
			if (is_punct(&R->cur, closer)) {
				lex(R);
				break;
			}
			if (!is_punct(&R->cur, ',')) {
				if (R->cur.k == T_EOF)
					fail(R, open.line,
					     "syntax error: the %s '%c' of '%s' is never closed (a '%c' "
					     "is missing)",
					     kind, open.s[0], name, closer);
				else
					fail_near(R, "expected ',' or '%c' after an element of the %s '%s'",
						  closer, kind, name);
				break;
			}
			lex(R);
		}
	} else if (R->cur.k == T_NAME) {
		fail_near(R, "expected a value after '%s =' (a string is written in double quotes: "
			     "\"%.*s\")",
			  name, (int)(R->cur.n > 40 ? 40 : R->cur.n), R->cur.s);
	} else {
		fail_near(R, "expected a value after '%s =' (a number, \"string\", true/false, "
			     "[array], (list) or { group })",
			  name);
	}
	R->depth--;
}

/* Whether the lookahead (a name) is followed by '=' or ':': a next setting
 * written on the same line, which libconfig accepts. Reads ahead on a copy. */
static bool name_then_assign(const struct rd *R)
{
	struct rd ahead = *R;

	lex(&ahead);
	return is_punct(&ahead.cur, '=') || is_punct(&ahead.cur, ':');
}

/*
 * Settings up to closer ('}' for a group, '\0' for the top level). open_line
 * and owner name the group for "never closed".
 */
static void read_settings(struct rd *R, char closer, int open_line, const char *owner)
{
	bool after_comma = false;

	while (!R->failed) {
		struct tok nm = R->cur;
		char name[72];

		if (R->cur.k == T_EOF) {
			if (closer)
				fail(R, open_line,
				     "syntax error: the group '{' of '%s' is never closed (a '}' is "
				     "missing)",
				     owner);
			return;
		}
		if (closer && is_punct(&R->cur, closer)) {
			lex(R);
			return;
		}
		if (R->cur.k != T_NAME) {
			if (is_punct(&R->cur, '}'))
				fail_near(R, "no '{' to close here (one '}' too many?)");
			else if (is_punct(&R->cur, ';') || is_punct(&R->cur, ','))
				fail_near(R, "a stray '%c' (expected a setting name%s)", R->cur.s[0],
					  closer ? " or '}'" : "");
			else if (after_comma && (is_scalar(&R->cur) || is_punct(&R->cur, '{')))
				fail_near(R, "expected a setting name (several values are a list: "
					     "( a, b ), or [ a, b ] for plain values)");
			else
				fail_near(R, "expected a setting name%s", closer ? " or '}'" : "");
			return;
		}
		snprintf(name, sizeof(name), "%.*s", (int)(nm.n > 64 ? 64 : nm.n), nm.s);
		lex(R);
		if (R->cur.k == T_FLOAT && R->cur.s[0] == '.' && R->cur.s == nm.s + nm.n) {
			const char *q = R->cur.s + 1;
			while (q < R->end && is_namech(*q))
				q++;
			fail(R, nm.line,
			     "syntax error near '%.*s': a setting name cannot contain '.'; "
			     "write nested groups: %s = { %.*s = ...; };",
			     (int)(q - nm.s > 64 ? 64 : q - nm.s), nm.s, name,
			     (int)(q - R->cur.s - 1 > 64 ? 64 : q - R->cur.s - 1), R->cur.s + 1);
			return;
		}
		if (!is_punct(&R->cur, '=') && !is_punct(&R->cur, ':')) {
			fail_near(R, "expected '=' after the setting name '%s'", name);
			return;
		}
		lex(R);
		int vline = R->cur.line;
		enum tk vk = R->cur.k;
		read_value(R, name);
		if (R->failed)
			return;
		after_comma = false;
		if (is_punct(&R->cur, ';') || is_punct(&R->cur, ',')) {
			after_comma = R->cur.s[0] == ',';
			lex(R);
			continue;
		}
		/* No terminator: libconfig accepts the next setting or the end of
		 * the group, but a word on the same line is almost always a unit or
		 * a forgotten ';'. */
		if (R->cur.k == T_NAME && R->cur.line == vline && (vk == T_INT || vk == T_FLOAT) &&
		    !name_then_assign(R)) {
			fail_near(R, "expected ';' after the value of '%s' (a number takes no unit: "
				     "write the plain integer, e.g. 1073741824 for 1 GiB)",
				  name);
			return;
		}
		if (R->cur.k == T_EOF || R->cur.k == T_NAME ||
		    (closer && is_punct(&R->cur, closer)))
			continue;
		if (is_scalar(&R->cur))
			fail_near(R, "expected ';' after the value of '%s' (several values are a "
				     "list: ( a, b ), or [ a, b ] for plain values)",
				  name);
		else
			fail_near(R, "expected ';' after the value of '%s'", name);
		return;
	}
}

bool confsyntax_explain(const char *text, size_t len, struct confsyntax_diag *d)
{
	struct rd R = { .p = text, .end = text + len, .line = 1, .d = d };

	memset(d, 0, sizeof(*d));
	lex(&R);
	read_settings(&R, '\0', 1, "");
	return R.failed;
}
