--- spec/support/browser.lua — the specs' side of spec/support/browser.js:
-- runs scenarios in headless Chromium and reads back their results.
--
-- Usage (busted's lpath has spec/?.lua):
--   local browser = require "support.browser"
--   local r = browser.start({ runs = { { name = "ticket", scenario = "client", args = { url = …, steps = … } } } })
--   r:wait_mark("open")                 -- the page called h.mark("open")
--   …act on the gateway or a backend…
--   r:signal("go")                      -- the page's h.waitSignal("go") returns
--   local rep = r:wait()                -- rep.results.ticket.value is the scenario's value
-- or, for one scenario: local value = browser.run("client", args).
--
-- The process is spawned with helpers.spawn, so helpers.cleanup() kills it;
-- its Chromium profile lives in helpers.tmpdir(). Screenshots go to
-- plan.screenshots, by default a new directory under /tmp that is kept
-- (rep.screenshots names it).

local helpers = require "helpers"
local cjson = require "cjson"

local M = {}
M.script = helpers.support .. "/browser.js"
M.chromium = "/usr/bin/chromium"

local seq = 0

--- Whether a browser spec can run here: Debian's chromium and playwright-core.
-- Returns true, or false and what is missing.
function M.available()
    if not helpers.read_file(M.chromium) then return false, M.chromium .. " is missing" end
    if not helpers.read_file(helpers.support .. "/node_modules/playwright-core/package.json") then
        return false, "playwright-core is not installed in spec/support (npm ci there)"
    end
    return true
end

local Run = {}
Run.__index = Run

--- Start browser.js with PLAN (see its header): runs, timeout, screenshots, host, page, mounts.
-- Returns a handle.
function M.start(plan)
    plan = helpers.deepcopy(plan)
    plan.work_dir = plan.work_dir or helpers.tmpdir()
    plan.timeout = plan.timeout or 60
    seq = seq + 1
    local base = string.format("%s/browser-%d", helpers.tmpdir(), seq)
    local file = helpers.write_file(base .. ".plan.json", cjson.encode(plan))
    local r = setmetatable({ out = base .. ".stdout", err = base .. ".stderr", plan = plan }, Run)
    r.pid = helpers.spawn({ "node", M.script, "--plan", file }, { stdout = r.out, stderr = r.err })
    return r
end

local function tail(s, n)
    s = s or ""
    return #s > n and ("…" .. s:sub(-n)) or s
end

--- Every complete line printed so far, decoded.
function Run:lines()
    local lines = {}
    for line in (helpers.read_file(self.out) or ""):gmatch("([^\n]*)\n") do
        local ok, v = pcall(helpers.json, line)           -- JSON null → nil
        if ok and type(v) == "table" then lines[#lines + 1] = v end
    end
    return lines
end

function Run:_why()
    return "\nstdout: " .. tail(helpers.read_file(self.out), 3000) .. "\nstderr: " .. tail(helpers.read_file(self.err), 2000)
end

--- Wait for the first line for which PRED(line) is true; returns it. Errors
-- when browser.js ends without printing one, or after TIMEOUT seconds.
function Run:wait_line(pred, timeout, what)
    return helpers.wait_until(function()
        for _, l in ipairs(self:lines()) do
            if pred(l) then return l end
        end
        if self.exited or not helpers.alive(self.pid) then
            error("browser.js ended before " .. (what or "the line") .. self:_why(), 3)
        end
    end, timeout or self.plan.timeout, what)
end

--- Wait until the page marks NAME (h.mark(NAME, data)); returns the mark line ({data=…}).
function Run:wait_mark(name, timeout)
    return self:wait_line(function(l) return l.kind == "mark" and l.name == name end, timeout, "the mark " .. name)
end

--- The serving line: {port=, origin=, signals=}.
function Run:serving(timeout)
    return self:wait_line(function(l) return l.kind == "serving" end, timeout or 30, "browser.js to serve")
end

--- Let the page's h.waitSignal(NAME) return CONTENT (default "").
function Run:signal(name, content)
    local dir = self:serving().signals
    local tmp = dir .. "/." .. name .. ".tmp"
    helpers.write_file(tmp, content or "")
    assert(os.rename(tmp, dir .. "/" .. name))
end

--- Wait for browser.js to exit; returns the report:
--   {ok=, results={[name]=result line, …}, runs={result lines in order},
--    done=, fatal=, screenshots=, origin=, lines=}
-- A result line: {ok=, value=, error=, duration_ms=, name=, scenario=}.
function Run:wait(timeout)
    if not self.report then
        local code, how = helpers.wait(self.pid, timeout or (self.plan.timeout + 15))
        self.exited = true
        if how == "timeout" then
            helpers.kill(self.pid, "TERM")           -- browser.js closes Chromium on TERM
            if select(2, helpers.wait(self.pid, 15)) == "timeout" then
                helpers.kill(self.pid, "KILL")
                helpers.wait(self.pid, 5)
            end
            error("browser.js did not finish" .. self:_why(), 2)
        end
        local rep = { code = code, results = {}, runs = {}, lines = self:lines() }
        for _, l in ipairs(rep.lines) do
            if l.kind == "result" then
                rep.results[l.name] = l
                rep.runs[#rep.runs + 1] = l
            elseif l.kind == "done" then
                rep.done, rep.screenshots, rep.ok = l, l.screenshots, l.ok
            elseif l.kind == "fatal" then
                rep.fatal = l.error
            elseif l.kind == "serving" then
                rep.origin = l.origin
            end
        end
        if not rep.done then error("browser.js printed no done line (exit " .. tostring(code or how) .. ")" .. self:_why(), 2) end
        self.report = rep
    end
    return self.report
end

--- The result value of run NAME; errors (with the page's console) when the run failed.
function Run:value(name)
    local rep = self:wait()
    local res = rep.results[name]
    if not res then error("no result for run " .. name .. (rep.fatal and (": " .. rep.fatal) or "") .. self:_why(), 2) end
    if not res.ok then
        local console = {}
        for _, l in ipairs(rep.lines) do
            if l.run == res.run and (l.kind == "console" or l.kind == "pageerror") then
                console[#console + 1] = l.text or l.message
            end
        end
        error("run " .. name .. " failed: " .. tostring(res.error) .. "\n" .. table.concat(console, "\n"), 2)
    end
    return res.value
end

--- Run one SCENARIO with ARGS (PLAN: other plan fields); returns its value.
function M.run(scenario, args, plan)
    plan = helpers.deepcopy(plan or {})
    plan.runs = { { name = scenario, scenario = scenario, args = args } }
    return M.start(plan):value(scenario)
end

return M
