package pagestore

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
)

// Meta describes a committed session. Its file is written last, so its
// presence (and validity) is what makes a session committed.
type Meta struct {
	// Peer is the other host as the transport authenticated it.
	Peer string
	ID   SessionID
	// Committed is when this host committed the session.
	Committed time.Time
	// Pages is the number of distinct pages recorded.
	Pages uint64
	// Digest is the xxh3-128 of the index file: both hosts of a session
	// compute the same one, which lets them check that they hold the same
	// pages before either names one.
	Digest pagestage.PageHash
}

// Limits of the meta file.
const (
	metaMagic    = "dwcp-pagestore-session 1"
	maxMetaBytes = 4096
	maxPeerLen   = 1024
	// maxPages bounds a session's page count so that page offsets and the
	// reader's location packing (locPageBits) cannot overflow.
	maxPages = 1 << locPageBits
)

// appendMeta writes m in the meta file's format: a magic line, then one
// "key value" line per field in a fixed order.
func appendMeta(b []byte, m Meta) []byte {
	b = append(b, metaMagic...)
	b = append(b, "\npeer "...)
	b = strconv.AppendQuote(b, m.Peer)
	b = append(b, "\nsession "...)
	b = append(b, m.ID...)
	b = append(b, "\ncommitted "...)
	b = strconv.AppendInt(b, m.Committed.UnixNano(), 10)
	b = append(b, "\npages "...)
	b = strconv.AppendUint(b, m.Pages, 10)
	b = append(b, "\nindex "...)
	b = append(b, m.Digest.String()...)
	return append(b, '\n')
}

// parseMeta reads a meta file. Anything but exactly the format appendMeta
// writes is an error wrapping ErrCorrupt.
func parseMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) > maxMetaBytes {
		return m, fmt.Errorf("meta of %d bytes, limit %d: %w", len(b), maxMetaBytes, ErrCorrupt)
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return m, fmt.Errorf("meta does not end with a newline: %w", ErrCorrupt)
	}
	lines := strings.Split(string(b[:len(b)-1]), "\n")
	keys := []string{"", "peer", "session", "committed", "pages", "index"}
	if len(lines) != len(keys) {
		return m, fmt.Errorf("meta has %d lines, want %d: %w", len(lines), len(keys), ErrCorrupt)
	}
	if lines[0] != metaMagic {
		return m, fmt.Errorf("meta starts with %q, want %q: %w", trim(lines[0]), metaMagic, ErrCorrupt)
	}
	vals := make([]string, len(keys))
	for i := 1; i < len(keys); i++ {
		k, v, ok := strings.Cut(lines[i], " ")
		if !ok || k != keys[i] {
			return m, fmt.Errorf("meta line %d is %q, want key %q: %w", i+1, trim(lines[i]), keys[i], ErrCorrupt)
		}
		vals[i] = v
	}
	peer, err := strconv.Unquote(vals[1])
	if err != nil || peer == "" || len(peer) > maxPeerLen {
		return m, fmt.Errorf("meta peer %q: want a quoted name of 1..%d bytes: %w", trim(vals[1]), maxPeerLen, ErrCorrupt)
	}
	id, err := ParseSessionID(vals[2])
	if err != nil {
		return m, fmt.Errorf("meta session: %v: %w", err, ErrCorrupt)
	}
	ns, err := strconv.ParseInt(vals[3], 10, 64)
	if err != nil || ns <= 0 {
		return m, fmt.Errorf("meta committed %q: want positive Unix nanoseconds: %w", trim(vals[3]), ErrCorrupt)
	}
	pages, err := strconv.ParseUint(vals[4], 10, 64)
	if err != nil || pages == 0 || pages > maxPages {
		return m, fmt.Errorf("meta pages %q: want 1..%d: %w", trim(vals[4]), uint64(maxPages), ErrCorrupt)
	}
	d, err := hex.DecodeString(vals[5])
	if err != nil || len(d) != 16 || strings.ToLower(vals[5]) != vals[5] {
		return m, fmt.Errorf("meta index digest %q: want 32 lower-case hex digits: %w", trim(vals[5]), ErrCorrupt)
	}
	m = Meta{Peer: peer, ID: id, Committed: time.Unix(0, ns), Pages: pages, Digest: hashFrom(d)}
	return m, nil
}

// trim shortens a garbled value for an error message.
func trim(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// sameMeta compares metas field by field (time.Time values differ in their
// location after a round trip).
func sameMeta(a, b Meta) bool {
	return a.Peer == b.Peer && a.ID == b.ID && a.Committed.Equal(b.Committed) && a.Pages == b.Pages && a.Digest == b.Digest
}
