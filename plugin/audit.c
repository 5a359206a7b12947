/* audit: placeholder until written. */
#include "cxone.h"

void cxone_audit_open(lua_State *L) { (void)L; }
