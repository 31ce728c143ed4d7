/* Lua tasks: the coroutines that run a request's phases, a timer or a spawned thread, or
 * init_worker; what they wait for (a sleep, a request body, a socket) and how they are
 * woken. lua_vm.c builds the VM; this file runs Lua in it.
 *
 * Waking never resumes a task under the waker: a woken task goes to its worker's ready
 * queue and resumes from an idle handle on the same loop turn, so an engine object (a
 * socket callback, a timer) that wakes a task never finds itself closed by that task's
 * Lua under its own feet. (req:body() is the exception: the connection that gathered the
 * body resumes the phase itself, holding the request.)
 *
 * Background tasks (proxy.timer, proxy.spawn; lua/luaproxy/tasks.lua) have no request:
 * each holds a reference to its generation, so the VM lives while one runs. When the
 * generation stops being current, pending timers run once with premature = true; tasks
 * still running past the drain timeout are stopped (their coroutine dropped, what they
 * opened closed). */
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm_int.h"
#include "request.h"
#include "worker.h"

/* ---- scheduling ---- */

/* The counters GET /status reads from the main thread: one writer (the worker), relaxed. */
static void sched_add(unsigned *c, int d)
{
    __atomic_store_n(c, (unsigned)((int)*c + d), __ATOMIC_RELAXED);
}

static void sched_add64(uint64_t *c)
{
    __atomic_store_n(c, *c + 1, __ATOMIC_RELAXED);
}

static void task_continue(lp_lua_task_t *t);

static void on_sched_idle(uv_idle_t *h)
{
    lp_worker_t *w = h->data;
    lp_lua_sched_t *s = &w->lua;
    /* Only the tasks ready now: one woken meanwhile waits for the next turn, so a task
     * that keeps waking itself (sleep 0) cannot starve the loop. */
    lp_list_t batch;
    lp_list_take_all(&batch, &s->ready);
    while (!lp_list_empty(&batch)) {
        lp_lua_task_t *t = LP_CONTAINER_OF(batch.next, lp_lua_task_t, ready_link);
        lp_list_remove(&t->ready_link);
        lp_list_init(&t->ready_link);
        task_continue(t);
    }
    if (lp_list_empty(&s->ready))
        uv_idle_stop(&s->idle);
}

void lp_lua_sched_init(lp_worker_t *w)
{
    lp_lua_sched_t *s = &w->lua;
    memset(s, 0, sizeof(*s));
    lp_list_init(&s->ready);
    lp_list_init(&s->slot_wait);
    lp_list_init(&s->bg);
    uv_idle_init(&w->loop, &s->idle);
    s->idle.data = w;
    s->on = 1;
}

void lp_lua_sched_close(lp_worker_t *w)
{
    if (!w->lua.on)
        return;
    w->lua.on = 0;
    uv_idle_stop(&w->lua.idle);
    uv_close((uv_handle_t *)&w->lua.idle, NULL);
}

/* Queues a woken task to resume on this loop turn. */
static void task_wake(lp_lua_task_t *t, int wake)
{
    lp_worker_t *io = t->vm->io;
    t->serial++;
    t->wake = wake;
    if (!io || !io->lua.on)
        return; /* not attached (lp_lua_attach starts it), or the worker is gone */
    if (!lp_list_empty(&t->ready_link))
        lp_list_remove(&t->ready_link);
    lp_list_insert_tail(&io->lua.ready, &t->ready_link);
    uv_idle_start(&io->lua.idle, on_sched_idle);
}

unsigned lp_lua_background(lp_worker_t *w)
{
    unsigned n = 0;
    for (lp_list_t *it = w->lua.bg.next; it != &w->lua.bg; it = it->next)
        n++;
    return n;
}

/* ---- tasks ---- */

static void task_timer_on(lp_lua_task_t *t)
{
    if (t->timer_on)
        return;
    uv_timer_init(&t->vm->io->loop, &t->timer);
    t->timer.data = t;
    t->timer_on = 1;
}

static lp_lua_task_t *task_get(lp_lua_t *vm)
{
    lp_lua_task_t *t = vm->free_tasks;
    if (t) {
        vm->free_tasks = t->next_free;
    } else {
        t = calloc(1, sizeof(*t));
        if (!t)
            return NULL;
        t->vm = vm;
        t->slot = ++vm->nslots;
        t->co_ref = LUA_NOREF;
        lp_list_init(&t->owned);
        lp_list_init(&t->link);
        lp_list_init(&t->ready_link);
        t->next_all = vm->all_tasks;
        vm->all_tasks = t;
    }
    if (t->co_ref == LUA_NOREF) {
        t->co = lua_newthread(vm->L);
        t->co_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    }
    t->has_handle = 0;
    t->next_free = NULL;
    t->wait = LP_LW_NONE;
    t->wake = LP_WAKE_OK;
    t->phase = 0;
    t->kind = LP_LT_REQUEST;
    t->req = NULL;
    t->bg_id = 0;
    t->delay = 0;
    t->wgen = NULL;
    t->serial++;
    return t;
}

/* A coroutine that did not finish cleanly (yielded for good, or raised) is dropped. */
static void task_drop_coroutine(lp_lua_task_t *t)
{
    if (t->co_ref != LUA_NOREF)
        luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
    t->co_ref = LUA_NOREF;
    t->co = NULL;
}

/* What the task's Lua opened and did not close goes with it. */
static void task_release_owned(lp_lua_task_t *t)
{
    while (!lp_list_empty(&t->owned)) {
        lp_lua_owned_t *o = LP_CONTAINER_OF(t->owned.next, lp_lua_owned_t, link);
        lp_list_remove(&o->link);
        lp_list_init(&o->link);
        o->release(o);
    }
}

static void task_put(lp_lua_task_t *t)
{
    lp_lua_t *vm = t->vm;
    if (t->timer_on)
        uv_timer_stop(&t->timer);
    t->serial++; /* waiters of this use go stale */
    task_release_owned(t);
    if (!lp_list_empty(&t->ready_link)) {
        lp_list_remove(&t->ready_link);
        lp_list_init(&t->ready_link);
    }
    t->has_handle = 0;
    if (t->co && (lua_status(t->co) != 0 || t->wait != LP_LW_NONE))
        task_drop_coroutine(t);
    else if (t->co)
        lua_settop(t->co, 0);
    t->wait = LP_LW_NONE;
    t->req = NULL;
    t->next_free = vm->free_tasks;
    vm->free_tasks = t;
}

/* The request ended: its handle must not reach it again, whoever kept the handle (an
 * upvalue, a timer's closure). The handle's phase says so (every method checks it first,
 * phases.lua) and its pointer is dropped; the task's slot lets go of it. Raw sets: the
 * handle's metatable has no __newindex. */
static void handle_invalidate(lp_lua_task_t *t)
{
    lp_lua_t *vm = t->vm;
    lua_State *L = vm->L;
    if (!t->has_handle)
        return;
    t->has_handle = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_handles);
    lua_rawgeti(L, -1, t->slot);
    if (lua_istable(L, -1)) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_k_phase);
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_k_ended);
        lua_rawset(L, -3);
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_k_r);
        lua_pushnil(L);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_rawseti(L, -2, t->slot);
    lua_pop(L, 1);
}

void lp_lua_release(lp_req_t *req)
{
    lp_lua_task_t *t = req->lua;
    if (!t)
        return;
    req->lua = NULL;
    handle_invalidate(t);
    if (t->wait != LP_LW_NONE && t->wait != LP_LW_RESPONDED)
        task_drop_coroutine(t); /* abandoned mid-wait */
    task_put(t);
}

static lp_rc_t task_resume_in(lp_lua_task_t *t, int nargs);

/* Resumes t->co with nargs on its stack; maps the outcome to a phase result. Error lines
 * made meanwhile are about t's request (JSON error log: its fields). */
static lp_rc_t task_resume(lp_lua_task_t *t, int nargs)
{
    const void *req = t->req;
    lp_log_req_fn fn = t->req ? lp_req_log_members : NULL;
    lp_log_swap_request(&req, &fn);
    lp_rc_t rc = task_resume_in(t, nargs);
    lp_log_swap_request(&req, &fn); /* the outer context back (a nested resume) */
    return rc;
}

static lp_rc_t task_resume_in(lp_lua_task_t *t, int nargs)
{
    lp_lua_t *vm = t->vm;
    lp_lua_task_t *was = vm->running;
    vm->running = t;
    lp__lua_set_current(vm);
    lp__guard_begin(&vm->guard);
    int rc = lua_resume(t->co, nargs);
    lp__guard_end(&vm->guard);
    vm->running = was;
    if (rc == 0) {
        int result = (int)lua_tointeger(t->co, -1);
        lua_settop(t->co, 0);
        t->wait = LP_LW_NONE;
        return result == 0 ? LP_OK : LP_ERROR;
    }
    if (rc == LUA_YIELD) {
        if (t->wait == LP_LW_RESPONDED) {
            /* Never resumed: its frames are discarded (lua_resetthread, LuaJIT's OpenResty
             * branch: upvalues closed, stack cleared, status LUA_OK) and later phases run on
             * the same coroutine, as after a return: a local answer needs no new thread. */
            lua_resetthread(vm->L, t->co);
            t->wait = LP_LW_NONE;
            return LP_DONE;
        }
        if (t->wait != LP_LW_NONE)
            return LP_AGAIN; /* a body wait: the caller lets the connection parse (task_parked) */
        lp_log_error("lua: a %s yielded outside the proxy API (coroutine.yield from a "
                     "handler?); %s",
                     t->req ? "phase" : "task", t->req ? "failing the request" : "stopping it");
        task_drop_coroutine(t);
        return LP_ERROR;
    }
    /* Errors escape runtime.run's xpcall only from the engine's own Lua (or a timeout hook
     * outside plugin code). */
    const char *msg = lua_tostring(t->co, -1);
    lp_log_error("lua: %s", msg ? msg : "error");
    free(vm->last_error);
    vm->last_error = strdup(msg ? msg : "error");
    task_drop_coroutine(t);
    t->wait = LP_LW_NONE;
    return LP_ERROR;
}

/* The request's task, made on its first Lua phase (whichever phase that is), with a
 * coroutine. Its handle is made by that phase's resume (push_entry). NULL when out of
 * memory. */
static lp_lua_task_t *task_for(lp_lua_t *vm, lp_req_t *req)
{
    lp__lua_set_current(vm); /* task_get may run a __gc that asks the FFI for its VM */
    lp_lua_task_t *t = req->lua;
    if (!t) {
        t = task_get(vm);
        if (!t)
            return NULL;
        t->req = req;
        req->lua = t;
    }
    if (!t->co) {
        t->co = lua_newthread(vm->L);
        t->co_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
    }
    return t;
}

/* Pushes on t->co what a phase or filter resume calls, and its first arguments: the
 * request's first one makes the handle, enter(r, route, slot, ...); later ones find it in
 * the handle table, entry(slot, ...). The handle is made inside the resume, not by a call
 * of its own: each lua_pcall from C costs, and a trace cannot return into a C frame, so
 * the request's way into Lua stays one compiled path. Returns the argument count. */
static int push_entry(lp_lua_task_t *t, int ref)
{
    lp_lua_t *vm = t->vm;
    lua_State *co = t->co;
    if (t->has_handle) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, ref);
        lua_pushinteger(co, t->slot);
        return 1;
    }
    /* enter(r, route, slot, entry, ...): r is a number, not a lightuserdata: ffi.cast of
     * a lightuserdata is not compiled (NYI), of a number it is. x86-64 and arm64 addresses
     * fit in a double. */
    t->has_handle = 1;
    lua_rawgeti(co, LUA_REGISTRYINDEX, vm->ref_enter);
    lua_pushnumber(co, (lua_Number)(uintptr_t)t->req);
    lua_pushinteger(co, t->req->route_index + 1);
    lua_pushinteger(co, t->slot);
    lua_rawgeti(co, LUA_REGISTRYINDEX, ref);
    return 4;
}

/* A resume ended with the task parked. A body wait needs the connection to read on: ask
 * it to parse (conn_process only takes note when it is on the stack already, as when the
 * request phase runs from the parser). That may end the wait, and the request, at once:
 * LP_GONE then. */
static lp_rc_t task_parked(lp_lua_task_t *t, lp_req_t *req)
{
    req->flags |= LP_RF_LUA_WAIT;
    if (t->wait != LP_LW_BODY || !req->conn)
        return LP_AGAIN;
    lp_req_hold(req);
    lp_conn_kick_req(req);
    return lp_req_let_go(req) == LP_GONE ? LP_GONE : LP_AGAIN;
}

int lp_lua_route_predicate(lp_req_t *req)
{
    lp_lua_t *vm = req->g ? req->g->lua : NULL;
    if (!vm || !vm->ref_pred) {
        lp_log_error("lua: route %d has a predicate and the worker no Lua VM to run it",
                     req->route_index + 1);
        return -1;
    }
    lp_lua_task_t *t = task_for(vm, req);
    if (!t)
        return -1;
    lua_State *L = vm->L;
    int top = lua_gettop(L);
    /* run(r, route, slot): the handle at the slot, made for this route when the request
     * has none yet (as push_entry's enter would); released below when the answer is no. */
    t->has_handle = 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_pred);
    lua_pushnumber(L, (lua_Number)(uintptr_t)req);
    lua_pushinteger(L, req->route_index + 1);
    lua_pushinteger(L, t->slot);
    const void *lreq = req;
    lp_log_req_fn fn = lp_req_log_members;
    lp_log_swap_request(&lreq, &fn);
    lp_lua_task_t *was = vm->running;
    vm->running = t; /* the handle's FFI calls check it is the running request's */
    lp__lua_set_current(vm);
    lp__guard_begin(&vm->guard);
    int rc = lua_pcall(L, 3, 2, 0);
    lp__guard_end(&vm->guard);
    vm->running = was;
    int result;
    if (rc || lua_isnil(L, -2)) {
        const char *msg = lua_tostring(L, -1);
        lp_log_error("lua: routes[%d].match.predicate failed: %s", req->route_index + 1,
                     msg ? msg : "error");
        result = -1;
    } else {
        result = lua_toboolean(L, -2);
    }
    lp_log_swap_request(&lreq, &fn);
    lua_settop(L, top);
    if (result == 0)
        lp_lua_release(req); /* the next candidate route gets a handle of its own */
    return result;
}

lp_rc_t lp_lua_phase(lp_req_t *req, int phase)
{
    lp_lua_t *vm = req->g ? req->g->lua : NULL;
    if (!vm)
        return LP_OK;
    lp_lua_task_t *t = task_for(vm, req);
    if (!t)
        return LP_ERROR;
    if (t->wait != LP_LW_NONE) {
        /* The request moved on without the phase that waits (a local answer, a client that
         * failed its body, an upstream that timed out): that phase is abandoned, never
         * resumed as if it were this one. */
        if (t->timer_on)
            uv_timer_stop(&t->timer);
        if (!lp_list_empty(&t->ready_link)) {
            lp_list_remove(&t->ready_link);
            lp_list_init(&t->ready_link);
        }
        t->serial++;
        task_drop_coroutine(t);
        t->wait = LP_LW_NONE;
        req->flags &= ~(LP_RF_LUA_WAIT | LP_RF_BODY_BUFFERING);
        t = task_for(vm, req);
        if (!t)
            return LP_ERROR;
    }
    t->phase = phase;
    int n = push_entry(t, vm->ref_run);
    lua_pushinteger(t->co, phase);
    lua_pushthread(t->co); /* the coroutine the engine resumes (runtime.task_co) */
    lp_rc_t rc = task_resume(t, n + 2);
    return rc == LP_AGAIN ? task_parked(t, req) : rc;
}

lp_rc_t lp_lua_body_filter(lp_req_t *req, const char *at, size_t len, int eof, lp_str_t *out)
{
    lp_lua_t *vm = req->g ? req->g->lua : NULL;
    lp_lua_task_t *t = vm ? task_for(vm, req) : NULL;
    if (!t || t->wait != LP_LW_NONE)
        return LP_ERROR;
    t->phase = LP_PHASE_BODY;
    lua_State *co = t->co;
    lua_settop(co, 0);
    int n = push_entry(t, vm->ref_body);
    lua_pushlstring(co, at, len);
    lua_pushboolean(co, eof);
    lua_pushthread(co);
    lp_rc_t rc = task_resume(t, n + 3);
    if (rc == LP_AGAIN)
        return task_parked(t, req); /* lp_conn_lua_resumed(LP_PHASE_BODY) follows */
    if (rc != LP_OK)
        return LP_ERROR; /* a failed filter, or req:respond() where it is refused */
    return lp_lua_body_output(req, out);
}

lp_rc_t lp_lua_body_output(lp_req_t *req, lp_str_t *out)
{
    lp_lua_task_t *t = req->lua;
    if (!t || !t->has_handle)
        return LP_ERROR;
    lua_State *L = t->vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->vm->ref_handles);
    lua_rawgeti(L, -1, t->slot);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 2);
        return LP_ERROR;
    }
    lua_getfield(L, -1, "_body_out");
    size_t n = 0;
    const char *s = lua_tolstring(L, -1, &n);
    /* The handle keeps the string until the next filter run: valid for the caller. */
    lua_pop(L, 3);
    if (!s)
        return LP_ERROR;
    *out = (lp_str_t){s, n};
    return LP_OK;
}

/* ---- background tasks: timers and spawned threads ---- */

static void bg_on_timer(uv_timer_t *timer);

/* A pending timer (waiting for its time, or due and waiting for a slot) runs now: it takes
 * a running slot (over the bound for an instant when it only returns: a cancel, a
 * premature run) and wakes with `wake`. */
static void bg_run_now(lp_lua_sched_t *s, lp_lua_task_t *t, int wake)
{
    if (t->timer_on)
        uv_timer_stop(&t->timer);
    if (!lp_list_empty(&t->ready_link)) {
        lp_list_remove(&t->ready_link);
        lp_list_init(&t->ready_link);
    }
    sched_add(&s->pending, -1);
    sched_add(&s->running, 1);
    t->wait = LP_LW_NONE;
    task_wake(t, wake);
}

/* A running slot was given back: the first due timer waiting for one takes it. */
static void bg_slot_freed(lp_lua_sched_t *s)
{
    if (!lp_list_empty(&s->slot_wait)) {
        lp_lua_task_t *next = LP_CONTAINER_OF(s->slot_wait.next, lp_lua_task_t, ready_link);
        bg_run_now(s, next, next->wake);
    }
}

/* A background task is done (returned, failed, or stopped): it gives its running slot to
 * the first due timer waiting for one, and lets go of its generation, last (that may
 * retire the VM). */
static void bg_end(lp_lua_task_t *t)
{
    lp_lua_t *vm = t->vm;
    lp_worker_t *io = vm->io;
    lp_wgen_t *g = t->wgen;
    t->wgen = NULL;
    lp_list_remove(&t->link);
    lp_list_init(&t->link);
    if (t->wait == LP_LW_TIMER || t->wait == LP_LW_SLOT) {
        sched_add(&io->lua.pending, -1);
    } else {
        sched_add(&io->lua.running, -1);
        bg_slot_freed(&io->lua);
    }
    if (t->co && lua_status(t->co) != 0)
        task_drop_coroutine(t);
    task_put(t);
    if (g)
        lp_wgen_release(vm->w, g);
}

/* Starts the wait of a background task not yet running (made by init_worker, or by
 * proxy.timer/proxy.spawn): its timer, or straight to the ready queue. */
static void bg_arm(lp_lua_task_t *t, uint64_t ms)
{
    task_timer_on(t);
    if (ms == 0 && t->wait == LP_LW_NONE)
        task_wake(t, LP_WAKE_OK);
    else
        uv_timer_start(&t->timer, bg_on_timer, ms, 0);
}

/* A timer's time came: it runs when a running slot is free, else it queues for one. */
static void bg_on_timer(uv_timer_t *timer)
{
    lp_lua_task_t *t = timer->data;
    lp_lua_t *vm = t->vm;
    lp_lua_sched_t *s = &vm->io->lua;
    if (t->wait != LP_LW_TIMER)
        return;
    if (s->running >= vm->max_running) {
        t->wait = LP_LW_SLOT;
        if (!lp_list_empty(&t->ready_link))
            lp_list_remove(&t->ready_link);
        lp_list_insert_tail(&s->slot_wait, &t->ready_link);
        return;
    }
    sched_add(&s->pending, -1);
    sched_add(&s->running, 1);
    t->wait = LP_LW_NONE;
    task_wake(t, t->vm->ended ? LP_WAKE_PREMATURE : LP_WAKE_OK);
}

/* proxy.timer.at/every and proxy.spawn (lua/luaproxy/tasks.lua): a background task whose
 * body is tasks.run(id, wake), started after `delay` seconds (a timer: pending until then)
 * or at once (`timer` 0: a spawned thread, running from the start). Its id (> 0), or
 * LP_FFI_EPHASE (the generation ended, or no VM), LP_FFI_ENOSPACE (over lua.max_timers or
 * lua.max_running_timers), LP_FFI_EINVAL (a bad delay). */
int lp_ffi_bg_new(double delay, int timer)
{
    lp_lua_t *vm = lp__lua_current();
    if (!vm || !vm->ref_bg || vm->ended)
        return LP_FFI_EPHASE;
    if (!(delay >= 0 && delay < 1e9))
        return LP_FFI_EINVAL;
    /* Made before the VM serves (init_worker, on another thread): counted and started by
     * lp_lua_attach, against the worker's bounds then. */
    lp_lua_sched_t *s = vm->io == vm->w ? &vm->w->lua : NULL;
    unsigned deferred = 0;
    for (lp_list_t *it = vm->deferred.next; it != &vm->deferred; it = it->next)
        deferred++;
    if (s ? (timer ? s->pending >= vm->max_timers : s->running >= vm->max_running)
          : deferred >= vm->max_timers) {
        if (s)
            sched_add64(&s->refused);
        return LP_FFI_ENOSPACE;
    }
    lp_lua_task_t *t = task_get(vm);
    if (!t)
        return LP_FFI_ENOSPACE;
    t->kind = LP_LT_BACKGROUND;
    if (++vm->next_bg_id == 0)
        vm->next_bg_id = 1;
    t->bg_id = vm->next_bg_id;
    t->delay = (uint64_t)(delay * 1000.0 + 0.5);
    t->wait = timer ? LP_LW_TIMER : LP_LW_NONE;
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, vm->ref_bg);
    lua_pushinteger(t->co, t->bg_id);
    if (!s) {
        lp_list_insert_tail(&vm->deferred, &t->link);
        return (int)t->bg_id;
    }
    lp_list_insert_tail(&s->bg, &t->link);
    if (timer)
        sched_add(&s->pending, 1);
    else
        sched_add(&s->running, 1);
    t->wgen = vm->wgen;
    vm->wgen->refs++;
    bg_arm(t, t->delay);
    return (int)t->bg_id;
}

/* tasks.lua, between two runs of a proxy.timer.every function: the task becomes a pending
 * timer again for `interval` seconds. 0 (Lua yields next), or 1 when the generation ended
 * (the next run is premature: no wait). */
int lp_ffi_bg_wait(double interval)
{
    lp_lua_t *vm = lp__lua_current();
    lp_lua_task_t *t = vm ? vm->running : NULL;
    if (!t || t->kind != LP_LT_BACKGROUND || !(interval >= 0 && interval < 1e9))
        return LP_FFI_EINVAL;
    task_release_owned(t); /* a run ended: what it opened (sockets) closes, as for a timer */
    if (vm->ended)
        return 1;
    lp_lua_sched_t *s = &vm->io->lua;
    sched_add(&s->running, -1);
    sched_add(&s->pending, 1);
    t->wait = LP_LW_TIMER;
    t->serial++;
    uv_timer_start(&t->timer, bg_on_timer, (uint64_t)(interval * 1000.0 + 0.5), 0);
    bg_slot_freed(s);
    return 0;
}

static lp_lua_task_t *bg_find(lp_lua_t *vm, uint32_t id)
{
    lp_list_t *lists[2] = {&vm->deferred, vm->io ? &vm->io->lua.bg : NULL};
    for (int i = 0; i < 2; i++)
        for (lp_list_t *it = lists[i] ? lists[i]->next : NULL; it && it != lists[i];
             it = it->next) {
            lp_lua_task_t *t = LP_CONTAINER_OF(it, lp_lua_task_t, link);
            if (t->bg_id == id && t->vm == vm)
                return t;
        }
    return NULL;
}

/* handle:cancel(): a pending timer is woken with LP_WAKE_CANCELLED (tasks.run then returns
 * without calling it). 0, or LP_FFI_ENOTFOUND when it is not pending (it runs, or ended). */
int lp_ffi_bg_cancel(int id)
{
    lp_lua_t *vm = lp__lua_current();
    lp_lua_task_t *t = vm && id > 0 ? bg_find(vm, (uint32_t)id) : NULL;
    if (!t || (t->wait != LP_LW_TIMER && t->wait != LP_LW_SLOT))
        return LP_FFI_ENOTFOUND;
    if (!vm->io || vm->io != vm->w) {
        /* Not started yet: it goes, its job with it (tasks.lua dropped it). */
        lp_list_remove(&t->link);
        lp_list_init(&t->link);
        task_put(t);
        return 0;
    }
    bg_run_now(&vm->io->lua, t, LP_WAKE_CANCELLED); /* it only returns */
    return 0;
}

/* proxy.timer.pending_count() (0) and running_count() (1) of this worker. */
int lp_ffi_bg_count(int running)
{
    lp_lua_t *vm = lp__lua_current();
    if (!vm || !vm->io)
        return 0;
    return (int)(running ? vm->io->lua.running : vm->io->lua.pending);
}

/* proxy.exiting(): whether the generation of the running Lua ended (reload, shutdown). */
int lp_ffi_exiting(void)
{
    lp_lua_t *vm = lp__lua_current();
    return vm && vm->ended;
}

void lp_lua_attach(lp_lua_t *vm, lp_wgen_t *g)
{
    if (!vm)
        return;
    vm->io = vm->w;
    vm->wgen = g;
    lp_lua_sched_t *s = &vm->w->lua;
    while (!lp_list_empty(&vm->deferred)) {
        lp_lua_task_t *t = LP_CONTAINER_OF(vm->deferred.next, lp_lua_task_t, link);
        lp_list_remove(&t->link);
        lp_list_insert_tail(&s->bg, &t->link);
        if (t->wait == LP_LW_TIMER)
            sched_add(&s->pending, 1);
        else
            sched_add(&s->running, 1);
        t->wgen = g;
        g->refs++;
        bg_arm(t, t->delay);
    }
}

void lp_lua_generation_ended(lp_lua_t *vm)
{
    if (!vm || vm->ended)
        return;
    vm->ended = 1;
    if (!vm->io)
        return;
    vm->ended_at = uv_now(&vm->io->loop);
    lp_lua_sched_t *s = &vm->io->lua;
    /* Pending timers run now, once, premature; a due one waiting for a slot too (over the
     * bound for that instant: they only return). */
    for (lp_list_t *it = s->bg.next; it != &s->bg; it = it->next) {
        lp_lua_task_t *t = LP_CONTAINER_OF(it, lp_lua_task_t, link);
        if (t->vm == vm && (t->wait == LP_LW_TIMER || t->wait == LP_LW_SLOT))
            bg_run_now(s, t, LP_WAKE_PREMATURE);
    }
}

int lp_lua_ended_before(const lp_lua_t *vm, uint64_t when)
{
    return vm && vm->ended && vm->ended_at <= when;
}

void lp_lua_background_stop(lp_worker_t *w, int all)
{
    lp_lua_sched_t *s = &w->lua;
    uint64_t now = uv_now(&w->loop);
    lp_list_t *it = s->bg.next;
    while (it != &s->bg) {
        lp_lua_task_t *t = LP_CONTAINER_OF(it, lp_lua_task_t, link);
        it = it->next;
        lp_lua_t *vm = t->vm;
        if (!all && !(vm->ended && now >= vm->ended_at + vm->wgen->config->timeouts.drain))
            continue;
        if (vm->running == t)
            continue; /* on the stack (a stop from its own Lua): it ends when it returns */
        lp_log_warn("lua: stopping a background task (timer or spawned thread) still running "
                    "%s",
                    all ? "at shutdown" : "after its generation ended (past timeouts.drain)");
        /* The next one may be woken by bg_end (a slot freed): restart from the head. */
        bg_end(t);
        it = s->bg.next;
    }
}

/* ---- waiting ---- */

/* A task's wait is over: resume it and carry on with its request. The request is held:
 * resuming may end it. */
static void task_continue(lp_lua_task_t *t)
{
    lp_req_t *req = t->req;
    int phase = t->phase;
    lua_pushinteger(t->co, t->wake);
    t->wake = LP_WAKE_OK;
    if (t->kind == LP_LT_INIT) {
        t->last_rc = task_resume(t, 1); /* lp__lua_run_init reads last_rc */
        return;
    }
    if (t->kind == LP_LT_BACKGROUND) {
        /* Its first resume starts tasks.run(id, wake), pushed by lp_ffi_bg_new. */
        int nargs = lua_status(t->co) == LUA_YIELD ? 1 : lua_gettop(t->co) - 1;
        lp_rc_t rc = task_resume(t, nargs);
        if (rc != LP_AGAIN)
            bg_end(t);
        return;
    }
    lp_req_hold(req);
    lp_rc_t rc = t->last_rc = task_resume(t, 1);
    if (rc == LP_AGAIN)
        rc = task_parked(t, req);
    if (rc != LP_AGAIN && rc != LP_GONE && !lp_req_ended(req)) {
        req->flags &= ~LP_RF_LUA_WAIT;
        (void)lp_conn_lua_resumed(req, phase, rc);
    }
    lp_req_drop(req);
}

static void on_sleep_done(uv_timer_t *timer)
{
    lp_lua_task_t *t = timer->data;
    if (t->wait != LP_LW_SLEEP)
        return;
    t->wait = LP_LW_NONE;
    task_wake(t, LP_WAKE_OK);
}

/* proxy.sleep: called from Lua right before it yields. */
int lp_ffi_sleep(double seconds)
{
    lp_lua_t *vm = lp__lua_current();
    lp_lua_task_t *t = vm ? vm->running : NULL;
    if (!t || !t->co || !vm->io)
        return -1;
    if (!(seconds >= 0 && seconds < 1e9))
        return -1;
    task_timer_on(t);
    t->wait = LP_LW_SLEEP;
    t->serial++;
    uv_timer_start(&t->timer, on_sleep_done, (uint64_t)(seconds * 1000.0 + 0.5), 0);
    return 0;
}

int lp_lua_park(lp_lua_waiter_t *w)
{
    lp_lua_t *vm = lp__lua_current();
    lp_lua_task_t *t = vm ? vm->running : NULL;
    if (!t || !t->co || !vm->io)
        return LP_FFI_EPHASE;
    t->wait = LP_LW_IO;
    t->serial++;
    w->task = t;
    w->serial = t->serial;
    return 0;
}

void lp_lua_unpark(lp_lua_waiter_t w)
{
    lp_lua_task_t *t = w.task;
    if (!t || t->serial != w.serial || t->wait != LP_LW_IO)
        return;
    t->wait = LP_LW_NONE;
    task_wake(t, LP_WAKE_OK);
}

lp_lua_task_t *lp_lua_own(lp_lua_owned_t *o)
{
    lp_lua_t *vm = lp__lua_current();
    lp_lua_task_t *t = vm ? vm->running : NULL;
    lp_list_init(&o->link);
    if (t)
        lp_list_insert_tail(&t->owned, &o->link);
    return t;
}

void lp_lua_disown(lp_lua_owned_t *o)
{
    if (!lp_list_empty(&o->link)) {
        lp_list_remove(&o->link);
        lp_list_init(&o->link);
    }
}

lp_lua_task_t *lp_lua_running(void)
{
    lp_lua_t *vm = lp__lua_current();
    return vm ? vm->running : NULL;
}

lp_worker_t *lp_lua_io(void)
{
    lp_lua_t *vm = lp__lua_current();
    return vm ? vm->io : NULL;
}

int lp_lua_loading(void)
{
    lp_lua_t *vm = lp__lua_current();
    return vm && vm->io && vm->io != vm->w;
}

void lp_lua_wake(lp_req_t *req)
{
    lp_lua_task_t *t = req->lua;
    if (!t || t->wait != LP_LW_BODY)
        return;
    t->wait = LP_LW_NONE;
    t->serial++;
    task_continue(t);
}

int lp_ffi_body_read(void *rp, double max, lp_str_t *out)
{
    lp_req_t *req = rp;
    lp_lua_t *vm = lp__lua_current();
    if (!lp__lua_runs(req))
        return LP_FFI_EOTHER;
    if (!req->conn || !(max >= 0 && max <= 9007199254740992.0)) /* NaN and inf too */
        return LP_FFI_EINVAL;
    uint64_t limit = (uint64_t)max;
    int rc = lp_conn_read_body(req, limit);
    if (rc == LP_OK) {
        out->base = req->body_buf ? req->body_buf->data : "";
        out->len = req->body_len;
        return 0;
    }
    if (rc == LP_ERROR)
        return LP_FFI_ENOSPACE;
    if (vm && vm->running) {
        vm->running->wait = LP_LW_BODY;
        vm->running->serial++;
    }
    return 1;
}

/* Whether the Lua running now is a phase of req: a handle kept from another request must
 * not park or answer the caller's phase in its own request's name. */
int lp__lua_runs(const lp_req_t *req)
{
    lp_lua_t *vm = lp__lua_current();
    return vm && vm->running && vm->running->req == req;
}

int lp_lua_busy(void)
{
    lp_lua_t *vm = lp__lua_current();
    return vm && vm->running;
}

/* req:respond(): the answer is recorded; Lua yields next and is never resumed. */
void lp__lua_mark_responded(void);
void lp__lua_mark_responded(void)
{
    lp_lua_t *vm = lp__lua_current();
    if (vm && vm->running)
        vm->running->wait = LP_LW_RESPONDED;
}

/* ---- init_worker ---- */

/* init_worker runs before the worker's loop takes over (on the main thread when a
 * generation is built), in a coroutine of its own, in a private worker context: its loop
 * serves proxy.sleep and sockets, so init_worker may yield like every phase. Timers it
 * makes wait in vm->deferred for lp_lua_attach. */
static void on_init_limit(uv_timer_t *h)
{
    *(int *)h->data = 1;
}

int lp__lua_run_init(lp_lua_t *vm, int state_idx, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    lp_worker_t *io = calloc(1, sizeof(*io));
    if (!io || uv_loop_init(&io->loop)) {
        free(io);
        snprintf(err, errlen, "init_worker: no loop");
        return -1;
    }
    io->id = vm->w->id;
    lp_list_init(&io->conns);
    lp_list_init(&io->peers);
    lp_bufpool_init(&io->bufs, 16);
    lp_ep_env_init(&io->ep_env, &io->loop, &io->bufs, &io->wbatches);
    lp_lua_sched_init(io);
    vm->io = io;
    lp_lua_task_t t;
    memset(&t, 0, sizeof(t));
    t.vm = vm;
    t.kind = LP_LT_INIT;
    lp_list_init(&t.owned);
    lp_list_init(&t.link);
    lp_list_init(&t.ready_link);
    t.co = lua_newthread(L);
    t.co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    int rc = -1;
    /* Protected: an error here refuses the load, it must never panic the process. */
    lua_getglobal(t.co, "require");
    lua_pushliteral(t.co, "luaproxy.runtime");
    if (lua_pcall(t.co, 1, 1, 0)) {
        snprintf(err, errlen, "init_worker: %s", lua_tostring(t.co, -1));
    } else {
        lua_getfield(t.co, -1, "init_worker_task");
        lua_remove(t.co, -2);
        lua_pushvalue(L, state_idx);
        lua_xmove(L, t.co, 1);
        free(vm->last_error);
        vm->last_error = NULL;
        t.last_rc = task_resume(&t, 1);
        /* The ready queue resumes it (and sets last_rc) when what it waits for is done;
         * lua.init_timeout bounds the whole: the reload and the signals wait meanwhile. */
        uv_timer_t limit;
        int timed_out = 0;
        uv_timer_init(&io->loop, &limit);
        limit.data = &timed_out;
        uv_timer_start(&limit, on_init_limit, vm->init_timeout, 0);
        while (t.last_rc == LP_AGAIN && !timed_out) {
            if (!uv_run(&io->loop, UV_RUN_ONCE) && t.last_rc == LP_AGAIN &&
                lp_list_empty(&io->lua.ready)) {
                snprintf(err, errlen, "init_worker: waits for something that cannot happen");
                break;
            }
        }
        if (timed_out && t.last_rc == LP_AGAIN)
            snprintf(err, errlen, "init_worker: still waiting after lua.init_timeout (%.3f s)",
                     (double)vm->init_timeout / 1000.0);
        uv_close((uv_handle_t *)&limit, NULL);
        rc = t.last_rc == LP_OK ? 0 : -1;
        if (rc && t.last_rc != LP_AGAIN)
            snprintf(err, errlen, "%s", vm->last_error ? vm->last_error : "init_worker failed");
    }
    if (t.co_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, t.co_ref);
    task_release_owned(&t);
    if (t.timer_on)
        uv_close((uv_handle_t *)&t.timer, NULL);
    lp_lua_sched_close(io);
    lp_ep_timers_close(&io->ep_env.timers);
    uv_run(&io->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&io->loop))
        lp_log_warn("init_worker: a handle was left open on its loop");
    lp_bufpool_destroy(&io->bufs);
    lp_wbpool_destroy(&io->wbatches);
    free(io);
    vm->io = NULL;
    return rc;
}

/* ---- retiring ---- */

static void on_task_timer_close(uv_handle_t *h)
{
    lp_lua_task_t *t = h->data;
    lp_lua_t *vm = t->vm;
    free(t);
    if (--vm->closing_timers == 0)
        lp__lua_vm_free(vm);
}

void lp_lua_retire(lp_lua_t *vm)
{
    if (!vm)
        return;
    if (lp__lua_current() == vm)
        lp__lua_set_current(NULL);
    /* Background tasks made by init_worker of a generation that never served. */
    while (!lp_list_empty(&vm->deferred)) {
        lp_lua_task_t *t = LP_CONTAINER_OF(vm->deferred.next, lp_lua_task_t, link);
        lp_list_remove(&t->link);
        lp_list_init(&t->link);
        task_put(t);
    }
    /* Task timers are handles of the worker's loop: the VM goes once they are closed. */
    lp_lua_task_t *t = vm->all_tasks;
    vm->all_tasks = NULL;
    vm->closing_timers++;
    while (t) {
        lp_lua_task_t *next = t->next_all;
        if (t->timer_on) {
            vm->closing_timers++;
            uv_close((uv_handle_t *)&t->timer, on_task_timer_close);
        } else {
            free(t);
        }
        t = next;
    }
    if (--vm->closing_timers == 0)
        lp__lua_vm_free(vm);
}
