/* Unit tests for engine/targets.c: an upstream's set changed at run time (from Lua, by DNS
 * answers) keeps the balancer consistent, and tries in flight keep their targets. */
#include <netdb.h>
#include <stdio.h>
#include <arpa/inet.h>
#include "lp_test.h"
#include "targets.h"

static lp_addr_t ip(const char *text)
{
    lp_addr_t a;
    char err[128];
    memset(&a, 0, sizeof(a));
    if (lp_addr_parse(text, &a, err, sizeof(err)))
        fprintf(stderr, "bad address %s: %s\n", text, err);
    return a;
}

/* A config of n IP targets 10.0.0.(i+1):80 with the given policy. */
typedef struct {
    lp_upstream_conf_t uc;
    lp_target_conf_t t[16];
} conf_t;

static void conf_init(conf_t *c, const char *policy, size_t n)
{
    memset(c, 0, sizeof(*c));
    c->uc.name = (char *)"app";
    c->uc.balance = (char *)policy;
    c->uc.targets = c->t;
    c->uc.ntargets = n;
    c->uc.dns_ttl = 30000;
    for (size_t i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof(text), "10.0.0.%zu:80", i + 1);
        c->t[i].addr = ip(text);
        c->t[i].weight = 1;
    }
}

static void conf_free(conf_t *c)
{
    for (size_t i = 0; i < c->uc.ntargets; i++)
        if (!c->t[i].host)
            free(c->t[i].addr.text);
}

static int pick(lp_upstream_rt_t *u, const char *key)
{
    for (size_t i = 0; i < u->ntargets; i++)
        u->bt[i].available = 1;
    return lp_balancer_select(&u->bal, key, key ? strlen(key) : 0, NULL, 0);
}

static void test_init_add_remove_weight(void)
{
    conf_t c;
    conf_init(&c, "round_robin", 3);
    lp_upstream_rt_t u;
    memset(&u, 0, sizeof(u));
    REQUIRE_EQ_INT(lp_targets_init(&u, &c.uc, 1), 0);
    CHECK_EQ_INT(u.ntargets, 3);
    CHECK_EQ_INT(lp_targets_find(&u, "10.0.0.2:80", 11), 1);
    uint32_t v = u.version;
    lp_addr_t a = ip("10.0.0.9:80");
    CHECK_EQ_INT(lp_targets_add(&u, &a, 2, -1), 0);
    CHECK_EQ_INT(u.ntargets, 4);
    CHECK(u.version != v);
    CHECK_EQ_INT(lp_targets_add(&u, &a, 3, -1), 1); /* there already: its weight changes */
    CHECK_EQ_INT(u.targets[3]->weight, 3);
    CHECK_EQ_INT(u.bt[3].weight, 3);
    CHECK_EQ_INT(lp_targets_set_weight(&u, "10.0.0.1:80", 5), 0);
    CHECK_EQ_INT(u.bt[0].weight, 5);
    CHECK_EQ_INT(lp_targets_set_weight(&u, "10.9.9.9:80", 5), LP_EINVAL);
    CHECK_EQ_INT(lp_targets_remove(&u, "10.9.9.9:80"), LP_EINVAL);
    CHECK_EQ_INT(lp_targets_remove(&u, "10.0.0.2:80"), 0);
    CHECK_EQ_INT(u.ntargets, 3);
    /* Positions, ids and the balancer's array agree after every change. */
    for (size_t i = 0; i < u.ntargets; i++) {
        CHECK_EQ_INT(u.targets[i]->idx, (long long)i);
        CHECK_STR(u.bt[i].id, u.targets[i]->addr.text);
        CHECK_EQ_INT(u.bt[i].weight, u.targets[i]->weight);
    }
    free(a.text); /* the set keeps its own copy */
    CHECK(u.bal.targets == u.bt);
    CHECK_EQ_INT(u.bal.n, 3);
    /* Smooth round robin honours the new weights 5/1/3 over a cycle. */
    int counts[3] = {0};
    for (int i = 0; i < 90; i++) {
        int k = pick(&u, NULL);
        REQUIRE(k >= 0 && k < 3);
        counts[k]++;
    }
    CHECK_EQ_INT(counts[0], 50);
    CHECK_EQ_INT(counts[1], 10);
    CHECK_EQ_INT(counts[2], 30);
    lp_targets_free(&u);
    conf_free(&c);
}

static void test_removed_target_outlives_its_try(void)
{
    conf_t c;
    conf_init(&c, "least_conn", 3);
    lp_upstream_rt_t u;
    memset(&u, 0, sizeof(u));
    REQUIRE_EQ_INT(lp_targets_init(&u, &c.uc, 1), 0);
    /* Two tries in flight to the third target, one to the first. */
    u.bt[2].active = 2;
    u.bt[0].active = 1;
    lp_target_rt_t *t = u.targets[1];
    lp_target_ref(t); /* a try in flight to the second */
    CHECK_EQ_INT(lp_targets_remove(&u, "10.0.0.2:80"), 0);
    CHECK_EQ_INT(t->idx, -1);
    CHECK_STR(t->addr.text, "10.0.0.2:80"); /* still valid for its try */
    /* The others' in-flight counts moved with them. */
    CHECK_EQ_INT(u.bt[0].active, 1);
    CHECK_EQ_INT(u.bt[1].active, 2);
    CHECK_STR(u.bt[1].id, "10.0.0.3:80");
    CHECK_EQ_INT(pick(&u, NULL), 0); /* least loaded */
    lp_target_unref(t);              /* the try ends: freed (ASan checks) */
    lp_targets_free(&u);
    conf_free(&c);
}

static void test_hash_remap_share(void)
{
    conf_t c;
    conf_init(&c, "hash", 10);
    lp_upstream_rt_t u;
    memset(&u, 0, sizeof(u));
    REQUIRE_EQ_INT(lp_targets_init(&u, &c.uc, 1), 0);
    enum { KEYS = 20000 };
    static char before[KEYS][16];
    char key[32];
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof(key), "client-%d", i);
        snprintf(before[i], sizeof(before[i]), "%s", u.targets[pick(&u, key)]->addr.text);
    }
    CHECK_EQ_INT(lp_targets_remove(&u, "10.0.0.4:80"), 0);
    int moved = 0, moved_other = 0;
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof(key), "client-%d", i);
        const char *now = u.targets[pick(&u, key)]->addr.text;
        if (strcmp(now, before[i])) {
            moved++;
            moved_other += strcmp(before[i], "10.0.0.4:80") != 0;
        }
    }
    /* About 1/10 of keys move: those of the removed target (a few others with Maglev). */
    CHECK(moved > KEYS * 5 / 100 && moved < KEYS * 15 / 100);
    CHECK(moved_other < KEYS / 100);
    /* Added back (at the end of the set): the same keys come back. */
    lp_addr_t a = ip("10.0.0.4:80");
    CHECK_EQ_INT(lp_targets_add(&u, &a, 1, -1), 0);
    int differ = 0;
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof(key), "client-%d", i);
        differ += strcmp(u.targets[pick(&u, key)]->addr.text, before[i]) != 0;
    }
    CHECK_EQ_INT(differ, 0);
    free(a.text);
    lp_targets_free(&u);
    conf_free(&c);
}

static void test_dns_answers_replace_their_own_addresses(void)
{
    conf_t c;
    conf_init(&c, "p2c", 1);
    /* Target 2 is a name that resolved to two addresses when the config was loaded. */
    lp_addr_t resolved[2] = {ip("10.1.0.1:8080"), ip("10.1.0.2:8080")};
    c.t[1].addr.text = (char *)"svc.example:8080";
    c.t[1].host = (char *)"svc.example";
    c.t[1].port = 8080;
    c.t[1].weight = 4;
    c.t[1].resolved = resolved;
    c.t[1].nresolved = 2;
    c.uc.ntargets = 2;
    lp_upstream_rt_t u;
    memset(&u, 0, sizeof(u));
    REQUIRE_EQ_INT(lp_targets_init(&u, &c.uc, 1), 0);
    REQUIRE_EQ_INT(u.ntargets, 3);
    CHECK_EQ_INT(u.targets[0]->origin, -1);
    CHECK_EQ_INT(u.targets[1]->origin, 1);
    CHECK_EQ_INT(u.targets[2]->weight, 4);
    /* An address Lua added that DNS also returns stays Lua's. */
    lp_addr_t lua = ip("10.1.0.3:8080");
    CHECK_EQ_INT(lp_targets_add(&u, &lua, 1, -1), 0);
    lp_addr_t answer[2] = {ip("10.1.0.2:8080"), ip("10.1.0.3:8080")};
    uint32_t v = u.version;
    lp_targets_resolved(&u, 1, answer, 2);
    CHECK(u.version != v);
    CHECK_EQ_INT(u.ntargets, 3);
    CHECK_EQ_INT(lp_targets_find(&u, "10.1.0.1:8080", 13), -1); /* gone from the answer */
    int i2 = lp_targets_find(&u, "10.1.0.2:8080", 13);
    int i3 = lp_targets_find(&u, "10.1.0.3:8080", 13);
    REQUIRE(i2 >= 0 && i3 >= 0);
    CHECK_EQ_INT(u.targets[i2]->origin, 1);
    CHECK_EQ_INT(u.targets[i3]->origin, -1);
    CHECK_EQ_INT(u.targets[i3]->weight, 1);
    CHECK(lp_targets_find(&u, "10.0.0.1:80", 11) >= 0); /* the IP target is untouched */
    /* The same answer again changes nothing. */
    v = u.version;
    lp_targets_resolved(&u, 1, answer, 2);
    CHECK_EQ_INT(u.version, v);
    for (size_t i = 0; i < u.ntargets; i++)
        CHECK_STR(u.bt[i].id, u.targets[i]->addr.text);
    CHECK(pick(&u, NULL) >= 0);
    lp_targets_free(&u);
    for (int i = 0; i < 2; i++) {
        free(resolved[i].text);
        free(answer[i].text);
    }
    free(lua.text);
    c.uc.ntargets = 1;
    conf_free(&c);
}

static void test_addresses_from_an_answer(void)
{
    /* Three answers, one a duplicate: two addresses, with the target's port. */
    struct sockaddr_in a4 = {0}, b4 = {0};
    struct sockaddr_in6 c6 = {0};
    a4.sin_family = b4.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a4.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &b4.sin_addr);
    c6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::1", &c6.sin6_addr);
    struct addrinfo r3 = {0}, r2 = {0}, r1 = {0};
    r1.ai_family = AF_INET;
    r1.ai_addr = (struct sockaddr *)&a4;
    r1.ai_addrlen = sizeof(a4);
    r1.ai_next = &r2;
    r2.ai_family = AF_INET;
    r2.ai_addr = (struct sockaddr *)&b4;
    r2.ai_addrlen = sizeof(b4);
    r2.ai_next = &r3;
    r3.ai_family = AF_INET6;
    r3.ai_addr = (struct sockaddr *)&c6;
    r3.ai_addrlen = sizeof(c6);
    lp_addr_t out[4];
    size_t n = lp_addr_from_ai(&r1, 9001, out, 4);
    REQUIRE_EQ_INT(n, 2);
    CHECK_STR(out[0].text, "127.0.0.1:9001");
    CHECK_STR(out[1].text, "[::1]:9001");
    CHECK_EQ_INT(ntohs(((struct sockaddr_in *)&out[0].addr)->sin_port), 9001);
    CHECK_EQ_INT(ntohs(((struct sockaddr_in6 *)&out[1].addr)->sin6_port), 9001);
    CHECK_EQ_INT(lp_addr_from_ai(&r1, 80, out + 2, 1), 1); /* at most max */
    for (size_t i = 0; i < 3; i++)
        free(out[i].text);
    CHECK(lp_addr_is_ip("10.0.0.1"));
    CHECK(lp_addr_is_ip("::1"));
    CHECK(!lp_addr_is_ip("localhost"));
    CHECK(!lp_addr_is_ip("10.0.0.1.example"));
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_init_add_remove_weight),
    LP_TEST_ENTRY(test_removed_target_outlives_its_try),
    LP_TEST_ENTRY(test_hash_remap_share),
    LP_TEST_ENTRY(test_dns_answers_replace_their_own_addresses),
    LP_TEST_ENTRY(test_addresses_from_an_answer),
};

LP_TEST_MAIN(tests)
