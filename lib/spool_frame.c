/*
 * spool_frame.c — building, checking and decoding the frames of the replay
 * queue's log (spool_frame.h). The format is in lib/SPOOL-FORMAT.md.
 *
 * The payloads are binary so that journaling a write costs no JSON encoding:
 * the mirror body is copied as it is. The JSON payloads of 0.1.0 are still
 * decoded (read only).
 */
#include "spool_frame.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "dw.h"

static const uint32_t crc32c_tab[256] = {
	0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
	0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
	0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
	0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
	0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
	0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
	0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
	0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
	0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
	0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
	0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
	0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
	0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
	0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
	0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
	0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
	0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
	0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
	0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
	0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
	0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
	0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
	0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
	0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
	0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
	0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
	0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
	0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
	0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
	0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
	0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
	0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
	0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
	0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
	0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
	0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
	0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
	0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
	0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
	0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
	0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
	0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
	0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *b, size_t n)
{
	while (n--)
		crc = crc32c_tab[(crc ^ *b++) & 0xff] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* SSE 4.2's crc32 instruction computes CRC-32C: 8 bytes per instruction
 * instead of one table lookup per byte. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *b,
							      size_t n)
{
	uint64_t c = crc;

	for (; n >= 8; n -= 8, b += 8) {
		uint64_t v;
		memcpy(&v, b, 8);
		c = __builtin_ia32_crc32di(c, v);
	}
	crc = (uint32_t)c;
	while (n--)
		crc = __builtin_ia32_crc32qi(crc, *b++);
	return crc;
}
#endif

uint32_t sf_crc32c(uint32_t crc, const void *p, size_t n)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (__builtin_cpu_supports("sse4.2"))
		return crc32c_hw(crc, p, n);
#endif
	return crc32c_soft(crc, p, n);
}

static void sf_buf_reserve(struct sf_buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	b->p = dw_realloc(b->p, cap);
	b->cap = cap;
}

void sf_buf_add(struct sf_buf *b, const void *p, size_t n)
{
	if (!n)
		return;
	sf_buf_reserve(b, n);
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void sf_put64(unsigned char *p, uint64_t v)
{
	sf_put32(p, (uint32_t)v);
	sf_put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- base64, for bodies of 0.1.0's JSON records that were not UTF-8 ---- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_val(char c)
{
	const char *p = c ? strchr(b64chars, c) : NULL;
	return p ? (int)(p - b64chars) : -1;
}

/* Returns a malloced buffer (NUL-terminated for convenience) or NULL. */
static char *b64_decode(const char *in, size_t n, size_t *outlen)
{
	char *out = dw_malloc(n / 4 * 3 + 3);
	size_t o = 0, i;
	uint32_t acc = 0;
	int bits = 0;

	for (i = 0; i < n; i++) {
		if (in[i] == '=')
			break;
		int v = b64_val(in[i]);
		if (v < 0) {
			free(out);
			return NULL;
		}
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (char)((acc >> bits) & 0xff);
		}
	}
	out[o] = '\0';
	*outlen = o;
	return out;
}

/* ---- binary payloads ---- */

#define STR_ABSENT 0xffffffffu

static void put_str(struct sf_buf *b, const char *s, size_t n)
{
	sf_buf_reserve(b, 4 + (s ? n : 0));
	sf_put32(b->p + b->len, s ? (uint32_t)n : STR_ABSENT);
	b->len += 4;
	if (s && n) {
		memcpy(b->p + b->len, s, n);
		b->len += n;
	}
}

static void put_cstr(struct sf_buf *b, const char *s)
{
	put_str(b, s, s ? strlen(s) : 0);
}

static void put_u8(struct sf_buf *b, unsigned v)
{
	sf_buf_reserve(b, 1);
	b->p[b->len++] = (unsigned char)v;
}

static void put_u32(struct sf_buf *b, uint32_t v)
{
	sf_buf_reserve(b, 4);
	sf_put32(b->p + b->len, v);
	b->len += 4;
}

static void put_i64(struct sf_buf *b, int64_t v)
{
	sf_buf_reserve(b, 8);
	sf_put64(b->p + b->len, (uint64_t)v);
	b->len += 8;
}

/* The frame's payload is built in place: header room first, then
 * buf_seal() fills the header in. */
static size_t frame_open(struct sf_buf *b)
{
	size_t at = b->len;

	sf_buf_reserve(b, SF_HDR_LEN);
	b->len += SF_HDR_LEN;
	return at;
}

static void frame_seal(struct sf_buf *b, size_t at, enum sf_type type, uint64_t seq)
{
	unsigned char *h = b->p + at;
	size_t plen = b->len - at - SF_HDR_LEN;
	uint32_t crc;

	sf_put32(h, SF_MAGIC);
	sf_put32(h + 4, (uint32_t)plen);
	h[12] = (unsigned char)type;
	sf_put64(h + 13, seq);
	crc = sf_crc32c(0xffffffffu, h + 12, 9);
	crc = sf_crc32c(crc, h + SF_HDR_LEN, plen) ^ 0xffffffffu;
	sf_put32(h + 8, crc);
}

void sf_put_record(struct sf_buf *b, const struct spool_record *r, enum sf_type type)
{
	size_t at = frame_open(b);

	put_u8(b, (unsigned)r->state);
	put_u32(b, r->attempts);
	put_u32(b, (uint32_t)r->last_status);
	put_i64(b, r->created_us);
	put_i64(b, r->updated_us);
	put_cstr(b, r->route);
	put_cstr(b, r->upstream);
	put_cstr(b, r->key);
	put_cstr(b, r->idem_key);
	put_cstr(b, r->method);
	put_cstr(b, r->path);
	put_cstr(b, r->content_type);
	put_cstr(b, r->request_id);
	put_cstr(b, r->last_error);
	put_str(b, r->body, r->body_len);
	frame_seal(b, at, type, r->seq);
}

void sf_put_state(struct sf_buf *b, uint64_t seq, int st, uint32_t attempts, int status,
			const char *error, int64_t t)
{
	size_t at = frame_open(b);

	put_u8(b, (unsigned)st);
	put_u32(b, attempts);
	put_u32(b, (uint32_t)status);
	put_i64(b, t);
	put_cstr(b, error);
	frame_seal(b, at, SF_STATE, seq);
}

void sf_put_intent(struct sf_buf *b, const struct sf_intent *in)
{
	size_t at = frame_open(b);

	put_i64(b, in->t_us);
	put_cstr(b, in->route);
	put_cstr(b, in->upstream);
	put_cstr(b, in->method);
	put_str(b, in->target, in->target_len);
	put_cstr(b, in->request_id);
	put_cstr(b, in->key);
	frame_seal(b, at, SF_INTENT, in->id);
}

void sf_put_close(struct sf_buf *b, uint64_t id)
{
	frame_seal(b, frame_open(b), SF_CLOSE, id);
}

/* A bounds-checked reader over a payload; any overrun sets bad. */
struct cur {
	const unsigned char *p, *end;
	bool bad;
};

static bool cur_need(struct cur *c, size_t n)
{
	if (c->bad || (size_t)(c->end - c->p) < n) {
		c->bad = true;
		return false;
	}
	return true;
}

static unsigned get_u8(struct cur *c)
{
	return cur_need(c, 1) ? *c->p++ : 0;
}

static uint32_t get_u32(struct cur *c)
{
	uint32_t v = 0;

	if (cur_need(c, 4)) {
		v = sf_get32(c->p);
		c->p += 4;
	}
	return v;
}

static int64_t get_i64(struct cur *c)
{
	uint64_t v = 0;

	if (cur_need(c, 8)) {
		v = sf_get64(c->p);
		c->p += 8;
	}
	return (int64_t)v;
}

/* A string in place (not NUL-terminated): *len, NULL when absent. */
static const char *get_strp(struct cur *c, size_t *len)
{
	uint32_t n = get_u32(c);
	const char *s;

	*len = 0;
	if (c->bad || n == STR_ABSENT)
		return NULL;
	if (!cur_need(c, n))
		return NULL;
	s = (const char *)c->p;
	c->p += n;
	*len = n;
	return s;
}

/* A malloc'd NUL-terminated copy, NULL when absent. */
static char *get_strdup(struct cur *c, size_t *lenp)
{
	size_t n;
	const char *s = get_strp(c, &n);
	char *d;

	if (lenp)
		*lenp = n;
	if (!s)
		return NULL;
	d = dw_malloc(n + 1);
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

void sf_head_clear(struct sf_head *h)
{
	free(h->upstream);
	free(h->key);
	free(h->error);
}

static int record_from_bin(const unsigned char *p, size_t n, uint64_t seq, struct spool_record *r)
{
	struct cur c = {p, p + n, false};

	memset(r, 0, sizeof(*r));
	r->seq = seq;
	r->state = (enum spool_state)get_u8(&c);
	r->attempts = get_u32(&c);
	r->last_status = (int)get_u32(&c);
	r->created_us = get_i64(&c);
	r->updated_us = get_i64(&c);
	r->route = get_strdup(&c, NULL);
	r->upstream = get_strdup(&c, NULL);
	r->key = get_strdup(&c, NULL);
	r->idem_key = get_strdup(&c, NULL);
	r->method = get_strdup(&c, NULL);
	r->path = get_strdup(&c, NULL);
	r->content_type = get_strdup(&c, NULL);
	r->request_id = get_strdup(&c, NULL);
	r->last_error = get_strdup(&c, NULL);
	r->body = get_strdup(&c, &r->body_len);
	if (c.bad || c.p != c.end || !r->upstream) {
		spool_record_clear(r);
		return -1;
	}
	return 0;
}

int sf_decode_intent(const unsigned char *p, size_t n, uint64_t id, struct spool_intent *in)
{
	struct cur c = {p, p + n, false};

	memset(in, 0, sizeof(*in));
	in->id = id;
	in->t_us = get_i64(&c);
	in->route = get_strdup(&c, NULL);
	in->upstream = get_strdup(&c, NULL);
	in->method = get_strdup(&c, NULL);
	in->target = get_strdup(&c, NULL);
	in->request_id = get_strdup(&c, NULL);
	in->key = get_strdup(&c, NULL);
	if (c.bad || c.p != c.end || !in->route || !in->upstream) {
		spool_intent_clear(in);
		return -1;
	}
	return 0;
}

static int head_from_bin(const unsigned char *p, size_t n, struct sf_head *h)
{
	struct cur c = {p, p + n, false};
	size_t len;

	memset(h, 0, sizeof(*h));
	h->state = (int)get_u8(&c);
	h->attempts = get_u32(&c);
	h->status = (int)get_u32(&c);
	h->created = get_i64(&c);
	h->updated = get_i64(&c);
	(void)get_strp(&c, &len); /* route */
	h->upstream = get_strdup(&c, NULL);
	h->key = get_strdup(&c, NULL);
	for (int i = 0; i < 5; i++) /* idem, method, path, content type, request id */
		(void)get_strp(&c, &len);
	h->error = get_strdup(&c, NULL);
	(void)get_strp(&c, &len); /* body */
	if (c.bad || c.p != c.end || !h->upstream) {
		sf_head_clear(h);
		return -1;
	}
	return 0;
}

static const char *jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static json_int_t jint(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static char *jdup(json_t *o, const char *k)
{
	return dw_strdup(jstr(o, k));
}

/* Fill r from a RECORD payload. Returns 0 or -1 when it is not one. */
static int record_from_json(json_t *o, uint64_t seq, struct spool_record *r)
{
	json_t *body;

	if (!json_is_object(o) || !jstr(o, "upstream"))
		return -1;
	memset(r, 0, sizeof(*r));
	r->seq = seq;
	r->state = (enum spool_state)jint(o, "state");
	r->route = jdup(o, "route");
	r->upstream = jdup(o, "upstream");
	r->key = jdup(o, "key");
	r->idem_key = jdup(o, "idem");
	r->method = jdup(o, "method");
	r->path = jdup(o, "path");
	r->content_type = jdup(o, "ct");
	if ((body = json_object_get(o, "body")) && json_is_string(body)) {
		r->body_len = json_string_length(body);
		r->body = dw_malloc(r->body_len + 1);
		memcpy(r->body, json_string_value(body), r->body_len);
		r->body[r->body_len] = '\0';
	} else if ((body = json_object_get(o, "body64")) && json_is_string(body)) {
		r->body = b64_decode(json_string_value(body), json_string_length(body),
				     &r->body_len);
		if (!r->body) {
			spool_record_clear(r);
			return -1;
		}
	}
	r->request_id = jdup(o, "rid");
	r->created_us = jint(o, "created");
	r->attempts = (uint32_t)jint(o, "attempts");
	r->last_status = (int)jint(o, "status");
	r->last_error = jdup(o, "error");
	r->updated_us = jint(o, "updated");
	return 0;
}

/* ---- reading frames ---- */

enum sf_check sf_check(const unsigned char *p, size_t avail, size_t *flen)
{
	uint32_t len, crc;

	if (avail < 4)
		return memcmp(p, "DWQ1", avail) == 0 ? SF_SHORT : SF_BAD;
	if (sf_get32(p) != SF_MAGIC)
		return SF_BAD;
	if (avail < SF_HDR_LEN)
		return SF_SHORT;
	len = sf_get32(p + 4);
	if (len > SF_MAX_PAYLOAD || p[12] < SF_RECORD_JSON || p[12] > SF_TYPE_MAX)
		return SF_BAD;
	if (avail < SF_HDR_LEN + (size_t)len)
		return SF_SHORT;
	crc = sf_crc32c(0xffffffffu, p + 12, 9);
	crc = sf_crc32c(crc, p + SF_HDR_LEN, len) ^ 0xffffffffu;
	if (crc != sf_get32(p + 8))
		return SF_BAD;
	*flen = SF_HDR_LEN + (size_t)len;
	return SF_OK;
}

void sf_put_rotate(struct sf_buf *b, uint64_t next_id)
{
	frame_seal(b, frame_open(b), SF_ROTATE, next_id);
}

static int head_from_json(const unsigned char *p, size_t n, struct sf_head *h)
{
	json_error_t jerr;
	json_t *o = json_loadb((const char *)p, n, JSON_ALLOW_NUL, &jerr);
	int r = -1;

	memset(h, 0, sizeof(*h));
	if (json_is_object(o) && jstr(o, "upstream")) {
		h->state = (int)jint(o, "state");
		h->attempts = (uint32_t)jint(o, "attempts");
		h->status = (int)jint(o, "status");
		h->created = jint(o, "created");
		h->updated = jint(o, "updated");
		h->upstream = jdup(o, "upstream");
		h->key = jdup(o, "key");
		h->error = jdup(o, "error");
		r = 0;
	}
	json_decref(o);
	return r;
}

int sf_decode_head(int type, const unsigned char *p, size_t n, struct sf_head *h)
{
	if (type == SF_RECORD || type == SF_MOVED)
		return head_from_bin(p, n, h);
	if (type == SF_RECORD_JSON)
		return head_from_json(p, n, h);
	memset(h, 0, sizeof(*h));
	return -1;
}

int sf_decode_state(int type, const unsigned char *p, size_t n, struct sf_state *s)
{
	memset(s, 0, sizeof(*s));
	if (type == SF_STATE) {
		struct cur c = {p, p + n, false};

		s->state = (int)get_u8(&c);
		s->attempts = get_u32(&c);
		s->status = (int)get_u32(&c);
		s->t = get_i64(&c);
		s->error = get_strdup(&c, NULL);
		if (c.bad || c.p != c.end) {
			free(s->error);
			memset(s, 0, sizeof(*s));
			return -1;
		}
		return 0;
	}
	if (type == SF_STATE_JSON) {
		json_error_t jerr;
		json_t *o = json_loadb((const char *)p, n, JSON_ALLOW_NUL, &jerr);
		int r = -1;

		if (json_is_object(o)) {
			s->state = (int)jint(o, "state");
			s->attempts = (uint32_t)jint(o, "attempts");
			s->status = (int)jint(o, "status");
			s->t = jint(o, "t");
			s->error = jdup(o, "error");
			r = 0;
		}
		json_decref(o);
		return r;
	}
	return -1;
}

int sf_decode_record(int type, const unsigned char *p, size_t n, uint64_t seq,
		     struct spool_record *r)
{
	memset(r, 0, sizeof(*r));
	if (type == SF_RECORD || type == SF_MOVED)
		return record_from_bin(p, n, seq, r);
	if (type == SF_RECORD_JSON) {
		json_error_t jerr;
		json_t *o = json_loadb((const char *)p, n, JSON_ALLOW_NUL, &jerr);
		int rc = o ? record_from_json(o, seq, r) : -1;

		json_decref(o);
		return rc;
	}
	return -1;
}
