/*
 * spool_frame — the byte format of the replay queue's log: building frames
 * and checking and decoding them. No files, no index: bytes in, bytes out.
 * The format itself is described in lib/SPOOL-FORMAT.md.
 *
 * A frame is a 21-byte header (magic "DWQ1", payload length, CRC-32C, type,
 * seq) and a payload. Writers build frames into a struct sf_buf (which owns
 * its memory: free(b.p)); readers first run sf_check on the bytes they have
 * and decode the payload of a frame that checks out with the sf_decode_*
 * calls, which never read outside [p, p + n) and refuse (-1) a payload that
 * does not parse exactly. Decoders take any input: they are what the fuzz
 * target tests/fuzz/fuzz_spool_frame.c drives.
 */
#ifndef DW_SPOOL_FRAME_H
#define DW_SPOOL_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"

#define SF_MAGIC 0x31515744u /* "DWQ1" read as little-endian u32 */
#define SF_HDR_LEN 21
#define SF_MAX_PAYLOAD (256u << 20)

enum sf_type {
	SF_RECORD_JSON = 1, /* 0.1.0's JSON RECORD, read only */
	SF_STATE_JSON = 2,  /* 0.1.0's JSON STATE, read only */
	SF_ROTATE = 3,	    /* seq: the id of the segment that follows */
	SF_RECORD = 4,	    /* a new record */
	SF_STATE = 5,	    /* a state change of seq */
	SF_MOVED = 6,	    /* a live record copied forward by compaction (same
			     * payload as SF_RECORD, with the state of the copy) */
	SF_INTENT = 7,	    /* seq: an intent id; a mirrored write about to go
			     * to its authority (struct spool_intent) */
	SF_CLOSE = 8,	    /* seq: the intent id whose outcome is known; empty */
};
#define SF_TYPE_MAX SF_CLOSE

static inline void sf_put32(unsigned char *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = (v >> 24) & 0xff;
}

static inline uint32_t sf_get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t sf_get64(const unsigned char *p)
{
	return (uint64_t)sf_get32(p) | (uint64_t)sf_get32(p + 4) << 32;
}

/* CRC-32C (Castagnoli), hardware-assisted where the CPU has SSE 4.2. */
uint32_t sf_crc32c(uint32_t crc, const void *p, size_t n);

/* A growable byte buffer; zero-initialised is empty; free(b.p) frees it. */
struct sf_buf {
	unsigned char *p;
	size_t len, cap;
};

/* Append n raw bytes (whole frames built elsewhere) to b. */
void sf_buf_add(struct sf_buf *b, const void *p, size_t n);
/* Append whole frames to b. */
void sf_put_rotate(struct sf_buf *b, uint64_t next_id);
/* type SF_RECORD or SF_MOVED; the frame's seq is r->seq. */
void sf_put_record(struct sf_buf *b, const struct spool_record *r, enum sf_type type);
void sf_put_state(struct sf_buf *b, uint64_t seq, int st, uint32_t attempts, int status,
		  const char *error, int64_t t);
/* An INTENT frame (seq: in->id; borrowed strings, target of target_len
 * bytes, any other NULL is written absent) and its CLOSE. Payload: i64 t,
 * then six strings: route, upstream, method, target, request id, key. */
struct sf_intent {
	uint64_t id;
	int64_t t_us;
	const char *route, *upstream, *method, *target, *request_id, *key;
	size_t target_len;
};
void sf_put_intent(struct sf_buf *b, const struct sf_intent *in);
void sf_put_close(struct sf_buf *b, uint64_t id);

/* Whether p[0..avail) starts with a whole frame that checks out (magic,
 * known type, length, CRC): FC_OK and *flen its size; FC_SHORT: a prefix of
 * one (more bytes may complete it); FC_BAD: not a frame here. */
enum sf_check { SF_OK, SF_SHORT, SF_BAD };
enum sf_check sf_check(const unsigned char *p, size_t avail, size_t *flen);

static inline int sf_frame_type(const unsigned char *frame)
{
	return frame[12];
}

static inline uint64_t sf_frame_seq(const unsigned char *frame)
{
	return sf_get64(frame + 13);
}

/* What the in-memory index keeps of a RECORD/MOVED frame: NUL-terminated
 * copies, freed by sf_head_clear. */
struct sf_head {
	int state;
	uint32_t attempts;
	int status;
	int64_t created, updated;
	char *upstream, *key, *error;
};
void sf_head_clear(struct sf_head *h);

/* A STATE frame's payload; error is a malloc'd copy or NULL (free it). */
struct sf_state {
	int state;
	uint32_t attempts;
	int status;
	int64_t t;
	char *error;
};

/* Decode the payload p[0..n) of a frame of type (as found by sf_check).
 * Return 0, or -1 (nothing to free) when the payload does not parse. */
int sf_decode_head(int type, const unsigned char *p, size_t n, struct sf_head *h);
int sf_decode_state(int type, const unsigned char *p, size_t n, struct sf_state *s);
/* The whole record (spool_record_clear it); seq is the frame's. */
int sf_decode_record(int type, const unsigned char *p, size_t n, uint64_t seq,
		     struct spool_record *r);
/* An INTENT payload (spool_intent_clear it); id is the frame's seq. */
int sf_decode_intent(const unsigned char *p, size_t n, uint64_t id, struct spool_intent *in);

#endif
