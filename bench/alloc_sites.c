/* An LD_PRELOAD malloc counter for bench/idle_h2_heap.py: every live block is kept with the
 * call stack it was allocated from (8 frames above malloc). On SIGRTMIN+5 the next
 * allocation (in any thread; not in the handler, where stdio and dladdr are not safe)
 * writes the live blocks grouped by stack to /tmp/lp-alloc-sites.PID.N, one line each:
 *   S count bytes usable frame frame ...
 * a frame being a symbol or OBJECT+0xOFFSET; then a line of mallinfo2 figures. Blocks from
 * mmap, LuaJIT's own allocator or the kernel are not seen. Slow (a backtrace per malloc):
 * for measuring idle memory, never for timing.
 * Build: cc -O2 -fPIC -shared -o alloc_sites.so alloc_sites.c -ldl -lpthread */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define DEPTH 8
#define NSLOT (1u << 23) /* live blocks at most (open addressing) */
#define NSITE (1u << 17) /* distinct stacks at most */
#define TOMB  ((void *)1)

typedef struct {
    void *p;
    uint32_t size, site;
} block_t;
typedef struct {
    void *f[DEPTH];
    uint32_t used;
} site_t;

static block_t *blocks;
static site_t *sites;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static __thread int inside; /* this thread is in the counter: its own allocations pass */
static void *(*real_malloc)(size_t), (*real_free)(void *), *(*real_calloc)(size_t, size_t),
    *(*real_realloc)(void *, size_t), *(*real_memalign)(size_t, size_t),
    *(*real_aligned)(size_t, size_t);
static int (*real_pm)(void **, size_t, size_t);
static char boot[1 << 16]; /* dlsym's own allocations, before the real ones are known */
static size_t bootn;
static volatile sig_atomic_t dump_asked;
static int ndumps;

static uint32_t hash_ptr(const void *p)
{
    uint64_t x = (uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

static void *boot_alloc(size_t n)
{
    void *p = boot + bootn;
    bootn += (n + 15) & ~(size_t)15;
    return bootn <= sizeof(boot) ? p : NULL;
}

static int in_boot(const void *p)
{
    return (const char *)p >= boot && (const char *)p < boot + sizeof(boot);
}

static void init(void)
{
    if (real_malloc)
        return;
    inside++;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_free = dlsym(RTLD_NEXT, "free");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_pm = dlsym(RTLD_NEXT, "posix_memalign");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_aligned = dlsym(RTLD_NEXT, "aligned_alloc");
    blocks = mmap(NULL, NSLOT * sizeof(block_t), PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    sites = mmap(NULL, NSITE * sizeof(site_t), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *bt[4];
    backtrace(bt, 4); /* loads libgcc_s now, not inside a counted malloc */
    inside--;
}

static uint32_t site_of(void)
{
    void *f[DEPTH + 2];
    int n = backtrace(f, DEPTH + 2);
    site_t s;
    memset(&s, 0, sizeof(s));
    for (int i = 2; i < n && i - 2 < DEPTH; i++) /* above add() and the hook */
        s.f[i - 2] = f[i];
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < DEPTH; i++) {
        h ^= (uintptr_t)s.f[i];
        h *= 1099511628211ULL;
    }
    uint32_t k = (uint32_t)(h ^ (h >> 32)) & (NSITE - 1);
    for (;;) { /* under mu */
        if (!sites[k].used) {
            s.used = 1;
            sites[k] = s;
            return k;
        }
        if (!memcmp(sites[k].f, s.f, sizeof(s.f)))
            return k;
        k = (k + 1) & (NSITE - 1);
    }
}

static void dump(void)
{
    char path[128];
    snprintf(path, sizeof(path), "/tmp/lp-alloc-sites.%d.%d", (int)getpid(), ndumps++);
    FILE *fp = fopen(path, "w");
    if (!fp)
        return;
    static uint64_t cnt[NSITE], bytes[NSITE], usable[NSITE];
    pthread_mutex_lock(&mu);
    memset(cnt, 0, sizeof(cnt));
    memset(bytes, 0, sizeof(bytes));
    memset(usable, 0, sizeof(usable));
    for (uint32_t k = 0; k < NSLOT; k++)
        if (blocks[k].p && blocks[k].p != TOMB) {
            cnt[blocks[k].site]++;
            bytes[blocks[k].site] += blocks[k].size;
            usable[blocks[k].site] += malloc_usable_size(blocks[k].p);
        }
    for (uint32_t s = 0; s < NSITE; s++) {
        if (!cnt[s])
            continue;
        fprintf(fp, "S %llu %llu %llu", (unsigned long long)cnt[s], (unsigned long long)bytes[s],
                (unsigned long long)usable[s]);
        for (int i = 0; i < DEPTH && sites[s].f[i]; i++) {
            Dl_info di;
            if (dladdr(sites[s].f[i], &di) && di.dli_sname)
                fprintf(fp, " %s", di.dli_sname);
            else if (dladdr(sites[s].f[i], &di) && di.dli_fname)
                fprintf(fp, " %s+0x%lx", di.dli_fname,
                        (unsigned long)((char *)sites[s].f[i] - (char *)di.dli_fbase));
            else
                fprintf(fp, " ?");
        }
        fputc('\n', fp);
    }
    pthread_mutex_unlock(&mu);
    struct mallinfo2 mi = mallinfo2();
    fprintf(fp, "M arena %zu uordblks %zu fordblks %zu hblkhd %zu\n", mi.arena, mi.uordblks,
            mi.fordblks, mi.hblkhd);
    fclose(fp);
}

static void add(void *p, size_t size)
{
    if (!p || inside || !blocks)
        return;
    inside++;
    pthread_mutex_lock(&mu);
    uint32_t site = site_of();
    uint32_t k = hash_ptr(p) & (NSLOT - 1);
    while (blocks[k].p && blocks[k].p != TOMB)
        k = (k + 1) & (NSLOT - 1);
    blocks[k].p = p;
    blocks[k].size = (uint32_t)size;
    blocks[k].site = site;
    pthread_mutex_unlock(&mu);
    if (dump_asked) {
        dump_asked = 0;
        dump();
    }
    inside--;
}

static void del(void *p)
{
    if (!p || !blocks)
        return;
    pthread_mutex_lock(&mu);
    uint32_t k = hash_ptr(p) & (NSLOT - 1);
    for (; blocks[k].p; k = (k + 1) & (NSLOT - 1))
        if (blocks[k].p == p) {
            blocks[k].p = TOMB;
            break;
        }
    pthread_mutex_unlock(&mu);
}

static void on_signal(int sig)
{
    (void)sig;
    dump_asked = 1;
}

__attribute__((constructor)) static void start(void)
{
    init();
    signal(SIGRTMIN + 5, on_signal);
}

void *malloc(size_t n)
{
    if (!real_malloc) {
        if (inside)
            return boot_alloc(n);
        init();
    }
    void *p = real_malloc(n);
    add(p, n);
    return p;
}

void free(void *p)
{
    if (in_boot(p))
        return;
    if (!real_free)
        init();
    del(p);
    real_free(p);
}

void *calloc(size_t a, size_t b)
{
    if (!real_calloc) {
        if (inside) {
            void *p = boot_alloc(a * b);
            if (p)
                memset(p, 0, a * b);
            return p;
        }
        init();
    }
    void *p = real_calloc(a, b);
    add(p, a * b);
    return p;
}

void *realloc(void *o, size_t n)
{
    if (!real_realloc)
        init();
    if (in_boot(o)) {
        void *p = malloc(n);
        size_t left = (size_t)(boot + sizeof(boot) - (char *)o);
        if (p)
            memcpy(p, o, n < left ? n : left);
        return p;
    }
    void *p = real_realloc(o, n);
    if (p || !n) {
        del(o);
        add(p, n);
    }
    return p;
}

int posix_memalign(void **pp, size_t a, size_t n)
{
    if (!real_pm)
        init();
    int r = real_pm(pp, a, n);
    if (!r)
        add(*pp, n);
    return r;
}

void *memalign(size_t a, size_t n)
{
    if (!real_memalign)
        init();
    void *p = real_memalign(a, n);
    add(p, n);
    return p;
}

void *aligned_alloc(size_t a, size_t n)
{
    if (!real_aligned)
        init();
    void *p = real_aligned(a, n);
    add(p, n);
    return p;
}
