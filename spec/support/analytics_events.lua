--- Reading the analytics policy's events in specs
-- (spec/03-policies/08-analytics/): JSON lines decoded, filters, and the
-- HTTP collector (analytics_collector.py).
local helpers = require "helpers"
local cjson = require "cjson.safe"

local _M = {}

--- The events of the complete lines of TEXT (every line must be a JSON
-- object; a last line without its newline is being written: left out).
function _M.decode_lines(text)
    local out = {}
    for line in (text or ""):gmatch("([^\n]*)\n") do
        local ev = cjson.decode(line)
        assert(type(ev) == "table", "not a JSON object: " .. line)
        out[#out + 1] = ev
    end
    return out
end

--- The events of the JSON-lines file PATH (none when it is not there).
function _M.file_events(path)
    return _M.decode_lines(helpers.read_file(path))
end

--- The events of EVENTS whose FIELD is VALUE.
function _M.where(events, field, value)
    local out = {}
    for _, e in ipairs(events) do
        if e[field] == value then out[#out + 1] = e end
    end
    return out
end

--- The events of EVENTS of type T ("connect", "close", ...).
function _M.of_type(events, t) return _M.where(events, "event", t) end

--- The sum of FIELD over EVENTS (a missing field counts 0).
function _M.sum(events, field)
    local n = 0
    for _, e in ipairs(events) do n = n + (e[field] or 0) end
    return n
end

--- Start spec/support/analytics_collector.py, its output in DIR; returns
-- { port =, pid = }.
function _M.start_collector(dir)
    local out = dir .. "/collector.out"
    local pid = helpers.spawn({ "/usr/bin/python3", helpers.support .. "/analytics_collector.py" }, { stdout = out })
    local line = helpers.wait_until(function() return (helpers.read_file(out) or ""):match("[^\n]*\n") end,
                                    15, "the collector to listen")
    local col = helpers.json(line)
    col.pid = pid
    return col
end

return _M
