/* The waf plugin's @detectSQLi (lua/luaproxy/waf/detect.lua calls it through the FFI): our
 * own tokenizer-based detector (nothing here is taken from libinjection). Docs:
 * docs/plugins/waf.md, "detectSQLi and detectXSS".
 *
 * The value is tokenized as SQL three times: as written, and as if it started inside a
 * '...' or a "..." literal (the value closes the literal the application opened). Tokens
 * fold into classes (s string, n number, k keyword, U union, & and/or, o operator, f function
 * call, v @variable, c comment, ( ) , ; b bareword, x anything else), and a value is SQL
 * injection when its token sequence has SQL's structure, not prose's:
 *   - UNION [ALL] SELECT; SELECT with a column list and FROM; (SELECT;
 *   - in a quote context, right after the literal closes: a comment, AND/OR followed by an
 *     operand and a comparison or a function call, ; with a statement, ORDER/GROUP BY, an
 *     operator with an operand;
 *   - as written: a number then AND/OR and a comparison (1 AND 1=1), a number then ORDER BY,
 *     after any opening parentheses and a sign (-1 OR 1=1, ((1 AND 2>1); an operand, the
 *     parentheses the application opened closing, AND/OR, then a comparison of two literals
 *     inside parentheses reopened (1) OR (1=1, ((a OR 1=1): a tautology's shape, which prose
 *     ("pages 1 or 2", "(1 = 1)", "size (1) or (2)") does not have;
 *   - ; followed by a statement with its own structure (DROP TABLE, DELETE FROM, ...);
 *   - a call of a function only attacks use (sleep, benchmark, updatexml, xp_cmdshell, ...).
 * Prose with apostrophes ("It's great -- I'd buy it again") stays prose: its quote closes
 * into words, never into a comment or a comparison.
 *
 * Work is linear in the value, all of it read (SQL after padding is SQL): a pass keeps a
 * window of 64 tokens; the rules anywhere look a few tokens ahead, so once the window is full
 * the tokens with 16 after them are checked and the last 16 slide to its start. The rules
 * on how the value starts read the first window only. */
#include <stddef.h>
#include <pthread.h>
#include <string.h>

struct lp_req_s; /* lua_api.h names it; nothing here uses it */
#include "lua_api.h"
#include "waf_ctype.h"
#include "waf_words.h"

#define SQL_MAX_TOKS 64 /* tokens a pass's window holds */
#define SQL_LOOK     16 /* tokens kept after the last one checked: the rules' look-ahead */

/* a byte of a word: [%w_$\128-\255] but 0xA0, which MySQL reads as a space wherever it is */
static int word_byte(unsigned char c)
{
    return is_alnum(c) || c == '_' || c == '$' || (c >= 128 && c != 0xA0);
}

/* one of the words UNION, SELECT, WAITFOR in v, ASCII case-insensitively (one pass) */
static int has_start_word(const unsigned char *v, size_t n)
{
    for (size_t i = 0; i + 5 <= n; i++) {
        switch (v[i] | 0x20) {
        case 'u':
            if (eq_ci(v + i, 5, "union"))
                return 1;
            break;
        case 's':
            if (i + 6 <= n && eq_ci(v + i, 6, "select"))
                return 1;
            break;
        case 'w':
            if (i + 7 <= n && eq_ci(v + i, 7, "waitfor"))
                return 1;
            break;
        }
    }
    return 0;
}

/* May the value, as written, start SQL? Only with one of: a parenthesis (every call,
 * "(select"), ";", "@@", the words UNION, SELECT or WAITFOR, or a first token that is a
 * number (signed too) or a literal (1 AND 1=1, -1 OR 1=1, 'a' OR ...). A byte test, so that
 * ordinary values (a User-Agent without those, a cookie, a name) skip the tokenizer; it only ever
 * answers yes when unsure (a leading comment or MySQL's version comment marker). */
static int sql_written_may(const unsigned char *v, size_t n)
{
    if (memchr(v, '(', n) || memchr(v, ';', n) || memchr(v, '@', n))
        return 1;
    if (has_start_word(v, n))
        return 1;
    size_t i = 0;
    while (i < n && (v[i] <= 32 || v[i] == 0xA0))
        i++;
    if (i == n)
        return 0;
    unsigned char c = v[i];
    /* a digit, . ' " / *: a number, a literal or a comment marker may come first */
    if (is_digit(c) || c == '.' || c == '\'' || c == '"' || c == '/' || c == '*')
        return 1;
    /* a signed number: -1 OR 1=1 */
    if ((c == '-' || c == '+') && i + 1 < n && (is_digit(v[i + 1]) || v[i + 1] == '.'))
        return 1;
    if (is_alpha(c) || c == '_' || c >= 128) {
        /* a word: a number only when it is NULL, TRUE or FALSE */
        size_t e = i;
        while (e < n && word_byte(v[e]))
            e++;
        return eq_ci(v + i, e - i, "null") || eq_ci(v + i, e - i, "true") ||
               eq_ci(v + i, e - i, "false");
    }
    return 0;
}

/* ---- words ---- */

#define W_SQL_FUNC    0x100 /* SQLi uses it for data: a call after AND/OR, in a select list */
#define W_ATTACK_FUNC 0x200 /* only attacks call it: a call of one is SQLi wherever it is */

/* Keywords with their classes (a word not here is a bareword, b), then the functions. */
static const lp_waf_word_t sql_word_list[] = {
    {"select", 'k'},
    {"from", 'k'},
    {"where", 'k'},
    {"insert", 'k'},
    {"into", 'k'},
    {"values", 'k'},
    {"update", 'k'},
    {"set", 'k'},
    {"delete", 'k'},
    {"drop", 'k'},
    {"table", 'k'},
    {"database", 'k'},
    {"create", 'k'},
    {"alter", 'k'},
    {"truncate", 'k'},
    {"exec", 'k'},
    {"execute", 'k'},
    {"declare", 'k'},
    {"shutdown", 'k'},
    {"having", 'k'},
    {"limit", 'k'},
    {"offset", 'k'},
    {"order", 'k'},
    {"group", 'k'},
    {"by", 'k'},
    {"union", 'U'},
    {"all", 'k'},
    {"and", '&'},
    {"or", '&'},
    {"xor", '&'},
    {"not", 'o'},
    {"like", 'o'},
    {"rlike", 'o'},
    {"regexp", 'o'},
    {"is", 'o'},
    {"in", 'o'},
    {"between", 'o'},
    {"div", 'o'},
    {"mod", 'o'},
    {"null", 'n'},
    {"true", 'n'},
    {"false", 'n'},
    {"waitfor", 'k'},
    {"delay", 'k'},
    {"case", 'k'},
    {"when", 'k'},
    {"then", 'k'},
    {"else", 'k'},
    {"end", 'k'},
    {"as", 'k'},
    {"cast", 'f'},
    {"convert", 'f'},
    {"procedure", 'k'},
    {"outfile", 'k'},
    {"dumpfile", 'k'},
    {"load_file", 'f'},
    {"sounds", 'o'},
    {"version", W_SQL_FUNC},
    {"database", W_SQL_FUNC},
    {"user", W_SQL_FUNC},
    {"current_user", W_SQL_FUNC},
    {"system_user", W_SQL_FUNC},
    {"session_user", W_SQL_FUNC},
    {"schema", W_SQL_FUNC},
    {"concat", W_SQL_FUNC},
    {"concat_ws", W_SQL_FUNC},
    {"group_concat", W_SQL_FUNC},
    {"char", W_SQL_FUNC},
    {"chr", W_SQL_FUNC},
    {"ascii", W_SQL_FUNC},
    {"substring", W_SQL_FUNC},
    {"substr", W_SQL_FUNC},
    {"mid", W_SQL_FUNC},
    {"ord", W_SQL_FUNC},
    {"hex", W_SQL_FUNC},
    {"unhex", W_SQL_FUNC},
    {"count", W_SQL_FUNC},
    {"length", W_SQL_FUNC},
    {"md5", W_SQL_FUNC},
    {"if_", W_SQL_FUNC},
    {"if", W_SQL_FUNC},
    {"ifnull", W_SQL_FUNC},
    {"coalesce", W_SQL_FUNC},
    {"exists", W_SQL_FUNC},
    {"cast", W_SQL_FUNC},
    {"convert", W_SQL_FUNC},
    {"floor", W_SQL_FUNC},
    {"rand", W_SQL_FUNC},
    {"left", W_SQL_FUNC},
    {"right", W_SQL_FUNC},
    {"lower", W_SQL_FUNC},
    {"upper", W_SQL_FUNC},
    {"row", W_SQL_FUNC},
    {"elt", W_SQL_FUNC},
    {"iif", W_SQL_FUNC},
    {"db_name", W_SQL_FUNC},
    {"table_name", W_SQL_FUNC},
    {"column_name", W_SQL_FUNC},
    {"sleep", W_ATTACK_FUNC},
    {"pg_sleep", W_ATTACK_FUNC},
    {"benchmark", W_ATTACK_FUNC},
    {"updatexml", W_ATTACK_FUNC},
    {"extractvalue", W_ATTACK_FUNC},
    {"load_file", W_ATTACK_FUNC},
    {"xp_cmdshell", W_ATTACK_FUNC},
    {"sp_executesql", W_ATTACK_FUNC},
    {"dbms_pipe", W_ATTACK_FUNC},
    {"utl_inaddr", W_ATTACK_FUNC},
    {"get_host_address", W_ATTACK_FUNC},
    {"waitfor", W_ATTACK_FUNC},
    {"sys_eval", W_ATTACK_FUNC},
    {"sys_exec", W_ATTACK_FUNC},
    {"randomblob", W_ATTACK_FUNC},
    {"dbms_lock", W_ATTACK_FUNC},
    {"receive_message", W_ATTACK_FUNC},
    {"make_set", W_ATTACK_FUNC},
    {"name_const", W_ATTACK_FUNC},
    {"geometrycollection", W_ATTACK_FUNC},
    {"polygon", W_ATTACK_FUNC},
    {"multipoint", W_ATTACK_FUNC},
    {"information_schema", W_ATTACK_FUNC},
};

static lp_waf_words_t sql_words = LP_WAF_WORDS(sql_word_list);
static pthread_once_t sql_words_once = PTHREAD_ONCE_INIT;

static void sql_words_init(void)
{
    lp__waf_words_build(&sql_words);
}

/* ---- tokens ---- */

typedef struct {
    char t;        /* class: s n k U & o f v c ( ) , ; b x */
    unsigned a, b; /* first and last byte, from 0 */
    unsigned wa;   /* the word's first byte (a word's first name part, an operator) */
    unsigned wn;   /* its length; 0: the token has no word (strings, numbers, ...) */
    int attack;    /* flag: a call of a function only attacks use */
} sql_tok_t;

typedef struct {
    const unsigned char *v; /* borrowed: the value */
    size_t n;
    size_t i; /* where tokenizing resumes; n when done */
    int nt;   /* tokens in t */
    sql_tok_t t[SQL_MAX_TOKS];
} sql_t;

static void push(sql_t *s, char t, size_t a, size_t b, size_t wa, size_t wn)
{
    sql_tok_t *k = &s->t[s->nt++];
    k->t = t;
    k->a = (unsigned)a;
    k->b = (unsigned)b;
    k->wa = (unsigned)wa;
    k->wn = (unsigned)wn;
    k->attack = 0;
}

/* an operator's byte: [=<>!|&^~+-*\/%:] */
static int op_byte(unsigned char c)
{
    return c != 0 && strchr("=<>!|&^~+-*/%:", c) != NULL;
}

/* the last byte of the number at i: 0x hex, or digits [. digits] [eE] [+-] digits (as the
 * Lua pattern %d*%.?%d+[eE]?[+-]?%d* matches: "1-2" is one number, "1." is "1") */
static size_t number_end(const unsigned char *v, size_t n, size_t i)
{
    size_t j = i;
    if (v[i] == '0' && i + 2 < n && (v[i + 1] == 'x' || v[i + 1] == 'X') && is_xdigit(v[i + 2])) {
        j = i + 2;
        while (j < n && is_xdigit(v[j]))
            j++;
        return j - 1;
    }
    while (j < n && is_digit(v[j]))
        j++;
    if (j + 1 < n && v[j] == '.' && is_digit(v[j + 1])) {
        j++;
        while (j < n && is_digit(v[j]))
            j++;
    }
    if (j < n && (v[j] == 'e' || v[j] == 'E'))
        j++;
    if (j < n && (v[j] == '+' || v[j] == '-'))
        j++;
    while (j < n && is_digit(v[j]))
        j++;
    return j - 1;
}

/* Whether a '(' comes at i once spaces and comments are skipped: "sleep/ * * /(5)"
 * (without the spaces) is a call.
 * Each byte skipped belongs to the gap before the next token: read at most twice. */
static int paren_after(const unsigned char *v, size_t n, size_t i)
{
    for (;;) {
        while (i < n && (is_space(v[i]) || v[i] == 0xA0))
            i++;
        if (i + 2 < n && v[i] == '/' && v[i + 1] == '*' && v[i + 2] != '!') {
            const unsigned char *e = memmem(v + i + 2, n - i - 2, "*/", 2);
            if (!e)
                return 0;
            i = (size_t)(e - v) + 2;
            continue;
        }
        return i < n && v[i] == '(';
    }
}

/* Starts a pass; quote: the value starts inside a literal of this quote (0: as written).
 * 0 when the quote never closes (no pass), else 1. */
static int sql_start(sql_t *s, unsigned char quote)
{
    s->nt = 0;
    s->i = 0;
    if (!quote) {
        /* the opening parentheses the value starts with count as one: the rules on how the
         * value starts then see what follows them however many there are (a 4 KB run) */
        size_t last = s->n;
        for (size_t i = 0; i < s->n && (s->v[i] == '(' || is_space(s->v[i])); i++)
            if (s->v[i] == '(')
                last = i;
        if (last < s->n)
            s->i = last;
    }
    if (quote) {
        const unsigned char *q = memchr(s->v, quote, s->n);
        if (!q)
            return 0;
        push(s, 's', 0, (size_t)(q - s->v), 0, 0);
        s->i = (size_t)(q - s->v) + 1;
    }
    return 1;
}

/* Tokenizes from s->i until the window is full or the value ends. */
static void sql_tokens(sql_t *s)
{
    const unsigned char *v = s->v;
    size_t n = s->n, i = s->i;
    while (i < n && s->nt < SQL_MAX_TOKS) {
        unsigned char c = v[i];
        if (c <= 32 || c == 0xA0) {
            i++;
        } else if (c == '\'' || c == '"' || c == '`') {
            /* a literal to its closing quote (a doubled quote stays inside), or to the end */
            size_t j = i + 1, end;
            for (;;) {
                const unsigned char *k = j < n ? memchr(v + j, c, n - j) : NULL;
                if (!k) {
                    end = n - 1;
                    break;
                }
                size_t ki = (size_t)(k - v);
                if (ki + 1 < n && v[ki + 1] == c) {
                    j = ki + 2;
                } else {
                    end = ki;
                    break;
                }
            }
            push(s, c == '`' ? 'b' : 's', i, end, 0, 0);
            i = end + 1;
        } else if ((c == '-' && i + 1 < n && v[i + 1] == '-') || c == '#') {
            push(s, 'c', i, n - 1, 0, 0);
            i = n;
            break;
        } else if (c == '/' && i + 1 < n && v[i + 1] == '*') {
            if (i + 2 < n && v[i + 2] == '!') {
                /* a MySQL version comment (slash, star, bang) runs its content: skip the marker and
                 * its version */
                size_t j = i + 3;
                while (j < n && is_digit(v[j]))
                    j++;
                i = j;
            } else {
                const unsigned char *e = i + 2 < n ? memmem(v + i + 2, n - i - 2, "*/", 2) : NULL;
                size_t ei = e ? (size_t)(e - v) : 0;
                push(s, 'c', i, e ? ei + 1 : n - 1, 0, 0);
                i = e ? ei + 2 : n;
            }
        } else if (c == '*' && i + 1 < n && v[i + 1] == '/') {
            i += 2;
        } else if (is_digit(c) || (c == '.' && i + 1 < n && is_digit(v[i + 1]))) {
            size_t b = number_end(v, n, i);
            push(s, 'n', i, b, 0, 0);
            i = b + 1;
        } else if (c == '@') {
            /* @var, @@var: [%w_$.]+ after the marks */
            size_t j = i + 1;
            if (j < n && v[j] == '@')
                j++;
            if (j < n && (is_alnum(v[j]) || v[j] == '_' || v[j] == '$' || v[j] == '.')) {
                while (j < n && (is_alnum(v[j]) || v[j] == '_' || v[j] == '$' || v[j] == '.'))
                    j++;
                push(s, 'v', i, j - 1, 0, 0);
                i = j;
            } else {
                i++;
            }
        } else if (is_alpha(c) || c == '_' || c >= 128) {
            size_t b = i;
            while (b + 1 < n && word_byte(v[b + 1]))
                b++;
            size_t wn = b - i + 1;
            /* a.b names: one token, its word the first part */
            while (b + 2 < n && v[b + 1] == '.' && (is_alpha(v[b + 2]) || v[b + 2] == '_')) {
                b += 2;
                while (b + 1 < n && (is_alnum(v[b + 1]) || v[b + 1] == '_' || v[b + 1] == '$'))
                    b++;
            }
            const unsigned char *w = v + i;
            unsigned wv = lp__waf_words_find(&sql_words, w, wn);
            char t = (char)(wv & 0xFF);
            int call = paren_after(v, n, b + 1);
            if (call && ((wv & (W_SQL_FUNC | W_ATTACK_FUNC)) || t == 'f'))
                t = 'f';
            else if (!t)
                t = 'b';
            push(s, t, i, b, i, wn);
            s->t[s->nt - 1].attack = (wv & W_ATTACK_FUNC) != 0;
            i = b + 1;
        } else if (c == '(' || c == ')' || c == ',' || c == ';') {
            push(s, (char)c, i, i, 0, 0);
            i++;
        } else if (op_byte(c)) {
            size_t j = i;
            while (j < n && op_byte(v[j]))
                j++;
            int andor = j - i == 2 &&
                        ((v[i] == '|' && v[i + 1] == '|') || (v[i] == '&' && v[i + 1] == '&'));
            push(s, andor ? '&' : 'o', i, j - 1, i, j - i);
            i = j;
        } else {
            push(s, 'x', i, i, 0, 0);
            i++;
        }
    }
    s->i = i;
}

/* ---- structure ---- */

/* token k's class, 0 past the end (or for k < 0: none) */
static char ty(const sql_t *s, int k)
{
    return k >= 0 && k < s->nt ? s->t[k].t : 0;
}

/* token k's word is w (lower case) */
static int weq(const sql_t *s, int k, const char *w)
{
    if (k < 0 || k >= s->nt || s->t[k].wn == 0)
        return 0;
    return eq_ci(s->v + s->t[k].wa, s->t[k].wn, w);
}

static int wprefix(const sql_t *s, int k, const char *p)
{
    size_t m = strlen(p);
    if (k < 0 || k >= s->nt || s->t[k].wn < m)
        return 0;
    return eq_ci(s->v + s->t[k].wa, m, p);
}

static int weq_any(const sql_t *s, int k, const char *const *ws, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (weq(s, k, ws[i]))
            return 1;
    return 0;
}

/* index of the first token from k that is not a comment, or -1 */
static int nextnc(const sql_t *s, int k)
{
    if (k < 0)
        return -1;
    while (k < s->nt && s->t[k].t == 'c')
        k++;
    return k < s->nt ? k : -1;
}

static int operand(char t)
{
    return t == 'n' || t == 's' || t == 'b' || t == 'v' || t == 'f' || t == '(';
}

/* token k is a comparison operator (= < > <= >= <> != <=> ==) */
static int comparison(const sql_t *s, int k)
{
    static const char *const cmp[] = {"=", "<", ">", "<=", ">=", "<>", "!=", "<=>", "=="};
    return ty(s, k) == 'o' && weq_any(s, k, cmp, COUNT(cmp));
}

/* AND/OR at k followed by a comparison of two literals inside any parentheses (OR (1=1): an
 * always-true (or false) condition glued to the application's own. */
static int tautology_at(const sql_t *s, int k)
{
    if (ty(s, k) != '&')
        return 0;
    int j = nextnc(s, k + 1);
    while (j >= 0 && ty(s, j) == '(')
        j = nextnc(s, j + 1);
    char a = ty(s, j);
    if (a != 'n' && a != 's')
        return 0;
    int o = nextnc(s, j + 1);
    if (!comparison(s, o))
        return 0;
    char b = ty(s, nextnc(s, o + 1));
    return b == 'n' || b == 's';
}

/* ; then a statement with its own structure (DROP TABLE, DELETE FROM, SELECT x, ...) */
static int statement_at(const sql_t *s, int j)
{
    static const char *const bare[] = {"select",   "exec",    "execute",
                                       "shutdown", "declare", "waitfor"};
    static const char *const drop[] = {"table", "database", "procedure", "function", "view"};
    static const char *const table_user[] = {"table", "user"};
    int j2 = nextnc(s, j + 1);
    if (weq_any(s, j, bare, COUNT(bare))) {
        /* a statement of one word, or one followed by something other than a bareword (or a
         * stored procedure's name) */
        if (weq(s, j, "shutdown") || weq(s, j, "waitfor") || (j2 >= 0 && ty(s, j2) != 'b') ||
            wprefix(s, j2, "xp_") || wprefix(s, j2, "sp_") || weq(s, j2, "master"))
            return 1;
        return weq(s, j, "declare") && ty(s, j2) == 'v';
    }
    if (weq(s, j, "drop"))
        return weq_any(s, j2, drop, COUNT(drop));
    if (weq(s, j, "delete"))
        return weq(s, j2, "from");
    if (weq(s, j, "insert"))
        return weq(s, j2, "into");
    if (weq(s, j, "truncate"))
        return weq(s, j2, "table");
    if (weq(s, j, "create") || weq(s, j, "alter"))
        return weq_any(s, j2, table_user, COUNT(table_user));
    if (weq(s, j, "update"))
        return weq(s, nextnc(s, j2 >= 0 ? j2 + 1 : -1), "set");
    return 0;
}

/* The index of the first token of t[0..upto) where an injection starts, by the rules that
 * hold anywhere in the value, or -1. */
static int attack_in(const sql_t *s, int upto)
{
    int n = s->nt;
    for (int k = 0; k < upto; k++) {
        char tt = s->t[k].t;
        if (tt == 'U') {
            int j = nextnc(s, k + 1);
            if (weq(s, j, "all") || weq(s, j, "distinct"))
                j = nextnc(s, j + 1);
            if (weq(s, j, "select") || ty(s, j) == '(')
                return k;
        } else if (tt == 'f' && s->t[k].attack) {
            return k;
        } else if (weq(s, k, "waitfor")) {
            if (weq(s, nextnc(s, k + 1), "delay"))
                return k;
        } else if (tt == '(') {
            if (weq(s, nextnc(s, k + 1), "select"))
                return k;
        } else if (weq(s, k, "select")) {
            /* SELECT with a column list (* @@x f() n 'x' a,b) and FROM, or with a call */
            int j = nextnc(s, k + 1);
            char tj = ty(s, j);
            if (tj == 'f' || tj == 'v' || (weq(s, j, "*") && weq(s, j + 1, "from")))
                return k;
            /* a list of two or more: FROM, a comment or the end follows somewhere */
            if ((tj == 'n' || tj == 's' || tj == 'b') && ty(s, j + 1) == ',' && j + 2 < n)
                return k;
        } else if (tt == ';' && k > 0) {
            int j = nextnc(s, k + 1);
            if (j >= 0 && statement_at(s, j))
                return k;
        }
        /* (@@variables alone are not flagged: the Lua original this was ported from meant to
         * but never did, and the rules were tuned against its verdicts) */
    }
    return -1;
}

/* The index of the token where an injection starts by the rules on how the value starts
 * (the first window), or -1. quote: the pass's. */
static int attack_first(const sql_t *s, int quote)
{
    int n = s->nt;
    if (quote) {
        /* A value closing the application's literal: what follows it right away. ') or
         * ('a'='a: the literal closes, then parentheses the application opened. */
        int j = 1;
        while (ty(s, j) == ')')
            j++;
        char tj = ty(s, j);
        if (tj == 'c' || tj == ';')
            return j;
        if (tj == '&') {
            int a0 = j + 1;
            while (ty(s, a0) == '(')
                a0++;
            if (a0 > j + 1)
                j = a0 - 1;
            char a = ty(s, j + 1), o = ty(s, j + 2);
            if (a == 'f')
                return j;
            if (operand(a)) {
                if ((o == 'o' && operand(ty(s, j + 3))) || o == 'c' || o == ';' || (!o && a == 'n'))
                    return j;
            }
        } else if (tj == 'o' && !weq(s, j, "-") && (ty(s, j + 1) == 's' || ty(s, j + 1) == 'n')) {
            char t2 = ty(s, j + 2);
            if (!t2 || t2 == '&' || t2 == 'c' || ty(s, j + 1) == 's')
                return j;
        } else if ((weq(s, j, "order") || weq(s, j, "group")) && weq(s, j + 1, "by")) {
            char x = ty(s, j + 2), y = ty(s, j + 3);
            if (x == 'n' || (x == 'b' && (!y || y == 'c' || y == ',')))
                return j;
        } else if (weq(s, j, "having") || weq(s, j, "limit")) {
            return j;
        }
        return -1;
    }
    /* As written: a call of a SQL function on literals (char(49,50)) that closes with SQL (or
     * nothing) after it, not "count(3) apples"; a number or a literal (after any opening
     * parentheses and a sign: ((-1), then AND/OR with a comparison or a call; a number then
     * ORDER BY. */
    char a = ty(s, 0);
    if (a == 'f' && ty(s, 1) == '(' && (ty(s, 2) == 'n' || ty(s, 2) == 's' || ty(s, 2) == 'v') &&
        (ty(s, 3) == ',' || ty(s, 3) == ')')) {
        int m = 2;
        while (m < n && ty(s, m) != ')')
            m++;
        char after = ty(s, m + 1);
        if (m < n && (!after || after == 'c' || after == '&' || after == 'o' || after == ';'))
            return 0;
    }
    int f = 0;
    while (ty(s, f) == '(')
        f++;
    if (weq(s, f, "-") || weq(s, f, "+"))
        f++;
    a = ty(s, f);
    if (a == 'n' || a == 's') {
        char tj = ty(s, f + 1);
        if (tj == '&') {
            char x = ty(s, f + 2);
            if (x == 'f' || (operand(x) && ty(s, f + 3) == 'o' && operand(ty(s, f + 4))))
                return f + 1;
        } else if ((weq(s, f + 1, "order") || weq(s, f + 1, "group")) && weq(s, f + 2, "by")) {
            return f + 1;
        }
    }
    if (operand(a) && a != '(' && a != 'f') {
        /* the application's parentheses closing after the value's operand, then a tautology */
        int j = nextnc(s, f + 1);
        while (ty(s, j) == ')')
            j = nextnc(s, j + 1);
        if (tautology_at(s, j))
            return j;
    }
    return -1;
}

/* a byte SQL needs somewhere in an injection: [%s'"();,=@#-*\/<>|&] */
static int sql_byte(unsigned char c)
{
    switch (c) {
    case ' ':
    case '\t':
    case '\n':
    case '\v':
    case '\f':
    case '\r':
    case 0xA0:
    case '\'':
    case '"':
    case '(':
    case ')':
    case ';':
    case ',':
    case '=':
    case '@':
    case '#':
    case '-':
    case '*':
    case '/':
    case '<':
    case '>':
    case '|':
    case '&':
        return 1;
    }
    return 0;
}

int lp_ffi_waf_sqli(const char *str, size_t n, lp_waf_detect_t *out)
{
    const unsigned char *v = (const unsigned char *)str;
    if (n < 2)
        return 0;
    size_t i = 0;
    while (i < n && !sql_byte(v[i]))
        i++;
    if (i == n)
        return 0;
    pthread_once(&sql_words_once, sql_words_init);
    static const unsigned char quotes[] = {0, '\'', '"'};
    sql_t s;
    s.v = v;
    s.n = n;
    for (size_t qi = 0; qi < COUNT(quotes); qi++) {
        unsigned char q = quotes[qi];
        if (q ? memchr(v, q, n) == NULL : !sql_written_may(v, n))
            continue;
        if (!sql_start(&s, q))
            continue;
        int k = -1;
        for (int first = 1;; first = 0) {
            sql_tokens(&s);
            int more = s.i < s.n; /* the window is full, bytes are left */
            int upto = more ? SQL_MAX_TOKS - SQL_LOOK : s.nt;
            k = attack_in(&s, upto);
            if (k < 0 && first)
                k = attack_first(&s, q);
            if (k >= 0 || !more)
                break;
            memmove(s.t, s.t + upto, SQL_LOOK * sizeof s.t[0]);
            s.nt = SQL_LOOK;
        }
        if (k < 0)
            continue;
        out->from = s.t[k].a + 1;
        out->to = s.t[s.nt - 1].b + 1;
        size_t f = 0;
        for (int m = k; m < s.nt && f < 6; m++)
            out->fp[f++] = s.t[m].t;
        out->fp[f] = '\0';
        return 1;
    }
    return 0;
}
