--- One `cxone repl` session: the globals a line sees (`client`, `cxone`, `help`, `print`), how a
-- line is compiled (an expression first, so no `return` is needed) and evaluated, and what the
-- session learns as it goes (secrets to scrub from every output, action ids to complete).
-- Rendering, completion and help live in cxone.repl.render, .complete and .help.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.repl.session

local show = require("cxone.repl.render")
local history = require("cxone.repl.history")
local complete = require("cxone.repl.complete")
local help = require("cxone.repl.help")

local M = {}

local pack = table.pack or function(...) return { n = select("#", ...), ... } end

local MASK = show.MASK
local UUID = ("%x"):rep(8) .. "%-" .. ("%x"):rep(4) .. "%-" .. ("%x"):rep(4) .. "%-"
    .. ("%x"):rep(4) .. "%-" .. ("%x"):rep(12)
-- settings of a client whose values are secrets (scrubbed from every output)
local SECRET_SETTINGS = { "client_secret", "access_key_secret", "webhook_secret", "audit_key" }

local scrub, secret_field, has_tostring = show.scrub, show.secret_field, show.has_tostring
local function_names = show.function_names

-- A chunk compiled with env as its globals, under 5.1 (setfenv) and 5.2+ (load's env).
local function load_in(src, name, env)
    if setfenv and loadstring then
        local f, err = loadstring(src, name)
        if f then setfenv(f, env) end
        return f, err
    end
    return load(src, name, "t", env)
end

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
function M.new(opts)
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
    if history.secret_line(src, self.secrets) then history.literal_secrets(src, self.secrets) end
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
    local text, failure = show.render_results(values, self:render_opts())
    if text then
        text = scrub(text, self.secrets)
        note_ids(self, text)
        self.write(text .. "\n")
    end
    if failure then self.failed = true return "failed" end
    return "ok"
end


Session.tier_names = complete.tier_names
Session.complete = complete.complete
Session.doc = help.doc
Session.summaries = help.summaries
Session.help = help.help

return M
