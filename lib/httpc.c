/*
 * httpc.c — the blocking client of httpc.h. Sockets are non-blocking and
 * every wait is a poll() bounded by the request's deadline, so a silent peer
 * costs at most the timeout, never a hang. TLS goes through the same waits
 * (SSL_ERROR_WANT_READ/WRITE map to POLLIN/POLLOUT).
 */
#include "httpc.h"
#include "tls.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HEAD 65536

struct conn {
	char *key; /* "tls|host|port|sni|context" */
	int fd;
	SSL *ssl;
};

struct httpc {
	SSL_CTX *ctx;		/* created on the first https request */
	struct conn idle[8];	/* kept connections, one per target */
	size_t nidle;
};

void httpc_response_clear(struct httpc_response *r)
{
	if (!r)
		return;
	free(r->body);
	http_head_clear(&r->head);
	memset(r, 0, sizeof(*r));
}

struct httpc *httpc_new(void)
{
	return dw_calloc(1, sizeof(struct httpc));
}

static void conn_close(struct conn *k)
{
	if (k->ssl) {
		SSL_free(k->ssl);
		k->ssl = NULL;
	}
	if (k->fd >= 0)
		close(k->fd);
	k->fd = -1;
	free(k->key);
	k->key = NULL;
}

void httpc_free(struct httpc *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->nidle; i++)
		conn_close(&c->idle[i]);
	if (c->ctx)
		SSL_CTX_free(c->ctx);
	free(c);
}

static int remaining_ms(int64_t deadline)
{
	int64_t left = (deadline - dw_now_us()) / 1000;
	return left < 0 ? 0 : left > 1000000 ? 1000000 : (int)left;
}

/* Wait for fd to become ready for ev; 0, or -1 on timeout/error. */
static int wait_fd(int fd, short ev, int64_t deadline)
{
	for (;;) {
		struct pollfd p = {.fd = fd, .events = ev};
		int ms = remaining_ms(deadline);
		if (ms == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		int r = poll(&p, 1, ms);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

static void tls_err(struct dw_err *err, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e) {
		ERR_error_string_n(e, buf, sizeof(buf));
		dw_err_set(err, "%s: %s", what, buf);
	} else {
		dw_err_set(err, "%s: %s", what, errno ? strerror(errno) : "connection closed");
	}
	ERR_clear_error();
}

/* Drive an SSL call to completion; returns its positive result, 0 on a clean
 * EOF (reads), or -1. */
static int ssl_drive(struct conn *k, int (*fn)(SSL *, void *, int), void *buf, int n,
		     int64_t deadline, struct dw_err *err, const char *what, bool *timeout)
{
	for (;;) {
		ERR_clear_error();
		int r = fn(k->ssl, buf, n);
		if (r > 0)
			return r;
		int e = SSL_get_error(k->ssl, r);
		short ev;
		if (e == SSL_ERROR_WANT_READ)
			ev = POLLIN;
		else if (e == SSL_ERROR_WANT_WRITE)
			ev = POLLOUT;
		else if (e == SSL_ERROR_ZERO_RETURN)
			return 0;
		else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0)
			return 0; /* EOF without close_notify: treat as close */
		else {
			tls_err(err, what);
			return -1;
		}
		if (wait_fd(k->fd, ev, deadline) < 0) {
			*timeout = errno == ETIMEDOUT;
			dw_err_set(err, "%s: %s", what, strerror(errno));
			return -1;
		}
	}
}

static int ssl_read_fn(SSL *s, void *b, int n)
{
	return SSL_read(s, b, n);
}

static int ssl_write_fn(SSL *s, void *b, int n)
{
	return SSL_write(s, b, n);
}

static int ssl_connect_fn(SSL *s, void *b, int n)
{
	(void)b;
	(void)n;
	return SSL_connect(s);
}

/* Write all of p; -1 with err (and *timeout when the deadline passed). */
static int io_write(struct conn *k, const char *p, size_t n, int64_t deadline,
		    struct dw_err *err, bool *timeout)
{
	while (n) {
		if (k->ssl) {
			int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
			errno = 0;
			int r = ssl_drive(k, ssl_write_fn, (void *)(uintptr_t)p, chunk, deadline, err,
					  "send", timeout);
			if (r <= 0) {
				if (r == 0)
					dw_err_set(err, "send: connection closed");
				return -1;
			}
			p += r;
			n -= (size_t)r;
			continue;
		}
		ssize_t w = send(k->fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (wait_fd(k->fd, POLLOUT, deadline) < 0) {
				*timeout = errno == ETIMEDOUT;
				dw_err_set(err, "send: %s", strerror(errno));
				return -1;
			}
			continue;
		}
		dw_err_set(err, "send: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Read some bytes: >0, 0 on EOF, -1 with err. */
static ssize_t io_read(struct conn *k, char *p, size_t n, int64_t deadline, struct dw_err *err,
		       bool *timeout)
{
	if (k->ssl) {
		errno = 0;
		return ssl_drive(k, ssl_read_fn, p, n > (1u << 30) ? 1 << 30 : (int)n, deadline, err,
				 "receive", timeout);
	}
	for (;;) {
		ssize_t r = recv(k->fd, p, n, 0);
		if (r >= 0)
			return r;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (wait_fd(k->fd, POLLIN, deadline) < 0) {
				*timeout = errno == ETIMEDOUT;
				dw_err_set(err, "receive: %s", strerror(errno));
				return -1;
			}
			continue;
		}
		dw_err_set(err, "receive: %s", strerror(errno));
		return -1;
	}
}

static int tcp_connect(const struct httpc_request *req, int64_t deadline, int ms,
		       struct dw_err *err)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *a;
	char port[16];
	int fd = -1, rc, last = 0;

	snprintf(port, sizeof(port), "%d", req->port);
	rc = getaddrinfo(req->host, port, &hints, &ai);
	if (rc) {
		dw_err_set(err, "connect %s:%d: %s", req->host, req->port, gai_strerror(rc));
		return -1;
	}
	for (a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    a->ai_protocol);
		if (fd < 0) {
			last = errno;
			continue;
		}
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			if (wait_fd(fd, POLLOUT, deadline) == 0) {
				int soerr = 0;
				socklen_t sl = sizeof(soerr);
				getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
				if (soerr == 0)
					break;
				last = soerr;
			} else {
				last = errno;
			}
		} else {
			last = errno;
		}
		close(fd);
		fd = -1;
		if (last == ETIMEDOUT)
			break;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		if (last == ETIMEDOUT)
			dw_err_set(err, "connect %s:%d: timeout after %d ms", req->host, req->port,
				   ms);
		else
			dw_err_set(err, "connect %s:%d: %s", req->host, req->port, strerror(last));
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static int tls_start(struct httpc *c, struct conn *k, const struct httpc_request *req,
		     int64_t deadline, int ms, struct dw_err *err)
{
	char what[300], why[300];
	bool timeout = false;
	SSL_CTX *ctx = req->tls_ctx;

	if (!ctx) {
		if (!c->ctx && !(c->ctx = tls_client_ctx_new(NULL, true, NULL, NULL, err)))
			return -1;
		ctx = c->ctx;
	}
	k->ssl = tls_client_new(ctx, req->host, req->sni, err);
	if (!k->ssl)
		return -1;
	if (SSL_set_fd(k->ssl, k->fd) != 1) {
		tls_err(err, "tls");
		return -1;
	}
	snprintf(what, sizeof(what), "tls %s:%d", req->host, req->port);
	errno = 0;
	if (ssl_drive(k, ssl_connect_fn, NULL, 0, deadline, err, what, &timeout) <= 0) {
		if (timeout)
			dw_err_set(err, "%s: timeout after %d ms", what, ms);
		else if (SSL_get_verify_result(k->ssl) != X509_V_OK)
			dw_err_set(err, "%s: %s", what, tls_failure(k->ssl, 0, why, sizeof(why)));
		return -1;
	}
	return 0;
}

static char *conn_key(const struct httpc_request *req)
{
	char *s;

	if (asprintf(&s, "%d|%s|%d|%s|%p", req->tls, req->host, req->port,
		     req->sni ? req->sni : "", (void *)req->tls_ctx) < 0)
		abort();
	return s;
}

/* Take a kept connection for this target, or open a new one. */
static int conn_get(struct httpc *c, const struct httpc_request *req, struct conn *k,
		    bool *reused, struct dw_err *err)
{
	char *key = conn_key(req);
	int cms = req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 2000;
	int64_t deadline = dw_now_us() + (int64_t)cms * 1000;

	for (size_t i = 0; i < c->nidle; i++) {
		if (strcmp(c->idle[i].key, key) == 0) {
			*k = c->idle[i];
			c->idle[i] = c->idle[--c->nidle];
			free(key);
			*reused = true;
			return 0;
		}
	}
	*reused = false;
	k->key = key;
	k->ssl = NULL;
	k->fd = tcp_connect(req, deadline, cms, err);
	if (k->fd < 0)
		goto fail;
	if (req->tls && tls_start(c, k, req, deadline, cms, err) < 0)
		goto fail;
	return 0;
fail:
	conn_close(k);
	return -1;
}

static void conn_keep(struct httpc *c, struct conn *k)
{
	if (c->nidle == DW_ARRAY_LEN(c->idle)) {
		conn_close(&c->idle[0]);
		c->idle[0] = c->idle[--c->nidle];
	}
	c->idle[c->nidle++] = *k;
	k->fd = -1;
	k->ssl = NULL;
	k->key = NULL;
}

struct growbuf {
	char *p;
	size_t len, cap, max;
	bool overflow;
};

static void gb_add(struct growbuf *g, const char *p, size_t n)
{
	if (g->len + n > g->max) {
		g->overflow = true;
		return;
	}
	if (g->len + n + 1 > g->cap) {
		size_t cap = g->cap ? g->cap : 4096;
		while (cap < g->len + n + 1)
			cap *= 2;
		g->p = dw_realloc(g->p, cap);
		g->cap = cap;
	}
	memcpy(g->p + g->len, p, n);
	g->len += n;
	g->p[g->len] = '\0';
}

static void gb_emit(void *arg, const char *p, size_t n)
{
	gb_add(arg, p, n);
}

static char *build_request(const struct httpc_request *req, size_t *len)
{
	struct growbuf g = {.max = SIZE_MAX};
	char line[1024];
	int n;

	n = snprintf(line, sizeof(line), "%s %s HTTP/1.1\r\n", req->method,
		     req->path && req->path[0] ? req->path : "/");
	gb_add(&g, line, (size_t)n > sizeof(line) - 1 ? sizeof(line) - 1 : (size_t)n);
	if (req->host_header) {
		gb_add(&g, "Host: ", 6);
		gb_add(&g, req->host_header, strlen(req->host_header));
		gb_add(&g, "\r\n", 2);
	} else {
		bool v6 = strchr(req->host, ':') != NULL;
		bool dflt = req->port == (req->tls ? 443 : 80);
		snprintf(line, sizeof(line), "Host: %s%s%s", v6 ? "[" : "", req->host,
			     v6 ? "]" : "");
		gb_add(&g, line, strlen(line));
		if (!dflt) {
			n = snprintf(line, sizeof(line), ":%d", req->port);
			gb_add(&g, line, (size_t)n);
		}
		gb_add(&g, "\r\n", 2);
	}
	for (size_t i = 0; i < req->nheaders; i++) {
		gb_add(&g, req->headers[i].name, strlen(req->headers[i].name));
		gb_add(&g, ": ", 2);
		gb_add(&g, req->headers[i].value, strlen(req->headers[i].value));
		gb_add(&g, "\r\n", 2);
	}
	if (req->body || !strcmp(req->method, "POST") || !strcmp(req->method, "PUT") ||
	    !strcmp(req->method, "PATCH")) {
		n = snprintf(line, sizeof(line), "Content-Length: %zu\r\n", req->body_len);
		gb_add(&g, line, (size_t)n);
	}
	gb_add(&g, "\r\n", 2);
	if (req->body && req->body_len)
		gb_add(&g, req->body, req->body_len);
	*len = g.len;
	return g.p;
}

/*
 * One attempt on connection k. *fresh_fail: the connection failed before a
 * single response byte arrived (a stale keep-alive connection looks like
 * that), so the caller may retry on a new one.
 */
static int exchange(struct conn *k, const struct httpc_request *req, const char *wire,
		    size_t wirelen, int64_t deadline, int tms, struct httpc_response *resp,
		    bool *keep, bool *fresh_fail, struct dw_err *err)
{
	struct growbuf in = {.max = SIZE_MAX};
	struct growbuf body = {.max = req->max_body ? req->max_body : 16u << 20};
	struct http_scanner sc;
	size_t skip = 0, head_len = 0, start = 0, avail;
	enum http_body_kind kind;
	bool timeout = false;
	int status, rc = -1;
	char tmp[16384];

	*keep = false;
	*fresh_fail = false;
	if (io_write(k, wire, wirelen, deadline, err, &timeout) < 0) {
		*fresh_fail = !timeout;
		goto out;
	}
	/* The head, skipping interim 1xx responses. */
	for (;;) {
		http_scanner_init(&sc);
		for (;;) {
			int r = in.len > start
					? http_scan_head(&sc, in.p + start, in.len - start, MAX_HEAD,
							 &skip, &head_len, &status, err)
					: HTTP_INCOMPLETE;
			if (r == HTTP_OK)
				break;
			if (r == HTTP_ERROR) {
				dw_err_prefix(err, "bad response");
				goto out;
			}
			ssize_t n = io_read(k, tmp, sizeof(tmp), deadline, err, &timeout);
			if (n < 0)
				goto out;
			if (n == 0) {
				*fresh_fail = in.len == 0;
				dw_err_set(err, "connection closed before the response%s",
					   in.len ? " was complete" : "");
				goto out;
			}
			gb_add(&in, tmp, (size_t)n);
		}
		http_head_clear(&resp->head);
		if (http_parse_response(&resp->head, in.p + start + skip, head_len, &status, err) !=
		    HTTP_OK) {
			dw_err_prefix(err, "bad response");
			goto out;
		}
		start += skip + head_len;
		if (resp->head.status >= 200 || resp->head.status == 101)
			break;
	}
	resp->status = resp->head.status;
	kind = http_response_body_kind(&resp->head,
				       http_method_from(req->method, strlen(req->method)));
	avail = in.len - start;
	switch (kind) {
	case HTTP_BODY_NONE:
		*keep = avail == 0;
		break;
	case HTTP_BODY_LENGTH: {
		uint64_t want = (uint64_t)resp->head.content_length;
		if (want > body.max) {
			dw_err_set(err, "response body of %" PRIu64 " bytes is too large", want);
			goto out;
		}
		gb_add(&body, in.p + start, avail < want ? avail : (size_t)want);
		while (body.len < want) {
			ssize_t n = io_read(k, tmp, sizeof(tmp), deadline, err, &timeout);
			if (n < 0)
				goto out;
			if (n == 0) {
				dw_err_set(err, "connection closed in the response body");
				goto out;
			}
			size_t take = (size_t)n < want - body.len ? (size_t)n : (size_t)(want - body.len);
			gb_add(&body, tmp, take);
		}
		*keep = avail <= want;
		break;
	}
	case HTTP_BODY_CHUNKED: {
		struct http_chunked ch;
		size_t used;
		int r;
		http_chunked_init(&ch, 8192);
		r = avail ? http_chunked_decode(&ch, in.p + start, avail, &used, gb_emit, &body, err)
			  : HTTP_INCOMPLETE;
		while (r == HTTP_INCOMPLETE) {
			ssize_t n = io_read(k, tmp, sizeof(tmp), deadline, err, &timeout);
			if (n < 0)
				goto out;
			if (n == 0) {
				dw_err_set(err, "connection closed in the response body");
				goto out;
			}
			avail = (size_t)n;
			r = http_chunked_decode(&ch, tmp, (size_t)n, &used, gb_emit, &body, err);
		}
		if (r != HTTP_OK) {
			dw_err_prefix(err, "bad chunked response body");
			goto out;
		}
		*keep = used == avail;
		break;
	}
	case HTTP_BODY_UNTIL_CLOSE:
		gb_add(&body, in.p + start, avail);
		for (;;) {
			ssize_t n = io_read(k, tmp, sizeof(tmp), deadline, err, &timeout);
			if (n < 0)
				goto out;
			if (n == 0)
				break;
			gb_add(&body, tmp, (size_t)n);
			if (body.overflow)
				break;
		}
		break;
	}
	if (body.overflow) {
		dw_err_set(err, "response body larger than %zu bytes", body.max);
		goto out;
	}
	*keep = *keep && http_keep_alive(&resp->head);
	resp->body = body.p ? body.p : dw_calloc(1, 1);
	resp->body_len = body.len;
	body.p = NULL;
	rc = 0;
out:
	if (rc < 0 && timeout)
		dw_err_set(err, "timeout after %d ms", tms);
	free(in.p);
	free(body.p);
	return rc;
}

int httpc_do(struct httpc *c, const struct httpc_request *req, struct httpc_response *resp,
	     struct dw_err *err)
{
	int tms = req->timeout_ms > 0 ? req->timeout_ms : 5000;
	size_t wirelen;
	char *wire = build_request(req, &wirelen);
	int rc = -1;

	for (int attempt = 0; attempt < 2; attempt++) {
		struct conn k = {.fd = -1};
		bool reused, keep, fresh_fail;
		if (conn_get(c, req, &k, &reused, err) < 0)
			break;
		int64_t deadline = dw_now_us() + (int64_t)tms * 1000;
		httpc_response_clear(resp);
		rc = exchange(&k, req, wire, wirelen, deadline, tms, resp, &keep, &fresh_fail, err);
		if (rc == 0 && keep)
			conn_keep(c, &k);
		else
			conn_close(&k);
		if (rc == 0 || !(reused && fresh_fail))
			break;
	}
	if (rc < 0 && req->host && !strstr(err->msg, req->host))
		dw_err_prefix(err, "%s %s:%d", req->method, req->host, req->port);
	free(wire);
	return rc;
}
