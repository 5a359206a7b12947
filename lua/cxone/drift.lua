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

--- Compares two variable lists and wraps the items in a report.
-- @tparam table baseline_vars
-- @tparam table target_vars
-- @tparam[opt] table info `{baseline = "staging", target = "prod", action = "..."}` for the heading
-- @treturn[1] cxone.DriftReport
-- @treturn[2] fail
function M.compare(baseline_vars, target_vars, info)
    if type(baseline_vars) ~= "table" then
        error("bad argument #1 to 'drift' (table expected, got " .. type(baseline_vars) .. ")", 2)
    end
    if type(target_vars) ~= "table" then
        error("bad argument #2 to 'drift' (table expected, got " .. type(target_vars) .. ")", 2)
    end
    local items, err, code = core.drift(baseline_vars, target_vars)
    if not items then return nil, err, code end
    return M.wrap(items, info)
end

function M.wrap(items, info)
    local self = setmetatable({ items = items }, Report)
    for k, v in pairs(info or {}) do self[k] = v end
    return self
end

--- Number of differences.
function Report:count() return #self.items end

--- Counts by drift type.
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

--- Renders the report; opts.color enables ANSI colours.
function Report:render(opts)
    opts = opts or {}
    local paint = render.painter(opts.color)
    local lines = {}
    local heading = "drift"
    if self.baseline or self.target then
        heading = ("drift %s → %s"):format(tostring(self.baseline or "baseline"), tostring(self.target or "target"))
    end
    if self.action then heading = heading .. " (" .. tostring(self.action) .. ")" end
    lines[1] = paint("bold", heading)
    if #self.items == 0 then
        lines[2] = "  no drift"
        return table.concat(lines, "\n")
    end
    local width = 0
    for _, it in ipairs(self.items) do width = math.max(width, #it.variable) end
    for _, it in ipairs(self.items) do
        local t = it.drift_type
        local detail
        if t == "masked_mismatch" then
            detail = ("masked %s → %s"):format(tostring(it.baseline_masked), tostring(it.target_masked))
        elseif t == "unverifiable" then
            detail = "*** vs *** (the API does not reveal masked values)"
        else
            detail = side(it.baseline, it.baseline_masked) .. " → " .. side(it.target, it.target_masked)
        end
        lines[#lines + 1] = ("  %s %s  %s"):format(paint(COLOR[t], SYMBOL[t]), render.pad(it.variable, width), detail)
    end
    local c, parts = self:counts(), {}
    for _, t in ipairs(ORDER) do
        if c[t] > 0 then parts[#parts + 1] = ("%d %s"):format(c[t], LABEL[t]) end
    end
    lines[#lines + 1] = ("%d difference%s: %s"):format(#self.items, #self.items == 1 and "" or "s",
        table.concat(parts, ", "))
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
    if self.action then heading = heading .. " (`" .. tostring(self.action) .. "`)" end
    local lines = { "#### " .. heading, "" }
    if #self.items == 0 then
        lines[#lines + 1] = "No drift."
        return table.concat(lines, "\n") .. "\n"
    end
    lines[#lines + 1] = "| | Variable | " .. render.md_text(self.baseline or "baseline") .. " | "
        .. render.md_text(self.target or "target") .. " | Drift |"
    lines[#lines + 1] = "|---|---|---|---|---|"
    for _, it in ipairs(self.items) do
        local t = it.drift_type
        local b, tv = MD_SIDE(it.baseline, it.baseline_masked), MD_SIDE(it.target, it.target_masked)
        if t == "unverifiable" then b, tv = "`***`", "`***`" end
        lines[#lines + 1] = ("| %s | %s | %s | %s | %s |"):format(SYMBOL[t], render.md_code(it.variable),
            b, tv, LABEL[t])
    end
    return table.concat(lines, "\n") .. "\n"
end

--- Plain data for --json output.
function Report:totable()
    return { baseline = self.baseline, target = self.target, action = self.action, items = self.items }
end

M.Report = Report
return M
