--- The `cxone` command line. `require("cxone.cli").main(arg)` returns the exit status.
-- Messages go to stderr, results to stdout; `--json` prints machine output (cjson.safe) on
-- stdout; colour only when stdout is a terminal and NO_COLOR is unset.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.cli

local M = {}

local USAGE = [[
usage: cxone <command> [options]

commands:
  plan PLAYBOOK.lua [--out F]    show what apply would change (exit 0 nothing, 2 changes, 1 error)
  apply PLAYBOOK.lua [--yes]     apply a playbook (asks first on a terminal; --yes to skip)
  apply PLAN.json                apply a plan saved by plan --out, exactly
  validate FILE.json             check an override payload (exit 0 valid, 1 invalid)
  drift ACTION BASELINE TARGET   compare two tiers of an action (exit 0 none, 2 drift, 1 error)
  vars ACTION TIER               list an environment's variables (masked values as ***)
  audit verify FILE...           verify an audit trail's chain (--head/--after HASH)
  sim [flags]                    run cxone-sim (flags as the simulator's; --help there)
  repl                           explore interactively: `client` built from CXONE_*, help()
  completion [bash|zsh|fish]     print a shell completion script

options (every command): --help, --json (machine output on stdout)
  --format text|json|markdown on plan, apply and drift (markdown: tables for a pull-request
  comment or a CI job summary; --json is --format json)
settings: CXONE_BASE_URL, CXONE_TOKEN_URL, CXONE_CLIENT_ID, CXONE_CLIENT_SECRET,
  CXONE_ACCESS_KEY_ID, CXONE_ACCESS_KEY_SECRET, CXONE_AUDIT_LOG (default cxone_audit.jsonl),
  CXONE_AUDIT_KEY (HMAC key of the trail), CXONE_STATE_FILE, CXONE_WEBHOOK_URL,
  CXONE_WEBHOOK_SECRET, CXONE_CA_FILE; NO_COLOR disables colour.
]]

local HELP = {
    plan = "usage: cxone plan [--out PLAN.json] PLAYBOOK.lua [--json]\n"
        .. "Plans every step of the playbook (a dry run: nothing is written).\n"
        .. "--out saves the plan (no secret in it) for `cxone apply PLAN.json`.\n"
        .. "Exit status: 0 nothing to change, 2 changes pending, 1 error.\n",
    apply = "usage: cxone apply PLAYBOOK.lua [--yes] [--json]\n"
        .. "       cxone apply PLAN.json [--json]\n"
        .. "Plans every step first (any failure: nothing written), shows the plan, asks, and then\n"
        .. "writes exactly that plan: a step whose target changed meanwhile is a conflict.\n"
        .. "A saved plan (cxone plan --out) is applied without asking, after checking that the\n"
        .. "playbook it names still holds the same values.\n"
        .. "Without a terminal, --yes is required for a playbook.\n"
        .. "--max-read-age SECONDS: against a server without ETags, how long the plan's own read of a\n"
        .. "target stands in for a re-read before writing (default 60; 0: always re-read).\n"
        .. "Ctrl-C (or TERM) stops new writes; those in flight finish and are recorded; twice: at once.\n"
        .. "Exit status: 0 applied (or nothing to do), 1 error or conflict, 130 interrupted (143 TERM).\n",
    validate = "usage: cxone validate FILE.json [--json]\n"
        .. "Validates a payload {actionId, environmentId, variables}; prints every violation.\n"
        .. "Exit status: 0 valid, 1 invalid or unreadable.\n",
    drift = "usage: cxone drift ACTION BASELINE_TIER TARGET_TIER [--json]\n"
        .. "Exit status: 0 no drift, 2 drift, 1 error.\n",
    vars = "usage: cxone vars ACTION TIER [--json]\nLists the variables (masked values as ***).\n",
    audit = "usage: cxone audit verify [--head HASH] [--after HASH] [--json] FILE...\n"
        .. "Verifies a trail's chain; give rotated files oldest first. --head: the trail must end at\n"
        .. "HASH (a cut tail fails); --after: it continues from HASH (else it must start at seq 1).\n"
        .. "CXONE_AUDIT_KEY: the HMAC key of a keyed trail (required to verify one).\n"
        .. "Exit status: 0 intact, 1 broken or unreadable, 2 usage.\n",
    sim = "usage: cxone sim [flags]\nRuns cxone-sim (CXONE_SIM_BIN, or build/lua5.4/sim/cxone-sim"
        .. " next to this tree) with the given flags.\n",
    repl = "usage: cxone repl\nAn interactive Lua session with `cxone` loaded and `client` built from CXONE_*:\n"
        .. "values print readably, tab completes, history in ~/.cxone_history (CXONE_HISTORY) keeps no secret.\n",
}

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function is_tty(fd)
    return require("cxone.core").isatty(fd)
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

-- Prints a report (plan, promotion or drift) in the chosen format: JSON (its totable(), plus the
-- fields of `extra`), Markdown, or text.
function Ctx:show(obj, extra)
    if self.json then
        local t = obj:totable()
        for k, v in pairs(extra or {}) do t[k] = v end
        self:emit(t)
    elseif self.markdown then
        io.stdout:write(obj:markdown())
    else
        self:out(obj:render({ color = self.color }))
    end
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

-- Progress on stderr. Planning (runs of PROGRESS_MIN steps or more): a line rewritten in place
-- on a terminal, one line when done otherwise. Applying: on a terminal, a live line (steps
-- done/total, requests, rate-limit waits and 429s, ETA); without one, a line per step as its
-- outcome is known and one when all are written. Rate-limit figures come from the client's
-- stats (`rate_limited`, `paced_s`), read as 0 where the engine does not count them.
local PROGRESS_MIN = 10
local function progress_line(total, c)
    local tty = is_tty(2)
    if total < PROGRESS_MIN and not c then return nil end
    local core = require("cxone.core")
    local t0 = core.monotonic()
    local width = 0
    return function(phase, done, n, info)
        if phase == "step" and c then
            if tty then
                local ok, s = pcall(c.core.stats, c.core)
                s = ok and type(s) == "table" and s or {}
                local elapsed = core.monotonic() - t0
                local eta = done > 0 and done < n and ("  ETA %ds"):format(math.ceil(elapsed / done * (n - done))) or ""
                local line = ("applying %d/%d  %d requests  rate-limit waits %.1fs (%d x 429)%s"):format(done, n,
                    tonumber(s.requests) or 0, tonumber(s.paced_s) or 0, tonumber(s.rate_limited) or 0, eta)
                local pad = width > #line and (" "):rep(width - #line) or ""
                width = #line
                io.stderr:write("\r", line, pad, done == n and "\n" or "")
            elseif type(info) == "table" then
                local detail = info.status == "applied" and ("%d change%s"):format(info.changes or 0,
                    info.changes == 1 and "" or "s") or tostring(info.code or info.error or "")
                io.stderr:write(("[%d/%d] %s %s: %s%s\n"):format(done, n, tostring(info.action),
                    tostring(info.tier), tostring(info.status), detail ~= "" and (" (" .. detail .. ")") or ""))
            end
        elseif phase ~= "step" and total >= PROGRESS_MIN then
            if tty then
                io.stderr:write(("\r%s %d/%d"):format(phase, done, n), done == n and "\n" or "")
            elseif done == n then
                io.stderr:write(("%s %d/%d\n"):format(phase, done, n))
            end
        end
    end
end

-- Renders the plans (apply: only those with something to do; the report lists the others).
local function show_plans(ctx, rep, pending_only)
    if ctx.json or ctx.markdown then return end
    local skipped = 0
    for i = 1, #rep.steps do
        local p = rep.plans[i]
        if p and pending_only and not p:pending() then
            skipped = skipped + 1
        elseif p then
            ctx:out(p:render({ color = ctx.color })); ctx:out("")
        end
    end
    if skipped > 0 then ctx:out(("(%d step%s with nothing to change not shown)"):format(skipped, skipped == 1 and "" or "s")) end
end

local function show_warnings(ctx, c)
    for _, w in ipairs(c.warnings) do ctx:err("warning: %s", w) end
    c.warnings = {}
end

-- Applies a planned report exactly (never planning again) and prints the outcome.
local function apply_report(ctx, c, rep)
    local pending = #rep:pending()
    if pending == 0 then
        if ctx.json then ctx:emit(rep:totable()) else ctx:out("Nothing to change.") end
        c:close()
        return 0
    end
    c:apply_all(rep, { on_progress = progress_line(pending, c), signals = { "INT", "TERM" },
                       max_read_age = ctx.max_read_age })
    show_warnings(ctx, c)
    ctx:show(rep, { metrics = c:metrics() })
    c:close()
    if not rep.ok then
        ctx:err("%s", rep.message or "promotion incomplete: re-run to finish the remaining steps")
        if rep.interrupted then return 128 + (rep.interrupted.signo or 2) end
        return 1
    end
    return 0
end

-- `cxone apply PLAN.json`: the saved plan, exactly, without asking (it was reviewed).
local function apply_saved(ctx, path)
    local c = client(ctx)
    if not c then return 1 end
    local rep, err, code = require("cxone.planfile").load(path, c)
    if not rep then
        ctx:err("cannot apply %s: %s", path, tostring(err))
        if ctx.json then ctx:emit({ ok = false, error = tostring(err), code = code }) end
        return 1
    end
    show_plans(ctx, rep, true)
    return apply_report(ctx, c, rep)
end

local function run_playbook(ctx, path, dry)
    if not path then
        ctx:err("missing PLAYBOOK.lua (see cxone %s --help)", dry and "plan" or "apply")
        return 1
    end
    local planfile = require("cxone.planfile")
    if not dry and planfile.is_plan(path) then return apply_saved(ctx, path) end
    if dry == false and ctx.flags.out then
        ctx:err("--out belongs to plan: cxone plan --out PLAN.json PLAYBOOK.lua, then cxone apply PLAN.json")
        return 1
    end
    local book, err = require("cxone.playbook").load(path)
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
    local c = client(ctx)
    if not c then return 1 end
    -- Ctrl-C (or TERM) while planning: nothing was written; twice: at once
    local core = require("cxone.core")
    core.signal_arm({ "INT", "TERM" }, { restart = true,
        second = "\ncxone: interrupted again while planning: stopped, nothing written\n" })
    local rep = c:plan_all({ steps = book.steps, concurrency = book.concurrency,
                             on_progress = progress_line(#book.steps) })
    local nsig, _, signo = core.signal_poll()
    core.signal_restore()
    if nsig > 0 then
        ctx:err("aborted while planning, nothing written")
        if ctx.json then ctx:emit({ ok = false, error = "aborted while planning, nothing written", code = "interrupted" }) end
        c:close()
        return 128 + signo
    end
    show_warnings(ctx, c)
    show_plans(ctx, rep, not dry)
    if rep.preflight_failed then
        ctx:err("%s", rep.message)
        if ctx.json then ctx:emit(rep:totable()) end
        return 1
    end
    local pending = #rep:pending()
    if dry then
        rep.dry_run = true
        if ctx.flags.out then
            local digest, serr = planfile.save(ctx.flags.out, rep, { playbook = path, client = c })
            if not digest then
                ctx:err("cannot save the plan: %s", tostring(serr))
                return 1
            end
            ctx:err("saved the plan to %s (digest %s); apply it with: cxone apply %s",
                ctx.flags.out, digest:sub(1, 16), ctx.flags.out)
        end
        ctx:show(rep)
        c:close()
        return pending > 0 and 2 or 0
    end
    if pending > 0 and not ctx.flags.yes then
        io.stderr:write(("Apply %d step(s) with changes, exactly as shown? Type 'yes' to confirm: "):format(pending))
        -- Ctrl-C (or TERM) here makes the read return at once: aborted, nothing written
        core.signal_arm({ "INT", "TERM" }, { restart = false })
        local answer = io.stdin:read("*l")
        local nsig, _, signo = core.signal_poll()
        core.signal_restore()
        if nsig > 0 then
            io.stderr:write("\n")
            ctx:err("aborted, nothing written")
            if ctx.json then ctx:emit({ ok = false, error = "aborted, nothing written", code = "interrupted" }) end
            c:close()
            return 128 + signo
        end
        if answer ~= "yes" then
            ctx:err("not applied")
            c:close()
            return 1
        end
        rep.prompted = true -- targets without ETags are re-read before writing
    end
    return apply_report(ctx, c, rep)
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
    local r, err = c:drift(action, base, target)
    if not r then ctx:err("%s", tostring(err)); return 1 end
    ctx:show(r)
    return r:count() > 0 and 2 or 0
end

function commands.vars(ctx, args)
    local action, tier = args[1], args[2]
    if not (action and tier) then ctx:err("usage: cxone vars ACTION TIER"); return 1 end
    local c = client(ctx)
    if not c then return 1 end
    local r, err = c:vars(action, tier)
    if not r then ctx:err("%s %s: %s", action, tier, tostring(err)); return 1 end
    local vars = {}
    for i, v in ipairs(r.variables or {}) do
        vars[i] = { name = v.name, value = v.masked and "***" or v.value, masked = v.masked == true,
                    description = v.description }
    end
    if ctx.json then
        ctx:emit({ action = action, environment = r.environmentId, etag = r.etag, variables = vars })
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
    if not bin or bin == "" then
        -- the source tree's build, else the one installed beside this command, else PATH
        local candidates = { root_dir() .. "/build/lua5.4/sim/cxone-sim" }
        local here = arg and arg[0] and arg[0]:match("^(.*)/[^/]+$")
        if here then candidates[2] = here .. "/cxone-sim" end
        bin = "cxone-sim"
        for _, c in ipairs(candidates) do
            local f = io.open(c, "rb")
            if f then f:close(); bin = c; break end
        end
    end
    local parts = { shquote(bin) }
    for _, a in ipairs(raw) do parts[#parts + 1] = shquote(a) end
    local r, _, code = os.execute("exec " .. table.concat(parts, " "))
    if type(r) == "number" then return r == 0 and 0 or 1 end
    return r and 0 or (code or 1)
end

function commands.repl()
    local c, err = require("cxone.client").new()
    return require("cxone.repl").main({ client = c, client_error = c == nil and err or nil })
end

-- The command line's grammar, on lua-argparse: commands, their options, and the completion
-- scripts it generates. Help texts stay ours (USAGE, HELP), so `--help` reads the same.
local COMMANDS = {
    plan = { "--out", "--format" }, apply = { "--yes", "--format", "--max-read-age" }, validate = {},
    drift = { "--format" }, vars = {}, audit = { "--head", "--after" }, sim = false, repl = {},
    completion = {},
}
local OPTION = {
    ["--out"] = { "--out", "save the plan for `cxone apply PLAN.json`", arg = "PLAN.json" },
    ["--format"] = { "--format", "output format", choices = { "text", "json", "markdown" } },
    ["--yes"] = { "-y --yes", "apply without asking", flag = true },
    ["--max-read-age"] = { "--max-read-age", "seconds a plan's read stands in for a re-read (no ETags)", arg = "SECONDS" },
    ["--head"] = { "--head", "the hash the trail must end at", arg = "HASH" },
    ["--after"] = { "--after", "the hash the trail continues from", arg = "HASH" },
}

local function parser()
    local argparse = require("argparse")
    local p = argparse("cxone", "Promote scoped environment-variable overrides of CXone Data Actions.")
        :add_help(false):command_target("command"):require_command(false)
    p:flag("-h --help")
    p:flag("--version")
    local names = {}
    for name in pairs(COMMANDS) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
        local opts = COMMANDS[name]
        local c = p:command(name):add_help(false)
        if opts == false then
            c:handle_options(false) -- `cxone sim` passes every flag to the simulator
        else
            c:flag("-h --help")
            c:flag("--json")
            for _, o in ipairs(opts) do
                local spec = OPTION[o]
                if spec.flag then
                    c:flag(spec[1], spec[2])
                else
                    local opt = c:option(spec[1], spec[2])
                    if spec.choices then opt:choices(spec.choices) end
                    if spec.arg then opt:argname(spec.arg) end
                end
            end
        end
        c:argument("args"):args("*")
    end
    return p
end

function commands.completion(ctx, args)
    local shell = args[1] or "bash"
    local p = parser()
    local gen = { bash = p.get_bash_complete, zsh = p.get_zsh_complete, fish = p.get_fish_complete }
    if not gen[shell] then
        ctx:err("completion: unknown shell %s (bash, zsh or fish)", tostring(shell))
        return 1
    end
    io.stdout:write(gen[shell](p))
    return 0
end
HELP.completion = "usage: cxone completion [bash|zsh|fish]\n"
    .. "Prints a shell completion script, e.g. `source <(cxone completion bash)`.\n"

--- Runs the CLI with an argument list; returns the exit status.
function M.main(argv)
    -- the process holds the client secret, the token and masked values: no core dumps
    -- (tested in hostile_spec)
    require("cxone.core").no_core_dumps()
    argv = argv or {}
    local ctx = setmetatable({ flags = {} }, Ctx)
    local list = {}
    for i = 1, #argv do list[i] = argv[i] end
    local cmd = list[1]
    if cmd == "help" then list[1] = "--help" end
    local ok, res = parser():pparse(list)
    if not ok then
        if cmd and cmd:sub(1, 1) ~= "-" and COMMANDS[cmd] == nil then
            ctx:err("unknown command %q (see cxone --help)", cmd)
        else
            ctx:err("%s (see cxone %s--help)", tostring(res), COMMANDS[cmd] ~= nil and (cmd .. " ") or "")
        end
        return 1
    end
    cmd = res.command
    if not cmd then
        if res.version then
            io.stdout:write("cxone ", tostring(require("cxone.core")._VERSION), "\n")
            return 0
        end
        io.stdout:write(USAGE)
        return res.help and 0 or 1
    end
    local args = res.args or {}
    local raw = {}
    for i = 2, #argv do raw[#raw + 1] = argv[i] end
    for k, v in pairs(res) do
        if k ~= "args" and k ~= "command" and k ~= cmd then ctx.flags[k] = v end
    end
    local format = ctx.flags.format or (ctx.flags.json and "json") or "text"
    ctx.json = format == "json"
    ctx.markdown = format == "markdown"
    local no_color = os.getenv("NO_COLOR")
    ctx.color = (no_color == nil or no_color == "") and format == "text" and is_tty(1)
    if ctx.flags.help then
        io.stdout:write(HELP[cmd])
        return 0
    end
    if ctx.flags.max_read_age ~= nil then
        ctx.max_read_age = tonumber(ctx.flags.max_read_age)
        if not ctx.max_read_age or ctx.max_read_age < 0 then
            ctx:err("--max-read-age must be a number of seconds, 0 or more")
            return 1
        end
    end
    local fok, status = pcall(commands[cmd], ctx, args, raw)
    if not fok then
        ctx:err("internal error: %s", tostring(status))
        return 1
    end
    return status
end

return M
