package main

// The built-in services. Each registers its factory from init; adding a
// service to superd is adding its package here.
import (
	_ "github.com/superd-dev/superd/services/chargen"
	_ "github.com/superd-dev/superd/services/chat"
	_ "github.com/superd-dev/superd/services/daytime"
	_ "github.com/superd-dev/superd/services/discard"
	_ "github.com/superd-dev/superd/services/echo"
	_ "github.com/superd-dev/superd/services/exec"
	_ "github.com/superd-dev/superd/services/logfile"
	_ "github.com/superd-dev/superd/services/proxy"
	_ "github.com/superd-dev/superd/services/qotd"
	_ "github.com/superd-dev/superd/services/time"
)
