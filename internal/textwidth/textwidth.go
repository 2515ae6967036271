// Package textwidth measures text as a terminal shows it: how many columns
// a rune or a string takes, so that the carets under a configuration line
// and the columns of `superd status` line up whatever the text holds (wide
// East Asian characters, combining marks, a byte order mark).
package textwidth

import (
	"unicode"

	"golang.org/x/text/width"
)

// Rune is the number of terminal columns r takes: none for a combining
// mark or a format character (a byte order mark, a zero-width joiner),
// two for a wide or fullwidth East Asian character, one otherwise.
func Rune(r rune) int {
	if unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf) {
		return 0
	}
	switch width.LookupRune(r).Kind() {
	case width.EastAsianWide, width.EastAsianFullwidth:
		return 2
	}
	return 1
}

// String is the number of terminal columns s takes (the sum of its
// runes').
func String(s string) int {
	n := 0
	for _, r := range s {
		n += Rune(r)
	}
	return n
}
