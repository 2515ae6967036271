package supervisor

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// IPv6 scoped addresses (link-local fe80::/10 above all) name their
// interface: a datagram's source carries it as a scope id (the interface
// index) in sockaddr_in6, and a net.UDPAddr as its Zone (the interface
// name). A reply must carry it back, or it goes nowhere (the kernel refuses
// a link-local destination without one) or out of the wrong interface.
// zones translates both ways from a table of the machine's interfaces,
// read again only when a lookup misses (at most once a second), so the
// steady state neither allocates nor makes a system call.
var zones zoneCache

type zoneTable struct {
	byIndex map[uint32]string
	byName  map[string]uint32
}

type zoneCache struct {
	t         atomic.Pointer[zoneTable]
	mu        sync.Mutex // serialises refreshes
	refreshed time.Time
}

// name returns the interface name of a scope id: "" for 0, the index in
// decimal for an interface that is not (or no longer) there, as package
// net does.
func (z *zoneCache) name(index uint32) string {
	if index == 0 {
		return ""
	}
	if t := z.t.Load(); t != nil {
		if n, ok := t.byIndex[index]; ok {
			return n
		}
	}
	if n, ok := z.refresh().byIndex[index]; ok {
		return n
	}
	return strconv.FormatUint(uint64(index), 10)
}

// index returns the scope id of a zone: an interface name, or an index in
// decimal; 0 for "" or an unknown name.
func (z *zoneCache) index(name string) uint32 {
	if name == "" {
		return 0
	}
	if t := z.t.Load(); t != nil {
		if i, ok := t.byName[name]; ok {
			return i
		}
	}
	if i, ok := z.refresh().byName[name]; ok {
		return i
	}
	if i, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(i)
	}
	return 0
}

// refresh reads the interfaces again, unless it did less than a second
// ago, and returns the table.
func (z *zoneCache) refresh() *zoneTable {
	z.mu.Lock()
	defer z.mu.Unlock()
	t := z.t.Load()
	if t != nil && time.Since(z.refreshed) < time.Second {
		return t
	}
	ifs, err := net.Interfaces()
	if err != nil {
		if t == nil {
			t = &zoneTable{}
		}
		return t
	}
	t = &zoneTable{byIndex: make(map[uint32]string, len(ifs)), byName: make(map[string]uint32, len(ifs))}
	for _, ifi := range ifs {
		t.byIndex[uint32(ifi.Index)] = ifi.Name
		t.byName[ifi.Name] = uint32(ifi.Index)
	}
	z.t.Store(t)
	z.refreshed = time.Now()
	return t
}
