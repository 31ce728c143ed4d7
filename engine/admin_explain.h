/* POST /explain on the admin API: `luaproxy explain --json` (lua/luaproxy/tools/explain.lua)
 * run as a child process of this binary against the live generation's config file, so that
 * the plugins it runs on the test double never share a VM with anything serving. */
#ifndef LP_ADMIN_EXPLAIN_H
#define LP_ADMIN_EXPLAIN_H

#include <stddef.h>
#include <uv.h>

/* status: the HTTP status to answer (200 with the report, 400 for a request explain
 * refused, 500 when it could not run); body: JSON, borrowed for the call. */
typedef void (*lp_explain_cb)(void *data, int status, const char *body, size_t len);

/* body: `{"request": "GET https://host/path", "headers": ["Name: value", ...],
 * "client_ip": "10.0.0.1"}`. Starts the child; cb runs once, later, on `loop` (also for a
 * bad body). Returns 0, or -1 with nothing started and cb not called (out of memory). */
int lp_admin_explain(uv_loop_t *loop, const char *config_path, const char *body, size_t len,
                     lp_explain_cb cb, void *data);

#endif
