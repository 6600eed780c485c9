/*
 * sockio.c — reading into a bufferevent's input buffer directly (server.h).
 */
#include "server.h"

#include <event2/buffer.h>
#include <sys/uio.h>

ssize_t evbuffer_read_unfrozen(struct evbuffer *in, evutil_socket_t fd, size_t want)
{
	struct evbuffer_iovec v[2];
	struct iovec iov[2];
	ssize_t n;
	int nv, e;

	evbuffer_unfreeze(in, 0);
	nv = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
	if (nv < 1) {
		evbuffer_freeze(in, 0);
		dw_oom(want); /* the policy of dw_malloc */
	}
	for (int i = 0; i < nv; i++) {
		iov[i].iov_base = v[i].iov_base;
		iov[i].iov_len = v[i].iov_len;
	}
	n = readv(fd, iov, nv);
	e = errno;
	if (n <= 0) {
		nv = 0;
	} else if ((size_t)n <= v[0].iov_len) {
		v[0].iov_len = (size_t)n;
		nv = 1;
	} else {
		v[1].iov_len = (size_t)n - v[0].iov_len;
	}
	evbuffer_commit_space(in, v, nv);
	evbuffer_freeze(in, 0);
	errno = e;
	return n;
}
