/* `luaproxy test`: runs a plugin's busted specs under LuaJIT with the engine's Lua modules
 * (proxy.test, luaproxy.*) and the bundled plugins on the module path, from any directory
 * (docs/testing-plugins.md). */
#ifndef LP_TESTCMD_H
#define LP_TESTCMD_H

/* argv[0] is "test". Does not return when busted starts; else prints why and returns the
 * exit status (2: bad usage, 127: busted or luajit not found). */
int lp_testcmd_main(int argc, char **argv);

#endif
