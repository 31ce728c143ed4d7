/* Inside the Lua VM module: lua_vm.c (loading, the runaway guard) and lua_task.c (tasks,
 * waits, background work) share these. Nothing else includes it. */
#ifndef LP_LUA_VM_INT_H
#define LP_LUA_VM_INT_H

#include "lua_vm.h"

/* A deadline the watchdog thread watches, and the flag it sets when the deadline passed:
 * one per worker VM, and one per config check (lp_lua_check_config) while plugin code runs
 * there. deadline_ns and stop are shared with the watchdog (atomics); the rest is the
 * owner's. Lua reads `stop` through the FFI (the runaway guard, lua/luaproxy/guard.lua):
 * nothing else about a VM crosses threads. */
typedef struct lp_lua_guard_s {
    uint64_t timeout_ns;  /* lua.phase_timeout, or lua.init_timeout while loading (0: none) */
    const char *limit;    /* borrowed (a literal): the config key of timeout_ns, for the error;
                           * NULL: "phase_timeout" */
    uint64_t deadline_ns; /* wall clock (uv_hrtime) the Lua running now must end by; 0: none */
    int stop;             /* set by the watchdog past the deadline; cleared by the owner */
    int registered;       /* in the watchdog's list (under wd_lock) */
} lp_lua_guard_t;

struct lp_lua_s {
    lua_State *L;
    lp_worker_t *w; /* borrowed: the worker it serves (its id; its loop once attached) */
    /* Where its tasks wait and wake: a private context on the loading thread while
     * init_worker runs (run_init_worker), its worker from lp_lua_attach, NULL between. */
    lp_worker_t *io; /* borrowed (see above) */
    lp_wgen_t *wgen; /* borrowed: its generation, from lp_lua_attach */
    /* request.lua's entry points (bind): the first phase of a request (makes its handle),
     * a later phase, a body filter; and the table of handles by task slot. The handle
     * stays in Lua: C passes the slot, so no phase needs a C call to reach it. */
    int ref_enter, ref_run, ref_body, ref_handles;
    int nslots; /* task slots given out (lp_lua_task_t.slot) */
    /* The strings that invalidate a handle ("_phase", "ended", "_r"), interned once: a
     * push by reference costs no hashing per request. */
    int ref_k_phase, ref_k_ended, ref_k_r;
    int ref_pred;                /* route_predicate.run (0: not loaded) */
    int ref_bg;                  /* luaproxy.tasks.run: a background task's body */
    unsigned char *route_phases; /* [0]: no route matched; [i + 1]: route i; bitmask */
    size_t nroutes;
    struct lp_cache_native_s **cache_native; /* owned: [route i] the engine's run of the cache
                                                plugin's common miss, or NULL (cache_native.h);
                                                NULL: no route has one */
    lp_lua_task_t *free_tasks;
    lp_lua_task_t *all_tasks; /* every task ever made, for retiring (linked by next_all) */
    lp_lua_task_t *running;   /* the task being resumed */
    lp_list_t deferred;       /* background tasks made before lp_lua_attach (task.link) */
    int closing_timers;       /* retiring: task timers not closed yet */
    int ended;                /* its generation ended (reload, shutdown): timers go premature */
    uint64_t ended_at;        /* uv_now() ms when it ended */
    unsigned max_timers;      /* lua.max_timers: pending timers per worker */
    uint64_t init_timeout;    /* lua.init_timeout (ms): init_worker's waits in all */
    unsigned max_running;     /* lua.max_running_timers: background tasks running per worker */
    uint32_t next_bg_id;
    char *last_error;      /* owned: the last error that escaped a task */
    lp_lua_guard_t guard;  /* phases, init_worker and loading: lua.phase_timeout each */
    lp_upstream_rt_t *ups; /* the generation's upstreams in this worker (not owned), nups */
    size_t nups;
};

/* The VM of the worker running on this thread (FFI functions find it here). */
lp_lua_t *lp__lua_current(void);
void lp__lua_set_current(lp_lua_t *vm);
void lp__guard_begin(lp_lua_guard_t *g);
void lp__guard_end(lp_lua_guard_t *g);
void lp__lua_vm_free(lp_lua_t *vm);
/* Runs the init task of a VM being opened (lua_task.c): init_worker, on a private loop. */
int lp__lua_run_init(lp_lua_t *vm, int state_idx, char *err, size_t errlen);

#endif
