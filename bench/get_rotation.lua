-- wrk script: GET the report paths in PATHS (separated by "|"), one after another on each
-- connection; "{store}" in a path becomes a random store of 1..STORES on every request.
local paths = {}
for path in string.gmatch(os.getenv("PATHS") or "/", "[^|]+") do
  table.insert(paths, path)
end
local stores = tonumber(os.getenv("STORES") or "1000")
local counter = 0
request = function()
  counter = counter + 1
  local path = paths[(counter % #paths) + 1]:gsub("{store}", tostring(math.random(1, stores)))
  return wrk.format("GET", path)
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
