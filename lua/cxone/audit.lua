--- The audit trail: open it for appending, verify it, and describe a verification.
-- @module cxone.audit

local core = require("cxone.core")

local M = {}

--- Opens a trail (see core.audit_open); default path from CXONE_AUDIT_LOG or cxone_audit.jsonl.
function M.open(path, opts)
    path = path or os.getenv("CXONE_AUDIT_LOG") or "cxone_audit.jsonl"
    return core.audit_open(path, opts)
end

--- Verifies one path or a list (rotation order). Returns ok, report or nil, msg, code, report.
M.verify = core.audit_verify

--- A human summary of a verification.
function M.describe(ok, report_or_msg, _, report)
    local lines = {}
    local r = ok and report_or_msg or report or {}
    if ok then
        if (r.records or 0) == 0 then
            lines[1] = "audit trail holds no records"
        else
            lines[1] = ("audit trail intact: %d records, seq %d..%d, last hash %s"):format(
                r.records, r.first_seq, r.last_seq, r.last_hash:sub(1, 16) .. "…")
        end
        if r.starts_after then
            lines[#lines + 1] = "  continues a rotated file whose last hash is " .. r.starts_after:sub(1, 16) .. "…"
        end
    else
        lines[1] = "audit trail BROKEN: " .. tostring(report_or_msg)
        if r.records then
            lines[#lines + 1] = ("  %d records verified before the break"):format(r.records)
        end
    end
    for _, t in ipairs(r.torn or {}) do
        lines[#lines + 1] = ("  warning: %s line %d: torn record (%d bytes), a writer was interrupted; "
            .. "the chain continues intact after it"):format(t.file, t.line, t.bytes)
    end
    return table.concat(lines, "\n")
end

--- `cxone audit verify FILE...`: ctx is the CLI context (ctx:out, ctx:err, ctx:emit, ctx.json,
-- ctx.flags); returns the exit status.
function M.command(ctx, args)
    if args[1] ~= "verify" or not args[2] then
        ctx:err("usage: cxone audit verify FILE")
        return 1
    end
    local ok, a, b, c = M.verify(args[2])
    if ctx.json then
        local rep = ok and a or c or {}
        ctx:emit({ ok = ok and true or false, error = (not ok) and a or nil, code = (not ok) and b or nil,
                   report = rep })
    else
        local text = M.describe(ok, a, b, c)
        if ok then ctx:out(text) else ctx:err("%s", text) end
    end
    return ok and 0 or 1
end

return M
