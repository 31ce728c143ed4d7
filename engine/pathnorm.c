/* Request path normalisation (pathnorm.h). Two passes in place, each writing no further
 * than it has read: escapes first, so "%2e%2E" is a dot segment like "..", as in Envoy's
 * normalize_path and nginx's complex-URI parse. */
#include <string.h>
#include "pathnorm.h"
#include "tchar.h"

static int unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* p[i] is '/': is the segment after it "." or ".."? */
static int dot_segment_at(const char *p, size_t i, size_t end)
{
    size_t k = i + 1;
    if (k < end && p[k] == '.')
        k++;
    else
        return 0;
    if (k < end && p[k] == '.')
        k++;
    return k == end || p[k] == '/';
}

static size_t path_end(const char *p, size_t len)
{
    const char *q = memchr(p, '?', len);
    return q ? (size_t)(q - p) : len;
}

/* p[i] is '/' and p[i + 1] is '.' or '/': out of line, so the scan below is a leaf that
 * saves no registers (the common path pays the loop only). */
__attribute__((noinline)) static int slash_needs(const char *p, size_t i, size_t len,
                                                 unsigned flags)
{
    if (p[i + 1] == '/')
        return (flags & LP_PATHN_MERGE) != 0;
    return dot_segment_at(p, i, path_end(p + i, len - i) + i);
}

__attribute__((noinline)) static int merge_needs(const char *p, size_t len)
{
    return memmem(p, path_end(p, len), "//", 2) != NULL;
}

int lp_path_needs_norm(const char *p, size_t len, unsigned flags)
{
    if (!(flags & LP_PATHN_NORMALIZE))
        return (flags & LP_PATHN_MERGE) && merge_needs(p, len);
    /* Per request: one table load per byte for the bytes that are none of "%/?". */
    static const unsigned char stop[256] = {['%'] = 1, ['/'] = 1, ['?'] = 1};
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (!stop[(unsigned char)c])
            continue;
        if (c == '?')
            return 0;
        if (c == '%')
            return 1;
        if (i + 1 < len && (p[i + 1] == '.' || p[i + 1] == '/') && slash_needs(p, i, len, flags))
            return 1;
    }
    return 0;
}

/* %XX of an unreserved character becomes the character; other escapes are kept as sent. */
static long decode_unreserved(char *p, size_t end)
{
    size_t o = 0;
    for (size_t i = 0; i < end; i++) {
        if (p[i] != '%') {
            p[o++] = p[i];
            continue;
        }
        int hi = i + 2 < end ? lp_hexval((unsigned char)p[i + 1]) : -1;
        int lo = hi >= 0 ? lp_hexval((unsigned char)p[i + 2]) : -1;
        if (lo < 0)
            return LP_PATHN_BAD_ESCAPE;
        int c = hi * 16 + lo;
        if (unreserved(c)) {
            p[o++] = (char)c;
        } else {
            p[o++] = '%';
            p[o++] = p[i + 1];
            p[o++] = p[i + 2];
        }
        i += 2;
    }
    return (long)o;
}

/* RFC 3986 5.2.4 on an absolute path, except that ".." above the root is an error. The
 * output holds "/seg" units, so its last '/' is where a ".." goes back to. */
static long remove_dots(char *p, size_t end, int dots, int merge)
{
    size_t o = 0, i = 0;
    while (i < end) {
        size_t j = i + 1; /* p[i] is '/' */
        while (j < end && p[j] != '/')
            j++;
        size_t n = j - i - 1;
        const char *seg = p + i + 1;
        if (dots && n == 1 && seg[0] == '.') {
            if (j == end)
                p[o++] = '/';
        } else if (dots && n == 2 && seg[0] == '.' && seg[1] == '.') {
            if (o == 0)
                return LP_PATHN_ABOVE_ROOT;
            while (o > 0 && p[o - 1] != '/')
                o--;
            o--; /* the '/' that started the segment */
            if (j == end)
                p[o++] = '/';
        } else if (n == 0 && j < end && merge) {
            /* "//": nothing */
        } else {
            memmove(p + o, p + i, n + 1);
            o += n + 1;
        }
        i = j;
    }
    if (o == 0)
        p[o++] = '/';
    return (long)o;
}

long lp_ffi_path_normalize(char *p, size_t len, unsigned flags)
{
    return lp_path_normalize(p, len, flags);
}

long lp_path_normalize(char *p, size_t len, unsigned flags)
{
    size_t end = path_end(p, len);
    long n = (long)end;
    if (flags & LP_PATHN_NORMALIZE) {
        n = decode_unreserved(p, end);
        if (n < 0)
            return n;
    }
    if (n > 0 && p[0] == '/' && (flags & (LP_PATHN_NORMALIZE | LP_PATHN_MERGE))) {
        n = remove_dots(p, (size_t)n, (flags & LP_PATHN_NORMALIZE) != 0,
                        (flags & LP_PATHN_MERGE) != 0);
        if (n < 0)
            return n;
    }
    memmove(p + n, p + end, len - end);
    return n + (long)(len - end);
}
