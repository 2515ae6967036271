package testkit

import "sync"

// Repeat calls f again and again in each of n goroutines, until f returns
// false or stop is called: the load a test keeps up while something else
// happens (writers on a connection that is ending, clients through a
// reload). stop ends the calls and waits for the goroutines; it may be
// called more than once.
func Repeat(n int, f func() bool) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if !f() {
					return
				}
			}
		}()
	}
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}
