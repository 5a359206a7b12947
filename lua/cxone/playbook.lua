--- Playbooks: loading a playbook file and refusing, before any request, what it cannot mean.
-- A playbook is a Lua file that returns a list of steps, or `{steps = {...}, concurrency = n}`.
-- It runs with the standard globals plus `env(name, default)`. A book or a step may carry
-- `drift = {ignore = {NAMES}, expect_differ = {NAMES}}` for `cxone drift PLAYBOOK`.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.playbook

local tiers = require("cxone.tiers")

local M = {}

local STEP_KEYS = { action = true, tier = true, baseline = true, variables = true, drift = true }
local BOOK_KEYS = { steps = true, concurrency = true, drift = true }
local ENTRY_KEYS = { name = true, value = true, masked = true, description = true, keep = true }
local DRIFT_KEYS = { ignore = true, expect_differ = true }

-- What env(NAME) gives for an unset variable without a default: a marker naming it, so that
-- the step and variable it was meant for are named before any request (nil would make a
-- `NAME = env("X")` entry vanish from its table). Used in an expression, it raises naming X.
local Unset = { __name = "cxone.UnsetEnv" }
local function unset_error(u)
    error(("environment variable %s is not set (env(%q) in the playbook): set it, or give a default as "
        .. "env(%q, default)"):format(u.name, u.name, u.name), 3)
end
Unset.__concat = function(a, b) unset_error(getmetatable(a) == Unset and a or b) end
Unset.__len = unset_error
Unset.__index = function(u) unset_error(u) end
Unset.__tostring = function(u) return ("env(%q) (unset)"):format(rawget(u, "name")) end

--- True when v is what env(NAME) returned for an unset variable.
function M.is_unset(v) return getmetatable(v) == Unset end

local function unset_message(u)
    local n = rawget(u, "name")
    return ("environment variable %s is not set (env(%q)): set it, or give env(%q, default)"):format(n, n, n)
end

local function env(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then
        if default ~= nil then return default end
        return setmetatable({ name = tostring(name) }, Unset)
    end
    return v
end

-- Checks a `drift = {ignore = {...}, expect_differ = {...}}` table: nil, or what is wrong.
local function check_drift(d, where)
    if type(d) ~= "table" then return where .. " must be a table {ignore = {...}, expect_differ = {...}}" end
    for k, list in pairs(d) do
        if not DRIFT_KEYS[k] then
            return ("%s has an unknown key %q (ignore, expect_differ)"):format(where, tostring(k))
        end
        if type(list) ~= "table" then return ("%s.%s must be a list of variable names"):format(where, k) end
        for i, n in pairs(list) do
            if type(i) ~= "number" or type(n) ~= "string" then
                return ("%s.%s must be a list of variable names"):format(where, k)
            end
        end
    end
    return nil
end
M.check_drift = check_drift

--- Loads a playbook file. The chunk sees the standard globals and `env(NAME, default)`.
-- @tparam string path
-- @treturn[1] table `{steps = {...}, concurrency = n|nil, path = path}`
-- @treturn[2] fail (code "invalid")
function M.load(path)
    if type(path) ~= "string" then
        error("bad argument #1 to 'load' (string expected, got " .. type(path) .. ")", 2)
    end
    local f, err = io.open(path, "r")
    if not f then return nil, err, "io" end
    local src = f:read("*a")
    f:close()
    -- which environment variable each value read through env() came from (for saved plans)
    local env_sources = {}
    local sandbox = setmetatable({ env = function(name, default)
        local v = env(name, default)
        if type(name) == "string" and env(name) ~= nil then env_sources[v] = name end
        return v
    end }, { __index = _G })
    local chunk
    if setfenv then
        chunk, err = loadstring(src, "@" .. path)
        if chunk then setfenv(chunk, sandbox) end
    else
        chunk, err = load(src, "@" .. path, "t", sandbox)
    end
    if not chunk then return nil, err, "invalid" end
    local ok, res = pcall(chunk)
    if not ok then return nil, tostring(res), "invalid" end
    if type(res) ~= "table" then
        return nil, path .. ": a playbook must return a table of steps, got " .. type(res), "invalid"
    end
    local book = res.steps and res or { steps = res }
    if type(book.steps) ~= "table" then
        return nil, path .. ": `steps` must be a list of steps", "invalid"
    end
    -- a bare list of steps may carry the drift lists too: `return { drift = {...}, {step}, ... }`
    local copy = { path = path, steps = book.steps, concurrency = book.concurrency,
                   drift = book.drift or (book.steps == res and res.drift or nil), env_sources = env_sources }
    if book.steps ~= res then
        for k in pairs(res) do
            if not BOOK_KEYS[k] then
                return nil, ("%s: unknown playbook key %q (steps, concurrency, drift)"):format(path, tostring(k)), "invalid"
            end
        end
    end
    if copy.drift ~= nil then
        local derr = check_drift(copy.drift, "drift")
        if derr then return nil, path .. ": " .. derr, "invalid" end
    end
    return copy
end

local function sorted_keys(t)
    local out = {}
    for k in pairs(t) do out[#out + 1] = tostring(k) end
    table.sort(out)
    return out
end

-- Checks one step's variables table: a list of entries or a map NAME → value | entry, never both.
local function check_variables(vars)
    if type(vars) ~= "table" then return "variables must be a table" end
    local n = #vars
    local list_keys, map_keys = 0, 0
    for k in pairs(vars) do
        if type(k) == "number" and k >= 1 and k <= n and k % 1 == 0 then
            list_keys = list_keys + 1
        else
            map_keys = map_keys + 1
        end
    end
    if list_keys > 0 and map_keys > 0 then
        return "variables mixes a list of entries with NAME = value pairs; use one form"
    end
    -- every env() left unset, each naming its variable
    local unset = {}
    for k, v in pairs(vars) do
        local where = list_keys > 0 and ("variables[%d]"):format(k) or ("variables.%s"):format(tostring(k))
        if M.is_unset(v) then
            unset[#unset + 1] = where .. ": " .. unset_message(v)
        elseif type(v) == "table" and M.is_unset(rawget(v, "value")) then
            local name = type(rawget(v, "name")) == "string" and ("variables." .. v.name) or where
            unset[#unset + 1] = name .. ".value: " .. unset_message(v.value)
        end
    end
    if #unset > 0 then
        table.sort(unset)
        return table.concat(unset, "; ")
    end
    for k, v in pairs(vars) do
        local where = list_keys > 0 and ("variables[%d]"):format(k) or ("variables.%s"):format(tostring(k))
        if list_keys > 0 and type(v) ~= "table" then
            return where .. " must be a table {name = , value = , masked = }"
        end
        if type(v) == "table" then
            for key in pairs(v) do
                if not ENTRY_KEYS[key] then
                    return ("%s has an unknown key %q (name, value, masked, description, keep)"):format(where, tostring(key))
                end
            end
            if v.masked ~= nil and type(v.masked) ~= "boolean" then
                return ("%s.masked must be true or false, got %s"):format(where, type(v.masked))
            end
            -- { masked = true, keep = true }: must exist masked, keep its current value (cxone export)
            if v.keep ~= nil then
                if v.keep ~= true then
                    return ("%s.keep must be true (a masked variable kept as it is), got %s"):format(where, tostring(v.keep))
                end
                if v.masked ~= true then return where .. ": keep = true needs masked = true" end
                if v.value ~= nil then return where .. ": keep = true takes no value (the current one is kept)" end
                if v.description ~= nil then return where .. ": keep = true takes no description" end
            end
        elseif type(v) ~= "string" then
            return ("%s must be a string or a table {value = , masked = }, got %s"):format(where, type(v))
        end
    end
    return nil
end

--- Lists what is wrong with a list of steps, before any request: unknown step keys, an
-- unresolvable tier or baseline, an action id that is not a string, variables mixing the list
-- and map forms, a `masked` that is not a boolean, an (action, tier) pair given twice. Value rules
-- (names, lengths, characters) are validate's, at plan time.
-- @tparam table steps
-- @tparam[opt] cxone.Tiers matrix
-- @treturn table list of `{index = i, message = "..."}` (empty when all is well)
function M.problems(steps, matrix)
    matrix = matrix or tiers.new()
    local problems, seen = {}, {}
    local function bad(i, _, msg)
        problems[#problems + 1] = { index = i, message = msg }
    end
    for i, s in ipairs(steps) do
        if type(s) ~= "table" then
            bad(i, s, "a step must be a table, got " .. type(s))
        else
            local unknown = {}
            for _, k in ipairs(sorted_keys(s)) do
                if not STEP_KEYS[k] then unknown[#unknown + 1] = k end
            end
            if #unknown > 0 then
                bad(i, s, ("unknown key%s %s (a step has action, tier, baseline, variables, drift)")
                    :format(#unknown == 1 and "" or "s", table.concat(unknown, ", ")))
            end
            for _, k in ipairs({ "action", "tier", "baseline" }) do
                if M.is_unset(s[k]) then bad(i, s, k .. ": " .. unset_message(s[k])) end
            end
            if s.drift ~= nil then
                local derr = check_drift(s.drift, "drift")
                if derr then bad(i, s, derr) end
            end
            if type(s.action) ~= "string" then bad(i, s, "action must be an action id string") end
            local t, err = nil, nil
            if type(s.tier) ~= "string" then
                bad(i, s, "tier must be a string")
            else
                t, err = matrix:resolve(s.tier)
                if not t then bad(i, s, err) end
            end
            if s.baseline ~= nil then
                local b, berr = type(s.baseline) == "string" and matrix:resolve(s.baseline)
                if not b then bad(i, s, berr or "baseline must be a tier name") end
            end
            local verr = check_variables(s.variables)
            if verr then bad(i, s, verr) end
            if t and type(s.action) == "string" then
                local key = s.action .. "\0" .. t.id
                if seen[key] then
                    bad(i, s, ("repeats step %d: one step per action and tier"):format(seen[key]))
                else
                    seen[key] = i
                end
            end
        end
    end
    return problems
end

--- Checks a list of steps (see problems).
-- @treturn[1] true
-- @treturn[2] fail: every problem, one per line, each naming its step (code "invalid")
function M.check(steps, matrix)
    if type(steps) ~= "table" then
        error("bad argument #1 to 'check' (table expected, got " .. type(steps) .. ")", 2)
    end
    local problems = M.problems(steps, matrix)
    if #problems == 0 then return true end
    local lines = {}
    for i, p in ipairs(problems) do
        local s = steps[p.index]
        lines[i] = (type(s) == "table" and ("step %d (%s %s): "):format(p.index, tostring(s.action), tostring(s.tier))
            or ("step %d: "):format(p.index)) .. p.message
    end
    return nil, table.concat(lines, "\n"), "invalid"
end

return M
