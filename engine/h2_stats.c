/* HTTP/2 counters summed over workers (h2_stats.h). */
#include "h2_stats.h"
#include "worker.h"

static uint64_t sum(const lp_server_t *s, int cell)
{
    uint64_t v = 0;
    for (unsigned w = 0; w < s->nworkers; w++)
        v += LP_M_GET(&s->workers[w].m_cells[cell]);
    return v;
}

/* Open = started - closed; two relaxed reads may cross a closing, never below 0. */
static uint64_t open_now(const lp_server_t *s, int started, int closed)
{
    uint64_t closed_n = sum(s, closed), started_n = sum(s, started);
    return started_n > closed_n ? started_n - closed_n : 0;
}

/* The protections that end a connection (GOAWAY) or a stream, by reason. */
static const struct {
    const char *reason;
    int cell;
} PROTECT[] = {
    {"rapid_reset", LP_WM_H2_FLOOD_RESET},        {"control_frames", LP_WM_H2_FLOOD_CONTROL},
    {"continuations", LP_WM_H2_FLOOD_CONT},       {"header_list", LP_WM_H2_FLOOD_HEADERS},
    {"send_stall_stream", LP_WM_H2_STALL_STREAM}, {"send_stall_connection", LP_WM_H2_STALL_CONN},
};

json_t *lp_h2_status(const lp_server_t *s)
{
    json_t *p = json_object();
    for (size_t i = 0; p && i < LP_ARRAY_LEN(PROTECT); i++)
        json_object_set_new(p, PROTECT[i].reason,
                            json_integer((json_int_t)sum(s, PROTECT[i].cell)));
    if (!p)
        return NULL;
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "connections_open",
                     (json_int_t)open_now(s, LP_WM_H2_CONNS, LP_WM_H2_CONNS_CLOSED), "connections",
                     (json_int_t)sum(s, LP_WM_H2_CONNS), "streams_open",
                     (json_int_t)open_now(s, LP_WM_H2_STREAMS, LP_WM_H2_STREAMS_CLOSED), "streams",
                     (json_int_t)sum(s, LP_WM_H2_STREAMS), "resets_received",
                     (json_int_t)sum(s, LP_WM_H2_RST_RECV), "resets_sent",
                     (json_int_t)sum(s, LP_WM_H2_RST_SENT), "goaways_sent",
                     (json_int_t)sum(s, LP_WM_H2_GOAWAY_SENT), "protections", p);
}

void lp_h2_metrics(lp_mtext_t *t, const lp_server_t *s)
{
    static const struct {
        const char *name, *type, *help;
        int cell, closed; /* closed >= 0: a gauge of cell - closed */
    } M[] = {
        {"luaproxy_h2_connections_open", "gauge", "HTTP/2 client connections open.", LP_WM_H2_CONNS,
         LP_WM_H2_CONNS_CLOSED},
        {"luaproxy_h2_connections_total", "counter", "Client connections that spoke HTTP/2.",
         LP_WM_H2_CONNS, -1},
        {"luaproxy_h2_streams_open", "gauge", "HTTP/2 streams open.", LP_WM_H2_STREAMS,
         LP_WM_H2_STREAMS_CLOSED},
        {"luaproxy_h2_streams_total", "counter", "HTTP/2 streams clients opened.", LP_WM_H2_STREAMS,
         -1},
        {"luaproxy_h2_goaways_sent_total", "counter", "HTTP/2 GOAWAY frames sent.",
         LP_WM_H2_GOAWAY_SENT, -1},
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(M); i++) {
        lp_mtext_family(t, M[i].name, M[i].type, M[i].help);
        uint64_t v = M[i].closed >= 0 ? open_now(s, M[i].cell, M[i].closed) : sum(s, M[i].cell);
        lp_mtext_sample(t, M[i].name, "", NULL, 0, (double)v);
    }
    lp_mtext_family(t, "luaproxy_h2_resets_total", "counter",
                    "HTTP/2 RST_STREAM frames, by direction.");
    const char *rx[] = {"direction", "received"}, *tx[] = {"direction", "sent"};
    lp_mtext_sample(t, "luaproxy_h2_resets_total", "", rx, 1, (double)sum(s, LP_WM_H2_RST_RECV));
    lp_mtext_sample(t, "luaproxy_h2_resets_total", "", tx, 1, (double)sum(s, LP_WM_H2_RST_SENT));
    lp_mtext_family(t, "luaproxy_h2_protections_total", "counter",
                    "HTTP/2 connections closed (floods, a shut connection window) or streams "
                    "reset (header list, a shut stream window) by a protection, by reason.");
    for (size_t i = 0; i < LP_ARRAY_LEN(PROTECT); i++) {
        const char *l[] = {"reason", PROTECT[i].reason};
        lp_mtext_sample(t, "luaproxy_h2_protections_total", "", l, 1,
                        (double)sum(s, PROTECT[i].cell));
    }
}
