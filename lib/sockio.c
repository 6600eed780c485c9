/*
 * sockio.c — socket reads and writes straight on a bufferevent's buffers
 * (sockio.h).
 */
#include "sockio.h"

#include "dw.h"

#include <event2/buffer.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define WRITE_VECS 16

int evbuffer_write_unfrozen(struct evbuffer *out, evutil_socket_t fd)
{
	struct evbuffer_iovec v[WRITE_VECS];
	struct iovec iov[WRITE_VECS];
	ssize_t n;
	int nv = evbuffer_peek(out, -1, NULL, v, WRITE_VECS);

	if (nv <= 0)
		return 0;
	if (nv > WRITE_VECS)
		nv = WRITE_VECS;
	if (nv == 1) {
		n = send(fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL);
	} else {
		for (int i = 0; i < nv; i++) {
			iov[i].iov_base = v[i].iov_base;
			iov[i].iov_len = v[i].iov_len;
		}
		n = writev(fd, iov, nv);
	}
	if (n > 0) {
		int e = errno;
		evbuffer_unfreeze(out, 1);
		evbuffer_drain(out, (size_t)n);
		evbuffer_freeze(out, 1);
		errno = e;
	}
	return n < 0 ? -1 : (int)n;
}

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
	if (nv == 1) {
		n = recv(fd, v[0].iov_base, v[0].iov_len, 0);
	} else {
		for (int i = 0; i < nv; i++) {
			iov[i].iov_base = v[i].iov_base;
			iov[i].iov_len = v[i].iov_len;
		}
		n = readv(fd, iov, nv);
	}
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
