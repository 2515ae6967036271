# Two names on one port, each with its own certificate, chosen by the name
# the client asks for (SNI). Run it with `make run-sni`, which writes the
# two self-signed certificates first (go run ./examples/selfsigned -dir
# /tmp/superd-tls one.localhost two.localhost), then try:
#
#   openssl s_client -connect 127.0.0.1:7444 -servername two.localhost
#
# (subject CN=two.localhost); -servername one.localhost, or -noservername,
# gets the first block's, the default. Renew the files in place and send
# SIGHUP: new handshakes get the new certificates, open connections are not
# touched. Each connection is written to the access log
# (/tmp/superd-sni-access.log) with its TLS version and the name it asked
# for. It runs beside `make run` (its own ports).

metrics {
  address = "127.0.0.1:9469"
}

access_log {
  path   = "/tmp/superd-sni-access.log"
  format = "json"
}

service "echo" "names" {
  access_log = true
  endpoint "tls" {
    address = "127.0.0.1:7444"
    certificate {
      cert_file = "/tmp/superd-tls/one.localhost.crt"
      key_file  = "/tmp/superd-tls/one.localhost.key"
    }
    certificate {
      cert_file = "/tmp/superd-tls/two.localhost.crt"
      key_file  = "/tmp/superd-tls/two.localhost.key"
    }
  }
}
