/*
 * pinset — read-your-writes (SPEC §7.2): which (upstream, key) pairs have a
 * write that is not yet delivered to that new-system upstream.
 *
 * A counted set. Every acknowledged write adds one to each key it pins (its
 * ordering key and the keys of its route's `pins`) *before* the client gets
 * its answer, and gives them back once the write is delivered (or can never
 * be: lost, purged, damaged). A read whose key is in the set for its
 * route's upstream is served by the legacy (reason "pinned").
 *
 * A write that goes to the replay queue (queued, or dead-lettered: a dead
 * letter stays pinned until it is requeued and delivered, or purged) is
 * *parked* under its journal sequence number; pinset_sweep asks the queue
 * which parked writes became final (delivered by `dualwrite replay`, purged,
 * forwarded to the PostgreSQL queue) and gives their keys back.
 *
 * Blind writes: a write whose pins cannot be known — a write found waiting
 * in the queue at start-up (the queue does not store pins) on an upstream
 * whose routes declare pins, or a pin expression that does not evaluate and
 * starts with no literal text — pins *every* key of its upstream until it is
 * delivered (pinset_blind). A pin that does not evaluate but starts with
 * literal text ("user:${$response.user_id}" on a delete whose answer has no
 * body) pins every key that begins with that text ("user:", all the users'
 * lists) and no other (pinset_prefix_add): the item reads go on. The safe
 * side either way: the legacy serves, and a user never misses an
 * acknowledged write.
 *
 * Runtime state owned by the daemon's top level: it outlives reloads (it is
 * keyed by upstream name, not by a snapshot's index). Thread-safe: every
 * call may come from any thread. pinset_has costs one atomic load while no
 * write is pending, else one lock of one of PINSET_SHARDS shards and a hash
 * lookup.
 */
#ifndef DW_PINSET_H
#define DW_PINSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct pinset;

struct pinset *pinset_new(void);
void pinset_free(struct pinset *ps); /* NULL is a no-op */

/* One more (or one fewer) undelivered write of (upstream, key). A del of a
 * pair that is not in the set is ignored (a bug elsewhere: counted in
 * pinset_stats.underflows, never a negative count). */
void pinset_add(struct pinset *ps, const char *upstream, const char *key);
void pinset_del(struct pinset *ps, const char *upstream, const char *key);
/* One more (or one fewer) blind write of upstream. */
void pinset_blind_add(struct pinset *ps, const char *upstream, int delta);
/* One more (or one fewer) write that pins every key of upstream beginning
 * with prefix; "" (or NULL) is blind. Past PINSET_PREFIXES distinct
 * prefixes of one upstream a new prefix is blind (add and del alike). */
void pinset_prefix_add(struct pinset *ps, const char *upstream, const char *prefix, int delta);

/* Whether a read of (upstream, key) must wait for a write: the key has an
 * undelivered write, a prefix pin covers it, or the upstream has a blind
 * one. key NULL: only the blind and prefix checks (any prefix pin waits). */
bool pinset_has(struct pinset *ps, const char *upstream, const char *key);
/* Whether no write at all is pending (one atomic load): a caller can skip
 * working out a read's key. */
bool pinset_empty(const struct pinset *ps);
/* Whether upstream has a blind write. */
bool pinset_blind(struct pinset *ps, const char *upstream);

/*
 * Park a write that waits in the replay queue under its sequence number:
 * its keys (already added) stay pinned until pinset_sweep finds seq final.
 * keys[0..n) and prefixes[0..npre) (its prefix pins) are copied; blind says
 * it also holds a blind count.
 */
void pinset_park(struct pinset *ps, uint64_t seq, const char *upstream, const char *const *keys,
		 size_t n, const char *const *prefixes, size_t npre, bool blind);
/*
 * Ask final() which parked writes are final, in batches of ascending seqs
 * (final sets out[i] for seqs[i]); release those. Returns how many were
 * released. final is called without any pinset lock held.
 */
size_t pinset_sweep(struct pinset *ps,
		    void (*final)(void *arg, const uint64_t *seqs, size_t n, bool *out), void *arg);

struct pinset_stats {
	uint64_t keys;	     /* distinct (upstream, key) pairs pinned */
	uint64_t blind;	     /* blind writes */
	uint64_t prefixed;   /* prefix pins (one per pin that did not evaluate) */
	uint64_t parked;     /* writes parked (waiting in the queue) */
	uint64_t underflows; /* dels of pairs not in the set */
};
/* upstream NULL: the whole set. */
void pinset_stats(const struct pinset *ps, const char *upstream, struct pinset_stats *out);

#endif
