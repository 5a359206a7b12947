/* libFuzzer harness: the audit trail verifier (plugin/audit.c), on files made of the input.
 * The input is split at each "\n--8<--\n" into the files of a rotated trail (at most 4).
 * Verification must never raise; its report (opts.report) must be consistent: ok exactly when
 * it lists no error, an error is never "io" (the files exist), and names a file of the trail
 * and a line inside it. And the writer agrees with the verifier: a single-file trail that
 * verifies opens for appending (core.audit_open reads its head), takes one record, and then
 * verifies with one record more (two with a torn tail: the writer records dropping it). */
#include <stdint.h>
#include <unistd.h>

#include "fuzz.h"

#define MAXF 4
static char paths[MAXF][64];

static void cleanup(void)
{
    for (int i = 0; i < MAXF; i++)
        if (paths[i][0]) unlink(paths[i]);
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f != NULL, "cannot write %s", path);
    FUZZ_CHECK(fwrite(p, 1, n, f) == n || n == 0, "short write to %s", path);
    FUZZ_CHECK(fclose(f) == 0, "cannot close %s", path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    if (!paths[0][0]) {
        const char *tmp = getenv("TMPDIR"); /* else memory-backed when there is one */
        if (!tmp) tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        for (int i = 0; i < MAXF; i++)
            snprintf(paths[i], sizeof paths[i], "%.30s/cxone-fuzz-audit.%ld.%d", tmp, (long)getpid(), i);
        atexit(cleanup);
    }
    static const char sep[] = "\n--8<--\n";
    int nf = 0;
    size_t lines[MAXF];
    const uint8_t *p = data, *end = data + size;
    while (nf < MAXF) {
        const uint8_t *cut = nf < MAXF - 1 ? memmem(p, (size_t)(end - p), sep, sizeof sep - 1) : NULL;
        const uint8_t *stop = cut ? cut + 1 : end; /* the newline ends this file */
        write_file(paths[nf], p, (size_t)(stop - p));
        lines[nf] = 1;
        for (const uint8_t *q = p; q < stop; q++) lines[nf] += *q == '\n';
        nf++;
        if (!cut) break;
        p = cut + sizeof sep - 1;
    }

    fuzz_push_core(L, "audit_verify");
    if (nf == 1) {
        lua_pushstring(L, paths[0]);
    } else {
        lua_createtable(L, nf, 0);
        for (int i = 0; i < nf; i++) {
            lua_pushstring(L, paths[i]);
            lua_rawseti(L, -2, i + 1);
        }
    }
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "report"); /* the report, failed or not */
    int rc = lua_pcall(L, 2, 1, 0);
    FUZZ_CHECK(rc == LUA_OK, "audit_verify raised: %s", lua_tostring(L, -1));
    int rep = lua_gettop(L);
    FUZZ_CHECK(lua_istable(L, rep), "audit_verify returned %s, not a report", luaL_typename(L, rep));
    lua_getfield(L, rep, "records");
    FUZZ_CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0, "report.records is not a count");
    lua_getfield(L, rep, "ok");
    FUZZ_CHECK(lua_isboolean(L, -1), "report.ok is not a boolean");
    int ok = lua_toboolean(L, -1);
    lua_getfield(L, rep, "errors");
    FUZZ_CHECK(lua_istable(L, -1), "report.errors is not a list");
    lua_rawgeti(L, -1, 1);
    FUZZ_CHECK(ok == lua_isnil(L, -1), "report.ok disagrees with report.errors");
    if (!ok) {
        int e = lua_gettop(L);
        lua_getfield(L, e, "code");
        const char *code = lua_tostring(L, -1);
        lua_getfield(L, e, "message");
        FUZZ_CHECK(code && strcmp(code, "io") != 0, "code %s (message %s)", code ? code : "nil",
                   lua_tostring(L, -1));
        lua_getfield(L, e, "file");
        const char *file = lua_tostring(L, -1);
        int fi = -1;
        for (int i = 0; file && i < nf; i++)
            if (strcmp(file, paths[i]) == 0) fi = i;
        FUZZ_CHECK(fi >= 0, "the error names no file of the trail");
        lua_getfield(L, e, "line");
        if (!lua_isnil(L, -1)) {
            lua_Integer line = lua_tointeger(L, -1);
            FUZZ_CHECK(lua_isinteger(L, -1) && line >= 1 && (size_t)line <= lines[fi],
                       "line %lld outside file %d (%zu lines)", (long long)line, fi, lines[fi]);
        }
    }
    lua_getfield(L, rep, "records");
    lua_Integer before = lua_tointeger(L, -1);
    lua_getfield(L, rep, "torn");
    int torn = lua_istable(L, -1) && lua_rawlen(L, -1) > 0; /* the writer records dropping it */
    if (ok && nf == 1) {
        fuzz_push_core(L, "audit_open");
        lua_pushstring(L, paths[0]);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "none");
        lua_setfield(L, -2, "sync");
        FUZZ_CHECK(lua_pcall(L, 2, 3, 0) == LUA_OK, "audit_open raised: %s", lua_tostring(L, -1));
        FUZZ_CHECK(lua_isuserdata(L, -3), "a trail that verifies does not open: %s (%s)",
                   lua_tostring(L, -2), lua_tostring(L, -1));
        lua_pop(L, 2);
        int a = lua_gettop(L);
        lua_getfield(L, a, "append");
        lua_pushvalue(L, a);
        lua_createtable(L, 0, 3);
        lua_pushliteral(L, "fuzz");
        lua_setfield(L, -2, "event");
        lua_pushliteral(L, "success");
        lua_setfield(L, -2, "status");
        FUZZ_CHECK(lua_pcall(L, 2, 3, 0) == LUA_OK, "append raised: %s", lua_tostring(L, -1));
        FUZZ_CHECK(!lua_isnil(L, -3), "append failed: %s (%s)", lua_tostring(L, -2), lua_tostring(L, -1));
        lua_pop(L, 3);
        lua_getfield(L, a, "close");
        lua_pushvalue(L, a);
        FUZZ_CHECK(lua_pcall(L, 1, 3, 0) == LUA_OK, "close raised: %s", lua_tostring(L, -1));
        FUZZ_CHECK(!lua_isnil(L, -3), "close failed: %s", lua_tostring(L, -2));
        fuzz_push_core(L, "audit_verify");
        lua_pushstring(L, paths[0]);
        FUZZ_CHECK(lua_pcall(L, 1, 3, 0) == LUA_OK, "audit_verify raised: %s", lua_tostring(L, -1));
        FUZZ_CHECK(lua_istable(L, -3), "the trail no longer verifies after an append: %s",
                   lua_tostring(L, -2));
        lua_getfield(L, -3, "records");
        lua_Integer after = lua_tointeger(L, -1);
        FUZZ_CHECK(after == before + 1 + torn, "%lld records after an append to %lld (torn tail: %d)",
                   (long long)after, (long long)before, torn);
    }
    fuzz_done(L);
    return 0;
}
