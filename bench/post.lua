-- wrk: POST a fixed body (BODY_FILE) with JSON content type.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
-- A consumer key for key-auth routes (API_KEY), sent as OpenAI SDKs send it.
local key = os.getenv("API_KEY")
if key then wrk.headers["Authorization"] = "Bearer " .. key end
