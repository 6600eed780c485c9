/*
 * spool.c — the file spool behind spool.h: an append-only log of frames in
 * segment files, folded into an in-memory index by every process using the
 * directory.
 *
 * The frame format and the directory layout are in lib/SPOOL-FORMAT.md
 * (frames are built and decoded by spool_frame.c). Format changes: type 6,
 * MOVED (compaction's copy of a live record, same seq), since the change
 * that made dead letters stop pinning the queue; older spools are read as
 * they are.
 *
 * A writer builds each frame (or batch of frames) in memory and appends it
 * with one write() on an O_APPEND descriptor while holding flock(LOCK_EX) on
 * DIR/LOCK, after first folding what others appended since its last look, so
 * frames of different processes never interleave and seqs stay increasing.
 * Rotation appends a ROTATE frame naming the next segment *before* creating
 * it, so readers follow the chain without listing the directory.
 *
 * Damage is never fatal and never silent. A frame that does not check out is
 * resynchronised past by scanning for the next magic whose frame verifies
 * (reported with the record and key its header still names); a short or bad
 * run at the very end of the last segment (a writer killed mid-write) is cut
 * off with ftruncate while holding the lock. A cut that lands on a frame
 * boundary is caught by the high-water mark (DIR/MARK, rewritten after each
 * append): the missing seqs are reported. spool_refresh also checks that the
 * directory, the tail and every segment holding live records are still the
 * ones opened; the live records of one that went are named (with their keys),
 * dropped from the index and counted (spool_stats.damaged), and a removed
 * directory or tail is made again so new writes are journaled.
 *
 * Space is reclaimed by what waits, not by position: spent head segments are
 * deleted, and a head that is mostly spent has its few live records copied
 * forward as MOVED frames first (compact_head), so a dead letter does not
 * pin every later segment. max_bytes counts the frames of live records.
 *
 * Segment ids are never reused: a new segment's id is at least the next seq,
 * and the next seq never drops below the newest segment's id, so seqs stay
 * increasing even after every old segment has been deleted.
 */
#include "spool.h"
#include "spool_files.h"
#include "spool_frame.h"
#include "spool_index.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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
	uint32_t len;	/* bytes of that frame: what the record holds on disk */
	uint8_t state;
	uint16_t up;	/* its upstream: 1 + index into spool.ups; 0: not counted */
};

/*
 * One upstream the index has met: its waiting records counted as they change
 * state (count_state), so /status asks per-upstream depth without a scan.
 * hint: no PENDING or QUEUED record of it has a lower seq, so the search
 * for its oldest one starts there (and only moves forward, except when an
 * older record waits again: a requeue, a late record).
 */
struct upq {
	char *name;
	uint64_t pending, queued, dead;
	uint64_t hint;
};
#define UPQ_MAX 65535 /* more distinct upstreams are not counted apart */

struct seg {
	uint64_t id;
	uint64_t size;	     /* bytes known */
	uint64_t live;	     /* non-terminal records whose RECORD (or MOVED) frame is here */
	uint64_t live_bytes; /* the bytes of those frames */
	uint64_t intents;    /* open intents whose INTENT frame is here: they pin it too */
};

/* An open (or, closed, not yet compacted away) intent: where its frame is. */
struct ient {
	uint64_t id, seg, off;
	uint32_t len;
	bool closed;
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
	/* Records first met in a MOVED frame with a seq below the newest one
	 * indexed (a reader that starts after compaction deleted their first
	 * segment): kept here, ascending, and merged into ents at the end of
	 * the refresh that found them, so the fold stays linear. */
	struct ent *late;
	size_t nlate, caplate;
	uint64_t waiting_bytes; /* frames of non-terminal records: what max_bytes bounds */
	uint64_t damaged;	/* records found lost to damage (spool_stats) */
	uint64_t last_rec_seq;	/* the newest RECORD frame's seq folded */
	dev_t dir_dev;		/* the directory we opened: a removed or */
	ino_t dir_ino;		/* replaced one is damage (check_identity) */
	int mark_fd;		/* DIR/MARK, the high-water mark; -1: none */
	bool mark_dirty;	/* appended since the mark was last written */
	bool mark_force;	/* write it at the next unlock, however recent */
	int64_t mark_us;	/* when it was last written (dw_now_us) */
	bool torn_cut;		/* a torn tail was cut while opening */
	bool dir_lost;		/* the directory went; not made again yet */
	struct keymap keys;
	struct errs errs;
	uint64_t npending, nqueued, ndead;
	struct upq *ups; /* the upstreams met, in the order met */
	size_t nups;
	uint64_t next_seq;
	uint64_t gen; /* spool_ready visit generation */
	struct ient *ients; /* ascending id */
	size_t nients, capients, nclosed;
	uint64_t next_intent; /* atomic: spool_intent_id */

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

static struct ent *ents_search(struct ent *v, size_t n, uint64_t seq)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && v[lo].seq == seq ? &v[lo] : NULL;
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

	struct ent *e = ents_search(sp->ents + lo, hi - lo, seq);

	return e || !sp->nlate ? e : ents_search(sp->late, sp->nlate, seq);
}

/* Merge the late entries into ents (both ascending; no seq in both). */
static void ents_merge_late(struct spool *sp)
{
	size_t n = sp->nents + sp->nlate, i = sp->nents, j = sp->nlate, k = n;

	if (!sp->nlate)
		return;
	if (n > sp->capents) {
		sp->capents = n;
		sp->ents = dw_realloc(sp->ents, sp->capents * sizeof(*sp->ents));
	}
	while (j > 0) { /* from the back, in place */
		if (i > 0 && sp->ents[i - 1].seq > sp->late[j - 1].seq)
			sp->ents[--k] = sp->ents[--i];
		else
			sp->ents[--k] = sp->late[--j];
	}
	sp->nents = n;
	sp->nlate = 0;
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

/* ---- intents (SF_INTENT / SF_CLOSE): ids ascend through the log ---- */

static void ient_add(struct spool *sp, uint64_t id, uint64_t seg, uint64_t off, uint32_t len)
{
	struct seg *s = seg_find(sp, seg);
	size_t at = sp->nients;

	if (sp->nients == sp->capients) {
		sp->capients = sp->capients ? sp->capients * 2 : 16;
		sp->ients = dw_realloc(sp->ients, sp->capients * sizeof(*sp->ients));
	}
	while (at > 0 && sp->ients[at - 1].id > id) /* never, unless the log was edited */
		at--;
	memmove(sp->ients + at + 1, sp->ients + at, (sp->nients - at) * sizeof(*sp->ients));
	sp->ients[at] = (struct ient){id, seg, off, len, false};
	sp->nients++;
	if (s) /* (unknown only if the log was damaged under us: nothing to pin) */
		s->intents++;
	if (id >= __atomic_load_n(&sp->next_intent, __ATOMIC_RELAXED))
		__atomic_store_n(&sp->next_intent, id, __ATOMIC_RELAXED);
}

static void ient_close(struct spool *sp, uint64_t id)
{
	size_t lo = 0, hi = sp->nients;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sp->ients[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* the first of that id still open (an id is used once; be lenient) */
	for (; lo < sp->nients && sp->ients[lo].id == id; lo++) {
		struct ient *ie = &sp->ients[lo];
		struct seg *s;

		if (ie->closed)
			continue;
		ie->closed = true;
		sp->nclosed++;
		if ((s = seg_find(sp, ie->seg)) && s->intents)
			s->intents--;
		break;
	}
	if (sp->nclosed > 32 && sp->nclosed * 2 > sp->nients) {
		size_t k = 0;
		for (size_t i = 0; i < sp->nients; i++)
			if (!sp->ients[i].closed)
				sp->ients[k++] = sp->ients[i];
		sp->nients = k;
		sp->nclosed = 0;
	}
}

/* The spool.ups slot of upstream (1-based; 0 for none or too many),
 * added when new. Few upstreams, and a run of records mostly has one. */
static uint16_t up_slot(struct spool *sp, const char *upstream)
{
	if (!upstream)
		return 0;
	for (size_t i = sp->nups; i-- > 0;)
		if (strcmp(sp->ups[i].name, upstream) == 0)
			return (uint16_t)(i + 1);
	if (sp->nups == UPQ_MAX)
		return 0;
	sp->ups = dw_realloc(sp->ups, (sp->nups + 1) * sizeof(*sp->ups));
	sp->ups[sp->nups] = (struct upq){ .name = dw_strdup(upstream) };
	return (uint16_t)++sp->nups;
}

static void count_state(struct spool *sp, struct ent *e, int dir)
{
	uint64_t d = (uint64_t)(int64_t)dir;
	struct upq *u = e->up ? &sp->ups[e->up - 1] : NULL;

	switch (e->state) {
	case SPOOL_PENDING:
		sp->npending += d;
		if (e->kn)
			e->kn->pending += (uint32_t)d;
		if (u) {
			u->pending += d;
			if (dir > 0 && e->seq < u->hint)
				u->hint = e->seq;
		}
		break;
	case SPOOL_QUEUED:
		sp->nqueued += d;
		if (e->kn)
			e->kn->queued += (uint32_t)d;
		if (u) {
			u->queued += d;
			if (dir > 0 && e->seq < u->hint)
				u->hint = e->seq;
		}
		break;
	case SPOOL_DEAD:
		sp->ndead += d;
		if (u)
			u->dead += d;
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
		if (s && s->live) {
			s->live--;
			s->live_bytes -= e->len;
		}
		sp->waiting_bytes -= e->len;
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
			errs_put(&sp->errs, sp->ents[i].last_error);
			continue;
		}
		sp->ents[j++] = sp->ents[i];
	}
	sp->nents = j;
	sp->nterminal = 0;
}

/* A new entry for seq: appended to ents when it is the newest, else kept
 * in late until the refresh ends. */
static struct ent *ent_new(struct spool *sp, uint64_t seq)
{
	struct ent *e;

	if (!sp->nents || sp->ents[sp->nents - 1].seq < seq) {
		if (sp->nents == sp->capents) {
			sp->capents = sp->capents ? sp->capents * 2 : 1024;
			sp->ents = dw_realloc(sp->ents, sp->capents * sizeof(*sp->ents));
		}
		e = &sp->ents[sp->nents++];
	} else {
		size_t at = sp->nlate;
		if (sp->nlate == sp->caplate) {
			sp->caplate = sp->caplate ? sp->caplate * 2 : 64;
			sp->late = dw_realloc(sp->late, sp->caplate * sizeof(*sp->late));
		}
		while (at > 0 && sp->late[at - 1].seq > seq)
			at--;
		memmove(sp->late + at + 1, sp->late + at, (sp->nlate - at) * sizeof(*sp->late));
		sp->nlate++;
		e = &sp->late[at];
	}
	memset(e, 0, sizeof(*e));
	e->seq = seq;
	return e;
}

/* Where a record's frame is: counts its bytes as the segment's (and as
 * waiting) while it is not terminal. */
static void ent_place(struct spool *sp, struct ent *e, uint64_t seg, uint64_t off, uint32_t len)
{
	if (!state_terminal(e->state)) {
		struct seg *old = e->len ? seg_find(sp, e->seg) : NULL;
		if (old && old->live) {
			old->live--;
			old->live_bytes -= e->len;
		}
		sp->waiting_bytes -= e->len;
		struct seg *s = seg_add(sp, seg);
		s->live++;
		s->live_bytes += len;
		sp->waiting_bytes += len;
	}
	e->seg = seg;
	e->off = off;
	e->len = len;
}

/*
 * A RECORD frame (moved false) or a MOVED frame (moved true) of seq at off
 * (len bytes) of segment seg, with the record's state and attempt fields.
 * A MOVED frame of a record already indexed only moves it (and brings its
 * state up to the copy's); one of a record not indexed (its first segment
 * was deleted before this reader got to it) indexes it.
 */
static void fold_record(struct spool *sp, bool moved, uint64_t seq, uint64_t seg, uint64_t off,
			uint32_t len, const struct sf_head *h)
{
	struct ent *e;
	int st = state_valid(h->state) ? h->state : SPOOL_QUEUED;

	if (seq >= sp->next_seq)
		sp->next_seq = seq + 1;
	if (moved && (e = ent_find(sp, seq))) {
		if (state_terminal(e->state))
			return; /* stale: never revive a final record */
		ent_place(sp, e, seg, off, len);
		e->attempts = h->attempts;
		e->last_status = h->status;
		errs_put(&sp->errs, e->last_error);
		e->last_error = errs_get(&sp->errs, h->error);
		e->updated_us = h->updated;
		ent_set_state(sp, e, st);
		return;
	}
	if (!moved && sp->nents && sp->ents[sp->nents - 1].seq >= seq) {
		dw_errlist_add(&sp->warnings,
			       "queue: seg-%016" PRIx64 ".log: record %" PRIu64
			       " at offset %" PRIu64 " out of order, ignored",
			       seg, seq, off);
		return;
	}
	if (moved && state_terminal(st))
		return;
	if (!moved && seq > sp->last_rec_seq)
		sp->last_rec_seq = seq;
	e = ent_new(sp, seq);
	e->created_us = h->created;
	e->updated_us = h->updated;
	e->attempts = h->attempts;
	e->last_status = h->status;
	e->last_error = errs_get(&sp->errs, h->error);
	e->state = (uint8_t)st;
	ent_place(sp, e, seg, off, len);
	if (state_terminal(st)) {
		sp->nterminal++;
		return;
	}
	if (h->key && h->upstream) {
		e->kn = keymap_get(&sp->keys, h->upstream, h->key);
		e->kn->refs++;
	}
	e->up = up_slot(sp, h->upstream);
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
	errs_put(&sp->errs, e->last_error);
	e->last_error = errs_get(&sp->errs, error);
	e->updated_us = t;
	ent_set_state(sp, e, st);
}

static void warn_payload(struct spool *sp, uint64_t seg, uint64_t off)
{
	dw_errlist_add(&sp->warnings,
		       "queue: seg-%016" PRIx64 ".log: unreadable frame payload at offset %" PRIu64
		       " skipped",
		       seg, off);
}

/* ---- damage: never silent ---- */

/* "seq 12 (key gear_ops/42)" of e into b. */
static void describe_ent(const struct ent *e, char *b, size_t n)
{
	if (e->kn)
		snprintf(b, n, "%" PRIu64 " (%s, key %s/%s)", e->seq, spool_state_name(e->state),
			 e->kn->s, e->kn->s + strlen(e->kn->s) + 1);
	else
		snprintf(b, n, "%" PRIu64 " (%s)", e->seq, spool_state_name(e->state));
}

/*
 * The live records sel picks are gone from the disk (why says
 * how): one warning naming them (the first 20 with their keys), counted in
 * damaged, and out of the index - so nothing goes on calling them queued.
 * Returns how many.
 */
struct lose_sel;
static bool lose_match(const struct ent *e, const struct lose_sel *w);

static size_t lose_records(struct spool *sp, const struct lose_sel *sel, const char *why)
{
	char list[2048] = "", one[600];
	size_t n = 0, used = 0;

	ents_merge_late(sp);
	for (size_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		if (state_terminal(e->state) || !lose_match(e, sel))
			continue;
		if (n < 20) {
			describe_ent(e, one, sizeof(one));
			int w = snprintf(list + used, sizeof(list) - used, "%s%s", n ? ", " : "", one);
			if (w > 0 && (size_t)w < sizeof(list) - used)
				used += (size_t)w;
		}
		n++;
		ent_set_state(sp, e, SPOOL_PURGED);
	}
	if (n)
		dw_errlist_add(&sp->warnings,
			       "queue: damaged: %s: %zu waiting record%s gone: seq %s%s", why, n,
			       n == 1 ? "" : "s", list, n > 20 ? ", ..." : "");
	sp->damaged += n;
	return n;
}

/* Which records lose_records takes: by seq, by segment (from an offset on),
 * or all. */
struct lose_sel {
	enum { LOSE_SEQ, LOSE_SEG, LOSE_ALL } by;
	uint64_t seq, seg, from_off;
};

static bool lose_match(const struct ent *e, const struct lose_sel *w)
{
	switch (w->by) {
	case LOSE_SEQ:
		return e->seq == w->seq;
	case LOSE_SEG:
		return e->seg == w->seg && e->off + e->len > w->from_off;
	case LOSE_ALL:
		return true;
	}
	return false;
}

/* A record whose frame cannot be read back any more. */
static void ent_damaged(struct spool *sp, struct ent *e, const char *why)
{
	char w[300];
	struct lose_sel sel = {.by = LOSE_SEQ, .seq = e->seq};

	snprintf(w, sizeof(w), "seg-%016" PRIx64 ".log offset %" PRIu64 ": the record's frame %s",
		 e->seg, e->off, why);
	(void)lose_records(sp, &sel, w);
}

/*
 * What the bad bytes p[0..n) were, as far as a header that survived tells:
 * the record (and its key, when the index or the payload still knows it).
 */
static void describe_corrupt(struct spool *sp, const unsigned char *p, size_t n, char *out,
			     size_t outlen)
{
	int type = n >= SF_HDR_LEN ? p[12] : 0;
	struct ent *e;

	if (n < SF_HDR_LEN || sf_get32(p) != SF_MAGIC || type < SF_RECORD_JSON ||
	    type > SF_TYPE_MAX || type == SF_ROTATE) {
		snprintf(out, outlen, "no frame header survived; the seqs there are unknown");
		return;
	}
	uint64_t seq = sf_frame_seq(p);
	if (type == SF_INTENT || type == SF_CLOSE) {
		snprintf(out, outlen, "%s of write intent %" PRIu64 " (no record)",
			 type == SF_INTENT ? "the start" : "the close", seq);
		return;
	}
	if (type == SF_STATE || type == SF_STATE_JSON) {
		char d[600];
		if ((e = ent_find(sp, seq))) {
			describe_ent(e, d, sizeof(d));
			snprintf(out, outlen, "a state change of record %s", d);
		} else {
			snprintf(out, outlen, "a state change of record %" PRIu64, seq);
		}
		return;
	}
	struct sf_head h;
	size_t plen = sf_get32(p + 4);
	if (plen <= n - SF_HDR_LEN && sf_decode_head(type, p + SF_HDR_LEN, plen, &h) == 0) {
		snprintf(out, outlen, "record %" PRIu64 ", key %s/%s (checksum does not match)", seq,
			 h.upstream, h.key ? h.key : "-");
		sf_head_clear(&h);
	} else {
		snprintf(out, outlen, "record %" PRIu64 ", key unknown", seq);
	}
}

/* Records first..last (none when last < first) are missing from the log:
 * their keys went with their frames. */
static void report_missing(struct spool *sp, const char *why, uint64_t first, uint64_t last,
			   bool reuse)
{
	if (last >= first) {
		dw_errlist_add(&sp->warnings,
			       "queue: damaged: %s: records %" PRIu64 "..%" PRIu64
			       " (%" PRIu64 ") are missing; their keys went with them",
			       why, first, last, last - first + 1);
		sp->damaged += last - first + 1;
	} else {
		dw_errlist_add(&sp->warnings,
			       "queue: damaged: %s: no record is missing, but state changes "
			       "written after record %" PRIu64 " may be",
			       why, sp->last_rec_seq);
		sp->damaged++;
	}
	if (!reuse && last + 1 > sp->next_seq)
		sp->next_seq = last + 1; /* never hand a missing seq out again */
}

static void mark_write(struct spool *sp)
{
	struct sfile_mark m = {sp->tail_id, sp->tail_off, sp->next_seq};

	sp->mark_dirty = sp->mark_force = false;
	sp->mark_us = dw_now_us();
	if (sp->mark_fd < 0 || sp->tail_fd < 0)
		return;
	if (sfile_mark_store(sp->mark_fd, &m) < 0)
		dw_errlist_add(&sp->warnings, "queue %s: MARK: %s", sp->dir, strerror(errno));
}

static int open_mark(struct spool *sp, struct dw_err *err)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/MARK", sp->dir);
	if (sp->mark_fd >= 0)
		close(sp->mark_fd);
	sp->mark_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (sp->mark_fd < 0) {
		dw_err_set(err, "queue %s: MARK: %s", sp->dir, strerror(errno));
		return -1;
	}
	return 0;
}

/* After folding the whole log: does it end where the last writer left it?
 * A tail cut short - even at a frame boundary - or removed says no. */
static void check_mark(struct spool *sp)
{
	struct sfile_mark m;
	char why[400];

	if (!sfile_mark_load(sp->mark_fd, sp->dir, &m))
		return;
	if (m.tail_id > sp->tail_id || (m.tail_id == sp->tail_id && m.tail_end > sp->tail_off)) {
		snprintf(why, sizeof(why),
			 "the log ends in seg-%016" PRIx64 ".log at %" PRIu64
			 " bytes, but was last written up to seg-%016" PRIx64 ".log at %" PRIu64
			 " bytes (cut short or removed)",
			 sp->tail_id, sp->tail_off, m.tail_id, m.tail_end);
		/* After a torn tail was cut, its seqs may be handed out again:
		 * nobody saw them. */
		report_missing(sp, why, sp->last_rec_seq + 1, m.next_seq ? m.next_seq - 1 : 0,
			       sp->torn_cut);
		sp->mark_dirty = sp->mark_force = true;
	}
}

/* Fold one verified frame found at off of segment seg. */
static void fold_frame(struct spool *sp, const unsigned char *p, size_t flen, uint64_t seg,
		       uint64_t off)
{
	int type = sf_frame_type(p);
	uint64_t seq = sf_frame_seq(p);
	const unsigned char *pl = p + SF_HDR_LEN;
	size_t plen = flen - SF_HDR_LEN;

	if (type == SF_ROTATE) {
		sp->tail_next = seq;
	} else if (type == SF_RECORD || type == SF_RECORD_JSON || type == SF_MOVED) {
		struct sf_head h;
		if (sf_decode_head(type, pl, plen, &h) < 0) {
			warn_payload(sp, seg, off);
			return;
		}
		fold_record(sp, type == SF_MOVED, seq, seg, off, (uint32_t)flen, &h);
		sf_head_clear(&h);
	} else if (type == SF_STATE || type == SF_STATE_JSON) {
		struct sf_state st;
		if (sf_decode_state(type, pl, plen, &st) < 0) {
			warn_payload(sp, seg, off);
			return;
		}
		fold_state(sp, seq, st.state, st.attempts, st.status, st.error, st.t);
		free(st.error);
	} else if (type == SF_INTENT) {
		ient_add(sp, seq, seg, off, (uint32_t)flen);
	} else if (type == SF_CLOSE) {
		ient_close(sp, seq);
	}
}

static char *seg_path(const struct spool *sp, uint64_t id)
{
	return sfile_seg_path(sp->dir, id);
}

/* List seg-*.log ids into sp->listed, ascending. */
static int list_segments(struct spool *sp, struct dw_err *err)
{
	return sfile_list_segs(sp->dir, &sp->listed, &sp->nlisted, err);
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
	return sfile_open_seg(sp->dir, id, sp->o.readonly, create);
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

	ents_merge_late(sp);
	for (size_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		if (e->seg < id) {
			if (!state_terminal(e->state)) {
				sp->waiting_bytes -= e->len;
				count_state(sp, e, -1);
				if (e->kn)
					keymap_release(&sp->keys, e->kn);
			} else {
				sp->nterminal--;
			}
			errs_put(&sp->errs, e->last_error);
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

/*
 * The tail is shorter than what we folded of it: someone cut it under us.
 * The live records from the cut on are gone (named, with their keys); the
 * file is cut back to its last whole frame so appends go on cleanly.
 */
static int tail_cut_under_us(struct spool *sp, uint64_t size, struct dw_err *err)
{
	unsigned char *b = size ? sfile_read(sp->tail_fd, 0, (size_t)size, err) : NULL;
	size_t pos = 0, flen;
	char why[300];
	struct lose_sel sel = {.by = LOSE_SEG, .seg = sp->tail_id};

	if (size && !b)
		return -1;
	while (pos < size && sf_check(b + pos, (size_t)size - pos, &flen) == SF_OK)
		pos += flen;
	free(b);
	sel.from_off = pos;
	snprintf(why, sizeof(why),
		 "seg-%016" PRIx64 ".log was cut from %" PRIu64 " to %" PRIu64
		 " bytes under the running process",
		 sp->tail_id, sp->tail_off, size);
	if (lose_records(sp, &sel, why) == 0) {
		dw_errlist_add(&sp->warnings,
			       "queue: damaged: %s: no waiting record was in the cut part, but "
			       "state changes were",
			       why);
		sp->damaged++;
	}
	if (pos < size && ftruncate(sp->tail_fd, (off_t)pos) < 0) {
		dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: cutting to %zu: %s", sp->dir,
			   sp->tail_id, pos, strerror(errno));
		return -1;
	}
	sp->total_bytes -= sp->tail_off - pos;
	sp->tail_off = pos;
	seg_find(sp, sp->tail_id)->size = pos;
	sp->mark_dirty = sp->mark_force = true;
	return 0;
}

/*
 * Fold everything appended to the tail since tail_off, following ROTATE
 * frames into later segments. can_fix: we hold LOCK exclusively and may cut a
 * torn tail and create a segment a crashed rotation announced.
 */
static int refresh_fold(struct spool *sp, bool can_fix, struct dw_err *err)
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
		if ((uint64_t)st.st_size < sp->tail_off && can_fix &&
		    tail_cut_under_us(sp, (uint64_t)st.st_size, err) < 0)
			return -1;
		if ((uint64_t)st.st_size > sp->tail_off) {
			size_t n = (size_t)((uint64_t)st.st_size - sp->tail_off), pos = 0;
			unsigned char *b = sfile_read(sp->tail_fd, sp->tail_off, n, err);
			if (!b) {
				dw_err_prefix(err, "queue %s: seg-%016" PRIx64 ".log", sp->dir,
					      sp->tail_id);
				return -1;
			}
			while (pos < n) {
				size_t flen = 0, q;
				enum sf_check fc = sf_check(b + pos, n - pos, &flen);
				if (fc == SF_OK) {
					fold_frame(sp, b + pos, flen, sp->tail_id, sp->tail_off + pos);
					pos += flen;
					continue;
				}
				/* Resync: the next magic whose frame verifies. */
				for (q = pos + 1; q < n; q++)
					if (b[q] == 'D' && sf_check(b + q, n - q, &flen) == SF_OK)
						break;
				if (q < n) {
					char what[700];
					describe_corrupt(sp, b + pos, q - pos, what, sizeof(what));
					dw_errlist_add(&sp->warnings,
						       "queue: seg-%016" PRIx64
						       ".log: corrupt data of %zu bytes at offset %" PRIu64
						       " skipped (damaged: %s)",
						       sp->tail_id, q - pos, sp->tail_off + pos, what);
					sp->damaged++;
					pos = q;
					continue;
				}
				/* Nothing valid follows: a tail that never completed. */
				bool last = !sp->tail_next && !listed_after(sp, sp->tail_id);
				if (!last) {
					char what[700];
					describe_corrupt(sp, b + pos, n - pos, what, sizeof(what));
					dw_errlist_add(&sp->warnings,
						       "queue: seg-%016" PRIx64
						       ".log: corrupt data of %zu bytes at offset %" PRIu64
						       " skipped (damaged: %s)",
						       sp->tail_id, n - pos, sp->tail_off + pos, what);
					sp->damaged++;
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
					/* A write that never completed: the mark was
					 * not moved past it, unless it did complete
					 * and was cut since - which the mark shows. */
					sp->torn_cut = true;
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
		if (!sp->tail_next) { /* a later segment, but no ROTATE to it */
			char why[300];
			snprintf(why, sizeof(why),
				 "seg-%016" PRIx64 ".log ends at %" PRIu64
				 " bytes without the ROTATE frame to seg-%016" PRIx64
				 ".log (cut short)",
				 sp->tail_id, sp->tail_off, next);
			report_missing(sp, why, sp->last_rec_seq + 1, next - 1, false);
		}
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
					sfile_fsync_dir(sp->dir);
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

static int refresh_locked(struct spool *sp, bool can_fix, struct dw_err *err)
{
	int r = refresh_fold(sp, can_fix, err);

	ents_merge_late(sp);
	return r;
}

/* ---- locking and writing ---- */

/* Exclusive for writers (they may cut a torn tail), shared for read-only
 * handles when a LOCK file exists (so they never see half a frame). */
static int lock_log(struct spool *sp, struct dw_err *err)
{
	if (sp->lock_fd < 0)
		return 0;
	if (sfile_flock(sp->lock_fd, sp->o.readonly ? LOCK_SH : LOCK_EX) < 0) {
		dw_err_set(err, "queue %s: LOCK: %s", sp->dir, strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * The mark is rewritten at most every MARK_EVERY_US while appending (a
 * pwrite per append cost the outage path a third of its rate), and always
 * on a refresh (the daemon's 1 s tick), on close and after damage. So after
 * a crash it may lag the log by that much, never run ahead of it: a cut
 * deeper than the last millisecond of appends is still seen.
 */
#define MARK_EVERY_US 1000

static void unlock_log(struct spool *sp)
{
	if (sp->mark_dirty && (sp->mark_force || dw_now_us() - sp->mark_us >= MARK_EVERY_US))
		mark_write(sp);
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
	sp->mark_dirty = true;
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
			sfile_fsync_dir(sp->dir);
	}
	set_tail(sp, fd, id);
	return 0;
}

/* Make sure there is a tail with room: rotate when it reached segment_bytes.
 * The ROTATE frame goes first, so a crash between the two steps leaves a
 * chain that the next writer completes. */
static int prepare_tail(struct spool *sp, struct dw_err *err)
{
	struct sf_buf b = {0};
	uint64_t id;

	if (sp->tail_fd < 0)
		return create_tail(sp, sp->next_seq ? sp->next_seq : 1, err);
	if (sp->tail_off < sp->o.segment_bytes)
		return 0;
	id = sp->next_seq > sp->tail_id ? sp->next_seq : sp->tail_id + 1;
	sf_put_rotate(&b, id);
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
static void drop_spent_heads(struct spool *sp)
{
	size_t k = 0;

	while (k + 1 < sp->nsegs && sp->segs[k].live == 0 && sp->segs[k].intents == 0 &&
	       sp->segs[k].id != sp->tail_id) {
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

/* How much of its live records compaction copies forward per call: a
 * bound on the time one call takes (the daemon's main loop makes it). */
#define COMPACT_BUDGET (4u << 20)

/*
 * Whether the head segment's live records should be copied forward: it is
 * at least half spent, or the queue's files hold more than twice what is
 * waiting (plus two segments of slack), so copying frees more than it
 * writes. A full head in a backlog is left alone.
 */
static bool head_worth_compacting(const struct spool *sp, const struct seg *h)
{
	return h->live && (h->live_bytes * 2 <= h->size ||
			   sp->total_bytes > 2 * sp->waiting_bytes + 2 * sp->o.segment_bytes);
}

/*
 * Copy up to *budget bytes of the head segment's live records to the tail
 * as MOVED frames (same seq, current state), in one write; with fsync, make
 * them durable before the head can be deleted. A crash at any point leaves
 * each record at least once in the log, and a reader folds the copies of
 * one seq into one record (the later frame wins), so none is doubled.
 */
static int compact_head(struct spool *sp, size_t *budget, struct dw_err *err)
{
	uint64_t head = sp->segs[0].id, off;
	struct sf_buf b = {0};
	struct moved {
		uint64_t seq;
		size_t at, len;
	} *mv = NULL;
	size_t nmv = 0, cap = 0;
	int fd, r = -1;

	if (prepare_tail(sp, err) < 0)
		return -1;
	if (sp->segs[0].id == sp->tail_id)
		return 0; /* cannot happen: the head is never the tail here */
	fd = open_seg(sp, head, false);
	if (fd < 0) {
		dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: %s", sp->dir, head,
			   strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < sp->nents && *budget; i++) {
		struct ent *e = &sp->ents[i];
		struct spool_record rec;
		struct dw_err rerr;
		unsigned char *f;
		size_t flen;

		if (e->seg != head || state_terminal(e->state))
			continue;
		f = sfile_read(fd, e->off, e->len, &rerr);
		if (!f || sf_check(f, e->len, &flen) != SF_OK || flen != e->len ||
		    sf_frame_seq(f) != e->seq ||
		    sf_decode_record(sf_frame_type(f), f + SF_HDR_LEN, flen - SF_HDR_LEN, e->seq,
				     &rec) < 0) {
			free(f);
			ent_damaged(sp, e, "no longer checks out");
			continue;
		}
		free(f);
		rec.state = (enum spool_state)e->state;
		rec.attempts = e->attempts;
		rec.last_status = e->last_status;
		free(rec.last_error);
		rec.last_error = dw_strdup(e->last_error);
		rec.updated_us = e->updated_us;
		if (nmv == cap) {
			cap = cap ? cap * 2 : 64;
			mv = dw_realloc(mv, cap * sizeof(*mv));
		}
		mv[nmv].seq = e->seq;
		mv[nmv].at = b.len;
		sf_put_record(&b, &rec, SF_MOVED);
		mv[nmv].len = b.len - mv[nmv].at;
		*budget = *budget > mv[nmv].len ? *budget - mv[nmv].len : 0;
		nmv++;
		spool_record_clear(&rec);
	}
	close(fd);
	off = sp->tail_off;
	if (b.len && write_tail(sp, b.p, b.len, err) < 0)
		goto out;
	if (b.len && sp->o.fsync) {
		if (fdatasync(sp->tail_fd) < 0) {
			dw_err_set(err, "queue %s: fdatasync: %s", sp->dir, strerror(errno));
			goto out;
		}
		sp->dirty = false;
	}
	for (size_t i = 0; i < nmv; i++) {
		struct ent *e = ent_find(sp, mv[i].seq);
		if (e)
			ent_place(sp, e, sp->tail_id, off + mv[i].at, (uint32_t)mv[i].len);
	}
	r = 0;
out:
	free(mv);
	free(b.p);
	return r;
}

/*
 * Free what is spent: head segments with no live record go; with compact,
 * a head worth it has its few live records copied forward first
 * (compact_head) and then goes too, so a dead letter or an old queued
 * record no longer keeps every later, delivered segment on disk.
 */
static void collect_segments(struct spool *sp, bool compact)
{
	size_t budget = COMPACT_BUDGET;

	for (;;) {
		struct dw_err err;

		drop_spent_heads(sp);
		if (!compact || !budget || sp->nsegs < 2 || sp->segs[0].id == sp->tail_id ||
		    !head_worth_compacting(sp, &sp->segs[0]))
			return;
		if (compact_head(sp, &budget, &err) < 0) {
			dw_errlist_add(&sp->warnings, "queue: compaction: %s", err.msg);
			return;
		}
		if (sp->segs[0].live)
			return; /* budget used up: the rest next time */
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
	struct sf_buf b = {0};
	int64_t now = dw_wall_us();
	int r = 0;

	for (size_t i = 0; i < sp->nents; i++) {
		struct ent *e = &sp->ents[i];
		if (e->state != SPOOL_PENDING)
			continue;
		sf_put_state(&b, e->seq, SPOOL_QUEUED, e->attempts, e->last_status, e->last_error,
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
	if (!sp->o.segment_bytes) { /* a few segments per max_bytes, for compaction */
		sp->o.segment_bytes = sp->o.max_bytes / 4;
		if (sp->o.segment_bytes > 64ull << 20)
			sp->o.segment_bytes = 64ull << 20;
		if (sp->o.segment_bytes < 256ull << 10)
			sp->o.segment_bytes = 256ull << 10;
	}
	sp->lock_fd = sp->owner_fd = sp->consumer_fd = sp->tail_fd = sp->mark_fd = -1;
	sp->next_seq = 1;

	if (sp->o.readonly && sp->o.owner) {
		dw_err_set(err, "queue %s: a read-only handle cannot own the queue", dir);
		goto fail;
	}
	if (!sp->o.readonly && sfile_mkdir_p(dir) < 0) {
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
	sp->dir_dev = st.st_dev;
	sp->dir_ino = st.st_ino;
	if (!sp->o.readonly && open_mark(sp, err) < 0)
		goto fail;
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
	check_mark(sp);
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
	struct dw_err err;

	if (!sp)
		return;
	spool_reap(sp);
	if (sp->mark_dirty && lock_log(sp, &err) == 0) { /* the exact end, for the next open */
		if (refresh_locked(sp, !sp->o.readonly, &err) < 0)
			sp->mark_dirty = false; /* do not write a mark we are unsure of */
		sp->mark_force = true;
		unlock_log(sp);
	}
	if (sp->tail_fd >= 0) {
		if (sp->dirty && sp->o.fsync)
			(void)fdatasync(sp->tail_fd);
		close(sp->tail_fd);
	}
	if (sp->lock_fd >= 0)
		close(sp->lock_fd);
	if (sp->mark_fd >= 0)
		close(sp->mark_fd);
	if (sp->owner_fd >= 0)
		close(sp->owner_fd);
	if (sp->consumer_fd >= 0)
		close(sp->consumer_fd);
	for (size_t i = 0; i < sp->nents; i++)
		errs_put(&sp->errs, sp->ents[i].last_error);
	errs_free(&sp->errs);
	free(sp->ents);
	free(sp->ients);
	free(sp->late);
	free(sp->segs);
	free(sp->listed);
	keymap_free(&sp->keys);
	for (size_t i = 0; i < sp->nups; i++)
		free(sp->ups[i].name);
	free(sp->ups);
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

/* Whether p[0..n) is whole frames of type, every one checking out. */
static bool frames_of(const unsigned char *p, size_t n, int type)
{
	size_t fl;

	for (size_t at = 0; at < n; at += fl)
		if (sf_check(p + at, n - at, &fl) != SF_OK || sf_frame_type(p + at) != type)
			return false;
	return true;
}

/* One lock, one write: the state changes chg (skipping, and reporting in
 * err, those of records gone or final), then the records recs. Returns how
 * many records went in; *nstates how many changes. */
static size_t batch_write(struct spool *sp, const struct spool_group *g, size_t *nstates,
			  bool *intents_in, struct dw_err *err)
{
	struct spool_record *recs = g->recs;
	const struct spool_change *chg = g->chg;
	size_t n = g->n, nchg = g->nchg;
	struct sf_buf b = {0};
	size_t k = 0, *ends, states = 0, start, istart = 0;
	uint64_t off;
	int64_t now = dw_wall_us();
	bool iin = false;

	*nstates = 0;
	if (intents_in)
		*intents_in = false;
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
	if (!frames_of(g->intents, g->intents_len, SF_INTENT) ||
	    !frames_of(g->closes, g->closes_len, SF_CLOSE)) {
		dw_err_set(err, "queue %s: append: intents and closes must be whole INTENT and "
				"CLOSE frames", sp->dir);
		return 0;
	}
	if (n == 0 && nchg == 0 && g->intents_len == 0 && g->closes_len == 0)
		return 0;
	ends = dw_malloc((n ? n : 1) * sizeof(*ends));
	pthread_mutex_lock(&sp->mu);
	if (sp->dir_lost) { /* it would go into unlinked files: refuse, loudly */
		dw_err_set(err, "queue %s: the directory was removed and cannot be made again yet",
			   sp->dir);
		goto out_mu;
	}
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
		sf_put_state(&b, chg[i].seq, chg[i].st, chg[i].attempts, chg[i].status,
			    chg[i].error, now);
		states++;
	}
	start = b.len;
	for (k = 0; k < n; k++) {
		recs[k].seq = sp->next_seq + k;
		sf_put_record(&b, &recs[k], SF_RECORD);
		/* Only new records count against max_bytes: state frames must
		 * always be writable, or a full queue could never record its own
		 * draining. */
		if (sp->waiting_bytes + (b.len - start) > sp->o.max_bytes) {
			dw_err_set(err, "queue full (%" PRIu64 " bytes waiting, max %" PRIu64 ")",
				   sp->waiting_bytes, sp->o.max_bytes);
			b.len = k ? ends[k - 1] : start;
			break;
		}
		ends[k] = b.len;
	}
	/* Intents, then closes: never refused for space (each lives for one
	 * exchange), and a close after the record it goes with. */
	istart = b.len;
	iin = g->intents_len || g->closes_len;
	if (iin) {
		sf_buf_add(&b, g->intents, g->intents_len);
		sf_buf_add(&b, g->closes, g->closes_len);
	}
	for (size_t i = 0; i < k; i++)
		if (recs[i].key)
			keymap_prefetch(&sp->keys, recs[i].upstream, recs[i].key);
	off = sp->tail_off;
	if (b.len && write_tail(sp, b.p, b.len, err) < 0) {
		k = 0;
		states = 0;
		iin = false;
	}
	for (size_t at = 0, fl; iin && at < g->intents_len; at += fl) {
		fl = SF_HDR_LEN + sf_get32(g->intents + at + 4);
		ient_add(sp, sf_frame_seq(g->intents + at), sp->tail_id, off + istart + at,
			 (uint32_t)fl);
	}
	for (size_t at = 0, fl; iin && at < g->closes_len; at += fl) {
		fl = SF_HDR_LEN + sf_get32(g->closes + at + 4);
		ient_close(sp, sf_frame_seq(g->closes + at));
	}
	for (size_t i = 0; states && i < nchg; i++) {
		struct ent *e = ent_find(sp, chg[i].seq);

		if (state_valid(chg[i].st) && e && !state_terminal(e->state))
			fold_state(sp, chg[i].seq, chg[i].st, chg[i].attempts, chg[i].status,
				   chg[i].error, now);
	}
	for (size_t i = 0; i < k; i++) {
		size_t at = i ? ends[i - 1] : start;
		struct sf_head h = {
			.state = recs[i].state, .attempts = recs[i].attempts,
			.status = recs[i].last_status, .created = recs[i].created_us,
			.updated = recs[i].updated_us, .upstream = recs[i].upstream,
			.key = recs[i].key, .error = recs[i].last_error,
		};
		fold_record(sp, false, recs[i].seq, sp->tail_id, off + at, (uint32_t)(ends[i] - at),
			    &h);
	}
	if (states || (iin && g->closes_len))
		collect_segments(sp, false);
	if (states)
		ents_compact(sp);
out:
	unlock_log(sp);
out_mu:
	pthread_mutex_unlock(&sp->mu);
	free(ends);
	free(b.p);
	*nstates = states;
	if (intents_in)
		*intents_in = iin;
	return k;
}

size_t spool_append_batch(struct spool *sp, struct spool_record *recs, size_t n,
			  const struct spool_change *chg, size_t nchg, struct dw_err *err)
{
	struct spool_group g = {.recs = recs, .n = n, .chg = chg, .nchg = nchg};
	size_t nstates;

	return batch_write(sp, &g, &nstates, NULL, err);
}

size_t spool_append_group(struct spool *sp, const struct spool_group *g, bool *intents_in,
			  struct dw_err *err)
{
	size_t nstates;

	return batch_write(sp, g, &nstates, intents_in, err);
}

uint64_t spool_intent_id(struct spool *sp)
{
	return __atomic_add_fetch(&sp->next_intent, 1, __ATOMIC_RELAXED);
}

void spool_intent_clear(struct spool_intent *in)
{
	free(in->route);
	free(in->upstream);
	free(in->method);
	free(in->target);
	free(in->request_id);
	free(in->key);
	memset(in, 0, sizeof(*in));
}

size_t spool_intents_open(struct spool *sp, struct spool_intent **out)
{
	struct spool_intent *v = NULL;
	size_t n = 0;

	*out = NULL;
	pthread_mutex_lock(&sp->mu);
	for (size_t i = 0; i < sp->nients; i++) {
		const struct ient *ie = &sp->ients[i];
		int fd;
		unsigned char *frame;
		struct dw_err err = {""};
		size_t flen;

		if (ie->closed)
			continue;
		fd = ie->seg == sp->tail_id ? sp->tail_fd : open_seg(sp, ie->seg, false);
		frame = fd < 0 ? NULL : sfile_read(fd, ie->off, ie->len, &err);
		if (fd >= 0 && fd != sp->tail_fd)
			close(fd);
		if (!frame || sf_check(frame, ie->len, &flen) != SF_OK ||
		    frame[12] != SF_INTENT) {
			dw_errlist_add(&sp->warnings,
				       "queue: write intent %" PRIu64 " (seg-%016" PRIx64
				       ".log) can no longer be read: a write of unknown outcome "
				       "whose route and key are lost",
				       ie->id, ie->seg);
			free(frame);
			continue;
		}
		v = dw_realloc(v, (n + 1) * sizeof(*v));
		if (sf_decode_intent(frame + SF_HDR_LEN, flen - SF_HDR_LEN, ie->id, &v[n]) == 0)
			n++;
		free(frame);
	}
	pthread_mutex_unlock(&sp->mu);
	*out = v;
	return n;
}

int spool_intents_settle(struct spool *sp, const struct spool_intent *v, const char *const *reasons,
			 size_t n, uint64_t *seqs, struct dw_err *err)
{
	struct sf_buf b = {0};
	size_t *ends;
	uint64_t off;
	int64_t now = dw_wall_us();
	int r = -1;

	if (n == 0)
		return 0;
	if (sp->o.readonly)
		return readonly_err(sp, err);
	ends = dw_malloc(n * sizeof(*ends));
	pthread_mutex_lock(&sp->mu);
	if (lock_log(sp, err) < 0)
		goto out_mu;
	if (refresh_locked(sp, true, err) < 0 || prepare_tail(sp, err) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		char *why = dw_strdup(reasons[i]);
		struct spool_record rec = {
			.seq = sp->next_seq + i, .state = SPOOL_DEAD, .route = v[i].route,
			.upstream = v[i].upstream, .key = v[i].key, .method = NULL, /* never built */
			.path = v[i].target, .request_id = v[i].request_id, .created_us = v[i].t_us,
			.updated_us = now, .last_error = why,
		};
		sf_put_record(&b, &rec, SF_RECORD);
		ends[i] = b.len;
		free(why);
	}
	for (size_t i = 0; i < n; i++)
		sf_put_close(&b, v[i].id);
	off = sp->tail_off;
	if (write_tail(sp, b.p, b.len, err) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		size_t at = i ? ends[i - 1] : 0;
		char *why = dw_strdup(reasons[i]);
		struct sf_head h = {.state = SPOOL_DEAD, .created = v[i].t_us, .updated = now,
				    .upstream = v[i].upstream, .key = v[i].key, .error = why};
		seqs[i] = sp->next_seq;
		fold_record(sp, false, sp->next_seq, sp->tail_id, off + at,
			    (uint32_t)(ends[i] - at), &h);
		free(why);
		ient_close(sp, v[i].id);
	}
	collect_segments(sp, false);
	r = 0;
out:
	unlock_log(sp);
out_mu:
	pthread_mutex_unlock(&sp->mu);
	free(ends);
	free(b.p);
	return r;
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
	struct spool_group g = {.chg = v, .nchg = n};

	(void)batch_write(sp, &g, &written, NULL, &why);
	if (why.msg[0])
		*err = why;
	return written || !why.msg[0] ? 0 : -1;
}

int spool_set_state(struct spool *sp, uint64_t seq, enum spool_state st, uint32_t attempts,
		    int status, const char *error, struct dw_err *err)
{
	struct sf_buf b = {0};
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
	sf_put_state(&b, seq, st, attempts, status, error, now);
	if (write_tail(sp, b.p, b.len, err) < 0)
		goto out;
	fold_state(sp, seq, st, attempts, status, error, now);
	collect_segments(sp, false);
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

/*
 * The directory we opened is gone or replaced (removed under the running
 * daemon): every waiting record in it is lost - say which, drop them (so
 * nothing calls them queued), and make the directory again, with its lock
 * files and a fresh tail, so that new writes are journaled again.
 */
static int check_dir(struct spool *sp, struct dw_err *err)
{
	struct stat st;
	char why[PATH_MAX + 100], path[PATH_MAX];
	struct lose_sel all = {.by = LOSE_ALL};

	if (!sp->dir_lost && stat(sp->dir, &st) == 0 && st.st_dev == sp->dir_dev &&
	    st.st_ino == sp->dir_ino)
		return 0;
	if (!sp->dir_lost) { /* reported once; making it again is retried each call */
		snprintf(why, sizeof(why),
			 "the queue directory %s was removed or replaced under the running process",
			 sp->dir);
		if (lose_records(sp, &all, why) == 0) {
			dw_errlist_add(&sp->warnings, "queue: damaged: %s (no record was waiting)",
				       why);
			sp->damaged++;
		}
		sp->dir_lost = true;
	}
	if (sfile_mkdir_p(sp->dir) < 0 || stat(sp->dir, &st) < 0) {
		dw_err_set(err, "queue %s: making it again: %s", sp->dir, strerror(errno));
		return -1;
	}
	sp->dir_dev = st.st_dev;
	sp->dir_ino = st.st_ino;
	snprintf(path, sizeof(path), "%s/LOCK", sp->dir);
	if (sp->lock_fd >= 0)
		close(sp->lock_fd);
	sp->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (sp->lock_fd < 0) {
		dw_err_set(err, "queue %s: LOCK: %s", sp->dir, strerror(errno));
		return -1;
	}
	if (open_mark(sp, err) < 0)
		return -1;
	if (sp->owner_fd >= 0) {
		close(sp->owner_fd);
		sp->owner_fd = -1;
		if (take_owner(sp, err) < 0)
			return -1;
	}
	if (sp->consumer_fd >= 0) {
		close(sp->consumer_fd);
		sp->consumer_fd = -1;
	}
	if (sp->tail_fd >= 0)
		close(sp->tail_fd);
	sp->tail_fd = -1;
	sp->nsegs = 0;
	sp->total_bytes = 0;
	if (lock_log(sp, err) < 0)
		return -1;
	int r = create_tail(sp, sp->next_seq > sp->tail_id ? sp->next_seq : sp->tail_id + 1, err);
	sp->mark_dirty = sp->mark_force = true;
	unlock_log(sp);
	if (r == 0) {
		sp->dir_lost = false;
		/* Anything still indexed went into the old, unlinked files. */
		(void)lose_records(sp, &all, "written while the queue directory was gone");
		dw_errlist_add(&sp->warnings, "queue %s: made again; new writes are journaled there",
			       sp->dir);
	}
	return r;
}

/* The tail segment was removed under us (we hold it open, so only its name
 * went): its waiting records are lost; a new tail takes over. LOCK held. */
static int check_tail_linked(struct spool *sp, struct dw_err *err)
{
	struct stat st;
	char why[200];
	struct lose_sel sel = {.by = LOSE_SEG, .seg = sp->tail_id};
	uint64_t old = sp->tail_id;

	if (sp->tail_fd < 0 || fstat(sp->tail_fd, &st) < 0 || st.st_nlink > 0)
		return 0;
	snprintf(why, sizeof(why), "seg-%016" PRIx64 ".log was removed under the running process",
		 old);
	if (lose_records(sp, &sel, why) == 0) {
		dw_errlist_add(&sp->warnings, "queue: damaged: %s (no record was waiting in it)", why);
		sp->damaged++;
	}
	for (size_t i = 0; i < sp->nsegs; i++)
		if (sp->segs[i].id == old) {
			sp->total_bytes -= sp->segs[i].size;
			memmove(sp->segs + i, sp->segs + i + 1, (sp->nsegs - i - 1) * sizeof(*sp->segs));
			sp->nsegs--;
			break;
		}
	close(sp->tail_fd);
	sp->tail_fd = -1;
	return create_tail(sp, sp->next_seq > old ? sp->next_seq : old + 1, err);
}

/* Segments before the tail that still hold waiting records must still be
 * there (after a refresh, so another process's compaction is folded). */
static void check_segments_exist(struct spool *sp)
{
	for (size_t i = 0; i < sp->nsegs; i++) {
		struct seg *g = &sp->segs[i];
		struct stat st;
		char why[200];

		if (g->id == sp->tail_id || !g->live)
			continue;
		char *path = seg_path(sp, g->id);
		int gone = stat(path, &st) < 0 && errno == ENOENT;
		free(path);
		if (!gone)
			continue;
		struct lose_sel sel = {.by = LOSE_SEG, .seg = g->id};
		snprintf(why, sizeof(why), "seg-%016" PRIx64 ".log was removed", g->id);
		(void)lose_records(sp, &sel, why);
		sp->total_bytes -= g->size;
		memmove(sp->segs + i, sp->segs + i + 1, (sp->nsegs - i - 1) * sizeof(*sp->segs));
		sp->nsegs--;
		i--;
	}
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
	if (!sp->o.readonly && check_dir(sp, err) < 0)
		goto out_mu;
	if (lock_log(sp, err) < 0)
		goto out_mu;
	/* Fold first: a tail or segment another process rotated past and
	 * deleted is not damage; one we are caught up with that went is. */
	r = refresh_locked(sp, !sp->o.readonly, err);
	if (r == 0 && !sp->o.readonly)
		r = check_tail_linked(sp, err);
	if (r == 0 && !sp->o.readonly) {
		check_segments_exist(sp);
		collect_segments(sp, true);
		ents_compact(sp);
	}
	sp->mark_force = true;
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
	keystr_make(&ks, upstream, key);
	pthread_mutex_lock(&sp->mu);
	struct keynode *k = keymap_find(&sp->keys, ks.s, ks.n, ks.hash);
	if (k)
		r = k->queued > 0 || (k->pending > 0 && !owner_alive_locked(sp));
	pthread_mutex_unlock(&sp->mu);
	keystr_done(&ks);
	return r;
}

int spool_read(struct spool *sp, uint64_t seq, struct spool_record *out, struct dw_err *err)
{
	unsigned char hdr[SF_HDR_LEN], *frame = NULL;
	struct ent *e;
	int fd = -1, r = -1;
	size_t flen;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&sp->mu);
	e = ent_find(sp, seq);
	if (!e) {
		dw_err_set(err, "queue %s: no record %" PRIu64, sp->dir, seq);
		goto out;
	}
	fd = e->seg == sp->tail_id ? sp->tail_fd : open_seg(sp, e->seg, false);
	if (fd < 0 && errno == ENOENT && lock_log(sp, err) == 0) {
		/* Another process compacted its segment away: the MOVED copy
		 * is further on in the log. */
		int rr = refresh_locked(sp, !sp->o.readonly, err);
		unlock_log(sp);
		if (rr == 0 && (e = ent_find(sp, seq)))
			fd = e->seg == sp->tail_id ? sp->tail_fd : open_seg(sp, e->seg, false);
		if (!e) {
			dw_err_set(err, "queue %s: no record %" PRIu64, sp->dir, seq);
			goto out;
		}
	}
	if (fd < 0) {
		dw_err_set(err, "queue %s: seg-%016" PRIx64 ".log: %s", sp->dir, e->seg,
			   strerror(errno));
		goto out;
	}
	if (pread(fd, hdr, SF_HDR_LEN, (off_t)e->off) != SF_HDR_LEN) {
		dw_err_set(err, "queue %s: record %" PRIu64 ": short read", sp->dir, seq);
		goto out;
	}
	flen = SF_HDR_LEN + (size_t)(sf_get32(hdr + 4) > SF_MAX_PAYLOAD ? 0 : sf_get32(hdr + 4));
	frame = sfile_read(fd, e->off, flen, err);
	if (!frame) {
		dw_err_prefix(err, "queue %s: record %" PRIu64, sp->dir, seq);
		goto out;
	}
	if (sf_check(frame, flen, &flen) != SF_OK ||
	    (frame[12] != SF_RECORD && frame[12] != SF_RECORD_JSON && frame[12] != SF_MOVED) ||
	    sf_get64(frame + 13) != seq) {
		dw_err_set(err, "queue %s: record %" PRIu64 ": frame no longer checks out", sp->dir,
			   seq);
		goto out;
	}
	if (sf_decode_record(sf_frame_type(frame), frame + SF_HDR_LEN, flen - SF_HDR_LEN, seq,
			     out) < 0) {
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
	free(frame);
	return r;
}

int spool_upstream_waiting(struct spool *sp, const char *upstream, uint64_t *queued,
			   uint64_t *dead, struct dw_err *err)
{
	uint64_t *unkeyed = NULL;
	size_t nun = 0, cap = 0;
	bool owned;
	int r = 0;

	*queued = *dead = 0;
	pthread_mutex_lock(&sp->mu);
	owned = owner_alive_locked(sp);
	for (size_t i = 0; i < sp->nents; i++) {
		const struct ent *e = &sp->ents[i];
		bool waits = e->state == SPOOL_QUEUED || e->state == SPOOL_DEAD ||
			     (e->state == SPOOL_PENDING && !owned);

		if (!waits)
			continue;
		if (!e->kn) {
			if (nun == cap) {
				cap = cap ? cap * 2 : 16;
				unkeyed = dw_realloc(unkeyed, cap * sizeof(*unkeyed));
			}
			unkeyed[nun++] = e->seq;
			continue;
		}
		if (strcmp(e->kn->s, upstream) != 0) /* s: upstream '\0' key */
			continue;
		if (e->state == SPOOL_DEAD)
			(*dead)++;
		else
			(*queued)++;
	}
	pthread_mutex_unlock(&sp->mu);
	for (size_t i = 0; i < nun && r == 0; i++) {
		struct spool_record rec;

		if (spool_read(sp, unkeyed[i], &rec, err) < 0) {
			r = -1;
			break;
		}
		if (rec.upstream && strcmp(rec.upstream, upstream) == 0) {
			if (rec.state == SPOOL_DEAD)
				(*dead)++;
			else if (rec.state == SPOOL_QUEUED || rec.state == SPOOL_PENDING)
				(*queued)++;
		}
		spool_record_clear(&rec);
	}
	free(unkeyed);
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

void spool_final(struct spool *sp, const uint64_t *seqs, size_t n, bool *out)
{
	pthread_mutex_lock(&sp->mu);
	for (size_t i = 0; i < n; i++) {
		const struct ent *e = ent_find(sp, seqs[i]);

		out[i] = !e || state_terminal(e->state);
	}
	pthread_mutex_unlock(&sp->mu);
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
	if (sfile_flock(sp->consumer_fd, wait ? LOCK_EX : LOCK_EX | LOCK_NB) < 0) {
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
	out->waiting_bytes = sp->waiting_bytes;
	out->damaged = sp->damaged;
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

/* The oldest PENDING or QUEUED record of upstream slot k (0-based), from its
 * hint on; moves the hint there. Locked. */
static int64_t up_oldest(struct spool *sp, size_t k)
{
	struct upq *u = &sp->ups[k];
	size_t lo = 0, hi = sp->nents;

	if (!u->pending && !u->queued)
		return 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (sp->ents[mid].seq < u->hint)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = lo; i < sp->nents; i++) {
		const struct ent *e = &sp->ents[i];
		if (e->up == k + 1 && (e->state == SPOOL_PENDING || e->state == SPOOL_QUEUED)) {
			u->hint = e->seq;
			return e->created_us;
		}
	}
	return 0;
}

size_t spool_upstream_stats(struct spool *sp, struct spool_upstream_stats **out)
{
	size_t n;

	pthread_mutex_lock(&sp->mu);
	n = sp->nups;
	*out = n ? dw_calloc(n, sizeof(**out)) : NULL;
	for (size_t i = 0; i < n; i++) {
		const struct upq *u = &sp->ups[i];
		struct spool_upstream_stats *o = &(*out)[i];

		o->upstream = dw_strdup(u->name);
		o->pending = u->pending;
		o->queued = u->queued;
		o->dead = u->dead;
		o->oldest_waiting_us = up_oldest(sp, i);
	}
	pthread_mutex_unlock(&sp->mu);
	return n;
}

void spool_upstream_stats_free(struct spool_upstream_stats *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].upstream);
	free(v);
}
