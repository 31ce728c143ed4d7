/* The running instance as the main thread sees it: workers, the config path, and the
 * pieces around them that live on the main loop (admin API, file watch, pid file). */
#ifndef LP_SERVER_H
#define LP_SERVER_H

#include <uv.h>
#include "config.h"
#include "proxy-t.h"

typedef struct lp_admin_s lp_admin_t;
typedef struct lp_watch_s lp_watch_t;
typedef struct lp_etcd_s lp_etcd_t;

typedef struct {
    const char *config_path; /* absolute */
    lp_worker_t *workers;
    unsigned nworkers;
    double started_at; /* seconds since the epoch */
    uv_loop_t *loop;   /* the main loop */
    lp_admin_t *admin; /* owned, NULL when off */
    lp_watch_t *watch; /* owned, NULL when off */
    int watch_forced;  /* --watch */
    uint64_t reloads, reloads_failed;
    char *config_json; /* owned: the live config for GET /config */
    /* issue #18: `stopping` is set once lp_server_stop ran (draining: GET /ready answers
     * 503); `etcd` is owned, NULL when the config is not from etcd (etcd.c); `source_doc`
     * is borrowed from it: the candidate the next reload merges (NULL: the last good copy). */
    int stopping;
    lp_etcd_t *etcd;
    const char *source_doc;
} lp_server_t;

/* The outcome of a reload: rc 0, or an error with err while the current generation keeps
 * serving; `generation` is the id of the one serving after it. Called on the main loop. */
typedef void (*lp_reload_cb)(void *data, int rc, const char *err, uint64_t generation);
/* Reloads (SIGHUP, POST /reload, the file watch): the config is loaded (parsed and
 * validated) on the main loop, materialised (DNS, TLS contexts) on libuv's threadpool while
 * the main loop goes on (admin API, health checks), then the new generation is built and
 * switched to on the main loop. cb (NULL: none) hears the outcome, maybe before this
 * returns. A reload asked while one runs runs after it (the file may have changed after the
 * running one read it); all who asked meanwhile hear that one's outcome. Main thread. */
void lp_server_reload(lp_server_t *s, lp_reload_cb cb, void *data);
/* The same, naming who asked for the reload history (GET /reloads): "SIGHUP", "watch",
 * "admin 127.0.0.1:5123" (copied, cut to 95 bytes). lp_server_reload names no one. */
void lp_server_reload_by(lp_server_t *s, const char *who, lp_reload_cb cb, void *data);

/* Asks for a graceful stop (SIGTERM, SIGINT, POST /stop): main() drains and exits 0. `why`
 * (static) is logged. Main thread. */
void lp_server_stop(lp_server_t *s, const char *why);

/* systemd's notify protocol (sdnotify.c): msg ("READY=1", "MAINPID=N\nREADY=1"...) as one
 * datagram to $NOTIFY_SOCKET; nothing when it is unset. Any thread. */
void lp_notify_systemd(const char *msg);

/* Admin API (admin.c): starts, moves or stops it to match the current config. */
int lp_admin_update(lp_server_t *s);
void lp_admin_stop(lp_server_t *s);
/* The admin API's listening socket (borrowed) and its address as configured and as bound,
 * for an upgrade to hand over; -1 when the API is off. */
int lp_admin_listen_fd(const lp_server_t *s, const char **conf, const char **bound);
/* Records the live config for GET /config (after start and every reload). */
void lp_admin_snapshot(lp_server_t *s);
/* `luaproxy -s NAME`: asks the running instance (admin API, else pid file). Exit code. */
int lp_admin_signal(const lp_config_t *cfg, const char *name);
/* The pid a pid file names; 0 when it cannot be read. */
long lp_read_pid_file(const char *path);
void lp_pidfile_write(const lp_config_t *cfg);
void lp_pidfile_remove(const lp_config_t *cfg);

/* Active health checks (health_check.c): probes for the current generation. */
void lp_health_checks_update(lp_server_t *s);
void lp_health_checks_stop(lp_server_t *s);

/* File watch (watch.c): reloads when the config, a plugin or a script changes. */
void lp_watch_start(lp_server_t *s);
void lp_watch_stop(lp_server_t *s);

#endif
