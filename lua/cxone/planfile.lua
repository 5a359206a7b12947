--- Saved plans: `cxone plan --out PLAN.json` writes what a reviewed apply will do, and
-- `cxone apply PLAN.json` applies exactly that. A saved plan is data, never code: applying one
-- runs no Lua and opens no file it names.
--
-- * Authenticated: the whole document is sealed with HMAC-SHA-256 under the plan key
--   (`CXONE_PLAN_KEY`, else a key derived from the credentials of the tenant it writes to, never
--   the secret itself). Any edit, truncation or reordering fails the check: "plan was modified".
-- * One list: each step's `items` carry everything a write needs (name, value, masked,
--   description); the requests are built from those checked items only.
-- * No secret: a masked value is recorded as the environment variable it comes from (the
--   playbook's `env("NAME")`) and a keyed fingerprint; apply reads the variable and refuses a
--   value that does not match. A plain variable being turned masked keeps only a fingerprint of
--   its old value.
-- * Repeatable runs: a plan expires (one day by default), is refused once it was applied (a
--   small 0600 state file beside the ledger records the plans applied), and is refused when
--   what it read has changed since.
-- Plan files are written 0600 whatever the umask, atomically (core.write_private).
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.planfile

local core = require("cxone.core")
local planmod = require("cxone.plan")
local reportmod = require("cxone.report")
local render = require("cxone.render")

local M = {}

M.FORMAT = "cxone-plan/2"
M.DEFAULT_TTL = 86400
M.MAX_TTL = 30 * 86400
local MAX_SIZE = 64 * 1024 * 1024

-- Canonical JSON: object keys sorted, so the MAC does not depend on table order.
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

local function hmac(key, ...) return core.hmac_sha256(key, table.concat({ ... }, "\0")) end

--- The plan key for a client: `CXONE_PLAN_KEY` when set, else HMAC-SHA-256 under the client
-- secret (or access key secret) of "cxone plan key v1", the base URL and the client id, so a
-- plan made for one tenant does not verify for another. Returns the key and where it comes from
-- ("CXONE_PLAN_KEY" or "credentials"), or nil and a message.
function M.key(c)
    local k = require("cxone.env").get("plan_key")
    if k then return k, "CXONE_PLAN_KEY" end
    local secret = c.cfg.client_secret or c.cfg.access_key_secret
    if type(secret) ~= "string" or secret == "" then
        return nil, "no plan key: set CXONE_PLAN_KEY or the client credentials"
    end
    return hmac(secret, "cxone plan key v1", tostring(c.cfg.base_url), tostring(c.cfg.client_id)), "credentials"
end

--- The MAC of a plan document (every field but `mac`) under key.
function M.mac(doc, key)
    local m = doc.mac
    doc.mac = nil
    local h = core.hmac_sha256(key, encode(doc))
    doc.mac = m
    return h
end

--- Seals a document: sets its `mac` and returns the file's text.
function M.seal(doc, key)
    doc.mac = M.mac(doc, key)
    return encode(doc) .. "\n"
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

--- Parses a time to live: seconds, or a number with s, m, h or d ("90m", "2d").
-- @treturn[1] integer seconds (1 .. 30 days)
-- @treturn[2] fail (code "invalid")
function M.parse_ttl(s)
    local n, unit = tostring(s):match("^%s*(%d+)%s*([smhd]?)%s*$")
    local mult = { [""] = 1, s = 1, m = 60, h = 3600, d = 86400 }
    n = tonumber(n)
    if not n or n <= 0 then
        return nil, ("expiry %q: give a duration such as 3600, 90m, 12h or 2d"):format(tostring(s)), "invalid"
    end
    n = n * mult[unit]
    if n > M.MAX_TTL then
        return nil, ("expiry %q is longer than 30 days"):format(tostring(s)), "invalid"
    end
    return n
end

--- True when the file at path looks like a saved plan (not a playbook), of any format version.
function M.is_plan(path)
    local f = io.open(path, "rb")
    if not f then return false end
    local text = f:read(1024 * 1024) or ""
    f:close()
    return text:match("^%s*{") ~= nil and text:find('"format":"cxone%-plan/%d+"') ~= nil
end

--- Checks where `plan --out` may write, before anything is planned: never a `.lua` file, never
-- the playbook, never over an existing file unless `force` (and even then only over a saved plan).
-- @treturn[1] true
-- @treturn[2] fail (code "invalid")
function M.check_target(path, playbook_path, force)
    if path:lower():match("%.lua$") then
        return nil, ("refusing to write the plan to %s: a .lua file is code; give a .json path"):format(path), "invalid"
    end
    if path == playbook_path then
        return nil, ("refusing to write the plan over the playbook %s"):format(path), "invalid"
    end
    local f = io.open(path, "rb")
    if f then
        f:close()
        if not force then
            return nil, ("%s exists: pass --force to replace it"):format(path), "invalid"
        end
        if not M.is_plan(path) then
            return nil, ("%s exists and is not a saved plan: refusing to replace it, even with --force"):format(path), "invalid"
        end
    end
    return true
end

local function invalid(fmt, ...) return nil, fmt:format(...), "invalid" end

-- The data of one planned step: one list of items, each with what its write needs.
local function step_data(key, i, p, sources, problems)
    local sent = {}
    for _, e in ipairs(p.payload.variables) do sent[e.name] = e end
    local items = {}
    local where = ("step %d (%s %s)"):format(i, tostring(p.action), tostring(p.tier.name))
    for k, it in ipairs(p.items) do
        local e = sent[it.name]
        local d = { name = it.name, kind = it.kind, masked = it.masked == true, old = it.old,
                    old_masked = it.old_masked, old_hidden = it.old_hidden,
                    new = (not it.masked) and it.new or nil,
                    description = e and e.description or nil, old_description = it.old_description,
                    description_changed = (it.description ~= nil or it.old_description ~= nil) or nil }
        if e and e.masked then
            local name = sources[e.value]
            if not name then
                problems[#problems + 1] = ("%s: the masked value of %s does not come from env(): a saved plan "
                    .. "holds no secret, so `cxone apply PLAN.json` reads each masked value from the environment; "
                    .. "write value = env(\"NAME\") in the playbook and set NAME"):format(where, it.name)
            else
                d.env = name
                d.fp = hmac(key, "masked", p.action, p.tier.id, it.name, e.value)
            end
        end
        items[k] = d
    end
    local before = {}
    for name, b in pairs(p.before or {}) do
        local e = sent[name]
        if e and e.masked and b.value ~= nil then
            before[name] = { present = b.present, masked = b.masked,
                             fp = hmac(key, "before", p.action, p.tier.id, name, b.value) }
        else
            before[name] = { present = b.present, masked = b.masked, value = b.value }
        end
    end
    return {
        index = i, action = p.action, tier = p.tier.name, environment = p.tier.id,
        build = p.tier.build == true, baseline = p.baseline and p.baseline.name or nil,
        etag = p.etag, changes = p.changes, counts = p.counts, items = items,
        before = before, build_owed = p.build_owed,
    }
end

--- Writes a planned report (from `client:plan_all`) to path: sealed, 0600, atomically.
-- @tparam string path
-- @tparam cxone.Report rep
-- @tparam table opts `client` (the cxone client), `sources` (value → the environment variable
--   it was read from: playbook.load's `env_sources`), `ttl` (seconds, default one day),
--   `playbook` (its path, recorded for the reader only: never opened again)
-- @treturn[1] string the plan's MAC (its digest)
-- @treturn[1] table the document
-- @treturn[2] fail (code "invalid": a masked value not from env(), "config" or "io")
function M.save(path, rep, opts)
    if type(path) ~= "string" then error("bad argument #1 to 'save' (string expected)", 2) end
    if not reportmod.is(rep) then error("bad argument #2 to 'save' (cxone.Report expected)", 2) end
    if type(opts) ~= "table" or type(opts.client) ~= "table" then
        error("bad argument #3 to 'save' (table with a client expected)", 2)
    end
    local c = opts.client
    local key, source = M.key(c)
    if not key then return nil, source, "config" end
    local now = os.time()
    local ttl = opts.ttl or M.DEFAULT_TTL
    local doc = {
        format = M.FORMAT, plan_id = rep.run_id, created = iso(now), created_at = now,
        expires = iso(now + ttl), expires_at = now + ttl, key = source,
        playbook = opts.playbook, base_url = c.cfg.base_url, client_id = c.cfg.client_id,
        concurrency = rep.concurrency, steps = {},
        revert_of = opts.revert_of, -- cxone revert --out: the run this plan puts back (sealed)
    }
    local problems = {}
    for i = 1, #rep.steps do
        doc.steps[i] = step_data(key, i, assert(rep.plans[i], "a plan for every step"), opts.sources or {}, problems)
    end
    if #problems > 0 then return nil, table.concat(problems, "\n"), "invalid" end
    local text = M.seal(doc, key)
    local ok, err, code = core.write_private(path, text)
    if not ok then return nil, err, code end
    return doc.mac, doc
end

-- Type checks for the fields a step and an item must have (a sealed plan was written by us,
-- but a plan key can be shared: nothing in it is trusted to be well formed).
local function check_shape(d)
    if type(d) ~= "table" then return "a step is not an object" end
    for _, f in ipairs({ "action", "tier", "environment" }) do
        if type(d[f]) ~= "string" then return ("a step's %s is not a string"):format(f) end
    end
    if type(d.items) ~= "table" then return "a step has no items" end
    if d.before ~= nil and type(d.before) ~= "table" then return "a step's before is not an object" end
    for _, it in ipairs(d.items) do
        if type(it) ~= "table" or type(it.name) ~= "string" or type(it.kind) ~= "string" then
            return "an item has no name or kind"
        end
        if it.kind ~= "unchanged" then
            if it.masked == true then
                if type(it.env) ~= "string" or type(it.fp) ~= "string" then
                    return ("the masked write of %s names no environment variable"):format(it.name)
                end
            elseif type(it.new) ~= "string" then
                return ("the write of %s has no value"):format(it.name)
            end
        end
    end
    return nil
end

-- Rebuilds the plan of saved step d, reading masked values from the environment.
local function rebuild(c, key, d)
    local where = ("step %d (%s %s)"):format(d.index or 0, d.action, d.tier)
    local tier, terr = c.tiers:resolve(d.tier)
    if not tier then return invalid("%s: %s", where, tostring(terr)) end
    if tier.id ~= d.environment then
        return invalid("%s: the tier matrix maps %s to %s now, not %s: plan again", where, d.tier, tier.id, d.environment)
    end
    if tier.build ~= (d.build == true) then
        return invalid("%s: the tier matrix changed (build after apply) since the plan was made: plan again", where)
    end
    local baseline
    if d.baseline ~= nil then
        baseline = type(d.baseline) == "string" and c.tiers:resolve(d.baseline) or nil
        if not baseline then return invalid("%s: its baseline %s is not a tier", where, tostring(d.baseline)) end
    end
    local fingerprint = require("cxone.client").fingerprint
    local items, send, fingerprints, counts = {}, {}, {}, { add = 0, change = 0, set = 0, unchanged = 0 }
    for k, it in ipairs(d.items) do
        if counts[it.kind] == nil then return invalid("%s: %s has an unknown kind %s", where, it.name, it.kind) end
        counts[it.kind] = counts[it.kind] + 1
        local value = it.new
        if it.kind ~= "unchanged" and it.masked == true then
            value = os.getenv(it.env)
            if value == nil or value == "" then
                return nil, ("%s: the masked value of %s comes from the environment variable %s, which is not set")
                    :format(where, it.name, it.env), "config"
            end
            if hmac(key, "masked", d.action, tier.id, it.name, value) ~= it.fp then
                return invalid("%s: the masked value of %s (from %s) no longer matches the plan: plan again",
                    where, it.name, it.env)
            end
            fingerprints[it.name] = fingerprint(c, d.action, tier.id, it.name, value)
        end
        if it.kind ~= "unchanged" then
            send[#send + 1] = { name = it.name, value = value, masked = it.masked == true,
                                description = type(it.description) == "string" and it.description or nil }
        end
        local changed = it.description_changed == true
        items[k] = { name = it.name, kind = it.kind, masked = it.masked == true, old = it.old,
                     old_masked = it.old_masked, old_hidden = it.old_hidden,
                     new = it.masked == true and "***" or it.new,
                     description = changed and it.description or nil,
                     old_description = changed and it.old_description or nil }
    end
    local changes = counts.add + counts.change + counts.set
    if changes ~= d.changes then return invalid("%s: its counts do not match its items", where) end
    local p = planmod.new({
        action = d.action, tier = tier, baseline = baseline,
        etag = d.etag, items = items, counts = counts, changes = changes, before = d.before or {},
        fingerprints = fingerprints, build_owed = type(d.build_owed) == "table" and d.build_owed or nil,
        payload = { actionId = d.action, environmentId = tier.id, variables = send },
    })
    p.fp_of = function(name, v) return hmac(key, "before", d.action, tier.id, name, v) end
    return p
end

--- Loads a saved plan for a client: checks its MAC under the plan key ("plan was modified"),
-- that it is for this tenant and client, that it has not expired, and reads each masked value
-- from the environment variable it names, checking it against its fingerprint. Runs no Lua
-- and opens nothing but path. Each load gets a new run id (`rep.run_id`); the plan's own is
-- `rep.plan_id`, its MAC `rep.plan_digest`.
-- @tparam string path
-- @tparam table c a cxone client
-- @treturn[1] cxone.Report ready for `client:apply_all`
-- @treturn[1] table the plan document
-- @treturn[2] fail (code "invalid", "expired", "io" or "config")
function M.load(path, c)
    local f, ferr = io.open(path, "rb")
    if not f then return nil, ferr, "io" end
    local text = f:read(MAX_SIZE + 1) or ""
    f:close()
    if #text > MAX_SIZE then return invalid("%s is too large for a saved plan", path) end
    local ok, doc = pcall(core.json_decode, text)
    if not ok or type(doc) ~= "table" or type(doc.format) ~= "string" or not doc.format:match("^cxone%-plan/") then
        if text:find('"format":"cxone%-plan/') then -- began as a plan: cut or damaged
            return invalid("%s: plan was modified or damaged (it is no longer a valid plan document): "
                .. "nothing written; plan again", path)
        end
        return invalid("%s is not a saved plan (%s)", path, M.FORMAT)
    end
    if doc.format ~= M.FORMAT then
        return invalid("%s is a %s plan, which this cxone does not apply (it was not authenticated): plan again",
            path, doc.format)
    end
    local key, kerr = M.key(c)
    if not key then return nil, kerr, "config" end
    if type(doc.mac) ~= "string" or doc.mac ~= M.mac(doc, key) then
        return invalid("%s: plan was modified after it was written (its MAC does not verify under the %s): "
            .. "nothing written; plan again", path,
            require("cxone.env").get("plan_key") and "key in CXONE_PLAN_KEY" or "key of these credentials")
    end
    if doc.base_url ~= c.cfg.base_url or doc.client_id ~= c.cfg.client_id then
        return nil, ("%s was made for %s as %s, not %s as %s"):format(path, tostring(doc.base_url),
            tostring(doc.client_id), tostring(c.cfg.base_url), tostring(c.cfg.client_id)), "config"
    end
    if type(doc.expires_at) ~= "number" or type(doc.steps) ~= "table" or type(doc.plan_id) ~= "string" then
        return invalid("%s: a saved plan needs steps, plan_id and expires_at", path)
    end
    if os.time() > doc.expires_at then
        return nil, ("%s expired at %s (made %s): plan again"):format(path, iso(doc.expires_at),
            tostring(doc.created)), "expired"
    end
    local rep = reportmod.new(require("cxone.client").new_run_id(), false)
    rep.plan_file, rep.plan_id, rep.plan_digest = path, doc.plan_id, doc.mac
    if type(doc.revert_of) == "string" then rep.revert_of = doc.revert_of end
    if type(doc.concurrency) == "number" and doc.concurrency >= 1 then rep.concurrency = math.floor(doc.concurrency) end
    for i, d in ipairs(doc.steps) do
        local bad = check_shape(d)
        if bad then return invalid("%s: step %d: %s", path, i, bad) end
        local pok, p, err, code = pcall(rebuild, c, key, d)
        if not pok then return invalid("%s: step %d cannot be read: %s", path, i, tostring(p)) end
        if not p then return nil, err, code end
        rep.plans[i] = p
        rep.steps[i] = { index = i, action = p.action, tier = p.tier.name, environment = p.tier.id,
                         changes = p.changes, variables = p:names(), build_owed = p.build_owed and true or nil }
        rep:set(i, p:pending() and "planned" or "unchanged")
    end
    rep.ok = true
    return rep, doc
end

-- What a step's plan saw of one variable: its before-state when the plan writes it, else
-- (unchanged) what the playbook wants.
local function expected(p, it)
    local b = p.before[it.name]
    if b then return b end
    return { present = true, masked = it.masked == true, value = (not it.masked) and it.new or nil }
end

local function show(v, masked)
    if masked then return "***" end
    return render.quote(v)
end

--- Re-reads every target of a loaded plan and compares it with what the plan saw. Returns true,
-- or nil, a message listing each difference and telling the operator to plan again, "conflict".
function M.check_fresh(c, rep, concurrency)
    local reqs = {}
    for i = 1, #rep.steps do
        local p = rep.plans[i]
        reqs[i] = { op = "get", action = p.action, env = p.tier.id }
    end
    if #reqs == 0 then return true end
    local read_at = core.monotonic() -- before the reads: a plan's age errs on the old side
    local results = c.core:batch(reqs, { concurrency = concurrency or 8 })
    local diffs = {}
    for i = 1, #rep.steps do
        local p, r = rep.plans[i], results[i]
        local where = ("step %d (%s %s)"):format(i, p.action, p.tier.name)
        if not r.ok then
            return nil, ("%s: cannot re-read the target: %s"):format(where, tostring(r.error)), r.code
        end
        local cur = {}
        for _, v in ipairs(type(r.result) == "table" and r.result.variables or {}) do
            if type(v) == "table" and type(v.name) == "string" then cur[v.name] = v end
        end
        local etag = r.meta and r.meta.etag
        if p.etag ~= nil and etag ~= p.etag then
            diffs[#diffs + 1] = ("%s: the environment changed (ETag %s, now %s)"):format(where,
                render.escape(p.etag), render.escape(tostring(etag)))
        end
        for _, it in ipairs(p.items) do
            local want, now = expected(p, it), cur[it.name]
            local name = render.escape(it.name)
            if (now ~= nil) ~= (want.present == true) then
                diffs[#diffs + 1] = ("%s: %s was %s, now %s"):format(where, name,
                    want.present and "present" or "absent", now and "present" or "absent")
            elseif now then
                local masked = now.masked == true
                if masked ~= (want.masked == true) then
                    diffs[#diffs + 1] = ("%s: %s was %s, now %s"):format(where, name,
                        want.masked and "masked" or "plain", masked and "masked" or "plain")
                elseif not masked then
                    if want.fp ~= nil then
                        if not (p.fp_of and p.fp_of(it.name, now.value) == want.fp) then
                            diffs[#diffs + 1] = ("%s: the value of %s changed"):format(where, name)
                        end
                    elseif now.value ~= want.value then
                        diffs[#diffs + 1] = ("%s: %s was %s, now %s"):format(where, name,
                            show(want.value), show(now.value))
                    end
                end
            end
        end
    end
    if #diffs == 0 then
        -- this was the re-read before writing: on a server without ETags the applier compares
        -- with it (as with a fresh plan's own read) instead of reading every target once more
        for i = 1, #rep.steps do rep.plans[i].read_at = read_at end
        return true
    end
    return nil, ("%s: the targets changed since the plan was made, nothing written:\n  %s\nplan again "
        .. "(cxone plan --out PLAN.json PLAYBOOK.lua) and review the new plan"):format(
        tostring(rep.plan_file), table.concat(diffs, "\n  ")), "conflict"
end

-- The file recording the plans applied: beside the masked-value ledger (or the audit trail).
local function applied_path(c)
    local base = type(c.cfg.state_file) == "string" and c.cfg.state_file
        or type(c.cfg.audit_log) == "string" and c.cfg.audit_log or nil
    return base and (base .. ".applied") or nil
end
M.applied_path = applied_path

--- Takes the record of applied plans (locked until `finish`) and refuses a plan applied before.
-- @treturn[1] table a claim for `M.finish`
-- @treturn[2] fail (code "applied": "already applied at …, run id …"; "io"; "config")
function M.claim(c, rep)
    local path = applied_path(c)
    if not path then
        return nil, "a saved plan needs a state file to record that it was applied (CXONE_STATE_FILE)", "config"
    end
    local sf, err, code = core.state_open(path)
    if not sf then return nil, err, code end
    local ok
    ok, err, code = sf:lock()
    if not ok then sf:close(); return nil, err, code end
    local text
    text, err, code = sf:read()
    if not text then sf:unlock(); sf:close(); return nil, err, code end
    for line in text:gmatch("[^\n]+") do
        local dok, v = pcall(core.json_decode, line)
        if dok and type(v) == "table" and v.digest == rep.plan_digest then
            sf:unlock()
            sf:close()
            return nil, ("%s was already applied at %s, run id %s: a saved plan is applied once; plan again")
                :format(tostring(rep.plan_file), tostring(v.at), tostring(v.run_id)), "applied"
        end
    end
    return { file = sf, path = path }
end

--- Ends a claim: when `applied` (writes were attempted), records the plan as applied (with the
-- run id and time); always releases the lock.
-- @treturn[1] true
-- @treturn[2] fail (code "io")
function M.finish(claim, rep, applied)
    local sf = claim.file
    local ok, err, code = true, nil, nil
    if applied then
        local line = core.json_encode({ digest = rep.plan_digest, run_id = rep.run_id, plan_id = rep.plan_id,
                                        at = iso(os.time()) })
        ok, err, code = sf:append(line .. "\n")
    end
    sf:unlock()
    sf:close()
    if not ok then return nil, err, code end
    return true
end

return M
