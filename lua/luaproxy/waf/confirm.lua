-- Confirmers (issue #20): a second look, by parsing, at a CRS match that CRS's regexes make
-- on prose. A rule of a confirmed family matches a value only when its operator matches AND
-- the family's confirmer says the value is the thing the rule is about (a shell command line,
-- SQL, an ambiguous multipart file name). A confirmer only ever takes matches away, never
-- adds one; the plugin's crs_confirm lists the families that run (none: CRS raw).
--
-- Each confirmer gets the value as the request carried it (raw: before the rule's
-- transformations, which for the command-injection rules turn ";" into a space) and the
-- transformed value the operator matched; it answers true to keep the match.
local M = {}

local byte, find, gsub, lower, match, sub = string.byte, string.find, string.gsub, string.lower,
  string.match, string.sub

-- Command words that make sense with no argument at all: "| id", "; whoami". A word that
-- needs arguments (cat, echo, more) alone after a ";" is as likely prose ("cat food & more").
local STANDALONE = {}
for w in ([[id whoami uname ls pwd ps env printenv ifconfig ipconfig netstat hostname w who
  sh bash zsh ksh csh dash tcsh python python2 python3 perl ruby php node lua reboot shutdown
  halt poweroff dir ver systeminfo tasklist whoami.exe cmd cmd.exe powershell arp route
  lsof top history set]]):gmatch("%S+") do
  STANDALONE[w] = true
end

-- Commands whose only argument is commonly a number ("; sleep 5", "| ping 10"): one number
-- after them is a command line.
local NUMERIC = {}
for w in ([[sleep ping timeout usleep kill exit]]):gmatch("%S+") do NUMERIC[w] = true end

-- Other command words seen in injections: a word at a command position is read as a command
-- only when it is one of these (or a path); "see https://..." after a ";" is prose.
local COMMANDS = {}
for w in ([[cat tac more less head tail echo printf wget curl fetch nc ncat netcat telnet
  ssh scp ftp tftp rm cp mv chmod chown chgrp touch mkdir rmdir ln find locate grep egrep
  fgrep awk gawk sed xargs base64 xxd od nslookup dig host traceroute tracert nmap socat
  crontab nohup exec eval source sudo su passwd useradd kill killall pkill tar zip unzip gzip
  gunzip openssl mail sendmail uname type copy del erase start net netsh certutil bitsadmin
  reg regedit wmic mshta rundll32 regsvr32 cscript wscript schtasks taskkill attrib icacls
  java javac gcc cc make git svn busybox dd strings file stat df du mount chroot xterm
  export unset alias]]):gmatch("%S+") do
  COMMANDS[w] = true
end
for w in pairs(STANDALONE) do COMMANDS[w] = true end
for w in pairs(NUMERIC) do COMMANDS[w] = true end

-- Removes what shells drop inside a word (quotes, backslashes, cmd's caret) and turns
-- $IFS-style separators into spaces, so "c'a't${IFS}/etc/passwd" reads "cat /etc/passwd".
-- Percent-encoding is decoded first (twice at most: the rules decode it, and a cookie or a
-- JSON string carries it as sent).
local function unpercent(s)
  for _ = 1, 2 do
    if not find(s, "%%%x%x") then break end
    s = gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return s
end
M.unpercent = unpercent

local function normalize(s)
  s = lower(unpercent(s))
  s = gsub(s, "%${?ifs}?", " ")
  s = gsub(s, "[\\^]", "")
  s = gsub(s, "''", "")
  s = gsub(s, '""', "")
  -- quotes inside a word, overlapping ("c'a't"): until none is left
  local k
  repeat s, k = gsub(s, "(%w)['\"](%w)", "%1%2") until k == 0
  return s
end

-- Is one argument shell syntax rather than a prose word? Options, paths, variables,
-- redirections, globs, quotes, braces, host or file names (a dot inside), assignments.
local function shellish_arg(a)
  if find(a, "^%-") then return true end
  if find(a, "[/~%$%*%?<>{}%[%]\\\"'=@%%`|]") then return true end
  if find(a, "%w%.%w") then return true end
  return false
end

-- The argument list of a command at position i of s (up to a terminator): true when it is a
-- command line, not prose.
local function args_shellish(word, rest)
  local args = {}
  for a in rest:gmatch("%S+") do args[#args + 1] = a end
  if #args == 0 then return STANDALONE[word] == true end
  if #args == 1 and NUMERIC[word] and find(args[1], "^%d+$") then return true end
  for _, a in ipairs(args) do
    if shellish_arg(a) then return true end
  end
  return false
end

-- Command positions: the start of the value, after ; | & newline, inside $( or ` or ( or {.
-- The word there is a command when it is a path (/bin/cat) or a word followed by
-- command-line arguments (options, paths, ...), or one of STANDALONE with nothing after it.
function M.shell(raw)
  local s = normalize(raw)
  -- command substitution $(cmd) / `cmd` (not "$(5 for 2)": a price), ${...} expansion
  if find(s, "%$%(%s*[^%s%d)]") or find(s, "`%s*[%a/_][^`]*`") or find(s, "%${[^%s}]+}") then
    return true
  end
  -- brace expansion as a command line: {cat,/etc/passwd}
  if find(s, "{%s*[%w_./-]+,[^}]*}") then return true end
  local i, n = 1, #s
  while i <= n do
    -- skip separators to a command position
    local p = match(s, "^[%s;|&\n\r(){]*()", i)
    local word, after = match(s, "^([%w_./-]+)()", p)
    if not word then
      -- not a word at this position: go to the next separator
      local q = find(s, "[;|&\n\r`(]", p + 1)
      if not q then break end
      i = q
    else
      -- the rest of this simple command: up to the next terminator
      local q = find(s, "[;|&\n\r`)]", after) or n + 1
      local rest = sub(s, after, q - 1)
      local at_start = p == 1 or (p > 1 and find(sub(s, 1, p - 1), "^%s*$"))
      if find(word, "^[.~]*/") and find(word, "%a") then return true end
      word = gsub(word, "%.exe$", "")
      -- a redirection right after the word: cat</etc/passwd, ls>x
      if COMMANDS[word] and find(rest, "^%s*[<>]") then return true end
      if COMMANDS[word] and args_shellish(word, rest) then
        -- alone at the start of a value, a standalone word is a search term ("ls"), not a
        -- command line: it needs a terminator around it or arguments
        if not (at_start and rest:find("^%s*$") and q > n) then return true end
      end
      if q > n then break end
      -- the next command position starts at the terminator
      i = q
      if byte(s, i) == 96 then i = i + 1 end -- a backtick opens a command too
    end
  end
  return false
end

-- SQL matched by a regex in prose: confirmed by the SQL tokenizer (detect.sqli), which reads
-- the value as SQL in each quoting context, as libinjection does.
local detect
function M.sql(raw, v)
  detect = detect or require "luaproxy.waf.detect"
  if detect.sqli(raw) or (v ~= raw and detect.sqli(v)) then return true end
  local d = unpercent(raw)
  if d ~= raw and detect.sqli(d) then return true end
  -- CRS's SQL rules also score what breaks out of a quoted string into code in other
  -- languages: '-alert(1)-' (a quote, an operator, a call) and command substitution (`id`)
  if find(d, "['\"`]%s*[-+*/|&^]%s*[%a_$][%w_$.]*%s*%(") then return true end
  if M.shell(d) then return true end
  return false
end

-- 920120 (multipart bypass) flags ' " = in a file name because a parser that reads
-- filename='x.php' (single quotes) and one that reads filename="..." disagree on where the
-- name ends. An apostrophe inside the name ("Jane O'Neil.pdf") is unambiguous: only a
-- leading or trailing one could be read as a quote. The rule's own operator is run again on
-- the name without its inner apostrophes, so every other character it flags still counts.
function M.filename(raw, v, retest)
  local inner = gsub(v, "(.)'+(.)", "%1%2")
  inner = gsub(inner, "(.)'+(.)", "%1%2") -- overlapping apostrophes ("a'b'c")
  if inner == v then return true end
  return retest(inner)
end

-- Families: the CRS rule ids each confirmer looks at again.
M.families = {
  -- Unix and Windows command injection (REQUEST-932): prose with "; select" or "ls 430 parts"
  shell = { check = M.shell, ids = { 932100, 932105, 932106, 932110, 932115, 932130, 932150 } },
  -- SQL injection regexes that fire on English ("decision; select members ...")
  sql = { check = M.sql, ids = { 942350, 942190, 942440, 942260, 942130, 942110, 942480, 942390,
    942200, 942510, 942380, 942370, 942210, 942180, 942120 } },
  -- multipart file names with an apostrophe
  filename = { check = M.filename, ids = { 920120, 920121 } },
}

M.default = { "shell", "sql", "filename" }

-- The confirmer of rule id under the enabled families (a list of names), or nil.
function M.for_rule(id, enabled)
  for _, name in ipairs(enabled or M.default) do
    local f = M.families[name]
    if f then
      for _, x in ipairs(f.ids) do
        if x == id then return f.check, name end
      end
    end
  end
  return nil
end

return M
