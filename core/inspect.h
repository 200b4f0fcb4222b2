/*
 * inspect.h — message inspection in the core: the checks a policy wants on
 * every message a client sends (its size, binary or text, a well-formed
 * JSON object, a type field from a set, required fields of given JSON
 * types), compiled once per configuration and run on the payload where it
 * lies, with no call into Lua and no decoded copy.
 *
 * A policy builds an inspector when its configuration loads
 * (lua/weir/inspect.lua) and attaches it to a connection at the handshake
 * (ctx:inspect); the relay runs it on each client message before the
 * chain's frame hooks and, when a check fails, sends the policy's error
 * JSON instead of forwarding the message (core/relay.c).
 *
 * The JSON accepted is RFC 8259's: no comments, no trailing commas, no
 * NaN/Infinity or hex numbers, no unescaped control characters, escapes
 * among \" \\ \/ \b \f \n \r \t \uXXXX with surrogates in pairs, nesting at
 * most WEIR_INSPECT_DEPTH deep, one value and only white space after it.
 * Text payloads reach it already checked to be UTF-8 by the relay.
 *
 * Inspectors are reference-counted and belong to one worker (one thread):
 * the Lua object holds one reference, each connection using it another.
 */
#ifndef WEIR_INSPECT_H
#define WEIR_INSPECT_H

#include <stddef.h>
#include <stdint.h>

#define WEIR_INSPECT_DEPTH   1000   /* deepest nesting accepted (lua-cjson's default too) */
#define WEIR_INSPECT_NAME    255    /* longest type or field name, in bytes */
#define WEIR_INSPECT_FIELDS  64     /* most fields one inspector checks */

/* What a check found: WEIR_INSPECT_PASS, or which rule the message broke
 * (also the index of the message told to the client). */
enum {
    WEIR_INSPECT_PASS = 0,
    WEIR_INSPECT_TOO_BIG,          /* longer than max_size */
    WEIR_INSPECT_BINARY,           /* a binary message, not allowed */
    WEIR_INSPECT_NOT_JSON,         /* text that is not well-formed JSON */
    WEIR_INSPECT_NOT_OBJECT,       /* JSON, but not an object */
    WEIR_INSPECT_NO_TYPE,          /* no type field, or not a non-empty string */
    WEIR_INSPECT_NOT_ALLOWED,      /* a type not in the set */
    WEIR_INSPECT_FIELD,            /* a field missing or of the wrong JSON type (which: *field) */
    WEIR_INSPECT_RULES
};

/* JSON types, as bits of a field's accepted set. */
enum {
    WEIR_JSON_STRING  = 1 << 0,
    WEIR_JSON_NUMBER  = 1 << 1,    /* any number; an integer one also sets WEIR_JSON_INTEGER */
    WEIR_JSON_INTEGER = 1 << 2,    /* a number written without fraction or exponent */
    WEIR_JSON_BOOLEAN = 1 << 3,
    WEIR_JSON_OBJECT  = 1 << 4,
    WEIR_JSON_ARRAY   = 1 << 5,
    WEIR_JSON_NULL    = 1 << 6,
    WEIR_JSON_ANY     = 0x7f,
};

typedef struct weir_inspector_s weir_inspector_t;

/*
 * A new inspector (one reference, the caller's): messages longer than
 * MAX_SIZE bytes are refused (0: no limit), binary ones unless
 * ALLOW_BINARY; text must be a JSON object whose TYPE_FIELD is a non-empty
 * string (NULL: text is not looked into). PROBLEM is the error JSON's type
 * and CLOSE_CODE the close code after a refusal (0: the message is dropped
 * and the connection stays open). NULL when out of memory or a name is
 * longer than WEIR_INSPECT_NAME.
 */
weir_inspector_t *weir_inspector_new(uint64_t max_size, int allow_binary, const char *type_field,
                                     const char *problem, int close_code);

/* Accept the type NAME[0..LEN) (the set starts empty: any type). WEIR_OK,
 * or WEIR_ERROR (too long, out of memory). */
int weir_inspector_type(weir_inspector_t *in, const char *name, size_t len);

/* Check the top-level field NAME[0..LEN): its value must be of one of the
 * JSON types in TYPES (WEIR_JSON_*), and present when REQUIRED. Needs a
 * TYPE_FIELD. WEIR_OK, or WEIR_ERROR (too long, too many, the type field). */
int weir_inspector_field(weir_inspector_t *in, const char *name, size_t len, unsigned types, int required);

/* The message told to the client when RULE (WEIR_INSPECT_*) is broken; for
 * WEIR_INSPECT_FIELD, FIELD is the field's index in the order they were
 * added. Copied. WEIR_OK or WEIR_ERROR. */
int weir_inspector_message(weir_inspector_t *in, int rule, int field, const char *msg);

void weir_inspector_ref(weir_inspector_t *in);
void weir_inspector_unref(weir_inspector_t *in);

/*
 * Check the whole message P[0..N) of OPCODE (1 text, 2 binary). Returns
 * WEIR_INSPECT_PASS or the rule broken; for WEIR_INSPECT_FIELD, *FIELD
 * (when not NULL) is the field's index.
 */
int weir_inspector_check(const weir_inspector_t *in, int opcode, const uint8_t *p, size_t n, int *field);

/* Does a message of OPCODE starting with a frame of LEN bytes (FIN: the
 * only one) need to be read whole to be checked? A binary message that is
 * allowed and within max_size (or without one) does not. */
int weir_inspector_wants(const weir_inspector_t *in, int opcode, int fin, uint64_t len);

/* What IN tells the client about RULE/FIELD: the error JSON's type,
 * message and the close code (0: none). */
const char *weir_inspector_problem(const weir_inspector_t *in);
const char *weir_inspector_text(const weir_inspector_t *in, int rule, int field);
int         weir_inspector_close_code(const weir_inspector_t *in);

/*
 * Where NEEDLE (K bytes) first occurs in P[0..N), or NULL: memmem's
 * answer, found by comparing the needle's first and last bytes at sixteen
 * positions at a time (SSE2) and only those candidates whole. The
 * interceptor's search of every client text message (relay.c).
 */
const uint8_t *weir_find(const uint8_t *p, size_t n, const uint8_t *needle, size_t k);

#endif
