/*
 * spool_index — the replay queue's in-memory indexes that outlive a single
 * record: the key index (which (upstream, key) pairs have records waiting,
 * and how many in each state) and the interned failure reasons. Memory
 * only; nothing here is written to disk. Not thread-safe: the spool's mutex
 * serialises every call.
 *
 * Ownership: a struct keynode belongs to its keymap; callers hold counted
 * references (refs) and give them back with keymap_release, which frees the
 * node with the last one. An interned reason belongs to its struct errs;
 * errs_get takes a reference, errs_put gives it back.
 */
#ifndef DW_SPOOL_INDEX_H
#define DW_SPOOL_INDEX_H

#include <stddef.h>
#include <stdint.h>

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

/* The index's key, "upstream\0key", with its hash: in buf when it fits,
 * else from malloc (keystr_done frees it). */
struct keystr {
	char buf[512];
	char *s;
	size_t n;
	uint64_t hash;
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

/* Hash of a byte string: in memory only, never written anywhere. */
uint64_t key_hash(const char *s, size_t n);

/* "upstream\0key" with its hash, in k->buf when short (keystr_done frees). */
void keystr_make(struct keystr *k, const char *upstream, const char *key);
void keystr_done(struct keystr *k);

/* The node of s[0..n) with hash h, NULL when none. */
struct keynode *keymap_find(const struct keymap *m, const char *s, size_t n, uint64_t h);
/* The node of upstream/key, created (refs 0) when new. */
struct keynode *keymap_get(struct keymap *m, const char *upstream, const char *key);
/* Drop a reference; the last one takes k out and frees it. */
void keymap_release(struct keymap *m, struct keynode *k);
/* Start loading the slot of upstream/key into the cache. */
void keymap_prefetch(const struct keymap *m, const char *upstream, const char *key);
/* Every node and table goes; the map is empty and usable again. */
void keymap_free(struct keymap *m);

/* The interned copy of s (a new reference), NULL for NULL. */
const char *errs_get(struct errs *m, const char *s);
/* Give back a reference taken by errs_get (NULL: no-op). */
void errs_put(struct errs *m, const char *s);
void errs_free(struct errs *m);

#endif
