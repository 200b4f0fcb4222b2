/*
 * wsload — the benchmark's WebSocket load generator.
 *
 * Three modes, one epoll loop, one thread:
 *
 *   echo     (default) open -c connections, keep -w messages in flight on
 *            each, for -d seconds (after -W seconds of warm-up) or until -n
 *            messages were sent; every echo is checked against what was sent
 *            and its round-trip time recorded.
 *   connect  -c slots each repeating: connect, upgrade, close handshake;
 *            measures handshakes per second and the upgrade latency
 *            (connect() to the 101 parsed).
 *   idle     open -c connections, print a "ready" JSON line once all are
 *            up, hold them until SIGUSR1, SIGINT or SIGTERM (or -d seconds),
 *            then close them all.
 *
 * Client frames are masked with a fresh key each (RFC 6455 5.3). A message's
 * payload is its 64-bit sequence number (connection id in the top 24 bits)
 * followed by a pattern whose phase depends on that number; with -j it is a
 * JSON object instead, {"type":"bench","seq":N,"pad":"..."}, padded with the
 * pattern to exactly -s bytes (for gateways that validate JSON messages). An
 * echo that differs in any byte, or arrives out of order, is a mismatch. Errors are
 * counted by kind: connect failures, handshake answers by HTTP status,
 * closes by code, connections lost without a close, mismatches, messages
 * never echoed. The exit status is 1 when any error was counted.
 *
 * Every handshake can carry extra headers (-H, e.g. an API key), and one
 * more that changes from handshake to handshake (-T FILE: the file's lines
 * taken in turn, e.g. a different bearer token each time).
 *
 * Output: human text on stderr (unless -q), then one JSON line on stdout.
 */
#include "wsbench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define WSLOAD_EVENTS       512
#define WSLOAD_READ_MIN     16384        /* free bytes offered to each read() */
#define WSLOAD_MAX_HEAD     16384        /* bytes of a handshake answer */
#define WSLOAD_DRAIN_NS     5000000000ull  /* wait for in-flight echoes */
#define WSLOAD_CLOSE_NS     5000000000ull  /* wait for close answers */
#define WSLOAD_HS_NS        10000000000ull /* connect + upgrade deadline */
#define WSLOAD_PAT_PERIOD   251          /* pattern phases */
#define WSLOAD_SEQ_LEN      16           /* payload prefix: seq, 16 hex digits */
#define WSLOAD_JSON_HEAD    52           /* -j: {"type":"bench","seq":N,"pad":" with
                                            N of up to 20 digits, plus the "} */
#define WSLOAD_MAX_STATUS   16           /* distinct HTTP statuses / close codes kept */

typedef enum { M_ECHO, M_CONNECT, M_IDLE } wsload_mode_e;
typedef enum { S_NONE, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSING, S_DONE } wsload_state_e;
typedef enum { P_OPENING, P_RUNNING, P_HOLD, P_DRAINING, P_CLOSING, P_DONE } wsload_phase_e;

typedef struct {
    int       fd;
    uint32_t  id;                        /* 0 .. conns-1 */
    int       state;                     /* wsload_state_e */
    uint32_t  events;                    /* epoll mask registered */
    wb_buf_t  in;                        /* received, not yet parsed */
    wb_buf_t  out;                       /* queued for write() */
    wb_buf_t  msg;                       /* fragments of a message being assembled */
    int       msg_op;                    /* opcode of that message, -1 when none */
    uint64_t  next;                      /* number of the next message to send */
    uint64_t  expect;                    /* number of the next echo expected */
    uint64_t *sent_at;                   /* [window] send time (ns) by number % window */
    uint64_t  t_connect;                 /* connect() time (ns) */
    char      accept[29];                /* the Sec-WebSocket-Accept expected */
} wsload_conn_t;

typedef struct {
    int      key;                        /* HTTP status or close code */
    uint64_t n;
} wsload_count_t;

/* ---- options -------------------------------------------------------------- */

static wsload_mode_e opt_mode = M_ECHO;
static int           opt_conns = 1;
static int           opt_window = 1;
static size_t        opt_size = 64;
static double        opt_duration = 5;
static double        opt_warmup = 0;
static uint64_t      opt_count = 0;
static int           opt_binary = 0;
static int           opt_json = 0;       /* -j: payloads are JSON objects */
static int           opt_quiet = 0;
static int           opt_hist = 0;             /* -L */
static int           opt_rate = 200;     /* handshakes in progress at once */
static int           opt_reconnect = 0;  /* -R: echo: a connection the server drops is counted apart and opened again */
static const char   *opt_label = "";
static char          opt_headers[8192];  /* extra request headers, CRLF-ended */
static size_t        opt_headers_len = 0;
static char        **opt_rr;             /* -T: header lines, one per handshake in turn */
static size_t       *opt_rr_len;
static size_t        opt_rr_n = 0, opt_rr_max = 0, opt_rr_next = 0;
static char          opt_host[256];
static char          opt_hostport[300];
static int           opt_port = 80;
static char          opt_path[2048] = "/";
static struct sockaddr_in opt_addr;

/* ---- state ------------------------------------------------------------------ */

static int              ep;
static wsload_conn_t   *conns;
static int              phase = P_OPENING;
static unsigned char   *pattern;         /* opt_size + WSLOAD_PAT_PERIOD bytes */
static unsigned char   *jpattern;        /* -j: the same, without the quote and backslash */
static unsigned char   *scratch;         /* one payload being built */
static wb_hist_t        hist;
static volatile sig_atomic_t got_signal = 0;

static uint64_t t_begin, t_measure, t_end, t_last, t_deadline;
static int      n_pending_open;          /* connections not yet open or failed */
static int      n_inprogress;            /* connects/handshakes in progress */
static int      n_next_open;             /* next connection index to start */
static int      n_open;                  /* open now */
static int      n_opened;                /* opened successfully, total */
static int      n_active;                /* sockets existing */
static uint64_t n_sent, n_recv, n_measured, bytes_measured;
static uint64_t n_hs, n_hs_measured;     /* connect mode: cycles completed */
static uint64_t n_dropped, n_dropped_lost; /* -R: open connections the server dropped, their messages in flight */

static uint64_t err_connect, err_handshake_eof, err_bad_accept, err_eof;
static uint64_t err_mismatch, err_lost, err_protocol, err_timeout;
static wsload_count_t err_status[WSLOAD_MAX_STATUS];
static wsload_count_t err_close[WSLOAD_MAX_STATUS];

static void count_key(wsload_count_t *t, int key)
{
    for (int i = 0; i < WSLOAD_MAX_STATUS; i++) {
        if (t[i].n == 0 || t[i].key == key) {
            t[i].key = key;
            t[i].n++;
            return;
        }
    }
    t[WSLOAD_MAX_STATUS - 1].n++;        /* table full: lump into the last */
}

static uint64_t count_sum(const wsload_count_t *t)
{
    uint64_t s = 0;
    for (int i = 0; i < WSLOAD_MAX_STATUS; i++)
        s += t[i].n;
    return s;
}

static uint64_t errors_total(void)
{
    return err_connect + err_handshake_eof + err_bad_accept + err_eof
           + err_mismatch + err_lost + err_protocol + err_timeout
           + count_sum(err_status) + count_sum(err_close);
}

/* ---- payloads ------------------------------------------------------------- */

static void pattern_init(void)
{
    size_t n = opt_size + WSLOAD_PAT_PERIOD;
    pattern = malloc(n);
    scratch = malloc(opt_size);
    for (size_t i = 0; i < n; i++) {
        /* printable ASCII so that text frames are valid UTF-8 */
        pattern[i] = opt_binary ? (unsigned char)(i * 131 + (i >> 8))
                                : (unsigned char)(' ' + (i * 7 + i / 89) % 95);
    }
    if (opt_json) {
        /* the JSON string "pad": printable ASCII but the quote and the
         * backslash, so that it needs no escape */
        static const char skip[] = "\"\\";
        char alpha[95];
        int na = 0;
        for (int ch = ' '; ch <= '~'; ch++)
            if (strchr(skip, ch) == NULL)
                alpha[na++] = (char)ch;
        jpattern = malloc(n);
        for (size_t i = 0; i < n; i++)
            jpattern[i] = (unsigned char)alpha[(i * 7 + i / 89) % (size_t)na];
    }
}

static inline uint64_t msg_seq(const wsload_conn_t *c, uint64_t n)
{
    return ((uint64_t)c->id << 40) | (n & ((1ull << 40) - 1));
}

static void seq_encode(unsigned char *p, uint64_t seq)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = WSLOAD_SEQ_LEN - 1; i >= 0; i--) {
        p[i] = (unsigned char)hex[seq & 15];
        seq >>= 4;
    }
}

/*
 * -j: write the JSON head {"type":"bench","seq":SEQ,"pad":" into P (at
 * least WSLOAD_JSON_HEAD bytes); returns its length.
 */
static size_t json_head(unsigned char *p, uint64_t seq)
{
    static const char head_open[] = "{\"type\":\"bench\",\"seq\":";
    static const char head_pad[] = ",\"pad\":\"";
    char digits[20];
    int nd = 0;
    do {
        digits[nd++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq > 0);
    size_t n = sizeof(head_open) - 1;
    memcpy(p, head_open, n);
    while (nd > 0)
        p[n++] = (unsigned char)digits[--nd];
    memcpy(p + n, head_pad, sizeof(head_pad) - 1);
    return n + sizeof(head_pad) - 1;
}

/* Build message SEQ's payload into scratch. */
static void payload_build(uint64_t seq)
{
    if (opt_json) {
        size_t h = json_head(scratch, seq);
        memcpy(scratch + h, jpattern + seq % WSLOAD_PAT_PERIOD, opt_size - h - 2);
        scratch[opt_size - 2] = '"';
        scratch[opt_size - 1] = '}';
        return;
    }
    seq_encode(scratch, seq);
    memcpy(scratch + WSLOAD_SEQ_LEN, pattern + seq % WSLOAD_PAT_PERIOD,
           opt_size - WSLOAD_SEQ_LEN);
}

/* 1 when P (LEN bytes) is exactly message SEQ's payload. */
static int payload_check(const unsigned char *p, size_t len, uint64_t seq)
{
    if (len != opt_size)
        return 0;
    if (opt_json) {
        unsigned char head[WSLOAD_JSON_HEAD];
        size_t h = json_head(head, seq);
        return memcmp(p, head, h) == 0
               && memcmp(p + h, jpattern + seq % WSLOAD_PAT_PERIOD, opt_size - h - 2) == 0
               && p[opt_size - 2] == '"' && p[opt_size - 1] == '}';
    }
    unsigned char s[WSLOAD_SEQ_LEN];
    seq_encode(s, seq);
    return memcmp(p, s, WSLOAD_SEQ_LEN) == 0
           && memcmp(p + WSLOAD_SEQ_LEN, pattern + seq % WSLOAD_PAT_PERIOD,
                     opt_size - WSLOAD_SEQ_LEN) == 0;
}

/* ---- connections ------------------------------------------------------------ */

static void conn_events(wsload_conn_t *c, uint32_t ev)
{
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

/* Queue a masked frame. */
static void conn_queue(wsload_conn_t *c, int opcode, const unsigned char *pl,
                       size_t len)
{
    unsigned char *p = wb_buf_reserve(&c->out, WB_FRAME_HDR_MAX + len);
    if (p == NULL) {
        fprintf(stderr, "wsload: out of memory\n");
        exit(2);
    }
    uint32_t k = (uint32_t)wb_rand();
    unsigned char key[4];
    memcpy(key, &k, 4);
    size_t hl = wb_frame_header(p, 1, opcode, len, key);
    wb_mask(p + hl, pl, len, key, 0);
    c->out.len += hl + len;
}

static void conn_queue_close(wsload_conn_t *c, unsigned code)
{
    unsigned char b[2] = { (unsigned char)(code >> 8), (unsigned char)code };
    conn_queue(c, WB_OP_CLOSE, b, 2);
    c->state = S_CLOSING;
}

static void conn_send_message(wsload_conn_t *c, uint64_t now)
{
    uint64_t seq = msg_seq(c, c->next);
    payload_build(seq);
    c->sent_at[c->next % (uint64_t)opt_window] = now;
    c->next++;
    n_sent++;
    conn_queue(c, opt_binary ? WB_OP_BINARY : WB_OP_TEXT, scratch, opt_size);
}

static int sending_allowed(void)
{
    return phase == P_RUNNING && (opt_count == 0 || n_sent < opt_count);
}

static void start_next_connection(void);
static int conn_start(wsload_conn_t *c);

/* With -R, whether C is an open echo connection the server is taking away
 * (not one we are closing): it is then not an error but a drop, counted
 * apart, and its slot is connected again while running. */
static int conn_dropping(const wsload_conn_t *c)
{
    return opt_reconnect && opt_mode == M_ECHO && c->state == S_OPEN
           && (phase == P_RUNNING || phase == P_DRAINING);
}

/* Forget the socket; in connect mode the slot starts again while running. */
static void conn_close(wsload_conn_t *c, uint64_t now)
{
    if (c->state == S_OPEN || c->state == S_CLOSING)
        n_open--;
    if (c->state == S_CONNECTING || c->state == S_HANDSHAKE) {
        n_inprogress--;
        if (phase == P_OPENING)
            n_pending_open--;
    }
    int dropped = conn_dropping(c);
    if (dropped) {
        n_dropped++;
        n_dropped_lost += c->next - c->expect;
    } else if (opt_mode == M_ECHO && c->state != S_NONE)
        err_lost += c->next - c->expect;   /* sent, never echoed */
    close(c->fd);
    c->fd = -1;
    n_active--;
    c->state = S_DONE;
    c->in.len = c->in.off = 0;
    c->out.len = c->out.off = 0;
    c->msg.len = c->msg.off = 0;
    c->msg_op = -1;
    c->next = c->expect = 0;
    if (dropped && phase == P_RUNNING && now < t_end) {
        if (conn_start(c) < 0)
            c->state = S_DONE;
    } else if (opt_mode == M_CONNECT && phase == P_RUNNING && now < t_end)
        start_next_connection();
    else if (phase == P_OPENING)
        start_next_connection();
}

static int conn_start(wsload_conn_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err_connect++;
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->t_connect = wb_now_ns();
    c->msg_op = -1;
    c->next = c->expect = 0;
    int r = connect(fd, (struct sockaddr *)&opt_addr, sizeof(opt_addr));
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        c->fd = -1;
        err_connect++;
        return -1;
    }
    c->state = S_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event e = { .events = EPOLLOUT, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    n_inprogress++;
    n_active++;
    return 0;
}

/* Connect the next connection (or restart a slot) if the limits allow. */
static void start_next_connection(void)
{
    if (opt_mode == M_CONNECT) {
        for (int i = 0; i < opt_conns; i++) {
            wsload_conn_t *c = &conns[i];
            if (c->state == S_DONE || c->state == S_NONE) {
                if (conn_start(c) < 0)
                    c->state = S_DONE;
                return;
            }
        }
        return;
    }
    while (phase == P_OPENING && n_inprogress < opt_rate && n_next_open < opt_conns) {
        wsload_conn_t *c = &conns[n_next_open++];
        if (conn_start(c) < 0) {
            c->state = S_DONE;
            n_pending_open--;
        }
    }
}

static void conn_send_handshake(wsload_conn_t *c)
{
    unsigned char raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = wb_rand();
        memcpy(raw + i, &r, 8);
    }
    char key[25];
    wb_base64(raw, 16, key);
    wb_accept_key(key, 24, c->accept);
    /* -T: this handshake's header line, the file's lines taken in turn */
    const char *rr = "";
    size_t rr_len = 0;
    if (opt_rr_n > 0) {
        rr = opt_rr[opt_rr_next];
        rr_len = opt_rr_len[opt_rr_next];
        opt_rr_next = (opt_rr_next + 1) % opt_rr_n;
    }
    unsigned char *p = wb_buf_reserve(&c->out, 1024 + strlen(opt_path) + opt_headers_len
                                               + opt_rr_max + 2);
    if (p == NULL) {
        fprintf(stderr, "wsload: out of memory\n");
        exit(2);
    }
    int n = sprintf((char *)p,
                    "GET %s HTTP/1.1\r\n"
                    "Host: %s\r\n"
                    "Upgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    "Sec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\n"
                    "%.*s%.*s%s\r\n",
                    opt_path, opt_hostport, key, (int)opt_headers_len, opt_headers,
                    (int)rr_len, rr, rr_len ? "\r\n" : "");
    c->out.len += (size_t)n;
    c->state = S_HANDSHAKE;
}

/* The connection is upgraded: count it and start its work. */
static void conn_opened(wsload_conn_t *c, uint64_t now)
{
    n_inprogress--;
    n_open++;
    n_opened++;
    c->state = S_OPEN;
    if (opt_mode == M_CONNECT) {
        if (now >= t_measure && phase == P_RUNNING)
            wb_hist_add(&hist, now - c->t_connect);
        conn_queue_close(c, 1000);
        return;
    }
    if (phase == P_OPENING) {
        n_pending_open--;
        if (opt_mode == M_IDLE)
            wb_hist_add(&hist, now - c->t_connect);   /* upgrade latency */
        start_next_connection();
    } else if (opt_mode == M_ECHO && phase == P_RUNNING) {
        /* -R: a slot connected again while running starts sending at once */
        for (int k = 0; k < opt_window && sending_allowed(); k++)
            conn_send_message(c, now);
    }
}

/*
 * Parse the 101 at the front of c->in. Returns 1 when upgraded, 0 when
 * incomplete, -1 when the connection failed (counted).
 */
static int conn_handshake_answer(wsload_conn_t *c, uint64_t now)
{
    const char *head = (const char *)c->in.data + c->in.off;
    const char *end = memmem(head, c->in.len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->in.len > WSLOAD_MAX_HEAD) {
            count_key(err_status, 0);
            return -1;
        }
        return 0;
    }
    size_t hlen = (size_t)(end - head) + 4;
    int status = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &status) != 1 || status != 101) {
        count_key(err_status, status);
        return -1;
    }
    size_t alen;
    const char *a = wb_http_header(head, hlen, "Sec-WebSocket-Accept", &alen);
    if (a == NULL || alen != 28 || memcmp(a, c->accept, 28) != 0) {
        err_bad_accept++;
        return -1;
    }
    wb_buf_consume(&c->in, hlen);
    conn_opened(c, now);
    return 1;
}

/* An echoed data message P (LEN bytes) arrived. */
static void conn_on_message(wsload_conn_t *c, const unsigned char *p, size_t len,
                            uint64_t now)
{
    if (opt_mode != M_ECHO || c->expect >= c->next) {
        err_protocol++;                  /* nothing was in flight */
        return;
    }
    uint64_t n = c->expect++;
    n_recv++;
    if (!payload_check(p, len, msg_seq(c, n)))
        err_mismatch++;
    if (now >= t_measure) {
        wb_hist_add(&hist, now - c->sent_at[n % (uint64_t)opt_window]);
        n_measured++;
        bytes_measured += len;
        t_last = now;
    }
    if (sending_allowed())
        conn_send_message(c, now);
}

/*
 * Handle every complete frame in c->in. Returns 0, or -1 when the connection
 * is finished (closed by the server or broken) and must be dropped.
 */
static int conn_frames(wsload_conn_t *c, uint64_t now)
{
    while (c->in.len > 0) {
        unsigned char *p = c->in.data + c->in.off;
        wb_frame_t f;
        int hl = wb_frame_parse(p, c->in.len, &f);
        if (hl == 0)
            return 0;
        if (hl < 0 || f.masked || f.rsv) {
            err_protocol++;
            return -1;
        }
        size_t need = (size_t)hl + (size_t)f.len;
        if (c->in.len < need) {
            wb_buf_reserve(&c->in, need - c->in.len);
            return 0;
        }
        unsigned char *pl = p + hl;
        size_t len = (size_t)f.len;
        switch (f.opcode) {
        case WB_OP_TEXT:
        case WB_OP_BINARY:
        case WB_OP_CONT:
            if ((f.opcode == WB_OP_CONT) != (c->msg_op >= 0)) {
                err_protocol++;
                return -1;
            }
            if (f.fin && c->msg_op < 0) {
                conn_on_message(c, pl, len, now);
            } else {
                /* a fragment: assemble the message */
                unsigned char *d = wb_buf_reserve(&c->msg, len);
                memcpy(d, pl, len);
                c->msg.len += len;
                if (c->msg_op < 0)
                    c->msg_op = f.opcode;
                if (f.fin) {
                    conn_on_message(c, c->msg.data + c->msg.off, c->msg.len, now);
                    c->msg.len = c->msg.off = 0;
                    c->msg_op = -1;
                }
            }
            break;
        case WB_OP_PING:
            if (c->state == S_OPEN)
                conn_queue(c, WB_OP_PONG, pl, len);
            break;
        case WB_OP_PONG:
            break;
        case WB_OP_CLOSE: {
            int code = len >= 2 ? (pl[0] << 8) | pl[1] : 1005;
            if (c->state == S_CLOSING) {
                if (code != 1000)
                    count_key(err_close, code);
                return -1;               /* our close answered: done */
            }
            if (!conn_dropping(c))
                count_key(err_close, code);  /* the server closed on us */
            return -1;
        }
        default:
            err_protocol++;
            return -1;
        }
        wb_buf_consume(&c->in, need);
    }
    return 0;
}

/* Write what is queued; returns 0 or -1 when the connection broke. */
static int conn_flush(wsload_conn_t *c)
{
    while (c->out.len > 0) {
        ssize_t n = write(c->fd, c->out.data + c->out.off, c->out.len);
        if (n > 0) {
            wb_buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        return -1;
    }
    conn_events(c, c->out.len > 0 ? EPOLLIN | EPOLLOUT : EPOLLIN);
    return 0;
}

static void conn_event(wsload_conn_t *c, uint32_t ev, uint64_t now)
{
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            err_connect++;
            conn_close(c, now);
            return;
        }
        conn_send_handshake(c);
    } else if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        unsigned char *p = wb_buf_reserve(&c->in, WSLOAD_READ_MIN);
        ssize_t n = read(c->fd, p, c->in.cap - c->in.off - c->in.len);
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
            if (c->state == S_HANDSHAKE)
                err_handshake_eof++;
            else if (!conn_dropping(c))
                err_eof++;              /* gone without a close frame */
            conn_close(c, now);
            return;
        }
        if (n > 0) {
            c->in.len += (size_t)n;
            if (c->state == S_HANDSHAKE) {
                int r = conn_handshake_answer(c, now);
                if (r < 0) {
                    conn_close(c, now);
                    return;
                }
            }
            if (c->state == S_OPEN || c->state == S_CLOSING) {
                if (conn_frames(c, now) < 0) {
                    if (opt_mode == M_CONNECT && c->state == S_CLOSING) {
                        n_hs++;
                        if (c->t_connect >= t_measure && now <= t_end) {
                            n_hs_measured++;
                            t_last = now;
                        }
                    }
                    conn_close(c, now);
                    return;
                }
            }
        }
    }
    if (conn_flush(c) < 0) {
        if (!conn_dropping(c))
            err_eof++;
        conn_close(c, now);
    }
}

/* ---- phases ------------------------------------------------------------------ */

static void begin_closing(uint64_t now)
{
    phase = P_CLOSING;
    t_deadline = now + WSLOAD_CLOSE_NS;
    for (int i = 0; i < opt_conns; i++) {
        wsload_conn_t *c = &conns[i];
        if (c->state == S_OPEN) {
            conn_queue_close(c, 1000);
            if (conn_flush(c) < 0) {
                err_eof++;
                conn_close(c, now);
            }
        }
    }
}

static uint64_t in_flight(void)
{
    uint64_t n = 0;
    for (int i = 0; i < opt_conns; i++)
        if (conns[i].state == S_OPEN)
            n += conns[i].next - conns[i].expect;
    return n;
}

static void print_ready(void)
{
    printf("{\"event\":\"ready\",\"connections\":%d,\"errors\":%llu}\n", n_open,
           (unsigned long long)errors_total());
    fflush(stdout);
    if (!opt_quiet)
        fprintf(stderr, "wsload: %d connections up, holding (SIGUSR1 to release)\n",
                n_open);
}

/* Move between phases on time and counts. */
static void advance(uint64_t now)
{
    switch (phase) {
    case P_OPENING:
        if (n_pending_open > 0 && now < t_begin + WSLOAD_HS_NS)
            break;
        if (n_pending_open > 0) {
            /* deadline: whatever is still connecting has timed out */
            for (int i = 0; i < opt_conns; i++) {
                wsload_conn_t *c = &conns[i];
                if (c->state == S_CONNECTING || c->state == S_HANDSHAKE) {
                    err_timeout++;
                    conn_close(c, now);
                }
            }
        }
        if (opt_mode == M_IDLE) {
            print_ready();
            phase = P_HOLD;
            t_end = now + (uint64_t)(opt_duration * 1e9);
            break;
        }
        phase = P_RUNNING;
        t_measure = now + (uint64_t)(opt_warmup * 1e9);
        t_end = t_measure + (uint64_t)(opt_duration * 1e9);
        for (int i = 0; i < opt_conns; i++) {
            wsload_conn_t *c = &conns[i];
            if (c->state != S_OPEN)
                continue;
            for (int k = 0; k < opt_window && sending_allowed(); k++)
                conn_send_message(c, now);
            if (conn_flush(c) < 0) {
                err_eof++;
                conn_close(c, now);
            }
        }
        break;
    case P_RUNNING:
        if (opt_mode == M_CONNECT) {
            if (n_active == 0 || now >= t_end + WSLOAD_CLOSE_NS) {
                for (int i = 0; i < opt_conns; i++)
                    if (conns[i].fd >= 0 && conns[i].state != S_DONE
                        && conns[i].state != S_NONE) {
                        err_timeout++;
                        conn_close(&conns[i], now);
                    }
                phase = P_DONE;
            }
            break;
        }
        if (now >= t_end || (opt_count && n_sent >= opt_count) || n_open == 0) {
            phase = P_DRAINING;
            t_deadline = now + WSLOAD_DRAIN_NS;
        }
        break;
    case P_HOLD:
        if (got_signal || now >= t_end)
            begin_closing(now);
        break;
    case P_DRAINING:
        if (in_flight() == 0 || now >= t_deadline)
            begin_closing(now);      /* undelivered ones count as lost */
        break;
    case P_CLOSING:
        if (n_active == 0)
            phase = P_DONE;
        else if (now >= t_deadline) {
            for (int i = 0; i < opt_conns; i++)
                if (conns[i].state == S_CLOSING) {
                    err_timeout++;
                    conn_close(&conns[i], now);
                }
            phase = P_DONE;
        }
        break;
    default:
        break;
    }
}

/* ---- report ------------------------------------------------------------------ */

static void print_counts(FILE *f, const char *name, const wsload_count_t *t)
{
    fprintf(f, ",\"%s\":{", name);
    int first = 1;
    for (int i = 0; i < WSLOAD_MAX_STATUS; i++) {
        if (t[i].n == 0)
            continue;
        fprintf(f, "%s\"%d\":%llu", first ? "" : ",", t[i].key,
                (unsigned long long)t[i].n);
        first = 0;
    }
    fputc('}', f);
}

static void report(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
                 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    uint64_t measured = opt_mode == M_CONNECT ? n_hs_measured : n_measured;
    uint64_t total = opt_mode == M_CONNECT ? n_hs : n_recv;
    double secs = t_last > t_measure ? (double)(t_last - t_measure) / 1e9 : 0;
    double rate = secs > 0 ? (double)measured / secs : 0;
    double mbs = secs > 0 ? (double)bytes_measured / secs / 1e6 : 0;
    double us[6] = {
        wb_hist_quantile(&hist, 0.50) / 1e3, wb_hist_quantile(&hist, 0.90) / 1e3,
        wb_hist_quantile(&hist, 0.99) / 1e3, wb_hist_quantile(&hist, 0.999) / 1e3,
        hist.count ? hist.max / 1e3 : 0, hist.count ? hist.sum / hist.count / 1e3 : 0,
    };
    static const char *modes[] = { "echo", "connect", "idle" };
    uint64_t errs = errors_total();

    if (!opt_quiet) {
        const char *unit = opt_mode == M_CONNECT ? "handshakes" : "messages";
        fprintf(stderr, "wsload %s%s%s: %s ws://%s%s, %d conns",
                modes[opt_mode], *opt_label ? " " : "", opt_label,
                opt_mode == M_IDLE ? "held" : "on", opt_hostport, opt_path, opt_conns);
        if (opt_mode == M_ECHO)
            fprintf(stderr, ", window %d, %zu B %s%s", opt_window, opt_size,
                    opt_binary ? "binary" : "text", opt_json ? " JSON" : "");
        fputc('\n', stderr);
        if (opt_mode != M_IDLE) {
            fprintf(stderr, "  %llu %s in %.2f s: %.0f/s", (unsigned long long)measured,
                    unit, secs, rate);
            if (opt_mode == M_ECHO)
                fprintf(stderr, ", %.1f MB/s each way", mbs);
            fprintf(stderr, "\n  latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f"
                    "  max %.1f  mean %.1f\n", us[0], us[1], us[2], us[3], us[4], us[5]);
        } else {
            fprintf(stderr, "  %d connections opened\n", n_opened);
        }
        fprintf(stderr, "  wsload cpu %.2f s; errors %llu\n", cpu,
                (unsigned long long)errs);
    }

    printf("{\"mode\":\"%s\",\"label\":\"%s\",\"url\":\"ws://%s%s\",\"conns\":%d,"
           "\"window\":%d,\"size\":%zu,\"opcode\":\"%s\",\"payload\":\"%s\",\"opened\":%d,"
           "\"seconds\":%.4f,\"measured\":%llu,\"total\":%llu,\"rate\":%.1f,"
           "\"mb_per_s\":%.2f,\"latency_us\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,"
           "\"p999\":%.2f,\"max\":%.2f,\"mean\":%.2f},\"cpu_s\":%.3f,\"errors\":%llu",
           modes[opt_mode], opt_label, opt_hostport, opt_path, opt_conns, opt_window,
           opt_size, opt_binary ? "binary" : "text", opt_json ? "json" : "pattern",
           n_opened, secs,
           (unsigned long long)measured, (unsigned long long)total, rate, mbs,
           us[0], us[1], us[2], us[3], us[4], us[5], cpu, (unsigned long long)errs);
    printf(",\"error_kinds\":{\"connect\":%llu,\"handshake_eof\":%llu,\"bad_accept\":%llu,"
           "\"eof\":%llu,\"mismatch\":%llu,\"lost\":%llu,\"protocol\":%llu,"
           "\"timeout\":%llu",
           (unsigned long long)err_connect, (unsigned long long)err_handshake_eof,
           (unsigned long long)err_bad_accept, (unsigned long long)err_eof,
           (unsigned long long)err_mismatch, (unsigned long long)err_lost,
           (unsigned long long)err_protocol, (unsigned long long)err_timeout);
    print_counts(stdout, "http_status", err_status);
    print_counts(stdout, "close_code", err_close);
    printf("},\"sent\":%llu,\"echoed\":%llu,\"dropped\":%llu,\"dropped_in_flight\":%llu",
           (unsigned long long)n_sent, (unsigned long long)n_recv,
           (unsigned long long)n_dropped, (unsigned long long)n_dropped_lost);
    if (opt_hist) {
        /* the latency histogram's non-empty buckets, [index, count]: runs
         * can be merged and their percentiles taken over the whole (bench/run) */
        printf(",\"hist\":{\"sub_bits\":%d,\"min_ns\":%llu,\"max_ns\":%llu,\"buckets\":[",
               WB_HIST_SUB_BITS, (unsigned long long)(hist.count ? hist.min : 0),
               (unsigned long long)hist.max);
        int first = 1;
        for (size_t i = 0; i < WB_HIST_BUCKETS; i++) {
            if (hist.b[i] == 0)
                continue;
            printf("%s[%zu,%llu]", first ? "" : ",", i, (unsigned long long)hist.b[i]);
            first = 0;
        }
        printf("]}");
    }
    printf("}\n");
    fflush(stdout);
    if (!opt_quiet && errs) {
        fprintf(stderr, "  errors: connect %llu, handshake eof %llu, bad accept %llu, "
                "eof %llu, mismatch %llu, lost %llu, protocol %llu, timeout %llu",
                (unsigned long long)err_connect, (unsigned long long)err_handshake_eof,
                (unsigned long long)err_bad_accept, (unsigned long long)err_eof,
                (unsigned long long)err_mismatch, (unsigned long long)err_lost,
                (unsigned long long)err_protocol, (unsigned long long)err_timeout);
        for (int i = 0; i < WSLOAD_MAX_STATUS; i++)
            if (err_status[i].n)
                fprintf(stderr, ", HTTP %d: %llu", err_status[i].key,
                        (unsigned long long)err_status[i].n);
        for (int i = 0; i < WSLOAD_MAX_STATUS; i++)
            if (err_close[i].n)
                fprintf(stderr, ", close %d: %llu", err_close[i].key,
                        (unsigned long long)err_close[i].n);
        fputc('\n', stderr);
    }
}

/* ---- main ----------------------------------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

static void usage(void)
{
    fprintf(stderr,
        "usage: wsload [options] ws://HOST:PORT/PATH\n"
        "  -m MODE    echo (default), connect or idle\n"
        "  -c N       connections (echo, idle) or concurrent slots (connect) (1)\n"
        "  -w N       messages in flight per connection (1)\n"
        "  -s BYTES   payload size, at least 16 (64)\n"
        "  -d SEC     measured duration; idle: longest hold (5)\n"
        "  -W SEC     warm-up before measuring (0)\n"
        "  -n N       stop after sending N messages (0: no limit)\n"
        "  -b         binary frames (default: text, ASCII payload)\n"
        "  -j         JSON payloads: {\"type\":\"bench\",\"seq\":N,\"pad\":\"...\"}, exactly -s\n"
        "             bytes (-s at least 52)\n"
        "  -H 'Name: value'  extra handshake header, repeatable\n"
        "  -T FILE    a file of 'Name: value' lines: each handshake sends the next\n"
        "             one (in turn, from the first again after the last)\n"
        "  -r N       handshakes in progress at once while opening (200)\n"
        "  -R         echo: a connection the server drops is not an error: counted\n"
        "             (dropped, dropped_in_flight) and connected again\n"
        "  -l LABEL   label copied into the JSON line\n"
        "  -q         no human-readable text on stderr\n"
        "  -L         add the latency histogram's buckets to the JSON line (\"hist\")\n"
        "exit status: 0 no errors, 1 errors counted, 2 usage or setup failure\n");
    exit(2);
}

/*
 * -T FILE: read the header lines to take in turn, one per handshake (blank
 * lines skipped, a CR before the LF dropped). Returns 0, or -1 with a message.
 */
static int load_rr_headers(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "wsload: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t l;
    int lineno = 0;
    while ((l = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r'))
            line[--l] = 0;
        if (l == 0)
            continue;
        if (!strchr(line, ':') || (size_t)l > WSLOAD_MAX_HEAD) {
            fprintf(stderr, "wsload: %s:%d: not a 'Name: value' header line\n", path, lineno);
            fclose(f);
            free(line);
            return -1;
        }
        if (opt_rr_n == cap) {
            cap = cap ? cap * 2 : 256;
            opt_rr = realloc(opt_rr, cap * sizeof(*opt_rr));
            opt_rr_len = realloc(opt_rr_len, cap * sizeof(*opt_rr_len));
            if (opt_rr == NULL || opt_rr_len == NULL) {
                fprintf(stderr, "wsload: out of memory\n");
                exit(2);
            }
        }
        opt_rr[opt_rr_n] = strdup(line);
        opt_rr_len[opt_rr_n] = (size_t)l;
        if ((size_t)l > opt_rr_max)
            opt_rr_max = (size_t)l;
        opt_rr_n++;
    }
    fclose(f);
    free(line);
    if (opt_rr_n == 0) {
        fprintf(stderr, "wsload: %s: no header lines\n", path);
        return -1;
    }
    return 0;
}

static int parse_url(const char *url)
{
    if (strncmp(url, "ws://", 5) != 0)
        return -1;
    const char *h = url + 5;
    const char *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    if (hl == 0 || hl >= sizeof(opt_host))
        return -1;
    memcpy(opt_hostport, h, hl);
    opt_hostport[hl] = 0;
    memcpy(opt_host, h, hl);
    opt_host[hl] = 0;
    char *colon = strrchr(opt_host, ':');
    if (colon) {
        *colon = 0;
        opt_port = atoi(colon + 1);
    }
    if (slash)
        snprintf(opt_path, sizeof(opt_path), "%s", slash);
    struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai;
    if (getaddrinfo(opt_host, NULL, &hints, &ai) != 0)
        return -1;
    memcpy(&opt_addr, ai->ai_addr, sizeof(opt_addr));
    opt_addr.sin_port = htons((uint16_t)opt_port);
    freeaddrinfo(ai);
    return 0;
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "m:c:w:s:d:W:n:bjH:T:r:l:RqLh")) != -1) {
        switch (opt) {
        case 'm':
            if (strcmp(optarg, "echo") == 0) opt_mode = M_ECHO;
            else if (strcmp(optarg, "connect") == 0) opt_mode = M_CONNECT;
            else if (strcmp(optarg, "idle") == 0) opt_mode = M_IDLE;
            else usage();
            break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'w': opt_window = atoi(optarg); break;
        case 's': opt_size = strtoul(optarg, NULL, 10); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'W': opt_warmup = atof(optarg); break;
        case 'n': opt_count = strtoull(optarg, NULL, 10); break;
        case 'b': opt_binary = 1; break;
        case 'R': opt_reconnect = 1; break;
        case 'j': opt_json = 1; break;
        case 'H': {
            size_t l = strlen(optarg);
            if (opt_headers_len + l + 3 > sizeof(opt_headers) || !strchr(optarg, ':'))
                usage();
            memcpy(opt_headers + opt_headers_len, optarg, l);
            memcpy(opt_headers + opt_headers_len + l, "\r\n", 2);
            opt_headers_len += l + 2;
            break;
        }
        case 'T':
            if (opt_rr_n > 0 || load_rr_headers(optarg) < 0)
                usage();
            break;
        case 'r': opt_rate = atoi(optarg); break;
        case 'l': opt_label = optarg; break;
        case 'q': opt_quiet = 1; break;
        case 'L': opt_hist = 1; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || parse_url(argv[optind]) < 0 || opt_conns < 1
        || opt_window < 1 || opt_size < WSLOAD_SEQ_LEN || opt_rate < 1
        || (opt_json && opt_size < WSLOAD_JSON_HEAD)
        || opt_duration < 0 || opt_warmup < 0)
        usage();

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt_conns + 16) {
        fprintf(stderr, "wsload: %d connections need a higher ulimit -n (%llu)\n",
                opt_conns, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    wb_rand_seed(wb_now_ns() ^ ((uint64_t)getpid() << 32));
    pattern_init();
    wb_hist_init(&hist);
    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)opt_conns, sizeof(*conns));
    for (int i = 0; i < opt_conns; i++) {
        conns[i].fd = -1;
        conns[i].id = (uint32_t)i;
        conns[i].msg_op = -1;
        if (opt_mode == M_ECHO)
            conns[i].sent_at = calloc((size_t)opt_window, sizeof(uint64_t));
    }

    t_begin = wb_now_ns();
    if (opt_mode == M_CONNECT) {
        phase = P_RUNNING;
        t_measure = t_begin + (uint64_t)(opt_warmup * 1e9);
        t_end = t_measure + (uint64_t)(opt_duration * 1e9);
        for (int i = 0; i < opt_conns; i++)
            start_next_connection();
    } else {
        n_pending_open = opt_conns;
        start_next_connection();
    }

    struct epoll_event ev[WSLOAD_EVENTS];
    while (phase != P_DONE) {
        int timeout = phase == P_HOLD ? 200 : 20;
        int n = epoll_wait(ep, ev, WSLOAD_EVENTS, timeout);
        uint64_t now = wb_now_ns();
        for (int i = 0; i < n; i++) {
            wsload_conn_t *c = ev[i].data.ptr;
            if (c->fd >= 0)
                conn_event(c, ev[i].events, now);
        }
        advance(now);
    }
    report();
    return errors_total() ? 1 : 0;
}
