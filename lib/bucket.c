/*
 * bucket.c — SipHash-2-4 and the multiply-shift reduction of bucket.h.
 * Bytes are read and lengths written little-endian explicitly, so the result
 * does not depend on the host's byte order or alignment.
 */
#include "bucket.h"

#include <math.h>
#include <string.h>

static const unsigned char bucket_key[16] = {'d', 'u', 'a', 'l', 'w', 'r', 'i', 't',
					     'e', '-', 'b', 'u', 'c', 'k', 'e', 't'};

static uint64_t rd64le(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

/* The state of an incremental SipHash-2-4: bucket_of hashes its message in
 * three pieces without copying them together. */
struct sip {
	uint64_t v0, v1, v2, v3;
	unsigned char tail[8];
	size_t ntail;
	uint64_t total;
};

static void sip_round(struct sip *s)
{
	s->v0 += s->v1;
	s->v1 = ROTL(s->v1, 13);
	s->v1 ^= s->v0;
	s->v0 = ROTL(s->v0, 32);
	s->v2 += s->v3;
	s->v3 = ROTL(s->v3, 16);
	s->v3 ^= s->v2;
	s->v0 += s->v3;
	s->v3 = ROTL(s->v3, 21);
	s->v3 ^= s->v0;
	s->v2 += s->v1;
	s->v1 = ROTL(s->v1, 17);
	s->v1 ^= s->v2;
	s->v2 = ROTL(s->v2, 32);
}

static void sip_block(struct sip *s, uint64_t m)
{
	s->v3 ^= m;
	sip_round(s);
	sip_round(s);
	s->v0 ^= m;
}

static void sip_init(struct sip *s, const unsigned char key[16])
{
	uint64_t k0 = rd64le(key), k1 = rd64le(key + 8);

	s->v0 = k0 ^ UINT64_C(0x736f6d6570736575);
	s->v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
	s->v2 = k0 ^ UINT64_C(0x6c7967656e657261);
	s->v3 = k1 ^ UINT64_C(0x7465646279746573);
	s->ntail = 0;
	s->total = 0;
}

static void sip_update(struct sip *s, const unsigned char *p, size_t len)
{
	s->total += len;
	if (s->ntail) {
		size_t take = 8 - s->ntail;

		if (take > len)
			take = len;
		memcpy(s->tail + s->ntail, p, take);
		s->ntail += take;
		p += take;
		len -= take;
		if (s->ntail < 8)
			return;
		sip_block(s, rd64le(s->tail));
		s->ntail = 0;
	}
	for (; len >= 8; p += 8, len -= 8)
		sip_block(s, rd64le(p));
	if (len) {
		memcpy(s->tail, p, len);
		s->ntail = len;
	}
}

static uint64_t sip_final(struct sip *s)
{
	uint64_t b = (s->total & 0xff) << 56;

	for (size_t i = 0; i < s->ntail; i++)
		b |= (uint64_t)s->tail[i] << (8 * i);
	sip_block(s, b);
	s->v2 ^= 0xff;
	for (int i = 0; i < 4; i++)
		sip_round(s);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

uint64_t bucket_siphash24(const unsigned char key[16], const void *msg, size_t len)
{
	struct sip s;

	sip_init(&s, key);
	sip_update(&s, msg, len);
	return sip_final(&s);
}

/* The high 64 bits of h * BUCKET_COUNT, from 32-bit halves (no __int128):
 * h * N = hi*N*2^32 + lo*N with N < 2^32, so every partial product fits. */
static uint32_t reduce(uint64_t h)
{
	uint64_t hi = h >> 32, lo = h & 0xffffffffu;
	uint64_t mid = hi * BUCKET_COUNT + ((lo * BUCKET_COUNT) >> 32);

	return (uint32_t)(mid >> 32);
}

uint32_t bucket_of(const char *route, size_t route_len, const void *sticky, size_t sticky_len)
{
	unsigned char len4[4];
	struct sip s;

	for (int i = 0; i < 4; i++)
		len4[i] = (unsigned char)((uint64_t)route_len >> (8 * i));
	sip_init(&s, bucket_key);
	sip_update(&s, len4, sizeof(len4));
	sip_update(&s, (const unsigned char *)route, route_len);
	sip_update(&s, sticky, sticky_len);
	return reduce(sip_final(&s));
}

uint64_t bucket_rng_next(struct bucket_rng *r)
{
	uint64_t z = (r->s += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

uint32_t bucket_draw(struct bucket_rng *r)
{
	return reduce(bucket_rng_next(r));
}

int bucket_weight_from_percent(double pct, uint32_t *out)
{
	double h;

	if (!isfinite(pct) || pct < 0 || pct > 100)
		return -1;
	h = round(pct * 100.0);
	/* 33.33 * 100 is 3332.9999999999995 in binary: allow that much, no more */
	if (fabs(pct * 100.0 - h) > 1e-6)
		return -1;
	*out = (uint32_t)h;
	return 0;
}
