-- The handlers of examples/nginx/nginx.conf: guard, admin (vars, drift, plan) and exporter.
-- Clients are made per worker in init_worker, from CXONE_* variables (declared with `env`).
local cxone = require("resty.cxone")
local views = require("cxone.transport.views")
local core = require("cxone.core")

local M = {}

local clients = {}       -- per worker: "main", and "second" when CXONE_BASE_URL_2 is set
local metrics = ngx.shared.cxone_metrics

local function client_for(which)
    if clients[which] then return clients[which] end
    local base = os.getenv(which == "second" and "CXONE_BASE_URL_2" or "CXONE_BASE_URL")
    if not base or base == "" then return nil, "no base URL configured for " .. which, "config" end
    local c, err, code = cxone.new{
        base_url = base,
        token_url = which == "main" and os.getenv("CXONE_TOKEN_URL") or nil,
        client_id = os.getenv("CXONE_CLIENT_ID"),
        client_secret = os.getenv("CXONE_CLIENT_SECRET"),
        server_name = os.getenv("CXONE_TLS_SERVER_NAME"), -- when the certificate names another host
        timeout = 10, deadline = 20,
        audit_log = false, state_file = false, -- read-only uses: no trail needed
    }
    if not c then return nil, err, code end
    clients[which] = c
    return c
end

local function reply(status, body, ctype)
    ngx.status = status
    ngx.header["Content-Type"] = ctype or "application/json"
    ngx.print(body)
    return ngx.exit(status)
end

-- The exporter: worker 0 checks CXONE_DRIFT_CHECKS every CXONE_CHECK_INTERVAL seconds.
local function check(premature)
    if premature then return end
    local c = client_for("main")
    if not c then return end
    local st = views.check_all(c, views.parse_checks(os.getenv("CXONE_DRIFT_CHECKS")), ngx.now())
    metrics:set("state", views.encode(st))
    if st.errors > 0 then metrics:incr("errors_total", st.errors, 0) end
end

function M.init_worker()
    if ngx.worker.id() == 0 and os.getenv("CXONE_DRIFT_CHECKS") then
        local every = tonumber(os.getenv("CXONE_CHECK_INTERVAL")) or 60
        ngx.timer.at(0, check)
        ngx.timer.every(every, check)
    end
end

function M.guard()
    local m = ngx.req.get_method()
    if m ~= "PATCH" and m ~= "PUT" then return end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body and ngx.req.get_body_file() then
        return reply(413, views.encode({ error = "the body is too large to check", code = "invalid" }))
    end
    local status, answer = views.guard(body, ngx.var.uri)
    if status then return reply(status, answer) end
end

local function args() return ngx.req.get_uri_args() end

function M.vars()
    local a = args()
    local c, err, code = client_for(a.base == "2" and "second" or "main")
    if not c then return reply(views.error(err, code)) end
    local res, verr, ecode = c:vars(a.action or "", a.tier or "")
    if not res then return reply(views.error(verr, ecode)) end
    return reply(200, views.vars(res))
end

function M.drift()
    local a = args()
    local c, err, code = client_for("main")
    if not c then return reply(views.error(err, code)) end
    local rep, derr, dcode = c:drift(a.action or "", a.baseline or "", a.target or "")
    if not rep then return reply(views.error(derr, dcode)) end
    return reply(200, views.drift(rep))
end

function M.plan()
    ngx.req.read_body()
    local step = core.json_decode(ngx.req.get_body_data() or "")
    if type(step) ~= "table" then return reply(views.error("the body must be a JSON step", "invalid")) end
    local c, err, code = client_for("main")
    if not c then return reply(views.error(err, code)) end
    local p, perr, pcode = c:plan(step)
    if not p then return reply(views.error(perr, pcode)) end
    return reply(200, views.plan(p))
end

function M.metrics()
    local st = core.json_decode(metrics:get("state") or "null")
    return reply(200, views.metrics(type(st) == "table" and st or nil, metrics:get("errors_total") or 0),
        "text/plain; version=0.0.4")
end

return M
