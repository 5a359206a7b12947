/* validate: checks an override payload against the Integration Engine's rules, reporting every violation. */
#include <string.h>
#include <pcre2.h>

#include "cxone.h"
#include "tiers.h"

#define VALIDATOR_MT "cxone.Validator"
#define VIOLATIONS_MT "cxone.Violations"
#define MAX_REPORTED 1000

#define NAME_PATTERN "^[A-Z_][A-Z0-9_]*$"
#define UUID_PATTERN "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
#define DEFAULT_FORBIDDEN ";|&$`\\'\""

/* Upvalues of validate(): 1 validator userdata, then the interned key strings. */
enum { UV_VALIDATOR = 1, UV_NAME, UV_VALUE, UV_MASKED, UV_DESCRIPTION,
       UV_VARIABLES, UV_ENVIRONMENT_ID, UV_ACTION_ID, UV_COUNT };

typedef struct {
    pcre2_code *uuid_re;
    pcre2_match_data *md;
    int jit;                 /* the pattern is JIT-compiled */
    const char *keys[4];     /* the interned entry keys (name, value, masked, description), held
                              * as upvalues of validate() for as long as it can run */
    unsigned char name_head[256], name_tail[256]; /* NAME_PATTERN as byte classes */
} validator;

/* Byte classes for the single pass over a value. */
enum { B_OK = 0, B_FORBIDDEN = 1, B_NUL = 2, B_HIGH = 4 };

typedef struct {
    lua_State *L;
    int list;          /* stack index of the violations list (nil until the first violation,
                        * so a valid payload allocates nothing) */
    int count;         /* violations recorded */
    int truncated;
} report;

static void add_violation(report *r, const char *code, const char *path, const char *message)
{
    lua_State *L = r->L;
    if (r->count >= MAX_REPORTED) { r->truncated = 1; return; }
    if (r->count == 0) {
        lua_newtable(L);
        lua_replace(L, r->list);
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    lua_rawseti(L, r->list, ++r->count);
}

/* Records a violation; the message is formatted by lua_pushvfstring (%s %d %f only). The
 * arguments are evaluated before anything is pushed, so they may read the stack top. */
static void VIOLATION(report *r, const char *code, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(r->L, fmt, ap);
    va_end(ap);
    add_violation(r, code, path, lua_tostring(r->L, -1));
    lua_pop(r->L, 1);
}

/* NAME_PATTERN, ^[A-Z_][A-Z0-9_]*$, without a regex engine: a class for the first byte and
 * one for the rest (a NUL or any byte >= 0x80 is in neither). */
static int name_valid(const validator *v, const char *s, size_t n)
{
    if (n == 0 || !v->name_head[(unsigned char)s[0]]) return 0;
    for (size_t i = 1; i < n; i++)
        if (!v->name_tail[(unsigned char)s[i]]) return 0;
    return 1;
}

static int re_match(validator *v, pcre2_code *re, const char *s, size_t n)
{
    int rc = v->jit ? pcre2_jit_match(re, (PCRE2_SPTR)s, n, 0, 0, v->md, NULL)
                    : pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, v->md, NULL);
    return rc >= 0;
}

/* ---- name set: open addressing over (pointer, length) of strings the payload holds ---- */

typedef struct {
    const char *s;
    size_t n;
    int index; /* 1-based entry index that introduced it */
} slot;

typedef struct {
    slot *slots;
    size_t mask, used;
} nameset;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* Returns the index already holding s, or 0 after inserting it. */
static int nameset_add(nameset *set, const char *s, size_t n, int index)
{
    size_t i = (size_t)hash_bytes(s, n) & set->mask;
    while (set->slots[i].s) {
        if (set->slots[i].n == n && memcmp(set->slots[i].s, s, n) == 0) return set->slots[i].index;
        i = (i + 1) & set->mask;
    }
    set->slots[i].s = s;
    set->slots[i].n = n;
    set->slots[i].index = index;
    set->used++;
    return 0;
}

/* Sizes the set for `want` names: on the C stack when small, else in a userdata left on the
 * Lua stack for the rest of the call (GC-owned, so an error raised later cannot leak it). */
static void nameset_init(lua_State *L, nameset *set, slot *stackslots, size_t nstack, size_t want)
{
    size_t cap = 16;
    while (cap < want * 2) cap *= 2;
    if (cap <= nstack) {
        set->slots = stackslots;
    } else {
        set->slots = lua_newuserdatauv(L, cap * sizeof(slot), 0);
    }
    memset(set->slots, 0, cap * sizeof(slot));
    set->mask = cap - 1;
    set->used = 0;
}

/* ---- options ---- */

typedef struct {
    lua_Integer max_variables, max_value_length, max_name_length, min_secret_length;
    unsigned char bytes[256];  /* byte classes for values */
    int environments;          /* stack index of the environments list, or 0 for the default */
    int existing;              /* stack index of the existing-names list, or 0 */
    char forbidden[64];        /* printable list for messages */
} options;

#define TIER_ID(name, id, build) id,
static const char *const DEFAULT_ENVS[] = {CXONE_TIER_MATRIX(TIER_ID) NULL};
#undef TIER_ID
#define TIER_ID_LIST(name, id, build) ", " id
/* "dev, staging, prod" (the leading ", " skipped) */
static const char DEFAULT_ENV_LIST[] = CXONE_TIER_MATRIX(TIER_ID_LIST);
#undef TIER_ID_LIST

static void read_options(lua_State *L, int idx, options *o)
{
    size_t flen;
    const char *forbidden;
    o->max_variables = cxone_opt_integer(L, idx, "max_variables", 50);
    o->max_value_length = cxone_opt_integer(L, idx, "max_value_length", 1024);
    o->max_name_length = cxone_opt_integer(L, idx, "max_name_length", 128);
    o->min_secret_length = cxone_opt_integer(L, idx, "min_secret_length", 8);
    forbidden = cxone_opt_string(L, idx, "forbidden", DEFAULT_FORBIDDEN, &flen);
    luaL_argcheck(L, o->max_variables >= 0 && o->max_value_length >= 0 && o->max_name_length > 0
                  && o->min_secret_length >= 0, idx, "limits must not be negative");
    luaL_argcheck(L, flen < 32, idx, "option 'forbidden' holds at most 31 characters");

    memset(o->bytes, B_OK, sizeof o->bytes);
    for (int c = 0x80; c < 256; c++) o->bytes[c] = B_HIGH;
    o->bytes[0] = B_NUL;
    size_t k = 0;
    for (size_t i = 0; i < flen; i++) {
        unsigned char c = (unsigned char)forbidden[i];
        o->bytes[c] |= B_FORBIDDEN;
        o->forbidden[k++] = (char)c;
        o->forbidden[k++] = ' ';
    }
    o->forbidden[k ? k - 1 : 0] = '\0';

    o->environments = o->existing = 0;
    if (!lua_isnoneornil(L, idx)) {
        lua_getfield(L, idx, "environments");
        if (!lua_isnil(L, -1)) {
            luaL_argcheck(L, lua_istable(L, -1), idx, "option 'environments' must be a list of strings");
            o->environments = lua_gettop(L);
        } else {
            lua_pop(L, 1);
        }
        lua_getfield(L, idx, "existing");
        if (!lua_isnil(L, -1)) {
            luaL_argcheck(L, lua_istable(L, -1), idx, "option 'existing' must be a list of names");
            o->existing = lua_gettop(L);
        } else {
            lua_pop(L, 1);
        }
    }
}

static int environment_known(lua_State *L, const options *o, const char *s, size_t n)
{
    if (!o->environments) {
        for (int i = 0; DEFAULT_ENVS[i]; i++)
            if (strlen(DEFAULT_ENVS[i]) == n && memcmp(DEFAULT_ENVS[i], s, n) == 0) return 1;
        return 0;
    }
    lua_Integer len = (lua_Integer)lua_rawlen(L, o->environments);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_rawgeti(L, o->environments, i);
        size_t en;
        const char *e = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &en) : NULL;
        int hit = e && en == n && memcmp(e, s, n) == 0;
        lua_pop(L, 1);
        if (hit) return 1;
    }
    return 0;
}

static void push_environment_list(lua_State *L, const options *o)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (!o->environments) {
        luaL_addstring(&b, DEFAULT_ENV_LIST + 2);
    } else {
        lua_Integer len = (lua_Integer)lua_rawlen(L, o->environments);
        for (lua_Integer i = 1; i <= len && i <= 16; i++) {
            if (i > 1) luaL_addstring(&b, ", ");
            lua_rawgeti(L, o->environments, i);
            if (lua_type(L, -1) == LUA_TSTRING) luaL_addvalue(&b); /* pops it */
            else lua_pop(L, 1);
        }
    }
    luaL_pushresult(&b);
}

/* ---- the rules ---- */

/* Only identifier-like keys are echoed in messages: anything else might be data. */
static int echoable_key(lua_State *L, int idx)
{
    size_t n;
    if (lua_type(L, idx) != LUA_TSTRING) return 0;
    const char *s = lua_tolstring(L, idx, &n);
    if (n == 0 || n > 40 || (s[0] >= '0' && s[0] <= '9')) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    }
    return 1;
}

static void check_string_field(report *r, int tidx, int uv, const char *field, int required,
                               const char **s, size_t *n)
{
    lua_State *L = r->L;
    *s = NULL;
    lua_pushvalue(L, lua_upvalueindex(uv));
    lua_rawget(L, tidx);
    int t = lua_type(L, -1);
    if (t == LUA_TSTRING) {
        *s = lua_tolstring(L, -1, n); /* still held by the payload table */
    } else if (t == LUA_TNIL) {
        if (required) VIOLATION(r, "required", field, "%s is required", field);
    } else {
        VIOLATION(r, "type", field, "%s must be a string, got %s", field, lua_typename(L, t));
    }
    lua_pop(L, 1);
}

/* An entry's path and labels are built only when a violation needs them (most entries have
 * none): `variables[i]`, `variables[i].field`, and the value label `variables[i] (NAME) value`,
 * cut at the same lengths as when they were built up front. */
typedef struct {
    lua_Integer i;
    const char *name;   /* the entry's name when it is well-formed, else NULL */
    size_t nlen;
} entry_ctx;

static const char *entry_path(char *buf, size_t size, const entry_ctx *e, const char *suffix)
{
    snprintf(buf, size, "variables[%lld]%s", (long long)e->i, suffix);
    return buf;
}

static const char *value_label(char *buf /* [220] */, const entry_ctx *e)
{
    char path[64], label[200];
    entry_path(path, sizeof path, e, "");
    if (e->name) snprintf(label, sizeof label, "%s (%.*s)", path, (int)e->nlen, e->name);
    else snprintf(label, sizeof label, "%s", path);
    snprintf(buf, 220, "%s value", label);
    return buf;
}

static void check_value(report *r, const options *o, int masked, const entry_ctx *e,
                        const char *s, size_t n)
{
    int seen = 0;
    unsigned char found[32];
    size_t nfound = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char cls = o->bytes[(unsigned char)s[i]];
        if (cls == B_OK) continue;
        seen |= cls;
        if ((cls & B_FORBIDDEN) && nfound < sizeof found && !memchr(found, s[i], nfound))
            found[nfound++] = (unsigned char)s[i];
    }
    int too_long = (lua_Integer)n > o->max_value_length;
    int too_short = masked == 1 && (lua_Integer)n < o->min_secret_length; /* 2: maybe a secret */
    if (!seen && !too_long && !too_short) return; /* the common case: nothing to report */

    char path[96], label[220];
    entry_path(path, sizeof path, e, ".value");
    value_label(label, e);
    if (too_long)
        VIOLATION(r, "too_long", path, "%s is %d bytes; at most %d are allowed", label, (int)n,
                  (int)o->max_value_length);
    if (seen & B_NUL)
        VIOLATION(r, "nul", path, "%s contains a NUL byte", label);
    if ((seen & B_HIGH) && !cxone_utf8_valid((const unsigned char *)s, n))
        VIOLATION(r, "utf8", path, "%s is not valid UTF-8", label);
    if (seen & B_FORBIDDEN) {
        if (masked) {
            /* Even one character of a secret is not ours to print. */
            VIOLATION(r, "forbidden_char", path,
                      "%s (masked) contains a character that is not allowed (not allowed: %s)",
                      label, o->forbidden);
        } else {
            char chars[2 * sizeof found + 1];
            size_t k = 0;
            for (size_t i = 0; i < nfound; i++) {
                chars[k++] = (char)found[i];
                chars[k++] = ' ';
            }
            chars[k ? k - 1 : 0] = '\0';
            VIOLATION(r, "forbidden_char", path, "%s contains %s, which is not allowed (not allowed: %s)",
                      label, chars, o->forbidden);
        }
    }
    if (too_short)
        VIOLATION(r, "secret_too_short", path, "%s is masked and must be at least %d bytes long",
                  label, (int)o->min_secret_length);
}

/* A field of an entry as one raw pass over the entry's keys found it. */
typedef struct {
    int type;            /* LUA_TNIL when absent */
    const char *s;       /* when a string (held by the entry table) */
    size_t n;
} field;

enum { F_NAME, F_VALUE, F_MASKED, F_DESCRIPTION, F_COUNT };

static void check_entry(report *r, validator *v, const options *o, int entry, lua_Integer i,
                        nameset *names)
{
    lua_State *L = r->L;
    char path[64], fpath[96];
    entry_ctx e = { i, NULL, 0 };
    field f[F_COUNT];
    int masked = 0;

    if (!lua_istable(L, entry)) {
        entry_path(path, sizeof path, &e, "");
        VIOLATION(r, "type", path, "%s must be a table with name, value and masked, got %s", path,
                  luaL_typename(L, entry));
        return;
    }

    /* One raw pass: each known key's value is read as it comes by; any other key is reported
     * (a typo such as maskd = true must not silently send a secret unmasked). The key strings
     * are interned, so a string key is one of them exactly when it is the same object. */
    for (int k = 0; k < F_COUNT; k++) f[k].type = LUA_TNIL;
    lua_pushnil(L);
    while (lua_next(L, entry)) {
        /* -2 key, -1 value */
        int k = F_COUNT;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *key = lua_tostring(L, -2);
            for (k = 0; k < F_COUNT && key != v->keys[k]; k++) {}
        }
        if (k < F_COUNT) {
            f[k].type = lua_type(L, -1);
            if (f[k].type == LUA_TSTRING) f[k].s = lua_tolstring(L, -1, &f[k].n); /* held by the entry */
            else if (f[k].type == LUA_TBOOLEAN) f[k].n = (size_t)lua_toboolean(L, -1);
        } else {
            char kpath[128];
            entry_path(path, sizeof path, &e, "");
            if (echoable_key(L, -2)) {
                snprintf(kpath, sizeof kpath, "%s.%s", path, lua_tostring(L, -2));
                VIOLATION(r, "unknown_key", kpath, "%s has an unknown key '%s' (allowed: name, value, masked, description)",
                          path, lua_tostring(L, -2));
            } else {
                VIOLATION(r, "unknown_key", path, "%s has an unknown key of type %s (allowed: name, value, masked, description)",
                          path, luaL_typename(L, -2));
            }
        }
        lua_pop(L, 1);
    }

    const field *nf = &f[F_NAME];
    if (nf->type == LUA_TSTRING && (lua_Integer)nf->n <= o->max_name_length
        && name_valid(v, nf->s, nf->n)) {
        e.name = nf->s;
        e.nlen = nf->n;
        int first = nameset_add(names, nf->s, nf->n, (int)i);
        if (first) {
            entry_path(fpath, sizeof fpath, &e, ".name");
            VIOLATION(r, "duplicate", fpath, "%s: %s repeats variables[%d]", fpath, nf->s, first);
        }
    } else {
        entry_path(fpath, sizeof fpath, &e, ".name");
        if (nf->type == LUA_TNIL) VIOLATION(r, "required", fpath, "%s is required", fpath);
        else if (nf->type != LUA_TSTRING)
            VIOLATION(r, "type", fpath, "%s must be a string, got %s", fpath, lua_typename(L, nf->type));
        else if ((lua_Integer)nf->n > o->max_name_length)
            VIOLATION(r, "too_long", fpath, "%s is %d bytes; at most %d are allowed", fpath, (int)nf->n,
                      (int)o->max_name_length);
        else
            VIOLATION(r, "name_pattern", fpath, "%s must match %s (upper-case letters, digits, underscores; not starting with a digit)",
                      fpath, NAME_PATTERN);
    }

    const field *mf = &f[F_MASKED];
    if (mf->type == LUA_TBOOLEAN) {
        masked = (int)mf->n;
    } else {
        entry_path(fpath, sizeof fpath, &e, ".masked");
        if (mf->type == LUA_TNIL) VIOLATION(r, "required", fpath, "%s is required (true for secrets)", fpath);
        else VIOLATION(r, "type", fpath, "%s must be a boolean, got %s", fpath, lua_typename(L, mf->type));
        /* masked = "yes" (or 1): meant as a secret, so none of its characters is named */
        if (mf->type != LUA_TNIL) masked = 2;
    }

    const field *vf = &f[F_VALUE];
    if (vf->type == LUA_TSTRING) {
        check_value(r, o, masked, &e, vf->s, vf->n);
    } else {
        entry_path(fpath, sizeof fpath, &e, ".value");
        if (vf->type == LUA_TNIL) VIOLATION(r, "required", fpath, "%s is required", fpath);
        else VIOLATION(r, "type", fpath, "%s must be a string, got %s", fpath, lua_typename(L, vf->type));
    }

    const field *df = &f[F_DESCRIPTION];
    if (df->type == LUA_TSTRING) {
        int too_long = (lua_Integer)df->n > o->max_value_length;
        int bad = !cxone_utf8_valid((const unsigned char *)df->s, df->n) || memchr(df->s, 0, df->n);
        if (too_long || bad) {
            entry_path(fpath, sizeof fpath, &e, ".description");
            if (too_long)
                VIOLATION(r, "too_long", fpath, "%s is %d bytes; at most %d are allowed", fpath, (int)df->n,
                          (int)o->max_value_length);
            if (bad) VIOLATION(r, "utf8", fpath, "%s is not valid UTF-8 text", fpath);
        }
    } else if (df->type != LUA_TNIL) {
        entry_path(fpath, sizeof fpath, &e, ".description");
        VIOLATION(r, "type", fpath, "%s must be a string, got %s", fpath, lua_typename(L, df->type));
    }
}

/***
 * Validates an override payload against the Integration Engine's constraints.
 * Reports every violation, each `{path = "variables[3].value", code = "...", message = "..."}`;
 * no message ever contains a variable's value.
 * @function validate
 * @tparam table payload `{variables = {...}, environmentId = "dev", actionId = "<uuid>"}`
 * @tparam[opt] table opts `max_variables` (50), `max_value_length` (1024), `max_name_length` (128),
 *   `min_secret_length` (8), `forbidden` (the characters values may not hold), `environments`
 *   (the valid environment ids), `existing` (names already in the target environment: the
 *   count limit then applies to the environment after the merge)
 * @treturn[1] boolean true
 * @treturn[2] nil
 * @treturn[2] table the violations (tostring renders them one per line)
 * @treturn[2] string "invalid"
 * @usage local ok, violations = core.validate(payload, {existing = names})
 */
static int l_validate(lua_State *L)
{
    validator *v = lua_touserdata(L, lua_upvalueindex(UV_VALIDATOR));
    options o;
    report r;
    slot stackslots[128];
    nameset names;

    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    read_options(L, 2, &o);

    lua_pushnil(L);
    r.L = L;
    r.list = lua_gettop(L);
    r.count = r.truncated = 0;

    /* top level: unknown keys */
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        int known = lua_rawequal(L, -1, lua_upvalueindex(UV_VARIABLES))
                    || lua_rawequal(L, -1, lua_upvalueindex(UV_ENVIRONMENT_ID))
                    || lua_rawequal(L, -1, lua_upvalueindex(UV_ACTION_ID));
        if (!known) {
            if (echoable_key(L, -1))
                VIOLATION(&r, "unknown_key", lua_tostring(L, -1),
                          "unknown key '%s' (allowed: variables, environmentId, actionId)", lua_tostring(L, -1));
            else
                VIOLATION(&r, "unknown_key", "", "unknown key of type %s (allowed: variables, environmentId, actionId)",
                          luaL_typename(L, -1));
        }
    }

    const char *s;
    size_t n;
    check_string_field(&r, 1, UV_ACTION_ID, "actionId", 1, &s, &n);
    if (s && !re_match(v, v->uuid_re, s, n))
        VIOLATION(&r, "uuid", "actionId", "actionId must be a UUID (8-4-4-4-12 hexadecimal digits)");

    check_string_field(&r, 1, UV_ENVIRONMENT_ID, "environmentId", 1, &s, &n);
    if (s && !environment_known(L, &o, s, n)) {
        push_environment_list(L, &o);
        const char *envs = lua_tostring(L, -1);
        VIOLATION(&r, "environment", "environmentId", "environmentId must be one of %s", envs);
        lua_pop(L, 1);
    }

    lua_pushvalue(L, lua_upvalueindex(UV_VARIABLES));
    lua_rawget(L, 1);
    int vars = lua_gettop(L);
    if (lua_isnil(L, vars)) {
        VIOLATION(&r, "required", "variables", "variables is required (a list of {name, value, masked})");
    } else if (!lua_istable(L, vars)) {
        VIOLATION(&r, "type", "variables", "variables must be a list, got %s", luaL_typename(L, vars));
    } else {
        lua_Integer len = (lua_Integer)lua_rawlen(L, vars), keys = 0;
        lua_pushnil(L);
        while (lua_next(L, vars)) {
            lua_pop(L, 1);
            keys++;
        }
        if (keys != len)
            VIOLATION(&r, "not_sequence", "variables",
                      "variables must be a list (keys 1..n with no holes or other keys)");
        size_t existing_n = o.existing ? (size_t)lua_rawlen(L, o.existing) : 0;
        size_t want = (size_t)len + existing_n;
        nameset_init(L, &names, stackslots, sizeof stackslots / sizeof *stackslots, want);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_rawgeti(L, vars, i);
            check_entry(&r, v, &o, lua_gettop(L), i, &names);
            lua_pop(L, 1);
        }
        if (len > o.max_variables)
            VIOLATION(&r, "too_many", "variables", "%d variables in one payload; at most %d are allowed per environment",
                      (int)len, (int)o.max_variables);
        else if (o.existing) {
            lua_Integer elen = (lua_Integer)existing_n;
            for (lua_Integer i = 1; i <= elen; i++) {
                lua_rawgeti(L, o.existing, i);
                if (lua_type(L, -1) == LUA_TSTRING) {
                    size_t en;
                    const char *e = lua_tolstring(L, -1, &en);
                    nameset_add(&names, e, en, 0);
                }
                lua_pop(L, 1);
            }
            if ((lua_Integer)names.used > o.max_variables)
                VIOLATION(&r, "too_many", "variables",
                          "after the merge the environment would hold %d variables; at most %d are allowed",
                          (int)names.used, (int)o.max_variables);
        }
    }

    if (r.truncated) {
        r.count--; /* make room: overwrite the last with a note */
        r.truncated = 0;
        add_violation(&r, "too_many_violations", "", "more violations than can be listed; fix these first");
    }
    if (r.count == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushvalue(L, r.list);
    luaL_setmetatable(L, VIOLATIONS_MT);
    lua_pushliteral(L, "invalid");
    return 3;
}

/* tostring(violations): one "path: message" per line. */
static int violations_tostring(lua_State *L)
{
    luaL_Buffer b;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, '\n');
        lua_rawgeti(L, 1, i);
        if (lua_istable(L, -1)) lua_getfield(L, -1, "message");
        else lua_pushnil(L);
        lua_remove(L, -2);
        if (lua_type(L, -1) == LUA_TSTRING) luaL_addvalue(&b); /* pops the message */
        else lua_pop(L, 1);
    }
    luaL_pushresult(&b);
    return 1;
}

static int validator_gc(lua_State *L)
{
    validator *v = luaL_checkudata(L, 1, VALIDATOR_MT);
    if (v->md) pcre2_match_data_free(v->md);
    if (v->uuid_re) pcre2_code_free(v->uuid_re);
    v->md = NULL;
    v->uuid_re = NULL;
    return 0;
}

static pcre2_code *compile(lua_State *L, const char *pattern, int *jit)
{
    int errcode;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_DOLLAR_ENDONLY,
                                   &errcode, &offset, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof msg);
        luaL_error(L, "cxone.core: cannot compile pattern %s at offset %d: %s", pattern, (int)offset, msg);
    }
    if (pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) != 0) *jit = 0;
    return re;
}

/***
 * The default tier matrix, in promotion order: a list of `{name, id, build}`
 * (development → dev, staging → staging, production → prod; builds on the first two).
 * The one definition that validate, `cxone.tiers` and cxone-sim share.
 * @table TIERS
 */
static void push_tiers(lua_State *L)
{
    struct { const char *name, *id; int build; } const t[] = {
#define TIER_ROW(name, id, build) {name, id, build},
        CXONE_TIER_MATRIX(TIER_ROW)
#undef TIER_ROW
    };
    lua_createtable(L, (int)(sizeof t / sizeof t[0]), 0);
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, t[i].name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, t[i].id);
        lua_setfield(L, -2, "id");
        lua_pushboolean(L, t[i].build);
        lua_setfield(L, -2, "build");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

void cxone_validate_open(lua_State *L)
{
    /* module table at -1 */
    push_tiers(L);
    lua_setfield(L, -2, "TIERS");
    validator *v = cxone_newudata_gc(L, sizeof *v, VALIDATOR_MT, validator_gc);
    v->jit = 1;
    for (int c = 'A'; c <= 'Z'; c++) v->name_head[c] = v->name_tail[c] = 1;
    for (int c = '0'; c <= '9'; c++) v->name_tail[c] = 1;
    v->name_head['_'] = v->name_tail['_'] = 1;
    v->uuid_re = compile(L, UUID_PATTERN, &v->jit);
    v->md = pcre2_match_data_create(1, NULL);
    if (!v->md) luaL_error(L, "cxone.core: out of memory");

    if (luaL_newmetatable(L, VIOLATIONS_MT)) {
        lua_pushcfunction(L, violations_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushliteral(L, "cxone.Violations");
        lua_setfield(L, -2, "__name");
    }
    lua_pop(L, 1);

    /* upvalues: validator, then interned keys */
    lua_pushliteral(L, "name");
    lua_pushliteral(L, "value");
    lua_pushliteral(L, "masked");
    lua_pushliteral(L, "description");
    for (int k = 0; k < 4; k++) v->keys[k] = lua_tostring(L, -4 + k);
    lua_pushliteral(L, "variables");
    lua_pushliteral(L, "environmentId");
    lua_pushliteral(L, "actionId");
    lua_pushcclosure(L, l_validate, UV_COUNT - 1);
    lua_setfield(L, -2, "validate");
}
