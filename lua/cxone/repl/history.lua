--- What `cxone repl` remembers between sessions, and what it never writes down: the history file
-- (~/.cxone_history, mode 0600, CXONE_HISTORY) and the filter that keeps out any line holding a
-- secret (a known secret, a masked value, a string literal assigned to a name ending in SECRET,
-- KEY, TOKEN or PASSWORD).
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.repl.history

local M = {}

local HISTORY_KEEP = 1000  -- lines kept in the history file
local SECRET_SUFFIXES = { "SECRET", "KEY", "TOKEN", "PASSWORD" }

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- os.execute's success under 5.1 (a number) and 5.2+ (true).
local function ran(r) return r == true or r == 0 end

local function read_lines(path)
    local f = io.open(path, "r")
    if not f then return nil end
    local lines = {}
    for l in f:lines() do lines[#lines + 1] = l end
    f:close()
    return lines
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

--- The string literals a secret-looking chunk gives (so they are scrubbed from output later).
function M.literal_secrets(line, secrets)
    for name, _, body in line:gmatch("([%a_][%w_]*)%s*=%s*([\"'])(.-)%2") do
        local upper = name:upper()
        local hit = name == "value" and line:find("masked%s*=%s*true") ~= nil
        for _, suffix in ipairs(SECRET_SUFFIXES) do
            if upper:sub(-#suffix) == suffix then hit = true end
        end
        if hit and #body >= 4 and not body:find("\\", 1, true) then secrets[body] = true end
    end
end

-- history file -----------------------------------------------------------------------------------

--- Where the history goes: CXONE_HISTORY (empty: none), else ~/.cxone_history.
function M.history_path()
    local v = require("cxone.env").raw("history")
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

--- The history file at path (nil: none), its lines read and trimmed to the last HISTORY_KEEP;
-- warn(message) is called when it cannot be written (the session then keeps none).
function M.open(path, warn)
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

M.read_lines = read_lines
M.shquote = shquote
M.ran = ran

return M
