/* A mutex for short critical sections shared by threads of this process (the response
 * cache's zones): unlocked, taking it is one compare-and-swap and releasing it one exchange,
 * both inline, where pthread_mutex_lock and _unlock cost about 30 instructions each (a stored
 * miss takes its zone's lock twice, a hit once). Contended, a locker spins briefly, then
 * sleeps on a futex (Linux; elsewhere the slow path yields and retries). Not recursive, no
 * owner check: a thread never takes it twice. A zeroed lp_mutex_t is unlocked. */
#ifndef LP_MUTEX_H
#define LP_MUTEX_H

#include <stdatomic.h>

typedef struct {
    atomic_int v; /* 0: free; 1: held; 2: held, and some thread may sleep on it */
} lp_mutex_t;

/* The contended paths (mutex.c). */
void lp__mutex_lock_slow(lp_mutex_t *m);
void lp__mutex_wake(lp_mutex_t *m);

static inline void lp_mutex_init(lp_mutex_t *m)
{
    atomic_init(&m->v, 0);
}

static inline void lp_mutex_lock(lp_mutex_t *m)
{
    int free_ = 0;
    if (!atomic_compare_exchange_strong_explicit(&m->v, &free_, 1, memory_order_acquire,
                                                 memory_order_relaxed))
        lp__mutex_lock_slow(m);
}

static inline void lp_mutex_unlock(lp_mutex_t *m)
{
    if (atomic_exchange_explicit(&m->v, 0, memory_order_release) == 2)
        lp__mutex_wake(m); /* a sleeper may wait: one is woken, and takes it as contended */
}

#endif
