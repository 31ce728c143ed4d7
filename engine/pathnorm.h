/* Request path normalisation before anything reads the path (routing, plugins, the cache
 * key, the WAF, the upstream request line): percent-encoded unreserved characters decoded,
 * dot segments removed (RFC 3986 6.2.2.2, 5.2.4), optionally runs of '/' merged. Reserved
 * escapes (%2F, %3F, ...) stay encoded: decoding them changes what the path means. Without
 * this a policy put on a prefix (/api/) is bypassed by /api/../h/ or /h/%2e%2e/api/ when the
 * upstream resolves what the proxy routed unresolved (docs/routing.md). Pure logic. */
#ifndef LP_PATHNORM_H
#define LP_PATHNORM_H

#include <stddef.h>

#define LP_PATHN_NORMALIZE 0x1 /* decode unreserved escapes, remove dot segments */
#define LP_PATHN_MERGE     0x2 /* "//" -> "/" */

#define LP_PATHN_ABOVE_ROOT (-1) /* a ".." climbs above "/" (nginx: 400) */
#define LP_PATHN_BAD_ESCAPE (-2) /* '%' not followed by two hex digits (nginx: 400) */

/* One scan of the path part of p (up to '?'; p starts with '/'): 0 when normalising would
 * change nothing, 1 when lp_path_normalize must run. The common path has no '%' and no
 * "/." (nor "//" with LP_PATHN_MERGE) and costs this scan only. */
int lp_path_needs_norm(const char *p, size_t len, unsigned flags);
/* Normalises the path part of p[0..len) in place (the query after '?' is moved along
 * untouched; the result is never longer) and returns the new length, or LP_PATHN_*. */
long lp_path_normalize(char *p, size_t len, unsigned flags);
/* The same for Lua (`luaproxy explain`; declared for the FFI in lua_api.h). */
long lp_ffi_path_normalize(char *p, size_t len, unsigned flags);

#endif
