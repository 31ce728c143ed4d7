-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: SQL injection (1700-1799). Written so that prose passes: apostrophes
-- ("it's", "O'Brien"), quotes in searches ("\"red shoes\" or boots"), the words select,
-- union, order and from in sentences. Each rule wants SQL's shape around the word: a quote
-- or bracket closing a literal, an operator, a comment, a function call.
-- Format: docs/plugins/waf.md, "Rules".
local VALUES = { "args", "arg_names", "cookies", "headers:referer", "headers:user-agent",
                 "headers:x-forwarded-for" }
-- The text chain most rules share (one Hyperscan scan per value for all of them):
-- decoded (three times: double-encoding is an evasion), entities, lower case, comments and
-- whitespace runs to one space.
local TEXT = { "urldecode", "urldecode", "urldecode", "html_decode", "lowercase", "replace_comments", "compress_ws" }
local T = TEXT
rule {
  id = 1701, msg = "SQL injection: UNION SELECT",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[\bunion(?:\s+(?:all|distinct))?\s*\(?\s*select\b|\bunion\s*\(\s*select]=],
}
rule {
  id = 1702, msg = "SQL injection: quoted tautology",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[['"\x60)]\s*(?:or|and|xor|\|\||&&)\s*\(?\s*['"\x60]?[\w.]*['"\x60]?\s*(?:=|<>|!=|<=|>=|<|>|\blike\b|\bregexp\b|\bis\b)\s*\(?\s*(?:['"\x60]|\d|null\b|true\b|false\b)]=],
}
rule {
  id = 1703, msg = "SQL injection: a literal closed, then a comment",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[['"\x60]\s*\)*\s*(?:;\s*)?(?:--(?:[\s\x00-]|$)|#\s*$|/\*)]=],
}
rule {
  id = 1704, msg = "SQL injection: stacked query",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[;\s*(?:drop\s+(?:table|database|schema|user)|truncate\s+table|alter\s+(?:table|user)|insert\s+into\s+[\w.\x60"\[\]]+\s*(?:\(|values|select)|delete\s+from\s+[\w.\x60"\[\]]+\s*(?:where|;|$)|update\s+[\w.\x60"\[\]]+\s+set\s+\w+\s*=|exec(?:ute)?\s+(?:xp_|sp_|master\.)|declare\s+@|shutdown\s*(?:--|;|$)|select\s+(?:\*|@@|\w+\s*\(|[\w,\s]+\s+from\b)|create\s+(?:table|user|function|procedure))]=],
}
rule {
  id = 1705, msg = "SQL injection: timing or data-extraction function",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[\b(?:pg_)?sleep\s*\(\s*\d+(?:\.\d+)?\s*\)|\bbenchmark\s*\(\s*\d+\s*,|\bwaitfor\s+(?:delay|time)\s+['"]|\b(?:extractvalue|updatexml|load_file|make_set|elt|exp|gtid_subset)\s*\(.*?(?:select|concat|0x|version|user|database|@@)|\binto\s+(?:out|dump)file\b|\binformation_schema\b|\bsysobjects\b|\bsyscolumns\b|\bmysql\.user\b|\bpg_(?:shadow|user|catalog)\b|\bxp_cmdshell\b|\bdbms_(?:pipe|lock|xmlgen)\b|\butl_(?:inaddr|http)\b|@@(?:version|datadir|hostname)\b|\bchar\(\s*\d+(?:\s*,\s*\d+){2,}\s*\)|\b(?:user|version|database|schema|current_user|system_user|session_user)\s*\(\s*\)\s*(?:--|#|,|\)|$|=|\s+(?:from|and|or)\b)|\bsqlite_master\b|\bconcat(?:_ws)?\s*\(\s*(?:0x[0-9a-f]+|char\(|@@|\(\s*select)]=],
}
rule {
  id = 1706, msg = "SQL injection: SELECT ... FROM after a closed literal or bracket",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[(?:['"\x60)]|\d)\s*(?:;\s*)?\(?\s*select\s+(?:[\w*@(),.'"\s]+?\s)?from\s+[\w.\x60\[\]]+|\(\s*select\s+[\w*@(),.'"\s]+?\s+from\s+[\w.\x60\[\]]+(?:\s+where\b|\s*\))]=],
}
rule {
  id = 1707, msg = "SQL injection: a literal closed, then a boolean test",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[['"\x60]\s*\)*\s*(?:and|or|xor|&&|\|\|)\s+(?:not\s+)?(?:\d+\s*(?:[=<>!]|like\b|between\b|is\b|in\s*\()|true\b|false\b|null\b|exists\s*\(|\(\s*select\b|(?:pg_)?sleep\s*\(|benchmark\s*\(|\w+\s*\(\s*\)|substr(?:ing)?\s*\(|ascii\s*\(|length\s*\(|if\s*\()]=],
}
rule {
  id = 1708, msg = "SQL injection: numeric tautology or ORDER BY probe",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[^\s*-?\d+\s*\)*\s*(?:or|and|xor|\|\||&&)\s+(?:\d+\s*(?:=|<|>|<>|!=)\s*\d+|true|false|sleep\s*\(|\(\s*select)|\border\s+by\s+\d+\s*(?:--|#|;|$|/\*)|\bhaving\s+\d+\s*[=<>]\s*\d+|^\s*-?\d+\s*\)*\s*(?:--|#|/\*|;)\s*$|\band\s+\d+\s*=\s*\d+\s*(?:--|#|$)]=],
}
rule {
  id = 1709, msg = "SQL injection: MSSQL/Oracle/PostgreSQL specifics",
  tags = { "attack-sqli" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[\bopenrowset\s*\(|\bopendatasource\s*\(|\bsp_(?:oacreate|executesql|makewebtask|addlogin|configure)\b|\bcast\s*\(.*?\bas\s+(?:varchar|nvarchar|int|char|text)\b.*?\)|::(?:int|text|varchar)\b.*?(?:select|--)|\bcopy\s+\w+\s+(?:from|to)\s+program\b|\bfrom\s+dual\b]=],
}
