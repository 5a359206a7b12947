/* drift: placeholder until written. */
#include "cxone.h"

void cxone_drift_open(lua_State *L) { (void)L; }
