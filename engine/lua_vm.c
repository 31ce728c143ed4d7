#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lauxlib.h>
#include <lualib.h>
#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "request.h"

/* A deadline the watchdog thread watches, and the flag it sets when the deadline passed:
 * one per worker VM, and one per config check (lp_lua_check_config) while plugin code runs
 * there. deadline_ns and stop are shared with the watchdog (atomics); the rest is the
 * owner's. Lua reads `stop` through the FFI (the runaway guard, lua/luaproxy/guard.lua):
 * nothing else about a VM crosses threads. */
typedef struct lp_lua_guard_s {
    uint64_t timeout_ns;  /* lua.phase_timeout (0: none) */
    uint64_t deadline_ns; /* wall clock (uv_hrtime) the Lua running now must end by; 0: none */
    int stop;             /* set by the watchdog past the deadline; cleared by the owner */
    int registered;       /* in the watchdog's list (under wd_lock) */
} lp_lua_guard_t;

struct lp_lua_s {
    lua_State *L;
    lp_worker_t *w;
    int ref_run, ref_body, ref_new; /* runtime.run, runtime.body, request.new */
    unsigned char *route_phases;    /* [0]: no route matched; [i + 1]: route i; bitmask */
    size_t nroutes;
    lp_lua_task_t *free_tasks;
    lp_lua_task_t *all_tasks; /* every task ever made, for shutdown (linked by next_all) */
    lp_lua_task_t *running;   /* the task being resumed */
    int closing_timers;       /* retiring: task timers not closed yet */
    char *last_error;         /* owned: the last error that escaped a task */
    lp_lua_guard_t guard;     /* phases, init_worker and loading: lua.phase_timeout each */
    lp_upstream_rt_t *ups;    /* the generation's upstreams in this worker (not owned), nups */
    size_t nups;
};

/* The VM of the worker running on this thread (FFI functions find it here). */
static _Thread_local lp_lua_t *current_vm;
/* The guard of a config check running on this thread (current_vm is NULL then). */
static _Thread_local lp_lua_guard_t *current_check;

int lp__lua_worker_id(void);
int lp__lua_worker_id(void)
{
    return current_vm ? current_vm->w->id : 0;
}

lp_upstream_rt_t *lp__lua_upstreams(size_t *n)
{
    *n = current_vm ? current_vm->nups : 0;
    return current_vm ? current_vm->ups : NULL;
}

/* Lua shortens long file names in messages to "...tail" (LUA_IDSIZE): put the whole path
 * back so an error always names the file. */
void lp_lua_error_message(const char *msg, const char *path, char *out, size_t outlen)
{
    if (!msg)
        msg = "(no message)";
    size_t plen = path ? strlen(path) : 0;
    if (plen && strncmp(msg, "...", 3) == 0) {
        const char *tail = msg + 3;
        const char *colon = strchr(tail, ':');
        size_t tlen = colon ? (size_t)(colon - tail) : 0;
        if (tlen && tlen <= plen && strncmp(path + plen - tlen, tail, tlen) == 0) {
            snprintf(out, outlen, "%s%s", path, colon);
            return;
        }
    }
    snprintf(out, outlen, "%s", msg);
}

/* ---- the runaway guard's side in the worker (lua/luaproxy/guard.lua) ---- */

static lp_lua_guard_t *current_guard(void)
{
    return current_vm ? &current_vm->guard : current_check;
}

/* The flag Lua reads (once, when the guard module loads in a VM): the VM's own; one that
 * is never set in a VM that is neither a worker's nor a config check's. Valid as long as
 * the VM: a worker VM's guard is part of it, a check's lives in its VM's memory. */
int *lp_ffi_guard_flag(void)
{
    static int never_set;
    lp_lua_guard_t *g = current_guard();
    return g ? &g->stop : &never_set;
}

/* The flag was seen set: the timeout in seconds when the running Lua's deadline really
 * passed, else 0 after clearing it (the watchdog set it for a phase that ended since it
 * looked, and a new one began). */
double lp_ffi_guard_expired(void)
{
    lp_lua_guard_t *g = current_guard();
    if (!g)
        return 0;
    uint64_t d = __atomic_load_n(&g->deadline_ns, __ATOMIC_ACQUIRE);
    if (d && uv_hrtime() >= d)
        return (double)g->timeout_ns / 1e9;
    __atomic_store_n(&g->stop, 0, __ATOMIC_RELAXED);
    return 0;
}

/* Around every run of Lua for a phase (and loading): the deadline the watchdog compares
 * with. */
static void guard_begin(lp_lua_guard_t *g)
{
    __atomic_store_n(&g->stop, 0, __ATOMIC_RELAXED);
    if (g->timeout_ns)
        __atomic_store_n(&g->deadline_ns, uv_hrtime() + g->timeout_ns, __ATOMIC_RELEASE);
}

static void guard_end(lp_lua_guard_t *g)
{
    __atomic_store_n(&g->deadline_ns, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&g->stop, 0, __ATOMIC_RELAXED);
}

/* ---- paths ---- */

#ifndef LP_DATADIR_REL
#define LP_DATADIR_REL "../share/luaproxy"
#endif

static char root_dir[4096];
static const char *root_origin = "the source tree";
static pthread_once_t root_once = PTHREAD_ONCE_INIT;

/* A runtime directory is one that holds lua/luaproxy/runtime.lua. */
static int is_root(const char *dir)
{
    char probe[4200];
    snprintf(probe, sizeof(probe), "%s/lua/luaproxy/runtime.lua", dir);
    return access(probe, R_OK) == 0;
}

/* Decided once per process: LUAPROXY_HOME when set; else the installed layout next to the
 * binary (PREFIX/bin/luaproxy -> PREFIX/share/luaproxy, the executable's real path, so a
 * symlink to it works too); else the source tree a build-tree binary was built from. */
static void root_init(void)
{
    const char *home = getenv("LUAPROXY_HOME");
    if (home && *home) {
        snprintf(root_dir, sizeof(root_dir), "%s", home);
        root_origin = "LUAPROXY_HOME";
        return;
    }
    char exe[4096], cand[4200], real[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = 0;
        if (LP_DATADIR_REL[0] == '/')
            snprintf(cand, sizeof(cand), "%s", LP_DATADIR_REL);
        else
            snprintf(cand, sizeof(cand), "%s/%s", dirname(exe), LP_DATADIR_REL);
        if (is_root(cand) && realpath(cand, real)) {
            snprintf(root_dir, sizeof(root_dir), "%s", real);
            root_origin = "the install prefix";
            return;
        }
    }
    snprintf(root_dir, sizeof(root_dir), "%s", LP_SOURCE_DIR);
}

static const char *engine_root(void)
{
    pthread_once(&root_once, root_init);
    return root_dir;
}

const char *lp_lua_engine_root(void)
{
    return engine_root();
}

const char *lp_lua_engine_root_origin(void)
{
    pthread_once(&root_once, root_init);
    return root_origin;
}

static void config_dir(const char *config_path, char *out, size_t n)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", config_path ? config_path : ".");
    snprintf(out, n, "%s", dirname(tmp));
}

void lp_lua_set_paths(lua_State *L, const char *config_path)
{
    const char *root = engine_root();
    char dir[4096], buf[16384];
    config_dir(config_path, dir, sizeof(dir));
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    snprintf(buf, sizeof(buf),
             "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;%s/?/init.lua;%s/plugins/?.lua;"
             "%s/plugins/?/init.lua;%s/scripts/?.lua;%s/plugins/?.lua;%s/plugins/?/init.lua;%s",
             root, root, dir, dir, dir, dir, root, root, root, lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    /* `proxy` is a global in configs, scripts and plugins. */
    if (luaL_dostring(L, "proxy = require 'proxy'")) {
        lp_log_error("lua: cannot load the proxy module: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

/* The plugin and script search paths given to runtime.load. */
static void push_load_opts(lua_State *L, const char *config_path)
{
    const char *root = engine_root();
    char dir[4096], buf[16384];
    config_dir(config_path, dir, sizeof(dir));
    lua_newtable(L);
    /* Directories from the config's lua.plugin_paths come first. */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_getfield(L, -2, "lua"); /* the config table, pushed just before */
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "plugin_paths");
        if (lua_istable(L, -1)) {
            for (int i = 1;; i++) {
                lua_rawgeti(L, -1, i);
                if (!lua_isstring(L, -1)) {
                    lua_pop(L, 1);
                    break;
                }
                const char *d = lua_tostring(L, -1);
                char one[4200];
                if (d[0] == '/')
                    snprintf(one, sizeof(one), "%s/?.lua;%s/?/init.lua;", d, d);
                else
                    snprintf(one, sizeof(one), "%s/%s/?.lua;%s/%s/?/init.lua;", dir, d, dir, d);
                lua_pop(L, 1);
                luaL_addstring(&b, one);
            }
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    snprintf(buf, sizeof(buf),
             "%s/plugins/?.lua;%s/plugins/?/init.lua;%s/plugins/?.lua;%s/plugins/?/init.lua", dir,
             dir, root, root);
    luaL_addstring(&b, buf);
    luaL_pushresult(&b);
    lua_setfield(L, -2, "plugin_path");
    snprintf(buf, sizeof(buf), "%s/?.lua;%s/?/init.lua;%s/scripts/?.lua", dir, dir, root);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "script_path");
}

/* runtime.load(cfg, opts) with the config table at `cfg_idx`; leaves the state (or nothing)
 * on the stack. */
static int runtime_load(lua_State *L, int cfg_idx, const char *config_path, char *err,
                        size_t errlen)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.runtime");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: cannot load the Lua runtime: %s", config_path,
                 lua_tostring(L, -1));
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    lua_getfield(L, -1, "load");
    lua_remove(L, -2);
    lua_pushvalue(L, cfg_idx);
    push_load_opts(L, config_path);
    if (lua_pcall(L, 2, 2, 0)) {
        snprintf(err, errlen, "%s: %s", config_path, lua_tostring(L, -1));
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    if (lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s: %s", config_path, lua_tostring(L, -1));
        lua_pop(L, 2);
        return LP_ECONFIG;
    }
    lua_pop(L, 1);
    return 0;
}

static void wd_register(lp_lua_guard_t *g, int on);
static int guard_setup(lua_State *L, const char *path, char *err, size_t errlen);

/* lua.phase_timeout of the (validated) config table at idx, in ns; default 1 s. */
static uint64_t config_timeout_ns(lua_State *L, int idx)
{
    double t = 1;
    lua_getfield(L, idx, "lua");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "phase_timeout");
        if (lua_isnumber(L, -1))
            t = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return t > 0 ? (uint64_t)(t * 1e9) : 0;
}

/* The guard of a main-thread config VM (loading, -t): it lives in the VM's memory, as long
 * as the flag pointer the guard module keeps; the watchdog sees it only while in use. */
static lp_lua_guard_t *check_guard(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "luaproxy.check_guard");
    lp_lua_guard_t *g = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!g) {
        g = lua_newuserdata(L, sizeof(*g));
        memset(g, 0, sizeof(*g));
        lua_setfield(L, LUA_REGISTRYINDEX, "luaproxy.check_guard");
    }
    return g;
}

int lp_lua_check_config(lua_State *L, const char *config_path, char *err, size_t errlen)
{
    int cfg = lua_gettop(L);
    if (!lua_istable(L, cfg)) {
        snprintf(err, errlen, "%s: the file must return a table", config_path);
        return LP_ECONFIG;
    }
    /* Plugins' main chunks and compile() run here: a loop there must not hang the main
     * thread (start-up, reload, -t). The guard lives in the VM's memory, as long as the
     * flag pointer the guard module keeps; the watchdog sees it only during the check. */
    lp_lua_guard_t *g = check_guard(L);
    g->timeout_ns = config_timeout_ns(L, cfg);
    lp_lua_guard_t *was = current_check;
    current_check = g;
    int rc = guard_setup(L, config_path, err, errlen);
    if (rc) {
        current_check = was;
        return rc;
    }
    wd_register(g, 1);
    guard_begin(g);
    rc = runtime_load(L, cfg, config_path, err, errlen);
    guard_end(g);
    wd_register(g, 0);
    current_check = was;
    if (!rc) {
        /* Schema warnings (fields without a description): said once, here, where the
         * config is checked, not again by every worker's VM. */
        lua_getfield(L, -1, "warnings");
        for (int i = 1; lua_istable(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            if (!lua_isstring(L, -1)) {
                lua_pop(L, 1);
                break;
            }
            lp_log_warn("%s: %s", config_path, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    return rc;
}

/* ---- the watchdog ---- */

/* Shared state: the registered guards. Guarded by `wd_lock`; each guard's deadline is read
 * with atomics without the lock. */
static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_lua_guard_t *wd_vms[256];
static int wd_n, wd_running;
static pthread_t wd_thread;

static void *watchdog_main(void *arg)
{
    LP_UNUSED(arg);
    for (;;) {
        pthread_mutex_lock(&wd_lock);
        if (!wd_running) {
            pthread_mutex_unlock(&wd_lock);
            return NULL;
        }
        uint64_t now = uv_hrtime();
        for (int i = 0; i < wd_n; i++) {
            lp_lua_guard_t *g = wd_vms[i];
            uint64_t d = __atomic_load_n(&g->deadline_ns, __ATOMIC_ACQUIRE);
            /* Only a flag: the worker's own Lua reads it at its next check and raises the
             * error there. The VM itself is never touched from this thread (lua_sethook from
             * another thread breaks LuaJIT's trace recording, and hooks do not run in
             * compiled code anyway). */
            if (d && now > d)
                __atomic_store_n(&g->stop, 1, __ATOMIC_RELAXED);
        }
        pthread_mutex_unlock(&wd_lock);
        usleep(10000);
    }
}

void lp_lua_watchdog_start(void)
{
    pthread_mutex_lock(&wd_lock);
    if (!wd_running) {
        wd_running = 1;
        if (pthread_create(&wd_thread, NULL, watchdog_main, NULL))
            wd_running = 0;
    }
    pthread_mutex_unlock(&wd_lock);
}

void lp_lua_watchdog_stop(void)
{
    pthread_mutex_lock(&wd_lock);
    int was = wd_running;
    wd_running = 0;
    pthread_mutex_unlock(&wd_lock);
    if (was)
        pthread_join(wd_thread, NULL);
}

static void wd_register(lp_lua_guard_t *g, int on)
{
    if (on && (g->registered || !g->timeout_ns))
        return;
    if (on)
        lp_lua_watchdog_start();
    pthread_mutex_lock(&wd_lock);
    if (on && wd_n < (int)LP_ARRAY_LEN(wd_vms)) {
        wd_vms[wd_n++] = g;
        g->registered = 1;
    } else if (on) {
        lp_log_warn("lua: more than %d Lua VMs at once: this one runs without lua.phase_timeout",
                    (int)LP_ARRAY_LEN(wd_vms));
    } else if (g->registered) {
        for (int i = 0; i < wd_n; i++)
            if (wd_vms[i] == g)
                wd_vms[i--] = wd_vms[--wd_n];
        g->registered = 0;
    }
    pthread_mutex_unlock(&wd_lock);
}

/* ---- the VM ---- */

/* Installs the runaway guard in a VM (a worker's, or a config check's): modules `require`d
 * from package.path, and the load functions, go through its rewrite; the engine's own lua/
 * is left as it is. Run with the VM's guard current (current_vm or current_check): the
 * guard module takes its flag pointer from it once. */
static int guard_setup(lua_State *L, const char *path, char *err, size_t errlen)
{
    char trusted[4200];
    snprintf(trusted, sizeof(trusted), "%s/lua/", engine_root());
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.guard");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: cannot load the Lua runtime: %s", path, lua_tostring(L, -1));
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    lua_getfield(L, -1, "install");
    lua_pushstring(L, trusted);
    int rc = lua_pcall(L, 1, 0, 0);
    if (rc)
        snprintf(err, errlen, "%s: cannot load the Lua runtime: %s", path, lua_tostring(L, -1));
    lua_pop(L, rc ? 2 : 1);
    return rc ? LP_ECONFIG : 0;
}

/* Pushes the config file's main function, loaded through the guard (its route handlers are
 * user code). */
static int guard_loadfile(lua_State *L, const char *path, char *err, size_t errlen)
{
    lua_getglobal(L, "loadfile"); /* the guard's, after guard_setup */
    lua_pushstring(L, path);
    if (lua_pcall(L, 1, 2, 0)) {
        lp_lua_error_message(lua_tostring(L, -1), path, err, errlen);
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    if (lua_isnil(L, -2)) {
        lp_lua_error_message(lua_tostring(L, -1), path, err, errlen);
        lua_pop(L, 2);
        return LP_ECONFIG;
    }
    lua_pop(L, 1);
    return 0;
}

static int route_phases(lua_State *L, int state_idx, const char *field, int key)
{
    unsigned mask = 0;
    lua_getfield(L, state_idx, field);
    if (key)
        lua_rawgeti(L, -1, key);
    if (lua_istable(L, -1)) {
        for (int p = LP_PHASE_REQUEST; p <= LP_PHASE_LOG; p++) {
            lua_rawgeti(L, -1, p);
            if (!lua_isnil(L, -1))
                mask |= LP_PHASE_BIT(p);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, key ? 2 : 1);
    return (int)mask;
}

static lp_rc_t task_resume(lp_lua_task_t *t, int nargs);

/* init_worker runs before the worker's loop takes over (on the main thread when a
 * generation is built), in a coroutine of its own: a proxy.sleep there is served by a
 * private loop, so init_worker may yield like every phase. */
static int run_init_worker(lp_lua_t *vm, int state_idx, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    uv_loop_t loop;
    if (uv_loop_init(&loop)) {
        snprintf(err, errlen, "init_worker: no loop");
        return -1;
    }
    lp_lua_task_t t;
    memset(&t, 0, sizeof(t));
    t.vm = vm;
    t.handle_ref = LUA_NOREF;
    t.co = lua_newthread(L);
    t.co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uv_timer_init(&loop, &t.timer);
    t.timer.data = &t;
    /* Protected: an error here refuses the load, it must never panic the process. */
    lua_getglobal(t.co, "require");
    lua_pushliteral(t.co, "luaproxy.runtime");
    if (lua_pcall(t.co, 1, 1, 0)) {
        snprintf(err, errlen, "init_worker: %s", lua_tostring(t.co, -1));
        luaL_unref(L, LUA_REGISTRYINDEX, t.co_ref);
        uv_close((uv_handle_t *)&t.timer, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return -1;
    }
    lua_getfield(t.co, -1, "init_worker_task");
    lua_remove(t.co, -2);
    lua_pushvalue(L, state_idx);
    lua_xmove(L, t.co, 1);
    free(vm->last_error);
    vm->last_error = NULL;
    t.last_rc = task_resume(&t, 1);
    while (t.wait == LP_LW_SLEEP)
        uv_run(&loop, UV_RUN_ONCE); /* on_sleep_done resumes it and records last_rc */
    int rc = t.last_rc == LP_OK ? 0 : -1;
    if (rc)
        snprintf(err, errlen, "%s", vm->last_error ? vm->last_error : "init_worker failed");
    if (t.co_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, t.co_ref);
    uv_close((uv_handle_t *)&t.timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
}

/* Pushes the config table: the config VM's evaluation, validated (config.c,
 * lua/luaproxy/transfer.lua), or when that could not move, the file evaluated here through
 * the guard. Functions written in the config were rewritten by the guard where the config
 * VM evaluated it; their check goes by name (luaproxy.guard.check) and so becomes this
 * VM's. Runs under the caller's guard_begin. */
static int push_config(lua_State *L, const lp_config_t *cfg, char *err, size_t errlen)
{
    if (cfg->lua_config) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "luaproxy.transfer");
        if (lua_pcall(L, 1, 1, 0) == 0) {
            lua_getfield(L, -1, "decode");
            lua_remove(L, -2);
            lua_pushlstring(L, cfg->lua_config, cfg->lua_config_len);
            if (lua_pcall(L, 1, 1, 0) == 0)
                return 0;
        }
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        return LP_ECONFIG;
    }
    if (guard_loadfile(L, cfg->path, err, errlen))
        return LP_ECONFIG;
    if (lua_pcall(L, 0, 1, 0)) {
        lp_lua_error_message(lua_tostring(L, -1), cfg->path, err, errlen);
        return LP_ECONFIG;
    }
    return 0;
}

int lp_lua_eval_config(lua_State *L, const char *path, char *err, size_t errlen)
{
    /* The one evaluation of the file (config.c): user code, so through the guard, stopped
     * after lua.phase_timeout's default (the file has not said its own yet). */
    lp_lua_guard_t *g = check_guard(L);
    g->timeout_ns = 1000000000ull;
    lp_lua_guard_t *was = current_check;
    current_check = g;
    int rc = guard_setup(L, path, err, errlen);
    if (!rc)
        rc = guard_loadfile(L, path, err, errlen);
    if (!rc) {
        wd_register(g, 1);
        guard_begin(g);
        if (lua_pcall(L, 0, 1, 0)) {
            lp_lua_error_message(lua_tostring(L, -1), path, err, errlen);
            lua_pop(L, 1);
            rc = LP_ECONFIG;
        }
        guard_end(g);
        wd_register(g, 0);
    }
    current_check = was;
    return rc;
}

int lp_lua_open(lp_worker_t *w, const lp_config_t *cfg, lp_upstream_rt_t *ups, lp_lua_t **out,
                char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->has_lua)
        return 0;
    lp_lua_t *vm = calloc(1, sizeof(*vm));
    if (!vm)
        return LP_ENOMEM;
    vm->w = w;
    vm->ups = ups;
    vm->nups = cfg->nupstreams;
    vm->guard.timeout_ns = cfg->lua_phase_timeout * 1000000ull;
    lua_State *L = vm->L = luaL_newstate();
    if (!L) {
        free(vm);
        return LP_ENOMEM;
    }
    luaL_openlibs(L);
    lp_lua_set_paths(L, cfg->path);
    current_vm = vm; /* the FFI functions used while loading find the VM */
    if (guard_setup(L, cfg->path, err, errlen))
        goto fail;
    /* The watchdog covers loading (the config's and the plugins' main chunks, compile()) and
     * init_worker: a runaway loop there must not hang a start or a reload. */
    wd_register(&vm->guard, 1);
    guard_begin(&vm->guard);
    if (push_config(L, cfg, err, errlen)) {
        guard_end(&vm->guard);
        goto fail;
    }
    int cfg_idx = lua_gettop(L);
    if (!lua_istable(L, cfg_idx)) {
        /* It was one when the main thread read it: the file changed since. */
        guard_end(&vm->guard);
        snprintf(err, errlen, "%s: the file must return a table", cfg->path);
        goto fail;
    }
    int lrc = runtime_load(L, cfg_idx, cfg->path, err, errlen);
    guard_end(&vm->guard);
    if (lrc)
        goto fail;
    int state_idx = lua_gettop(L);
    vm->nroutes = cfg->nroutes;
    vm->route_phases = calloc(cfg->nroutes + 1, 1);
    vm->route_phases[0] = (unsigned char)route_phases(L, state_idx, "fallback", 0);
    for (size_t i = 0; i < cfg->nroutes; i++)
        vm->route_phases[i + 1] = (unsigned char)route_phases(L, state_idx, "routes", (int)i + 1);

    /* The engine binding: request.new(state, worker_id) returns the handle constructor. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.request");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    lua_getfield(L, -1, "bind");
    lua_pushvalue(L, state_idx);
    lua_pushvalue(L, cfg_idx);
    if (lua_pcall(L, 2, 3, 0)) {
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    /* bind returns new_handle, run, body */
    vm->ref_body = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_run = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_new = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1); /* the request module */

    if (run_init_worker(vm, state_idx, err, errlen)) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", err);
        snprintf(err, errlen, "%s: %s", cfg->path, msg);
        goto fail;
    }
    lua_settop(L, 0);
    current_vm = NULL;
    *out = vm;
    return 0;
fail:
    current_vm = NULL;
    wd_register(&vm->guard, 0);
    free(vm->last_error);
    lua_close(L);
    free(vm->route_phases);
    free(vm);
    return LP_ECONFIG;
}

static void vm_free(lp_lua_t *vm)
{
    free(vm->last_error);
    lua_close(vm->L);
    free(vm->route_phases);
    free(vm);
}

static void on_task_timer_close(uv_handle_t *h)
{
    lp_lua_task_t *t = h->data;
    lp_lua_t *vm = t->vm;
    free(t);
    if (--vm->closing_timers == 0)
        vm_free(vm);
}

void lp_lua_retire(lp_lua_t *vm)
{
    if (!vm)
        return;
    if (current_vm == vm)
        current_vm = NULL;
    wd_register(&vm->guard, 0);
    /* Task timers are handles of the worker's loop: the VM goes once they are closed. */
    lp_lua_task_t *t = vm->all_tasks;
    vm->all_tasks = NULL;
    while (t) {
        lp_lua_task_t *next = t->next_all;
        t->timer.data = t;
        vm->closing_timers++;
        uv_close((uv_handle_t *)&t->timer, on_task_timer_close);
        t = next;
    }
    if (!vm->closing_timers)
        vm_free(vm);
}

int lp_lua_wants(lp_lua_t *vm, int route, int phase)
{
    if (!vm)
        return 0;
    return (vm->route_phases[route + 1] & LP_PHASE_BIT(phase)) != 0;
}

/* ---- tasks ---- */

static lp_lua_task_t *task_get(lp_lua_t *vm)
{
    lp_lua_task_t *t = vm->free_tasks;
    if (t) {
        vm->free_tasks = t->next_free;
    } else {
        t = calloc(1, sizeof(*t));
        if (!t)
            return NULL;
        t->vm = vm;
        t->co_ref = LUA_NOREF;
        uv_timer_init(&vm->w->loop, &t->timer);
        t->timer.data = t;
        t->next_all = vm->all_tasks;
        vm->all_tasks = t;
    }
    if (t->co_ref == LUA_NOREF) {
        t->co = lua_newthread(vm->L);
        t->co_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    }
    t->handle_ref = LUA_NOREF;
    t->next_free = NULL;
    t->wait = LP_LW_NONE;
    t->phase = 0;
    t->in_filter = 0;
    t->req = NULL;
    return t;
}

/* A coroutine that did not finish cleanly (yielded for good, or raised) is dropped. */
static void task_drop_coroutine(lp_lua_task_t *t)
{
    if (t->co_ref != LUA_NOREF)
        luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
    t->co_ref = LUA_NOREF;
    t->co = NULL;
}

static void task_put(lp_lua_task_t *t)
{
    lp_lua_t *vm = t->vm;
    uv_timer_stop(&t->timer);
    if (t->handle_ref != LUA_NOREF)
        luaL_unref(vm->L, LUA_REGISTRYINDEX, t->handle_ref);
    t->handle_ref = LUA_NOREF;
    if (t->co && lua_status(t->co) != 0)
        task_drop_coroutine(t);
    else if (t->co)
        lua_settop(t->co, 0);
    t->req = NULL;
    t->next_free = vm->free_tasks;
    vm->free_tasks = t;
}

/* The request ended: its handle must not reach it again, whoever kept the handle (an
 * upvalue, a timer's closure). The handle's phase says so (every method checks it first,
 * phases.lua) and its pointer is dropped. */
static void handle_invalidate(lp_lua_task_t *t)
{
    lua_State *L = t->vm->L;
    if (t->handle_ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->handle_ref);
    if (lua_istable(L, -1)) {
        lua_pushliteral(L, "ended");
        lua_setfield(L, -2, "_phase");
        lua_pushnil(L);
        lua_setfield(L, -2, "_r");
    }
    lua_pop(L, 1);
}

void lp_lua_release(lp_req_t *req)
{
    lp_lua_task_t *t = req->lua;
    if (!t)
        return;
    req->lua = NULL;
    handle_invalidate(t);
    if (t->wait != LP_LW_NONE && t->wait != LP_LW_RESPONDED)
        task_drop_coroutine(t); /* abandoned mid-wait */
    task_put(t);
}

/* Resumes t->co with nargs on its stack; maps the outcome to a phase result. */
static lp_rc_t task_resume(lp_lua_task_t *t, int nargs)
{
    lp_lua_t *vm = t->vm;
    vm->running = t;
    current_vm = vm;
    guard_begin(&vm->guard);
    int rc = lua_resume(t->co, nargs);
    guard_end(&vm->guard);
    vm->running = NULL;
    if (rc == 0) {
        int result = (int)lua_tointeger(t->co, -1);
        lua_settop(t->co, 0);
        t->wait = LP_LW_NONE;
        return result == 0 ? LP_OK : LP_ERROR;
    }
    if (rc == LUA_YIELD) {
        if (t->wait == LP_LW_RESPONDED) {
            /* Never resumed: later phases run on a fresh coroutine. */
            task_drop_coroutine(t);
            t->wait = LP_LW_NONE;
            return LP_DONE;
        }
        if (t->wait == LP_LW_SLEEP || t->wait == LP_LW_BODY)
            return LP_AGAIN; /* a body wait: the caller lets the connection parse (task_parked) */
        lp_log_error("lua: a phase yielded outside the proxy API (coroutine.yield from a "
                     "handler?); failing the request");
        task_drop_coroutine(t);
        return LP_ERROR;
    }
    /* Errors escape runtime.run's xpcall only from the engine's own Lua (or a timeout hook
     * outside plugin code). */
    const char *msg = lua_tostring(t->co, -1);
    if (t->req)
        lp_log_error("lua: %s", msg ? msg : "error");
    free(vm->last_error);
    vm->last_error = strdup(msg ? msg : "error");
    task_drop_coroutine(t);
    t->wait = LP_LW_NONE;
    return LP_ERROR;
}

/* The request's task, made on its first Lua phase (whichever phase that is) with its
 * handle and a coroutine. NULL when out of memory. */
static lp_lua_task_t *task_for(lp_lua_t *vm, lp_req_t *req)
{
    current_vm = vm; /* task_get may run a __gc that asks the FFI for its VM */
    lp_lua_task_t *t = req->lua;
    if (!t) {
        t = task_get(vm);
        if (!t)
            return NULL;
        t->req = req;
        /* The handle: request.new(cdata pointer, route number). */
        lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->ref_new);
        /* A number, not a lightuserdata: ffi.cast of a lightuserdata is not compiled
         * (NYI), of a number it is. x86-64 and arm64 addresses fit in a double. */
        lua_pushnumber(vm->L, (lua_Number)(uintptr_t)req);
        lua_pushinteger(vm->L, req->route_index + 1);
        current_vm = vm;
        if (lua_pcall(vm->L, 2, 1, 0)) {
            lp_log_error("lua: cannot make a request handle: %s", lua_tostring(vm->L, -1));
            lua_pop(vm->L, 1);
            task_put(t);
            return NULL;
        }
        t->handle_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
        req->lua = t;
    }
    if (!t->co) {
        t->co = lua_newthread(vm->L);
        t->co_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    }
    return t;
}

/* A resume ended with the task parked. A body wait needs the connection to read on: ask
 * it to parse (conn_process only takes note when it is on the stack already, as when the
 * request phase runs from the parser). That may end the wait, and the request, at once:
 * LP_GONE then. */
static lp_rc_t task_parked(lp_lua_task_t *t, lp_req_t *req)
{
    req->flags |= LP_RF_LUA_WAIT;
    if (t->wait != LP_LW_BODY || !req->conn)
        return LP_AGAIN;
    lp_req_hold(req);
    lp_conn_kick(req->conn);
    return lp_req_let_go(req) == LP_GONE ? LP_GONE : LP_AGAIN;
}

lp_rc_t lp_lua_phase(lp_req_t *req, int phase)
{
    lp_lua_t *vm = req->g ? req->g->lua : NULL;
    if (!vm)
        return LP_OK;
    lp_lua_task_t *t = task_for(vm, req);
    if (!t)
        return LP_ERROR;
    if (t->wait != LP_LW_NONE) {
        /* The request moved on without the phase that waits (a local answer, a client that
         * failed its body, an upstream that timed out): that phase is abandoned, never
         * resumed as if it were this one. */
        uv_timer_stop(&t->timer);
        task_drop_coroutine(t);
        t->wait = LP_LW_NONE;
        req->flags &= ~(LP_RF_LUA_WAIT | LP_RF_BODY_BUFFERING);
        t = task_for(vm, req);
        if (!t)
            return LP_ERROR;
    }
    t->phase = phase;
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, vm->ref_run);
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, t->handle_ref);
    lua_pushinteger(t->co, phase);
    lp_rc_t rc = task_resume(t, 2);
    return rc == LP_AGAIN ? task_parked(t, req) : rc;
}

lp_rc_t lp_lua_body_filter(lp_req_t *req, const char *at, size_t len, int eof, lp_str_t *out)
{
    lp_lua_t *vm = req->g ? req->g->lua : NULL;
    lp_lua_task_t *t = vm ? task_for(vm, req) : NULL;
    if (!t || lua_status(t->co) != 0)
        return LP_ERROR;
    lua_State *co = t->co;
    lua_settop(co, 0);
    lua_rawgeti(co, LUA_REGISTRYINDEX, vm->ref_body);
    lua_rawgeti(co, LUA_REGISTRYINDEX, t->handle_ref);
    lua_pushlstring(co, at, len);
    lua_pushboolean(co, eof);
    vm->running = t;
    t->in_filter = 1; /* proxy.sleep refuses: a plain call cannot be resumed later */
    current_vm = vm;
    guard_begin(&vm->guard);
    /* A plain call: body filters may not yield (yet); a yield raises inside the call. */
    int rc = lua_pcall(co, 3, 1, 0);
    t->in_filter = 0;
    guard_end(&vm->guard);
    vm->running = NULL;
    if (rc || !lua_isstring(co, -1)) {
        if (rc)
            lp_log_error("lua: response_body: %s", lua_tostring(co, -1));
        lua_settop(co, 0);
        return LP_ERROR;
    }
    size_t n;
    const char *s = lua_tolstring(co, -1, &n);
    /* The string stays on the coroutine's stack until the next call: valid for the caller. */
    *out = (lp_str_t){s, n};
    return LP_OK;
}

/* ---- waiting ---- */

/* A task's wait is over: resume it and carry on with its request. The request is held:
 * resuming may end it. */
static void task_continue(lp_lua_task_t *t)
{
    lp_req_t *req = t->req;
    int phase = t->phase;
    if (!req) {
        t->last_rc = task_resume(t, 0); /* init_worker (run_init_worker reads last_rc) */
        return;
    }
    lp_req_hold(req);
    lp_rc_t rc = t->last_rc = task_resume(t, 0);
    if (rc == LP_AGAIN)
        rc = task_parked(t, req);
    if (rc != LP_AGAIN && rc != LP_GONE && !lp_req_ended(req)) {
        req->flags &= ~LP_RF_LUA_WAIT;
        (void)lp_conn_lua_resumed(req, phase, rc);
    }
    lp_req_drop(req);
}

static void on_sleep_done(uv_timer_t *timer)
{
    lp_lua_task_t *t = timer->data;
    if (t->wait != LP_LW_SLEEP)
        return;
    t->wait = LP_LW_NONE;
    task_continue(t);
}

/* proxy.sleep: called from Lua right before it yields. */
int lp_ffi_sleep(double seconds)
{
    lp_lua_t *vm = current_vm;
    lp_lua_task_t *t = vm ? vm->running : NULL;
    if (!t || !t->co)
        return -1;
    if (t->in_filter)
        return -2;
    if (!(seconds >= 0 && seconds < 1e9))
        return -1;
    t->wait = LP_LW_SLEEP;
    uv_timer_start(&t->timer, on_sleep_done, (uint64_t)(seconds * 1000.0 + 0.5), 0);
    return 0;
}

void lp_lua_wake(lp_req_t *req)
{
    lp_lua_task_t *t = req->lua;
    if (!t || t->wait != LP_LW_BODY)
        return;
    t->wait = LP_LW_NONE;
    task_continue(t);
}

int lp_ffi_body_read(void *rp, double max, lp_str_t *out)
{
    lp_req_t *req = rp;
    lp_lua_t *vm = current_vm;
    if (!lp__lua_runs(req))
        return LP_FFI_EOTHER;
    if (!req->conn || !(max >= 0 && max <= 9007199254740992.0)) /* NaN and inf too */
        return LP_FFI_EINVAL;
    uint64_t limit = (uint64_t)max;
    int rc = lp_conn_read_body(req, limit);
    if (rc == LP_OK) {
        out->base = req->body_buf ? req->body_buf->data : "";
        out->len = req->body_len;
        return 0;
    }
    if (rc == LP_ERROR)
        return LP_FFI_ENOSPACE;
    if (vm && vm->running)
        vm->running->wait = LP_LW_BODY;
    return 1;
}

/* Whether the Lua running now is a phase of req: a handle kept from another request must
 * not park or answer the caller's phase in its own request's name. */
int lp__lua_runs(const lp_req_t *req)
{
    lp_lua_t *vm = current_vm;
    return vm && vm->running && vm->running->req == req;
}

/* req:respond(): the answer is recorded; Lua yields next and is never resumed. */
void lp__lua_mark_responded(void);
void lp__lua_mark_responded(void)
{
    lp_lua_t *vm = current_vm;
    if (vm && vm->running)
        vm->running->wait = LP_LW_RESPONDED;
}
