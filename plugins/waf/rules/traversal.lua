-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: path traversal and local file access (1200-1299).
-- Format: docs/plugins/waf.md, "Rules".
-- The text chain most rules share (one Hyperscan scan per value for all of them):
-- decoded (three times: double-encoding is an evasion), entities, lower case, comments and
-- whitespace runs to one space.
local TEXT = { "urldecode", "urldecode", "urldecode", "html_decode", "lowercase", "replace_comments", "compress_ws" }
local VALUES = { "args", "arg_names", "cookies", "files" }
rule {
  id = 1201, msg = "Path traversal (../)",
  tags = { "attack-lfi", "traversal" }, severity = "critical",
  targets = { "path", "args", "arg_names", "cookies", "files", "headers:referer" },
  transforms = TEXT,
  rx = [=[(?:^|[\\/])\.\.+[\\/;]|[\\/]\.\.+$|\.\.[\\/]\.\.|(?:\xc0\xae|\.)(?:\xc0\xae|\.)(?:\xc0\xaf|\xc1\x9c)]=],
}
rule {
  id = 1202, msg = "Access to a sensitive file",
  tags = { "attack-lfi" }, severity = "critical",
  targets = { "path", "args", "cookies", "files" },
  transforms = { "urldecode", "lowercase", "normalize_path" },
  rx = [=[(?:^|/)(?:etc/(?:passwd|shadow|group|hosts|issue|crontab|sudoers|master\.passwd)|proc/(?:self|\d+)/(?:environ|cmdline|fd|maps|mem)|(?:windows|winnt)/(?:win\.ini|system32)|boot\.ini|\.htaccess|\.htpasswd|\.git/(?:config|head|index)|\.svn/entries|\.env(?:$|\.)|web\.config|wp-config\.php|\.ssh/(?:id_[rd]sa|authorized_keys)|\.aws/credentials|\.bash_history)]=],
}
rule {
  id = 1203, msg = "Encoded path traversal",
  tags = { "attack-lfi", "traversal" }, severity = "critical",
  targets = { "uri", "body" },
  rx = [=[(?i)(?:%2e|%c0%ae|%e0%80%ae|%u002e|%uff0e|\.)(?:%2e|%c0%ae|%e0%80%ae|%u002e|%uff0e)(?:%2f|%5c|%c0%af|%c1%9c|%u2215|%u2216|/|\\)|%2e\.(?:/|\\|%2f|%5c)|\.\.;/]=],
}
rule {
  id = 1204, msg = "Windows path to a system directory",
  tags = { "attack-lfi" }, severity = "critical",
  targets = VALUES,
  transforms = TEXT,
  rx = [=[\b[c-e]:\\(?:windows|winnt|boot\.ini|inetpub|users\\[^\\]+\\appdata)]=],
}
