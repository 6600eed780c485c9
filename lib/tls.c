/*
 * tls.c — OpenSSL contexts and client connections (tls.h).
 */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

/* Mozilla "intermediate" (v5.7) for TLS 1.2; TLS 1.3 keeps OpenSSL's suites. */
#define CIPHERS_TLS12                                                                    \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                     \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                     \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                     \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"

/* The first queued OpenSSL error as a short phrase; clears the queue. */
static const char *ssl_reason(unsigned long e, char *buf, size_t len)
{
	const char *r;

	if (!e)
		e = ERR_peek_error();
	r = e ? ERR_reason_error_string(e) : NULL;
	if (r)
		snprintf(buf, len, "%s", r);
	else if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "unknown error");
	ERR_clear_error();
	return buf;
}

/* A file that cannot even be opened says why in errno's words. */
static int readable(const char *what, const char *path, struct dw_err *err)
{
	FILE *f = fopen(path, "r");

	if (!f) {
		dw_err_set(err, "%s \"%s\": cannot open: %s", what, path, strerror(errno));
		return -1;
	}
	fclose(f);
	return 0;
}

static int load_pair(SSL_CTX *ctx, const char *cert, const char *key, struct dw_err *err)
{
	char why[256];

	if (readable("cert", cert, err) < 0 || readable("key", key, err) < 0)
		return -1;
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		dw_err_set(err, "cert \"%s\": not a PEM certificate: %s", cert,
			   ssl_reason(0, why, sizeof(why)));
		return -1;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		unsigned long e = ERR_peek_last_error();

		if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
			dw_err_set(err, "key \"%s\" does not match cert \"%s\"", key, cert);
		else
			dw_err_set(err, "key \"%s\": not a PEM private key: %s", key,
				   ssl_reason(0, why, sizeof(why)));
		ERR_clear_error();
		return -1;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		dw_err_set(err, "key \"%s\" does not match cert \"%s\": %s", key, cert,
			   ssl_reason(0, why, sizeof(why)));
		return -1;
	}
	return 0;
}

static SSL_CTX *ctx_common(const SSL_METHOD *m, struct dw_err *err)
{
	SSL_CTX *ctx = SSL_CTX_new(m);
	char why[256];

	if (!ctx) {
		dw_err_set(err, "cannot create a TLS context: %s", ssl_reason(0, why, sizeof(why)));
		return NULL;
	}
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_cipher_list(ctx, CIPHERS_TLS12) != 1) {
		dw_err_set(err, "cannot set the TLS defaults: %s", ssl_reason(0, why, sizeof(why)));
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	return ctx;
}

SSL_CTX *tls_server_ctx_new(const char *cert, const char *key, const char *client_ca,
			    struct dw_err *err)
{
	static const unsigned char sid_ctx[] = "dualwrited";
	SSL_CTX *ctx = ctx_common(TLS_server_method(), err);
	char why[256];

	if (!ctx)
		return NULL;
	SSL_CTX_set_dh_auto(ctx, 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	/* Needed for resumption once client certificates are verified. */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	if (load_pair(ctx, cert, key, err) < 0)
		goto fail;
	if (client_ca) {
		STACK_OF(X509_NAME) *names;

		if (readable("client_ca", client_ca, err) < 0)
			goto fail;
		if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1 ||
		    !(names = SSL_load_client_CA_file(client_ca))) {
			dw_err_set(err, "client_ca \"%s\": no PEM certificate: %s", client_ca,
				   ssl_reason(0, why, sizeof(why)));
			goto fail;
		}
		SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, bool verify, const char *cert, const char *key,
			    struct dw_err *err)
{
	SSL_CTX *ctx = ctx_common(TLS_client_method(), err);
	char why[256];

	if (!ctx)
		return NULL;
	if (ca_file) {
		if (readable("ca_file", ca_file, err) < 0)
			goto fail;
		if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
			dw_err_set(err, "ca_file \"%s\": no PEM certificate: %s", ca_file,
				   ssl_reason(0, why, sizeof(why)));
			goto fail;
		}
	} else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
		dw_err_set(err, "cannot load the system trust store: %s",
			   ssl_reason(0, why, sizeof(why)));
		goto fail;
	}
	SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
	if ((cert || key) && load_pair(ctx, cert ? cert : "(none)", key ? key : "(none)", err) < 0)
		goto fail;
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static bool is_ip_literal(const char *h)
{
	struct in6_addr a6;
	struct in_addr a4;

	return inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1;
}

SSL *tls_client_new(SSL_CTX *ctx, const char *host, const char *sni, struct dw_err *err)
{
	const char *name = sni && *sni ? sni : host;
	char why[256];
	SSL *ssl = SSL_new(ctx);

	if (!ssl) {
		dw_err_set(err, "tls: %s", ssl_reason(0, why, sizeof(why)));
		return NULL;
	}
	/* SNI carries a DNS name only (RFC 6066); the macro casts away const
	 * and OpenSSL copies the name. */
	if ((!is_ip_literal(name) && SSL_set_tlsext_host_name(ssl, (char *)(uintptr_t)name) != 1) ||
	    SSL_set1_host(ssl, name) != 1) { /* a DNS name or, since 3.0, an address */
		dw_err_set(err, "tls: server name \"%s\": %s", name, ssl_reason(0, why, sizeof(why)));
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

static const char *verify_kind(long v)
{
	switch (v) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return "expired";
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return "not yet valid";
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		return "hostname mismatch";
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		return "unknown CA";
	case X509_V_ERR_CERT_REVOKED:
		return "revoked";
	default:
		return "invalid certificate";
	}
}

const char *tls_failure(const SSL *ssl, unsigned long ssl_err, char *buf, size_t len)
{
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	char why[256];

	if (v != X509_V_OK) {
		snprintf(buf, len, "TLS certificate verify failed: %s (%s)", verify_kind(v),
			 X509_verify_cert_error_string(v));
		ERR_clear_error();
		return buf;
	}
	if (!ssl_err && !ERR_peek_error()) {
		snprintf(buf, len, "TLS handshake failed: connection closed by the peer");
		return buf;
	}
	snprintf(buf, len, "TLS handshake failed: %s", ssl_reason(ssl_err, why, sizeof(why)));
	return buf;
}
