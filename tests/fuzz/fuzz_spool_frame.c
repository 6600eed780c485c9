/*
 * fuzz_spool_frame — libFuzzer target for the replay queue's frame decoder
 * (lib/spool_frame.h): what a reader does with the bytes of a segment file,
 * which may be anything after a crash, a bad disk or a stray write.
 *
 * The first input byte picks the mode:
 *   even: the rest is a segment - walk it as the fold does (sf_check; decode
 *         each frame that checks out; resync to the next magic otherwise);
 *   odd:  the second byte picks a frame type and the rest is its payload,
 *         decoded directly, so the decoders are reached without a valid CRC.
 * A record that decodes is encoded again (as RECORD and as MOVED); the frame
 * must check out, span exactly what was built, and decode to the same
 * fields. Decoders must never read outside the input (ASan) nor crash.
 * Seeds: tests/fuzz/corpus/spool_frame. Without libFuzzer, replay_main.c
 * drives it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond)) {                                                         \
			fprintf(stderr, "fuzz_spool_frame: %s:%d: check failed: %s\n", \
				__FILE__, __LINE__, #cond);                            \
			abort();                                                       \
		}                                                                      \
	} while (0)

static void same_str(const char *a, const char *b)
{
	CHECK((a == NULL) == (b == NULL));
	CHECK(!a || strcmp(a, b) == 0);
}

/* Encode r again as type, and it must come back the same. */
static void roundtrip(const struct spool_record *r, enum sf_type type)
{
	struct sf_buf b = {0};
	struct spool_record back;
	size_t flen = 0;

	sf_put_record(&b, r, type);
	CHECK(sf_check(b.p, b.len, &flen) == SF_OK && flen == b.len);
	CHECK(sf_frame_type(b.p) == (int)type && sf_frame_seq(b.p) == r->seq);
	CHECK(sf_decode_record(type, b.p + SF_HDR_LEN, flen - SF_HDR_LEN, r->seq, &back) == 0);
	CHECK(back.state == r->state && back.attempts == r->attempts &&
	      back.last_status == r->last_status && back.created_us == r->created_us &&
	      back.updated_us == r->updated_us && back.body_len == r->body_len);
	/* Strings with a NUL inside come back cut there (they are C strings),
	 * except the body, which has a length. */
	same_str(back.upstream, r->upstream);
	same_str(back.key, r->key);
	same_str(back.path, r->path);
	CHECK(!r->body_len || memcmp(back.body, r->body, r->body_len) == 0);
	spool_record_clear(&back);
	free(b.p);
}

/* An INTENT payload that parses encodes back to one that decodes the same. */
static void intent_roundtrip(const unsigned char *p, size_t n, uint64_t seq)
{
	struct spool_intent in;
	struct sf_buf b = {0};
	size_t flen = 0;

	if (sf_decode_intent(p, n, seq, &in) < 0)
		return;
	CHECK(in.route && in.upstream && in.id == seq);
	struct sf_intent v = {in.id,	 in.t_us,	   in.route, in.upstream, in.method,
			      in.target, in.request_id, in.key,   in.target ? strlen(in.target) : 0};
	sf_put_intent(&b, &v);
	CHECK(sf_check(b.p, b.len, &flen) == SF_OK && flen == b.len);
	CHECK(sf_frame_type(b.p) == SF_INTENT && sf_frame_seq(b.p) == seq);
	/* and decodes to the same fields (C strings: cut at a NUL, both times) */
	struct spool_intent back;
	CHECK(sf_decode_intent(b.p + SF_HDR_LEN, flen - SF_HDR_LEN, seq, &back) == 0);
	CHECK(back.t_us == in.t_us);
	same_str(back.route, in.route);
	same_str(back.upstream, in.upstream);
	same_str(back.method, in.method);
	same_str(back.target, in.target);
	same_str(back.request_id, in.request_id);
	same_str(back.key, in.key);
	spool_intent_clear(&back);
	spool_intent_clear(&in);
	free(b.p);
}

static void decode_payload(int type, const unsigned char *p, size_t n, uint64_t seq)
{
	struct sf_head h;
	struct sf_state st;
	struct spool_record r;

	if (type == SF_INTENT)
		intent_roundtrip(p, n, seq);

	if (sf_decode_head(type, p, n, &h) == 0) {
		CHECK(h.upstream != NULL);
		sf_head_clear(&h);
	}
	if (sf_decode_state(type, p, n, &st) == 0)
		free(st.error);
	if (sf_decode_record(type, p, n, seq, &r) == 0) {
		CHECK(r.upstream != NULL && r.seq == seq);
		if (type == SF_RECORD || type == SF_MOVED) {
			roundtrip(&r, SF_RECORD);
			roundtrip(&r, SF_MOVED);
		}
		spool_record_clear(&r);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	if (data[0] & 1) {
		decode_payload(data[1] % (SF_TYPE_MAX + 2), data + 2, size - 2, 7);
		return 0;
	}
	const unsigned char *b = data + 1;
	size_t n = size - 1, pos = 0;

	while (pos < n) {
		size_t flen = 0;
		enum sf_check fc = sf_check(b + pos, n - pos, &flen);

		if (fc == SF_OK) {
			CHECK(flen >= SF_HDR_LEN && flen <= n - pos);
			decode_payload(sf_frame_type(b + pos), b + pos + SF_HDR_LEN, flen - SF_HDR_LEN,
				       sf_frame_seq(b + pos));
			pos += flen;
			continue;
		}
		CHECK(fc == SF_SHORT || fc == SF_BAD);
		pos++; /* resync, as the fold does */
	}
	return 0;
}
