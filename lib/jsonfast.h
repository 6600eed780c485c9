/*
 * jsonfast — a faster JSON reader and writer for jansson values.
 *
 * The daemon decodes every mirrored request body and legacy reply and encodes
 * every mirror body; jansson's stream-based lexer and callback-based writer
 * cost ~20% of its CPU. These two functions are drop-in replacements for the
 * two calls the daemon makes, with the *same* observable behaviour as jansson
 * 2.14 but for the text of reals (differentially tested and fuzzed against
 * it: tests/unit/test_jsonfast.c, tests/fuzz/fuzz_json.c), so the value model
 * stays jansson's json_t and the mapping engine (expr.h) is unaffected.
 *
 *   jsonfast_loadb   == json_loadb(buf, len, JSON_DECODE_ANY, err)
 *       Accepts exactly the inputs jansson accepts and builds a value that
 *       json_equal()s jansson's and dumps to the same bytes: integers are
 *       numbers without '.', 'e' or 'E' ("-0" is the integer 0), out-of-range
 *       integers and overflowing reals are rejected, strings must be valid
 *       UTF-8 without raw control characters or "\u0000", lone surrogates
 *       are rejected, duplicate keys keep the last value at the first key's
 *       place, nesting deeper than JSON_PARSER_MAX_DEPTH values is rejected.
 *       Even jansson's quirk is kept: one NUL byte directly after a number or
 *       a literal (true/false/null) is skipped. On failure err (if non-NULL)
 *       gets a message, line, column (in characters), byte position, source
 *       "<buffer>" and a json_error_code(); the text differs from jansson's.
 *
 *   jsonfast_dumps   ~= json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)
 *       Byte-identical output except for reals (member order = jansson's
 *       iteration order, jansson's escapes), or NULL where jansson fails: a
 *       string value that is not valid UTF-8, a reference cycle, no memory.
 *       (Like jansson, an object *key* that is not valid UTF-8 is written
 *       truncated rather than failing the dump.) The result is malloc()ed and
 *       NUL-terminated; free it with free(). len_out, if non-NULL, receives
 *       the length without the NUL.
 *       Reals deliberately differ from jansson: jansson writes "%.17g"
 *       (21.3 -> 21.300000000000001, a different number for any reader that
 *       keeps decimals, such as PostgreSQL's jsonb numeric); jsonfast writes
 *       the shortest text that reads back as the same double, as
 *       jsonfast_real(d, true) below (21.3 -> 21.3). The two outputs parse
 *       to bit-identical doubles; the differential tests compare reals by
 *       value and everything else by bytes.
 *
 *   jsonfast_real    the text of a finite real d: "%.15g", "%.16g" or
 *       "%.17g", the first that strtod reads back as exactly d (for a
 *       subnormal from "%.1g" on), which is the shortest, with '.' as
 *       the decimal point whatever the locale. With json, in JSON's form as
 *       jsonfast_dumps writes it: ".0" on an integral value so that it reads
 *       back as a real (1.0 -> "1.0", -0.0 -> "-0.0"), the exponent without
 *       '+' and leading zeros (1e300 -> "1e300", 5e-324 -> "5e-324");
 *       without, printf's ("1", "-0", "1e+300", "1e-07": the text of
 *       $string, ordering keys and numeric columns, conf/MAPPING.md). Writes
 *       at most JSONFAST_REAL_MAX bytes with the NUL into buf; returns the
 *       length, or -1 for infinity and NaN.
 *
 * Both are reentrant: no global mutable state.
 */
#ifndef DW_JSONFAST_H
#define DW_JSONFAST_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

json_t *jsonfast_loadb(const char *buf, size_t len, json_error_t *err);
char *jsonfast_dumps(const json_t *v, size_t *len_out);

#define JSONFAST_REAL_MAX 32
int jsonfast_real(double d, bool json, char *buf);

#endif
