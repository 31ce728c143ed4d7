-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: protocol abuses (1000-1099). Requests the HTTP parser lets through
-- but no ordinary client sends. Format: docs/plugins/waf.md, "Rules".
rule {
  id = 1001, msg = "GET or HEAD request with a body (Content-Length)",
  tags = { "protocol", "body-on-get" }, severity = "critical",
  targets = { "method" }, within = { "GET", "HEAD" },
  chain = { { targets = { "headers:content-length" }, gt = 0 } },
}
rule {
  id = 1002, msg = "GET or HEAD request with a body (Transfer-Encoding)",
  tags = { "protocol", "body-on-get" }, severity = "critical",
  targets = { "method" }, within = { "GET", "HEAD" },
  chain = { { targets = { "&headers:transfer-encoding" }, gt = 0 } },
}
rule {
  id = 1003, msg = "Request without a Host header",
  tags = { "protocol", "missing-host" }, severity = "critical",
  targets = { "&headers:host" }, eq = 0,
}
rule {
  id = 1004, msg = "Both Content-Length and Transfer-Encoding (request smuggling)",
  tags = { "protocol", "smuggling" }, severity = "critical",
  targets = { "&headers:transfer-encoding" }, gt = 0,
  chain = { { targets = { "&headers:content-length" }, gt = 0 } },
}
rule {
  id = 1005, msg = "Content-Length that is not a number",
  tags = { "protocol", "smuggling" }, severity = "critical",
  targets = { "headers:content-length" }, rx = [=[[^0-9]]=],
}
rule {
  id = 1006, msg = "Invalid percent-encoding in the path or query",
  tags = { "protocol", "bad-encoding" }, severity = "critical",
  targets = { "path", "query_string" }, validate_urlencoding = true,
}
rule {
  id = 1007, msg = "Invalid percent-encoding in a form body",
  tags = { "protocol", "bad-encoding" }, severity = "critical",
  targets = { "body" }, validate_urlencoding = true,
  chain = { { targets = { "headers:content-type" },
              begins_with = "application/x-www-form-urlencoded" } },
}
rule {
  id = 1008, msg = "NUL byte in a request value",
  tags = { "protocol", "nul-byte" }, severity = "critical",
  targets = { "args", "arg_names", "cookies", "path", "headers", "files" },
  rx = [=[\x00|%00]=],
}
rule {
  -- (and one whose values could not all be read: more than max_args, JSON nested deeper
  -- than 64; luaproxy/waf/vars.lua, State:body_errors)
  id = 1009, msg = "Request body that does not parse as its Content-Type says, or values past a limit",
  tags = { "protocol", "body-parse" }, severity = "critical",
  targets = { "&body_error" }, gt = 0,
}
rule {
  id = 1010, msg = "Invalid UTF-8 in an argument",
  tags = { "protocol", "bad-encoding" }, severity = "warning", paranoia = 2,
  targets = { "args" }, validate_utf8 = true,
}
rule {
  id = 1011, msg = "Request without a User-Agent",
  tags = { "protocol", "missing-ua" }, severity = "notice", paranoia = 2,
  targets = { "&headers:user-agent" }, eq = 0,
}
