/*
 * sockio — direct socket I/O on a bufferevent's buffers, for the daemon's
 * proxy and the upstream pools (pool.c): cheaper than libevent's own read
 * and write paths (see below). No state.
 */
#ifndef DW_SOCKIO_H
#define DW_SOCKIO_H

#include <errno.h>
#include <event2/buffer.h>
#include <event2/util.h>
#include <stdbool.h>
#include <sys/types.h>

/* A failed non-blocking read or write that only means "not now". */
static inline bool errno_retriable(int e)
{
	return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

/*
 * Direct socket I/O on a bufferevent's buffers (sockio.c). A bufferevent
 * keeps its output's start and its input's end frozen so only its own paths
 * touch them; these thaw them around the call in the same way.
 *
 * Both use send(2)/recv(2) when one extent does (the usual case: a head and
 * body built in one chain, a read into one fresh extent) and writev/readv
 * only for several: the vector calls go through the VFS layer (iovec import,
 * file position lock, rw_verify_area), 3-4% of a proxied request's CPU that
 * nginx, which recv(2)s, did not spend.
 */

/* What a read asks for first: 1 KiB with libevent's chain header (48 bytes
 * on 64-bit), as nginx's client_header_buffer_size, which malloc serves from
 * its per-thread cache; a 4 KiB read took an 8 KiB chain from the arena on
 * every read. A read that fills it is followed by bigger ones. */
#define READ_FIRST 976

/* Write what the output holds (up to 16 chains). Returns the bytes written
 * or -1 with errno, as evbuffer_write. */
int evbuffer_write_unfrozen(struct evbuffer *out, evutil_socket_t fd);

/* Read up to want bytes from fd into the input, into reserved space:
 * unlike libevent's own read, no ioctl(FIONREAD) first. Returns what the
 * read returned, errno kept. */
ssize_t evbuffer_read_unfrozen(struct evbuffer *in, evutil_socket_t fd, size_t want);

#endif
