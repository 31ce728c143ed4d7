#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <lauxlib.h>
#include <lualib.h>
#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"

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
    uint64_t timeout_ns;      /* lua.phase_timeout */
    /* Shared with the watchdog thread: the wall-clock deadline of the Lua code running now
     * (0: none). Written by this worker, read by the watchdog (atomics). */
    uint64_t deadline_ns;
    int registered;
    lp_upstream_rt_t *ups; /* the generation's upstreams in this worker (not owned), nups */
    size_t nups;
};

/* The VM of the worker running on this thread (FFI functions find it here). */
static _Thread_local lp_lua_t *current_vm;

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

/* ---- paths ---- */

static const char *engine_root(void)
{
    const char *home = getenv("LUAPROXY_HOME");
    return home && *home ? home : LP_SOURCE_DIR;
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
             "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;%s/?/init.lua;%s/scripts/?.lua;%s", root,
             root, dir, dir, root, lua_tostring(L, -1));
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
static void push_load_opts(lua_State *L, const char *config_path, int jit_off)
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
    lua_pushboolean(L, jit_off);
    lua_setfield(L, -2, "jit_off");
    snprintf(buf, sizeof(buf), "%s/plugins/", root);
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "bundled_dir");
}

/* runtime.load(cfg, opts) with the config table at `cfg_idx`; leaves the state (or nothing)
 * on the stack. */
static int runtime_load(lua_State *L, int cfg_idx, const char *config_path, int jit_off, char *err,
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
    push_load_opts(L, config_path, jit_off);
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

int lp_lua_check_config(lua_State *L, const char *config_path, char *err, size_t errlen)
{
    int cfg = lua_gettop(L);
    int rc = runtime_load(L, cfg, config_path, 0, err, errlen);
    if (!rc)
        lua_pop(L, 1);
    return rc;
}

/* ---- the watchdog ---- */

/* Shared state: the registered VMs. Guarded by `wd_lock`; each VM's deadline is read with
 * atomics without the lock. */
static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_lua_t *wd_vms[256];
static int wd_n, wd_running;
static pthread_t wd_thread;

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

static void on_timeout_hook(lua_State *L, lua_Debug *ar)
{
    LP_UNUSED(ar);
    lp_lua_t *vm = current_vm;
    uint64_t d = vm ? __atomic_load_n(&vm->deadline_ns, __ATOMIC_ACQUIRE) : 0;
    lua_sethook(L, NULL, 0, 0);
    if (!d || now_ns() < d)
        return; /* the phase ended (or a new one began) since the watchdog looked */
    luaL_error(L, "phase timed out (lua.phase_timeout %.3fs)", (double)vm->timeout_ns / 1e9);
}

static void *watchdog_main(void *arg)
{
    LP_UNUSED(arg);
    for (;;) {
        pthread_mutex_lock(&wd_lock);
        if (!wd_running) {
            pthread_mutex_unlock(&wd_lock);
            return NULL;
        }
        uint64_t now = now_ns();
        for (int i = 0; i < wd_n; i++) {
            lp_lua_t *vm = wd_vms[i];
            uint64_t d = __atomic_load_n(&vm->deadline_ns, __ATOMIC_ACQUIRE);
            /* lua_sethook may be called from another thread (Lua manual 3.8). */
            if (d && now > d)
                lua_sethook(vm->L, on_timeout_hook, LUA_MASKCOUNT, 100);
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

static void wd_register(lp_lua_t *vm, int on)
{
    if (on)
        lp_lua_watchdog_start();
    pthread_mutex_lock(&wd_lock);
    if (on && wd_n < (int)LP_ARRAY_LEN(wd_vms)) {
        wd_vms[wd_n++] = vm;
        vm->registered = 1;
    } else if (!on && vm->registered) {
        for (int i = 0; i < wd_n; i++)
            if (wd_vms[i] == vm)
                wd_vms[i] = wd_vms[--wd_n];
        vm->registered = 0;
    }
    pthread_mutex_unlock(&wd_lock);
}

/* ---- the VM ---- */

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
    lua_getglobal(t.co, "require");
    lua_pushliteral(t.co, "luaproxy.runtime");
    lua_call(t.co, 1, 1);
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
 * lua/luaproxy/transfer.lua), or when that could not move, the file evaluated here. With
 * jit_off, functions written in the config run interpreted: see runtime.lua, interpret(). */
static int push_config(lua_State *L, const lp_config_t *cfg, int jit_off, char *err, size_t errlen)
{
    if (cfg->lua_config) {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "luaproxy.transfer");
        if (lua_pcall(L, 1, 1, 0) == 0) {
            lua_getfield(L, -1, "decode");
            lua_remove(L, -2);
            lua_pushlstring(L, cfg->lua_config, cfg->lua_config_len);
            lua_pushboolean(L, jit_off);
            if (lua_pcall(L, 2, 1, 0) == 0)
                return 0;
        }
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        return LP_ECONFIG;
    }
    if (luaL_loadfile(L, cfg->path)) {
        lp_lua_error_message(lua_tostring(L, -1), cfg->path, err, errlen);
        return LP_ECONFIG;
    }
    if (jit_off) {
        lua_getglobal(L, "jit");
        lua_getfield(L, -1, "off");
        lua_pushvalue(L, -3);
        lua_pushboolean(L, 1);
        lua_call(L, 2, 0);
        lua_pop(L, 1);
    }
    if (lua_pcall(L, 0, 1, 0)) {
        lp_lua_error_message(lua_tostring(L, -1), cfg->path, err, errlen);
        return LP_ECONFIG;
    }
    return 0;
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
    vm->timeout_ns = cfg->lua_phase_timeout * 1000000ull;
    lua_State *L = vm->L = luaL_newstate();
    if (!L) {
        free(vm);
        return LP_ENOMEM;
    }
    luaL_openlibs(L);
    lp_lua_set_paths(L, cfg->path);
    current_vm = vm; /* the FFI functions used while loading find the VM */
    if (push_config(L, cfg, vm->timeout_ns > 0, err, errlen))
        goto fail;
    int cfg_idx = lua_gettop(L);
    if (runtime_load(L, cfg_idx, cfg->path, vm->timeout_ns > 0, err, errlen))
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

    /* The watchdog covers init_worker too (a runaway loop there must not hang a reload). */
    if (vm->timeout_ns)
        wd_register(vm, 1);
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
    wd_register(vm, 0);
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
    wd_register(vm, 0);
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

void lp_lua_release(lp_req_t *req)
{
    lp_lua_task_t *t = req->lua;
    if (!t)
        return;
    req->lua = NULL;
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
    if (vm->timeout_ns)
        __atomic_store_n(&vm->deadline_ns, now_ns() + vm->timeout_ns, __ATOMIC_RELEASE);
    int rc = lua_resume(t->co, nargs);
    __atomic_store_n(&vm->deadline_ns, 0, __ATOMIC_RELEASE);
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
        if (t->wait == LP_LW_BODY && t->req && t->req->conn) {
            /* Lua has yielded: the body can be read now (this may resume it at once). */
            t->req->flags |= LP_RF_LUA_WAIT;
            lp_conn_kick(t->req->conn);
            return LP_AGAIN; /* (perhaps already resumed and finished by now) */
        }
        if (t->wait == LP_LW_SLEEP)
            return LP_AGAIN;
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

lp_rc_t lp_lua_phase(lp_req_t *req, int phase)
{
    lp_lua_t *vm = req->g ? req->g->lua : NULL;
    if (!vm)
        return LP_OK;
    lp_lua_task_t *t = req->lua;
    if (!t) {
        t = req->lua = task_get(vm);
        if (!t)
            return LP_ERROR;
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
            return LP_ERROR;
        }
        t->handle_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    }
    if (!t->co) {
        t->co = lua_newthread(vm->L);
        t->co_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    }
    t->phase = phase;
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, vm->ref_run);
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, t->handle_ref);
    lua_pushinteger(t->co, phase);
    lp_rc_t rc = task_resume(t, 2);
    if (rc == LP_AGAIN)
        req->flags |= LP_RF_LUA_WAIT;
    return rc;
}

lp_rc_t lp_lua_body_filter(lp_req_t *req, const char *at, size_t len, int eof, lp_str_t *out)
{
    lp_lua_task_t *t = req->lua;
    lp_lua_t *vm = t ? t->vm : NULL;
    if (!vm || !t->co || lua_status(t->co) != 0)
        return LP_ERROR;
    lua_State *co = t->co;
    lua_settop(co, 0);
    lua_rawgeti(co, LUA_REGISTRYINDEX, vm->ref_body);
    lua_rawgeti(co, LUA_REGISTRYINDEX, t->handle_ref);
    lua_pushlstring(co, at, len);
    lua_pushboolean(co, eof);
    vm->running = t;
    current_vm = vm;
    if (vm->timeout_ns)
        __atomic_store_n(&vm->deadline_ns, now_ns() + vm->timeout_ns, __ATOMIC_RELEASE);
    /* A plain call: body filters may not yield (yet); a yield raises inside the call. */
    int rc = lua_pcall(co, 3, 1, 0);
    __atomic_store_n(&vm->deadline_ns, 0, __ATOMIC_RELEASE);
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

static void on_sleep_done(uv_timer_t *timer)
{
    lp_lua_task_t *t = timer->data;
    if (t->wait != LP_LW_SLEEP)
        return;
    t->wait = LP_LW_NONE;
    lp_req_t *req = t->req;
    lp_rc_t rc = t->last_rc = task_resume(t, 0);
    if (rc == LP_AGAIN || !req)
        return;
    req->flags &= ~LP_RF_LUA_WAIT;
    lp_conn_lua_resumed(req, t->phase, rc);
}

/* proxy.sleep: called from Lua right before it yields. */
int lp_ffi_sleep(double seconds)
{
    lp_lua_t *vm = current_vm;
    lp_lua_task_t *t = vm ? vm->running : NULL;
    if (!t || !t->co)
        return -1;
    if (seconds < 0)
        seconds = 0;
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
    lp_rc_t rc = task_resume(t, 0);
    if (rc == LP_AGAIN)
        return;
    req->flags &= ~LP_RF_LUA_WAIT;
    lp_conn_lua_resumed(req, t->phase, rc);
}

int lp_ffi_body_read(void *rp, double max, lp_str_t *out)
{
    lp_req_t *req = rp;
    lp_lua_t *vm = current_vm;
    if (!req->conn)
        return LP_FFI_EINVAL;
    uint64_t limit = max < 0 ? 0 : (uint64_t)max;
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

/* req:respond(): the answer is recorded; Lua yields next and is never resumed. */
void lp__lua_mark_responded(void);
void lp__lua_mark_responded(void)
{
    lp_lua_t *vm = current_vm;
    if (vm && vm->running)
        vm->running->wait = LP_LW_RESPONDED;
}
