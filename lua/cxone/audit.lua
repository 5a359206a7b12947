--- The audit trail: open it for appending, verify it, and describe a verification.
-- With `CXONE_AUDIT_KEY` set, records are chained with HMAC-SHA-256 under that key; without it,
-- with plain SHA-256 (which detects accidents, not someone who can rewrite the file).
-- @module cxone.audit

local core = require("cxone.core")

local M = {}

local HASH_PATTERN = "^" .. ("%x"):rep(64) .. "$"

--- The trail's key from the environment: CXONE_AUDIT_KEY, or nil when unset or empty.
function M.env_key()
    return require("cxone.env").get("audit_key")
end

local function with_key(opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    if o.key == nil then o.key = M.env_key() end
    if o.key == false then o.key = nil end
    return o
end

--- Opens a trail (see core.audit_open); default path from CXONE_AUDIT_LOG or cxone_audit.jsonl,
-- default key from CXONE_AUDIT_KEY (`key = false`: none).
function M.open(path, opts)
    path = path or require("cxone.env").get("audit_log") or "cxone_audit.jsonl"
    return core.audit_open(path, with_key(opts))
end

--- Verifies one path or a list (rotation order) with core.audit_verify; the key defaults to
-- CXONE_AUDIT_KEY (`key = false`: none). Returns the report, or nil, message, code
-- (with `report = true`: always the report, `ok` false and `errors` listed on failure).
function M.verify(paths, opts)
    return core.audit_verify(paths, with_key(opts))
end

local function short(h) return h and (h:sub(1, 16) .. "…") or "?" end

--- A human summary of a report (from M.verify with `report = true`).
function M.describe(r)
    local lines = {}
    if r.ok then
        if (r.records or 0) == 0 then
            lines[1] = ("audit trail holds no records (%s)"):format(r.chain)
        else
            lines[1] = ("audit trail intact: %d records, seq %d..%d, %s, head %s"):format(
                r.records, r.first_seq, r.last_seq, r.chain, r.head)
        end
        if r.starts_after then
            lines[#lines + 1] = "  continues from hash " .. short(r.starts_after)
        end
        if r.chain == "sha256" and (r.records or 0) > 0 then
            lines[#lines + 1] = "  note: plain SHA-256 chain (no CXONE_AUDIT_KEY): detects accidents, "
                .. "not someone who can rewrite the file"
        end
    else
        local e = (r.errors or {})[1] or {}
        lines[1] = "audit trail BROKEN: " .. tostring(e.message or r.code)
        lines[#lines + 1] = ("  %d records verified before the break"):format(r.records or 0)
    end
    for _, t in ipairs(r.torn or {}) do
        lines[#lines + 1] = ("  warning: %s line %d: torn record (%d bytes without a newline), a writer "
            .. "was interrupted; the next append drops it and records that it did"):format(t.file, t.line, t.bytes)
    end
    return table.concat(lines, "\n")
end

local function emit_json(ctx, t)
    -- core.json_encode writes empty lists as [] (torn, errors)
    local s, err = core.json_encode(t)
    if not s then
        ctx:err("cannot encode JSON: %s", tostring(err))
        return
    end
    io.stdout:write(s, "\n")
end

local USAGE = "usage: cxone audit verify [--head HASH] [--after HASH] [--json] FILE..."

--- `cxone audit verify [--head HASH] [--after HASH] [--json] FILE...`: ctx is the CLI context
-- (ctx:out, ctx:err, ctx.json, ctx.flags); returns the exit status: 0 intact, 1 failed
-- verification (or a file missing or unreadable: an error naming the file), 64 usage. The key
-- comes from CXONE_AUDIT_KEY.
function M.command(ctx, args)
    if args[1] ~= "verify" or not args[2] then
        ctx:err("%s", USAGE)
        return 64
    end
    local opts = { report = true }
    for _, name in ipairs({ "head", "after" }) do
        local v = ctx.flags[name]
        if v ~= nil then
            v = tostring(v):lower()
            if not v:match(HASH_PATTERN) then
                ctx:err("--%s must be a hash of 64 hex digits", name)
                return 64
            end
            opts[name] = v
        end
    end
    local files = {}
    for i = 2, #args do
        local f, ferr = io.open(args[i], "rb")
        if not f then
            local msg = "cannot read audit trail " .. tostring(ferr)
            ctx:err("%s", msg)
            if ctx.json then emit_json(ctx, { ok = false, error = msg, code = "io" }) end
            return 1
        end
        f:close()
        files[#files + 1] = args[i]
    end
    local r = M.verify(files, opts)
    if ctx.json then
        emit_json(ctx, { ok = r.ok, records = r.records, first_seq = r.first_seq or core.null,
            last_seq = r.last_seq or core.null, head = r.head, chain = r.chain, torn = r.torn,
            errors = r.errors, starts_after = r.starts_after })
    else
        local text = M.describe(r)
        if r.ok then ctx:out(text) else ctx:err("%s", text) end
    end
    return r.ok and 0 or 1
end

return M
