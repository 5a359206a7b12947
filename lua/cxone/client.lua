--- The friendly client: plans, applies and promotes scoped overrides, with an audit trail and
-- webhook events. The network mechanism is cxone.core's Client; this module adds policy.
--
-- What an operator approves is what lands: `plan_all` reads every target once and returns a
-- report holding the plans; `apply_all` writes exactly those plans, each only if its target
-- is still what the plan saw (If-Match on the planned ETag, or, when the server sends no
-- ETag, a re-read compared with the plan's before-state), and reconciles writes whose answer
-- was lost by re-reading the target. Nothing is written unless the audit trail accepted an
-- `apply.started` record first.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.client

local core = require("cxone.core")
local tiers = require("cxone.tiers")
local payload = require("cxone.payload")
local validate = require("cxone.validate")
local drift = require("cxone.drift")
local planmod = require("cxone.plan")
local reportmod = require("cxone.report")
local playbook = require("cxone.playbook")
local ledgermod = require("cxone.ledger")

local M = {}

local Client = {}
Client.__index = Client
Client.__name = "cxone.PromoteClient"

M.Plan = planmod.Plan
M.Report = reportmod.Report

-- settings read from the environment: option → variable
local ENV = {
    base_url = "CXONE_BASE_URL", token_url = "CXONE_TOKEN_URL",
    client_id = "CXONE_CLIENT_ID", client_secret = "CXONE_CLIENT_SECRET",
    access_key_id = "CXONE_ACCESS_KEY_ID", access_key_secret = "CXONE_ACCESS_KEY_SECRET",
    audit_log = "CXONE_AUDIT_LOG", audit_key = "CXONE_AUDIT_KEY", webhook_url = "CXONE_WEBHOOK_URL",
    webhook_secret = "CXONE_WEBHOOK_SECRET", ca_file = "CXONE_CA_FILE",
    state_file = "CXONE_STATE_FILE",
}
M.ENV = ENV
local REQUIRED = { "base_url", "client_id", "client_secret" }
local CORE_OPTS = { "base_url", "token_url", "client_id", "client_secret", "access_key_id",
    "access_key_secret", "ca_file", "insecure_http", "debug", "retries", "timeout",
    "connect_timeout", "scope", "basic_auth", "user_agent", "deadline" }
-- failures after which a write may have landed (or did, and a retry then saw 412): re-read
local RECONCILE = { conflict = true, network = true, server = true, format = true, timeout = true }

local function getenv(name)
    local v = os.getenv(name)
    if v == "" then return nil end
    return v
end

-- 16 hex digits from the OS's CSPRNG (OpenSSL RAND_bytes): distinct across forked processes.
-- Never a guessed fallback: two processes must not share a run id (builds' keys derive from it).
local function new_run_id()
    local u = assert(core.uuid())
    return (u:gsub("%-", ""):sub(1, 16))
end
M.new_run_id = new_run_id

--- Creates a client. opts (all optional, each falls back to its CXONE_* variable):
-- base_url, token_url, client_id, client_secret, access_key_id, access_key_secret, ca_file,
-- audit_log (default cxone_audit.jsonl; false: no trail, for library use only), audit_key,
-- webhook_url, webhook_secret, state_file (the masked-value ledger, default
-- `<audit_log>.masked.json`; false: none); plus dry_run, tiers (a list for cxone.tiers.new),
-- concurrency, and core options (retries, timeout, debug, ...).
-- @treturn[1] client
-- @treturn[2] nil, message naming the missing variable, "config"
function M.new(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'client' (table expected, got " .. type(opts) .. ")", 2)
    end
    opts = opts or {}
    local cfg = {}
    for k, v in pairs(opts) do cfg[k] = v end
    for opt, var in pairs(ENV) do
        if cfg[opt] == nil then cfg[opt] = getenv(var) end
    end
    if not opts.core then
        for _, k in ipairs(REQUIRED) do
            if cfg[k] == nil then
                return nil, ("missing setting %s: set the %s environment variable (or the %s option)")
                    :format(k, ENV[k], k), "config"
            end
        end
        if (cfg.access_key_id == nil) ~= (cfg.access_key_secret == nil) then
            local missing = cfg.access_key_id == nil and "access_key_id" or "access_key_secret"
            return nil, ("missing setting %s: set the %s environment variable (or the %s option)")
                :format(missing, ENV[missing], missing), "config"
        end
    end
    if cfg.audit_log == nil then cfg.audit_log = "cxone_audit.jsonl" end
    if cfg.state_file == nil and type(cfg.audit_log) == "string" then
        cfg.state_file = cfg.audit_log .. ".masked.json"
    end
    local c = opts.core
    if not c then
        local co = {}
        for _, k in ipairs(CORE_OPTS) do co[k] = cfg[k] end
        local err, code
        c, err, code = core.client(co)
        if not c then return nil, err, code or "config" end
    end
    local self = setmetatable({
        core = c,
        cfg = cfg,
        dry_run = cfg.dry_run == true,
        tiers = tiers.new(cfg.tiers),
        counts = { plans = 0, applied = 0, unchanged = 0, failed = 0, not_attempted = 0,
                   builds = 0, webhooks = 0, webhook_failures = 0, conflicts = 0, reconciled = 0 },
        latencies = {},
        warnings = {},
    }, Client)
    return self
end

function Client:__tostring()
    return ("cxone.PromoteClient (%s%s)"):format(tostring(self.core), self.dry_run and ", dry run" or "")
end

local function note_latency(self, meta)
    if type(meta) == "table" and type(meta.latency_ms) == "number" then
        self.latencies[#self.latencies + 1] = meta.latency_ms
    end
end

-- A warning for the caller to show (the CLI prints them on stderr), each once.
local function warn(self, msg)
    for _, w in ipairs(self.warnings) do if w == msg then return end end
    self.warnings[#self.warnings + 1] = msg
end

--- Fetches one environment's variables.
-- @tparam string action the action id
-- @tparam string tier a tier name ("production") or environment id ("prod")
-- @treturn[1] table `{variables = {...} (masked values as ***), environmentId, actionId, etag,
--   meta = {status, etag, attempts, latency_ms, ...}}`
-- @treturn[2] fail nil, message, code
function Client:vars(action, tier)
    local t, err = self.tiers:resolve(tier)
    if not t then return nil, err, "invalid" end
    local r, msg, meta_or_code = self.core:get(action, t.id)
    if not r then
        note_latency(self, self.core:last_meta())
        return nil, msg, meta_or_code
    end
    local meta = meta_or_code
    note_latency(self, meta)
    r.meta = meta
    r.etag = meta and meta.etag
    return r
end

--- Compares two tiers of an action: a cxone.DriftReport (tostring renders it).
-- @treturn[1] cxone.DriftReport
-- @treturn[2] fail
function Client:drift(action, baseline, target)
    if type(action) ~= "string" then
        error("bad argument #1 to 'drift' (action id string expected, got " .. type(action) .. ")", 2)
    end
    local b, berr = self.tiers:resolve(baseline)
    if not b then return nil, berr, "invalid" end
    local t, terr = self.tiers:resolve(target)
    if not t then return nil, terr, "invalid" end
    local bv, bm, bc = self:vars(action, b.id)
    if not bv then return nil, ("%s %s: %s"):format(action, b.name, tostring(bm)), bc end
    local tv, tm, tc = self:vars(action, t.id)
    if not tv then return nil, ("%s %s: %s"):format(action, t.name, tostring(tm)), tc end
    return drift.compare(bv.variables, tv.variables, { baseline = b.name, target = t.name, action = action })
end

-- ledger ----------------------------------------------------------------------------------------

local function fingerprint(self, action, env, name, value)
    local key = self.cfg.client_secret or self.cfg.access_key_secret
    if type(key) ~= "string" or type(value) ~= "string" then return nil end
    return core.hmac_sha256(key, table.concat({ action, env, name, value }, "\0"))
end
M.fingerprint = fingerprint

-- The ledger, read on first use. One that cannot be read is a warning when planning (masked
-- values then plan as `set`); applying refuses unless it can take the ledger's lock.
local function ledger(self)
    if self.ledger then return self.ledger end
    local path = self.cfg.state_file
    local l, err = ledgermod.open(type(path) == "string" and path or nil)
    if not l then
        warn(self, "masked-value ledger unreadable (" .. tostring(err) .. "): masked values plan as `set`")
        l = ledgermod.open(nil)
    end
    self.ledger = l
    return l
end

-- planning ------------------------------------------------------------------------------------

local function index_by_name(list)
    local by = {}
    for _, v in ipairs(list or {}) do
        if type(v) == "table" and v.name then by[v.name] = v end
    end
    return by
end

local function names_of(list)
    local out = {}
    for i, v in ipairs(list or {}) do out[i] = v.name end
    return out
end

-- Builds the plan of a checked step from what was read: the target's answer and meta, and the
-- baseline's answer (or nil).
local function make_plan(self, step, tier, base, target, meta, bvars)
    local pl = payload.build(step.action, tier.id, step.variables)
    local ok, violations = validate.check(pl, { tiers = self.tiers, existing = names_of(target.variables) })
    if not ok then return nil, tostring(violations), "invalid" end

    local current = index_by_name(target.variables)
    local known = ledger(self):get(step.action, tier.id)
    if not (known and meta.etag ~= nil and known.etag == meta.etag and type(known.fp) == "table") then known = nil end
    local fingerprints, items, send, before = {}, {}, {}, {}
    local counts = { add = 0, change = 0, set = 0, unchanged = 0 }
    local default_desc = "Scoped override for " .. tier.id
    for _, v in ipairs(pl.variables) do
        local cur = current[v.name]
        local kind
        if v.masked then
            fingerprints[v.name] = fingerprint(self, step.action, tier.id, v.name, v.value)
        end
        if not cur then
            kind = "add"
        elseif (cur.masked == true) ~= (v.masked == true) then
            kind = "change"
        elseif v.masked then
            -- the API never shows a masked value: unchanged only if our ledger proves it
            if known and fingerprints[v.name] and known.fp[v.name] == fingerprints[v.name] then
                kind = "unchanged"
            else
                kind = "set"
            end
        elseif cur.value == v.value then
            kind = "unchanged"
        else
            kind = "change"
        end
        counts[kind] = counts[kind] + 1
        items[#items + 1] = {
            name = v.name, kind = kind, masked = v.masked == true,
            old = cur and (cur.masked and "***" or cur.value) or nil,
            old_masked = cur and cur.masked == true or nil,
            new = v.masked and "***" or v.value,
            fp = fingerprints[v.name],
        }
        if kind ~= "unchanged" then
            local e = {}
            for k, x in pairs(v) do e[k] = x end
            -- keep the description already there unless the playbook gives one
            if cur and e.description == default_desc and cur.description then e.description = cur.description end
            send[#send + 1] = e
            before[v.name] = cur and { present = true, masked = cur.masked == true,
                                       value = (not cur.masked) and cur.value or nil }
                or { present = false }
        end
    end

    local report
    if base then
        local r, derr, dcode = drift.compare(bvars.variables, target.variables,
            { baseline = base.name, target = tier.name, action = step.action })
        if not r then return nil, derr, dcode end
        report = r
    end
    local entry = ledger(self):get(step.action, tier.id)
    local owed = tier.build and entry and entry.build or nil
    return planmod.new({
        action = step.action, tier = tier, baseline = base,
        etag = meta.etag, items = items, counts = counts, fingerprints = fingerprints,
        changes = counts.add + counts.change + counts.set, before = before,
        build_owed = owed,
        drift = report,
        payload = { actionId = step.action, environmentId = tier.id, variables = send },
    })
end

-- Reads every (action, environment) the steps need once, with bounded concurrency.
-- Returns key → batch result ({ok, result, meta, error, code}).
local function read_all(self, pairs_list, concurrency)
    local reqs = {}
    for k, p in ipairs(pairs_list) do reqs[k] = { op = "get", action = p[1], env = p[2] } end
    local out = {}
    if #reqs == 0 then return out end
    local results = self.core:batch(reqs, { concurrency = concurrency })
    for k, p in ipairs(pairs_list) do
        local r = results[k]
        note_latency(self, r.meta)
        out[p[1] .. "/" .. p[2]] = r
    end
    return out
end

local function read_error(action, env, r)
    return ("GET %s %s: %s"):format(action, env, tostring(r.error)), r.code
end

--- Plans one step: `{action=, tier=, baseline=, variables=}`.
-- @treturn[1] cxone.Plan
-- @treturn[2] nil, message (violations text for "invalid"), code
function Client:plan(step)
    if type(step) ~= "table" then
        error("bad argument #1 to 'plan' (table expected, got " .. type(step) .. ")", 2)
    end
    local rep = self:plan_all({ step })
    if rep.plans[1] then return rep.plans[1] end
    local e = rep.steps[1]
    return nil, e.error, e.code
end

--- Plans every step (`{ {action=, tier=, baseline=, variables=}, ... }` or
-- `{steps = {...}, concurrency = 8}`): checks the steps, reads each target and baseline once
-- (with bounded concurrency), and returns a cxone.Report whose `plans` are what `apply_all`
-- will write. Any failure leaves `preflight_failed` set and every step's outcome in the report.
-- @treturn cxone.Report
function Client:plan_all(spec)
    if type(spec) ~= "table" then
        error("bad argument #1 to 'plan_all' (table expected, got " .. type(spec) .. ")", 2)
    end
    local steps = spec.steps or spec
    local concurrency = spec.concurrency or self.cfg.concurrency or 8
    local progress = type(spec.on_progress) == "function" and spec.on_progress or function() end
    local rep = reportmod.new(new_run_id(), self.dry_run or spec.dry_run == true)
    rep.concurrency = concurrency
    for i, s in ipairs(steps) do
        rep.steps[i] = { index = i, action = type(s) == "table" and s.action or nil,
                         tier = type(s) == "table" and s.tier or nil }
    end
    local errors = {}
    local function fail(i, msg, code)
        rep:set(i, "preflight_failed", { error = msg, code = code })
        errors[#errors + 1] = ("step %d (%s %s): %s"):format(i, tostring(rep.steps[i].action),
            tostring(rep.steps[i].tier), tostring(msg))
    end

    for _, p in ipairs(playbook.problems(steps, self.tiers)) do
        if rep.steps[p.index].status then
            rep.steps[p.index].error = rep.steps[p.index].error .. "; " .. p.message
            errors[#errors] = errors[#errors] .. "; " .. p.message
        else
            fail(p.index, p.message, "invalid")
        end
    end
    if #errors == 0 then
        if self.ledger then self.ledger:reload() end -- other runs may have written since
        -- what to read: each target and baseline once
        local need, seen, resolved = {}, {}, {}
        local function want(action, env)
            local k = action .. "/" .. env
            if not seen[k] then seen[k] = true; need[#need + 1] = { action, env } end
        end
        for i, s in ipairs(steps) do
            local t = self.tiers:resolve(s.tier)
            local b = s.baseline ~= nil and self.tiers:resolve(s.baseline) or nil
            resolved[i] = { t, b }
            want(s.action, t.id)
            if b then want(s.action, b.id) end
        end
        local got = read_all(self, need, concurrency)
        for i, s in ipairs(steps) do
            self.counts.plans = self.counts.plans + 1
            local t, b = resolved[i][1], resolved[i][2]
            local tr = got[s.action .. "/" .. t.id]
            local br = b and got[s.action .. "/" .. b.id]
            if not tr.ok then
                fail(i, read_error(s.action, t.id, tr))
            elseif br and not br.ok then
                fail(i, read_error(s.action, b.id, br))
            else
                local p, err, code = make_plan(self, s, t, b, tr.result, tr.meta, br and br.result)
                if p then
                    rep.plans[i] = p
                    local e = rep.steps[i]
                    e.environment, e.tier, e.changes, e.variables = p.tier.id, p.tier.name, p.changes, p:names()
                    e.build_owed = p.build_owed and true or nil
                else
                    fail(i, err, code)
                end
            end
            progress("planned", i, #steps)
        end
    end
    if #errors > 0 then
        rep.ok = false
        rep.preflight_failed = true
        rep.code = "invalid"
        rep.message = "preflight failed, nothing written:\n  " .. table.concat(errors, "\n  ")
        for i = 1, #rep.steps do
            if not rep.steps[i].status then rep:set(i, "not_attempted") end
        end
        self.counts.not_attempted = self.counts.not_attempted + rep.counts.not_attempted
        return rep
    end
    for i, p in pairs(rep.plans) do
        if not p:pending() then
            rep:set(i, "unchanged")
            self.counts.unchanged = self.counts.unchanged + 1
        else
            rep:set(i, "planned")
        end
    end
    rep.ok = true
    return rep
end

-- audit ---------------------------------------------------------------------------------------

-- The trail, opened on first use: a cxone.Audit, or nil and why.
local function trail(self)
    if self.audit_handle then return self.audit_handle end
    local opts = self.cfg.audit_key and { key = self.cfg.audit_key } or nil
    local a, err = core.audit_open(self.cfg.audit_log, opts)
    if not a then return nil, err end
    self.audit_handle = a
    return a
end

-- Appends a record: the new head hash, or nil and why (never raises).
local function audit(self, rec)
    if self.cfg.audit_log == false then return "" end
    local a, err = trail(self)
    if not a then return nil, err end
    local ok, seq, err, hash = pcall(a.append, a, rec)
    if not ok then return nil, tostring(seq) end
    if not seq then return nil, tostring(err) end
    return hash
end

-- Appends a record of a run: the report keeps the trail's new head, or its first audit error.
local function audit_run(self, rep, rec)
    local head, err = audit(self, rec)
    if head then
        if head ~= "" then rep.head = head end
    else
        rep.audit_error = rep.audit_error or err
    end
    return head, err
end

local function webhook(self, event)
    local url = self.cfg.webhook_url
    if not url then return nil end
    local ok, msg, code = self.core:webhook(url, event, { secret = self.cfg.webhook_secret })
    if ok then
        self.counts.webhooks = self.counts.webhooks + 1
        return nil
    end
    self.counts.webhook_failures = self.counts.webhook_failures + 1
    return ("webhook failed (%s): %s"):format(tostring(code), tostring(msg))
end

local function build_key(run_id, plan)
    return ("cxone-%s-%s-%s"):format(run_id, plan.action, plan.tier.id)
end

-- Records the outcome of one step: the audit record (failures too), the ledger, the webhook.
-- `out` is {ok, error, code, meta, reconciled, build_id, build_error, build_code, build_key}.
local function record(self, rep, i, out)
    local plan = rep.plans[i]
    local names = plan:names()
    local status = out.ok and (out.build_error and "build_failed" or "success") or "failure"
    local _, aerr = audit_run(self, rep, {
        event = "apply", run_id = rep.run_id, action_id = plan.action, environment = plan.tier.id,
        tier = plan.tier.name, variables = names,
        drift_count = plan.drift and plan.drift:count() or nil, changes = plan.changes,
        latency_ms = out.meta and out.meta.latency_ms or nil,
        attempts = out.meta and out.meta.attempts or nil,
        status = status, error = out.error and tostring(out.error) or nil, code = out.code,
        build_id = out.build_id, build_code = out.build_code,
        build_status = out.build_id and "queued" or (out.build_error and "failed") or nil,
        etag = out.meta and out.meta.etag or nil, reconciled = out.reconciled or nil,
    })
    local l = ledger(self)
    if out.ok and plan.changes > 0 then
        local clear = {}
        for _, e in ipairs(plan.payload.variables) do
            if not e.masked then clear[#clear + 1] = e.name end
        end
        l:note_write(plan.action, plan.tier.id, { prev = plan.etag, etag = out.meta and out.meta.etag,
                                                  fp = plan.fingerprints, clear = clear })
    end
    if out.build_error then
        l:note_build_owed(plan.action, plan.tier.id, out.build_key)
    elseif out.build_id then
        l:note_build_done(plan.action, plan.tier.id)
    end
    local werr = webhook(self, {
        event = out.ok and not out.build_error and "cxone.apply.succeeded" or "cxone.apply.failed",
        run_id = rep.run_id, action_id = plan.action, environment = plan.tier.id, tier = plan.tier.name,
        variables = names, changes = plan.changes, build_id = out.build_id,
        code = out.code or out.build_code, audit_head = rep.head,
    })
    local e = rep.steps[i]
    local fields = { changes = plan.changes, variables = names, build_id = out.build_id,
        build_error = out.build_error, etag = out.meta and out.meta.etag or nil,
        error = out.error or out.build_error, code = out.code or out.build_code,
        reconciled = out.reconciled, audit_error = aerr, webhook_error = werr }
    if out.ok and not out.build_error then
        self.counts.applied = self.counts.applied + 1
        if out.reconciled then self.counts.reconciled = self.counts.reconciled + 1 end
        rep:set(i, "applied", fields)
    else
        self.counts.failed = self.counts.failed + 1
        if out.code == "conflict" then self.counts.conflicts = self.counts.conflicts + 1 end
        rep:set(i, "failed", fields)
    end
    return e
end

-- writing -------------------------------------------------------------------------------------

-- Runs one op over several steps through core batch: i → batch result.
local function batch(self, rep, idx, make, opts)
    local reqs = {}
    for k, i in ipairs(idx) do reqs[k] = make(rep.plans[i], i) end
    local out = {}
    if #reqs == 0 then return out end
    local results = self.core:batch(reqs, opts)
    for k, i in ipairs(idx) do
        note_latency(self, results[k].meta)
        out[i] = results[k]
    end
    return out
end

local function conflict_msg(plan, why)
    return ("%s %s: conflict: %s"):format(plan.action, plan.tier.id, why)
end

-- Decides what a failed write means by reading the target again: applied (it holds exactly
-- what the step wrote, observably), a conflict, or the original failure.
local function reconcile(self, rep, failed, outs, concurrency)
    local reads = batch(self, rep, failed, function(p)
        return { op = "get", action = p.action, env = p.tier.id }
    end, { concurrency = concurrency })
    for _, i in ipairs(failed) do
        local p, r, first = rep.plans[i], reads[i], outs[i]
        if not r.ok then
            first.error = ("%s (re-reading the target to check failed too: %s)"):format(
                tostring(first.error), tostring(r.error))
        else
            local holds, visible = p:compare_written(r.result.variables)
            if holds and visible then
                outs[i] = { ok = true, meta = r.meta, reconciled = true }
            elseif holds and not (p.etag and r.meta.etag == p.etag) then
                first.code = "conflict"
                first.error = conflict_msg(p, "the write's answer was lost and its outcome cannot be "
                    .. "confirmed (masked values cannot be read back); re-run to plan again")
            elseif first.code == "conflict" then
                first.error = conflict_msg(p, tostring(first.error))
            end
        end
    end
end

-- Writes one wave of steps (at most one per action): outcomes i → out (see record).
local function write_wave(self, rep, wave, concurrency)
    local outs, writes = {}, {}
    for _, i in ipairs(wave) do
        if rep.plans[i].changes > 0 then writes[#writes + 1] = i else outs[i] = { ok = true } end
    end
    -- servers without ETags: re-read just before writing and compare with the plan
    local blind = {}
    for _, i in ipairs(writes) do
        if rep.plans[i].etag == nil then blind[#blind + 1] = i end
    end
    if #blind > 0 then
        warn(self, "the server sends no ETag, so writes cannot be conditional: each target is re-read "
            .. "and compared with the plan just before writing (a change made in the moment between "
            .. "that read and the write is not detected)")
        local reads = batch(self, rep, blind, function(p)
            return { op = "get", action = p.action, env = p.tier.id }
        end, { concurrency = concurrency })
        for _, i in ipairs(blind) do
            local p, r = rep.plans[i], reads[i]
            if not r.ok then
                local msg = read_error(p.action, p.tier.id, r)
                outs[i] = { ok = false, error = msg, code = r.code, meta = r.meta }
            elseif r.meta and r.meta.etag then
                outs[i] = { ok = false, code = "conflict", meta = r.meta, error = conflict_msg(p,
                    "the target now sends an ETag it did not send when planned; plan again") }
            elseif not p:unchanged_since(r.result.variables) then
                outs[i] = { ok = false, code = "conflict", meta = r.meta, error = conflict_msg(p,
                    "the target changed since the plan was made (re-read before writing; the server "
                    .. "sends no ETag); nothing written, plan again") }
            end
        end
    end
    -- the writes, each conditional on its plan; after a lost answer or 412, re-read
    local todo = {}
    for _, i in ipairs(writes) do if not outs[i] then todo[#todo + 1] = i end end
    while #todo > 0 do
        local res = batch(self, rep, todo, function(p)
            return { op = "patch", action = p.action, env = p.tier.id, payload = p.payload, if_match = p.etag }
        end, { concurrency = concurrency, stop_on_failure = true })
        local failed, skipped = {}, {}
        for _, i in ipairs(todo) do
            local r = res[i]
            if r.ok then
                outs[i] = { ok = true, meta = r.meta }
            elseif r.skipped then
                skipped[#skipped + 1] = i
            else
                outs[i] = { ok = false, error = r.error, code = r.code, meta = r.meta }
                if RECONCILE[r.code] then failed[#failed + 1] = i end
            end
        end
        if #failed > 0 then reconcile(self, rep, failed, outs, concurrency) end
        local any_failed = false
        for _, i in ipairs(todo) do
            if outs[i] and not outs[i].ok then any_failed = true end
        end
        if any_failed then
            for _, i in ipairs(skipped) do outs[i] = { skipped = true } end
            todo = {}
        else
            todo = skipped -- the failure that stopped them turned out to be an applied write
        end
    end
    -- builds: for written steps whose tier builds, and builds an earlier run owes
    local builds, keys = {}, {}
    for _, i in ipairs(wave) do
        local p, o = rep.plans[i], outs[i]
        if o.ok and ((p.tier.build and p.changes > 0) or p.build_owed) then
            builds[#builds + 1] = i
            keys[i] = p.build_owed and p.build_owed.key or build_key(rep.run_id, p)
        end
    end
    local bres = batch(self, rep, builds, function(p, i)
        return { op = "build", action = p.action, idempotency_key = keys[i] }
    end, { concurrency = concurrency })
    for _, i in ipairs(builds) do
        local b, o = bres[i], outs[i]
        o.build_key = keys[i]
        if b.ok and type(b.result) == "table" and type(b.result.buildId) == "string" then
            o.build_id = b.result.buildId
            self.counts.builds = self.counts.builds + 1
        else
            o.build_code = b.ok and "format" or b.code
            o.build_error = ("build failed (%s): %s"):format(tostring(o.build_code),
                b.ok and "the answer names no buildId" or tostring(b.error))
        end
    end
    return outs
end

-- The write-ahead record: before anything is written, the ledger must be writable and the
-- trail must accept a record naming the run, its steps and the variables (never values).
local function begin_run(self, rep, pend)
    local lok, lerr = ledger(self):attach()
    if not lok then return nil, "the masked-value ledger cannot be written: " .. tostring(lerr) end
    local names, seen = {}, {}
    for _, i in ipairs(pend) do
        for _, n in ipairs(rep.plans[i]:names()) do
            if not seen[n] then seen[n] = true; names[#names + 1] = n end
        end
    end
    table.sort(names)
    local head, err = audit(self, { event = "apply.started", run_id = rep.run_id, steps = #pend,
                                    variables = names, status = "started" })
    if not head then return nil, "the audit trail does not accept records: " .. tostring(err) end
    if head ~= "" then rep.head = head end
    return true
end

local function end_run(self, rep)
    local c = rep.counts
    audit_run(self, rep, { event = "apply.finished", run_id = rep.run_id, applied = c.applied,
        failed = c.failed, steps = #rep.steps,
        status = (c.failed == 0 and c.not_attempted == 0) and "success" or "failure" })
    local l = ledger(self)
    local ok, lerr = l:flush()
    if ok then ok, lerr = l:compact() end
    if not ok then rep.ledger_error = lerr end
end

--- Applies exactly the plans of a report made by `plan_all` (never planning again): each
-- write is conditional on what its plan saw, builds follow their writes, every outcome is
-- audited as it completes, and a failure stops new writes. Without an audit trail that
-- accepts the `apply.started` record, nothing is written.
-- @tparam cxone.Report rep from plan_all (or a saved plan loaded by cxone.planfile)
-- @tparam[opt] table opts `concurrency` (writes in flight; default the report's, then the
--   client's, then 8), `on_progress` (called as `on_progress("written", done, total)`)
-- @treturn cxone.Report the same report, with outcomes (`ok`, `message`, `code`, `head`)
function Client:apply_all(rep, opts)
    if not reportmod.is(rep) then
        error("bad argument #1 to 'apply_all' (cxone.Report from plan_all expected)", 2)
    end
    if rep.applied then error("bad argument #1 to 'apply_all' (this report was applied already)", 2) end
    opts = opts or {}
    if rep.preflight_failed then return rep end
    local concurrency = opts.concurrency or rep.concurrency or self.cfg.concurrency or 8
    local progress = type(opts.on_progress) == "function" and opts.on_progress or function() end
    local pend = rep:pending()
    if #pend == 0 then rep.ok = true; return rep end
    if self.dry_run or rep.dry_run then return rep end
    rep.applied = true

    local ok, err = begin_run(self, rep, pend)
    if not ok then
        rep.ok, rep.code = false, "audit"
        rep.message = "nothing written: " .. tostring(err)
        for _, i in ipairs(pend) do rep:set(i, "not_attempted", { code = "not_attempted" }) end
        self.counts.not_attempted = self.counts.not_attempted + #pend
        return rep
    end

    -- waves: the k-th pending step of every action together, so one action's tiers go in order
    local waves, seen = {}, {}
    for _, i in ipairs(pend) do
        local a = rep.plans[i].action
        seen[a] = (seen[a] or 0) + 1
        waves[seen[a]] = waves[seen[a]] or {}
        table.insert(waves[seen[a]], i)
    end
    local stopped, done = false, 0
    for _, wave in ipairs(waves) do
        if stopped then
            for _, i in ipairs(wave) do rep:set(i, "not_attempted", { code = "not_attempted" }) end
            self.counts.not_attempted = self.counts.not_attempted + #wave
        else
            local outs = write_wave(self, rep, wave, concurrency)
            for _, i in ipairs(wave) do
                local o = outs[i]
                if o.skipped then
                    rep:set(i, "not_attempted", { code = "not_attempted" })
                    self.counts.not_attempted = self.counts.not_attempted + 1
                else
                    local e = record(self, rep, i, o)
                    if e.status ~= "applied" then stopped = true end
                end
            end
            local lok, lerr = ledger(self):flush()
            if not lok then rep.ledger_error = lerr end
            if rep.audit_error then stopped = true end
        end
        done = done + #wave
        progress("written", done, #pend)
    end
    end_run(self, rep)

    local c = rep.counts
    rep.ok = c.failed == 0 and c.not_attempted == 0 and not rep.audit_error and not rep.ledger_error
    if rep.audit_error then
        rep.code = "audit"
        rep.message = "the audit trail stopped accepting records (" .. tostring(rep.audit_error)
            .. "): no new writes were started; the trail lacks the outcome of the steps above"
    elseif c.failed > 0 or c.not_attempted > 0 then
        rep.message = "promotion incomplete: re-run to finish the remaining steps"
        for _, e in ipairs(rep.steps) do
            if e.status == "failed" then
                rep.code = e.code
                rep.message = ("step %d (%s %s) failed: %s\n%s"):format(e.index, tostring(e.action),
                    tostring(e.tier), tostring(e.error), rep.message)
                break
            end
        end
    elseif rep.ledger_error then
        rep.code = "io"
        rep.message = "applied, but the masked-value ledger could not be saved (" .. tostring(rep.ledger_error)
            .. "): the next run re-sends masked values and may not know of an owed build"
    end
    return rep
end

--- Applies one plan (see apply_all).
-- @tparam cxone.Plan plan
-- @treturn[1] table the step's result: `status` "applied", "unchanged" or "dry_run", `head`
--   (the audit trail's head hash), `build_id`, `reconciled`
-- @treturn[2] fail nil, message, code ("conflict" when the target changed since the plan; the
--   build's code when the variables landed and the build failed); `client.last_result` then
--   holds the step's result (`head`, `build_status`, `build_code`)
function Client:apply(plan, run_id)
    if not planmod.is(plan) then
        error("bad argument #1 to 'apply' (cxone.Plan expected)", 2)
    end
    local rep = reportmod.new(run_id or new_run_id(), self.dry_run)
    rep.steps[1] = { index = 1, action = plan.action, tier = plan.tier.name, environment = plan.tier.id,
                     changes = plan.changes, variables = plan:names() }
    rep.plans[1] = plan
    if not plan:pending() then
        self.counts.unchanged = self.counts.unchanged + 1
        local e = rep:set(1, "unchanged")
        e.message = "nothing to change"
        return e
    end
    if self.dry_run then
        local e = rep:set(1, "dry_run")
        e.message = "dry run: nothing written"
        return e
    end
    self:apply_all(rep)
    local e = rep.steps[1]
    e.head = rep.head
    self.last_result = e
    if e.status == "applied" and rep.ok then return e end
    return nil, tostring(e.error or rep.message), e.code or rep.code
end

--- Plans and applies many steps (plan_all, then apply_all unless dry_run). Steps:
-- `{ {action=, tier=, baseline=, variables=}, ... }` or `{steps = {...}, concurrency = 8,
-- dry_run = false}`.
-- @treturn cxone.Report (report.ok false on any failure; report.preflight_failed)
function Client:promote(spec)
    if type(spec) ~= "table" then
        error("bad argument #1 to 'promote' (table expected, got " .. type(spec) .. ")", 2)
    end
    local rep = self:plan_all(spec)
    if rep.preflight_failed or rep.dry_run then return rep end
    return self:apply_all(rep, { on_progress = spec.on_progress })
end

--- Figures: core stats plus this client's own counts and latency percentiles.
function Client:metrics()
    local s = self.core:stats()
    local out = {}
    for k, v in pairs(s) do out[k] = v end
    for k, v in pairs(self.counts) do out[k] = v end
    local l = {}
    for i, v in ipairs(self.latencies) do l[i] = v end
    table.sort(l)
    local n = #l
    local function pct(p)
        if n == 0 then return nil end
        local i = math.floor(p * (n - 1) + 0.5) + 1
        return l[i]
    end
    local sum = 0
    for _, v in ipairs(l) do sum = sum + v end
    out.latency_ms = {
        count = n, min = l[1], max = l[n], avg = n > 0 and sum / n or nil,
        p50 = pct(0.5), p95 = pct(0.95),
    }
    return out
end

function Client:close()
    if self.audit_handle and self.audit_handle.close then pcall(self.audit_handle.close, self.audit_handle) end
    self.audit_handle = nil
    if self.ledger then self.ledger:close() end
    self.ledger = nil
    self.core:close()
end

return M
