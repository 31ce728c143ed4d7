#include "route.h"

static int host_matches(const lp_route_conf_t *r, lp_str_t host)
{
    if (!r->host)
        return 1;
    /* Drop the port; compare case-insensitively. */
    size_t n = host.len;
    if (n && host.base[0] == '[') {
        const char *e = memchr(host.base, ']', n);
        n = e ? (size_t)(e - host.base) + 1 : n;
    } else {
        const char *colon = memchr(host.base, ':', n);
        if (colon)
            n = (size_t)(colon - host.base);
    }
    while (n && host.base[n - 1] == '.')
        n--;
    const char *pat = r->host;
    size_t plen = strlen(pat);
    if (pat[0] == '*') {
        /* "*.example.com" matches any name ending in ".example.com". */
        size_t slen = plen - 1;
        if (n <= slen)
            return 0;
        return lp_str_ieq((lp_str_t){host.base + n - slen, slen}, pat + 1, slen);
    }
    return lp_str_ieq((lp_str_t){host.base, n}, pat, plen);
}

const lp_route_conf_t *lp_route_find(const lp_config_t *cfg, const lp_h1_t *h)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const lp_route_conf_t *r = &cfg->routes[i];
        int asterisk = h->path.len == 1 && h->path.base[0] == '*'; /* OPTIONS * */
        if (asterisk ? r->prefix_len != 1
                     : (h->path.len < r->prefix_len ||
                        memcmp(h->path.base, r->prefix, r->prefix_len) != 0))
            continue;
        if (!host_matches(r, h->host.base ? h->host : (lp_str_t){"", 0}))
            continue;
        return r;
    }
    return NULL;
}
