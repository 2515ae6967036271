# Every built-in service of superd, on loopback. Run it with `make run`, then
# try: nc 127.0.0.1 7007 (echo), nc 127.0.0.1 8007 </dev/null (qotd),
# nc -C 127.0.0.1 8123 or telnet 127.0.0.1 8123 (chat: lines end with CRLF),
# echo hello | nc -q1 127.0.0.1 9009 (logfile: /tmp/superd-audit.log),
# nc 127.0.0.1 7013 </dev/null (daytime), rdate -p -o 7037 127.0.0.1 (time),
# nc 127.0.0.1 7019 | head (chargen), nc 127.0.0.1 7009 (discard),
# nc 127.0.0.1 7017 (proxy, to the echo),
# openssl s_client -connect 127.0.0.1:7443 (echo over TLS, a certificate
# made at start; each echo connection is in /tmp/superd-access.log),
# curl -s 127.0.0.1:9464/metrics | grep superd_ (the README's quick start)

metrics {
  address = "127.0.0.1:9464"
}

shutdown_timeout = "10s"

# One line per connection that ends (and per rejection), for the services
# with access_log = true; path may be "stderr" instead, format "text".
access_log {
  path   = "/tmp/superd-access.log"
  format = "json"
}

service "echo" "echo" {
  idle_timeout = "5m"
  access_log   = true
  endpoint "tcp" { address = "127.0.0.1:7007" }
  endpoint "unix" { path = "/tmp/superd-echo.sock" }
  endpoint "tls" {
    address     = "127.0.0.1:7443"
    self_signed = true
  }
}

# A proxy in front of the echo: each connection to 7017 is forwarded to
# 7007 (the list is tried in order; here the first has nothing listening).
# Add send_proxy_protocol = "v1" and the echo sends back the PROXY header
# superd wrote before your bytes.
service "proxy" "front" {
  upstream        = ["127.0.0.1:7006", "127.0.0.1:7007"]
  connect_timeout = "2s"
  endpoint "tcp" { address = "127.0.0.1:7017" }
}

service "qotd" "apple" {
  quote = "An apple a day keeps the doctor away"
  endpoint "tcp" { address = "127.0.0.1:8007" }
}

service "qotd" "proverbs" {
  quotes = [
    "A journey of a thousand miles begins with a single step.",
    "Fortune favours the bold.",
  ]
  rate_limit_per_ip {
    rate  = 5
    burst = 10
  }
  endpoint "tcp" { address = "127.0.0.1:8017" }
}

service "chat" "lobby" {
  max_connections = 1000
  endpoint "tcp" { address = "127.0.0.1:8123" }
  endpoint "tls" {
    address     = "127.0.0.1:8443"
    self_signed = true
  }
}

service "logfile" "audit" {
  path = "/tmp/superd-audit.log"
  endpoint "tcp" { address = "127.0.0.1:9009" }
}

# A program per connection, inetd style: /bin/cat makes an echo service
# (try: echo hi | nc -q1 127.0.0.1 7079); the environment shows what a
# program learns about its connection (nc 127.0.0.1 7080).
service "exec" "cat" {
  command         = ["/bin/cat"]
  max_connections = 64
  endpoint "tcp" { address = "127.0.0.1:7079" }
}

service "exec" "env" {
  command = ["/usr/bin/env"]
  env     = { GREETING = "hello from superd" }
  endpoint "tcp" { address = "127.0.0.1:7080" }
}

# The small services of RFC 863, 864, 867 and 868 (the well-known ports 9,
# 19, 13 and 37 plus 7000, so no root is needed).
service "discard" "discard" {
  idle_timeout = "5m"
  endpoint "tcp" { address = "127.0.0.1:7009" }
}

service "chargen" "chargen" {
  endpoint "tcp" { address = "127.0.0.1:7019" }
}

service "daytime" "daytime" {
  endpoint "tcp" { address = "127.0.0.1:7013" }
}

service "time" "time" {
  endpoint "tcp" { address = "127.0.0.1:7037" }
}
