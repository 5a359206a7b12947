--- What a run tells the world: the audit trail (records, intents made durable in one flush, the
-- record prepared for a second interrupt), webhook events, warnings for the caller to show, and
-- progress callbacks. Used by cxone.applier and cxone.planner on a cxone.client object.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.events

local core = require("cxone.core")

local M = {}

--- A warning for the caller to show (the CLI prints them on stderr), each once.
function M.warn(c, msg)
    for _, w in ipairs(c.warnings) do if w == msg then return end end
    c.warnings[#c.warnings + 1] = msg
end

-- The trail, opened on first use: a cxone.Audit, or nil and why.
local function trail(c)
    if c.audit_handle then return c.audit_handle end
    local opts = c.cfg.audit_key and { key = c.cfg.audit_key } or nil
    local a, err = core.audit_open(c.cfg.audit_log, opts)
    if not a then return nil, err end
    c.audit_handle = a
    return a
end
M.trail = trail

--- Appends a record: the new head hash ("" when the client keeps no trail), or nil and why
-- (never raises).
function M.audit(c, rec)
    if c.cfg.audit_log == false then return "" end
    local a, err = trail(c)
    if not a then return nil, err end
    local ok, seq, aerr, hash = pcall(a.append, a, rec)
    if not ok then return nil, tostring(seq) end
    if not seq then return nil, tostring(aerr) end
    return hash
end

--- Appends a record of a run: the report keeps the trail's new head, or its first audit error.
function M.audit_run(c, rep, rec)
    local head, err = M.audit(c, rec)
    if head then
        if head ~= "" then rep.head = head end
    else
        rep.audit_error = rep.audit_error or err
    end
    return head, err
end

--- Makes every record appended so far durable (one fdatasync for many records).
function M.sync(c)
    if c.cfg.audit_log == false or not c.audit_handle then return true end
    local ok, err = c.audit_handle:sync()
    if not ok then return nil, err end
    return true
end

--- Registers the record a second interrupt appends (see core.signal_last_words) while a
-- batch is in flight; `rec` nil clears it. Best effort: without it a second interrupt still
-- exits at once, and the intents in the trail name every write that may have landed.
function M.last_words(c, rec, note)
    if not rec or c.cfg.audit_log == false or not c.audit_handle then
        core.signal_last_words()
        return
    end
    local ok, line, size, path = pcall(c.audit_handle.prepare, c.audit_handle, rec)
    if ok and line then
        core.signal_last_words(path, line, size, note)
    else
        core.signal_last_words()
    end
end

--- Posts a webhook event (when the client has a webhook URL): nil, or what went wrong.
function M.webhook(c, event)
    local url = c.cfg.webhook_url
    if not url then return nil end
    local ok, msg, code = c.core:webhook(url, event, { secret = c.cfg.webhook_secret })
    if ok then
        c.counts.webhooks = c.counts.webhooks + 1
        return nil
    end
    c.counts.webhook_failures = c.counts.webhook_failures + 1
    return ("webhook failed (%s): %s"):format(tostring(code), tostring(msg))
end

--- A progress callback from options: `fn(phase, done, total, info)`, or a no-op. Phases:
-- "planned" (one step planned), "step" (one step's outcome known; info is the report's step
-- entry), "waiting" (info.reason, e.g. "interrupt"), "written" (a wave finished).
function M.progress(fn)
    if type(fn) == "function" then return fn end
    return function() end
end

return M
