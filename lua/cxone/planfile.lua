--- Saved plans: `cxone plan --out PLAN.json` writes what a reviewed apply will do, and
-- `cxone apply PLAN.json` applies exactly that. A saved plan holds no secret: masked values are
-- keyed fingerprints (HMAC-SHA-256 with the client secret), so applying it re-reads the
-- playbook it names for them, and refuses if any value there no longer matches the plan.
-- Per step it records what the write expects to find: the ETag when the server gives one, and
-- always the before-state of each variable it writes. A digest over the canonical content
-- catches edits and damage.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.planfile

local core = require("cxone.core")
local payload = require("cxone.payload")
local playbook = require("cxone.playbook")
local planmod = require("cxone.plan")
local reportmod = require("cxone.report")

local M = {}

M.FORMAT = "cxone-plan/1"

-- Canonical JSON: object keys sorted, so the digest does not depend on table order.
local function canon(v, out)
    local t = type(v)
    if t == "table" then
        local n = #v
        local keys = {}
        for k in pairs(v) do keys[#keys + 1] = k end
        if #keys == n then
            out[#out + 1] = "["
            for i = 1, n do
                if i > 1 then out[#out + 1] = "," end
                canon(v[i], out)
            end
            out[#out + 1] = "]"
        else
            for i, k in ipairs(keys) do keys[i] = tostring(k) end
            table.sort(keys)
            out[#out + 1] = "{"
            for i, k in ipairs(keys) do
                if i > 1 then out[#out + 1] = "," end
                out[#out + 1] = assert(core.json_encode(k))
                out[#out + 1] = ":"
                canon(v[k], out)
            end
            out[#out + 1] = "}"
        end
    elseif t == "number" then
        if v == math.floor(v) and v > -2^53 and v < 2^53 then
            out[#out + 1] = ("%d"):format(v)
        else
            out[#out + 1] = ("%.17g"):format(v)
        end
    elseif v == nil or v == core.null then
        out[#out + 1] = "null"
    else
        out[#out + 1] = assert(core.json_encode(v))
    end
    return out
end

local function encode(doc) return table.concat(canon(doc, {})) end

local function digest(doc)
    local d = doc.digest
    doc.digest = nil
    local h = core.sha256(encode(doc))
    doc.digest = d
    return h
end

local function cwd() return os.getenv("PWD") end

-- The data of one planned step (no masked value anywhere).
local function step_data(i, p)
    local items, writes = {}, {}
    for k, it in ipairs(p.items) do
        items[k] = { name = it.name, kind = it.kind, masked = it.masked, old = it.old,
                     old_masked = it.old_masked, new = (not it.masked) and it.new or nil, fp = it.fp }
    end
    for k, e in ipairs(p.payload.variables) do
        writes[k] = { name = e.name, masked = e.masked == true, description = e.description,
                      value = (not e.masked) and e.value or nil,
                      fp = e.masked and p.fingerprints[e.name] or nil }
    end
    return {
        index = i, action = p.action, tier = p.tier.name, environment = p.tier.id,
        build = p.tier.build, baseline = p.baseline and p.baseline.name or nil,
        etag = p.etag, changes = p.changes, counts = p.counts, items = items, writes = writes,
        before = p.before, build_owed = p.build_owed,
    }
end

--- Writes a planned report (from `client:plan_all`) to path, atomically.
-- @tparam string path
-- @tparam cxone.Report rep
-- @tparam table opts `{playbook = PATH, client = cxone client}`
-- @treturn[1] string the plan's digest
-- @treturn[2] fail (code "io")
function M.save(path, rep, opts)
    if type(path) ~= "string" then error("bad argument #1 to 'save' (string expected)", 2) end
    if not reportmod.is(rep) then error("bad argument #2 to 'save' (cxone.Report expected)", 2) end
    local c = opts.client
    local doc = {
        format = M.FORMAT, run_id = rep.run_id, created = os.date("!%Y-%m-%dT%H:%M:%SZ"),
        playbook = opts.playbook, cwd = cwd(), base_url = c.cfg.base_url, client_id = c.cfg.client_id,
        steps = {},
    }
    for i = 1, #rep.steps do
        doc.steps[i] = step_data(i, assert(rep.plans[i], "a plan for every step"))
    end
    doc.digest = digest(doc)
    local text = encode(doc) .. "\n"
    local tmp = path .. ".tmp-" .. rep.run_id
    local f, err = io.open(tmp, "wb")
    if not f then return nil, err, "io" end
    local ok, werr = f:write(text)
    local cok, cerr = f:close()
    if not (ok and cok) then
        os.remove(tmp)
        return nil, ("cannot write %s: %s"):format(path, tostring(werr or cerr)), "io"
    end
    local rok, rerr = os.rename(tmp, path)
    if not rok then
        os.remove(tmp)
        return nil, rerr, "io"
    end
    return doc.digest
end

--- True when the file at path looks like a saved plan (not a playbook).
function M.is_plan(path)
    local f = io.open(path, "rb")
    if not f then return false end
    local text = f:read(1024 * 1024) or ""
    f:close()
    return text:match("^%s*{") ~= nil and text:find('"format":"' .. M.FORMAT .. '"', 1, true) ~= nil
end

local function refuse(fmt, ...)
    return nil, fmt:format(...), "invalid"
end

-- Finds the playbook the plan names: as written, else relative to where the plan was made.
local function load_playbook(doc)
    local book, err = playbook.load(doc.playbook)
    if not book and type(doc.cwd) == "string" and not doc.playbook:match("^/") then
        local again = playbook.load(doc.cwd .. "/" .. doc.playbook)
        if again then return again end
    end
    return book, err
end

-- Rebuilds the plan of saved step d from the playbook's step s, checking every value.
local function rebuild(c, d, s)
    local where = ("step %d (%s %s)"):format(d.index, tostring(d.action), tostring(d.tier))
    local tier = c.tiers:resolve(s.tier)
    if s.action ~= d.action or tier.id ~= d.environment then
        return refuse("%s: the playbook's step %d is now %s %s", where, d.index, tostring(s.action), tostring(s.tier))
    end
    if tier.build ~= (d.build == true) then
        return refuse("%s: the tier matrix changed (build after apply) since the plan was made", where)
    end
    local entries = {}
    for _, e in ipairs(payload.entries(s.variables, tier.id)) do entries[e.name] = e end
    local seen, fingerprints = {}, {}
    for _, it in ipairs(d.items) do
        local e = entries[it.name]
        seen[it.name] = true
        if not e then return refuse("%s: %s is no longer in the playbook", where, it.name) end
        if (e.masked == true) ~= (it.masked == true) then
            return refuse("%s: %s changed its masked flag since the plan was made", where, it.name)
        end
        if it.masked then
            local fp = require("cxone.client").fingerprint(c, d.action, tier.id, it.name, e.value)
            if fp == nil or fp ~= it.fp then
                return refuse("%s: the masked value of %s no longer matches the plan (or another client "
                    .. "secret is in use)", where, it.name)
            end
            fingerprints[it.name] = fp
        elseif e.value ~= it.new then
            return refuse("%s: the value of %s no longer matches the plan", where, it.name)
        end
    end
    for name in pairs(entries) do
        if not seen[name] then return refuse("%s: %s was added to the playbook after the plan was made", where, name) end
    end
    local send = {}
    for k, w in ipairs(d.writes) do
        send[k] = { name = w.name, masked = w.masked == true, description = w.description,
                    value = w.masked and entries[w.name].value or w.value }
    end
    local items = {}
    for k, it in ipairs(d.items) do
        items[k] = { name = it.name, kind = it.kind, masked = it.masked == true, old = it.old,
                     old_masked = it.old_masked, new = it.masked and "***" or it.new, fp = it.fp }
    end
    return planmod.new({
        action = d.action, tier = tier, baseline = d.baseline and c.tiers:resolve(d.baseline) or nil,
        etag = d.etag, items = items, counts = d.counts, changes = d.changes, before = d.before or {},
        fingerprints = fingerprints, build_owed = d.build_owed,
        payload = { actionId = d.action, environmentId = tier.id, variables = send },
    })
end

--- Loads a saved plan for a client: checks its digest, that it was made for this tenant and
-- client, and that the playbook it names still holds exactly its values (masked ones by
-- fingerprint). Returns a report ready for `client:apply_all`, which writes only what the plan
-- says, each step conditional on what the plan saw.
-- @tparam string path
-- @tparam table c a cxone client
-- @treturn[1] cxone.Report
-- @treturn[2] fail (code "invalid", "io" or "config")
function M.load(path, c)
    local f, ferr = io.open(path, "rb")
    if not f then return nil, ferr, "io" end
    local text = f:read("*a")
    f:close()
    local ok, doc = pcall(core.json_decode, text)
    if not ok or type(doc) ~= "table" or doc.format ~= M.FORMAT then
        return refuse("%s is not a saved plan (%s)", path, M.FORMAT)
    end
    if type(doc.steps) ~= "table" or type(doc.playbook) ~= "string" or type(doc.run_id) ~= "string" then
        return refuse("%s: a saved plan needs steps, playbook and run_id", path)
    end
    if doc.digest ~= digest(doc) then
        return refuse("%s was modified after it was written (its digest does not match): plan again", path)
    end
    if doc.base_url ~= c.cfg.base_url or doc.client_id ~= c.cfg.client_id then
        return nil, ("%s was made for %s as %s, not %s as %s"):format(path, tostring(doc.base_url),
            tostring(doc.client_id), tostring(c.cfg.base_url), tostring(c.cfg.client_id)), "config"
    end
    local book, berr = load_playbook(doc)
    if not book then return refuse("%s names the playbook %s, which cannot be loaded: %s", path, doc.playbook, tostring(berr)) end
    local okp, perr = playbook.check(book.steps, c.tiers)
    if not okp then return refuse("%s: %s", doc.playbook, perr) end
    if #book.steps ~= #doc.steps then
        return refuse("%s has %d steps; the plan has %d: plan again", doc.playbook, #book.steps, #doc.steps)
    end
    local rep = reportmod.new(doc.run_id, false)
    rep.plan_file, rep.concurrency = path, book.concurrency
    for i, d in ipairs(doc.steps) do
        local p, err, code = rebuild(c, d, book.steps[i])
        if not p then return nil, err, code end
        rep.plans[i] = p
        rep.steps[i] = { index = i, action = p.action, tier = p.tier.name, environment = p.tier.id,
                         changes = p.changes, variables = p:names(), build_owed = p.build_owed and true or nil }
        rep:set(i, p:pending() and "planned" or "unchanged")
    end
    rep.ok = true
    return rep
end

return M
