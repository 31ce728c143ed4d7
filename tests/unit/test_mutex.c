/* engine/mutex.h: threads adding to a plain counter under the lock lose no increment, with
 * holds now and then long enough that lockers find it held, outlast their spin and sleep
 * (the futex path); a lone thread takes and releases it without ever marking a waiter. */
#include <pthread.h>
#include <stdint.h>

#include "lp_test.h"
#include "mutex.h"

#define THREADS 4
#define ROUNDS  20000

static lp_mutex_t mu;
static uint64_t counter; /* under mu */
static volatile uint64_t sink;

static void *adder(void *arg)
{
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        lp_mutex_lock(&mu);
        uint64_t c = counter;
        for (int k = 0; k < (i % 64 == 0 ? 2000 : 10); k++) /* now and then a long hold */
            sink += (uint64_t)k;
        counter = c + 1;
        lp_mutex_unlock(&mu);
    }
    return NULL;
}

static void test_no_lost_increments(void)
{
    lp_mutex_init(&mu);
    counter = 0;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        REQUIRE(pthread_create(&t[i], NULL, adder, NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    CHECK(counter == (uint64_t)THREADS * ROUNDS);
    CHECK(atomic_load(&mu.v) == 0);
}

static void test_uncontended(void)
{
    lp_mutex_t m = {0};
    for (int i = 0; i < 3; i++) {
        lp_mutex_lock(&m);
        CHECK(atomic_load(&m.v) == 1);
        lp_mutex_unlock(&m);
        CHECK(atomic_load(&m.v) == 0);
    }
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_no_lost_increments),
    LP_TEST_ENTRY(test_uncontended),
};

LP_TEST_MAIN(tests)
