--- `help()` in `cxone repl`: what the session offers (the client's methods, the package's
-- functions, one line each), and `help(f)`: a function's reference text, from the LDoc comment
-- above a Lua function or, for cxone.core, from the C sources' blocks (cxone.repl.cdoc).
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.repl.help

local render = require("cxone.render")
local show = require("cxone.repl.render")
local complete = require("cxone.repl.complete")
local cdoc = require("cxone.repl.cdoc")
local read_lines = require("cxone.repl.history").read_lines

local M = {}

local function_names, describe_function = show.function_names, show.describe_function
local scrub = show.scrub

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

--- The documentation of a function in a session, as text: the LDoc comment of its source (Lua
-- functions) or of plugin/*.c (functions of cxone.core, see cxone.repl.cdoc), or nil, message.
function M.doc(self, f)
    local names = function_names(self.env)
    local name = names[f]
    local title = describe_function(f, names):gsub("^function ", "")
    local info = debug.getinfo(f, "S")
    local block
    if info.what == "C" then
        local sep, short = (name or ""):match("([%.:]?)([%w_]+)$")
        block = short and cdoc.lookup(sep == ":" and (":" .. short) or short)
    elseif info.source:sub(1, 1) == "@" then
        block = lua_doc(info.source:sub(2), info.linedefined)
    end
    if not block then return nil, "no documentation for " .. title end
    return format_doc(title, block)
end

-- One-line summaries of the functions a table (or an object's methods) holds.
function M.summaries(self, t, prefix, sep)
    local keys = {}
    complete.collect_keys(t, true, keys)
    local list = {}
    for k in pairs(keys) do list[#list + 1] = k end
    table.sort(list)
    local out = {}
    for _, k in ipairs(list) do
        local ok, f = pcall(function() return t[k] end)
        if ok and type(f) == "function" then
            local doc = M.doc(self, f)
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
function M.help(self, what)
    if type(what) == "string" then
        local f = complete.lookup(self.env, what)
        if f == nil and self.client then f = complete.lookup(self.env, "client." .. what) end
        if f == nil and self.cxone then f = complete.lookup(self.env, "cxone." .. what) end
        if f == nil then
            self.write(("help: nothing called %q (help() lists what there is)\n"):format(what))
            return
        end
        what = f
    end
    if type(what) == "function" then
        local text, err = M.doc(self, what)
        self.write((text or err) .. "\n")
        return
    end
    if type(what) == "table" and what == self.client then what = nil end
    local out = {}
    if what == nil then
        if self.client then
            out[#out + 1] = "client  " .. scrub(tostring(self.client), self.secrets)
            out[#out + 1] = M.summaries(self, self.client, "client", ":")
        else
            out[#out + 1] = "client  (none: " .. tostring(self.client_error or "no CXONE_* settings") .. ")"
        end
        if self.cxone then
            out[#out + 1] = ""
            out[#out + 1] = "cxone  the package"
            out[#out + 1] = M.summaries(self, self.cxone, "cxone", ".")
        end
        out[#out + 1] = ""
        out[#out + 1] = "help(f)  the reference text of a function, e.g. help(client.plan)"
        out[#out + 1] = "Values print readably (variable lists as columns, masked values as ***); a failure"
        out[#out + 1] = "prints as nil  \"message\"  (code). Tab completes names, fields, methods, tier names and"
        out[#out + 1] = "action ids seen. Ctrl-C clears the line; .exit or Ctrl-D quits."
    elseif type(what) == "table" then
        out[#out + 1] = M.summaries(self, what, "", ".")
    else
        out[#out + 1] = "help: give a function, a table or a name, e.g. help(client.plan)"
    end
    self.write(table.concat(out, "\n") .. "\n")
end

return M
