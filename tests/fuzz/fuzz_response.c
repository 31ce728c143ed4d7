/* libFuzzer target: arbitrary bytes through the RESPONSE parser the way upstream.c drives
 * it (peer_parse, peer_eof): a parser per request, LP_H1F_HEAD_REQ when the request was
 * HEAD, one more execute after the head even without input, interim 1xx responses
 * consumed by the parser, bodies streamed to a callback, lp_h1_finish at the upstream's
 * EOF for close-delimited bodies, and an arena that starts small and grows (lp_h1_rebase)
 * like peer_grow.
 *
 * Every input is parsed twice, once in one piece and once split at pseudo-random points,
 * and the two runs must agree: same heads (status, flags, Content-Length), same body bytes
 * per response, same ending. Within a run:
 *   - a head is never an interim response (1xx other than an upgrade's 101) and its status
 *     is 100..999; body bytes arrive only after a head;
 *   - a response completes only after its head was reported: upstream.c relays the head
 *     when it gets LP_H1_HEAD, so a DONE without one ends the request with nothing sent
 *     (tests/fuzz/corpus_response/regress_101_without_upgrade does that today);
 *   - a response with Content-Length that completes carries exactly that many body bytes;
 *     a response to HEAD, a 204 and a 304 carry none; a close-delimited body completes only
 *     at lp_h1_finish;
 *   - an error has a reason and a status from 400 to 599.
 *
 * Input layout: byte 0 seeds the split points; byte 1 holds option bits (below); the rest
 * is the upstream's byte stream. Responses after the first are parsed by a fresh parser,
 * as for the next request on a kept-alive connection; bit k of the HEAD mask says whether
 * request k was HEAD. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http1.h"

/* Option bits. OPT_PAUSE: the body callback asks for LP_H1_PAUSED now and then, as
 * conn.c's req:body() gathering does (upstream.c does not, yet). */
#define OPT_FINISH     0x01 /* the upstream closes after the input: lp_h1_finish */
#define OPT_PAUSE      0x02 /* the body callback pauses now and then */
#define OPT_GROW       0x04 /* the head arena starts at 64 bytes and grows */
#define OPT_HEAD_SHIFT 3    /* bits 3..7: which of the first five requests were HEAD */

#define MAX_MSGS 32

typedef struct {
    int status;
    unsigned flags;
    uint64_t content_length;
    uint64_t body; /* body bytes delivered for this response */
    int done;      /* 1: completed by execute, 2: by lp_h1_finish */
} msg_t;

typedef struct {
    msg_t msgs[MAX_MSGS];
    int nmsgs;
    int ended_error; /* the run stopped on LP_H1_ERROR */
    int upgraded;
} summary_t;

typedef struct {
    lp_h1_t h;
    summary_t *sum;
    int in_msg;         /* a head was seen and its message has not completed */
    unsigned pause_rng; /* OPT_PAUSE: when to pause */
    int pause;
    char *arena; /* heap, so ASan sees reads through stale slices after a rebase */
    size_t arena_cap;
    lp_header_t headers[64];
} run_t;

static int on_body(lp_h1_t *h, const char *at, size_t len)
{
    run_t *r = h->ud;
    /* Body bytes before the head would be relayed with no head to carry them. */
    if (!r->in_msg || r->sum->nmsgs == 0)
        abort();
    volatile char sink = 0; /* touch every byte: ASan sees any read outside the input */
    for (size_t i = 0; i < len; i++)
        sink ^= at[i];
    (void)sink;
    r->sum->msgs[r->sum->nmsgs - 1].body += len;
    /* Not on an empty span: after a pause llhttp hands the pending span out again, empty,
     * on the next execute (conn.c's body callback stops pausing once it paused). */
    if (r->pause && len) {
        r->pause_rng = r->pause_rng * 1103515245u + 12345u;
        if ((r->pause_rng >> 16) % 3 == 0)
            return LP_H1_CB_PAUSE;
    }
    return 0;
}

static int grow(lp_h1_t *h, size_t need)
{
    run_t *r = h->ud;
    if (need > 65536)
        return -1;
    size_t cap = r->arena_cap;
    while (cap < need)
        cap *= 2;
    char *bigger = malloc(cap);
    lp_h1_rebase(h, bigger, cap);
    free(r->arena);
    r->arena = bigger;
    r->arena_cap = cap;
    return 0;
}

static void parser_start(run_t *r, int head_req, int small_arena)
{
    lp_h1_init(&r->h, HTTP_RESPONSE, r, on_body);
    r->h.max_header_size = 8192;
    if (!r->arena) {
        r->arena_cap = small_arena ? 64 : 16384;
        r->arena = malloc(r->arena_cap);
    }
    lp_h1_set_storage(&r->h, r->arena, r->arena_cap, r->headers, 64);
    if (small_arena)
        r->h.grow = grow;
    if (head_req)
        r->h.flags |= LP_H1F_HEAD_REQ;
    r->in_msg = 0;
}

static int is_head_req(unsigned opts, int k)
{
    return k < 5 && ((opts >> (OPT_HEAD_SHIFT + k)) & 1);
}

static void check_done(run_t *r, int how)
{
    summary_t *s = r->sum;
    if (!r->in_msg || s->nmsgs == 0)
        abort(); /* a completed response must have had a head */
    msg_t *m = &s->msgs[s->nmsgs - 1];
    m->done = how;
    int no_body = (m->flags & LP_H1F_HEAD_REQ) || m->status == 204 || m->status == 304;
    if (no_body && m->body != 0)
        abort();
    if (!no_body && (m->flags & LP_H1F_LENGTH) && m->body != m->content_length)
        abort();
    if (how == 1 && !no_body && (m->flags & LP_H1F_EOF_BODY))
        abort(); /* nothing but the connection's end ends such a body */
    r->in_msg = 0;
}

static void check_error(const lp_h1_t *h)
{
    if (h->err_status < 400 || h->err_status > 599 || !h->err_reason)
        abort();
}

/* Parses data in pieces (split seed; 0 pieces: all at once). Returns when the input is
 * used up, on an error or an upgrade. */
static void run(const uint8_t *data, size_t size, unsigned opts, unsigned seed, int split,
                summary_t *sum)
{
    run_t *r = calloc(1, sizeof(*r));
    memset(sum, 0, sizeof(*sum));
    r->sum = sum;
    r->pause = (opts & OPT_PAUSE) != 0;
    r->pause_rng = seed;
    int small = (opts & OPT_GROW) != 0;
    int k = 0; /* responses started (one per request) */
    parser_start(r, is_head_req(opts, k), small);

    size_t off = 0;
    int stopped = 0;
    while (!stopped && (off < size || (size == 0 && !off))) {
        size_t piece = size - off;
        if (split) {
            seed = seed * 1103515245u + 12345u;
            size_t want = 1 + (seed >> 16) % 48;
            if (want < piece)
                piece = want;
        }
        /* Each piece in its own heap block, so reads past it are caught. */
        char *buf = malloc(piece ? piece : 1);
        memcpy(buf, data + off, piece);
        size_t pos = 0;
        int again = 0; /* after LP_H1_PAUSED: execute again, even without input */
        while (!stopped && (pos < piece || r->h.after_head || again)) {
            again = 0;
            size_t used = 0;
            lp_h1_event_t ev = lp_h1_execute(&r->h, buf + pos, piece - pos, &used);
            if (used > piece - pos)
                abort();
            pos += used;
            switch (ev) {
            case LP_H1_NEED_MORE:
                if (pos != piece)
                    abort();
                break;
            case LP_H1_HEAD: {
                int st = lp_h1_status(&r->h);
                if (st < 100 || st > 999 || (st < 200 && !(r->h.flags & LP_H1F_UPGRADE)))
                    abort();
                if (r->in_msg)
                    abort(); /* a second head inside one response */
                if (sum->nmsgs >= MAX_MSGS) {
                    stopped = 1; /* enough for one input */
                    break;
                }
                msg_t *m = &sum->msgs[sum->nmsgs++];
                m->status = st;
                m->flags = r->h.flags;
                m->content_length = r->h.content_length;
                for (unsigned i = 0; i < r->h.nheaders; i++)
                    if (!lp_h1_tchar_token(r->h.headers[i].name))
                        abort();
                if (r->h.reason.len && !r->h.reason.base)
                    abort();
                r->in_msg = 1;
                lp_h1_resume(&r->h);
                break;
            }
            case LP_H1_PAUSED:
                if (!r->pause)
                    abort();
                /* A pause on the last body span leaves the message's end pending: like
                 * conn.c, go on parsing after the pause even when no input is left. */
                lp_h1_resume(&r->h);
                again = 1;
                break;
            case LP_H1_DONE:
                check_done(r, 1);
                lp_h1_resume(&r->h);
                /* The next request on this connection: a new parser, as upstream.c does. */
                k++;
                parser_start(r, is_head_req(opts, k), small);
                break;
            case LP_H1_UPGRADE:
                if (lp_h1_status(&r->h) != 101)
                    abort();
                sum->upgraded = 1;
                stopped = 1;
                break;
            case LP_H1_ERROR:
                check_error(&r->h);
                sum->ended_error = 1;
                stopped = 1;
                break;
            }
        }
        free(buf);
        off += piece;
        if (!size)
            break;
    }
    if (!stopped && (opts & OPT_FINISH) && r->in_msg) {
        /* The upstream closed: upstream.c finishes only a close-delimited body that began. */
        unsigned flags = r->h.flags;
        lp_h1_event_t ev = lp_h1_finish(&r->h);
        if (ev == LP_H1_DONE) {
            if (!(flags & LP_H1F_EOF_BODY))
                abort(); /* any other framing cut short is an error */
            check_done(r, 2);
        } else if (ev == LP_H1_ERROR) {
            check_error(&r->h);
            sum->ended_error = 1;
        } else {
            abort();
        }
    }
    free(r->arena);
    free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned seed = data[0], opts = data[1];
    data += 2;
    size -= 2;
    static summary_t whole, pieces;
    run(data, size, opts, seed, 0, &whole);
    run(data, size, opts, seed, 1, &pieces);
    /* Where the reads split must not change what was parsed. */
    if (whole.nmsgs != pieces.nmsgs || whole.ended_error != pieces.ended_error ||
        whole.upgraded != pieces.upgraded)
        abort();
    for (int i = 0; i < whole.nmsgs; i++) {
        const msg_t *a = &whole.msgs[i], *b = &pieces.msgs[i];
        if (a->status != b->status || a->flags != b->flags ||
            a->content_length != b->content_length || a->body != b->body || a->done != b->done)
            abort();
    }
    return 0;
}
