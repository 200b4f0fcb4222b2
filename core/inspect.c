/*
 * inspect.c — message inspection in the core (see inspect.h): one pass of
 * a strict JSON scanner over the payload where it lies, looking only at
 * the top-level object's members whose names the inspector knows.
 *
 * The scanner keeps no tree and copies nothing: a stack of the open
 * containers (one byte each), and for each known name the JSON type of its
 * last value (duplicate names: the last one counts, as in lua-cjson) and,
 * for the type field, where its string lies. String bodies are skipped
 * sixteen bytes at a time with SSE2 where the machine has it.
 */
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "inspect.h"
#include "weir.h"

typedef struct {
    char        *name;
    size_t       len;
    unsigned     types;               /* WEIR_JSON_* bits accepted */
    int          required;
    char        *text;                /* what the client is told when this field is wrong */
} weir_ifield_t;

struct weir_inspector_s {
    int            refs;
    uint64_t       max_size;          /* bytes, 0: no limit */
    int            allow_binary;
    int            close_code;        /* after a refusal, 0: the message is dropped, no close */
    char          *problem;
    char          *text[WEIR_INSPECT_RULES];
    /* the top-level names looked for: [0] the type field, then the fields; 0 names: text is not looked into */
    weir_ifield_t  names[1 + WEIR_INSPECT_FIELDS];
    int            nnames;
    /* the accepted types: an open-addressing set of indexes + 1 into type_list */
    char         **type_list;
    size_t        *type_len;
    size_t         ntypes;
    uint32_t      *type_set;
    size_t         set_cap;           /* a power of two, at least twice ntypes; 0: any type */
};

/* ---- building ------------------------------------------------------------- */

static char *
weir_idup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d == NULL) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

weir_inspector_t *
weir_inspector_new(uint64_t max_size, int allow_binary, const char *type_field, const char *problem,
                   int close_code)
{
    weir_inspector_t *in = calloc(1, sizeof(*in));
    if (in == NULL) return NULL;
    in->refs = 1;
    in->max_size = max_size;
    in->allow_binary = allow_binary;
    in->close_code = close_code;
    in->problem = weir_idup(problem ? problem : "", problem ? strlen(problem) : 0);
    if (in->problem == NULL) goto failed;
    if (type_field != NULL) {
        size_t n = strlen(type_field);
        if (n == 0 || n > WEIR_INSPECT_NAME) goto failed;
        if ((in->names[0].name = weir_idup(type_field, n)) == NULL) goto failed;
        in->names[0].len = n;
        in->names[0].types = WEIR_JSON_STRING;
        in->names[0].required = 1;
        in->nnames = 1;
    }
    return in;

failed:
    weir_inspector_unref(in);
    return NULL;
}

static uint32_t
weir_ihash(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;            /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

/* Index + 1 of NAME[0..LEN) in IN's type list, 0 when it is not there. */
static size_t
weir_type_find(const weir_inspector_t *in, const uint8_t *name, size_t len)
{
    size_t mask = in->set_cap - 1;
    for (size_t i = weir_ihash(name, len) & mask;; i = (i + 1) & mask) {
        uint32_t k = in->type_set[i];
        if (k == 0) return 0;
        if (in->type_len[k - 1] == len && memcmp(in->type_list[k - 1], name, len) == 0) return k;
    }
}

static int
weir_type_index(weir_inspector_t *in)
{
    size_t cap = 8;
    while (cap < 2 * in->ntypes) cap *= 2;
    uint32_t *set = calloc(cap, sizeof(*set));
    if (set == NULL) return WEIR_ERROR;
    free(in->type_set);
    in->type_set = set;
    in->set_cap = cap;
    for (size_t k = 0; k < in->ntypes; k++) {
        size_t i = weir_ihash((const uint8_t *) in->type_list[k], in->type_len[k]) & (cap - 1);
        while (set[i] != 0) i = (i + 1) & (cap - 1);
        set[i] = (uint32_t) k + 1;
    }
    return WEIR_OK;
}

int
weir_inspector_type(weir_inspector_t *in, const char *name, size_t len)
{
    if (len > WEIR_INSPECT_NAME) return WEIR_ERROR;
    if (in->set_cap > 0 && weir_type_find(in, (const uint8_t *) name, len) != 0) return WEIR_OK;
    char **list = realloc(in->type_list, (in->ntypes + 1) * sizeof(*list));
    if (list == NULL) return WEIR_ERROR;
    in->type_list = list;
    size_t *lens = realloc(in->type_len, (in->ntypes + 1) * sizeof(*lens));
    if (lens == NULL) return WEIR_ERROR;
    in->type_len = lens;
    if ((list[in->ntypes] = weir_idup(name, len)) == NULL) return WEIR_ERROR;
    lens[in->ntypes++] = len;
    return weir_type_index(in);
}

int
weir_inspector_field(weir_inspector_t *in, const char *name, size_t len, unsigned types, int required)
{
    if (in->nnames == 0 || in->nnames > WEIR_INSPECT_FIELDS || len > WEIR_INSPECT_NAME) return WEIR_ERROR;
    for (int i = 0; i < in->nnames; i++) {
        if (in->names[i].len == len && memcmp(in->names[i].name, name, len) == 0) return WEIR_ERROR;
    }
    weir_ifield_t *f = &in->names[in->nnames];
    if ((f->name = weir_idup(name, len)) == NULL) return WEIR_ERROR;
    f->len = len;
    f->types = types & WEIR_JSON_ANY;
    f->required = required;
    in->nnames++;
    return WEIR_OK;
}

int
weir_inspector_message(weir_inspector_t *in, int rule, int field, const char *msg)
{
    char **slot;
    if (rule == WEIR_INSPECT_FIELD) {
        if (field < 0 || field + 1 >= in->nnames) return WEIR_ERROR;
        slot = &in->names[field + 1].text;
    } else if (rule > WEIR_INSPECT_PASS && rule < WEIR_INSPECT_RULES) {
        slot = &in->text[rule];
    } else {
        return WEIR_ERROR;
    }
    char *d = weir_idup(msg, strlen(msg));
    if (d == NULL) return WEIR_ERROR;
    free(*slot);
    *slot = d;
    return WEIR_OK;
}

void
weir_inspector_ref(weir_inspector_t *in)
{
    in->refs++;
}

void
weir_inspector_unref(weir_inspector_t *in)
{
    if (in == NULL || --in->refs > 0) return;
    free(in->problem);
    for (int i = 0; i < WEIR_INSPECT_RULES; i++) free(in->text[i]);
    for (int i = 0; i < in->nnames; i++) {
        free(in->names[i].name);
        free(in->names[i].text);
    }
    for (size_t k = 0; k < in->ntypes; k++) free(in->type_list[k]);
    free(in->type_list);
    free(in->type_len);
    free(in->type_set);
    free(in);
}

const char *
weir_inspector_problem(const weir_inspector_t *in)
{
    return in->problem;
}

const char *
weir_inspector_text(const weir_inspector_t *in, int rule, int field)
{
    const char *t = NULL;
    if (rule == WEIR_INSPECT_FIELD && field >= 0 && field + 1 < in->nnames) t = in->names[field + 1].text;
    else if (rule > WEIR_INSPECT_PASS && rule < WEIR_INSPECT_RULES) t = in->text[rule];
    return t ? t : "message refused";
}

int
weir_inspector_close_code(const weir_inspector_t *in)
{
    return in->close_code;
}

int
weir_inspector_wants(const weir_inspector_t *in, int opcode, int fin, uint64_t len)
{
    if (opcode == 1 ? in->nnames > 0 : !in->allow_binary) return 1;
    return in->max_size > 0 && (!fin || len > in->max_size);
}

/* ---- the scanner ---------------------------------------------------------- */

typedef struct {
    const weir_inspector_t *in;
    uint8_t        seen[1 + WEIR_INSPECT_FIELDS];    /* JSON type bits of each name's last value, 0: absent */
    const uint8_t *tstr;                             /* the type field's last string value (escaped) */
    size_t         tlen;
    int            tesc;                             /* it holds escapes */
} weir_scan_t;

static inline const uint8_t *
weir_json_ws(const uint8_t *p, const uint8_t *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

static int
weir_hex4(const uint8_t *p, const uint8_t *e)
{
    if (e - p < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') d = (c | 0x20) - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The end of the string whose body starts at P (after its opening quote):
 * just after its closing quote, or NULL when it is not a valid string. *ESC
 * is set when it holds an escape. */
static const uint8_t *
weir_json_string(const uint8_t *p, const uint8_t *e, int *esc)
{
    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
        while (e - p >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *) (const void *) p);
            __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                     _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v));
            unsigned bits = (unsigned) _mm_movemask_epi8(m);
            if (bits != 0) {
                p += __builtin_ctz(bits);
                break;
            }
            p += 16;
        }
#endif
        while (p < e && *p != '"' && *p != '\\' && *p >= 0x20) p++;
        if (p == e || *p < 0x20) return NULL;
        if (*p == '"') return p + 1;
        /* an escape */
        *esc = 1;
        if (e - p < 2) return NULL;
        switch (p[1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            p += 2;
            break;
        case 'u': {
            int cp = weir_hex4(p + 2, e);
            if (cp < 0 || (cp >= 0xdc00 && cp <= 0xdfff)) return NULL;
            p += 6;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                /* a high surrogate must be followed by a low one */
                if (e - p < 6 || p[0] != '\\' || p[1] != 'u') return NULL;
                int lo = weir_hex4(p + 2, e);
                if (lo < 0xdc00 || lo > 0xdfff) return NULL;
                p += 6;
            }
            break;
        }
        default:
            return NULL;
        }
    }
}

/* The end of the number at P, or NULL. *INTEGER: written without fraction or exponent. */
static const uint8_t *
weir_json_number(const uint8_t *p, const uint8_t *e, int *integer)
{
#define WEIR_DIGIT(q) ((q) < e && *(q) >= '0' && *(q) <= '9')
    if (p < e && *p == '-') p++;
    if (p == e) return NULL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (WEIR_DIGIT(p)) p++;
    else return NULL;
    *integer = 1;
    if (p < e && *p == '.') {
        p++;
        if (!WEIR_DIGIT(p)) return NULL;
        while (WEIR_DIGIT(p)) p++;
        *integer = 0;
    }
    if (p < e && (*p | 0x20) == 'e') {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!WEIR_DIGIT(p)) return NULL;
        while (WEIR_DIGIT(p)) p++;
        *integer = 0;
    }
    return p;
#undef WEIR_DIGIT
}

/* Append code point CP to OUT[*O..CAP) as UTF-8: 0, or -1 when it does not fit. */
static int
weir_utf8_put(uint8_t *out, size_t *o, size_t cap, uint32_t cp)
{
    uint8_t b[4];
    size_t n;
    if (cp < 0x80) { b[0] = (uint8_t) cp; n = 1; }
    else if (cp < 0x800) { b[0] = (uint8_t) (0xc0 | cp >> 6); b[1] = (uint8_t) (0x80 | (cp & 0x3f)); n = 2; }
    else if (cp < 0x10000) {
        b[0] = (uint8_t) (0xe0 | cp >> 12); b[1] = (uint8_t) (0x80 | ((cp >> 6) & 0x3f));
        b[2] = (uint8_t) (0x80 | (cp & 0x3f)); n = 3;
    } else {
        b[0] = (uint8_t) (0xf0 | cp >> 18); b[1] = (uint8_t) (0x80 | ((cp >> 12) & 0x3f));
        b[2] = (uint8_t) (0x80 | ((cp >> 6) & 0x3f)); b[3] = (uint8_t) (0x80 | (cp & 0x3f)); n = 4;
    }
    if (*o + n > cap) return -1;
    memcpy(out + *o, b, n);
    *o += n;
    return 0;
}

/* The string body S[0..N) (valid: weir_json_string passed it) without its
 * escapes, into OUT[0..CAP). Its length, or CAP + 1 when it is longer. */
static size_t
weir_json_unescape(const uint8_t *s, size_t n, uint8_t *out, size_t cap)
{
    size_t o = 0, i = 0;
    while (i < n) {
        uint32_t cp = s[i];
        if (cp != '\\') {
            if (o == cap) return cap + 1;
            out[o++] = s[i++];
            continue;
        }
        switch (s[i + 1]) {
        case 'b': cp = '\b'; i += 2; break;
        case 'f': cp = '\f'; i += 2; break;
        case 'n': cp = '\n'; i += 2; break;
        case 'r': cp = '\r'; i += 2; break;
        case 't': cp = '\t'; i += 2; break;
        case 'u':
            cp = (uint32_t) weir_hex4(s + i + 2, s + n);
            i += 6;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t) weir_hex4(s + i + 2, s + n) - 0xdc00);
                i += 6;
            }
            break;
        default: cp = s[i + 1]; i += 2; break;
        }
        if (weir_utf8_put(out, &o, cap, cp) != 0) return cap + 1;
    }
    return o;
}

/* Which of IN's names the member name S[0..N) is (ESC: it holds escapes): its index, or -1. */
static int
weir_name_slot(const weir_inspector_t *in, const uint8_t *s, size_t n, int esc)
{
    uint8_t buf[WEIR_INSPECT_NAME];
    if (esc) {
        n = weir_json_unescape(s, n, buf, sizeof(buf));
        if (n > sizeof(buf)) return -1;
        s = buf;
    }
    for (int i = 0; i < in->nnames; i++) {
        if (in->names[i].len == n && memcmp(in->names[i].name, s, n) == 0) return i;
    }
    return -1;
}

/* Scan P[0..E) as one JSON text. 0 when it is one (*TOP: its first byte),
 * -1 when not; what the known names hold is in SC. */
static int
weir_json_scan(weir_scan_t *sc, const uint8_t *p, const uint8_t *e, int *top)
{
    uint8_t stack[WEIR_INSPECT_DEPTH];      /* the open containers: '{' or '[' */
    int depth = 0, slot = -1, esc, integer;
    const uint8_t *s;

    p = weir_json_ws(p, e);
    if (p == e) return -1;
    *top = *p;

value:
    if (p == e) return -1;
    switch (*p) {
    case '{':
    case '[':
        if (depth == WEIR_INSPECT_DEPTH) return -1;
        if (slot >= 0) sc->seen[slot] = *p == '{' ? WEIR_JSON_OBJECT : WEIR_JSON_ARRAY;
        slot = -1;
        stack[depth++] = *p;
        p = weir_json_ws(p + 1, e);
        if (p < e && *p == (stack[depth - 1] == '{' ? '}' : ']')) {
            p++;
            depth--;
            goto after;
        }
        if (stack[depth - 1] == '{') goto key;
        goto value;
    case '"':
        esc = 0;
        s = p + 1;
        if ((p = weir_json_string(s, e, &esc)) == NULL) return -1;
        if (slot >= 0) {
            sc->seen[slot] = WEIR_JSON_STRING;
            if (slot == 0) {
                sc->tstr = s;
                sc->tlen = (size_t) (p - 1 - s);
                sc->tesc = esc;
            }
        }
        goto after;
    case 't':
        if (e - p < 4 || memcmp(p, "true", 4) != 0) return -1;
        p += 4;
        if (slot >= 0) sc->seen[slot] = WEIR_JSON_BOOLEAN;
        goto after;
    case 'f':
        if (e - p < 5 || memcmp(p, "false", 5) != 0) return -1;
        p += 5;
        if (slot >= 0) sc->seen[slot] = WEIR_JSON_BOOLEAN;
        goto after;
    case 'n':
        if (e - p < 4 || memcmp(p, "null", 4) != 0) return -1;
        p += 4;
        if (slot >= 0) sc->seen[slot] = WEIR_JSON_NULL;
        goto after;
    default:
        if ((p = weir_json_number(p, e, &integer)) == NULL) return -1;
        if (slot >= 0) sc->seen[slot] = WEIR_JSON_NUMBER | (integer ? WEIR_JSON_INTEGER : 0);
        goto after;
    }

after:
    slot = -1;
    p = weir_json_ws(p, e);
    if (depth == 0) return p == e ? 0 : -1;
    if (p == e) return -1;
    if (*p == ',') {
        p = weir_json_ws(p + 1, e);
        if (stack[depth - 1] == '{') goto key;
        goto value;
    }
    if (*p != (stack[depth - 1] == '{' ? '}' : ']')) return -1;
    p++;
    depth--;
    goto after;

key:
    if (p == e || *p != '"') return -1;
    esc = 0;
    s = p + 1;
    if ((p = weir_json_string(s, e, &esc)) == NULL) return -1;
    if (depth == 1) slot = weir_name_slot(sc->in, s, (size_t) (p - 1 - s), esc);
    p = weir_json_ws(p, e);
    if (p == e || *p != ':') return -1;
    p = weir_json_ws(p + 1, e);
    goto value;
}

int
weir_inspector_check(const weir_inspector_t *in, int opcode, const uint8_t *p, size_t n, int *field)
{
    if (in->max_size > 0 && n > in->max_size) return WEIR_INSPECT_TOO_BIG;
    if (opcode != 1) return in->allow_binary ? WEIR_INSPECT_PASS : WEIR_INSPECT_BINARY;
    if (in->nnames == 0) return WEIR_INSPECT_PASS;

    weir_scan_t sc;
    int top = 0;
    sc.in = in;
    memset(sc.seen, 0, (size_t) in->nnames);
    sc.tstr = NULL;
    sc.tlen = 0;
    sc.tesc = 0;
    if (weir_json_scan(&sc, p, p + n, &top) != 0) return WEIR_INSPECT_NOT_JSON;
    if (top != '{') return WEIR_INSPECT_NOT_OBJECT;
    if (sc.seen[0] != WEIR_JSON_STRING || sc.tlen == 0) return WEIR_INSPECT_NO_TYPE;
    if (in->set_cap > 0) {
        const uint8_t *t = sc.tstr;
        size_t tl = sc.tlen;
        uint8_t buf[WEIR_INSPECT_NAME];
        if (sc.tesc) {
            tl = weir_json_unescape(t, tl, buf, sizeof(buf));
            t = buf;
        }
        if (tl > WEIR_INSPECT_NAME || weir_type_find(in, t, tl) == 0) return WEIR_INSPECT_NOT_ALLOWED;
    }
    for (int i = 1; i < in->nnames; i++) {
        unsigned got = sc.seen[i];
        if (got == 0 ? in->names[i].required : (got & in->names[i].types) == 0) {
            if (field != NULL) *field = i - 1;
            return WEIR_INSPECT_FIELD;
        }
    }
    return WEIR_INSPECT_PASS;
}

const uint8_t *
weir_find(const uint8_t *p, size_t n, const uint8_t *needle, size_t k)
{
    if (k == 0) return p;
    if (n < k) return NULL;
    if (k == 1) return memchr(p, needle[0], n);
    size_t i = 0, last = n - k;               /* the last place the needle may start */
#ifdef __SSE2__
    const __m128i first = _mm_set1_epi8((char) needle[0]);
    const __m128i end = _mm_set1_epi8((char) needle[k - 1]);
    for (; i + 15 <= last; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *) (p + i));
        __m128i b = _mm_loadu_si128((const __m128i *) (p + i + k - 1));
        unsigned m = (unsigned) _mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, first), _mm_cmpeq_epi8(b, end)));
        while (m != 0) {
            unsigned j = (unsigned) __builtin_ctz(m);
            if (memcmp(p + i + j + 1, needle + 1, k - 2) == 0) return p + i + j;
            m &= m - 1;
        }
    }
#endif
    for (; i <= last; i++)
        if (p[i] == needle[0] && p[i + k - 1] == needle[k - 1] && memcmp(p + i + 1, needle + 1, k - 2) == 0)
            return p + i;
    return NULL;
}
