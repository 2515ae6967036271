package basic

import "bytes"

// maxRetained is the largest buffer capacity kept once a receiver's buffer
// has emptied; a bigger one (left by a long message) is released.
const maxRetained = 64 << 10

// stream holds the unparsed input of a receiver without copying more than
// necessary. The unparsed bytes are buf[r:] (owned storage, kept across
// calls and reused) followed by ext, the not yet consumed rest of the chunk
// given to the DataReceived call in progress. ext points into the caller's
// memory, so it is copied into buf (settle) before DataReceived returns.
//
// In the common case buf is empty when a chunk arrives: messages are then
// sliced straight out of the chunk and only a trailing partial message is
// copied.
//
// While a callback runs, the slices it was given may point into buf, so
// pinned forbids moving buf's bytes; appends then go after the end of buf
// or into a fresh array.
type stream struct {
	buf    []byte
	r      int
	ext    []byte
	pinned bool
}

// owned returns the unparsed bytes held in storage.
func (s *stream) owned() []byte { return s.buf[s.r:] }

// split reports whether the unparsed bytes are in two pieces: storage
// followed by the rest of the chunk.
func (s *stream) split() bool { return s.r < len(s.buf) && len(s.ext) > 0 }

// size returns the number of unparsed bytes.
func (s *stream) size() int { return len(s.buf) - s.r + len(s.ext) }

// front returns the first piece of the unparsed bytes: storage if it holds
// anything, otherwise the rest of the chunk.
func (s *stream) front() []byte {
	if s.r < len(s.buf) {
		return s.buf[s.r:]
	}
	return s.ext
}

// skip consumes n bytes of the piece returned by front.
func (s *stream) skip(n int) {
	if s.r < len(s.buf) {
		s.r += n
	} else {
		s.ext = s.ext[n:]
	}
}

// all returns every unparsed byte as one slice, copying the rest of the
// chunk into storage only if storage is not empty.
func (s *stream) all() []byte {
	if s.r == len(s.buf) {
		return s.ext
	}
	s.adopt()
	return s.buf[s.r:]
}

// clear drops every unparsed byte.
func (s *stream) clear() {
	s.r = len(s.buf)
	s.ext = nil
}

// reset drops everything, storage included.
func (s *stream) reset() { *s = stream{} }

// need returns the first n unparsed bytes as one slice, or false if fewer
// are available.
func (s *stream) need(n int) ([]byte, bool) {
	have := len(s.buf) - s.r
	if have == 0 {
		if len(s.ext) >= n {
			return s.ext[:n], true
		}
		return nil, false
	}
	if have < n {
		if have+len(s.ext) < n {
			return nil, false
		}
		k := n - have
		s.write(s.ext[:k])
		s.ext = s.ext[k:]
	}
	return s.buf[s.r : s.r+n], true
}

// feedLine moves the rest of the chunk into storage up to and including the
// first occurrence of delim in it (all of it if there is none). After that,
// storage holds a complete line or the chunk is used up.
func (s *stream) feedLine(delim []byte) {
	n := len(s.ext)
	if i := bytes.Index(s.ext, delim); i >= 0 {
		n = i + len(delim)
	}
	s.write(s.ext[:n])
	s.ext = s.ext[n:]
}

// push appends p after every unparsed byte.
func (s *stream) push(p []byte) {
	s.adopt()
	s.write(p)
}

// adopt copies the rest of the chunk into storage.
func (s *stream) adopt() {
	e := s.ext
	s.ext = nil
	s.write(e)
}

// settle ends a DataReceived call: the rest of the chunk is copied into
// storage and empty storage is rewound (or released if it grew large).
func (s *stream) settle() {
	s.pinned = false
	s.adopt()
	if s.r == len(s.buf) {
		if cap(s.buf) > maxRetained {
			s.buf = nil
		} else {
			s.buf = s.buf[:0]
		}
		s.r = 0
	}
}

// write appends p to storage, compacting or growing it as needed. While
// pinned, bytes already in storage are never moved or overwritten.
func (s *stream) write(p []byte) {
	if len(p) == 0 {
		return
	}
	if !s.pinned && s.r == len(s.buf) {
		s.buf = s.buf[:0]
		s.r = 0
	}
	if len(s.buf)+len(p) > cap(s.buf) {
		live := len(s.buf) - s.r
		if !s.pinned && s.r > 0 && live+len(p) <= cap(s.buf) {
			copy(s.buf, s.buf[s.r:])
			s.buf = s.buf[:live]
		} else {
			n := 2 * (live + len(p))
			if n < 512 {
				n = 512
			}
			nb := make([]byte, live, n)
			copy(nb, s.buf[s.r:])
			s.buf = nb
		}
		s.r = 0
	}
	s.buf = append(s.buf, p...)
}
