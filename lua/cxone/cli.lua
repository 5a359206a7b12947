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
  drift PLAYBOOK.lua             is every step's target what the playbook would produce?
  vars ACTION TIER               list an environment's variables (masked values as ***)
  export [ACTION...] [--tier T]  write a playbook that reproduces what is deployed (--out FILE)
  revert RUN_ID|PLAN.json        plan (and apply) the inverse of what an applied run wrote
  audit verify FILE...           verify an audit trail's chain (--head/--after HASH)
  sim [flags]                    run cxone-sim (flags as the simulator's; --help there)
  repl                           explore interactively: `client` built from CXONE_*, help()
  completion [bash|zsh|fish]     print a shell completion script
  config check [--config F]      what each tier resolves to (secrets masked); tries a token for each

`cxone help COMMAND` (or `cxone COMMAND --help`) prints a command's help.
options (every command): --help, --json (machine output on stdout)
  --max-rps N on plan, apply, drift and vars: at most N API requests per second (CXONE_MAX_RPS)
  --config FILE on plan, apply, drift, vars, config: tenants and tier policy per tier (CXONE_CONFIG)
exit status: 0 success, 1 error, 2 changes pending (plan) or drift (drift), 64 usage error
  --format text|json|markdown on plan, apply and drift (markdown: tables for a pull-request
  comment or a CI job summary; --json is --format json)
settings: CXONE_BASE_URL, CXONE_TOKEN_URL, CXONE_CLIENT_ID, CXONE_CLIENT_SECRET,
  CXONE_ACCESS_KEY_ID, CXONE_ACCESS_KEY_SECRET, CXONE_AUDIT_LOG (default cxone_audit.jsonl),
  CXONE_AUDIT_KEY (HMAC key of the trail), CXONE_STATE_FILE, CXONE_WEBHOOK_URL,
  CXONE_WEBHOOK_SECRET, CXONE_CA_FILE, CXONE_PLAN_KEY (key of saved plans), CXONE_PLAN_TTL;
  NO_COLOR disables colour.
]]

local HELP = {
    plan = "usage: cxone plan [--out PLAN.json [--force] [--expires DURATION]] PLAYBOOK.lua [--json]\n"
        .. "Plans every step of the playbook (a dry run: nothing is written).\n"
        .. "--out saves the plan (no secret in it; masked values must come from env()) for\n"
        .. "`cxone apply PLAN.json`; it never replaces a .lua file or the playbook, nor an existing\n"
        .. "plan without --force. --expires (or CXONE_PLAN_TTL): 3600, 90m, 12h, 2d (default 1d).\n"
        .. "Exit status: 0 nothing to change, 2 changes pending, 1 error, 64 usage.\n",
    apply = "usage: cxone apply PLAYBOOK.lua [--yes] [--json]\n"
        .. "       cxone apply PLAN.json [--json]\n"
        .. "Plans every step first (any failure: nothing written), shows the plan, asks, and then\n"
        .. "writes exactly that plan: a step whose target changed meanwhile is a conflict.\n"
        .. "A saved plan (cxone plan --out) is applied without asking, once, before it expires, after\n"
        .. "checking its MAC (CXONE_PLAN_KEY, else a key from the credentials), reading its masked\n"
        .. "values from the environment variables it names, and re-reading every target: anything\n"
        .. "changed since the plan was made is refused (plan again). It runs no playbook.\n"
        .. "Without a terminal, --yes is required for a playbook.\n"
        .. "--max-read-age SECONDS: against a server without ETags, how long the plan's own read of a\n"
        .. "target stands in for a re-read before writing (default 60; 0: always re-read).\n"
        .. "--config FILE (or CXONE_CONFIG): each tier's tenant and policy; --override-freeze \"REASON\"\n"
        .. "applies inside a freeze window the configuration declares (the reason is audited).\n"
        .. "Ctrl-C (or TERM) stops new writes; those in flight finish and are recorded; twice: at once.\n"
        .. "Exit status: 0 applied (or nothing to do), 1 error or conflict, 130 interrupted (143 TERM),\n"
        .. "64 usage.\n",
    validate = "usage: cxone validate FILE.json [--json]\n"
        .. "Validates a payload {actionId, environmentId, variables}; prints every violation.\n"
        .. "Exit status: 0 valid, 1 invalid or unreadable, 64 usage.\n",
    drift = "usage: cxone drift ACTION BASELINE_TIER TARGET_TIER [options]\n"
        .. "       cxone drift PLAYBOOK.lua [options]\n"
        .. "The first form compares two tiers of an action; the second asks, for every step of the\n"
        .. "playbook, whether the live target is what the playbook would produce (the baseline's\n"
        .. "values merged with the step's, or the step's alone where it has no baseline).\n"
        .. "Masked values are compared by keyed fingerprints of our own writes (the ledger): trusted\n"
        .. "while the target's ETag is the one our write produced; without ETags the report says\n"
        .. "\"assumed equal, written by run ...\".\n"
        .. "  --ignore NAME          never count NAME as drift (repeatable)\n"
        .. "  --expect-differ NAME   NAME may hold different values (repeatable); still drift if\n"
        .. "                         it is missing on one side or its masked flag differs\n"
        .. "  --strict               values only our ledger vouches for (no ETags) are unverifiable\n"
        .. "  --json, --format text|json|markdown\n"
        .. "A playbook (or a step) may carry drift = {ignore = {...}, expect_differ = {...}}.\n"
        .. "Exit status: 0 no drift, 2 drift, 1 error, 64 usage.\n",
    vars = "usage: cxone vars ACTION TIER [--json]\nLists the variables (masked values as ***).\n"
        .. "Exit status: 0 listed, 1 error, 64 usage.\n",
    export = "usage: cxone export [ACTION...] [--tier TIER]... [--out FILE [--force]] [--baselines] [--json]\n"
        .. "Reads the actions (every action the server lists when none is given; a server without\n"
        .. "the list route needs the ids) in the tiers (default: all) and writes a playbook that\n"
        .. "reproduces them: plain values as literals, masked ones as { masked = true, keep = true }\n"
        .. "(must exist, keep the current value; never the value). --baselines: a tier holding every\n"
        .. "variable of the tier before it gets it as baseline and lists only what differs.\n"
        .. "`cxone plan` of the result on the same tenant shows 0 changes.\n"
        .. "Exit status: 0 written, 1 error, 64 usage.\n",
    revert = "usage: cxone revert RUN_ID|PLAN.json [--yes] [--out PLAN.json [--force]] [--json]\n"
        .. "Plans the inverse of what an applied run wrote (a saved plan: the run that applied it), from\n"
        .. "the before-state apply kept in <ledger>.runs/RUN_ID.json: plain variables back to their\n"
        .. "values, masked ones to the value in CXONE_REVERT_<ENV>_<NAME> (checked against the recorded\n"
        .. "fingerprint), variables the run created removed (a PUT of the whole set: every masked value\n"
        .. "of that environment must be supplied the same way). A variable changed since the run is a\n"
        .. "conflict. Shown, confirmed (--yes without a terminal) and applied like any plan, or saved\n"
        .. "with --out for `cxone apply PLAN.json` (not when it removes variables); audited as\n"
        .. "revert_of the run.\n"
        .. "Exit status: 0 reverted (or nothing to do), 1 error or conflict, 2 changes pending (--out),\n"
        .. "64 usage.\n",
    audit = "usage: cxone audit verify [--head HASH] [--after HASH] [--json] FILE...\n"
        .. "Verifies a trail's chain; give rotated files oldest first. --head: the trail must end at\n"
        .. "HASH (a cut tail fails); --after: it continues from HASH (else it must start at seq 1).\n"
        .. "CXONE_AUDIT_KEY: the HMAC key of a keyed trail (required to verify one).\n"
        .. "Exit status: 0 intact, 1 broken or unreadable, 64 usage.\n",
    sim = "usage: cxone sim [flags]\nRuns cxone-sim in place of this command (signals reach it) with the"
        .. " given flags: CXONE_SIM_BIN, else the one beside cxone, else this tree's build, else PATH.\n",
    repl = "usage: cxone repl\nAn interactive Lua session with `cxone` loaded and `client` built from CXONE_*:\n"
        .. "values print readably, tab completes, history in ~/.cxone_history (CXONE_HISTORY) keeps no secret.\n",
}

local function is_tty(fd)
    return require("cxone.core").isatty(fd)
end

-- Exit status of a usage error in every command (sysexits' EX_USAGE): never 2, which means
-- changes pending (plan) or drift (drift).
local EXIT_USAGE = 64
M.EXIT_USAGE = EXIT_USAGE

local Ctx = {}
Ctx.__index = Ctx

function Ctx:err(fmt, ...)
    local msg = select("#", ...) > 0 and fmt:format(...) or fmt
    io.stderr:write("cxone: ", require("cxone.render").lines(msg), "\n")
end

function Ctx:out(s) io.stdout:write(s, "\n") end

-- A failure: the message on stderr and, with --json, the document {ok = false, error, code}
-- on stdout. Returns the exit status (default 1).
function Ctx:fail(msg, code, status)
    msg = tostring(msg)
    self:err("%s", msg)
    if self.json then self:emit({ ok = false, error = msg, code = code }) end
    return status or 1
end

-- A usage error naming the command's help; exit 64.
function Ctx:usage(msg, cmd)
    self:err("%s (see cxone %s--help)", msg, cmd and (cmd .. " ") or "")
    if self.json then self:emit({ ok = false, error = msg, code = "usage" }) end
    return EXIT_USAGE
end

-- JSON on stdout, through the core's encoder: an empty list is [] (cjson would write {}), and a
-- table marked {__jsontype = "object"} is {}.
function Ctx:emit(tbl)
    local s, e = require("cxone.core").json_encode(tbl)
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

-- The profile named by --config or CXONE_CONFIG (never looked for in the working directory):
-- nil when none is named, false after reporting why it was refused.
local function profile(ctx)
    local path = ctx.flags.config_file or require("cxone.env").get("config")
    if path == nil or path == "" then return nil end
    local prof, err, code = require("cxone.profiles").load(path)
    if not prof then
        ctx:fail("configuration refused: " .. tostring(err), code or "config")
        return false
    end
    return prof
end

local function client(ctx, opts)
    local prof = profile(ctx)
    if prof == false then return nil end
    if prof then
        local o = {}
        for k, v in pairs(opts or {}) do o[k] = v end
        o.profile = prof
        opts = o
    end
    if ctx.flags.max_rps then
        local o = {}
        for k, v in pairs(opts or {}) do o[k] = v end
        o.rate_limit = ctx.flags.max_rps
        opts = o
    end
    local c, msg, code = require("cxone.client").new(opts)
    if not c then
        ctx:fail(msg, code)
        return nil
    end
    return c
end

-- What was tried, for hints: the variables URL of an action and environment (the base URL
-- without its query or fragment), and the CA file TLS used.
local DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
local function base_url(c)
    return (tostring(c.cfg.base_url or ""):gsub("[?#].*$", ""):gsub("/+$", ""))
end

local function api_url(c, action, env)
    return ("%s/api/v2/integration/actions/%s/environments/%s/variables"):format(base_url(c), action, env)
end
M.api_url = api_url

local function ca_file(c)
    if c.cfg.ca_file then return c.cfg.ca_file .. " (CXONE_CA_FILE)" end
    local f = io.open(DEFAULT_CA_BUNDLE, "rb")
    if f then f:close(); return DEFAULT_CA_BUNDLE .. " (the default; set CXONE_CA_FILE for a private CA)" end
    return "libcurl's default (set CXONE_CA_FILE for a private CA)"
end

-- A failure's message with what was tried: the URL for a 404, the CA file for TLS.
local function hint(c, code, msg, action, env)
    msg = tostring(msg)
    if code == "not_found" and action and env and not msg:find("tried GET", 1, true) then
        return msg .. " (tried GET " .. api_url(c, action, env) .. ")"
    elseif code == "tls" and not msg:find("with CA file:", 1, true) then
        return msg .. " (tried " .. base_url(c) .. " with CA file: " .. ca_file(c) .. ")"
    end
    return msg
end

-- Failures that do not depend on the step (credentials, trust, the connection): shown once.
local SHARED = { auth = true, scope = true, tls = true, network = true, timeout = true, refused = true,
                 config = true, rate_limited = true }

-- The preflight failure of a report, each distinct cause once: failures every step shares
-- (bad credentials, TLS) are one line, not one per step; a 404 names the URL tried.
local function preflight_message(c, rep)
    local lines, groups, order, failed = {}, {}, {}, 0
    for _, e in ipairs(rep.steps) do
        if e.status == "preflight_failed" then
            failed = failed + 1
            local msg = tostring(e.error)
            local a, env, rest = msg:match("^GET (%S+) (%S+): (.*)$")
            if a and SHARED[e.code] then
                if not groups[rest] then
                    groups[rest] = { steps = {}, code = e.code, action = a, env = env }
                    order[#order + 1] = rest
                end
                table.insert(groups[rest].steps, e.index)
            else
                if a then msg = ("GET %s %s: %s"):format(a, env, hint(c, e.code, rest, a, env)) end
                lines[#lines + 1] = ("step %d (%s %s): %s"):format(e.index, tostring(e.action), tostring(e.tier), msg)
            end
        end
    end
    for _, rest in ipairs(order) do
        local g = groups[rest]
        local who = #g.steps == 1 and ("step " .. g.steps[1])
            or #g.steps == failed and ("every step (%d)"):format(#g.steps)
            or ("steps " .. table.concat(g.steps, ", "))
        lines[#lines + 1] = who .. ": " .. hint(c, g.code, rest, g.action, g.env)
    end
    if #lines == 0 then return tostring(rep.message) end
    return "preflight failed, nothing written:\n  " .. table.concat(lines, "\n  ")
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
                       max_read_age = ctx.max_read_age, override_freeze = ctx.flags.override_freeze })
    if rep.override_freeze then ctx:err("warning: freeze window overridden (audited): %s", rep.override_freeze) end
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
-- Asks on the terminal to go on: nil when the operator typed yes (rep.prompted set: targets
-- without ETags are re-read before writing), else the exit status (the client closed): 1 when
-- declined, 128 + the signal when Ctrl-C (or TERM) made the read return: aborted, nothing written.
local function confirm(ctx, c, rep, question, declined)
    local core = require("cxone.core")
    io.stderr:write(question .. " Type 'yes' to confirm: ")
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
        ctx:err("%s", declined)
        c:close()
        return 1
    end
    rep.prompted = true
    return nil
end

local function apply_saved(ctx, path)
    local c = client(ctx)
    if not c then return 1 end
    local planfile = require("cxone.planfile")
    local function refuse(err, code)
        err = tostring(err)
        if err:find(path, 1, true) then ctx:err("cannot apply: %s", err) else ctx:err("cannot apply %s: %s", path, err) end
        if ctx.json then ctx:emit({ ok = false, error = err, code = code }) end
        c:close()
        return 1
    end
    local rep, err, code = planfile.load(path, c)
    if not rep then return refuse(err, code) end
    -- held until the outcome is recorded: the same plan applied concurrently waits, then refuses
    local claim, cerr, ccode = planfile.claim(c, rep)
    if not claim then return refuse(cerr, ccode) end
    local fresh, ferr, fcode = planfile.check_fresh(c, rep, rep.concurrency)
    if not fresh then
        planfile.finish(claim, rep, false)
        return refuse(ferr, fcode)
    end
    show_plans(ctx, rep, true)
    local status = apply_report(ctx, c, rep)
    local attempted = rep.counts.applied + rep.counts.failed > 0
    local rok, rerr = planfile.finish(claim, rep, attempted)
    if not rok then
        ctx:err("warning: could not record that %s was applied (%s): it is not refused if applied again",
            path, tostring(rerr))
    end
    return status
end

local function run_playbook(ctx, path, dry)
    local planfile = require("cxone.planfile")
    -- a .json file is data: applied as a saved plan (refused if it is not one), never run as Lua
    if not dry and (planfile.is_plan(path) or path:lower():match("%.json$")) then return apply_saved(ctx, path) end
    if dry and path:lower():match("%.json$") then
        return ctx:fail(path .. " is a .json file: cxone plan takes a playbook (Lua); apply a saved plan "
            .. "with cxone apply", "invalid")
    end
    if dry == false and ctx.flags.out then
        return ctx:usage("--out belongs to plan: cxone plan --out PLAN.json PLAYBOOK.lua, then cxone apply "
            .. "PLAN.json", "apply")
    end
    if dry and ctx.flags.out then
        local ok, terr = planfile.check_target(ctx.flags.out, path, ctx.flags.force)
        if ok and ctx.flags.expires then ok, terr = planfile.parse_ttl(ctx.flags.expires) end
        if not ok then return ctx:fail(tostring(terr), "invalid") end
    end
    local book, err, code = require("cxone.playbook").load(path)
    if not book then return ctx:fail("cannot load playbook: " .. tostring(err), code or "invalid") end
    if not dry and not ctx.flags.yes and not is_tty(0) then
        return ctx:fail("refusing to apply without a terminal to confirm on: pass --yes", "refused")
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
        local msg = preflight_message(c, rep)
        ctx:err("%s", msg)
        if ctx.json then
            local doc = rep:totable()
            doc.ok, doc.error = false, msg
            ctx:emit(doc)
        end
        c:close()
        return 1
    end
    local pending = #rep:pending()
    if dry then
        rep.dry_run = true
        if ctx.flags.out then
            local ttl, terr = planfile.DEFAULT_TTL, nil
            local ttl_text = ctx.flags.expires or require("cxone.env").get("plan_ttl")
            if ttl_text and ttl_text ~= "" then ttl, terr = planfile.parse_ttl(ttl_text) end
            if not ttl then ctx:err("%s", terr); c:close(); return 1 end
            local digest, doc = planfile.save(ctx.flags.out, rep, { playbook = path, client = c,
                sources = book.env_sources, ttl = ttl })
            if not digest then
                c:close()
                return ctx:fail("cannot save the plan: " .. tostring(doc), "io")
            end
            ctx:err("saved the plan to %s (digest %s, expires %s); apply it with: cxone apply %s",
                ctx.flags.out, digest:sub(1, 16), doc.expires, ctx.flags.out)
        end
        ctx:show(rep)
        c:close()
        return pending > 0 and 2 or 0
    end
    -- a freeze window refuses before asking (the applier checks again before writing)
    local frozen = pending > 0 and require("cxone.policy").freeze(c, rep, rep:pending(), ctx.flags.override_freeze)
    if frozen then
        c:close()
        return ctx:fail(frozen, "frozen")
    end
    if pending > 0 and not ctx.flags.yes then
        local status = confirm(ctx, c, rep, ("Apply %d step(s) with changes, exactly as shown?"):format(pending),
            "not applied")
        if status then return status end
    end
    return apply_report(ctx, c, rep)
end

local commands = {}

function commands.plan(ctx, args) return run_playbook(ctx, args[1], true) end
function commands.apply(ctx, args) return run_playbook(ctx, args[1], false) end

-- A violation as JSON gives it: {path, code, message}.
local function violation(path, code, message) return { path = path, code = code, message = message } end

function commands.validate(ctx, args)
    local path = args[1]
    local function bad(v, text)
        ctx:err("%s", text)
        if ctx.json then ctx:emit({ valid = false, violations = { v } }) end
        return 1
    end
    local f, err = io.open(path, "r")
    if not f then return bad(violation("", "io", tostring(err)), tostring(err)) end
    local src = f:read("*a")
    f:close()
    local core = require("cxone.core")
    local ok, doc, derr = pcall(core.json_decode, src)
    if not ok or doc == nil then
        local msg = "not valid JSON: " .. tostring(ok and derr or doc)
        return bad(violation("", "format", msg), path .. ": " .. msg)
    end
    if type(doc) ~= "table" then
        return bad(violation("", "type", "a payload must be a JSON object"), path .. ": a payload must be a JSON object")
    end
    local valid, violations = require("cxone.validate").check(doc, { tiers = require("cxone.tiers").new() })
    if valid then
        if ctx.json then
            ctx:emit({ valid = true, violations = setmetatable({}, { __jsontype = "array" }) })
        else
            ctx:out(path .. ": valid")
        end
        return 0
    end
    local list = {}
    for i, v in ipairs(violations) do
        list[i] = violation(tostring(v.path or ""), tostring(v.code or "invalid"), tostring(v.message or v))
    end
    if ctx.json then
        ctx:emit({ valid = false, violations = list })
    else
        local text = {}
        for line in tostring(violations):gmatch("[^\n]+") do text[#text + 1] = line end
        ctx:out(path .. ": " .. #text .. " violation" .. (#text == 1 and "" or "s"))
        for _, l in ipairs(text) do ctx:out("  " .. l) end
    end
    return 1
end

-- The --ignore/--expect-differ/--strict options of drift.
local function drift_opts(ctx)
    return { ignore = ctx.flags.ignore, expect_differ = ctx.flags.expect_differ, strict = ctx.flags.strict == true }
end

local function drift_playbook(ctx, path)
    local book, err, code = require("cxone.playbook").load(path)
    if not book then return ctx:fail("cannot load playbook: " .. tostring(err), code or "invalid") end
    local c = client(ctx)
    if not c then return 1 end
    local r, derr, dcode = require("cxone.drift").playbook(c, book, drift_opts(ctx))
    if not r then
        local msg = tostring(derr)
        local step, a, env, rest = msg:match("^(step %d+ %(.-%): )GET (%S+) (%S+): (.*)$")
        if step then msg = ("%sGET %s %s: %s"):format(step, a, env, hint(c, dcode, rest, a, env)) end
        c:close()
        return ctx:fail(msg, dcode)
    end
    c:close()
    ctx:show(r, { ok = true })
    return r:count() > 0 and 2 or 0
end

function commands.drift(ctx, args)
    if #args == 1 then return drift_playbook(ctx, args[1]) end
    local action, base, target = args[1], args[2], args[3]
    local bad = require("cxone.drift").check_action(action)
    if bad then return ctx:fail(bad, "invalid") end
    local c = client(ctx)
    if not c then return 1 end
    local r, err, code = require("cxone.drift").between(c, action, base, target, drift_opts(ctx))
    if not r then
        local tier = c.tiers:resolve(tostring(err):match("^%S+ (%S+):") or "")
        err = hint(c, code, err, action, tier and tier.id)
        c:close()
        return ctx:fail(err, code)
    end
    c:close()
    ctx:show(r, { ok = true })
    return r:count() > 0 and 2 or 0
end

function commands.vars(ctx, args)
    local action, tier = args[1], args[2]
    local bad = require("cxone.drift").check_action(action)
    if bad then return ctx:fail(bad, "invalid") end
    local c = client(ctx)
    if not c then return 1 end
    local r, err, code = c:vars(action, tier)
    if not r then
        local t = c.tiers:resolve(tier)
        err = hint(c, code, err, action, t and t.id)
        c:close()
        return ctx:fail(("%s %s: %s"):format(action, tier, tostring(err)), code)
    end
    c:close()
    local vars = {}
    for i, v in ipairs(r.variables or {}) do
        vars[i] = { name = v.name, value = v.masked and "***" or v.value, masked = v.masked == true,
                    description = v.description }
    end
    if ctx.json then
        ctx:emit({ ok = true, action = action, environment = r.environmentId, etag = r.etag,
                   variables = setmetatable(vars, { __jsontype = "array" }) })
        return 0
    end
    local render = require("cxone.render")
    local paint = render.painter(ctx.color)
    ctx:out(paint("bold", ("%s %s (%d variables)"):format(render.escape(action), render.escape(r.environmentId or tier), #vars)))
    local w = 0
    for _, v in ipairs(vars) do if #v.name > w then w = #v.name end end
    for _, v in ipairs(vars) do
        ctx:out(("  %s  %s%s"):format(render.pad(v.name, w), v.masked and "***" or render.quote(v.value),
            v.masked and paint("dim", "  (masked)") or ""))
    end
    return 0
end

-- `cxone export [ACTION...] [--tier T]... [--out FILE] [--baselines]`
function commands.export(ctx, args)
    local exp = require("cxone.export")
    local out = ctx.flags.out
    if out and not ctx.flags.force then
        local f = io.open(out, "rb")
        if f then
            f:close()
            return ctx:fail(out .. " exists: cxone export never replaces a file without --force", "invalid")
        end
    end
    local c = client(ctx)
    if not c then return 1 end
    local ids = args
    if #ids == 0 then
        local list, lerr, lcode = exp.list_actions(c)
        if not list then
            c:close()
            return ctx:fail(lerr, lcode)
        end
        ids = list
    end
    local doc, err, code = exp.collect(c, ids, ctx.flags.tier, { baselines = ctx.flags.baselines == true })
    if not doc then
        local a, env = tostring(err):match("^GET (%S+) (%S+): ")
        if a then err = hint(c, code, err, a, env) end
        c:close()
        return ctx:fail(err, code)
    end
    c:close()
    local text = exp.render(doc)
    if out then
        local tmp = out .. ".tmp"
        local f, ferr = io.open(tmp, "wb")
        local ok = f and f:write(text) and f:close()
        if not ok or not os.rename(tmp, out) then
            os.remove(tmp)
            return ctx:fail("cannot write " .. out .. ": " .. tostring(ferr or "write failed"), "io")
        end
        ctx:err("wrote %d step(s) to %s; check it with: cxone plan %s", #doc.steps, out, out)
    end
    if ctx.json then
        doc.ok = true
        ctx:emit(doc)
    elseif not out then
        io.stdout:write(text)
    end
    return 0
end

function commands.revert(ctx, args)
    return require("cxone.revert").command(ctx, args[1], {
        client = client, show_plans = show_plans, apply_report = apply_report, confirm = confirm,
        preflight_message = preflight_message })
end

function commands.audit(ctx, args)
    return require("cxone.audit").command(ctx, args)
end

function commands.sim(ctx, args, raw)
    return require("cxone.sim").command(raw) -- exec: the emulator takes this process's place
end

function commands.config(ctx, args)
    if args[1] ~= "check" then
        return ctx:usage(("unknown config subcommand '%s': cxone config check"):format(tostring(args[1])), "config")
    end
    local prof = profile(ctx)
    if prof == false then return 1 end
    return require("cxone.profiles_check").run(ctx, prof)
end

function commands.repl()
    local c, err = require("cxone.client").new()
    return require("cxone.repl").main({ client = c, client_error = c == nil and err or nil })
end

-- The command line's grammar, on lua-argparse: commands, their options, and the completion
-- scripts it generates. Help texts stay ours (USAGE, HELP), so `--help` reads the same.
local COMMANDS = {
    plan = { "--out", "--force", "--expires", "--format", "--max-rps", "--config" },
    apply = { "--yes", "--format", "--max-rps", "--max-read-age", "--config", "--override-freeze" }, validate = {},
    drift = { "--format", "--ignore", "--expect-differ", "--strict", "--max-rps", "--config" },
    vars = { "--max-rps", "--config" }, config = { "--config" },
    audit = { "--head", "--after" }, sim = false,
    export = { "--tier", "--out", "--force", "--baselines", "--max-rps", "--config" },
    revert = { "--yes", "--out", "--force", "--format", "--max-rps", "--config" }, repl = {}, completion = {},
    help = {},
}
local OPTION = {
    ["--out"] = { "--out", "save the plan for `cxone apply PLAN.json`", arg = "PLAN.json" },
    ["--format"] = { "--format", "output format", choices = { "text", "json", "markdown" } },
    ["--yes"] = { "-y --yes", "apply without asking", flag = true },
    ["--force"] = { "--force", "replace an existing saved plan", flag = true },
    ["--expires"] = { "--expires", "how long the saved plan stays valid (default 1d)", arg = "DURATION" },
    ["--max-rps"] = { "--max-rps", "send at most N API requests per second (the tenant's budget is shared; "
        .. "CXONE_MAX_RPS too, the lower wins)", arg = "N" },
    ["--max-read-age"] = { "--max-read-age", "seconds a plan's read stands in for a re-read (no ETags)", arg = "SECONDS" },
    ["--head"] = { "--head", "the hash the trail must end at", arg = "HASH" },
    ["--after"] = { "--after", "the hash the trail continues from", arg = "HASH" },
    ["--ignore"] = { "--ignore", "never count this variable as drift (repeatable)", arg = "NAME", many = true },
    ["--expect-differ"] = { "--expect-differ", "this variable may differ (repeatable)", arg = "NAME", many = true },
    ["--tier"] = { "--tier", "export this tier (repeatable; default: every tier)", arg = "TIER", many = true },
    ["--baselines"] = { "--baselines", "infer baselines: list only what differs from the tier before", flag = true },
    ["--strict"] = { "--strict", "values only our ledger vouches for are unverifiable", flag = true },
    ["--config"] = { "--config", "the configuration: tenants and tier policy (CXONE_CONFIG)", arg = "FILE",
        target = "config_file" }, -- (not `config`: the command of that name sets it)
    ["--override-freeze"] = { "--override-freeze", "apply inside a freeze window; the reason is audited",
        arg = "REASON" },
}
-- The positional arguments each command takes: counts allowed, and how they are named.
local ARITY = {
    plan = { 1, 1, "PLAYBOOK.lua" }, apply = { 1, 1, "PLAYBOOK.lua or PLAN.json" },
    validate = { 1, 1, "FILE.json" }, drift = { 1, 3, "ACTION BASELINE TARGET, or PLAYBOOK.lua", only = { 1, 3 } },
    vars = { 2, 2, "ACTION TIER" }, audit = { 2, math.huge, "verify FILE..." }, repl = { 0, 0, "no argument" },
    completion = { 0, 1, "[bash|zsh|fish]" }, help = { 0, 1, "[COMMAND]" }, config = { 1, 1, "check" },
    export = { 0, math.huge, "[ACTION...]" }, revert = { 1, 1, "RUN_ID or PLAN.json" },
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
                    if spec.many then opt:count("*") end
                    if spec.target then opt:target(spec.target) end
                end
            end
        end
        c:argument("args"):args("*")
    end
    return p
end

-- Edit distance (Levenshtein) between two short strings.
local function distance(a, b)
    local prev = {}
    for j = 0, #b do prev[j] = j end
    for i = 1, #a do
        local cur = { [0] = i }
        for j = 1, #b do
            local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
            cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        end
        prev = cur
    end
    return prev[#b]
end

-- The candidate closest to `word` (compared without leading dashes), if close enough.
local function nearest(word, candidates)
    local w = word:gsub("^%-+", ""):lower()
    local best, bestd
    for _, c in ipairs(candidates) do
        local d = distance(w, (c:gsub("^%-+", "")))
        if (not bestd or d < bestd) and (d <= 2 or (#w >= 3 and c:gsub("^%-+", ""):sub(1, #w) == w)) then
            best, bestd = c, d
        end
    end
    return best
end
M.nearest = nearest

-- The options one command accepts: name → takes a value.
local function options_of(cmd)
    local out = { ["-h"] = false, ["--help"] = false, ["--json"] = false }
    for _, o in ipairs(COMMANDS[cmd] or {}) do
        local spec = OPTION[o]
        for name in spec[1]:gmatch("%S+") do out[name] = not spec.flag end
    end
    return out
end

-- Checks a command's options before argparse sees them (argparse reads `-out` as `-o -u -t` and
-- suggests `-h`): nil, or the usage error naming the argument and one that exists.
local function check_options(cmd, list)
    local known = options_of(cmd)
    local longs = {}
    for name in pairs(known) do if name:sub(1, 2) == "--" then longs[#longs + 1] = name end end
    table.sort(longs)
    local i = 2
    while i <= #list do
        local a = list[i]
        if a == "--" then return nil end
        if a:sub(1, 1) == "-" and a ~= "-" then
            local name = a:match("^([^=]+)")
            if known[name] == nil then
                local msg = ("unknown option '%s' for %s"):format(a, cmd)
                local near = nearest(name, longs)
                if near then return msg .. (": did you mean '%s'?"):format(near) end
                local others = {}
                for other in pairs(COMMANDS) do others[#others + 1] = other end
                -- the first command (by name) that takes it, always the same; export and revert
                -- last (they borrow plan's and apply's options)
                local late = { export = true, revert = true }
                table.sort(others, function(a, b)
                    if late[a] ~= late[b] then return not late[a] end
                    return a < b
                end)
                for _, other in ipairs(others) do
                    local opts = COMMANDS[other]
                    if other ~= cmd and opts and options_of(other)[name] ~= nil then
                        return msg .. (" (it belongs to cxone %s)"):format(other)
                    end
                end
                return msg .. " (it takes " .. table.concat(longs, ", ") .. ")"
            end
            if known[name] and not a:find("=", 1, true) then i = i + 1 end
        end
        i = i + 1
    end
    return nil
end

local function command_names()
    local names = {}
    for name in pairs(COMMANDS) do names[#names + 1] = name end
    table.sort(names)
    return names
end

function commands.completion(ctx, args)
    local shell = args[1] or "bash"
    local p = parser()
    local gen = { bash = p.get_bash_complete, zsh = p.get_zsh_complete, fish = p.get_fish_complete }
    if not gen[shell] then
        return ctx:usage(("unknown shell '%s': cxone completion takes bash, zsh or fish"):format(tostring(shell)),
            "completion")
    end
    io.stdout:write(gen[shell](p))
    return 0
end
HELP.completion = "usage: cxone completion [bash|zsh|fish]\n"
    .. "Prints a shell completion script, e.g. `source <(cxone completion bash)`.\n"

HELP.config = "usage: cxone config check [--config FILE] [--json]\n"
    .. "Shows what each tier resolves to: tenant (base URL, client id), auth flow, where each credential\n"
    .. "comes from (secrets as ***), rate limit and policy; then asks each tenant for a token.\n"
    .. "The file is named by --config or CXONE_CONFIG, never found implicitly; without one, the single\n"
    .. "tenant of the CXONE_* variables. Exit status: 0 every tier works, 1 otherwise, 64 usage.\n"
HELP.help = "usage: cxone help [COMMAND]\nPrints the list of commands, or a command's help (as cxone COMMAND --help).\n"

-- `cxone help [COMMAND]`.
local function help(ctx, list)
    if #list > 2 then return ctx:usage(("unexpected argument '%s': cxone help takes one COMMAND"):format(list[3]), "help") end
    local topic = list[2]
    if topic == nil then io.stdout:write(USAGE); return 0 end
    if HELP[topic] then io.stdout:write(HELP[topic]); return 0 end
    local near = nearest(topic, command_names())
    return ctx:usage(("no help for unknown command '%s'%s"):format(topic, near and (": did you mean '" .. near .. "'?") or ""))
end

--- Runs the CLI with an argument list; returns the exit status (64 for a usage error).
function M.main(argv)
    -- the process holds the client secret, the token and masked values: no core dumps
    -- (tested in hostile_spec)
    require("cxone.core").no_core_dumps()
    argv = argv or {}
    local ctx = setmetatable({ flags = {} }, Ctx)
    local list = {}
    for i = 1, #argv do list[i] = argv[i] end
    local cmd = list[1]
    if cmd == "help" then return help(ctx, list) end
    if cmd and cmd:sub(1, 1) ~= "-" and COMMANDS[cmd] == nil then
        local near = nearest(cmd, command_names())
        return ctx:usage(("unknown command '%s'%s"):format(cmd, near and (": did you mean '" .. near .. "'?") or ""))
    end
    if cmd and COMMANDS[cmd] then
        for i = 2, #list do if list[i] == "--json" then ctx.json = true end end
        local bad = check_options(cmd, list)
        if bad then return ctx:usage(bad, cmd) end
    end
    local ok, res = parser():pparse(list)
    if not ok then
        local msg = tostring(res):gsub("\nDid you mean.*$", "")
        return ctx:usage(msg, COMMANDS[cmd] ~= nil and cmd or nil)
    end
    ctx.json = nil
    cmd = res.command
    if not cmd then
        if res.version then
            io.stdout:write("cxone ", tostring(require("cxone.core")._VERSION), "\n")
            return 0
        end
        if res.help then io.stdout:write(USAGE); return 0 end
        io.stderr:write(USAGE)
        return EXIT_USAGE
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
    if ctx.flags.max_rps then
        local n = tonumber(ctx.flags.max_rps)
        if not n or n <= 0 or n > 100000 then
            return ctx:usage(("--max-rps takes a number of requests per second in (0, 100000], not '%s'")
                :format(tostring(ctx.flags.max_rps)), cmd)
        end
        ctx.flags.max_rps = n
    end
    if ctx.flags.max_read_age ~= nil then
        ctx.max_read_age = tonumber(ctx.flags.max_read_age)
        if not ctx.max_read_age or ctx.max_read_age < 0 then
            return ctx:usage("--max-read-age must be a number of seconds, 0 or more", cmd)
        end
    end
    local arity = ARITY[cmd]
    if arity then
        local n = #args
        if n < arity[1] then
            return ctx:usage(("missing argument%s: cxone %s takes %s"):format(arity[1] - n == 1 and "" or "s",
                cmd, arity[3]), cmd)
        elseif n > arity[2] then
            return ctx:usage(("unexpected argument '%s': cxone %s takes %s"):format(args[arity[2] + 1], cmd,
                arity[3]), cmd)
        elseif arity.only and n ~= arity.only[1] and n ~= arity.only[2] then
            return ctx:usage(("cxone %s takes %s, not %d arguments"):format(cmd, arity[3], n), cmd)
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
