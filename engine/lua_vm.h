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
enum {
    LP_LW_NONE,
    LP_LW_SLEEP,     /* proxy.sleep: its timer */
    LP_LW_BODY,      /* req:body(): the connection reading the body */
    LP_LW_RESPONDED, /* req:respond() answered: never resumed */
    LP_LW_IO,        /* an engine object (a socket) that parked it: lp_lua_park */
    LP_LW_TIMER,     /* a timer's time (counts as a pending timer) */
    LP_LW_SLOT,      /* a due timer waiting for a running slot (lua.max_running_timers) */
};

/* What a task runs. */
enum {
    LP_LT_REQUEST,    /* the phases of one request */
    LP_LT_BACKGROUND, /* a timer or a spawned thread: no request (lua/luaproxy/tasks.lua) */
    LP_LT_INIT,       /* init_worker, on a private loop while the VM is built */
};

/* What a woken task's yield returns to Lua (lp_lua_task_t.wake). */
enum { LP_WAKE_OK = 0, LP_WAKE_PREMATURE = 1, LP_WAKE_CANCELLED = 2 };

typedef struct lp_lua_s lp_lua_t;

/* A coroutine running Lua for one request, one background task or init_worker. Owned by
 * its VM, which recycles it (and frees it when retired); a VM outlives its tasks: request
 * tasks are released with their request, background tasks hold their generation. */
typedef struct lp_lua_task_s {
    lua_State *co;
    int co_ref;           /* registry reference anchoring co */
    int slot;             /* its index in the VM's handle table (ref_handles), fixed for life */
    int has_handle;       /* that entry is its request's handle (made by the first phase) */
    lp_req_t *req;        /* borrowed: the request (LP_LT_REQUEST) until it ends, else NULL */
    lp_lua_t *vm;         /* borrowed: its VM */
    uv_timer_t timer;     /* proxy.sleep and timer delays; on vm->io's loop once timer_on */
    int timer_on;         /* `timer` was initialized (it needs a loop to live on) */
    int kind;             /* LP_LT_* */
    int wait;             /* LP_LW_*: what the suspended coroutine waits for */
    int wake;             /* LP_WAKE_*: handed to Lua by the next resume */
    int phase;            /* the phase running or suspended (LP_PHASE_*) */
    int in_filter;        /* a response_body filter runs: it may not yield */
    uint32_t serial;      /* bumped at every park and wake: a waiter of an older park is stale */
    uint32_t bg_id;       /* background: its id (proxy.timer handles, tasks.lua's job table) */
    uint64_t delay;       /* background, not started: ms to wait once attached */
    lp_wgen_t *wgen;      /* reference (background, attached): the generation it holds */
    lp_rc_t last_rc;      /* the outcome of the last resume from a timer */
    lp_list_t owned;      /* lp_lua_owned_t.link: what its Lua opened, closed when it ends */
    lp_list_t link;       /* background: in the worker's sched.bg (or vm->deferred) */
    lp_list_t ready_link; /* in sched.ready (woken) or sched.slot_wait; else self-linked */
    struct lp_lua_task_s *next_free;
    struct lp_lua_task_s *next_all;
} lp_lua_task_t;

/* Something a task's Lua opened (a socket) that must not outlive the task: released when
 * the task ends (its request ends, its timer returns), whatever Lua still holds. */
typedef struct lp_lua_owned_s {
    lp_list_t link;                            /* in the task's `owned` */
    void (*release)(struct lp_lua_owned_s *o); /* the task ended: close, without Lua */
} lp_lua_owned_t;

/* A parked task, as the engine object that will wake it keeps it. Stale (ignored by
 * lp_lua_unpark) once the task was woken otherwise, or ended: the serial says. */
typedef struct {
    lp_lua_task_t *task; /* borrowed: valid while the holder is in the task's `owned` list */
    uint32_t serial;
} lp_lua_waiter_t;

/* For FFI functions: parks the running task (Lua yields right after the call returns) and
 * fills *w. LP_FFI_EPHASE when no task runs (a config check, a plugin's main chunk). */
int lp_lua_park(lp_lua_waiter_t *w);
/* The wait of `w` is over: its task resumes on this loop turn (never under the caller).
 * Ignored when stale. */
void lp_lua_unpark(lp_lua_waiter_t w);
/* Ties o to the running task (NULL outside one: then the caller owns o alone). The task
 * the object belongs to (NULL when none), for checks that a socket is used by its task. */
lp_lua_task_t *lp_lua_own(lp_lua_owned_t *o);
void lp_lua_disown(lp_lua_owned_t *o);
/* The running task (NULL when none), and the worker context its sockets use (its loop,
 * deadline heap and buffers; a private one during init_worker). */
lp_lua_task_t *lp_lua_running(void);
lp_worker_t *lp_lua_io(void);
/* 1 while the VM is loading (init_worker): pooled connections must not be kept then. */
int lp_lua_loading(void);

/* A worker's Lua scheduling (engine/lua_task.c), embedded in lp_worker_t. */
void lp_lua_sched_init(lp_worker_t *w);
/* At worker exit (once no background task is left). */
void lp_lua_sched_close(lp_worker_t *w);
/* Background tasks still running in the worker (a stopping worker waits for them). */
unsigned lp_lua_background(lp_worker_t *w);
/* Stops every background task of the worker at once (the drain deadline passed) or of
 * ended generations that ran past the drain timeout (`all` 0: the housekeeping pass). */
void lp_lua_background_stop(lp_worker_t *w, int all);

/* Whether the VM's generation ended at or before `when` (uv_now() ms). */
int lp_lua_ended_before(const lp_lua_t *vm, uint64_t when);

/* The VM serves from now on, on its worker's loop, for generation g: timers made by
 * init_worker start. Worker thread (or before it runs). */
void lp_lua_attach(lp_lua_t *vm, lp_wgen_t *g);
/* Its generation stopped being current (reload, shutdown): pending timers run once now
 * with premature = true, new timers are refused. */
void lp_lua_generation_ended(lp_lua_t *vm);

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

/* `luaproxy push` only: the plugin sources its check loads before the files, as the
 * instances will (JSON {"prefix": "PREFIX plugins/", "sources": {NAME: source}}; borrowed
 * from push, NULL otherwise). Read by every config check of the process. */
extern const char *lp_lua_push_plugins;
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
/* math.randomseed from the OS's random source: every Lua VM the engine makes. */
void lp_lua_seed_random(lua_State *L);

int lp_lua_open(lp_worker_t *w, const lp_config_t *cfg, lp_upstream_rt_t *ups,
                struct lp_lua_s **out, char *err, size_t errlen);
/* The upstreams of the generation whose Lua runs now on this thread (proxy.upstream()), or
 * NULL outside Lua. */
lp_upstream_rt_t *lp__lua_upstreams(size_t *n);
/* Frees a VM no request uses any more (its task timers close first). Worker thread. */
void lp_lua_retire(struct lp_lua_s *vm);
/* Bytes the VM's heap holds (0 without a VM). Its worker's thread. */
uint64_t lp_lua_memory(struct lp_lua_s *vm);
/* Whether the request's chain (route index, or -1 for no route) has Lua for `phase`. */
int lp_lua_wants(struct lp_lua_s *vm, int route, int phase);
/* Runs a phase. LP_OK: continue; LP_AGAIN: suspended, lp_conn_lua_resumed() follows;
 * LP_DONE: req:respond() answered; LP_ERROR: a plugin failed (the request gets 500). */
lp_rc_t lp_lua_phase(lp_req_t *req, int phase);
/* Runs the predicate of config route req->route_index (match.predicate) on the request's
 * handle, made for that route, synchronously (it cannot wait). 1: true, 0: false (the
 * handle is dropped: the next candidate gets its own), -1: an error, logged with its
 * traceback (the request fails with 500). */
int lp_lua_route_predicate(lp_req_t *req);
/* The response_body filter chain on one chunk. LP_OK: *out is the chunk to send (valid until
 * the next Lua call); LP_AGAIN: a filter waits, lp_conn_lua_resumed(LP_PHASE_BODY) follows
 * and lp_lua_body_output then gives the chunk; LP_ERROR: a filter failed; LP_GONE: the
 * request ended. */
lp_rc_t lp_lua_body_filter(lp_req_t *req, const char *at, size_t len, int eof, lp_str_t *out);
lp_rc_t lp_lua_body_output(lp_req_t *req, lp_str_t *out);
/* What req:body() waited for happened: resume the phase. */
void lp_lua_wake(lp_req_t *req);
/* Whether the Lua running now is a phase of req (not another request's). */
int lp__lua_runs(const lp_req_t *req);
/* Whether any Lua runs now on this thread (a phase may not start inside another). */
int lp_lua_busy(void);
/* The request is gone: drop its coroutine and handle, and close what its Lua opened. */
void lp_lua_release(lp_req_t *req);

/* Runaway guard: one watchdog thread for all workers (see lua_vm.c). */
void lp_lua_watchdog_start(void);
void lp_lua_watchdog_stop(void);

#endif
