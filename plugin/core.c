/* luaopen_cxone_core: builds the module table from each concern's opener. */
#include "cxone.h"

CXONE_EXPORT int luaopen_cxone_core(lua_State *L)
{
    lua_newtable(L);
    cxone_util_open(L);
    cxone_validate_open(L);
    cxone_drift_open(L);
    cxone_audit_open(L);
    cxone_client_open(L);
    cxone_statefile_open(L);
    cxone_signal_open(L);
    cxone_engine_lua_open(L);
    lua_pushliteral(L, CXONE_VERSION);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
