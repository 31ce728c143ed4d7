/* Types and conventions shared by every engine module. */
#ifndef LP_COMMON_H
#define LP_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Every fallible engine call returns 0 or a negative LP_E* code. The codes live in their
 * own range (-101...), apart from lp_rc_t's (0 to -9), so that one can never pass for the
 * other (libuv keeps its errors apart the same way). */
#define LP_ERRNO_MAP(XX)                                                                           \
    XX(NOMEM, -101, "out of memory")                                                               \
    XX(INVAL, -102, "invalid argument")                                                            \
    XX(CONFIG, -103, "configuration error")                                                        \
    XX(IO, -104, "I/O error")                                                                      \
    XX(PROTO, -105, "protocol error")                                                              \
    XX(LIMIT, -106, "limit exceeded")

enum {
#define LP_E_DEF(name, code, msg) LP_E##name = code,
    LP_ERRNO_MAP(LP_E_DEF)
#undef LP_E_DEF
};

const char *lp_strerror(int code);

/* Results of a request-processing step (the nginx handler convention). */
typedef enum {
    LP_OK = 0,        /* done with this step, continue */
    LP_ERROR = -1,    /* failed; the caller answers or closes */
    LP_AGAIN = -2,    /* parked; the step is re-entered when an event completes */
    LP_DONE = -3,     /* the request was answered here; skip the remaining steps */
    LP_DECLINED = -4, /* not mine; continue with the next handler */
    LP_GONE = -5,     /* the request ended during the call: the caller only lets go of it
                         (request.h) */
} lp_rc_t;

/* A byte range. Never assumed NUL-terminated. */
typedef struct {
    const char *base;
    size_t len;
} lp_str_t;

#define LP_STR(lit)                       ((lp_str_t){(lit), sizeof(lit) - 1})
#define LP_ARRAY_LEN(a)                   (sizeof(a) / sizeof((a)[0]))
#define LP_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))
#define LP_UNUSED(x)                      ((void)(x))

/* The hash of every in-memory table (shared dicts, cache zones, metrics, the router): fast
 * on short keys, mixed with a random seed chosen when the process starts, so that keys a
 * client chooses (addresses, header values, URLs) cannot be picked offline to fall in one
 * chain. Never persist it: it changes with every start. */
uint64_t lp_hash64(const void *key, size_t n);

/* Makes *p, an array of *cap elements of `size` bytes (realloc'd memory or NULL), hold at
 * least `need`, keeping what it held: the capacity doubles from *cap (from `first` when 0),
 * so n appends cost O(n). 0, or -1 when out of memory or the size would not fit a size_t
 * (*p and *cap are then as they were). */
int lp_grow(void **p, size_t *cap, size_t need, size_t size, size_t first);

/* ASCII case-insensitive equality of s with the literal-like (p, n). Inline: header
 * lists are checked against lists of names on every request, and most names differ in
 * length, which the caller's loop then decides without a call. */
static inline int lp_str_ieq(lp_str_t s, const char *p, size_t n)
{
    if (s.len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = (unsigned char)s.base[i], b = (unsigned char)p[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b + 32);
        if (a != b)
            return 0;
    }
    return 1;
}
#define LP_STR_IEQ(s, lit) lp_str_ieq((s), (lit), sizeof(lit) - 1)

/* Doubly linked intrusive list (a zeroed head is not valid: call lp_list_init). */
typedef struct lp_list_s {
    struct lp_list_s *prev, *next;
} lp_list_t;

static inline void lp_list_init(lp_list_t *h)
{
    h->prev = h->next = h;
}
static inline int lp_list_empty(const lp_list_t *h)
{
    return h->next == h;
}
static inline void lp_list_insert_tail(lp_list_t *h, lp_list_t *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}
static inline void lp_list_insert_head(lp_list_t *h, lp_list_t *n)
{
    n->next = h->next;
    n->prev = h;
    h->next->prev = n;
    h->next = n;
}
static inline void lp_list_remove(lp_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
/* Moves every node of `from` to `to` (made empty here first), in order; `from`
 * is left empty. A loop's "only what was queued before this turn" batches. */
static inline void lp_list_take_all(lp_list_t *to, lp_list_t *from)
{
    lp_list_init(to);
    if (lp_list_empty(from))
        return;
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    lp_list_init(from);
}

#endif
