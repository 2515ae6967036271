# A closing quote is missing on line 10: HCL's parser then reports every
# following line as a string split over lines; superd reports the first.
shutdown_timeout = "1s"

service "testecho" "first" {
  endpoint "tcp" { address = "127.0.0.1:0" }
}

service "testfactory" "second" {
  greeting = "hello there
  tags     = ["a", "b"]
  endpoint "tcp" { address = "127.0.0.1:0" }
}

service "testecho" "third" {
  endpoint "tcp" { address = "127.0.0.1:0" }
}
