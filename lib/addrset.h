/*
 * addrset — the pure parts of upstream name resolution: a small set of
 * socket addresses (what one name resolved to), its comparison and text,
 * the numeric fast path, and the retry schedule of a failing lookup.
 *
 * The resolver thread (lib/resolver.c) owns the lookups and their
 * timing; everything here is a function of its arguments, so it is unit
 * tested (tests/unit/test_addrset.c). The caller owns every set.
 */
#ifndef DW_ADDRSET_H
#define DW_ADDRSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define DW_ADDRSET_MAX 8 /* addresses kept per name: more add nothing but memory */

struct dw_addrset {
	size_t n;
	struct sockaddr_storage a[DW_ADDRSET_MAX];
	socklen_t len[DW_ADDRSET_MAX];
};

/* Add sa (IPv4 or IPv6, other families are ignored) unless present or the
 * set is full. Returns true when it was added. */
bool dw_addrset_add(struct dw_addrset *s, const struct sockaddr *sa, socklen_t len);

/* Same addresses and ports, in any order (a DNS server that rotates its
 * answers does not make a change). */
bool dw_addrset_equal(const struct dw_addrset *a, const struct dw_addrset *b);

/* "127.0.0.1, [::1]" (without ports) into buf; what does not fit in len is
 * left off, address by address. Returns buf. */
const char *dw_addrset_text(const struct dw_addrset *s, char *buf, size_t len);

/* host is a numeric IPv4 or IPv6 address (no brackets): fill out with it and
 * port and return true; false for a name that needs a lookup. No system
 * call, no resolver: the fast path of every numeric upstream. */
bool dw_addr_numeric(const char *host, int port, struct dw_addrset *out);

/* How long to wait before the next lookup of a name that failed `failures`
 * times in a row (>= 1): 500 ms doubling, capped at the name's refresh
 * interval and at DW_RESOLVE_BACKOFF_MAX_MS. */
#define DW_RESOLVE_BACKOFF_FIRST_MS 500
#define DW_RESOLVE_BACKOFF_MAX_MS 30000
int64_t dw_resolve_backoff_ms(int failures, int64_t interval_ms);

#endif
