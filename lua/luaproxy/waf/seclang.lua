-- SecLang reader: ModSecurity rule files (the OWASP Core Rule Set, an operator's own
-- .conf files) read into the waf engine's rule representation (luaproxy/waf/engine.lua,
-- "SecLang rules"). Docs: docs/plugins/waf.md, "The OWASP Core Rule Set".
--
-- Three steps, each reporting problems with file:line:
--   lex:    physical lines joined at a trailing backslash, comments dropped, each directive
--           split into words as Apache's config reader does (double or single quotes; inside
--           quotes only \<quote> is an escape, every other backslash stays: regexes keep \d);
--   parse:  SecRule / SecAction / SecMarker / Sec* settings into directive records
--           (variables with selectors, the operator, the action list);
--   build:  records into rules { id, phase, conds (a chain), actions } for the engine.
-- A syntax error is an error (the reload is refused: nothing of the file is used). A
-- construct the engine does not run (an operator, a transformation, a variable, an action
-- it does not know) is "unsupported": listed with file:line; the caller refuses the set or
-- logs the list (the waf plugin's `unsupported` setting), never drops it unsaid.
local ffi = require "ffi"

local byte, find, format, gsub, lower, upper, sub, match = string.byte, string.find,
  string.format, string.gsub, string.lower, string.upper, string.sub, string.match
local concat, sort = table.concat, table.sort
local type, ipairs, pairs, tonumber, tostring, error, pcall = type, ipairs, pairs, tonumber,
  tostring, error, pcall

local M = {}

local function fail(place, msg) error({ waf = true, msg = place .. ": " .. msg }, 0) end

---------------------------------------------------------------------------------------------
-- Lexing.

-- Splits one logical line into words. Returns the list, or nil, problem.
local function words(s)
  local out = {}
  local i, n = 1, #s
  while true do
    i = find(s, "%S", i)
    if not i then return out end
    local c = byte(s, i)
    if c == 34 or c == 39 then -- " or '
      local q = c
      local buf, j = {}, i + 1
      local start = j
      while true do
        if j > n then return nil, "unterminated quoted string" end
        local b = byte(s, j)
        if b == 92 and byte(s, j + 1) == q then
          buf[#buf + 1] = sub(s, start, j - 1)
          buf[#buf + 1] = string.char(q)
          j = j + 2
          start = j
        elseif b == q then
          buf[#buf + 1] = sub(s, start, j - 1)
          break
        else
          j = j + 1
        end
      end
      out[#out + 1] = concat(buf)
      i = j + 1
      if i <= n and not find(s, "^%s", i) then return nil, "text right after a closing quote" end
    else
      local e = find(s, "%s", i) or n + 1
      out[#out + 1] = sub(s, i, e - 1)
      i = e
    end
  end
end

-- The directives of a file's text: { { line = first line, words = {...} }, ... }.
function M.lex(path, text)
  local out = {}
  local buf, first = nil, nil
  local lineno = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    line = gsub(line, "\r$", "")
    local cont = sub(line, -1) == "\\"
    if cont then line = sub(line, 1, -2) end
    if buf then
      buf[#buf + 1] = line
    elseif find(line, "^%s*#") or not find(line, "%S") then
      -- a comment or a blank line (a comment's trailing backslash continues nothing)
      cont = false
    else
      buf, first = { line }, lineno
    end
    if buf and not cont then
      local w, err = words(concat(buf))
      if not w then fail(format("%s:%d", path, first), err) end
      -- (lines: the physical lines, so a bad token can be named by its own: line_of)
      out[#out + 1] = { line = first, words = w, lines = buf }
      buf = nil
    end
  end
  if buf then fail(format("%s:%d", path, first), "the file ends inside a continued line") end
  return out
end

---------------------------------------------------------------------------------------------
-- Variables.

-- ModSecurity variable -> the engine's collections (luaproxy/waf/vars.lua names, or the
-- engine's own: tx, matched_var, ...). `false`: known, not run here (listed as unsupported
-- with the reason).
M.VARS = {
  ARGS = { "query_args", "body_args" }, ARGS_GET = { "query_args" }, ARGS_POST = { "body_args" },
  ARGS_NAMES = { "query_arg_names", "body_arg_names" }, ARGS_GET_NAMES = { "query_arg_names" },
  ARGS_POST_NAMES = { "body_arg_names" }, ARGS_COMBINED_SIZE = { "args_combined_size" },
  REQUEST_HEADERS = { "headers" }, REQUEST_HEADERS_NAMES = { "header_names" },
  REQUEST_COOKIES = { "cookies" }, REQUEST_COOKIES_NAMES = { "cookie_names" },
  REQUEST_FILENAME = { "path" }, REQUEST_BASENAME = { "basename" }, REQUEST_URI = { "uri" },
  REQUEST_URI_RAW = { "uri" }, REQUEST_LINE = { "request_line" },
  REQUEST_METHOD = { "method" }, REQUEST_PROTOCOL = { "protocol" },
  QUERY_STRING = { "query_string" }, REQUEST_BODY = { "body" },
  REQUEST_BODY_LENGTH = { "body_length" }, FILES = { "files" }, FILES_NAMES = { "files_names" },
  FILES_COMBINED_SIZE = { "files_combined_size" }, REMOTE_ADDR = { "remote_addr" },
  REQBODY_PROCESSOR = { "reqbody_processor" }, REQBODY_ERROR = { "body_error_flag" },
  REQBODY_ERROR_MSG = { "body_error" },
  MULTIPART_PART_HEADERS = { "multipart_part_headers" },
  MULTIPART_STRICT_ERROR = { "body_error_flag" }, UNIQUE_ID = { "unique_id" },
  DURATION = { "duration" },
  TX = { "tx" }, MATCHED_VAR = { "matched_var" }, MATCHED_VARS = { "matched_vars" },
  MATCHED_VAR_NAME = { "matched_var_name" }, MATCHED_VARS_NAMES = { "matched_vars_names" },
  XML = { "xml" }, IP = false, GLOBAL = false, SESSION = false, USER = false, RESOURCE = false,
  GEO = false, RESPONSE_BODY = false, RESPONSE_HEADERS = false, RESPONSE_STATUS = false,
  RESPONSE_HEADERS_NAMES = false, RESPONSE_PROTOCOL = false,
}
M.VAR_WHY = {
  IP = "persistent collections (initcol) are not kept", GLOBAL = "persistent collections are not kept",
  SESSION = "persistent collections are not kept", USER = "persistent collections are not kept",
  RESOURCE = "persistent collections are not kept", GEO = "no GeoIP database",
  RESPONSE_BODY = "responses are not inspected", RESPONSE_HEADERS = "responses are not inspected",
  RESPONSE_STATUS = "responses are not inspected", RESPONSE_HEADERS_NAMES = "responses are not inspected",
  RESPONSE_PROTOCOL = "responses are not inspected",
}

-- Splits a variable list at | outside /regex/ selectors.
local function split_vars(s)
  local out, i, n, start = {}, 1, #s, 1
  while i <= n do
    local c = byte(s, i)
    if c == 124 then -- |
      out[#out + 1] = sub(s, start, i - 1)
      start = i + 1
      i = i + 1
    elseif c == 58 and (byte(s, i + 1) == 47 or (byte(s, i + 1) == 39 and byte(s, i + 2) == 47))
      and not find(sub(s, start, i - 1), "^[!&]*[Xx][Mm][Ll]$") then
      -- :/regex/ or :'/regex/': up to the closing unescaped slash (XML:/* is an XPath)
      local j = i + (byte(s, i + 1) == 39 and 3 or 2)
      while j <= n and byte(s, j) ~= 47 do
        if byte(s, j) == 92 then j = j + 1 end
        j = j + 1
      end
      i = j + 1
    else
      i = i + 1
    end
  end
  out[#out + 1] = sub(s, start)
  return out
end

-- One variable: { coll = MODSEC NAME, key = lower name | nil, keyrx = regex | nil,
-- count = bool, skip = bool }.
local function parse_var(place, s)
  local v = { count = false, skip = false }
  if sub(s, 1, 1) == "!" then v.skip, s = true, sub(s, 2) end
  if sub(s, 1, 1) == "&" then v.count, s = true, sub(s, 2) end
  local name, sel = match(s, "^([%a_]+):(.*)$")
  if not name then name = match(s, "^[%a_]+$") end
  if not name then fail(place, format("bad variable %q", s)) end
  name = upper(name)
  if sel then
    if sub(sel, 1, 1) == "'" and sub(sel, -1) == "'" then sel = sub(sel, 2, -2) end
    if name ~= "XML" and #sel >= 2 and sub(sel, 1, 1) == "/" and sub(sel, -1) == "/" then
      v.keyrx = sub(sel, 2, -2)
    elseif sel == "" then
      fail(place, format("variable %q: empty selector", s))
    else
      v.key = lower(sel)
    end
  end
  if v.skip and not sel then fail(place, format("variable %q: ! needs a selector", s)) end
  v.name = name
  return v
end
M.parse_var = parse_var

---------------------------------------------------------------------------------------------
-- Actions.

-- Splits an action list at commas outside single quotes; returns { { name, value }, ... }.
local function split_actions(place, s)
  local out = {}
  local i, n = 1, #s
  local buf, inq = {}, false
  local function flush()
    local a = match(concat(buf), "^%s*(.-)%s*$")
    buf = {}
    if a == "" then return end
    local name, value = match(a, "^([%w_]+)%s*:%s*(.*)$")
    if not name then
      name = a
      if not find(name, "^[%w_]+$") then fail(place, format("bad action %q", a)) end
    end
    if value and sub(value, 1, 1) == "'" then
      if sub(value, -1) ~= "'" or #value < 2 then fail(place, format("action %s: unterminated quote", name)) end
      value = gsub(sub(value, 2, -2), "\\'", "'")
    end
    out[#out + 1] = { lower(name), value }
  end
  while i <= n do
    local c = sub(s, i, i)
    if c == "\\" and inq and sub(s, i + 1, i + 1) == "'" then
      buf[#buf + 1] = "\\'"
      i = i + 2
    else
      if c == "'" then inq = not inq end
      if c == "," and not inq then flush() else buf[#buf + 1] = c end
      i = i + 1
    end
  end
  if inq then fail(place, "unterminated quote in the action list") end
  flush()
  return out
end
M.split_actions = split_actions

-- Macro text "%{tx.a} b": a list of parts (strings, or { coll =, key = }), or the string
-- itself when it has none.
local function macro(s)
  if not s or not find(s, "%{", 1, true) then return s end
  local parts, pos = {}, 1
  while true do
    local a, b, inner = find(s, "%%{([^}]*)}", pos)
    if not a then break end
    if a > pos then parts[#parts + 1] = sub(s, pos, a - 1) end
    local coll, key = match(inner, "^([%w_]+)[.:](.+)$")
    parts[#parts + 1] = { coll = upper(coll or inner), key = key and lower(key) }
    pos = b + 1
  end
  if pos <= #s then parts[#parts + 1] = sub(s, pos) end
  parts.macro = true
  return parts
end
M.macro = macro

-- Transformations: ModSecurity name (lower case) -> the engine's (luaproxy/waf/transforms).
M.TRANSFORMS = {
  lowercase = "lowercase", uppercase = "uppercase", urldecodeuni = "urldecode",
  urldecode = "urldecode", htmlentitydecode = "html_decode", jsdecode = "js_decode",
  cssdecode = "css_decode", cmdline = "cmdline_modsec", compresswhitespace = "compress_ws",
  removewhitespace = "remove_ws", removenulls = "remove_nulls", replacenulls = "replace_nulls",
  replacecomments = "replace_comments", removecomments = "remove_comments",
  removecommentschar = "remove_comments_char",
  normalisepath = "normalize_path_posix", normalizepath = "normalize_path_posix",
  normalisepathwin = "normalize_path", normalizepathwin = "normalize_path",
  base64decode = "base64_decode", base64decodeext = "base64_decode",
  hexdecode = "hex_decode", hexencode = "hex_encode", utf8tounicode = "utf8_to_unicode",
  length = "length", sha1 = "sha1", escapeseqdecode = "escape_seq_decode",
  trim = "trim", trimleft = "trim_left", trimright = "trim_right",
}

-- Operators: ModSecurity name (lower case) -> the engine's, with how the argument is read.
M.OPERATORS = {
  rx = "rx", pm = "pm", pmfromfile = "pmf", pmf = "pmf", streq = "streq", contains = "contains",
  containsword = "contains_word", beginswith = "begins_with", endswith = "ends_with",
  within = "within_str", eq = "eq", ge = "ge", gt = "gt", le = "le", lt = "lt",
  validatebyterange = "byte_range", validateurlencoding = "validate_urlencoding",
  validateutf8encoding = "validate_utf8", ipmatch = "ip_match", ipmatchfromfile = "ip_matchf",
  ipmatchf = "ip_matchf", detectsqli = "detect_sqli", detectxss = "detect_xss",
  unconditionalmatch = "always", nomatch = "never", strmatch = "contains",
}

-- Actions that change nothing here, and why (docs/plugins/waf.md lists them).
M.IGNORED_ACTIONS = {
  log = "the plugin logs every decision", nolog = "rules with nolog are not listed in the log",
  auditlog = "no audit log: decisions are logged", noauditlog = "no audit log",
  ver = "metadata", rev = "metadata", accuracy = "metadata", maturity = "metadata",
  expirevar = "persistent collections are not kept", initcol = "persistent collections are not kept",
  setuid = "persistent collections are not kept", setsid = "persistent collections are not kept",
  sanitisematched = "excerpts are always sanitised and short",
  sanitisearg = "excerpts are always sanitised and short",
  sanitisematchedbytes = "excerpts are always sanitised and short",
}
M.IGNORED_CTL = {
  auditlogparts = "no audit log", auditengine = "no audit log",
  forcerequestbodyvariable = "REQUEST_BODY is always filled when the body is read",
  debugloglevel = "no debug log",
}
M.IGNORED_DIRECTIVES = {
  SecRequestBodyAccess = "the plugin reads the body when a rule needs it (body_limit)",
  SecRequestBodyLimit = "the plugin's body_limit", SecRequestBodyNoFilesLimit = "the plugin's body_limit",
  SecRequestBodyInMemoryLimit = "bodies are held in memory up to body_limit",
  SecRequestBodyLimitAction = "the plugin's body_over_limit",
  SecResponseBodyAccess = "responses are not inspected", SecResponseBodyMimeType = "responses are not inspected",
  SecResponseBodyLimit = "responses are not inspected", SecResponseBodyLimitAction = "responses are not inspected",
  SecAuditEngine = "no audit log", SecAuditLog = "no audit log", SecAuditLogParts = "no audit log",
  SecAuditLogType = "no audit log", SecAuditLogStorageDir = "no audit log", SecAuditLogFormat = "no audit log",
  SecAuditLogRelevantStatus = "no audit log", SecAuditLogDirMode = "no audit log", SecAuditLogFileMode = "no audit log",
  SecDebugLog = "no debug log", SecDebugLogLevel = "no debug log", SecTmpDir = "no temporary files",
  SecDataDir = "persistent collections are not kept", SecCollectionTimeout = "persistent collections are not kept",
  SecUploadDir = "uploads are not stored", SecUploadKeepFiles = "uploads are not stored",
  SecUploadFileMode = "uploads are not stored", SecUploadFileLimit = "uploads are not stored",
  SecPcreMatchLimit = "the engine's lua.regex_match_limit", SecPcreMatchLimitRecursion = "the engine's lua.regex_match_limit",
  SecArgumentSeparator = "& is the separator", SecCookieFormat = "cookies are read as RFC 6265 pairs",
  SecUnicodeMapFile = "%u escapes decode to their code point", SecStatusEngine = "no status reporting",
  SecTmpSaveUploadedFiles = "uploads are not stored", SecComponentSignature = "metadata",
  SecServerSignature = "the proxy does not rewrite the Server header", SecHttpBlKey = "@rbl is not supported",
  SecGeoLookupDb = "@geoLookup is not supported", SecXmlExternalEntity = "external entities are never loaded",
  SecArgumentsLimit = "the plugin's max_args", SecRequestBodyJsonDepthLimit = "the JSON parser's depth bound",
}

---------------------------------------------------------------------------------------------
-- ModSecurity's own names (the reference manual's, v3 and v2): a name in none of these lists
-- is no SecLang at all (a typo: `SecFooBar`, `REQUEST_HEADRES`, `@rxx`, `t:lowercasse`) and
-- refuses the file with file:line; a name in them the engine does not run is "unsupported".

local function set_of(s)
  local t = {}
  for w in s:gmatch("%S+") do t[lower(w)] = w end
  return t
end

M.MODSEC_DIRECTIVES = set_of [[
  Include IncludeOptional SecAction SecArgumentSeparator SecArgumentsLimit SecAuditEngine
  SecAuditLog SecAuditLog2 SecAuditLogDirMode SecAuditLogFileMode SecAuditLogFormat
  SecAuditLogParts SecAuditLogRelevantStatus SecAuditLogStorageDir SecAuditLogType
  SecCacheTransformations SecChrootDir SecCollectionTimeout SecComponentSignature
  SecConnEngine SecConnReadStateLimit SecConnWriteStateLimit SecContentInjection
  SecCookieFormat SecCookieV0Separator SecDataDir SecDebugLog SecDebugLogLevel
  SecDefaultAction SecDisableBackendCompression SecGeoLookupDb SecGsbLookupDb SecGuardianLog
  SecHashEngine SecHashKey SecHashMethodPm SecHashMethodRx SecHashParam SecHttpBlKey
  SecInterceptOnError SecMarker SecParseXmlIntoArgs SecPcreMatchLimit
  SecPcreMatchLimitRecursion SecReadStateLimit SecRemoteRules SecRemoteRulesFailAction
  SecRequestBodyAccess SecRequestBodyInMemoryLimit SecRequestBodyJsonDepthLimit
  SecRequestBodyLimit SecRequestBodyLimitAction SecRequestBodyNoFilesLimit
  SecResponseBodyAccess SecResponseBodyLimit SecResponseBodyLimitAction
  SecResponseBodyMimeType SecResponseBodyMimeTypesClear SecRule SecRuleEngine
  SecRuleInheritance SecRulePerfTime SecRuleRemoveById SecRuleRemoveByMsg SecRuleRemoveByTag
  SecRuleScript SecRuleUpdateActionById SecRuleUpdateTargetById SecRuleUpdateTargetByMsg
  SecRuleUpdateTargetByTag SecSensorId SecServerSignature SecStatusEngine
  SecStreamInBodyInspection SecStreamOutBodyInspection SecTmpDir SecTmpSaveUploadedFiles
  SecUnicodeCodePage SecUnicodeMapFile SecUploadDir SecUploadFileLimit SecUploadFileMode
  SecUploadKeepFiles SecWebAppId SecWriteStateLimit SecXmlExternalEntity
]]

M.MODSEC_VARIABLES = set_of [[
  ARGS ARGS_COMBINED_SIZE ARGS_GET ARGS_GET_NAMES ARGS_NAMES ARGS_POST ARGS_POST_NAMES
  AUTH_TYPE DURATION ENV FILES FILES_COMBINED_SIZE FILES_NAMES FILES_SIZES FILES_TMPNAMES
  FILES_TMP_CONTENT FULL_REQUEST FULL_REQUEST_LENGTH GEO GLOBAL HIGHEST_SEVERITY
  INBOUND_DATA_ERROR IP MATCHED_VAR MATCHED_VARS MATCHED_VARS_NAMES MATCHED_VAR_NAME
  MODSEC_BUILD MSC_PCRE_LIMITS_EXCEEDED MULTIPART_BOUNDARY_QUOTED MULTIPART_BOUNDARY_WHITESPACE
  MULTIPART_CRLF_LF_LINES MULTIPART_DATA_AFTER MULTIPART_DATA_BEFORE
  MULTIPART_FILE_LIMIT_EXCEEDED MULTIPART_FILENAME MULTIPART_HEADER_FOLDING
  MULTIPART_INVALID_HEADER_FOLDING MULTIPART_INVALID_PART MULTIPART_INVALID_QUOTING
  MULTIPART_LF_LINE MULTIPART_MISSING_SEMICOLON MULTIPART_NAME MULTIPART_PART_HEADERS
  MULTIPART_SEMICOLON_MISSING MULTIPART_STRICT_ERROR MULTIPART_UNMATCHED_BOUNDARY
  OUTBOUND_DATA_ERROR PATH_INFO PERF_ALL PERF_COMBINED PERF_GC PERF_LOGGING PERF_PHASE1
  PERF_PHASE2 PERF_PHASE3 PERF_PHASE4 PERF_PHASE5 PERF_RULES PERF_SREAD PERF_SWRITE
  QUERY_STRING REMOTE_ADDR REMOTE_HOST REMOTE_PORT REMOTE_USER REQBODY_ERROR
  REQBODY_ERROR_MSG REQBODY_PROCESSOR REQBODY_PROCESSOR_ERROR REQBODY_PROCESSOR_ERROR_MSG
  REQUEST_BASENAME REQUEST_BODY REQUEST_BODY_LENGTH REQUEST_COOKIES REQUEST_COOKIES_NAMES
  REQUEST_FILENAME REQUEST_HEADERS REQUEST_HEADERS_NAMES REQUEST_LINE REQUEST_METHOD
  REQUEST_PROTOCOL REQUEST_URI REQUEST_URI_RAW RESOURCE RESPONSE_BODY RESPONSE_CONTENT_LENGTH
  RESPONSE_CONTENT_TYPE RESPONSE_HEADERS RESPONSE_HEADERS_NAMES RESPONSE_PROTOCOL
  RESPONSE_STATUS RULE SCRIPT_BASENAME SCRIPT_FILENAME SCRIPT_GID SCRIPT_GROUPNAME SCRIPT_MODE
  SCRIPT_UID SCRIPT_USERNAME SDBM_DELETE_ERROR SERVER_ADDR SERVER_NAME SERVER_PORT SESSION
  SESSIONID STATUS STATUS_LINE STREAM_INPUT_BODY STREAM_OUTPUT_BODY TIME TIME_DAY TIME_EPOCH
  TIME_HOUR TIME_MIN TIME_MON TIME_SEC TIME_WDAY TIME_YEAR TX UNIQUE_ID URLENCODED_ERROR USER
  USERAGENT_IP USERID WEBAPPID WEBSERVER_ERROR_LOG XML
]]

M.MODSEC_OPERATORS = set_of [[
  beginsWith contains containsWord detectSQLi detectXSS endsWith eq fuzzyHash ge geoLookup
  gsbLookup gt inspectFile ipMatch ipMatchF ipMatchFromFile le lt noMatch pm pmf pmFromFile
  rbl rsub rx rxGlobal streq strmatch unconditionalMatch validateByteRange validateDTD
  validateHash validateSchema validateUrlEncoding validateUtf8Encoding verifyCC verifyCPF
  verifySSN verifySVNR within
]]

M.MODSEC_ACTIONS = set_of [[
  accuracy allow append auditlog block capture chain ctl deny deprecatevar drop exec expirevar
  id initcol log logdata maturity msg multiMatch noauditlog nolog pass pause phase prepend
  proxy redirect rev sanitiseArg sanitiseMatched sanitiseMatchedBytes sanitiseRequestHeader
  sanitiseResponseHeader setenv setrsc setsid setuid setvar severity skip skipAfter status t
  tag ver xmlns
]]

M.MODSEC_CTL = set_of [[
  auditEngine auditLogParts debugLogLevel forceRequestBodyVariable hashEnforcement hashEngine
  parseXmlIntoArgs requestBodyAccess requestBodyLimit requestBodyProcessor responseBodyAccess
  responseBodyLimit ruleEngine ruleRemoveById ruleRemoveByMsg ruleRemoveByTag
  ruleRemoveTargetById ruleRemoveTargetByMsg ruleRemoveTargetByTag
]]

M.MODSEC_TRANSFORMS = set_of [[
  base64Decode base64DecodeExt base64Encode cmdLine compressWhitespace cssDecode
  escapeSeqDecode hexDecode hexEncode htmlEntityDecode jsDecode length lowercase md5 none
  normalisePath normalisePathWin normalizePath normalizePathWin parityEven7bit parityOdd7bit
  parityZero7bit removeComments removeCommentsChar removeNulls removeWhitespace
  replaceComments replaceNulls sha1 sqlHexDecode trim trimLeft trimRight uppercase urlDecode
  urlDecodeUni urlEncode utf8toUnicode
]]

-- Edit distance of a and b (case folded), stopping early past `most`.
local function distance(a, b, most)
  a, b = lower(a), lower(b)
  local la, lb = #a, #b
  if math.abs(la - lb) > most then return most + 1 end
  local prev = {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur, best = { [0] = i }, i
    local ca = byte(a, i)
    for j = 1, lb do
      local cost = ca == byte(b, j) and 0 or 1
      local d = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      cur[j] = d
      if d < best then best = d end
    end
    if best > most then return most + 1 end
    prev = cur
  end
  return prev[lb]
end

-- " (did you mean X?)" for the closest name of `list` (a set_of) to `name`, or "".
function M.did_you_mean(list, name, prefix)
  local most = math.max(2, math.floor(#name / 4))
  local best, bd = nil, most + 1
  for _, real in pairs(list) do
    local d = distance(name, real, most)
    if d < bd or (d == bd and best and real < best) then best, bd = real, d end
  end
  return best and format(" (did you mean %s%s?)", prefix or "", best) or ""
end

-- The directive Reader:file reads (its place, path, first line and physical lines), so that
-- a bad name in a continued directive is named by the line it is on.
local cur

-- place, or the place of the physical line of the directive at `place` holding token (case
-- ignored: names are read so), when the directive spans several.
local function line_of(place, token)
  if not cur or place ~= cur.place or #cur.lines < 2 then return place end
  token = lower(token)
  for k, l in ipairs(cur.lines) do
    if find(lower(l), token, 1, true) then return format("%s:%d", cur.path, cur.first + k - 1) end
  end
  return place
end

-- Refuses a name that is not ModSecurity's: "unknown <kind> <name> (did you mean ...?)", at
-- the physical line holding it. where: after the name (" in a macro").
local function unknown(place, list, kind, name, prefix, where)
  fail(line_of(place, (prefix or "") .. name), format("unknown %s %s%s%s%s", kind, prefix or "", name,
    where or "", M.did_you_mean(list, name, prefix)))
end

-- A macro's (M.macro's) collections checked as a target's variables are: a typo
-- (%{REQUEST_HEADRES.host}) is refused, not expanded to nothing at every request.
local function check_macro(place, m)
  if type(m) ~= "table" or not m.macro then return m end
  for _, part in ipairs(m) do
    if type(part) == "table" and not M.MODSEC_VARIABLES[lower(part.coll)] then
      unknown(place, M.MODSEC_VARIABLES, "variable", part.coll, nil, " in a macro")
    end
  end
  return m
end

---------------------------------------------------------------------------------------------
-- Files.

ffi.cdef [[
typedef struct __dirstream DIR;
DIR *opendir(const char *name);
int closedir(DIR *dirp);
struct lp_waf_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen; unsigned char d_type; char d_name[256]; };
struct lp_waf_dirent *readdir(DIR *dirp);
]]

-- Names in directory `dir` (sorted), or nil, problem.
function M.list_dir(dir)
  local d = ffi.C.opendir(dir)
  if d == nil then return nil, "cannot open directory " .. dir end
  local out = {}
  while true do
    local e = ffi.C.readdir(d)
    if e == nil then break end
    local name = ffi.string(e.d_name)
    if name ~= "." and name ~= ".." then out[#out + 1] = name end
  end
  ffi.C.closedir(d)
  sort(out)
  return out
end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end
M.read = read

local function dirname(p) return match(p, "^(.*)/[^/]*$") or "." end

-- Glob of a path whose last component may hold * (Include rules/*.conf).
local function glob(pattern)
  if not find(pattern, "*", 1, true) then return { pattern } end
  local dir, base = dirname(pattern), match(pattern, "[^/]*$")
  local names = M.list_dir(dir)
  if not names then return {} end
  local lpat = "^" .. gsub(gsub(base, "[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"), "%*", ".*") .. "$"
  local out = {}
  for _, n in ipairs(names) do if find(n, lpat) then out[#out + 1] = dir .. "/" .. n end end
  return out
end
M.glob = glob

-- Reads a data file for @pmFromFile / @ipMatchFromFile: its non-comment lines.
local function data_lines(place, path)
  local text, err = read(path)
  if not text then fail(place, "cannot read " .. path .. ": " .. tostring(err)) end
  local out = {}
  for line in text:gmatch("[^\r\n]+") do
    line = match(line, "^%s*(.-)%s*$")
    if line ~= "" and sub(line, 1, 1) ~= "#" then out[#out + 1] = line end
  end
  return out
end

---------------------------------------------------------------------------------------------
-- Building rules.

local SEV = { emergency = 0, alert = 1, critical = 2, error = 3, warning = 4, notice = 5, info = 6, debug = 7 }
local SEV_NAME = { [0] = "emergency", "alert", "critical", "error", "warning", "notice", "info", "debug" }

-- The reader's state over all files of one rule set.
local Reader = {}
Reader.__index = Reader

function M.new_reader(opts)
  return setmetatable({
    rules = {},            -- every rule (chain starters), in file order
    markers = {},          -- marker name -> true
    items = {},            -- rules and markers in order: { rule = r } | { marker = name }
    unsupported = {},      -- "file:line: what" for constructs not run
    ignored = {},          -- "file:line: what (why)" for directives that change nothing here
    defaults = {},         -- phase -> default disruptive action (SecDefaultAction)
    removed_ids = {}, removed_tags = {}, update_target = {}, -- SecRuleRemove*/UpdateTarget*
    engine = "on", chain_open = nil, files = 0, opts = opts or {},
  }, Reader)
end

function Reader:unsupported_at(place, what)
  self.unsupported[#self.unsupported + 1] = place .. ": " .. what
end

-- Variables of a SecRule into engine targets.
function Reader:targets(place, s)
  local out = {}
  for _, tok in ipairs(split_vars(s)) do
    local v = parse_var(place, tok)
    local colls = M.VARS[v.name]
    if colls == nil and not M.MODSEC_VARIABLES[lower(v.name)] then
      unknown(place, M.MODSEC_VARIABLES, "variable", v.name)
    elseif colls == nil then
      self:unsupported_at(place, format("variable %s (not run here)", v.name))
    elseif colls == false then
      self:unsupported_at(place, format("variable %s (%s)", v.name, M.VAR_WHY[v.name] or "not supported"))
    elseif v.name == "XML" and v.key and v.key ~= "/*" and v.key ~= "//@*" then
      -- (luaproxy/waf/vars.lua's xml: the two XPath expressions CRS reads, no other)
      self:unsupported_at(place, format("variable XML:%s (XPath: only /* and //@*)", v.key))
    else
      for _, c in ipairs(colls) do
        out[#out + 1] = { coll = c, key = v.key, keyrx = v.keyrx, count = v.count, skip = v.skip, var = v.name }
      end
    end
  end
  return out
end

function Reader:operator(place, s, dir)
  local negate = false
  if sub(s, 1, 1) == "!" then negate, s = true, sub(s, 2) end
  local name, arg
  if sub(s, 1, 1) == "@" then
    name, arg = match(s, "^@(%S+)%s?(.*)$")
  else
    name, arg = "rx", s
  end
  local op = M.OPERATORS[lower(name)]
  if not op and not M.MODSEC_OPERATORS[lower(name)] then
    unknown(place, M.MODSEC_OPERATORS, "operator", name, "@")
  elseif not op then
    self:unsupported_at(place, "operator @" .. name)
    return { op = "never", negate = false, unsupported = true }
  end
  local cond = { op = op, negate = negate, rawarg = arg }
  if op == "pm" then
    local list = {}
    for w in arg:gmatch("%S+") do list[#list + 1] = w end
    if #list == 0 then fail(place, "@pm without phrases") end
    cond.arg = list
  elseif op == "pmf" or op == "ip_matchf" then
    local list = {}
    for f in arg:gmatch("%S+") do
      local p = sub(f, 1, 1) == "/" and f or dirname(dir) .. "/" .. f
      for _, l in ipairs(data_lines(place, p)) do list[#list + 1] = l end
    end
    if #list == 0 then fail(place, "@" .. name .. ": the files hold no entries") end
    cond.op = op == "pmf" and "pm" or "ip_match"
    cond.arg = list
  elseif op == "ip_match" then
    local list = {}
    for w in arg:gmatch("[^,%s]+") do list[#list + 1] = w end
    cond.arg = list
  elseif op == "byte_range" then
    local ok = {}
    for part in arg:gmatch("[^,%s]+") do
      local a, b = match(part, "^(%d+)%-(%d+)$")
      a = tonumber(a or part)
      b = tonumber(b or part)
      if not a or not b or a > 255 or b > 255 or a > b then fail(place, "@validateByteRange: bad range " .. part) end
      for x = a, b do ok[x] = true end
    end
    cond.arg = ok
  elseif op == "eq" or op == "ge" or op == "gt" or op == "le" or op == "lt" then
    local m = check_macro(place, macro(arg))
    if type(m) == "string" then
      local num = tonumber(m)
      if not num then fail(place, format("@%s: %q is not a number", name, arg)) end
      cond.arg = num
    else
      cond.arg = m
    end
  elseif op == "rx" then
    local ok, m = true, nil
    if find(arg, "%{", 1, true) then
      m = macro(arg)
      -- a "%{name...}" naming no variable is a typo, refused with its did-you-mean; one
      -- whose name no variable could have is a regex's own brace
      local word = true
      for _, part in ipairs(type(m) == "table" and m or {}) do
        if type(part) == "table" and not find(part.coll, "^[%w_]+$") then word = false end
      end
      if word then m = check_macro(place, m) else ok = false end
    end
    if not ok then
      -- a "%{" that is no macro (a regex's own brace: %{[a-z]+}): as before, listed
      self:unsupported_at(place, "@rx with %{ that is no macro in its pattern")
      return { op = "never", negate = false, unsupported = true }
    elseif m ~= nil and type(m) ~= "string" then
      -- a pattern with a macro (CRS 920480: ^%{tx.allowed_request_content_type_charset}$):
      -- expanded and compiled per request (the regex cache keeps what repeats), never
      -- prefiltered by Hyperscan; op "rxm" so that nothing taking an rx's text at load
      -- sees it
      cond.op = "rxm"
      cond.arg = m
    else
      cond.arg = arg
    end
  elseif op == "detect_sqli" or op == "detect_xss" or op == "always" or op == "never"
    or op == "validate_urlencoding" or op == "validate_utf8" then
    cond.arg = true
  else
    cond.arg = check_macro(place, macro(arg))
  end
  return cond
end

-- Parses an action list into the rule (first link) or the chain link `cond`.
function Reader:actions(place, s, r, cond, first)
  local tr = cond.transforms
  for _, a in ipairs(split_actions(place, s)) do
    local name, value = a[1], a[2]
    if name == "id" then
      if not first then fail(place, "id in a chained rule") end
      local id = tonumber(value)
      if not id or id < 1 or id % 1 ~= 0 then fail(place, "id: expected a whole number >= 1") end
      r.id = id
    elseif name == "phase" then
      if not first then fail(place, "phase in a chained rule") end
      local p = value == "request" and 2 or value == "response" and 4 or value == "logging" and 5 or tonumber(value)
      if not p or p < 1 or p > 5 then fail(place, "phase: expected 1..5") end
      r.phase = p
    elseif name == "msg" then r.msg = check_macro(place, macro(value))
    elseif name == "logdata" then r.logdata = check_macro(place, macro(value))
    elseif name == "tag" then
      r.taglist[#r.taglist + 1] = value
      r.tags[value] = true
      local pl = match(value, "^paranoia%-level/(%d)$")
      if pl then r.paranoia = tonumber(pl) end
    elseif name == "severity" then
      local sv = tonumber(value) or SEV[lower(value or "")]
      if not sv then fail(place, "severity: unknown " .. tostring(value)) end
      r.severity = SEV_NAME[sv]
    elseif name == "t" then
      local tname = lower(value or "")
      if tname == "none" then
        tr = {}
      else
        local mapped = M.TRANSFORMS[tname]
        if not mapped and not M.MODSEC_TRANSFORMS[tname] then
          unknown(place, M.MODSEC_TRANSFORMS, "transformation", tostring(value), "t:")
        elseif not mapped then
          self:unsupported_at(place, "transformation t:" .. tostring(value))
        else
          tr[#tr + 1] = mapped
        end
      end
    elseif name == "setvar" then
      local sv, err = M.parse_setvar(value)
      if not sv then fail(place, "setvar: " .. err) end
      check_macro(place, sv.key)
      check_macro(place, sv.value)
      if sv.unsupported then
        self:unsupported_at(place, "setvar on collection " .. sv.coll .. " (persistent collections are not kept)")
      else
        cond.setvars[#cond.setvars + 1] = sv
      end
    elseif name == "chain" then
      cond.chained = true
    elseif name == "skipafter" then
      r.skip_after = value
    elseif name == "skip" then
      self:unsupported_at(place, "action skip (use skipAfter)")
    elseif name == "capture" then
      cond.capture = true
    elseif name == "multimatch" then
      cond.multi = true
    elseif name == "block" or name == "deny" or name == "pass" or name == "allow" or name == "drop" then
      if not first then fail(place, name .. " in a chained rule (disruptive actions go on the chain's first rule)") end
      r.disruptive = name == "drop" and "deny" or name
    elseif name == "redirect" or name == "proxy" then
      self:unsupported_at(place, "action " .. name .. " (taken as deny)")
      r.disruptive = "deny"
    elseif name == "status" then
      r.status = tonumber(value)
      if not r.status then fail(place, "status: expected a number") end
    elseif name == "ctl" then
      local k, v = match(value or "", "^([%w_]+)=(.*)$")
      if not k then fail(place, "ctl: expected name=value") end
      local lk = lower(k)
      if lk == "ruleremovebyid" or lk == "ruleremovebytag" or lk == "ruleremovetargetbyid"
        or lk == "ruleremovetargetbytag" or lk == "requestbodyprocessor" or lk == "ruleengine"
        or lk == "requestbodyaccess" then
        local c = { kind = lk, value = v }
        if lk == "ruleremovetargetbyid" or lk == "ruleremovetargetbytag" then
          local what, var = match(v, "^([^;]+);(.+)$")
          if not what then fail(place, "ctl:" .. k .. ": expected what;VARIABLE") end
          c.value = what
          c.targets = self:targets(place, var)
        elseif lk == "ruleremovebyid" then
          local a1, b1 = match(v, "^(%d+)%-(%d+)$")
          c.lo, c.hi = tonumber(a1 or v), tonumber(b1 or v)
          if not c.lo then fail(place, "ctl:ruleRemoveById: expected an id or a range") end
        end
        cond.ctls[#cond.ctls + 1] = c
      elseif M.IGNORED_CTL[lk] then
        -- changes nothing here
      elseif not M.MODSEC_CTL[lk] then
        unknown(place, M.MODSEC_CTL, "ctl option", k, "ctl:")
      else
        self:unsupported_at(place, "ctl:" .. k)
      end
    elseif M.IGNORED_ACTIONS[name] then
      if name == "nolog" then r.nolog = true end
      if name == "log" then r.nolog = false end
    elseif M.MODSEC_ACTIONS[name] then
      self:unsupported_at(place, "action " .. M.MODSEC_ACTIONS[name])
    else
      unknown(place, M.MODSEC_ACTIONS, "action", name)
    end
  end
  cond.transforms = tr
end

-- setvar:'tx.name=+5' / '!tx.name' / 'tx.name' -> { coll, key (macro), op, value (macro) }.
function M.parse_setvar(s)
  if not s then return nil, "expected a value" end
  local del = false
  if sub(s, 1, 1) == "!" then del, s = true, sub(s, 2) end
  local lhs, rhs = match(s, "^([^=]+)=(.*)$")
  if not lhs then lhs = s end
  local coll, key = match(lhs, "^%s*([%w_]+)%.(.-)%s*$")
  if not coll then return nil, format("%q: expected collection.name", s) end
  coll = lower(coll)
  if coll ~= "tx" then return { unsupported = true, coll = coll } end
  local sv = { key = macro(lower(key)), del = del }
  if del then return sv end
  if not rhs then
    sv.op, sv.value = "=", "1"
  else
    local op = sub(rhs, 1, 1)
    if op == "+" or op == "-" then
      sv.op, sv.value = op, macro(sub(rhs, 2))
    else
      sv.op, sv.value = "=", macro(rhs)
    end
  end
  return sv
end

function Reader:new_cond(place, vars, op, dir, tr)
  local cond = self:operator(place, op, dir)
  cond.targets = vars and self:targets(place, vars) or {}
  cond.setvars, cond.ctls = {}, {}
  cond.transforms = tr
  cond.place = place
  return cond
end

local function copy(t)
  local c = {}
  for k, v in ipairs(t) do c[k] = v end
  return c
end

-- SecRule/SecAction: a rule, or the next link of an open chain.
function Reader:rule(place, vars, op, acts, dir)
  local open = self.chain_open
  if open then
    local cond = self:new_cond(place, vars, op, dir, {})
    self:actions(place, acts or "", open, cond, false)
    open.conds[#open.conds + 1] = cond
    if not cond.chained then self.chain_open = nil end
    return
  end
  local r = { msg = nil, tags = {}, taglist = {}, severity = nil, conds = {}, place = place, nolog = false }
  -- Transformations start from the phase's SecDefaultAction: none in CRS's setup.
  local cond = self:new_cond(place, vars, op, dir, {})
  self:actions(place, acts or "", r, cond, true)
  if not r.id then fail(place, "a rule without an id") end
  r.phase = r.phase or 2
  r.disruptive = r.disruptive or "pass"
  if r.disruptive == "block" then
    r.disruptive = self.defaults[r.phase] or "pass"
    r.block = true
  end
  r.conds[1] = cond
  if cond.chained then self.chain_open = r end
  self.rules[#self.rules + 1] = r
  self.items[#self.items + 1] = { rule = r }
end

local function args(place, w, n, m)
  if #w - 1 < n or #w - 1 > m then
    fail(place, format("%s takes %s argument%s, got %d", w[1], n == m and tostring(n) or n .. " to " .. m,
      m == 1 and "" or "s", #w - 1))
  end
end

-- Reads one file (and what it includes) into the reader.
function Reader:file(path, text)
  if not text then
    local err
    text, err = read(path)
    if not text then fail(path, "cannot read: " .. tostring(err)) end
  end
  self.files = self.files + 1
  for _, d in ipairs(M.lex(path, text)) do
    local place = format("%s:%d", path, d.line)
    cur = { place = place, path = path, first = d.line, lines = d.lines }
    local w = d.words
    -- directive names are case-insensitive (Apache's config reader, ModSecurity's lexer)
    local name = M.MODSEC_DIRECTIVES[lower(w[1])] or w[1]
    if self.chain_open and name ~= "SecRule" then
      fail(place, format("%s inside an open chain (the rule before says chain)", name))
    end
    if name == "SecRule" then
      args(place, w, 2, 3)
      self:rule(place, w[2], w[3], w[4], path)
    elseif name == "SecAction" then
      args(place, w, 1, 1)
      self:rule(place, nil, "@unconditionalMatch", w[2], path)
    elseif name == "SecMarker" then
      args(place, w, 1, 1)
      self.markers[w[2]] = true
      self.items[#self.items + 1] = { marker = w[2] }
    elseif name == "SecDefaultAction" then
      args(place, w, 1, 1)
      local phase, dis = 2, nil
      for _, a in ipairs(split_actions(place, w[2])) do
        if not M.MODSEC_ACTIONS[a[1]] then unknown(place, M.MODSEC_ACTIONS, "action", a[1]) end
        if a[1] == "phase" then phase = tonumber(a[2]) or (a[2] == "request" and 2) or 2
        elseif a[1] == "deny" or a[1] == "pass" or a[1] == "drop" then dis = a[1] == "drop" and "deny" or a[1]
        end
      end
      self.defaults[phase] = dis or "pass"
    elseif name == "SecRuleEngine" then
      args(place, w, 1, 1)
      local v = lower(w[2])
      if v ~= "on" and v ~= "off" and v ~= "detectiononly" then fail(place, "SecRuleEngine: On, Off or DetectionOnly") end
      self.engine, self.engine_at = v, place -- the last one read wins, as in ModSecurity
    elseif name == "SecRuleRemoveById" then
      for k = 2, #w do
        local a, b = match(w[k], "^(%d+)%-(%d+)$")
        a, b = tonumber(a or w[k]), tonumber(b or w[k])
        if not a then fail(place, "SecRuleRemoveById: bad id " .. w[k]) end
        self.removed_ids[#self.removed_ids + 1] = { a, b }
      end
    elseif name == "SecRuleRemoveByTag" or name == "SecRuleRemoveByMsg" then
      args(place, w, 1, 1)
      self.removed_tags[#self.removed_tags + 1] = { name == "SecRuleRemoveByTag" and "tag" or "msg", w[2] }
    elseif name == "SecRuleUpdateTargetById" or name == "SecRuleUpdateTargetByTag" then
      args(place, w, 2, 3)
      if w[4] then self:unsupported_at(place, name .. " with a replacement variable") end
      self.update_target[#self.update_target + 1] = {
        by = name == "SecRuleUpdateTargetById" and "id" or "tag", what = w[2],
        targets = self:targets(place, w[3]), place = place }
    elseif name == "Include" or name == "IncludeOptional" then
      args(place, w, 1, 1)
      local p = sub(w[2], 1, 1) == "/" and w[2] or dirname(path) .. "/" .. w[2]
      local files = glob(p)
      if #files == 0 or (not find(p, "*", 1, true) and not read(p)) then
        if name == "Include" then fail(place, "Include: nothing at " .. p) end
      else
        for _, f in ipairs(files) do self:file(f) end
      end
    elseif M.IGNORED_DIRECTIVES[name] then
      self.ignored[#self.ignored + 1] = format("%s: %s (%s)", place, name, M.IGNORED_DIRECTIVES[name])
    elseif M.MODSEC_DIRECTIVES[lower(name)] then
      self:unsupported_at(place, "directive " .. name)
    else
      unknown(place, M.MODSEC_DIRECTIVES, "directive", name)
    end
  end
  cur = nil
  if self.chain_open then
    fail(self.chain_open.place, "the file ends inside a chain (its last rule says chain)")
  end
end

-- Finishes the rule set: removals and target updates applied, markers checked.
-- Returns { rules, items, unsupported, ignored, engine, defaults }.
function Reader:finish()
  local function removed(r)
    for _, rg in ipairs(self.removed_ids) do if r.id >= rg[1] and r.id <= rg[2] then return true end end
    for _, t in ipairs(self.removed_tags) do
      if t[1] == "tag" then
        for _, tag in ipairs(r.taglist) do if find(tag, t[2]) then return true end end
      elseif type(r.msg) == "string" and find(r.msg, t[2]) then
        return true
      end
    end
    return false
  end
  local seen = {}
  local items = {}
  for _, it in ipairs(self.items) do
    local r = it.rule
    if r then
      if seen[r.id] then fail(r.place, format("duplicate rule id %d (also at %s)", r.id, seen[r.id])) end
      seen[r.id] = r.place
      if not removed(r) then
        for _, u in ipairs(self.update_target) do
          local hit = (u.by == "id" and tostring(r.id) == u.what)
          if u.by == "tag" then for _, tag in ipairs(r.taglist) do if find(tag, u.what) then hit = true end end end
          if hit then
            for _, t in ipairs(u.targets) do
              local tt = r.conds[1].targets
              tt[#tt + 1] = t
            end
          end
        end
        items[#items + 1] = it
      end
    else
      items[#items + 1] = it
    end
    if r and r.skip_after and not self.markers[r.skip_after] then
      fail(r.place, format("skipAfter:%s: no SecMarker of that name", r.skip_after))
    end
  end
  -- every id and tag read, removed rules' too (an exclusion naming none is a typo)
  local tags = {}
  for _, r in ipairs(self.rules) do for _, t in ipairs(r.taglist) do tags[t] = true end end
  return { items = items, unsupported = self.unsupported, ignored = self.ignored,
           engine = self.engine, engine_at = self.engine_at, files = self.files, ids = seen,
           tags = tags }
end

-- Does rule r add to an anomaly score (CRS: setvar:'tx.anomaly_score_pl1=+%{...}', 4.x
-- tx.inbound_anomaly_score_pl1, older tx.anomaly_score)?
local function scores(r)
  for _, cond in ipairs(r.conds) do
    for _, sv in ipairs(cond.setvars) do
      local key = sv.key
      if type(key) == "table" then key = key[1] end
      if sv.op == "+" and type(key) == "string" and find(key, "anomaly_score", 1, true) then
        return true
      end
    end
  end
  return false
end

-- CRS's attack and protocol rules (911-944) score through its setup (901 initialisation:
-- the scores per severity) and refuse through its evaluation (949): crs_files naming one of
-- its rule files alone scores 0 and refuses nothing. A warning naming what is missing and,
-- as the rule to look at, the first (in file order) that scores: the lowest id is mostly a
-- paranoia-level gate (942011: "@lt 1 ... skipAfter") that says nothing of scoring. Or nil.
function M.crs_incomplete(set)
  local first, setup, eval
  for id in pairs(set.ids) do
    if id >= 901000 and id <= 901999 then setup = true
    elseif id >= 949000 and id <= 949999 then eval = true
    elseif id >= 911000 and id <= 944999 and (not first or id < first) then first = id end
  end
  if not first or (setup and eval) then return nil end
  for _, it in ipairs(set.items) do
    local r = it.rule
    if r and r.id >= 911000 and r.id <= 944999 and scores(r) then
      first = r.id
      break
    end
  end
  local missing = not setup and not eval and "setup (901) and evaluation (949) rules"
    or not setup and "setup rules (901: the scores per severity)"
    or "evaluation rules (949: the refusal at the threshold)"
  return format("%s: CRS rule %d without CRS's %s: its rules score 0 and refuse nothing (name the "
    .. "CRS directory in crs, or add REQUEST-901-INITIALIZATION.conf and "
    .. "REQUEST-949-BLOCKING-EVALUATION.conf)", set.ids[first], first, missing)
end

-- The rule files of `paths` (a CRS directory: its rules/*.conf, or *.conf when there is no
-- rules/; or a .conf file), read: { { path, text }, ... }, or nil, problem.
function M.collect(paths)
  local out = {}
  for _, p in ipairs(paths) do
    local names = M.list_dir(p)
    if names then
      local dir = p
      local sub_rules = M.list_dir(p .. "/rules")
      if sub_rules then dir, names = p .. "/rules", sub_rules end
      local n = 0
      for _, name in ipairs(names) do
        if find(name, "%.conf$") then
          local path = dir .. "/" .. name
          local text, err = read(path)
          if not text then return nil, path .. ": cannot read: " .. tostring(err) end
          out[#out + 1] = { path, text }
          n = n + 1
        end
      end
      if n == 0 then return nil, p .. ": no .conf rule files in this directory" end
    else
      local text, err = read(p)
      if not text then return nil, p .. ": cannot read: " .. tostring(err) end
      out[#out + 1] = { p, text }
    end
  end
  return out
end

-- Reads rule files (M.collect's list, or paths) into a finished set (Reader:finish), or
-- nil, "file:line: problem".
function M.load(files, opts)
  if type(files[1]) == "string" then
    local err
    files, err = M.collect(files)
    if not files then return nil, err end
  end
  local rd = M.new_reader(opts)
  rd.defaults[1], rd.defaults[2] = "pass", "pass" -- CRS's setup: anomaly scoring
  local ok, err = pcall(function()
    for _, f in ipairs(files) do rd:file(f[1], f[2]) end
  end)
  cur = nil
  if not ok then return nil, type(err) == "table" and err.msg or tostring(err) end
  local fok, set = pcall(rd.finish, rd)
  if not fok then return nil, type(set) == "table" and set.msg or tostring(set) end
  return set
end

return M
