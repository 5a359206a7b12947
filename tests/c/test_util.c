/* C-level tests of the shared mechanism: UTF-8 validation, byte buffers, JSON round trips and
 * a deterministic random-input sweep of the JSON decoder (run under valgrind by ctest). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cxone.h"

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
        for (size_t k = 0; k < n; k++) doc[k] = "{}[]\",:0123456789.eE+-tfnrul\\ \x80\xff"[rand_r(&seed) % 34];
        if (cxone_json_decode(L, doc, n, err, sizeof err)) lua_pop(L, 1);
    }
    CHECK(lua_gettop(L) == top);
}

int main(void)
{
    lua_State *L = luaL_newstate();
    if (!L) return 1;
    test_utf8();
    test_buf();
    test_json(L);
    lua_close(L);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
