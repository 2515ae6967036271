package textwidth

import "testing"

func TestString(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want int
	}{
		{"", 0},
		{"echo", 4},
		{"日本語", 6},           // wide
		{"ＡＢ", 4},            // fullwidth
		{"ｱｲ", 2},            // halfwidth katakana
		{"e\u0301cho", 4},    // a combining acute accent takes no column
		{"\ufeffservice", 7}, // nor does a byte order mark
		{"a\u200db", 2},      // nor a zero-width joiner
		{"Grüße", 5},
	} {
		if got := String(tc.s); got != tc.want {
			t.Errorf("String(%q) = %d, want %d", tc.s, got, tc.want)
		}
	}
}
