-- Fields of items decoded with cjson: a JSON null arrives as cjson.null, not nil.

local function opt(v) if v == nil or v == cjson.null then return nil end return v end
local function num(v) v = opt(v) if v == nil then return 0 end return tonumber(v) end
