--- The friendly client: plans, applies and promotes scoped overrides, with an audit trail and
-- webhook events. The network mechanism is cxone.core's Client; this module adds policy.
--
-- What an operator approves is what lands: `plan_all` reads every target once and returns a
-- report holding the plans; `apply_all` writes exactly those plans, each only if its target
-- is still what the plan saw (If-Match on the planned ETag, or, when the server sends no
-- ETag, a re-read compared with the plan's before-state), and reconciles writes whose answer
-- was lost by re-reading the target. Nothing is written unless the audit trail accepted an
-- `apply.started` record first.
--
-- This file keeps the public `Client` (settings, `vars`, `drift`, the fingerprint of masked
-- values) and delegates to its parts: cxone.planner (reads and plans), cxone.applier (writes,
-- intents, reconciliation, builds, interruption), cxone.events (audit records, webhooks,
-- warnings, progress), cxone.metrics (bounded latency figures), cxone.ledger (the ledger).
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.client

local core = require("cxone.core")
local tiers = require("cxone.tiers")
local drift = require("cxone.drift")
local planmod = require("cxone.plan")
local reportmod = require("cxone.report")
local ledgermod = require("cxone.ledger")
local planner = require("cxone.planner")
local applier = require("cxone.applier")
local metrics = require("cxone.metrics")

local M = {}

local Client = {}
Client.__index = Client
Client.__name = "cxone.PromoteClient"

M.Plan = planmod.Plan
M.Report = reportmod.Report

-- settings read from the environment: option → variable (cxone.env names them all)
local envmod = require("cxone.env")
local ENV = {}
for _, opt in ipairs(envmod.CLIENT) do ENV[opt] = envmod.name(opt) end
M.ENV = ENV
local REQUIRED = { "base_url", "client_id", "client_secret" }
local CORE_OPTS = { "base_url", "token_url", "client_id", "client_secret", "access_key_id",
    "access_key_secret", "ca_file", "insecure_http", "debug", "retries", "timeout",
    "connect_timeout", "scope", "basic_auth", "user_agent", "deadline", "rate_limit", "max_concurrency",
    "retry_after_cap", "refresh_margin", "backoff_base", "backoff_cap" }

local new_run_id = planner.new_run_id
M.new_run_id = new_run_id

--- Creates a client. opts (all optional, each falls back to its CXONE_* variable):
-- base_url, token_url, client_id, client_secret, access_key_id, access_key_secret, ca_file,
-- audit_log (default cxone_audit.jsonl; false: no trail, for library use only), audit_key,
-- webhook_url, webhook_secret, state_file (the masked-value ledger, default
-- `<audit_log>.masked.json`; false: none); plus dry_run, tiers (a list for cxone.tiers.new),
-- concurrency, max_read_age (seconds a plan's own read of a target without ETags stands in for
-- a re-read before writing; default 60, 0: always re-read), profile (from cxone.profiles.load:
-- one core client per tenant, each tier's requests sent to its tenant, and its tier policy;
-- the CXONE_* credentials are then not needed), and core options (retries, timeout, debug, ...).
-- @treturn[1] client
-- @treturn[2] nil, message naming the missing variable, "config"
function M.new(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #1 to 'client' (table expected, got " .. type(opts) .. ")", 2)
    end
    opts = opts or {}
    local cfg = {}
    for k, v in pairs(opts) do cfg[k] = v end
    for opt in pairs(ENV) do
        if cfg[opt] == nil then cfg[opt] = envmod.get(opt) end
    end
    -- a profile (cxone.profiles): one core client per tenant, each tier routed to its own
    local tenancy
    if cfg.profile and not opts.core then
        local base, err, code = {}, nil, nil
        for _, k in ipairs(CORE_OPTS) do base[k] = cfg[k] end
        tenancy, err, code = require("cxone.tenancy").build(cfg.profile, base, tiers.new(cfg.tiers), cfg)
        if not tenancy then return nil, err, code end
    end
    if not opts.core and not tenancy then
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
    if cfg.max_read_age ~= nil and (type(cfg.max_read_age) ~= "number" or cfg.max_read_age < 0) then
        return nil, "max_read_age must be a number of seconds, 0 or more", "config"
    end
    if cfg.audit_log == nil then cfg.audit_log = "cxone_audit.jsonl" end
    if cfg.state_file == nil and type(cfg.audit_log) == "string" then
        cfg.state_file = cfg.audit_log .. ".masked.json"
    end
    local c = opts.core or (tenancy and tenancy.core)
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
        histogram = metrics.new(),
        warnings = {},
        tenancy = tenancy,
        policy = cfg.profile and cfg.profile.tiers or nil,
    }, Client)
    return self
end

function Client:__tostring()
    return ("cxone.PromoteClient (%s%s)"):format(tostring(self.core), self.dry_run and ", dry run" or "")
end

local function note_latency(self, meta) self.histogram:note_meta(meta) end

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

--- Compares two tiers of an action: a cxone.DriftReport (tostring renders it). Masked values
-- both tiers show as *** are compared by the keyed fingerprints our writes left in the ledger:
-- trusted while the target's ETag is the one our write produced; without ETags the report
-- says it relied on the ledger ("assumed equal, written by run ..."). For ignore and
-- expect_differ lists and strict mode, see `cxone.drift.between(client, action, baseline,
-- target, opts)`.
-- @treturn[1] cxone.DriftReport
-- @treturn[2] fail
function Client:drift(action, baseline, target)
    if type(action) ~= "string" then
        error("bad argument #1 to 'drift' (action id string expected, got " .. type(action) .. ")", 2)
    end
    return drift.between(self, action, baseline, target)
end

-- ledger ----------------------------------------------------------------------------------------

-- A keyed fingerprint of a masked value: "v2:" and HMAC-SHA-256, under a key derived from the
-- client secret, of the name and value. It does not depend on the action or the tier, so the
-- same value written to staging and production compares equal (`action` and `env` are kept in
-- the signature for callers). Fingerprints without the "v2:" prefix (older versions hashed the
-- action and tier in) never match one of these: such ledger entries count as unknown.
local FP_LABEL = "cxone-masked-fingerprint/2"
local function fingerprint(self, action, env, name, value) -- luacheck: ignore action
    -- with several tenants, under the key of the tenant that environment lives in
    local t = self.tenancy and self.tenancy.by_env[env]
    local key = t and t.secret or self.cfg.client_secret or self.cfg.access_key_secret
    if type(key) ~= "string" or type(name) ~= "string" or type(value) ~= "string" then return nil end
    return "v2:" .. core.hmac_sha256(core.hmac_sha256(key, FP_LABEL), name .. "\0" .. value)
end
M.fingerprint = fingerprint

-- The ledger, read on first use (cxone.ledger.for_client): nil and why when unreadable.
local function ledger(self) return ledgermod.for_client(self) end
M.ledger = ledger

-- planning (cxone.planner) ---------------------------------------------------------------------

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
-- will write. Any failure (an unreadable ledger too) leaves `preflight_failed` set and every
-- step's outcome in the report.
-- @treturn cxone.Report
function Client:plan_all(spec)
    if type(spec) ~= "table" then
        error("bad argument #1 to 'plan_all' (table expected, got " .. type(spec) .. ")", 2)
    end
    return planner.plan_all(self, spec)
end

-- applying (cxone.applier) ----------------------------------------------------------------------

--- Applies exactly the plans of a report made by `plan_all` (never planning again): each
-- write is conditional on what its plan saw, builds follow their writes, every outcome is
-- audited as it completes, and a failure stops new writes. Without an audit trail that
-- accepts the `apply.started` record, nothing is written.
-- @tparam cxone.Report rep from plan_all (or a saved plan loaded by cxone.planfile)
-- Before each chunk of writes starts, an `apply.intent` record per write is durable in the trail
-- and the builds they will owe are journalled in the ledger (a write whose intent cannot be
-- recorded is not made). See cxone.applier.
-- @tparam cxone.Report rep from plan_all (or a saved plan loaded by cxone.planfile)
-- @tparam[opt] table opts `concurrency` (writes in flight; default the report's, then the
--   client's, then 8), `on_progress` (called as `on_progress(phase, done, total, info)`: "step"
--   with the step's entry as each step's outcome is known, "written" after each wave),
--   `signals` (e.g. `{"INT", "TERM"}`: stop cleanly on them, see `report.interrupted`),
--   `max_read_age` (seconds; default the client's, then 60)
-- @treturn cxone.Report the same report, with outcomes (`ok`, `message`, `code`, `head`,
--   `interrupted = {signal, signo}` when a signal stopped it)
function Client:apply_all(rep, opts)
    if not reportmod.is(rep) then
        error("bad argument #1 to 'apply_all' (cxone.Report from plan_all expected)", 2)
    end
    if rep.applied then error("bad argument #1 to 'apply_all' (this report was applied already)", 2) end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #2 to 'apply_all' (table expected, got " .. type(opts) .. ")", 2)
    end
    return applier.apply_all(self, rep, opts)
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

--- Figures: core stats plus this client's own counts and latency figures
-- `latency_ms = {count, min, max, avg, p50, p95, p99}`. Constant memory and cost however many
-- calls were made: percentiles come from fixed histogram buckets (cxone.metrics), within about
-- 10 % of the exact value; count, min, max and avg are exact.
function Client:metrics()
    local s = self.core:stats()
    local out = {}
    for k, v in pairs(s) do out[k] = v end
    for k, v in pairs(self.counts) do out[k] = v end
    out.latency_ms = self.histogram:summary()
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
