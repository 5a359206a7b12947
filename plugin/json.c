/* placeholder */
#include "cxone.h"
int cxone_json_encode(lua_State *L, int idx, cxone_buf *out, char *err, size_t errlen) { return -1; }
int cxone_json_decode(lua_State *L, const char *s, size_t n, char *err, size_t errlen) { return 0; }
void cxone_json_quote(cxone_buf *out, const char *s, size_t n) {}
