#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lauxlib.h>
#include <lualib.h>
#include "cache_native.h"
#include "conn.h"
#include "log.h"
#include "yaml_load.h"
#include "lua_api.h"
#include "lua_vm_int.h"
#include "request.h"

/* The VM of the worker running on this thread (FFI functions find it here). */
static _Thread_local lp_lua_t *current_vm;
/* The guard of a config check running on this thread (current_vm is NULL then). */
static _Thread_local lp_lua_guard_t *current_check;

lp_lua_t *lp__lua_current(void)
{
    return current_vm;
}

void lp__lua_set_current(lp_lua_t *vm)
{
    current_vm = vm;
}

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

/* The config key of the limit that ran out (for the error lp_ffi_guard_expired leads to). */
const char *lp_ffi_guard_limit(void)
{
    lp_lua_guard_t *g = current_guard();
    return g && g->limit ? g->limit : "phase_timeout";
}

/* Around every run of Lua for a phase (and loading): the deadline the watchdog compares
 * with. */
void lp__guard_begin(lp_lua_guard_t *g)
{
    __atomic_store_n(&g->stop, 0, __ATOMIC_RELAXED);
    if (g->timeout_ns)
        __atomic_store_n(&g->deadline_ns, uv_hrtime() + g->timeout_ns, __ATOMIC_RELEASE);
}

void lp__guard_end(lp_lua_guard_t *g)
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
    /* The engine's own C modules (YAML configs: yaml_load.c). */
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_luaproxy_yaml_native);
    lua_setfield(L, -2, "luaproxy.yaml_native");
    lua_pop(L, 2);
    /* `proxy` is a global in configs, scripts and plugins. */
    if (luaL_dostring(L, "proxy = require 'proxy'")) {
        lp_log_error("lua: cannot load the proxy module: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

const char *lp_lua_push_plugins = NULL;

/* The plugin and script search paths given to runtime.load; config_path and source_doc
 * (the etcd candidate the config was checked with, NULL: the last good copy) find plugin
 * sources from etcd (config_source.lua: plugin). */
static void push_load_opts(lua_State *L, const char *config_path, const char *source_doc)
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
    lua_pushstring(L, dir); /* relative file names in the lua section (proxy.tcp's CA) */
    lua_setfield(L, -2, "config_dir");
    lua_pushstring(L, config_path);
    lua_setfield(L, -2, "config_path");
    if (source_doc) {
        lua_pushstring(L, source_doc);
        lua_setfield(L, -2, "source_doc");
    }
    if (lp_lua_push_plugins) {
        lua_pushstring(L, lp_lua_push_plugins);
        lua_setfield(L, -2, "push_plugins");
    }
}

/* runtime.load(cfg, opts) with the config table at `cfg_idx`; leaves the state (or nothing)
 * on the stack. */
static int runtime_load(lua_State *L, int cfg_idx, const char *config_path, const char *source_doc,
                        char *err, size_t errlen)
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
    push_load_opts(L, config_path, source_doc);
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

/* `luaproxy check` on the config's own plugins and scripts (runtime.lint, #21), once, in the
 * main thread's check (start, reload, -t), not in every worker's VM; after the guarded load,
 * outside the guard (luacheck is not the user's code, and may take longer than
 * lua.phase_timeout on a large plugin). Warnings join the state's `warnings`; an error
 * (lint.warnings_are_errors) refuses the config. The stack is left as it was. */
/* The lint results of the last load, by file and text (runtime.lint's memo, JSON): a reload
 * whose plugins did not change checks nothing again. Owned; the main thread's only (every
 * config check runs there). */
static char *lint_memo;

static int runtime_lint(lua_State *L, int cfg_idx, int state_idx, const char *config_path,
                        char *err, size_t errlen)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.runtime");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: %s", config_path, lua_tostring(L, -1));
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    lua_getfield(L, -1, "lint");
    lua_remove(L, -2);
    lua_pushvalue(L, cfg_idx);
    push_load_opts(L, config_path, NULL);
    lua_getfield(L, state_idx, "warnings");
    if (lint_memo)
        lua_pushstring(L, lint_memo);
    else
        lua_pushnil(L);
    if (lua_pcall(L, 4, 2, 0)) {
        snprintf(err, errlen, "%s: %s", config_path, lua_tostring(L, -1));
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    if (lua_isstring(L, -1)) {
        char *m = strdup(lua_tostring(L, -1));
        if (m) {
            free(lint_memo);
            lint_memo = m;
        }
    }
    int rc = 0;
    if (!lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s: %s", config_path, lua_tostring(L, -2));
        rc = LP_ECONFIG;
    }
    lua_pop(L, 2);
    return rc;
}

static void wd_register(lp_lua_guard_t *g, int on);
static int guard_setup(lua_State *L, const char *path, char *err, size_t errlen);

/* lua.init_timeout of the (validated) config table at idx, in ns; default 10 s. */
static uint64_t config_init_timeout_ns(lua_State *L, int idx)
{
    double t = 10;
    lua_getfield(L, idx, "lua");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "init_timeout");
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
     * thread (start-up, reload, -t). Loading is initialisation, bounded by lua.init_timeout
     * as init_worker is, not by the per-request phase_timeout: reading a rule set or a
     * large table may take seconds on a busy machine. The guard lives in the VM's memory,
     * as long as the flag pointer the guard module keeps; the watchdog sees it only during
     * the check. */
    lp_lua_guard_t *g = check_guard(L);
    g->timeout_ns = config_init_timeout_ns(L, cfg);
    g->limit = "init_timeout";
    lp_lua_guard_t *was = current_check;
    current_check = g;
    int rc = guard_setup(L, config_path, err, errlen);
    if (rc) {
        current_check = was;
        return rc;
    }
    wd_register(g, 1);
    lp__guard_begin(g);
    rc = runtime_load(L, cfg, config_path, lp_config_source_doc, err, errlen);
    lp__guard_end(g);
    wd_register(g, 0);
    current_check = was;
    if (!rc)
        rc = runtime_lint(L, cfg, lua_gettop(L), config_path, err, errlen);
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

/* Pushes a chunk that evaluates to the config file's table. A JSON or YAML file (by its
 * extension) is decoded here, by lua/luaproxy/config_data.lua, and the chunk returns the
 * table; a Lua file is loaded through the guard. A Lua file past LuaJIT's constant limit
 * (100k routes written as one literal) gets an error naming the alternatives. */
static int load_config_chunk(lua_State *L, const char *path, char *err, size_t errlen)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.config_data");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: %s", path, lua_tostring(L, -1));
        lua_pop(L, 1);
        return LP_ECONFIG;
    }
    int mod = lua_gettop(L);
    lua_getfield(L, mod, "format");
    lua_pushstring(L, path);
    int data = lua_pcall(L, 1, 1, 0) == 0 && lua_isstring(L, -1);
    lua_pop(L, 1);
    if (data) {
        lua_getfield(L, mod, "loader");
        lua_pushstring(L, path);
        if (lua_pcall(L, 1, 2, 0) || lua_isnil(L, -2)) {
            snprintf(err, errlen, "%s", lua_tostring(L, -1));
            lua_settop(L, mod - 1);
            return LP_ECONFIG;
        }
        lua_pop(L, 1);
        lua_remove(L, mod);
        return 0;
    }
    if (guard_loadfile(L, path, err, errlen)) {
        lua_getfield(L, mod, "limit_hint");
        lua_pushstring(L, err);
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_isstring(L, -1))
            snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_settop(L, mod - 1);
        return LP_ECONFIG;
    }
    lua_remove(L, mod);
    return 0;
}

/* The evaluated config at the top of the stack, replaced by itself merged with the etcd
 * document (lua/luaproxy/config_source.lua: a bootstrap with config_source.etcd; any other
 * config comes back as it was). doc: the candidate file, NULL for the last good one. */
static int merge_source(lua_State *L, const char *path, const char *doc, char *err, size_t errlen)
{
    int t = lua_gettop(L);
    if (!lua_istable(L, t))
        return 0; /* not a config: the check says so */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.config_source");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "merge");
        lua_remove(L, -2);
        lua_pushstring(L, path);
        lua_pushvalue(L, t);
        if (doc)
            lua_pushstring(L, doc);
        else
            lua_pushnil(L);
        if (lua_pcall(L, 3, 2, 0) == 0) {
            if (!lua_isnil(L, -2)) {
                lua_pop(L, 1);
                lua_replace(L, t);
                return 0;
            }
            /* The error names the document (its file, or its etcd key and revision), not the
             * bootstrap: the problem is not in the bootstrap. */
            snprintf(err, errlen, "%s", lua_tostring(L, -1));
            lua_settop(L, t - 1);
            return LP_ECONFIG;
        }
    }
    snprintf(err, errlen, "%s: %s", path, lua_tostring(L, -1));
    lua_settop(L, t - 1);
    return LP_ECONFIG;
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
    if (load_config_chunk(L, cfg->path, err, errlen))
        return LP_ECONFIG;
    if (lua_pcall(L, 0, 1, 0)) {
        lp_lua_error_message(lua_tostring(L, -1), cfg->path, err, errlen);
        return LP_ECONFIG;
    }
    return merge_source(L, cfg->path, cfg->source_doc, err, errlen);
}

int lp_lua_eval_config(lua_State *L, const char *path, char *err, size_t errlen)
{
    /* The one evaluation of the file (config.c): user code, so through the guard. The file
     * has not said its own lua.phase_timeout yet, and a generated config (100,000 routes
     * built in a loop: issue #22) may need more than a phase's 1 s of wall clock on a busy
     * machine: a runaway file is stopped after 10 s. */
    lp_lua_guard_t *g = check_guard(L);
    g->timeout_ns = 10000000000ull; /* lua.init_timeout's default */
    g->limit = "init_timeout";
    lp_lua_guard_t *was = current_check;
    current_check = g;
    int rc = guard_setup(L, path, err, errlen);
    if (!rc)
        rc = load_config_chunk(L, path, err, errlen);
    if (!rc) {
        wd_register(g, 1);
        lp__guard_begin(g);
        if (lua_pcall(L, 0, 1, 0)) {
            lp_lua_error_message(lua_tostring(L, -1), path, err, errlen);
            lua_pop(L, 1);
            rc = LP_ECONFIG;
        } else {
            rc = merge_source(L, path, lp_config_source_doc, err, errlen);
        }
        lp__guard_end(g);
        wd_register(g, 0);
    }
    current_check = was;
    return rc;
}

void lp_lua_seed_random(lua_State *L)
{
    /* Lua's math.random starts from a fixed seed: every worker and every restart would draw
     * the same numbers (the ab and mirror plugins' splits, the cache's multipart boundary).
     * Seeded from the OS's random source, as OpenResty users are told to do themselves. Not
     * for secrets: those use the crypto module. */
    uint64_t r = 0;
    if (uv_random(NULL, NULL, &r, sizeof(r), 0, NULL))
        r = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)L;
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_pushnumber(L, (lua_Number)(r >> 11)); /* 53 bits: exact in a double */
    lua_call(L, 1, 0);
    lua_pop(L, 1);
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
    vm->max_timers = cfg->lua_max_timers ? cfg->lua_max_timers : 1024;
    vm->init_timeout = cfg->lua_init_timeout ? cfg->lua_init_timeout : 10000;
    vm->max_running = cfg->lua_max_running_timers ? cfg->lua_max_running_timers : 256;
    lp_list_init(&vm->deferred);
    lua_State *L = vm->L = luaL_newstate();
    if (!L) {
        free(vm);
        return LP_ENOMEM;
    }
    luaL_openlibs(L);
    lp_lua_seed_random(L);
    lp_lua_set_paths(L, cfg->path);
    current_vm = vm; /* the FFI functions used while loading find the VM */
    if (guard_setup(L, cfg->path, err, errlen))
        goto fail;
    /* Background tasks (proxy.timer, proxy.spawn) run tasks.run(id, wake); a plugin's main
     * chunk may already make one. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.tasks");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    lua_getfield(L, -1, "run");
    vm->ref_bg = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    /* The watchdog covers loading (the config's and the plugins' main chunks, compile()),
     * bounded by lua.init_timeout (as in lp_lua_check_config), and init_worker: a runaway
     * loop there must not hang a start or a reload. */
    uint64_t phase_ns = vm->guard.timeout_ns;
    vm->guard.timeout_ns = (uint64_t)vm->init_timeout * 1000000ull;
    vm->guard.limit = "init_timeout";
    wd_register(&vm->guard, 1);
    lp__guard_begin(&vm->guard);
    if (push_config(L, cfg, err, errlen)) {
        lp__guard_end(&vm->guard);
        goto fail;
    }
    int cfg_idx = lua_gettop(L);
    if (!lua_istable(L, cfg_idx)) {
        /* It was one when the main thread read it: the file changed since. */
        lp__guard_end(&vm->guard);
        snprintf(err, errlen, "%s: the file must return a table", cfg->path);
        goto fail;
    }
    int lrc = runtime_load(L, cfg_idx, cfg->path, cfg->source_doc, err, errlen);
    lp__guard_end(&vm->guard);
    vm->guard.timeout_ns = phase_ns;
    vm->guard.limit = NULL;
    if (lrc)
        goto fail;
    int state_idx = lua_gettop(L);
    vm->nroutes = cfg->nroutes;
    vm->route_phases = calloc(cfg->nroutes + 1, 1);
    vm->route_phases[0] = (unsigned char)route_phases(L, state_idx, "fallback", 0);
    for (size_t i = 0; i < cfg->nroutes; i++)
        vm->route_phases[i + 1] = (unsigned char)route_phases(L, state_idx, "routes", (int)i + 1);
    vm->cache_native = lp_cache_native_load(L, state_idx, cfg->nroutes);

    /* The engine binding: request.bind(state, cfg) returns its entry points (ref_enter...). */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.request");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    lua_getfield(L, -1, "bind");
    lua_pushvalue(L, state_idx);
    lua_pushvalue(L, cfg_idx);
    if (lua_pcall(L, 2, 4, 0)) {
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    /* bind returns enter, run, body, handles */
    vm->ref_handles = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_body = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_run = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_enter = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "_phase");
    vm->ref_k_phase = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "ended"); /* phases.ENDED_PHASE */
    vm->ref_k_ended = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushliteral(L, "_r");
    vm->ref_k_r = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1); /* the request module */
    /* Config routes' predicates (conn.c runs them while routing). */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.route_predicate");
    if (lua_pcall(L, 1, 1, 0)) {
        snprintf(err, errlen, "%s: %s", cfg->path, lua_tostring(L, -1));
        goto fail;
    }
    lua_getfield(L, -1, "run");
    vm->ref_pred = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

    if (lp__lua_run_init(vm, state_idx, err, errlen)) {
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
    lp_lua_retire(vm); /* and the tasks init_worker made */
    return LP_ECONFIG;
}

void lp__lua_vm_free(lp_lua_t *vm)
{
    wd_register(&vm->guard, 0);
    free(vm->last_error);
    lua_close(vm->L);
    free(vm->route_phases);
    lp_cache_native_free(vm->cache_native, vm->nroutes);
    free(vm);
}

int lp_lua_wants(lp_lua_t *vm, int route, int phase)
{
    if (!vm)
        return 0;
    return (vm->route_phases[route + 1] & LP_PHASE_BIT(phase)) != 0;
}

uint64_t lp_lua_memory(struct lp_lua_s *vm)
{
    if (!vm || !vm->L)
        return 0;
    return (uint64_t)lua_gc(vm->L, LUA_GCCOUNT, 0) * 1024 +
           (uint64_t)lua_gc(vm->L, LUA_GCCOUNTB, 0);
}
