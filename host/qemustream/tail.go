package qemustream

import (
	"bytes"
	"encoding/binary"
)

// tailCheck verifies, in opaque-rest mode, that the stream ends the way
// QEMU ends one: "... footer(0x7e, be32 id) EOF(0x00)" or
// "... EOF(0x00) VMDESCRIPTION(0x06) be32 len {json}". It keeps the last six
// bytes and a few candidate VMDESCRIPTION headers, so it is bounded however
// long the rest is.
type tailCheck struct {
	last  [6]byte
	seen  int64
	cands [8]vmdescCand
	ncand int
}

type vmdescCand struct {
	off    int64 // offset of the EOF byte
	length uint32
}

func (t *tailCheck) observe(p []byte, off int64, maxLen uint32) {
	// Candidate headers that start in the carried tail and run into p.
	var tmp [12]byte
	k := int(min(t.seen, 6))
	copy(tmp[:], t.last[6-k:])
	m := copy(tmp[k:], p)
	t.scan(tmp[:k+m], off-int64(k), k, maxLen)
	t.scan(p, off, len(p), maxLen)
	if len(p) >= 6 {
		copy(t.last[:], p[len(p)-6:])
	} else {
		copy(t.last[:], t.last[len(p):])
		copy(t.last[6-len(p):], p)
	}
	t.seen += int64(len(p))
}

// scan records the candidates that start at p[i] for i < limit and lie
// wholly in p; those that do not are seen again through the carried tail.
func (t *tailCheck) scan(p []byte, off int64, limit int, maxLen uint32) {
	stop := min(limit, len(p)-6) // i < stop keeps p[i:i+7] inside p
	for i := 0; i < stop; i++ {
		j := bytes.Index(p[i:stop+1], eofVMDesc)
		if j < 0 {
			return
		}
		i += j
		if p[i+6] != '{' {
			continue
		}
		if l := binary.BigEndian.Uint32(p[i+2:]); l >= 2 && l <= maxLen {
			t.add(vmdescCand{off: off + int64(i), length: l}, off+int64(i))
		}
	}
}

var eofVMDesc = []byte{recEOF, recVMDescription}

func (t *tailCheck) add(c vmdescCand, now int64) {
	// Drop candidates whose JSON would already have ended: the stream
	// went on past them.
	k := 0
	for _, o := range t.cands[:t.ncand] {
		if o.off+6+int64(o.length) >= now {
			t.cands[k] = o
			k++
		}
	}
	t.ncand = k
	if t.ncand == len(t.cands) {
		copy(t.cands[:], t.cands[1:])
		t.ncand--
	}
	t.cands[t.ncand] = c
	t.ncand++
}

func (t *tailCheck) finish(end int64, noFooters bool) (eof bool, vmdesc int64, ok bool) {
	for _, c := range t.cands[:t.ncand] {
		if c.off+6+int64(c.length) == end && t.seen > 0 && t.last[5] == '}' {
			return true, int64(c.length), true
		}
	}
	if noFooters {
		return t.seen >= 1 && t.last[5] == recEOF, -1, t.seen >= 1 && t.last[5] == recEOF
	}
	if t.seen >= 6 && t.last[0] == recFooter && t.last[5] == recEOF {
		return true, -1, true
	}
	return false, -1, false
}
