-- The handlers of examples/haproxy/haproxy.cfg: guard (an action), admin (vars, drift) and the
-- drift exporter (a task). Loaded once with lua-load: the client and its token are shared by both
-- threads. HAProxy's API is the global `core`: nothing here shadows it.
local cx = require("cxone.haproxy")
local views = require("cxone.transport.views")
local json = require("cjson.safe").new()

local function addresses(spec)
    -- "host:port=ip:port,...": where to connect (the httpclient resolves names only through a
    -- resolvers section, and an IP-literal URL fails the certificate check)
    local out = {}
    for k, v in tostring(spec or ""):gmatch("([^,=]+)=([^,]+)") do out[k] = v end
    return out
end

local client, cerr = cx.new{
    base_url = os.getenv("CXONE_BASE_URL"),
    token_url = os.getenv("CXONE_TOKEN_URL"),
    client_id = os.getenv("CXONE_CLIENT_ID") or "",
    client_secret = os.getenv("CXONE_CLIENT_SECRET") or "",
    addresses = addresses(os.getenv("CXONE_ADDRESSES")),
    timeout = 10, deadline = 20,
}
if not client then core.Alert("cxone: " .. tostring(cerr)) end

local exporter = { state = nil, errors_total = 0 }

local function args_of(applet)
    local a = {}
    for k, v in tostring(applet.qs or ""):gmatch("([^&=]+)=([^&]*)") do a[k] = v end
    return a
end

local function send(applet, status, body, ctype)
    applet:set_status(status)
    applet:add_header("content-type", ctype or "application/json")
    applet:add_header("content-length", tostring(#body))
    applet:start_response()
    applet:send(body)
end

core.register_action("cxone_guard", { "http-req" }, function(txn)
    local status, answer = views.guard(txn.f:req_body(), txn.sf:path())
    if not status then return end
    local reply = txn:reply()
    reply:set_status(status)
    reply:add_header("content-type", "application/json")
    reply:set_body(answer)
    txn:done(reply)
end)

core.register_service("cxone_vars", "http", function(applet)
    if not client then return send(applet, views.error(cerr, "config")) end
    local a = args_of(applet)
    local res, err, code = client:vars(a.action or "", a.tier or "")
    if not res then return send(applet, views.error(err, code)) end
    send(applet, 200, views.vars(res))
end)

core.register_service("cxone_drift", "http", function(applet)
    if not client then return send(applet, views.error(cerr, "config")) end
    local a = args_of(applet)
    local rep, err, code = client:drift(a.action or "", a.baseline or "", a.target or "")
    if not rep then return send(applet, views.error(err, code)) end
    send(applet, 200, views.drift(rep))
end)

core.register_service("cxone_plan", "http", function(applet)
    if not client then return send(applet, views.error(cerr, "config")) end
    local step = json.decode(applet:receive() or "")
    if type(step) ~= "table" then return send(applet, views.error("the body must be a JSON step", "invalid")) end
    local p, err, code = client:plan(step)
    if not p then return send(applet, views.error(err, code)) end
    send(applet, 200, views.plan(p))
end)

core.register_service("cxone_metrics", "http", function(applet)
    send(applet, 200, views.metrics(exporter.state, exporter.errors_total), "text/plain; version=0.0.4")
end)

local checks = views.parse_checks(os.getenv("CXONE_DRIFT_CHECKS"))
if client and #checks > 0 then
    core.register_task(function()
        local every = tonumber(os.getenv("CXONE_CHECK_INTERVAL")) or 60
        while true do
            local t = core.now()
            local st = views.check_all(client, checks, t.sec + t.usec / 1e6)
            exporter.state = st
            exporter.errors_total = exporter.errors_total + st.errors
            core.msleep(math.floor(every * 1000))
        end
    end)
end
