/*
 * resolver.c — upstream host names resolved off the event loops.
 *
 * One thread, owned by the main thread, looks names up with getaddrinfo and
 * publishes the answers; the workers' pools (pool.c) read them when they
 * open a connection. Nothing on a worker's loop ever waits for a lookup.
 *
 * Why a thread with getaddrinfo rather than libevent's evdns: operators
 * expect the daemon to resolve as every other program on the host does —
 * nsswitch (files, dns, myhostname, systemd-resolved, LDAP/NIS maps, ...),
 * /etc/hosts, gai.conf's address order, search domains — and evdns only
 * reimplements /etc/hosts and resolv.conf. Lookups are rare (start, reload,
 * every resolve_interval_s, a connect failure), so one thread for all loops
 * is plenty, and it keeps one answer per name for every worker and mirror
 * shard instead of one lookup per loop. getaddrinfo gives no TTL: names are
 * refreshed on the configured interval instead (upstream key
 * resolve_interval_s, default 60).
 *
 * Publication needs no wake-up of the loops: a name carries a generation
 * counter, bumped (under the lock, stored with release order) whenever its
 * addresses or its failure change; a pool compares it with the one it last
 * copied (one atomic load per new connection, none per reused one) and
 * copies the name's state under the lock only when it moved. Numeric
 * upstream addresses never reach this file (dw_addr_numeric in pool.c).
 *
 * Schedule of a name: looked up at once when a configuration (the first or
 * a reload) lists it; after a success again after its interval; after a
 * failure again after dw_resolve_backoff_ms (0.5 s doubling, capped by the
 * interval and 30 s), for ever — a failure is never sticky; and, when a
 * connect to one of its addresses failed, again at most once a second
 * (resolver_kick). A failed lookup keeps the last good addresses. Each
 * change of state (first answer, new addresses, failure, a new reason,
 * recovery) is logged once, never once per lookup.
 *
 * Ownership: names live until resolver_free (a configuration that drops a
 * name only stops its periodic lookups: a pool made for an older snapshot
 * may still point at it). The main thread creates and frees the resolver;
 * resolver_name and resolver_kick are for any thread.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "addrset.h"
#include "resolver.h"

#define KICK_MIN_US 1000000 /* connect failures: at most one lookup a second */

struct dns_name {
	struct dns_name *next;
	char *host;	 /* immutable */
	unsigned gen;	 /* atomic for readers; changed under the lock */
	/* the rest under resolver.lock */
	struct dw_addrset addrs; /* last good answer, ports 0; n == 0: none yet */
	char err[200];		 /* why the last lookup failed; "" when it did not */
	bool looked_up;		 /* a lookup has finished */
	bool wanted;		 /* listed by the current configuration */
	int64_t interval_us;
	int64_t due_us; /* next lookup (dw_now_us), 0: none */
	int64_t last_us; /* when the last lookup started */
	int failures;	 /* in a row */
};

struct resolver {
	pthread_mutex_t lock;
	pthread_cond_t wake; /* the thread: a lookup became due sooner, or stop */
	pthread_cond_t done; /* resolver_wait_ready: a lookup finished */
	pthread_t thread;
	bool started, stop;
	struct dns_name *names;
};

/* deadline (dw_now_us, CLOCK_MONOTONIC) as a timespec for the conditions */
static struct timespec mono_at(int64_t at_us)
{
	struct timespec now, ts;
	int64_t d = at_us - dw_now_us(), ns;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (d < 0)
		d = 0;
	ns = (int64_t)now.tv_nsec + (d % 1000000) * 1000;
	ts.tv_sec = now.tv_sec + (time_t)(d / 1000000) + (time_t)(ns / 1000000000);
	ts.tv_nsec = (long)(ns % 1000000000);
	return ts;
}

static int lookup(const char *host, struct dw_addrset *out, char *why, size_t whylen)
{
	struct addrinfo hints, *res = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0) {
		snprintf(why, whylen, "%s", rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
		dw_addrset_add(out, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(res);
	if (out->n == 0) {
		snprintf(why, whylen, "no IPv4 or IPv6 address");
		return -1;
	}
	return 0;
}

static void bump(struct dns_name *n)
{
	__atomic_store_n(&n->gen, n->gen + 1, __ATOMIC_RELEASE);
}

/* Under the lock, after a lookup: the next one at `at` (0: none), unless a
 * reload or a kick asked for an earlier one while it ran (due_us is zeroed
 * when a lookup starts). */
static void schedule(struct dns_name *n, int64_t at)
{
	if (!n->due_us || (at && at < n->due_us))
		n->due_us = at;
}

/* Under the lock: what one lookup found. */
static void publish(struct dns_name *n, int rc, const struct dw_addrset *got, const char *why)
{
	char now_txt[200], was_txt[200];
	int64_t now = dw_now_us();

	if (rc == 0) {
		bool first = !n->looked_up, again = n->err[0] != '\0';
		bool changed = !dw_addrset_equal(got, &n->addrs);

		dw_addrset_text(got, now_txt, sizeof(now_txt));
		if (first || again)
			log_info("%s %s: %s", again ? "resolves again" : "resolved", n->host, now_txt);
		else if (changed)
			log_info("%s now resolves to %s (was %s)", n->host, now_txt,
				 dw_addrset_text(&n->addrs, was_txt, sizeof(was_txt)));
		n->addrs = *got;
		n->err[0] = '\0';
		n->failures = 0;
		schedule(n, n->wanted ? now + n->interval_us : 0);
		if (first || again || changed)
			bump(n);
	} else {
		n->failures++;
		if (strcmp(n->err, why) != 0) {
			if (n->addrs.n)
				log_warn("cannot resolve %s: %s (keeping %s; retrying)", n->host, why,
					 dw_addrset_text(&n->addrs, was_txt, sizeof(was_txt)));
			else
				log_warn("cannot resolve %s: %s (connections to it fail until it "
					 "resolves; retrying)", n->host, why);
			snprintf(n->err, sizeof(n->err), "%s", why);
			bump(n);
		}
		schedule(n, n->wanted ? now + dw_resolve_backoff_ms(n->failures,
								     n->interval_us / 1000) * 1000
				      : 0);
	}
	n->looked_up = true;
}

static void *resolver_main(void *arg)
{
	struct resolver *r = arg;

	pthread_mutex_lock(&r->lock);
	while (!r->stop) {
		struct dns_name *next = NULL;
		struct dw_addrset got;
		char why[200] = "";
		int rc;

		for (struct dns_name *n = r->names; n; n = n->next)
			if (n->due_us && (!next || n->due_us < next->due_us))
				next = n;
		if (!next) {
			pthread_cond_wait(&r->wake, &r->lock);
			continue;
		}
		if (next->due_us > dw_now_us()) {
			struct timespec ts = mono_at(next->due_us);

			pthread_cond_timedwait(&r->wake, &r->lock, &ts);
			continue;
		}
		next->due_us = 0;
		next->last_us = dw_now_us();
		pthread_mutex_unlock(&r->lock);
		rc = lookup(next->host, &got, why, sizeof(why)); /* host is immutable */
		pthread_mutex_lock(&r->lock);
		publish(next, rc, &got, why);
		pthread_cond_broadcast(&r->done);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

struct resolver *resolver_new(struct dw_err *err)
{
	struct resolver *r = dw_calloc(1, sizeof(*r));
	pthread_condattr_t ca;
	int rc;

	pthread_mutex_init(&r->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->wake, &ca);
	pthread_cond_init(&r->done, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&r->thread, NULL, resolver_main, r);
	if (rc != 0) {
		dw_err_set(err, "resolver: cannot start its thread: %s", strerror(rc));
		resolver_free(r);
		return NULL;
	}
	r->started = true;
	return r;
}

void resolver_free(struct resolver *r)
{
	if (!r)
		return;
	if (r->started) {
		pthread_mutex_lock(&r->lock);
		r->stop = true;
		pthread_cond_signal(&r->wake);
		pthread_mutex_unlock(&r->lock);
		pthread_join(r->thread, NULL); /* after the lookup in progress, if any */
	}
	for (struct dns_name *n = r->names, *nn; n; n = nn) {
		nn = n->next;
		free(n->host);
		free(n);
	}
	pthread_cond_destroy(&r->wake);
	pthread_cond_destroy(&r->done);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* Under the lock. */
static struct dns_name *find_or_add(struct resolver *r, const char *host, bool *added)
{
	struct dns_name *n;

	*added = false;
	for (n = r->names; n; n = n->next)
		if (strcmp(n->host, host) == 0)
			return n;
	n = dw_calloc(1, sizeof(*n));
	n->host = dw_strdup(host);
	n->interval_us = 60 * INT64_C(1000000);
	n->wanted = true;
	n->due_us = dw_now_us();
	n->next = r->names;
	r->names = n;
	*added = true;
	return n;
}

void resolver_configure(struct resolver *r, const struct dw_config *cfg)
{
	struct dw_addrset numeric;
	int64_t now = dw_now_us();
	bool added;

	pthread_mutex_lock(&r->lock);
	for (struct dns_name *n = r->names; n; n = n->next) {
		n->wanted = false;
		n->interval_us = 0;
	}
	for (size_t i = 0; i < cfg->nupstreams; i++) {
		const struct dw_upstream *u = &cfg->upstreams[i];
		int64_t iv = (int64_t)u->resolve_interval_s * 1000000;
		struct dns_name *n;

		if (dw_addr_numeric(u->host, u->port, &numeric))
			continue;
		n = find_or_add(r, u->host, &added);
		n->wanted = true;
		if (n->interval_us == 0 || iv < n->interval_us)
			n->interval_us = iv; /* the shortest of the upstreams naming it */
		n->due_us = now; /* a new snapshot: look again, whatever the schedule */
	}
	for (struct dns_name *n = r->names; n; n = n->next)
		if (!n->wanted) {
			n->interval_us = 60 * INT64_C(1000000);
			n->due_us = 0;
		}
	pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
}

bool resolver_wait_ready(struct resolver *r, int timeout_ms)
{
	struct timespec ts = mono_at(dw_now_us() + (int64_t)timeout_ms * 1000);
	bool all = false;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		all = true;
		for (struct dns_name *n = r->names; n; n = n->next)
			all &= !n->wanted || n->looked_up;
		if (all || pthread_cond_timedwait(&r->done, &r->lock, &ts) == ETIMEDOUT)
			break;
	}
	if (!all)
		for (struct dns_name *n = r->names; n; n = n->next)
			if (n->wanted && !n->looked_up)
				log_warn("still resolving %s after %d ms: connections to it fail "
					 "until it resolves", n->host, timeout_ms);
	pthread_mutex_unlock(&r->lock);
	return all;
}

struct dns_name *resolver_name(struct resolver *r, const char *host)
{
	struct dns_name *n;
	bool added;

	pthread_mutex_lock(&r->lock);
	n = find_or_add(r, host, &added);
	if (added)
		pthread_cond_signal(&r->wake);
	pthread_mutex_unlock(&r->lock);
	return n;
}

void resolver_kick(struct resolver *r, struct dns_name *n)
{
	int64_t at;

	pthread_mutex_lock(&r->lock);
	/* a failing name is already on its backoff schedule: a kick would
	 * defeat it under traffic */
	if (n->looked_up && !n->err[0]) {
		at = n->last_us + KICK_MIN_US;
		if (at < dw_now_us())
			at = dw_now_us();
		if (!n->due_us || at < n->due_us) {
			n->due_us = at;
			pthread_cond_signal(&r->wake);
		}
	}
	pthread_mutex_unlock(&r->lock);
}

unsigned dns_name_gen(const struct dns_name *n)
{
	return __atomic_load_n(&n->gen, __ATOMIC_ACQUIRE);
}

unsigned dns_name_read(struct resolver *r, const struct dns_name *n, struct dw_addrset *addrs,
		       char *why, size_t whylen)
{
	unsigned gen;

	pthread_mutex_lock(&r->lock);
	gen = n->gen;
	*addrs = n->addrs;
	snprintf(why, whylen, "%s", n->err[0] ? n->err : n->looked_up ? "" : "lookup in progress");
	pthread_mutex_unlock(&r->lock);
	return gen;
}

bool resolver_describe(struct resolver *r, const char *host, char *addrs, size_t addrslen,
		       char *why, size_t whylen)
{
	bool found = false;

	pthread_mutex_lock(&r->lock);
	for (struct dns_name *n = r->names; n && !found; n = n->next)
		if (strcmp(n->host, host) == 0) {
			found = true;
			dw_addrset_text(&n->addrs, addrs, addrslen);
			snprintf(why, whylen, "%s",
				 n->err[0] ? n->err : n->looked_up ? "" : "lookup in progress");
		}
	pthread_mutex_unlock(&r->lock);
	return found;
}
