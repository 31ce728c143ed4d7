/* `luaproxy check`, `luaproxy new` and `luaproxy explain`: tools written in Lua
 * (lua/luaproxy/tools/cli.lua), run by LuaJIT with the runtime's modules on the path, as
 * `luaproxy test` runs busted. They load no config into a server and touch no running
 * instance (explain against a live config goes through the admin API: POST /explain). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "lua_vm.h"
#include "testcmd.h"

int lp_toolcmd_main(int argc, char **argv)
{
    const char *none[] = {NULL};
    if (lp_tool_env(none)) {
        fprintf(stderr, "luaproxy %s: module path too long\n", argv[0]);
        return 2;
    }
    const char *luajit = getenv("LUAJIT");
    char luajit_path[4096], cli[4200];
    if (lp_find_program(luajit && *luajit ? luajit : "luajit", luajit_path, sizeof(luajit_path))) {
        fprintf(stderr, "luaproxy %s: luajit not found (Debian: apt install luajit)\n", argv[0]);
        return 127;
    }
    snprintf(cli, sizeof(cli), "%s/lua/luaproxy/tools/cli.lua", lp_lua_engine_root());
    /* This binary, for the tools that ask the engine itself (explain: `luaproxy routes`). */
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sl > 0) {
        self[sl] = 0;
        setenv("LUAPROXY_BIN", self, 1);
    }
    /* luajit CLI TOOL [args] */
    char **args = calloc((size_t)argc + 3, sizeof(*args));
    if (!args)
        return 1;
    int n = 0;
    args[n++] = luajit_path;
    args[n++] = cli;
    for (int i = 0; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execv(luajit_path, args);
    perror("luaproxy: cannot run luajit");
    free(args);
    return 127;
}
