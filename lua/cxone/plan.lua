--- Plans: what applying one step would change, and what it expects to find when it writes.
-- A Plan is made by `client:plan(step)` (or `client:plan_all`); it renders like
-- `terraform plan` and is applied exactly as made by `client:apply` / `client:apply_all`.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.plan

local render = require("cxone.render")

local M = {}

local Plan = {}
Plan.__index = Plan
Plan.__name = "cxone.Plan"
M.Plan = Plan

--- Wraps a plan table in the class. Fields: action, tier ({name, id, build}), baseline,
-- etag (nil when the server gives none), items ({name, kind, masked, old, new}), counts,
-- changes, drift, payload (what will be written; holds masked values, never serialised),
-- before (NAME → {present, masked, value}: what each written variable looked like when planned;
-- masked values never), build_owed ({key}: a build an earlier run owes), fingerprints.
-- An item that turns a plain variable masked keeps no old value (`old_hidden` instead): the
-- value is about to become a secret, so it is never shown, saved or audited; `before` keeps
-- it in memory only (a saved plan holds a keyed fingerprint of it, checked with `fp_of`).
-- Items whose description changes carry `description` and `old_description`.
function M.new(t)
    local hidden = {}
    for _, it in ipairs(t.items or {}) do
        if it.masked and not it.old_masked and it.old ~= nil then
            it.old, it.old_hidden = nil, true
            hidden[it.name] = true
        end
    end
    -- nor does the drift shown with the plan show it (the target's value is that old value)
    if next(hidden) and t.drift and type(t.drift.items) == "table" then
        local kept = {}
        for _, d in ipairs(t.drift.items) do
            if not hidden[d.variable] then kept[#kept + 1] = d end
        end
        t.drift.items = kept
    end
    return setmetatable(t, Plan)
end

--- True when t is a Plan.
function M.is(t) return getmetatable(t) == Plan end

--- True when applying does anything: a variable to write or a build owed.
function Plan:pending() return self.changes > 0 or self.build_owed ~= nil end

--- Names of the variables the plan writes (never values).
function Plan:names()
    local out = {}
    for _, it in ipairs(self.items) do
        if it.kind ~= "unchanged" then out[#out + 1] = it.name end
    end
    return out
end

local SYM = { add = "+", change = "~", unchanged = "=", set = "*", remove = "-" }
local COL = { add = "green", change = "yellow", unchanged = "dim", set = "magenta", remove = "red" }

function Plan:summary()
    local c = self.counts
    return ("Plan: %d to add, %d to change, %d to set (masked), %d unchanged%s."):format(
        c.add, c.change, c.set, c.unchanged, (c.remove or 0) > 0 and (", %d to remove"):format(c.remove) or "")
end

--- Renders like `terraform plan`; opts.color for ANSI colours, opts.drift = false to leave
-- drift out.
function Plan:render(opts)
    opts = opts or {}
    local paint = render.painter(opts.color)
    local lines = {}
    lines[1] = paint("bold", ("%s → %s (%s)"):format(render.escape(self.action), render.escape(self.tier.name),
        render.escape(self.tier.id)))
    local width = 0
    for _, it in ipairs(self.items) do width = math.max(width, render.width(it.name)) end
    for _, it in ipairs(self.items) do
        local detail
        if it.old_hidden then
            detail = "(plain; value not shown) → *** (masked)"
        elseif it.kind == "add" then
            detail = it.masked and "***" or render.quote(it.new)
        elseif it.kind == "set" then
            detail = "*** (masked; current value not visible)"
        elseif it.kind == "unchanged" then
            detail = it.masked and "***" or render.quote(it.new)
        elseif it.kind == "remove" then
            detail = (it.old_masked and "***" or render.quote(it.old)) .. " → (removed)"
        else
            local old = it.old_masked and "***" or render.quote(it.old)
            local new = it.masked and "***" or render.quote(it.new)
            detail = old .. " → " .. new
        end
        if it.old_description ~= nil or it.description ~= nil then
            detail = detail .. ("  description %s → %s"):format(render.quote(it.old_description),
                render.quote(it.description))
        end
        lines[#lines + 1] = ("  %s %s  %s"):format(paint(COL[it.kind], SYM[it.kind]),
            render.pad(it.name, width), detail)
    end
    if self.tier.build and self.changes > 0 then
        lines[#lines + 1] = "  (a build will be queued after applying)"
    elseif self.build_owed then
        lines[#lines + 1] = "  (a build an earlier run owes will be queued)"
    end
    if self.etag == nil and self.changes > 0 then
        lines[#lines + 1] = "  (the server sends no ETag: the target is re-read and compared just before writing)"
    end
    lines[#lines + 1] = self:summary()
    if opts.drift ~= false and self.drift then
        lines[#lines + 1] = self.drift:render({ color = opts.color })
    end
    return table.concat(lines, "\n")
end

function Plan:__tostring() return self:render() end

--- Renders the plan as Markdown (a heading and a table of variables); masked values as `***`.
function Plan:markdown()
    local lines = { ("#### %s → %s (%s)"):format(render.md_code(self.action), render.md_text(self.tier.name),
        render.md_code(self.tier.id)), "" }
    lines[#lines + 1] = "| | Variable | Current | Planned |"
    lines[#lines + 1] = "|---|---|---|---|"
    for _, it in ipairs(self.items) do
        local old, new
        if it.kind == "add" then old = "—"
        elseif it.kind == "set" then old = "`***` (not visible)"
        elseif it.old_hidden then old = "plain (not shown)"
        else old = it.old_masked and "`***`" or render.md_value(it.old) end
        new = it.masked and "`***`" or render.md_value(it.new)
        if it.kind == "unchanged" then old = "" end
        if it.old_description ~= nil or it.description ~= nil then
            old = old .. " (description " .. render.md_value(it.old_description) .. ")"
            new = new .. " (description " .. render.md_value(it.description) .. ")"
        end
        lines[#lines + 1] = ("| %s | %s | %s | %s |"):format(SYM[it.kind] == "*" and "\\*" or SYM[it.kind],
            render.md_code(it.name), old, new)
    end
    lines[#lines + 1] = ""
    local notes = { self:summary() }
    if self.tier.build and self.changes > 0 then notes[#notes + 1] = "A build will be queued after applying." end
    if self.build_owed and self.changes == 0 then notes[#notes + 1] = "A build an earlier run owes will be queued." end
    lines[#lines + 1] = table.concat(notes, " ")
    if self.drift and self.drift:count() > 0 then
        lines[#lines + 1] = ""
        lines[#lines + 1] = (self.drift:markdown():gsub("\n$", ""))
    end
    return table.concat(lines, "\n") .. "\n"
end

--- Plain data for --json (no masked value, no fingerprint).
function Plan:totable()
    local items = {}
    for i, it in ipairs(self.items) do
        items[i] = { name = it.name, kind = it.kind, masked = it.masked, old = it.old,
                     old_masked = it.old_masked, old_hidden = it.old_hidden, new = it.new,
                     description = it.description, old_description = it.old_description }
    end
    return {
        action = self.action, tier = self.tier.name, environment = self.tier.id,
        baseline = self.baseline and self.baseline.name or nil, etag = self.etag,
        items = items, counts = self.counts, changes = self.changes,
        build_owed = self.build_owed and true or nil,
        drift = self.drift and self.drift:totable() or nil,
    }
end

--- Compares the written variables of the plan with a variable list read from the target.
-- Returns two booleans: `holds` — the target holds exactly what the plan writes (plain values
-- equal; masked ones present and masked); `visible` — the write is observable at all (some
-- written variable looked different before), so that `holds` proves the write landed.
function Plan:compare_written(vars)
    local by = {}
    for _, v in ipairs(vars or {}) do if type(v) == "table" and v.name then by[v.name] = v end end
    local holds, visible = true, false
    for _, e in ipairs(self.payload.variables) do
        local cur, before = by[e.name], self.before[e.name] or {}
        local masked = e.masked == true
        if not cur or (cur.masked == true) ~= masked or (not masked and cur.value ~= e.value) then
            holds = false
        end
        if not before.present or before.masked ~= masked or (not masked and before.value ~= e.value) then
            visible = true
        end
    end
    return holds, visible
end

--- True when the written variables still look as they did when planned (for servers without
-- ETags): the same presence and masked flag, and the same value for unmasked ones (compared by
-- keyed fingerprint, `self.fp_of(name, value)`, where the plan keeps only that: a saved plan
-- turning a plain variable masked).
function Plan:unchanged_since(vars)
    local by = {}
    for _, v in ipairs(vars or {}) do if type(v) == "table" and v.name then by[v.name] = v end end
    for _, e in ipairs(self.payload.variables) do
        local cur, before = by[e.name], self.before[e.name] or {}
        if (cur ~= nil) ~= (before.present == true) then return false end
        if cur then
            if (cur.masked == true) ~= (before.masked == true) then return false end
            if not before.masked then
                if before.fp ~= nil then
                    if not (self.fp_of and self.fp_of(e.name, cur.value) == before.fp) then return false end
                elseif cur.value ~= before.value then
                    return false
                end
            end
        end
    end
    return true
end

return M
