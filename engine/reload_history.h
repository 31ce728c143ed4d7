/* The last reloads, for the admin API (GET /reloads) and the status page: which generation,
 * when, who asked, and how it ended. Main thread only (reloads run and are answered there),
 * so no lock. */
#ifndef LP_RELOAD_HISTORY_H
#define LP_RELOAD_HISTORY_H

#include <jansson.h>
#include <stdint.h>

#define LP_RELOAD_HISTORY 32 /* entries kept; older ones are dropped */

/* Records one finished reload (or the start-up load: who "startup"). `generation` is the
 * one serving after it; err ("" or NULL on success) is copied, cut to 1 KiB; who is copied,
 * cut to 256 bytes. took_ms: from the request to the outcome. */
void lp_reload_history_add(const char *who, int ok, uint64_t generation, const char *err,
                           double took_ms);
/* The entries, newest first, as a new JSON array (NULL when out of memory). */
json_t *lp_reload_history_json(void);

#endif
