/* JSON encoding of Lua values into a cxone_buf, and decoding of JSON text onto the Lua stack. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cxone.h"

/* ---- encoding ---- */

void cxone_json_quote(cxone_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    cxone_buf_addc(out, '"');
    size_t run = 0; /* start of the current run of bytes that need no escape */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
        cxone_buf_add(out, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': cxone_buf_add(out, "\\\"", 2); break;
        case '\\': cxone_buf_add(out, "\\\\", 2); break;
        case '\n': cxone_buf_add(out, "\\n", 2); break;
        case '\r': cxone_buf_add(out, "\\r", 2); break;
        case '\t': cxone_buf_add(out, "\\t", 2); break;
        default: {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            cxone_buf_add(out, esc, 6);
        }
        }
    }
    cxone_buf_add(out, s + run, n - run);
    cxone_buf_addc(out, '"');
}

static int encode_number(lua_State *L, int idx, cxone_buf *out, char *err, size_t errlen)
{
    if (lua_isinteger(L, idx)) {
        cxone_buf_addf(out, "%lld", (long long)lua_tointeger(L, idx));
        return 0;
    }
    lua_Number d = lua_tonumber(L, idx);
    if (isnan(d) || isinf(d)) {
        snprintf(err, errlen, "cannot encode NaN or infinity as JSON");
        return -1;
    }
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%.17g", (double)d);
    /* %.17g is exact but noisy (0.1 -> 0.10000000000000001); prefer the shortest that round-trips. */
    for (int prec = 14; prec < 17; prec++) {
        char t[32];
        snprintf(t, sizeof t, "%.*g", prec, (double)d);
        if (strtod(t, NULL) == (double)d) { memcpy(tmp, t, sizeof t); break; }
    }
    cxone_buf_addstr(out, tmp);
    return 0;
}

/* Is the table at idx a sequence 1..n with nothing else? Sets *n. */
static int is_array(lua_State *L, int idx, size_t *n)
{
    size_t len = (size_t)lua_rawlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER || !lua_isinteger(L, -1)) { lua_pop(L, 1); return 0; }
        lua_Integer k = lua_tointeger(L, -1);
        if (k < 1 || (size_t)k > len) { lua_pop(L, 1); return 0; }
        count++;
    }
    *n = len;
    return count == len;
}

static int wants_object(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx)) return 0;
    lua_pushliteral(L, "__jsontype");
    lua_rawget(L, -2);
    int obj = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "object") == 0;
    lua_pop(L, 2);
    return obj;
}

static int encode_value(lua_State *L, int idx, cxone_buf *out, int depth, char *err, size_t errlen);

static int encode_table(lua_State *L, int idx, cxone_buf *out, int depth, char *err, size_t errlen)
{
    size_t n;
    if (depth > CXONE_JSON_MAX_DEPTH) {
        snprintf(err, errlen, "cannot encode a table nested deeper than %d levels (cycle?)",
                 CXONE_JSON_MAX_DEPTH);
        return -1;
    }
    luaL_checkstack(L, 4, "JSON encoding");
    if (is_array(L, idx, &n) && !(n == 0 && wants_object(L, idx))) {
        cxone_buf_addc(out, '[');
        for (size_t i = 1; i <= n; i++) {
            if (i > 1) cxone_buf_addc(out, ',');
            lua_rawgeti(L, idx, (lua_Integer)i);
            int rc = encode_value(L, lua_gettop(L), out, depth + 1, err, errlen);
            lua_pop(L, 1);
            if (rc) return rc;
        }
        cxone_buf_addc(out, ']');
        return 0;
    }
    cxone_buf_addc(out, '{');
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        /* stack: ... key value */
        int kt = lua_type(L, -2);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
            lua_pop(L, 2);
            snprintf(err, errlen, "cannot encode a table key of type %s", lua_typename(L, kt));
            return -1;
        }
        if (!first) cxone_buf_addc(out, ',');
        first = 0;
        if (kt == LUA_TSTRING) {
            size_t kl;
            const char *k = lua_tolstring(L, -2, &kl);
            cxone_json_quote(out, k, kl);
        } else {
            lua_pushvalue(L, -2); /* copy: tostring on the key itself would confuse lua_next */
            size_t kl;
            const char *k = lua_tolstring(L, -1, &kl);
            cxone_json_quote(out, k, kl);
            lua_pop(L, 1);
        }
        cxone_buf_addc(out, ':');
        int rc = encode_value(L, lua_gettop(L), out, depth + 1, err, errlen);
        lua_pop(L, 1);
        if (rc) { lua_pop(L, 1); return rc; }
    }
    cxone_buf_addc(out, '}');
    return 0;
}

static int encode_value(lua_State *L, int idx, cxone_buf *out, int depth, char *err, size_t errlen)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL: cxone_buf_add(out, "null", 4); return 0;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx)) cxone_buf_add(out, "true", 4);
        else cxone_buf_add(out, "false", 5);
        return 0;
    case LUA_TNUMBER: return encode_number(L, idx, out, err, errlen);
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        cxone_json_quote(out, s, n);
        return 0;
    }
    case LUA_TTABLE: return encode_table(L, idx, out, depth, err, errlen);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { cxone_buf_add(out, "null", 4); return 0; }
        /* fall through */
    default:
        snprintf(err, errlen, "cannot encode a value of type %s as JSON", luaL_typename(L, idx));
        return -1;
    }
}

int cxone_json_encode(lua_State *L, int idx, cxone_buf *out, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    return encode_value(L, idx, out, 0, err, errlen);
}

/* ---- decoding ---- */

typedef struct {
    lua_State *L;
    const char *s, *p, *end;
    char *err;
    size_t errlen;
    cxone_buf *sb; /* scratch for strings with escapes (GC-owned, so an error cannot leak it) */
    const char *key; /* a top-level member to report the kind of (NULL: none) */
    size_t keylen;
    char kind;       /* first byte of that member's last value, 0 if absent */
} parser;

static int perr(parser *ps, const char *what)
{
    snprintf(ps->err, ps->errlen, "invalid JSON at byte %lu: %s",
             (unsigned long)(ps->p - ps->s), what);
    return 0;
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static void add_utf8(cxone_buf *b, unsigned cp)
{
    char u[4];
    int n;
    if (cp < 0x80) { u[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    cxone_buf_add(b, u, (size_t)n);
}

/* Pushes the string starting after the opening quote. Strings with escapes are decoded into
 * the C scratch buffer and pushed only once complete: no luaL_Buffer is ever left open on the
 * Lua stack across an error path (that corrupted the stack on Lua 5.4.4). */
static int parse_string(parser *ps)
{
    const char *start = ps->p;
    /* Fast path: no escapes. */
    while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' && (unsigned char)*ps->p >= 0x20) ps->p++;
    if (ps->p < ps->end && *ps->p == '"') {
        lua_pushlstring(ps->L, start, (size_t)(ps->p - start));
        ps->p++;
        return 1;
    }
    cxone_buf *b = ps->sb;
    b->len = 0;
    cxone_buf_add(b, start, (size_t)(ps->p - start));
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            if (b->oom) return perr(ps, "out of memory");
            lua_pushlstring(ps->L, b->p ? b->p : "", b->len);
            return 1;
        }
        if (c < 0x20) return perr(ps, "control character in string");
        if (c != '\\') {
            const char *run = ps->p;
            while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' && (unsigned char)*ps->p >= 0x20)
                ps->p++;
            cxone_buf_add(b, run, (size_t)(ps->p - run));
            continue;
        }
        if (ps->end - ps->p < 2) break;
        char e = ps->p[1];
        ps->p += 2;
        switch (e) {
        case '"': cxone_buf_addc(b, '"'); break;
        case '\\': cxone_buf_addc(b, '\\'); break;
        case '/': cxone_buf_addc(b, '/'); break;
        case 'b': cxone_buf_addc(b, '\b'); break;
        case 'f': cxone_buf_addc(b, '\f'); break;
        case 'n': cxone_buf_addc(b, '\n'); break;
        case 'r': cxone_buf_addc(b, '\r'); break;
        case 't': cxone_buf_addc(b, '\t'); break;
        case 'u': {
            unsigned cp, lo;
            if (ps->end - ps->p < 4 || hex4(ps->p, &cp) != 0) return perr(ps, "bad \\u escape");
            ps->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u'
                    || hex4(ps->p + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return perr(ps, "unpaired surrogate in \\u escape");
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return perr(ps, "unpaired surrogate in \\u escape");
            }
            add_utf8(b, cp);
            break;
        }
        default: return perr(ps, "bad escape in string");
        }
    }
    return perr(ps, "unterminated string");
}

static int parse_number(parser *ps)
{
    const char *start = ps->p;
    int is_int = 1;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end) return perr(ps, "bad number");
    if (*ps->p == '0') ps->p++;
    else if (*ps->p >= '1' && *ps->p <= '9') { while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++; }
    else return perr(ps, "bad number");
    if (ps->p < ps->end && *ps->p == '.') {
        is_int = 0;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return perr(ps, "bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        is_int = 0;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return perr(ps, "bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    char tmp[64];
    size_t len = (size_t)(ps->p - start);
    if (len >= sizeof tmp) {
        /* Very long numerals: parse through a heap copy is not worth it; treat as a double. */
        ps->sb->len = 0;
        cxone_buf_add(ps->sb, start, len);
        if (cxone_buf_cstr(ps->sb) != 0) return perr(ps, "out of memory");
        lua_pushnumber(ps->L, (lua_Number)strtod(ps->sb->p, NULL));
        return 1;
    }
    memcpy(tmp, start, len);
    tmp[len] = '\0';
#if LUA_VERSION_NUM >= 503
    if (is_int) {
        char *endp;
        errno = 0;
        long long v = strtoll(tmp, &endp, 10);
        if (errno == 0) { lua_pushinteger(ps->L, (lua_Integer)v); return 1; }
    }
#else
    (void)is_int;
#endif
    lua_pushnumber(ps->L, (lua_Number)strtod(tmp, NULL));
    return 1;
}

static int match_lit(parser *ps, const char *lit, size_t n)
{
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0) return 0;
    ps->p += n;
    return 1;
}

static int parse_value(parser *ps, int depth)
{
    lua_State *L = ps->L;
    if (depth > CXONE_JSON_MAX_DEPTH * 2) return perr(ps, "nesting too deep");
    skip_ws(ps);
    if (ps->p >= ps->end) return perr(ps, "unexpected end of input");
    luaL_checkstack(L, 3, "JSON decoding");
    switch (*ps->p) {
    case '{': {
        ps->p++;
        lua_newtable(L);
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == '}') { ps->p++; return 1; }
        for (;;) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return perr(ps, "expected a string key");
            ps->p++;
            if (!parse_string(ps)) return 0;
            int watched = 0;
            if (depth == 0 && ps->key) {
                size_t kl;
                const char *k = lua_tolstring(L, -1, &kl);
                watched = kl == ps->keylen && memcmp(k, ps->key, kl) == 0;
            }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return perr(ps, "expected ':'");
            ps->p++;
            if (watched) { /* the last occurrence wins, as in the table being built */
                skip_ws(ps);
                ps->kind = ps->p < ps->end ? *ps->p : 0;
            }
            if (!parse_value(ps, depth + 1)) return 0;
            lua_rawset(L, -3);
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            if (ps->p < ps->end && *ps->p == '}') { ps->p++; return 1; }
            return perr(ps, "expected ',' or '}'");
        }
    }
    case '[': {
        ps->p++;
        lua_newtable(L);
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ']') { ps->p++; return 1; }
        for (lua_Integer i = 1;; i++) {
            if (!parse_value(ps, depth + 1)) return 0;
            lua_rawseti(L, -2, i);
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            if (ps->p < ps->end && *ps->p == ']') { ps->p++; return 1; }
            return perr(ps, "expected ',' or ']'");
        }
    }
    case '"': ps->p++; return parse_string(ps);
    case 't': if (match_lit(ps, "true", 4)) { lua_pushboolean(L, 1); return 1; } break;
    case 'f': if (match_lit(ps, "false", 5)) { lua_pushboolean(L, 0); return 1; } break;
    case 'n': if (match_lit(ps, "null", 4)) { lua_pushlightuserdata(L, NULL); return 1; } break;
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
    }
    return perr(ps, "unexpected character");
}

int cxone_json_decode_member(lua_State *L, const char *s, size_t n, const char *key, char *kind,
                             char *err, size_t errlen)
{
    int top = lua_gettop(L);
    luaL_checkstack(L, 4, "JSON decoding");
    /* stack: top+1 scratch buffer, top+2 the value being built */
    parser ps = {L, s, s, s + n, err, errlen, cxone_buf_push(L), key, key ? strlen(key) : 0, 0};
    int ok = parse_value(&ps, 0);
    if (kind) *kind = ps.kind;
    if (ok) {
        skip_ws(&ps);
        if (ps.p != ps.end) ok = perr(&ps, "trailing characters after the value");
    }
    cxone_buf_free(ps.sb); /* wiped now, not at the next collection */
    if (!ok) {
        lua_settop(L, top);
        return 0;
    }
    lua_remove(L, top + 1);
    return 1;
}

int cxone_json_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen)
{
    return cxone_json_decode_member(L, s, n, NULL, NULL, err, errlen);
}
