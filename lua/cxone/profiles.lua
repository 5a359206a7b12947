--- Profiles: which tenant (base URL, auth flow, credentials, rate limit) each tier lives in,
-- and the tier policy (promotion order, freeze windows), read from a configuration file named
-- by `--config FILE` or `CXONE_CONFIG` (never picked up from the working directory).
--
-- The file is Lua, run in a sandbox that offers `env(NAME [, default])` and nothing else (no
-- `io`, no `os`, no `require`), and returns a table:
--
--     return {
--       tenants = {
--         stg  = { base_url = "https://api.example", client_id = "stg-client",
--                  client_secret = env("STG_SECRET") },
--         prod = { base_url = env("PROD_URL"), auth = "access_key", client_id = "prod-client",
--                  access_key_id = "AKID", access_key_secret = { command = { "pass", "show", "cx/prod" } },
--                  rate_limit = 5 },
--       },
--       tiers = {
--         development = { tenant = "stg" }, staging = { tenant = "stg" },
--         production = { tenant = "prod", promoted_from = "staging",
--                        freeze = { { days = "Mon-Fri", from = "09:00", to = "17:00", utc_offset = "+01:00" } } },
--       },
--     }
--
-- A credential is a string, `env("NAME")`, `{ file = "/path" }` (read when used, a trailing
-- newline dropped) or `{ command = { "prog", "arg", ... } }` (run without a shell when used; its
-- stdout, a trailing newline dropped, is the secret; never shown or logged).
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.profiles

local core = require("cxone.core")

local M = {}

local EnvRef = {}
EnvRef.__index = EnvRef
EnvRef.__tostring = function(r) return 'env("' .. r.name .. '")' end

local TENANT_KEYS = { base_url = true, token_url = true, auth = true, client_id = true, client_secret = true,
    access_key_id = true, access_key_secret = true, ca_file = true, rate_limit = true }
local SECRET_KEYS = { client_secret = true, access_key_secret = true }
M.SECRET_KEYS = SECRET_KEYS
local TIER_KEYS = { tenant = true, promoted_from = true, freeze = true }
local DAYS = { sun = 1, mon = 2, tue = 3, wed = 4, thu = 5, fri = 6, sat = 7 }

local function getenv(name)
    local v = os.getenv(name)
    if v == "" then return nil end
    return v
end

--- Refuses a configuration file that someone else could have written: it must be a regular
-- file owned by the user (or root) and not writable by group or others.
-- @treturn[1] true
-- @treturn[2] fail (code "config")
function M.check_file(path)
    local st, err = core.file_owner(path)
    if not st then return nil, tostring(err), "config" end
    if st.uid ~= st.self and st.uid ~= 0 then
        return nil, ("%s is owned by uid %d, not by you (uid %d) or root: refused (it holds where your credentials "
            .. "come from)"):format(path, st.uid, st.self), "config"
    end
    local gw, ow = math.floor(st.mode / 16) % 2 == 1, math.floor(st.mode / 2) % 2 == 1 -- 0020, 0002
    if gw or ow then
        return nil, ("%s is writable by %s (mode %o): refused; chmod go-w %s"):format(path,
            (gw and ow) and "its group and others" or (gw and "its group" or "others"), st.mode, path), "config"
    end
    return true
end

local function parse_hhmm(s, what)
    local h, m = tostring(s):match("^(%d%d?):(%d%d)$")
    h, m = tonumber(h), tonumber(m)
    if not h or m > 59 or h > 24 or (h == 24 and m ~= 0) then
        return nil, ("%s must be HH:MM (00:00 to 24:00), got %q"):format(what, tostring(s))
    end
    return h * 60 + m
end

local function parse_offset(s)
    if s == nil then return 0 end
    local sign, h, m = tostring(s):match("^([+-])(%d%d):?(%d%d)$")
    if not sign then
        if s == "Z" or s == "UTC" then return 0 end
        return nil, ("utc_offset must be like +01:00 or -05:00, got %q"):format(tostring(s))
    end
    local v = tonumber(h) * 60 + tonumber(m)
    return sign == "-" and -v or v
end

local function parse_days(s)
    local set = {}
    if s == nil then
        for d = 1, 7 do set[d] = true end
        return set
    end
    for part in tostring(s):gmatch("[^,%s]+") do
        local a, b = part:match("^(%a+)%-(%a+)$")
        local from, to
        if a then from, to = DAYS[a:lower():sub(1, 3)], DAYS[b:lower():sub(1, 3)]
        else from = DAYS[part:lower():sub(1, 3)]; to = from end
        if not from or not to then
            return nil, ("days must be like Mon-Fri or Sat,Sun, got %q"):format(tostring(s))
        end
        local d = from
        while true do
            set[d] = true
            if d == to then break end
            d = d % 7 + 1
        end
    end
    return set
end

local function check_freeze(list, where)
    if type(list) ~= "table" then return nil, where .. ".freeze must be a list of windows" end
    local out = {}
    for i, w in ipairs(list) do
        local at = ("%s.freeze[%d]"):format(where, i)
        if type(w) ~= "table" then return nil, at .. " must be a table {days=, from=, to=, utc_offset=}" end
        for k in pairs(w) do
            if k ~= "days" and k ~= "from" and k ~= "to" and k ~= "utc_offset" then
                return nil, ("%s: unknown key %q (days, from, to, utc_offset)"):format(at, tostring(k))
            end
        end
        local days, derr = parse_days(w.days)
        if not days then return nil, at .. ": " .. derr end
        local from, ferr = parse_hhmm(w.from or "00:00", at .. ".from")
        if not from then return nil, ferr end
        local to, terr = parse_hhmm(w.to or "24:00", at .. ".to")
        if not to then return nil, terr end
        local off, oerr = parse_offset(w.utc_offset)
        if not off then return nil, at .. ": " .. oerr end
        out[i] = { days = days, from = from, to = to, offset = off,
                   text = ("%s %s-%s UTC%s"):format(w.days or "every day", w.from or "00:00", w.to or "24:00",
                       w.utc_offset or "+00:00") }
    end
    return out
end

--- The freeze window `now` (a UTC unix time; default now) falls in, as its text, or nil.
function M.frozen(tier_policy, now)
    if not tier_policy or not tier_policy.freeze then return nil end
    now = now or os.time()
    for _, w in ipairs(tier_policy.freeze) do
        local t = os.date("!*t", now + w.offset * 60)
        local minute = t.hour * 60 + t.min
        if w.from <= w.to then
            if w.days[t.wday] and minute >= w.from and minute < w.to then return w.text end
        else -- across midnight: from `from` on a listed day to `to` the day after
            local yesterday = (t.wday + 5) % 7 + 1
            if (w.days[t.wday] and minute >= w.from) or (w.days[yesterday] and minute < w.to) then return w.text end
        end
    end
    return nil
end

local function check_source(v, at)
    if type(v) == "string" or getmetatable(v) == EnvRef then return true end
    if type(v) == "table" then
        local n = 0
        for _ in pairs(v) do n = n + 1 end
        if n == 1 and type(v.file) == "string" then return true end
        if n == 1 and type(v.command) == "table" and #v.command >= 1 then
            for _, a in ipairs(v.command) do
                if type(a) ~= "string" then return nil, at .. ".command must be a list of strings" end
            end
            return true
        end
    end
    return nil, at .. ' must be a string, env("NAME"), { file = "PATH" } or { command = { "prog", "arg", ... } }'
end

local function check_tenant(t, at)
    if type(t) ~= "table" then return nil, at .. " must be a table" end
    for k, v in pairs(t) do
        if not TENANT_KEYS[k] then
            return nil, ("%s: unknown key %q (base_url, token_url, auth, client_id, client_secret, access_key_id, "
                .. "access_key_secret, ca_file, rate_limit)"):format(at, tostring(k))
        end
        if k == "rate_limit" then
            if type(v) ~= "number" or v <= 0 then return nil, at .. ".rate_limit must be a number of requests per second" end
        elseif k == "auth" then
            if v ~= "client_credentials" and v ~= "access_key" then
                return nil, at .. '.auth must be "client_credentials" or "access_key"'
            end
        else
            local ok, err = check_source(v, at .. "." .. k)
            if not ok then return nil, err end
        end
    end
    if t.base_url == nil or t.client_id == nil then return nil, at .. " needs base_url and client_id" end
    if (t.auth or "client_credentials") == "access_key" then
        if t.access_key_id == nil or t.access_key_secret == nil then
            return nil, at .. ' (auth = "access_key") needs access_key_id and access_key_secret'
        end
    elseif t.client_secret == nil then
        return nil, at .. " needs client_secret"
    end
    return true
end

--- Loads and checks a configuration file (see the module's description).
-- @tparam string path
-- @tparam[opt] cxone.Tiers matrix the tier matrix (default tiers)
-- @treturn[1] table profile `{path=, tenants={name → tenant}, tiers={tier name → {tenant=, promoted_from=, freeze=}}}`
-- @treturn[2] fail (code "config")
function M.load(path, matrix)
    if type(path) ~= "string" then
        error("bad argument #1 to 'load' (string expected, got " .. type(path) .. ")", 2)
    end
    matrix = matrix or require("cxone.tiers").new()
    local ok, err, code = M.check_file(path)
    if not ok then return nil, err, code end
    local f, oerr = io.open(path, "r")
    if not f then return nil, tostring(oerr), "config" end
    local src = f:read("*a")
    f:close()
    local sandbox = { env = function(name, default)
        if type(name) ~= "string" then error("env(NAME): NAME must be a string", 2) end
        return setmetatable({ name = name, default = default }, EnvRef)
    end }
    local chunk
    if setfenv then
        chunk, err = loadstring(src, "@" .. path)
        if chunk then setfenv(chunk, sandbox) end
    else
        chunk, err = load(src, "@" .. path, "t", sandbox)
    end
    if not chunk then return nil, tostring(err), "config" end
    local rok, res = pcall(chunk)
    if not rok then return nil, tostring(res), "config" end
    if type(res) ~= "table" then return nil, path .. ": a configuration must return a table", "config" end
    for k in pairs(res) do
        if k ~= "tenants" and k ~= "tiers" then
            return nil, ("%s: unknown key %q (tenants, tiers)"):format(path, tostring(k)), "config"
        end
    end
    local prof = { path = path, tenants = {}, tiers = {} }
    for name, t in pairs(res.tenants or {}) do
        local tok, terr = check_tenant(t, ("%s: tenants.%s"):format(path, tostring(name)))
        if not tok then return nil, terr, "config" end
        prof.tenants[name] = t
    end
    if type(res.tiers) ~= "table" or next(res.tiers) == nil then
        return nil, path .. ": `tiers` must map each tier to its tenant", "config"
    end
    local anon = 0
    for name, t in pairs(res.tiers) do
        local at = ("%s: tiers.%s"):format(path, tostring(name))
        local tier = matrix:resolve(name)
        if not tier then return nil, at .. ": " .. select(2, matrix:resolve(name)), "config" end
        if type(t) ~= "table" then return nil, at .. " must be a table", "config" end
        local inline = {}
        for k, v in pairs(t) do
            if not TIER_KEYS[k] then
                if not TENANT_KEYS[k] then
                    return nil, ("%s: unknown key %q (tenant, promoted_from, freeze, or a tenant's own keys)")
                        :format(at, tostring(k)), "config"
                end
                inline[k] = v
            end
        end
        local tenant
        if t.tenant ~= nil then
            if next(inline) ~= nil then return nil, at .. ": give either tenant = NAME or the tenant's keys, not both", "config" end
            tenant = prof.tenants[t.tenant]
            if not tenant then return nil, ("%s: no tenant named %q in tenants"):format(at, tostring(t.tenant)), "config" end
        else
            local tok, terr = check_tenant(inline, at)
            if not tok then return nil, terr, "config" end
            anon = anon + 1
            tenant = inline
        end
        local pol = { tenant = tenant, tier = tier }
        if t.promoted_from ~= nil then
            local from = t.promoted_from == true and matrix.list[tier.index - 1] or matrix:resolve(t.promoted_from)
            if not from or from == tier then
                return nil, at .. ".promoted_from must name another tier (or be true: the tier below)", "config"
            end
            pol.promoted_from = from
        end
        if t.freeze ~= nil then
            local w, ferr = check_freeze(t.freeze, at)
            if not w then return nil, ferr, "config" end
            pol.freeze = w
        end
        if prof.tiers[tier.name] then return nil, at .. ": this tier is given twice", "config" end
        prof.tiers[tier.name] = pol
    end
    return prof
end

--- The single tenant of the `CXONE_*` variables, as a profile (what runs without a file).
function M.from_env(matrix)
    matrix = matrix or require("cxone.tiers").new()
    local env = require("cxone.env")
    local t = {}
    for _, k in ipairs({ "base_url", "token_url", "client_id", "client_secret", "access_key_id",
                         "access_key_secret", "ca_file" }) do
        t[k] = env.get(k)
    end
    if t.access_key_id then t.auth = "access_key" end
    local prof = { tenants = { env = t }, tiers = {}, from_env = true }
    for _, tier in ipairs(matrix.list) do prof.tiers[tier.name] = { tenant = t, tier = tier } end
    return prof
end

local function strip_nl(s) return (s:gsub("\r?\n$", "")) end

--- The value of a setting: a string, env("NAME"), {file=} or {command=}. Never shown.
-- @treturn[1] string
-- @treturn[2] fail (code "config"), naming the source, never the value
function M.value(v, what)
    if v == nil then return nil end
    if type(v) == "string" then return v end
    if getmetatable(v) == EnvRef then
        local s = getenv(v.name)
        if s == nil then s = v.default end
        if s == nil then return nil, ("%s: environment variable %s is not set"):format(what, v.name), "config" end
        return s
    end
    if v.file then
        local f, err = io.open(v.file, "rb")
        if not f then return nil, ("%s: cannot read %s"):format(what, tostring(err)), "config" end
        local s = f:read("*a")
        f:close()
        s = strip_nl(s or "")
        if s == "" then return nil, ("%s: %s is empty"):format(what, v.file), "config" end
        return s
    end
    if v.command then
        local out, err = core.capture(v.command)
        if not out then return nil, ("%s: %s"):format(what, tostring(err)), "config" end
        out = strip_nl(out)
        if out == "" then return nil, ("%s: %s printed nothing"):format(what, v.command[1]), "config" end
        return out
    end
    return nil, what .. ": unknown source", "config"
end

--- Where a setting comes from, safe to show: secrets as `***`, sources named.
function M.describe(v, secret)
    if v == nil then return "(not set)" end
    if type(v) == "string" then return secret and "***" or v end
    if getmetatable(v) == EnvRef then
        local set = getenv(v.name) ~= nil
        if secret then return ("env %s (%s)"):format(v.name, set and "set, ***" or (v.default and "default, ***" or "NOT SET")) end
        return ("%s (env %s)"):format(tostring(getenv(v.name) or v.default or "NOT SET"), v.name)
    end
    if v.file then return "file " .. v.file .. (secret and " (***)" or "") end
    if v.command then return "command " .. table.concat(v.command, " ") .. (secret and " (***)" or "") end
    return "?"
end

--- Resolves a tenant's settings for cxone.core.client: a table of strings, or nil and why.
function M.resolve(t)
    local out = { rate_limit = t.rate_limit }
    local access = (t.auth or "client_credentials") == "access_key"
    for _, k in ipairs({ "base_url", "token_url", "client_id", "ca_file" }) do
        local v, err, code = M.value(t[k], k)
        if err then return nil, err, code end
        out[k] = v
    end
    local keys = access and { "access_key_id", "access_key_secret", "client_secret" } or { "client_secret" }
    for _, k in ipairs(keys) do
        local v, err, code = M.value(t[k], k)
        if err then return nil, err, code end
        out[k] = v
    end
    return out
end

--- The name of a tenant in audit records and messages: its base URL and client id (never a secret).
function M.label(base_url, client_id)
    return ("%s %s"):format(tostring(base_url):gsub("[?#].*$", ""):gsub("/+$", ""), tostring(client_id))
end

return M
