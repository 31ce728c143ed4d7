/* Each worker's LuaJIT VM: loading the runtime and the config's plugins, running a phase
 * of a request in its coroutine, and resuming it when what it waited for completes. */
#ifndef LP_LUA_VM_H
#define LP_LUA_VM_H

#include <lua.h>
#include "proxy-t.h"

/* Phase numbers, shared with lua/luaproxy/runtime.lua (M.PHASES). */
enum { LP_PHASE_REQUEST = 1, LP_PHASE_UPSTREAM, LP_PHASE_RESPONSE, LP_PHASE_BODY, LP_PHASE_LOG };
#define LP_PHASE_BIT(p) (1u << (p))

/* What a suspended task waits for (lp_lua_task_t.wait). */
enum { LP_LW_NONE, LP_LW_SLEEP, LP_LW_BODY, LP_LW_RESPONDED };

typedef struct lp_lua_s lp_lua_t;

/* A coroutine running Lua for one request (or for init_worker). Owned by the worker's VM;
 * recycled with its timer. */
typedef struct lp_lua_task_s {
    lua_State *co;
    int co_ref;     /* registry reference anchoring co */
    int handle_ref; /* the request handle table (LUA_NOREF for init_worker) */
    lp_req_t *req;
    lp_lua_t *vm;
    uv_timer_t timer; /* proxy.sleep */
    int wait;         /* LP_LW_*: what the suspended coroutine waits for */
    int phase;        /* the phase running or suspended (LP_PHASE_*) */
    int in_filter;    /* a response_body filter runs: it may not yield */
    lp_rc_t last_rc;  /* the outcome of the last resume from a timer */
    struct lp_lua_task_s *next_free;
    struct lp_lua_task_s *next_all;
} lp_lua_task_t;

/* The directory holding the engine's lua/, plugins/ and scripts/: LUAPROXY_HOME, else
 * PREFIX/share/luaproxy when the binary runs from PREFIX/bin (installed), else the source
 * tree the binary was built from. Decided once per process. */
const char *lp_lua_engine_root(void);
/* Where that came from, for `luaproxy -v`: "LUAPROXY_HOME", "the install prefix" or "the
 * source tree". */
const char *lp_lua_engine_root_origin(void);
/* msg with a "...tail:" file name that Lua shortened restored to `path`. */
void lp_lua_error_message(const char *msg, const char *path, char *out, size_t outlen);
/* Adds to package.path the engine's Lua directories and the config's own; used by the
 * config loader and the workers alike. */
void lp_lua_set_paths(lua_State *L, const char *config_path);
/* Validates the plugins and handlers of the config table at the top of L's stack (the
 * main thread's check, also for `luaproxy -t`). */
int lp_lua_check_config(lua_State *L, const char *config_path, char *err, size_t errlen);
/* Evaluates the config file in L (the config VM, main thread) through the runaway guard,
 * so that its functions are guarded wherever they run; pushes what it returned. */
int lp_lua_eval_config(lua_State *L, const char *path, char *err, size_t errlen);

/* Worker VM. */
/* Builds worker w's VM for cfg (*out NULL when the config has no Lua): loads the runtime,
 * the plugins and handlers, and runs init_worker (which may change `ups`, the generation's
 * upstreams in w). May run on the main thread: the VM is
 * handed to the worker afterwards. */
int lp_lua_open(lp_worker_t *w, const lp_config_t *cfg, lp_upstream_rt_t *ups,
                struct lp_lua_s **out, char *err, size_t errlen);
/* The upstreams of the generation whose Lua runs now on this thread (proxy.upstream()), or
 * NULL outside Lua. */
lp_upstream_rt_t *lp__lua_upstreams(size_t *n);
/* Frees a VM no request uses any more (its task timers close first). Worker thread. */
void lp_lua_retire(struct lp_lua_s *vm);
/* Whether the request's chain (route index, or -1 for no route) has Lua for `phase`. */
int lp_lua_wants(struct lp_lua_s *vm, int route, int phase);
/* Runs a phase. LP_OK: continue; LP_AGAIN: suspended, lp_conn_lua_resumed() follows;
 * LP_DONE: req:respond() answered; LP_ERROR: a plugin failed (the request gets 500). */
lp_rc_t lp_lua_phase(lp_req_t *req, int phase);
/* The response_body filter: *out is the chunk to send (valid until the next Lua call). */
lp_rc_t lp_lua_body_filter(lp_req_t *req, const char *at, size_t len, int eof, lp_str_t *out);
/* What req:body() waited for happened: resume the phase. */
void lp_lua_wake(lp_req_t *req);
/* Whether the Lua running now is a phase of req (not another request's). */
int lp__lua_runs(const lp_req_t *req);
/* The request is gone: drop its coroutine and handle. */
void lp_lua_release(lp_req_t *req);

/* Runaway guard: one watchdog thread for all workers (see lua_vm.c). */
void lp_lua_watchdog_start(void);
void lp_lua_watchdog_stop(void);

#endif
