--- Running a chain of policies for one hook and turning what they return
-- into one verdict. The worker's runtime and the spec fakes both use this,
-- so a policy's unit spec sees exactly what the gateway would do.
--
-- @module weir.chain
-- @usage local kind, a, b = chain.run(entries, "on_frame_in", ctx, frame)

local weir = require "weir"

local pcall, type, tostring, rawset, rawget = pcall, type, tostring, rawset, rawget
local decode = require("cjson.safe").decode
local is_error, is_reply, DROP = weir.is_error, weir.is_reply, weir.DROP

local _M = {
    PASS = 0,       -- go on (frame: forward as is)
    REPLACE = 1,    -- forward frame.payload, replaced by a policy
    DROP = 2,       -- forward nothing
    REPLY = 3,      -- a = payload, b = opcode: answer the sender
    ERROR = 4,      -- a = weir.error verdict
    FAIL = 5,       -- a = policy name, b = error message: the policy broke
}
local PASS, REPLACE, KDROP, REPLY, ERROR, FAIL = 0, 1, 2, 3, 4, 5

local NOT_JSON = {}     -- frame._json of a payload that did not decode (frame._json_err says why)

--- `frame:json()`: FRAME's payload decoded as JSON (cjson.safe), once per
-- message: every policy of the chain that asks gets the same value (do not
-- change it: the next policies see the change, the backend does not).
-- Returns what the JSON text is: a table for an object or an array, a
-- string, number or boolean, `cjson.null` for `null`; or nil and the
-- decoder's message when the payload is not JSON. The opcode is not
-- looked at: a binary message that holds JSON text decodes too.
-- A payload a policy replaced is decoded again.
-- @tparam table frame the message
-- @return the decoded value, or nil and an error message
function _M.frame_json(frame)
    local v = rawget(frame, "_json")
    if v == nil then
        local err
        v, err = decode(frame.payload)
        if v == nil then
            rawset(frame, "_json", NOT_JSON)
            rawset(frame, "_json_err", err)
            return nil, err
        end
        rawset(frame, "_json", v)
        return v
    elseif v == NOT_JSON then
        return nil, rawget(frame, "_json_err")
    end
    return v
end

--- Sort ENTRIES for running: higher priority first, then configuration order.
function _M.sort(entries)
    table.sort(entries, function(a, b)
        if a.priority ~= b.priority then return a.priority > b.priority end
        return (a.seq or 0) < (b.seq or 0)
    end)
    return entries
end

--- Run HOOK of every entry that has it.
-- A policy that raises an error stops the chain with FAIL, unless its entry
-- is `fail_open` (then ON_FAIL(entry, err, hook) is called and the chain goes on).
-- @tparam table entries sorted chain entries `{ name, mod, conf, fail_open }`
-- @tparam string hook "on_handshake", "on_frame_in", "on_frame_out" or "on_close"
-- @tparam table ctx the connection
-- @tparam[opt] table frame the message (frame hooks) or info (on_close)
-- @tparam[opt] function on_fail called as on_fail(entry, err, hook) for fail_open failures
-- @tparam[opt] number start the first entry to run (default 1)
-- @tparam[opt] boolean replaced whether an earlier part of the chain replaced the payload
-- @treturn number kind (PASS, REPLACE, DROP, REPLY, ERROR, FAIL), then its values
function _M.run(entries, hook, ctx, frame, on_fail, start, replaced)
    replaced = replaced or false
    for i = start or 1, #entries do
        local e = entries[i]
        local fn = e.mod[hook]
        if fn then
            ctx.policy = e.name
            ctx._at = i
            ctx._replaced = replaced
            local ok, res = pcall(fn, ctx, e.conf, frame)
            ctx.policy = nil
            if not ok then
                if not e.fail_open then return FAIL, e.name, tostring(res) end
                if on_fail then on_fail(e, tostring(res), hook) end
            elseif res ~= nil and hook ~= "on_close" then
                if res == DROP then
                    return KDROP
                elseif type(res) == "string" and frame and hook ~= "on_handshake" then
                    rawset(frame, "payload", res)
                    rawset(frame, "_json", nil)       -- frame:json() decodes the new payload
                    frame.length = #res
                    replaced = true
                elseif is_error(res) then
                    return ERROR, res
                elseif is_reply(res) and hook ~= "on_handshake" then
                    return REPLY, res.payload, res.opcode
                else
                    local msg = "returned an unexpected value from " .. hook .. ": " .. tostring(res)
                    if not e.fail_open then return FAIL, e.name, msg end
                    if on_fail then on_fail(e, msg, hook) end
                end
            end
        end
    end
    if replaced then return REPLACE end
    return PASS
end

return _M
