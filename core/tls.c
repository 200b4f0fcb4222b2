/*
 * tls.c — TLS on both legs with OpenSSL 3: server contexts for wss://
 * listeners, client contexts (CA, verification, SNI) for wss:// backends.
 * The sockets stay non-blocking; proxy.c drives SSL_* calls from its poll
 * callbacks.
 */
#include <arpa/inet.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls.h"

static void
weir_tls_common(SSL_CTX *ctx)
{
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
}

const char *
weir_tls_error(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0) return "unknown TLS error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

SSL_CTX *
weir_tls_server_ctx(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) goto failed;
    weir_tls_common(ctx);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) goto failed;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) goto failed;
    if (SSL_CTX_check_private_key(ctx) != 1) goto failed;
    return ctx;

failed:
    {
        char c[256], e[512];
        weir_log(WEIR_LOG_ERROR, "cannot set up TLS listener", "\"cert\":\"%s\",\"error\":\"%s\"",
                 weir_log_str(c, sizeof(c), cert), weir_log_str(e, sizeof(e), weir_tls_error()));
    }
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *
weir_tls_client_ctx(const weir_endpoint_t *ep)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) goto failed;
    weir_tls_common(ctx);
    if (ep->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (ep->ca_file) {
            if (SSL_CTX_load_verify_locations(ctx, ep->ca_file, NULL) != 1) goto failed;
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            goto failed;
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;

failed:
    {
        char u[256], e[512];
        weir_log(WEIR_LOG_ERROR, "cannot set up TLS towards backend", "\"url\":\"%s\",\"error\":\"%s\"",
                 weir_log_str(u, sizeof(u), ep->url), weir_log_str(e, sizeof(e), weir_tls_error()));
    }
    SSL_CTX_free(ctx);
    return NULL;
}

int
weir_tls_client_setup(SSL *ssl, const weir_endpoint_t *ep)
{
    const char *name = ep->server_name ? ep->server_name : ep->host;
    unsigned char tmp[16];
    int is_ip = inet_pton(AF_INET, name, tmp) == 1 || inet_pton(AF_INET6, name, tmp) == 1;

    if (!is_ip && SSL_set_tlsext_host_name(ssl, name) != 1) return WEIR_ERROR;
    if (ep->verify) {
        if (is_ip) {
            X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
            if (X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1) return WEIR_ERROR;
        } else if (SSL_set1_host(ssl, name) != 1) {
            return WEIR_ERROR;
        }
    }
    return WEIR_OK;
}
