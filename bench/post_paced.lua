-- wrk script: POST /sales/ like post_sale.lua, but paced to RATE requests/s in total
-- (each of the THREADS threads sends RATE/THREADS a second on evenly spaced slots; a slot
-- missed because every connection was busy is not made up later by more than 100 ms).
local items = tonumber(os.getenv("ITEMS") or "50")
local stores = tonumber(os.getenv("STORES") or "50")
local rate = tonumber(os.getenv("RATE") or "1000")
local threads = tonumber(os.getenv("THREADS") or "2")
local interval_ms = threads * 1000 / rate
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local next_slot = nil
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
delay = function()
  local now = now_ms()
  if next_slot == nil or next_slot < now - 100 then next_slot = now end
  next_slot = next_slot + interval_ms
  local wait = next_slot - now
  if wait < 0 then return 0 end
  return wait
end
request = function()
  return wrk.format(nil, "/sales/", nil,
    string.format('{"item_id": %d, "store_id": %d}', math.random(1, items), math.random(1, stores)))
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
