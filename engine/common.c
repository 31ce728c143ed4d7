#include "common.h"

const char *lp_strerror(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define LP_E_STR(name, c, msg)                                                                     \
    case c:                                                                                        \
        return msg;
        LP_ERRNO_MAP(LP_E_STR)
#undef LP_E_STR
    }
    return "unknown error";
}

int lp_str_ieq(lp_str_t s, const char *p, size_t n)
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
