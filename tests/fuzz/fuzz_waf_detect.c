/* libFuzzer target: arbitrary bytes through the waf plugin's operators in C (@detectSQLi,
 * @detectXSS, engine/waf_sqli.c and waf_xss.c; @validate*, waf_validate.c). The sanitizers
 * check the reads; the target checks what the engine relies on:
 *   - a span is within the value (and within the bytes each detector reads: 4 KiB of SQL,
 *     64 KiB of HTML), from <= to, positions from 1;
 *   - @detectSQLi's fingerprint is 1 to 6 token classes;
 *   - the validators' positions are 0 or within the value, at a byte of the kind found.
 * libFuzzer's -timeout catches work that grows faster than the value. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct lp_req_s;
#include "lua_api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    lp_waf_detect_t d;
    if (lp_ffi_waf_sqli(v, size, &d)) {
        size_t fl = strnlen(d.fp, sizeof d.fp);
        if (d.from < 1 || d.from > d.to || d.to > size || fl < 1 || fl > 6 ||
            strspn(d.fp, "snkU&ofvc(),;bx") != fl)
            abort();
    }
    if (lp_ffi_waf_xss(v, size, &d)) {
        if (d.from < 1 || d.from > d.to || d.to > size)
            abort();
    }
    unsigned char bad[32];
    memset(bad, 0, sizeof bad);
    if (size > 0)
        bad[data[0] >> 3] = (unsigned char)(1u << (data[0] & 7));
    size_t i = lp_ffi_waf_byte_range(bad, v, size);
    if (i > size || (size > 0 && i != 1) || (size == 0 && i != 0))
        abort(); /* data[0] is the one byte outside: found at once */
    i = lp_ffi_waf_urlenc_invalid(v, size);
    if (i > size || (i > 0 && data[i - 1] != '%'))
        abort();
    i = lp_ffi_waf_utf8_invalid(v, size);
    if (i > size || (i > 0 && data[i - 1] < 0x80))
        abort();
    return 0;
}
