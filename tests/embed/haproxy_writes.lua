-- Loaded by embed:haproxy after the example: a service that tries a write through cxone.haproxy,
-- which must be refused as `unsupported` without a request reaching the API.
local cx = require("cxone.haproxy")
local views = require("cxone.transport.views")
local client = assert(cx.new{ base_url = os.getenv("CXONE_BASE_URL"), client_id = os.getenv("CXONE_CLIENT_ID"),
                              client_secret = os.getenv("CXONE_CLIENT_SECRET") })
core.register_service("cxone_test_write", "http", function(applet)
    local res, err, code = client.core:patch({ actionId = "a1b2c3d4-e5f6-4890-abcd-ef1234567890",
        environmentId = "dev", variables = { { name = "X", value = "1", masked = false } } })
    local status, body = views.error(err, code)
    if res then status, body = 200, "{}" end
    applet:set_status(status)
    applet:add_header("content-type", "application/json")
    applet:start_response()
    applet:send(body)
end)

-- The constructor's refusals, made at load time (as a site script would): config errors, never
-- a raise that would stop HAProxy; a wrong Lua type still raises.
local refusals = {}
do
    local base = os.getenv("CXONE_BASE_URL")
    local c, err, code = cx.new{ base_url = base, client_id = "x" }
    refusals.no_secret = { c == nil, code, err }
    c, err, code = cx.new{ base_url = "http://example.com", client_id = "x", client_secret = "y" }
    refusals.plain_http = { c == nil, code, err }
    refusals.wrong_type = not pcall(cx.new, { base_url = base, client_id = "x", client_secret = "y", retries = "3" })
end
core.register_service("cxone_test_config", "http", function(applet)
    local body = require("cxone.transport.views").encode(refusals)
    applet:set_status(200)
    applet:add_header("content-type", "application/json")
    applet:start_response()
    applet:send(body)
end)
