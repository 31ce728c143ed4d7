/* lp_mutex_t's contended paths (mutex.h): the three-state futex mutex ("Futexes Are Tricky",
 * U. Drepper, mutex 3). A thread that finds the lock held marks it 2 (waiters) before
 * sleeping, so the holder's unlock knows to wake one; a woken thread takes the lock as 2 again
 * (others may still sleep), at worst one needless wake later. */
#include "mutex.h"

#include <sched.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define SPINS 100 /* tries before sleeping: critical sections are a few hundred instructions */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void sleep_while(lp_mutex_t *m, int v)
{
#ifdef __linux__
    /* Returns at once when m->v is no longer v (EAGAIN), on a wake, or on a signal: the caller
     * looks again either way. */
    syscall(SYS_futex, &m->v, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
#else
    (void)m;
    (void)v;
    sched_yield();
#endif
}

void lp__mutex_lock_slow(lp_mutex_t *m)
{
    for (int i = 0; i < SPINS; i++) {
        int free_ = 0;
        if (atomic_load_explicit(&m->v, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&m->v, &free_, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        cpu_relax();
    }
    while (atomic_exchange_explicit(&m->v, 2, memory_order_acquire) != 0)
        sleep_while(m, 2);
}

void lp__mutex_wake(lp_mutex_t *m)
{
#ifdef __linux__
    syscall(SYS_futex, &m->v, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
#else
    (void)m; /* sleepers only yield (sleep_while) */
#endif
}
