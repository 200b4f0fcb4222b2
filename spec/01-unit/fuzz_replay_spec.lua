-- The fuzzing harnesses of spec/fuzz/ (see its README.md), replayed over
-- their committed corpora: each is built by gcc with spec/fuzz/replay.c in
-- place of libFuzzer (-Wall -Wextra -Werror), once plain and once with
-- AddressSanitizer + UBSan, and must go through every input with exit 0
-- and no sanitizer report. The harnesses check more than crashes: the
-- frame relay against a reference decoder (frames_diff), streams read in
-- pieces against the same read whole (frames), close frames against the
-- rules (close), the masking primitives against byte-by-byte references
-- (mask), and what the request and response parsers accept.
local helpers = require "helpers"

local fmt = string.format

local ROOT      = helpers.root
local HARNESSES = { "request", "response", "frames", "frames_diff", "close", "conf", "json", "mask" }
local SAN_ENV   = {
    ASAN_OPTIONS  = "detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1",
    UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1",
    LSAN_OPTIONS  = false,
}

local function build(out, san)
    local code, stdout, stderr = helpers.run({ "make", "-s", "-C", ROOT .. "/spec/fuzz", "replay",
                                               "OUT=" .. out, "SAN=" .. san }, { timeout = 300 })
    assert(code == 0, "building the harnesses failed:\n" .. stdout .. stderr)
end

local function count_files(dir)
    local n = 0
    local p = io.popen("ls -A " .. helpers.shell_quote(dir))
    for _ in p:lines() do n = n + 1 end
    p:close()
    return n
end

describe("fuzz corpora replay", function()
    local dir

    setup(function()
        dir = helpers.tmpdir()
        build(dir .. "/plain", "0")
        build(dir .. "/san", "1")
    end)
    teardown(helpers.cleanup)

    for _, flavour in ipairs({ "plain", "san" }) do
        for _, h in ipairs(HARNESSES) do
            it(fmt("%s goes through its whole corpus (%s build)", h, flavour), function()
                local corpus = ROOT .. "/spec/fuzz/corpus/" .. h
                local n = count_files(corpus)
                assert.is_true(n >= 5, "corpus " .. h .. " has " .. n .. " inputs")
                local code, stdout, stderr = helpers.run({ dir .. "/" .. flavour .. "/replay-" .. h, corpus },
                                                         { timeout = 120, env = flavour == "san" and SAN_ENV or nil })
                assert.are.equal("", stderr)
                assert.are.equal(0, code)
                assert.are.equal(fmt("replayed %d inputs\n", n), stdout)
            end)
        end
    end

    it("replay fails when a harness aborts on an input", function()
        -- a harness that aborts on "boom", replayed over a corpus holding it
        local src, corpus = dir .. "/boom.c", dir .. "/boom-corpus"
        helpers.write_file(src, '#include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n'
            .. 'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)\n'
            .. '{ if (n == 4 && memcmp(d, "boom", 4) == 0) abort(); return 0; }\n')
        os.execute("mkdir -p " .. helpers.shell_quote(corpus))
        helpers.write_file(corpus .. "/a", "fine")
        local code, stdout, stderr = helpers.run({ "sh", "-c", fmt("gcc -Wall -Wextra -Werror -o %s/boom %s %s",
            dir, helpers.shell_quote(ROOT .. "/spec/fuzz/replay.c"), src) }, { timeout = 120 })
        assert.are.equal(0, code, stdout .. stderr)
        code = helpers.run({ dir .. "/boom", corpus }, { timeout = 60 })
        assert.are.equal(0, code)
        helpers.write_file(corpus .. "/b", "boom")
        code = helpers.run({ dir .. "/boom", corpus }, { timeout = 60 })
        assert.are_not.equal(0, code)
    end)
end)
