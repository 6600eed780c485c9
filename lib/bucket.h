/*
 * bucket.h — which side serves a read: the stable bucket of §7.1.
 *
 * A read is served by the new system when bucket(route, sticky) < weight,
 * both in hundredths of a percent: buckets are 0..9999, weights 0..10000
 * (0 = never, 10000 = always). Raising a weight only adds buckets to the new
 * system; lowering only removes them, so a sticky key served by the new
 * system at 10 % is still served by it at 30 % (monotonic ramp).
 *
 * The bucket is a pure function of its bytes, the same in every process, on
 * every machine (either endianness) and after every restart, so a fleet of
 * sidecars agrees without talking. The algorithm is fixed; changing it moves
 * users between systems mid-migration, and the unit test's vectors fail:
 *
 *   msg    = u32le(len(route)) || route || sticky     (the length prefix keeps
 *            ("ab","c") and ("a","bc") apart; sticky may hold any bytes, NUL too)
 *   key    = the 16 ASCII bytes "dualwrite-bucket" (k0 = bytes 0-7 and
 *            k1 = bytes 8-15, each read little-endian, as in the SipHash paper)
 *   h      = SipHash-2-4(key, msg)                    (64-bit result)
 *   bucket = (h * 10000) >> 64                        (multiply-shift: the high
 *            word of the 128-bit product; no modulo; each bucket receives
 *            floor or ceil of 2^64/10000 hash values, a relative bias < 1e-15)
 *
 * A read without a sticky value (the field is missing) draws anew per request
 * with bucket_draw() from a caller-owned generator (one per worker thread; no
 * global state, no locks).
 *
 * Everything here is pure and thread-safe; nothing allocates.
 *
 * How the daemon uses it (design note for issue 11): the configured weight
 * lives in the immutable config snapshot; the *effective* weight (0 while the
 * upstream's guard is tripped, else the configured one) lives in the
 * per-route runtime state that outlives reloads (see window.h), and is what
 * bucket_serves_new() is given.
 */
#ifndef DW_BUCKET_H
#define DW_BUCKET_H

#include <stddef.h>
#include <stdint.h>

#define BUCKET_COUNT 10000u /* buckets 0..9999; weight 10000 = every read */

/* SipHash-2-4 of len bytes with the 16-byte key (exposed for its test vectors). */
uint64_t bucket_siphash24(const unsigned char key[16], const void *msg, size_t len);

/* The bucket of (route, sticky) in [0, BUCKET_COUNT). route is the route's
 * name (route_len bytes), sticky the sticky value's bytes as extracted
 * (a path parameter's text, a JSON string's bytes, a number's text). */
uint32_t bucket_of(const char *route, size_t route_len, const void *sticky, size_t sticky_len);

/* Does a read in bucket b go to the new system at weight w (hundredths of a
 * percent, 0..10000)? b < w. */
static inline int bucket_serves_new(uint32_t b, uint32_t weight_hundredths)
{
	return b < weight_hundredths;
}

/* A per-thread random generator for reads without a sticky value
 * (splitmix64: 8 bytes of state, any seed is fine, not cryptographic). */
struct bucket_rng {
	uint64_t s;
};
static inline void bucket_rng_seed(struct bucket_rng *r, uint64_t seed)
{
	r->s = seed;
}
uint64_t bucket_rng_next(struct bucket_rng *r);
/* A uniform draw in [0, BUCKET_COUNT) (same reduction as bucket_of). */
uint32_t bucket_draw(struct bucket_rng *r);

/* A configured percentage (0-100, at most two decimals, e.g. 12.5 or 33.33)
 * as hundredths in *out. Returns 0, or -1 when out of range, not finite, or
 * finer than two decimals (33.333); *out is then untouched. */
int bucket_weight_from_percent(double pct, uint32_t *out) __attribute__((warn_unused_result));

#endif
