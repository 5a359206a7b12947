--- The interactive session of `cxone repl`: Lua with `cxone` loaded and `client` built from the
-- CXONE_* settings, where every value prints readably, Tab completes names, fields, methods,
-- tier names and the action ids seen so far, and a history that keeps no secret.
--
-- On a terminal it reads lines through Debian's lua-readline (the `readline` module, optional);
-- otherwise (piped stdin, or readline missing) it reads plain lines. Piped input is evaluated
-- line by line (a statement may span lines) and the exit status is 1 when any line failed
-- (an error, or a call returning `nil, message, code`), else 0.
--
-- Ctrl-C clears the line being typed and never stops the session: while the session runs, the
-- terminal's interrupt character is switched off and ^C becomes the line-kill character, so a
-- running call (an apply, say) is never cut in half; Ctrl-\ still quits. `.exit` or Ctrl-D ends
-- the session with status 0.
--
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4 (the command runs it under 5.4).
-- @module cxone.repl

local render = require("cxone.render")

local M = {}

local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack

local MAX_DEPTH = 3        -- nesting shown by a table literal; deeper tables print as {…}
local MAX_ITEMS = 40       -- entries shown per table before "… N more"
local INLINE_WIDTH = 100  -- a table whose literal fits on one line of this width stays on one
local HISTORY_KEEP = 1000  -- lines kept in the history file
local MASK = "***"
local SECRET_SUFFIXES = { "SECRET", "KEY", "TOKEN", "PASSWORD" }
local UUID = ("%x"):rep(8) .. "%-" .. ("%x"):rep(4) .. "%-" .. ("%x"):rep(4) .. "%-"
    .. ("%x"):rep(4) .. "%-" .. ("%x"):rep(12)
local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
    "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }
-- settings of a client whose values are secrets (scrubbed from every output)
local SECRET_SETTINGS = { "client_secret", "access_key_secret", "webhook_secret", "audit_key" }

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- os.execute's success under 5.1 (a number) and 5.2+ (true).
local function ran(r) return r == true or r == 0 end

-- A chunk compiled with env as its globals, under 5.1 (setfenv) and 5.2+ (load's env).
local function load_in(src, name, env)
    if setfenv and loadstring then
        local f, err = loadstring(src, name)
        if f then setfenv(f, env) end
        return f, err
    end
    return load(src, name, "t", env)
end

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

-- history: what is kept out ----------------------------------------------------------------------

local function string_start(s, i)
    local c = s:sub(i, i)
    if c == '"' or c == "'" then return true end
    return c == "[" and (s:sub(i + 1, i + 1) == "[" or s:sub(i + 1, i + 1) == "=")
end

--- Whether a line (or a multi-line chunk) must stay out of the history: it holds a known secret,
-- a string literal given as `value` beside `masked = true`, or a string literal assigned to a
-- name ending in SECRET, KEY, TOKEN or PASSWORD.
-- @tparam string line
-- @tparam[opt] table secrets a set of known secret strings
-- @treturn boolean
function M.secret_line(line, secrets)
    for secret in pairs(secrets or {}) do
        if line:find(secret, 1, true) then return true end
    end
    if line:find("masked%s*=%s*true") then
        local i = 1
        while true do
            local _, e = line:find("value%s*=%s*", i)
            if not e then break end
            if string_start(line, e + 1) then return true end
            i = e + 1
        end
    end
    local function check(name, pos)
        local upper = name:upper()
        for _, suffix in ipairs(SECRET_SUFFIXES) do
            if upper:sub(-#suffix) == suffix and string_start(line, pos) then return true end
        end
        return false
    end
    for name, pos in line:gmatch("([%a_][%w_]*)%s*=%s*()") do
        if line:sub(pos, pos) ~= "=" and check(name, pos) then return true end
    end
    for name, pos in line:gmatch("%[%s*[\"']([%w_]+)[\"']%s*%]%s*=%s*()") do
        if check(name, pos) then return true end
    end
    return false
end

-- The string literals a secret-looking chunk gives (so they are scrubbed from output later).
local function literal_secrets(line, secrets)
    for name, _, body in line:gmatch("([%a_][%w_]*)%s*=%s*([\"'])(.-)%2") do
        local upper = name:upper()
        local hit = name == "value" and line:find("masked%s*=%s*true") ~= nil
        for _, suffix in ipairs(SECRET_SUFFIXES) do
            if upper:sub(-#suffix) == suffix then hit = true end
        end
        if hit and #body >= 4 and not body:find("\\", 1, true) then secrets[body] = true end
    end
end

-- the session ------------------------------------------------------------------------------------

local Session = {}
Session.__index = Session

local function remember_secrets(self, v, depth, seen)
    if type(v) ~= "table" or depth > 4 or seen[v] then return end
    seen[v] = true
    if rawget(v, "masked") == true and type(rawget(v, "value")) == "string" then
        local s = rawget(v, "value")
        if #s >= 4 and s ~= MASK then self.secrets[s] = true end
    end
    for k, x in pairs(v) do
        if type(x) == "string" and secret_field(k) and #x >= 4 and x ~= MASK then self.secrets[x] = true end
        if type(x) == "table" and not has_tostring(x) then remember_secrets(self, x, depth + 1, seen) end
    end
end

local function note_ids(self, s)
    for id in s:gmatch(UUID) do
        if not self.ids[id] then
            self.ids[id] = true
            self.id_list[#self.id_list + 1] = id
        end
    end
end

--- A session: the globals a line sees (`client`, `cxone`, `help`, `print`) and what it learnt
-- (secrets to scrub, action ids to complete). opts: `client`, `client_error`, `cxone` (the
-- package, loaded when absent), `out` (a function writing text, default io.stdout).
-- @treturn table session with `eval`, `complete`, `help`
function M.session(opts)
    opts = opts or {}
    local self = setmetatable({ secrets = {}, ids = {}, id_list = {}, failed = false }, Session)
    self.write = opts.out or function(s) io.stdout:write(s) end
    self.err = opts.err or self.write
    local ok, cxone = true, opts.cxone
    if cxone == nil then ok, cxone = pcall(require, "cxone") end
    self.cxone = ok and cxone or nil
    self.client = opts.client
    self.client_error = opts.client_error
    local env = setmetatable({}, { __index = _G })
    env.cxone = self.cxone
    env.client = self.client
    env.help = function(...) self:help(...) end
    env.print = function(...)
        local n, parts = select("#", ...), {}
        for i = 1, n do parts[i] = tostring((select(i, ...))) end
        self.write(scrub(table.concat(parts, "\t"), self.secrets) .. "\n")
    end
    self.env = env
    local cfg = type(self.client) == "table" and rawget(self.client, "cfg")
    if type(cfg) == "table" then
        for _, k in ipairs(SECRET_SETTINGS) do
            if type(cfg[k]) == "string" and #cfg[k] >= 4 then self.secrets[cfg[k]] = true end
        end
    end
    for _, var in ipairs({ "CXONE_CLIENT_SECRET", "CXONE_ACCESS_KEY_SECRET", "CXONE_WEBHOOK_SECRET",
        "CXONE_AUDIT_KEY" }) do
        local v = os.getenv(var)
        if v and #v >= 4 then self.secrets[v] = true end
    end
    return self
end

function Session:render_opts()
    return { names = function_names(self.env), null = self.cxone and self.cxone.null }
end

--- Compiles a chunk as the session would: an expression first (so no `return` is needed), then
-- a statement. Returns the function, or nil, message, and "incomplete" when more lines could
-- complete it.
function Session:compile(src)
    -- `client:plan` alone is no Lua, but it is how one asks what a method is: show the function
    local obj, meth = src:match("^%s*([%a_][%w_%.]*):([%a_][%w_]*)%s*$")
    if obj then src = obj .. "." .. meth end
    local f, eerr = load_in("return " .. src, "=stdin", self.env)
    if f then return f end
    local err
    f, err = load_in(src, "=stdin", self.env)
    if f then return f end
    if err:find("<eof>'?$") or eerr:find("<eof>'?$") then return nil, err, "incomplete" end
    return nil, err
end

--- Evaluates a complete chunk and prints what it gives. Returns "ok", "failed" (an error or a
-- `nil, message, code` result) or "incomplete" (the chunk needs more lines; nothing printed).
function Session:eval(src)
    if src:sub(1, 1) == "=" then src = "return " .. src:sub(2) end
    note_ids(self, src)
    if M.secret_line(src, self.secrets) then literal_secrets(src, self.secrets) end
    local f, err, why = self:compile(src)
    if not f then
        if why == "incomplete" then return "incomplete" end
        self.err(scrub("error: " .. tostring(err), self.secrets) .. "\n")
        self.failed = true
        return "failed"
    end
    local r = pack(xpcall(f, function(e)
        if type(e) == "string" then return e end
        local ok, s = pcall(tostring, e)
        return ok and s or ("(error object: " .. type(e) .. ")")
    end))
    if not r[1] then
        self.err(scrub("error: " .. tostring(r[2]), self.secrets) .. "\n")
        self.failed = true
        return "failed"
    end
    local values = { n = r.n - 1 }
    for i = 2, r.n do values[i - 1] = r[i] end
    for i = 1, values.n do remember_secrets(self, values[i], 0, {}) end
    local text, failure = M.render_results(values, self:render_opts())
    if text then
        text = scrub(text, self.secrets)
        note_ids(self, text)
        self.write(text .. "\n")
    end
    if failure then self.failed = true return "failed" end
    return "ok"
end

-- completion -------------------------------------------------------------------------------------

local function collect_keys(v, methods_only, out)
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

local function lookup(env, path)
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
function Session:tier_names()
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

--- Completes the word under the cursor. `line` is the whole line, `word` the text readline
-- would replace (it ends at the cursor), `start` its position in the line (1-based).
-- @treturn table the replacements, sorted
function Session:complete(line, word, start)
    start = start or (#line - #word + 1)
    local before = line:sub(1, start - 1)
    local _, dq = before:gsub('"', "")
    local _, sq = before:gsub("'", "")
    local set = {}
    if dq % 2 == 1 or sq % 2 == 1 then
        for _, n in ipairs(self:tier_names()) do set[n] = true end
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
        local v = lookup(self.env, base)
        if v == nil then return {} end
        collect_keys(v, sep == ":", set)
        prefix = head .. base .. sep
    else
        partial = expr
        if word ~= "" and expr == "" then return {} end
        collect_keys(self.env, false, set)
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

-- help -------------------------------------------------------------------------------------------

local function read_lines(path)
    local f = io.open(path, "r")
    if not f then return nil end
    local lines = {}
    for l in f:lines() do lines[#lines + 1] = l end
    f:close()
    return lines
end

-- The LDoc comment block right above line n of a Lua source file, as its text lines.
local function lua_doc(path, n)
    local lines = read_lines(path)
    if not lines or n < 2 then return nil end
    local block = {}
    local i = n - 1
    while i >= 1 and lines[i]:match("^%s*%-%-") do
        table.insert(block, 1, lines[i])
        i = i - 1
    end
    if #block == 0 or not block[1]:match("^%s*%-%-%-") then return nil end
    for j, l in ipairs(block) do block[j] = l:gsub("^%s*%-%-%-?%s?", "") end
    return block
end

-- The /*** ... */ block of plugin/*.c documenting `@function name` (`name` is "sha256", or
-- ":get" for a method of any type).
local function c_doc(name)
    local src = debug.getinfo(1, "S").source
    local root = src:match("^@(.*)/lua/cxone/repl%.lua$")
    if not root then return nil end
    local p = io.popen("ls " .. shquote(root .. "/plugin") .. " 2>/dev/null")
    if not p then return nil end
    local files = p:read("*a")
    p:close()
    for file in files:gmatch("[^\n]+%.c") do
        local f = io.open(root .. "/plugin/" .. file, "r")
        local text = f and f:read("*a")
        if f then f:close() end
        for block in (text or ""):gmatch("/%*%*%*(.-)%*/") do
            local pat = name:sub(1, 1) == ":" and ("@function%s+[%w_]+" .. name .. "%f[^%w_]")
                or ("@function%s+" .. name .. "%f[^%w_]")
            if block:find(pat) then
                local out = {}
                for l in (block .. "\n"):gmatch("([^\n]*)\n") do
                    l = l:gsub("^%s*%*%s?", "")
                    out[#out + 1] = l
                end
                while out[1] and out[1]:match("^%s*$") do table.remove(out, 1) end
                while out[#out] and out[#out]:match("^%s*$") do table.remove(out) end
                return out
            end
        end
    end
    return nil
end

-- LDoc block lines as the reference shows them: description, parameters, returns, usage.
local function format_doc(title, block)
    local desc, params, returns, usage = {}, {}, {}, {}
    local current = desc
    for _, l in ipairs(block) do
        local tag, rest = l:match("^@([%w_]+)(.*)$")
        local mod = ""
        if rest and rest:sub(1, 1) == "[" then mod, rest = rest:match("^(%b[])(.*)$") end
        rest = rest and rest:match("^%s*(.-)$")
        if tag == "tparam" or tag == "param" then
            local ty, name, text
            if tag == "tparam" then
                ty, name, text = rest:match("^(%S+)%s+(%S+)%s*(.*)$")
                if ty and mod:find("opt", 1, true) then ty = "optional " .. ty end
            else
                name, text = rest:match("^(%S+)%s*(.*)$")
            end
            params[#params + 1] = "  " .. (name or rest) .. (ty and (" (" .. ty .. ")") or "")
                .. ((text and text ~= "") and (": " .. text) or "")
            current = params
        elseif tag == "treturn" or tag == "return" then
            local n = mod:match("^%[(%d+)%]$")
            returns[#returns + 1] = "  " .. (n and (n .. ". ") or "") .. rest
            current = returns
        elseif tag == "usage" then
            if rest ~= "" then usage[#usage + 1] = "  " .. rest end
            current = usage
        elseif tag then
            current = {} -- @function, @module, ...: not shown
        elseif current == desc then
            desc[#desc + 1] = l
        else
            current[#current + 1] = "  " .. l
        end
    end
    while desc[#desc] == "" do table.remove(desc) end
    local out = { title, "" }
    for _, l in ipairs(desc) do out[#out + 1] = l end
    if #params > 0 then out[#out + 1] = "" out[#out + 1] = "Parameters:" for _, l in ipairs(params) do out[#out + 1] = l end end
    if #returns > 0 then out[#out + 1] = "" out[#out + 1] = "Returns:" for _, l in ipairs(returns) do out[#out + 1] = l end end
    if #usage > 0 then out[#out + 1] = "" out[#out + 1] = "Usage:" for _, l in ipairs(usage) do out[#out + 1] = l end end
    return table.concat(out, "\n")
end

--- The documentation of a function, as text: the LDoc comment of its source (Lua functions)
-- or of plugin/*.c (functions of cxone.core), or nil, message.
function Session:doc(f)
    local names = function_names(self.env)
    local name = names[f]
    local title = describe_function(f, names):gsub("^function ", "")
    local info = debug.getinfo(f, "S")
    local block
    if info.what == "C" then
        local sep, short = (name or ""):match("([%.:]?)([%w_]+)$")
        block = short and c_doc(sep == ":" and (":" .. short) or short)
    elseif info.source:sub(1, 1) == "@" then
        block = lua_doc(info.source:sub(2), info.linedefined)
    end
    if not block then return nil, "no documentation for " .. title end
    return format_doc(title, block)
end

-- One-line summaries of the functions a table (or an object's methods) holds.
function Session:summaries(t, prefix, sep)
    local keys = {}
    collect_keys(t, true, keys)
    local list = {}
    for k in pairs(keys) do list[#list + 1] = k end
    table.sort(list)
    local out = {}
    for _, k in ipairs(list) do
        local ok, f = pcall(function() return t[k] end)
        if ok and type(f) == "function" then
            local doc = self:doc(f)
            local summary = doc and doc:match("^[^\n]*\n\n([^\n]*)") or ""
            summary = summary:match("^(.-%.)%s") or summary
            if #summary > 72 then summary = summary:sub(1, 70):gsub("[\128-\191]*$", "") .. "…" end
            local sig = describe_function(f, { [f] = prefix .. sep .. k }):gsub("^function ", "")
            out[#out + 1] = "  " .. render.pad(sig, 34) .. "  " .. summary
        end
    end
    return table.concat(out, "\n")
end

--- help(): what the session offers; help(f): the reference text of a function; help("name"):
-- a client method or a cxone function by name.
function Session:help(what)
    if type(what) == "string" then
        local f = lookup(self.env, what)
        if f == nil and self.client then f = lookup(self.env, "client." .. what) end
        if f == nil and self.cxone then f = lookup(self.env, "cxone." .. what) end
        if f == nil then
            self.write(("help: nothing called %q (help() lists what there is)\n"):format(what))
            return
        end
        what = f
    end
    if type(what) == "function" then
        local text, err = self:doc(what)
        self.write((text or err) .. "\n")
        return
    end
    if type(what) == "table" and what == self.client then what = nil end
    local out = {}
    if what == nil then
        if self.client then
            out[#out + 1] = "client  " .. scrub(tostring(self.client), self.secrets)
            out[#out + 1] = self:summaries(self.client, "client", ":")
        else
            out[#out + 1] = "client  (none: " .. tostring(self.client_error or "no CXONE_* settings") .. ")"
        end
        if self.cxone then
            out[#out + 1] = ""
            out[#out + 1] = "cxone  the package"
            out[#out + 1] = self:summaries(self.cxone, "cxone", ".")
        end
        out[#out + 1] = ""
        out[#out + 1] = "help(f)  the reference text of a function, e.g. help(client.plan)"
        out[#out + 1] = "Values print readably (variable lists as columns, masked values as ***); a failure"
        out[#out + 1] = "prints as nil  \"message\"  (code). Tab completes names, fields, methods, tier names and"
        out[#out + 1] = "action ids seen. Ctrl-C clears the line; .exit or Ctrl-D quits."
    elseif type(what) == "table" then
        out[#out + 1] = self:summaries(what, "", ".")
    else
        out[#out + 1] = "help: give a function, a table or a name, e.g. help(client.plan)"
    end
    self.write(table.concat(out, "\n") .. "\n")
end

-- history file -----------------------------------------------------------------------------------

--- Where the history goes: CXONE_HISTORY (empty: none), else ~/.cxone_history.
function M.history_path()
    local v = os.getenv("CXONE_HISTORY")
    if v then return v ~= "" and v or nil end
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    return home .. "/.cxone_history"
end

-- Creates the file (mode 0600) if it is missing and takes away any wider mode.
local function secure_file(path)
    return ran(os.execute("(umask 077 && : >>" .. shquote(path) .. " && chmod 600 " .. shquote(path)
        .. ") 2>/dev/null"))
end

local History = {}
History.__index = History

local function open_history(path, warn)
    local self = setmetatable({ path = path, lines = {} }, History)
    if not path then return self end
    if not secure_file(path) then
        warn("history: cannot write " .. path .. "; this session keeps none")
        self.path = nil
        return self
    end
    self.lines = read_lines(path) or {}
    if #self.lines > HISTORY_KEEP then
        local keep = {}
        for i = #self.lines - HISTORY_KEEP + 1, #self.lines do keep[#keep + 1] = self.lines[i] end
        local tmp = path .. ".tmp"
        os.remove(tmp)
        if secure_file(tmp) then
            local f = io.open(tmp, "w")
            if f and f:write(table.concat(keep, "\n"), "\n") and f:close() then
                os.rename(tmp, path)
                self.lines = keep
            else
                if f then f:close() end
                os.remove(tmp)
            end
        end
    end
    return self
end

function History:append(lines)
    if not self.path then return true end
    local f = io.open(self.path, "r")
    if f then f:close() elseif not secure_file(self.path) then return false end
    f = io.open(self.path, "a")
    if not f then return false end
    local ok = f:write(table.concat(lines, "\n"), "\n")
    f:close()
    return ok and true or false
end

-- the loop ---------------------------------------------------------------------------------------

local function is_tty(fd)
    local ok, core = pcall(require, "cxone.core")
    if ok and core.isatty then return core.isatty(fd) end
    return ran(os.execute("test -t " .. fd))
end

local function stty(args)
    local p = io.popen("stty " .. args .. " </dev/tty 2>/dev/null")
    if not p then return nil end
    local out = p:read("*a")
    p:close()
    return out
end

-- Reads lines from a terminal through readline; nil when readline is unavailable.
local function terminal_reader(session, history)
    local ok, RL = pcall(require, "readline")
    if not ok or type(RL) ~= "table" or not RL.readline then return nil end
    RL.set_options({ histfile = "", auto_add = false, completion = true })
    if RL.set_readline_name then RL.set_readline_name("cxone") end
    if RL.set_completion_append_character then RL.set_completion_append_character("") end
    RL.set_complete_function(function(text, from, to)
        local okc, res = pcall(function()
            local word = text:sub(from, to - 1)
            return session:complete(text:sub(1, to - 1), word, from)
        end)
        return okc and res or {}
    end)
    for _, l in ipairs(history.lines) do RL.add_history(l) end
    local saved = stty("-g")
    saved = saved and saved:match("^%s*(.-)%s*$")
    if saved and saved ~= "" then stty("intr undef kill ^C") else saved = nil end
    return {
        read = function(prompt) return RL.readline(prompt) end,
        add = function(line) RL.add_history(line) end,
        close = function() if saved then stty(shquote(saved)) end end,
    }
end

local function plain_reader(prompt_on)
    return {
        read = function(prompt)
            if prompt_on then io.stdout:write(prompt) io.stdout:flush() end
            return io.stdin:read("*l")
        end,
        add = function() end,
        close = function() end,
    }
end

--- Runs the session until `.exit` or end of input; returns the exit status.
-- opts: `client` (a cxone client or nil), `client_error` (why there is none), `interactive`
-- (default: stdin and stdout are terminals). Piped: results on stdout, errors on stderr.
-- @treturn number 0, or 1 when reading piped input and a line failed
function M.main(opts)
    opts = opts or {}
    local interactive = opts.interactive
    if interactive == nil then interactive = is_tty(0) and is_tty(1) end
    local session = M.session({ client = opts.client, client_error = opts.client_error,
        err = not interactive and function(s) io.stderr:write(s) end or nil })
    local function warn(msg) io.stderr:write("cxone repl: ", msg, "\n") end
    local history = open_history(interactive and M.history_path() or nil, warn)
    local reader = interactive and terminal_reader(session, history) or plain_reader(interactive)
    -- os.exit from a line must still give the terminal back its interrupt character
    session.env.os = setmetatable({ exit = function(...)
        reader.close()
        return os.exit(...)
    end }, { __index = os })
    local told_secret = false
    local last_saved = history.lines[#history.lines]
    if interactive then
        local version = session.cxone and session.cxone._VERSION or "?"
        io.stdout:write(("cxone %s: `client` is %s\n"):format(tostring(version),
            opts.client and scrub(tostring(opts.client), session.secrets)
                or ("not set (" .. tostring(opts.client_error or "no settings") .. ")")))
        io.stdout:write("help() lists what is available; Tab completes; .exit or Ctrl-D quits.\n")
    elseif not opts.client and opts.client_error then
        warn("no client: " .. tostring(opts.client_error))
    end
    local ok, err = pcall(function()
        local pending = {}
        while true do
            local line = reader.read(#pending == 0 and "> " or ">> ")
            if line == nil then
                if interactive then io.stdout:write("\n") end
                if #pending > 0 then -- input ended inside a statement
                    local _, e = session:compile(table.concat(pending, "\n"))
                    session.err(scrub("error: " .. tostring(e), session.secrets) .. "\n")
                    session.failed = true
                end
                break
            end
            if #pending == 0 and line:match("^%s*%.exit%s*$") then break end
            if #pending > 0 or line:match("%S") then
                pending[#pending + 1] = line
                local src = table.concat(pending, "\n")
                local status = session:eval(src)
                if status ~= "incomplete" then
                    if interactive then
                        if M.secret_line(src, session.secrets) then
                            if not told_secret then
                                told_secret = true
                                io.stdout:write("(kept out of the history: the line holds a secret;"
                                    .. " such lines are never saved)\n")
                            end
                        elseif not (#pending == 1 and pending[1] == last_saved) then -- no repeats
                            last_saved = pending[#pending]
                            for _, l in ipairs(pending) do reader.add(l) end
                            if not history:append(pending) then
                                warn("history: cannot append to " .. tostring(history.path))
                                history.path = nil
                            end
                        end
                    end
                    pending = {}
                end
            end
        end
    end)
    reader.close()
    if not ok then
        io.stderr:write("cxone repl: internal error: ", tostring(err), "\n")
        return 1
    end
    if not interactive and session.failed then return 1 end
    return 0
end

return M
