/* The waf plugin's transformations in C (ModSecurity's t: functions as the Core Rule Set uses
 * them), for the per-value pipeline (engine/waf_scan.c). Each gives byte for byte what its
 * twin in lua/luaproxy/waf/transforms.lua gives (spec/luaproxy/waf_transform_spec.lua
 * compares them over the corpora): the rules were tuned against those outputs. */
#ifndef LP_WAF_TRANSFORM_H
#define LP_WAF_TRANSFORM_H

#include <stddef.h>

/* Step codes; the names are the Lua module's (lp_waf_transform_id). */
enum {
    LP_WAF_T_LOWERCASE = 1,
    LP_WAF_T_URLDECODE,
    LP_WAF_T_HTML_DECODE,
    LP_WAF_T_JS_DECODE,
    LP_WAF_T_CSS_DECODE,
    LP_WAF_T_CMDLINE_MODSEC,
    LP_WAF_T_COMPRESS_WS,
    LP_WAF_T_REMOVE_WS,
    LP_WAF_T_REMOVE_NULLS,
    LP_WAF_T_REPLACE_COMMENTS,
    LP_WAF_T_NORMALIZE_PATH,       /* normalizePathWin: backslashes are separators too */
    LP_WAF_T_NORMALIZE_PATH_POSIX, /* normalizePath */
    LP_WAF_T_UTF8_TO_UNICODE,
    LP_WAF_T_BASE64_DECODE,
    LP_WAF_T_LENGTH,
    LP_WAF_T_TRIM,
    LP_WAF_T_TRIM_LEFT,
    LP_WAF_T_TRIM_RIGHT,
    LP_WAF_T_UPPERCASE,
    LP_WAF_T_REPLACE_NULLS,
    LP_WAF_T_HEX_ENCODE,
    LP_WAF_T_SHA1, /* raw 20 bytes (OpenSSL's libcrypto) */
    LP_WAF_T_COUNT
};

/* The step code of a transformation named as in transforms.lua, or -1 when C has none. */
int lp_waf_transform_id(const char *name);

/* Room step needs in out for an input of n bytes. */
size_t lp_waf_transform_bound(int step, size_t n);

/* Applies step to in[0..n): the output's length (written to out, which has
 * lp_waf_transform_bound bytes and does not overlap in), or -1 when the value stays as it is
 * (out not written) or step is unknown. */
long lp_waf_transform(int step, const char *in, size_t n, char *out);

#endif
