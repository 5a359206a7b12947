--- `cxone config check`: what each tier resolves to (tenant, auth flow, where each credential
-- comes from, secrets masked, rate limit, policy), and a token tried for each tenant.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.profiles_check

local core = require("cxone.core")
local profiles = require("cxone.profiles")
local tiers = require("cxone.tiers")

local M = {}

-- Tries a token for a tenant's settings: true, or nil, message, code.
local function try(t)
    local s, err, code = profiles.resolve(t)
    if not s then return nil, err, code end
    for _, k in ipairs({ "base_url", "client_id" }) do
        if not s[k] then return nil, k .. " is not set", "config" end
    end
    if not (s.client_secret or s.access_key_secret) then return nil, "no secret is set", "config" end
    local c, cerr, ccode = core.client({ base_url = s.base_url, token_url = s.token_url, client_id = s.client_id,
        client_secret = s.client_secret, access_key_id = s.access_key_id, access_key_secret = s.access_key_secret,
        ca_file = s.ca_file, rate_limit = s.rate_limit, retries = 1 })
    if not c then return nil, cerr, ccode or "config" end
    local ok, aerr, acode = c:authenticate()
    local ttl = ok and c:token_ttl() or nil
    if ttl then ttl = math.floor(ttl) end
    c:close()
    if not ok then return nil, aerr, acode end
    return true, ttl
end

--- Runs the check for a profile (nil: the CXONE_* tenant); returns the exit status.
function M.run(ctx, prof)
    local matrix = tiers.new()
    local from_env = prof == nil
    prof = prof or profiles.from_env(matrix)
    local rows, all_ok, tried = {}, true, {}
    for _, tier in ipairs(matrix.list) do
        local pol = prof.tiers[tier.name]
        local row = { tier = tier.name, environment = tier.id }
        if not pol then
            row.configured = false
        else
            local t = pol.tenant
            row.configured = true
            row.base_url = profiles.describe(t.base_url)
            row.client_id = profiles.describe(t.client_id)
            row.auth = t.auth or (t.access_key_id and "access_key") or "client_credentials"
            if row.auth == "access_key" then
                row.access_key_id = profiles.describe(t.access_key_id)
                row.access_key_secret = profiles.describe(t.access_key_secret, true)
            end
            if t.client_secret ~= nil or row.auth ~= "access_key" then
                row.client_secret = profiles.describe(t.client_secret, true)
            end
            if t.token_url then row.token_url = profiles.describe(t.token_url) end
            row.rate_limit = t.rate_limit
            row.promoted_from = pol.promoted_from and pol.promoted_from.name or nil
            if pol.freeze then
                local w = {}
                for i, f in ipairs(pol.freeze) do w[i] = f.text end
                row.freeze = w
                row.frozen_now = profiles.frozen(pol) ~= nil
            end
            -- one token per tenant, however many tiers share it
            local r = tried[t]
            if not r then
                local ok, a, b = try(t)
                r = ok and { ok = true, ttl = a } or { ok = false, error = tostring(a), code = b }
                tried[t] = r
            end
            row.token = r.ok and "ok" or "failed"
            row.token_ttl, row.error, row.code = r.ttl, r.error, r.code
            if not r.ok then all_ok = false end
        end
        rows[#rows + 1] = row
    end
    local doc = { ok = all_ok, config = prof.path, from_env = from_env or nil, tiers = rows }
    if ctx.json then
        ctx:emit(doc)
        return all_ok and 0 or 1
    end
    ctx:out(from_env and "no configuration file: every tier is the single tenant of the CXONE_* variables"
        or ("configuration: " .. prof.path))
    for _, r in ipairs(rows) do
        if not r.configured then
            ctx:out(("%s (%s): not configured (no tenant; plans and applies to it are refused)"):format(r.tier, r.environment))
        else
            local how = r.error and (" (" .. tostring(r.code) .. "): " .. r.error)
                or (r.token_ttl and (" (valid %d s)"):format(r.token_ttl)) or ""
            ctx:out(("%s (%s): token %s%s"):format(r.tier, r.environment, r.token, how))
            local fields = { "base_url", "token_url", "auth", "client_id", "client_secret", "access_key_id",
                "access_key_secret", "rate_limit", "promoted_from" }
            for _, k in ipairs(fields) do
                if r[k] ~= nil then ctx:out(("  %-18s %s"):format(k, tostring(r[k]))) end
            end
            if r.freeze then
                ctx:out(("  %-18s %s%s"):format("freeze", table.concat(r.freeze, "; "), r.frozen_now and " (frozen now)" or ""))
            end
        end
    end
    if not all_ok then ctx:err("config check: at least one tier cannot get a token") end
    return all_ok and 0 or 1
end

return M
