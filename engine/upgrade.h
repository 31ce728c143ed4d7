/* Binary upgrade (issue #18; docs/fleet.md, "Binary upgrade"). SIGUSR2 (or `luaproxy -s
 * upgrade`) starts the binary found at this process's path with the same argv; it inherits
 * every listening socket (each worker's SO_REUSEPORT socket of every listen entry, and the
 * admin API's) as plain descriptors, listed in $LUAPROXY_INHERIT, and a pipe
 * ($LUAPROXY_UPGRADE_FD) on which it says READY once it serves. Only then does the old
 * process hand over (pid file, systemd's MAINPID) and drain as for a stop. A new process
 * that fails before READY changes nothing: the old one logs why and keeps serving. */
#ifndef LP_UPGRADE_H
#define LP_UPGRADE_H

#include <stddef.h>
#include "config.h"
#include "server.h"

/* Every process, first thing in main(): records the binary's path and argv (for a later
 * upgrade) and, in a process an upgrade started, takes what the old one handed over out
 * of the environment (the descriptors become close-on-exec). 0, or -1 with a message on
 * stderr when the hand-over is malformed. */
int lp_upgrade_init(int argc, char **argv);

/* ---- the new process (main thread) ---- */

/* 1 when an upgrade started this process. */
int lp_upgrade_is_child(void);
/* Takes the inherited sockets of kind 'L' (a listen entry) or 'A' (the admin API) whose
 * address, as configured or as bound, is `addr`: up to max descriptors into out (the
 * caller owns them from here). Returns how many (0: none inherited, bind afresh). */
size_t lp_upgrade_take(char kind, const char *addr, int *out, size_t max);
/* Closes the inherited sockets nothing took: addresses the new config no longer has. */
void lp_upgrade_close_rest(void);
/* This process serves: writes PIDFILE.oldbin (the old pid) and the pid file (this one), then
 * tells the old process, which drains. */
void lp_upgrade_ready(const lp_config_t *cfg);

/* ---- the old process (main thread) ---- */

/* Starts the new process (SIGUSR2). Refused, with a log line, while one is starting or
 * while this one stops. */
void lp_upgrade_start(lp_server_t *s);
/* At exit: lets go of a new process still starting (it is stopped: SIGTERM) or serving (it
 * stays), and removes PID_FILE.oldbin when it names this process (pid_file: NULL if none). */
void lp_upgrade_stop(const char *pid_file);
/* 1 once a new process serves and this one drains for it (no STOPPING=1 to systemd: the
 * service goes on). */
int lp_upgrade_handed_over(void);

/* ---- shared by both sides (upgrade_inherit.c) ---- */

#define ENV_INHERIT  "LUAPROXY_INHERIT"
#define ENV_READY_FD "LUAPROXY_UPGRADE_FD"
#define ENV_PARENT   "LUAPROXY_UPGRADE_PARENT"
/* The path and argv lp_upgrade_init recorded (borrowed; "" when unknown). */
const char *lp_upgrade_exe(void);
char **lp_upgrade_argv(void);
/* PATH holding pid, written beside and renamed over (never seen empty). Logs failures. */
void lp_upgrade_write_pid(const char *path, long pid);

#endif
