/* Binary upgrade: the old process starts the new one with its listening sockets, the new
 * one says when it serves (upgrade.h). Why inheritance rather than SCM_RIGHTS over a unix
 * socket: the new process is our own child started with exec, so the descriptors are
 * already where they must go; there is no socket path to create, secure and clean up, and
 * no window in which a third process could connect to it. The cost is that only a process
 * this one starts can take the sockets, which is the only case we need. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "common.h"
#include "log.h"
#include "proxy-t.h"
#include "server.h"
#include "upgrade.h"
#include "worker.h"

#define ENV_INHERIT  "LUAPROXY_INHERIT"
#define ENV_READY_FD "LUAPROXY_UPGRADE_FD"
#define ENV_PARENT   "LUAPROXY_UPGRADE_PARENT"
/* A new process that has not said READY by then is killed (it may hang in init_worker,
 * or wait on a resolver): the old one keeps serving. Generous for a big config under a
 * sanitizer. */
#define READY_TIMEOUT_MS 60000

/* ---- the old process ---- */

/* The old process's side; main thread only (signal handler and loop callbacks). */
static struct {
    lp_server_t *server;                  /* borrowed: the one being upgraded */
    uv_process_t proc;                    /* the new process, while proc_open */
    uv_pipe_t pipe;                       /* its READY pipe, while pipe_open */
    uv_timer_t timer;                     /* READY_TIMEOUT_MS, while timer_open */
    int proc_open, pipe_open, timer_open; /* the handles above are initialised, not closed */
    int starting;                         /* a new process runs and has not said READY */
    int handed_over;                      /* it said READY: this one drains */
    int timed_out;                        /* it was killed for not saying READY in time */
    long child;                           /* its pid */
    char rbuf[16];                        /* what it wrote so far */
    size_t rlen;                          /* bytes in rbuf */
} up;

static void on_handle_closed(uv_handle_t *h)
{
    if (h == (uv_handle_t *)&up.proc)
        up.proc_open = 0;
    else if (h == (uv_handle_t *)&up.pipe)
        up.pipe_open = 0;
    else if (h == (uv_handle_t *)&up.timer)
        up.timer_open = 0;
}

static void close_watch(void)
{
    if (up.pipe_open && !uv_is_closing((uv_handle_t *)&up.pipe))
        uv_close((uv_handle_t *)&up.pipe, on_handle_closed);
    if (up.timer_open && !uv_is_closing((uv_handle_t *)&up.timer))
        uv_close((uv_handle_t *)&up.timer, on_handle_closed);
}

static void hand_over(void)
{
    up.starting = 0;
    up.handed_over = 1;
    close_watch();
    char msg[64];
    /* systemd follows the new process before this one exits (else it would take the
     * service for dead and kill the rest of it). */
    snprintf(msg, sizeof(msg), "MAINPID=%ld", up.child);
    lp_notify_systemd(msg);
    lp_log_notice("upgrade: the new process (pid %ld) serves; this one (pid %ld) drains", up.child,
                  (long)getpid());
    /* The admin address is the new process's now: health checks must reach it, not a
     * process on its way out (connections already open here are still answered). */
    lp_admin_stop(up.server);
    lp_server_stop(up.server, "upgrade");
}

static void on_ready_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    LP_UNUSED(h);
    LP_UNUSED(hint);
    *buf = uv_buf_init(up.rbuf + up.rlen, (unsigned)(sizeof(up.rbuf) - 1 - up.rlen));
}

static void on_ready_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    LP_UNUSED(buf);
    if (nread < 0) {
        /* EOF without READY: the process died (its exit says how) or closed the pipe. */
        uv_read_stop(st);
        return;
    }
    up.rlen += (size_t)nread;
    up.rbuf[up.rlen] = 0;
    if (strstr(up.rbuf, "READY\n") && up.starting && up.server->stopping) {
        /* A stop was asked while it started: the service stops, the new process too. */
        up.starting = 0;
        close_watch();
        lp_log_notice("upgrade: stopping, so the new process (pid %ld) is stopped too", up.child);
        kill((pid_t)up.child, SIGTERM);
    } else if (strstr(up.rbuf, "READY\n") && up.starting && !up.timed_out) {
        /* (A READY read after the timeout killed it must not hand over to a dead process:
         * libuv runs timers before it polls.) */
        hand_over();
    } else if (up.rlen >= sizeof(up.rbuf) - 1)
        up.rlen = 0; /* not ours: keep listening, the timer bounds it */
}

static void on_ready_timeout(uv_timer_t *t)
{
    LP_UNUSED(t);
    if (!up.starting)
        return;
    up.timed_out = 1;
    lp_log_error("upgrade: the new process (pid %ld) did not say it serves within %d s: "
                 "killed; this one keeps serving",
                 up.child, READY_TIMEOUT_MS / 1000);
    kill((pid_t)up.child, SIGKILL);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int sig)
{
    if (up.starting) {
        up.starting = 0;
        close_watch();
        if (!up.timed_out)
            lp_log_error("upgrade failed: the new process (pid %ld) exited (status %lld, signal "
                         "%d) before it served (its error is in the log above); this one "
                         "(pid %ld) keeps serving",
                         up.child, (long long)status, sig, (long)getpid());
    } else if (up.handed_over) {
        lp_log_warn("upgrade: the new process (pid %ld) exited (status %lld, signal %d)", up.child,
                    (long long)status, sig);
    }
    uv_close((uv_handle_t *)p, on_handle_closed);
}

/* Appends "FD,KIND,CONF,BOUND;" for child descriptor cfd. */
static void list_add(char **list, size_t *len, size_t *cap, int cfd, char kind, const char *conf,
                     const char *bound)
{
    char item[300];
    int n = snprintf(item, sizeof(item), "%s%d,%c,%s,%s", *len ? ";" : "", cfd, kind, conf, bound);
    if (!*list)
        return;
    if (n < 0 || (size_t)n >= sizeof(item)) {
        /* An address too long for the list: no list, the upgrade is refused (as on OOM). */
        free(*list);
        *list = NULL;
        return;
    }
    if (*len + (size_t)n + 1 > *cap) {
        size_t ncap = (*cap + (size_t)n + 1) * 2;
        char *nl = realloc(*list, ncap);
        if (!nl) {
            free(*list);
            *list = NULL;
            return;
        }
        *list = nl;
        *cap = ncap;
    }
    memcpy(*list + *len, item, (size_t)n + 1);
    *len += (size_t)n;
}

void lp_upgrade_start(lp_server_t *s)
{
    if (s->stopping) {
        lp_log_notice("upgrade: this process is stopping (or was upgraded already): ignored");
        return;
    }
    if (up.starting) {
        lp_log_warn("upgrade: the new process (pid %ld) is still starting; this request is "
                    "ignored",
                    up.child);
        return;
    }
    if (up.handed_over || up.proc_open || up.pipe_open || up.timer_open) {
        lp_log_warn("upgrade: the last one is still being wound up; try again");
        return;
    }
    if (!lp_upgrade_exe()[0]) {
        lp_log_error("upgrade: this binary's path is unknown (/proc/self/exe): not started");
        return;
    }
    up.server = s;
    const lp_gen_t *g = lp_gen_current;
    size_t nfds = 1; /* the admin API's */
    for (size_t i = 0; i < g->config->nlisten; i++)
        nfds += g->bound[i].nfds;
    /* 0-2, the sockets, the READY pipe. */
    uv_stdio_container_t *stdio = calloc(3 + nfds + 1, sizeof(*stdio));
    size_t cap = 256, len = 0;
    char *list = malloc(cap);
    int pfd[2] = {-1, -1};
    extern char **environ;
    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    char **env = calloc(nenv + 4, sizeof(*env));
    char env_fd[64], env_parent[64];
    if (!stdio || !list || !env || pipe2(pfd, O_CLOEXEC) < 0) {
        lp_log_error("upgrade: %s: not started", strerror(errno ? errno : ENOMEM));
        goto out;
    }
    list[0] = 0;
    int cfd = 0;
    for (; cfd < 3; cfd++) {
        stdio[cfd].flags = UV_INHERIT_FD;
        stdio[cfd].data.fd = cfd;
    }
    for (size_t i = 0; i < g->config->nlisten; i++)
        for (unsigned k = 0; k < g->bound[i].nfds; k++) {
            stdio[cfd].flags = UV_INHERIT_FD;
            stdio[cfd].data.fd = g->bound[i].fds[k];
            list_add(&list, &len, &cap, cfd, 'L', g->config->listen[i].addr.text, g->bound[i].text);
            cfd++;
        }
    const char *aconf, *abound;
    int afd = lp_admin_listen_fd(s, &aconf, &abound);
    if (afd >= 0) {
        stdio[cfd].flags = UV_INHERIT_FD;
        stdio[cfd].data.fd = afd;
        list_add(&list, &len, &cap, cfd, 'A', aconf, abound);
        cfd++;
    }
    stdio[cfd].flags = UV_INHERIT_FD;
    stdio[cfd].data.fd = pfd[1];
    if (!list) {
        lp_log_error("upgrade: out of memory: not started");
        goto out;
    }
    /* The environment, less what an earlier upgrade may have left, plus the hand-over. The
     * list itself may be long (256 workers times the listen entries): passed by pointer. */
    size_t e = 0;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], ENV_INHERIT "=", sizeof(ENV_INHERIT)) != 0 &&
            strncmp(environ[i], ENV_READY_FD "=", sizeof(ENV_READY_FD)) != 0 &&
            strncmp(environ[i], ENV_PARENT "=", sizeof(ENV_PARENT)) != 0)
            env[e++] = environ[i];
    char *inherit_kv = malloc(len + sizeof(ENV_INHERIT) + 2);
    if (!inherit_kv) {
        lp_log_error("upgrade: out of memory: not started");
        goto out;
    }
    snprintf(inherit_kv, len + sizeof(ENV_INHERIT) + 2, "%s=%s", ENV_INHERIT, list);
    snprintf(env_fd, sizeof(env_fd), "%s=%d", ENV_READY_FD, cfd);
    snprintf(env_parent, sizeof(env_parent), "%s=%ld", ENV_PARENT, (long)getpid());
    env[e++] = inherit_kv;
    env[e++] = env_fd;
    env[e++] = env_parent;
    env[e] = NULL;
    uv_process_options_t o;
    memset(&o, 0, sizeof(o));
    o.file = lp_upgrade_exe();
    o.args = lp_upgrade_argv();
    o.env = env;
    o.stdio_count = cfd + 1;
    o.stdio = stdio;
    o.exit_cb = on_exit_cb;
    up.proc_open = 1;
    int rc = uv_spawn(s->loop, &up.proc, &o);
    free(inherit_kv);
    if (rc) {
        lp_log_error("upgrade: cannot start %s: %s; this one keeps serving", lp_upgrade_exe(),
                     uv_strerror(rc));
        uv_close((uv_handle_t *)&up.proc, on_handle_closed);
        goto out;
    }
    up.child = (long)up.proc.pid;
    up.starting = 1;
    up.timed_out = 0;
    up.rlen = 0;
    up.rbuf[0] = 0;
    close(pfd[1]);
    pfd[1] = -1;
    uv_pipe_init(s->loop, &up.pipe, 0);
    up.pipe_open = 1;
    if (uv_pipe_open(&up.pipe, pfd[0]) == 0) {
        pfd[0] = -1; /* the pipe handle's */
        uv_read_start((uv_stream_t *)&up.pipe, on_ready_alloc, on_ready_read);
    }
    uv_timer_init(s->loop, &up.timer);
    up.timer_open = 1;
    uv_timer_start(&up.timer, on_ready_timeout, READY_TIMEOUT_MS, 0);
    lp_log_notice("upgrade: started %s (pid %ld) with %d listening sockets; this process "
                  "serves until it does",
                  lp_upgrade_exe(), up.child, cfd - 3);
out:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    free(stdio);
    free(list);
    free(env);
}

int lp_upgrade_handed_over(void)
{
    return up.handed_over;
}

void lp_upgrade_stop(const char *pid_file)
{
    if (up.starting) {
        /* Stopped while the new process starts: it must not serve on without anyone
         * having asked for it to run alone. */
        lp_log_notice("upgrade: stopping, so the new process (pid %ld) is stopped too", up.child);
        kill((pid_t)up.child, SIGTERM);
        up.starting = 0;
    }
    close_watch();
    /* The new process lives on (it is reparented): only our handle goes. */
    if (up.proc_open && !uv_is_closing((uv_handle_t *)&up.proc))
        uv_close((uv_handle_t *)&up.proc, on_handle_closed);
    if (pid_file && up.handed_over) {
        char old[4200];
        snprintf(old, sizeof(old), "%s.oldbin", pid_file);
        if (lp_read_pid_file(old) == (long)getpid())
            unlink(old);
    }
}
