/* C-level tests of the shared mechanism: UTF-8 validation, byte buffers, JSON round trips and
 * a deterministic random-input sweep of the JSON decoder (run under valgrind by ctest). */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cxone.h"

/* free and realloc are wrapped (-Wl,--wrap, see CMakeLists.txt) so that a test can see what
 * a buffer held at the moment its memory went back to the allocator. */
void __real_free(void *p);
void *__real_realloc(void *p, size_t n);
static const cxone_buf *watched;   /* the buffer under test */
static const char *canary;
static volatile int canary_released; /* blocks released (freed or realloc'ed) still holding it */

static void inspect(const void *p)
{
    if (!p || !watched || !canary || p != watched->p) return;
    /* only the bytes the buffer wrote are examined (the rest is uninitialised) */
    if (memmem(p, watched->len, canary, strlen(canary))) canary_released++;
}

void __wrap_free(void *p)
{
    inspect(p);
    __real_free(p);
}

void *__wrap_realloc(void *p, size_t n)
{
    inspect(p);
    return __real_realloc(p, n);
}

static int passed, failed;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) passed++;                                                      \
        else { failed++; fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } \
    } while (0)

static void test_utf8(void)
{
    static const struct { const char *s; size_t n; int ok; } cases[] = {
        {"", 0, 1}, {"plain", 5, 1}, {"caf\xc3\xa9", 5, 1}, {"\xe2\x9c\x93", 3, 1},
        {"\xf0\x9f\x98\x80", 4, 1}, {"\xf4\x8f\xbf\xbf", 4, 1},
        {"caf\xe9", 4, 0},              /* Latin-1 */
        {"\xc0\xaf", 2, 0},             /* overlong */
        {"\xe0\x80\xaf", 3, 0},         /* overlong, 3 bytes */
        {"\xed\xa0\x80", 3, 0},         /* surrogate */
        {"\xf4\x90\x80\x80", 4, 0},     /* above U+10FFFF */
        {"\xe2\x9c", 2, 0},             /* cut short */
        {"\x80", 1, 0}, {"\xff", 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        CHECK(cxone_utf8_valid((const unsigned char *)cases[i].s, cases[i].n) == cases[i].ok);
}

static void test_buf(void)
{
    cxone_buf b;
    cxone_buf_init(&b);
    for (int i = 0; i < 10000; i++) cxone_buf_addf(&b, "%d,", i);
    CHECK(!b.oom);
    CHECK(cxone_buf_cstr(&b) == 0);
    CHECK(strncmp(b.p, "0,1,2,", 6) == 0);
    CHECK(b.len == strlen(b.p));
    cxone_buf_free(&b);
    CHECK(b.p == NULL && b.len == 0);
    cxone_buf_init(&b);
    cxone_json_quote(&b, "a\"b\\c\n\x01", 7);
    cxone_buf_cstr(&b);
    CHECK(strcmp(b.p, "\"a\\\"b\\\\c\\n\\u0001\"") == 0);
    cxone_buf_free(&b);
}

static void test_json(lua_State *L)
{
    char err[160];
    static const char *const docs[] = {
        "{\"variables\":[{\"name\":\"A\",\"value\":\"x\",\"masked\":false}],\"environmentId\":\"prod\"}",
        "[1,-2.5,1e3,\"\\u00e9\\ud83d\\ude00\",true,false,null,[],{}]",
    };
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        CHECK(cxone_json_decode(L, docs[i], strlen(docs[i]), err, sizeof err) == 1);
        cxone_buf b;
        cxone_buf_init(&b);
        CHECK(cxone_json_encode(L, -1, &b, err, sizeof err) == 0);
        lua_pop(L, 1);
        /* decoding the encoding gives the same encoding again */
        CHECK(cxone_json_decode(L, b.p, b.len, err, sizeof err) == 1);
        cxone_buf b2;
        cxone_buf_init(&b2);
        CHECK(cxone_json_encode(L, -1, &b2, err, sizeof err) == 0);
        lua_pop(L, 1);
        /* Object members come out in table order, which Lua seeds per state: the same
         * members give the same length; arrays and scalars must match byte for byte. */
        CHECK(b.len == b2.len);
        if (i == 1) CHECK(memcmp(b.p, b2.p, b.len) == 0);
        cxone_buf_free(&b);
        cxone_buf_free(&b2);
    }
    static const char *const bad[] = {"", "{", "[1,]", "\"\\ud800\"", "01", "1 2", "{\"a\" 1}", "\"\x01\""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int top = lua_gettop(L);
        CHECK(cxone_json_decode(L, bad[i], strlen(bad[i]), err, sizeof err) == 0);
        CHECK(lua_gettop(L) == top);
        CHECK(strncmp(err, "invalid JSON at byte", 20) == 0);
    }
    /* deterministic random sweep: never crashes, never leaves the stack unbalanced */
    unsigned int seed = 12345;
    char doc[64];
    int top = lua_gettop(L);
    for (int i = 0; i < 50000; i++) {
        size_t n = (size_t)(rand_r(&seed) % sizeof doc);
        static const char alphabet[] = "{}[]\",:0123456789.eE+-tfnrul\\ \x80\xff";
        for (size_t k = 0; k < n; k++) doc[k] = alphabet[rand_r(&seed) % (sizeof alphabet - 1)];
        if (cxone_json_decode(L, doc, n, err, sizeof err)) lua_pop(L, 1);
    }
    CHECK(lua_gettop(L) == top);
}

/* A parse error inside a long string with escapes (the body a hostile server sent with a
 * 400) used to leave a luaL_Buffer open on the stack: heap corruption on Lua 5.4.4. The
 * state must stay usable and balanced afterwards. */
static void test_json_error_in_long_string(lua_State *L)
{
    char err[160];
    cxone_buf doc;
    cxone_buf_init(&doc);
    for (int i = 0; i < 100; i++) cxone_buf_addc(&doc, '[');
    cxone_buf_addc(&doc, '"');
    for (int i = 0; i < 2000; i++) cxone_buf_add(&doc, "\\n", 2);
    CHECK(!doc.oom);
    /* at every stack depth, so that some failure lands where the stack must grow */
    for (int round = 0; round < 300; round++) {
        int base = lua_gettop(L);
        lua_checkstack(L, round + 1);
        lua_settop(L, base + round);
        int top = lua_gettop(L);
        CHECK(cxone_json_decode(L, doc.p, doc.len, err, sizeof err) == 0);
        CHECK(lua_gettop(L) == top);
        CHECK(strstr(err, "unterminated string") != NULL);
        /* allocate on the stack and heap after the failure, as the client does */
        for (int k = 0; k < 40; k++) lua_createtable(L, 4, 4);
        lua_settop(L, base);
        if (round % 50 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    }
    /* the same with a bad escape and a control character deep inside the string */
    cxone_buf_add(&doc, "\\q", 2);
    CHECK(cxone_json_decode(L, doc.p, doc.len, err, sizeof err) == 0);
    CHECK(strstr(err, "bad escape") != NULL);
    doc.len -= 2;
    cxone_buf_add(&doc, "\x01\"", 2);
    CHECK(cxone_json_decode(L, doc.p, doc.len, err, sizeof err) == 0);
    CHECK(strstr(err, "control character") != NULL);
    /* and a complete one still decodes: 100 nested arrays around a 2000-newline string */
    doc.len -= 2;
    cxone_buf_addc(&doc, '"');
    for (int i = 0; i < 100; i++) cxone_buf_addc(&doc, ']');
    int top = lua_gettop(L);
    CHECK(cxone_json_decode(L, doc.p, doc.len, err, sizeof err) == 1);
    for (int i = 0; i < 100 && lua_type(L, -1) == LUA_TTABLE; i++) {
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
    }
    CHECK(lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) == 2000);
    lua_settop(L, top);
    cxone_buf_free(&doc);
}

/* A buffer that held a secret never hands it back to the allocator: growing copies and
 * wipes (no realloc), freeing wipes first. */
static void test_buf_wiped(void)
{
    static const char secret[] = "canary-masked-\xc3\xa9-value-0123456789";
    cxone_buf b;
    cxone_buf_init(&b);
    watched = &b;
    canary = secret;
    canary_released = 0;
    cxone_buf_addstr(&b, "{\"value\":\"");
    cxone_buf_addstr(&b, secret);
    for (int i = 0; i < 5000; i++) cxone_buf_addc(&b, 'x'); /* several growths */
    CHECK(!b.oom && b.cap > 4096);
    cxone_buf_free(&b);
    CHECK(canary_released == 0);
    /* the JSON encoder's buffer, with the secret in a table */
    lua_State *L = luaL_newstate();
    if (L) {
        /* an array, so the secret is encoded first and the filler then grows the buffer */
        lua_createtable(L, 2, 0);
        lua_pushstring(L, secret);
        lua_rawseti(L, -2, 1);
        char filler[600];
        memset(filler, '.', sizeof filler);
        lua_pushlstring(L, filler, sizeof filler);
        lua_rawseti(L, -2, 2);
        char err[160];
        cxone_buf_init(&b);
        CHECK(cxone_json_encode(L, -1, &b, err, sizeof err) == 0);
        CHECK(b.p && memmem(b.p, b.len, secret, strlen(secret)) && b.cap > 600);
        cxone_buf_free(&b);
        lua_close(L);
    }
    CHECK(canary_released == 0);
    watched = NULL;
    canary = NULL;
}

/* (Scrubbing is tested in test_scrub.c.) */

/* The watcher itself sees a plain free of an unwiped block (so the test above can fail). */
static void test_watcher_sees_leaks(void)
{
    cxone_buf b;
    cxone_buf_init(&b);
    cxone_buf_addstr(&b, "canary-xyz-0123456789");
    watched = &b;
    canary = "canary-xyz";
    canary_released = 0;
    char *p = b.p;
    free(p); /* without wiping */
    CHECK(canary_released == 1);
    watched = NULL;
    canary = NULL;
}

int main(void)
{
    lua_State *L = luaL_newstate();
    if (!L) return 1;
    test_utf8();
    test_buf();
    test_json(L);
    test_json_error_in_long_string(L);
    lua_close(L);
    test_buf_wiped();
    test_watcher_sees_leaks();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
