/*
 * wake.c — wake another thread's event loop with a set of request bits.
 *
 * libevent is used without its threading support (no lock around every
 * event_add on the hot path), so no thread touches another's event base.
 * Instead a thread ORs bits into an atomic word and writes an eventfd; the
 * owning loop reads the eventfd and handles the bits it took.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "server.h"

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct wake *w = arg;
	uint64_t v;
	unsigned bits;

	(void)what;
	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_warn("wake: read: %s", strerror(errno));
	bits = __atomic_exchange_n(&w->pending, 0, __ATOMIC_ACQ_REL);
	if (bits)
		w->cb(w->arg, bits);
}

int wake_init(struct wake *w, struct event_base *base, void (*cb)(void *arg, unsigned bits),
	      void *arg, struct dw_err *err)
{
	memset(w, 0, sizeof(*w));
	w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->fd < 0) {
		dw_err_set(err, "eventfd: %s", strerror(errno));
		return -1;
	}
	w->cb = cb;
	w->arg = arg;
	w->ev = event_new(base, w->fd, EV_READ | EV_PERSIST, wake_cb, w);
	if (!w->ev || event_add(w->ev, NULL) < 0) {
		dw_err_set(err, "wake: cannot register the eventfd");
		close(w->fd);
		w->fd = -1;
		return -1;
	}
	return 0;
}

void wake_post(struct wake *w, unsigned bits)
{
	uint64_t one = 1;

	__atomic_fetch_or(&w->pending, bits, __ATOMIC_ACQ_REL);
	/* The eventfd counter only saturates after 2^64-2 posts: it cannot fail
	 * in practice, and a failure would only delay, never lose, the bits. */
	if (write(w->fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("wake: write: %s", strerror(errno));
}

void wake_free(struct wake *w)
{
	if (w->ev)
		event_free(w->ev);
	if (w->fd >= 0)
		close(w->fd);
	w->ev = NULL;
	w->fd = -1;
}
