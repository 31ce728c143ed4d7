/* YAML config files read in C (engine/yaml_load.c): the Lua module luaproxy.yaml_native. */
#ifndef LP_YAML_LOAD_H
#define LP_YAML_LOAD_H

#include <lua.h>

int luaopen_luaproxy_yaml_native(lua_State *L);

#endif
