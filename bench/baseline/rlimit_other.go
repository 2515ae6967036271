//go:build !unix

package main

func raiseNoFile() {}
