-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: remote file inclusion (1300-1399). Format: docs/plugins/waf.md, "Rules".
-- The text chain most rules share (one Hyperscan scan per value for all of them):
-- decoded (three times: double-encoding is an evasion), entities, lower case, comments and
-- whitespace runs to one space.
local TEXT = { "urldecode", "urldecode", "urldecode", "html_decode", "lowercase", "replace_comments", "compress_ws" }
rule {
  id = 1301, msg = "Remote file inclusion: a URL to an IP address",
  tags = { "attack-rfi" }, severity = "critical",
  targets = { "args" },
  transforms = TEXT,
  rx = [=[^\s*(?:(?:ht|f)tps?|php|file|data|expect|gopher|dict|ldap|jar|phar|zip)://\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}]=],
}
rule {
  id = 1302, msg = "Remote file inclusion: a URL in an include-like parameter",
  tags = { "attack-rfi" }, severity = "critical",
  targets = { "args:include", "args:inc", "args:require", "args:file", "args:filename",
              "args:page", "args:template", "args:tpl", "args:path", "args:document",
              "args:doc", "args:folder", "args:root", "args:dir", "args:module", "args:mod",
              "args:load", "args:conf", "args:config", "args:lang", "args:layout",
              "args:view", "args:inc_file", "args:pg", "args:style", "args:show" },
  transforms = TEXT,
  rx = [=[^\s*(?:(?:ht|f)tps?|php|data|expect|zlib|glob|phar|ssh2|rar|ogg|gopher|dict|compress\.\w+)://]=],
}
rule {
  id = 1303, msg = "Remote file inclusion: a URL ending in ? (the trailing-question-mark trick)",
  tags = { "attack-rfi" }, severity = "critical",
  targets = { "args" },
  transforms = TEXT,
  rx = [=[^\s*(?:(?:ht|f)tps?)://[^\s?]+\?+\s*$|^\s*(?:(?:ht|f)tps?)://\S+\.(?:txt|php|inc|jpg|gif)\?+\s*$]=],
}
rule {
  id = 1304, msg = "PHP stream wrapper",
  tags = { "attack-rfi", "attack-php" }, severity = "critical",
  targets = { "args", "cookies", "path" },
  transforms = TEXT,
  rx = [=[(?:php://(?:filter|input|stdin|memory|temp|fd)|phar://|zip://|expect://|glob://|data://text/plain;base64|file:///)]=],
}
