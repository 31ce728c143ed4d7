/* `luaproxy test`: runs a plugin's busted specs under LuaJIT with the engine's Lua modules
 * (proxy.test, luaproxy.*) and the bundled plugins on the module path, from any directory
 * (docs/testing-plugins.md). */
#ifndef LP_TESTCMD_H
#define LP_TESTCMD_H

#include <stddef.h>

/* argv[0] is "test". Does not return when busted starts; else prints why and returns the
 * exit status (2: bad usage, 127: busted or luajit not found). */
int lp_testcmd_main(int argc, char **argv);

/* The first executable `name` on PATH (or `name` itself when it has a slash) into out. */
int lp_find_program(const char *name, char *out, size_t n);

/* Sets LUA_PATH (the NULL-terminated `dirs`, ./plugins, ., the runtime's lua/ and plugins/,
 * then what it had) and LP_NATIVE_LIB for a LuaJIT tool; -1 when the path is too long. */
int lp_tool_env(const char *const *dirs);

/* `luaproxy check|new|explain ...`: argv[0] is the tool. Runs lua/luaproxy/tools/cli.lua
 * under LuaJIT (does not return when it starts); else prints why and returns 127. */
int lp_toolcmd_main(int argc, char **argv);

#endif
