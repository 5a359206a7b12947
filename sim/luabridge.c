/* luabridge.c: creates the embedded Lua 5.4 state, loads sim.lua, and gives it the few native
 * helpers it needs (randomness, clock, SHA-256, atomic state writes, connection count). */
#include "sim.h"
#include "sim_embedded.h"
#include "tiers.h"

#include <lauxlib.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

static const char *state_path;          /* --state, or NULL */
static char *journal_path;              /* <state>.journal, or NULL */
static int module_ref = LUA_NOREF;      /* registry slot of sim.lua's module table */
static unsigned long connections;       /* TCP connections accepted (MHD thread only) */

unsigned long sim_connections_total(void) { return connections; }
void sim_connections_add(void) { connections++; }

static const char HEX[] = "0123456789abcdef";

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[in[i] >> 4];
        out[2 * i + 1] = HEX[in[i] & 15];
    }
}

/* simc.random_hex(nbytes) -> string of 2*nbytes hex digits from /dev/urandom */
static int l_random_hex(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n > 0 && n <= 64, 1, "between 1 and 64 bytes");
    unsigned char buf[64];
    char hex[128];
    if (sim_random_bytes(buf, (size_t)n) != 0) return luaL_error(L, "cannot read /dev/urandom");
    to_hex(buf, (size_t)n, hex);
    lua_pushlstring(L, hex, (size_t)n * 2);
    return 1;
}

/* simc.now() -> monotonic seconds (float) */
static int l_now(lua_State *L)
{
    lua_pushnumber(L, sim_monotonic());
    return 1;
}

/* simc.time() -> wall-clock seconds since the epoch (float), for epoch-style reset headers */
static int l_time(lua_State *L)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return luaL_error(L, "clock_gettime failed");
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

/* simc.sha256_hex(s) -> hex digest */
static int l_sha256_hex(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE];
    if (!EVP_Digest(s, len, md, &mdlen, EVP_sha256(), NULL)) return luaL_error(L, "sha256 failed");
    to_hex(md, mdlen, hex);
    lua_pushlstring(L, hex, 2 * (size_t)mdlen);
    return 1;
}

/* simc.persist(text) -> true | nil, message. Writes the state file (if --state) atomically. */
static int l_persist(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[512];
    if (!state_path) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (sim_atomic_write(state_path, s, len, err, sizeof err) != 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* simc.journal_append(line) -> true | nil, message. Appends one change record to the journal
 * and makes it durable (no-op without --state). */
static int l_journal_append(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[512];
    if (state_path && sim_journal_append(s, len, err, sizeof err) != 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* simc.journal_reset() -> true | nil, message: empties the journal after a snapshot. */
static int l_journal_reset(lua_State *L)
{
    char err[512];
    if (state_path && sim_journal_reset(err, sizeof err) != 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* simc.journal_size() -> bytes in the journal */
static int l_journal_size(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)sim_journal_size());
    return 1;
}

/* simc.connections() -> TCP connections accepted so far */
static int l_connections(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)connections);
    return 1;
}

/* simc.tiers: the environment ids every action has, in promotion order (plugin/tiers.h, the
 * same matrix the client's validate and cxone.tiers read) */
static void push_tier_ids(lua_State *L)
{
    static const char *const ids[] = {
#define TIER_ID(name, id, build) id,
        CXONE_TIER_MATRIX(TIER_ID)
#undef TIER_ID
    };
    lua_createtable(L, (int)(sizeof ids / sizeof ids[0]), 0);
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        lua_pushstring(L, ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static int open_simc(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "random_hex", l_random_hex },
        { "now", l_now },
        { "time", l_time },
        { "sha256_hex", l_sha256_hex },
        { "persist", l_persist },
        { "journal_append", l_journal_append },
        { "journal_reset", l_journal_reset },
        { "journal_size", l_journal_size },
        { "connections", l_connections },
        { NULL, NULL },
    };
    luaL_newlib(L, fns);
    push_tier_ids(L);
    lua_setfield(L, -2, "tiers");
    return 1;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(non-string error)", 1);
    return 1;
}

int sim_lua_prepare(lua_State *L, const char *name)
{
    lua_pushcfunction(L, traceback);
    int h = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, module_ref);   /* h+1: module table */
    lua_getfield(L, -1, name);                        /* h+2: module[name] */
    lua_remove(L, -2);                                /* h+1: the function */
    return h;
}

/* Loads the file's text into the config table at the top of the stack under `key`.
 * A missing file is not an error (state: start from demo data); any other failure is. */
static int load_text(lua_State *L, const char *path, const char *key, int missing_ok,
                     char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    struct stat st;
    if (missing_ok && stat(path, &st) != 0 && errno == ENOENT) return 0;
    if (sim_read_file(path, &text, &len, err, errlen) != 0) return -1;
    lua_pushlstring(L, text, len);
    lua_setfield(L, -2, key);
    free(text);
    return 0;
}

lua_State *sim_lua_open(const struct sim_options *opt, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "cannot create the Lua state");
        return NULL;
    }
    luaL_openlibs(L);
    luaL_requiref(L, "simc", open_simc, 0);
    lua_pop(L, 1);

    lua_pushcfunction(L, traceback);
    if (luaL_loadbuffer(L, (const char *)sim_lua, sim_lua_len, "=sim.lua") != LUA_OK
        || lua_pcall(L, 0, 1, -2) != LUA_OK) {
        snprintf(err, errlen, "sim.lua: %s", lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);   /* traceback */

    /* module.init(config) */
    int h = sim_lua_prepare(L, "init");
    lua_createtable(L, 0, 10);                       /* h+2: config */
    lua_pushlstring(L, (const char *)sim_demo_state, sim_demo_state_len);
    lua_setfield(L, -2, "demo_text");
    lua_pushinteger(L, opt->token_ttl);
    lua_setfield(L, -2, "token_ttl");
    lua_pushnumber(L, opt->rate_limit);
    lua_setfield(L, -2, "rate_limit");
    lua_pushstring(L, opt->rate_limit_headers);
    lua_setfield(L, -2, "rate_limit_headers");
    lua_pushstring(L, opt->rate_limit_reset);
    lua_setfield(L, -2, "rate_limit_reset");
    if (opt->state_path) {
        lua_pushstring(L, opt->state_path);
        lua_setfield(L, -2, "state_path");
        if (load_text(L, opt->state_path, "state_text", 1, err, errlen) != 0) goto fail;
        size_t plen = strlen(opt->state_path);
        journal_path = malloc(plen + sizeof ".journal");
        if (!journal_path) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        memcpy(journal_path, opt->state_path, plen);
        memcpy(journal_path + plen, ".journal", sizeof ".journal");
        if (load_text(L, journal_path, "journal_text", 1, err, errlen) != 0) goto fail;
    }
    if (opt->scenario_path) {
        if (load_text(L, opt->scenario_path, "scenario_text", 0, err, errlen) != 0) goto fail;
    }
    /* Writes are enabled only after init, so a bad file is never overwritten... */
    if (lua_pcall(L, 1, 2, h) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (!lua_toboolean(L, -2)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "init failed");
        goto fail;
    }
    lua_settop(L, 0);
    /* ...and now the state file exists and holds the loaded (or demo) data, with the journal
     * replayed into it and emptied. */
    if (journal_path && sim_journal_open(journal_path, err, errlen) != 0) goto fail_noclean;
    state_path = opt->state_path;
    if (state_path && sim_lua_flush(L) != 0) {
        snprintf(err, errlen, "cannot write the state file %s", state_path);
        goto fail_noclean;
    }
    return L;
fail:
    lua_settop(L, 0);
fail_noclean:
    state_path = NULL;
    sim_journal_close();
    free(journal_path);
    journal_path = NULL;
    lua_close(L);
    return NULL;
}

int sim_lua_flush(lua_State *L)
{
    if (!state_path) return 0;
    int h = sim_lua_prepare(L, "flush");
    int rc = lua_pcall(L, 0, 2, h);
    int ok = rc == LUA_OK && lua_toboolean(L, -2);
    if (!ok) fprintf(stderr, "cxone-sim: cannot write the state file: %s\n", lua_tostring(L, -1));
    lua_settop(L, h - 1);
    return ok ? 0 : -1;
}

void sim_lua_close(lua_State *L)
{
    if (L) lua_close(L);
    sim_journal_close();
    free(journal_path);
    journal_path = NULL;
}
