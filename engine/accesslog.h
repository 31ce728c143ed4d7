/* Access log: one line per request from a template compiled at start-up; lines are
 * buffered per worker and written once per loop iteration (before the loop sleeps). */
#ifndef LP_ACCESSLOG_H
#define LP_ACCESSLOG_H

#include "proxy-t.h"

/* NULL path: no log. Returns NULL with *err set on a bad template or an unopenable file. */
lp_accesslog_t *lp_accesslog_open(const char *path, const char *format, char *err, size_t errlen);
void lp_accesslog_close(lp_accesslog_t *log);
void lp_accesslog_write(lp_accesslog_t *log, const lp_req_t *req);
void lp_accesslog_flush(lp_accesslog_t *log);
/* Template check for config validation. */
int lp_accesslog_check_format(const char *format, char *err, size_t errlen);

#endif
