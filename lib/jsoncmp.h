/*
 * jsoncmp.h — are two JSON answers the same, for the shadow comparison of
 * SPEC §7.3, and if not, where do they differ.
 *
 * The new system's answer, mapped back by the route's `response`, is
 * compared with the legacy's as JSON values (jansson json_t), by these
 * rules:
 *   - object keys are unordered; a key present on one side only differs,
 *     so null and missing differ ({"a": null} vs {});
 *   - keys named in `ignore` are left out at every depth, on both sides
 *     (exact byte match on the key; an ignored key is never reported);
 *   - numbers compare by value: an integer and a real are equal when the real
 *     is integral and equals the integer exactly (1 == 1.0, 0 == -0.0;
 *     9007199254740993 != 9007199254740992.0); reals compare with ==;
 *   - strings compare byte for byte (no Unicode normalisation); true, false
 *     and null only equal themselves; a number never equals a string ("1" != 1);
 *   - lists compare element by element in order, or, when `unordered`, as
 *     multisets (every list at every depth, duplicates counted): equal runs at
 *     the front are matched in place, the rest by a canonical 64-bit hash
 *     (consistent with the rules above), sorted, and confirmed by a deep
 *     comparison of equal-hash elements: O(n log n) in the list's length.
 *
 * The result is the number of differences (0: equal) and, in a caller's
 * buffer, up to max_paths distinct JSON paths where they are, separated by
 * one space, for one log line, e.g.
 *     $.items[3].category $.total $["odd\u0020key"]
 * Keys that are identifiers print as .key, others as ["..."] with quote and
 * backslash escaped by a backslash, control bytes and spaces as \u00XX (a path never
 * holds a space). In an unordered list, elements with no equal partner are
 * paired in their original order and compared, printed with
 * [*] for the index ($.items[*].category); unpaired extras print as
 * $.items[*]. A path cut by length ends with "..."; when some distinct paths
 * are left out, the list ends with " ...". An ordered list of different
 * length differs at each extra index.
 *
 * Pure: no global state, thread-safe on values no one mutates; allocates
 * only scratch for unordered lists (aborts on out-of-memory, as dw_malloc).
 * Recursion follows the values' depth (jansson's parser caps it at 2048).
 */
#ifndef DW_JSONCMP_H
#define DW_JSONCMP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct jsoncmp_opts {
	const char *const *ignore; /* key names left out at every depth; may be NULL */
	size_t nignore;
	int unordered;		   /* lists as multisets */
	unsigned max_paths;	   /* distinct paths written to buf at most */
};

/* Compare a and b (neither NULL). Writes the paths into buf (cap bytes,
 * always NUL-terminated when cap > 0; "" when equal; buf may be NULL when
 * cap is 0). Returns the number of differences: 0 when equal under the
 * rules above. Symmetric in a and b (the count; paths may be listed in a
 * different order). */
size_t jsoncmp(const json_t *a, const json_t *b, const struct jsoncmp_opts *o, char *buf,
	       size_t cap);

/* The canonical hash used for unordered lists: equal values (by the rules
 * above, with o's ignore and unordered) hash equal. Exposed for tests. */
uint64_t jsoncmp_hash(const json_t *v, const struct jsoncmp_opts *o);

#endif
