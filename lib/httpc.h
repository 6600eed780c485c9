/*
 * httpc — a small blocking HTTP/1.1 client for the CLI (replay, status).
 *
 * One request at a time, with deadlines: a connect timeout (non-blocking
 * connect + poll) and an overall timeout covering sending the request and
 * reading the whole response. Optional TLS through tls.h, as the daemon
 * makes it (the upstream's context or the system trust store, SNI, host
 * name check; a verification failure names its cause). Responses are parsed with the
 * strict http_parse module; bodies by Content-Length, chunked or until close.
 * One idle keep-alive connection per target (host, port, tls) is kept for
 * the next request when the server allows it; a reused connection that turns
 * out to be closed before any response byte is retried once on a new one.
 *
 * Not for the daemon: it blocks. Not thread-safe: one struct httpc per thread.
 */
#ifndef DW_HTTPC_H
#define DW_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

#include "dw.h"
#include "http_parse.h"

struct ssl_ctx_st; /* SSL_CTX */

struct httpc_header {
	const char *name;
	const char *value;
};

struct httpc_request {
	const char *host; /* name or address, no brackets */
	int port;
	bool tls;
	struct ssl_ctx_st *tls_ctx; /* https: the upstream's context (config.h); NULL: system store */
	const char *sni;	     /* https: SNI and the name to verify; NULL: host */
	const char *host_header;      /* Host value; NULL: host[:port] */
	const char *method;	      /* "GET", "POST", ... */
	const char *path;	      /* origin-form target, with query */
	const struct httpc_header *headers; /* extra headers (not Host/Content-Length) */
	size_t nheaders;
	const char *body; /* NULL: none */
	size_t body_len;
	int connect_timeout_ms; /* 0: 2000 */
	int timeout_ms;		/* whole exchange after connecting; 0: 5000 */
	size_t max_body;	/* response body cap; 0: 16 MiB */
};

struct httpc_response {
	int status;
	char *body; /* NUL-terminated for convenience; body_len excludes it */
	size_t body_len;
	struct http_head head; /* headers of the final response */
};
void httpc_response_clear(struct httpc_response *r);

struct httpc;
struct httpc *httpc_new(void);
void httpc_free(struct httpc *c); /* closes kept connections; NULL is a no-op */

/*
 * Send one request and read the whole response. Returns 0 with resp filled
 * (any HTTP status), or -1 with err for network, TLS, timeout or protocol
 * errors ("connect 127.0.0.1:8002: Connection refused", "timeout after
 * 2000 ms"). resp must be zeroed or cleared; clear it after use either way.
 */
int httpc_do(struct httpc *c, const struct httpc_request *req, struct httpc_response *resp,
	     struct dw_err *err) DW_MUSTCHECK;

#endif
