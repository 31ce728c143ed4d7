/* libFuzzer target: arbitrary bytes, split at arbitrary points, through the request
 * parser exactly as a downstream connection drives it (pipelined messages, pauses after
 * the head and the message, bodies streamed to a callback).
 *
 * Input layout: byte 0 chooses the split seed; the rest is the client's byte stream. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "http1.h"

static uint64_t body_bytes;

static int on_body(lp_h1_t *h, const char *at, size_t len)
{
    /* Touch every byte so ASan sees any read outside the input. */
    volatile char sink = 0;
    for (size_t i = 0; i < len; i++)
        sink ^= at[i];
    (void)sink;
    (void)h;
    body_bytes += len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned seed = data[0];
    data++;
    size--;
    static char arena[32768];
    static lp_header_t headers[64];
    lp_h1_t h;
    lp_h1_init(&h, HTTP_REQUEST, NULL, on_body);
    h.max_header_size = 4096;
    h.max_uri_size = 2048;
    lp_h1_set_storage(&h, arena, sizeof(arena), headers, 64);

    /* Copy each piece into its own heap buffer so reads past a piece are caught. */
    size_t off = 0;
    int messages = 0;
    while (off < size) {
        seed = seed * 1103515245u + 12345u;
        size_t piece = 1 + (seed >> 16) % 64;
        if (piece > size - off)
            piece = size - off;
        char *buf = malloc(piece ? piece : 1);
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
                lp_h1_resume(&h);
                break;
            case LP_H1_DONE:
                messages++;
                lp_h1_resume(&h);
                lp_h1_set_storage(&h, arena, sizeof(arena), headers, 64);
                break;
            case LP_H1_PAUSED: /* only a body callback asks for it; there is none here */
                abort();
            case LP_H1_UPGRADE:
            case LP_H1_ERROR:
                if (ev == LP_H1_ERROR && (h.err_status < 400 || h.err_status > 505))
                    abort();
                free(buf);
                return 0;
            }
        }
        free(buf);
        off += piece;
    }
    (void)messages;
    return 0;
}
