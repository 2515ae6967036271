//go:build !unix

package main

import "io"

func raiseNoFile(io.Writer) {}
