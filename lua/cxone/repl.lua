--- The interactive session of `cxone repl`: Lua with `cxone` loaded and `client` built from the
-- CXONE_* settings, where every value prints readably, Tab completes names, fields, methods,
-- tier names and the action ids seen so far, and a history that keeps no secret.
--
-- On a terminal it reads lines through Debian's lua-readline (the `readline` module, optional);
-- otherwise (piped stdin, or readline missing) it reads plain lines. Piped input is evaluated
-- line by line (a statement may span lines) and the exit status is 1 when any line failed
-- (an error, or a call returning `nil, message, code`), else 0.
--
-- Ctrl-C clears the line being typed and never stops the session: while the session runs, the
-- terminal's interrupt character is switched off and ^C becomes the line-kill character, so a
-- running call (an apply, say) is never cut in half; Ctrl-\ still quits. `.exit` or Ctrl-D ends
-- the session with status 0.
--
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4 (the command runs it under 5.4).
-- @module cxone.repl
--
-- The parts, each in its own file: cxone.repl.session (evaluating lines), .render (how values
-- print), .complete (Tab), .help (help() and its texts; .cdoc for cxone.core's), .history (the
-- history file and the filter that keeps secrets out of it). This file is the loop.

local show = require("cxone.repl.render")
local histfile = require("cxone.repl.history")
local session_mod = require("cxone.repl.session")

local M = {}

local shquote, ran = histfile.shquote, histfile.ran
local scrub = show.scrub

--- Replaces every occurrence of a known secret (a set of strings) in s by ***.
M.scrub = scrub
--- Renders one value as the session prints it (cxone.repl.render.render).
M.render = show.render
--- Renders the values a line produced (cxone.repl.render.render_results).
M.render_results = show.render_results
--- Whether a line must stay out of the history (cxone.repl.history.secret_line).
M.secret_line = histfile.secret_line
--- Where the history goes (cxone.repl.history.history_path).
M.history_path = histfile.history_path
--- A new session (cxone.repl.session.new).
M.session = session_mod.new

-- the loop ---------------------------------------------------------------------------------------

local function is_tty(fd)
    local ok, core = pcall(require, "cxone.core")
    if ok and core.isatty then return core.isatty(fd) end
    return ran(os.execute("test -t " .. fd))
end

local function stty(args)
    local p = io.popen("stty " .. args .. " </dev/tty 2>/dev/null")
    if not p then return nil end
    local out = p:read("*a")
    p:close()
    return out
end

-- Reads lines from a terminal through readline; nil when readline is unavailable.
local function terminal_reader(session, history)
    local ok, RL = pcall(require, "readline")
    if not ok or type(RL) ~= "table" or not RL.readline then return nil end
    RL.set_options({ histfile = "", auto_add = false, completion = true })
    if RL.set_readline_name then RL.set_readline_name("cxone") end
    RL.set_complete_function(function(text, from, to)
        -- readline resets the character appended to a unique completion (a space) before each
        -- completion: none, so `client:dr<Tab>` gives `client:drift`, ready for `(`
        if RL.set_completion_append_character then RL.set_completion_append_character("") end
        local okc, res = pcall(function()
            local word = text:sub(from, to - 1)
            return session:complete(text:sub(1, to - 1), word, from)
        end)
        return okc and res or {}
    end)
    for _, l in ipairs(history.lines) do RL.add_history(l) end
    local saved = stty("-g")
    saved = saved and saved:match("^%s*(.-)%s*$")
    if saved and saved ~= "" then stty("intr undef kill ^C") else saved = nil end
    return {
        read = function(prompt) return RL.readline(prompt) end,
        add = function(line) RL.add_history(line) end,
        close = function() if saved then stty(shquote(saved)) end end,
    }
end

local function plain_reader(prompt_on)
    return {
        read = function(prompt)
            if prompt_on then io.stdout:write(prompt) io.stdout:flush() end
            return io.stdin:read("*l")
        end,
        add = function() end,
        close = function() end,
    }
end

--- Runs the session until `.exit` or end of input; returns the exit status.
-- opts: `client` (a cxone client or nil), `client_error` (why there is none), `interactive`
-- (default: stdin and stdout are terminals). Piped: results on stdout, errors on stderr.
-- @treturn number 0, or 1 when reading piped input and a line failed
function M.main(opts)
    opts = opts or {}
    local interactive = opts.interactive
    if interactive == nil then interactive = is_tty(0) and is_tty(1) end
    local session = M.session({ client = opts.client, client_error = opts.client_error,
        err = not interactive and function(s) io.stderr:write(s) end or nil })
    local function warn(msg) io.stderr:write("cxone repl: ", msg, "\n") end
    local history = histfile.open(interactive and M.history_path() or nil, warn)
    local reader = interactive and terminal_reader(session, history) or plain_reader(interactive)
    -- os.exit from a line must still give the terminal back its interrupt character
    session.env.os = setmetatable({ exit = function(...)
        reader.close()
        return os.exit(...)
    end }, { __index = os })
    local told_secret = false
    local last_saved = history.lines[#history.lines]
    if interactive then
        local version = session.cxone and session.cxone._VERSION or "?"
        io.stdout:write(("cxone %s: `client` is %s\n"):format(tostring(version),
            opts.client and scrub(tostring(opts.client), session.secrets)
                or ("not set (" .. tostring(opts.client_error or "no settings") .. ")")))
        io.stdout:write("help() lists what is available; Tab completes; .exit or Ctrl-D quits.\n")
    elseif not opts.client and opts.client_error then
        warn("no client: " .. tostring(opts.client_error))
    end
    local ok, err = pcall(function()
        local pending = {}
        while true do
            local line = reader.read(#pending == 0 and "> " or ">> ")
            if line == nil then
                if interactive then io.stdout:write("\n") end
                if #pending > 0 then -- input ended inside a statement
                    local _, e = session:compile(table.concat(pending, "\n"))
                    session.err(scrub("error: " .. tostring(e), session.secrets) .. "\n")
                    session.failed = true
                end
                break
            end
            if #pending == 0 and line:match("^%s*%.exit%s*$") then break end
            if #pending > 0 or line:match("%S") then
                pending[#pending + 1] = line
                local src = table.concat(pending, "\n")
                local status = session:eval(src)
                if status ~= "incomplete" then
                    if interactive then
                        if M.secret_line(src, session.secrets) then
                            if not told_secret then
                                told_secret = true
                                io.stdout:write("(kept out of the history: the line holds a secret;"
                                    .. " such lines are never saved)\n")
                            end
                        elseif not (#pending == 1 and pending[1] == last_saved) then -- no repeats
                            last_saved = pending[#pending]
                            for _, l in ipairs(pending) do reader.add(l) end
                            if not history:append(pending) then
                                warn("history: cannot append to " .. tostring(history.path))
                                history.path = nil
                            end
                        end
                    end
                    pending = {}
                end
            end
        end
    end)
    reader.close()
    if not ok then
        io.stderr:write("cxone repl: internal error: ", tostring(err), "\n")
        return 1
    end
    if not interactive and session.failed then return 1 end
    return 0
end

return M
