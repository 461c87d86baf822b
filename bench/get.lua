-- wrk script: GET the URL given on the command line (reports); only adds the summary line.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
