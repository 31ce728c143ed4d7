/* --watch: reload when the config file, a plugin, a script, or a certificate, key or CA
 * file the config names changes. Directories are watched (editors replace files rather
 * than write them in place, and certbot swaps symlinks), events are debounced, and the set
 * is taken from the config the proxy started with. */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "log.h"
#include "lua_vm.h"
#include "server.h"
#include "worker.h"

#define WATCH_MAX_DIRS    16
#define WATCH_MAX_FILES   32
#define WATCH_DEBOUNCE_MS 200

/* Owns its handles: the struct is freed when the last of them has finished closing (libuv
 * finishes closes in an order of its own; a close callback that freed the struct while
 * another handle in it was still closing was issue #11's abort at shutdown). */
struct lp_watch_s {
    lp_server_t *server;
    uv_fs_event_t ev[WATCH_MAX_DIRS];
    unsigned char active[WATCH_MAX_DIRS]; /* ev[i] is started (else closing or closed) */
    int nev;                              /* slots used, started or not */
    char *files[WATCH_MAX_FILES];         /* owned: base names of the config file (a JSON or
                                             YAML one is not *.lua) and of the TLS files */
    int nfiles;
    uv_timer_t debounce;
    int closing; /* handles whose close callback has not run yet */
    int stopped; /* lp_watch_stop ran: the last close callback frees the struct */
};

static void on_watch_handle_closed(uv_handle_t *h)
{
    lp_watch_t *w = h->data;
    if (--w->closing || !w->stopped)
        return;
    for (int i = 0; i < w->nfiles; i++)
        free(w->files[i]);
    free(w);
}

static int is_watched(const lp_watch_t *w, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n > 4 && strcmp(name + n - 4, ".lua") == 0)
        return 1;
    for (int i = 0; name && i < w->nfiles; i++)
        if (strcmp(w->files[i], name) == 0)
            return 1;
    return 0;
}

static void on_debounce(uv_timer_t *t)
{
    lp_watch_t *w = t->data;
    lp_log_notice("watch: a file changed, reloading");
    lp_server_reload_by(w->server, "watch", NULL, NULL);
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    lp_watch_t *w = h->data;
    if (status < 0 || !is_watched(w, name))
        return;
    uv_timer_start(&w->debounce, on_debounce, WATCH_DEBOUNCE_MS, 0);
}

static void add_dir(lp_watch_t *w, const char *dir)
{
    struct stat st;
    if (w->nev >= WATCH_MAX_DIRS || stat(dir, &st) || !S_ISDIR(st.st_mode))
        return;
    for (int i = 0; i < w->nev; i++) {
        char path[4096];
        size_t len = sizeof(path);
        if (w->active[i] && uv_fs_event_getpath(&w->ev[i], path, &len) == 0 &&
            strcmp(path, dir) == 0)
            return;
    }
    /* A slot whose start failed is closing: it is not reused. */
    uv_fs_event_t *e = &w->ev[w->nev++];
    uv_fs_event_init(w->server->loop, e);
    e->data = w;
    if (uv_fs_event_start(e, on_fs_event, dir, 0)) {
        w->closing++;
        uv_close((uv_handle_t *)e, on_watch_handle_closed);
        return;
    }
    w->active[w->nev - 1] = 1;
}

void lp_watch_start(lp_server_t *s)
{
    const lp_config_t *cfg = lp_gen_current->config;
    if (s->watch || (!cfg->watch && !s->watch_forced))
        return;
    lp_watch_t *w = calloc(1, sizeof(*w));
    if (!w)
        return;
    w->server = s;
    uv_timer_init(s->loop, &w->debounce);
    w->debounce.data = w;
    char tmp[4096], dir[4096], sub[4200];
    snprintf(tmp, sizeof(tmp), "%s", s->config_path);
    snprintf(dir, sizeof(dir), "%s", dirname(tmp));
    add_dir(w, dir);
    snprintf(tmp, sizeof(tmp), "%s", s->config_path);
    if ((w->files[w->nfiles] = strdup(basename(tmp))))
        w->nfiles++;
    snprintf(sub, sizeof(sub), "%s/plugins", dir);
    add_dir(w, sub);
    snprintf(sub, sizeof(sub), "%s/lib", dir);
    add_dir(w, sub);
    const char *root = lp_lua_engine_root();
    snprintf(sub, sizeof(sub), "%s/plugins", root);
    add_dir(w, sub);
    snprintf(sub, sizeof(sub), "%s/scripts", root);
    add_dir(w, sub);
    for (size_t i = 0; i < cfg->nfiles && w->nfiles < WATCH_MAX_FILES; i++) {
        snprintf(tmp, sizeof(tmp), "%s", cfg->files[i]);
        snprintf(dir, sizeof(dir), "%s", dirname(tmp));
        add_dir(w, dir);
        snprintf(tmp, sizeof(tmp), "%s", cfg->files[i]);
        if ((w->files[w->nfiles] = strdup(basename(tmp))))
            w->nfiles++;
    }
    s->watch = w;
    int ndirs = 0;
    for (int i = 0; i < w->nev; i++)
        ndirs += w->active[i];
    lp_log_notice("watch: reloading on changes to Lua files, the config%s in %d directories",
                  w->nfiles > 1 ? " and the TLS files" : "", ndirs);
}

void lp_watch_stop(lp_server_t *s)
{
    lp_watch_t *w = s->watch;
    if (!w)
        return;
    s->watch = NULL;
    w->stopped = 1;
    for (int i = 0; i < w->nev; i++) {
        if (!w->active[i])
            continue;
        w->active[i] = 0;
        w->closing++;
        uv_close((uv_handle_t *)&w->ev[i], on_watch_handle_closed);
    }
    w->closing++;
    uv_close((uv_handle_t *)&w->debounce, on_watch_handle_closed);
}
