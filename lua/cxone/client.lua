--- The friendly client: plans, applies and promotes scoped overrides, with an audit trail and
-- webhook events. The network mechanism is cxone.core's Client; this module adds policy.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.client

local core = require("cxone.core")
local tiers = require("cxone.tiers")
local payload = require("cxone.payload")
local validate = require("cxone.validate")
local drift = require("cxone.drift")
local render = require("cxone.render")
local json = require("cjson.safe").new()

local M = {}

local Client = {}
Client.__index = Client
Client.__name = "cxone.PromoteClient"

local Plan = {}
Plan.__index = Plan
Plan.__name = "cxone.Plan"
M.Plan = Plan

local Report = {}
Report.__index = Report
Report.__name = "cxone.PromoteReport"
M.Report = Report

-- settings read from the environment: option → variable
local ENV = {
    base_url = "CXONE_BASE_URL", token_url = "CXONE_TOKEN_URL",
    client_id = "CXONE_CLIENT_ID", client_secret = "CXONE_CLIENT_SECRET",
    access_key_id = "CXONE_ACCESS_KEY_ID", access_key_secret = "CXONE_ACCESS_KEY_SECRET",
    audit_log = "CXONE_AUDIT_LOG", webhook_url = "CXONE_WEBHOOK_URL",
    webhook_secret = "CXONE_WEBHOOK_SECRET", ca_file = "CXONE_CA_FILE",
    state_file = "CXONE_STATE_FILE",
}
local REQUIRED = { "base_url", "client_id", "client_secret" }
local CORE_OPTS = { "base_url", "token_url", "client_id", "client_secret", "access_key_id",
    "access_key_secret", "ca_file", "insecure_http", "debug", "retries", "timeout",
    "connect_timeout", "scope", "basic_auth", "user_agent", "deadline" }

local function getenv(name)
    local v = os.getenv(name)
    if v == "" then return nil end
    return v
end

local function new_run_id()
    local seed = tostring(os.time()) .. tostring(os.clock()) .. tostring({}) .. tostring(math.random())
    return core.sha256(seed):sub(1, 16)
end

--- Creates a client. opts (all optional, each falls back to its CXONE_* variable):
-- base_url, token_url, client_id, client_secret, access_key_id, access_key_secret, ca_file,
-- audit_log (default cxone_audit.jsonl), webhook_url, webhook_secret; plus dry_run, tiers
-- (a list for cxone.tiers.new), concurrency, and core options (retries, timeout, debug, ...).
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
    cfg.audit_log = cfg.audit_log or "cxone_audit.jsonl"
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
                   builds = 0, webhooks = 0, webhook_failures = 0, conflicts = 0 },
        latencies = {},
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

--- Fetches one environment's variables: result, meta or nil, msg, code, meta.
function Client:vars(action, tier)
    local t, err = self.tiers:resolve(tier)
    if not t then return nil, err, "invalid" end
    local r, meta_or_msg, code, meta = self.core:get(action, t.id)
    if r then note_latency(self, meta_or_msg) else note_latency(self, meta) end
    return r, meta_or_msg, code, meta
end

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

--- Plans one step: `{action=, tier=, baseline=, variables=}`.
-- @treturn[1] cxone.Plan
-- @treturn[2] nil, message (violations text for "invalid"), code
-- masked-value ledger ---------------------------------------------------------------------------
-- The API never returns a masked value, so on its own a re-run could not tell whether a secret
-- already landed. After each write we keep, per action and environment, the ETag the write
-- produced and a keyed fingerprint (HMAC-SHA-256 with the client secret) of each masked value
-- we sent. While the environment's ETag is still that one, nobody has written since, so a
-- masked value whose fingerprint matches is unchanged. Fingerprints are not values: without
-- the client secret they cannot be checked against guesses.

local function ledger_key(action, env) return action .. "/" .. env end

local function fingerprint(self, action, env, name, value)
    local key = self.cfg.client_secret or self.cfg.access_key_secret
    if type(key) ~= "string" or type(value) ~= "string" then return nil end
    return core.hmac_sha256(key, table.concat({ action, env, name, value }, "\0"))
end

local function ledger(self)
    if self.ledger then return self.ledger end
    self.ledger = {}
    local path = self.cfg.state_file
    local f = type(path) == "string" and io.open(path, "rb")
    if f then
        local t = json.decode(f:read("*a") or "")
        f:close()
        if type(t) == "table" then self.ledger = t end
    end
    return self.ledger
end

local function ledger_save(self)
    local path = self.cfg.state_file
    if type(path) ~= "string" or self.dry_run then return end
    local text = json.encode(self.ledger or {})
    local tmp = path .. ".tmp"
    local f = io.open(tmp, "wb")
    if not (text and f) then return end
    f:write(text)
    f:close()
    os.rename(tmp, path)
end

-- After a successful write: the new ETag, the fingerprints of what we sent, and those of
-- earlier writes that this merge left in place (only if nobody wrote in between).
local function ledger_note(self, plan, etag)
    if type(etag) ~= "string" then return end
    local l = ledger(self)
    local k = ledger_key(plan.action, plan.tier.id)
    local old = l[k]
    local fp = {}
    if old and old.etag == plan.etag and type(old.fp) == "table" then
        for name, v in pairs(old.fp) do fp[name] = v end
    end
    for name, v in pairs(plan.fingerprints or {}) do fp[name] = v end
    for _, e in ipairs(plan.payload.variables) do
        if not e.masked then fp[e.name] = nil end
    end
    l[k] = { etag = etag, fp = fp }
    ledger_save(self)
end

-- GETs one environment, noting the latency: result, meta or nil, message naming it, code.
local function fetch(self, action, env)
    local r, meta, code, fmeta = self.core:get(action, env)
    if not r then
        note_latency(self, fmeta)
        return nil, ("GET %s %s: %s"):format(action, env, tostring(meta)), code
    end
    note_latency(self, meta)
    return r, meta
end

function Client:plan(step)
    if type(step) ~= "table" then
        error("bad argument #1 to 'plan' (table expected, got " .. type(step) .. ")", 2)
    end
    if type(step.action) ~= "string" then return nil, "step needs an action id (string)", "invalid" end
    if type(step.tier) ~= "string" then return nil, "step needs a tier (string)", "invalid" end
    if type(step.variables) ~= "table" then return nil, "step needs a variables table", "invalid" end
    local tier, err = self.tiers:resolve(step.tier)
    if not tier then return nil, err, "invalid" end
    local base
    if step.baseline ~= nil then
        base, err = self.tiers:resolve(step.baseline)
        if not base then return nil, err, "invalid" end
    end
    self.counts.plans = self.counts.plans + 1
    local target, meta, code = fetch(self, step.action, tier.id)
    if not target then return nil, meta, code end
    local pl = payload.build(step.action, tier.id, step.variables)
    local ok, violations = validate.check(pl, { tiers = self.tiers, existing = names_of(target.variables) })
    if not ok then return nil, tostring(violations), "invalid" end

    local current = index_by_name(target.variables)
    local known = ledger(self)[ledger_key(step.action, tier.id)]
    if not (known and known.etag == meta.etag and type(known.fp) == "table") then known = nil end
    local fingerprints = {}
    local items, send = {}, {}
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
        }
        if kind ~= "unchanged" then
            local e = {}
            for k, x in pairs(v) do e[k] = x end
            -- keep the description already there unless the playbook gives one
            if cur and e.description == default_desc and cur.description then e.description = cur.description end
            send[#send + 1] = e
        end
    end

    local report
    if base then
        local bvars, bmsg, bcode = fetch(self, step.action, base.id)
        if not bvars then return nil, bmsg, bcode end
        local r, derr, dcode = drift.compare(bvars.variables, target.variables,
            { baseline = base.name, target = tier.name, action = step.action })
        if not r then return nil, derr, dcode end
        report = r
    end

    return setmetatable({
        action = step.action, tier = tier, baseline = base,
        etag = meta.etag, items = items, counts = counts, fingerprints = fingerprints,
        changes = counts.add + counts.change + counts.set,
        drift = report,
        payload = { actionId = step.action, environmentId = tier.id, variables = send },
    }, Plan)
end

--- Names of the variables the plan writes (never values).
function Plan:names()
    local out = {}
    for _, it in ipairs(self.items) do
        if it.kind ~= "unchanged" then out[#out + 1] = it.name end
    end
    return out
end

local SYM = { add = "+", change = "~", unchanged = "=", set = "*" }
local COL = { add = "green", change = "yellow", unchanged = "dim", set = "magenta" }

function Plan:summary()
    local c = self.counts
    return ("Plan: %d to add, %d to change, %d to set (masked), %d unchanged."):format(
        c.add, c.change, c.set, c.unchanged)
end

--- Renders like `terraform plan`; opts.color for ANSI colours, opts.drift to include drift.
function Plan:render(opts)
    opts = opts or {}
    local paint = render.painter(opts.color)
    local lines = {}
    lines[1] = paint("bold", ("%s → %s (%s)"):format(self.action, self.tier.name, self.tier.id))
    local width = 0
    for _, it in ipairs(self.items) do if #it.name > width then width = #it.name end end
    for _, it in ipairs(self.items) do
        local detail
        if it.kind == "add" then
            detail = it.masked and "***" or render.quote(it.new)
        elseif it.kind == "set" then
            detail = "*** (masked; current value not visible)"
        elseif it.kind == "unchanged" then
            detail = render.quote(it.new)
        else
            local old = it.old_masked and "***" or render.quote(it.old)
            local new = it.masked and "***" or render.quote(it.new)
            detail = old .. " → " .. new
        end
        lines[#lines + 1] = ("  %s %s  %s"):format(paint(COL[it.kind], SYM[it.kind]),
            render.pad(it.name, width), detail)
    end
    if self.tier.build and self.changes > 0 then
        lines[#lines + 1] = "  (a build will be queued after applying)"
    end
    lines[#lines + 1] = self:summary()
    if opts.drift ~= false and self.drift then
        lines[#lines + 1] = self.drift:render({ color = opts.color })
    end
    return table.concat(lines, "\n")
end

function Plan:__tostring() return self:render() end

--- Plain data for --json.
function Plan:totable()
    return {
        action = self.action, tier = self.tier.name, environment = self.tier.id,
        baseline = self.baseline and self.baseline.name or nil, etag = self.etag,
        items = self.items, counts = self.counts, changes = self.changes,
        drift = self.drift and self.drift:totable() or nil,
    }
end

-- audit ---------------------------------------------------------------------------------------

local function audit(self, rec)
    if self.cfg.audit_log == false then return true end
    if not self.audit_handle then
        local a, err = core.audit_open(self.cfg.audit_log)
        if not a then
            self.audit_error = err
            return nil, err
        end
        self.audit_handle = a
    end
    local ok, err = pcall(self.audit_handle.append, self.audit_handle, rec)
    if not ok then self.audit_error = err; return nil, err end
    return true
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

-- records the outcome of one written plan: audit + webhook; returns the step result
local function record(self, plan, run_id, ok, info)
    local names = plan:names()
    local rec = {
        event = "apply", run_id = run_id, action_id = plan.action, environment = plan.tier.id,
        tier = plan.tier.name, variables = names,
        drift_count = plan.drift and plan.drift:count() or nil, changes = plan.changes,
        latency_ms = info.meta and info.meta.latency_ms or nil,
        attempts = info.meta and info.meta.attempts or nil,
        status = ok and "success" or "failure",
        error = (not ok) and tostring(info.error) or nil, code = (not ok) and info.code or nil,
        build_id = info.build_id, etag = info.meta and info.meta.etag or nil,
    }
    local _, aerr = audit(self, rec)
    local werr = webhook(self, {
        event = ok and "cxone.apply.succeeded" or "cxone.apply.failed",
        run_id = run_id, action_id = plan.action, environment = plan.tier.id, tier = plan.tier.name,
        variables = names, changes = plan.changes, build_id = info.build_id,
        code = (not ok) and info.code or nil,
    })
    if ok then
        self.counts.applied = self.counts.applied + 1
        ledger_note(self, plan, info.meta and info.meta.etag)
    else
        self.counts.failed = self.counts.failed + 1
    end
    return {
        action = plan.action, tier = plan.tier.name, environment = plan.tier.id,
        status = ok and "applied" or "failed", changes = plan.changes, variables = names,
        build_id = info.build_id, build_error = info.build_error, etag = rec.etag,
        error = rec.error, code = rec.code, audit_error = aerr, webhook_error = werr,
    }
end

--- Applies a plan. Returns a result table (`status` = "applied", "unchanged" or "dry_run"),
-- or nil, message, code ("conflict" when the target changed since the plan), result.
function Client:apply(plan, run_id)
    if getmetatable(plan) ~= Plan then
        error("bad argument #1 to 'apply' (cxone.Plan expected)", 2)
    end
    local base = { action = plan.action, tier = plan.tier.name, environment = plan.tier.id,
                   changes = plan.changes, variables = plan:names() }
    if plan.changes == 0 then
        self.counts.unchanged = self.counts.unchanged + 1
        base.status = "unchanged"
        base.message = "nothing to change"
        return base
    end
    if self.dry_run then
        base.status = "dry_run"
        base.message = "dry run: nothing written"
        return base
    end
    run_id = run_id or new_run_id()
    local r, m, code, meta = self.core:patch(plan.payload, { if_match = plan.etag })
    if not r then
        note_latency(self, meta)
        if code == "conflict" then self.counts.conflicts = self.counts.conflicts + 1 end
        local res = record(self, plan, run_id, false, { error = m, code = code, meta = meta })
        local msg = tostring(m)
        if code == "conflict" then
            msg = ("%s %s: %s"):format(plan.action, plan.tier.id, msg)
        end
        return nil, msg, code, res
    end
    note_latency(self, m)
    local info = { meta = m }
    if plan.tier.build then
        local b, bm, bcode = self.core:build(plan.action, { idempotency_key = build_key(run_id, plan) })
        if b then
            info.build_id = b.buildId
            self.counts.builds = self.counts.builds + 1
        else
            info.build_error = ("build failed (%s): %s"):format(tostring(bcode), tostring(bm))
        end
    end
    return record(self, plan, run_id, true, info)
end

-- promote -------------------------------------------------------------------------------------

local function step_key(s) return tostring(s.action) .. "\0" .. tostring(s.tier) end

--- Promotes many steps: `{ {action=, tier=, baseline=, variables=}, ... }` or
-- `{steps = {...}, concurrency = 8, dry_run = false}`. Plans everything first (any failure:
-- nothing is written); then writes in waves (the n-th step of every action together, so one
-- action's tiers go in order) through core batch with stop_on_failure.
-- @treturn cxone.PromoteReport (report.ok false on any failure; report.preflight_failed)
function Client:promote(spec)
    if type(spec) ~= "table" then
        error("bad argument #1 to 'promote' (table expected, got " .. type(spec) .. ")", 2)
    end
    local steps = spec.steps or spec
    local concurrency = spec.concurrency or self.cfg.concurrency or 8
    local dry = self.dry_run or spec.dry_run == true
    local run_id = new_run_id()
    -- on_progress(phase, done, total): "planned" per step, then "written" per wave
    local progress = type(spec.on_progress) == "function" and spec.on_progress or function() end
    local report = setmetatable({ run_id = run_id, dry_run = dry, steps = {}, plans = {},
        counts = { applied = 0, failed = 0, not_attempted = 0, unchanged = 0, planned = 0 } }, Report)

    -- preflight
    local errors = {}
    for i, s in ipairs(steps) do
        local entry = { action = type(s) == "table" and s.action or nil,
                        tier = type(s) == "table" and s.tier or nil, index = i }
        report.steps[i] = entry
        if type(s) ~= "table" then
            entry.status, entry.error, entry.code = "preflight_failed", "step is not a table", "invalid"
        else
            local p, err, code = self:plan(s)
            if p then
                report.plans[i] = p
                entry.environment = p.tier.id
                entry.tier = p.tier.name
                entry.changes = p.changes
                entry.variables = p:names()
            else
                entry.status, entry.error, entry.code = "preflight_failed", err, code
            end
        end
        progress("planned", i, #steps)
        if entry.status == "preflight_failed" then
            errors[#errors + 1] = ("step %d (%s %s): %s"):format(i, tostring(entry.action),
                tostring(entry.tier), tostring(entry.error))
        end
    end
    if #errors > 0 then
        report.ok = false
        report.preflight_failed = true
        report.message = "preflight failed, nothing written:\n  " .. table.concat(errors, "\n  ")
        for _, e in ipairs(report.steps) do
            if not e.status then e.status = "not_attempted"; report.counts.not_attempted = report.counts.not_attempted + 1 end
        end
        self.counts.not_attempted = self.counts.not_attempted + report.counts.not_attempted
        return report
    end

    -- unchanged / dry run
    local pending = {}
    for i, p in ipairs(report.plans) do
        local e = report.steps[i]
        if p.changes == 0 then
            e.status = "unchanged"
            report.counts.unchanged = report.counts.unchanged + 1
            self.counts.unchanged = self.counts.unchanged + 1
        elseif dry then
            e.status = "planned"
            report.counts.planned = report.counts.planned + 1
        else
            pending[#pending + 1] = i
        end
    end

    -- waves: the k-th pending step of each action
    local waves, seen = {}, {}
    for _, i in ipairs(pending) do
        local a = report.plans[i].action
        seen[a] = (seen[a] or 0) + 1
        local w = seen[a]
        waves[w] = waves[w] or {}
        table.insert(waves[w], i)
    end
    local stopped = false
    local written = 0
    for _, wave in ipairs(waves) do
        written = written + #wave
        progress("written", written, #pending)
        if stopped then
            for _, i in ipairs(wave) do
                report.steps[i].status = "not_attempted"
                report.counts.not_attempted = report.counts.not_attempted + 1
            end
        else
            local reqs = {}
            for k, i in ipairs(wave) do
                local p = report.plans[i]
                reqs[k] = { op = "patch", action = p.action, env = p.tier.id, payload = p.payload, if_match = p.etag }
            end
            local results = self.core:batch(reqs, { concurrency = concurrency, stop_on_failure = true })
            -- builds for the successful patches whose tier builds
            local breqs, bidx = {}, {}
            for k, i in ipairs(wave) do
                local p, r = report.plans[i], results[k]
                if r.ok and p.tier.build then
                    breqs[#breqs + 1] = { op = "build", action = p.action, idempotency_key = build_key(run_id, p) }
                    bidx[k] = #breqs
                end
            end
            local bres = #breqs > 0 and self.core:batch(breqs, { concurrency = concurrency }) or {}
            for k, i in ipairs(wave) do
                local p, r = report.plans[i], results[k]
                local e = report.steps[i]
                if r.ok then
                    note_latency(self, r.meta)
                    local info = { meta = r.meta }
                    local b = bidx[k] and bres[bidx[k]]
                    if b then
                        if b.ok then
                            info.build_id = b.result.buildId
                            self.counts.builds = self.counts.builds + 1
                        else
                            info.build_error = ("build failed (%s): %s"):format(tostring(b.code), tostring(b.error))
                        end
                    end
                    local res = record(self, p, run_id, true, info)
                    for kk, v in pairs(res) do e[kk] = v end
                    report.counts.applied = report.counts.applied + 1
                elseif r.skipped then
                    e.status = "not_attempted"
                    e.code = "not_attempted"
                    report.counts.not_attempted = report.counts.not_attempted + 1
                    self.counts.not_attempted = self.counts.not_attempted + 1
                    stopped = true
                else
                    note_latency(self, r.meta)
                    local res = record(self, p, run_id, false, { error = r.error, code = r.code, meta = r.meta })
                    for kk, v in pairs(res) do e[kk] = v end
                    report.counts.failed = report.counts.failed + 1
                    stopped = true
                end
            end
        end
    end
    report.ok = report.counts.failed == 0 and report.counts.not_attempted == 0
    return report
end

--- Renders a promotion report.
function Report:render(opts)
    opts = opts or {}
    local paint = render.painter(opts.color)
    local lines = {}
    local COLS = { applied = "green", unchanged = "dim", planned = "yellow", failed = "red",
                   not_attempted = "red", preflight_failed = "red" }
    local width = 0
    for _, e in ipairs(self.steps) do
        local label = tostring(e.action) .. " " .. tostring(e.tier)
        if #label > width then width = #label end
    end
    for _, e in ipairs(self.steps) do
        local label = tostring(e.action) .. " " .. tostring(e.tier)
        local extra = ""
        if e.status == "applied" then
            extra = ("%d change%s"):format(e.changes or 0, e.changes == 1 and "" or "s")
            if e.build_id then extra = extra .. ", build " .. e.build_id .. " queued" end
            if e.build_error then extra = extra .. ", " .. e.build_error end
        elseif e.status == "planned" then
            extra = ("%d change%s pending"):format(e.changes or 0, e.changes == 1 and "" or "s")
        elseif e.error then
            extra = tostring(e.error):gsub("\n", " ")
        end
        if e.webhook_error then extra = extra .. " (" .. e.webhook_error .. ")" end
        lines[#lines + 1] = ("  %s  %s  %s"):format(render.pad(label, width),
            paint(COLS[e.status] or "bold", render.pad(tostring(e.status), 16)), extra)
    end
    local c = self.counts
    if self.preflight_failed then
        lines[#lines + 1] = self.message
    end
    lines[#lines + 1] = ("%s: %d applied, %d failed, %d not attempted, %d unchanged%s."):format(
        self.dry_run and "Dry run" or "Promotion", c.applied, c.failed, c.not_attempted, c.unchanged,
        self.dry_run and (", " .. c.planned .. " with changes pending") or "")
    return table.concat(lines, "\n")
end

function Report:__tostring() return self:render() end

function Report:totable()
    local plans = {}
    for i, p in pairs(self.plans) do plans[#plans + 1] = p:totable(); plans[#plans].index = i end
    table.sort(plans, function(a, b) return a.index < b.index end)
    return { ok = self.ok, run_id = self.run_id, dry_run = self.dry_run, preflight_failed = self.preflight_failed,
             message = self.message, counts = self.counts, steps = self.steps, plans = plans }
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
    self.core:close()
end

return M
