--- The `cxone` command line. `require("cxone.cli").main(arg)` returns the exit status.
-- Messages go to stderr, results to stdout; `--json` prints machine output (cjson.safe) on
-- stdout; colour only when stdout is a terminal and NO_COLOR is unset.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.cli

local M = {}

local USAGE = [[
usage: cxone <command> [options]

commands:
  plan PLAYBOOK.lua              show what apply would change (exit 0 nothing, 2 changes, 1 error)
  apply PLAYBOOK.lua [--yes]     apply a playbook (asks first on a terminal; --yes to skip)
  validate FILE.json             check an override payload (exit 0 valid, 1 invalid)
  drift ACTION BASELINE TARGET   compare two tiers of an action (exit 0 none, 2 drift, 1 error)
  vars ACTION TIER               list an environment's variables (masked values as ***)
  audit verify FILE              verify an audit trail's hash chain
  sim [flags]                    run cxone-sim (flags as the simulator's; --help there)
  repl                           lua5.4 -i with cxone loaded and `client` built from CXONE_*

options (every command): --help, --json (machine output on stdout)
settings: CXONE_BASE_URL, CXONE_TOKEN_URL, CXONE_CLIENT_ID, CXONE_CLIENT_SECRET,
  CXONE_ACCESS_KEY_ID, CXONE_ACCESS_KEY_SECRET, CXONE_AUDIT_LOG (default cxone_audit.jsonl),
  CXONE_WEBHOOK_URL, CXONE_WEBHOOK_SECRET, CXONE_CA_FILE; NO_COLOR disables colour.
]]

local HELP = {
    plan = "usage: cxone plan PLAYBOOK.lua [--json]\n"
        .. "Plans every step of the playbook (a dry run: nothing is written).\n"
        .. "Exit status: 0 nothing to change, 2 changes pending, 1 error.\n",
    apply = "usage: cxone apply PLAYBOOK.lua [--yes] [--json]\n"
        .. "Plans every step first (any failure: nothing written), then writes.\n"
        .. "Without a terminal, --yes is required. Exit status: 0 applied (or nothing to do), 1 error.\n",
    validate = "usage: cxone validate FILE.json [--json]\n"
        .. "Validates a payload {actionId, environmentId, variables}; prints every violation.\n"
        .. "Exit status: 0 valid, 1 invalid or unreadable.\n",
    drift = "usage: cxone drift ACTION BASELINE_TIER TARGET_TIER [--json]\n"
        .. "Exit status: 0 no drift, 2 drift, 1 error.\n",
    vars = "usage: cxone vars ACTION TIER [--json]\nLists the variables (masked values as ***).\n",
    audit = "usage: cxone audit verify FILE [--json]\nExit status: 0 intact, 1 broken or unreadable.\n",
    sim = "usage: cxone sim [flags]\nRuns cxone-sim (CXONE_SIM_BIN, or build/lua5.4/sim/cxone-sim"
        .. " next to this tree) with the given flags.\n",
    repl = "usage: cxone repl\nStarts lua5.4 -i with `cxone` loaded and `client` built from CXONE_*.\n",
}

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function is_tty(fd)
    local r = os.execute("test -t " .. fd)
    return r == true or r == 0
end

local function json()
    return require("cjson.safe")
end

local Ctx = {}
Ctx.__index = Ctx

function Ctx:err(fmt, ...)
    local msg = select("#", ...) > 0 and fmt:format(...) or fmt
    io.stderr:write("cxone: ", msg, "\n")
end

function Ctx:out(s) io.stdout:write(s, "\n") end

function Ctx:emit(tbl)
    local j = json()
    local s, e = j.encode(tbl)
    if not s then
        self:err("cannot encode JSON: %s", tostring(e))
        return
    end
    io.stdout:write(s, "\n")
end

local function client(ctx, opts)
    local c, msg, code = require("cxone.client").new(opts)
    if not c then
        ctx:err("%s", tostring(msg))
        if ctx.json then ctx:emit({ ok = false, error = msg, code = code }) end
        return nil
    end
    return c
end

-- A playbook is a Lua file returning a list of steps, or {steps = {...}, concurrency = n}.
-- It runs with the standard globals plus `env(name, default)` (os.getenv with a default).
local function load_playbook(path)
    local f, err = io.open(path, "r")
    if not f then return nil, err end
    local src = f:read("*a")
    f:close()
    local env = setmetatable({
        env = function(name, default)
            local v = os.getenv(name)
            if v == nil or v == "" then return default end
            return v
        end,
    }, { __index = _G })
    local chunk
    if setfenv then
        chunk, err = loadstring(src, "@" .. path)
        if chunk then setfenv(chunk, env) end
    else
        chunk, err = load(src, "@" .. path, "t", env)
    end
    if not chunk then return nil, err end
    local ok, res = pcall(chunk)
    if not ok then return nil, res end
    if type(res) ~= "table" then
        return nil, path .. ": a playbook must return a table of steps, got " .. type(res)
    end
    return res
end

-- A progress line on stderr for runs that cover many steps: rewritten in place on a
-- terminal, one line per finished phase otherwise. Nil (no progress) for small runs.
local PROGRESS_MIN = 10
local function progress_line(total)
    if total < PROGRESS_MIN then return nil end
    local tty = is_tty(2)
    return function(phase, done, n)
        if tty then
            io.stderr:write(("\r%s %d/%d"):format(phase, done, n), done == n and "\n" or "")
        elseif done == n then
            io.stderr:write(("%s %d/%d\n"):format(phase, done, n))
        end
    end
end

local function run_playbook(ctx, path, dry)
    if not path then
        ctx:err("missing PLAYBOOK.lua (see cxone %s --help)", dry and "plan" or "apply")
        return 1
    end
    local book, err = load_playbook(path)
    if not book then
        ctx:err("cannot load playbook: %s", tostring(err))
        if ctx.json then ctx:emit({ ok = false, error = tostring(err), code = "invalid" }) end
        return 1
    end
    if not dry and not ctx.flags.yes and not is_tty(0) then
        ctx:err("refusing to apply without a terminal to confirm on: pass --yes")
        if ctx.json then ctx:emit({ ok = false, error = "confirmation required (--yes)", code = "refused" }) end
        return 1
    end
    local c = client(ctx, { dry_run = true })
    if not c then return 1 end
    local book2 = book.steps and book or { steps = book }
    book2.on_progress = progress_line(#book2.steps)
    local planned = c:promote(book2)
    if not ctx.json then
        for i = 1, #planned.steps do
            local p = planned.plans[i]
            if p then ctx:out(p:render({ color = ctx.color })); ctx:out("") end
        end
    end
    if planned.preflight_failed then
        ctx:err("%s", planned.message)
        if ctx.json then ctx:emit(planned:totable()) end
        return 1
    end
    local pending = planned.counts.planned
    if dry then
        if ctx.json then
            ctx:emit(planned:totable())
        else
            ctx:out(planned:render({ color = ctx.color }))
        end
        return pending > 0 and 2 or 0
    end
    if pending == 0 then
        if ctx.json then ctx:emit(planned:totable()) else ctx:out("Nothing to change.") end
        return 0
    end
    if not ctx.flags.yes then
        io.stderr:write(("Apply %d step(s) with changes? Type 'yes' to confirm: "):format(pending))
        local answer = io.stdin:read("*l")
        if answer ~= "yes" then
            ctx:err("not applied")
            return 1
        end
    end
    c.dry_run = false
    local rep = c:promote(book2)
    if ctx.json then
        local t = rep:totable()
        t.metrics = c:metrics()
        ctx:emit(t)
    else
        ctx:out(rep:render({ color = ctx.color }))
    end
    if c.audit_error then ctx:err("audit trail: %s", tostring(c.audit_error)) end
    c:close()
    if not rep.ok then
        ctx:err("%s", rep.message or "promotion incomplete: re-run to finish the remaining steps")
        return 1
    end
    return 0
end

local commands = {}

function commands.plan(ctx, args) return run_playbook(ctx, args[1], true) end
function commands.apply(ctx, args) return run_playbook(ctx, args[1], false) end

function commands.validate(ctx, args)
    local path = args[1]
    if not path then ctx:err("missing FILE.json"); return 1 end
    local f, err = io.open(path, "r")
    if not f then ctx:err("%s", err); return 1 end
    local src = f:read("*a")
    f:close()
    local core = require("cxone.core")
    local ok, doc, derr = pcall(core.json_decode, src)
    if not ok or doc == nil then
        local msg = ("%s: not valid JSON: %s"):format(path, tostring(ok and derr or doc))
        ctx:err("%s", msg)
        if ctx.json then ctx:emit({ valid = false, violations = { msg } }) end
        return 1
    end
    if type(doc) ~= "table" then
        ctx:err("%s: a payload must be a JSON object", path)
        if ctx.json then ctx:emit({ valid = false, violations = { "not an object" } }) end
        return 1
    end
    local valid, violations = require("cxone.validate").check(doc, { tiers = require("cxone.tiers").new() })
    if valid then
        if ctx.json then ctx:emit({ valid = true, violations = {} }) else ctx:out(path .. ": valid") end
        return 0
    end
    local list = {}
    local text = tostring(violations)
    for line in text:gmatch("[^\n]+") do list[#list + 1] = line end
    if ctx.json then
        ctx:emit({ valid = false, violations = list })
    else
        ctx:out(path .. ": " .. #list .. " violation" .. (#list == 1 and "" or "s"))
        for _, l in ipairs(list) do ctx:out("  " .. l) end
    end
    return 1
end

function commands.drift(ctx, args)
    local action, base, target = args[1], args[2], args[3]
    if not (action and base and target) then
        ctx:err("usage: cxone drift ACTION BASELINE_TIER TARGET_TIER")
        return 1
    end
    local c = client(ctx)
    if not c then return 1 end
    local b, bm = c:vars(action, base)
    if not b then ctx:err("%s %s: %s", action, base, tostring(bm)); return 1 end
    local t, tm = c:vars(action, target)
    if not t then ctx:err("%s %s: %s", action, target, tostring(tm)); return 1 end
    local tiers = c.tiers
    local r, err = require("cxone.drift").compare(b.variables, t.variables,
        { baseline = tiers:resolve(base).name, target = tiers:resolve(target).name, action = action })
    if not r then ctx:err("%s", tostring(err)); return 1 end
    if ctx.json then ctx:emit(r:totable()) else ctx:out(r:render({ color = ctx.color })) end
    return r:count() > 0 and 2 or 0
end

function commands.vars(ctx, args)
    local action, tier = args[1], args[2]
    if not (action and tier) then ctx:err("usage: cxone vars ACTION TIER"); return 1 end
    local c = client(ctx)
    if not c then return 1 end
    local r, meta = c:vars(action, tier)
    if not r then ctx:err("%s %s: %s", action, tier, tostring(meta)); return 1 end
    local vars = {}
    for i, v in ipairs(r.variables or {}) do
        vars[i] = { name = v.name, value = v.masked and "***" or v.value, masked = v.masked == true,
                    description = v.description }
    end
    if ctx.json then
        ctx:emit({ action = action, environment = r.environmentId, etag = meta.etag, variables = vars })
        return 0
    end
    local render = require("cxone.render")
    local paint = render.painter(ctx.color)
    ctx:out(paint("bold", ("%s %s (%d variables)"):format(action, r.environmentId or tier, #vars)))
    local w = 0
    for _, v in ipairs(vars) do if #v.name > w then w = #v.name end end
    for _, v in ipairs(vars) do
        ctx:out(("  %s  %s%s"):format(render.pad(v.name, w), v.masked and "***" or render.quote(v.value),
            v.masked and paint("dim", "  (masked)") or ""))
    end
    return 0
end

function commands.audit(ctx, args)
    return require("cxone.audit").command(ctx, args)
end

local function root_dir()
    local src = debug.getinfo(1, "S").source
    local dir = src:match("^@(.*)/lua/cxone/cli%.lua$")
    return dir or "."
end

function commands.sim(ctx, args, raw)
    local bin = os.getenv("CXONE_SIM_BIN")
    if not bin or bin == "" then bin = root_dir() .. "/build/lua5.4/sim/cxone-sim" end
    local parts = { shquote(bin) }
    for _, a in ipairs(raw) do parts[#parts + 1] = shquote(a) end
    local r, _, code = os.execute("exec " .. table.concat(parts, " "))
    if type(r) == "number" then return r == 0 and 0 or 1 end
    return r and 0 or (code or 1)
end

function commands.repl()
    local root = root_dir()
    local init = ("package.path=%q..';'..package.path; package.cpath=%q..';'..package.cpath; "
        .. "cxone=require('cxone'); client,client_err=cxone.client(); "
        .. "if client then print('cxone '..tostring(cxone._VERSION)..': `client` ready') "
        .. "else print('cxone: no client: '..tostring(client_err)) end")
        :format(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua", root .. "/build/lua5.4/?.so")
    local r = os.execute("lua5.4 -i -e " .. shquote(init))
    return (r == true or r == 0) and 0 or 1
end

-- Options: name → true when it takes a value, false for a switch; short forms in ALIAS.
local FLAGS = { json = false, yes = false, help = false, h = false, y = false,
                out = true, head = true, after = true, format = true }
local ALIAS = { h = "help", y = "yes" }

--- Runs the CLI with an argument list; returns the exit status.
function M.main(argv)
    argv = argv or {}
    local ctx = setmetatable({ flags = {} }, Ctx)
    local cmd = argv[1]
    local args, raw = {}, {}
    local i = 2
    while i <= #argv do
        local a = argv[i]
        raw[#raw + 1] = a
        local name, inline = a:match("^%-%-([%w-]+)=(.*)$")
        name = name or a:match("^%-%-([%w-]+)$") or (a:match("^%-(%a)$"))
        if cmd ~= "sim" and name and FLAGS[name] ~= nil then
            local key = ALIAS[name] or name
            if FLAGS[name] then -- takes a value
                local v = inline
                if v == nil then
                    i = i + 1
                    v = argv[i]
                    raw[#raw + 1] = v
                end
                if v == nil then
                    ctx:err("option --%s needs a value (see cxone %s --help)", name, tostring(cmd))
                    return 1
                end
                ctx.flags[key] = v
            else
                ctx.flags[key] = true
            end
        elseif cmd ~= "sim" and a:sub(1, 1) == "-" and #a > 1 then
            ctx:err("unknown option %s (see cxone %s --help)", a, tostring(cmd))
            return 1
        else
            args[#args + 1] = a
        end
        i = i + 1
    end
    ctx.json = ctx.flags.json
    local no_color = os.getenv("NO_COLOR")
    ctx.color = (no_color == nil or no_color == "") and not ctx.json and is_tty(1)
    if cmd == nil or cmd == "--help" or cmd == "-h" or cmd == "help" then
        io.stdout:write(USAGE)
        return cmd == nil and 1 or 0
    end
    if cmd == "--version" then
        io.stdout:write("cxone ", tostring(require("cxone.core")._VERSION), "\n")
        return 0
    end
    local fn = commands[cmd]
    if not fn then
        ctx:err("unknown command %q (see cxone --help)", cmd)
        return 1
    end
    if ctx.flags.help then
        io.stdout:write(HELP[cmd])
        return 0
    end
    local ok, status = pcall(fn, ctx, args, raw)
    if not ok then
        ctx:err("internal error: %s", tostring(status))
        return 1
    end
    return status
end

return M
