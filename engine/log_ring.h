/* The last error-log lines at level warn or error, kept in memory for the admin API's
 * GET /errors (and the status page's "recent errors"). Fed by lp_log (log.c) from any
 * thread; one mutex around a fixed ring, held for a copy of at most LP_LOG_RING_LINE bytes. */
#ifndef LP_LOG_RING_H
#define LP_LOG_RING_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "log.h"

#define LP_LOG_RING      100  /* lines kept; older ones are dropped */
#define LP_LOG_RING_LINE 1024 /* bytes kept of a line; longer ones are cut */

/* Keeps a copy of line (len bytes, no newline) when level is error or warn; `at` is the
 * time the line shows (seconds since the epoch). Any thread. */
void lp_log_ring_add(lp_log_level_t level, double at, const char *line, size_t len);
/* The lines kept, newest first, as a new JSON object {"total": lines ever kept, "errors":
 * [{"time","level","message"}]} (NULL when out of memory). Any thread. */
json_t *lp_log_ring_json(void);

#endif
