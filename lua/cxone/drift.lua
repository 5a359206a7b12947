--- Drift reports: the differences between two tiers' variables, readable with tostring.
-- Masked values never appear: the C core shows them as ***.
-- @module cxone.drift

local core = require("cxone.core")
local render = require("cxone.render")

local M = {}

local Report = {}
Report.__index = Report
Report.__name = "cxone.DriftReport"

local SYMBOL = {
    value_mismatch = "~", new_variable = "+", missing_variable = "-",
    masked_mismatch = "!", unverifiable = "?",
}
local COLOR = {
    value_mismatch = "yellow", new_variable = "green", missing_variable = "red",
    masked_mismatch = "magenta", unverifiable = "cyan",
}
local ORDER = { "value_mismatch", "new_variable", "missing_variable", "masked_mismatch", "unverifiable" }
local LABEL = {
    value_mismatch = "changed", new_variable = "only in target", missing_variable = "only in baseline",
    masked_mismatch = "masked flag differs", unverifiable = "unverifiable (masked)",
}

-- A set from a list of names or a set (nil: empty).
local function set_of(list)
    local out = {}
    for k, v in pairs(list or {}) do
        if type(k) == "number" then out[v] = true elseif v then out[k] = true end
    end
    return out
end
M.set_of = set_of

-- Fingerprints of masked values: "v2:" then hex. Anything else (an older version's, which
-- depended on the action and tier) is unknown, never compared.
local FP_VERSION = "v2:"

local function runs_text(bp, tp)
    local r = {}
    for _, p in ipairs({ bp, tp }) do
        if p.basis == "ledger" then r[#r + 1] = "run " .. tostring(p.run or "?") end
    end
    if #r == 2 and r[1] == r[2] then r[2] = nil end
    return table.concat(r, " and ")
end

-- Settles a masked variable both sides show as *** with the proofs given for each side:
-- `{fp, basis = "etag"|"ledger"|"playbook", run}` or nil and why not.
local function settle(it, proofs, strict)
    local bp, bwhy = proofs.baseline(it.variable)
    local tp, twhy = proofs.target(it.variable)
    if not (bp and tp) then
        it.note = (not bp and bwhy or twhy) or "masked values cannot be read back"
        return it
    end
    if bp.tenant ~= tp.tenant then -- keyed by each tenant's secret: not comparable
        it.note = "the two tiers are in different tenants, whose fingerprints cannot be compared"
        return it
    end
    local assumed = bp.basis == "ledger" or tp.basis == "ledger"
    if assumed and strict then
        it.note = "only our ledger vouches for it (no ETags), and --strict was given"
        return it
    end
    it.basis = assumed and "ledger" or "etag"
    it.runs = assumed and runs_text(bp, tp) or nil
    if bp.fp == tp.fp then return nil, it end
    it.drift_type = "value_mismatch"
    it.note = assumed and ("masked values differ by our ledger (written by %s)"):format(it.runs)
        or "masked values differ (keyed fingerprints of our writes, ETags unchanged since)"
    return it
end

--- Compares two variable lists and wraps the items in a report.
-- @tparam table baseline_vars
-- @tparam table target_vars
-- @tparam[opt] table info `{baseline = "staging", target = "prod", action = "..."}` for the heading
-- @tparam[opt] table opts `ignore` and `expect_differ` (lists of names: an ignored variable
--   never counts as drift; one expected to differ counts only if present on one side, or with
--   another masked flag), `proofs` (`{baseline = f, target = f}`, each `f(name)` giving
--   `{fp, basis, run}` for a masked value, or nil and why not), `strict` (a proof resting on
--   our ledger alone, without ETags, leaves the variable unverifiable)
-- @treturn[1] cxone.DriftReport
-- @treturn[2] fail
function M.compare(baseline_vars, target_vars, info, opts)
    if type(baseline_vars) ~= "table" then
        error("bad argument #1 to 'drift' (table expected, got " .. type(baseline_vars) .. ")", 2)
    end
    if type(target_vars) ~= "table" then
        error("bad argument #2 to 'drift' (table expected, got " .. type(target_vars) .. ")", 2)
    end
    if opts ~= nil and type(opts) ~= "table" then
        error("bad argument #4 to 'drift' (table expected, got " .. type(opts) .. ")", 2)
    end
    opts = opts or {}
    local items, err, code = core.drift(baseline_vars, target_vars)
    if not items then return nil, err, code end
    local ignore, expect = set_of(opts.ignore), set_of(opts.expect_differ)
    local kept, same, accepted = {}, {}, {}
    for _, it in ipairs(items) do
        local drop, eq = nil, nil
        if it.drift_type == "unverifiable" and opts.proofs then
            drop, eq = settle(it, opts.proofs, opts.strict)
            if eq then same[#same + 1] = { variable = eq.variable, basis = eq.basis, runs = eq.runs } end
            it = drop
        elseif it.drift_type == "unverifiable" then
            it.note = "masked values cannot be read back"
        end
        if it then
            if ignore[it.variable] then
                it.accepted = "ignore"
                accepted[#accepted + 1] = it
            elseif expect[it.variable] and (it.drift_type == "value_mismatch" or it.drift_type == "unverifiable") then
                it.accepted = "expect_differ"
                accepted[#accepted + 1] = it
            else
                kept[#kept + 1] = it
            end
        end
    end
    local self = M.wrap(kept, info)
    self.same, self.accepted = same, accepted
    return self
end

function M.wrap(items, info)
    local self = setmetatable({ items = items, same = {}, accepted = {} }, Report)
    for k, v in pairs(info or {}) do self[k] = v end
    return self
end

--- Number of differences that count as drift (not ignored, not expected to differ).
function Report:count() return #self.items end

--- Counts by drift type (of the differences that count).
function Report:counts()
    local c = {}
    for _, t in ipairs(ORDER) do c[t] = 0 end
    for _, it in ipairs(self.items) do c[it.drift_type] = c[it.drift_type] + 1 end
    return c
end

local function side(value, masked)
    if value == nil then return "(absent)" end
    if masked then return "***" end
    return render.quote(value)
end

local function detail(it)
    local t = it.drift_type
    if t == "masked_mismatch" then
        return ("masked %s → %s"):format(tostring(it.baseline_masked), tostring(it.target_masked))
    elseif t == "unverifiable" then
        return "*** vs *** (" .. tostring(it.note or "masked values cannot be read back") .. ")"
    elseif it.note then
        return "*** vs *** (" .. it.note .. ")"
    end
    return side(it.baseline, it.baseline_masked) .. " → " .. side(it.target, it.target_masked)
end

local function same_text(s)
    if s.basis == "ledger" then
        return ("assumed equal, written by %s (the server sends no ETags: our ledger vouches for it)")
            :format(tostring(s.runs))
    end
    return "equal (keyed fingerprints of our writes; ETags unchanged since)"
end

local ACCEPTED = { ignore = "ignored", expect_differ = "expected to differ" }

--- Renders the report; opts.color enables ANSI colours.
function Report:render(opts)
    opts = opts or {}
    local paint = render.painter(opts.color)
    local lines = {}
    local heading = self.step and ("step %d: drift"):format(self.step) or "drift"
    if self.baseline or self.target then
        heading = ("%s %s → %s"):format(heading, tostring(self.baseline or "baseline"), tostring(self.target or "target"))
    end
    if self.action then heading = heading .. " (" .. tostring(self.action) .. ")" end
    lines[1] = paint("bold", heading)
    local width = 0
    for _, list in ipairs({ self.items, self.same, self.accepted }) do
        for _, it in ipairs(list) do width = math.max(width, #it.variable) end
    end
    for _, it in ipairs(self.items) do
        local t = it.drift_type
        lines[#lines + 1] = ("  %s %s  %s"):format(paint(COLOR[t], SYMBOL[t]), render.pad(it.variable, width), detail(it))
    end
    for _, s in ipairs(self.same) do
        lines[#lines + 1] = ("  = %s  %s"):format(render.pad(s.variable, width), same_text(s))
    end
    for _, it in ipairs(self.accepted) do
        lines[#lines + 1] = paint("dim", ("  %s %s  %s [%s]"):format(SYMBOL[it.drift_type], render.pad(it.variable, width),
            detail(it), ACCEPTED[it.accepted]))
    end
    local tail = ""
    if #self.accepted > 0 then
        local n = { ignore = 0, expect_differ = 0 }
        for _, it in ipairs(self.accepted) do n[it.accepted] = n[it.accepted] + 1 end
        local parts = {}
        if n.ignore > 0 then parts[#parts + 1] = n.ignore .. " ignored" end
        if n.expect_differ > 0 then parts[#parts + 1] = n.expect_differ .. " expected to differ" end
        tail = " (" .. table.concat(parts, ", ") .. ")"
    end
    if #self.items == 0 then
        lines[#lines + 1] = "  no drift" .. tail
        return table.concat(lines, "\n")
    end
    local c, parts = self:counts(), {}
    for _, t in ipairs(ORDER) do
        if c[t] > 0 then parts[#parts + 1] = ("%d %s"):format(c[t], LABEL[t]) end
    end
    lines[#lines + 1] = ("%d difference%s: %s%s"):format(#self.items, #self.items == 1 and "" or "s",
        table.concat(parts, ", "), tail)
    return table.concat(lines, "\n")
end

function Report:__tostring() return self:render() end

local MD_SIDE = function(value, masked)
    if value == nil then return "(absent)" end
    if masked then return "`***`" end
    return render.md_value(value)
end

--- Renders the report as Markdown (a heading and a table), for pull-request comments and CI
-- job summaries. Masked values show as `***`.
function Report:markdown()
    local heading = ("Drift %s → %s"):format(tostring(self.baseline or "baseline"), tostring(self.target or "target"))
    if self.step then heading = ("Step %d: "):format(self.step) .. heading end
    if self.action then heading = heading .. " (`" .. tostring(self.action) .. "`)" end
    local lines = { "#### " .. heading, "" }
    if #self.items == 0 and #self.accepted == 0 and #self.same == 0 then
        lines[#lines + 1] = "No drift."
        return table.concat(lines, "\n") .. "\n"
    end
    if #self.items == 0 then lines[#lines + 1] = "No drift."; lines[#lines + 1] = "" end
    lines[#lines + 1] = "| | Variable | " .. render.md_text(self.baseline or "baseline") .. " | "
        .. render.md_text(self.target or "target") .. " | Drift |"
    lines[#lines + 1] = "|---|---|---|---|---|"
    local function row(sym, it, what)
        local b, tv = MD_SIDE(it.baseline, it.baseline_masked), MD_SIDE(it.target, it.target_masked)
        if it.drift_type == "unverifiable" or it.note then b, tv = "`***`", "`***`" end
        lines[#lines + 1] = ("| %s | %s | %s | %s | %s |"):format(sym, render.md_code(it.variable), b, tv,
            render.md_text(what))
    end
    for _, it in ipairs(self.items) do
        row(SYMBOL[it.drift_type], it, LABEL[it.drift_type] .. (it.note and (": " .. it.note) or ""))
    end
    for _, s in ipairs(self.same) do
        lines[#lines + 1] = ("| = | %s | `***` | `***` | %s |"):format(render.md_code(s.variable),
            render.md_text(same_text(s)))
    end
    for _, it in ipairs(self.accepted) do
        row(SYMBOL[it.drift_type], it, LABEL[it.drift_type] .. " (" .. ACCEPTED[it.accepted] .. ")")
    end
    return table.concat(lines, "\n") .. "\n"
end

local function list(t)
    return setmetatable(t, { __jsontype = "array" })
end

--- Plain data for --json output: `drift` (the number that counts), `items` (those
-- differences), `same` (masked variables judged equal, with the basis: "etag", or "ledger" and
-- the runs that wrote them), `accepted` (differences ignored or expected, each with `accepted`).
function Report:totable()
    return { baseline = self.baseline, target = self.target, action = self.action, tier = self.tier,
             drift = #self.items, items = list(self.items), same = list(self.same),
             accepted = list(self.accepted) }
end

-- live comparisons -------------------------------------------------------------------------------

-- The ledger to read proofs from: the client's own, else the file its settings name.
local function ledger_of(client)
    local ledgermod = require("cxone.ledger")
    local path = client.cfg and client.cfg.state_file
    local l, err = ledgermod.open(type(path) == "string" and path or nil)
    if not l then
        return nil, ("cannot read the masked-value ledger %s: %s"):format(tostring(path), tostring(err)), "io"
    end
    return ledgermod.scope_for(l, client)
end

-- A proof function for one environment as read now (its live ETag, or nil).
local function prover(ledger, action, env, live_etag)
    local e = ledger:get(action, env)
    local tenant = ledger.scope and ledger.scope(env) -- with a profile: the key's tenant
    return function(name)
        local fp = e and type(e.fp) == "table" and e.fp[name]
        if type(fp) ~= "string" then return nil, "no record of a write of it by us to " .. env end
        if fp:sub(1, #FP_VERSION) ~= FP_VERSION then
            return nil, "our record of it in " .. env .. " predates comparable fingerprints; apply again to record one"
        end
        if live_etag ~= nil then
            if e.etag == live_etag then return { fp = fp, basis = "etag", tenant = tenant } end
            return nil, env .. " changed since our last write (its ETag differs)"
        end
        if e.etag ~= nil then return nil, env .. " sends no ETag now, but did when we wrote" end
        return { fp = fp, basis = "ledger", run = e.runs and e.runs[name], tenant = tenant }
    end
end

local function resolve(client, tier)
    local t, err = client.tiers:resolve(tier)
    if not t then return nil, err, "invalid" end
    return t
end

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

--- Checks an action id locally (the API declares action ids as UUIDs): nil, or why not.
function M.check_action(action)
    if type(action) ~= "string" or not action:match(UUID) then
        return ("action id %q is not a UUID (8-4-4-4-12 hex digits, e.g. a1b2c3d4-e5f6-4890-abcd-ef1234567890)")
            :format(tostring(action))
    end
    return nil
end

--- Compares two tiers of an action as they are now (see Client:drift).
-- @treturn[1] cxone.DriftReport
-- @treturn[2] fail
function M.between(client, action, baseline, target, opts)
    opts = opts or {}
    local bad = M.check_action(action)
    if bad then return nil, bad, "invalid" end
    local b, berr = resolve(client, baseline)
    if not b then return nil, berr, "invalid" end
    local t, terr = resolve(client, target)
    if not t then return nil, terr, "invalid" end
    local bv, bm, bc = client:vars(action, b.id)
    if not bv then return nil, ("%s %s: %s"):format(action, b.name, tostring(bm)), bc end
    local tv, tm, tc = client:vars(action, t.id)
    if not tv then return nil, ("%s %s: %s"):format(action, t.name, tostring(tm)), tc end
    local l, lerr, lcode = ledger_of(client)
    if not l then return nil, lerr, lcode end
    return M.compare(bv.variables, tv.variables, { baseline = b.name, target = t.name, action = action }, {
        ignore = opts.ignore, expect_differ = opts.expect_differ, strict = opts.strict,
        proofs = { baseline = prover(l, action, b.id, bv.etag), target = prover(l, action, t.id, tv.etag) },
    })
end

-- Merges name lists (sets or lists) into one set.
local function merged(...)
    local out = {}
    for i = 1, select("#", ...) do
        for k in pairs(set_of((select(i, ...)))) do out[k] = true end
    end
    return out
end

local Book = {}
Book.__index = Book
Book.__name = "cxone.PlaybookDrift"

--- Compares every step of a playbook with its live target: is the target what the playbook
-- would produce (the baseline's values merged with the step's, or the step's alone where it
-- has no baseline)? Masked values are compared by keyed fingerprint (the playbook's value
-- against our ledger's record of the target).
-- @tparam client client a cxone.PromoteClient
-- @tparam table book a loaded playbook (`cxone.playbook.load`)
-- @tparam[opt] table opts `ignore`, `expect_differ`, `strict` (added to the playbook's lists)
-- @treturn[1] cxone.PlaybookDrift (`reports`, `:count()`, `:render()`, `:totable()`)
-- @treturn[2] fail (a step that cannot be read or is invalid: code of the failure)
function M.playbook(client, book, opts)
    opts = opts or {}
    local playbook = require("cxone.playbook")
    local payload = require("cxone.payload")
    local steps = book.steps
    local ok, perr = playbook.check(steps, client.tiers)
    if not ok then return nil, perr, "invalid" end
    for i, s in ipairs(steps) do
        local bad = M.check_action(s.action)
        if bad then return nil, ("step %d: %s"):format(i, bad), "invalid" end
    end
    local l, lerr, lcode = ledger_of(client)
    if not l then return nil, lerr, lcode end
    local fingerprint = require("cxone.client").fingerprint
    -- read each target and baseline once
    local reqs, index = {}, {}
    local function want(action, env)
        local k = action .. "/" .. env
        if not index[k] then
            reqs[#reqs + 1] = { op = "get", action = action, env = env }
            index[k] = #reqs
        end
    end
    local resolved = {}
    for i, s in ipairs(steps) do
        local t = client.tiers:resolve(s.tier)
        local b = s.baseline ~= nil and client.tiers:resolve(s.baseline) or nil
        resolved[i] = { t, b }
        want(s.action, t.id)
        if b then want(s.action, b.id) end
    end
    local got = #reqs > 0 and client.core:batch(reqs, { concurrency = book.concurrency or 8 }) or {}
    local self = setmetatable({ reports = {}, path = book.path }, Book)
    local book_lists = type(book.drift) == "table" and book.drift or {}
    for i, s in ipairs(steps) do
        local t, b = resolved[i][1], resolved[i][2]
        local tr = got[index[s.action .. "/" .. t.id]]
        local br = b and got[index[s.action .. "/" .. b.id]]
        for _, r in ipairs({ tr, br or tr }) do
            if not r.ok then
                return nil, ("step %d (%s %s): GET %s %s: %s"):format(i, s.action, t.name, s.action,
                    r == tr and t.id or b.id, tostring(r.error)), r.code
            end
        end
        local entries = payload.entries(s.variables, t.id)
        local desired, step_names, mine, keeps = {}, {}, {}, {}
        for _, e in ipairs(entries) do
            step_names[e.name] = true
            mine[e.name] = e
            -- { masked = true, keep = true }: any current value is the playbook's (still drift when
            -- missing or unmasked)
            if e.keep == true then keeps[#keeps + 1] = e.name end
        end
        if b then
            for _, v in ipairs(br.result.variables or {}) do
                if not mine[v.name] then desired[#desired + 1] = { name = v.name, value = v.value, masked = v.masked == true } end
            end
        end
        for _, e in ipairs(entries) do
            desired[#desired + 1] = { name = e.name, value = e.value, masked = e.masked == true }
        end
        local live = {}
        for _, v in ipairs(tr.result.variables or {}) do
            -- without a baseline only the step's variables are the playbook's business
            if b or step_names[v.name] then live[#live + 1] = v end
        end
        local base_proof = b and prover(l, s.action, b.id, br.meta and br.meta.etag) or nil
        local step_lists = type(s.drift) == "table" and s.drift or {}
        local rep, err, code = M.compare(desired, live, {
            baseline = b and (b.name .. " + playbook") or "playbook", target = t.name, action = s.action,
            tier = t.name, step = i }, {
            ignore = merged(opts.ignore, book_lists.ignore, step_lists.ignore),
            expect_differ = merged(opts.expect_differ, book_lists.expect_differ, step_lists.expect_differ, keeps),
            strict = opts.strict,
            proofs = {
                baseline = function(name)
                    local e = mine[name]
                    if e then
                        local fp = type(e.value) == "string" and fingerprint(client, s.action, t.id, name, e.value)
                        if fp then return { fp = fp, basis = "playbook", tenant = l.scope and l.scope(t.id) } end
                        return nil, "the playbook's value cannot be fingerprinted (no client secret)"
                    end
                    return base_proof(name)
                end,
                target = prover(l, s.action, t.id, tr.meta and tr.meta.etag),
            } })
        if not rep then return nil, ("step %d (%s %s): %s"):format(i, s.action, t.name, tostring(err)), code end
        self.reports[i] = rep
    end
    return self
end

--- The number of differences that count as drift, over every step.
function Book:count()
    local n = 0
    for _, r in ipairs(self.reports) do n = n + r:count() end
    return n
end

function Book:render(opts)
    local out = {}
    for i, r in ipairs(self.reports) do out[i] = r:render(opts) end
    local n, with = self:count(), 0
    for _, r in ipairs(self.reports) do if r:count() > 0 then with = with + 1 end end
    out[#out + 1] = n == 0 and ("Drift: none in %d step%s."):format(#self.reports, #self.reports == 1 and "" or "s")
        or ("Drift: %d difference%s in %d of %d steps."):format(n, n == 1 and "" or "s", with, #self.reports)
    return table.concat(out, "\n")
end

function Book:__tostring() return self:render() end

function Book:markdown()
    local out = { "### cxone drift" .. (self.path and (" `" .. render.md_text(self.path) .. "`") or ""), "" }
    for _, r in ipairs(self.reports) do out[#out + 1] = r:markdown() end
    return table.concat(out, "\n")
end

function Book:totable()
    local steps = {}
    for i, r in ipairs(self.reports) do steps[i] = r:totable() end
    return { playbook = self.path, drift = self:count(), steps = list(steps) }
end

M.Report = Report
M.Book = Book
return M
