--- The masked-value ledger: what our own writes left behind, so that re-runs stay idempotent.
-- The API never returns a masked value. After each write we keep, per action and environment,
-- the ETag the write produced and a keyed fingerprint (HMAC-SHA-256) of each masked value we
-- sent; while the environment's ETag is still that one, a masked value whose fingerprint matches
-- is unchanged. It also remembers builds a run owes (a write landed, its build did not), so the
-- next run queues them. Fingerprints are not values: without the key they cannot be checked
-- against guesses.
--
-- On disk: a journal of JSON lines under a lock file (cxone.core's state_open): an optional
-- snapshot line first, then one line per event, each appended durably. Loading folds the lines
-- in order; a run compacts the journal into one snapshot line when it ends. Appends from
-- concurrent runs are serialised by the lock, so none is lost.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.ledger

local core = require("cxone.core")

local M = {}

local FORMAT = "cxone-ledger/2"

local Ledger = {}
Ledger.__index = Ledger
Ledger.__name = "cxone.Ledger"

local function key(action, env) return action .. "/" .. env end
M.key = key

local function decode(line)
    local ok, v = pcall(core.json_decode, line)
    if ok and type(v) == "table" then return v end
    return nil
end

local function copy(t)
    local out = {}
    for k, v in pairs(t or {}) do out[k] = v end
    return out
end

-- Applies one journal event to the entries.
local function fold(entries, ev)
    local k = ev.k
    if type(k) ~= "string" then return end
    local cur = entries[k]
    if ev.op == "write" then
        local fp, runs = {}, {}
        if cur and ev.prev ~= nil and cur.etag == ev.prev then fp, runs = copy(cur.fp), copy(cur.runs) end
        for _, name in ipairs(type(ev.clear) == "table" and ev.clear or {}) do fp[name], runs[name] = nil, nil end
        for name, v in pairs(type(ev.fp) == "table" and ev.fp or {}) do fp[name], runs[name] = v, ev.run end
        entries[k] = { etag = ev.etag, fp = fp, runs = runs, build = cur and cur.build or nil }
    elseif ev.op == "build_owed" then
        cur = cur or { fp = {} }
        cur.build = { key = ev.key, run = ev.run }
        entries[k] = cur
    elseif ev.op == "build_done" then
        if cur then cur.build = nil end
    end
end

-- Parses a journal: a snapshot line and/or event lines. Only a torn final append (bytes after
-- the last newline, a writer killed mid-write) is skipped; any other line that is not a record
-- makes the journal unreadable (nil, "line N: ..."): never silently discarded. A ledger written
-- by an earlier version (one JSON object mapping "action/env" to {etag, fp}) is read as a
-- snapshot.
local function parse(text)
    local entries = {}
    local n, pos = 0, 1
    while pos <= #text do
        local nl = text:find("\n", pos, true)
        if not nl then break end -- a torn final append: skipped (the next append follows it)
        local line = text:sub(pos, nl - 1)
        pos = nl + 1
        n = n + 1
        if line:find("%S") then
            local v = decode(line)
            if not v then return nil, ("line %d is not a ledger record"):format(n) end
            if v.format == FORMAT and type(v.entries) == "table" then
                for k, e in pairs(v.entries) do
                    if type(e) == "table" then
                        entries[k] = { etag = e.etag, fp = type(e.fp) == "table" and e.fp or {}, build = e.build,
                                       runs = type(e.runs) == "table" and e.runs or {} }
                    end
                end
            elseif v.op ~= nil then
                fold(entries, v)
            elseif v.format == nil and v.k == nil then
                for k, e in pairs(v) do
                    if type(k) == "string" and type(e) == "table" then
                        entries[k] = { etag = e.etag, fp = type(e.fp) == "table" and e.fp or {} }
                    end
                end
            else
                return nil, ("line %d is a ledger of another format (%s)"):format(n, tostring(v.format))
            end
        end
    end
    return entries
end

--- Opens a ledger for reading (nothing is created: planning needs no write access).
-- `path` nil or false: kept in memory only (nothing survives the run).
-- @tparam string|nil path
-- @treturn[1] cxone.Ledger
-- @treturn[2] fail (code "io")
function M.open(path)
    local self = setmetatable({ entries = {}, path = path or nil, pending = {} }, Ledger)
    local ok, err, code = self:reload()
    if not ok then return nil, err, code end
    return self
end

--- Prepares the ledger for writing: takes its lock file (created mode 0600 beside it).
-- @treturn[1] true
-- @treturn[2] fail (code "io")
function Ledger:attach()
    if self.file or not self.path then return true end
    local file, err, code = core.state_open(self.path)
    if not file then return nil, err, code end
    self.file = file
    return true
end

--- Reads the journal again (other runs may have appended).
function Ledger:reload()
    if not self.path then return true end
    local text
    if self.file then
        local err, code
        text, err, code = self.file:read()
        if not text then return nil, err, code end
    else
        local f, err, errno = io.open(self.path, "rb")
        if not f then
            if errno ~= 2 then -- ENOENT: no ledger yet
                return nil, "masked-value ledger unreadable: " .. tostring(err), "io"
            end
            text = ""
        else
            local rerr
            text, rerr = f:read("*a")
            f:close()
            if not text then
                return nil, ("masked-value ledger %s is unreadable: %s"):format(self.path, tostring(rerr)), "io"
            end
        end
    end
    local entries, perr = parse(text)
    if not entries then
        return nil, ("masked-value ledger %s is unreadable: %s (move it away to start afresh; "
            .. "the next runs then re-send masked values and forget owed builds)"):format(self.path, perr), "io"
    end
    self.entries = entries
    return true
end

-- The key of an action and environment; with several tenants (a profile), the tenant serving
-- that environment is part of it (`scope(env)`, its label), so tenants never share entries.
function Ledger:key(action, env)
    local s = self.scope and self.scope(env)
    return s and (key(action, env) .. "@" .. s) or key(action, env)
end

--- Keys entries by tenant: `scope(env)` gives the label of the tenant serving env (or nil).
function M.scope_for(l, c)
    if c and c.tenancy then
        l.scope = function(env)
            local t = c.tenancy.by_env[env]
            return t and t.label or nil
        end
    end
    return l
end

--- The entry for an action and environment: `{etag=, fp={NAME=fingerprint}, build={key=}}` or nil.
function Ledger:get(action, env) return self.entries[self:key(action, env)] end

-- Records an event: folded in memory at once, written with the next flush.
function Ledger:_event(ev)
    fold(self.entries, ev)
    self.pending[#self.pending + 1] = ev
end

--- After a write: the ETag it produced (nil when the server gives none), the ETag it was
-- planned against, the fingerprints of the masked values sent, the names sent unmasked and the run.
function Ledger:note_write(action, env, info)
    -- without an ETag only this ledger vouches for a masked value later: planning never trusts
    -- such a fingerprint (it re-sends); drift reports it as "assumed equal, written by run ..."
    self:_event({ k = self:key(action, env), op = "write", prev = info.prev, etag = info.etag, run = info.run,
                  fp = info.fp or {}, clear = info.clear or {} })
end

--- A build a write owes: journalled before the write starts (so a crash cannot forget it) and
-- again when the build failed; the next run queues it (with this Idempotency-Key) and says so.
-- `run` is the run id that owes it.
function Ledger:note_build_owed(action, env, idem, run)
    self:_event({ k = self:key(action, env), op = "build_owed", key = idem, run = run })
end

--- The owed build happened.
function Ledger:note_build_done(action, env)
    local e = self.entries[self:key(action, env)]
    if e and e.build then self:_event({ k = self:key(action, env), op = "build_done" }) end
end

--- Appends the pending events durably (one write).
-- @treturn[1] true
-- @treturn[2] fail (code "io": disk full, ...); the events stay pending
function Ledger:flush()
    if not self.path or #self.pending == 0 then
        self.pending = {}
        return true
    end
    local lines = {}
    for i, ev in ipairs(self.pending) do
        local s, err = core.json_encode(ev)
        if not s then return nil, "cannot encode a ledger event: " .. tostring(err), "io" end
        lines[i] = s
    end
    local ok, err, code = self:attach()
    if ok then ok, err, code = self.file:append(table.concat(lines, "\n") .. "\n") end
    if not ok then return nil, err, code end
    self.pending = {}
    self.appended = true -- (compaction is worth it only after an append)
    return true
end

--- Rewrites the journal as one snapshot (under the lock, folding what other runs appended).
-- @treturn[1] true
-- @treturn[2] fail (code "io"); the journal is left as it was
function Ledger:compact()
    if not self.path then return true end
    local ok, err, code = self:flush()
    if ok then ok, err, code = self:attach() end
    if not ok then return nil, err, code end
    local f = self.file
    local lok, lerr, lcode = f:lock()
    if not lok then return nil, lerr, lcode end
    local text
    text, err, code = f:read()
    local entries
    if text then entries, err = parse(text) end
    if text and not entries then
        text, err, code = nil, ("masked-value ledger %s is unreadable: %s"):format(self.path, tostring(err)), "io"
    end
    if text then
        self.entries = entries
        local snap = { format = FORMAT, entries = setmetatable(copy(self.entries), { __jsontype = "object" }) }
        for k, e in pairs(snap.entries) do
            snap.entries[k] = { etag = e.etag, fp = setmetatable(copy(e.fp), { __jsontype = "object" }), build = e.build,
                                runs = setmetatable(copy(e.runs), { __jsontype = "object" }) }
        end
        local s, eerr = core.json_encode(snap)
        if not s then
            ok, err, code = nil, "cannot encode the ledger: " .. tostring(eerr), "io"
        else
            ok, err, code = f:replace(s .. "\n")
        end
    else
        ok = nil
    end
    f:unlock()
    if not ok then return nil, err, code end
    return true
end

--- The ledger of a cxone.client (its `state_file`; in memory when it has none), opened on first
-- use and kept in `client.ledger`; `reload` reads it again. An unreadable ledger is an error
-- naming its path (nil, message, "io"), never replaced by an empty one.
function M.for_client(c, reload)
    if c.ledger then
        if reload then
            local ok, err, code = c.ledger:reload()
            if not ok then return nil, err, code end
        end
        return c.ledger
    end
    local path = c.cfg.state_file
    local l, err, code = M.open(type(path) == "string" and path or nil)
    if not l then return nil, err, code end
    c.ledger = M.scope_for(l, c)
    return l
end

function Ledger:close()
    if self.file then self.file:close() end
    self.file = nil
end

function Ledger:__tostring()
    local n = 0
    for _ in pairs(self.entries) do n = n + 1 end
    return ("cxone.Ledger (%s, %d entries)"):format(self.path or "in memory", n)
end

return M
