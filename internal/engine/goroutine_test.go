package engine

import (
	"sync"
	"testing"
)

// curG is stable within a goroutine and differs between goroutines alive at
// the same time, which is all tellProducerLocked asks of it.
func TestCurGIdentifiesTheGoroutine(t *testing.T) {
	me := curG()
	if me == 0 || curG() != me {
		t.Fatalf("curG() = %#x, then %#x", me, curG())
	}
	const n = 8
	ids := make([]uintptr, n)
	var started, done sync.WaitGroup
	release := make(chan struct{})
	for i := range n {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			ids[i] = curG()
			started.Done()
			<-release // all n alive at once
			if curG() != ids[i] {
				t.Errorf("goroutine %d: curG changed", i)
			}
		}()
	}
	started.Wait()
	close(release)
	done.Wait()
	seen := map[uintptr]bool{me: true}
	for i, id := range ids {
		if id == 0 || seen[id] {
			t.Errorf("goroutine %d: curG() = %#x, zero or shared", i, id)
		}
		seen[id] = true
	}
}
