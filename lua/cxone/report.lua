--- Reports: the outcome of planning or applying a list of steps (`client:plan_all`,
-- `client:apply_all`, `client:promote`). Renders as text; `totable` gives plain data.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.report

local render = require("cxone.render")

local M = {}

local Report = {}
Report.__index = Report
Report.__name = "cxone.Report"
M.Report = Report

--- A report for a run: fields run_id, dry_run, steps (one entry per step: action, tier,
-- environment, status, changes, variables, error, code, build_id, ...), plans (index → Plan),
-- counts, ok, message, head (the audit trail's hash after the run).
function M.new(run_id, dry_run)
    return setmetatable({ run_id = run_id, dry_run = dry_run, steps = {}, plans = {},
        counts = { applied = 0, failed = 0, not_attempted = 0, unchanged = 0, planned = 0 } }, Report)
end

function M.is(t) return getmetatable(t) == Report end

--- Sets a step's status, keeping the counts in step.
function Report:set(i, status, fields)
    local e = self.steps[i]
    if e.status and self.counts[e.status] then self.counts[e.status] = self.counts[e.status] - 1 end
    e.status = status
    if self.counts[status] then self.counts[status] = self.counts[status] + 1 end
    for k, v in pairs(fields or {}) do e[k] = v end
    return e
end

--- The indices of the steps that applying would touch (changes or an owed build).
function Report:pending()
    local out = {}
    for i = 1, #self.steps do
        local p = self.plans[i]
        if p and p:pending() then out[#out + 1] = i end
    end
    return out
end

local COLS = { applied = "green", unchanged = "dim", planned = "yellow", failed = "red",
               not_attempted = "red", preflight_failed = "red" }

local function step_detail(e)
    local extra = ""
    if e.status == "applied" then
        extra = ("%d change%s"):format(e.changes or 0, e.changes == 1 and "" or "s")
        if e.reconciled then extra = extra .. " (answer lost; confirmed by re-reading)" end
        if e.build_id then extra = extra .. ", build " .. e.build_id .. " queued" end
    elseif e.status == "planned" then
        extra = ("%d change%s pending"):format(e.changes or 0, e.changes == 1 and "" or "s")
        if e.build_owed then extra = extra .. ", build owed" end
    elseif e.error then
        extra = tostring(e.error):gsub("\n", " ")
    end
    if e.webhook_error then extra = extra .. " (" .. e.webhook_error .. ")" end
    return extra
end

--- Renders one line per step and a summary; opts.color for ANSI colours.
function Report:render(opts)
    opts = opts or {}
    local paint = render.painter(opts.color)
    local lines = {}
    local width = 0
    for _, e in ipairs(self.steps) do
        local label = tostring(e.action) .. " " .. tostring(e.tier)
        width = math.max(width, render.width(label))
    end
    for _, e in ipairs(self.steps) do
        local label = tostring(e.action) .. " " .. tostring(e.tier)
        lines[#lines + 1] = ("  %s  %s  %s"):format(render.pad(label, width),
            paint(COLS[e.status] or "bold", render.pad(tostring(e.status), 16)), render.escape(step_detail(e)))
    end
    local c = self.counts
    if self.message and not self.ok then lines[#lines + 1] = render.lines(self.message) end
    if self.dry_run or (not self.applied and not self.preflight_failed) then
        lines[#lines + 1] = ("%s: %d step%s with changes pending, %d unchanged."):format(
            self.dry_run and "Dry run" or "Plan", c.planned, c.planned == 1 and "" or "s", c.unchanged)
    else
        lines[#lines + 1] = ("Promotion: %d applied, %d failed, %d not attempted, %d unchanged."):format(
            c.applied, c.failed, c.not_attempted, c.unchanged)
    end
    if self.head then lines[#lines + 1] = "Audit trail head: " .. render.escape(self.head) end
    return table.concat(lines, "\n")
end

function Report:__tostring() return self:render() end

--- Renders the report as Markdown: a summary table of the steps and, for steps with changes,
-- each plan's table. For pull-request comments and CI job summaries; masked values as `***`.
function Report:markdown()
    local c = self.counts
    local planned = self.dry_run or not self.applied
    local lines = { planned and "### cxone plan" or "### cxone apply", "" }
    lines[#lines + 1] = "| # | Action | Tier | Status | Detail |"
    lines[#lines + 1] = "|---|---|---|---|---|"
    for i, e in ipairs(self.steps) do
        lines[#lines + 1] = ("| %d | %s | %s | %s | %s |"):format(i, render.md_code(tostring(e.action)),
            render.md_text(tostring(e.tier)), e.status or "", render.md_text(step_detail(e)))
    end
    lines[#lines + 1] = ""
    if planned then
        lines[#lines + 1] = ("**%d step%s with changes pending, %d unchanged.**"):format(c.planned,
            c.planned == 1 and "" or "s", c.unchanged)
    else
        lines[#lines + 1] = ("**%d applied, %d failed, %d not attempted, %d unchanged.**"):format(
            c.applied, c.failed, c.not_attempted, c.unchanged)
    end
    if self.message and not self.ok then
        lines[#lines + 1] = ""
        lines[#lines + 1] = "> " .. render.md_text(self.message)
    end
    if self.head then
        lines[#lines + 1] = ""
        lines[#lines + 1] = "Audit trail head: `" .. self.head .. "`"
    end
    for i = 1, #self.steps do
        local p = self.plans[i]
        if p and p:pending() then
            lines[#lines + 1] = ""
            lines[#lines + 1] = (p:markdown():gsub("\n$", ""))
        end
    end
    return table.concat(lines, "\n") .. "\n"
end

--- Plain data for --json.
function Report:totable()
    local plans = {}
    for i = 1, #self.steps do
        local p = self.plans[i]
        if p then
            plans[#plans + 1] = p:totable()
            plans[#plans].index = i
        end
    end
    return { ok = self.ok, run_id = self.run_id, plan_id = self.plan_id, plan = self.plan_digest, dry_run = self.dry_run,
             preflight_failed = self.preflight_failed, message = self.message, code = self.code,
             counts = self.counts, steps = self.steps, plans = plans, head = self.head }
end

return M
