#!/usr/bin/env python3
"""Writes the seed scripts of fuzz_conn (tests/fuzz/fuzz_conn.c) into corpus_conn/ (and of
its variants into corpus_conn_lua/, corpus_conn_h2/ and corpus_conn_h2up/).

Each seed is a script in fuzz_conn's encoding: one byte per action (action + NACT * selector,
the selector naming the client or origin connection), followed by its operands. The action
numbers and the text tables below follow fuzz_conn.c; change both together."""
import os
import sys

(CONNECT, C_WRITE, C_TEXT, C_BULK, C_SHUT, C_CLOSE, C_RESET, C_READ, O_ACCEPT, O_READ,
 O_WRITE, O_TEXT, O_BULK, O_SHUT, O_CLOSE, O_RESET, TIME, RUN) = range(18)
NACT = 18

# client_texts indexes
C_GET, C_GET_B_CLOSE, C_POST_CL, C_POST_CHUNKED, C_POST_CHUNKED_HEAD, C_HEAD, C_UPGRADE, \
    C_EXPECT, C_GET10, C_PIPELINE, C_HELLO, C_CHUNK, C_LAST_CHUNK, C_POST_BIG, C_CL_TE, \
    C_OPTIONS = range(16)
# client_texts of fuzz_conn_lua only (FUZZ_CONN_LUA): X-A says what each phase does
L_SLEEP, L_RESPOND, L_SLEEP_ALL, L_BODY, L_UP_RESPOND_FILTER, L_REQ_ERROR, L_RESP_ERROR, \
    L_FILTER_LOG_LONG, L_LONG_SLEEP, L_TARGET, L_NAP_CHUNKED, L_UPGRADE_SLEEP = range(16, 28)
# origin_texts indexes
O_200, O_200_CHUNKED, O_200_CHUNKED_HEAD, O_100, O_101, O_204, O_304, O_200_EOF, O_502, \
    O_BAD_CL, O_200_CLOSE, O_CHUNK, O_LAST_CHUNK, O_200_BIG, O_103, O_503 = range(16)
# time_steps_ms indexes
T1, T10, T40, T60, T110, T210, T310, T410, T510, T1100, T3100, T20000 = range(12)


def a(act, sel=0, *ops):
    return bytes([act + NACT * sel, *ops])


def raw(act, sel, data):
    return bytes([act + NACT * sel, len(data)]) + data


def run(n=4):
    return a(RUN, n - 1)


SEEDS = {
    # Two requests on one client connection, the origin keeping its connection too.
    "keepalive": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_READ) + a(O_TEXT, 0, O_200)
    + run() + a(C_READ) + a(C_TEXT, 0, C_GET) + run() + a(O_READ) + a(O_TEXT, 0, O_200_CHUNKED)
    + run() + a(C_READ) + a(TIME, 0, T1100) + run(),
    # Two pipelined requests answered in order (the second waits for the first).
    "pipeline": a(CONNECT) + a(C_TEXT, 0, C_PIPELINE) + run() + a(O_READ) + a(O_TEXT, 0, O_200)
    + run() + a(O_READ, 1) + a(O_TEXT, 1, O_200) + a(O_READ) + a(O_TEXT, 0, O_200) + run()
    + a(C_READ),
    # A chunked request body in pieces, a chunked response in pieces.
    "stream_chunked": a(CONNECT) + a(C_TEXT, 0, C_POST_CHUNKED_HEAD) + run()
    + a(C_TEXT, 0, C_CHUNK) + run() + a(O_READ) + a(C_TEXT, 0, C_CHUNK)
    + a(C_TEXT, 0, C_LAST_CHUNK) + run() + a(O_READ) + a(O_TEXT, 0, O_200_CHUNKED_HEAD) + run()
    + a(O_TEXT, 0, O_CHUNK) + run() + a(C_READ) + a(O_TEXT, 0, O_LAST_CHUNK) + run()
    + a(C_READ),
    # A large request body against an origin that reads late, a large response against a
    # client that reads late: backpressure both ways.
    "stream_big": a(CONNECT) + a(C_TEXT, 0, C_POST_BIG) + run()
    + b"".join(a(C_BULK, 0, 63) + run(2) for _ in range(4)) + a(O_READ) + run()
    + a(O_READ) + run() + a(O_READ) + a(O_TEXT, 0, O_200_BIG)
    + b"".join(a(O_BULK, 0, 63) + run(2) for _ in range(7)) + a(C_READ) + run() + a(C_READ)
    + run() + a(C_READ),
    # The origin closes before answering, then resets; the refused target is retried.
    "upstream_close": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_ACCEPT) + a(O_CLOSE)
    + run() + a(TIME, 0, T60) + run() + a(O_RESET, 1) + run() + a(C_READ),
    # A 502 retried (retry_on), then a good answer.
    "retry_502": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_READ) + a(O_TEXT, 0, O_502)
    + run() + a(TIME, 0, T60) + run() + a(O_READ, 1) + a(O_TEXT, 1, O_200) + run() + a(C_READ),
    # No answer in time: the read timeout (504), then the keep-alive timeout.
    "timeouts": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_READ) + a(TIME, 0, T510) + run()
    + a(TIME, 0, T3100) + run() + a(C_READ) + a(TIME, 0, T20000) + run(),
    # A malformed response, and a client that half-closes.
    "bad_response": a(CONNECT) + a(C_TEXT, 0, C_GET_B_CLOSE) + a(C_SHUT) + run() + a(O_READ)
    + a(O_TEXT, 0, O_BAD_CL) + run() + a(C_READ),
    # An upgrade, bytes both ways through the tunnel, then each side closes.
    "upgrade": a(CONNECT) + a(C_TEXT, 0, C_UPGRADE) + run() + a(O_READ) + a(O_TEXT, 0, O_101)
    + run() + raw(C_WRITE, 0, b"ping") + run() + a(O_READ) + raw(O_WRITE, 0, b"pong") + run()
    + a(C_READ) + a(O_SHUT) + run() + a(C_CLOSE) + run(),
    # The Upgrade request and the client's FIN together: 101, then both ends closed.
    "upgrade_half_close": a(CONNECT) + a(C_TEXT, 0, C_UPGRADE) + a(C_SHUT) + run() + a(O_READ)
    + a(O_TEXT, 0, O_101) + run() + a(O_READ) + a(C_READ) + a(TIME, 0, T1100) + run()
    + a(O_READ) + a(C_READ),
    # Expect: 100-continue, an interim 103, HEAD, 204 and 304 without bodies, HTTP/1.0.
    "interim": a(CONNECT) + a(C_TEXT, 0, C_EXPECT) + run() + a(O_READ) + a(O_TEXT, 0, O_100)
    + run() + a(C_TEXT, 0, C_HELLO) + run() + a(O_READ) + a(O_TEXT, 0, O_103)
    + a(O_TEXT, 0, O_204) + run() + a(C_TEXT, 0, C_HEAD) + run() + a(O_READ)
    + a(O_TEXT, 0, O_304) + run() + a(C_READ) + a(C_TEXT, 0, C_GET10) + run() + a(O_READ)
    + a(O_TEXT, 0, O_200_EOF) + a(O_CLOSE) + run() + a(C_READ),
    # Three requests to "app" at once: two connections (its max_connections), one waits in
    # its queue (max_pending) until a slot frees or pending_timeout passes.
    "queue": a(CONNECT) + a(CONNECT) + a(CONNECT) + a(C_TEXT, 0, C_GET) + a(C_TEXT, 1, C_GET)
    + a(C_TEXT, 2, C_GET) + run() + a(O_READ) + a(O_TEXT, 0, O_200) + run() + a(O_READ, 1)
    + a(C_READ, 0) + a(TIME, 0, T310) + run() + a(C_READ, 1) + a(C_READ, 2) + run()
    + a(O_READ, 2) + a(O_TEXT, 2, O_200) + run() + a(C_READ, 2),
    # More clients than limits.max_connections; one resets mid-request.
    "many_clients": a(CONNECT) + a(CONNECT) + a(CONNECT) + a(CONNECT) + run() + a(C_TEXT, 0, C_GET)
    + a(C_TEXT, 1, C_POST_CL) + a(C_TEXT, 2, C_GET) + run() + a(O_READ) + a(O_READ, 1)
    + a(C_RESET, 1) + run() + a(O_TEXT, 0, O_200) + a(O_TEXT, 1, O_503) + run() + a(C_READ)
    + a(TIME, 0, T310) + run(),
    # Requests the proxy refuses itself: ambiguous framing, too large, a raw garbage line.
    "refused": a(CONNECT) + a(C_TEXT, 0, C_CL_TE) + run() + a(C_READ) + a(CONNECT)
    + raw(C_WRITE, 1, b"GET /" + b"a" * 150 + b" HTTP/1.1\r\n\r\n") + run() + a(C_READ, 1)
    + a(C_CLOSE, 1) + a(CONNECT) + raw(C_WRITE, 1, b"\x00\x01garbage\r\n\r\n") + run(),
}

# For fuzz_conn_lua (which reads both directories).
LUA_SEEDS = {
    # Every phase sleeps; two requests on one connection.
    "lua_sleep_all": a(CONNECT) + a(C_TEXT, 0, L_SLEEP_ALL) + run() + a(TIME, 0, T60) + run()
    + a(TIME, 0, T60) + run() + a(O_READ) + a(O_TEXT, 0, O_200) + run() + a(TIME, 0, T60)
    + run() + a(C_READ) + a(TIME, 0, T60) + run() + a(C_TEXT, 0, L_SLEEP) + run()
    + a(TIME, 0, T60) + run() + a(O_READ) + a(O_TEXT, 0, O_200_CHUNKED) + run() + a(C_READ),
    # The client goes away while the request phase sleeps, and while the log phase does.
    "lua_abort": a(CONNECT) + a(C_TEXT, 0, L_LONG_SLEEP) + run() + a(C_RESET) + run()
    + a(TIME, 0, T3100) + run() + a(CONNECT) + a(C_TEXT, 0, L_FILTER_LOG_LONG) + run()
    + a(O_READ) + a(O_TEXT, 0, O_200) + run() + a(C_READ) + a(C_CLOSE) + run()
    + a(TIME, 0, T3100) + run(),
    # Local answers from the request and upstream phases, failures in the request and
    # response phases, keep-alive across them.
    "lua_respond": a(CONNECT) + a(C_TEXT, 0, L_RESPOND) + run() + a(C_READ)
    + a(C_TEXT, 0, L_UP_RESPOND_FILTER) + run() + a(C_READ) + a(C_TEXT, 0, L_REQ_ERROR)
    + run() + a(C_READ) + a(CONNECT) + a(C_TEXT, 1, L_RESP_ERROR) + run() + a(O_READ)
    + a(O_TEXT, 0, O_200) + run() + a(C_READ, 1),
    # req:body() gathering, then a pipelined request; a chunked body after naps.
    "lua_body": a(CONNECT) + a(C_TEXT, 0, L_BODY) + run() + a(C_TEXT, 0, C_HELLO) + run()
    + a(C_TEXT, 0, C_HELLO) + a(C_TEXT, 0, C_GET) + run() + a(O_READ) + a(O_TEXT, 0, O_200)
    + run() + a(O_READ) + a(O_TEXT, 0, O_200) + run() + a(C_READ) + a(C_TEXT, 0, L_NAP_CHUNKED)
    + a(TIME, 0, T10) + run() + a(C_TEXT, 0, C_CHUNK) + a(C_TEXT, 0, C_LAST_CHUNK)
    + a(TIME, 0, T10) + run() + a(O_READ) + a(O_TEXT, 0, O_200_CLOSE) + run() + a(C_READ),
    # set_target to a refused port; an upgrade whose response phase sleeps.
    "lua_target_upgrade": a(CONNECT) + a(C_TEXT, 0, L_TARGET) + run() + a(TIME, 0, T60) + run()
    + a(C_READ) + a(CONNECT) + a(C_TEXT, 1, L_UPGRADE_SLEEP) + run() + a(O_READ)
    + a(O_TEXT, 0, O_101) + run() + raw(C_WRITE, 1, b"early") + a(TIME, 0, T60) + run()
    + a(O_READ) + raw(O_WRITE, 0, b"late") + run() + a(C_READ, 1),
}

# h2_texts of fuzz_conn_h2 only (FUZZ_CONN_H2), after the 16 client_texts
H_PREFACE, H_SETTINGS_ACK, H_GET1, H_POST3, H_DATA3, H_DATA3_END, H_RST1, H_WU_CONN, H_WU1, \
    H_WIN0, H_PING, H_GOAWAY, H_GET5_CONT, H_GET7, H_PRIORITY, H_WIN_OPEN = range(16, 32)

H2_SEEDS = {
    # A GET over h2c, answered; then the idle timeout's GOAWAY.
    "h2_get": a(CONNECT) + a(C_TEXT, 0, H_PREFACE) + a(C_TEXT, 0, H_GET1) + run() + a(O_READ)
    + a(O_TEXT, 0, O_200) + run() + a(C_READ) + a(C_TEXT, 0, H_SETTINGS_ACK) + run()
    + a(TIME, 0, T1100) + run() + a(C_READ),
    # A request body in two DATA frames, a chunked answer; h1 on the same listener.
    "h2_post": a(CONNECT) + a(C_TEXT, 0, H_PREFACE) + a(C_TEXT, 0, H_POST3)
    + a(C_TEXT, 0, H_DATA3) + run() + a(O_READ) + a(C_TEXT, 0, H_DATA3_END) + run()
    + a(O_READ) + a(O_TEXT, 0, O_200_CHUNKED) + run() + a(C_READ) + a(CONNECT)
    + a(C_TEXT, 1, C_GET) + run() + a(O_READ, 1) + a(O_TEXT, 1, O_200) + run() + a(C_READ, 1),
    # Windows of 0: a large answer is held, the send-stall timeout resets the stream; a
    # second stream after the windows open again.
    "h2_stall": a(CONNECT) + a(C_TEXT, 0, H_PREFACE) + a(C_TEXT, 0, H_WIN0)
    + a(C_TEXT, 0, H_GET1) + run() + a(O_READ) + a(O_TEXT, 0, O_200_BIG)
    + b"".join(a(O_BULK, 0, 63) + run(2) for _ in range(3)) + a(C_READ) + a(TIME, 0, T510)
    + run() + a(C_READ) + a(C_TEXT, 0, H_WIN_OPEN) + a(C_TEXT, 0, H_GET7) + run() + a(O_READ, 1)
    + a(O_TEXT, 1, O_200) + run() + a(C_READ) + a(C_TEXT, 0, H_WU_CONN) + run(),
    # A reset stream, HEADERS with CONTINUATION, PRIORITY, PING, WINDOW_UPDATE and GOAWAY.
    "h2_frames": a(CONNECT) + a(C_TEXT, 0, H_PREFACE) + a(C_TEXT, 0, H_GET1) + run()
    + a(C_TEXT, 0, H_WU1) + a(C_TEXT, 0, H_RST1) + a(C_TEXT, 0, H_GET5_CONT)
    + a(C_TEXT, 0, H_PRIORITY) + a(C_TEXT, 0, H_PING) + run() + a(O_READ) + a(O_READ, 1)
    + a(O_TEXT, 1, O_200) + a(O_TEXT, 0, O_200) + run() + a(C_READ) + a(C_TEXT, 0, H_GOAWAY)
    + run() + a(C_READ),
}


# h2up_texts of fuzz_conn_h2up only (FUZZ_CONN_H2UP), after the 16 origin_texts: frames an
# HTTP/2 upstream answers the proxy's streams (1, 3, 5...) with
U_SETTINGS, U_SETTINGS_ACK, U_HEAD1, U_DATA1_END, U_DATA1, U_TRAILERS1, U_TRAILERS_ONLY1, \
    U_RST1, U_REFUSED1, U_GOAWAY0, U_GOAWAY1, U_HEAD_DATA3, U_MAX_STREAMS1, U_WU_CONN, U_PING, \
    U_204_1, U_BAD_CL1, U_100_1, U_WIN0, U_HEAD5_END = range(16, 36)


def up(sel=0, *texts):
    """The origin (connection sel) writes these h2up_texts."""
    return b"".join(a(O_TEXT, sel, t) for t in texts)


H2UP_SEEDS = {
    # Two GETs from an HTTP/1.1 client on one upstream h2 connection (streams 1 and 3), then
    # its keepalive timeout.
    "h2up_get": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_READ)
    + up(0, U_SETTINGS, U_SETTINGS_ACK, U_HEAD1, U_DATA1_END) + run() + a(C_READ)
    + a(C_TEXT, 0, C_GET) + run() + a(O_READ) + up(0, U_HEAD_DATA3, U_PING) + run() + a(C_READ)
    + a(TIME, 0, T1100) + run() + a(O_READ),
    # gRPC-like: an HTTP/2 client's POST with a body; the upstream answers with a body and
    # trailers, then a trailers-only answer on the next stream.
    "h2up_trailers": a(CONNECT) + a(C_TEXT, 0, H_PREFACE) + a(C_TEXT, 0, H_POST3)
    + a(C_TEXT, 0, H_DATA3_END) + run() + a(O_READ)
    + up(0, U_SETTINGS, U_HEAD1, U_DATA1, U_TRAILERS1) + run() + a(C_READ)
    + a(C_TEXT, 0, H_GET7) + run() + a(O_READ) + up(0, U_TRAILERS_ONLY1, U_HEAD_DATA3) + run()
    + a(C_READ),
    # GOAWAY refuses the stream: it goes again on a new connection (the origin's second).
    "h2up_refused": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_READ)
    + up(0, U_SETTINGS, U_GOAWAY0) + run() + a(O_ACCEPT) + a(O_READ, 1)
    + up(1, U_SETTINGS, U_REFUSED1) + run() + a(O_READ, 2) + up(2, U_SETTINGS, U_HEAD1)
    + up(2, U_DATA1_END) + run() + a(C_READ),
    # A reset after the head (the client's answer is cut), a lying length, 204, a 1xx.
    "h2up_reset": a(CONNECT) + a(C_TEXT, 0, C_GET) + run() + a(O_READ)
    + up(0, U_SETTINGS, U_HEAD1, U_DATA1, U_RST1) + run() + a(C_READ) + a(CONNECT)
    + a(C_TEXT, 1, C_GET) + run() + a(O_READ) + up(0, U_BAD_CL1, U_HEAD_DATA3) + run()
    + a(C_READ, 1) + a(C_TEXT, 1, C_HEAD) + run() + a(O_READ) + up(0, U_100_1, U_HEAD5_END)
    + run() + a(C_READ, 1),
    # The read timeout after the head (h2 client: the stream is reset), windows of 0 for a
    # request body, one stream at a time, and the origin going away.
    "h2up_timeouts": a(CONNECT) + a(C_TEXT, 0, H_PREFACE) + a(C_TEXT, 0, H_GET1) + run()
    + a(O_READ) + up(0, U_SETTINGS, U_MAX_STREAMS1, U_WIN0, U_HEAD1) + run()
    + a(C_TEXT, 0, H_POST3) + a(C_TEXT, 0, H_DATA3_END) + run() + a(TIME, 0, T510) + run()
    + a(C_READ) + a(O_READ) + up(0, U_WU_CONN, U_204_1) + a(O_CLOSE) + run() + a(C_READ)
    + a(TIME, 0, T1100) + run(),
}


# corpus_conn_h2up/h2up_refused_loop_regression is not written here: an input libFuzzer
# found (fuzz_conn_h2up), kept as it is. Two requests bounced between two upstream
# connections without end: one had sent GOAWAY (a frame too large) and still looked roomy,
# and stale-connection retries were unbounded (h2_up.c h2u_has_room, stream_fail).


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for sub, seeds in (("corpus_conn", SEEDS), ("corpus_conn_lua", LUA_SEEDS),
                       ("corpus_conn_h2", H2_SEEDS), ("corpus_conn_h2up", H2UP_SEEDS)):
        out = os.path.join(here, sub)
        os.makedirs(out, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
