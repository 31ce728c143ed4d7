-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: Java, Log4Shell-style lookups, OGNL/EL, deserialization (1600-1699).
-- Format: docs/plugins/waf.md, "Rules".
-- The text chain most rules share (one Hyperscan scan per value for all of them):
-- decoded (three times: double-encoding is an evasion), entities, lower case, comments and
-- whitespace runs to one space.
local TEXT = { "urldecode", "urldecode", "urldecode", "html_decode", "lowercase", "replace_comments", "compress_ws" }
local EVERYWHERE = { "args", "arg_names", "cookies", "cookie_names", "headers", "path" }
rule {
  id = 1601, msg = "Log4Shell-style lookup (${jndi:...}, ${lower:...}, ${::-x})",
  tags = { "attack-java", "log4shell" }, severity = "critical",
  targets = EVERYWHERE,
  transforms = TEXT,
  rx = [=[\$\{\s*(?:[^}]*(?:jndi|::-|\$\{)|(?:lower|upper|env|sys|java|date|main|ctx|k8s|docker|spring|base64|bundle|web|log4j|sd|map|marker|event)\s*:)]=],
}
rule {
  id = 1602, msg = "JNDI lookup",
  tags = { "attack-java", "log4shell" }, severity = "critical",
  targets = EVERYWHERE,
  transforms = TEXT,
  rx = [=[jndi\s*:\s*(?:ldaps?|rmi|dns|iiop|corba|nds|nis|https?)\b]=],
}
rule {
  id = 1603, msg = "Java runtime or class-loader access",
  tags = { "attack-java" }, severity = "critical",
  targets = EVERYWHERE,
  transforms = TEXT,
  rx = [=[java\.lang\.(?:runtime|processbuilder|system|reflect)|getruntime\s*\(\s*\)\s*\.\s*exec|\bclass\.(?:module\.)?classloader\b|new\s+java\.|javax\.script|\bscriptenginemanager\b|t\(java\.lang]=],
}
rule {
  id = 1604, msg = "Java serialized object",
  tags = { "attack-java", "deserialization" }, severity = "critical",
  targets = { "args", "cookies", "headers", "body" },
  rx = [=[rO0AB|\xac\xed\x00\x05|(?i:aced0005)]=],
}
rule {
  id = 1605, msg = "OGNL or expression-language injection",
  tags = { "attack-java", "ognl" }, severity = "critical",
  targets = EVERYWHERE,
  transforms = TEXT,
  rx = [=[%\{[^}]*(?:#|@java|\.getclass|runtime|#_memberaccess)|#_memberaccess|@ognl\.|#context\[|\(#[a-z_]+=|\$\{[^}]*(?:\.getclass\(|runtime|processbuilder|\.forname\()]=],
}
