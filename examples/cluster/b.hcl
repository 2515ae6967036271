# Node b of a three-node chat room on one machine (README: "A chat room
# across nodes"). Start all three, each in its own terminal:
#
#   bin/superd run -config examples/cluster/a.hcl
#   bin/superd run -config examples/cluster/b.hcl
#   bin/superd run -config examples/cluster/c.hcl
#
# then talk: nc -C 127.0.0.1 8124 (node a), 8125 (b), 8126 (c) (or telnet:
# chat's lines end with CRLF, which a plain nc does not send).

metrics {
  address = "127.0.0.1:9466"
}

cluster {
  node = "b"
  nats {
    listen         = "127.0.0.1:4223"          # NATS clients (nats sub 'superd.chat.>'); "" = superd only
    cluster_listen = "127.0.0.1:6223"          # where the other nodes' servers connect
    routes         = ["nats://127.0.0.1:6222", "nats://127.0.0.1:6224"]
    store_dir      = "/tmp/superd-cluster/b"   # JetStream's storage: a lasting folder in production
  }
}

service "chat" "lobby" {
  cluster  = true    # one room across every node
  name_ttl = "30s"   # how long the names of a node that died stay taken
  endpoint "tcp" { address = "127.0.0.1:8125" }
}
