/* Fields plugins add to a request's access log line (req:log_field(name, value); docs
 * lua-api.md and access-log.md). Stored per request in one small buffer, bounded in number
 * (log.max_fields) and in size, so a plugin cannot make a line grow without bound. */
#ifndef LP_LOGFIELD_H
#define LP_LOGFIELD_H

#include <stdint.h>
#include "common.h"

#define LP_LOG_FIELD_NAME_MAX  64   /* bytes of a name: letters, digits and '_' */
#define LP_LOG_FIELD_VALUE_MAX 2048 /* bytes of one value */
#define LP_LOG_FIELDS_BYTES    8192 /* bytes of all of a request's fields, names included */

/* A field's type: how it is written in a JSON line. */
enum {
    LP_LOGF_UNSET = 0, /* lp_logfields_set: removes the field */
    LP_LOGF_STRING,    /* a JSON string (escaped) */
    LP_LOGF_NUMBER,    /* a JSON number, as its text */
    LP_LOGF_BOOL,      /* true or false */
};

/* A zeroed struct is an empty set. Each entry: name length, type, value length (2 bytes),
 * the name, the value. */
typedef struct {
    char *buf;    /* owned: LP_LOG_FIELDS_BYTES once the first field is set; NULL: none */
    uint16_t len; /* bytes used */
    uint8_t n;    /* fields */
} lp_logfields_t;

typedef struct {
    lp_str_t name, value;
    int type;
} lp_logfield_t;

/* Sets (replacing a field of the same name, which keeps its place) or, with LP_LOGF_UNSET,
 * removes a field. 0; LP_EINVAL: a bad name (empty, too long, a byte other than letters,
 * digits and '_') or type; LP_ELIMIT: a value longer than LP_LOG_FIELD_VALUE_MAX, more than
 * max fields, or no room left; LP_ENOMEM. */
int lp_logfields_set(lp_logfields_t *f, unsigned max, const char *name, size_t nlen, int type,
                     const char *value, size_t vlen);
/* The field named so: 1 with *out filled, or 0. */
int lp_logfields_get(const lp_logfields_t *f, const char *name, size_t nlen, lp_logfield_t *out);
/* Iteration in the order the fields were first set: pos starts at 0; returns the next pos,
 * or 0 past the last field. */
size_t lp_logfields_next(const lp_logfields_t *f, size_t pos, lp_logfield_t *out);
void lp_logfields_clear(lp_logfields_t *f);

#endif
