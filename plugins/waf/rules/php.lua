-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: PHP injection (1500-1599). Format: docs/plugins/waf.md, "Rules".
-- The text chain most rules share (one Hyperscan scan per value for all of them):
-- decoded (three times: double-encoding is an evasion), entities, lower case, comments and
-- whitespace runs to one space.
local TEXT = { "urldecode", "urldecode", "urldecode", "html_decode", "lowercase", "replace_comments", "compress_ws" }
local VALUES = { "args", "arg_names", "cookies" }
rule {
  id = 1501, msg = "PHP opening tag",
  tags = { "attack-php" }, severity = "critical",
  targets = { "args", "cookies", "files" },
  transforms = TEXT,
  rx = [=[<\?(?:php\b|=)]=],
}
rule {
  id = 1502, msg = "PHP code-execution function call",
  tags = { "attack-php" }, severity = "critical",
  targets = VALUES,
  transforms = TEXT,
  rx = [=[\b(?:eval|assert|system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec|create_function|call_user_func(?:_array)?|file_put_contents|file_get_contents|fwrite|phpinfo|highlight_file|show_source|include|require|include_once|require_once|base64_decode|gzinflate|gzuncompress|str_rot13|unserialize|preg_replace|assert_options)\s*\(\s*(?:['"$]|[\w\\]+\s*\(|\))|\$\{\s*@?\s*(?:print|eval|system|phpinfo|assert|passthru|exec)\s*\(]=],
}
rule {
  id = 1503, msg = "PHP superglobal",
  tags = { "attack-php" }, severity = "critical",
  targets = VALUES,
  transforms = TEXT,
  rx = [=[\$_(?:get|post|request|cookie|server|files|env|session)\b|\$globals\[]=],
}
rule {
  id = 1504, msg = "PHP serialized object",
  tags = { "attack-php", "deserialization" }, severity = "critical",
  targets = { "args", "cookies" },
  transforms = TEXT,
  rx = [=[(?:^|[;{])[oc]:\d+:"[a-z_\\][\w\\]*":\d+:\{]=],
}
rule {
  id = 1505, msg = "Upload of a server-side script",
  tags = { "attack-php", "upload" }, severity = "critical",
  targets = { "files" },
  transforms = TEXT,
  rx = [=[\.(?:php\d?|phtml|phar|pht|phps|jspx?|aspx?|asmx|ashx|cer|shtml|cgi)(?:\.|\s*$|\x00)|^\s*\.(?:htaccess|user\.ini)\s*$]=],
}
