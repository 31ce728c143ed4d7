/* libFuzzer target: arbitrary bytes, split at arbitrary points, through the request
 * parser exactly as a downstream connection drives it (pipelined messages, pauses after
 * the head and the message, bodies streamed to a callback).
 *
 * Every input is parsed twice, in one piece and split at pseudo-random points, and the two
 * runs must agree on every message (method, target, Host, flags, Content-Length, header
 * count, body bytes) and on how the stream ended (error or not, upgrade): a proxy whose
 * parse depends on how reads split can be made to see a different request than the next
 * hop does.
 *
 * Input layout: byte 0 chooses the split seed; the rest is the client's byte stream. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http1.h"
#include "pathnorm.h"

#define MAX_MSGS 32

typedef struct {
    uint8_t method;
    unsigned flags, nheaders;
    uint64_t content_length, body;
    uint64_t path_hash, host_hash;
} msg_t;

typedef struct {
    msg_t msgs[MAX_MSGS];
    int nmsgs;
    int err_status; /* 0: no error */
    int upgraded;
} summary_t;

static summary_t *cur;

static uint64_t hash(lp_str_t s)
{
    uint64_t h = 1469598103934665603ull ^ (s.base ? 0 : 0xff);
    for (size_t i = 0; i < s.len; i++)
        h = (h ^ (unsigned char)s.base[i]) * 1099511628211ull;
    return h ^ s.len;
}

static int on_body(lp_h1_t *h, const char *at, size_t len)
{
    /* Touch every byte so ASan sees any read outside the input. */
    volatile char sink = 0;
    for (size_t i = 0; i < len; i++)
        sink ^= at[i];
    (void)sink;
    (void)h;
    if (cur->nmsgs > 0)
        cur->msgs[cur->nmsgs - 1].body += len;
    return 0;
}

static void run(const uint8_t *data, size_t size, unsigned seed, int split, summary_t *sum)
{
    static char arena[32768];
    static lp_header_t headers[64];
    memset(sum, 0, sizeof(*sum));
    cur = sum;
    lp_h1_t h;
    lp_h1_init(&h, HTTP_REQUEST, NULL, on_body);
    h.max_header_size = 4096;
    h.max_uri_size = 2048;
    h.path_norm = LP_PATHN_NORMALIZE; /* as the proxy's default (engine/pathnorm.c) */
    lp_h1_set_storage(&h, arena, sizeof(arena), headers, 64);

    /* Copy each piece into its own heap buffer so reads past a piece are caught. */
    size_t off = 0;
    while (off < size) {
        size_t piece = size - off;
        if (split) {
            seed = seed * 1103515245u + 12345u;
            size_t want = 1 + (seed >> 16) % 64;
            if (want < piece)
                piece = want;
        }
        char *buf = malloc(piece);
        memcpy(buf, data + off, piece);
        size_t pos = 0;
        int stop = 0;
        while (!stop) {
            size_t used = 0;
            lp_h1_event_t ev = lp_h1_execute(&h, buf + pos, piece - pos, &used);
            pos += used;
            switch (ev) {
            case LP_H1_NEED_MORE:
                stop = 1;
                break;
            case LP_H1_HEAD:
                /* Whatever the head says must be self-consistent. */
                if (h.path.len && !h.path.base)
                    abort();
                for (unsigned i = 0; i < h.nheaders; i++)
                    if (!lp_h1_tchar_token(h.headers[i].name))
                        abort();
                if (sum->nmsgs < MAX_MSGS) {
                    msg_t *m = &sum->msgs[sum->nmsgs++];
                    m->method = lp_h1_method(&h);
                    m->flags = h.flags;
                    m->nheaders = h.nheaders;
                    m->content_length = h.content_length;
                    m->path_hash = hash(h.path);
                    m->host_hash = hash(h.host);
                }
                lp_h1_resume(&h);
                break;
            case LP_H1_DONE:
                lp_h1_resume(&h);
                lp_h1_set_storage(&h, arena, sizeof(arena), headers, 64);
                break;
            case LP_H1_PAUSED: /* only a body callback asks for it; there is none here */
                abort();
            case LP_H1_UPGRADE:
            case LP_H1_ERROR:
                if (ev == LP_H1_ERROR && (h.err_status < 400 || h.err_status > 505))
                    abort();
                if (ev == LP_H1_ERROR)
                    sum->err_status = h.err_status;
                else
                    sum->upgraded = 1;
                free(buf);
                return;
            }
        }
        free(buf);
        off += piece;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned seed = data[0];
    data++;
    size--;
    static summary_t whole, pieces;
    run(data, size, seed, 0, &whole);
    run(data, size, seed, 1, &pieces);
    /* Whether the stream failed, not with which status: the status comes from whichever
     * check sees the fault first, and those run at different times (llhttp's callbacks,
     * then scan_head over the bytes llhttp used), so "GET /p?q(HTTP/1.1\r\n..." is a 505
     * whole and a 400 split. Both refuse the request. */
    if (whole.nmsgs != pieces.nmsgs || !whole.err_status != !pieces.err_status ||
        whole.upgraded != pieces.upgraded)
        abort();
    for (int i = 0; i < whole.nmsgs; i++)
        if (memcmp(&whole.msgs[i], &pieces.msgs[i], sizeof(msg_t)))
            abort();
    return 0;
}
