--- Tab completion in `cxone repl`: globals and keywords, fields and methods after `.` and `:`,
-- and inside a string literal the tier names and the action ids the session has seen.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.repl.complete

local KEYWORDS = require("cxone.repl.render").KEYWORDS

local M = {}

-- The identifier keys of v and of its __index chain (strings: the string library's).
function M.collect_keys(v, methods_only, out)
    local seen = {}
    local depth = 0
    while v ~= nil and depth < 6 and not seen[v] do
        seen[v] = true
        if type(v) == "table" then
            for k, x in pairs(v) do
                if type(k) == "string" and k:match("^[%a_][%w_]*$") and k:sub(1, 2) ~= "__"
                    and (not methods_only or type(x) == "function") then
                    out[k] = true
                end
            end
        end
        local mt = getmetatable(v)
        if type(v) == "string" then v = string
        else
            local idx = type(mt) == "table" and rawget(mt, "__index") or nil
            v = type(idx) == "table" and idx or nil
        end
        depth = depth + 1
    end
end

-- The value a dotted path ("client.core", "cxone.tiers") names in env, or nil.
function M.lookup(env, path)
    local v = env
    for name in path:gmatch("[^%.:]+") do
        if v == nil then return nil end
        local ok, x = pcall(function() return v[name] end)
        if not ok then return nil end
        v = x
    end
    return v
end

--- The tier names and environment ids of the session's client (or the default matrix).
function M.tier_names(self)
    local list
    local c = self.client
    if type(c) == "table" and type(rawget(c, "tiers")) == "table" then list = c.tiers.list end
    if not list and self.cxone and self.cxone.tiers then list = self.cxone.tiers.DEFAULT end
    local names = {}
    for _, t in ipairs(list or {}) do
        names[#names + 1] = t.name
        if t.id ~= t.name then names[#names + 1] = t.id end
    end
    return names
end

--- Completes the word under the cursor for a session. `line` is the whole line, `word` the
-- text readline would replace (it ends at the cursor), `start` its position in the line (1-based).
-- @treturn table the replacements, sorted
function M.complete(self, line, word, start)
    start = start or (#line - #word + 1)
    local before = line:sub(1, start - 1)
    local _, dq = before:gsub('"', "")
    local _, sq = before:gsub("'", "")
    local set = {}
    if dq % 2 == 1 or sq % 2 == 1 then
        for _, n in ipairs(M.tier_names(self)) do set[n] = true end
        for _, id in ipairs(self.id_list) do set[id] = true end
        local out = {}
        for k in pairs(set) do if k:sub(1, #word) == word then out[#out + 1] = k end end
        table.sort(out)
        return out
    end
    local expr = word:match("[%a_][%w_%.:]*$") or ""
    local head = word:sub(1, #word - #expr)
    local base, sep, partial = expr:match("^(.-)([%.:])([%w_]*)$")
    local prefix
    if base then
        if base == "" or base:find("[%.:]$") then return {} end
        local v = M.lookup(self.env, base)
        if v == nil then return {} end
        M.collect_keys(v, sep == ":", set)
        prefix = head .. base .. sep
    else
        partial = expr
        if word ~= "" and expr == "" then return {} end
        M.collect_keys(self.env, false, set)
        for _, k in ipairs(KEYWORDS) do set[k] = true end
        prefix = head
    end
    local out = {}
    for k in pairs(set) do
        if k:sub(1, #partial) == partial then out[#out + 1] = prefix .. k end
    end
    table.sort(out)
    return out
end

return M
