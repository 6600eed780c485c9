/*
 * resolver — upstream host names, looked up off the event loops by a thread
 * of their own (resolver.c): the pools (pool.c) copy a name's addresses when
 * its generation moves, never block on a lookup.
 */
#ifndef DW_RESOLVER_H
#define DW_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "dw.h"

struct resolver;
struct dns_name;
struct dw_addrset;

/* Main thread: start the resolver thread, and stop it (after the workers). */
struct resolver *resolver_new(struct dw_err *err);
void resolver_free(struct resolver *r);
/* Main thread, at start and at every reload before the workers see cfg:
 * look up every host name cfg lists now, then every resolve_interval_s. */
void resolver_configure(struct resolver *r, const struct dw_config *cfg);
/* Main thread, at start: wait up to timeout_ms for the first answer (or
 * failure) of every name; false (and a warning per name) when some are
 * still being looked up. */
bool resolver_wait_ready(struct resolver *r, int timeout_ms);
/* Any thread: the name's handle (made and looked up at once if new), valid
 * until resolver_free. */
struct dns_name *resolver_name(struct resolver *r, const char *host);
/* Any thread: a connect to one of n's addresses failed; look it up again
 * (at most once a second; a failing name keeps its backoff). */
void resolver_kick(struct resolver *r, struct dns_name *n);
/* Any thread: changes whenever n's addresses or failure do (atomic load). */
unsigned dns_name_gen(const struct dns_name *n);
/* Any thread: copy n's last good addresses (ports 0; none yet: n == 0) and
 * why it does not resolve ("" when it does); returns the generation read. */
unsigned dns_name_read(struct resolver *r, const struct dns_name *n, struct dw_addrset *addrs,
		       char *why, size_t whylen);
/* Any thread (/status): host's last good addresses as text ("" when none)
 * and why it does not resolve (""); false when host is not a looked-up name
 * (numeric, or unknown). */
bool resolver_describe(struct resolver *r, const char *host, char *addrs, size_t addrslen,
		       char *why, size_t whylen);

#endif
