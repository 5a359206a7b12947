-- The client side of the HTTP/2 test: cxone.core's Client over TLS through nghttpx.
-- usage: lua5.4 h2_client.lua BASE_URL CA_FILE ACTION_ID  (LUA_CPATH finds cxone.core)
-- Prints one line per check; exits non-zero on the first failure.
local core = require("cxone.core")
local base, ca, action = arg[1], arg[2], arg[3]
local function check(cond, what, ...)
    if not cond then
        io.stderr:write("FAIL: ", what, ": ", table.concat({ tostring(select(1, ...)), tostring(select(2, ...)) }, " "), "\n")
        os.exit(1)
    end
    print("ok: " .. what)
end

local c, err, code = core.client{ base_url = base, client_id = "demo-client",
                                  client_secret = "demo-secret-0123456789", ca_file = ca }
check(c, "client created", err, code)
local ok, e2, c2 = c:authenticate()
check(ok, "token over the proxy", e2, c2)
for i = 1, 5 do
    local res, e3, meta = c:get(action, "staging")
    check(res and meta.status == 200, "GET " .. i, e3, meta)
end
local res, e4, c4 = c:patch({ actionId = action, environmentId = "staging",
                              variables = { { name = "H2_CHECK", value = "1", masked = false } } })
check(res, "PATCH", e4, c4)
local st = c:stats()
check(st.connections == 1, "one connection for every request (h2 multiplexes)", st.connections)
c:close()
