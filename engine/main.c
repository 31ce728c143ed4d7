/* luaproxy: command line, start-up and signals. The main thread owns no connection; it
 * waits for signals and stops the workers. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "accesslog.h"
#include "logw.h"
#include "config.h"
#include "etcd.h"
#include "log.h"
#include "lua_vm.h"
#include "reload_history.h"
#include "routescmd.h"
#include "server.h"
#include "testcmd.h"
#include "upgrade.h"
#include "worker.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: luaproxy -c FILE [-w N] [--watch]  serve with the config FILE\n"
                 "       luaproxy -t -c FILE          check FILE and exit\n"
                 "       luaproxy -s reload -c FILE   reload the instance serving FILE\n"
                 "       luaproxy -s stop -c FILE     stop it gracefully\n"
                 "       luaproxy -s upgrade -c FILE  start the binary anew with its sockets\n"
                 "       luaproxy push -c FILE --etcd URL [--prefix P]  check FILE as -t\n"
                 "                                    does, then write it to etcd (docs/fleet.md;\n"
                 "                                    --plugin NAME=FILE, --user, TLS: push -h)\n"
                 "       luaproxy test [-p DIR] [DIR] [SPEC...]  run plugin specs (busted)\n"
                 "       luaproxy check [-c FILE] [DIR|FILE...]  lint scripts, plugins\n"
                 "       luaproxy new plugin NAME [--dir DIR]  a plugin, spec, docs\n"
                 "       luaproxy explain -c FILE 'METHOD URL' [-H 'N: v']... [--json]\n"
                 "                                    what a request would meet\n"
                 "       luaproxy routes -c FILE [--no-overlay]  the route table FILE loads\n"
                 "                                    (admin overlay applied), as JSON\n"
                 "       luaproxy -v                  print the version and the runtime directory\n"
                 "       luaproxy -h                  this help\n"
                 "options:\n"
                 "  -c FILE  configuration: a Lua file returning a table, or the same\n"
                 "           table as JSON (.json) or YAML (.yaml, .yml)\n"
                 "  -t       validate the configuration and exit (0: valid)\n"
                 "  -w N     worker threads (overrides the config's workers)\n"
                 "  --watch  reload when the config, a plugin or a script changes\n"
                 "  -s SIG   send to the running instance: reload or stop (through the admin\n"
                 "           API when configured, else SIGHUP or SIGTERM to the pid in\n"
                 "           pid_file), or upgrade (SIGUSR2 to the pid in pid_file)\n"
                 "signals: TERM/INT drain and stop, HUP reloads, USR1 reopens the access log,\n"
                 "         USR2 upgrades the binary (docs/fleet.md)\n");
}

static uv_signal_t sigterm, sigint, sighup, sigusr1, sigusr2;
static const char *stop_reason; /* what asked for the stop, for the log */
static lp_server_t server;

void lp_server_stop(lp_server_t *s, const char *why)
{
    if (stop_reason)
        return;
    stop_reason = why;
    s->stopping = 1;
    uv_signal_stop(&sigterm);
    uv_signal_stop(&sigint);
    uv_signal_stop(&sighup);
    uv_signal_stop(&sigusr1);
    /* SIGUSR2 stays caught (and ignored: lp_upgrade_start) through the drain: its default
     * action would end the process, requests in flight with it. */
    /* After an upgrade's hand-over the service goes on in the new process (MAINPID). */
    if (!lp_upgrade_handed_over())
        lp_notify_systemd("STOPPING=1");
    uv_stop(s->loop); /* main() drains and stops once this loop turn is over */
}

/* The error log's output and the writer's bound, from a config now serving (start, reload,
 * SIGUSR1: a file output is opened again). A failure keeps the old output. */
static int apply_log_outputs(const lp_config_t *cfg)
{
    char err[512];
    lp_logw_set_limit(cfg->log_buffer);
    if (lp_log_configure(&cfg->error_out, cfg->error_json, err, sizeof(err))) {
        lp_log_error("%s: %s (the error log keeps its output)", cfg->path, err);
        return -1;
    }
    return 0;
}

static void on_signal(uv_signal_t *s, int signum)
{
    char err[1024];
    if (signum == SIGHUP) {
        lp_server_reload_by(&server, "SIGHUP", NULL, NULL);
        return;
    }
    if (signum == SIGUSR2) {
        lp_upgrade_start(&server);
        return;
    }
    if (signum == SIGUSR1) {
        /* nginx's convention: logrotate moved the files away, open them again. */
        apply_log_outputs(lp_gen_current->config);
        if (lp_workers_reopen_logs(server.workers, server.nworkers, err, sizeof(err)))
            lp_log_error("reopening the logs failed, the old files stay open: %s", err);
        else
            lp_log_notice("signal %d: logs reopened", signum);
        return;
    }
    lp_server_stop(&server, signum == SIGINT ? "signal 2" : "signal 15");
    LP_UNUSED(s);
}

/* ---- reload ----
 * Three steps: load (parse and validate: the config VM, main loop), materialise (DNS and
 * TLS contexts: lp_config_materialise on libuv's threadpool, so a slow resolver or CA file
 * holds neither the admin API nor the health checks, and never a worker), then build the
 * generation and switch every worker to it (main loop, worker.c). One at a time.
 * `reload` is the main thread's, except cfg, rc, err and materialise_ns, which the
 * threadpool thread writes between uv_queue_work and on_materialised (libuv orders both
 * sides of that hand-over; the main thread does not touch them meanwhile). */

typedef struct reload_waiter_s {
    lp_reload_cb cb;
    void *data;   /* the caller's */
    char who[96]; /* who asked, for the reload history */
    uint64_t t0;  /* uv_hrtime() when asked */
    struct reload_waiter_s *next;
} reload_waiter_t;

static struct {
    uv_work_t work;           /* work.data = the server */
    lp_config_t *cfg;         /* owned while it is materialised */
    int rc;                   /* the materialise step's result, then the reload's */
    char err[1024];           /* its message */
    uint64_t t0;              /* uv_hrtime() at the start */
    uint64_t materialise_ns;  /* the threadpool step's time */
    int running;              /* a reload is between load and switch */
    int again;                /* asked again meanwhile: run once more after it */
    reload_waiter_t *waiting; /* owned list: who hears the running reload's outcome */
    reload_waiter_t *next;    /* owned list: who asked meanwhile (the next one's) */
    char *source_name;        /* owned: the loaded config's etcd document, for errors after
                                 the load (lp_config_relocate); NULL: none */
    char *source_keys;        /* owned: the keys it gave */
} reload;

static void reload_begin(lp_server_t *s);

/* One history entry for the reload that ended: "by" lists every caller it answers (asked
 * while another ran, they share one reload), oldest first; its time runs from the first. */
static void history_add(const reload_waiter_t *w, int rc, uint64_t gen_id)
{
    char by[256] = "";
    size_t n = 0;
    uint64_t t0 = reload.t0;
    const reload_waiter_t *order[8];
    size_t k = 0;
    for (; w; w = w->next) {
        if (k < LP_ARRAY_LEN(order))
            order[k++] = w;
        if (w->t0 < t0)
            t0 = w->t0;
    }
    /* The lists are built newest first. */
    while (k-- > 0 && n < sizeof(by)) {
        int m = snprintf(by + n, sizeof(by) - n, "%s%s", n ? ", " : "", order[k]->who);
        if (m > 0)
            n += (size_t)m;
    }
    lp_reload_history_add(by, rc == 0, gen_id, reload.err, (double)(uv_hrtime() - t0) / 1e6);
}

/* Ends the running reload: the server follows the new generation (on success), the
 * callers hear, and a reload asked meanwhile starts. */
static void reload_end(lp_server_t *s, int rc)
{
    uint64_t gen_id = 0;
    if (stop_reason) {
        /* Stopping: the workers are gone, and so may be every generation. */
        if (!rc)
            rc = LP_EIO;
        snprintf(reload.err, sizeof(reload.err), "the server is stopping");
    } else if (rc) {
        s->reloads_failed++;
        gen_id = lp_gen_current->id;
        /* After the load (names, TLS files, the workers' VMs): about the etcd document? */
        lp_config_relocate(s->config_path, reload.source_name, reload.source_keys, reload.err,
                           sizeof(reload.err));
        lp_log_error("reload failed, generation %llu keeps serving: %s", (unsigned long long)gen_id,
                     reload.err);
    } else {
        s->reloads++;
        gen_id = lp_gen_current->id;
        atomic_store_explicit(&lp_log_level, lp_gen_current->config->log_level,
                              memory_order_relaxed);
        apply_log_outputs(lp_gen_current->config);
        lp_admin_update(s);
        lp_admin_snapshot(s);
        lp_health_checks_update(s);
        lp_log_notice("reload: generation %llu live in %.1f ms (names and TLS contexts: %.1f ms, "
                      "off the loops)",
                      (unsigned long long)gen_id, (double)(uv_hrtime() - reload.t0) / 1e6,
                      (double)reload.materialise_ns / 1e6);
    }
    if (!stop_reason)
        lp_notify_systemd(rc ? "READY=1\nSTATUS=the last reload failed, see the log"
                             : "READY=1\nSTATUS=serving");
    free(reload.source_name);
    free(reload.source_keys);
    reload.source_name = reload.source_keys = NULL;
    reload_waiter_t *w = reload.waiting;
    reload.waiting = NULL;
    reload.running = 0;
    if (!stop_reason)
        history_add(w, rc, gen_id);
    while (w) {
        reload_waiter_t *next = w->next;
        w->cb(w->data, rc, rc ? reload.err : "", gen_id);
        free(w);
        w = next;
    }
    if (reload.again && !reload.running) {
        reload.again = 0;
        reload.waiting = reload.next;
        reload.next = NULL;
        reload_begin(s);
    }
}

static void on_materialise(uv_work_t *work)
{
    /* A threadpool thread: only the config being loaded is touched. */
    uint64_t t0 = uv_hrtime();
    reload.rc = lp_config_materialise(reload.cfg, reload.err, sizeof(reload.err));
    reload.materialise_ns = uv_hrtime() - t0;
    LP_UNUSED(work);
}

static void on_materialised(uv_work_t *work, int status)
{
    lp_server_t *s = work->data;
    lp_config_t *cfg = reload.cfg;
    reload.cfg = NULL;
    int rc = reload.rc;
    if (status < 0 && !rc) {
        rc = LP_EIO;
        snprintf(reload.err, sizeof(reload.err), "%s", uv_strerror(status));
    }
    if (rc || stop_reason) {
        lp_config_free(cfg);
        reload_end(s, rc);
        return;
    }
    reload_end(s, lp_workers_reload(s->workers, s->nworkers, cfg, reload.err, sizeof(reload.err)));
}

static void reload_begin(lp_server_t *s)
{
    reload.running = 1;
    reload.t0 = uv_hrtime();
    reload.materialise_ns = 0;
    reload.err[0] = 0;
    /* systemd shows the unit "reloading" until READY=1 comes back, success or not. */
    lp_notify_systemd("RELOADING=1");
    lp_config_source_doc = s->source_doc;
    int rc = lp_config_load(s->config_path, &reload.cfg, reload.err, sizeof(reload.err));
    lp_config_source_doc = NULL;
    if (rc) {
        reload_end(s, rc);
        return;
    }
    reload.source_name = reload.cfg->source_name ? strdup(reload.cfg->source_name) : NULL;
    reload.source_keys = reload.cfg->source_keys ? strdup(reload.cfg->source_keys) : NULL;
    reload.work.data = s;
    rc = uv_queue_work(s->loop, &reload.work, on_materialise, on_materialised);
    if (rc) {
        snprintf(reload.err, sizeof(reload.err), "cannot queue the reload: %s", uv_strerror(rc));
        lp_config_free(reload.cfg);
        reload.cfg = NULL;
        reload_end(s, LP_EIO);
    }
}

static void reload_nop(void *data, int rc, const char *err, uint64_t generation)
{
    LP_UNUSED(data);
    LP_UNUSED(rc);
    LP_UNUSED(err);
    LP_UNUSED(generation);
}

void lp_server_reload(lp_server_t *s, lp_reload_cb cb, void *data)
{
    lp_server_reload_by(s, "unnamed", cb, data);
}

void lp_server_reload_by(lp_server_t *s, const char *who, lp_reload_cb cb, void *data)
{
    if (stop_reason) {
        /* An admin connection still open while the process drains: no generation to
         * name (the workers may be gone with theirs). */
        if (cb)
            cb(data, LP_EIO, "the server is stopping", 0);
        return;
    }
    reload_waiter_t *w = calloc(1, sizeof(*w));
    if (!w) {
        lp_log_error("reload: out of memory");
        if (cb)
            cb(data, LP_ENOMEM, "out of memory", lp_gen_current->id);
        return;
    }
    w->cb = cb ? cb : reload_nop;
    w->data = data;
    w->t0 = uv_hrtime();
    snprintf(w->who, sizeof(w->who), "%s", who);
    if (reload.running) {
        lp_log_notice("reload: one is running; this one follows it");
        w->next = reload.next;
        reload.next = w;
        reload.again = 1;
        return;
    }
    w->next = reload.waiting;
    reload.waiting = w;
    reload_begin(s);
}

/* ---- the drain ----
 * The workers drain and stop on a thread of their own (lp_workers_stop blocks until the
 * last request ends or timeouts.drain), so that this loop keeps the admin API up: GET
 * /ready answers 503 until the process exits, and a balancer's health check sees "not
 * ready" rather than a refused connection. Nothing on this loop touches a worker
 * meanwhile (admin.c answers everything 503 once `stopping` is set). */

static uv_async_t drained; /* the drain thread's word that the workers are gone */

static void drain_main(void *arg)
{
    lp_server_t *s = arg;
    lp_workers_stop(s->workers, s->nworkers);
    uv_async_send(&drained);
}

static void on_drained(uv_async_t *a)
{
    uv_close((uv_handle_t *)a, NULL);
    uv_stop(a->loop);
}

static void drain_workers(lp_server_t *s)
{
    uv_thread_t t;
    if (uv_async_init(s->loop, &drained, on_drained)) {
        lp_workers_stop(s->workers, s->nworkers);
        return;
    }
    if (uv_thread_create(&t, drain_main, s)) {
        uv_close((uv_handle_t *)&drained, NULL);
        lp_workers_stop(s->workers, s->nworkers);
        return;
    }
    uv_run(s->loop, UV_RUN_DEFAULT); /* until on_drained */
    uv_thread_join(&t);
    s->workers = NULL;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int test_only = 0, opt;
    long workers = 0;
    const char *signal_name = NULL;
    static const struct option longopts[] = {{"watch", no_argument, NULL, 'W'},
                                             {"help", no_argument, NULL, 'h'},
                                             {"version", no_argument, NULL, 'v'},
                                             {NULL, 0, NULL, 0}};
    int watch = 0;
    uint64_t start_ns = uv_hrtime(); /* the start-up load's time, for the reload history */
    if (lp_upgrade_init(argc, argv))
        return 1;
    if (argc > 1 && !strcmp(argv[1], "push"))
        return lp_etcd_push_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "test"))
        return lp_testcmd_main(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "routes"))
        return lp_routescmd_main(argc - 1, argv + 1);
    if (argc > 1 &&
        (!strcmp(argv[1], "check") || !strcmp(argv[1], "new") || !strcmp(argv[1], "explain")))
        return lp_toolcmd_main(argc - 1, argv + 1);
    while ((opt = getopt_long(argc, argv, "c:tw:s:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'W':
            watch = 1;
            break;
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 's':
            signal_name = optarg;
            break;
        case 'w': {
            char *end;
            workers = strtol(optarg, &end, 10);
            if (*end || workers < 1 || workers > 256) {
                fprintf(stderr, "luaproxy: -w takes a number from 1 to 256\n");
                return 2;
            }
            break;
        }
        case 'v':
            printf("luaproxy %s\nruntime: %s (%s)\n", LP_VERSION, lp_lua_engine_root(),
                   lp_lua_engine_root_origin());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind < argc) {
        usage(stderr);
        return 2;
    }
    /* The one load of this start: what -t checks is what serves. A server names its file by
     * its real path (reloads, GET /config); -t and -s as the user wrote it. */
    char err[1024], abspath[4096];
    const char *config_path = realpath(path, abspath) ? abspath : path;
    lp_config_admin_json = !(test_only || signal_name);
    lp_config_cache_disk = !(test_only || signal_name); /* a check must not touch cache files */
    lp_config_t *cfg;
    if (lp_config_load(test_only || signal_name ? path : config_path, &cfg, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    /* Nothing serves yet: the step a reload runs on the threadpool runs here. */
    if (lp_config_materialise(cfg, err, sizeof(err))) {
        lp_config_relocate(cfg->path, cfg->source_name, cfg->source_keys, err, sizeof(err));
        fprintf(stderr, "%s\n", err);
        lp_config_free(cfg);
        return 1;
    }
    char ferr[512];
    if (lp_accesslog_check_format(&cfg->access_format, ferr, sizeof(ferr))) {
        fprintf(stderr, "%s: %s\n", path, ferr);
        lp_config_free(cfg);
        return 1;
    }
    if (signal_name) {
        int rc = lp_admin_signal(cfg, signal_name);
        lp_config_free(cfg);
        return rc;
    }
    if (test_only) {
        /* As a start would: plugins and handlers in a worker VM, init_worker run. */
        int rc = lp_workers_check(cfg, err, sizeof(err));
        if (rc) {
            lp_config_relocate(cfg->path, cfg->source_name, cfg->source_keys, err, sizeof(err));
            fprintf(stderr, "%s\n", err);
        } else
            printf("%s: configuration ok\n", path);
        lp_config_free(cfg);
        return rc ? 1 : 0;
    }
    atomic_store_explicit(&lp_log_level, cfg->log_level, memory_order_relaxed);
    signal(SIGPIPE, SIG_IGN);
    if (apply_log_outputs(cfg) || lp_logw_start(cfg->log_buffer)) {
        lp_config_free(cfg);
        return 1;
    }

    /* libuv's thread pool (4 threads by default) serves DNS look-ups, reload work and
     * basic_auth's password checks, which may hold all its threads but two
     * (crypto_job.c): 8 unless the operator says otherwise. Read when the pool starts, at
     * its first job, which comes later than this. */
    setenv("UV_THREADPOOL_SIZE", "8", 0);
    server.config_path = config_path;
    server.loop = uv_default_loop();
    server.watch_forced = watch;
    server.started_at = (double)time(NULL);
    /* Signals are caught (and queued until the loop runs) before the first `listening on`
     * line: whoever sees that line may signal this process at once, and SIGHUP's default
     * action would kill it. The pid file comes once the start succeeded, so that a second
     * instance failing to bind never overwrites the running one's. */
    uv_signal_init(server.loop, &sigterm);
    uv_signal_init(server.loop, &sigint);
    uv_signal_init(server.loop, &sighup);
    uv_signal_init(server.loop, &sigusr1);
    uv_signal_init(server.loop, &sigusr2);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_signal_start(&sighup, on_signal, SIGHUP);
    uv_signal_start(&sigusr1, on_signal, SIGUSR1);
    uv_signal_start(&sigusr2, on_signal, SIGUSR2);
    if (lp_workers_start(cfg, (unsigned)workers, &server.workers, err, sizeof(err))) {
        lp_log_error("%s", err);
        lp_logw_stop(1000);
        lp_log_reset();
        return 1;
    }
    server.nworkers = cfg->workers && !workers ? cfg->workers : (unsigned)workers;
    lp_admin_snapshot(&server);
    if (lp_admin_update(&server)) {
        lp_workers_stop(server.workers, server.nworkers);
        lp_lua_watchdog_stop();
        return 1;
    }
    /* Inherited sockets no listener took: addresses this config dropped. */
    lp_upgrade_close_rest();
    /* The pid file (and, after an upgrade, PIDFILE.oldbin and the word to the old process,
     * which drains from here). */
    lp_upgrade_ready(lp_gen_current->config);
    lp_health_checks_update(&server);
    lp_reload_history_add("startup", 1, lp_gen_current->id, NULL,
                          (double)(uv_hrtime() - start_ns) / 1e6);

    lp_watch_start(&server);
    if (lp_etcd_start(&server, lp_gen_current->config, err, sizeof(err))) {
        lp_log_error("%s", err);
        lp_server_stop(&server, "config_source");
    }
    if (lp_upgrade_is_child()) {
        char msg[96];
        snprintf(msg, sizeof(msg), "MAINPID=%ld\nREADY=1\nSTATUS=serving (upgraded)",
                 (long)getpid());
        lp_notify_systemd(msg);
    } else {
        lp_notify_systemd("READY=1\nSTATUS=serving");
    }
    uv_run(server.loop, UV_RUN_DEFAULT);
    lp_log_notice("%s: draining (up to %.1f s)", stop_reason ? stop_reason : "stop",
                  (double)lp_gen_current->config->timeouts.drain / 1000.0);
    lp_watch_stop(&server);
    lp_etcd_stop(&server);
    lp_health_checks_stop(&server);
    char *pid_file =
        lp_gen_current->config->pid_file ? strdup(lp_gen_current->config->pid_file) : NULL;
    lp_pidfile_remove(lp_gen_current->config);
    drain_workers(&server);
    /* From here on lp_gen_current may be gone with the workers. */
    lp_admin_stop(&server);
    lp_upgrade_stop(pid_file);
    free(pid_file);
    lp_lua_watchdog_stop();
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_close((uv_handle_t *)&sighup, NULL);
    uv_close((uv_handle_t *)&sigusr1, NULL);
    uv_close((uv_handle_t *)&sigusr2, NULL);
    uv_run(server.loop, UV_RUN_DEFAULT);
    uv_loop_close(server.loop);
    free(server.config_json);
    lp_log_notice("stopped");
    /* What the workers handed over goes out (an output that takes nothing is given up). */
    lp_logw_stop(2000);
    lp_log_reset();
    return 0;
}
