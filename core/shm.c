/*
 * shm.c — the host's shared memory: one-time tickets (see shm.h).
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <openssl/crypto.h>

#include "log.h"
#include "shm.h"
#include "weir.h"

typedef struct {
    uint8_t  hash[32];
    uint8_t  scope[32];
    uint64_t expires_ms;            /* monotonic clock; 0: free */
    uint32_t len;
    uint8_t  data[WEIR_TICKET_DATA];
} weir_ticket_slot_t;

typedef struct {
    pthread_mutex_t    lock;        /* process-shared, robust */
    weir_ticket_slot_t tickets[WEIR_TICKET_SLOTS];
} weir_shm_t;

static weir_shm_t *weir_shm;

static uint64_t
weir_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

int
weir_shm_init(void)
{
    if (weir_shm != NULL) return WEIR_OK;
    void *p = mmap(NULL, sizeof(weir_shm_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        weir_log(WEIR_LOG_ERROR, "cannot map shared memory", "\"error\":\"%s\"", strerror(errno));
        return WEIR_ERROR;
    }
    weir_shm_t *m = p;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&m->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        weir_log(WEIR_LOG_ERROR, "cannot map shared memory", "\"error\":\"%s\"", strerror(rc));
        munmap(p, sizeof(weir_shm_t));
        return WEIR_ERROR;
    }
    weir_shm = m;
    return WEIR_OK;
}

void
weir_shm_cleanup(void)
{
    if (weir_shm == NULL) return;
    munmap(weir_shm, sizeof(weir_shm_t));
    weir_shm = NULL;
}

static void
weir_shm_lock(void)
{
    if (pthread_mutex_lock(&weir_shm->lock) == EOWNERDEAD) {
        /* a worker died inside a critical section: slots are written whole
         * before expires_ms is set, so the state is usable as it is */
        pthread_mutex_consistent(&weir_shm->lock);
    }
}

static size_t
weir_ticket_home(const uint8_t *hash)
{
    uint32_t h;
    memcpy(&h, hash, sizeof(h));
    return h % WEIR_TICKET_SLOTS;
}

int
weir_ticket_put(const uint8_t *hash, const uint8_t *scope, const void *data, size_t len, uint64_t ttl_ms)
{
    if (weir_shm == NULL || len > WEIR_TICKET_DATA) return WEIR_ERROR;
    uint64_t now = weir_mono_ms();
    size_t home = weir_ticket_home(hash);
    int rc = WEIR_DECLINED;
    weir_shm_lock();
    for (size_t i = 0; i < WEIR_TICKET_PROBE; i++) {
        weir_ticket_slot_t *t = &weir_shm->tickets[(home + i) % WEIR_TICKET_SLOTS];
        if (t->expires_ms != 0 && t->expires_ms > now) continue;
        memcpy(t->hash, hash, 32);
        memcpy(t->scope, scope, 32);
        memcpy(t->data, data, len);
        t->len = (uint32_t) len;
        t->expires_ms = now + (ttl_ms ? ttl_ms : 1);
        rc = WEIR_OK;
        break;
    }
    pthread_mutex_unlock(&weir_shm->lock);
    return rc;
}

ssize_t
weir_ticket_take(const uint8_t *hash, const uint8_t *scope, void *out, size_t cap)
{
    if (weir_shm == NULL) return -1;
    uint64_t now = weir_mono_ms();
    size_t home = weir_ticket_home(hash);
    ssize_t n = -1;
    weir_shm_lock();
    for (size_t i = 0; i < WEIR_TICKET_PROBE; i++) {
        weir_ticket_slot_t *t = &weir_shm->tickets[(home + i) % WEIR_TICKET_SLOTS];
        if (t->expires_ms == 0 || t->expires_ms <= now) continue;
        if (CRYPTO_memcmp(t->hash, hash, 32) != 0) continue;
        if (CRYPTO_memcmp(t->scope, scope, 32) == 0 && t->len <= cap) {
            memcpy(out, t->data, t->len);
            n = (ssize_t) t->len;
            t->expires_ms = 0;
            OPENSSL_cleanse(t->data, t->len);
        }
        break;
    }
    pthread_mutex_unlock(&weir_shm->lock);
    return n;
}

/* ---- for policies (LuaJIT FFI) -------------------------------------------- */

int
weir_ffi_ticket_put(const unsigned char *hash, const unsigned char *scope, const char *data, size_t len,
                    double ttl_ms)
{
    return weir_ticket_put(hash, scope, data, len, ttl_ms > 0 ? (uint64_t) ttl_ms : 1);
}

int
weir_ffi_ticket_take(const unsigned char *hash, const unsigned char *scope, char *out, size_t cap)
{
    return (int) weir_ticket_take(hash, scope, out, cap);
}
