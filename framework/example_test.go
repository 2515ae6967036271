package framework_test

import (
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/superd-dev/superd/framework"
	"github.com/superd-dev/superd/framework/basic"
	"github.com/superd-dev/superd/internal/engine"
)

// serveOnce runs f on a loopback listener for one connection, sends input
// (then half-closes), and returns everything the server sent back. Real
// services are served by superd's supervisor; this is the least code that
// shows a protocol at work.
func serveOnce(f framework.Factory, input string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		p := f.BuildProtocol(nc.RemoteAddr())
		if p == nil {
			nc.Close()
			return
		}
		engine.NewConn(nc, nil).Serve(p)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	io.WriteString(c, input)
	c.(*net.TCPConn).CloseWrite()
	out, _ := io.ReadAll(c)
	wg.Wait()
	return string(out)
}

// Echo is the first protocol of the tutorial: it writes back what it
// receives.
type Echo struct{ framework.BaseProtocol }

func (e *Echo) DataReceived(data []byte) { e.Transport.Write(data) }

func Example_echo() {
	f := framework.ForProtocol(func() framework.Protocol { return new(Echo) })
	fmt.Print(serveOnce(f, "hello, world\n"))
	// Output: hello, world
}

// QOTD greets and closes: ConnectionMade is where a greeting is written,
// and LoseConnection sends everything written before closing.
type QOTD struct {
	framework.BaseProtocol
	quote string
}

func (q *QOTD) ConnectionMade(t framework.Transport) {
	t.WriteString(q.quote + "\r\n")
	t.LoseConnection()
}

// QOTDFactory holds the configuration every connection shares.
type QOTDFactory struct{ Quote string }

func (f *QOTDFactory) BuildProtocol(net.Addr) framework.Protocol {
	return &QOTD{quote: f.Quote}
}

func Example_qotd() {
	fmt.Printf("%q\n", serveOnce(&QOTDFactory{Quote: "An apple a day keeps the doctor away"}, ""))
	// Output: "An apple a day keeps the doctor away\r\n"
}

// CountingFactory shares state between connections: ConnectionMade and
// ConnectionLost keep the count of open connections in the factory.
// Callbacks of different connections run concurrently, hence the mutex.
type CountingFactory struct {
	mu   sync.Mutex
	open int
}

func (f *CountingFactory) BuildProtocol(net.Addr) framework.Protocol {
	return &CountingEcho{factory: f}
}

type CountingEcho struct {
	framework.BaseProtocol
	factory *CountingFactory
}

func (e *CountingEcho) ConnectionMade(t framework.Transport) {
	e.BaseProtocol.ConnectionMade(t)
	e.factory.mu.Lock()
	e.factory.open++
	n := e.factory.open
	e.factory.mu.Unlock()
	fmt.Fprintf(transportWriter{t}, "Welcome! There are currently %d open connections.\n", n)
}

func (e *CountingEcho) ConnectionLost(reason error) {
	e.factory.mu.Lock()
	e.factory.open--
	e.factory.mu.Unlock()
}

func (e *CountingEcho) DataReceived(data []byte) { e.Transport.Write(data) }

// transportWriter lets fmt write to a Transport.
type transportWriter struct{ t framework.Transport }

func (w transportWriter) Write(b []byte) (int, error) { w.t.Write(b); return len(b), nil }

func Example_sharedState() {
	fmt.Print(serveOnce(&CountingFactory{}, "ping\n"))
	// Output:
	// Welcome! There are currently 1 open connections.
	// ping
}

// Answer is the tutorial's LineReceiver example: a line protocol embeds
// basic.LineReceiver and handles LineReceived.
type Answer struct {
	basic.LineReceiver
}

var answers = map[string]string{"How are you?": "Fine"}

func (a *Answer) ConnectionMade(t framework.Transport) { a.Init(t, a) }

func (a *Answer) LineReceived(line []byte) {
	if ans, ok := answers[string(line)]; ok {
		a.SendLine([]byte(ans))
	} else {
		a.SendLine([]byte("I don't know what you mean"))
	}
}

func Example_lineReceiver() {
	f := framework.ForProtocol(func() framework.Protocol { return new(Answer) })
	fmt.Printf("%q\n", serveOnce(f, "How are you?\r\nWhat?\r\n"))
	// Output: "Fine\r\nI don't know what you mean\r\n"
}

// GreeterConfig is a service's configuration: its tagged fields are the
// attributes, its value in Spec.Config their defaults.
type GreeterConfig struct {
	Greeting string             `hcl:"greeting,optional" doc:"what each connection is told"`
	Repeat   int                `hcl:"repeat,optional" min:"1" max:"10" doc:"how many times"`
	Pause    framework.Duration `hcl:"pause,optional" doc:"a Go duration"`
}

func Example_configuration() {
	framework.Register(framework.Spec{
		Name:        "greeter",
		Description: "greets, then closes",
		Config:      GreeterConfig{Greeting: "hello", Repeat: 1},
		New: framework.Typed(func(env *framework.Env, cfg *GreeterConfig) (framework.Factory, error) {
			env.Log.Info("built", "greeting", cfg.Greeting) // records carry service and factory
			return framework.ForProtocol(func() framework.Protocol { return new(Echo) }), nil
		}),
	})
	spec, _ := framework.Lookup("greeter")
	for _, a := range spec.Attributes() {
		fmt.Printf("%s %s %s [%s,%s]\n", a.Name, a.Type.FriendlyName(), a.Default.GoString(), a.Min, a.Max)
	}
	// Output:
	// greeting string cty.StringVal("hello") [,]
	// repeat number cty.NumberIntVal(1) [1,10]
	// pause string cty.NilVal [,]
}
