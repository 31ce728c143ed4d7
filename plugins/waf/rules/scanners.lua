-- luacheck: read globals rule (the rule loader gives it: docs/plugins/waf.md, "Rules")
-- waf default rules: scanners and bots (1100-1199): tools that announce themselves in
-- their User-Agent or headers. Format: docs/plugins/waf.md, "Rules".
rule {
  id = 1101, msg = "Security scanner User-Agent",
  tags = { "scanner" }, severity = "critical",
  targets = { "headers:user-agent" },
  pm = { "sqlmap", "nikto", "nmap scripting engine", "nmap nse", "masscan", "zgrab",
         "nuclei", "acunetix", "netsparker", "invicti", "w3af", "dirbuster", "gobuster",
         "dirb/", "wfuzz", "ffuf", "fuzz faster u fool", "hydra", "havij", "arachni", "openvas", "nessus",
         "commix", "jaeles", "xsstrike", "whatweb", "wpscan", "joomscan", "zmeu", "morfeus",
         "paros/", "webinspect", "appscan", "burp collaborator", "fimap", "sqlninja",
         "bsqlbf", "pangolin", "struts-pwn", "log4j-scan", "interactsh", "feroxbuster",
         "skipfish", "grabber", "nstealth", "vega/", "zap/", "owasp zap", "metasploit" },
}
rule {
  id = 1102, msg = "Security scanner header",
  tags = { "scanner" }, severity = "critical",
  targets = { "header_names" },
  pm = { "acunetix-product", "acunetix-scanning-agreement", "x-wipp", "x-scan-memo",
         "x-request-memo", "x-scanner", "x-zap-scan" },
}
rule {
  id = 1103, msg = "Scripted HTTP client User-Agent",
  tags = { "scanner", "bot" }, severity = "warning", paranoia = 2,
  targets = { "headers:user-agent" },
  rx = [=[(?i)^(?:python-requests|python-urllib|curl/|wget/|go-http-client|libwww-perl|java/|scrapy|okhttp|aiohttp|httpclient|mechanize|php/)]=],
}
