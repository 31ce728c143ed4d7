/* HTTP/1.x message parsing (llhttp glue with the checks llhttp leaves to us) and
 * head serialization. Pure logic: no I/O, so unit tests and the fuzzer drive it directly.
 *
 * Header bytes are copied into an arena owned by the caller as they arrive: llhttp hands
 * out spans that may be split across reads and live only during the callback. */
#ifndef LP_HTTP1_H
#define LP_HTTP1_H

#include <llhttp.h>
#include "common.h"
#include "tchar.h"

typedef struct {
    lp_str_t name, value;
} lp_header_t;

typedef enum {
    LP_H1_NEED_MORE, /* all input consumed, message not finished */
    LP_H1_HEAD,      /* the head is complete and validated; parsing paused */
    LP_H1_DONE,      /* the message is complete; parsing paused */
    LP_H1_UPGRADE,   /* complete, and what follows is another protocol */
    LP_H1_ERROR,     /* invalid: err_status says what to answer */
    LP_H1_PAUSED,    /* the body callback asked to stop (LP_H1_CB_PAUSE) after its span */
} lp_h1_event_t;

/* Message flags (LP_H1F_*), set once the head is complete. */
#define LP_H1F_CHUNKED      0x0001 /* Transfer-Encoding: chunked */
#define LP_H1F_LENGTH       0x0002 /* Content-Length given */
#define LP_H1F_CONN_CLOSE   0x0004 /* Connection: close (or 1.0 without keep-alive) */
#define LP_H1F_KEEPALIVE_10 0x0008 /* HTTP/1.0 with Connection: keep-alive */
#define LP_H1F_EXPECT_100   0x0010 /* Expect: 100-continue */
#define LP_H1F_UPGRADE      0x0020 /* Connection: upgrade and an Upgrade header */
#define LP_H1F_ABSOLUTE     0x0040 /* request target was absolute-form */
#define LP_H1F_HEAD_REQ     0x0080 /* response parser: the request was HEAD (no body) */
#define LP_H1F_EOF_BODY     0x0100 /* response body runs to connection close */

#define LP_H1_MAX_CONN_TOKENS 16

typedef struct lp_h1_s lp_h1_t;
/* Body bytes; a non-zero return stops the parser with an error. */
/* A body callback returns 0 to go on, LP_H1_CB_PAUSE to stop parsing after this span
 * (lp_h1_execute returns LP_H1_PAUSED; lp_h1_resume before feeding more), anything else
 * to fail the message. */
#define LP_H1_CB_PAUSE 2
typedef int (*lp_h1_body_cb)(lp_h1_t *h, const char *at, size_t len);
/* Called when the arena is full: the owner provides a larger one (lp_h1_rebase) or
 * returns -1. */
typedef int (*lp_h1_grow_cb)(lp_h1_t *h, size_t need);

struct lp_h1_s {
    llhttp_t parser; /* parser.data is this struct */
    void *ud;        /* the owner (connection) */
    lp_h1_body_cb on_body;
    lp_h1_grow_cb grow; /* NULL: the arena cannot grow */

    /* Limits, from the config. */
    size_t max_header_size, max_uri_size;
    unsigned max_headers;
    unsigned path_norm; /* LP_PATHN_* (pathnorm.h) for request targets; 0 from lp_h1_init */

    /* Storage for the current message head (caller-owned arena and header array). */
    char *arena;
    size_t arena_len, arena_cap;
    lp_header_t *headers;
    unsigned nheaders;
    size_t header_bytes;

    /* The parsed head. */
    lp_str_t url, path, authority, reason;
    lp_str_t host; /* Host (or the absolute-form authority); base NULL when absent */
    unsigned flags;
    uint64_t content_length;
    lp_str_t conn_tokens[LP_H1_MAX_CONN_TOKENS];
    unsigned nconn_tokens;

    /* Parser state of our own checks. */
    int in_value;
    int value_started;
    char last_byte, last_byte2; /* the last two bytes of earlier execute() input */
    const char *chunk_base;
    int host_count, te_count, cl_count;
    int body_started;
    int body_paused; /* the body callback asked for LP_H1_PAUSED */
    int after_head;  /* paused after the head or a body span: execute again, even with no input */
    int scan_state;  /* scan_head(): 0 before the start line, 1 in it, 2 in fields, 3 done */
    int rl_spaces;

    /* Error reporting. */
    int err_status;
    const char *err_reason;
};

/* type is HTTP_REQUEST or HTTP_RESPONSE. */
void lp_h1_init(lp_h1_t *h, llhttp_type_t type, void *ud, lp_h1_body_cb on_body);
/* Storage for the next message head; nothing points into the previous one afterwards. */
void lp_h1_set_storage(lp_h1_t *h, char *arena, size_t cap, lp_header_t *headers,
                       unsigned max_headers);
/* Moves the head into a new arena (at least arena_len bytes; copied here) and points every
 * slice there. */
void lp_h1_rebase(lp_h1_t *h, char *arena, size_t cap);
/* Points s into `to` if it pointed into [from, from + len]. */
void lp_str_rebase(lp_str_t *s, const char *from, size_t len, const char *to);
/* Feeds bytes. *consumed says how many were used; on HEAD/DONE the rest is kept by the
 * caller and fed again after lp_h1_resume(). */
lp_h1_event_t lp_h1_execute(lp_h1_t *h, const char *data, size_t len, size_t *consumed);
void lp_h1_resume(lp_h1_t *h);
/* Tells the parser a connection ended: for bodies that run to EOF. */
lp_h1_event_t lp_h1_finish(lp_h1_t *h);

/* A response head that arrives as fields (HTTP/2, whose framing nghttp2 has checked) goes
 * into the same storage and view as a parsed one, without text: begin, each field, then
 * the final status. -1 with err_status and err_reason set when the head is refused (too
 * many or too large fields, a bad or second Content-Length, a bad status). The parser's
 * own state is left alone: such a head's body never goes through lp_h1_execute. */
void lp_h1_fields_begin(lp_h1_t *h);
int lp_h1_field(lp_h1_t *h, const char *name, size_t nlen, const char *value, size_t vlen);
int lp_h1_fields_end(lp_h1_t *h, int status);

/* Predicates (0/1). */
int lp_h1_is_hop_by_hop(const lp_h1_t *h, lp_str_t name);
int lp_h1_tchar_token(lp_str_t s);
const lp_header_t *lp_h1_find(const lp_h1_t *h, const char *name, size_t len);
uint8_t lp_h1_method(const lp_h1_t *h);
int lp_h1_status(const lp_h1_t *h);
int lp_h1_minor(const lp_h1_t *h);
const char *lp_h1_status_text(int status);
/* A response head as the client will get it: the decisions are the caller's (conn.c), the
 * bytes are written here. */
typedef struct {
    int status;
    lp_str_t reason;            /* base NULL: the standard text for the status */
    const lp_header_t *headers; /* borrowed: end-to-end fields, in order */
    unsigned nheaders;
    int local;              /* the proxy's own answer: Server and Date unless it has them */
    int stored;             /* ... of a stored response (a cache hit): no Server of its own
                               (it has the origin's, if the origin sent one, as the miss did) */
    int upgrade;            /* a 101 switching: Connection: upgrade + Upgrade */
    lp_str_t upgrade_proto; /* the Upgrade value (base NULL: none) */
    int chunked;            /* Transfer-Encoding: chunked */
    int has_length;         /* Content-Length: length (when not chunked) */
    uint64_t length;
    int close;  /* Connection: close */
    int http10; /* an HTTP/1.0 client kept alive: Connection: keep-alive */
} lp_h1_resp_head_t;

/* Writes the head into out; the bytes used, or 0 when cap is too small. A Date field is
 * added when the headers have none (RFC 9110 6.6.1: an origin with a clock sends Date; a
 * proxy adds a missing one). */
size_t lp_h1_response_head(char *out, size_t cap, const lp_h1_resp_head_t *h);

/* The current time as an HTTP date (IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT"),
 * formatted once a second per thread. */
const char *lp_h1_date(void);

/* The value of `name` in "a=1; b=2" (sep ';', cookies) or "a=1&b=2" (sep '&', queries),
 * raw (not decoded); base NULL when absent. */
lp_str_t lp_kv_find(lp_str_t s, char sep, const char *name, size_t nlen);

/* Head serialization into a caller buffer. They return bytes written, or 0 when it did
 * not fit. */
typedef struct {
    char *p, *end;
    int overflow;
} lp_wbuf_t;
void lp_wbuf_str(lp_wbuf_t *w, const char *s, size_t n);
void lp_wbuf_cstr(lp_wbuf_t *w, const char *s);
void lp_wbuf_u64(lp_wbuf_t *w, uint64_t v);
/* v in base 10 or 16 (lower case) into out (24 bytes); returns the length. */
size_t lp_u64_to_str(uint64_t v, unsigned base, char *out);
void lp_wbuf_header(lp_wbuf_t *w, const char *name, size_t nlen, const char *val, size_t vlen);

#endif
