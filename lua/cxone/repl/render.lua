--- How `cxone repl` shows values: variable lists as columns, tables as indented literals (secret
-- fields and masked values as ***), functions by the name one would type, objects through their
-- __tostring, and a failure as `nil  "message"  (code)`. Also the names of functions
-- (`client:plan`, `cxone.drift`) that help and completion share.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.repl.render

local render = require("cxone.render")

local M = {}

local MAX_DEPTH = 3        -- nesting shown by a table literal; deeper tables print as {…}
local MAX_ITEMS = 40       -- entries shown per table before "… N more"
local INLINE_WIDTH = 100  -- a table whose literal fits on one line of this width stays on one
local MASK = "***"
local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
    "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }
M.MASK = MASK
M.KEYWORDS = KEYWORDS

-- A key in a table literal: bare when it is an identifier, else bracketed.
local function is_ident(s)
    if type(s) ~= "string" or not s:match("^[%a_][%w_]*$") then return false end
    for _, k in ipairs(KEYWORDS) do if k == s then return false end end
    return true
end

-- Field names whose string values are secrets and render as ***.
local function secret_field(k)
    if type(k) ~= "string" then return false end
    local l = k:lower()
    return l:find("secret", 1, true) ~= nil or l:find("token", 1, true) ~= nil
        or l:find("passw", 1, true) ~= nil or l == "key" or l:sub(-4) == "_key"
        or l == "authorization" or l == "cookie"
end

-- Replaces every occurrence of a known secret in s by ***.
local function scrub(s, secrets)
    if not secrets then return s end
    for secret in pairs(secrets) do
        local i = 1
        while true do
            local a, b = s:find(secret, i, true)
            if not a then break end
            s = s:sub(1, a - 1) .. MASK .. s:sub(b + 1)
            i = a + #MASK
        end
    end
    return s
end
M.scrub = scrub


-- function names ---------------------------------------------------------------------------------

-- Maps functions to the names a user would type: client:plan, cxone.drift, string.format.
local function function_names(env)
    local names, seen = {}, {}
    local function add(f, name)
        if type(f) == "function" and names[f] == nil then names[f] = name end
    end
    local function walk(tbl, prefix, sep, depth)
        if type(tbl) ~= "table" or seen[tbl] or depth < 0 then return end
        seen[tbl] = true
        local keys = {}
        for k in pairs(tbl) do if is_ident(k) then keys[#keys + 1] = k end end
        table.sort(keys)
        for _, k in ipairs(keys) do
            local v = rawget(tbl, k)
            if type(v) == "function" then add(v, prefix .. sep .. k)
            elseif type(v) == "table" and sep == "." then walk(v, prefix .. "." .. k, ".", depth - 1) end
        end
    end
    local function methods(obj, prefix)
        local mt = getmetatable(obj)
        local idx = type(mt) == "table" and rawget(mt, "__index")
        if type(idx) == "table" then walk(idx, prefix, ":", 0) end
    end
    local client = rawget(env, "client")
    if client then
        methods(client, "client")
        if type(client) == "table" and rawget(client, "core") then methods(client.core, "client.core") end
    end
    local cxone = rawget(env, "cxone")
    if type(cxone) == "table" then walk(cxone, "cxone", ".", 2) end
    for k, v in pairs(env) do
        if is_ident(k) and type(v) == "function" then add(v, k) end
    end
    for _, lib in ipairs({ "string", "table", "math", "io", "os", "coroutine", "utf8", "debug" }) do
        walk(rawget(_G, lib), lib, ".", 0)
    end
    for k, v in pairs(_G) do
        if is_ident(k) and type(v) == "function" then add(v, k) end
    end
    return names
end

-- "function client:plan(step)", "function cxone.core.sha256 (C)", "function (stdin:3)".
local function describe_function(f, names)
    local name = names and names[f]
    local info = debug.getinfo(f, "Su")
    if info.what == "C" then
        return "function " .. (name or "(C)") .. (name and " (C)" or "")
    end
    local params = {}
    if info.nparams and debug.getlocal then
        for i = 1, info.nparams do
            local ok, p = pcall(debug.getlocal, f, i)
            if ok and p then params[#params + 1] = p end
        end
        if name and name:find(":", 1, true) and params[1] == "self" then table.remove(params, 1) end
        if info.isvararg then params[#params + 1] = "..." end
    end
    local where = info.short_src .. ":" .. tostring(info.linedefined)
    if name then
        return ("function %s(%s)"):format(name, table.concat(params, ", "))
    end
    return ("function (%s)%s"):format(where, #params > 0 and (" (" .. table.concat(params, ", ") .. ")") or "")
end

-- rendering --------------------------------------------------------------------------------------

local function has_tostring(v)
    local mt = getmetatable(v)
    return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

local function type_name(v)
    local mt = getmetatable(v)
    return type(mt) == "table" and type(rawget(mt, "__name")) == "string" and rawget(mt, "__name") or nil
end

-- An array of variable entries ({name, value, masked, description}).
local function is_variable_list(t)
    if type(t) ~= "table" or #t == 0 or has_tostring(t) then return false end
    for i = 1, #t do
        local e = t[i]
        if type(e) ~= "table" or type(e.name) ~= "string" then return false end
        if e.value == nil and e.masked == nil then return false end
    end
    return true
end

local function variable_rows(list)
    local rows = { { "NAME", "VALUE", "MASKED", "DESCRIPTION" } }
    local any_desc = false
    for i = 1, #list do
        local e = list[i]
        local masked = e.masked == true
        local value = masked and MASK or (e.value == nil and "(absent)" or render.quote(e.value, 60))
        local desc = type(e.description) == "string" and e.description or ""
        if desc ~= "" then any_desc = true end
        rows[#rows + 1] = { e.name, value, masked and "yes" or "no", desc }
    end
    local width = {}
    for _, r in ipairs(rows) do
        for c = 1, 3 do
            local n = 0
            for _ in r[c]:gmatch("[^\128-\191]") do n = n + 1 end
            width[c] = math.max(width[c] or 0, n)
        end
    end
    local out = {}
    for _, r in ipairs(rows) do
        local line = "  " .. render.pad(r[1], width[1]) .. "  " .. render.pad(r[2], width[2]) .. "  "
        if any_desc then
            line = line .. render.pad(r[3], width[3]) .. "  " .. render.quote(r[4], 60):sub(2, -2)
            if r == rows[1] then line = line:gsub('\\"', '"') end
        else
            line = line .. r[3]
        end
        out[#out + 1] = (line:gsub("%s+$", ""))
    end
    return table.concat(out, "\n")
end

local render_value

local function sorted_keys(t)
    local n = #t
    local keys = {}
    for k in pairs(t) do
        if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b)
        local ta, tb = type(a), type(b)
        if ta ~= tb then return ta < tb end
        if ta == "number" or ta == "string" then return a < b end
        return tostring(a) < tostring(b)
    end)
    return keys, n
end

local function render_table(t, ctx, depth, indent)
    if ctx.seen[t] then return "{…cycle}" end
    local keys, n = sorted_keys(t)
    if n + #keys == 0 then return "{}" end
    if depth >= MAX_DEPTH then return ("{… %d entr%s}"):format(n + #keys, n + #keys == 1 and "y" or "ies") end
    ctx.seen[t] = true
    local masked = rawget(t, "masked") == true
    local items = {}
    local shown = 0
    for i = 1, n do
        shown = shown + 1
        if shown > MAX_ITEMS then break end
        items[#items + 1] = render_value(t[i], ctx, depth + 1, indent .. "  ")
    end
    for _, k in ipairs(keys) do
        shown = shown + 1
        if shown > MAX_ITEMS then break end
        local v = rawget(t, k)
        local key = is_ident(k) and k or ("[" .. render_value(k, ctx, MAX_DEPTH, "") .. "]")
        local text
        if type(v) == "string" and ((masked and k == "value") or secret_field(k)) then
            text = MASK
        else
            text = render_value(v, ctx, depth + 1, indent .. "  ")
        end
        items[#items + 1] = key .. " = " .. text
    end
    ctx.seen[t] = nil
    local more = n + #keys - MAX_ITEMS
    if more > 0 then items[#items + 1] = ("… %d more"):format(more) end
    local label = type_name(t)
    label = label and ("--[[" .. label .. "]] ") or ""
    local inline = label .. "{ " .. table.concat(items, ", ") .. " }"
    if #inline + #indent <= INLINE_WIDTH and not inline:find("\n", 1, true) then return inline end
    return label .. "{\n" .. indent .. "  " .. table.concat(items, ",\n" .. indent .. "  ")
        .. "\n" .. indent .. "}"
end

render_value = function(v, ctx, depth, indent)
    local t = type(v)
    if t == "string" then return render.quote(v, depth == 0 and 400 or 120) end
    if t == "number" or t == "boolean" or t == "nil" then return tostring(v) end
    if t == "function" then return describe_function(v, ctx.names) end
    if ctx.null ~= nil and v == ctx.null then return "null" end
    if has_tostring(v) then
        local ok, s = pcall(tostring, v)
        if not ok then return "<" .. (type_name(v) or t) .. ">" end
        if depth > 0 then
            local first = s:match("^[^\n]*")
            return "<" .. first .. (first ~= s and " …" or "") .. ">"
        end
        return s
    end
    if t == "table" then
        if is_variable_list(v) then
            if depth == 0 then return variable_rows(v) end
            return ("{… %d variables}"):format(#v)
        end
        if depth == 0 and is_variable_list(rawget(v, "variables")) then
            local head = {}
            if type(rawget(v, "actionId")) == "string" then head[#head + 1] = v.actionId end
            if type(rawget(v, "environmentId")) == "string" then head[#head + 1] = v.environmentId end
            local n = #v.variables
            head[#head + 1] = ("%d variable%s"):format(n, n == 1 and "" or "s")
            return table.concat(head, "  ") .. "\n" .. variable_rows(v.variables)
        end
        return render_table(v, ctx, depth, indent)
    end
    return tostring(v)
end

--- Renders one value as the session prints it (a plain string; secrets are not scrubbed here).
-- @param v any value
-- @tparam[opt] table opts `names` (function → name, see the session), `null` (cxone.null)
-- @treturn string
function M.render(v, opts)
    opts = opts or {}
    return render_value(v, { seen = {}, names = opts.names, null = opts.null }, 0, "")
end

--- Renders the values a line produced: a failure (`nil, message[, code]`) as
-- `nil  "message"  (code)`, anything else value by value.
-- @tparam table r packed values (`n` set)
-- @tparam[opt] table opts as for render
-- @treturn string|nil nil when there is nothing to print
-- @treturn boolean true when the values are a failure
function M.render_results(r, opts)
    local n = r.n
    while n > 1 and r[n] == nil do n = n - 1 end -- trailing nils are not shown
    if n == 0 then return nil, false end
    if r[1] == nil and r.n >= 2 and type(r[2]) == "string" then
        local s = "nil  " .. render.quote(r[2], 400)
        if r[3] ~= nil then s = s .. "  (" .. tostring(r[3]) .. ")" end
        return s, true
    end
    local parts, multi = {}, false
    for i = 1, n do
        parts[i] = M.render(r[i], opts)
        if parts[i]:find("\n", 1, true) then multi = true end
    end
    return table.concat(parts, multi and "\n" or "  "), false
end


M.is_ident = is_ident
M.secret_field = secret_field
M.has_tostring = has_tostring
M.function_names = function_names
M.describe_function = describe_function

return M
