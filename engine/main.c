/* luaproxy: command line, start-up and signals. The main thread owns no connection; it
 * waits for signals and stops the workers. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "accesslog.h"
#include "config.h"
#include "log.h"
#include "lua_vm.h"
#include "worker.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: luaproxy -c FILE [-w N]     serve with the config FILE\n"
                 "       luaproxy -t -c FILE          check FILE and exit\n"
                 "       luaproxy -v                  print the version\n"
                 "       luaproxy -h                  this help\n"
                 "options:\n"
                 "  -c FILE  configuration (a Lua file returning a table)\n"
                 "  -t       validate the configuration and exit (0: valid)\n"
                 "  -w N     worker threads (overrides the config's workers)\n");
}

static uv_signal_t sigterm, sigint;
static int stop_signal;

static void on_signal(uv_signal_t *s, int signum)
{
    stop_signal = signum;
    uv_signal_stop(&sigterm);
    uv_signal_stop(&sigint);
    uv_stop(s->loop);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int test_only = 0, opt;
    long workers = 0;
    while ((opt = getopt(argc, argv, "c:tw:vh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
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
            printf("luaproxy %s\n", LP_VERSION);
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
    char err[1024];
    lp_config_t *cfg;
    if (lp_config_load(path, &cfg, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char ferr[512];
    if (lp_accesslog_check_format(cfg->access_format, ferr, sizeof(ferr))) {
        fprintf(stderr, "%s: %s\n", path, ferr);
        lp_config_free(cfg);
        return 1;
    }
    if (test_only) {
        printf("%s: configuration ok\n", path);
        lp_config_free(cfg);
        return 0;
    }
    if (workers)
        cfg->workers = (unsigned)workers;
    lp_log_level = cfg->log_level;
    signal(SIGPIPE, SIG_IGN);

    lp_worker_t *ws = NULL;
    if (cfg->has_lua && cfg->lua_phase_timeout)
        lp_lua_watchdog_start();
    if (lp_workers_start(cfg, cfg->workers, &ws, err, sizeof(err))) {
        lp_log_error("%s", err);
        if (ws)
            lp_workers_stop(ws, cfg->workers);
        lp_config_free(cfg);
        return 1;
    }
    for (size_t i = 0; i < cfg->nlisten; i++)
        lp_log_notice("listening on %s (%u workers)", cfg->listen[i].addr.text, cfg->workers);

    uv_loop_t *loop = uv_default_loop();
    uv_signal_init(loop, &sigterm);
    uv_signal_init(loop, &sigint);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_start(&sigint, on_signal, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    lp_log_notice("signal %d: draining (up to %.1f s)", stop_signal,
                  (double)cfg->timeouts.drain / 1000.0);
    lp_workers_stop(ws, cfg->workers);
    lp_lua_watchdog_stop();
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    lp_log_notice("stopped");
    lp_config_free(cfg);
    return 0;
}
