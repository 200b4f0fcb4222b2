/*
 * json.c — the message inspector (core/inspect.c) on a client's text:
 * its strict JSON scanner, the member names it looks up (escaped or not),
 * the type set and the field rules. The input is the payload, in a buffer
 * of exactly its size; its first byte, when odd, makes it a binary message.
 */
#include <stdlib.h>
#include <string.h>

#include "inspect.h"

static weir_inspector_t *fz_in;

static void
fz_inspector(void)
{
    fz_in = weir_inspector_new(4096, 0, "type", "/problems/invalid-message", 0);
    if (fz_in == NULL) abort();
    static const char *types[] = { "chat", "ping", "h\xc3\xa9", "" };
    for (int i = 0; i < 4; i++)
        if (weir_inspector_type(fz_in, types[i], strlen(types[i])) != 0) abort();
    if (weir_inspector_field(fz_in, "n", 1, WEIR_JSON_INTEGER | WEIR_JSON_NULL, 1) != 0) abort();
    if (weir_inspector_field(fz_in, "text", 4, WEIR_JSON_STRING, 0) != 0) abort();
    if (weir_inspector_field(fz_in, "\xe2\x82\xac", 3, WEIR_JSON_ANY, 0) != 0) abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fz_in == NULL) fz_inspector();
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL) abort();
    memcpy(buf, data, size);
    int field = -1;
    int opcode = size > 0 && (data[0] & 1) && data[0] != '{' && data[0] != '[' ? 2 : 1;
    int rule = weir_inspector_check(fz_in, opcode, buf, size, &field);
    if (rule < WEIR_INSPECT_PASS || rule >= WEIR_INSPECT_RULES) abort();
    if (rule == WEIR_INSPECT_FIELD && (field < 0 || field > 2)) abort();
    if (opcode == 2 && rule != WEIR_INSPECT_BINARY && rule != WEIR_INSPECT_TOO_BIG) abort();
    (void) weir_inspector_text(fz_in, rule, field);
    free(buf);
    return 0;
}
