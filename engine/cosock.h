/* proxy.tcp(): non-blocking TCP (and TLS) client sockets for Lua, in the manner of
 * OpenResty's ngx.socket.tcp, built on the engine's endpoint (endpoint.h) and TLS client
 * code (tls.h). Lua side: lua/luaproxy/tcp.lua.
 *
 * Two objects. The socket (lp_cosock_t) is what Lua holds: malloc'd by lp_ffi_tcp_new,
 * freed by lp_ffi_tcp_free from the cdata's finalizer (or when the VM closes), never
 * earlier, so a socket Lua kept past its task only ever answers nil, "closed". It belongs
 * to the task that made it (lp_lua_own): another task's calls get nil, "bad request", and
 * the task's end closes its connection. The connection (cosock_conn_t in cosock.c) embeds
 * the endpoint: it is freed only from the handle's close callback, and may outlive its
 * socket (closing, or idle in the worker's keep-alive pool).
 *
 * Worker thread only (or the loading thread during init_worker, on its private loop:
 * nothing is pooled there). */
#ifndef LP_COSOCK_H
#define LP_COSOCK_H

#include "proxy-t.h"

typedef struct lp_cosock_s lp_cosock_t;

/* The worker stops (or its pools must go): closes its idle pooled connections and frees
 * the pool table and TLS contexts; later keep-alives close instead. Idempotent. */
void lp_cosock_worker_close(lp_worker_t *w);

#endif
