/*
 * spool.c — the file spool behind spool.h: an append-only log of frames in
 * segment files, folded into an in-memory index by every process using the
 * directory.
 *
 * Frame format (all integers little-endian), 21-byte header + payload:
 *
 *   u32 magic   "DWQ1"
 *   u32 length  payload bytes
 *   u32 crc     CRC-32C over type, seq and payload
 *   u8  type    4 RECORD, 5 STATE, 3 ROTATE (1 and 2: the JSON forms of
 *               RECORD and STATE written by 0.1.0, still read)
 *   u64 seq     the record a RECORD/STATE frame is about; for ROTATE the id
 *               of the segment that follows
 *   payload     RECORD: u8 state, u32 attempts, u32 status, i64 created,
 *               i64 updated, then ten strings, each u32 length (0xffffffff:
 *               absent) and bytes: route, upstream, key, idem, method, path,
 *               content type, request id, error, body
 *               STATE: u8 state, u32 attempts, u32 status, i64 t, string error
 *               ROTATE: empty
 *
 * The payloads are binary so that journaling a write costs no JSON encoding:
 * the mirror body is copied as it is.
 *
 * A writer builds each frame (or batch of frames) in memory and appends it
 * with one write() on an O_APPEND descriptor while holding flock(LOCK_EX) on
 * DIR/LOCK, after first folding what others appended since its last look, so
 * frames of different processes never interleave and seqs stay increasing.
 * Rotation appends a ROTATE frame naming the next segment *before* creating
 * it, so readers follow the chain without listing the directory.
 *
 * Damage is never fatal. A frame that does not check out is resynchronised
 * past by scanning for the next magic whose frame verifies; a short or bad
 * run at the very end of the last segment (a writer killed mid-write) is cut
 * off with ftruncate while holding the lock. Both are reported as warnings.
 *
 * Segment ids are never reused: a new segment's id is at least the next seq,
 * and the next seq never drops below the newest segment's id, so seqs stay
 * increasing even after every old segment has been deleted.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define FRAME_MAGIC 0x31515744u /* "DWQ1" read as little-endian u32 */
#define HDR_LEN 21
#define MAX_PAYLOAD (256u << 20)

enum frame_type { FT_RECORD_JSON = 1, FT_STATE_JSON = 2, FT_ROTATE = 3, FT_RECORD = 4, FT_STATE = 5 };
#define FT_MAX FT_STATE

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

static uint32_t crc32c_update(uint32_t crc, const void *p, size_t n)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (__builtin_cpu_supports("sse4.2"))
		return crc32c_hw(crc, p, n);
#endif
	return crc32c_soft(crc, p, n);
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = (v >> 24) & 0xff;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t get64(const unsigned char *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ---- growable byte buffer for building frames ---- */

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static void buf_reserve(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	b->p = dw_realloc(b->p, cap);
	b->cap = cap;
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

/* ---- the in-memory index ---- */

/*
 * One (upstream, key) pair with live records. refs counts the non-terminal
 * records that point here (DEAD included); queued and pending count those in
 * each waiting state, for spool_key_queued. Freed when refs drops to 0.
 */
struct keynode {
	uint64_t hash;
	uint32_t refs, queued, pending;
	uint64_t mark; /* spool_ready's visit generation */
	size_t len; /* of s: upstream '\0' key */
	char s[];
};

/*
 * Key nodes live as long as their key has records waiting - for a target
 * that is down, one per queued write, for as long as the outage lasts. Taken
 * from malloc one by one they interleave with the worker's short-lived
 * blocks and fragment its heap until every malloc stalls; so nodes up to
 * SLAB_MAX bytes come from 64 KiB blocks of their own, in 32-byte classes
 * with a free list each. When the last node is freed (the queue drained
 * after an outage), all blocks but one go back to malloc (one is kept, so a
 * quiet spool whose only key comes and goes does not malloc a block each time). Under ASan, free and
 * never-used slab memory is poisoned, so a stale node is still reported.
 */
#define SLAB_CLASS 32
#define SLAB_MAX 256
#define SLAB_BLOCK 65536
struct slab {
	void *free[SLAB_MAX / SLAB_CLASS];
	void **blocks;
	size_t nblocks;
	char *cur; /* bump region of the newest block */
	size_t left;
	size_t live; /* objects handed out from the blocks */
};

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif
#ifdef SLAB_ASAN
#include <sanitizer/asan_interface.h>
#define slab_poison(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define slab_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define slab_poison(p, n) ((void)(p), (void)(n))
#define slab_unpoison(p, n) ((void)(p), (void)(n))
#endif
/*
 * The key index is open-addressed (linear probing, at most half full) with
 * each slot holding the key's hash beside its node: while a target is down
 * every write adds a key and looks one up, and with a chained table each of
 * those walked a bucket pointer and then a node, two cache misses a lookup
 * once the backlog outgrew the cache (5% of an outage's append path at a
 * million keys, bench_spool -q). A miss now mostly reads one line of slots.
 * Deletion shifts the cluster back, so there are no tombstones.
 *
 * Growing moves the keys over a little at a time: rehashing a backlog's
 * table at once stalled the worker 13 ms at 262,144 keys and 53 ms at a
 * million, and a slow or hanging target reaches those within seconds. While
 * a move is on, old holds the keys not yet moved (every key is in exactly
 * one of the two tables), and each insert or release moves KEYMAP_STEP
 * slots' worth, so the move ends long before the new table is half full. A
 * table that empties returns to its first size.
 */
struct keyslot {
	uint64_t hash;
	struct keynode *k; /* NULL: empty */
};
struct keytab {
	struct keyslot *t;
	size_t cap; /* 0 or a power of two */
};
#define KEYMAP_MIN 1024
#define KEYMAP_STEP 16
struct keymap {
	struct keytab cur;
	struct keytab old; /* being moved into cur; cap 0: no move on */
	size_t mig;	   /* old's slots before this one are empty */
	size_t n;	   /* keys in both */
	struct slab slab;
};

/* One record as folded from the log. The record's fields beyond these are
 * read back from its frame on demand (spool_read). */
struct ent {
	uint64_t seq;
	uint64_t seg;	/* segment id holding the RECORD frame */
	uint64_t off;	/* frame offset in it */
	int64_t created_us, updated_us;
	struct keynode *kn; /* NULL when unkeyed or terminal */
	const char *last_error; /* interned (struct errs), NULL: none */
	uint32_t attempts;
	int last_status;
	uint8_t state;
};

struct seg {
	uint64_t id;
	uint64_t size; /* bytes known */
	uint64_t live; /* non-terminal records whose RECORD frame is here */
};

/*
 * Failure reasons, interned: a target that is down gives thousands of queued
 * records the same few reasons, and a copy per record kept the heap
 * fragmented with long-lived small blocks (malloc then stalled the worker
 * on every request).
 */
struct errstr {
	struct errstr *next;
	uint64_t hash;
	uint32_t refs;
	char s[];
};
struct errs {
	struct errstr **b;
	size_t nb, n;
};

struct spool {
	pthread_mutex_t mu;
	char *dir;
	struct spool_opts o;

	int lock_fd;	 /* DIR/LOCK, -1 when read-only and absent */
	int owner_fd;	 /* DIR/OWNER when we own it */
	int consumer_fd; /* DIR/REPLAY when we hold it */

	/* The segment being tailed (the newest one known); read and append fd. */
	int tail_fd;
	uint64_t tail_id;
	uint64_t tail_off;   /* bytes folded so far == our idea of its end */
	uint64_t tail_next;  /* ROTATE target seen in it, 0: none */
	bool dirty;	     /* written since the last spool_sync */
	uint64_t warned_off; /* read-only: torn tail already reported here (+1) */

	uint64_t *listed; /* segment ids found by the last directory listing */
	size_t nlisted;

	struct seg *segs; /* known segments, ascending id */
	size_t nsegs, capsegs;
	uint64_t total_bytes;

	struct ent *ents; /* ascending seq */
	size_t nents, capents, nterminal;
	struct keymap keys;
	struct errs errs;
	uint64_t npending, nqueued, ndead;
	uint64_t next_seq;
	uint64_t gen; /* spool_ready visit generation */

	struct dw_errlist warnings;

	int *spent_fds; /* reap_later: unlinked segments still open, for spool_reap */
	size_t nspent, capspent;
};

const char *spool_state_name(enum spool_state s)
{
	switch (s) {
	case SPOOL_PENDING:
		return "pending";
	case SPOOL_QUEUED:
		return "queued";
	case SPOOL_DELIVERED:
		return "delivered";
	case SPOOL_DEAD:
		return "dead";
	case SPOOL_PURGED:
		return "purged";
	case SPOOL_FORWARDED:
		return "forwarded";
	}
	return "unknown";
}

static bool state_valid(int s)
{
	return s >= SPOOL_PENDING && s <= SPOOL_FORWARDED;
}

static bool state_terminal(int s)
{
	return s == SPOOL_DELIVERED || s == SPOOL_PURGED || s == SPOOL_FORWARDED;
}

void spool_record_clear(struct spool_record *r)
{
	if (!r)
		return;
	free(r->route);
	free(r->upstream);
	free(r->key);
	free(r->idem_key);
	free(r->method);
	free(r->path);
	free(r->content_type);
	free(r->body);
	free(r->request_id);
	free(r->last_error);
	memset(r, 0, sizeof(*r));
}

/* Hash of upstream '\0' key (and of interned reasons): eight bytes a step,
 * then a finalizer that spreads every input bit over the low bits the
 * tables index with. In memory only; never written anywhere. */
static uint64_t key_hash(const char *s, size_t n)
{
	const uint64_t m = 0x9e3779b97f4a7c15ull;
	uint64_t h = (uint64_t)n * m, w;

	for (; n >= 8; s += 8, n -= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * m;
		h ^= h >> 32;
	}
	if (n) {
		w = 0;
		memcpy(&w, s, n);
		h = (h ^ w) * m;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

static struct keynode *tab_find(const struct keytab *t, const char *s, size_t n, uint64_t h)
{
	size_t mask = t->cap - 1;

	if (!t->cap)
		return NULL;
	for (size_t i = h & mask; t->t[i].k; i = (i + 1) & mask) {
		struct keynode *k = t->t[i].k;
		if (t->t[i].hash == h && k->len == n && memcmp(k->s, s, n) == 0)
			return k;
	}
	return NULL;
}

/* Put a slot's node in the first free slot of its probe sequence (it is
 * not in t yet); the slot's copy of the hash spares reading the node. */
static void tab_place(struct keytab *t, struct keyslot slot)
{
	size_t mask = t->cap - 1, i = slot.hash & mask;

	while (t->t[i].k)
		i = (i + 1) & mask;
	t->t[i] = slot;
}

/* The slot holding k in t, or SIZE_MAX when t does not have it. */
static size_t tab_slot_of(const struct keytab *t, const struct keynode *k)
{
	size_t mask = t->cap - 1;

	if (!t->cap)
		return SIZE_MAX;
	for (size_t i = k->hash & mask; t->t[i].k; i = (i + 1) & mask)
		if (t->t[i].k == k)
			return i;
	return SIZE_MAX;
}

/* Empty slot i, moving up each later member of its cluster that may sit
 * there (its home is not in the cyclic range (i, j]). */
static void tab_remove_at(struct keytab *t, size_t i)
{
	size_t mask = t->cap - 1;

	for (size_t j = (i + 1) & mask; t->t[j].k; j = (j + 1) & mask)
		if (((j - (t->t[j].hash & mask)) & mask) >= ((j - i) & mask)) {
			t->t[i] = t->t[j];
			i = j;
		}
	t->t[i].k = NULL;
}

static struct keynode *keymap_find(const struct keymap *m, const char *s, size_t n, uint64_t h)
{
	struct keynode *k = tab_find(&m->cur, s, n, h);

	return k ? k : tab_find(&m->old, s, n, h);
}

/*
 * Move up to KEYMAP_STEP of old's slots into cur. Taking each key out of old
 * by the same backward shift keeps old's slots before mig empty: a shift
 * only fills slots of the cluster at or after the emptied one, and no
 * cluster wraps into an empty slot 0. So the slot at mig is looked at again
 * until it is empty, and every key is moved once.
 */
static void keymap_migrate(struct keymap *m)
{
	for (int budget = KEYMAP_STEP; m->old.cap && budget > 0; budget--) {
		if (m->old.t[m->mig].k) {
			tab_place(&m->cur, m->old.t[m->mig]);
			tab_remove_at(&m->old, m->mig);
		} else if (++m->mig == m->old.cap) {
			free(m->old.t);
			memset(&m->old, 0, sizeof(m->old));
			m->mig = 0;
		}
	}
}

/* A fresh cur of cap slots; the keys in the one before move over later. */
static void keymap_grow(struct keymap *m, size_t cap)
{
	while (m->old.cap) /* the move before this one must be over */
		keymap_migrate(m);
	m->old = m->cur;
	m->mig = 0;
	m->cur.t = dw_calloc(cap, sizeof(*m->cur.t));
	m->cur.cap = cap;
}

static size_t slab_class(size_t size)
{
	return (size + SLAB_CLASS - 1) / SLAB_CLASS - 1;
}

static void *slab_alloc(struct slab *sl, size_t size)
{
	size_t c = slab_class(size), sz = (c + 1) * SLAB_CLASS;
	void *p;

	if (size > SLAB_MAX)
		return dw_calloc(1, size);
	if ((p = sl->free[c])) {
		slab_unpoison(p, sz);
		sl->free[c] = *(void **)p;
	} else {
		if (sl->left < sz) {
			sl->blocks = dw_realloc(sl->blocks, (sl->nblocks + 1) * sizeof(void *));
			sl->cur = dw_malloc(SLAB_BLOCK);
			slab_poison(sl->cur, SLAB_BLOCK);
			sl->blocks[sl->nblocks++] = sl->cur;
			sl->left = SLAB_BLOCK;
		}
		p = sl->cur;
		slab_unpoison(p, sz);
		sl->cur += sz;
		sl->left -= sz;
	}
	sl->live++;
	memset(p, 0, sz);
	return p;
}

/* Blocks from index first on back to malloc. */
static void slab_free_blocks(struct slab *sl, size_t first)
{
	for (size_t i = first; i < sl->nblocks; i++) {
		slab_unpoison(sl->blocks[i], SLAB_BLOCK);
		free(sl->blocks[i]);
	}
}

/* With nothing live: keep the first block, empty, and free the rest. */
static void slab_trim(struct slab *sl)
{
	slab_free_blocks(sl, 1);
	memset(sl->free, 0, sizeof(sl->free));
	if (sl->nblocks) {
		sl->nblocks = 1;
		sl->cur = sl->blocks[0];
		sl->left = SLAB_BLOCK;
		slab_poison(sl->cur, SLAB_BLOCK);
	}
}

/* Every block back to malloc; the slab is empty and usable again. */
static void slab_release(struct slab *sl)
{
	slab_free_blocks(sl, 0);
	free(sl->blocks);
	memset(sl, 0, sizeof(*sl));
}

static void slab_free(struct slab *sl, void *p, size_t size)
{
	size_t c = slab_class(size);

	if (size > SLAB_MAX) {
		free(p);
		return;
	}
	if (--sl->live == 0) { /* the last one: give the memory back */
		slab_trim(sl);
		return;
	}
	*(void **)p = sl->free[c];
	sl->free[c] = p;
	slab_poison(p, (c + 1) * SLAB_CLASS);
}

/* The index's key, "upstream\0key", with its hash: in buf when it fits,
 * else from malloc (key_done frees it). */
struct keystr {
	char buf[512];
	char *s;
	size_t n;
	uint64_t hash;
};

static void key_make(struct keystr *k, const char *upstream, const char *key)
{
	size_t ul = strlen(upstream), kl = strlen(key);

	k->n = ul + 1 + kl;
	k->s = k->n <= sizeof(k->buf) ? k->buf : dw_malloc(k->n);
	memcpy(k->s, upstream, ul);
	k->s[ul] = '\0';
	memcpy(k->s + ul + 1, key, kl);
	k->hash = key_hash(k->s, k->n);
}

static void key_done(struct keystr *k)
{
	if (k->s != k->buf)
		free(k->s);
}

/*
 * Start loading the slot that upstream/key hashes to. A batch's new records
 * are mostly new keys (ids the legacy just assigned), each a cache miss in a
 * backlog's table; prefetched before the batch is written, those misses
 * overlap with the write instead of following one another in the fold.
 */
static void keymap_prefetch(const struct keymap *m, const char *upstream, const char *key)
{
	struct keystr ks;

	if (!m->cur.cap)
		return;
	key_make(&ks, upstream, key);
	__builtin_prefetch(&m->cur.t[ks.hash & (m->cur.cap - 1)], 1);
	key_done(&ks);
}

static struct keynode *keymap_get(struct keymap *m, const char *upstream, const char *key)
{
	struct keystr ks;
	struct keynode *k;

	key_make(&ks, upstream, key);
	k = keymap_find(m, ks.s, ks.n, ks.hash);
	if (!k) {
		keymap_migrate(m);
		if ((m->n + 1) * 2 > m->cur.cap)
			keymap_grow(m, m->cur.cap ? m->cur.cap * 2 : KEYMAP_MIN);
		k = slab_alloc(&m->slab, sizeof(*k) + ks.n);
		k->hash = ks.hash;
		k->len = ks.n;
		memcpy(k->s, ks.s, ks.n);
		tab_place(&m->cur, (struct keyslot){ .hash = ks.hash, .k = k });
		m->n++;
	}
	key_done(&ks);
	return k;
}

/* Both tables go (not the nodes); the index is empty and usable again. */
static void keymap_drop_tables(struct keymap *m)
{
	free(m->cur.t);
	free(m->old.t);
	memset(&m->cur, 0, sizeof(m->cur));
	memset(&m->old, 0, sizeof(m->old));
	m->mig = 0;
}

static void keymap_free(struct keymap *m)
{
	const struct keytab *tabs[2] = { &m->cur, &m->old };

	for (int t = 0; t < 2; t++)
		for (size_t i = 0; i < tabs[t]->cap; i++) {
			struct keynode *k = tabs[t]->t[i].k;
			if (k && sizeof(*k) + k->len > SLAB_MAX)
				free(k);
		}
	slab_release(&m->slab);
	keymap_drop_tables(m);
	m->n = 0;
}

/* Drop a reference; the last one takes k out of the index and frees it. */
static void keymap_release(struct keymap *m, struct keynode *k)
{
	size_t i;

	if (--k->refs)
		return;
	if ((i = tab_slot_of(&m->cur, k)) != SIZE_MAX)
		tab_remove_at(&m->cur, i);
	else
		tab_remove_at(&m->old, tab_slot_of(&m->old, k));
	slab_free(&m->slab, k, sizeof(*k) + k->len);
	if (--m->n == 0 && m->cur.cap > KEYMAP_MIN) { /* an outage drained */
		keymap_drop_tables(m);
	} else {
		keymap_migrate(m);
	}
}

static const char *err_get(struct errs *m, const char *s)
{
	size_t len;
	uint64_t h;
	struct errstr *x;

	if (!s)
		return NULL;
	len = strlen(s);
	h = key_hash(s, len);
	if (m->nb && (x = m->b[h & (m->nb - 1)]))
		for (; x; x = x->next)
			if (x->hash == h && strcmp(x->s, s) == 0) {
				x->refs++;
				return x->s;
			}
	if (m->n >= m->nb) { /* grow: power of two, rehash */
		size_t nb = m->nb ? m->nb * 2 : 64;
		struct errstr **b = dw_calloc(nb, sizeof(struct errstr *));
		for (size_t i = 0; i < m->nb; i++)
			while ((x = m->b[i])) {
				m->b[i] = x->next;
				x->next = b[x->hash & (nb - 1)];
				b[x->hash & (nb - 1)] = x;
			}
		free(m->b);
		m->b = b;
		m->nb = nb;
	}
	x = dw_malloc(sizeof(*x) + len + 1);
	x->hash = h;
	x->refs = 1;
	memcpy(x->s, s, len + 1);
	x->next = m->b[h & (m->nb - 1)];
	m->b[h & (m->nb - 1)] = x;
	m->n++;
	return x->s;
}

static void err_put(struct errs *m, const char *s)
{
	struct errstr *x, **pp;

	if (!s)
		return;
	x = (struct errstr *)(uintptr_t)(s - offsetof(struct errstr, s));
	if (--x->refs)
		return;
	for (pp = &m->b[x->hash & (m->nb - 1)]; *pp != x; pp = &(*pp)->next)
		;
	*pp = x->next;
	m->n--;
	free(x);
}

static void errs_free(struct errs *m)
{
	struct errstr *x;

	for (size_t i = 0; i < m->nb; i++)
		while ((x = m->b[i])) {
			m->b[i] = x->next;
			free(x);
		}
	free(m->b);
}

static struct ent *ent_find(struct spool *sp, uint64_t seq)
{
	size_t lo = 0, hi = sp->nents;

	/*
	 * Most lookups are of a record just appended, and the newest entries
	 * usually have consecutive seqs: guess from the end. Seqs ascend
	 * strictly, so the entry d places before the last has a seq of at most
	 * last - d, and the one looked for is never before the guess.
	 */
	if (hi && seq <= sp->ents[hi - 1].seq && sp->ents[hi - 1].seq - seq < hi) {
		lo = hi - 1 - (size_t)(sp->ents[hi - 1].seq - seq);
		if (sp->ents[lo].seq == seq)
			return &sp->ents[lo];
	}

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sp->ents[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < sp->nents && sp->ents[lo].seq == seq ? &sp->ents[lo] : NULL;
}

static struct seg *seg_find(struct spool *sp, uint64_t id)
{
	for (size_t i = sp->nsegs; i-- > 0;)
		if (sp->segs[i].id == id)
			return &sp->segs[i];
	return NULL;
}

static struct seg *seg_add(struct spool *sp, uint64_t id)
{
	struct seg *s = seg_find(sp, id);

	if (s)
		return s;
	if (sp->nsegs == sp->capsegs) {
		sp->capsegs = sp->capsegs ? sp->capsegs * 2 : 8;
		sp->segs = dw_realloc(sp->segs, sp->capsegs * sizeof(*sp->segs));
	}
	s = &sp->segs[sp->nsegs++];
	memset(s, 0, sizeof(*s));
	s->id = id;
	return s;
}

static void count_state(struct spool *sp, struct ent *e, int dir)
{
	uint64_t d = (uint64_t)(int64_t)dir;

	switch (e->state) {
	case SPOOL_PENDING:
		sp->npending += d;
		if (e->kn)
			e->kn->pending += (uint32_t)d;
		break;
	case SPOOL_QUEUED:
		sp->nqueued += d;
		if (e->kn)
			e->kn->queued += (uint32_t)d;
		break;
	case SPOOL_DEAD:
		sp->ndead += d;
		break;
	default:
		break;
	}
}

/* The one place a record's state changes in the index. Terminal states are
 * final: a later frame cannot revive a delivered or purged record. */
static void ent_set_state(struct spool *sp, struct ent *e, int st)
{
	if (state_terminal(e->state) || !state_valid(st))
		return;
	count_state(sp, e, -1);
	e->state = (uint8_t)st;
	if (state_terminal(st)) {
		struct seg *s = seg_find(sp, e->seg);
		if (s && s->live)
			s->live--;
		if (e->kn)
			keymap_release(&sp->keys, e->kn);
		e->kn = NULL;
		sp->nterminal++;
	} else {
		count_state(sp, e, +1);
	}
}

/* Drop terminal entries once they are the majority: keeps memory bounded by
 * the live records while the daemon mirrors forever. */
static void ents_compact(struct spool *sp)
{
	size_t j = 0;

	if (sp->nterminal < 1024 || sp->nterminal * 2 < sp->nents)
		return;
	for (size_t i = 0; i < sp->nents; i++) {
		if (state_terminal(sp->ents[i].state)) {
			err_put(&sp->errs, sp->ents[i].last_error);
			continue;
		}
		sp->ents[j++] = sp->ents[i];
	}
	sp->nents = j;
	sp->nterminal = 0;
}

static void fold_record(struct spool *sp, uint64_t seq, uint64_t seg, uint64_t off, int st,
			const char *upstream, const char *key, int64_t created, int64_t updated,
			uint32_t attempts, int status, const char *error)
{
	struct ent *e;

	if (!state_valid(st))
		st = SPOOL_QUEUED;
	if (sp->nents && sp->ents[sp->nents - 1].seq >= seq) {
		dw_errlist_add(&sp->warnings,
			       "queue: seg-%016" PRIx64 ".log: record %" PRIu64
			       " at offset %" PRIu64 " out of order, ignored",
			       seg, seq, off);
		return;
	}
	if (sp->nents == sp->capents) {
		sp->capents = sp->capents ? sp->capents * 2 : 1024;
		sp->ents = dw_realloc(sp->ents, sp->capents * sizeof(*sp->ents));
	}
	e = &sp->ents[sp->nents++];
	memset(e, 0, sizeof(*e));
	e->seq = seq;
	e->seg = seg;
	e->off = off;
	e->created_us = created;
	e->updated_us = updated;
	e->attempts = attempts;
	e->last_status = status;
	e->last_error = err_get(&sp->errs, error);
	e->state = (uint8_t)st;
	if (seq >= sp->next_seq)
		sp->next_seq = seq + 1;
	if (state_terminal(st)) {
		sp->nterminal++;
		return;
	}
	struct seg *s = seg_add(sp, seg);
	s->live++;
	if (key && upstream) {
		e->kn = keymap_get(&sp->keys, upstream, key);
		e->kn->refs++;
	}
	count_state(sp, e, +1);
}

static void fold_state(struct spool *sp, uint64_t seq, int st, uint32_t attempts, int status,
		       const char *error, int64_t t)
{
	struct ent *e = ent_find(sp, seq);

	if (seq >= sp->next_seq)
		sp->next_seq = seq + 1;
	if (!e || state_terminal(e->state))
		return;
	e->attempts = attempts;
	e->last_status = status;
	err_put(&sp->errs, e->last_error);
	e->last_error = err_get(&sp->errs, error);
	e->updated_us = t;
	ent_set_state(sp, e, st);
}

/* ---- payloads ---- */

/* ---- binary payloads ---- */

#define STR_ABSENT 0xffffffffu

static void put_str(struct buf *b, const char *s, size_t n)
{
	buf_reserve(b, 4 + (s ? n : 0));
	put32(b->p + b->len, s ? (uint32_t)n : STR_ABSENT);
	b->len += 4;
	if (s && n) {
		memcpy(b->p + b->len, s, n);
		b->len += n;
	}
}

static void put_cstr(struct buf *b, const char *s)
{
	put_str(b, s, s ? strlen(s) : 0);
}

static void put_u8(struct buf *b, unsigned v)
{
	buf_reserve(b, 1);
	b->p[b->len++] = (unsigned char)v;
}

static void put_u32(struct buf *b, uint32_t v)
{
	buf_reserve(b, 4);
	put32(b->p + b->len, v);
	b->len += 4;
}

static void put_i64(struct buf *b, int64_t v)
{
	buf_reserve(b, 8);
	put64(b->p + b->len, (uint64_t)v);
	b->len += 8;
}

/* The frame's payload is built in place: header room first, then
 * buf_seal() fills the header in. */
static size_t frame_open(struct buf *b)
{
	size_t at = b->len;

	buf_reserve(b, HDR_LEN);
	b->len += HDR_LEN;
	return at;
}

static void frame_seal(struct buf *b, size_t at, enum frame_type type, uint64_t seq)
{
	unsigned char *h = b->p + at;
	size_t plen = b->len - at - HDR_LEN;
	uint32_t crc;

	put32(h, FRAME_MAGIC);
	put32(h + 4, (uint32_t)plen);
	h[12] = (unsigned char)type;
	put64(h + 13, seq);
	crc = crc32c_update(0xffffffffu, h + 12, 9);
	crc = crc32c_update(crc, h + HDR_LEN, plen) ^ 0xffffffffu;
	put32(h + 8, crc);
}

static void frame_record(struct buf *b, const struct spool_record *r)
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
	frame_seal(b, at, FT_RECORD, r->seq);
}

static void frame_state(struct buf *b, uint64_t seq, int st, uint32_t attempts, int status,
			const char *error, int64_t t)
{
	size_t at = frame_open(b);

	put_u8(b, (unsigned)st);
	put_u32(b, attempts);
	put_u32(b, (uint32_t)status);
	put_i64(b, t);
	put_cstr(b, error);
	frame_seal(b, at, FT_STATE, seq);
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
		v = get32(c->p);
		c->p += 4;
	}
	return v;
}

static int64_t get_i64(struct cur *c)
{
	uint64_t v = 0;

	if (cur_need(c, 8)) {
		v = get64(c->p);
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

/* The fields of a binary RECORD payload that the index needs, NUL-terminated
 * copies in the caller's scratch (freed by rec_head_clear). */
struct rec_head {
	int state;
	uint32_t attempts;
	int status;
	int64_t created, updated;
	char *upstream, *key, *error;
};

static void rec_head_clear(struct rec_head *h)
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

static int rec_head_from_bin(const unsigned char *p, size_t n, struct rec_head *h)
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
		rec_head_clear(h);
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

enum frame_check { FC_OK, FC_SHORT, FC_BAD };

static enum frame_check frame_check(const unsigned char *p, size_t avail, size_t *flen)
{
	uint32_t len, crc;

	if (avail < 4)
		return memcmp(p, "DWQ1", avail) == 0 ? FC_SHORT : FC_BAD;
	if (get32(p) != FRAME_MAGIC)
		return FC_BAD;
	if (avail < HDR_LEN)
		return FC_SHORT;
	len = get32(p + 4);
	if (len > MAX_PAYLOAD || p[12] < FT_RECORD_JSON || p[12] > FT_MAX)
		return FC_BAD;
	if (avail < HDR_LEN + (size_t)len)
		return FC_SHORT;
	crc = crc32c_update(0xffffffffu, p + 12, 9);
	crc = crc32c_update(crc, p + HDR_LEN, len) ^ 0xffffffffu;
	if (crc != get32(p + 8))
		return FC_BAD;
	*flen = HDR_LEN + (size_t)len;
	return FC_OK;
}

static void warn_payload(struct spool *sp, uint64_t seg, uint64_t off)
{
	dw_errlist_add(&sp->warnings,
		       "queue: seg-%016" PRIx64 ".log: unreadable frame payload at offset %" PRIu64
		       " skipped",
		       seg, off);
}

/* A JSON frame of 0.1.0. */
static void fold_json_frame(struct spool *sp, int type, uint64_t seq, const unsigned char *p,
			    size_t plen, uint64_t seg, uint64_t off)
{
	json_error_t jerr;
	json_t *o = json_loadb((const char *)p, plen, JSON_ALLOW_NUL, &jerr);

	if (!json_is_object(o)) {
		warn_payload(sp, seg, off);
		goto out;
	}
	if (type == FT_RECORD_JSON) {
		if (!jstr(o, "upstream")) {
			dw_errlist_add(&sp->warnings,
				       "queue: seg-%016" PRIx64 ".log: record at offset %" PRIu64
				       " has no upstream, skipped",
				       seg, off);
			goto out;
		}
		fold_record(sp, seq, seg, off, (int)jint(o, "state"), jstr(o, "upstream"),
			    jstr(o, "key"), jint(o, "created"), jint(o, "updated"),
			    (uint32_t)jint(o, "attempts"), (int)jint(o, "status"), jstr(o, "error"));
	} else {
		fold_state(sp, seq, (int)jint(o, "state"), (uint32_t)jint(o, "attempts"),
			   (int)jint(o, "status"), jstr(o, "error"), jint(o, "t"));
	}
out:
	json_decref(o);
}

/* Fold one verified frame found at off of segment seg. */
static void fold_frame(struct spool *sp, const unsigned char *p, size_t flen, uint64_t seg,
		       uint64_t off)
{
	int type = p[12];
	uint64_t seq = get64(p + 13);
	const unsigned char *pl = p + HDR_LEN;
	size_t plen = flen - HDR_LEN;

	if (type == FT_ROTATE) {
		sp->tail_next = seq;
	} else if (type == FT_RECORD) {
		struct rec_head h;
		if (rec_head_from_bin(pl, plen, &h) < 0) {
			warn_payload(sp, seg, off);
			return;
		}
		fold_record(sp, seq, seg, off, h.state, h.upstream, h.key, h.created, h.updated,
			    h.attempts, h.status, h.error);
		rec_head_clear(&h);
	} else if (type == FT_STATE) {
		struct cur c = {pl, pl + plen, false};
		int st = (int)get_u8(&c);
		uint32_t attempts = get_u32(&c);
		int status = (int)get_u32(&c);
		int64_t t = get_i64(&c);
		char *error = get_strdup(&c, NULL);

		if (c.bad || c.p != c.end)
			warn_payload(sp, seg, off);
		else
			fold_state(sp, seq, st, attempts, status, error, t);
		free(error);
	} else {
		fold_json_frame(sp, type, seq, pl, plen, seg, off);
	}
}

static char *seg_path(const struct spool *sp, uint64_t id)
{
	char *s;

	if (asprintf(&s, "%s/seg-%016" PRIx64 ".log", sp->dir, id) < 0)
		abort();
	return s;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* List seg-*.log ids into sp->listed, ascending. */
static int list_segments(struct spool *sp, struct dw_err *err)
{
	DIR *d = opendir(sp->dir);
	struct dirent *de;
	size_t cap = 0;

	if (!d) {
		dw_err_set(err, "queue %s: %s", sp->dir, strerror(errno));
		return -1;
	}
	sp->nlisted = 0;
	while ((de = readdir(d))) {
		char *end;
		uint64_t id;
		if (strncmp(de->d_name, "seg-", 4) != 0 || strlen(de->d_name) != 24 ||
		    strcmp(de->d_name + 20, ".log") != 0)
			continue;
		errno = 0;
		id = strtoull(de->d_name + 4, &end, 16);
		if (errno || end != de->d_name + 20 || id == 0)
			continue;
		if (sp->nlisted == cap) {
			cap = cap ? cap * 2 : 16;
			sp->listed = dw_realloc(sp->listed, cap * sizeof(*sp->listed));
		}
		sp->listed[sp->nlisted++] = id;
	}
	closedir(d);
	if (sp->nlisted)
		qsort(sp->listed, sp->nlisted, sizeof(*sp->listed), cmp_u64);
	return 0;
}

static uint64_t listed_after(const struct spool *sp, uint64_t id)
{
	for (size_t i = 0; i < sp->nlisted; i++)
		if (sp->listed[i] > id)
			return sp->listed[i];
	return 0;
}

static int open_seg(struct spool *sp, uint64_t id, bool create)
{
	char *path = seg_path(sp, id);
	int flags = sp->o.readonly ? O_RDONLY : O_RDWR | O_APPEND;
	int fd;

	if (create)
		flags |= O_CREAT | O_EXCL;
	fd = open(path, flags | O_CLOEXEC, 0640);
	free(path);
	return fd;
}

static void fsync_dir(struct spool *sp)
{
	int fd = open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
}

/* Make segment id the tail (its frames are folded from offset 0). */
static void set_tail(struct spool *sp, int fd, uint64_t id)
{
	if (sp->tail_fd >= 0)
		close(sp->tail_fd);
	sp->tail_fd = fd;
	sp->tail_id = id;
	sp->tail_off = 0;
	sp->tail_next = 0;
	sp->warned_off = 0;
	seg_add(sp, id);
	if (id > sp->next_seq)
		sp->next_seq = id;
}

/*
 * Every record of a segment that vanished under us (another process deleted
 * it) was terminal when it was deleted, so drop what we still index from it
 * and from anything older.
 */
static void forget_before(struct spool *sp, uint64_t id)
{
	size_t j = 0;

	for (size_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		if (e->seg < id) {
			if (!state_terminal(e->state)) {
				count_state(sp, e, -1);
				if (e->kn)
					keymap_release(&sp->keys, e->kn);
			} else {
				sp->nterminal--;
			}
			err_put(&sp->errs, e->last_error);
			continue;
		}
		sp->ents[j++] = *e;
	}
	sp->nents = j;
	j = 0;
	for (size_t i = 0; i < sp->nsegs; i++) {
		if (sp->segs[i].id < id) {
			sp->total_bytes -= sp->segs[i].size;
			continue;
		}
		sp->segs[j++] = sp->segs[i];
	}
	sp->nsegs = j;
}

/* Read the whole file range [off, end) into a new buffer. */
static unsigned char *read_range(int fd, uint64_t off, size_t n, struct dw_err *err)
{
	unsigned char *b = dw_malloc(n ? n : 1);
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, b + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			dw_err_set(err, "read: %s", r < 0 ? strerror(errno) : "unexpected end of file");
			free(b);
			return NULL;
		}
		got += (size_t)r;
	}
	return b;
}

/*
 * Fold everything appended to the tail since tail_off, following ROTATE
 * frames into later segments. can_fix: we hold LOCK exclusively and may cut a
 * torn tail and create a segment a crashed rotation announced.
 */
static int refresh_locked(struct spool *sp, bool can_fix, struct dw_err *err)
{
	for (;;) {
		struct stat st;
		uint64_t next;

		if (sp->tail_fd < 0)
			return 0;
		if (fstat(sp->tail_fd, &st) < 0) {
			dw_err_set(err, "queue %s: fstat: %s", sp->dir, strerror(errno));
			return -1;
		}
		if ((uint64_t)st.st_size > sp->tail_off) {
			size_t n = (size_t)((uint64_t)st.st_size - sp->tail_off), pos = 0;
			unsigned char *b = read_range(sp->tail_fd, sp->tail_off, n, err);
			if (!b) {
				dw_err_prefix(err, "queue %s: seg-%016" PRIx64 ".log", sp->dir,
					      sp->tail_id);
				return -1;
			}
			while (pos < n) {
				size_t flen = 0, q;
				enum frame_check fc = frame_check(b + pos, n - pos, &flen);
				if (fc == FC_OK) {
					fold_frame(sp, b + pos, flen, sp->tail_id, sp->tail_off + pos);
					pos += flen;
					continue;
				}
				/* Resync: the next magic whose frame verifies. */
				for (q = pos + 1; q < n; q++)
					if (b[q] == 'D' && frame_check(b + q, n - q, &flen) == FC_OK)
						break;
				if (q < n) {
					dw_errlist_add(&sp->warnings,
						       "queue: seg-%016" PRIx64
						       ".log: corrupt data of %zu bytes at offset %" PRIu64
						       " skipped",
						       sp->tail_id, q - pos, sp->tail_off + pos);
					pos = q;
					continue;
				}
				/* Nothing valid follows: a tail that never completed. */
				bool last = !sp->tail_next && !listed_after(sp, sp->tail_id);
				if (!last) {
					dw_errlist_add(&sp->warnings,
						       "queue: seg-%016" PRIx64
						       ".log: corrupt data of %zu bytes at offset %" PRIu64
						       " skipped",
						       sp->tail_id, n - pos, sp->tail_off + pos);
					pos = n;
				} else if (can_fix) {
					if (ftruncate(sp->tail_fd, (off_t)(sp->tail_off + pos)) < 0) {
						dw_err_set(err,
							   "queue %s: seg-%016" PRIx64
							   ".log: cutting torn tail: %s",
							   sp->dir, sp->tail_id, strerror(errno));
						free(b);
						return -1;
					}
					dw_errlist_add(&sp->warnings,
						       "queue: seg-%016" PRIx64
						       ".log: torn tail of %zu bytes at offset %" PRIu64
						       " cut off",
						       sp->tail_id, n - pos, sp->tail_off + pos);
				} else {
					if (sp->warned_off != sp->tail_off + pos + 1)
						dw_errlist_add(&sp->warnings,
							       "queue: seg-%016" PRIx64
							       ".log: torn tail of %zu bytes at offset %"
							       PRIu64 " (left alone: read-only)",
							       sp->tail_id, n - pos, sp->tail_off + pos);
					sp->warned_off = sp->tail_off + pos + 1;
				}
				break;
			}
			free(b);
			sp->tail_off += pos;
			sp->total_bytes += pos;
			seg_find(sp, sp->tail_id)->size = sp->tail_off;
		}
		next = sp->tail_next ? sp->tail_next : listed_after(sp, sp->tail_id);
		if (!next)
			return 0;
		int fd = open_seg(sp, next, false);
		if (fd < 0 && errno == ENOENT) {
			/* Deleted by another process, or announced by a rotation that
			 * crashed before creating it. */
			if (list_segments(sp, err) < 0)
				return -1;
			uint64_t after = listed_after(sp, sp->tail_id);
			if (after) {
				forget_before(sp, after);
				next = after;
				fd = open_seg(sp, next, false);
			} else if (can_fix) {
				fd = open_seg(sp, next, true);
				if (fd >= 0 && sp->o.fsync)
					fsync_dir(sp);
			} else {
				return 0;
			}
		}
		if (fd < 0) {
			dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: %s", sp->dir, next,
				   strerror(errno));
			return -1;
		}
		set_tail(sp, fd, next);
	}
}

/* ---- locking and writing ---- */

static int flock_retry(int fd, int op)
{
	int r;

	while ((r = flock(fd, op)) < 0 && errno == EINTR)
		;
	return r;
}

/* Exclusive for writers (they may cut a torn tail), shared for read-only
 * handles when a LOCK file exists (so they never see half a frame). */
static int lock_log(struct spool *sp, struct dw_err *err)
{
	if (sp->lock_fd < 0)
		return 0;
	if (flock_retry(sp->lock_fd, sp->o.readonly ? LOCK_SH : LOCK_EX) < 0) {
		dw_err_set(err, "queue %s: LOCK: %s", sp->dir, strerror(errno));
		return -1;
	}
	return 0;
}

static void unlock_log(struct spool *sp)
{
	if (sp->lock_fd >= 0)
		(void)flock(sp->lock_fd, LOCK_UN);
}

/* Append bytes to the tail with one write (looping only on a short write,
 * which cannot interleave with anyone since we hold LOCK). A failed write is
 * rolled back so no partial frame stays in the middle of the log. */
static int write_tail(struct spool *sp, const unsigned char *p, size_t n, struct dw_err *err)
{
	size_t done = 0;

	while (done < n) {
		ssize_t w = write(sp->tail_fd, p + done, n - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			int e = w < 0 ? errno : ENOSPC;
			if (done)
				(void)ftruncate(sp->tail_fd, (off_t)sp->tail_off);
			dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: write: %s", sp->dir,
				   sp->tail_id, strerror(e));
			return -1;
		}
		done += (size_t)w;
	}
	sp->tail_off += n;
	sp->total_bytes += n;
	seg_find(sp, sp->tail_id)->size = sp->tail_off;
	sp->dirty = true;
	return 0;
}

static int create_tail(struct spool *sp, uint64_t id, struct dw_err *err)
{
	int fd = open_seg(sp, id, false);

	if (fd < 0) {
		fd = open_seg(sp, id, true);
		if (fd < 0) {
			dw_err_set(err, "queue %s: creating seg-%016" PRIx64 ".log: %s", sp->dir, id,
				   strerror(errno));
			return -1;
		}
		if (sp->o.fsync)
			fsync_dir(sp);
	}
	set_tail(sp, fd, id);
	return 0;
}

/* Make sure there is a tail with room: rotate when it reached segment_bytes.
 * The ROTATE frame goes first, so a crash between the two steps leaves a
 * chain that the next writer completes. */
static int prepare_tail(struct spool *sp, struct dw_err *err)
{
	struct buf b = {0};
	uint64_t id;

	if (sp->tail_fd < 0)
		return create_tail(sp, sp->next_seq ? sp->next_seq : 1, err);
	if (sp->tail_off < sp->o.segment_bytes)
		return 0;
	id = sp->next_seq > sp->tail_id ? sp->next_seq : sp->tail_id + 1;
	frame_seal(&b, frame_open(&b), FT_ROTATE, id);
	int r = write_tail(sp, b.p, b.len, err);
	free(b.p);
	if (r < 0)
		return -1;
	if (sp->o.fsync && fdatasync(sp->tail_fd) < 0) {
		dw_err_set(err, "queue %s: fdatasync: %s", sp->dir, strerror(errno));
		return -1;
	}
	sp->dirty = false;
	return create_tail(sp, id, err);
}

/*
 * Delete head segments whose records are all terminal. Only from the oldest,
 * and never a segment with a live record: a STATE frame in a later segment
 * may be what resolves a record of an earlier one, so the earlier segment
 * must stay until that resolution has been written; and a reader replaying
 * the log from the start must never meet a STATE frame whose RECORD vanished
 * while that record was still live.
 */
static void collect_segments(struct spool *sp)
{
	size_t k = 0;

	while (k + 1 < sp->nsegs && sp->segs[k].live == 0 && sp->segs[k].id != sp->tail_id) {
		char *path = seg_path(sp, sp->segs[k].id);
		/* Held open, the unlink only drops the name; the last close
		 * frees the file (spool_reap). */
		int fd = sp->o.reap_later ? open(path, O_RDONLY | O_CLOEXEC) : -1;
		if (fd >= 0) {
			if (sp->nspent == sp->capspent) {
				sp->capspent = sp->capspent ? sp->capspent * 2 : 8;
				sp->spent_fds = dw_realloc(sp->spent_fds,
							   sp->capspent * sizeof(*sp->spent_fds));
			}
			sp->spent_fds[sp->nspent++] = fd;
		}
		if (unlink(path) < 0 && errno != ENOENT) {
			dw_errlist_add(&sp->warnings, "queue: %s: unlink: %s", path,
				       strerror(errno));
			free(path);
			break;
		}
		free(path);
		sp->total_bytes -= sp->segs[k].size;
		k++;
	}
	if (k) {
		memmove(sp->segs, sp->segs + k, (sp->nsegs - k) * sizeof(*sp->segs));
		sp->nsegs -= k;
	}
}

static bool owner_alive_locked(struct spool *sp)
{
	char path[PATH_MAX];
	int fd;
	bool alive = false;

	if (sp->owner_fd >= 0)
		return true;
	snprintf(path, sizeof(path), "%s/OWNER", sp->dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (flock(fd, LOCK_SH | LOCK_NB) < 0)
		alive = errno == EWOULDBLOCK;
	close(fd);
	return alive;
}

/* ---- the API ---- */

static int take_owner(struct spool *sp, struct dw_err *err)
{
	char path[PATH_MAX], pid[32];
	int n;

	snprintf(path, sizeof(path), "%s/OWNER", sp->dir);
	sp->owner_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (sp->owner_fd < 0) {
		dw_err_set(err, "queue %s: OWNER: %s", sp->dir, strerror(errno));
		return -1;
	}
	if (flock(sp->owner_fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		ssize_t r = pread(sp->owner_fd, pid, sizeof(pid) - 1, 0);
		pid[r > 0 ? r : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		if (e == EWOULDBLOCK)
			dw_err_set(err, "queue %s is in use by another dualwrited (pid %s)", sp->dir,
				   pid[0] ? pid : "?");
		else
			dw_err_set(err, "queue %s: OWNER: %s", sp->dir, strerror(e));
		close(sp->owner_fd);
		sp->owner_fd = -1;
		return -1;
	}
	n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(sp->owner_fd, 0) < 0 || pwrite(sp->owner_fd, pid, (size_t)n, 0) != n) {
		dw_err_set(err, "queue %s: OWNER: %s", sp->dir, strerror(errno));
		return -1;
	}
	return 0;
}

/* The previous owner died with these in flight: they now wait for replay. */
static int recover_pending(struct spool *sp, struct dw_err *err)
{
	struct buf b = {0};
	int64_t now = dw_wall_us();
	int r = 0;

	for (size_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		if (e->state != SPOOL_PENDING)
			continue;
		frame_state(&b, e->seq, SPOOL_QUEUED, e->attempts, e->last_status, e->last_error,
			    now);
	}
	if (b.len) {
		r = write_tail(sp, b.p, b.len, err);
		if (r == 0)
			for (size_t i = 0; i < sp->nents; i++)
				if (sp->ents[i].state == SPOOL_PENDING) {
					sp->ents[i].updated_us = now;
					ent_set_state(sp, &sp->ents[i], SPOOL_QUEUED);
				}
	}
	free(b.p);
	return r;
}

static int mkdir_p(const char *dir)
{
	char *p = dw_strdup(dir);
	int r = 0;

	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0750) < 0 && errno != EEXIST) {
			r = -1;
			break;
		}
		*s = '/';
	}
	if (r == 0 && mkdir(p, 0750) < 0 && errno != EEXIST)
		r = -1;
	free(p);
	return r;
}

struct spool *spool_open(const char *dir, const struct spool_opts *opts, struct dw_err *err)
{
	struct spool *sp = dw_calloc(1, sizeof(*sp));
	char path[PATH_MAX];
	struct stat st;
	bool locked = false;

	pthread_mutex_init(&sp->mu, NULL);
	sp->dir = dw_strdup(dir);
	if (opts)
		sp->o = *opts;
	if (!sp->o.max_bytes)
		sp->o.max_bytes = 1ull << 30;
	if (!sp->o.segment_bytes)
		sp->o.segment_bytes = 64ull << 20;
	sp->lock_fd = sp->owner_fd = sp->consumer_fd = sp->tail_fd = -1;
	sp->next_seq = 1;

	if (sp->o.readonly && sp->o.owner) {
		dw_err_set(err, "queue %s: a read-only handle cannot own the queue", dir);
		goto fail;
	}
	if (!sp->o.readonly && mkdir_p(dir) < 0) {
		dw_err_set(err, "queue %s: %s", dir, strerror(errno));
		goto fail;
	}
	if (stat(dir, &st) < 0) {
		dw_err_set(err, "queue %s: %s", dir, strerror(errno));
		goto fail;
	}
	if (!S_ISDIR(st.st_mode)) {
		dw_err_set(err, "queue %s: not a directory", dir);
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/LOCK", dir);
	sp->lock_fd = open(path, sp->o.readonly ? O_RDONLY | O_CLOEXEC
					       : O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (sp->lock_fd < 0 && !(sp->o.readonly && errno == ENOENT)) {
		dw_err_set(err, "queue %s: LOCK: %s", dir, strerror(errno));
		goto fail;
	}
	if (sp->o.owner && take_owner(sp, err) < 0)
		goto fail;
	if (lock_log(sp, err) < 0)
		goto fail;
	locked = true;
	if (list_segments(sp, err) < 0)
		goto fail;
	if (sp->nlisted) {
		int fd = open_seg(sp, sp->listed[0], false);
		if (fd < 0) {
			dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: %s", dir, sp->listed[0],
				   strerror(errno));
			goto fail;
		}
		set_tail(sp, fd, sp->listed[0]);
	} else if (!sp->o.readonly && create_tail(sp, 1, err) < 0) {
		goto fail;
	}
	if (refresh_locked(sp, !sp->o.readonly, err) < 0)
		goto fail;
	if (sp->o.owner && recover_pending(sp, err) < 0)
		goto fail;
	unlock_log(sp);
	return sp;
fail:
	if (locked)
		unlock_log(sp);
	spool_close(sp);
	return NULL;
}

void spool_reap(struct spool *sp)
{
	int *fds;
	size_t n;

	pthread_mutex_lock(&sp->mu);
	fds = sp->spent_fds;
	n = sp->nspent;
	sp->spent_fds = NULL;
	sp->nspent = sp->capspent = 0;
	pthread_mutex_unlock(&sp->mu);
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
}

void spool_close(struct spool *sp)
{
	if (!sp)
		return;
	spool_reap(sp);
	if (sp->tail_fd >= 0) {
		if (sp->dirty && sp->o.fsync)
			(void)fdatasync(sp->tail_fd);
		close(sp->tail_fd);
	}
	if (sp->lock_fd >= 0)
		close(sp->lock_fd);
	if (sp->owner_fd >= 0)
		close(sp->owner_fd);
	if (sp->consumer_fd >= 0)
		close(sp->consumer_fd);
	for (size_t i = 0; i < sp->nents; i++)
		err_put(&sp->errs, sp->ents[i].last_error);
	errs_free(&sp->errs);
	free(sp->ents);
	free(sp->segs);
	free(sp->listed);
	keymap_free(&sp->keys);
	dw_errlist_free(&sp->warnings);
	pthread_mutex_destroy(&sp->mu);
	free(sp->dir);
	free(sp);
}

void spool_take_warnings(struct spool *sp, struct dw_errlist *out)
{
	pthread_mutex_lock(&sp->mu);
	for (size_t i = 0; i < sp->warnings.n; i++)
		dw_errlist_add(out, "%s", sp->warnings.msgs[i]);
	dw_errlist_free(&sp->warnings);
	pthread_mutex_unlock(&sp->mu);
}

static int readonly_err(struct spool *sp, struct dw_err *err)
{
	dw_err_set(err, "queue %s: opened read-only", sp->dir);
	return -1;
}

/* One lock, one write: the state changes chg (skipping, and reporting in
 * err, those of records gone or final), then the records recs. Returns how
 * many records went in; *nstates how many changes. */
static size_t batch_write(struct spool *sp, struct spool_record *recs, size_t n,
			  const struct spool_change *chg, size_t nchg, size_t *nstates,
			  struct dw_err *err)
{
	struct buf b = {0};
	size_t k = 0, *ends, states = 0, start;
	uint64_t off;
	int64_t now = dw_wall_us();

	*nstates = 0;
	if (sp->o.readonly) {
		(void)readonly_err(sp, err);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (!recs[i].upstream ||
		    (recs[i].state != SPOOL_PENDING && recs[i].state != SPOOL_QUEUED)) {
			dw_err_set(err, "queue %s: append: a record needs an upstream and state "
					"pending or queued", sp->dir);
			n = i; /* the ones before it still go in, in order */
			break;
		}
	if (n == 0 && nchg == 0)
		return 0;
	ends = dw_malloc((n ? n : 1) * sizeof(*ends));
	pthread_mutex_lock(&sp->mu);
	if (lock_log(sp, err) < 0)
		goto out_mu;
	if (refresh_locked(sp, true, err) < 0 || prepare_tail(sp, err) < 0)
		goto out;
	/* Outcomes first (never refused for space), then the new records. */
	for (size_t i = 0; i < nchg; i++) {
		struct ent *e = ent_find(sp, chg[i].seq);

		if (!state_valid(chg[i].st) || !e || state_terminal(e->state)) {
			dw_err_set(err, "queue %s: record %" PRIu64 " %s", sp->dir, chg[i].seq,
				   !e ? "is gone" : "is already final or the state is invalid");
			continue;
		}
		frame_state(&b, chg[i].seq, chg[i].st, chg[i].attempts, chg[i].status,
			    chg[i].error, now);
		states++;
	}
	start = b.len;
	for (k = 0; k < n; k++) {
		recs[k].seq = sp->next_seq + k;
		frame_record(&b, &recs[k]);
		/* Only new records count against max_bytes: state frames must
		 * always be writable, or a full queue could never record its own
		 * draining. */
		if (sp->total_bytes + (b.len - start) > sp->o.max_bytes) {
			dw_err_set(err, "queue full (%" PRIu64 " bytes, max %" PRIu64 ")",
				   sp->total_bytes, sp->o.max_bytes);
			b.len = k ? ends[k - 1] : start;
			break;
		}
		ends[k] = b.len;
	}
	for (size_t i = 0; i < k; i++)
		if (recs[i].key)
			keymap_prefetch(&sp->keys, recs[i].upstream, recs[i].key);
	off = sp->tail_off;
	if (b.len && write_tail(sp, b.p, b.len, err) < 0) {
		k = 0;
		states = 0;
	}
	for (size_t i = 0; states && i < nchg; i++) {
		struct ent *e = ent_find(sp, chg[i].seq);

		if (state_valid(chg[i].st) && e && !state_terminal(e->state))
			fold_state(sp, chg[i].seq, chg[i].st, chg[i].attempts, chg[i].status,
				   chg[i].error, now);
	}
	for (size_t i = 0; i < k; i++)
		fold_record(sp, recs[i].seq, sp->tail_id, off + (i ? ends[i - 1] : start),
			    recs[i].state, recs[i].upstream, recs[i].key, recs[i].created_us,
			    recs[i].updated_us, recs[i].attempts, recs[i].last_status,
			    recs[i].last_error);
	if (states) {
		collect_segments(sp);
		ents_compact(sp);
	}
out:
	unlock_log(sp);
out_mu:
	pthread_mutex_unlock(&sp->mu);
	free(ends);
	free(b.p);
	*nstates = states;
	return k;
}

size_t spool_append_batch(struct spool *sp, struct spool_record *recs, size_t n,
			  const struct spool_change *chg, size_t nchg, struct dw_err *err)
{
	size_t nstates;

	return batch_write(sp, recs, n, chg, nchg, &nstates, err);
}

int spool_append(struct spool *sp, struct spool_record *rec, struct dw_err *err)
{
	return spool_append_batch(sp, rec, 1, NULL, 0, err) == 1 ? 0 : -1;
}

int spool_set_states(struct spool *sp, const struct spool_change *v, size_t n,
		     struct dw_err *err)
{
	struct dw_err why = {""};
	size_t written;

	if (n == 0)
		return 0;
	(void)batch_write(sp, NULL, 0, v, n, &written, &why);
	if (why.msg[0])
		*err = why;
	return written || !why.msg[0] ? 0 : -1;
}

int spool_set_state(struct spool *sp, uint64_t seq, enum spool_state st, uint32_t attempts,
		    int status, const char *error, struct dw_err *err)
{
	struct buf b = {0};
	struct ent *e;
	int64_t now = dw_wall_us();
	int r = -1;

	if (sp->o.readonly)
		return readonly_err(sp, err);
	if (!state_valid(st)) {
		dw_err_set(err, "queue %s: invalid state %d", sp->dir, (int)st);
		return -1;
	}
	pthread_mutex_lock(&sp->mu);
	if (lock_log(sp, err) < 0)
		goto out_mu;
	if (refresh_locked(sp, true, err) < 0)
		goto out;
	e = ent_find(sp, seq);
	if (!e) {
		dw_err_set(err, "queue %s: no record %" PRIu64, sp->dir, seq);
		goto out;
	}
	if (state_terminal(e->state)) {
		dw_err_set(err, "queue %s: record %" PRIu64 " is already %s", sp->dir, seq,
			   spool_state_name(e->state));
		goto out;
	}
	if (prepare_tail(sp, err) < 0)
		goto out;
	frame_state(&b, seq, st, attempts, status, error, now);
	if (write_tail(sp, b.p, b.len, err) < 0)
		goto out;
	fold_state(sp, seq, st, attempts, status, error, now);
	collect_segments(sp);
	ents_compact(sp);
	r = 0;
out:
	unlock_log(sp);
out_mu:
	pthread_mutex_unlock(&sp->mu);
	free(b.p);
	return r;
}

int spool_sync(struct spool *sp, struct dw_err *err)
{
	int r = 0;

	pthread_mutex_lock(&sp->mu);
	if (sp->o.fsync && sp->dirty && sp->tail_fd >= 0) {
		if (fdatasync(sp->tail_fd) < 0) {
			dw_err_set(err, "queue %s: fdatasync: %s", sp->dir, strerror(errno));
			r = -1;
		} else {
			sp->dirty = false;
		}
	}
	pthread_mutex_unlock(&sp->mu);
	return r;
}

int spool_refresh(struct spool *sp, struct dw_err *err)
{
	int r = -1;

	pthread_mutex_lock(&sp->mu);
	if (sp->o.readonly && sp->lock_fd < 0) {
		/* A read-only look at a directory nobody has written yet. */
		char path[PATH_MAX];
		snprintf(path, sizeof(path), "%s/LOCK", sp->dir);
		sp->lock_fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (sp->tail_fd < 0 && sp->o.readonly) {
		if (list_segments(sp, err) < 0)
			goto out_mu;
		if (sp->nlisted) {
			int fd = open_seg(sp, sp->listed[0], false);
			if (fd >= 0)
				set_tail(sp, fd, sp->listed[0]);
		}
	}
	if (lock_log(sp, err) < 0)
		goto out_mu;
	r = refresh_locked(sp, !sp->o.readonly, err);
	if (r == 0 && !sp->o.readonly) {
		collect_segments(sp);
		ents_compact(sp);
	}
	unlock_log(sp);
out_mu:
	pthread_mutex_unlock(&sp->mu);
	return r;
}

bool spool_key_queued(struct spool *sp, const char *upstream, const char *key)
{
	struct keystr ks;
	bool r = false;

	if (!upstream || !key)
		return false;
	key_make(&ks, upstream, key);
	pthread_mutex_lock(&sp->mu);
	struct keynode *k = keymap_find(&sp->keys, ks.s, ks.n, ks.hash);
	if (k)
		r = k->queued > 0 || (k->pending > 0 && !owner_alive_locked(sp));
	pthread_mutex_unlock(&sp->mu);
	key_done(&ks);
	return r;
}

int spool_read(struct spool *sp, uint64_t seq, struct spool_record *out, struct dw_err *err)
{
	unsigned char hdr[HDR_LEN], *frame = NULL;
	struct ent *e;
	int fd = -1, r = -1;
	size_t flen;
	json_t *o = NULL;
	json_error_t jerr;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&sp->mu);
	e = ent_find(sp, seq);
	if (!e) {
		dw_err_set(err, "queue %s: no record %" PRIu64, sp->dir, seq);
		goto out;
	}
	fd = e->seg == sp->tail_id ? sp->tail_fd : open_seg(sp, e->seg, false);
	if (fd < 0) {
		dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: %s", sp->dir, e->seg,
			   strerror(errno));
		goto out;
	}
	if (pread(fd, hdr, HDR_LEN, (off_t)e->off) != HDR_LEN) {
		dw_err_set(err, "queue %s: record %" PRIu64 ": short read", sp->dir, seq);
		goto out;
	}
	flen = HDR_LEN + (size_t)(get32(hdr + 4) > MAX_PAYLOAD ? 0 : get32(hdr + 4));
	frame = read_range(fd, e->off, flen, err);
	if (!frame) {
		dw_err_prefix(err, "queue %s: record %" PRIu64, sp->dir, seq);
		goto out;
	}
	if (frame_check(frame, flen, &flen) != FC_OK ||
	    (frame[12] != FT_RECORD && frame[12] != FT_RECORD_JSON) || get64(frame + 13) != seq) {
		dw_err_set(err, "queue %s: record %" PRIu64 ": frame no longer checks out", sp->dir,
			   seq);
		goto out;
	}
	if (frame[12] == FT_RECORD ? record_from_bin(frame + HDR_LEN, flen - HDR_LEN, seq, out) < 0
				   : (!(o = json_loadb((const char *)frame + HDR_LEN, flen - HDR_LEN,
						       JSON_ALLOW_NUL, &jerr)) ||
				      record_from_json(o, seq, out) < 0)) {
		dw_err_set(err, "queue %s: record %" PRIu64 ": bad payload", sp->dir, seq);
		goto out;
	}
	out->state = (enum spool_state)e->state;
	out->attempts = e->attempts;
	out->last_status = e->last_status;
	free(out->last_error);
	out->last_error = dw_strdup(e->last_error);
	out->updated_us = e->updated_us;
	r = 0;
out:
	if (e && fd >= 0 && fd != sp->tail_fd)
		close(fd);
	pthread_mutex_unlock(&sp->mu);
	json_decref(o);
	free(frame);
	return r;
}

size_t spool_list(struct spool *sp, enum spool_state st, uint64_t *seqs, size_t max)
{
	size_t n = 0;

	pthread_mutex_lock(&sp->mu);
	for (size_t i = 0; i < sp->nents; i++) {
		const struct ent *e = &sp->ents[i];
		if (st ? e->state != st : state_terminal(e->state))
			continue;
		if (n < max)
			seqs[n] = e->seq;
		n++;
	}
	pthread_mutex_unlock(&sp->mu);
	return n;
}

size_t spool_ready(struct spool *sp, uint64_t *seqs, size_t max)
{
	size_t n = 0;
	bool owned;

	pthread_mutex_lock(&sp->mu);
	owned = owner_alive_locked(sp);
	sp->gen++;
	/*
	 * Per key, only the oldest waiting record may go, and a PENDING one
	 * held by a live daemon blocks its key. DEAD records do not block: a
	 * dead-lettered write leaves the ordering chain until it is requeued
	 * (an operator's decision), otherwise one bad write would stall its key
	 * forever.
	 */
	for (size_t i = 0; i < sp->nents && n < max; i++) {
		struct ent *e = &sp->ents[i];
		bool go;
		if (e->state == SPOOL_QUEUED)
			go = true;
		else if (e->state == SPOOL_PENDING)
			go = !owned;
		else
			continue;
		if (e->kn) {
			if (e->kn->mark == sp->gen)
				continue;
			e->kn->mark = sp->gen;
		}
		if (go)
			seqs[n++] = e->seq;
	}
	pthread_mutex_unlock(&sp->mu);
	return n;
}

int spool_lock_consumer(struct spool *sp, bool wait, struct dw_err *err)
{
	char path[PATH_MAX];
	int r = -1;

	pthread_mutex_lock(&sp->mu);
	if (sp->consumer_fd >= 0) {
		r = 0;
		goto out;
	}
	if (sp->o.readonly) {
		dw_err_set(err, "queue %s: opened read-only, cannot consume", sp->dir);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/REPLAY", sp->dir);
	sp->consumer_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (sp->consumer_fd < 0) {
		dw_err_set(err, "queue %s: REPLAY: %s", sp->dir, strerror(errno));
		goto out;
	}
	if (flock_retry(sp->consumer_fd, wait ? LOCK_EX : LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			dw_err_set(err, "another replay is running on %s", sp->dir);
		else
			dw_err_set(err, "queue %s: REPLAY: %s", sp->dir, strerror(errno));
		close(sp->consumer_fd);
		sp->consumer_fd = -1;
		goto out;
	}
	r = 0;
out:
	pthread_mutex_unlock(&sp->mu);
	return r;
}

bool spool_owner_alive(struct spool *sp)
{
	bool r;

	pthread_mutex_lock(&sp->mu);
	r = owner_alive_locked(sp);
	pthread_mutex_unlock(&sp->mu);
	return r;
}

void spool_stats(struct spool *sp, struct spool_stats *out)
{
	struct dw_err err;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&sp->mu);
	out->pending = sp->npending;
	out->queued = sp->nqueued;
	out->dead = sp->ndead;
	out->next_seq = sp->next_seq;
	if (list_segments(sp, &err) == 0) {
		for (size_t i = 0; i < sp->nlisted; i++) {
			char *path = seg_path(sp, sp->listed[i]);
			struct stat st;
			if (stat(path, &st) == 0) {
				out->bytes += (uint64_t)st.st_size;
				out->segments++;
			}
			free(path);
		}
	}
	for (size_t i = 0; i < sp->nents; i++)
		if (sp->ents[i].state == SPOOL_PENDING || sp->ents[i].state == SPOOL_QUEUED) {
			out->oldest_waiting_us = sp->ents[i].created_us;
			break;
		}
	pthread_mutex_unlock(&sp->mu);
}
