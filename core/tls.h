/*
 * tls.h — OpenSSL contexts for wss:// listeners and wss:// backends.
 */
#ifndef WEIR_TLS_H
#define WEIR_TLS_H

#include <openssl/ssl.h>

#include "conf.h"

/* A server context for a listener; NULL (and logged) on failure. */
SSL_CTX *weir_tls_server_ctx(const char *cert, const char *key);

/* A client context honouring EP's ca_file and verify; NULL on failure. */
SSL_CTX *weir_tls_client_ctx(const weir_endpoint_t *ep);

/* Prepare SSL for connecting to EP: SNI and, when verifying, the name. */
int weir_tls_client_setup(SSL *ssl, const weir_endpoint_t *ep);

/* The last OpenSSL error as text, for logs. */
const char *weir_tls_error(void);

#endif
