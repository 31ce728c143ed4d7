/* `luaproxy test [-p DIR]... [busted options] [SPEC...]`: busted, run by LuaJIT, with a
 * module path that finds the engine's Lua (proxy.test, luaproxy.*), the bundled plugins,
 * the user's plugins (DIR, ./plugins, .) and anything LUA_PATH already had.
 *
 * Plain `busted` runs under the `lua` interpreter (Lua 5.x, not LuaJIT: no FFI) and knows
 * none of these directories; `busted --lua=luajit` re-runs itself through the shell with
 * its arguments unquoted, so a path given with `--lpath` is cut at its `;`. Hence LuaJIT
 * is started here on busted's own script, the path goes through LUA_PATH, and
 * `--ignore-lua` keeps a `.busted` file's `lua` setting from switching interpreters. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.h"
#include "lua_vm.h"
#include "testcmd.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: luaproxy test [-p DIR]... [PROJECT_DIR] [busted options] [SPEC...]\n"
            "runs busted specs (default: ./spec; with PROJECT_DIR, a directory holding spec/,\n"
            "from there) under LuaJIT, with proxy.test, the engine's Lua modules and the\n"
            "bundled plugins on the module path, and the plugins in\n"
            "  -p DIR, --plugins DIR   a plugin directory (repeatable; searched first)\n"
            "  ./plugins and .         always\n"
            "environment: BUSTED (busted's script), LUAJIT (the interpreter), LUA_PATH (kept)\n");
}

int lp_find_program(const char *name, char *out, size_t n)
{
    if (strchr(name, '/')) {
        snprintf(out, n, "%s", name);
        return access(out, X_OK) == 0 ? 0 : -1;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        snprintf(out, n, "%.*s/%s", (int)len, len ? path : ".", name);
        if (access(out, X_OK) == 0)
            return 0;
        path += len + (colon ? 1 : 0);
    }
    return -1;
}

static int add_dir(char *buf, size_t n, size_t *used, const char *dir)
{
    int w = snprintf(buf + *used, n - *used, "%s/?.lua;%s/?/init.lua;", dir, dir);
    if (w < 0 || (size_t)w >= n - *used)
        return -1;
    *used += (size_t)w;
    return 0;
}

/* LUA_PATH: `dirs` (NULL-terminated), ./plugins, ., the runtime's lua/ and plugins/, then
 * what LUA_PATH had; LP_NATIVE_LIB: the native helpers for the double
 * (lua/luaproxy/native.lua), installed beside the runtime, else the build tree's. */
int lp_tool_env(const char *const *dirs)
{
    char lua_path[16384], dir[4200];
    size_t used = 0;
    for (int k = 0; dirs && dirs[k]; k++)
        if (add_dir(lua_path, sizeof(lua_path), &used, dirs[k]))
            return -1;
    const char *root = lp_lua_engine_root();
    const char *here[] = {"./plugins", ".", NULL};
    for (int k = 0; here[k]; k++)
        if (add_dir(lua_path, sizeof(lua_path), &used, here[k]))
            return -1;
    snprintf(dir, sizeof(dir), "%s/lua", root);
    if (add_dir(lua_path, sizeof(lua_path), &used, dir))
        return -1;
    snprintf(dir, sizeof(dir), "%s/plugins", root);
    if (add_dir(lua_path, sizeof(lua_path), &used, dir))
        return -1;
    /* What LUA_PATH had, or ";" for LuaJIT's default path (";;" in LUA_PATH). */
    const char *old = getenv("LUA_PATH");
    int w = snprintf(lua_path + used, sizeof(lua_path) - used, "%s", old && *old ? old : ";");
    if (w < 0 || (size_t)w >= sizeof(lua_path) - used)
        return -1;
    setenv("LUA_PATH", lua_path, 1);
    if (!getenv("LP_NATIVE_LIB")) {
        snprintf(dir, sizeof(dir), "%s/lib/liblp_native.so", root);
        setenv("LP_NATIVE_LIB", access(dir, R_OK) == 0 ? dir : LP_NATIVE_LIB_BUILD, 1);
    }
    return 0;
}

/* A project directory: one with a spec/ directory in it. */
static int is_project_dir(const char *path)
{
    char spec[4200];
    struct stat st;
    snprintf(spec, sizeof(spec), "%s/spec", path);
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode) && stat(spec, &st) == 0 &&
           S_ISDIR(st.st_mode);
}

int lp_testcmd_main(int argc, char **argv)
{
    const char *dirs[64];
    char *owned[64];
    size_t ndirs = 0;
    int i = 1, rc = 2;
    for (; i < argc; i++) {
        const char *dir = NULL;
        if ((!strcmp(argv[i], "-p") || !strcmp(argv[i], "--plugins")) && i + 1 < argc)
            dir = argv[++i];
        else if (!strncmp(argv[i], "--plugins=", 10))
            dir = argv[i] + 10;
        else if (!strcmp(argv[i], "-p") || !strcmp(argv[i], "--plugins")) {
            usage(stderr);
            goto out;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            rc = 0;
            goto out;
        } else
            break; /* the rest is busted's */
        if (ndirs + 1 >= LP_ARRAY_LEN(dirs))
            goto too_long;
        /* Absolute: `luaproxy test DIR` changes directory below. */
        owned[ndirs] = realpath(dir, NULL);
        dirs[ndirs] = owned[ndirs] ? owned[ndirs] : dir;
        ndirs++;
    }
    dirs[ndirs] = NULL;
    /* `luaproxy test DIR`: the project in DIR (its plugins/, its spec/), from anywhere. */
    if (i < argc && is_project_dir(argv[i])) {
        if (chdir(argv[i])) {
            fprintf(stderr, "luaproxy test: cannot enter %s: %s\n", argv[i], strerror(errno));
            goto out;
        }
        i++;
    }
    if (lp_tool_env(dirs))
        goto too_long;

    const char *busted = getenv("BUSTED");
    const char *luajit = getenv("LUAJIT");
    char busted_path[4096], luajit_path[4096];
    if (lp_find_program(busted && *busted ? busted : "busted", busted_path, sizeof(busted_path))) {
        fprintf(stderr, "luaproxy test: busted not found%s%s (Debian: apt install lua-busted)\n",
                busted && *busted ? ": " : " on PATH", busted && *busted ? busted : "");
        rc = 127;
        goto out;
    }
    if (lp_find_program(luajit && *luajit ? luajit : "luajit", luajit_path, sizeof(luajit_path))) {
        fprintf(stderr, "luaproxy test: luajit not found%s%s (Debian: apt install luajit)\n",
                luajit && *luajit ? ": " : " on PATH", luajit && *luajit ? luajit : "");
        rc = 127;
        goto out;
    }
    /* luajit BUSTED --ignore-lua [busted options and specs] */
    char **args = calloc((size_t)(argc - i) + 4, sizeof(*args));
    if (!args) {
        rc = 1;
        goto out;
    }
    int n = 0;
    args[n++] = luajit_path;
    args[n++] = busted_path;
    args[n++] = "--ignore-lua";
    for (; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execv(luajit_path, args);
    perror("luaproxy test: cannot run luajit");
    free(args);
    rc = 127;
    goto out;
too_long:
    fprintf(stderr, "luaproxy test: plugin directories too long\n");
    rc = 2;
out:
    for (size_t k = 0; k < ndirs; k++)
        free(owned[k]);
    return rc;
}
