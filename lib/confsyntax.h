/*
 * confsyntax — say what is wrong where, when libconfig only says "syntax
 * error".
 *
 * libconfig reports a parse failure as a line number and the bison text
 * "syntax error", with no token and no hint. confsyntax_explain re-reads the
 * same text with a small recursive-descent reader of libconfig's grammar
 * (settings `name = value;`, scalars, [arrays], (lists), {groups}, comments,
 * @include lines) and stops at the first token that grammar cannot accept,
 * describing it the way a person would fix it: the token, what was expected
 * there, and a hint for the usual mistakes (a dotted name such as
 * `admin.listen`, a unit after a number, a missing ';' or ',', an unclosed
 * '{' or string).
 *
 * It does not decide validity: libconfig does. It only describes, and when it
 * finds nothing wrong (the two readers disagree) it says so, so the caller
 * falls back to libconfig's own line and text. Pure function; no I/O.
 */
#ifndef DW_CONFSYNTAX_H
#define DW_CONFSYNTAX_H

#include <stdbool.h>
#include <stddef.h>

struct confsyntax_diag {
	int line;	/* 1-based line of the offending token (or of an unclosed opener) */
	char what[480]; /* e.g. "syntax error near 'GiB': expected ';' after ..." */
};

/* Read text (len bytes, need not be NUL-terminated). Returns true and fills
 * d when a syntax error was found, false when the text reads as valid. */
bool confsyntax_explain(const char *text, size_t len, struct confsyntax_diag *d);

#endif
