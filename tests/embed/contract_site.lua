-- The service of transport_contract (tests/embed/contract.lua) inside nginx and HAProxy: one GET
-- through the host's cxone client against the base URL the query names, answered as JSON
-- {ok=, code=, error=, attempts=, status=, ms=}. Clients are made once per base (per worker in
-- nginx, at load time in HAProxy, where nothing can be required later).
local S = {}

local BASES = { "main", "big", "tls", "unknown", "tight" }

function S.options(base)
    local o = {
        base_url = os.getenv("CONTRACT_BASE_" .. base:upper()),
        client_id = os.getenv("CONTRACT_CLIENT_ID"), client_secret = os.getenv("CONTRACT_CLIENT_SECRET"),
        retries = 1, timeout = 6, connect_timeout = 2, deadline = 14,
        backoff_base = 0.05, backoff_cap = 0.1, retry_after_cap = 60,
        audit_log = false, state_file = false,
    }
    if base == "tight" then -- the main server, with a deadline shorter than the attempts
        o.retries, o.timeout, o.deadline = 3, 2, 3
    end
    return o
end

--- Makes the clients with `new(opts)`; host_opts(base) adds the host's own options.
function S.clients(new, host_opts)
    local out = {}
    for _, b in ipairs(BASES) do
        local o = S.options(b)
        for k, v in pairs(host_opts(b) or {}) do o[k] = v end
        out[b] = assert(new(o))
    end
    return out
end

--- The JSON answer for one GET through client (a cxone.PromoteClient) with clock now().
function S.run(client, now, action, env)
    local t0 = now()
    local res, err, code = client.core:get(action, env)
    local meta = client.core:last_meta() or {}
    return require("cxone.core").json_encode({ ok = res ~= nil, code = code, error = err,
                              attempts = meta.attempts or 0, status = meta.status or 0,
                              ms = math.floor((now() - t0) * 1000) })
end

return S
