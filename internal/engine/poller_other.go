//go:build !linux

// This file owns the stand-ins for the idle poller and the socket queries
// where epoll is not available: connections never park.

package engine

import (
	"net"
	"syscall"
)

// idlePoller is Linux-only (epoll); elsewhere connections never park and
// keep their goroutine while idle.
type idlePoller struct{}

func getPoller() *idlePoller { return nil }

func (p *idlePoller) park(c *Conn, fd int32, arm bool) bool { return false }

func (p *idlePoller) forget(c *Conn, fd int32) {}

func (p *idlePoller) unmap(c *Conn, fd int32) {}

// kernelQueueKnown: kernelHolds cannot tell here.
const kernelQueueKnown = false

// kernelHolds is unknown here: the TLS drain reads with its window.
func kernelHolds(nc net.Conn) bool { return true }

// quietAfterFIN is unknown here: graceful closes always linger.
func quietAfterFIN(rc syscall.RawConn, isUnix bool) bool { return false }
