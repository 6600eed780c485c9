/*
 * addrset.c — see addrset.h.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "addrset.h"

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const struct sockaddr_in *)a;
		const struct sockaddr_in *y = (const struct sockaddr_in *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
		const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
		return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
	}
	return false;
}

static bool contains(const struct dw_addrset *s, const struct sockaddr_storage *ss)
{
	for (size_t i = 0; i < s->n; i++)
		if (same_addr(&s->a[i], ss))
			return true;
	return false;
}

bool dw_addrset_add(struct dw_addrset *s, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage ss;

	if (s->n >= DW_ADDRSET_MAX || len > sizeof(ss) ||
	    (sa->sa_family == AF_INET && len < sizeof(struct sockaddr_in)) ||
	    (sa->sa_family == AF_INET6 && len < sizeof(struct sockaddr_in6)) ||
	    (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
		return false;
	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, sa, len);
	if (contains(s, &ss))
		return false;
	s->a[s->n] = ss;
	s->len[s->n] = len;
	s->n++;
	return true;
}

bool dw_addrset_equal(const struct dw_addrset *a, const struct dw_addrset *b)
{
	if (a->n != b->n)
		return false;
	/* both are duplicate-free (dw_addrset_add), so inclusion is equality */
	for (size_t i = 0; i < a->n; i++)
		if (!contains(b, &a->a[i]))
			return false;
	return true;
}

const char *dw_addrset_text(const struct dw_addrset *s, char *buf, size_t len)
{
	size_t at = 0;

	if (len == 0)
		return buf;
	buf[0] = '\0';
	for (size_t i = 0; i < s->n && at + 1 < len; i++) {
		char a[INET6_ADDRSTRLEN] = "?";
		int k;

		if (s->a[i].ss_family == AF_INET)
			inet_ntop(AF_INET, &((const struct sockaddr_in *)&s->a[i])->sin_addr, a,
				  sizeof(a));
		else
			inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&s->a[i])->sin6_addr, a,
				  sizeof(a));
		k = snprintf(buf + at, len - at, s->a[i].ss_family == AF_INET6 ? "%s[%s]" : "%s%s",
			     i ? ", " : "", a);
		if (k < 0 || (size_t)k >= len - at) {
			buf[at] = '\0'; /* whole addresses only */
			break;
		}
		at += (size_t)k;
	}
	return buf;
}

bool dw_addr_numeric(const char *host, int port, struct dw_addrset *out)
{
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;

	memset(out, 0, sizeof(*out));
	memset(&sin, 0, sizeof(sin));
	memset(&sin6, 0, sizeof(sin6));
	if (inet_pton(AF_INET, host, &sin.sin_addr) == 1) {
		sin.sin_family = AF_INET;
		sin.sin_port = htons((uint16_t)port);
		return dw_addrset_add(out, (struct sockaddr *)&sin, sizeof(sin));
	}
	if (inet_pton(AF_INET6, host, &sin6.sin6_addr) == 1) {
		sin6.sin6_family = AF_INET6;
		sin6.sin6_port = htons((uint16_t)port);
		return dw_addrset_add(out, (struct sockaddr *)&sin6, sizeof(sin6));
	}
	return false;
}

int64_t dw_resolve_backoff_ms(int failures, int64_t interval_ms)
{
	int64_t cap = interval_ms < DW_RESOLVE_BACKOFF_MAX_MS ? interval_ms
							       : DW_RESOLVE_BACKOFF_MAX_MS;
	int64_t d = DW_RESOLVE_BACKOFF_FIRST_MS;

	if (cap < DW_RESOLVE_BACKOFF_FIRST_MS)
		cap = DW_RESOLVE_BACKOFF_FIRST_MS;
	for (int i = 1; i < failures && d < cap; i++)
		d *= 2;
	return d < cap ? d : cap;
}
