/*
 * conf.c — the configuration loader whole: the input is written to a file
 * and loaded as weir loads its configuration (weir_conf_load: weir.conf's
 * validation in a fresh Lua state, then the C side's copy of the
 * normalised table into weir_conf_t), then freed. Checks: a configuration
 * is either refused or copied with every API, version and endpoint field
 * the core reads present; nothing leaks (ASan). A configuration is a Lua
 * program, so an input with a loop or goto is skipped: one that never
 * ends is its author's to fix, not a parser's fault. weir_conf_load's
 * messages (why a configuration is refused) go to /dev/null.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"

#ifndef FZ_ROOT
#error "FZ_ROOT must name the project's root"
#endif

static char fz_file[64];

static void
fz_init(void)
{
    setenv("WEIR_LUA_DIR", FZ_ROOT "/lua", 1);
    snprintf(fz_file, sizeof(fz_file), "/tmp/weir-fuzz-conf-%d.lua", (int) getpid());
}

static int
fz_ident(uint8_t c)
{
    return c == '_' || (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

/* Does D[0..N) hold the word W (not inside a longer name, such as "for" in "format")? */
static int
fz_has(const uint8_t *d, size_t n, const char *w)
{
    size_t l = strlen(w);
    for (size_t i = 0; i + l <= n; i++) {
        if (memcmp(d + i, w, l) != 0) continue;
        if ((i == 0 || !fz_ident(d[i - 1])) && (i + l == n || !fz_ident(d[i + l]))) return 1;
    }
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int inited;
    if (!inited) {
        fz_init();
        inited = 1;
    }
    if (fz_has(data, size, "while") || fz_has(data, size, "repeat") || fz_has(data, size, "for")
        || fz_has(data, size, "goto") || fz_has(data, size, "function")) {
        return 0;
    }
    FILE *f = fopen(fz_file, "wb");
    if (f == NULL) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);

    fflush(stderr);
    int saved = dup(2), null = open("/dev/null", O_WRONLY);
    if (saved < 0 || null < 0) abort();
    dup2(null, 2);
    close(null);
    weir_conf_t *conf = NULL;
    int rc = weir_conf_load(fz_file, &conf);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    unlink(fz_file);

    if (rc != WEIR_OK) {
        if (conf != NULL) abort();          /* refused: nothing handed back */
        return 0;
    }
    if (conf == NULL || conf->napis == 0 || conf->nlisten == 0) abort();
    for (size_t a = 0; a < conf->napis; a++) {
        const weir_api_t *api = &conf->apis[a];
        if (api->name == NULL || api->context == NULL || api->nversions == 0) abort();
        if (strlen(api->context) != api->context_len) abort();
        for (size_t v = 0; v < api->nversions; v++) {
            const weir_version_t *ver = &api->versions[v];
            if (ver->version == NULL || ver->production == NULL || ver->production->path == NULL) abort();
        }
    }
    weir_conf_free(conf);
    return 0;
}
