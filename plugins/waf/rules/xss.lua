-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: cross-site scripting (1800-1899). Markup and script only in their own
-- syntax: a "<" in prose or maths ("a<b", "<3") and the word javascript in a sentence pass.
-- Format: docs/plugins/waf.md, "Rules".
local VALUES = { "args", "arg_names", "cookies", "headers:referer", "headers:user-agent", "files" }
-- The text chain most rules share (one Hyperscan scan per value for all of them):
-- decoded (three times: double-encoding is an evasion), entities, lower case, comments and
-- whitespace runs to one space.
local TEXT = { "urldecode", "urldecode", "urldecode", "html_decode", "lowercase", "replace_comments", "compress_ws" }
local T = TEXT
rule {
  id = 1801, msg = "XSS: script tag",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[<\s*/?\s*script\b|<\s*script[\s>/]]=],
}
rule {
  id = 1802, msg = "XSS: event handler attribute in a tag",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[<[a-z][\w:-]*[\s/][^>]*?\bon[a-z]{3,}\s*=|<[a-z][\w:-]*\s*/\s*on[a-z]{3,}\s*=]=],
}
rule {
  id = 1803, msg = "XSS: javascript: or vbscript: URL",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[(?:^|[\s"'=(`<>])(?:java|vb|live)script\s*:\s*(?:[\w$.\[\]'"`]+[(`=]|/\*|//|%0a)|\bdata:text/html\b|\bdata:image/svg\+xml]=],
}
rule {
  id = 1804, msg = "XSS: dangerous HTML element",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[<\s*(?:iframe|frame|frameset|object|embed|applet|meta|base|svg|math|isindex|xss|marquee|xml|import|template|portal)\b]=],
}
rule {
  id = 1805, msg = "XSS: dialog or eval call",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[\b(?:alert|prompt|confirm|print)\s*(?:\(\s*(?:-?\d+|['"`][^'"`]*['"`]|document\.\w+|window\.\w+|this|/[^/]*/\.source)\s*\)|`[^`]*`)|\beval\s*\(\s*(?:atob|unescape|string\.fromcharcode|location|name|['"`])|\bstring\.fromcharcode\s*\(|\bnew\s+function\s*\(|\bsettimeout\s*\(\s*['"`]|\bconstructor\s*\(\s*['"`]]=],
}
rule {
  id = 1806, msg = "XSS: DOM access typical of script injection",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[\bdocument\s*\.\s*(?:cookie|write(?:ln)?\s*\(|domain|location\s*=)|\bwindow\s*\.\s*location\s*=|\.innerhtml\s*=|\blocation\.href\s*=|\bdocument\[=['"`]cookie]=],
}
rule {
  id = 1807, msg = "XSS: style with script (expression, url(javascript))",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[\bstyle\s*=[^>]*(?:expression\s*\(|url\s*\(\s*['"]?\s*(?:javascript|vbscript|data):|behavior\s*:|-moz-binding)]=],
}
rule {
  id = 1808, msg = "XSS: link or form target with a script URL",
  tags = { "attack-xss" }, severity = "critical",
  targets = VALUES, transforms = T,
  rx = [=[<[a-z][^>]*\b(?:href|src|action|formaction|xlink:href|background|poster|srcdoc)\s*=\s*['"]?\s*(?:javascript|vbscript|data):]=],
}
