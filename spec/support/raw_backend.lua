-- raw_backend — a scripted, recording WebSocket backend for the RFC 6455 specs.
--
--   luajit spec/support/raw_backend.lua PORT DIR [ADDRESS]
--
-- Listens on ADDRESS:PORT (default 127.0.0.1) and forks one child per
-- connection. The child checks the opening handshake strictly (rawws.accept:
-- answers 400 when it is not valid RFC 6455), then takes the connection's
-- name from the first segment of the request path ("/case-7?x=1" → "case-7";
-- "/" → "default") and
--
--   * records every event to DIR/<name>.jsonl, one JSON object a line:
--       {"ev":"handshake","ok":true,"path":…,"headers":{…},"errors":[…]}
--       {"ev":"recv","frame":{…}}       a frame received (payload, key in hex)
--       {"ev":"sent","frame":{…}}       a frame sent; {"ev":"sent_raw",…} bytes
--       {"ev":"end","why":"eof"|"closed"|"timeout"|…}   always the last line
--   * follows DIR/<name>.json when it exists (written by the spec with
--     rawws.encode_script) — {"steps":[…], options}:
--       {"send":{frame as for rawws.build, payload hex}, "split":n|[offsets]}
--       {"raw":"hex bytes", "split":…}
--       {"wait_opcode":op}     read (and record) until a frame with opcode op
--       {"wait_frames":n}      read until n frames have been received in all
--       {"wait_bytes":n}       wait until n bytes (of frames not yet read) have
--                              arrived, then log {"ev":"peeked","bytes":…}
--       {"close_tcp":true}     end the TCP connection now, without a close
--     options: "with_101":[frames] (written in the same write as the 101),
--     "pong":false (do not answer pings), "echo_close":false (do not
--     answer a close frame), "linger":true (after the close handshake wait
--     for the peer to end TCP instead of ending it first), "life":seconds.
--
-- After the steps it keeps reading until the connection ends: pings get a
-- pong with the same payload, a close frame gets the same payload back (when
-- it has not sent one itself), and once close frames went both ways it ends
-- the TCP connection, as RFC 6455 section 7.1.1 asks of a server.

local dir = (arg[0]:match("^(.*)/[^/]*$") or ".")
package.path = dir .. "/?.lua;" .. package.path

local socket = require "socket"
local cjson  = require "cjson"
local unistd = require "posix.unistd"
local psig   = require "posix.signal"
local rawws  = require "rawws"

local port, outdir, address = tonumber(arg[1]), arg[2], arg[3] or "127.0.0.1"
if not port or not outdir then
    io.stderr:write("usage: luajit raw_backend.lua PORT DIR [ADDRESS]\n")
    os.exit(2)
end

local function handle(sock)
    local rec, script
    local function log(ev)
        if rec then
            rec:write(cjson.encode(ev), "\n")
            rec:flush()
        end
    end

    local conn, req = rawws.accept(sock, { timeout = 5, answer = false })
    local name = (req.path or ""):match("^/([%w_%-%.]+)") or "default"
    rec = assert(io.open(outdir .. "/" .. name .. ".jsonl", "ab"))
    local sf = io.open(outdir .. "/" .. name .. ".json", "rb")
    if sf then
        script = cjson.decode(sf:read("*a"))
        sf:close()
    end
    script = script or {}
    log{ ev = "handshake", ok = conn ~= nil, path = req.path, method = req.method,
         version = req.version, headers = req.headers or {}, order = req.order or {},
         errors = req.errors }
    if not conn then
        log{ ev = "end", why = "bad handshake" }
        sock:close()
        return
    end
    local function decode_frame(t)
        local f = {}
        for k, v in pairs(t) do f[k] = v end
        f.payload = rawws.fromhex(t.payload or "")
        if type(f.mask) == "string" then f.mask = rawws.fromhex(f.mask) end
        return f
    end
    local with = {}
    for i, t in ipairs(script.with_101 or {}) do
        local bytes = rawws.build(decode_frame(t))
        with[i] = bytes
        log{ ev = "sent", frame = rawws.frame_to_json(rawws.parse(bytes) or { opcode = -1, payload = "" }),
             with_101 = true }
    end
    conn:answer(req, { then_send = table.concat(with) })

    local deadline = socket.gettime() + (script.life or 30)
    local nrecv, sent_close, got_close = 0, false, false

    local function send(f, split)
        local bytes = rawws.build(f)
        local ok, err = conn:send_raw(bytes, split)
        local parsed = rawws.parse(bytes)
        if not parsed then
            -- a declared length longer than the bytes sent: record the spec
            parsed = { fin = f.fin ~= false, rsv1 = f.rsv1 or false, rsv2 = f.rsv2 or false,
                       rsv3 = f.rsv3 or false, opcode = f.opcode or 1, masked = f.mask and true or false,
                       length = f.length or #(f.payload or ""), len_form = f.len_form,
                       payload = f.payload or "" }
        end
        log{ ev = "sent", frame = rawws.frame_to_json(parsed), err = err }
        if f.opcode == 8 then sent_close = true end
        return ok, err
    end

    -- Read one frame, record it and give the automatic answers.
    -- Returns the frame, or nil and why the connection ended.
    local function step_read()
        local left = deadline - socket.gettime()
        if left <= 0 then return nil, "timeout" end
        local fr, err = conn:read_frame(left)
        if not fr then return nil, err end
        nrecv = nrecv + 1
        log{ ev = "recv", frame = rawws.frame_to_json(fr) }
        if fr.opcode == 9 and script.pong ~= false and not sent_close then
            send{ opcode = 10, payload = fr.payload }
        elseif fr.opcode == 8 and not got_close then
            got_close = true
            if not sent_close and script.echo_close ~= false then
                send{ opcode = 8, payload = fr.payload }
            end
        end
        return fr
    end

    local why
    for _, st in ipairs(script.steps or {}) do
        if st.send then
            send(decode_frame(st.send), st.split)
        elseif st.raw then
            local raw = rawws.fromhex(st.raw)
            local ok, err = conn:send_raw(raw, st.split)
            log{ ev = "sent_raw", bytes = st.raw, ok = ok, err = err }
            local fr, pos = rawws.parse(raw)
            while fr do                       -- a close among the raw bytes counts
                if fr.opcode == 8 then sent_close = true end
                fr, pos = rawws.parse(raw, pos)
            end
        elseif st.wait_opcode or st.wait_frames then
            while true do
                if st.wait_frames and nrecv >= st.wait_frames then break end
                local fr, err = step_read()
                if not fr then why = err; break end
                if st.wait_opcode and fr.opcode == st.wait_opcode then break end
            end
        elseif st.wait_bytes then
            local n, err = conn:peek(st.wait_bytes, deadline)
            log{ ev = "peeked", bytes = n, err = err }
            if not n then why = err end
        elseif st.close_tcp then
            why = "closed by script"
        end
        if why then break end
    end

    while not why do
        if sent_close and got_close and not script.linger then
            why = "close handshake done"
            break
        end
        local fr, err = step_read()
        if not fr then why = err end
    end
    if why == "closed" then why = "eof" end
    log{ ev = "end", why = why }
    sock:close()
end

local server = assert(socket.bind(address, port))
psig.signal(psig.SIGCHLD, psig.SIG_IGN)
server:settimeout(nil)
while true do
    local client = server:accept()
    if client then
        local pid = unistd.fork()
        if pid == 0 then
            server:close()
            client:settimeout(5)
            local ok, err = pcall(handle, client)
            if not ok then io.stderr:write("raw_backend: ", tostring(err), "\n") end
            unistd._exit(0)
        end
        client:close()
    end
end
