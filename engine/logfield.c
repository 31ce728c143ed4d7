#include <stdlib.h>
#include "logfield.h"

#define ENTRY_HEAD 4 /* name length, type, value length (2 bytes, little end first) */

static size_t entry_at(const lp_logfields_t *f, size_t pos, lp_logfield_t *out)
{
    const unsigned char *p = (const unsigned char *)f->buf + pos;
    size_t nlen = p[0], vlen = (size_t)p[2] | (size_t)p[3] << 8;
    out->type = p[1];
    out->name = (lp_str_t){f->buf + pos + ENTRY_HEAD, nlen};
    out->value = (lp_str_t){f->buf + pos + ENTRY_HEAD + nlen, vlen};
    return pos + ENTRY_HEAD + nlen + vlen;
}

size_t lp_logfields_next(const lp_logfields_t *f, size_t pos, lp_logfield_t *out)
{
    if (!f->buf || pos >= f->len)
        return 0;
    return entry_at(f, pos, out);
}

/* The offset of the entry named so, or -1. */
static long find(const lp_logfields_t *f, const char *name, size_t nlen)
{
    lp_logfield_t e;
    for (size_t pos = 0, next; (next = lp_logfields_next(f, pos, &e)); pos = next)
        if (e.name.len == nlen && memcmp(e.name.base, name, nlen) == 0)
            return (long)pos;
    return -1;
}

int lp_logfields_get(const lp_logfields_t *f, const char *name, size_t nlen, lp_logfield_t *out)
{
    long pos = find(f, name, nlen);
    if (pos < 0)
        return 0;
    entry_at(f, (size_t)pos, out);
    return 1;
}

static int name_ok(const char *s, size_t n)
{
    if (!n || n > LP_LOG_FIELD_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

int lp_logfields_set(lp_logfields_t *f, unsigned max, const char *name, size_t nlen, int type,
                     const char *value, size_t vlen)
{
    if (!name_ok(name, nlen) || type < LP_LOGF_UNSET || type > LP_LOGF_BOOL)
        return LP_EINVAL;
    if (type != LP_LOGF_UNSET && vlen > LP_LOG_FIELD_VALUE_MAX)
        return LP_ELIMIT;
    long pos = find(f, name, nlen);
    if (type == LP_LOGF_UNSET) {
        if (pos >= 0) {
            lp_logfield_t e;
            size_t end = entry_at(f, (size_t)pos, &e);
            memmove(f->buf + pos, f->buf + end, f->len - end);
            f->len = (uint16_t)(f->len - (end - (size_t)pos));
            f->n--;
        }
        return 0;
    }
    size_t need = ENTRY_HEAD + nlen + vlen, old = 0, end = 0;
    if (pos >= 0) {
        lp_logfield_t e;
        end = entry_at(f, (size_t)pos, &e);
        old = end - (size_t)pos;
    } else if (f->n >= max) {
        return LP_ELIMIT;
    }
    if (f->len - old + need > LP_LOG_FIELDS_BYTES)
        return LP_ELIMIT;
    if (!f->buf && !(f->buf = malloc(LP_LOG_FIELDS_BYTES)))
        return LP_ENOMEM;
    unsigned char *p;
    if (pos >= 0) {
        /* Same place: move what follows by the difference in size. */
        memmove(f->buf + (size_t)pos + need, f->buf + end, f->len - end);
        f->len = (uint16_t)(f->len - old + need);
        p = (unsigned char *)f->buf + pos;
    } else {
        p = (unsigned char *)f->buf + f->len;
        f->len = (uint16_t)(f->len + need);
        f->n++;
    }
    p[0] = (unsigned char)nlen;
    p[1] = (unsigned char)type;
    p[2] = (unsigned char)(vlen & 0xff);
    p[3] = (unsigned char)(vlen >> 8);
    memcpy(p + ENTRY_HEAD, name, nlen);
    if (vlen)
        memcpy(p + ENTRY_HEAD + nlen, value, vlen);
    return 0;
}

void lp_logfields_clear(lp_logfields_t *f)
{
    free(f->buf);
    f->buf = NULL;
    f->len = 0;
    f->n = 0;
}
