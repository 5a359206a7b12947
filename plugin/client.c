/* client: placeholder until written. */
#include "cxone.h"

void cxone_client_open(lua_State *L) { (void)L; }
