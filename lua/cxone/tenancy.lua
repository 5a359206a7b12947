--- Several tenants behind one client: one cxone.core client per tenant (a profile's tenants,
-- see cxone.profiles), and a router with the core client's methods that sends each request to
-- the tenant of its environment (tier). Builds go to the tenant of the tier whose write they
-- follow (the applier names it in the request's `env`). Used by cxone.client when it is given
-- a profile. Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.tenancy

local core = require("cxone.core")
local profiles = require("cxone.profiles")

local M = {}

local Router = {}
Router.__index = Router
Router.__name = "cxone.TenantRouter"

-- the tenant serving environment `env` (the primary one for a request naming none); nil for
-- an environment whose tier the profile maps to no tenant (never sent to another tenant)
function Router:tenant(env)
    if env == nil then return self.primary end
    return self.by_env[env]
end

local function unmapped(env)
    return ("environment %s: its tier has no tenant in the configuration"):format(tostring(env))
end

--- A batch over several tenants: the requests of each tenant go to its core client (tenants
-- in turn, each with its own concurrency); results come back in the requests' order.
function Router:batch(reqs, opts)
    local groups, order, out = {}, {}, {}
    for k, r in ipairs(reqs) do
        local env = r.env or (type(r.payload) == "table" and r.payload.environmentId) or nil
        local t = self:tenant(env)
        if not t then
            out[k] = { ok = false, error = unmapped(env), code = "config" }
        elseif not groups[t] then groups[t] = { reqs = {}, at = {} }; order[#order + 1] = t end
        if t then
            local g = groups[t]
            g.reqs[#g.reqs + 1] = r
            g.at[#g.at + 1] = k
        end
    end
    local stopped = false
    for _, t in ipairs(order) do
        local g = groups[t]
        if stopped then
            for _, k in ipairs(g.at) do out[k] = { ok = false, skipped = true } end
        else
            local res = t.core:batch(g.reqs, opts)
            for j, k in ipairs(g.at) do
                out[k] = res[j]
                if opts and opts.stop_on_failure and not res[j].ok and not res[j].skipped then stopped = true end
            end
            self.last = t
        end
    end
    return out
end

function Router:get(action, env, ...)
    local t = self:tenant(env)
    if not t then return nil, unmapped(env), "config" end
    self.last = t
    return t.core:get(action, env, ...)
end

function Router:last_meta() return (self.last or self.primary).core:last_meta() end

-- webhooks go through the primary tenant's client (they carry no tenant credentials)
function Router:webhook(...) return self.primary.core:webhook(...) end

--- Figures summed over the tenants' clients (numbers only).
function Router:stats()
    local sum = {}
    for _, t in ipairs(self.list) do
        for k, v in pairs(t.core:stats()) do
            if type(v) == "number" then sum[k] = (sum[k] or 0) + v
            elseif sum[k] == nil then sum[k] = v end
        end
    end
    return sum
end

function Router:token_ttl(env) return self:tenant(env).core:token_ttl() end
function Router:authenticate(env) return self:tenant(env).core:authenticate() end

function Router:close()
    for _, t in ipairs(self.list) do t.core:close() end
end

function Router:__tostring()
    local names = {}
    for i, t in ipairs(self.list) do names[i] = t.label end
    return "cxone.TenantRouter (" .. table.concat(names, "; ") .. ")"
end

--- Builds the tenants of a profile: `{core = router, list, by_env, by_tier}`, or nil, why, code.
-- `base` holds the core options shared by every tenant (retries, timeouts, ...); a tenant's own
-- base URL, token URL, credentials, CA file and rate limit replace them. The primary tenant
-- (the one of the last configured tier, production by default) is also written into `cfg`'s
-- base_url/client_id/client_secret, which a saved plan's key and checks derive from.
function M.build(profile, base, matrix, cfg)
    local by_src, list, by_env, by_tier = {}, {}, {}, {}
    for _, tier in ipairs(matrix.list) do
        local pol = profile.tiers[tier.name]
        if pol then
            local t = by_src[pol.tenant]
            if not t then
                local s, err, code = profiles.resolve(pol.tenant)
                if not s then return nil, ("tier %s: %s"):format(tier.name, tostring(err)), code end
                local label = profiles.label(s.base_url, s.client_id)
                -- two entries that name the same tenant share one client
                for _, o in ipairs(list) do if o.label == label then t = o end end
                if not t then
                    local co = {}
                    for k, v in pairs(base) do co[k] = v end
                    co.base_url, co.token_url, co.client_id = s.base_url, s.token_url, s.client_id
                    co.client_secret, co.access_key_id, co.access_key_secret = s.client_secret, s.access_key_id,
                        s.access_key_secret
                    co.ca_file = s.ca_file or base.ca_file
                    if s.rate_limit then co.rate_limit = s.rate_limit end
                    local c, cerr, ccode = core.client(co)
                    if not c then return nil, ("tier %s (%s): %s"):format(tier.name, label, tostring(cerr)), ccode or "config" end
                    t = { core = c, label = label, base_url = s.base_url, client_id = s.client_id,
                          secret = s.client_secret or s.access_key_secret, settings = s }
                    list[#list + 1] = t
                end
                by_src[pol.tenant] = t
            end
            by_env[tier.id], by_tier[tier.name] = t, t
            t.tiers = t.tiers or {}
            t.tiers[#t.tiers + 1] = tier.name
        end
    end
    if #list == 0 then return nil, "the configuration maps no tier to a tenant", "config" end
    local primary = by_env[matrix.list[#matrix.list].id] or list[#list]
    local router = setmetatable({ list = list, by_env = by_env, primary = primary }, Router)
    if cfg then
        cfg.base_url, cfg.client_id = primary.base_url, primary.client_id
        cfg.client_secret, cfg.access_key_secret = primary.settings.client_secret, primary.settings.access_key_secret
        cfg.access_key_id, cfg.token_url = primary.settings.access_key_id, primary.settings.token_url
    end
    return { core = router, list = list, by_env = by_env, by_tier = by_tier, primary = primary }
end

return M
