/* Binary upgrade, the new process's side and what both sides share (upgrade.h): the
 * sockets and the READY pipe the old process handed over, taken out of the environment. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common.h"
#include "log.h"
#include "upgrade.h"

/* One socket handed over, as the new process sees it. */
typedef struct {
    int fd;          /* owned until taken; -1 once closed */
    char kind;       /* 'L': a listen entry's socket, 'A': the admin API's */
    int taken;       /* a listener took it (it owns the fd now) */
    char conf[128];  /* the address as the old config wrote it ("127.0.0.1:0") */
    char bound[128]; /* the address it is bound to ("127.0.0.1:43121") */
} inherited_t;

/* Main thread only (set in main() before any other thread runs, then used on the main
 * loop). */
static struct {
    char exe[4096];  /* this binary's path, read at start (a replaced file keeps its path) */
    char **argv;     /* borrowed: main()'s, NULL-terminated */
    int is_child;    /* started by an upgrade */
    inherited_t *in; /* owned array */
    size_t nin;      /* entries in `in` */
    int ready_fd;    /* owned: the pipe to the old process; -1 once told (or none) */
    long parent;     /* the old process's pid */
} up = {.ready_fd = -1};

static void cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0)
        fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

/* "FD,KIND,CONF,BOUND;..." into up.in. */
static int parse_inherit(const char *list)
{
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ';';
    if (!(up.in = calloc(n, sizeof(*up.in))))
        return -1;
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char item[300];
        if (len >= sizeof(item))
            return -1;
        memcpy(item, p, len);
        item[len] = 0;
        inherited_t *e = &up.in[up.nin];
        char *f1 = strchr(item, ','), *f2 = f1 ? strchr(f1 + 1, ',') : NULL;
        char *f3 = f2 ? strchr(f2 + 1, ',') : NULL;
        if (!f3 || f2 - f1 != 2 || (f1[1] != 'L' && f1[1] != 'A'))
            return -1;
        *f1 = *f3 = 0;
        char *num_end;
        long fd = strtol(item, &num_end, 10);
        if (*num_end || fd < 3 || fd > 1 << 20 || fcntl((int)fd, F_GETFD) < 0)
            return -1;
        e->fd = (int)fd;
        e->kind = f1[1];
        snprintf(e->conf, sizeof(e->conf), "%.*s", (int)(f3 - f2 - 1), f2 + 1);
        snprintf(e->bound, sizeof(e->bound), "%s", f3 + 1);
        cloexec(e->fd); /* handed on explicitly at the next upgrade, never by accident */
        up.nin++;
        p += len;
        if (*p == ';')
            p++;
    }
    return 0;
}

int lp_upgrade_init(int argc, char **argv)
{
    LP_UNUSED(argc);
    up.argv = argv;
    ssize_t n = readlink("/proc/self/exe", up.exe, sizeof(up.exe) - 1);
    up.exe[n > 0 ? n : 0] = 0;
    const char *list = getenv(ENV_INHERIT), *rfd = getenv(ENV_READY_FD);
    const char *parent = getenv(ENV_PARENT);
    if (!rfd)
        return 0;
    up.is_child = 1;
    char *end;
    long fd = strtol(rfd, &end, 10);
    up.parent = parent ? strtol(parent, NULL, 10) : (long)getppid();
    if (*end || fd < 3 || fcntl((int)fd, F_GETFD) < 0 || (list && parse_inherit(list))) {
        fprintf(stderr, "luaproxy: upgrade: malformed %s or %s from the old process\n", ENV_INHERIT,
                ENV_READY_FD);
        return -1;
    }
    up.ready_fd = (int)fd;
    cloexec(up.ready_fd);
    /* Not for whatever this process starts later (its own upgrade sets them afresh). */
    unsetenv(ENV_INHERIT);
    unsetenv(ENV_READY_FD);
    unsetenv(ENV_PARENT);
    return 0;
}

int lp_upgrade_is_child(void)
{
    return up.is_child;
}

size_t lp_upgrade_take(char kind, const char *addr, int *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < up.nin && n < max; i++) {
        inherited_t *e = &up.in[i];
        if (e->taken || e->fd < 0 || e->kind != kind ||
            (strcmp(e->conf, addr) != 0 && strcmp(e->bound, addr) != 0))
            continue;
        e->taken = 1;
        out[n++] = e->fd;
    }
    return n;
}

void lp_upgrade_close_rest(void)
{
    for (size_t i = 0; i < up.nin; i++) {
        inherited_t *e = &up.in[i];
        if (e->taken || e->fd < 0)
            continue;
        lp_log_notice("upgrade: %s %s is not in the config any more: closed",
                      e->kind == 'A' ? "admin API" : "listener", e->bound);
        close(e->fd);
        e->fd = -1;
    }
    free(up.in);
    up.in = NULL;
    up.nin = 0;
}

/* PATH holding pid, written whole or not at all (a reader never sees it empty). */
void lp_upgrade_write_pid(const char *path, long pid)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int bad = !f || fprintf(f, "%ld\n", pid) < 0;
    if ((f && fclose(f) != 0) || bad || rename(tmp, path) != 0) {
        lp_log_warn("pid file %s: %s", path, strerror(errno));
        unlink(tmp);
    }
}

void lp_upgrade_ready(const lp_config_t *cfg)
{
    if (cfg->pid_file && up.is_child) {
        char old[4200];
        snprintf(old, sizeof(old), "%s.oldbin", cfg->pid_file);
        lp_upgrade_write_pid(old, up.parent);
    }
    if (cfg->pid_file)
        lp_upgrade_write_pid(cfg->pid_file, (long)getpid());
    if (!up.is_child)
        return;
    if (up.ready_fd >= 0) {
        /* The old process may be gone (stopped meanwhile): EPIPE, SIGPIPE is ignored. */
        if (write(up.ready_fd, "READY\n", 6) != 6)
            lp_log_warn("upgrade: cannot tell the old process (pid %ld): %s", up.parent,
                        strerror(errno));
        close(up.ready_fd);
        up.ready_fd = -1;
    }
    lp_log_notice("upgrade: pid %ld serves; the old process (pid %ld) drains", (long)getpid(),
                  up.parent);
}

const char *lp_upgrade_exe(void)
{
    return up.exe;
}

char **lp_upgrade_argv(void)
{
    return up.argv;
}
