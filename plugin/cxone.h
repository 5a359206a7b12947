/* Internal interface shared by the C files of cxone.core (not installed). */
#ifndef CXONE_H
#define CXONE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "compat.h"
#include "scrub.h"

#define CXONE_VERSION "0.1.0"
#define CXONE_EXPORT __attribute__((visibility("default")))

/* Stack discipline, checked in sanitizer and fuzzing builds (CXONE_CHECKS): Debian's Lua is
 * built without API checks, so a pop below the running function's frame would silently
 * overwrite its caller's values. There, lua_pop checks its count and CXONE_STACK_IS(L, n)
 * states the stack height a helper must have reached; either aborts naming the place. */
#ifdef CXONE_CHECKS
void cxone_stack_fault(const char *file, int line, int want, int got) __attribute__((noreturn));
#define CXONE_STACK_IS(L, want)                                                       \
    do {                                                                              \
        int cxone_g_ = lua_gettop(L), cxone_w_ = (want);                              \
        if (cxone_g_ != cxone_w_) cxone_stack_fault(__FILE__, __LINE__, cxone_w_, cxone_g_); \
    } while (0)
#undef lua_pop
static inline void cxone_checked_pop(lua_State *L, int n, const char *file, int line)
{
    if (n > lua_gettop(L)) cxone_stack_fault(file, line, -n, lua_gettop(L));
    lua_settop(L, -n - 1);
}
#define lua_pop(L, n) cxone_checked_pop((L), (n), __FILE__, __LINE__)
#else
#define CXONE_STACK_IS(L, want) ((void)0)
#endif

/* Each file registers its functions into the module table at the top of the stack. */
void cxone_util_open(lua_State *L);
void cxone_validate_open(lua_State *L);
void cxone_drift_open(lua_State *L);
void cxone_audit_open(lua_State *L);
void cxone_client_open(lua_State *L);
void cxone_statefile_open(lua_State *L);
void cxone_signal_open(lua_State *L);
void cxone_engine_lua_open(lua_State *L);

/* The one failure convention: pushes nil, message, code and returns 3.
 * The message is formatted with vsnprintf (no Lua error can escape), so it is safe to call
 * with resources still held; it must never be given a secret to format. */
int cxone_fail(lua_State *L, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Pushes a zeroed userdata of size bytes whose metatable tname (created on first use) has
 * gc as __gc: scratch state that must be released even if a Lua error unwinds the call. */
void *cxone_newudata_gc(lua_State *L, size_t size, const char *tname, lua_CFunction gc);
/* Pushes a userdata holding an empty buffer whose memory is freed by __gc, and returns it:
 * for code that may raise Lua errors while the buffer is in use. */
cxone_buf *cxone_buf_push(lua_State *L);

/* JSON (plugin/json.c). null is a NULL light userdata, as with lua-cjson. */
#define CXONE_JSON_MAX_DEPTH 64
/* Appends a JSON string literal for s[0..n) (escapes control characters, quote, backslash). */
void cxone_json_quote(cxone_buf *out, const char *s, size_t n);
/* Encodes the value at idx. Returns 0, or -1 with a message in err (cycle or depth, a
 * function/userdata value, NaN or infinity, a non-string key). Never raises except on
 * Lua memory errors. An empty table encodes as [] unless its metatable has
 * __jsontype = "object". */
int cxone_json_encode(lua_State *L, int idx, cxone_buf *out, char *err, size_t errlen);
/* Decodes s[0..n) and pushes the value (returns 1), or pushes nothing and returns 0 with a
 * message in err (it never contains the input). */
int cxone_json_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen);
/* The same, also reporting in *kind the first byte of the value of the top-level member `key`
 * ('[' for an array, '"' for a string, ...; the last one when repeated, as in the decoded
 * table), or 0 when the value is not an object or has no such member: a shape check made by
 * the one reading of the text. */
int cxone_json_decode_member(lua_State *L, const char *s, size_t n, const char *key, char *kind,
                             char *err, size_t errlen);

/* SHA-256 and HMAC-SHA-256 through OpenSSL's libcrypto, as lowercase hex (65 bytes with NUL).
 * Return 0, or -1 if libcrypto failed. */
int cxone_sha256_hex(const void *data, size_t n, char out[65]);
int cxone_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t n, char out[65]);

/* Checks that s[0..n) is well-formed UTF-8 (no overlongs, no surrogates); 1 if valid. */
int cxone_utf8_valid(const unsigned char *s, size_t n);

/* Reads an optional field of the options table at idx, raising an argument error naming
 * the field when it has the wrong type. */
lua_Integer cxone_opt_integer(lua_State *L, int idx, const char *field, lua_Integer def);
lua_Number cxone_opt_number(lua_State *L, int idx, const char *field, lua_Number def);
int cxone_opt_boolean(lua_State *L, int idx, const char *field, int def);
/* Returns the string (valid while the options table holds it) or def. */
const char *cxone_opt_string(lua_State *L, int idx, const char *field, const char *def, size_t *len);
/* Pushes t[field] read raw (returns its type): a caller's table runs no metamethod inside the
 * module, so strings read this way stay referenced by the table after they are popped. */
int cxone_rawfield(lua_State *L, int t, const char *field);
/* Registers a userdata class once: metatable `name` with the metamethods, and the methods as
 * its __index table. Leaves the stack as it was. */
void cxone_class(lua_State *L, const char *name, const luaL_Reg *metameth, const luaL_Reg *meth);

#endif
