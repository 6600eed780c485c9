/*
 * tls — the OpenSSL contexts of one configuration snapshot, and the one way
 * every piece (the daemon's listeners, its proxy pools and mirror lanes, the
 * CLI's httpc) makes a TLS connection with them.
 *
 * Contexts are built when a configuration is loaded (config.c), so `-t` and
 * a reload read and check the certificates and keys, and a snapshot's
 * connections use its own contexts: a reload swaps them for new connections
 * while existing ones keep theirs (an SSL holds a reference to its context).
 *
 * Defaults (Mozilla "intermediate"): TLS 1.2 and 1.3, ECDHE with AES-GCM or
 * ChaCha20 for TLS 1.2, the client's cipher preference (no
 * SSL_OP_CIPHER_SERVER_PREFERENCE), session resumption on (server-side cache
 * and tickets), renegotiation refused.
 *
 * Not here: socket I/O (libevent's OpenSSL bufferevents in the daemon,
 * blocking SSL_read/SSL_write in httpc).
 */
#ifndef DW_TLS_H
#define DW_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "dw.h"

/*
 * A server context: cert (a PEM chain), key (its private key; they must
 * match), client_ca (NULL: no client certificate asked; else a PEM bundle:
 * every client must present a certificate it verifies). NULL with err
 * ("cert /path: ...") on any failure.
 */
SSL_CTX *tls_server_ctx_new(const char *cert, const char *key, const char *client_ca,
			    struct dw_err *err);

/*
 * A client context: ca_file (NULL: the system store), verify (false: any
 * certificate is accepted), cert and key (both NULL, or a client
 * certificate and its key). NULL with err on any failure.
 */
SSL_CTX *tls_client_ctx_new(const char *ca_file, bool verify, const char *cert, const char *key,
			    struct dw_err *err);

/*
 * A client SSL on ctx for a connection to host: SNI is sni (NULL: host;
 * never sent for an IP address), and the peer certificate must name host (a
 * DNS name or an IP address). NULL with err.
 */
SSL *tls_client_new(SSL_CTX *ctx, const char *host, const char *sni, struct dw_err *err);

/*
 * Why a handshake on ssl failed, for logs and dead-letter reasons:
 * "certificate verify failed: expired (certificate has expired)",
 * "... hostname mismatch (...)", "... unknown CA (...)", else the first
 * OpenSSL error queued (ssl_err: an ERR_get_error() value, 0: look at the
 * thread's queue). Writes into buf (always terminated) and returns it.
 */
const char *tls_failure(const SSL *ssl, unsigned long ssl_err, char *buf, size_t len);

#endif
