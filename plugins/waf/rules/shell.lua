-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: shell command injection (1400-1499). Commands count only after a
-- shell separator and with an argument shape, so prose ("cats; dogs") does not match.
-- Format: docs/plugins/waf.md, "Rules".
local VALUES = { "args", "arg_names", "cookies" }
-- Commands no sentence uses, and commands that are also English words (cat, more, set,
-- find...): these need an option, a path or another separator after them.
local PLAIN = [=[(?:whoami|uname|hostname|wget|curl|nc|ncat|netcat|socat|bash|sh|zsh|ksh|dash|python[23]?|perl|ruby|php|nslookup|traceroute|chmod|chown|ifconfig|ipconfig|printenv|base64|xxd|crontab|useradd|sudo|powershell|pwsh|certutil|bitsadmin|systeminfo|tasklist|wmic|netstat|telnet|pkill|rm)]=]
local WORDS = [=[(?:cat|tac|head|tail|more|less|ls|id|echo|printf|ping|dig|host|cp|mv|touch|mkdir|ps|kill|sleep|env|set|export|od|find|grep|awk|sed|tar|passwd|su|cmd|net|reg|type|dir|ver|lua|node|fetch|ip)]=]
local PATHS = [=[(?:(?:/usr(?:/local)?)?/s?bin/)?]=]
local CMDS = [=[(?:cat|ls|id|whoami|uname|wget|curl|nc|bash|sh|echo|ping|nslookup|sleep|perl|python|php|base64|hostname)]=]
rule {
  id = 1401, msg = "Shell command after a separator",
  tags = { "attack-rce", "shell" }, severity = "critical",
  targets = VALUES,
  transforms = { "urldecode", "cmdline" },
  rx = [=[(?:[;&|\x60]|\$\(|\$\{)\s*]=] .. PATHS .. PLAIN .. [=[(?:\.exe)?(?:\s+[-/.$~%*"'@\w]|\s*(?:[;&|\x60)}<>]|\$\(|$))|(?:[;|\x60]|\$\()\s*]=] .. PATHS .. WORDS
    .. [=[(?:\.exe)?(?:\s+[-/$~'"]|\s+\d+\s*(?:$|[;&|])|\s*(?:[;&|\x60)}]|\$\(|$))|&\s*]=] .. PATHS .. WORDS .. [=[(?:\.exe)?(?:\s+[-/$~]|\s*[;|\x60])]=],
}
rule {
  id = 1402, msg = "Shell variable tricks ($IFS, ${x:-y}, brace expansion)",
  tags = { "attack-rce", "shell" }, severity = "critical",
  targets = VALUES,
  transforms = { "urldecode", "cmdline" },
  rx = [=[\$\{?ifs\b|\$\{[a-z_]*:[-=?+]|\{(?:cat|ls|id|wget|curl|nc|bash|sh),[^}]*\}]=],
}
rule {
  id = 1403, msg = "Shellshock function definition",
  tags = { "attack-rce", "shellshock" }, severity = "critical",
  targets = { "headers", "args", "cookies" },
  rx = [=[\(\s*\)\s*\{\s*[^}]*;\s*\}\s*;]=],
}
rule {
  id = 1404, msg = "Reverse shell or shell invocation",
  tags = { "attack-rce", "shell" }, severity = "critical",
  targets = VALUES,
  transforms = { "urldecode", "cmdline" },
  rx = [=[/dev/(?:tcp|udp)/|\bnc(?:at)?\s+(?:-\w+\s+)*-[ec]\s|\bbash\s+-[ic]\b|\bmkfifo\s|\bsh\s+-c\s|\bpowershell(?:\.exe)?\s+-(?:e|ec|enc|encodedcommand|nop|noprofile|w|windowstyle|c|command)\b|(?:^|[\s;&|=])/bin/(?:ba|z|k|c|da)?sh\b|\bcmd(?:\.exe)?\s+/[ck]\s|\bnet\s+(?:user|localgroup)\s+\S+.*?/add\b|(?:^|[;&|])\s*echo\s+[^;&|]*?>>?\s*[/~.$]]=],
}
rule {
  id = 1405, msg = "Command substitution with a command",
  tags = { "attack-rce", "shell" }, severity = "critical",
  targets = VALUES,
  transforms = { "urldecode", "cmdline" },
  rx = [=[\$\(\s*]=] .. CMDS .. [=[\b[^)]*\)]=],
}
rule {
  id = 1406, msg = "Command in backticks",
  tags = { "attack-rce", "shell" }, severity = "warning",
  targets = VALUES,
  transforms = { "urldecode", "cmdline" },
  rx = [=[\x60\s*(?:id|whoami|uname|cat|wget|curl|nc|sleep|ping|nslookup)\b[^\x60]*\x60]=],
}
rule {
  id = 1407, msg = "Download and run",
  tags = { "attack-rce", "shell" }, severity = "critical",
  targets = VALUES,
  transforms = { "urldecode", "cmdline" },
  rx = [=[\b(?:wget|curl|fetch)\s+(?:-\S+\s+)*(?:https?|ftp)://\S+.*?(?:\||;|&&|-o\s|-O\s|>)]=],
}
